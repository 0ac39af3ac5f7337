//! The PostgreSQL store under faults, on PostgreSQL clusters each test
//! starts for itself: a `kill -9` of the postmaster during a stream of
//! history appends, then a restart; an outage seen through the layer; and
//! two app servers (two layers, two pools, two writers) on one database.
//! Every wait is a poll with a deadline.
#![cfg(feature = "postgres")]

mod common;

use std::time::Duration;

use session_trail::history::HistoryWriter;
use session_trail::store::PostgresStore;
use session_trail::{Key, KeyRing, SessionId};

use common::faults::{assert_every_tick_once, check_chain, flush, gaps, tick, writer_config};
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
    let server = PgServer::start();
    let store = connect(&server).await;
    let server = std::cell::RefCell::new(server);
    common::faults::an_outage_fails_closed_and_the_session_survives(
        store,
        || server.borrow_mut().kill9(),
        || server.borrow_mut().restart(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_app_servers_share_sessions_and_history_chains() {
    let server = PgServer::start();
    // Their own pools; both run migrate at start-up.
    let (store_a, store_b) = tokio::join!(connect(&server), connect(&server));
    common::faults::two_app_servers_share_sessions_and_history_chains(store_a, store_b).await;
}
