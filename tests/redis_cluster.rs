//! The store conformance suite on a real three-master Redis Cluster, through
//! the same `RedisStore` type as a single node.
#![cfg(feature = "redis")]

mod common;

use std::sync::OnceLock;
use std::time::Duration;

use common::conformance::record;
use common::redis::RedisCluster;
use session_trail::history::{Draft, Options, verify};
use session_trail::store::{Append, AppendOutcome, HistoryStore, RedisStore, SessionStore, tag_of};
use session_trail::{Key, KeyRing, SessionId};

/// One cluster for the whole file; each test gets its own key prefix.
fn cluster() -> &'static RedisCluster {
    static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();
    CLUSTER.get_or_init(RedisCluster::start)
}

async fn store(keep: usize) -> RedisStore {
    let s = RedisStore::builder(cluster().url())
        .key_prefix(format!("t-{}", SessionId::generate()))
        .history_retention(keep, Duration::from_secs(3600))
        .connect()
        .await
        .expect("connect to the test cluster");
    assert!(s.is_cluster());
    s
}

store_conformance!(|keep: usize| store(keep));

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sessions_record_and_history_share_one_slot() {
    let s = store(1000).await;
    let key = Key::generate();
    let mut slots = std::collections::HashSet::new();
    for _ in 0..16 {
        let r = record(Some("sam"));
        s.create(&r).await.unwrap();
        let entry = Draft::request("GET", "/", 200, 1, None).sign(&key, &r.id, 1, &[0; 16]);
        let a = Append {
            session: r.id,
            expected_head: None,
            token: None,
            entries: vec![entry],
        };
        assert_eq!(s.append(&[a]).await.unwrap(), vec![AppendOutcome::Appended]);
        let (record_node, record_slot) = cluster().node_of(&s.record_key(&r.id));
        let (history_node, history_slot) = cluster().node_of(&s.history_key(&r.id));
        assert_eq!(record_slot, history_slot);
        assert_eq!(record_node, history_node);
        // Both keys are really there, on that node.
        let cli = |args: &[&str]| common::redis::cli(record_node, args);
        assert_eq!(cli(&["EXISTS", &s.record_key(&r.id)]).trim(), "1");
        assert_eq!(cli(&["LLEN", &s.history_key(&r.id)]).trim(), "1");
        slots.insert(record_node);
    }
    // Sixteen random sessions almost surely spread over more than one node.
    assert!(slots.len() > 1, "all sessions on one node: {slots:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linked_create_leaves_the_history_link_to_the_layer() {
    let s = store(1000).await;
    let r = record(Some("sam"));
    let link = session_trail::store::HistoryLink {
        user: "pseudonym-sam",
        session_ends: r.absolute_deadline,
    };
    // The user's indexes live in other slots: the record and the session
    // index are written, the history link is not (the layer makes it).
    assert!(!s.create_linked(&r, &link).await.unwrap());
    assert_eq!(s.load(&r.id).await.unwrap().map(|x| x.id), Some(r.id));
    assert_eq!(s.sessions_of_user("sam").await.unwrap().len(), 1);
    assert!(s.user_sessions("pseudonym-sam").await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_over_many_nodes_appends_every_session_in_order() {
    let s = store(1000).await;
    let key = Key::generate();
    let sids: Vec<SessionId> = (0..200).map(|_| SessionId::generate()).collect();
    let mut heads: Vec<Option<[u8; 16]>> = vec![None; sids.len()];
    for round in 0..3u64 {
        let batch: Vec<Append> = sids
            .iter()
            .zip(&heads)
            .map(|(sid, head)| {
                let e = Draft::request("GET", "/", 200, round, None).sign(
                    &key,
                    sid,
                    round + 1,
                    &head.unwrap_or([0; 16]),
                );
                Append {
                    session: *sid,
                    expected_head: *head,
                    token: None,
                    entries: vec![e],
                }
            })
            .collect();
        let out = s.append(&batch).await.unwrap();
        assert!(out.iter().all(|o| *o == AppendOutcome::Appended));
        heads = batch.iter().map(|a| a.last_tag()).collect();
        // A retry of the whole batch is acknowledged without a second copy.
        let again = s.append(&batch).await.unwrap();
        assert!(again.iter().all(|o| *o == AppendOutcome::AlreadyApplied));
    }
    let ring = KeyRing::new(key);
    for sid in &sids {
        let all = s.read_all(sid).await.unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(
            tag_of(all.last().unwrap()),
            heads[sids.iter().position(|x| x == sid).unwrap()]
        );
        assert!(verify(&ring, sid, &all, Options::default()).is_ok());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_are_reloaded_on_every_node_after_noscript() {
    let s = store(1000).await;
    let key = Key::generate();
    let sids: Vec<SessionId> = (0..30).map(|_| SessionId::generate()).collect();
    let batch = |seq: u64, heads: &[Option<[u8; 16]>]| -> Vec<Append> {
        sids.iter()
            .zip(heads)
            .map(|(sid, head)| {
                let e = Draft::request("GET", "/", 200, 0, None).sign(
                    &key,
                    sid,
                    seq,
                    &head.unwrap_or([0; 16]),
                );
                Append {
                    session: *sid,
                    expected_head: *head,
                    token: None,
                    entries: vec![e],
                }
            })
            .collect()
    };
    let first = batch(1, &vec![None; sids.len()]);
    assert!(
        s.append(&first)
            .await
            .unwrap()
            .iter()
            .all(|o| *o == AppendOutcome::Appended)
    );
    for n in &cluster().nodes {
        assert_eq!(n.cli(&["SCRIPT", "FLUSH"]).trim(), "OK");
    }
    let heads: Vec<_> = first.iter().map(|a| a.last_tag()).collect();
    let second = batch(2, &heads);
    assert!(
        s.append(&second)
            .await
            .unwrap()
            .iter()
            .all(|o| *o == AppendOutcome::Appended)
    );
    for n in &cluster().nodes {
        n.cli(&["SCRIPT", "FLUSH"]);
    }
    let r = record(None);
    s.create(&r).await.unwrap();
    let u = session_trail::store::Update {
        token_hash: r.token_hash,
        user: Some(Some("uma".into())),
        ..Default::default()
    };
    assert_eq!(
        s.update(&r.id, &u).await.unwrap(),
        session_trail::store::UpdateOutcome::Applied
    );
    let ids: Vec<SessionId> = s
        .sessions_of_user("uma")
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, vec![r.id]);
}

mod failures {
    use std::time::Duration;

    use serde_json::json;
    use session_trail::history::{Draft, HistoryWriter, WriterConfig};
    use session_trail::store::{HistoryStore, RedisStore};
    use session_trail::{Key, KeyRing, SessionId};

    use super::common::app::eventually;
    use super::common::redis::cli;

    fn writer(store: &RedisStore) -> HistoryWriter {
        let config = WriterConfig::default()
            .flush_interval(Duration::from_millis(5))
            .backoff_max(Duration::from_millis(200));
        HistoryWriter::start(store.clone(), KeyRing::from(Key::generate()), config).unwrap()
    }

    fn event(i: usize) -> Draft {
        Draft::event("step", &json!({ "i": i })).unwrap()
    }

    async fn wait_for_entries(store: &RedisStore, sessions: &[SessionId], n: usize) {
        for sid in sessions {
            let store = store.clone();
            let sid = *sid;
            eventually(20, "the healthy sessions' entries", move || {
                let store = store.clone();
                async move { (store.read_all(&sid).await.ok()?.len() == n).then_some(()) }
            })
            .await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_poisoned_session_blocks_no_other() {
        let s = super::store(1000).await;
        let w = writer(&s);
        let bad = SessionId::generate();
        let (node, _) = super::cluster().node_of(&s.history_key(&bad));
        cli(node, &["SET", &s.history_key(&bad), "not a list"]);
        let good: Vec<SessionId> = (0..12).map(|_| SessionId::generate()).collect();
        // Rounds apart in time, so the poisoned session fails (and would
        // hold everyone up) between them.
        for round in 0..3 {
            w.enqueue(bad, vec![event(round)]);
            for sid in &good {
                w.enqueue(*sid, vec![event(round)]);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        wait_for_entries(&s, &good, 3).await;
        let stats = w.stats();
        assert!(stats.session_failures > 0, "{stats:?}");
        assert_eq!(stats.sessions_backing_off, 1, "{stats:?}");
    }
}
