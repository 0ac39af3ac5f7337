//! CSRF refusals and the rest of the session: a refusal must not hide a
//! replayed credential's entry, must not consume an expired session's
//! `ended` entry, and a token asked for during a rotation must not replace
//! the fresh cookie; header values the check does not know are refused.
#![cfg(all(feature = "axum", feature = "memory-store"))]

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
use session_trail::store::{HistoryStore, MemoryStore};
use session_trail::{Csrf, Key, Session, SessionId, SessionLayer};
use tower::ServiceExt;

fn cookie_of(res: &Response<Body>) -> Option<String> {
    res.headers().get_all("set-cookie").iter().find_map(|v| {
        let rest = v.to_str().ok()?.strip_prefix("session=")?;
        Some(rest.split(';').next().unwrap_or_default().to_owned())
    })
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
        .layer(layer)
}

async fn entries(store: &MemoryStore, sid: &str) -> Vec<Value> {
    let sid: SessionId = sid.parse().unwrap();
    store
        .read_all(&sid)
        .await
        .unwrap()
        .iter()
        .map(|b| session_trail::history::Entry::decode(b).unwrap().to_json())
        .collect()
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
    let c1 = cookie_of(&call(&app, "GET", "/login", "", &[], "").await).unwrap();
    let sid = me(&app, &c1).await["id"].as_str().unwrap().to_owned();
    let c2 = cookie_of(&call(&app, "GET", "/elevate", &c1, &[], "").await).unwrap();
    assert_ne!(c1, c2);
    // Let the grace window of the replaced token pass (1 ms).
    tokio::time::sleep(Duration::from_millis(20)).await;
    // A hostile page makes the victim's browser post cross-site...
    let res = call(
        &app,
        "POST",
        "/transfer",
        &c2,
        &[("sec-fetch-site", "cross-site")],
        "",
    )
    .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    // ... and a thief replays the old cookie.
    assert_eq!(me(&app, &c1).await["user"], Value::Null);
    writer.flush().await.unwrap();
    let found = signals(&entries(&store, &sid).await);
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
    let c = cookie_of(&call(&app, "GET", "/login", "", &[], "").await).unwrap();
    let sid = me(&app, &c).await["id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let res = call(
        &app,
        "POST",
        "/transfer",
        &c,
        &[("sec-fetch-site", "cross-site")],
        "",
    )
    .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    call(&app, "GET", "/me", &c, &[], "").await;
    writer.flush().await.unwrap();
    let all = entries(&store, &sid).await;
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
