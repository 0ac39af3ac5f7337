//! The demo server's HTTP contract (`DEMO-CONTRACT.md`), driven over TCP by
//! a real HTTP client with a cookie jar against the demo's router served
//! in-process on a free loopback port.
#![cfg(all(feature = "axum", feature = "memory-store"))]

#[allow(dead_code)]
#[path = "../examples/demo/app.rs"]
mod app;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use reqwest::header::{CONTENT_TYPE, COOKIE, SET_COOKIE};
use reqwest::{Client, Response, StatusCode};
use serde_json::{Value, json};
use session_trail::Key;
use session_trail::history::HistoryWriter;
use session_trail::store::MemoryStore;

/// The demo served on `127.0.0.1:0`, stopped when dropped.
struct Demo {
    base: String,
    writer: HistoryWriter,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Demo {
    async fn start() -> Self {
        Self::with(app::Options::default()).await
    }

    async fn with(options: app::Options) -> Self {
        let layer = app::layer(MemoryStore::new(), Key::generate(), &options).unwrap();
        Self::serve(&layer).await
    }

    async fn serve(layer: &app::Demo) -> Self {
        let writer = layer.history_writer().cloned().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(app::serve(listener, app::router(layer), async move {
            let _ = stopped.await;
        }));
        Self {
            base,
            writer,
            _stop: stop,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A browser-like client: a cookie jar (it sends `Secure` cookies to
    /// 127.0.0.1, a secure context, as browsers do).
    fn browser(&self) -> Client {
        Client::builder()
            .cookie_store(true)
            .no_proxy()
            .build()
            .unwrap()
    }

    async fn logged_in(&self, user: &str) -> Client {
        let c = self.browser();
        let res = login(&c, self, user, &format!("{user}-pw")).await;
        assert_eq!(res.status(), StatusCode::OK);
        c
    }
}

/// A client without a cookie jar.
fn bare() -> Client {
    Client::builder().no_proxy().build().unwrap()
}

async fn login(c: &Client, demo: &Demo, user: &str, password: &str) -> Response {
    c.post(demo.url("/api/login"))
        .json(&json!({ "user": user, "password": password }))
        .send()
        .await
        .unwrap()
}

async fn body(res: Response) -> Value {
    let text = res.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"))
}

/// Asserts a JSON error answer with `status` and answers its message.
async fn assert_error(res: Response, status: StatusCode) -> String {
    assert_eq!(res.status(), status, "{}", res.url());
    let ct = res.headers()[CONTENT_TYPE].to_str().unwrap().to_owned();
    assert!(ct.starts_with("application/json"), "{ct}");
    let v = body(res).await;
    let msg = v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error in {v}"));
    assert!(!msg.is_empty());
    msg.to_owned()
}

fn set_cookies(res: &Response) -> Vec<String> {
    res.headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

/// The value of the session cookie a response sets, checking that it sets
/// no other cookie.
fn session_cookie(res: &Response) -> Option<String> {
    let all = set_cookies(res);
    assert!(all.len() <= 1, "more than one cookie: {all:?}");
    let c = cookie::Cookie::parse(all.first()?.clone()).unwrap();
    assert_eq!(c.name(), "session", "the only cookie is the session's");
    Some(c.value().to_owned())
}

async fn get(c: &Client, demo: &Demo, path: &str) -> Response {
    c.get(demo.url(path)).send().await.unwrap()
}

async fn history(c: &Client, demo: &Demo, query: &str) -> Value {
    let res = get(c, demo, &format!("/api/history{query}")).await;
    assert_eq!(res.status(), StatusCode::OK);
    body(res).await
}

async fn export_lines(c: &Client, demo: &Demo) -> Vec<Value> {
    let res = get(c, demo, "/api/export").await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()[CONTENT_TYPE], "application/x-ndjson");
    let text = res.text().await.unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Polls `f` until it answers `Some`, failing after `within`.
async fn eventually<T, F, Fut>(within: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn is_rfc3339(s: &str) -> bool {
    // 2026-01-02T03:04:05(.fff)Z or with an offset.
    let b = s.as_bytes();
    b.len() >= 20
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && (s.ends_with('Z') || s[19..].contains(['+', '-']))
}

fn is_hex_or_base64(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+/=-_".contains(&b))
}

fn kinds(page: &Value) -> Vec<String> {
    page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_owned())
        .collect()
}

// ---------------------------------------------------------------------------
// Start-up settings

fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
    move |name| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (*v).to_owned())
    }
}

const HEX_A: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
const HEX_B: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

#[test]
fn settings_default_to_loopback_memory_secure_cookie_and_a_random_key_with_a_warning() {
    let s = app::Settings::from_env(env(&[])).unwrap();
    assert_eq!(s.addr, "127.0.0.1:3000");
    assert!(s.redis_url.is_none());
    assert!(!s.options.insecure_cookie);
    assert!(!s.options.issue_on_first_visit);
    assert!(s.options.header.is_none());
    assert_eq!(s.seed, 0, "no synthetic history unless asked");
    assert_eq!(s.options.checkpoint_seconds, 30);
    assert_eq!(
        app::Settings::from_env(env(&[("DEMO_CHECKPOINT_SECONDS", "2")]))
            .unwrap()
            .options
            .checkpoint_seconds,
        2
    );
    assert_eq!(
        app::Settings::from_env(env(&[("DEMO_SEED", "2000")]))
            .unwrap()
            .seed,
        2000
    );
    assert!(
        s.warnings
            .iter()
            .any(|w| w.contains("not survive a restart")),
        "{:?}",
        s.warnings
    );
}

#[test]
fn settings_read_every_variable() {
    let s = app::Settings::from_env(env(&[
        ("DEMO_ADDR", "0.0.0.0:8080"),
        ("REDIS_URL", "redis://127.0.0.1:6379"),
        ("SESSION_KEY", HEX_A),
        ("HISTORY_KEY", HEX_A),
        ("DEMO_INSECURE_COOKIE", "1"),
        ("DEMO_ISSUE_ON_FIRST_VISIT", "1"),
        ("DEMO_HEADER", "x-session"),
    ]))
    .unwrap();
    assert_eq!(s.addr, "0.0.0.0:8080");
    assert_eq!(s.redis_url.as_deref(), Some("redis://127.0.0.1:6379"));
    assert_eq!(s.key.id(), Key::from_hex(HEX_A).unwrap().id());
    assert!(s.options.insecure_cookie && s.options.issue_on_first_visit);
    assert_eq!(s.options.header.as_deref(), Some("x-session"));
    // Equal keys: nothing to warn about but the insecure cookie.
    assert!(
        s.warnings.iter().all(|w| !w.contains("HISTORY_KEY")),
        "{:?}",
        s.warnings
    );
}

#[test]
fn settings_warn_that_a_different_history_key_is_ignored() {
    let s =
        app::Settings::from_env(env(&[("SESSION_KEY", HEX_A), ("HISTORY_KEY", HEX_B)])).unwrap();
    assert_eq!(s.key.id(), Key::from_hex(HEX_A).unwrap().id());
    assert!(
        s.warnings
            .iter()
            .any(|w| w.contains("HISTORY_KEY is ignored")),
        "{:?}",
        s.warnings
    );
}

#[test]
fn settings_refuse_short_or_malformed_keys_and_bad_flags() {
    for vars in [
        &[("SESSION_KEY", "abcd")][..],
        &[("SESSION_KEY", "zz")],
        &[("SESSION_KEY", HEX_A), ("HISTORY_KEY", "00ff")],
        &[("DEMO_INSECURE_COOKIE", "yes please")],
        &[("DEMO_SEED", "many")],
        &[("DEMO_SEED", "-1")],
        &[("DEMO_SEED", "1000001")],
        &[("DEMO_CHECKPOINT_SECONDS", "0")],
        &[("DEMO_CHECKPOINT_SECONDS", "soon")],
        &[("DEMO_CHECKPOINT_SECONDS", "86401")],
    ] {
        let err = app::Settings::from_env(env(vars)).unwrap_err();
        let name = vars.last().unwrap().0;
        assert!(err.contains(name), "{err} should name {name}");
    }
}

#[tokio::test]
async fn an_invalid_header_name_is_refused_at_build() {
    let options = app::Options {
        header: Some("not a header".into()),
        ..app::Options::default()
    };
    let err = app::layer(MemoryStore::new(), Key::generate(), &options).unwrap_err();
    assert_eq!(err.setting(), "header");
}

// ---------------------------------------------------------------------------
// Cookies

#[tokio::test]
async fn the_cookie_is_httponly_secure_samesite_lax_and_the_only_one() {
    let demo = Demo::start().await;
    let res = login(&bare(), &demo, "alice", "alice-pw").await;
    assert_eq!(res.status(), StatusCode::OK);
    let cookies = set_cookies(&res);
    assert_eq!(cookies.len(), 1, "{cookies:?}");
    let c = &cookies[0];
    assert!(c.starts_with("session="), "{c}");
    for attr in ["HttpOnly", "Secure", "SameSite=Lax", "Path=/"] {
        assert!(c.contains(attr), "{attr} missing in {c}");
    }
}

#[tokio::test]
async fn demo_insecure_cookie_drops_only_the_secure_attribute() {
    let demo = Demo::with(app::Options {
        insecure_cookie: true,
        ..app::Options::default()
    })
    .await;
    let res = login(&bare(), &demo, "alice", "alice-pw").await;
    let c = &set_cookies(&res)[0];
    assert!(!c.contains("Secure"), "{c}");
    for attr in ["HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(c.contains(attr), "{attr} missing in {c}");
    }
}

#[tokio::test]
async fn no_response_sets_a_second_cookie_along_a_whole_visit() {
    let demo = Demo::start().await;
    let c = demo.browser();
    let mut requests = vec![
        c.get(demo.url("/")),
        c.get(demo.url("/api/visits")),
        c.post(demo.url("/api/login"))
            .json(&json!({"user": "alice", "password": "alice-pw"})),
        c.post(demo.url("/api/elevate")),
        c.post(demo.url("/api/cart")).json(&json!({"item": "book"})),
        c.get(demo.url("/api/me")),
        c.get(demo.url("/api/history")),
        c.get(demo.url("/api/sessions")),
        c.get(demo.url("/api/export")),
        c.get(demo.url("/api/stats")),
        c.get(demo.url("/app.js")),
        c.delete(demo.url("/api/history")),
        c.post(demo.url("/api/logout")),
    ];
    for req in requests.drain(..) {
        let res = req.send().await.unwrap();
        assert!(res.status().is_success(), "{} {}", res.url(), res.status());
        session_cookie(&res); // at most one, named `session`
    }
}

#[tokio::test]
async fn anonymous_requests_get_no_cookie_unless_issue_on_first_visit() {
    let demo = Demo::start().await;
    for path in ["/", "/api/ping", "/api/history", "/api/stats"] {
        let res = get(&bare(), &demo, path).await;
        assert_eq!(res.status(), StatusCode::OK, "{path}");
        assert!(set_cookies(&res).is_empty(), "{path}");
    }
    let demo = Demo::with(app::Options {
        issue_on_first_visit: true,
        ..app::Options::default()
    })
    .await;
    let res = get(&bare(), &demo, "/api/ping").await;
    assert!(
        session_cookie(&res).is_some(),
        "a first visit gets a session"
    );
}

// ---------------------------------------------------------------------------
// Routes

#[tokio::test]
async fn ping_answers_ok_and_touches_no_session() {
    let demo = Demo::start().await;
    let c = demo.browser();
    let res = get(&c, &demo, "/api/ping").await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(body(res).await, json!({"ok": true}));
    get(&c, &demo, "/api/visits").await;
    let before = history(&c, &demo, "").await["entries"]
        .as_array()
        .unwrap()
        .len();
    let res = get(&c, &demo, "/api/ping").await;
    assert!(set_cookies(&res).is_empty());
    let me_visits = body(get(&c, &demo, "/api/visits").await).await["visits"].clone();
    assert_eq!(me_visits, 2, "ping changed nothing in the session");
    let after = history(&c, &demo, "").await["entries"]
        .as_array()
        .unwrap()
        .len();
    assert!(after > before);
}

#[tokio::test]
async fn visits_count_up_in_one_session() {
    let demo = Demo::start().await;
    let c = demo.browser();
    for n in 1..=3 {
        let res = get(&c, &demo, "/api/visits").await;
        assert_eq!(res.status(), StatusCode::OK);
        let first = n == 1;
        assert_eq!(
            session_cookie(&res).is_some(),
            first,
            "cookie only when issued"
        );
        assert_eq!(body(res).await, json!({ "visits": n }));
    }
}

#[tokio::test]
async fn login_answers_the_user_and_rotates_the_token() {
    let demo = Demo::start().await;
    let c = demo.browser();
    let res = get(&c, &demo, "/api/visits").await;
    let before = session_cookie(&res).unwrap();

    let res = login(&c, &demo, "alice", "alice-pw").await;
    assert_eq!(res.status(), StatusCode::OK);
    let after = session_cookie(&res).expect("login sets a new credential");
    assert_ne!(before, after);
    assert_eq!(body(res).await, json!({"user": "alice"}));

    // The replaced token no longer reaches the session; the new one does.
    let old = bare()
        .get(demo.url("/api/me"))
        .header(COOKIE, format!("session={before}"))
        .send()
        .await
        .unwrap();
    assert_error(old, StatusCode::UNAUTHORIZED).await;
    let me = body(get(&c, &demo, "/api/me").await).await;
    assert_eq!(me["user"], "alice");
    assert_eq!(me["privilege"], "user");
    assert_eq!(me["visits"], 1, "data survives the rotation");

    // Logging in again (same user) rotates too.
    let res = login(&c, &demo, "alice", "alice-pw").await;
    let again = session_cookie(&res).expect("every login rotates");
    assert_ne!(again, after);
    let page = history(&c, &demo, "").await;
    assert!(kinds(&page).contains(&"rotated".to_owned()), "{page}");
}

#[tokio::test]
async fn bad_credentials_are_401_and_create_no_session() {
    let demo = Demo::start().await;
    for (user, pw) in [
        ("alice", "bob-pw"),
        ("alice", ""),
        ("mallory", "alice-pw"),
        ("", ""),
    ] {
        let res = login(&bare(), &demo, user, pw).await;
        assert!(set_cookies(&res).is_empty());
        assert_error(res, StatusCode::UNAUTHORIZED).await;
    }
    // In an existing session the failure is recorded.
    let c = demo.browser();
    get(&c, &demo, "/api/visits").await;
    assert_error(
        login(&c, &demo, "bob", "nope").await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    let page = history(&c, &demo, "").await;
    assert!(
        page["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["event"] == "login_failed"),
        "{page}"
    );
}

#[tokio::test]
async fn malformed_login_bodies_are_4xx_json_errors() {
    let demo = Demo::start().await;
    let c = bare();
    let url = demo.url("/api/login");
    let cases = [
        // Not JSON at all.
        c.post(&url)
            .header(CONTENT_TYPE, "application/json")
            .body("{\"user\":"),
        // A field missing.
        c.post(&url).json(&json!({"user": "alice"})),
        // Wrong types.
        c.post(&url).json(&json!({"user": 1, "password": ["x"]})),
        // No content type.
        c.post(&url)
            .body("{\"user\":\"alice\",\"password\":\"alice-pw\"}"),
        // No body.
        c.post(&url),
    ];
    for req in cases {
        let res = req.send().await.unwrap();
        assert!(res.status().is_client_error(), "{}", res.status());
        assert!(set_cookies(&res).is_empty());
        let status = res.status();
        assert_error(res, status).await;
    }
}

#[tokio::test]
async fn unknown_routes_and_wrong_methods_answer_json_errors() {
    let demo = Demo::start().await;
    assert_error(
        get(&bare(), &demo, "/api/nope").await,
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_error(
        get(&bare(), &demo, "/api/login").await,
        StatusCode::METHOD_NOT_ALLOWED,
    )
    .await;
    let res = bare().put(demo.url("/api/history")).send().await.unwrap();
    assert_error(res, StatusCode::METHOD_NOT_ALLOWED).await;
}

#[tokio::test]
async fn elevate_makes_admin_and_rotates_the_token() {
    let demo = Demo::start().await;
    assert_error(
        bare().post(demo.url("/api/elevate")).send().await.unwrap(),
        StatusCode::UNAUTHORIZED,
    )
    .await;
    // A session without a user is anonymous too.
    let c = demo.browser();
    get(&c, &demo, "/api/visits").await;
    let res = c.post(demo.url("/api/elevate")).send().await.unwrap();
    assert_error(res, StatusCode::UNAUTHORIZED).await;

    let res = login(&c, &demo, "alice", "alice-pw").await;
    let before = session_cookie(&res).unwrap();
    let res = c.post(demo.url("/api/elevate")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let after = session_cookie(&res).expect("elevate sets a new credential");
    assert_ne!(before, after);
    assert_eq!(body(res).await, json!({"privilege": "admin"}));
    let me = body(get(&c, &demo, "/api/me").await).await;
    assert_eq!(me["privilege"], "admin");

    let page = history(&c, &demo, "").await;
    let entries = page["entries"].as_array().unwrap();
    let changed = entries
        .iter()
        .find(|e| e["kind"] == "privilege_changed" && e["to_privilege"] == "admin")
        .unwrap_or_else(|| panic!("no privilege_changed entry: {page}"));
    assert_eq!(changed["from_privilege"], "user");
    assert!(entries.iter().any(|e| e["kind"] == "rotated"));
}

#[tokio::test]
async fn me_answers_user_privilege_visits_and_the_public_session_id() {
    let demo = Demo::start().await;
    assert_error(
        get(&bare(), &demo, "/api/me").await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    let c = demo.logged_in("bob").await;
    get(&c, &demo, "/api/visits").await;
    let me = body(get(&c, &demo, "/api/me").await).await;
    let keys: HashSet<&str> = me.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        HashSet::from(["user", "privilege", "visits", "session"])
    );
    assert_eq!(me["user"], "bob");
    assert_eq!(me["privilege"], "user");
    assert_eq!(me["visits"], 1);
    let page = history(&c, &demo, "").await;
    assert_eq!(me["session"], page["session"]);
    let sid = me["session"].as_str().unwrap();
    assert!(sid.len() >= 16 && is_hex_or_base64(sid), "{sid}");
}

#[tokio::test]
async fn logout_ends_the_session_and_clears_the_cookie() {
    let demo = Demo::start().await;
    let c = demo.logged_in("alice").await;
    let res = c.post(demo.url("/api/logout")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let cleared = &set_cookies(&res)[0];
    assert!(cleared.starts_with("session=;"), "{cleared}");
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    assert_error(get(&c, &demo, "/api/me").await, StatusCode::UNAUTHORIZED).await;
    // Anonymous logout is harmless.
    let res = bare().post(demo.url("/api/logout")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn cart_records_an_add_to_cart_event_that_is_written_within_a_second() {
    let demo = Demo::start().await;
    let c = demo.browser(); // anonymous visitors have carts too
    for (n, item) in ["book", "coffee"].into_iter().enumerate() {
        let res = c
            .post(demo.url("/api/cart"))
            .json(&json!({ "item": item }))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(body(res).await, json!({ "items": n + 1 }));
    }
    let page = history(&c, &demo, "").await;
    let events: Vec<&Value> = page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "event")
        .collect();
    assert_eq!(events.len(), 2, "{page}");
    assert_eq!(events[0]["event"], "add_to_cart");
    assert_eq!(events[0]["data"], json!({"item": "coffee"}), "newest first");
    assert_eq!(events[1]["data"], json!({"item": "book"}));

    // Written to the store (not just queued) within a second.
    let shown = page["entries"].as_array().unwrap().len() as u64;
    let stats = eventually(Duration::from_secs(1), "history written", || async {
        let s = body(get(&bare(), &demo, "/api/stats").await).await;
        (s["queued"] == 0 && s["written"].as_u64()? >= shown).then_some(s)
    })
    .await;
    assert_eq!(stats["dropped"], 0);

    // Bad items are refused.
    for bad in [
        json!({"item": ""}),
        json!({"item": "x".repeat(65)}),
        json!({"item": "a\u{7}b"}),
    ] {
        let res = c
            .post(demo.url("/api/cart"))
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_error(res, StatusCode::BAD_REQUEST).await;
    }
    let res = c
        .post(demo.url("/api/cart"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    let status = res.status();
    assert!(status.is_client_error());
    assert_error(res, status).await;
}

#[tokio::test]
async fn history_is_newest_first_with_the_documented_fields_and_a_verified_chain() {
    let demo = Demo::start().await;
    let c = demo.logged_in("alice").await;
    c.post(demo.url("/api/cart"))
        .json(&json!({"item": "book"}))
        .send()
        .await
        .unwrap();
    get(&c, &demo, "/api/ping?secret=hunter2").await;
    let page = history(&c, &demo, "?limit=100").await;
    assert_eq!(page["chain"]["ok"], true, "{page}");
    assert!(page["chain"]["error"].is_null());
    assert!(page["session"].is_string());
    let entries = page["entries"].as_array().unwrap();
    let seqs: Vec<u64> = entries.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    let mut expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    expected.reverse();
    assert_eq!(seqs, expected, "newest first, per-session seq from 1");
    for e in entries {
        assert!(is_rfc3339(e["ts"].as_str().unwrap()), "{e}");
        assert!(is_hex_or_base64(e["mac"].as_str().unwrap()), "{e}");
        assert!(is_hex_or_base64(e["prev"].as_str().unwrap()), "{e}");
        match e["kind"].as_str().unwrap() {
            "request" => {
                assert!(e["method"].is_string() && e["status"].is_u64(), "{e}");
                let path = e["path"].as_str().unwrap();
                assert!(path.starts_with('/') && !path.contains('?'), "{e}");
            }
            "event" => assert!(e["event"].is_string() && !e["data"].is_null(), "{e}"),
            _ => {}
        }
    }
    let text = page.to_string();
    assert!(
        !text.contains("hunter2"),
        "query strings never enter history"
    );
    let ping = entries.iter().find(|e| e["path"] == "/api/ping").unwrap();
    assert_eq!(ping["method"], "GET");
    assert_eq!(ping["status"], 200);
    let login = entries.iter().find(|e| e["path"] == "/api/login").unwrap();
    assert_eq!(login["method"], "POST");
    assert!(kinds(&page).contains(&"started".to_owned()));
}

#[tokio::test]
async fn history_limit_defaults_to_50_caps_at_1000_and_refuses_garbage() {
    let demo = Demo::start().await;
    let c = demo.browser();
    for _ in 0..60 {
        get(&c, &demo, "/api/visits").await;
    }
    let len = |v: &Value| v["entries"].as_array().unwrap().len();
    assert_eq!(len(&history(&c, &demo, "").await), 50);
    assert_eq!(len(&history(&c, &demo, "?limit=5").await), 5);
    let all = history(&c, &demo, "?limit=5000").await;
    assert!(len(&all) > 60 && len(&all) <= 1000, "{}", len(&all));
    assert_eq!(all["chain"]["ok"], true);
    for bad in ["?limit=abc", "?limit=-1"] {
        let res = get(&c, &demo, &format!("/api/history{bad}")).await;
        assert_error(res, StatusCode::BAD_REQUEST).await;
    }
}

#[tokio::test]
async fn history_without_a_session_is_an_empty_page() {
    let demo = Demo::start().await;
    let res = get(&bare(), &demo, "/api/history").await;
    assert!(set_cookies(&res).is_empty());
    let page = body(res).await;
    assert!(page["session"].is_null());
    assert_eq!(page["entries"], json!([]));
    assert_eq!(page["chain"]["ok"], true);
    assert!(page["chain"]["error"].is_null());
}

#[tokio::test]
async fn sessions_lists_the_users_sessions_and_marks_the_current_one() {
    let demo = Demo::start().await;
    assert_error(
        get(&bare(), &demo, "/api/sessions").await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    let laptop = demo.logged_in("alice").await;
    let phone = demo.logged_in("alice").await;
    let _bob = demo.logged_in("bob").await;
    let list = body(get(&laptop, &demo, "/api/sessions").await).await;
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2, "{list:?}");
    let mine = body(get(&laptop, &demo, "/api/me").await).await["session"].clone();
    for s in list {
        for key in ["session", "created", "last_seen", "current"] {
            assert!(s.get(key).is_some(), "{key} missing in {s}");
        }
        assert!(is_rfc3339(s["created"].as_str().unwrap()));
        assert!(is_rfc3339(s["last_seen"].as_str().unwrap()));
        assert_eq!(s["current"], s["session"] == mine, "{s}");
    }
    let from_phone = body(get(&phone, &demo, "/api/sessions").await).await;
    let current: Vec<_> = from_phone
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["current"] == true)
        .collect();
    assert_eq!(current.len(), 1);
    assert_ne!(current[0]["session"], mine);
}

#[tokio::test]
async fn revoke_ends_one_of_the_users_sessions_and_404s_for_anyone_elses() {
    let demo = Demo::start().await;
    let laptop = demo.logged_in("alice").await;
    let phone = demo.logged_in("alice").await;
    let bob = demo.logged_in("bob").await;
    let phone_sid = body(get(&phone, &demo, "/api/me").await).await["session"]
        .as_str()
        .unwrap()
        .to_owned();
    let bob_sid = body(get(&bob, &demo, "/api/me").await).await["session"]
        .as_str()
        .unwrap()
        .to_owned();

    let revoke = |c: &Client, sid: &str| c.delete(demo.url(&format!("/api/sessions/{sid}"))).send();
    assert_error(
        revoke(&bare(), &phone_sid).await.unwrap(),
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_error(
        revoke(&laptop, &bob_sid).await.unwrap(),
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_error(
        revoke(&laptop, "not-a-session").await.unwrap(),
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_error(
        revoke(&laptop, "00000000000000000000000000000000")
            .await
            .unwrap(),
        StatusCode::NOT_FOUND,
    )
    .await;
    // Bob is untouched.
    assert_eq!(get(&bob, &demo, "/api/me").await.status(), StatusCode::OK);

    let res = revoke(&laptop, &phone_sid).await.unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_error(
        get(&phone, &demo, "/api/me").await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    let list = body(get(&laptop, &demo, "/api/sessions").await).await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    // Revoked twice: no longer the user's.
    assert_error(
        revoke(&laptop, &phone_sid).await.unwrap(),
        StatusCode::NOT_FOUND,
    )
    .await;
}

#[tokio::test]
async fn export_streams_ndjson_of_every_session_of_the_user() {
    let demo = Demo::start().await;
    assert_error(
        get(&bare(), &demo, "/api/export").await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    let laptop = demo.logged_in("alice").await;
    let phone = demo.logged_in("alice").await;
    let bob = demo.logged_in("bob").await;
    for (c, item) in [(&laptop, "book"), (&phone, "coffee"), (&bob, "tea")] {
        c.post(demo.url("/api/cart"))
            .json(&json!({ "item": item }))
            .send()
            .await
            .unwrap();
    }
    let res = get(&laptop, &demo, "/api/export").await;
    assert!(
        res.headers().get("content-length").is_none(),
        "the export is streamed"
    );
    let lines = export_lines(&laptop, &demo).await;
    let sessions: HashSet<&str> = lines
        .iter()
        .map(|l| l["session"].as_str().unwrap())
        .collect();
    assert_eq!(sessions.len(), 2, "both of alice's sessions, not bob's");
    let items: HashSet<&str> = lines
        .iter()
        .filter(|l| l["event"] == "add_to_cart")
        .map(|l| l["data"]["item"].as_str().unwrap())
        .collect();
    assert_eq!(items, HashSet::from(["book", "coffee"]));
    for l in &lines {
        assert!(
            l["seq"].is_u64() && l["kind"].is_string() && l["mac"].is_string(),
            "{l}"
        );
    }
}

#[tokio::test]
async fn erase_deletes_the_users_history_and_a_later_export_is_empty() {
    let demo = Demo::start().await;
    let res = bare()
        .delete(demo.url("/api/history"))
        .send()
        .await
        .unwrap();
    assert_error(res, StatusCode::UNAUTHORIZED).await;
    let c = demo.logged_in("alice").await;
    c.post(demo.url("/api/cart"))
        .json(&json!({"item": "book"}))
        .send()
        .await
        .unwrap();
    assert!(!export_lines(&c, &demo).await.is_empty());

    let res = c.delete(demo.url("/api/history")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert!(export_lines(&c, &demo).await.is_empty(), "nothing left");
    // The session itself lives on.
    assert_eq!(body(get(&c, &demo, "/api/me").await).await["user"], "alice");
}

#[tokio::test]
async fn stats_answer_the_writer_counters() {
    let demo = Demo::start().await;
    let c = demo.logged_in("alice").await;
    get(&c, &demo, "/api/visits").await;
    let res = get(&bare(), &demo, "/api/stats").await;
    assert_eq!(res.status(), StatusCode::OK);
    let s = body(res).await;
    let keys: HashSet<&str> = s.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        HashSet::from(["queued", "written", "retried", "dropped"])
    );
    assert!(keys.iter().all(|k| s[k].is_u64()), "{s}");
    demo.writer.flush().await.unwrap();
    let s = body(get(&bare(), &demo, "/api/stats").await).await;
    assert!(s["written"].as_u64().unwrap() >= 4, "{s}");
    assert_eq!(s["queued"], 0);
}

#[tokio::test]
async fn the_header_transport_carries_the_credential_when_configured() {
    let demo = Demo::with(app::Options {
        header: Some("x-session".into()),
        ..app::Options::default()
    })
    .await;
    let c = bare();
    // A cookie-less client announces the header (empty) on its first call.
    let res = c
        .post(demo.url("/api/login"))
        .header("x-session", "")
        .json(&json!({"user": "alice", "password": "alice-pw"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        set_cookies(&res).is_empty(),
        "no cookie for a header client"
    );
    let token = res.headers()["x-session"].to_str().unwrap().to_owned();
    assert!(!token.is_empty());

    let me = c
        .get(demo.url("/api/me"))
        .header("x-session", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), StatusCode::OK);
    assert_eq!(body(me).await["user"], "alice");

    let res = c
        .post(demo.url("/api/elevate"))
        .header("x-session", &token)
        .send()
        .await
        .unwrap();
    let rotated = res.headers()["x-session"].to_str().unwrap().to_owned();
    assert_ne!(rotated, token, "rotation also travels in the header");

    // Browsers keep using the cookie and never see the credential in a header.
    let res = login(&bare(), &demo, "bob", "bob-pw").await;
    assert!(res.headers().get("x-session").is_none());
    assert!(session_cookie(&res).is_some());

    // Without the option the header is ignored.
    let plain = Demo::start().await;
    let res = plain
        .browser()
        .get(plain.url("/api/me"))
        .header("x-session", &rotated)
        .send()
        .await
        .unwrap();
    assert_error(res, StatusCode::UNAUTHORIZED).await;
}

#[tokio::test]
async fn store_failures_are_503_json_errors_with_retry_after() {
    let store = MemoryStore::new();
    let layer = app::layer(store.clone(), Key::generate(), &app::Options::default()).unwrap();
    let demo = Demo::serve(&layer).await;
    let c = demo.logged_in("alice").await;

    // Loading the session fails: the extractor's 503.
    store.session_faults().set_down(true);
    let res = get(&c, &demo, "/api/me").await;
    assert_eq!(res.headers()["retry-after"], "1");
    assert_error(res, StatusCode::SERVICE_UNAVAILABLE).await;
    // Requests that need no session are served as usual.
    assert_eq!(get(&c, &demo, "/api/stats").await.status(), StatusCode::OK);
    store.session_faults().set_down(false);

    // Saving a new session fails after the handler answered: the layer's
    // own 503 (an empty body) comes out as JSON too.
    store.session_faults().fail_next(1);
    let res = bare()
        .post(demo.url("/api/cart"))
        .json(&json!({"item": "book"}))
        .send()
        .await
        .unwrap();
    assert!(set_cookies(&res).is_empty());
    assert_error(res, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(get(&c, &demo, "/api/me").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_page_and_its_assets_are_served() {
    let demo = Demo::start().await;
    let res = get(&bare(), &demo, "/").await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        res.headers()[CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let csp = res.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    let html = res.text().await.unwrap();
    assert!(html.contains("/app.js") && html.contains("/app.css"));
    for (path, ct) in [("/app.js", "text/javascript"), ("/app.css", "text/css")] {
        let res = get(&bare(), &demo, path).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert!(
            res.headers()[CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with(ct)
        );
    }
}

#[tokio::test]
async fn a_graceful_stop_then_writer_shutdown_loses_nothing() {
    // What the demo's main does on SIGINT/SIGTERM.
    let layer = app::layer(
        MemoryStore::new(),
        Key::generate(),
        &app::Options::default(),
    )
    .unwrap();
    let writer = layer.history_writer().cloned().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app::serve(listener, app::router(&layer), async move {
        let _ = stopped.await;
    }));
    let c = Client::builder()
        .cookie_store(true)
        .no_proxy()
        .build()
        .unwrap();
    let url = |p: &str| format!("http://{addr}{p}");
    c.post(url("/api/login"))
        .json(&json!({"user": "alice", "password": "alice-pw"}))
        .send()
        .await
        .unwrap();
    for _ in 0..20 {
        c.post(url("/api/cart"))
            .json(&json!({"item": "book"}))
            .send()
            .await
            .unwrap();
    }
    drop(c);
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
    writer.shutdown(Duration::from_secs(5)).await.unwrap();
    let s = writer.stats();
    assert_eq!(s.queue_depth, 0);
    assert_eq!(s.dropped, 0);
    assert_eq!(s.written, s.enqueued);
    // Login: started, login, privilege_changed and the request; each cart:
    // an event and a request.
    assert!(s.written >= 4 + 20 * 2, "{s:?}");
}

// ---------------------------------------------------------------------------
// Cross-site requests (CSRF)

async fn csrf_token(c: &Client, demo: &Demo) -> String {
    let res = get(c, demo, "/api/csrf").await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()[reqwest::header::CACHE_CONTROL], "no-store");
    body(res).await["token"].as_str().unwrap().to_owned()
}

/// Adds an item to the cart with extra headers; answers the status and, on
/// success, the cart's size.
async fn add_to_cart(c: &Client, demo: &Demo, headers: &[(&str, &str)]) -> (StatusCode, Value) {
    let mut req = c.post(demo.url("/api/cart")).json(&json!({"item": "book"}));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = req.send().await.unwrap();
    let status = res.status();
    if status == StatusCode::FORBIDDEN {
        assert_error(res, status).await;
        return (status, Value::Null);
    }
    (status, body(res).await)
}

fn csrf_entries(page: &Value) -> Vec<Value> {
    page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "suspicious" && e["reason"] == "csrf")
        .cloned()
        .collect()
}

#[test]
fn settings_read_demo_csrf() {
    let s = app::Settings::from_env(env(&[("DEMO_CSRF", "strict")])).unwrap();
    assert!(s.options.csrf_strict);
    let s = app::Settings::from_env(env(&[])).unwrap();
    assert!(!s.options.csrf_strict);
    assert!(app::Settings::from_env(env(&[("DEMO_CSRF", "maybe")])).is_err());
}

#[tokio::test]
async fn cross_site_unsafe_requests_are_refused_before_the_handler_and_recorded_once() {
    let demo = Demo::start().await;
    let c = demo.logged_in("alice").await;
    let own = demo.base.clone();
    let own_page = format!("{own}/");
    let other_scheme = own.replace("http://", "https://");
    let other_port = format!("{own}1");
    let cases: Vec<(Vec<(&str, &str)>, bool)> = vec![
        (vec![("sec-fetch-site", "cross-site")], false),
        (vec![("sec-fetch-site", "same-site")], false),
        (
            vec![("sec-fetch-site", "cross-site"), ("origin", &own)],
            false,
        ),
        (vec![("sec-fetch-site", "same-origin")], true),
        (vec![("sec-fetch-site", "none")], true),
        (vec![("origin", "http://localhost:9")], false),
        (vec![("origin", &other_scheme)], false),
        (vec![("origin", &other_port)], false),
        (vec![("origin", "null")], false),
        (vec![("origin", &own)], true),
        (vec![("referer", "http://evil.test/form")], false),
        (vec![("referer", &own_page)], true),
        (
            vec![("origin", "http://evil.test"), ("referer", &own_page)],
            false,
        ),
        // No browser headers: a non-browser client.
        (vec![], true),
    ];
    let mut items = 0;
    for (headers, pass) in &cases {
        let (status, answer) = add_to_cart(&c, &demo, headers).await;
        if *pass {
            items += 1;
            assert_eq!(status, StatusCode::OK, "{headers:?}");
            assert_eq!(answer, json!({"items": items}), "{headers:?}");
        } else {
            assert_eq!(status, StatusCode::FORBIDDEN, "{headers:?}");
        }
    }
    // The refused requests changed nothing: the cart holds the passed ones.
    let (_, answer) = add_to_cart(&c, &demo, &[]).await;
    assert_eq!(answer, json!({"items": items + 1}));
    // Every method that can change state is checked; safe ones are not.
    for method in [
        reqwest::Method::PUT,
        reqwest::Method::PATCH,
        reqwest::Method::DELETE,
    ] {
        let res = c
            .request(method.clone(), demo.url("/api/history"))
            .header("sec-fetch-site", "cross-site")
            .send()
            .await
            .unwrap();
        assert_error(res, StatusCode::FORBIDDEN).await;
    }
    let res = c
        .get(demo.url("/api/me"))
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    // The erase above was refused: history is still there, with one
    // signed suspicious entry for all those refusals (rate-limited).
    let page = eventually(Duration::from_secs(2), "a csrf entry", || async {
        let page = history(&c, &demo, "?limit=1000").await;
        (!csrf_entries(&page).is_empty()).then_some(page)
    })
    .await;
    let found = csrf_entries(&page);
    assert_eq!(found.len(), 1, "{page}");
    assert_eq!(found[0]["signal"], "csrf");
    assert_eq!(page["chain"]["ok"], true);
}

#[tokio::test]
async fn the_csrf_token_is_masked_bound_to_the_session_and_changes_with_its_token() {
    let demo = Demo::start().await;
    let c = demo.browser();
    let t1 = csrf_token(&c, &demo).await;
    let t2 = csrf_token(&c, &demo).await;
    assert_ne!(t1, t2, "masked per response");
    for t in [&t1, &t2] {
        let (status, _) = add_to_cart(&c, &demo, &[("x-csrf-token", t)]).await;
        assert_eq!(status, StatusCode::OK);
    }
    // Login rotates the session's token, and with it the CSRF token.
    let res = c
        .post(demo.url("/api/login"))
        .header("x-csrf-token", &t1)
        .json(&json!({"user": "alice", "password": "alice-pw"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let (status, _) = add_to_cart(&c, &demo, &[("x-csrf-token", &t1)]).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "the pre-login token");
    let t3 = csrf_token(&c, &demo).await;
    let res = c
        .post(demo.url("/api/elevate"))
        .header("x-csrf-token", &t3)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let (status, _) = add_to_cart(&c, &demo, &[("x-csrf-token", &t3)]).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "the pre-elevate token");
    let t4 = csrf_token(&c, &demo).await;
    let (status, _) = add_to_cart(&c, &demo, &[("x-csrf-token", &t4)]).await;
    assert_eq!(status, StatusCode::OK);
    // Wrong, truncated and other sessions' tokens are refused.
    let other = demo.browser();
    let theirs = csrf_token(&other, &demo).await;
    let truncated = &t4[..t4.len() - 1];
    for bad in [theirs.as_str(), truncated, "garbage", ""] {
        let (status, _) = add_to_cart(&c, &demo, &[("x-csrf-token", bad)]).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{bad:?}");
    }
    // A token without any session is refused too.
    let (status, _) = add_to_cart(&bare(), &demo, &[("x-csrf-token", &t4)]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn demo_csrf_strict_requires_the_token_on_every_unsafe_request_of_a_session() {
    let demo = Demo::with(app::Options {
        csrf_strict: true,
        ..Default::default()
    })
    .await;
    // No session yet: nothing to protect, so a login passes without one.
    let c = demo.logged_in("bob").await;
    let (status, _) = add_to_cart(&c, &demo, &[]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let t = csrf_token(&c, &demo).await;
    let (status, answer) = add_to_cart(&c, &demo, &[("x-csrf-token", &t)]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        answer,
        json!({"items": 1}),
        "the refused request added nothing"
    );
    // A client without a session (no cookie) passes.
    let (status, _) = add_to_cart(&bare(), &demo, &[]).await;
    assert_eq!(status, StatusCode::OK);
}

async fn post_json(c: &Client, demo: &Demo, path: &str, body: Value) -> Response {
    c.post(demo.url(path)).json(&body).send().await.unwrap()
}

#[tokio::test]
async fn view_and_checkout_record_events_and_checkout_empties_the_cart() {
    let demo = Demo::start().await;
    let c = demo.browser();
    let res = post_json(&c, &demo, "/api/view", json!({"item": "book"})).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(body(res).await, json!({"ok": true}));
    assert_error(
        post_json(&c, &demo, "/api/view", json!({"item": ""})).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    // An empty cart cannot check out.
    let res = c.post(demo.url("/api/checkout")).send().await.unwrap();
    assert!(
        assert_error(res, StatusCode::CONFLICT)
            .await
            .contains("empty")
    );
    for _ in 0..2 {
        post_json(&c, &demo, "/api/cart", json!({"item": "book"})).await;
    }
    let res = c.post(demo.url("/api/checkout")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(body(res).await, json!({"items": 2}));
    // Emptied: a second checkout is refused.
    let res = c.post(demo.url("/api/checkout")).send().await.unwrap();
    assert_error(res, StatusCode::CONFLICT).await;
    let h = eventually(Duration::from_secs(5), "the checkout entry", || async {
        let h = history(&c, &demo, "").await;
        let events: Vec<(String, Value)> = h["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "event")
            .map(|e| (e["event"].as_str().unwrap().to_owned(), e["data"].clone()))
            .collect();
        events
            .iter()
            .any(|(n, _)| n == "checkout")
            .then_some(events)
    })
    .await;
    // Newest first.
    assert_eq!(h[0], ("checkout".to_owned(), json!({"items": 2})));
    assert!(h.contains(&("view_product".to_owned(), json!({"item": "book"}))));
}

#[tokio::test]
async fn insights_are_for_admins_and_count_the_shop() {
    let demo = Demo::start().await;
    let funnel = "/api/insights/funnel?steps=view_product,add_to_cart,checkout&within=3600";
    // Anonymous: 401; a user: 403; an admin: 200.
    assert_error(get(&bare(), &demo, funnel).await, StatusCode::UNAUTHORIZED).await;
    let admin = demo.logged_in("alice").await;
    assert_error(get(&admin, &demo, funnel).await, StatusCode::FORBIDDEN).await;
    assert_error(
        get(&admin, &demo, "/api/insights/cohorts?period=week").await,
        StatusCode::FORBIDDEN,
    )
    .await;
    let res = admin.post(demo.url("/api/elevate")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);

    // Two shoppers: bob goes all the way, an anonymous one views only.
    let bob = demo.logged_in("bob").await;
    post_json(&bob, &demo, "/api/view", json!({"item": "lamp"})).await;
    post_json(&bob, &demo, "/api/cart", json!({"item": "lamp"})).await;
    let res = bob.post(demo.url("/api/checkout")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let anon = demo.browser();
    post_json(&anon, &demo, "/api/view", json!({"item": "mug"})).await;

    let report = eventually(Duration::from_secs(5), "the funnel", || async {
        let v = body(get(&admin, &demo, funnel).await).await;
        (v["steps"][2]["sessions"] == 1 && v["steps"][0]["sessions"] == 2).then_some(v)
    })
    .await;
    assert_eq!(
        report,
        json!({"steps": [
            {"event": "view_product", "sessions": 2},
            {"event": "add_to_cart", "sessions": 1},
            {"event": "checkout", "sessions": 1},
        ]})
    );
    // The default funnel is the shop's.
    let v = body(get(&admin, &demo, "/api/insights/funnel").await).await;
    assert_eq!(v, report);

    // Cohorts: alice and bob logged in today, each in this week's cohort.
    let v = body(get(&admin, &demo, "/api/insights/cohorts?period=day").await).await;
    assert_eq!(v["period"], "day");
    let today = time::OffsetDateTime::now_utc().date().to_string();
    assert_eq!(
        v["cohorts"],
        json!([{"start": today, "users": 2, "active": [2]}])
    );
    let v = body(get(&admin, &demo, "/api/insights/cohorts").await).await;
    assert_eq!(v["period"], "week");
    assert_eq!(v["cohorts"][0]["users"], 2);

    // Bad queries are 400s that say what is wrong.
    for bad in [
        "/api/insights/funnel?steps=",
        "/api/insights/funnel?steps=a%20b",
        "/api/insights/funnel?within=0",
        "/api/insights/funnel?within=-1",
        "/api/insights/cohorts?period=month",
    ] {
        assert_error(get(&admin, &demo, bad).await, StatusCode::BAD_REQUEST).await;
    }
}
