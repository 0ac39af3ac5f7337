//! What the Redis store answers when Redis refuses its configuration, as
//! opposed to being down: a retry loop must be able to tell them apart.
#![cfg(feature = "redis")]

mod common;

use common::redis::{Persistence, RedisServer};
use session_trail::ErrorKind;
use session_trail::store::RedisStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_misconfigured_not_unavailable() {
    let server = RedisServer::start_with(Persistence::None, &["--requirepass", "s3cret-pass"]);
    let url = |auth: &str| format!("redis://{auth}127.0.0.1:{}", server.port);
    let wrong = RedisStore::connect(url(":wrong-pass@")).await.unwrap_err();
    assert_eq!(wrong.kind(), ErrorKind::Misconfigured, "{}", wrong.report());
    let missing = RedisStore::connect(url("")).await.unwrap_err();
    assert_eq!(
        missing.kind(),
        ErrorKind::Misconfigured,
        "{}",
        missing.report()
    );
    // Nothing of the password reaches the error.
    assert!(!wrong.report().to_string().contains("wrong-pass"));
    let right = RedisStore::connect(url(":s3cret-pass@")).await;
    assert!(right.is_ok(), "{:?}", right.err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_index_out_of_range_is_misconfigured() {
    let server = common::redis::shared_server();
    let err = RedisStore::connect(format!("{}/4000", server.url()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Misconfigured, "{}", err.report());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_is_down_is_unavailable() {
    let port = common::redis::free_port();
    let err = RedisStore::connect(format!("redis://127.0.0.1:{port}"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{}", err.report());
}
