//! The Redis store under faults, on real `redis-server` processes: a
//! `kill -9` and restart, a `CLIENT PAUSE` longer than the writer's attempt
//! timeout, a wipe (`FLUSHALL`), an outage seen through the layer, and two
//! app servers sharing one Redis. Every wait is a poll with a deadline.
#![cfg(feature = "redis")]

mod common;

use std::time::Duration;

use session_trail::history::{EntryKind, HistoryWriter};
use session_trail::store::RedisStore;
use session_trail::{Key, KeyRing, SessionId};

use common::faults::{assert_every_tick_once, check_chain, flush, gaps, tick, writer_config};
use common::redis::RedisServer;

async fn connect(url: &str, response_timeout: Duration) -> RedisStore {
    RedisStore::builder(url)
        .response_timeout(response_timeout)
        .connect()
        .await
        .expect("connect to the test redis-server")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_restart_during_history_writes_loses_and_duplicates_nothing() {
    let mut server = RedisServer::start_with_aof();
    let store = connect(&server.url(), Duration::from_millis(500)).await;
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
            "AOF with fsync always loses no acknowledged entry"
        );
        assert_eq!(c.entries.len() as u64, rounds);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_pause_longer_than_the_attempt_timeout_duplicates_and_loses_nothing() {
    let server = RedisServer::start();
    // The store would wait longer than the writer does: the writer's attempt
    // timeout fires while the scripts wait in Redis, and its retries resend
    // the same bytes behind them.
    let store = connect(&server.url(), Duration::from_secs(5)).await;
    let ring = KeyRing::new(Key::generate());
    let config = writer_config().attempt_timeout(Duration::from_millis(150));
    let writer = HistoryWriter::start(store.clone(), ring.clone(), config).unwrap();
    let sids: Vec<SessionId> = (0..30).map(|_| SessionId::generate()).collect();
    let rounds = 100;
    for round in 0..rounds {
        for sid in &sids {
            assert!(writer.enqueue(*sid, vec![tick(round)]));
        }
        if round == 30 {
            assert_eq!(server.cli(&["CLIENT", "PAUSE", "1200", "ALL"]).trim(), "OK");
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    flush(&writer).await;
    let stats = writer.stats();
    eprintln!(
        "writer during the pause: {stats:?}; {}",
        server
            .cli(&["INFO", "commandstats"])
            .lines()
            .filter(|l| l.contains("evalsha"))
            .collect::<String>()
    );
    assert!(
        stats.retried >= 2,
        "no attempt timed out during the pause: {stats:?}"
    );
    for sid in &sids {
        let c = check_chain(&store, &ring, sid).await;
        assert_every_tick_once(sid, &c, 0..rounds);
        assert_eq!(c.entries.len() as u64, rounds);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_redis_is_detected_and_recorded_as_a_store_lost_gap() {
    let server = RedisServer::start();
    let store = connect(&server.url(), Duration::from_millis(500)).await;
    let ring = KeyRing::new(Key::generate());
    let writer = HistoryWriter::start(store.clone(), ring.clone(), writer_config()).unwrap();
    let sids: Vec<SessionId> = (0..20).map(|_| SessionId::generate()).collect();
    for n in 0..10 {
        for sid in &sids {
            writer.enqueue(*sid, vec![tick(n)]);
        }
    }
    flush(&writer).await;
    let mut wiped_at = 0;
    for n in 10..60 {
        for sid in &sids {
            writer.enqueue(*sid, vec![tick(n)]);
        }
        if n == 30 {
            assert_eq!(server.cli(&["FLUSHALL"]).trim(), "OK");
            wiped_at = n;
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    flush(&writer).await;
    for sid in &sids {
        let c = check_chain(&store, &ring, sid).await;
        let g = gaps(&c);
        assert_eq!(g.len(), 1, "session {sid}: one gap expected, got {g:?}");
        assert_eq!(g[0]["reason"], "store_lost");
        assert!(g[0]["lost_through_seq"].as_u64().unwrap() >= 10, "{}", g[0]);
        // The gap opens the new chain; everything enqueued after the wipe
        // is there, once.
        assert_eq!(c.entries[0].kind, EntryKind::Gap);
        assert_eq!(c.entries[0].seq, 1);
        assert_every_tick_once(sid, &c, wiped_at + 1..60);
        assert!(c.ticks.values().all(|k| *k == 1));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_store_fails_closed_and_the_session_survives_the_outage() {
    let server = RedisServer::start_with_aof();
    let store = connect(&server.url(), Duration::from_millis(300)).await;
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
    let server = RedisServer::start();
    // Their own connections.
    let (store_a, store_b) = (
        connect(&server.url(), Duration::from_millis(500)).await,
        connect(&server.url(), Duration::from_millis(500)).await,
    );
    common::faults::two_app_servers_share_sessions_and_history_chains(store_a, store_b).await;
}
