//! The PostgreSQL store under faults, on PostgreSQL clusters each test
//! starts for itself: a `kill -9` of the postmaster during a stream of
//! history appends, then a restart; an outage seen through the layer; and
//! two app servers (two layers, two pools, two writers) on one database.
//! Every wait is a poll with a deadline.
#![cfg(feature = "postgres")]

mod common;

use std::time::{Duration, Instant};

use axum::body::Body;
use http::{Request, StatusCode};
use session_trail::history::HistoryWriter;
use session_trail::store::PostgresStore;
use session_trail::{Key, KeyRing, SessionId, SessionLayer};
use tower::ServiceExt;

use common::app::{Client, body_json, session_cookie};
use common::faults::{
    assert_every_tick_once, check_chain, flush, gaps, outage_router, tick, writer_config,
};
use common::postgres::PgServer;

async fn connect(server: &PgServer) -> PostgresStore {
    let store = PostgresStore::builder(server.url("postgres"))
        .statement_timeout(Duration::from_millis(500))
        .connect_timeout(Duration::from_millis(500))
        .pool_size(4)
        .connect()
        .await
        .expect("connect to the test PostgreSQL");
    store.migrate().await.expect("migrate");
    store
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_restart_during_history_writes_loses_and_duplicates_nothing() {
    let mut server = PgServer::start();
    let store = connect(&server).await;
    let ring = KeyRing::new(Key::generate());
    let writer = HistoryWriter::start(store.clone(), ring.clone(), writer_config()).unwrap();
    let sids: Vec<SessionId> = (0..40).map(|_| SessionId::generate()).collect();
    let rounds = 150;
    for round in 0..rounds {
        for sid in &sids {
            assert!(
                writer.enqueue(*sid, vec![tick(round)]),
                "the queue never fills here"
            );
        }
        if round == 50 {
            tokio::task::block_in_place(|| server.kill9());
        }
        if round == 90 {
            tokio::task::block_in_place(|| server.restart());
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    flush(&writer).await;
    let stats = writer.stats();
    assert!(stats.retried > 0, "the outage never hit a write: {stats:?}");
    assert_eq!(stats.dropped, 0);
    for sid in &sids {
        let c = check_chain(&store, &ring, sid).await;
        assert_every_tick_once(sid, &c, 0..rounds);
        assert!(
            gaps(&c).is_empty(),
            "a commit is durable before it is acknowledged: no gap"
        );
        assert_eq!(c.entries.len() as u64, rounds);
    }
    // Immediate shutdown (no checkpoint) in the middle of a second stream.
    for round in rounds..rounds + 60 {
        for sid in &sids {
            writer.enqueue(*sid, vec![tick(round)]);
        }
        if round == rounds + 20 {
            tokio::task::block_in_place(|| {
                server.stop_immediate();
                server.restart();
            });
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    flush(&writer).await;
    for sid in &sids {
        let c = check_chain(&store, &ring, sid).await;
        assert_every_tick_once(sid, &c, 0..rounds + 60);
        assert!(gaps(&c).is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_store_fails_closed_and_the_session_survives_the_outage() {
    let mut server = PgServer::start();
    let store = connect(&server).await;
    let layer = SessionLayer::builder(store, Key::generate())
        .build()
        .unwrap();
    let mut client = Client::new(outage_router(layer));
    assert_eq!(
        client.send("POST", "/login/alice").await.status(),
        StatusCode::OK
    );
    assert_eq!(client.json("GET", "/me").await["user"], "alice");
    let cookie = client.cookie.clone();
    assert!(cookie.is_some());

    tokio::task::block_in_place(|| server.kill9());

    assert_eq!(client.send("GET", "/ping").await.status(), StatusCode::OK);
    let res = client.send("GET", "/me").await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers().get("retry-after").unwrap(), "1");
    assert!(
        session_cookie(&res, "session").is_none(),
        "the cookie is not touched"
    );
    assert_eq!(client.cookie, cookie);
    let req = Request::builder()
        .method("POST")
        .uri("/shop.Cart/Add")
        .header("content-type", "application/grpc")
        .header("cookie", format!("session={}", cookie.as_deref().unwrap()))
        .body(Body::empty())
        .unwrap();
    let res = client.app.clone().oneshot(req).await.unwrap();
    assert_eq!(res.headers().get("grpc-status").unwrap(), "14");

    tokio::task::block_in_place(|| server.restart());

    // Back up: the same cookie is still logged in.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let res = client.send("GET", "/me").await;
        if res.status() == StatusCode::OK {
            assert_eq!(body_json(res).await["user"], "alice");
            break;
        }
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(Instant::now() < deadline, "the store did not come back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(client.cookie, cookie);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_app_servers_share_sessions_and_history_chains() {
    let server = PgServer::start();
    // Their own pools; both run migrate at start-up.
    let (store_a, store_b) = tokio::join!(connect(&server), connect(&server));
    common::faults::two_app_servers_share_sessions_and_history_chains(store_a, store_b).await;
}
