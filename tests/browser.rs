//! The demo page in a real browser: Debian's Chromium, headless, driven
//! through Debian's chromedriver (W3C WebDriver) against the demo served
//! in-process on a free loopback port.
//!
//! Needs `chromium` and `chromium-driver` (`./scripts/test.sh` installs
//! them); the test fails, never skips, when they are missing. Set
//! `CHROMIUM` / `CHROMEDRIVER` to use other binaries. Screenshots of the
//! timeline are saved to `target/artifacts/demo-timeline.png` and, after
//! the test tampers with the stored history, `demo-chain-broken.png`.
#![cfg(all(feature = "axum", feature = "memory-store"))]

#[allow(dead_code)]
#[path = "../examples/demo/app.rs"]
mod app;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use futures_util::FutureExt;
use serde_json::{Value, json};
use session_trail::history::HistoryWriter;
use session_trail::store::{Append, AppendOutcome, HistoryStore, MemoryStore};
use session_trail::{Key, SessionId};

/// The W3C WebDriver key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// How long one wait for the page may take.
const WAIT: Duration = Duration::from_secs(10);

fn binary(var: &str, default: &str) -> PathBuf {
    let path = PathBuf::from(std::env::var(var).unwrap_or_else(|_| default.to_owned()));
    assert!(
        path.is_file(),
        "{} not found: run ./scripts/test.sh, which installs Debian's `chromium` and \
         `chromium-driver` (or set {var})",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A chromedriver process and one browser session in it: a minimal W3C
/// WebDriver client over plain HTTP on loopback.
struct Driver {
    http: reqwest::Client,
    base: String,
    session: String,
    _process: tokio::process::Child,
    profile: PathBuf,
}

impl Driver {
    async fn start(chromium: &Path, chromedriver: &Path) -> Self {
        let port = free_port();
        let process = tokio::process::Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromedriver.display()));
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + WAIT;
        loop {
            let ready = match http.get(format!("{base}/status")).send().await {
                Ok(r) => r
                    .json::<Value>()
                    .await
                    .ok()
                    .map(|v| v["value"]["ready"] == true),
                Err(_) => None,
            };
            if ready == Some(true) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile = std::env::temp_dir().join(format!(
            "session-trail-chromium-{}-{port}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&profile);
        let args = [
            "--headless".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--window-size=1280,1200".to_owned(),
            format!("--user-data-dir={}", profile.display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": chromium, "args": args },
        }}});
        let res = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .unwrap();
        let v: Value = res.json().await.unwrap();
        let session = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("chromedriver could not start Chromium: {v}"))
            .to_owned();
        Self {
            http,
            base,
            session,
            _process: process,
            profile,
        }
    }

    async fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut req = self.http.request(method, &url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.unwrap();
        let status = res.status();
        let v: Value = res.json().await.unwrap();
        assert!(status.is_success(), "WebDriver {path}: {status} {v}");
        v["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.cmd(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    async fn script(&self, js: &str) -> Value {
        self.cmd(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({ "script": js, "args": [] })),
        )
        .await
    }

    /// Polls `js` (a function body returning a value) until it is truthy.
    async fn wait(&self, what: &str, js: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let v = self.script(js).await;
            let truthy =
                !matches!(&v, Value::Null | Value::Bool(false)) && v != json!("") && v != json!(0);
            if truthy {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the page has finished its refresh after an action.
    async fn settled(&self) {
        self.wait(
            "the page to refresh",
            "return document.body.dataset.ready === 'true';",
        )
        .await;
    }

    /// Clicks the element matching `css`, as a user would.
    async fn click(&self, css: &str) {
        let el = self
            .cmd(
                reqwest::Method::POST,
                "/element",
                Some(json!({ "using": "css selector", "value": css })),
            )
            .await;
        let id = el[ELEMENT]
            .as_str()
            .expect("an element reference")
            .to_owned();
        // The page marks itself busy during an action; clear the mark first
        // so `settled` waits for this action's refresh.
        self.script("document.body.dataset.ready = 'false';").await;
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{id}/click"),
            Some(json!({})),
        )
        .await;
    }

    /// All cookies of the page, HttpOnly ones included (WebDriver sees them;
    /// scripts do not).
    async fn cookies(&self) -> Vec<Value> {
        self.cmd(reqwest::Method::GET, "/cookie", None)
            .await
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    async fn screenshot(&self, to: &Path) {
        let b64 = self.cmd(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap())
            .unwrap();
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::write(to, png).unwrap();
    }

    async fn quit(self) {
        let url = format!("{}/session/{}", self.base, self.session);
        let _ = self.http.delete(url).send().await;
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

fn artifacts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/artifacts")
}

/// The page flow: log in as alice, add an item, see the event and the
/// verified badge, check the credential is out of the script's reach, log
/// out.
async fn flow(driver: &Driver, demo: &Demo) {
    let (base, secure_cookie) = (demo.base.as_str(), demo.secure_cookie);
    driver.goto(&format!("{base}/")).await;
    driver.settled().await;
    let badge = driver
        .script("return document.querySelector('[data-testid=chain]').textContent;")
        .await;
    assert_eq!(badge, "No session yet");

    // Log in through the page.
    driver.click("[data-testid=login-alice]").await;
    driver.settled().await;
    driver
        .wait(
            "alice to be shown as logged in",
            "return document.querySelector('[data-testid=me-user]').textContent === 'alice';",
        )
        .await;

    // The session cookie is there, HttpOnly, and invisible to scripts.
    let cookies = driver.cookies().await;
    assert_eq!(cookies.len(), 1, "exactly one cookie: {cookies:?}");
    let cookie = &cookies[0];
    assert_eq!(cookie["name"], "session");
    assert_eq!(cookie["httpOnly"], true);
    assert_eq!(cookie["secure"], secure_cookie);
    assert_eq!(cookie["sameSite"], "Lax");
    let credential = cookie["value"].as_str().unwrap().to_owned();
    assert!(credential.len() > 40);
    let visible = driver.script("return document.cookie;").await;
    let visible = visible.as_str().unwrap();
    assert!(
        !visible.contains(&credential) && !visible.contains("session="),
        "document.cookie reveals the credential: {visible:?}"
    );
    let shown = driver
        .script("return document.querySelector('[data-testid=doc-cookie]').textContent;")
        .await;
    assert_eq!(shown, "\"\"", "the page shows what scripts see: nothing");

    // Add an item; the timeline shows the event and the chain verifies.
    driver.click("label.item:nth-child(2) span").await; // "book"
    driver.click("[data-testid=add-to-cart]").await;
    driver.settled().await;
    let item = driver
        .wait(
            "the add_to_cart entry in the timeline",
            "const e = document.querySelector('#timeline li[data-event=add_to_cart]');\
             return e && e.textContent;",
        )
        .await;
    assert!(item.as_str().unwrap().contains("book"), "{item}");
    driver
        .wait(
            "the verified badge",
            "const b = document.querySelector('[data-testid=chain]');\
             return b.dataset.ok === 'true' && b.textContent.startsWith('Chain verified');",
        )
        .await;
    // A signed checkpoint (the demo's interval is 30 s: asked for here):
    // the badge says how far it attests the history.
    demo.writer.checkpoint().await.unwrap();
    driver.click("[data-action=refresh]").await;
    driver.settled().await;
    let badge = driver
        .wait(
            "the checkpointed badge",
            "const b = document.querySelector('[data-testid=chain]');\
             return b.dataset.ok === 'true' && b.textContent.includes('checkpointed up to #')\
               && b.textContent;",
        )
        .await;
    assert!(
        badge.as_str().unwrap().starts_with("Chain verified"),
        "{badge}"
    );
    let lifecycle = driver
        .script(
            "return [...document.querySelectorAll('#timeline li.lifecycle')]\
             .map(e => e.dataset.kind);",
        )
        .await;
    let lifecycle: Vec<&str> = lifecycle
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        lifecycle.contains(&"started") && lifecycle.contains(&"privilege_changed"),
        "{lifecycle:?}"
    );

    // Elevate: the token rotates (the cookie changes under the page's feet,
    // the page does not notice) and the timeline shows the rotation.
    driver.click("[data-testid=elevate]").await;
    driver.settled().await;
    driver
        .wait(
            "the rotated entry",
            "return !!document.querySelector('#timeline li[data-kind=rotated]');",
        )
        .await;
    let rotated = driver.cookies().await;
    assert_ne!(rotated[0]["value"], credential, "elevate rotates the token");

    // The timeline as a person sees it.
    if secure_cookie {
        driver
            .screenshot(&artifacts().join("demo-timeline.png"))
            .await;

        // Someone with write access to the store edits the login event: the
        // badge turns red and the page points at the modified entry.
        let sid = driver
            .script("return document.querySelector('#session-id').textContent.split(' ')[1];")
            .await;
        demo.tamper(sid.as_str().unwrap(), b"password", b"PASSWORD")
            .await;
        driver.click("[data-action=refresh]").await;
        driver.settled().await;
        let badge = driver
            .wait(
                "the broken-chain badge",
                "const b = document.querySelector('[data-testid=chain]');\
                 return b.dataset.ok === 'false' && b.textContent;",
            )
            .await;
        // #1 started, #2 the page's `GET /api/csrf` before it logged in,
        // #3 the login event.
        assert_eq!(badge, "Chain broken at #3");
        driver
            .wait(
                "the modified entry marked",
                "const e = document.querySelector('#timeline li.broken');\
                 return e && e.dataset.seq === '3' && e.textContent.includes('PASSWORD');",
            )
            .await;
        driver
            .screenshot(&artifacts().join("demo-chain-broken.png"))
            .await;
    }

    // Log out: the session ends and the cookie is gone.
    driver.click("[data-testid=logout]").await;
    driver.settled().await;
    driver
        .wait(
            "the anonymous page",
            "return !document.getElementById('account-anon').hidden;",
        )
        .await;
    assert!(
        driver.cookies().await.is_empty(),
        "logout clears the cookie"
    );
    let badge = driver
        .script("return document.querySelector('[data-testid=chain]').textContent;")
        .await;
    assert_eq!(badge, "No session yet");
}

/// One browser at a time: the machine is small.
static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The demo served in-process, with its store at hand.
struct Demo {
    base: String,
    secure_cookie: bool,
    store: MemoryStore,
    writer: HistoryWriter,
}

impl Demo {
    /// Replaces `from` by `to` (same length) in the stored bytes of the
    /// first history entry of `session` that contains it, as an attacker
    /// with write access to the store would.
    async fn tamper(&self, session: &str, from: &[u8], to: &[u8]) {
        let sid: SessionId = session.parse().unwrap();
        self.writer.flush().await.unwrap();
        let mut entries: Vec<Vec<u8>> = self
            .store
            .read_all(&sid)
            .await
            .unwrap()
            .iter()
            .map(|b| b.to_vec())
            .collect();
        let (entry, at) = entries
            .iter()
            .enumerate()
            .find_map(|(i, e)| {
                e.windows(from.len())
                    .position(|w| w == from)
                    .map(|at| (i, at))
            })
            .expect("an entry to tamper with");
        entries[entry][at..at + to.len()].copy_from_slice(to);
        self.store.delete(&sid).await.unwrap();
        let append = Append {
            session: sid,
            expected_head: None,
            token: None,
            entries: entries.into_iter().map(Bytes::from).collect(),
        };
        let outcome = self.store.append(&[append]).await.unwrap();
        assert!(
            matches!(outcome[..], [AppendOutcome::Appended]),
            "{outcome:?}"
        );
    }
}

/// Serves `layer`'s demo on a free loopback port and drives Chromium
/// through `flow` (given the demo's base URL). The browser quits and the
/// server stops however the flow ends; a panic in it is the test's.
async fn in_browser<F>(layer: &app::Demo, flow: F)
where
    F: for<'a> FnOnce(&'a Driver, &'a str) -> futures_util::future::BoxFuture<'a, ()>,
{
    let _one = ONE_BROWSER.lock().await;
    let chromium = binary("CHROMIUM", "/usr/bin/chromium");
    let chromedriver = binary("CHROMEDRIVER", "/usr/bin/chromedriver");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(app::serve(
        listener,
        app::router(layer),
        std::future::pending(),
    ));
    let driver = Driver::start(&chromium, &chromedriver).await;
    let outcome = std::panic::AssertUnwindSafe(flow(&driver, &base))
        .catch_unwind()
        .await;
    driver.quit().await;
    server.abort();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn run(secure_cookie: bool) {
    let options = app::Options {
        insecure_cookie: !secure_cookie,
        ..app::Options::default()
    };
    let store = MemoryStore::new();
    let layer = app::layer(store.clone(), Key::generate(), &options).unwrap();
    let writer = layer.history_writer().cloned().unwrap();
    in_browser(&layer, move |driver, base| {
        Box::pin(async move {
            let demo = Demo {
                base: base.to_owned(),
                secure_cookie,
                store,
                writer,
            };
            flow(driver, &demo).await;
        })
    })
    .await;
}

/// `http://127.0.0.1` is a secure context: Chromium keeps the demo's
/// default `Secure` cookie there, so the default settings work as they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_logs_in_adds_to_cart_shows_a_verified_timeline_and_logs_out() {
    run(true).await;
}

/// A page served from another site (`http://localhost:Q` against the demo
/// on `http://127.0.0.1:P`) posts a form and a `fetch` to the demo: both
/// are refused (the form lands on the 403 JSON error), the logged-in
/// user's session is untouched, and the demo's own page keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_from_another_site_cannot_post_to_the_demo() {
    let layer = app::layer(
        MemoryStore::new(),
        Key::generate(),
        &app::Options::default(),
    )
    .unwrap();
    in_browser(&layer, |driver, base| {
        Box::pin(cross_site_flow(driver, base))
    })
    .await;
}

async fn cross_site_flow(driver: &Driver, base: &str) {
    // The other site: one page with a form and a script aimed at the demo.
    let page = format!(
        r#"<!doctype html><html><body>
<form id="f" method="POST" action="{base}/api/logout"><input name="x" value="1"></form>
<script>
window.fetchDone = false;
fetch('{base}/api/cart', {{method: 'POST', credentials: 'include', mode: 'no-cors',
  headers: {{'Content-Type': 'text/plain'}}, body: '{{"item":"planted"}}'}})
  .finally(() => {{ window.fetchDone = true; }});
</script></body></html>"#
    );
    let other = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let other_url = format!("http://localhost:{}/", other.local_addr().unwrap().port());
    let other_server = tokio::spawn(async move {
        let app = axum::Router::new().route(
            "/",
            axum::routing::get(move || async move { axum::response::Html(page) }),
        );
        axum::serve(other, app).await
    });

    let outcome = std::panic::AssertUnwindSafe(async {
        driver.goto(&format!("{base}/")).await;
        driver.settled().await;
        driver.click("[data-testid=login-alice]").await;
        driver.settled().await;
        driver
            .wait(
                "alice logged in",
                "return document.querySelector('[data-testid=me-user]').textContent === 'alice';",
            )
            .await;

        driver.goto(&other_url).await;
        driver
            .wait("the other site's fetch", "return window.fetchDone === true;")
            .await;
        driver
            .script("document.getElementById('f').submit();")
            .await;
        let refused = driver
            .wait(
                "the form's answer",
                &format!(
                    "return location.href.startsWith('{base}') && document.body && document.body.innerText;"
                ),
            )
            .await;
        assert!(
            refused.as_str().unwrap().contains("cross-site request refused"),
            "{refused}"
        );

        // Back on the demo: still alice, and no planted item.
        driver.goto(&format!("{base}/")).await;
        driver.settled().await;
        let user = driver
            .script("return document.querySelector('[data-testid=me-user]').textContent;")
            .await;
        assert_eq!(user, "alice", "the forged logout had no effect");
        let planted = driver
            .script("return document.getElementById('timeline').textContent.includes('planted');")
            .await;
        assert_eq!(planted, false);
        // The page's own unsafe requests carry the token and work.
        driver.click("label.item:nth-child(2) span").await;
        driver.click("[data-testid=add-to-cart]").await;
        driver.settled().await;
        driver
            .wait(
                "the page's own add_to_cart",
                "return !!document.querySelector('#timeline li[data-event=add_to_cart]');",
            )
            .await;
    })
    .catch_unwind()
    .await;
    other_server.abort();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// The same with `DEMO_INSECURE_COOKIE=1`, as used off localhost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_works_with_an_insecure_cookie_too() {
    run(false).await;
}

/// The insights page: refused before the user elevates; then, over a shop
/// seeded with synthetic history (`app::seed`, through the real writer),
/// it draws the funnel's bars with the API's counts and conversion
/// percentages and the cohort heat map, under the page's strict CSP (no
/// violation is reported). A screenshot is saved to
/// `target/artifacts/demo-insights.png`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_insights_page_draws_the_funnel_and_the_cohorts_for_admins() {
    let layer = app::layer(
        MemoryStore::new(),
        Key::generate(),
        &app::Options::default(),
    )
    .unwrap();
    app::seed(layer.history_writer().unwrap(), 600)
        .await
        .expect("seed");
    in_browser(&layer, |driver, base| Box::pin(insights_flow(driver, base))).await;
}

async fn insights_flow(driver: &Driver, base: &str) {
    // CSP violations are counted from the first script on.
    let count_violations = "window.cspViolations = 0; \
        document.addEventListener('securitypolicyviolation', () => { window.cspViolations += 1; });";
    driver.goto(&format!("{base}/")).await;
    driver.settled().await;
    driver.click("[data-testid=login-alice]").await;
    driver.settled().await;

    // A user, not an admin: the page says so and draws nothing.
    driver.goto(&format!("{base}/insights")).await;
    driver.script(count_violations).await;
    let state = driver
        .wait(
            "the refusal",
            "return document.querySelector('[data-testid=insights-note]').dataset.state;",
        )
        .await;
    assert_eq!(state, "refused");
    assert_eq!(
        driver
            .script("return document.querySelectorAll('[data-testid=funnel-chart] rect').length;")
            .await,
        0
    );

    driver.goto(&format!("{base}/")).await;
    driver.settled().await;
    driver.click("[data-testid=elevate]").await;
    driver.settled().await;
    driver.goto(&format!("{base}/insights")).await;
    driver.script(count_violations).await;
    let state = driver
        .wait(
            "the charts",
            "const s = document.querySelector('[data-testid=insights-note]').dataset.state; \
             return s === 'ready' && document.querySelectorAll('[data-testid=heat-cell]').length > 0 && s;",
        )
        .await;
    assert_eq!(state, "ready");

    // The bars carry the API's counts, and the page's percentages follow.
    let api = driver
        .script(
            "const r = new XMLHttpRequest(); \
             r.open('GET', '/api/insights/funnel?steps=view_product,add_to_cart,checkout&within=3600', false); \
             r.send(); return JSON.parse(r.responseText);",
        )
        .await;
    let counts: Vec<u64> = api["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["sessions"].as_u64().unwrap())
        .collect();
    assert!(
        counts[0] > counts[1] && counts[1] > counts[2] && counts[2] > 0,
        "{counts:?}"
    );
    let bars = driver
        .script(
            "return [0, 1, 2].map(i => Number(document.querySelector(`[data-testid=funnel-bar-${i}]`).dataset.sessions));",
        )
        .await;
    assert_eq!(bars, json!(counts));
    let pct = driver
        .script("return document.querySelector('[data-testid=funnel-pct-1]').textContent;")
        .await;
    let want = (100.0 * counts[1] as f64 / counts[0] as f64).round() as u64;
    assert!(
        pct.as_str()
            .unwrap()
            .starts_with(&format!("{want}% of previous")),
        "{pct}"
    );
    // The heat map: one row per weekly cohort, a triangle of cells.
    let cells = driver
        .script("return document.querySelectorAll('[data-testid=heat-cell]').length;")
        .await;
    assert!(cells.as_u64().unwrap() >= 8, "{cells}");
    std::fs::create_dir_all(artifacts()).unwrap();
    driver
        .screenshot(&artifacts().join("demo-insights.png"))
        .await;
    // By day: more cohorts.
    driver.click("[data-testid=period-day]").await;
    driver
        .wait(
            "the daily heat map",
            &format!(
                "return document.querySelectorAll('[data-testid=heat-cell]').length > {cells};"
            ),
        )
        .await;
    assert_eq!(driver.script("return window.cspViolations;").await, 0);
}
