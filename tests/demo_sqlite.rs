//! The demo on SQLite (`DEMO-CONTRACT.md`: `DATABASE_URL=sqlite://PATH`):
//! the demo's own binary is started, stopped with SIGTERM and started
//! again on the same file, and everyone is still logged in with the same
//! verified history; plus the demo wired in-process with `REDIS_URL` too,
//! and the URLs it refuses.
#![cfg(all(feature = "sqlite", feature = "axum"))]

#[allow(dead_code)]
#[path = "../examples/demo/app.rs"]
mod app;
mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

const KEY: &str = "8f1d3c5b7a9e0f2d4c6b8a0e2f4d6c8b0a2e4f6d8c0b2a4e6f8d0c2b4a6e8f0d";

/// The demo example's binary, built (or found up to date) by cargo for
/// this test, with the features the tests are built with, beside this
/// test binary.
fn demo_binary() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().unwrap();
            // <target>/<profile>/deps/<this test>
            let profile_dir = exe.parent().and_then(Path::parent).unwrap();
            let target_dir = profile_dir.parent().unwrap();
            let profile = profile_dir.file_name().unwrap().to_str().unwrap();
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut build = Command::new(cargo);
            build
                .args(["build", "--quiet", "--example", "demo", "--all-features"])
                .arg("--manifest-path")
                .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
                .arg("--target-dir")
                .arg(target_dir);
            if profile == "release" {
                build.arg("--release");
            }
            let status = build.status().expect("run cargo to build the demo");
            assert!(status.success(), "cargo build --example demo failed");
            let bin = profile_dir.join("examples").join("demo");
            assert!(bin.exists(), "{} is missing", bin.display());
            bin
        })
        .clone()
}

/// The demo process on `db`, listening on a free port.
struct Demo {
    child: Child,
    base: String,
}

impl Demo {
    fn start(db: &Path) -> Demo {
        Self::start_with(db, &[])
    }

    fn start_with(db: &Path, vars: &[(&str, &str)]) -> Demo {
        let port = common::postgres::free_port();
        let child = Command::new(demo_binary())
            .env_clear()
            .envs(vars.iter().copied())
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", format!("sqlite://{}", db.display()))
            .env("DEMO_ADDR", format!("127.0.0.1:{port}"))
            .env("SESSION_KEY", KEY)
            .env("DEMO_INSECURE_COOKIE", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the demo");
        Demo {
            child,
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    async fn ready(&mut self, http: &reqwest::Client) {
        let url = format!("{}/api/ping", self.base);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(res) = http.get(&url).send().await
                && res.status().is_success()
            {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("the demo exited: {status}");
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the demo did not answer within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, then waits for a clean exit (the history queue written).
    fn stop(mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "the demo exited with {status}");
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the demo did not exit within 60 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn get(http: &reqwest::Client, demo: &Demo, path: &str) -> Value {
    let res = http
        .get(format!("{}{path}", demo.base))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "GET {path}: {}", res.status());
    res.json().await.unwrap()
}

async fn post(http: &reqwest::Client, demo: &Demo, path: &str, body: Value) -> Value {
    let res = http
        .post(format!("{}{path}", demo.base))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "POST {path}: {}", res.status());
    res.json().await.unwrap_or(Value::Null)
}

/// Alice logs in and adds a book to her cart.
async fn alice_adds_a_book(http: &reqwest::Client, demo: &Demo) {
    post(
        http,
        demo,
        "/api/login",
        json!({"user": "alice", "password": "alice-pw"}),
    )
    .await;
    post(http, demo, "/api/cart", json!({"item": "book"})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_process_stopped_and_started_keeps_everyone_logged_in_with_verified_history() {
    let db = common::sqlite::temp_db("demo");
    let http = reqwest::Client::builder()
        .cookie_store(true)
        .build()
        .unwrap();
    let bob = reqwest::Client::builder()
        .cookie_store(true)
        .build()
        .unwrap();

    let mut demo = Demo::start(&db);
    demo.ready(&http).await;
    alice_adds_a_book(&http, &demo).await;
    assert_eq!(get(&http, &demo, "/api/visits").await["visits"], 1);
    post(
        &bob,
        &demo,
        "/api/login",
        json!({"user": "bob", "password": "bob-pw"}),
    )
    .await;
    let alice = get(&http, &demo, "/api/me").await;
    let bobs = get(&bob, &demo, "/api/me").await;
    demo.stop();

    // The file holds both sessions and their history, in the store's own
    // tables.
    let rows = common::sqlite::count(&db, "SELECT count(*) FROM session_trail_history");
    assert!(rows >= 4, "{rows} history rows");
    let events = common::sqlite::count(
        &db,
        &format!(
            "SELECT count(*) FROM session_trail_history WHERE session = '{}' AND name = \
             'add_to_cart'",
            alice["session"].as_str().unwrap()
        ),
    );
    assert_eq!(events, 1);

    let mut demo = Demo::start(&db);
    demo.ready(&http).await;
    for (client, before) in [(&http, &alice), (&bob, &bobs)] {
        let me = get(client, &demo, "/api/me").await;
        assert_eq!(me["user"], before["user"], "{me}");
        assert_eq!(me["session"], before["session"], "{me}");
    }
    // The session's data survived too.
    assert_eq!(get(&http, &demo, "/api/visits").await["visits"], 2);
    // The history continues the same chain, and it verifies.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let history = get(&http, &demo, "/api/history").await;
        assert_eq!(history["chain"]["ok"], true, "{history}");
        let entries = history["entries"].as_array().map_or(0, Vec::len);
        if entries as i64 > 3 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{history}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    demo.stop();
}

fn settings(vars: &[(&str, String)]) -> Result<app::Settings, String> {
    let mut env: HashMap<&str, String> = vars.iter().cloned().collect();
    env.insert("SESSION_KEY", KEY.to_owned());
    env.insert("DEMO_INSECURE_COOKIE", "1".to_owned());
    app::Settings::from_env(|name| env.get(name).cloned())
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_url_too_sessions_live_in_redis_and_history_in_sqlite() {
    let redis = common::redis::RedisServer::start();
    let db = common::sqlite::temp_db("split");
    let s = settings(&[
        ("DATABASE_URL", format!("sqlite://{}", db.display())),
        ("REDIS_URL", redis.url()),
    ])
    .unwrap();
    let layer = app::open(&s).await.expect("the demo starts");
    let mut c = common::app::Client::new(app::router(&layer));
    let res = c
        .send_body(
            "POST",
            "/api/login",
            Some(json!({"user": "alice", "password": "alice-pw"})),
        )
        .await;
    assert_eq!(res.status(), http::StatusCode::OK);
    let sid = c.json("GET", "/api/me").await["session"]
        .as_str()
        .unwrap()
        .to_owned();
    layer.history_writer().unwrap().flush().await.unwrap();
    assert_eq!(
        common::sqlite::count(&db, "SELECT count(*) FROM session_trail_sessions"),
        0,
        "no session rows in SQLite"
    );
    assert!(
        common::sqlite::count(
            &db,
            &format!("SELECT count(*) FROM session_trail_history WHERE session = '{sid}'")
        ) >= 2
    );
    let keys = redis.cli(&["KEYS", "*"]);
    assert!(keys.contains(&sid), "{keys}");
    assert!(!keys.contains(":h"), "no history list in Redis: {keys}");
    // The insights read the history where it lives: in SQLite.
    assert_eq!(
        c.send_body("POST", "/api/elevate", None).await.status(),
        http::StatusCode::OK
    );
    for (path, body) in [
        ("/api/view", Some(json!({"item": "book"}))),
        ("/api/cart", Some(json!({"item": "book"}))),
        ("/api/checkout", None),
    ] {
        assert_eq!(
            c.send_body("POST", path, body).await.status(),
            http::StatusCode::OK
        );
    }
    layer.history_writer().unwrap().flush().await.unwrap();
    let funnel = c.json("GET", "/api/insights/funnel").await;
    assert_eq!(
        common::app::funnel_sessions(&funnel),
        vec![1, 1, 1],
        "{funnel}"
    );
}

#[tokio::test]
async fn sqlite_urls_the_demo_cannot_use_are_refused_clearly() {
    let dir = common::sqlite::temp_db("nodir");
    for (url, says) in [
        ("sqlite://".to_owned(), "needs a file path"),
        (
            format!("sqlite://{}/missing/demo.db", dir.display()),
            "cannot use SQLite",
        ),
        (
            format!("sqlite://{}?mode=rwc", dir.display()),
            "without ?options",
        ),
        (format!("sqlite://{}%zz", dir.display()), "%-escape"),
    ] {
        let s = settings(&[("DATABASE_URL", url.clone())]).unwrap();
        let Err(err) = app::open(&s).await else {
            panic!("{url}: refused")
        };
        assert!(err.contains(says), "{url}: {err}");
    }
}

/// `DEMO_CHECKPOINT_SECONDS`: once a checkpoint attests a session's
/// history, entries cut off its tail in the file make `chain.ok` false,
/// with a break found against the checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_cut_off_after_a_checkpoint_break_the_chain() {
    let db = common::sqlite::temp_db("demo-cp");
    let http = reqwest::Client::builder()
        .cookie_store(true)
        .build()
        .unwrap();
    let mut demo = Demo::start_with(&db, &[("DEMO_CHECKPOINT_SECONDS", "1")]);
    demo.ready(&http).await;
    alice_adds_a_book(&http, &demo).await;
    get(&http, &demo, "/api/visits").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let (sid, attested) = loop {
        let page = get(&http, &demo, "/api/history").await;
        assert_eq!(page["chain"]["ok"], true, "{page}");
        if let Some(n) = page["chain"]["checkpointed"].as_u64()
            && n >= 3
        {
            break (page["session"].as_str().unwrap().to_owned(), n);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint within 30 s: {page}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let keep = attested - 2;
    common::sqlite::exec(
        &db,
        &format!("DELETE FROM session_trail_history WHERE session = '{sid}' AND seq > {keep}"),
    );
    let page = get(&http, &demo, "/api/history").await;
    assert_eq!(page["chain"]["ok"], false, "{page}");
    let kinds: Vec<&str> = page["chain"]["breaks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds
            .iter()
            .any(|k| ["truncated_tail", "replaced"].contains(k)),
        "{page}"
    );
    demo.stop();
}
