//! Key rotation on a real `redis-server`.
#![cfg(feature = "redis")]

mod common;

use session_trail::store::RedisStore;

// One server for the whole file; each test gets its own key prefix.
use common::redis::shared_server as server;

async fn store() -> RedisStore {
    RedisStore::builder(server().url())
        .key_prefix(common::redis::test_prefix("rot"))
        .connect()
        .await
        .expect("connect to the test redis-server")
}

rotation_suite!(store);
