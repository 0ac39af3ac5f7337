//! CSRF refusals and the rest of the session: a refusal must not hide a
//! replayed credential's entry, must not consume an expired session's
//! `ended` entry, and a token asked for during a rotation must not replace
//! the fresh cookie; header values the check does not know are refused.
#![cfg(all(feature = "axum", feature = "memory-store"))]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::routing::{get, post};
use axum::{Form, Router};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use session_trail::history::WriterConfig;
use session_trail::store::MemoryStore;
use session_trail::{Csrf, Key, Session, SessionLayer};
use tower::ServiceExt;

fn cookie_of(res: &Response<Body>) -> Option<String> {
    common::app::session_cookie(res, "session")
}

async fn call(
    app: &Router,
    method: &str,
    uri: &str,
    cookie: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Response<Body> {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "app.test");
    if !cookie.is_empty() {
        req = req.header("cookie", format!("session={cookie}"));
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    app.clone()
        .oneshot(req.body(Body::from(body.to_owned())).unwrap())
        .await
        .unwrap()
}

async fn text(res: Response<Body>) -> String {
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

async fn me(app: &Router, cookie: &str) -> Value {
    serde_json::from_str(&text(call(app, "GET", "/me", cookie, &[], "").await).await).unwrap()
}

fn layer(
    store: MemoryStore,
    configure: impl FnOnce(session_trail::SessionLayerBuilder) -> session_trail::SessionLayerBuilder,
) -> SessionLayer {
    configure(
        SessionLayer::builder(store, Key::generate())
            .cookie_secure(false)
            .history_writer(WriterConfig::default().flush_interval(Duration::from_millis(5)))
            .csrf(Csrf::new().scheme("http")),
    )
    .build()
    .unwrap()
}

fn routes(layer: SessionLayer, hits: Arc<AtomicUsize>) -> Router {
    handlers(hits).layer(layer)
}

fn handlers(hits: Arc<AtomicUsize>) -> Router {
    Router::new()
        .route(
            "/login",
            get(|s: Session| async move {
                s.set_user(Some("alice".into())).await?;
                Ok::<_, session_trail::Error>("in")
            }),
        )
        .route(
            "/elevate",
            get(|s: Session| async move {
                s.set_privilege(Some("admin".into())).await?;
                Ok::<_, session_trail::Error>("up")
            }),
        )
        .route(
            "/regenerate",
            get(|s: Session| async move {
                s.regenerate().await?;
                Ok::<_, session_trail::Error>("new token")
            }),
        )
        .route(
            "/me",
            get(|s: Session| async move {
                let id = s.id().await?.map(|i| i.to_string());
                Ok::<_, session_trail::Error>(axum::Json(
                    json!({"id": id, "user": s.user().await?}),
                ))
            }),
        )
        .route(
            "/token",
            get(|s: Session| async move { s.csrf_token().await }),
        )
        .route(
            "/transfer",
            post(move |s: Session, Form(_f): Form<HashMap<String, String>>| {
                let hits = hits.clone();
                async move {
                    if s.user().await?.as_deref() == Some("alice") {
                        hits.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok::<_, session_trail::Error>("done")
                }
            }),
        )
}

/// `POST /transfer` as a hostile page makes the browser send it.
async fn cross_site_post(app: &Router, cookie: &str) -> StatusCode {
    call(
        app,
        "POST",
        "/transfer",
        cookie,
        &[("sec-fetch-site", "cross-site")],
        "",
    )
    .await
    .status()
}

/// Logs in alice: the cookie and the session id.
async fn login(app: &Router) -> (String, String) {
    let c = cookie_of(&call(app, "GET", "/login", "", &[], "").await).unwrap();
    let sid = me(app, &c).await["id"].as_str().unwrap().to_owned();
    (c, sid)
}

fn signals(entries: &[Value]) -> Vec<String> {
    entries
        .iter()
        .filter(|e| e["kind"] == "suspicious")
        .map(|e| e["signal"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn strict_mode_never_runs_a_handler_for_a_form_without_a_token() {
    let hits = Arc::new(AtomicUsize::new(0));
    let app = routes(
        layer(MemoryStore::new(), |b| {
            b.csrf(Csrf::new().strict(true).scheme("http"))
        }),
        hits.clone(),
    );
    let c = cookie_of(&call(&app, "GET", "/login", "", &[], "").await).unwrap();
    let form = ("content-type", "application/x-www-form-urlencoded");
    let res = call(
        &app,
        "POST",
        "/transfer",
        &c,
        &[form],
        "amount=1000&to=mallory",
    )
    .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(hits.load(Ordering::SeqCst), 0, "the handler never ran");
}

#[tokio::test]
async fn a_csrf_refusal_does_not_hide_a_replayed_rotated_token() {
    let store = MemoryStore::new();
    let l = layer(store.clone(), |b| {
        b.rotation_grace(Duration::from_millis(1))
    });
    let writer = l.history_writer().unwrap().clone();
    let app = routes(l, Arc::new(AtomicUsize::new(0)));
    let (c1, sid) = login(&app).await;
    let c2 = cookie_of(&call(&app, "GET", "/elevate", &c1, &[], "").await).unwrap();
    assert_ne!(c1, c2);
    // Let the grace window of the replaced token pass (1 ms).
    tokio::time::sleep(Duration::from_millis(20)).await;
    // A hostile page makes the victim's browser post cross-site...
    assert_eq!(cross_site_post(&app, &c2).await, StatusCode::FORBIDDEN);
    // ... and a thief replays the old cookie.
    assert_eq!(me(&app, &c1).await["user"], Value::Null);
    writer.flush().await.unwrap();
    let found = signals(&common::history_json(&store, &sid).await);
    assert!(found.contains(&"csrf".to_owned()), "{found:?}");
    assert!(
        found.contains(&"replaced_token_reused".to_owned()),
        "{found:?}"
    );
}

#[tokio::test]
async fn a_refused_request_leaves_an_expired_sessions_ended_entry_to_the_next() {
    let store = MemoryStore::new();
    let l = layer(store.clone(), |b| {
        b.idle_timeout(Duration::from_millis(300))
    });
    let writer = l.history_writer().unwrap().clone();
    let app = routes(l, Arc::new(AtomicUsize::new(0)));
    let (c, sid) = login(&app).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(cross_site_post(&app, &c).await, StatusCode::FORBIDDEN);
    call(&app, "GET", "/me", &c, &[], "").await;
    writer.flush().await.unwrap();
    let all = common::history_json(&store, &sid).await;
    assert!(
        all.iter()
            .any(|e| e["kind"] == "ended" && e["reason"] == "idle_timeout"),
        "{all:?}"
    );
    // The csrf entry was not appended for a token that is no longer live
    // (the store refused it, as it refuses a dead token's request entry).
    assert!(!signals(&all).contains(&"csrf".to_owned()), "{all:?}");
}

#[tokio::test]
async fn a_token_asked_for_during_a_rotation_does_not_replace_the_new_cookie() {
    let app = routes(
        layer(MemoryStore::new(), |b| b),
        Arc::new(AtomicUsize::new(0)),
    );
    let c1 = cookie_of(&call(&app, "GET", "/login", "", &[], "").await).unwrap();
    let c2 = cookie_of(&call(&app, "GET", "/elevate", &c1, &[], "").await).unwrap();
    // A request that left with the old cookie while elevate rotated it.
    let res = call(&app, "GET", "/token", &c1, &[], "").await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    assert_eq!(cookie_of(&res), None, "no cookie over the fresh one");
    assert_eq!(me(&app, &c2).await["user"], "alice");
    // Replaced twice within the grace window: the record no longer knows
    // the token at all; the answer is the same.
    let c3 = cookie_of(&call(&app, "GET", "/regenerate", &c2, &[], "").await).unwrap();
    assert_ne!(c2, c3);
    let res = call(&app, "GET", "/token", &c1, &[], "").await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    assert_eq!(cookie_of(&res), None, "no cookie over the fresh one");
    assert_eq!(me(&app, &c3).await["user"], "alice");
}

#[tokio::test]
async fn unknown_fetch_metadata_unreadable_origins_and_trace_are_refused() {
    let hits = Arc::new(AtomicUsize::new(0));
    let app = routes(layer(MemoryStore::new(), |b| b), hits.clone());
    let c = cookie_of(&call(&app, "GET", "/login", "", &[], "").await).unwrap();
    let form = ("content-type", "application/x-www-form-urlencoded");
    let res = call(
        &app,
        "POST",
        "/transfer",
        &c,
        &[form, ("sec-fetch-site", "Cross-Site")],
        "a=1",
    )
    .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    for (name, value) in [
        ("origin", &b"https://evil.test/\xff"[..]),
        ("referer", &b"https://evil.test/\xff"[..]),
    ] {
        let req = Request::builder()
            .method("POST")
            .uri("/transfer")
            .header("host", "app.test")
            .header("cookie", format!("session={c}"))
            .header(form.0, form.1)
            .header(name, http::HeaderValue::from_bytes(value).unwrap())
            .body(Body::from("a=2"))
            .unwrap();
        assert_eq!(
            app.clone().oneshot(req).await.unwrap().status(),
            StatusCode::FORBIDDEN,
            "{name}"
        );
    }
    let res = call(
        &app,
        "TRACE",
        "/transfer",
        &c,
        &[("sec-fetch-site", "cross-site")],
        "",
    )
    .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(hits.load(Ordering::SeqCst), 0);
}

/// A session logged in through `app`: its cookie, id and a CSRF token.
async fn logged_in(app: &Router) -> (String, String, String) {
    let (c, sid) = login(app).await;
    let t = text(call(app, "GET", "/token", &c, &[], "").await).await;
    (c, sid, t)
}

fn form_request(cookie: &str, body: Body) -> Request<Body> {
    Request::builder()
        .method("POST")
        .uri("/transfer")
        .header("host", "app.test")
        .header("cookie", format!("session={cookie}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .unwrap()
}

fn strict(b: session_trail::SessionLayerBuilder) -> session_trail::SessionLayerBuilder {
    b.csrf(Csrf::new().strict(true).scheme("http").form_limit(1024))
}

#[tokio::test]
async fn strict_forms_too_large_unreadable_or_unreachable_are_not_recorded_as_attacks() {
    use tower::Layer;
    let store = MemoryStore::new();
    let l = layer(store.clone(), strict);
    let writer = l.history_writer().unwrap().clone();
    let hits = Arc::new(AtomicUsize::new(0));
    let app = routes(l.clone(), hits.clone());
    let (c, sid, t) = logged_in(&app).await;
    // Over the limit, declared or streamed: 413.
    let big = format!("csrf_token={t}&blob={}", "x".repeat(2048));
    let res = call(
        &app,
        "POST",
        "/transfer",
        &c,
        &[("content-type", "application/x-www-form-urlencoded")],
        &big,
    )
    .await;
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let chunks = vec![Ok::<_, std::io::Error>(bytes::Bytes::from(big.clone()))];
    let res = app
        .clone()
        .oneshot(form_request(
            &c,
            Body::from_stream(futures_util::stream::iter(chunks)),
        ))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // A body that fails while it is read: 400.
    let chunks = vec![
        Ok(bytes::Bytes::from(format!("csrf_token={t}&a="))),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "reset",
        )),
    ];
    let res = app
        .clone()
        .oneshot(form_request(
            &c,
            Body::from_stream(futures_util::stream::iter(chunks)),
        ))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    // The layer around the whole router, under a layer that changes the
    // body type: a 500 that says so, even with a valid token.
    let svc = tower::util::MapRequestLayer::new(|r: Request<Body>| {
        r.map(|b| http_body_util::Limited::new(b, 1 << 20))
    })
    .layer(l.layer(handlers(hits.clone())));
    let valid = format!("csrf_token={}&a=1", common::form_value(&t));
    let res = svc
        .oneshot(form_request(&c, Body::from(valid)))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let said = text(res).await;
    assert!(said.contains("misconfigured"), "{said}");
    // Dropped while the form is still arriving: nothing ran, nothing recorded.
    let first = futures_util::stream::iter(vec![Ok::<_, std::io::Error>(
        bytes::Bytes::from_static(b"a=1"),
    )]);
    let body = Body::from_stream(futures_util::StreamExt::chain(
        first,
        futures_util::stream::pending(),
    ));
    let r = tokio::time::timeout(
        Duration::from_millis(100),
        app.clone().oneshot(form_request(&c, body)),
    )
    .await;
    assert!(r.is_err());
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    writer.flush().await.unwrap();
    let all = common::history_json(&store, &sid).await;
    assert!(signals(&all).is_empty(), "{all:?}");
    // What the layer answered itself is recorded as the session's request
    // (the token is live); the request dropped mid-form is not.
    let posts: Vec<&Value> = all.iter().filter(|e| e["method"] == "POST").collect();
    let statuses: Vec<u64> = posts
        .iter()
        .map(|e| e["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, vec![413, 413, 400, 500], "{all:?}");
}

#[tokio::test]
async fn a_refusal_with_a_dead_token_records_nothing_and_spends_no_replay_allowance() {
    let store = MemoryStore::new();
    let l = layer(store.clone(), |b| {
        b.rotation_grace(Duration::from_millis(1))
    });
    let writer = l.history_writer().unwrap().clone();
    let app = routes(l, Arc::new(AtomicUsize::new(0)));
    let (c1, sid) = login(&app).await;
    call(&app, "GET", "/elevate", &c1, &[], "").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    // The replaced cookie makes a cross-site post (a hostile page in the
    // browser that still holds it), then a thief replays it.
    assert_eq!(cross_site_post(&app, &c1).await, StatusCode::FORBIDDEN);
    writer.flush().await.unwrap();
    me(&app, &c1).await;
    writer.flush().await.unwrap();
    let found = signals(&common::history_json(&store, &sid).await);
    assert_eq!(found, vec!["replaced_token_reused".to_owned()], "{found:?}");
}
