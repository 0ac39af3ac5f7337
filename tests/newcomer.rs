//! What a newcomer runs into: error kinds and texts, the layer's own 503,
//! logging, events of visitors without a session, failed handlers, dead
//! cookies.

mod common;

use std::error::Error as _;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::routing::post;
use http::StatusCode;
use serde_json::json;
use session_trail::history::{Entry, WriterConfig};
use session_trail::store::{HistoryStore, MemoryStore};
use session_trail::{Error, ErrorKind, Key, Session, SessionLayer};

use common::app::{Client, body_json, router_with};

fn key() -> Key {
    Key::from_bytes(b"newcomer-test-key-0123456789abcdef").unwrap()
}

fn layer(store: &MemoryStore) -> SessionLayer {
    SessionLayer::builder(store.clone(), key())
        .history_writer(WriterConfig::default().flush_interval(Duration::from_millis(5)))
        .build()
        .unwrap()
}

fn extra() -> Router {
    Router::new()
        .route(
            "/failed-login",
            post(|session: Session| async move {
                let recorded = session
                    .record_if_session("login_failed", json!({"reason": "bad password"}))
                    .await?;
                Ok::<_, Error>(axum::Json(json!({ "recorded": recorded })))
            }),
        )
        .route(
            "/fails",
            post(|session: Session| async move {
                session.insert("half-done", true).await?;
                session.record("attempted", json!({})).await?;
                Ok::<_, Error>(StatusCode::INTERNAL_SERVER_ERROR)
            }),
        )
}

/// A log sink for one test (the test runs on one thread).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn capture(&self) -> tracing::subscriber::DefaultGuard {
        let logs = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || logs.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    /// The warnings about errors answered to clients.
    fn answered_warnings(&self) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter(|l| l.contains("WARN") && l.contains(session_trail::ANSWER_TARGET))
            .collect()
    }

    fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

#[test]
fn error_chain_prints_each_text_once() {
    let io = std::io::Error::other("connection refused");
    let e = Error::unavailable(io).context("loading the session");
    let mut texts = vec![e.to_string()];
    let mut next = e.source();
    while let Some(s) = next {
        texts.push(s.to_string());
        next = s.source();
    }
    assert_eq!(
        texts,
        [
            "session store unavailable: loading the session",
            "connection refused"
        ]
    );
    for pair in texts.windows(2) {
        assert!(!pair[0].contains(&pair[1]), "{texts:?}");
    }
    // Context added twice reads outward-in, at one level.
    let e = Error::new(ErrorKind::Corrupt, "field tok").context("loading");
    assert_eq!(e.to_string(), "stored data is corrupt: loading: field tok");
    assert!(e.source().is_none());
}

#[tokio::test]
async fn the_layers_own_503_has_a_json_body_and_is_logged_once() {
    let logs = Logs::default();
    let _guard = logs.capture();
    let store = MemoryStore::new();
    let mut c = Client::new(router_with(layer(&store), extra()));
    c.send("GET", "/visits").await;
    // The save after the handler fails: the layer answers by itself.
    store.session_faults().fail_next(0);
    store.session_faults().lose_next_acks(1);
    let res = c.send("GET", "/visits").await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()["content-type"], "application/json");
    assert_eq!(res.headers()["retry-after"], "1");
    let body = body_json(res).await;
    assert_eq!(
        body["error"],
        "session store unavailable; try again shortly"
    );
    let warned = logs.answered_warnings();
    assert_eq!(warned.len(), 1, "{warned:#?}");
    assert!(
        warned[0].contains("acknowledgement lost"),
        "the cause is logged: {warned:?}"
    );
}

#[tokio::test]
async fn an_extractor_503_is_logged_once_at_warn() {
    let logs = Logs::default();
    let _guard = logs.capture();
    let store = MemoryStore::new();
    let mut c = Client::new(router_with(layer(&store), extra()));
    c.send("GET", "/visits").await;
    store.session_faults().set_down(true);
    let res = c.send("GET", "/visits").await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let warned = logs.answered_warnings();
    assert_eq!(warned.len(), 1, "{warned:#?}");
    assert!(warned[0].contains("injected fault"), "{warned:?}");
}

#[tokio::test]
async fn recording_a_failed_login_creates_no_session() {
    let logs = Logs::default();
    let _guard = logs.capture();
    let store = MemoryStore::new();
    let mut c = Client::new(router_with(layer(&store), extra()));
    let res = c.send("POST", "/failed-login").await;
    assert!(res.headers().get("set-cookie").is_none());
    assert_eq!(body_json(res).await["recorded"], false);
    assert_eq!(store.session_count(), 0);
    assert!(
        logs.lines()
            .iter()
            .any(|l| l.contains("session_trail::anonymous") && l.contains("login_failed"))
    );
    // With a session it goes to that session's history.
    c.send("GET", "/visits").await;
    let res = c.send("POST", "/failed-login").await;
    assert_eq!(body_json(res).await["recorded"], true);
}

#[tokio::test]
async fn a_server_error_discards_changes_but_keeps_the_history() {
    for save in [false, true] {
        let store = MemoryStore::new();
        let layer = SessionLayer::builder(store.clone(), key())
            .history_writer(WriterConfig::default().flush_interval(Duration::from_millis(5)))
            .save_on_server_error(save)
            .build()
            .unwrap();
        let mut c = Client::new(router_with(layer.clone(), extra()));
        c.send("GET", "/visits").await;
        let sid: session_trail::SessionId = c.json("GET", "/me").await["session"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let res = c.send("POST", "/fails").await;
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let record = session_trail::store::SessionStore::load(&store, &sid)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(record.data.contains_key("half-done"), save);
        layer.history_writer().unwrap().flush().await.unwrap();
        let entries: Vec<serde_json::Value> = store
            .read_all(&sid)
            .await
            .unwrap()
            .iter()
            .map(|b| Entry::decode(b).unwrap().to_json())
            .collect();
        let event = entries
            .iter()
            .position(|e| e["event"] == "attempted")
            .expect("the event is kept");
        assert_eq!(entries[event + 1]["status"], 500);
    }
}

#[tokio::test]
async fn a_dead_cookie_is_cleared_but_a_just_replaced_one_is_not() {
    let store = MemoryStore::new();
    let grace = Duration::from_millis(200);
    let layer = SessionLayer::builder(store.clone(), key())
        .history_writer(WriterConfig::default().flush_interval(Duration::from_millis(5)))
        .rotation_grace(grace)
        .build()
        .unwrap();
    let app = router_with(layer, extra());
    let mut phone = Client::new(app.clone());
    phone.send("POST", "/login/dora").await;
    let mut laptop = Client::new(app.clone());
    laptop.send("POST", "/login/dora").await;
    // Logged in twice; the phone's session is revoked from the laptop.
    let phone_sid = phone.json("GET", "/me").await["session"]
        .as_str()
        .unwrap()
        .to_owned();
    let res = laptop
        .send("DELETE", &format!("/sessions/{phone_sid}"))
        .await;
    assert!(res.status().is_success());
    // Past the grace window (a request in flight at the revocation keeps
    // its cookie).
    tokio::time::sleep(grace + Duration::from_millis(50)).await;
    let res = phone.send("GET", "/me").await;
    let set = common::app::session_cookie(&res, "session");
    assert_eq!(set.as_deref(), Some(""), "a removal cookie is set");
    assert!(phone.cookie.is_none());
    // Replaced moments ago (a login racing another request): kept.
    let mut c = Client::new(app);
    c.send("GET", "/visits").await;
    let mut racing = c.fork();
    c.send("POST", "/login/erin").await;
    let res = racing.send("GET", "/me").await;
    assert!(common::app::session_cookie(&res, "session").is_none());
}

#[tokio::test]
async fn an_outage_is_logged_once_then_summarised_then_its_recovery() {
    let logs = Logs::default();
    let _guard = logs.capture();
    let store = MemoryStore::new();
    let config = WriterConfig::default()
        .flush_interval(Duration::from_millis(2))
        .backoff_max(Duration::from_millis(10));
    let w = session_trail::history::HistoryWriter::start(
        store.clone(),
        session_trail::KeyRing::from(key()),
        config,
    )
    .unwrap();
    store.history_faults().set_down(true);
    let sid = session_trail::SessionId::generate();
    w.enqueue(
        sid,
        vec![session_trail::history::Draft::event("e", &json!({})).unwrap()],
    );
    let w2 = w.clone();
    common::app::eventually(10, "many retries", move || {
        let w = w2.clone();
        async move { (w.stats().retried >= 30).then_some(()) }
    })
    .await;
    store.history_faults().set_down(false);
    w.flush().await.unwrap();
    let lines = logs.lines();
    let warned = lines
        .iter()
        .filter(|l| l.contains("WARN") && l.contains("history write"))
        .count();
    assert_eq!(warned, 1, "one warning for 30 failed attempts: {lines:#?}");
    assert!(
        lines.iter().any(|l| l.contains("INFO")
            && l.contains("recovered")
            && l.contains("failed_attempts")),
        "{lines:#?}"
    );
}

#[tokio::test]
async fn a_visitor_without_a_session_gets_an_empty_history_page() {
    let store = MemoryStore::new();
    let mut c = Client::new(router_with(layer(&store), extra()));
    let res = c.send("GET", "/history").await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers().get("set-cookie").is_none());
    let page = body_json(res).await;
    assert_eq!(page["session"], serde_json::Value::Null);
    assert_eq!(page["entries"], json!([]));
    assert_eq!(page["chain"]["ok"], true);
    assert_eq!(store.session_count(), 0);
}

#[tokio::test]
async fn a_request_with_a_token_replaced_twice_keeps_its_cookie() {
    let store = MemoryStore::new();
    let mut c = Client::new(router_with(layer(&store), extra()));
    c.send("GET", "/visits").await;
    let mut in_flight = c.fork();
    // Two rotations within the grace window: the record knows only the
    // token it replaced last.
    c.send("POST", "/login/fay").await;
    c.send("POST", "/elevate").await;
    let res = in_flight.send("GET", "/me").await;
    assert!(
        common::app::session_cookie(&res, "session").is_none(),
        "a request in flight must not clear the browser's live cookie"
    );
    assert_eq!(c.json("GET", "/me").await["user"], "fay");
}

#[tokio::test]
async fn a_cookie_lost_with_the_store_is_cleared_an_unknown_end_is_not() {
    // Lost in a store restart: no record and no history. Cleared.
    let store = MemoryStore::new();
    let l = layer(&store);
    let mut c = Client::new(router_with(l.clone(), extra()));
    c.send("POST", "/login/gus").await;
    l.history_writer().unwrap().flush().await.unwrap();
    store.wipe();
    let res = c.send("GET", "/me").await;
    assert_eq!(
        common::app::session_cookie(&res, "session").as_deref(),
        Some("")
    );
    // Without history the layer cannot tell when a session ended: the
    // cookie stays (a removal could land after a newer cookie).
    let store = MemoryStore::new();
    let layer = SessionLayer::builder(store.clone(), key())
        .without_history()
        .build()
        .unwrap();
    let mut c = Client::new(router_with(layer, extra()));
    c.send("POST", "/login/gus").await;
    store.wipe();
    let res = c.send("GET", "/me").await;
    assert!(common::app::session_cookie(&res, "session").is_none());
}
