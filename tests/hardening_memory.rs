//! The history's guarantees under hostile and unlucky conditions, on the
//! in-memory store; and the writer's own guarantees, driven through the
//! memory store's fault injection (they do not depend on the store).

mod common;

use std::time::Duration;

use serde_json::{Value, json};
use session_trail::history::{Draft, Entry, HistoryWriter, Options, WriterConfig, verify};
use session_trail::store::{Append, HistoryStore, MemoryStore, tag_of};
use session_trail::{Key, KeyRing, SessionId};

use common::app::eventually;

hardening_suite!(|| async { MemoryStore::new() });

fn ring() -> KeyRing {
    KeyRing::from(Key::from_bytes(&common::secret(5)).unwrap())
}

fn event(i: usize) -> Draft {
    Draft::event("step", &json!({ "i": i })).unwrap()
}

async fn decoded(store: &MemoryStore, sid: &SessionId) -> Vec<Value> {
    store
        .read_all(sid)
        .await
        .unwrap()
        .iter()
        .map(|b| Entry::decode(b).unwrap().to_json())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gaps_stay_one_per_session_during_an_outage() {
    let store = MemoryStore::new();
    let config = WriterConfig::default()
        .queue_entries(8)
        .flush_interval(Duration::from_millis(2))
        .backoff_max(Duration::from_millis(20));
    let w = HistoryWriter::start(store.clone(), ring(), config).unwrap();
    let sid = SessionId::generate();
    store.history_faults().set_down(true);
    let mut n = 0;
    // Drops keep coming while the writer retries many times.
    for round in 1..=4u64 {
        for _ in 0..100 {
            w.enqueue(sid, vec![event(n)]);
            n += 1;
        }
        let w2 = w.clone();
        eventually(10, "the writer to retry", move || {
            let w = w2.clone();
            async move { (w.stats().retried >= 5 * round).then_some(()) }
        })
        .await;
    }
    let dropped = w.stats().dropped;
    assert!(dropped >= 390, "{:?}", w.stats());
    store.history_faults().set_down(false);
    w.flush().await.unwrap();
    // Gap entries are the writer's own: wait for the count to arrive.
    let store2 = store.clone();
    let gaps = eventually(10, "the gap entries", move || {
        let store = store2.clone();
        async move {
            let gaps: Vec<Value> = decoded(&store, &sid)
                .await
                .into_iter()
                .filter(|e| e["kind"] == "gap")
                .collect();
            let total: u64 = gaps.iter().filter_map(|g| g["dropped"].as_u64()).sum();
            (total == dropped).then_some(gaps)
        }
    })
    .await;
    // One gap was written with the batch in flight when the outage began;
    // everything dropped after that shares one more.
    assert!(gaps.len() <= 2, "one pending gap per session: {gaps:#?}");
    assert_eq!(w.stats().unattributed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_ack_and_another_servers_append_leave_no_duplicates() {
    let store = MemoryStore::new();
    let config = WriterConfig::default().flush_interval(Duration::from_millis(2));
    let a = HistoryWriter::start(store.clone(), ring(), config).unwrap();
    let sid = SessionId::generate();
    a.enqueue(sid, vec![event(1)]);
    a.flush().await.unwrap();
    // Server A's next append is applied but every answer is lost for now.
    store.history_faults().lose_next_acks(u64::MAX);
    a.enqueue(sid, vec![event(2)]);
    let a2 = a.clone();
    eventually(10, "server A's append to be applied", move || {
        let a = a2.clone();
        async move { (a.stats().retried >= 1).then_some(()) }
    })
    .await;
    // Server B appends on top (its answer is lost too; it was applied).
    let stored = store.read_all(&sid).await.unwrap();
    assert_eq!(stored.len(), 2);
    let head = tag_of(stored.last().unwrap()).unwrap();
    let b = event(3).sign(ring().current(), &sid, 3, &head);
    let _ = store
        .append(&[Append {
            session: sid,
            expected_head: Some(head),
            entries: vec![b],
            token: None,
        }])
        .await;
    store.history_faults().lose_next_acks(0);
    a.flush().await.unwrap();
    let raw = store.read_all(&sid).await.unwrap();
    let entries = decoded(&store, &sid).await;
    assert_eq!(
        common::hardening::duplicate_ids(&entries),
        Vec::<String>::new(),
        "{entries:#?}"
    );
    assert_eq!(entries.len(), 3, "{entries:#?}");
    let v = verify(
        &ring(),
        &sid,
        &raw,
        Options {
            keep: store.retention().keep,
            window: false,
        },
    );
    assert!(v.is_ok(), "{v:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alternating_live_and_dead_cookies_cost_no_append_per_entry() {
    use common::app::{Client, router};
    use session_trail::SessionLayer;
    let store = MemoryStore::new();
    let layer = SessionLayer::builder(store.clone(), Key::from_bytes(&common::secret(8)).unwrap())
        // Batches form only when flushed: the count of store calls does not
        // depend on how fast the requests run.
        .history_writer(WriterConfig::default().flush_interval(Duration::from_secs(30)))
        .build()
        .unwrap();
    let mut live = Client::new(router(layer.clone()));
    live.send("GET", "/visits").await;
    let mut dead = live.fork();
    live.send("POST", "/regenerate").await;
    layer.history_writer().unwrap().flush().await.unwrap();
    let before = store.history_faults().calls();
    for _ in 0..100 {
        live.send("GET", "/ping").await;
        dead.send("GET", "/ping").await;
    }
    layer.history_writer().unwrap().flush().await.unwrap();
    let appends = store.history_faults().calls() - before;
    assert!(appends <= 10, "{appends} store calls for 200 requests");
    assert!(layer.history_writer().unwrap().stats().refused >= 90);
}
