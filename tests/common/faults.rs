//! What the fault tests of every real store share: a writer configuration
//! that makes faults hit many attempts, a chain check that finds lost and
//! duplicated entries, and the outage test's router.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use axum::Router;
use axum::extract::Path;
use axum::routing::{get, post};
use http::StatusCode;
use serde_json::{Value, json};
use session_trail::history::{
    Body as EntryBody, Draft, Entry, EntryKind, HistoryWriter, Options, WriterConfig, verify,
};
use session_trail::store::HistoryStore;
use session_trail::{KeyRing, Session, SessionId, SessionLayer};

/// Small batches and short timeouts, so faults hit many attempts.
pub fn writer_config() -> WriterConfig {
    WriterConfig::default()
        .batch_entries(128)
        .flush_interval(Duration::from_millis(5))
        .attempt_timeout(Duration::from_millis(300))
        .backoff_max(Duration::from_millis(100))
}

pub fn tick(n: u64) -> Draft {
    Draft::event("tick", &json!({ "n": n })).unwrap()
}

/// Flushes the writer within a deadline.
pub async fn flush(writer: &HistoryWriter) {
    tokio::time::timeout(Duration::from_secs(60), writer.flush())
        .await
        .expect("the writer flushed within 60 s")
        .expect("the writer is running");
}

/// What one session's stored chain holds.
pub struct Checked {
    pub entries: Vec<Entry>,
    /// `tick` number → how many times it is stored.
    pub ticks: HashMap<u64, usize>,
}

/// Reads a session's history, checks that the chain verifies and that no
/// entry is stored twice (unique entry ids), and counts the ticks.
pub async fn check_chain<S: HistoryStore>(store: &S, ring: &KeyRing, sid: &SessionId) -> Checked {
    let all = store.read_all(sid).await.unwrap();
    let v = verify(ring, sid, &all, Options::default());
    assert!(v.is_ok(), "session {sid}: chain breaks {:?}", v.breaks);
    let entries: Vec<Entry> = all.iter().map(|b| Entry::decode(b).unwrap()).collect();
    let ids: HashSet<[u8; 16]> = entries.iter().map(|e| e.id).collect();
    assert_eq!(
        ids.len(),
        entries.len(),
        "session {sid}: an entry is stored twice"
    );
    let mut ticks = HashMap::new();
    for e in &entries {
        if let EntryBody::Event { name, data } = &e.body
            && name == "tick"
        {
            *ticks.entry(data["n"].as_u64().unwrap()).or_insert(0) += 1;
        }
    }
    Checked { entries, ticks }
}

pub fn assert_every_tick_once(sid: &SessionId, c: &Checked, range: std::ops::Range<u64>) {
    for n in range {
        match c.ticks.get(&n) {
            Some(1) => {}
            Some(k) => panic!("session {sid}: tick {n} stored {k} times"),
            None => panic!("session {sid}: tick {n} lost"),
        }
    }
}

pub fn gaps(c: &Checked) -> Vec<&Value> {
    c.entries
        .iter()
        .filter(|e| e.kind == EntryKind::Gap)
        .filter_map(|e| match &e.body {
            EntryBody::Details(v) => Some(v),
            _ => None,
        })
        .collect()
}

pub fn outage_router(layer: SessionLayer) -> Router {
    Router::new()
        .route("/ping", get(|| async { "pong" }))
        .route(
            "/login/{user}",
            post(|session: Session, Path(user): Path<String>| async move {
                session.set_user(Some(user)).await?;
                Ok::<_, session_trail::Error>(StatusCode::OK)
            }),
        )
        .route(
            "/me",
            get(|session: Session| async move {
                Ok::<_, session_trail::Error>(axum::Json(json!({ "user": session.user().await? })))
            }),
        )
        .route(
            "/shop.Cart/Add",
            post(|session: Session| async move {
                session.record("add_to_cart", json!({})).await?;
                Ok::<_, session_trail::Error>(StatusCode::OK)
            }),
        )
        .layer(layer)
}
