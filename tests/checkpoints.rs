//! Signed checkpoints: property tests of what the verifier reports against
//! checkpoints the real history writer formed (on the memory store), and
//! erasure through the layer. The same through Redis and PostgreSQL is in
//! `common::checkpoints`, run by their test binaries.
#![cfg(feature = "memory-store")]

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::checkpoints::{key, now_ms, ring, sink_path, write};

use bytes::Bytes;
use proptest::prelude::*;
use serde_json::json;
use session_trail::SessionId;
use session_trail::history::{
    BreakKind, Checkpoint, CheckpointLog, CheckpointProblem, Draft, Entry, FileSink, HistoryWriter,
    Options, Verification, WriterConfig, verify_checkpointed,
};
use session_trail::store::{HistoryStore, MemoryStore, Retention};

const TTL: Duration = Duration::from_secs(3600);

fn store(keep: usize) -> MemoryStore {
    MemoryStore::new().history_retention(keep, TTL).unwrap()
}

/// A memory store keeping `keep` entries per session, a sink file, and a
/// writer on both that checkpoints when asked.
fn rig(keep: usize) -> (MemoryStore, PathBuf, HistoryWriter) {
    let store = store(keep);
    let sink = sink_path();
    let w = common::checkpoints::writer(store.clone(), &sink);
    (store, sink, w)
}

async fn log_of(store: &MemoryStore, outside: &[Checkpoint], now: i64) -> CheckpointLog {
    let stored = store.checkpoints().await.unwrap();
    CheckpointLog::new(&ring(), &stored, outside, retention(store), now)
}

fn retention(store: &MemoryStore) -> Retention {
    HistoryStore::retention(store)
}

fn check(
    store: &MemoryStore,
    sid: &SessionId,
    entries: &[Bytes],
    log: &CheckpointLog,
) -> Verification {
    let options = Options {
        keep: retention(store).keep,
        window: false,
    };
    verify_checkpointed(&ring(), sid, entries, options, log)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// `attested` entries, a checkpoint, `more` entries after it; the tail
    /// cut to `left`: reported iff the cut reaches into what the checkpoint
    /// attests, as `truncated_tail` after the last entry left, from the
    /// first absent `seq` to the attested head.
    #[test]
    fn a_cut_tail_is_reported_exactly_where_the_checkpoint_says(
        attested in 1usize..30,
        more in 0usize..10,
        left_frac in 0.0f64..1.0,
    ) {
        rt().block_on(async {
            let (store, sink, w) = rig(1000);
            let sid = SessionId::generate();
            write(&w, sid, attested).await;
            w.checkpoint().await.unwrap();
            write(&w, sid, more).await;
            let all = store.read_all(&sid).await.unwrap();
            let total = attested + more;
            prop_assert_eq!(all.len(), total);
            let outside = FileSink::read(&sink).unwrap();
            let log = log_of(&store, &outside, now_ms()).await;
            prop_assert!(log.problems().is_empty(), "{:?}", log.problems());

            let whole = check(&store, &sid, &all, &log);
            prop_assert!(whole.is_ok(), "{:?}", whole.breaks);
            prop_assert_eq!(whole.checkpointed, Some(attested as u64));

            let left = ((total as f64) * left_frac) as usize;
            let v = check(&store, &sid, &all[..left], &log);
            if left == 0 {
                prop_assert_eq!(v.breaks.len(), 1);
                prop_assert_eq!(v.breaks[0].kind, BreakKind::MissingHistory { through: attested as u64 });
            } else if left < attested {
                prop_assert_eq!(v.breaks.len(), 1, "{:?}", v.breaks);
                prop_assert_eq!(v.breaks[0].position, left);
                prop_assert_eq!(
                    v.breaks[0].kind,
                    BreakKind::TruncatedTail { from: left as u64 + 1, to: attested as u64 }
                );
                prop_assert_eq!(v.checkpointed, None);
            } else {
                // Entries after the checkpoint can go unnoticed: the limit
                // of any checkpoint interval.
                prop_assert!(v.is_ok(), "{:?}", v.breaks);
            }
            let _ = std::fs::remove_file(&sink);
            Ok(())
        })?;
    }

    /// A checkpointed history deleted whole is `missing_history`, from the
    /// store's checkpoints or the sink's copy alone; once its TTL could
    /// have passed since the checkpoint, it is not.
    #[test]
    fn a_deleted_history_is_missing_until_its_ttl_could_have_passed(n in 1usize..20) {
        rt().block_on(async {
            let (store, sink, w) = rig(1000);
            let sid = SessionId::generate();
            write(&w, sid, n).await;
            w.checkpoint().await.unwrap();
            // Deleted behind the layer's back: no erasure receipt.
            store.delete(&sid).await.unwrap();
            let outside = FileSink::read(&sink).unwrap();
            let none: Vec<Bytes> = Vec::new();
            for log in [
                log_of(&store, &[], now_ms()).await,
                CheckpointLog::new(&ring(), &none, &outside, retention(&store), now_ms()),
            ] {
                let v = check(&store, &sid, &none, &log);
                prop_assert_eq!(v.breaks.len(), 1);
                prop_assert_eq!(v.breaks[0].kind, BreakKind::MissingHistory { through: n as u64 });
            }
            let later = now_ms() + TTL.as_millis() as i64 + 1;
            let v = check(&store, &sid, &none, &log_of(&store, &outside, later).await);
            prop_assert!(v.is_ok(), "{:?}", v.breaks);
            let _ = std::fs::remove_file(&sink);
            Ok(())
        })?;
    }

    /// keep-N trims the front between checkpoints: never reported, and the
    /// head stays attested.
    #[test]
    fn keep_n_trims_are_not_reported(keep in 2usize..8, rounds in prop::collection::vec(1usize..6, 1..6)) {
        rt().block_on(async {
            let (store, sink, w) = rig(keep);
            let sid = SessionId::generate();
            let mut total = 0;
            for n in rounds {
                write(&w, sid, n).await;
                total += n;
                w.checkpoint().await.unwrap();
                let log = log_of(&store, &FileSink::read(&sink).unwrap(), now_ms()).await;
                prop_assert!(log.problems().is_empty(), "{:?}", log.problems());
                let all = store.read_all(&sid).await.unwrap();
                let v = check(&store, &sid, &all, &log);
                prop_assert!(v.is_ok(), "{:?}", v.breaks);
                prop_assert_eq!(v.checkpointed, Some(total as u64));
                prop_assert_eq!(v.trimmed_before.is_some(), total > keep);
            }
            let _ = std::fs::remove_file(&sink);
            Ok(())
        })?;
    }

    /// A history that expired by its TTL and started afresh is a new
    /// history, not a cut one; one that starts afresh sooner is reported.
    #[test]
    fn a_history_restarted_after_its_ttl_is_not_reported(n in 2usize..20, m in 1usize..10) {
        rt().block_on(async {
            let (store, sink, w) = rig(1000);
            let sid = SessionId::generate();
            write(&w, sid, n).await;
            w.checkpoint().await.unwrap();
            let outside = FileSink::read(&sink).unwrap();
            let fresh = |at: i64| {
                let mut prev = [0; 16];
                let mut out = Vec::new();
                for seq in 1..=m as u64 {
                    let bytes = Draft::event("again", &json!({})).unwrap().at(at).sign(&key(), &sid, seq, &prev);
                    prev = Entry::decode(&bytes).unwrap().tag;
                    out.push(bytes);
                }
                out
            };
            let after_ttl = now_ms() + TTL.as_millis() as i64;
            let log = log_of(&store, &outside, after_ttl + 1000).await;
            let v = check(&store, &sid, &fresh(after_ttl), &log);
            prop_assert!(v.is_ok(), "{:?}", v.breaks);
            // Afresh within the TTL: the old history was cut.
            let log = log_of(&store, &outside, now_ms()).await;
            let v = check(&store, &sid, &fresh(now_ms()), &log);
            prop_assert!(!v.is_ok());
            prop_assert!(v.breaks.iter().all(|b| b.kind.is_checkpoint()), "{:?}", v.breaks);
            let _ = std::fs::remove_file(&sink);
            Ok(())
        })?;
    }

    /// Two writers (two app servers) append to one session in turns and
    /// each checkpoints what it advanced: the whole chain holds, and a cut
    /// is reported against the newest head either attests.
    #[test]
    fn two_writers_interleaving_on_one_session(turns in prop::collection::vec((any::<bool>(), 1usize..5, any::<bool>()), 1..8), cut in 1usize..5) {
        rt().block_on(async {
            let store = store(1000);
            let (sa, sb) = (sink_path(), sink_path());
            let a = common::checkpoints::writer(store.clone(), &sa);
            let b = common::checkpoints::writer(store.clone(), &sb);
            let sid = SessionId::generate();
            let mut total = 0u64;
            let mut attested = 0u64;
            for (use_a, n, checkpoint) in turns {
                let w = if use_a { &a } else { &b };
                write(w, sid, n).await;
                total += n as u64;
                if checkpoint {
                    w.checkpoint().await.unwrap();
                    attested = total;
                }
            }
            let outside: Vec<Checkpoint> = [&sa, &sb].iter().flat_map(|p| FileSink::read(p).unwrap()).collect();
            let log = log_of(&store, &outside, now_ms()).await;
            prop_assert!(log.problems().is_empty(), "{:?}", log.problems());
            let all = store.read_all(&sid).await.unwrap();
            prop_assert_eq!(all.len() as u64, total);
            let v = check(&store, &sid, &all, &log);
            prop_assert!(v.is_ok(), "{:?}", v.breaks);
            prop_assert_eq!(v.checkpointed, (attested > 0).then_some(attested));
            let left = (total as usize).saturating_sub(cut);
            let v = check(&store, &sid, &all[..left], &log);
            if attested > left as u64 && left > 0 {
                prop_assert_eq!(v.breaks.len(), 1, "{:?}", v.breaks);
                prop_assert_eq!(v.breaks[0].kind, BreakKind::TruncatedTail { from: left as u64 + 1, to: attested });
            } else if attested > 0 && left == 0 {
                prop_assert_eq!(v.breaks[0].kind, BreakKind::MissingHistory { through: attested });
            } else {
                prop_assert!(v.is_ok(), "{:?}", v.breaks);
            }
            for p in [sa, sb] {
                let _ = std::fs::remove_file(p);
            }
            Ok(())
        })?;
    }

    /// A checkpoint removed from the store, or modified there, is reported:
    /// against the sink's copy, or by the chain itself.
    #[test]
    fn a_modified_or_removed_checkpoint_is_reported(rounds in 3usize..7, pick in any::<prop::sample::Index>(), byte in any::<prop::sample::Index>()) {
        rt().block_on(async {
            let (store, sink, w) = rig(1000);
            for _ in 0..rounds {
                write(&w, SessionId::generate(), 2).await;
                w.checkpoint().await.unwrap();
            }
            let outside = FileSink::read(&sink).unwrap();
            let stored = store.checkpoints().await.unwrap();
            prop_assert_eq!(stored.len(), rounds);
            let mut sorted: Vec<(u64, Bytes)> = stored
                .iter()
                .map(|b| (Checkpoint::decode(b).unwrap().counter, b.clone()))
                .collect();
            sorted.sort_by_key(|(c, _)| *c);
            let i = pick.index(rounds);
            let counter = sorted[i].0;
            let writer_id = w.writer_id().unwrap();

            // Removed: against the outside copy it is `removed`; in the
            // middle of the chain the store alone shows it as `missing`.
            let without: Vec<Bytes> = sorted.iter().filter(|(c, _)| *c != counter).map(|(_, b)| b.clone()).collect();
            let log = CheckpointLog::new(&ring(), &without, &outside, retention(&store), now_ms());
            prop_assert_eq!(log.problems(), &[CheckpointProblem::Removed(writer_id, counter)]);
            let alone = CheckpointLog::new(&ring(), &without, &[], retention(&store), now_ms());
            if i > 0 && i + 1 < rounds {
                prop_assert_eq!(alone.problems(), &[CheckpointProblem::Missing(writer_id, counter, counter)]);
            }

            // Modified: one byte anywhere.
            let mut bytes = sorted[i].1.to_vec();
            let at = byte.index(bytes.len());
            bytes[at] ^= 0x01;
            let mut modified: Vec<Bytes> = without.clone();
            modified.push(Bytes::from(bytes));
            let log = CheckpointLog::new(&ring(), &modified, &outside, retention(&store), now_ms());
            prop_assert!(!log.problems().is_empty(), "a flipped byte at {} went unnoticed", at);
            let alone = CheckpointLog::new(&ring(), &modified, &[], retention(&store), now_ms());
            prop_assert!(!alone.problems().is_empty(), "a flipped byte at {} went unnoticed without the outside copy", at);
            let _ = std::fs::remove_file(&sink);
            Ok(())
        })?;
    }
}

/// A user's erasure through the layer is signed into the checkpoint chain:
/// the erased, checkpointed history is not reported as missing, while the
/// same history deleted behind the layer's back is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erasure_is_receipted_and_not_reported() {
    let store = store(1000);
    let sink = sink_path();
    let layer = common::checkpoints::layer(&store, &sink);
    let w = layer.history_writer().unwrap().clone();
    let app = common::app::router(layer);
    let mut erased = common::app::Client::new(app.clone());
    let mut deleted = common::app::Client::new(app.clone());
    let mut sids = Vec::new();
    for c in [&mut erased, &mut deleted] {
        c.send("POST", &format!("/login/{}", SessionId::generate()))
            .await;
        for _ in 0..3 {
            c.send("GET", "/visits").await;
        }
        let page = c.json("GET", "/history").await;
        sids.push(
            page["session"]
                .as_str()
                .unwrap()
                .parse::<SessionId>()
                .unwrap(),
        );
    }
    w.checkpoint().await.unwrap();
    let page = erased.json("GET", "/history").await;
    assert_eq!(page["chain"]["ok"], true, "{page}");
    assert!(
        page["chain"]["checkpointed"].as_u64().unwrap() >= 4,
        "{page}"
    );

    let receipt = erased.json("DELETE", "/history").await;
    assert_eq!(receipt["sessions"], 1, "{receipt}");
    // The writer's own reads know of the erasure before any checkpoint.
    let page = erased.json("GET", "/history").await;
    assert_eq!(page["chain"]["ok"], true, "{page}");
    store.delete(&sids[1]).await.unwrap();
    w.checkpoint().await.unwrap();

    let outside = FileSink::read(&sink).unwrap();
    assert!(
        outside
            .iter()
            .any(|c| c.erasures.iter().any(|e| e.session == sids[0]))
    );
    let log = w.checkpoint_log(&outside).await.unwrap();
    assert!(log.problems().is_empty(), "{:?}", log.problems());
    assert!(log.erased_at(&sids[0]).is_some());
    let v = w.audit(&sids[0], &log).await.unwrap();
    assert!(
        v.breaks.iter().all(|b| !b.kind.is_checkpoint()),
        "{:?}",
        v.breaks
    );
    let v = w.audit(&sids[1], &log).await.unwrap();
    assert!(
        matches!(v.breaks[..], [b] if matches!(b.kind, BreakKind::MissingHistory { .. })),
        "{:?}",
        v.breaks
    );
    let _ = std::fs::remove_file(&sink);
}

/// The layer's own history read checks against this writer's checkpoints:
/// `checkpointed` names the attested head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_say_how_far_they_are_checkpointed() {
    let store = store(1000);
    let layer = session_trail::SessionLayer::builder(store.clone(), key())
        .history_writer(
            WriterConfig::default()
                .flush_interval(Duration::from_millis(1))
                .checkpoint_interval(Duration::from_millis(50)),
        )
        .build()
        .unwrap();
    let w = layer.history_writer().unwrap().clone();
    let mut c = common::app::Client::new(common::app::router(layer));
    c.send("GET", "/visits").await;
    let page = c.json("GET", "/history").await;
    assert_eq!(
        page["chain"]["checkpointed"],
        serde_json::Value::Null,
        "{page}"
    );
    // The interval's own checkpoint, without asking for one.
    let page = common::app::eventually(10, "a checkpoint by interval", || {
        let mut c = c.fork();
        async move {
            let page = c.json("GET", "/history").await;
            page["chain"]["checkpointed"].as_u64().map(|_| page)
        }
    })
    .await;
    assert_eq!(page["chain"]["ok"], true, "{page}");
    assert!(w.stats().checkpoints_kept >= 1);
}

/// An erasure made through another app server (whose receipt this one has
/// not seen) is not reported by this server's reads: they find the
/// store's erasure marker. A signed audit still relies on receipts only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erasure_through_another_server_is_not_reported_by_reads() {
    let store = store(1000);
    let server = || {
        session_trail::SessionLayer::builder(store.clone(), key())
            .history_writer(
                WriterConfig::default()
                    .flush_interval(Duration::from_millis(1))
                    .checkpoint_interval(Duration::from_secs(3600)),
            )
            .build()
            .unwrap()
    };
    let (a, b) = (server(), server());
    let writer_b = b.history_writer().unwrap().clone();
    let mut on_a = common::app::Client::new(common::app::router(a));
    on_a.send("POST", &format!("/login/{}", SessionId::generate()))
        .await;
    let mut on_b = on_a.fork();
    on_b.app = common::app::router(b);
    for _ in 0..3 {
        on_b.send("GET", "/visits").await;
    }
    writer_b.checkpoint().await.unwrap();
    let page = on_b.json("GET", "/history").await;
    assert!(page["chain"]["checkpointed"].as_u64().is_some(), "{page}");

    on_a.json("DELETE", "/history").await;
    let page = on_b.json("GET", "/history").await;
    assert_eq!(page["chain"]["ok"], true, "{page}");
}

/// A store of the application's own: the memory store, except that it may
/// keep no checkpoints (the trait's defaults), fail to keep them while
/// `down` is set, or, with `flaky`, apply an append and answer `Failed`
/// (1), then answer `Failed` (2), counting the answers in `failed`.
#[derive(Clone)]
struct Wrapped {
    inner: MemoryStore,
    keeps: bool,
    down: std::sync::Arc<std::sync::atomic::AtomicBool>,
    flaky: std::sync::Arc<std::sync::atomic::AtomicU8>,
    failed: std::sync::Arc<std::sync::atomic::AtomicU64>,
    applied_at: std::sync::Arc<std::sync::atomic::AtomicI64>,
}

impl Wrapped {
    fn new(keeps: bool) -> Self {
        Self {
            inner: store(1000),
            keeps,
            down: std::sync::Arc::default(),
            flaky: std::sync::Arc::default(),
            failed: std::sync::Arc::default(),
            applied_at: std::sync::Arc::default(),
        }
    }

    fn set_down(&self, down: bool) {
        self.down.store(down, std::sync::atomic::Ordering::SeqCst);
    }
}

impl HistoryStore for Wrapped {
    fn retention(&self) -> Retention {
        HistoryStore::retention(&self.inner)
    }
    async fn append(
        &self,
        batch: &[session_trail::store::Append],
    ) -> Result<Vec<session_trail::store::AppendOutcome>, session_trail::Error> {
        use session_trail::store::AppendOutcome;
        use std::sync::atomic::Ordering::SeqCst;
        let failed = |n: usize| {
            self.failed.fetch_add(1, SeqCst);
            (0..n)
                .map(|_| AppendOutcome::Failed {
                    reason: "flaky".into(),
                })
                .collect()
        };
        match self.flaky.load(SeqCst) {
            1 => {
                self.inner.append(batch).await?;
                self.applied_at.store(now_ms(), SeqCst);
                self.flaky.store(2, SeqCst);
                Ok(failed(batch.len()))
            }
            2 => Ok(failed(batch.len())),
            _ => self.inner.append(batch).await,
        }
    }
    async fn read_newest(
        &self,
        s: &SessionId,
        n: usize,
    ) -> Result<Vec<Bytes>, session_trail::Error> {
        self.inner.read_newest(s, n).await
    }
    async fn read_all(&self, s: &SessionId) -> Result<Vec<Bytes>, session_trail::Error> {
        self.inner.read_all(s).await
    }
    async fn delete(&self, s: &SessionId) -> Result<u64, session_trail::Error> {
        HistoryStore::delete(&self.inner, s).await
    }
    async fn link_user(&self, u: &str, s: &SessionId, e: i64) -> Result<(), session_trail::Error> {
        self.inner.link_user(u, s, e).await
    }
    async fn user_sessions(&self, u: &str) -> Result<Vec<SessionId>, session_trail::Error> {
        self.inner.user_sessions(u).await
    }
    async fn unlink_sessions(&self, u: &str, s: &[SessionId]) -> Result<(), session_trail::Error> {
        self.inner.unlink_sessions(u, s).await
    }
    fn keeps_checkpoints(&self) -> bool {
        self.keeps
    }
    async fn put_checkpoint(&self, cp: &Checkpoint) -> Result<(), session_trail::Error> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(session_trail::Error::new(
                session_trail::ErrorKind::Unavailable,
                "down",
            ));
        }
        self.inner.put_checkpoint(cp).await
    }
    async fn checkpoints(&self) -> Result<Vec<Bytes>, session_trail::Error> {
        self.inner.checkpoints().await
    }
}

/// Checkpoints whose heads were stripped in the store (no key needed: the
/// MAC covers the root, not the heads) are reported, and the sink's copy
/// still catches the cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stripped_heads_in_the_store_are_reported() {
    let (store, sink, w) = rig(1000);
    let (cut, gone) = (SessionId::generate(), SessionId::generate());
    write(&w, cut, 5).await;
    write(&w, gone, 3).await;
    w.checkpoint().await.unwrap();
    for raw in store.checkpoints().await.unwrap() {
        let cp = Checkpoint::decode(&raw).unwrap();
        store.put_checkpoint(&cp.header()).await.unwrap();
    }
    let entries = store.read_all(&cut).await.unwrap();
    let outside = FileSink::read(&sink).unwrap();
    let id = w.writer_id().unwrap();
    for (log, removed) in [
        (log_of(&store, &outside, now_ms()).await, true),
        (log_of(&store, &[], now_ms()).await, false),
    ] {
        assert!(
            log.problems().contains(&CheckpointProblem::BadRoot(id, 1)),
            "{:?}",
            log.problems()
        );
        assert_eq!(
            log.problems().contains(&CheckpointProblem::Removed(id, 1)),
            removed
        );
        let v = check(&store, &cut, &entries[..2], &log);
        assert_eq!(!v.is_ok(), removed, "{:?}", v.breaks);
    }
    let _ = std::fs::remove_file(&sink);
}

/// A store that keeps no checkpoints: the sink's copy is the only one,
/// and nothing in it is reported as removed; cuts are still caught.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_keeps_no_checkpoints_relies_on_the_sink() {
    let store = Wrapped::new(false);
    let sink = sink_path();
    let w = common::checkpoints::writer(store.clone(), &sink);
    let sid = SessionId::generate();
    write(&w, sid, 4).await;
    w.checkpoint().await.unwrap();
    assert!(store.checkpoints().await.unwrap().is_empty());
    let outside = FileSink::read(&sink).unwrap();
    assert_eq!(outside.len(), 1);
    let log = w.checkpoint_log(&outside).await.unwrap();
    assert!(log.problems().is_empty(), "{:?}", log.problems());
    let entries = store.read_all(&sid).await.unwrap();
    let v = verify_checkpointed(&ring(), &sid, &entries[..2], Options::default(), &log);
    assert_eq!(
        v.breaks[0].kind,
        BreakKind::TruncatedTail { from: 3, to: 4 }
    );
    let _ = std::fs::remove_file(&sink);
}

/// While the store cannot keep a checkpoint, the sink gets nothing (so a
/// copy in the sink is one the store had: one missing there was removed),
/// what the writer hands over meanwhile is merged into one checkpoint, and
/// a shutdown gives up at its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_holds_checkpoints_back_and_merges_them() {
    let store = Wrapped::new(true);
    let sink = sink_path();
    let config = common::checkpoints::config(&sink)
        .backoff_max(Duration::from_millis(20))
        .checkpoint_interval(Duration::from_millis(20));
    let w = HistoryWriter::start(store.clone(), ring(), config).unwrap();
    store.set_down(true);
    let first = SessionId::generate();
    write(&w, first, 1).await;
    common::app::eventually(10, "the first checkpoint formed", || {
        let formed = w.stats().checkpoints_formed;
        async move { (formed == 1).then_some(()) }
    })
    .await;
    let later: Vec<SessionId> = (0..8).map(|_| SessionId::generate()).collect();
    for sid in &later {
        write(&w, *sid, 1).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert_eq!(w.stats().checkpoints_formed, 1, "the others wait, merged");
    assert!(
        FileSink::read(&sink).unwrap().is_empty(),
        "nothing in the sink the store lacks"
    );

    store.set_down(false);
    common::app::eventually(10, "both checkpoints kept", || {
        let kept = w.stats().checkpoints_kept;
        async move { (kept == 2).then_some(()) }
    })
    .await;
    let outside = FileSink::read(&sink).unwrap();
    assert_eq!(outside.len(), 2);
    assert!(later.iter().all(|s| outside[1].head_of(s).is_some()));
    let log = w.checkpoint_log(&outside).await.unwrap();
    assert!(log.problems().is_empty(), "{:?}", log.problems());

    // Down again at shutdown: the last checkpoint is given up at the
    // deadline, and is in neither copy.
    store.set_down(true);
    write(&w, SessionId::generate(), 1).await;
    let err = w.shutdown(Duration::from_millis(300)).await.unwrap_err();
    assert_eq!(err.kind(), session_trail::ErrorKind::Timeout, "{err}");
    store.set_down(false);
    let outside = FileSink::read(&sink).unwrap();
    let log = CheckpointLog::new(
        &ring(),
        &store.checkpoints().await.unwrap(),
        &outside,
        HistoryStore::retention(&store),
        now_ms(),
    );
    assert!(log.problems().is_empty(), "{:?}", log.problems());
    let _ = std::fs::remove_file(&sink);
}

/// The store trims checkpoints by another app server's clock: one trimmed
/// a little early by the verifier's clock is not reported as removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lawful_trim_is_not_removed_under_clock_skew() {
    let (store, sink, w) = rig(1000);
    write(&w, SessionId::generate(), 1).await;
    w.checkpoint().await.unwrap();
    let outside = FileSink::read(&sink).unwrap();
    let none: Vec<Bytes> = Vec::new();
    let ttl = TTL.as_millis() as i64;
    let id = w.writer_id().unwrap();
    for (now, removed) in [
        (outside[0].at + 1000, true),
        (outside[0].at + ttl - 1000, false),
        (outside[0].at + ttl, false),
    ] {
        let log = CheckpointLog::new(
            &ring(),
            &none,
            &outside,
            HistoryStore::retention(&store),
            now,
        );
        assert_eq!(
            log.problems() == [CheckpointProblem::Removed(id, 1)],
            removed,
            "{:?}",
            log.problems()
        );
    }
    let _ = std::fs::remove_file(&sink);
}

/// A line cut short by a crash before a restart: the next process's sink
/// starts a line of its own, and the file reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_torn_before_a_restart_is_passed_over() {
    let (_store, sink, w) = rig(1000);
    write(&w, SessionId::generate(), 1).await;
    w.checkpoint().await.unwrap();
    drop(w);
    {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&sink)
            .unwrap();
        f.write_all(br#"{"writer":"0011"#).unwrap();
    }
    let (_store, _, w) = {
        let store = store(1000);
        let w = common::checkpoints::writer(store.clone(), &sink);
        (store, (), w)
    };
    write(&w, SessionId::generate(), 1).await;
    w.checkpoint().await.unwrap();
    let read = FileSink::read(&sink).unwrap();
    assert_eq!(read.len(), 2);
    let _ = std::fs::remove_file(&sink);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasures_and_trims_in_memory_are_lawful() {
    common::checkpoints::erasure_and_trims_through_the_store_are_not_reported(store(3)).await;
}

/// What a user records after erasing their history, through the same app
/// server, is protected by that server's next checkpoint: its receipt and
/// its heads share one clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_written_after_an_erasure_is_protected() {
    let store = store(1000);
    let sink = sink_path();
    let layer = common::checkpoints::layer(&store, &sink);
    let w = layer.history_writer().unwrap().clone();
    let mut c = common::app::Client::new(common::app::router(layer));
    c.send("POST", &format!("/login/{}", SessionId::generate()))
        .await;
    for _ in 0..3 {
        c.send("GET", "/visits").await;
    }
    w.checkpoint().await.unwrap();
    let page = c.json("GET", "/history").await;
    let sid: SessionId = page["session"].as_str().unwrap().parse().unwrap();
    c.json("DELETE", "/history").await;
    for _ in 0..5 {
        c.send("GET", "/visits").await;
    }
    w.checkpoint().await.unwrap();
    let log = w
        .checkpoint_log(&FileSink::read(&sink).unwrap())
        .await
        .unwrap();
    assert!(log.problems().is_empty(), "{:?}", log.problems());
    let entries = store.read_all(&sid).await.unwrap();
    assert!(w.audit(&sid, &log).await.unwrap().is_ok());
    let v = verify_checkpointed(&ring(), &sid, &entries[..1], Options::default(), &log);
    assert!(
        matches!(v.breaks[..], [b] if matches!(b.kind, BreakKind::TruncatedTail { .. })),
        "{:?}",
        v.breaks
    );
    let _ = std::fs::remove_file(&sink);
}

/// Two lines run together (a fragment appended to the file, then the
/// sink's next line) make the file fail to read, loudly: only a line cut
/// short is passed over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_run_together_are_an_error_not_skipped() {
    let (_store, sink, w) = rig(1000);
    write(&w, SessionId::generate(), 1).await;
    w.checkpoint().await.unwrap();
    {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&sink)
            .unwrap();
        f.write_all(br#"{"note":""#).unwrap();
    }
    write(&w, SessionId::generate(), 1).await;
    w.checkpoint().await.unwrap();
    let err = FileSink::read(&sink).unwrap_err();
    assert_eq!(err.kind(), session_trail::ErrorKind::Corrupt, "{err}");
    assert!(err.to_string().contains("line 2"), "{err}");
    let _ = std::fs::remove_file(&sink);
}

/// An append the store applied but answered `Failed` for is sent again
/// later and answered `AlreadyApplied`: its head is attested as sent no
/// later than the first attempt, not the last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_applied_at_an_earlier_attempt_is_dated_by_it() {
    use std::sync::atomic::Ordering::SeqCst;
    let store = Wrapped::new(true);
    let sink = sink_path();
    let config = common::checkpoints::config(&sink).backoff_max(Duration::from_millis(50));
    let w = HistoryWriter::start(store.clone(), ring(), config).unwrap();
    let sid = SessionId::generate();
    store.flaky.store(1, SeqCst);
    assert!(w.enqueue(sid, vec![Draft::event("step", &json!({})).unwrap()]));
    common::app::eventually(10, "three answers of Failed", || {
        let n = store.failed.load(SeqCst);
        async move { (n >= 3).then_some(()) }
    })
    .await;
    store.flaky.store(0, SeqCst);
    w.checkpoint().await.unwrap();
    let log = w
        .checkpoint_log(&FileSink::read(&sink).unwrap())
        .await
        .unwrap();
    let applied = store.applied_at.load(SeqCst);
    let a = log.attestations(&sid)[0];
    assert!(a.since <= applied, "sent {} > applied {applied}", a.since);
    let _ = std::fs::remove_file(&sink);
}

/// A session whose append failed before its user erased the history:
/// what it records after the erasure is dated by its own batches, not by
/// the failed one, so the writer's receipt does not void it and a cut is
/// reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_append_before_an_erasure_leaves_the_new_history_protected() {
    let store = store(1000);
    let sink = sink_path();
    let config = common::checkpoints::config(&sink)
        .flush_timeout(Duration::from_millis(500))
        .backoff_max(Duration::from_millis(20));
    let layer = session_trail::SessionLayer::builder(store.clone(), key())
        .history_writer(config)
        .build()
        .unwrap();
    let w = layer.history_writer().unwrap().clone();
    let mut c = common::app::Client::new(common::app::router(layer));
    c.send("POST", &format!("/login/{}", SessionId::generate()))
        .await;
    let page = c.json("GET", "/history").await;
    let sid: SessionId = page["session"].as_str().unwrap().parse().unwrap();
    w.checkpoint().await.unwrap();
    store.poison_history(sid, true);
    c.send("GET", "/visits").await;
    common::app::eventually(10, "the append to fail", || {
        let failures = w.stats().session_failures;
        async move { (failures >= 1).then_some(()) }
    })
    .await;
    c.json("DELETE", "/history").await;
    store.poison_history(sid, false);
    for _ in 0..5 {
        c.send("GET", "/visits").await;
    }
    w.checkpoint().await.unwrap();
    let log = w
        .checkpoint_log(&FileSink::read(&sink).unwrap())
        .await
        .unwrap();
    let entries = store.read_all(&sid).await.unwrap();
    let v = verify_checkpointed(&ring(), &sid, &entries[..1], Options::default(), &log);
    assert!(
        matches!(v.breaks[..], [b] if matches!(b.kind, BreakKind::TruncatedTail { .. })),
        "{:?}",
        v.breaks
    );
    let _ = std::fs::remove_file(&sink);
}

/// A user who erases again and again adds one receipt per checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_erasures_add_one_receipt() {
    let store = store(1000);
    let sink = sink_path();
    let layer = common::checkpoints::layer(&store, &sink);
    let w = layer.history_writer().unwrap().clone();
    let mut c = common::app::Client::new(common::app::router(layer));
    c.send("POST", &format!("/login/{}", SessionId::generate()))
        .await;
    c.send("GET", "/visits").await;
    for _ in 0..50 {
        c.json("DELETE", "/history").await;
    }
    w.checkpoint().await.unwrap();
    let receipts: usize = FileSink::read(&sink)
        .unwrap()
        .iter()
        .map(|c| c.erasures.len())
        .sum();
    assert_eq!(receipts, 1);
    let _ = std::fs::remove_file(&sink);
}
