//! The session layer: credential, transport, rotation, data, expiry, failure.

mod common;

use std::time::Duration;

use axum::body::Body;
use common::app::{Client, body_json, router, session_cookie};
use http::{Request, StatusCode};
use proptest::prelude::*;
use session_trail::store::{MemoryStore, SessionStore};
use session_trail::{Key, SessionLayer};
use tower::ServiceExt;

fn layer(store: &MemoryStore) -> SessionLayer {
    SessionLayer::builder(store.clone(), Key::from_bytes(&common::secret(42)).unwrap())
        .without_history()
        .build()
        .unwrap()
}

fn client(store: &MemoryStore) -> Client {
    Client::new(router(layer(store)))
}

fn set_cookies(res: &http::Response<Body>) -> Vec<String> {
    res.headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn anonymous_request_gets_no_cookie_and_makes_no_store_call() {
    let store = MemoryStore::new();
    let mut c = client(&store);
    let res = c.send("GET", "/ping").await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(set_cookies(&res).is_empty());
    // Reading an anonymous session makes no store call either.
    let me = c.json("GET", "/me").await;
    assert_eq!(me["anonymous"], true);
    assert_eq!(store.session_faults().calls(), 0);
    assert_eq!(store.session_count(), 0);
}

#[tokio::test]
async fn first_write_issues_a_cookie_with_secure_defaults() {
    let store = MemoryStore::new();
    let mut c = client(&store);
    let res = c.send("GET", "/visits").await;
    let cookies = set_cookies(&res);
    assert_eq!(cookies.len(), 1, "{cookies:?}");
    let ck = &cookies[0];
    for attr in ["HttpOnly", "Secure", "SameSite=Lax", "Path=/"] {
        assert!(ck.contains(attr), "{attr} missing in {ck}");
    }
    assert!(!ck.contains("Domain"), "{ck}");
    assert!(!ck.contains("Max-Age"), "{ck}");
    assert_eq!(body_json(res).await["visits"], 1);
    assert_eq!(store.session_count(), 1);
}

#[tokio::test]
async fn cookie_is_not_resent_when_unchanged() {
    let store = MemoryStore::new();
    let mut c = client(&store);
    c.send("GET", "/visits").await;
    let res = c.send("GET", "/visits").await;
    assert!(set_cookies(&res).is_empty());
    assert_eq!(body_json(res).await["visits"], 2);
}

#[tokio::test]
async fn untouched_session_makes_no_store_call() {
    let store = MemoryStore::new();
    let mut c = client(&store);
    c.send("GET", "/visits").await;
    let before = store.session_faults().calls();
    let res = c.send("GET", "/ping").await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(set_cookies(&res).is_empty());
    assert_eq!(store.session_faults().calls(), before);
}

#[tokio::test]
async fn forged_mac_is_anonymous_without_store_call() {
    let store = MemoryStore::new();
    let l = layer(&store);
    let mut c = Client::new(router(l.clone()));
    c.send("GET", "/visits").await;
    let good = c.cookie.clone().unwrap();
    // Flip one character of the MAC part.
    let mut forged = good.into_bytes();
    let last = forged.len() - 2;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    c.cookie = Some(String::from_utf8(forged).unwrap());
    let before = store.session_faults().calls();
    let me = c.json("GET", "/me").await;
    assert_eq!(me["anonymous"], true);
    assert_eq!(
        store.session_faults().calls(),
        before,
        "a forged credential reached the store"
    );
    assert_eq!(l.invalid_credentials(), 1);
}

#[tokio::test]
async fn malformed_oversized_and_non_utf8_credentials_are_anonymous() {
    let store = MemoryStore::new();
    let app = router(layer(&store));
    let long = "A".repeat(10_000);
    let values: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"garbage".to_vec(),
        long.clone().into_bytes(),
        vec![b'a'; 114],
        b"\xff\xfe\xfd".to_vec(),
        b"session=; session=%%%".to_vec(),
    ];
    for v in values {
        let cookie = [b"session=".as_slice(), &v].concat();
        let req = Request::get("/me")
            .header("cookie", http::HeaderValue::from_bytes(&cookie).unwrap())
            .body(Body::empty())
            .unwrap();
        let res = app.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(body_json(res).await["anonymous"], true);
    }
    assert_eq!(store.session_faults().calls(), 0);
}

#[tokio::test]
async fn login_rotates_token_and_keeps_data() {
    let store = MemoryStore::new();
    let mut c = client(&store);
    c.send("GET", "/visits").await;
    let before = c.cookie.clone().unwrap();
    let sid_before = c.json("GET", "/me").await["session"].clone();
    let res = c.send("POST", "/login/alice").await;
    assert_eq!(res.status(), StatusCode::OK);
    let after = c.cookie.clone().unwrap();
    assert_ne!(before, after, "login must rotate the token");
    let me = c.json("GET", "/me").await;
    assert_eq!(me["user"], "alice");
    assert_eq!(me["visits"], 1, "data survives rotation");
    assert_eq!(me["session"], sid_before, "the public id stays");
    // The old token no longer reaches the session.
    c.cookie = Some(before);
    assert_eq!(c.json("GET", "/me").await["anonymous"], true);
}

#[tokio::test]
async fn privilege_change_and_regenerate_rotate_the_token() {
    let store = MemoryStore::new();
    let mut c = client(&store);
    c.send("POST", "/login/bob").await;
    for path in ["/elevate", "/regenerate"] {
        let before = c.cookie.clone();
        let res = c.send("POST", path).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_ne!(c.cookie, before, "{path} must rotate");
    }
    let me = c.json("GET", "/me").await;
    assert_eq!(me["privilege"], "admin");
}

#[tokio::test]
async fn replaced_token_gets_no_cookie() {
    let store = MemoryStore::new();
    let mut c = client(&store);
    c.send("POST", "/login/alice").await;
    let old = c.cookie.clone().unwrap();
    c.send("POST", "/elevate").await;
    let new = c.cookie.clone().unwrap();
    assert_ne!(old, new);
    // A request still in flight with the replaced token: anonymous, and no
    // new cookie that would log the browser out.
    c.cookie = Some(old.clone());
    let res = c.send("GET", "/me").await;
    assert!(set_cookies(&res).is_empty());
    assert_eq!(body_json(res).await["anonymous"], true);
    // The new token still works.
    c.cookie = Some(new);
    assert_eq!(c.json("GET", "/me").await["privilege"], "admin");
}

#[tokio::test]
async fn replaced_token_that_writes_starts_a_new_session() {
    let store = MemoryStore::new();
    let mut c = client(&store);
    c.send("POST", "/login/alice").await;
    let old = c.cookie.clone().unwrap();
    let alice_sid = c.json("GET", "/me").await["session"].clone();
    c.send("POST", "/elevate").await;
    c.cookie = Some(old);
    let res = c.send("GET", "/visits").await;
    assert_eq!(set_cookies(&res).len(), 1);
    let me = c.json("GET", "/me").await;
    assert_eq!(me["user"], serde_json::Value::Null);
    assert_ne!(me["session"], alice_sid, "never the privileged session");
}

#[tokio::test]
async fn logout_destroys_and_clears_the_cookie() {
    let store = MemoryStore::new();
    let mut c = client(&store);
    c.send("POST", "/login/alice").await;
    let token = c.cookie.clone().unwrap();
    let res = c.send("POST", "/logout").await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let cookies = set_cookies(&res);
    assert_eq!(cookies.len(), 1);
    assert!(cookies[0].contains("Max-Age=0"), "{}", cookies[0]);
    assert_eq!(store.session_count(), 0);
    c.cookie = Some(token);
    assert_eq!(c.json("GET", "/me").await["anonymous"], true);
}

#[tokio::test]
async fn logout_then_write_in_one_request_ends_the_old_session() {
    use axum::extract::Path;
    use axum::routing::post;
    let store = MemoryStore::new();
    let app = axum::Router::new()
        .route(
            "/login/{user}",
            post(
                |s: session_trail::Session, Path(user): Path<String>| async move {
                    s.set_user(Some(user)).await?;
                    Ok::<_, session_trail::Error>(())
                },
            ),
        )
        .route(
            "/logout-flash",
            post(|s: session_trail::Session| async move {
                s.destroy().await?;
                s.insert("flash", "bye").await?;
                Ok::<_, session_trail::Error>(())
            }),
        )
        .layer(layer(&store));
    let mut c = Client::new(app);
    c.send("POST", "/login/alice").await;
    let before = c.cookie.clone();
    let res = c.send("POST", "/logout-flash").await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_ne!(c.cookie, before, "a new session gets a new credential");
    assert!(store.sessions_of_user("alice").await.unwrap().is_empty());
    assert_eq!(
        store.session_count(),
        1,
        "only the new, anonymous session remains"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_to_different_keys_both_survive() {
    let store = MemoryStore::new();
    let mut c = client(&store);
    c.send("GET", "/visits").await;
    let mut a = c.fork();
    let mut b = c.fork();
    // Both load the same record, then write different keys.
    let (ra, rb) = tokio::join!(
        a.send("POST", "/slow-set/color/red"),
        b.send("POST", "/slow-set/size/xl")
    );
    assert_eq!(ra.status(), StatusCode::OK);
    assert_eq!(rb.status(), StatusCode::OK);
    let id = c.json("GET", "/me").await["session"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let rec = store.load(&id).await.unwrap().unwrap();
    assert_eq!(rec.data["color"], "red");
    assert_eq!(rec.data["size"], "xl");
    assert_eq!(rec.data["visits"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroyed_session_is_not_resurrected_by_a_late_write() {
    let store = MemoryStore::new();
    let mut c = client(&store);
    c.send("POST", "/login/alice").await;
    let mut slow = c.fork();
    let slow_write =
        tokio::spawn(async move { slow.send("POST", "/slow-set/late/write").await.status() });
    tokio::time::sleep(Duration::from_millis(30)).await;
    c.send("POST", "/logout").await;
    assert_eq!(slow_write.await.unwrap(), StatusCode::OK);
    assert_eq!(
        store.session_count(),
        0,
        "a late write resurrected a destroyed session"
    );
}

#[tokio::test]
async fn idle_timeout_ends_the_session() {
    let store = MemoryStore::new();
    let l = SessionLayer::builder(store.clone(), Key::generate())
        .without_history()
        .idle_timeout(Duration::from_millis(600))
        .build()
        .unwrap();
    let mut c = Client::new(router(l));
    c.send("POST", "/login/alice").await;
    assert_eq!(c.json("GET", "/me").await["user"], "alice");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(c.json("GET", "/me").await["anonymous"], true);
}

#[tokio::test]
async fn reads_slide_the_idle_deadline() {
    let store = MemoryStore::new();
    let l = SessionLayer::builder(store.clone(), Key::generate())
        .without_history()
        .idle_timeout(Duration::from_millis(1200))
        .idle_refresh_fraction(0.25)
        .build()
        .unwrap();
    let mut c = Client::new(router(l));
    c.send("POST", "/login/alice").await;
    let id = c.json("GET", "/me").await["session"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let first = store.load(&id).await.unwrap().unwrap().idle_deadline;
    // Read-only requests past the refresh point keep the session alive well
    // beyond the first idle deadline.
    let until = std::time::Instant::now() + Duration::from_millis(2700);
    while std::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(c.json("GET", "/me").await["user"], "alice");
    }
    let later = store.load(&id).await.unwrap().unwrap().idle_deadline;
    assert!(
        later > first + 400,
        "idle deadline did not slide: {first} -> {later}"
    );
}

#[tokio::test]
async fn reads_within_the_refresh_fraction_write_nothing() {
    let store = MemoryStore::new();
    let mut c = client(&store);
    c.send("POST", "/login/alice").await;
    let before = store.session_faults().calls();
    for _ in 0..5 {
        c.json("GET", "/me").await;
    }
    // One load per request, no update.
    assert_eq!(store.session_faults().calls() - before, 5);
}

#[tokio::test]
async fn absolute_timeout_ends_an_active_session() {
    let store = MemoryStore::new();
    let l = SessionLayer::builder(store.clone(), Key::generate())
        .without_history()
        .idle_timeout(Duration::from_millis(500))
        .absolute_timeout(Duration::from_millis(1000))
        .idle_refresh_fraction(0.1)
        .build()
        .unwrap();
    let mut c = Client::new(router(l));
    c.send("POST", "/login/alice").await;
    let started = std::time::Instant::now();
    loop {
        let me = c.json("GET", "/me").await;
        if me["anonymous"] == true {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "session outlived its absolute timeout"
        );
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    assert!(started.elapsed() >= Duration::from_millis(900));
}

#[tokio::test]
async fn header_transport_serves_cookieless_clients() {
    let store = MemoryStore::new();
    let l = SessionLayer::builder(store.clone(), Key::generate())
        .without_history()
        .header("x-session")
        .build()
        .unwrap();
    let app = router(l);
    let send = |token: Option<String>, path: &'static str| {
        let app = app.clone();
        async move {
            let mut req = Request::builder().method("POST").uri(path);
            req = req.header("x-session", token.unwrap_or_default());
            app.oneshot(req.body(Body::empty()).unwrap()).await.unwrap()
        }
    };
    let res = send(None, "/login/carol").await;
    assert!(
        set_cookies(&res).is_empty(),
        "a header client gets no cookie"
    );
    let token = res.headers()["x-session"].to_str().unwrap().to_owned();
    assert_eq!(token.len(), 114);
    let res = send(Some(token.clone()), "/elevate").await;
    let rotated = res.headers()["x-session"].to_str().unwrap().to_owned();
    assert_ne!(rotated, token);
    let req = Request::get("/me")
        .header("x-session", &rotated)
        .body(Body::empty())
        .unwrap();
    let me = body_json(app.clone().oneshot(req).await.unwrap()).await;
    assert_eq!(me["user"], "carol");
    assert_eq!(me["privilege"], "admin");
    // A browser (cookie, no header) never gets the credential in a header.
    let mut browser = Client::new(app);
    let res = browser.send("GET", "/visits").await;
    assert!(res.headers().get("x-session").is_none());
    assert_eq!(set_cookies(&res).len(), 1);
}

#[tokio::test]
async fn issue_on_first_visit_sets_a_cookie_without_writes() {
    let store = MemoryStore::new();
    let l = SessionLayer::builder(store.clone(), Key::generate())
        .without_history()
        .issue_on_first_visit(true)
        .build()
        .unwrap();
    let mut c = Client::new(router(l));
    let res = c.send("GET", "/ping").await;
    assert_eq!(set_cookies(&res).len(), 1);
    assert_eq!(store.session_count(), 1);
    let res = c.send("GET", "/ping").await;
    assert!(set_cookies(&res).is_empty(), "only the first visit");
    assert_eq!(store.session_count(), 1);
}

#[tokio::test]
async fn store_outage_is_503_only_where_the_session_is_read() {
    let store = MemoryStore::new();
    let mut c = client(&store);
    c.send("POST", "/login/alice").await;
    store.session_faults().set_down(true);
    assert_eq!(c.send("GET", "/ping").await.status(), StatusCode::OK);
    let res = c.send("GET", "/me").await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()["retry-after"], "1");
    let body = body_json(res).await;
    assert!(
        body["error"].as_str().unwrap().contains("unavailable"),
        "{body}"
    );
    // gRPC callers get a gRPC status.
    let req = Request::post("/me")
        .header("content-type", "application/grpc")
        .header("cookie", format!("session={}", c.cookie.clone().unwrap()))
        .body(Body::empty())
        .unwrap();
    let app = c.app.clone();
    let res = axum::Router::new()
        .route(
            "/me",
            axum::routing::post(|_s: session_trail::Session| async { "" }),
        )
        .layer(layer(&store))
        .oneshot(req)
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["grpc-status"], "14");
    drop(app);
    // After recovery the user is still logged in: no silent logout.
    store.session_faults().set_down(false);
    assert_eq!(c.json("GET", "/me").await["user"], "alice");
}

#[tokio::test]
async fn save_failure_is_503_not_a_silent_loss() {
    let store = MemoryStore::new();
    let mut c = client(&store);
    c.send("GET", "/visits").await;
    // Loading works, saving fails.
    store.session_faults().lose_next_acks(1);
    let res = c.send("GET", "/visits").await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn old_keys_still_verify_and_credentials_are_re_signed() {
    let store = MemoryStore::new();
    let old = Key::from_bytes(&common::secret(1)).unwrap();
    let new = Key::from_bytes(&common::secret(2)).unwrap();
    let l_old = SessionLayer::builder(store.clone(), old.clone())
        .without_history()
        .build()
        .unwrap();
    let mut c = Client::new(router(l_old));
    c.send("POST", "/login/alice").await;
    let signed_old = c.cookie.clone().unwrap();
    let l_new = SessionLayer::builder(store.clone(), new)
        .previous_key(old)
        .without_history()
        .build()
        .unwrap();
    c.app = router(l_new);
    let res = c.send("GET", "/me").await;
    let resigned = session_cookie(&res, "session").expect("re-signed with the current key");
    assert_ne!(resigned, signed_old);
    assert_eq!(body_json(res).await["user"], "alice");
    assert_eq!(c.json("GET", "/me").await["user"], "alice");
}

#[tokio::test]
async fn missing_layer_rejection_names_the_fix() {
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(|_s: session_trail::Session| async { "" }),
    );
    let res = app
        .oneshot(Request::get("/").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body = body_json(res).await;
    assert!(
        body["error"].as_str().unwrap().contains("SessionLayer"),
        "{body}"
    );
}

#[tokio::test]
async fn invalid_configuration_fails_at_build_naming_the_setting() {
    let b = || SessionLayer::builder(MemoryStore::new(), Key::generate()).without_history();
    let cases = [
        (b().idle_timeout(Duration::ZERO).build(), "idle_timeout"),
        (
            b().absolute_timeout(Duration::ZERO).build(),
            "absolute_timeout",
        ),
        (
            b().idle_timeout(Duration::from_secs(10))
                .absolute_timeout(Duration::from_secs(5))
                .build(),
            "idle_timeout",
        ),
        (
            b().idle_refresh_fraction(0.0).build(),
            "idle_refresh_fraction",
        ),
        (
            b().cookie_name("__Host-s").cookie_secure(false).build(),
            "cookie_secure",
        ),
        (
            b().cookie_name("__Host-s").cookie_path("/app").build(),
            "cookie_path",
        ),
        (
            b().cookie_name("__Host-s")
                .cookie_domain("example.com")
                .build(),
            "cookie_domain",
        ),
        (b().cookie_name("bad name").build(), "cookie_name"),
        (b().header("bad header\n").build(), "header"),
        (b().without_cookie().build(), "without_cookie"),
        (
            b().cookie_same_site(session_trail::SameSite::None)
                .cookie_secure(false)
                .build(),
            "cookie_same_site",
        ),
    ];
    for (result, setting) in cases {
        let err = result.unwrap_err();
        assert_eq!(err.setting(), setting, "{err}");
        assert!(err.to_string().contains(setting));
    }
    assert!(b().cookie_name("__Host-session").build().is_ok());
    assert!(Key::try_from(&[0u8; 16][..]).is_err());
}

#[tokio::test]
async fn debug_output_reveals_no_secret() {
    let store = MemoryStore::new();
    let key = Key::from_bytes(&[0xAB, 0xCD].repeat(16)).unwrap();
    let l = SessionLayer::builder(store.clone(), key)
        .without_history()
        .build()
        .unwrap();
    let mut c = Client::new(router(l.clone()));
    c.send("GET", "/visits").await;
    let token = c.cookie.clone().unwrap();
    let dbg = format!("{l:?} {store:?}");
    assert!(!dbg.contains(&token));
    assert!(!dbg.to_lowercase().contains("abcdabcd"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn arbitrary_cookie_and_header_bytes_are_anonymous(
        cookie in proptest::collection::vec(any::<u8>(), 0..400),
        header in proptest::collection::vec(any::<u8>(), 0..400),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let store = MemoryStore::new();
            let l = SessionLayer::builder(store.clone(), Key::generate()).without_history().header("x-session").build().unwrap();
            let app = router(l);
            let mut req = Request::get("/me");
            if let Ok(v) = http::HeaderValue::from_bytes(&cookie) {
                req = req.header("cookie", v);
            }
            if let Ok(v) = http::HeaderValue::from_bytes(&header) {
                req = req.header("x-session", v);
            }
            let res = app.oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
            prop_assert_eq!(res.status(), StatusCode::OK);
            prop_assert_eq!(body_json(res).await["anonymous"].clone(), serde_json::json!(true));
            prop_assert_eq!(store.session_faults().calls(), 0);
            Ok(())
        })?;
    }
}

#[test]
fn layer_service_and_future_have_the_bounds_axum_and_tonic_need() {
    fn assert_send<T: Send>() {}
    fn assert_sync<T: Sync>() {}
    fn assert_clone<T: Clone>() {}
    assert_send::<SessionLayer>();
    assert_sync::<SessionLayer>();
    assert_clone::<SessionLayer>();
    type Svc = session_trail::SessionService<axum::Router>;
    assert_send::<Svc>();
    assert_sync::<Svc>();
    assert_clone::<Svc>();
    type Fut = <Svc as tower::Service<Request<Body>>>::Future;
    assert_send::<Fut>();
    assert_send::<session_trail::Session>();
    assert_sync::<session_trail::Session>();
}

#[tokio::test]
async fn non_ascii_foreign_cookie_keeps_the_session() {
    let store = MemoryStore::new();
    let l = layer(&store);
    let mut c = Client::new(router(l.clone()));
    c.send("POST", "/login/alice").await;
    let cookie = c.cookie.clone().unwrap();
    let sid = c.json("GET", "/me").await["session"].clone();
    // Another cookie of the site with a non-ASCII (UTF-8) byte, before ours.
    let mut bytes = b"other=caf\xc3\xa9; session=".to_vec();
    bytes.extend_from_slice(cookie.as_bytes());
    bytes.extend_from_slice(b"; tracker=\xff\xfe");
    let req = Request::get("/me")
        .header("cookie", http::HeaderValue::from_bytes(&bytes).unwrap())
        .body(Body::empty())
        .unwrap();
    let res = c.app.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(set_cookies(&res).is_empty(), "no new or cleared cookie");
    let me = body_json(res).await;
    assert_eq!(me["anonymous"], false, "{me}");
    assert_eq!(me["user"], "alice");
    assert_eq!(me["session"], sid);
    assert_eq!(l.invalid_credentials(), 0, "a foreign cookie is not ours");
    // Our own cookie with a non-ASCII byte is still invalid and counted.
    let req = Request::get("/me")
        .header(
            "cookie",
            http::HeaderValue::from_bytes(b"session=caf\xc3\xa9").unwrap(),
        )
        .body(Body::empty())
        .unwrap();
    let res = c.app.clone().oneshot(req).await.unwrap();
    assert_eq!(body_json(res).await["anonymous"], true);
    assert_eq!(l.invalid_credentials(), 1);
}

#[test]
fn idle_refresh_fraction_one_is_refused() {
    let b = || {
        SessionLayer::builder(MemoryStore::new(), Key::generate())
            .without_history()
            .idle_refresh_fraction(1.0)
            .build()
    };
    let err = b().unwrap_err();
    assert_eq!(err.setting(), "idle_refresh_fraction");
    let msg = err.to_string();
    assert!(msg.contains("idle_refresh_fraction"), "{msg}");
    assert!(msg.contains("(0, 1)"), "{msg}");
    for f in [1.5, f64::NAN, 0.0, -0.1] {
        let err = SessionLayer::builder(MemoryStore::new(), Key::generate())
            .without_history()
            .idle_refresh_fraction(f)
            .build()
            .unwrap_err();
        assert_eq!(err.setting(), "idle_refresh_fraction", "{f}");
    }
    for f in [0.01, 0.5, 0.99] {
        assert!(
            SessionLayer::builder(MemoryStore::new(), Key::generate())
                .without_history()
                .idle_refresh_fraction(f)
                .build()
                .is_ok(),
            "{f}"
        );
    }
}

#[tokio::test]
async fn session_debug_hides_the_user_name() {
    let store = MemoryStore::new();
    let l = layer(&store);
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let out = seen.clone();
    let app = axum::Router::new()
        .route(
            "/debug",
            axum::routing::post(move |s: session_trail::Session| async move {
                s.set_user(Some("alice-secret-name".into())).await?;
                *out.lock().unwrap() = format!("{s:?}");
                Ok::<_, session_trail::Error>(StatusCode::OK)
            }),
        )
        .layer(l);
    let res = app
        .oneshot(Request::post("/debug").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let dbg = seen.lock().unwrap().clone();
    assert!(!dbg.contains("alice-secret-name"), "{dbg}");
    assert!(dbg.contains("user: Some(<set>)"), "{dbg}");
}

#[test]
fn record_debug_hides_user_and_data() {
    use session_trail::store::{Record, Replaced, TokenHash};
    let record = Record {
        id: session_trail::SessionId::generate(),
        token_hash: TokenHash::from_bytes([0xAB; 32]),
        replaced: Some(Replaced {
            token_hash: TokenHash::from_bytes([0xCD; 32]),
            at: 5,
        }),
        user: Some("alice-secret-name".into()),
        privilege: Some("admin".into()),
        data: [(
            "cart".to_owned(),
            serde_json::json!({"card": "4111-secret-value"}),
        )]
        .into_iter()
        .collect(),
        created: 1,
        last_seen: 2,
        idle_deadline: 3,
        absolute_deadline: 4,
        device: Some("Firefox on Linux".into()),
        network: Some("0123456789abcdef".into()),
    };
    let dbg = format!("{record:?}");
    for secret in [
        "alice-secret-name",
        "4111-secret-value",
        "abab",
        "cdcd",
        "0123456789abcdef",
    ] {
        assert!(!dbg.to_lowercase().contains(secret), "{secret} in {dbg}");
    }
    for shown in [
        &record.id.to_string(),
        "cart",
        "admin",
        "Firefox on Linux",
        "<set>",
    ] {
        assert!(dbg.contains(shown), "{shown} missing in {dbg}");
    }
}

#[tokio::test]
async fn http_error_body_hides_internal_settings() {
    let store = MemoryStore::new();
    let l = SessionLayer::builder(store.clone(), Key::generate())
        .without_history()
        .max_value_bytes(16)
        .build()
        .unwrap();
    let app = axum::Router::new()
        .route(
            "/big",
            axum::routing::post(|s: session_trail::Session| async move {
                s.insert("blob", "x".repeat(100)).await?;
                Ok::<_, session_trail::Error>(StatusCode::OK)
            }),
        )
        .layer(l);
    let res = app
        .oneshot(Request::post("/big").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let body = body_json(res).await;
    let msg = body["error"].as_str().unwrap();
    assert!(!msg.contains("max_value_bytes"), "{body}");
    assert!(!msg.contains("16"), "{body}");
    assert_eq!(msg, "invalid input");
}

#[test]
fn update_debug_hides_user_and_values() {
    let u = session_trail::store::Update {
        set: vec![("address".into(), serde_json::json!("221B Baker Street"))],
        user: Some(Some("sherlock@example.com".into())),
        ..Default::default()
    };
    let text = format!("{u:?}");
    assert!(text.contains("address"), "{text}");
    assert!(!text.contains("Baker"), "{text}");
    assert!(!text.contains("sherlock"), "{text}");
}
