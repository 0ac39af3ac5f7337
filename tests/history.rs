//! Session history: entries per request, events, lifecycle, the writer
//! under faults, and verification.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use common::app::{Client, eventually, router, router_with};
use http::StatusCode;
use serde_json::{Value, json};
use session_trail::history::{
    Draft, Entry, EntryKind, HistoryPage, HistoryWriter, Options, WriterConfig, verify,
};
use session_trail::store::{HistoryStore, MemoryStore};
use session_trail::{Key, KeyRing, Session, SessionId, SessionInfo, SessionLayer};

fn key() -> Key {
    Key::from_bytes(&common::secret(5)).unwrap()
}

fn fast() -> WriterConfig {
    WriterConfig::default()
        .flush_interval(Duration::from_millis(5))
        .backoff_max(Duration::from_millis(20))
}

fn layer_with(store: &MemoryStore, config: WriterConfig) -> SessionLayer {
    SessionLayer::builder(store.clone(), key())
        .history_writer(config)
        .build()
        .unwrap()
}

async fn stored(store: &MemoryStore, sid: &SessionId) -> Vec<Bytes> {
    store.read_all(sid).await.unwrap()
}

fn decode(entries: &[Bytes]) -> Vec<Entry> {
    entries.iter().map(|b| Entry::decode(b).unwrap()).collect()
}

fn kinds(entries: &[Entry]) -> Vec<String> {
    entries
        .iter()
        .map(|e| match e.to_json()["event"].as_str() {
            Some(name) => format!("event:{name}"),
            None => e.kind.as_str().to_owned(),
        })
        .collect()
}

fn assert_chain_ok(store: &MemoryStore, sid: &SessionId, entries: &[Bytes]) {
    let v = verify(
        &KeyRing::new(key()),
        sid,
        entries,
        Options {
            keep: store.retention().keep,
            window: false,
        },
    );
    assert!(v.is_ok(), "chain breaks: {:?}", v.breaks);
    let seqs: Vec<u64> = decode(entries).iter().map(|e| e.seq).collect();
    let want: Vec<u64> = (1..=entries.len() as u64).collect();
    assert_eq!(seqs, want, "seq is contiguous from 1");
}

async fn sid_of(c: &mut Client) -> SessionId {
    c.json("GET", "/me").await["session"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_produces_exactly_one_request_entry() {
    let store = MemoryStore::new();
    let layer = layer_with(&store, fast());
    let writer = layer.history_writer().unwrap().clone();
    let mut c = Client::new(router(layer));
    c.send("GET", "/visits").await; // 1
    c.send("GET", "/ping").await; // 2: untouched session, still recorded
    c.send("GET", "/visits?secret=1").await; // 3
    let sid = sid_of(&mut c).await; // 4
    writer.flush().await.unwrap();
    let entries = decode(&stored(&store, &sid).await);
    let requests: Vec<&Entry> = entries
        .iter()
        .filter(|e| e.kind == EntryKind::Request)
        .collect();
    assert_eq!(requests.len(), 4, "{:?}", kinds(&entries));
    let paths: Vec<String> = requests
        .iter()
        .map(|e| e.to_json()["path"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(paths, ["/visits", "/ping", "/visits", "/me"]);
    for e in &entries {
        let text = e.to_json().to_string();
        assert!(!text.contains("secret"), "query string leaked: {text}");
        assert!(
            !text.contains(c.cookie.as_deref().unwrap()),
            "credential leaked"
        );
    }
    // An anonymous request without a session records nothing.
    let before = writer.stats().enqueued;
    Client::new(c.app.clone()).send("GET", "/ping").await;
    assert_eq!(writer.stats().enqueued, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_and_lifecycle_entries_appear_in_order_with_contiguous_seq() {
    let store = MemoryStore::new();
    let layer = layer_with(&store, fast());
    let writer = layer.history_writer().unwrap().clone();
    let mut c = Client::new(router(layer));
    c.send_body("POST", "/event/add_to_cart", Some(json!({"item": "book"})))
        .await;
    let sid = sid_of(&mut c).await;
    c.send("POST", "/login/alice").await;
    c.send("POST", "/elevate").await;
    c.send("POST", "/logout").await;
    writer.flush().await.unwrap();
    let raw = stored(&store, &sid).await;
    assert_chain_ok(&store, &sid, &raw);
    let entries = decode(&raw);
    assert_eq!(
        kinds(&entries),
        [
            "started",
            "event:add_to_cart",
            "request", // POST /event
            "request", // GET /me
            "privilege_changed",
            "rotated",
            "request", // login
            "privilege_changed",
            "rotated",
            "request", // elevate
            "ended",
            "request", // logout
        ]
    );
    let j: Vec<Value> = entries.iter().map(Entry::to_json).collect();
    assert_eq!(j[1]["data"], json!({"item": "book"}));
    assert_eq!(j[4]["from_user"], Value::Null);
    assert!(j[4]["to_user"].is_string(), "user is a pseudonym");
    assert_ne!(j[4]["to_user"], "alice", "never the raw user name");
    assert_eq!(j[8]["to_privilege"], "admin");
    assert_eq!(j[10]["reason"], "logout");
    let all = serde_json::to_string(&j).unwrap();
    assert!(!all.contains("alice"), "raw user name in history: {all}");
    assert_eq!(
        j[6]["path"], "/login/{user}",
        "route template from MatchedPath"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_is_stored_within_one_flush_interval() {
    let store = MemoryStore::new();
    let config = WriterConfig::default().flush_interval(Duration::from_millis(50));
    let mut c = Client::new(router(layer_with(&store, config)));
    c.send("GET", "/visits").await;
    let sid = sid_of(&mut c).await;
    let t = std::time::Instant::now();
    eventually(2, "entries in the store", || {
        let store = store.clone();
        async move { (store.read_all(&sid).await.unwrap().len() >= 3).then_some(()) }
    })
    .await;
    // Not a timing assertion of the test's pass/fail on a loaded machine:
    // the deadline above is generous; this records the observed delay.
    eprintln!("visible after {:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_reads_its_own_writes_before_they_are_stored() {
    let store = MemoryStore::new();
    // A flush interval far longer than the test: entries stay queued.
    let config = WriterConfig::default().flush_interval(Duration::from_secs(3600));
    let mut c = Client::new(router(layer_with(&store, config)));
    c.send_body("POST", "/event/add_to_cart", Some(json!({"item": "pen"})))
        .await;
    let sid = sid_of(&mut c).await;
    assert!(stored(&store, &sid).await.is_empty(), "nothing written yet");
    let page = c.json("GET", "/history").await;
    let events: Vec<&Value> = page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "event")
        .collect();
    assert_eq!(events.len(), 1, "{page}");
    assert_eq!(events[0]["event"], "add_to_cart");
    assert_eq!(page["chain"]["ok"], true, "{page}");
    // Newest first.
    let seqs: Vec<u64> = page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] > w[1]), "{seqs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_fails_for_a_while_ends_with_every_entry_and_a_valid_chain() {
    let store = MemoryStore::new();
    let layer = layer_with(&store, fast());
    let writer = layer.history_writer().unwrap().clone();
    let mut c = Client::new(router(layer));
    c.send("GET", "/visits").await;
    let sid = sid_of(&mut c).await;
    writer.flush().await.unwrap();
    store.history_faults().fail_next(6);
    for _ in 0..20 {
        assert_eq!(c.send("GET", "/visits").await.status(), StatusCode::OK);
    }
    writer.flush().await.unwrap();
    let raw = stored(&store, &sid).await;
    assert_eq!(raw.len(), 3 + 20);
    assert_chain_ok(&store, &sid, &raw);
    let stats = writer.stats();
    assert!(stats.retried >= 6, "{stats:?}");
    assert_eq!(stats.dropped, 0);
    assert_eq!(stats.queue_depth, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_ack_is_retried_without_a_duplicate() {
    let store = MemoryStore::new();
    let writer = HistoryWriter::start(store.clone(), KeyRing::new(key()), fast()).unwrap();
    let sid = SessionId::generate();
    store.history_faults().lose_next_acks(3);
    for i in 0..10 {
        writer.enqueue(
            sid,
            vec![Draft::request("GET", &format!("/{i}"), 200, 1, None)],
        );
        if i % 3 == 0 {
            writer.flush().await.unwrap();
        }
    }
    writer.flush().await.unwrap();
    let raw = stored(&store, &sid).await;
    assert_eq!(raw.len(), 10, "no duplicate, nothing lost");
    assert_chain_ok(&store, &sid, &raw);
    let ids: HashSet<[u8; 16]> = decode(&raw).iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), 10);
    assert!(writer.stats().retried >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_appending_to_the_same_sessions_end_with_valid_chains() {
    let store = MemoryStore::new();
    let w1 = HistoryWriter::start(store.clone(), KeyRing::new(key()), fast()).unwrap();
    let w2 = HistoryWriter::start(store.clone(), KeyRing::new(key()), fast()).unwrap();
    let sids: Vec<SessionId> = (0..8).map(|_| SessionId::generate()).collect();
    let mut tasks = Vec::new();
    for (n, w) in [w1.clone(), w2.clone()].into_iter().enumerate() {
        let sids = sids.clone();
        tasks.push(tokio::spawn(async move {
            for round in 0..50 {
                for s in &sids {
                    w.enqueue(
                        *s,
                        vec![Draft::request(
                            "GET",
                            &format!("/w{n}/{round}"),
                            200,
                            1,
                            None,
                        )],
                    );
                }
                if round % 7 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    w1.flush().await.unwrap();
    w2.flush().await.unwrap();
    for s in &sids {
        let raw = stored(&store, s).await;
        assert_eq!(raw.len(), 100, "nothing lost");
        assert_chain_ok(&store, s, &raw);
    }
    assert!(
        w1.stats().conflicts + w2.stats().conflicts > 0,
        "the writers did contend"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overflow_counts_drops_and_records_a_gap_entry() {
    let store = MemoryStore::new();
    let config = fast().queue_entries(10);
    let writer = HistoryWriter::start(store.clone(), KeyRing::new(key()), config).unwrap();
    let sid = SessionId::generate();
    store.history_faults().set_down(true);
    let mut accepted = 0;
    for i in 0..25 {
        if writer.enqueue(
            sid,
            vec![Draft::request("GET", &format!("/{i}"), 200, 1, None)],
        ) {
            accepted += 1;
        }
    }
    assert_eq!(accepted, 10);
    let stats = writer.stats();
    assert_eq!(stats.dropped, 15);
    assert_eq!(stats.queue_depth, 10);
    store.history_faults().set_down(false);
    writer.flush().await.unwrap();
    // Drops may be collected in more than one round: every dropped entry is
    // accounted for by some gap entry.
    let gap_total = |raw: &[Bytes]| -> u64 {
        decode(raw)
            .iter()
            .filter(|e| e.kind == EntryKind::Gap)
            .map(|e| e.to_json()["dropped"].as_u64().unwrap())
            .sum()
    };
    let raw = eventually(5, "gap entries covering every drop", || {
        let store = store.clone();
        async move {
            let raw = store.read_all(&sid).await.unwrap();
            (gap_total(&raw) == 15).then_some(raw)
        }
    })
    .await;
    assert_chain_ok(&store, &sid, &raw);
    let entries = decode(&raw);
    assert_eq!(
        entries
            .iter()
            .filter(|e| e.kind == EntryKind::Request)
            .count(),
        10
    );
    for gap in entries.iter().filter(|e| e.kind == EntryKind::Gap) {
        assert_eq!(gap.to_json()["reason"], "queue_full");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_store_is_detected_and_recorded_as_a_gap() {
    let store = MemoryStore::new();
    let writer = HistoryWriter::start(store.clone(), KeyRing::new(key()), fast()).unwrap();
    let sid = SessionId::generate();
    for i in 0..5 {
        writer.enqueue(
            sid,
            vec![Draft::request("GET", &format!("/{i}"), 200, 1, None)],
        );
    }
    writer.flush().await.unwrap();
    store.wipe();
    writer.enqueue(sid, vec![Draft::request("GET", "/after", 200, 1, None)]);
    writer.flush().await.unwrap();
    let raw = stored(&store, &sid).await;
    assert_chain_ok(&store, &sid, &raw);
    let entries = decode(&raw);
    assert_eq!(entries[0].kind, EntryKind::Gap);
    let gap = entries[0].to_json();
    assert_eq!(gap["reason"], "store_lost");
    assert_eq!(gap["lost_through_seq"], 5);
    assert_eq!(entries[1].to_json()["path"], "/after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_everything_queued() {
    let store = MemoryStore::new();
    let writer = HistoryWriter::start(store.clone(), KeyRing::new(key()), fast()).unwrap();
    store.history_faults().set_delay(Duration::from_millis(20));
    let sids: Vec<SessionId> = (0..50).map(|_| SessionId::generate()).collect();
    for s in &sids {
        for i in 0..20 {
            assert!(writer.enqueue(
                *s,
                vec![Draft::request("GET", &format!("/{i}"), 200, 1, None)]
            ));
        }
    }
    writer.shutdown(Duration::from_secs(20)).await.unwrap();
    for s in &sids {
        assert_eq!(stored(&store, s).await.len(), 20);
    }
    let stats = writer.stats();
    assert_eq!(stats.written, 1000);
    assert_eq!(stats.queue_depth, 0);
    // After shutdown nothing is accepted, and that is counted.
    assert!(!writer.enqueue(sids[0], vec![Draft::request("GET", "/late", 200, 1, None)]));
    assert_eq!(writer.stats().dropped, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_reports_what_it_could_not_write_by_the_deadline() {
    let store = MemoryStore::new();
    let writer = HistoryWriter::start(store.clone(), KeyRing::new(key()), fast()).unwrap();
    store.history_faults().set_down(true);
    writer.enqueue(
        SessionId::generate(),
        vec![Draft::request("GET", "/", 200, 1, None)],
    );
    let err = writer
        .shutdown(Duration::from_millis(200))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), session_trail::ErrorKind::Timeout);
    assert!(err.to_string().contains('1'), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_events_are_refused_not_truncated() {
    let store = MemoryStore::new();
    let mut c = Client::new(router(layer_with(&store, fast())));
    let res = c
        .send_body("POST", "/event/bad%0Aname", Some(json!({})))
        .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let big = json!({"blob": "x".repeat(5000)});
    let res = c.send_body("POST", "/event/too_big", Some(big)).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let body = common::app::body_json(res).await;
    // A stable message: the setting's name and value stay in the log.
    assert_eq!(body["error"], "invalid input", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_are_readable() {
    let store = MemoryStore::new();
    let layer = layer_with(&store, fast());
    let writer = layer.history_writer().unwrap().clone();
    let mut c = Client::new(router(layer));
    for _ in 0..5 {
        c.send("GET", "/visits").await;
    }
    writer.flush().await.unwrap();
    let s = writer.stats();
    assert_eq!(s.enqueued, 6, "started + 5 requests: {s:?}");
    assert_eq!(s.written, 6);
    assert_eq!(s.queue_depth, 0);
    assert_eq!(s.oldest_pending_ms, 0);
}

/// `HistoryPage`, `Entry` and `SessionInfo` implement `Serialize` with
/// exactly the JSON of their `to_json()`, so an application can put them in
/// its own typed responses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_page_entries_and_session_info_serialize_as_their_json() {
    type Seen = Arc<Mutex<Option<(HistoryPage, Vec<SessionInfo>)>>>;
    let seen: Seen = Arc::default();
    let grab = {
        let seen = seen.clone();
        get(move |session: Session| async move {
            let page = session.history(100).await?;
            let sessions = session.sessions().await?;
            *seen.lock().unwrap() = Some((page, sessions));
            Ok::<_, session_trail::Error>(StatusCode::OK)
        })
    };
    let store = MemoryStore::new();
    let layer = layer_with(&store, fast());
    let mut c = Client::new(router_with(layer, Router::new().route("/grab", grab)));
    c.send("POST", "/login/alice").await;
    c.send_body("POST", "/event/add_to_cart", Some(json!({"item": "book"})))
        .await;
    c.send("GET", "/visits").await;
    assert_eq!(c.send("GET", "/grab").await.status(), StatusCode::OK);
    let (page, sessions) = seen.lock().unwrap().take().unwrap();

    assert_eq!(serde_json::to_value(&page).unwrap(), page.to_json());
    let kinds: HashSet<EntryKind> = page.entries.iter().map(|e| e.kind).collect();
    for kind in [
        EntryKind::Request,
        EntryKind::Event,
        EntryKind::Started,
        EntryKind::PrivilegeChanged,
    ] {
        assert!(kinds.contains(&kind), "no {kind} entry in {kinds:?}");
    }
    for e in &page.entries {
        assert_eq!(serde_json::to_value(e).unwrap(), e.to_json(), "{e:?}");
    }
    assert_eq!(sessions.len(), 1);
    for s in &sessions {
        assert_eq!(serde_json::to_value(s).unwrap(), s.to_json());
    }

    // Embedded in an application's own type, unchanged.
    #[derive(serde::Serialize)]
    struct Dashboard<'a> {
        history: &'a HistoryPage,
        sessions: &'a [SessionInfo],
    }
    let typed = serde_json::to_value(Dashboard {
        history: &page,
        sessions: &sessions,
    })
    .unwrap();
    assert_eq!(typed["history"], page.to_json());
    assert_eq!(typed["sessions"][0], sessions[0].to_json());
    assert_eq!(typed["history"]["chain"]["trimmed_before"], Value::Null);
}

#[test]
fn tampering_with_stored_history_is_reported() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = MemoryStore::new();
        let writer = HistoryWriter::start(store.clone(), KeyRing::new(key()), fast()).unwrap();
        let sid = SessionId::generate();
        for i in 0..6 {
            writer.enqueue(
                sid,
                vec![Draft::request("GET", &format!("/{i}"), 200, 1, None)],
            );
        }
        writer.flush().await.unwrap();
        let mut raw: Vec<Vec<u8>> = stored(&store, &sid)
            .await
            .iter()
            .map(|b| b.to_vec())
            .collect();
        raw[2][20] ^= 1; // modify
        raw.remove(4); // delete
        let v = verify(&KeyRing::new(key()), &sid, &raw, Options::default());
        let found: Vec<(usize, &str)> = v
            .breaks
            .iter()
            .map(|b| (b.position, b.kind.as_str()))
            .collect();
        assert_eq!(found, [(2, "bad_tag"), (4, "missing")]);
    });
}
