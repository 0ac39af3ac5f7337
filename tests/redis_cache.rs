//! The Redis store's local cache on a real `redis-server`: the store
//! conformance suite with the cache on, and its coherence with writes made
//! by other clients (another app server, an operator), flushes and a lost
//! connection.
#![cfg(feature = "redis")]

mod common;

use std::time::{Duration, Instant};

use common::conformance::record;
use common::redis::RedisServer;
use serde_json::json;
use session_trail::SessionId;
use session_trail::store::{RedisStore, SessionStore, Update, UpdateOutcome};

// One server for the whole file; each test gets its own key prefix.
use common::redis::shared_server as server;

fn prefix() -> String {
    common::redis::test_prefix("c")
}

/// Polls `check` until it holds, failing with `what` after 10 s.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A store with the local cache on, once its tracking connection is up.
async fn cached(url: &str, prefix: &str, max_age: Duration) -> RedisStore {
    cached_keeping(url, prefix, max_age, 1000).await
}

async fn cached_keeping(url: &str, prefix: &str, max_age: Duration, keep: usize) -> RedisStore {
    let store = RedisStore::builder(url)
        .key_prefix(prefix)
        .history_retention(keep, Duration::from_secs(3600))
        .local_cache(1024, max_age)
        .connect()
        .await
        .expect("connect to the test redis-server");
    let probe = SessionId::generate();
    eventually("the tracking connection comes up", || {
        let store = store.clone();
        async move {
            // A load starts the tracking connection.
            store.load(&probe).await.unwrap();
            store.local_cache_stats().unwrap().tracking
        }
    })
    .await;
    store
}

async fn plain(url: &str, prefix: &str) -> RedisStore {
    RedisStore::builder(url)
        .key_prefix(prefix)
        .connect()
        .await
        .expect("connect to the test redis-server")
}

store_conformance!(|keep: usize| async move {
    cached_keeping(&server().url(), &prefix(), Duration::from_secs(5), keep).await
});

fn set(r: &session_trail::store::Record, key: &str, value: serde_json::Value) -> Update {
    Update {
        token_hash: r.token_hash,
        set: vec![(key.to_owned(), value)],
        ..Update::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_after_own_writes_come_from_the_cache_and_see_them() {
    let store = cached(&server().url(), &prefix(), Duration::from_secs(5)).await;
    let r = record(None);
    store.create(&r).await.unwrap();
    let before = store.local_cache_stats().unwrap();
    for n in 1..=5 {
        let update = set(&r, "n", json!(n));
        assert_eq!(
            store.update(&r.id, &update).await.unwrap(),
            UpdateOutcome::Applied
        );
        let loaded = store.load(&r.id).await.unwrap().unwrap();
        assert_eq!(loaded.data["n"], json!(n));
    }
    let after = store.local_cache_stats().unwrap();
    assert_eq!(after.hits - before.hits, 5, "every load was a hit");
    assert_eq!(after.misses, before.misses);
    // What Redis holds is what the cache served.
    let fresh = plain(&server().url(), store.key_prefix()).await;
    assert_eq!(
        fresh.load(&r.id).await.unwrap(),
        store.load(&r.id).await.unwrap()
    );

    // One update that changes every kind of field, applied to the cached
    // copy: it must equal what the script made of the record in Redis.
    let every = Update {
        token_hash: r.token_hash,
        set: vec![("obj".into(), json!({"a": [1, 2.5, "x"]}))],
        remove: vec!["a".into()],
        user: Some(Some("carol".into())),
        privilege: Some(Some("admin".into())),
        rotate: Some(session_trail::store::Rotation {
            new_token_hash: session_trail::store::TokenHash::from_bytes([9; 32]),
            at: 1_234,
        }),
        touch: Some((r.last_seen + 5, r.idle_deadline + 5)),
        device: Some(Some("Chrome on Android".into())),
        network: Some(None),
    };
    assert_eq!(
        store.update(&r.id, &every).await.unwrap(),
        UpdateOutcome::Applied
    );
    let hits = store.local_cache_stats().unwrap().hits;
    let served = store.load(&r.id).await.unwrap();
    assert_eq!(store.local_cache_stats().unwrap().hits, hits + 1);
    assert_eq!(served, fresh.load(&r.id).await.unwrap());
    assert_eq!(served.unwrap().user.as_deref(), Some("carol"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_servers_write_and_delete_reach_the_cache() {
    let prefix = prefix();
    let a = cached(&server().url(), &prefix, Duration::from_secs(60)).await;
    let b = plain(&server().url(), &prefix).await;
    let r = record(Some("alice"));
    a.create(&r).await.unwrap();
    assert!(a.load(&r.id).await.unwrap().is_some());
    // A's own write keeps its copy current and the record tracked.
    a.update(&r.id, &set(&r, "mine", json!(1))).await.unwrap();
    let hits = a.local_cache_stats().unwrap().hits;
    assert_eq!(a.load(&r.id).await.unwrap().unwrap().data["mine"], json!(1));
    assert_eq!(a.local_cache_stats().unwrap().hits, hits + 1);

    // Server B writes: A's copy is invalidated, well before max_age.
    b.update(&r.id, &set(&r, "cart", json!(3))).await.unwrap();
    eventually("A sees B's write", || async {
        a.load(&r.id).await.unwrap().unwrap().data.get("cart") == Some(&json!(3))
    })
    .await;
    assert!(a.local_cache_stats().unwrap().invalidations >= 1);

    // A cached copy is again in place; B revokes the session.
    assert!(a.load(&r.id).await.unwrap().is_some());
    assert!(b.delete(&r.id).await.unwrap());
    eventually("A sees the revocation", || async {
        a.load(&r.id).await.unwrap().is_none()
    })
    .await;
    // And A cannot write it back.
    assert_eq!(
        a.update(&r.id, &set(&r, "x", json!(1))).await.unwrap(),
        UpdateOutcome::Missing
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_elsewhere_replaces_the_cached_token() {
    let prefix = prefix();
    let a = cached(&server().url(), &prefix, Duration::from_secs(60)).await;
    let b = plain(&server().url(), &prefix).await;
    let r = record(None);
    a.create(&r).await.unwrap();
    a.load(&r.id).await.unwrap();
    let new_hash = session_trail::store::TokenHash::from_bytes([2; 32]);
    let rotate = Update {
        token_hash: r.token_hash,
        user: Some(Some("bob".into())),
        rotate: Some(session_trail::store::Rotation {
            new_token_hash: new_hash,
            at: 1,
        }),
        ..Update::default()
    };
    assert_eq!(
        b.update(&r.id, &rotate).await.unwrap(),
        UpdateOutcome::Applied
    );
    eventually("A sees the new token", || async {
        a.load(&r.id).await.unwrap().unwrap().token_hash == new_hash
    })
    .await;
    let loaded = a.load(&r.id).await.unwrap().unwrap();
    assert_eq!(loaded.user.as_deref(), Some("bob"));
    // A's own write under the old token is refused.
    assert_eq!(
        a.update(&r.id, &set(&r, "x", json!(1))).await.unwrap(),
        UpdateOutcome::Missing
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_del_and_flushall_reach_the_cache() {
    let server = RedisServer::start();
    let prefix = prefix();
    let a = cached(&server.url(), &prefix, Duration::from_secs(60)).await;
    let (r1, r2) = (record(None), record(None));
    for r in [&r1, &r2] {
        a.create(r).await.unwrap();
        assert!(a.load(&r.id).await.unwrap().is_some());
    }
    server.cli(&["DEL", &a.record_key(&r1.id)]);
    eventually("A sees the DEL", || async {
        a.load(&r1.id).await.unwrap().is_none()
    })
    .await;
    assert!(a.load(&r2.id).await.unwrap().is_some());
    server.cli(&["FLUSHALL"]);
    eventually("A sees the FLUSHALL", || async {
        a.load(&r2.id).await.unwrap().is_none()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_tracking_connection_clears_the_cache_until_tracking_is_back() {
    let mut server = RedisServer::start_with_aof();
    let prefix = prefix();
    let a = cached(&server.url(), &prefix, Duration::from_secs(60)).await;
    let r = record(None);
    a.create(&r).await.unwrap();
    a.load(&r.id).await.unwrap();
    assert_eq!(a.local_cache_stats().unwrap().entries, 1);

    tokio::task::block_in_place(|| server.kill9());
    // The cache stops answering first, then empties: wait for both.
    eventually("the drop is noticed and the cache emptied", || async {
        let stats = a.local_cache_stats().unwrap();
        !stats.tracking && stats.entries == 0
    })
    .await;
    assert_eq!(a.local_cache_stats().unwrap().entries, 0);
    // Nothing is served from memory while Redis is away.
    assert!(a.load(&r.id).await.is_err());

    // A change made while this store could not hear about it.
    tokio::task::block_in_place(|| server.restart());
    server.cli(&["HSET", &a.record_key(&r.id), "d:late", "true"]);
    eventually("tracking is back and the change is seen", || async {
        matches!(a.load(&r.id).await, Ok(Some(rec)) if rec.data.get("late") == Some(&json!(true)))
            && a.local_cache_stats().unwrap().tracking
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_are_served_at_most_max_age() {
    let a = cached(&server().url(), &prefix(), Duration::from_millis(100)).await;
    let r = record(None);
    a.create(&r).await.unwrap();
    a.load(&r.id).await.unwrap();
    let hits = a.local_cache_stats().unwrap().hits;
    a.load(&r.id).await.unwrap();
    assert_eq!(a.local_cache_stats().unwrap().hits, hits + 1);
    let filled = Instant::now();
    eventually("an aged entry is read again", || async {
        let misses = a.local_cache_stats().unwrap().misses;
        a.load(&r.id).await.unwrap();
        a.local_cache_stats().unwrap().misses > misses
    })
    .await;
    assert!(filled.elapsed() >= Duration::from_millis(100));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_is_off_by_default_and_its_settings_are_checked() {
    let store = plain(&server().url(), &prefix()).await;
    assert_eq!(store.local_cache_stats(), None);
    for (capacity, age) in [(0, Duration::from_secs(1)), (10, Duration::ZERO)] {
        let err = RedisStore::builder(server().url())
            .local_cache(capacity, age)
            .build()
            .unwrap_err();
        assert_eq!(err.setting(), "local_cache");
    }
}
