//! Checkpoints through a real store: what the writer kept there, checked
//! against the sink's file as the outside copy, after the store's data was
//! cut behind the crate's back.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use session_trail::history::{
    BreakKind, Checkpoint, CheckpointLog, CheckpointProblem, Draft, FileSink, HistoryWriter,
    WriterConfig, WriterId,
};
use session_trail::store::HistoryStore;
use session_trail::{Key, KeyRing, SessionId};

pub fn key() -> Key {
    Key::from_bytes(&super::secret(93)).unwrap()
}

pub fn ring() -> KeyRing {
    KeyRing::new(key())
}

pub fn sink_path() -> PathBuf {
    std::env::temp_dir().join(format!("st-checkpoints-{}.jsonl", SessionId::generate()))
}

/// Writer settings that checkpoint when asked (or an hour on), into the
/// store and the file.
pub fn config(sink: &PathBuf) -> WriterConfig {
    WriterConfig::default()
        .flush_interval(Duration::from_millis(1))
        .checkpoint_interval(Duration::from_secs(3600))
        .checkpoint_sink(FileSink::open(sink).unwrap())
}

/// A writer with [`config`].
pub fn writer<S: HistoryStore>(store: S, sink: &PathBuf) -> HistoryWriter {
    HistoryWriter::start(store, ring(), config(sink)).unwrap()
}

/// A layer on `store` whose writer has [`config`].
pub fn layer<S>(store: &S, sink: &PathBuf) -> session_trail::SessionLayer
where
    S: session_trail::store::SessionStore + HistoryStore + Clone,
{
    session_trail::SessionLayer::builder(store.clone(), key())
        .history_writer(config(sink))
        .build()
        .unwrap()
}

pub async fn write(w: &HistoryWriter, sid: SessionId, n: usize) {
    let drafts = (0..n)
        .map(|i| Draft::event("step", &json!({ "i": i })).unwrap())
        .collect();
    assert!(w.enqueue(sid, drafts));
    w.flush().await.unwrap();
}

/// The store keeps what the writer hands it, once, and reads back the same
/// checkpoints the sink's file holds.
pub async fn checkpoints_are_kept_once_and_read_back<S: HistoryStore + Clone>(store: S) {
    let sink = sink_path();
    let w = writer(store.clone(), &sink);
    for n in [3, 1] {
        write(&w, SessionId::generate(), n).await;
        w.checkpoint().await.unwrap();
    }
    let outside = FileSink::read(&sink).unwrap();
    let mine = |raw: Vec<Bytes>| -> Vec<Checkpoint> {
        let mut v: Vec<Checkpoint> = raw
            .iter()
            .map(|b| Checkpoint::decode(b).unwrap())
            .filter(|c| Some(c.writer) == w.writer_id())
            .collect();
        v.sort_by_key(|c| c.counter);
        v
    };
    let stored = mine(store.checkpoints().await.unwrap());
    assert_eq!(stored, outside);
    assert_eq!(stored.len(), 2);
    // A retried keep changes nothing.
    store.put_checkpoint(&stored[1]).await.unwrap();
    assert_eq!(mine(store.checkpoints().await.unwrap()), outside);
    let log = w.checkpoint_log(&outside).await.unwrap();
    assert!(log.problems().is_empty(), "{:?}", log.problems());
    let _ = std::fs::remove_file(&sink);
}

/// Cut a checkpointed tail, delete a checkpointed history, and remove the
/// newest checkpoint, all in the store: each is reported, the last against
/// the sink's file.
pub async fn cuts_in_the_store_are_reported<S, Cut, CutF, Drop, DropF>(
    store: S,
    cut_tail: Cut,
    drop_checkpoint: Drop,
) where
    S: HistoryStore + Clone,
    Cut: Fn(SessionId, u64) -> CutF,
    CutF: Future<Output = ()>,
    Drop: Fn(WriterId, u64) -> DropF,
    DropF: Future<Output = ()>,
{
    let sink = sink_path();
    let w = writer(store.clone(), &sink);
    let (a, b) = (SessionId::generate(), SessionId::generate());
    write(&w, a, 5).await;
    write(&w, b, 3).await;
    w.checkpoint().await.unwrap();
    write(&w, a, 2).await;
    w.checkpoint().await.unwrap();
    let outside = FileSink::read(&sink).unwrap();
    assert_eq!(outside.len(), 2);

    let log = w.checkpoint_log(&outside).await.unwrap();
    assert!(log.problems().is_empty(), "{:?}", log.problems());
    let v = w.audit(&a, &log).await.unwrap();
    assert!(v.is_ok(), "{:?}", v.breaks);
    assert_eq!(v.checkpointed, Some(7));
    assert_eq!(w.audit(&b, &log).await.unwrap().checkpointed, Some(3));

    // The tail of `a` cut to seq 4; `b` deleted without a receipt.
    cut_tail(a, 4).await;
    store.delete(&b).await.unwrap();
    let log = w.checkpoint_log(&outside).await.unwrap();
    let v = w.audit(&a, &log).await.unwrap();
    assert_eq!(v.breaks.len(), 1, "{:?}", v.breaks);
    assert_eq!(
        v.breaks[0].kind,
        BreakKind::TruncatedTail { from: 5, to: 7 }
    );
    assert_eq!(v.breaks[0].position, 4);
    let v = w.audit(&b, &log).await.unwrap();
    assert_eq!(v.breaks.len(), 1, "{:?}", v.breaks);
    assert_eq!(v.breaks[0].kind, BreakKind::MissingHistory { through: 3 });

    // The newest checkpoint removed from the store: the file still has it.
    let id = w.writer_id().unwrap();
    drop_checkpoint(id, 2).await;
    let log = w.checkpoint_log(&outside).await.unwrap();
    assert_eq!(log.problems(), &[CheckpointProblem::Removed(id, 2)]);
    let v = w.audit(&a, &log).await.unwrap();
    assert_eq!(
        v.breaks[0].kind,
        BreakKind::TruncatedTail { from: 5, to: 7 }
    );
    // Without the outside copy the store's own checkpoints still attest
    // `a` up to 5.
    let stored = store.checkpoints().await.unwrap();
    let alone = CheckpointLog::new(&ring(), &stored, &[], store.retention(), outside[1].at + 1);
    let v = w.audit(&a, &alone).await.unwrap();
    assert_eq!(
        v.breaks[0].kind,
        BreakKind::TruncatedTail { from: 5, to: 5 }
    );
    let _ = std::fs::remove_file(&sink);
}

/// The erasure marker says when the history was erased; none before.
pub async fn erased_at_answers_the_time_of_the_erasure<S: HistoryStore + Clone>(store: S) {
    let sid = SessionId::generate();
    let sink = sink_path();
    let w = writer(store.clone(), &sink);
    write(&w, sid, 2).await;
    assert_eq!(store.erased_at(&sid).await.unwrap(), None);
    let before = now_ms();
    store.delete(&sid).await.unwrap();
    let after = now_ms();
    let at = store.erased_at(&sid).await.unwrap().expect("a marker");
    assert!(at >= before && at <= after, "{before} <= {at} <= {after}");
    let _ = std::fs::remove_file(&sink);
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Through the layer on a store keeping 3 entries per session: an erasure
/// (receipted) and keep-*N* trims are not reported, by an audit against
/// the sink's file or by the layer's own history pages.
pub async fn erasure_and_trims_through_the_store_are_not_reported<S>(store: S)
where
    S: session_trail::store::SessionStore + HistoryStore + Clone,
{
    let sink = sink_path();
    let layer = layer(&store, &sink);
    let w = layer.history_writer().unwrap().clone();
    let mut c = super::app::Client::new(super::app::router(layer));
    c.send("POST", &format!("/login/{}", SessionId::generate()))
        .await;
    let mut sid = None;
    for _ in 0..4 {
        for _ in 0..3 {
            c.send("GET", "/visits").await;
        }
        w.checkpoint().await.unwrap();
        let page = c.json("GET", "/history").await;
        assert_eq!(page["chain"]["ok"], true, "{page}");
        assert!(page["chain"]["trimmed_before"].as_u64().is_some(), "{page}");
        sid = page["session"]
            .as_str()
            .map(|s| s.parse::<SessionId>().unwrap());
    }
    let sid = sid.unwrap();
    let log = w
        .checkpoint_log(&FileSink::read(&sink).unwrap())
        .await
        .unwrap();
    assert!(log.problems().is_empty(), "{:?}", log.problems());
    let v = w.audit(&sid, &log).await.unwrap();
    assert!(v.is_ok(), "{:?}", v.breaks);
    assert!(v.checkpointed.is_some());

    c.json("DELETE", "/history").await;
    w.checkpoint().await.unwrap();
    let page = c.json("GET", "/history").await;
    assert_eq!(page["chain"]["ok"], true, "{page}");
    let log = w
        .checkpoint_log(&FileSink::read(&sink).unwrap())
        .await
        .unwrap();
    assert!(log.problems().is_empty(), "{:?}", log.problems());
    assert!(log.erased_at(&sid).is_some());
    let v = w.audit(&sid, &log).await.unwrap();
    assert!(v.is_ok(), "{:?}", v.breaks);
    let _ = std::fs::remove_file(&sink);
}
