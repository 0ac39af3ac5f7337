//! The history's guarantees under hostile and unlucky conditions, written
//! once and run on every store with [`hardening_suite!`](crate::hardening_suite):
//! dead credentials, erasure across devices and servers, user switches,
//! saves that fail or are abandoned, poisoned and corrupt histories,
//! unmatched routes, expiry, and the session limit.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Path;
use axum::routing::{get, post};
use bytes::Bytes;
use http::{Request, StatusCode};
use serde_json::Value;
use session_trail::history::{Entry, WriterConfig};
use session_trail::store::{Append, HistoryStore, MemoryStore, SessionStore, tag_of};
use session_trail::{Key, Session, SessionId, SessionLayer, SessionLimit};
use tower::ServiceExt;

use super::app::{Client, eventually, router_with};

/// What a test needs to do to a store besides using it: make one save
/// fail, make one session's appends fail, corrupt one history's tail.
pub trait Faulty: SessionStore + HistoryStore + Clone {
    /// The next save of `sid` fails (after its load).
    fn break_next_save(&self, sid: &SessionId);
    /// Every append to `sid`'s history fails on its own.
    fn poison_history(&self, sid: &SessionId);
    /// Undoes [`poison_history`](Self::poison_history) where a history
    /// delete does not (the memory store's injected fault).
    fn heal_history(&self, sid: &SessionId);
    /// Puts an element shorter than a tag at the end of `sid`'s history.
    fn corrupt_tail(&self, sid: &SessionId) -> impl std::future::Future<Output = ()> + Send;
}

impl Faulty for MemoryStore {
    fn break_next_save(&self, _sid: &SessionId) {
        self.session_faults().fail_next(1);
    }

    fn poison_history(&self, sid: &SessionId) {
        MemoryStore::poison_history(self, *sid, true);
    }

    fn heal_history(&self, sid: &SessionId) {
        MemoryStore::poison_history(self, *sid, false);
    }

    async fn corrupt_tail(&self, sid: &SessionId) {
        let stored = self.read_all(sid).await.unwrap();
        let head = stored.last().and_then(|e| tag_of(e));
        let out = self
            .append(&[Append {
                session: *sid,
                expected_head: head,
                entries: vec![Bytes::from_static(b"short")],
                token: None,
            }])
            .await
            .unwrap();
        assert_eq!(out, vec![session_trail::store::AppendOutcome::Appended]);
    }
}

#[cfg(feature = "redis")]
impl Faulty for session_trail::store::RedisStore {
    fn break_next_save(&self, sid: &SessionId) {
        // The record becomes a string: the update script fails on it.
        let srv = super::redis::shared_server();
        srv.cli(&["DEL", &self.record_key(sid)]);
        srv.cli(&["SET", &self.record_key(sid), "not a hash"]);
    }

    fn poison_history(&self, sid: &SessionId) {
        let srv = super::redis::shared_server();
        srv.cli(&["DEL", &self.history_key(sid)]);
        srv.cli(&["SET", &self.history_key(sid), "not a list"]);
    }

    fn heal_history(&self, _sid: &SessionId) {}

    async fn corrupt_tail(&self, sid: &SessionId) {
        super::redis::shared_server().cli(&["RPUSH", &self.history_key(sid), "short"]);
    }
}

#[cfg(feature = "postgres")]
impl Faulty for session_trail::store::PostgresStore {
    fn break_next_save(&self, sid: &SessionId) {
        // A trigger that refuses every later write to this record.
        super::postgres::shared_server().psql(
            "postgres",
            &format!(
                "CREATE OR REPLACE FUNCTION {s}.test_refuse_write() RETURNS trigger
                 LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'injected fault'; END $$;
                 CREATE TRIGGER test_refuse_{h} BEFORE UPDATE OR DELETE
                 ON {s}.session_trail_sessions FOR EACH ROW WHEN (OLD.sid = {b})
                 EXECUTE FUNCTION {s}.test_refuse_write()",
                s = self.schema(),
                h = format!("{sid}")
                    .to_lowercase()
                    .replace(|c: char| !c.is_ascii_alphanumeric(), "_"),
                b = super::postgres::bytea(sid)
            ),
        );
    }

    fn poison_history(&self, sid: &SessionId) {
        // A head naming an entry that is not there: appends to this
        // session answer Failed, the others go on.
        super::postgres::shared_server().psql(
            "postgres",
            &format!(
                "DELETE FROM {s}.session_trail_history WHERE sid = {b};
                 INSERT INTO {s}.session_trail_history_heads
                     (sid, head, last_seq, low_seq, expires_at)
                 VALUES ({b}, '\\x00112233445566778899aabbccddeeff', 7, 1, 9000000000000)
                 ON CONFLICT (sid) DO UPDATE SET head = excluded.head,
                     last_seq = 7, expires_at = excluded.expires_at",
                s = self.schema(),
                b = super::postgres::bytea(sid)
            ),
        );
    }

    fn heal_history(&self, _sid: &SessionId) {}

    async fn corrupt_tail(&self, sid: &SessionId) {
        super::postgres::shared_server().psql(
            "postgres",
            &format!(
                "WITH h AS (
                     UPDATE {s}.session_trail_history_heads
                     SET head = 'short', last_seq = last_seq + 1
                     WHERE sid = {b} RETURNING last_seq)
                 INSERT INTO {s}.session_trail_history (sid, seq, ts, kind, entry)
                 SELECT {b}, last_seq, now(), 'request', 'short' FROM h",
                s = self.schema(),
                b = super::postgres::bytea(sid)
            ),
        );
    }
}

#[cfg(feature = "sqlite")]
impl Faulty for session_trail::store::SqliteStore {
    fn break_next_save(&self, sid: &SessionId) {
        // A trigger that refuses every later write to this record.
        let b = super::sqlite::blob(sid);
        let name: String = format!("{sid}")
            .to_lowercase()
            .replace(|c: char| !c.is_ascii_alphanumeric(), "_");
        super::sqlite::exec(
            self.path(),
            &format!(
                "CREATE TRIGGER test_refuse_u_{name} BEFORE UPDATE ON session_trail_sessions
                 WHEN OLD.sid = {b} BEGIN SELECT RAISE(ABORT, 'injected fault'); END;
                 CREATE TRIGGER test_refuse_d_{name} BEFORE DELETE ON session_trail_sessions
                 WHEN OLD.sid = {b} BEGIN SELECT RAISE(ABORT, 'injected fault'); END;"
            ),
        );
    }

    fn poison_history(&self, sid: &SessionId) {
        // A newest entry shorter than a tag: appends to this session
        // answer Failed, the others go on.
        let b = super::sqlite::blob(sid);
        super::sqlite::exec(
            self.path(),
            &format!(
                "DELETE FROM session_trail_history WHERE sid = {b};
                 INSERT INTO session_trail_history_heads (sid, low_seq, expires_at)
                 VALUES ({b}, 1, 9000000000000)
                 ON CONFLICT (sid) DO UPDATE SET expires_at = excluded.expires_at;
                 INSERT INTO session_trail_history (sid, seq, ts, kind, entry)
                 VALUES ({b}, 7, 0, 'request', CAST('short' AS BLOB));"
            ),
        );
    }

    fn heal_history(&self, _sid: &SessionId) {}

    async fn corrupt_tail(&self, sid: &SessionId) {
        let b = super::sqlite::blob(sid);
        super::sqlite::exec(
            self.path(),
            &format!(
                "INSERT INTO session_trail_history (sid, seq, ts, kind, entry)
                 SELECT {b}, max(seq) + 1, 0, 'request', CAST('short' AS BLOB)
                 FROM session_trail_history WHERE sid = {b};"
            ),
        );
    }
}

fn key() -> Key {
    Key::from_bytes(&super::secret(91)).unwrap()
}

fn writer() -> WriterConfig {
    WriterConfig::default()
        .flush_interval(Duration::from_millis(5))
        .flush_timeout(Duration::from_secs(5))
}

fn layer<S: Faulty>(store: &S) -> SessionLayer {
    SessionLayer::builder(store.clone(), key())
        .history_writer(writer())
        .build()
        .unwrap()
}

type Breaker = Arc<dyn Fn(SessionId) + Send + Sync>;

/// The tasks `/late-write` spawns, for the test to await.
static LATE_WRITES: std::sync::Mutex<Vec<tokio::task::JoinHandle<bool>>> =
    std::sync::Mutex::new(Vec::new());

/// Routes these tests need beyond the shared app's.
fn extra(breaker: Breaker) -> Router {
    let breaker2 = Arc::clone(&breaker);
    let breaker3 = Arc::clone(&breaker);
    Router::new()
        .route(
            "/logout-keep",
            post(|session: Session| async move {
                session.set_user(None).await?;
                Ok::<_, session_trail::Error>(StatusCode::OK)
            }),
        )
        .route(
            "/broken-save",
            post(move |session: Session| {
                let breaker = Arc::clone(&breaker);
                async move {
                    session.insert("k", 1).await?;
                    session
                        .record("checkout", serde_json::json!({"total": 42}))
                        .await?;
                    breaker(session.id().await?.unwrap());
                    Ok::<_, session_trail::Error>(StatusCode::OK)
                }
            }),
        )
        .route(
            "/slow-event",
            post(|session: Session| async move {
                session
                    .record("payment_started", serde_json::json!({}))
                    .await?;
                tokio::time::sleep(Duration::from_secs(30)).await;
                Ok::<_, session_trail::Error>(StatusCode::OK)
            }),
        )
        .route(
            "/late-write",
            post(|session: Session| async move {
                let clone = session.clone();
                let task = tokio::spawn(async move {
                    // Once the response has left, a write is an error.
                    for _ in 0..500 {
                        if clone.insert("late", 1).await.is_err() {
                            let _ = clone.record("late_event", serde_json::json!({})).await;
                            return true;
                        }
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    false
                });
                LATE_WRITES.lock().unwrap().push(task);
                Ok::<_, session_trail::Error>(StatusCode::OK)
            }),
        )
        .route(
            "/users/{id}",
            get(|Path(_id): Path<String>| async { "a profile" }),
        )
        .route(
            "/switch-then-fail/{user}",
            post(|session: Session, Path(user): Path<String>| async move {
                session.set_user(Some(user)).await?;
                session
                    .record("new_users_event", serde_json::json!({}))
                    .await?;
                Ok::<_, session_trail::Error>(StatusCode::INTERNAL_SERVER_ERROR)
            }),
        )
        .route(
            "/logout-then-login/{user}",
            post(|session: Session, Path(user): Path<String>| async move {
                session
                    .record("before_logout", serde_json::json!({"card": "4111"}))
                    .await?;
                session.destroy().await?;
                session.set_user(Some(user)).await?;
                Ok::<_, session_trail::Error>(StatusCode::OK)
            }),
        )
        .route(
            "/grant-then-fail",
            post(|session: Session| async move {
                session.regenerate().await?;
                session.set_privilege(Some("admin".into())).await?;
                Ok::<_, session_trail::Error>(StatusCode::INTERNAL_SERVER_ERROR)
            }),
        )
        .route(
            "/logout-then-fail",
            post(|session: Session| async move {
                session.destroy().await?;
                Ok::<_, session_trail::Error>(StatusCode::INTERNAL_SERVER_ERROR)
            }),
        )
        .route(
            "/broken-logout-keep",
            post(move |session: Session| {
                let breaker = Arc::clone(&breaker2);
                async move {
                    breaker(session.id().await?.unwrap());
                    session.set_user(None).await?;
                    Ok::<_, session_trail::Error>(StatusCode::OK)
                }
            }),
        )
        .route(
            "/login-broken/{user}",
            post(move |session: Session, Path(user): Path<String>| {
                let breaker = Arc::clone(&breaker3);
                async move {
                    session.set_user(Some(user)).await?;
                    breaker(session.id().await?.unwrap());
                    Ok::<_, session_trail::Error>(StatusCode::OK)
                }
            }),
        )
        .route(
            "/switch-to/{user}",
            post(|session: Session, Path(user): Path<String>| async move {
                session
                    .record("said_goodbye", serde_json::json!({}))
                    .await?;
                session.set_user(Some(user)).await?;
                Ok::<_, session_trail::Error>(StatusCode::OK)
            }),
        )
}

fn app<S: Faulty>(store: &S, layer: SessionLayer) -> Router {
    let s = store.clone();
    router_with(layer, extra(Arc::new(move |sid| s.break_next_save(&sid))))
}

async fn flush(layer: &SessionLayer) {
    layer.history_writer().unwrap().flush().await.unwrap();
}

async fn entries<S: HistoryStore>(store: &S, sid: &SessionId) -> Vec<Value> {
    store
        .read_all(sid)
        .await
        .unwrap()
        .iter()
        .map(|b| Entry::decode(b).map_or(Value::Null, |e| e.to_json()))
        .collect()
}

fn count(entries: &[Value], kind: &str) -> usize {
    entries.iter().filter(|e| e["kind"] == kind).count()
}

async fn session_of(c: &mut Client) -> SessionId {
    c.json("GET", "/me").await["session"]
        .as_str()
        .expect("the client has a session")
        .parse()
        .unwrap()
}

fn user_name() -> String {
    format!("user-{}", SessionId::generate())
}

/// Waits until `d` has passed since `since` (a time window to elapse).
async fn wait_past(since: Instant, d: Duration) {
    eventually(10, "the window to pass", || async move {
        (since.elapsed() > d).then_some(())
    })
    .await;
}

pub async fn dead_token_adds_no_request_entries<S: Faulty>(store: S) {
    let grace = Duration::from_millis(300);
    let layer = SessionLayer::builder(store.clone(), key())
        .history_writer(writer())
        .rotation_grace(grace)
        .build()
        .unwrap();
    let app = app(&store, layer.clone());
    let mut c = Client::new(app.clone());
    c.send("GET", "/visits").await;
    // The pre-login cookie a fixation attacker would hold.
    let mut attacker = c.fork();
    c.send("POST", &format!("/login/{}", user_name())).await;
    let rotated = Instant::now();
    let sid = session_of(&mut c).await;
    flush(&layer).await;
    let before = entries(&store, &sid).await;
    let requests_before = count(&before, "request");
    wait_past(rotated, grace).await;

    // A burst through routes that never load the session (the fast path)
    // and routes that do.
    let burst = Instant::now();
    for i in 0..40 {
        let uri = if i % 2 == 0 { "/ping" } else { "/me" };
        let res = attacker.send("GET", uri).await;
        assert!(res.status().is_success());
    }
    let burst_took = burst.elapsed();
    flush(&layer).await;
    let after = entries(&store, &sid).await;
    assert_eq!(
        count(&after, "request"),
        requests_before,
        "a replaced token wrote request entries: {after:#?}"
    );
    let windows = 1 + (burst_took.as_millis() / grace.as_millis()) as usize;
    let suspicious = count(&after, "suspicious") - count(&before, "suspicious");
    assert!(
        (1..=2 * windows).contains(&suspicious),
        "{suspicious} suspicious entries in {windows} grace windows"
    );
    assert!(layer.history_writer().unwrap().stats().refused > 0);

    // Logged out: the old credential is dead too.
    let mut stolen = c.fork();
    c.send("POST", "/logout").await;
    flush(&layer).await;
    let ended = entries(&store, &sid).await;
    for _ in 0..20 {
        stolen.send("GET", "/ping").await;
    }
    flush(&layer).await;
    let later = entries(&store, &sid).await;
    assert_eq!(
        count(&later, "request"),
        count(&ended, "request"),
        "a logged-out credential wrote request entries"
    );
    // The live session's own requests are still recorded.
    let mut live = Client::new(app);
    live.send("POST", &format!("/login/{}", user_name())).await;
    let live_sid = session_of(&mut live).await;
    for _ in 0..3 {
        live.send("GET", "/ping").await;
    }
    flush(&layer).await;
    let own = entries(&store, &live_sid).await;
    assert!(
        own.iter().filter(|e| e["path"] == "/ping").count() == 3,
        "the live credential's unloaded requests must be recorded: {own:#?}"
    );
}

pub async fn erase_keeps_other_devices_linked<S: Faulty>(store: S) {
    let layer = layer(&store);
    let app = app(&store, layer.clone());
    let user = user_name();
    let mut phone = Client::new(app.clone());
    phone.send("POST", &format!("/login/{user}")).await;
    let mut laptop = Client::new(app.clone());
    laptop.send("POST", &format!("/login/{user}")).await;
    let laptop_sid = session_of(&mut laptop).await;
    laptop
        .send_body("POST", "/event/before_erase", Some(serde_json::json!({})))
        .await;
    flush(&layer).await;
    let first = phone.json("DELETE", "/history").await;
    assert!(first["entries"].as_u64().unwrap() > 0);
    // The laptop goes on after the erase; its entries stay erasable.
    laptop
        .send_body("POST", "/event/after_erase", Some(serde_json::json!({})))
        .await;
    flush(&layer).await;
    let export = phone.text("GET", "/export").await;
    assert!(export.contains("after_erase"), "{export}");
    assert!(!export.contains("before_erase"), "{export}");
    let second = phone.json("DELETE", "/history").await;
    assert!(
        second["entries"].as_u64().unwrap() > 0,
        "a second erase must remove what was recorded after the first: {second}"
    );
    assert!(entries(&store, &laptop_sid).await.is_empty());
}

pub async fn erase_is_not_taken_for_store_loss<S: Faulty>(store: S) {
    // Two app servers over one store.
    let a = layer(&store);
    let b = layer(&store);
    let user = user_name();
    let mut on_a = Client::new(app(&store, a.clone()));
    on_a.send("POST", &format!("/login/{user}")).await;
    let mut on_b = Client::new(app(&store, b.clone()));
    on_b.send("POST", &format!("/login/{user}")).await;
    let sid_b = session_of(&mut on_b).await;
    for _ in 0..3 {
        on_b.send("GET", "/visits").await;
    }
    flush(&b).await;
    on_a.json("DELETE", "/history").await;
    // Server B still holds the old head of its session.
    on_b.send("GET", "/visits").await;
    flush(&b).await;
    let after = entries(&store, &sid_b).await;
    assert!(!after.is_empty());
    assert_eq!(
        count(&after, "gap"),
        0,
        "an erase was recorded as a loss: {after:#?}"
    );
}

pub async fn user_switch_starts_a_new_session<S: Faulty>(store: S) {
    let layer = layer(&store);
    let app = app(&store, layer.clone());
    let (alice, bob, carol) = (user_name(), user_name(), user_name());
    let mut c = Client::new(app);
    c.send("POST", &format!("/login/{alice}")).await;
    let alice_sid = session_of(&mut c).await;
    c.send_body("POST", "/event/alice_private", Some(serde_json::json!({})))
        .await;
    // Logged out while keeping the session, then bob logs in.
    c.send("POST", "/logout-keep").await;
    let anonymous_sid = session_of(&mut c).await;
    assert_ne!(anonymous_sid, alice_sid);
    c.send("POST", &format!("/login/{bob}")).await;
    let bob_sid = session_of(&mut c).await;
    assert_ne!(bob_sid, alice_sid);
    flush(&layer).await;
    let export = c.text("GET", "/export").await;
    assert!(!export.contains("alice_private"), "{export}");
    assert!(!export.contains(&alice_sid.to_string()), "{export}");
    c.json("DELETE", "/history").await;
    let alices = entries(&store, &alice_sid).await;
    assert!(
        alices.iter().any(|e| e["event"] == "alice_private"),
        "bob's erase reached alice's history"
    );
    assert!(alices.iter().any(|e| e["kind"] == "ended"));
    // A direct switch (bob to carol) too, in a request that recorded an
    // event for bob first and after bob wrote data: nothing of bob's
    // reaches carol's session.
    c.send("POST", "/set/bobs_secret/s3").await;
    c.send("POST", &format!("/switch-to/{carol}")).await;
    let carol_sid = session_of(&mut c).await;
    assert_ne!(carol_sid, bob_sid);
    assert_eq!(c.json("GET", "/me").await["user"], carol.as_str());
    let carols = SessionStore::load(&store, &carol_sid)
        .await
        .unwrap()
        .unwrap();
    assert!(carols.data.is_empty(), "{:?}", carols.data.keys());
    flush(&layer).await;
    let bobs = entries(&store, &bob_sid).await;
    let goodbye = bobs.iter().position(|e| e["event"] == "said_goodbye");
    let ended = bobs.iter().position(|e| e["kind"] == "ended");
    assert!(
        goodbye.is_some() && goodbye < ended,
        "the event recorded before the switch belongs to bob's session, before its end: {bobs:#?}"
    );
    assert!(
        !entries(&store, &carol_sid)
            .await
            .iter()
            .any(|e| e["event"] == "said_goodbye")
    );
}

pub async fn events_survive_a_failed_save<S: Faulty>(store: S) {
    let layer = layer(&store);
    let mut c = Client::new(app(&store, layer.clone()));
    c.send("POST", &format!("/login/{}", user_name())).await;
    let sid = session_of(&mut c).await;
    let res = c.send("POST", "/broken-save").await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    flush(&layer).await;
    let stored = entries(&store, &sid).await;
    let event = stored
        .iter()
        .position(|e| e["event"] == "checkout")
        .unwrap_or_else(|| panic!("the event was lost with the save: {stored:#?}"));
    assert_eq!(stored[event + 1]["kind"], "request");
    assert_eq!(stored[event + 1]["status"], 503);
}

pub async fn dropped_future_still_records_events<S: Faulty>(store: S) {
    let layer = layer(&store);
    let app = app(&store, layer.clone());
    let mut c = Client::new(app.clone());
    c.send("POST", &format!("/login/{}", user_name())).await;
    let sid = session_of(&mut c).await;
    let req = Request::builder()
        .method("POST")
        .uri("/slow-event")
        .header(
            "cookie",
            format!("session={}", c.cookie.as_deref().unwrap()),
        )
        .body(axum::body::Body::empty())
        .unwrap();
    // A timeout outside the layer drops the response future.
    let out = tokio::time::timeout(Duration::from_millis(200), app.oneshot(req)).await;
    assert!(out.is_err());
    flush(&layer).await;
    let stored = entries(&store, &sid).await;
    let event = stored
        .iter()
        .position(|e| e["event"] == "payment_started")
        .unwrap_or_else(|| panic!("the dropped request's event was lost: {stored:#?}"));
    assert_eq!(stored[event + 1]["status"], 499);
}

pub async fn one_poisoned_session_blocks_no_other<S: Faulty>(store: S) {
    let layer = SessionLayer::builder(store.clone(), key())
        .history_writer(writer().flush_timeout(Duration::from_millis(500)))
        .build()
        .unwrap();
    let app = app(&store, layer.clone());
    let mut poisoned = Client::new(app.clone());
    poisoned
        .send("POST", &format!("/login/{}", user_name()))
        .await;
    let bad = session_of(&mut poisoned).await;
    flush(&layer).await;
    store.poison_history(&bad);
    let mut others = Vec::new();
    for _ in 0..3 {
        let mut c = Client::new(app.clone());
        c.send("POST", &format!("/login/{}", user_name())).await;
        others.push(c);
    }
    for round in 0..5 {
        poisoned.send("GET", "/visits").await;
        for c in &mut others {
            c.send_body(
                "POST",
                &format!("/event/round_{round}"),
                Some(serde_json::json!({})),
            )
            .await;
        }
    }
    // Every other session's history arrives, and its user's export works.
    for c in &mut others {
        let sid = session_of(c).await;
        let store = store.clone();
        eventually(10, "the other sessions' entries", || {
            let store = store.clone();
            async move {
                let e = entries(&store, &sid).await;
                e.iter().any(|e| e["event"] == "round_4").then_some(())
            }
        })
        .await;
        let export = c.text("GET", "/export").await;
        assert!(export.contains("round_4"));
    }
    let stats = layer.history_writer().unwrap().stats();
    assert!(stats.session_failures > 0, "{stats:?}");
    // A flush of everything answers an error instead of hanging.
    let err = layer.history_writer().unwrap().flush().await.unwrap_err();
    assert_eq!(err.kind(), session_trail::ErrorKind::Timeout);
}

pub async fn corrupt_history_tail_is_reported_not_looped<S: Faulty>(store: S) {
    let layer = layer(&store);
    let app = app(&store, layer.clone());
    let mut c = Client::new(app.clone());
    c.send("POST", &format!("/login/{}", user_name())).await;
    let sid = session_of(&mut c).await;
    flush(&layer).await;
    store.corrupt_tail(&sid).await;
    c.send("GET", "/visits").await;
    let w = layer.history_writer().unwrap().clone();
    eventually(10, "the corrupt history to be reported", || {
        let w = w.clone();
        async move { (w.stats().session_failures > 0).then_some(()) }
    })
    .await;
    // It backs off instead of retrying in a loop.
    let failures = w.stats().session_failures;
    let mut other = Client::new(app);
    other.send("POST", &format!("/login/{}", user_name())).await;
    let other_sid = session_of(&mut other).await;
    let store2 = store.clone();
    eventually(10, "another session's entries", || {
        let store = store2.clone();
        async move { (!entries(&store, &other_sid).await.is_empty()).then_some(()) }
    })
    .await;
    assert!(
        w.stats().session_failures <= failures + 2,
        "the corrupt session is retried in a loop: {:?}",
        w.stats()
    );
}

pub async fn unmatched_route_is_not_recorded_raw<S: Faulty>(store: S) {
    let layer = layer(&store);
    let app = app(&store, layer.clone());
    let mut c = Client::new(app.clone());
    c.send("POST", &format!("/login/{}", user_name())).await;
    let sid = session_of(&mut c).await;
    let res = c.send("GET", "/reset/7f3a9c-secret-reset-token").await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    c.send("GET", "/users/alice@example.com").await;
    flush(&layer).await;
    let stored = entries(&store, &sid).await;
    let text = serde_json::to_string(&stored).unwrap();
    assert!(!text.contains("secret-reset-token"), "{text}");
    assert!(!text.contains("alice@example.com"), "{text}");
    assert!(stored.iter().any(|e| e["path"] == "(unmatched)"), "{text}");
    assert!(stored.iter().any(|e| e["path"] == "/users/{id}"), "{text}");

    // Outside a router (no matched template), a long path is capped.
    let outer = tower::ServiceBuilder::new()
        .layer(layer.clone())
        .service_fn(|_req: Request<axum::body::Body>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(axum::body::Body::empty()))
        });
    let long = format!("/{}", "x".repeat(8 * 1024));
    let req = Request::builder()
        .uri(&long)
        .header(
            "cookie",
            format!("session={}", c.cookie.as_deref().unwrap()),
        )
        .body(axum::body::Body::empty())
        .unwrap();
    outer.oneshot(req).await.unwrap();
    flush(&layer).await;
    let stored = entries(&store, &sid).await;
    let last = stored.last().unwrap();
    let path = last["path"].as_str().unwrap();
    assert!(path.len() <= 256, "{} bytes recorded", path.len());
    assert!(path.ends_with('…'), "a cut path is marked: {path}");
}

pub async fn expiry_is_recorded_when_the_client_returns<S: Faulty>(store: S) {
    for (idle, absolute, reason) in [
        (300, 60_000, "idle_timeout"),
        (300, 300, "absolute_timeout"),
    ] {
        let layer = SessionLayer::builder(store.clone(), key())
            .history_writer(writer())
            .idle_timeout(Duration::from_millis(idle))
            .absolute_timeout(Duration::from_millis(absolute))
            .build()
            .unwrap();
        let mut c = Client::new(app(&store, layer.clone()));
        c.send("POST", &format!("/login/{}", user_name())).await;
        let sid = session_of(&mut c).await;
        let started = Instant::now();
        wait_past(started, Duration::from_millis(idle + 50)).await;
        assert_eq!(c.json("GET", "/me").await["anonymous"], true);
        flush(&layer).await;
        let stored = entries(&store, &sid).await;
        let last = stored.last().unwrap();
        assert_eq!(last["kind"], "ended", "{stored:#?}");
        assert_eq!(last["reason"], reason);
    }
}

pub async fn session_limit_holds_under_concurrent_logins<S: Faulty>(store: S) {
    let layer = SessionLayer::builder(store.clone(), key())
        .history_writer(writer())
        .max_sessions_per_user(2, SessionLimit::RefuseNew)
        .build()
        .unwrap();
    let app = app(&store, layer);
    let user = user_name();
    // All spawned before any is awaited: they race.
    let logins: Vec<_> = (0..8)
        .map(|_| {
            let app = app.clone();
            let user = user.clone();
            tokio::spawn(async move {
                let mut c = Client::new(app);
                c.send("POST", &format!("/login/{user}")).await.status()
            })
        })
        .collect();
    let statuses: Vec<StatusCode> = futures_join(logins.into_iter()).await;
    let ok = statuses.iter().filter(|s| s.is_success()).count();
    assert_eq!(ok, 2, "{statuses:?}");
    assert_eq!(
        store.sessions_of_user(&user).await.unwrap().len(),
        2,
        "the store holds more sessions than the limit"
    );
    // A saved login settles its claim: after a logout, a login has room.
    let mut one = Client::new(app.clone());
    let mut again = Client::new(app);
    let sessions = store.sessions_of_user(&user).await.unwrap();
    for r in &sessions {
        SessionStore::delete(&store, &r.id).await.unwrap();
    }
    one.send("POST", &format!("/login/{user}")).await;
    one.send("POST", "/logout").await;
    let res = again.send("POST", &format!("/login/{user}")).await;
    assert!(res.status().is_success(), "{}", res.status());
}

pub async fn a_failed_switch_or_logout_fails_closed<S: Faulty>(store: S) {
    let layer = layer(&store);
    let app = app(&store, layer.clone());
    let (alice, bob) = (user_name(), user_name());
    let mut c = Client::new(app.clone());
    c.send("POST", &format!("/login/{alice}")).await;
    let alice_sid = session_of(&mut c).await;
    // A server error after a switch: bob's events never reach alice.
    let res = c.send("POST", &format!("/switch-then-fail/{bob}")).await;
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(c.json("GET", "/me").await["user"], alice.as_str());
    flush(&layer).await;
    assert!(
        !entries(&store, &alice_sid)
            .await
            .iter()
            .any(|e| e["event"] == "new_users_event")
    );
    // A logout that cannot end the old session answers an error, never a
    // success that leaves the old credential working.
    let mut old = c.fork();
    let res = c.send("POST", "/broken-logout-keep").await;
    assert!(res.status().is_server_error(), "{}", res.status());
    // A logout is saved even when the handler then fails.
    let mut d = Client::new(app);
    d.send("POST", &format!("/login/{}", user_name())).await;
    let mut kept = d.fork();
    let res = d.send("POST", "/logout-then-fail").await;
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(kept.json("GET", "/me").await["anonymous"], true);
    let _ = old.send("GET", "/me").await;
}

pub async fn an_erase_drops_what_a_failing_session_held<S: Faulty>(store: S) {
    let layer = SessionLayer::builder(store.clone(), key())
        .history_writer(writer().flush_timeout(Duration::from_millis(300)))
        .build()
        .unwrap();
    let mut c = Client::new(app(&store, layer.clone()));
    c.send("POST", &format!("/login/{}", user_name())).await;
    let sid = session_of(&mut c).await;
    flush(&layer).await;
    store.poison_history(&sid);
    c.send_body("POST", "/event/before_erase", Some(serde_json::json!({})))
        .await;
    let receipt = c.json("DELETE", "/history").await;
    assert!(receipt["at"].is_string());
    // The session heals (the delete cleared a Redis key of the wrong type;
    // on memory, the fault is lifted) and writes again.
    store.heal_history(&sid);
    c.send_body("POST", "/event/after_erase", Some(serde_json::json!({})))
        .await;
    let store2 = store.clone();
    let stored = eventually(10, "the entries after the erase", move || {
        let store = store2.clone();
        async move {
            let e = entries(&store, &sid).await;
            e.iter().any(|e| e["event"] == "after_erase").then_some(e)
        }
    })
    .await;
    assert!(
        !stored.iter().any(|e| e["event"] == "before_erase"),
        "an erased event came back: {stored:#?}"
    );
}

pub async fn events_never_cross_a_logout_in_one_request<S: Faulty>(store: S) {
    let layer = layer(&store);
    let mut c = Client::new(app(&store, layer.clone()));
    c.send("POST", &format!("/login/{}", user_name())).await;
    let alice_sid = session_of(&mut c).await;
    c.send("POST", &format!("/logout-then-login/{}", user_name()))
        .await;
    let bob_sid = session_of(&mut c).await;
    assert_ne!(bob_sid, alice_sid);
    flush(&layer).await;
    assert!(
        !entries(&store, &bob_sid)
            .await
            .iter()
            .any(|e| e["event"] == "before_logout"),
        "alice's event reached bob's history"
    );
    assert!(
        entries(&store, &alice_sid)
            .await
            .iter()
            .any(|e| e["event"] == "before_logout")
    );
}

pub async fn a_failed_handler_grants_nothing<S: Faulty>(store: S) {
    let layer = layer(&store);
    let mut c = Client::new(app(&store, layer.clone()));
    c.send("POST", &format!("/login/{}", user_name())).await;
    let res = c.send("POST", "/grant-then-fail").await;
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(c.json("GET", "/me").await["privilege"], Value::Null);
}

pub async fn a_request_in_flight_at_a_logout_keeps_the_new_cookie<S: Faulty>(store: S) {
    let grace = Duration::from_millis(400);
    let layer = SessionLayer::builder(store.clone(), key())
        .history_writer(writer())
        .rotation_grace(grace)
        .build()
        .unwrap();
    let mut c = Client::new(app(&store, layer.clone()));
    c.send("POST", &format!("/login/{}", user_name())).await;
    let mut in_flight = c.fork();
    c.send("POST", "/logout-keep").await;
    let ended = Instant::now();
    // Its session ended moments ago: no removal cookie that could land
    // after the new one and log the browser out.
    let res = in_flight.send("GET", "/me").await;
    if ended.elapsed() < grace {
        assert!(super::app::session_cookie(&res, "session").is_none());
    }
    // Long after, the stale cookie is taken back.
    let mut stale = in_flight.fork();
    wait_past(ended, grace + Duration::from_millis(100)).await;
    let res = stale.send("GET", "/me").await;
    assert_eq!(
        super::app::session_cookie(&res, "session").as_deref(),
        Some("")
    );
}

pub async fn a_zero_grace_still_rate_limits_dead_cookies<S: Faulty>(store: S) {
    let layer = SessionLayer::builder(store.clone(), key())
        .history_writer(writer())
        .rotation_grace(Duration::ZERO)
        .build()
        .unwrap();
    let mut c = Client::new(app(&store, layer.clone()));
    c.send("GET", "/visits").await;
    let mut old = c.fork();
    c.send("POST", &format!("/login/{}", user_name())).await;
    let sid = session_of(&mut c).await;
    for i in 0..30 {
        old.send("GET", if i % 2 == 0 { "/ping" } else { "/me" })
            .await;
    }
    flush(&layer).await;
    let stored = entries(&store, &sid).await;
    assert!(count(&stored, "suspicious") <= 2, "{stored:#?}");
}

pub async fn end_oldest_waits_for_the_login_to_be_saved<S: Faulty>(store: S) {
    let layer = SessionLayer::builder(store.clone(), key())
        .history_writer(writer())
        .max_sessions_per_user(1, SessionLimit::EndOldest)
        .build()
        .unwrap();
    let app = app(&store, layer.clone());
    let user = user_name();
    let mut first = Client::new(app.clone());
    first.send("POST", &format!("/login/{user}")).await;
    // A login whose save fails (after the session limit made room) ends
    // no one.
    let mut second = Client::new(app.clone());
    second.send("GET", "/visits").await;
    let res = second.send("POST", &format!("/login-broken/{user}")).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(first.json("GET", "/me").await["user"], user.as_str());
    // One that is saved ends the oldest.
    let mut third = Client::new(app);
    third.send("POST", &format!("/login/{user}")).await;
    assert_eq!(first.json("GET", "/me").await["anonymous"], true);
    assert_eq!(third.json("GET", "/me").await["user"], user.as_str());
}

pub async fn writes_after_the_response_are_an_error<S: Faulty>(store: S) {
    let layer = layer(&store);
    let mut c = Client::new(app(&store, layer.clone()));
    c.send("POST", &format!("/login/{}", user_name())).await;
    let sid = session_of(&mut c).await;
    let res = c.send("POST", "/late-write").await;
    assert!(res.status().is_success());
    // The spawned task sees its write refused; the value never appears.
    let task = LATE_WRITES.lock().unwrap().pop().unwrap();
    assert!(
        task.await.unwrap(),
        "a write after the response was accepted"
    );
    flush(&layer).await;
    let me = c.json("GET", "/me").await;
    assert_eq!(me["session"], sid.to_string());
    let stored = entries(&store, &sid).await;
    assert!(!stored.iter().any(|e| e["event"] == "late_event"));
}

async fn futures_join<T: Send + 'static>(
    handles: impl Iterator<Item = tokio::task::JoinHandle<T>>,
) -> Vec<T> {
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

/// Session ids of a client's stored entries that appear twice.
pub fn duplicate_ids(entries: &[Value]) -> Vec<String> {
    let mut seen = HashSet::new();
    entries
        .iter()
        .filter_map(|e| e["id"].as_str())
        .filter(|id| !seen.insert(id.to_owned()))
        .map(str::to_owned)
        .collect()
}

#[macro_export]
macro_rules! hardening_suite {
    ($factory:expr) => {
        $crate::hardening_suite!(@tests $factory;
            dead_token_adds_no_request_entries,
            erase_keeps_other_devices_linked,
            erase_is_not_taken_for_store_loss,
            user_switch_starts_a_new_session,
            events_survive_a_failed_save,
            dropped_future_still_records_events,
            one_poisoned_session_blocks_no_other,
            corrupt_history_tail_is_reported_not_looped,
            unmatched_route_is_not_recorded_raw,
            expiry_is_recorded_when_the_client_returns,
            session_limit_holds_under_concurrent_logins,
            end_oldest_waits_for_the_login_to_be_saved,
            writes_after_the_response_are_an_error,
            a_zero_grace_still_rate_limits_dead_cookies,
            a_failed_switch_or_logout_fails_closed,
            an_erase_drops_what_a_failing_session_held,
            events_never_cross_a_logout_in_one_request,
            a_failed_handler_grants_nothing,
            a_request_in_flight_at_a_logout_keeps_the_new_cookie,
        );
    };
    (@tests $factory:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let store = ($factory)().await;
                $crate::common::hardening::$name(store).await;
            }
        )*
    };
}
