//! The demo on PostgreSQL (`DEMO-CONTRACT.md`: `DATABASE_URL`), wired the
//! way the demo's `main` wires it (`app::open` from the settings), against
//! a PostgreSQL cluster and a `redis-server` this test binary starts: each
//! test uses a database of its own.
#![cfg(all(feature = "postgres", feature = "redis", feature = "axum"))]

#[allow(dead_code)]
#[path = "../examples/demo/app.rs"]
mod app;
mod common;

use std::collections::HashMap;

use http::StatusCode;
use serde_json::json;
use session_trail::SessionId;

use common::app::Client;
use common::postgres::shared_server as pg;

const KEY: &str = "8f1d3c5b7a9e0f2d4c6b8a0e2f4d6c8b0a2e4f6d8c0b2a4e6f8d0c2b4a6e8f0d";

fn settings(vars: &[(&str, String)]) -> Result<app::Settings, String> {
    let mut env: HashMap<&str, String> = vars.iter().cloned().collect();
    env.insert("SESSION_KEY", KEY.to_owned());
    env.insert("DEMO_INSECURE_COOKIE", "1".to_owned());
    app::Settings::from_env(|name| env.get(name).cloned())
}

/// A database of its own on the shared cluster.
fn database(tag: &str) -> String {
    let name = common::postgres::test_schema(tag);
    pg().create_database(&name);
    pg().url(&name)
}

async fn client(settings: &app::Settings) -> (Client, app::Demo) {
    let layer = app::open(settings).await.expect("the demo starts");
    (Client::new(app::router(&layer)), layer)
}

async fn login_and_shop(c: &mut Client) -> SessionId {
    let res = c
        .send_body(
            "POST",
            "/api/login",
            Some(json!({"user": "alice", "password": "alice-pw"})),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = c
        .send_body("POST", "/api/cart", Some(json!({"item": "book"})))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let me = c.json("GET", "/api/me").await;
    me["session"].as_str().unwrap().parse().unwrap()
}

async fn flush(layer: &session_trail::SessionLayer) {
    layer.history_writer().unwrap().flush().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_url_keeps_sessions_and_history_in_postgresql_across_a_restart() {
    let url = database("demo");
    let db = url.rsplit('/').next().unwrap().to_owned();
    let s = settings(&[("DATABASE_URL", url.clone())]).unwrap();
    let (mut c, layer) = client(&s).await;
    let sid = login_and_shop(&mut c).await;
    flush(&layer).await;

    // One row per entry, naming the public session id in its own column.
    let rows = pg().psql(
        &db,
        &format!("SELECT count(*) FROM session_trail_history WHERE session = '{sid}'"),
    );
    let before: u64 = rows.trim().parse().unwrap();
    assert!(before >= 4, "{before} rows");
    let events = pg().psql(
        &db,
        &format!(
            "SELECT name FROM session_trail_history WHERE session = '{sid}' AND kind = 'event' \
             ORDER BY seq"
        ),
    );
    assert!(events.lines().any(|l| l == "add_to_cart"), "{events}");
    // Only the store's tables, all named session_trail_*.
    let tables = pg().psql(
        &db,
        "SELECT string_agg(tablename, ',') FROM pg_tables WHERE schemaname = 'public'",
    );
    assert!(
        tables.split(',').all(|t| t.starts_with("session_trail_")),
        "{tables}"
    );

    // A second instance on the same database starts fine (the tables are
    // there), and it is a restart: the same cookie is still logged in and
    // the history continues the same verified chain.
    drop(layer);
    let (restarted, layer) = client(&s).await;
    let mut c = Client {
        app: restarted.app,
        ..c
    };
    let me = c.json("GET", "/api/me").await;
    assert_eq!(me["user"], "alice");
    assert_eq!(me["session"], sid.to_string());
    flush(&layer).await;
    let history = c.json("GET", "/api/history").await;
    assert_eq!(history["chain"]["ok"], true, "{history}");
    let after: u64 = pg()
        .psql(
            &db,
            &format!("SELECT count(*) FROM session_trail_history WHERE session = '{sid}'"),
        )
        .trim()
        .parse()
        .unwrap();
    assert!(after > before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_url_too_sessions_live_in_redis_and_history_in_postgresql() {
    let redis = common::redis::RedisServer::start();
    let url = database("split");
    let db = url.rsplit('/').next().unwrap().to_owned();
    let s = settings(&[("DATABASE_URL", url), ("REDIS_URL", redis.url())]).unwrap();
    let (mut c, layer) = client(&s).await;
    let sid = login_and_shop(&mut c).await;
    flush(&layer).await;
    let sessions = pg().psql(&db, "SELECT count(*) FROM session_trail_sessions");
    assert_eq!(sessions.trim(), "0", "no session rows in PostgreSQL");
    let rows = pg().psql(
        &db,
        &format!("SELECT count(*) FROM session_trail_history WHERE session = '{sid}'"),
    );
    assert!(rows.trim().parse::<u64>().unwrap() >= 4, "{rows}");
    let keys = redis.cli(&["KEYS", "*"]);
    assert!(keys.contains(&sid.to_string()), "{keys}");
    assert!(!keys.contains(":h"), "no history list in Redis: {keys}");
    // The insights read the history where it lives: in PostgreSQL.
    assert_eq!(
        c.send_body("POST", "/api/elevate", None).await.status(),
        StatusCode::OK
    );
    c.send_body("POST", "/api/view", Some(json!({"item": "book"})))
        .await;
    c.send_body("POST", "/api/cart", Some(json!({"item": "book"})))
        .await;
    c.send_body("POST", "/api/checkout", None).await;
    flush(&layer).await;
    let funnel = c.json("GET", "/api/insights/funnel").await;
    assert_eq!(
        common::app::funnel_sessions(&funnel),
        vec![1, 1, 1],
        "{funnel}"
    );
    let cohorts = c.json("GET", "/api/insights/cohorts?period=day").await;
    assert_eq!(cohorts["cohorts"][0]["users"], 1, "{cohorts}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_urls_the_demo_cannot_use_are_refused_clearly() {
    for (url, says) in [
        ("mysql://localhost/x", "postgres://"),
        ("postgres://postgres@127.0.0.1:1/x", "DATABASE_URL"),
    ] {
        let s = settings(&[("DATABASE_URL", url.to_owned())]).unwrap();
        let Err(err) = app::open(&s).await else {
            panic!("{url}: refused")
        };
        assert!(err.contains(says), "{url}: {err}");
    }
}
