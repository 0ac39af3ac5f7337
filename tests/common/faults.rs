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

/// Two "app servers" (their own store handles, layers and history writers)
/// on one store: a session made through one is valid through the other,
/// and concurrent requests through both extend the same chains, with
/// nothing lost.
pub async fn two_app_servers_share_sessions_and_history_chains<S>(store_a: S, store_b: S)
where
    S: session_trail::store::SessionStore + HistoryStore + Clone,
{
    use axum::body::Body;
    use http::Request;
    use tower::ServiceExt;

    let key = session_trail::Key::generate();
    let layer = |store: S| {
        SessionLayer::builder(store, key.clone())
            .history_writer(writer_config())
            .build()
            .unwrap()
    };
    let (layer_a, layer_b) = (layer(store_a.clone()), layer(store_b));
    let app_a = super::app::router(layer_a.clone());
    let app_b = super::app::router(layer_b.clone());

    // A session made through A is valid through B, and back.
    let mut clients = Vec::new();
    for i in 0..6 {
        let mut a = super::app::Client::new(app_a.clone());
        assert_eq!(
            a.send("POST", &format!("/login/user{i}")).await.status(),
            StatusCode::OK
        );
        let mut b = super::app::Client::new(app_b.clone());
        b.cookie = a.cookie.clone();
        let me = b.json("GET", "/me").await;
        assert_eq!(me["user"], format!("user{i}"));
        let sid: SessionId = me["session"].as_str().unwrap().parse().unwrap();
        assert_eq!(b.json("GET", "/visits").await["visits"], 1);
        a.cookie = b.cookie.clone();
        assert_eq!(a.json("GET", "/visits").await["visits"], 2);
        clients.push((sid, a.cookie.clone().unwrap()));
    }

    // Concurrent requests through both servers append to the same chains.
    let per_client = 60;
    let mut tasks = Vec::new();
    for (_, cookie) in &clients {
        for j in 0..per_client {
            let app = if j % 2 == 0 {
                app_a.clone()
            } else {
                app_b.clone()
            };
            let cookie = cookie.clone();
            tasks.push(tokio::spawn(async move {
                let req = Request::builder()
                    .uri("/ping")
                    .header("cookie", format!("session={cookie}"))
                    .body(Body::empty())
                    .unwrap();
                app.oneshot(req).await.unwrap().status()
            }));
        }
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    let (wa, wb) = (
        layer_a.history_writer().unwrap(),
        layer_b.history_writer().unwrap(),
    );
    flush(wa).await;
    flush(wb).await;
    let conflicts = wa.stats().conflicts + wb.stats().conflicts;
    assert!(
        conflicts > 0,
        "the two writers never raced; the test proves nothing"
    );
    assert_eq!(wa.stats().dropped + wb.stats().dropped, 0);

    let ring = KeyRing::new(key.clone());
    for (sid, _) in &clients {
        let c = check_chain(&store_a, &ring, sid).await;
        let requests = c
            .entries
            .iter()
            .filter(|e| e.kind == EntryKind::Request)
            .count();
        // The login, /me, two /visits, and every /ping: nothing lost.
        assert_eq!(requests, 4 + per_client, "session {sid}");
        let pings = c
            .entries
            .iter()
            .filter(|e| matches!(&e.body, EntryBody::Request { route, .. } if route == "/ping"))
            .count();
        assert_eq!(pings, per_client);
        assert!(gaps(&c).is_empty());
    }
}

/// An outage seen through the layer: routes that read the session answer
/// 503 (gRPC `UNAVAILABLE`) without touching the cookie, others are served,
/// and once the store is back (`restart`) the same cookie is still logged
/// in. `kill` takes the store down.
pub async fn an_outage_fails_closed_and_the_session_survives<S>(
    store: S,
    kill: impl FnOnce(),
    restart: impl FnOnce(),
) where
    S: session_trail::store::SessionStore + HistoryStore + Clone,
{
    use axum::body::Body;
    use http::Request;
    use std::time::Instant;
    use tower::ServiceExt;

    let layer = SessionLayer::builder(store, session_trail::Key::generate())
        .build()
        .unwrap();
    let mut client = super::app::Client::new(outage_router(layer));
    assert_eq!(
        client.send("POST", "/login/alice").await.status(),
        StatusCode::OK
    );
    assert!(client.cookie.is_some());
    assert_eq!(client.json("GET", "/me").await["user"], "alice");
    let cookie = client.cookie.clone();

    tokio::task::block_in_place(kill);

    // A route that never touches the session is served as usual.
    let res = client.send("GET", "/ping").await;
    assert_eq!(res.status(), StatusCode::OK);
    // A route that reads the session fails closed: 503, never a logout.
    let started = Instant::now();
    let res = client.send("GET", "/me").await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(res.headers().get("retry-after").unwrap(), "1");
    assert!(
        super::app::session_cookie(&res, "session").is_none(),
        "the cookie is not touched"
    );
    assert_eq!(client.cookie, cookie);
    // A gRPC request gets UNAVAILABLE as a gRPC status.
    let req = Request::builder()
        .method("POST")
        .uri("/shop.Cart/Add")
        .header("content-type", "application/grpc")
        .header("cookie", format!("session={}", cookie.as_deref().unwrap()))
        .body(Body::empty())
        .unwrap();
    let res = client.app.clone().oneshot(req).await.unwrap();
    assert_eq!(res.headers().get("grpc-status").unwrap(), "14");

    tokio::task::block_in_place(restart);

    // Back up: the same cookie is still logged in.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let res = client.send("GET", "/me").await;
        if res.status() == StatusCode::OK {
            assert_eq!(super::app::body_json(res).await["user"], "alice");
            break;
        }
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(Instant::now() < deadline, "the store did not come back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(client.cookie, cookie);
}
