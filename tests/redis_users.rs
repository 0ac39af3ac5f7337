//! Users' control of sessions and history on a real `redis-server`.
#![cfg(feature = "redis")]

mod common;

use std::sync::OnceLock;

use common::redis::RedisServer;
use session_trail::SessionId;
use session_trail::store::RedisStore;

/// One server for the whole file; each test gets its own key prefix.
fn server() -> &'static RedisServer {
    static SERVER: OnceLock<RedisServer> = OnceLock::new();
    SERVER.get_or_init(RedisServer::start)
}

async fn store() -> RedisStore {
    RedisStore::builder(server().url())
        .key_prefix(format!("u-{}", SessionId::generate()))
        .connect()
        .await
        .expect("connect to the test redis-server")
}

users_suite!(store);
