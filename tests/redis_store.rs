//! The store conformance suite on a single real `redis-server`, plus the
//! Redis store's own behaviour: configuration errors, start-up against an
//! unreachable server, key layout, NOSCRIPT recovery and TTLs.
#![cfg(feature = "redis")]

mod common;

use std::time::Duration;

use common::conformance::record;
use common::redis::{RedisServer, free_port};
use session_trail::store::{Append, AppendOutcome, HistoryStore, RedisStore, SessionStore};
use session_trail::{ErrorKind, SessionId};

// One server for the whole file; each test gets its own key prefix.
use common::redis::shared_server as server;

fn prefix() -> String {
    common::redis::test_prefix("t")
}

async fn store(keep: usize) -> RedisStore {
    RedisStore::builder(server().url())
        .key_prefix(prefix())
        .history_retention(keep, Duration::from_secs(3600))
        .connect()
        .await
        .expect("connect to the test redis-server")
}

store_conformance!(|keep: usize| store(keep));

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_urls_are_config_errors_naming_the_url() {
    for url in [
        "",
        "http://127.0.0.1:6379",
        "redis://127.0.0.1:notaport",
        "redis-cluster://",
        "redis-cluster://127.0.0.1:7000,,127.0.0.1:7001",
        "redis://127.0.0.1:7000,nonsense",
    ] {
        let err = RedisStore::builder(url).build().unwrap_err();
        assert_eq!(err.setting(), "url", "{url:?}: {err}");
    }
    let err = RedisStore::connect("nope://x").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    // The setting is named in the cause, printed with the chain.
    assert!(
        err.report().to_string().contains("`url`"),
        "{}",
        err.report()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_without_tls_support_says_how_to_enable_it() {
    let err = RedisStore::builder("rediss://127.0.0.1:6380")
        .build()
        .unwrap_err();
    assert_eq!(err.setting(), "url");
    assert!(err.to_string().contains("TLS"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_settings_name_the_setting() {
    let url = server().url();
    let b = || RedisStore::builder(url.clone());
    let setting = |r: Result<RedisStore, session_trail::ConfigError>| r.unwrap_err().setting();
    assert_eq!(setting(b().key_prefix("a{b}").build()), "key_prefix");
    assert_eq!(setting(b().key_prefix("").build()), "key_prefix");
    assert_eq!(setting(b().key_prefix("has space").build()), "key_prefix");
    assert_eq!(
        setting(b().history_retention(0, Duration::from_secs(1)).build()),
        "history_retention"
    );
    assert_eq!(
        setting(b().history_retention(1, Duration::ZERO).build()),
        "history_retention"
    );
    assert_eq!(
        setting(b().response_timeout(Duration::ZERO).build()),
        "response_timeout"
    );
    assert_eq!(
        setting(b().connection_timeout(Duration::ZERO).build()),
        "connection_timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_redis_at_start_up_is_unavailable() {
    let port = free_port();
    let started = std::time::Instant::now();
    let err = RedisStore::connect(format!("redis://127.0.0.1:{port}"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lazily_built_store_starts_degraded_and_recovers() {
    let mut server = RedisServer::start();
    server.kill9();
    let store = RedisStore::builder(server.url())
        .build()
        .expect("no I/O at build");
    let r = record(Some("zoe"));
    let err = store.create(&r).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    server.restart();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while store.ping().await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the store did not reconnect"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    store.create(&r).await.unwrap();
    assert_eq!(store.load(&r.id).await.unwrap(), Some(r));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_carry_the_session_hash_tag_and_no_token() {
    let s = store(1000).await;
    let r = record(Some("weird {user} name ünï\n"));
    s.create(&r).await.unwrap();
    let key = session_trail::Key::generate();
    let a = Append {
        session: r.id,
        expected_head: None,
        token: None,
        entries: common::conformance::chain(&key, &r.id, 1, [0; 16], 2),
    };
    assert_eq!(s.append(&[a]).await.unwrap(), vec![AppendOutcome::Appended]);

    let rk = s.record_key(&r.id);
    let hk = s.history_key(&r.id);
    assert_eq!(rk, format!("{}:{{{}}}:s", s.key_prefix(), r.id));
    assert_eq!(hk, format!("{}:{{{}}}:h", s.key_prefix(), r.id));
    let srv = server();
    assert_eq!(srv.cli(&["TYPE", &rk]).trim(), "hash");
    assert_eq!(srv.cli(&["TYPE", &hk]).trim(), "list");
    assert_eq!(srv.cli(&["LLEN", &hk]).trim(), "2");
    // Data keys are fields of their own; the token is stored as its hash.
    assert_eq!(srv.cli(&["HGET", &rk, "d:b"]).trim(), "\"two\"");
    let tok = srv.cli(&["HGET", &rk, "tok"]);
    assert_eq!(tok.trim(), "01".repeat(32));
    // The record is evicted a while after the nearer deadline (so the
    // layer can record why it ended).
    let at: i64 = srv.cli(&["PEXPIRETIME", &rk]).trim().parse().unwrap();
    assert_eq!(at, r.evict_at());
    // The user index is keyed by a hash of the name, never the name.
    let uk = s.user_key(r.user.as_deref().unwrap());
    assert!(!uk.contains("weird"), "{uk}");
    assert!(uk.starts_with(&format!("{}:user:{{", s.key_prefix())));
    assert_eq!(
        srv.cli(&["ZRANGE", &uk, "0", "-1"]).trim(),
        r.id.to_string()
    );
    let ids: Vec<SessionId> = s
        .sessions_of_user(r.user.as_deref().unwrap())
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, vec![r.id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_are_reloaded_after_noscript() {
    let s = store(1000).await;
    let r = record(None);
    s.create(&r).await.unwrap();
    let key = session_trail::Key::generate();
    let first = common::conformance::chain(&key, &r.id, 1, [0; 16], 1);
    let a = Append {
        session: r.id,
        expected_head: None,
        token: None,
        entries: first.clone(),
    };
    assert_eq!(s.append(&[a]).await.unwrap(), vec![AppendOutcome::Appended]);
    // A restart or failover forgets every script.
    assert_eq!(server().cli(&["SCRIPT", "FLUSH"]).trim(), "OK");
    let next = common::conformance::chain(
        &key,
        &r.id,
        2,
        session_trail::store::tag_of(&first[0]).unwrap(),
        1,
    );
    let a = Append {
        session: r.id,
        expected_head: session_trail::store::tag_of(&first[0]),
        token: None,
        entries: next,
    };
    assert_eq!(s.append(&[a]).await.unwrap(), vec![AppendOutcome::Appended]);
    assert_eq!(s.read_all(&r.id).await.unwrap().len(), 2);
    server().cli(&["SCRIPT", "FLUSH"]);
    let u = session_trail::store::Update {
        token_hash: r.token_hash,
        set: vec![("k".into(), serde_json::json!(true))],
        user: Some(Some("yan".into())),
        ..Default::default()
    };
    assert_eq!(
        s.update(&r.id, &u).await.unwrap(),
        session_trail::store::UpdateOutcome::Applied
    );
    server().cli(&["SCRIPT", "FLUSH"]);
    assert!(SessionStore::delete(&s, &r.id).await.unwrap());
    server().cli(&["SCRIPT", "FLUSH"]);
    let created = record(Some("zoe"));
    s.create(&created).await.unwrap();
    assert_eq!(
        s.load(&created.id).await.unwrap().map(|x| x.id),
        Some(created.id)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_ttl_is_set_on_new_lists_and_refreshed_only_when_due() {
    // TTL 64 s: refreshed at most every second, with a second of slack.
    let s = RedisStore::builder(server().url())
        .key_prefix(prefix())
        .history_retention(1000, Duration::from_secs(64))
        .connect()
        .await
        .unwrap();
    let sid = SessionId::generate();
    let key = session_trail::Key::generate();
    let entries = common::conformance::chain(&key, &sid, 1, [0; 16], 3);
    let hk = s.history_key(&sid);
    let pttl = || server().cli(&["PTTL", &hk]).trim().parse::<i64>().unwrap();
    let append = |i: usize| {
        let s = s.clone();
        let e = entries[i].clone();
        let head = if i == 0 {
            None
        } else {
            session_trail::store::tag_of(&entries[i - 1])
        };
        async move {
            s.append(&[Append {
                session: sid,
                expected_head: head,
                token: None,
                entries: vec![e],
            }])
            .await
            .unwrap()
        }
    };
    assert_eq!(append(0).await, vec![AppendOutcome::Appended]);
    let t = pttl();
    assert!(
        (64_000..=65_000).contains(&t),
        "a new list gets ttl + slack: {t}"
    );
    // Not due: no PEXPIRE on this append.
    server().cli(&["PEXPIRE", &hk, "30000"]);
    assert_eq!(append(1).await, vec![AppendOutcome::Appended]);
    assert!(pttl() <= 30_000, "refreshed although not due");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(append(2).await, vec![AppendOutcome::Appended]);
    assert!(pttl() > 60_000, "due but not refreshed: {}", pttl());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_rotation_is_applied_once_and_answers_applied() {
    use session_trail::store::{Rotation, TokenHash, Update, UpdateOutcome};
    let s = store(1000).await;
    let r = record(None);
    s.create(&r).await.unwrap();
    let u = Update {
        token_hash: r.token_hash,
        rotate: Some(Rotation {
            new_token_hash: TokenHash::from_bytes([5; 32]),
            at: 1,
        }),
        ..Update::default()
    };
    assert_eq!(s.update(&r.id, &u).await.unwrap(), UpdateOutcome::Applied);
    // The same call again (its answer was lost): still applied, nothing changes.
    assert_eq!(s.update(&r.id, &u).await.unwrap(), UpdateOutcome::Applied);
    let back = s.load(&r.id).await.unwrap().unwrap();
    assert_eq!(back.token_hash, TokenHash::from_bytes([5; 32]));
    assert_eq!(back.replaced.unwrap().token_hash, r.token_hash);
    // Any other write with the old token is refused.
    let stale = Update {
        token_hash: r.token_hash,
        set: vec![("x".into(), serde_json::json!(1))],
        ..Update::default()
    };
    assert_eq!(
        s.update(&r.id, &stale).await.unwrap(),
        UpdateOutcome::Missing
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_user_index_drops_members_whose_record_is_gone() {
    let s = store(1000).await;
    let user = format!("ida-{}", SessionId::generate());
    let a = record(Some(&user));
    let b = record(Some(&user));
    s.create(&a).await.unwrap();
    s.create(&b).await.unwrap();
    // The record vanishes behind the store's back (eviction, an operator).
    server().cli(&["DEL", &s.record_key(&a.id)]);
    let ids: Vec<SessionId> = s
        .sessions_of_user(&user)
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, vec![b.id]);
    assert_eq!(server().cli(&["ZCARD", &s.user_key(&user)]).trim(), "1");
    // The index expires with its longest-lived session.
    let at: i64 = server()
        .cli(&["PEXPIRETIME", &s.user_key(&user)])
        .trim()
        .parse()
        .unwrap();
    assert_eq!(at, a.absolute_deadline.max(b.absolute_deadline));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_output_shows_no_password() {
    let s = RedisStore::builder("redis://user:s3cret@127.0.0.1:1/2")
        .build()
        .unwrap();
    let text = format!("{s:?}");
    assert!(!text.contains("s3cret"), "{text}");
    assert!(text.contains("127.0.0.1:1"), "{text}");
    let text = format!(
        "{:?}",
        RedisStore::builder("redis://user:s3cret@127.0.0.1:1")
    );
    assert!(!text.contains("s3cret"), "{text}");
    let c = RedisStore::builder("redis-cluster://:s3cret@127.0.0.1:1,127.0.0.1:2")
        .build()
        .unwrap();
    assert!(c.is_cluster());
    let text = format!("{c:?}");
    assert!(
        !text.contains("s3cret") && text.contains("127.0.0.1:2"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_history_index_keeps_first_links_in_order_and_expires() {
    let s = store(1000).await;
    let user = "pseudonym-0123abcd";
    let (a, b) = (SessionId::generate(), SessionId::generate());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    // b may be appended to for 10 minutes: the index outlives it by the TTL.
    s.link_user(user, &a, now).await.unwrap();
    tokio::time::sleep(Duration::from_millis(3)).await;
    s.link_user(user, &b, now + 600_000).await.unwrap();
    // Linking again keeps the first link's place and never shortens the TTL.
    s.link_user(user, &a, now).await.unwrap();
    assert_eq!(s.user_sessions(user).await.unwrap(), vec![a, b]);
    assert!(s.user_sessions("someone else").await.unwrap().is_empty());
    let key = s.user_history_key(user);
    assert!(!key.contains("pseudonym"), "{key}");
    let pttl: i64 = server().cli(&["PTTL", &key]).trim().parse().unwrap();
    assert!((4_200_000..=4_300_000).contains(&pttl), "{pttl}");
    s.unlink_sessions(user, &[a, b]).await.unwrap();
    assert!(s.user_sessions(user).await.unwrap().is_empty());
    assert_eq!(server().cli(&["EXISTS", &key]).trim(), "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_and_network_changes_are_stored_per_field() {
    use session_trail::store::{Update, UpdateOutcome};
    let s = store(1000).await;
    let r = record(None);
    s.create(&r).await.unwrap();
    let u = Update {
        token_hash: r.token_hash,
        device: Some(Some("Safari on iOS".into())),
        network: Some(Some("n-1234".into())),
        ..Update::default()
    };
    assert_eq!(s.update(&r.id, &u).await.unwrap(), UpdateOutcome::Applied);
    let back = s.load(&r.id).await.unwrap().unwrap();
    assert_eq!(back.device.as_deref(), Some("Safari on iOS"));
    assert_eq!(back.network.as_deref(), Some("n-1234"));
    let u = Update {
        token_hash: r.token_hash,
        device: Some(None),
        ..Update::default()
    };
    assert_eq!(s.update(&r.id, &u).await.unwrap(), UpdateOutcome::Applied);
    let back = s.load(&r.id).await.unwrap().unwrap();
    assert_eq!(back.device, None);
    assert_eq!(back.data, r.data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_whose_user_cannot_be_indexed_leaves_no_session() {
    let s = store(1000).await;
    let r = record(Some("mallory"));
    // Someone else's key of the wrong type where the user's index goes.
    server().cli(&["SET", &s.user_key("mallory"), "not a sorted set"]);
    let err = s.create(&r).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert_eq!(s.load(&r.id).await.unwrap(), None);
    assert_eq!(server().cli(&["EXISTS", &s.record_key(&r.id)]).trim(), "0");
    // A user whose index is fine is created and indexed in the same call.
    let ok = record(Some("alice"));
    s.create(&ok).await.unwrap();
    let listed = s.sessions_of_user("alice").await.unwrap();
    assert_eq!(listed.iter().map(|r| r.id).collect::<Vec<_>>(), vec![ok.id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linked_create_writes_record_and_both_indexes_in_one_call_or_nothing() {
    use session_trail::store::HistoryLink;
    let s = store(1000).await;
    let r = record(Some("alice"));
    let link = HistoryLink {
        user: "pseudonym-alice",
        session_ends: r.absolute_deadline,
    };
    assert!(
        s.create_linked(&r, &link).await.unwrap(),
        "linked on a single node"
    );
    assert_eq!(s.load(&r.id).await.unwrap().map(|x| x.id), Some(r.id));
    let listed = s.sessions_of_user("alice").await.unwrap();
    assert_eq!(listed.iter().map(|x| x.id).collect::<Vec<_>>(), vec![r.id]);
    assert_eq!(
        s.user_sessions("pseudonym-alice").await.unwrap(),
        vec![r.id]
    );
    let ttl: i64 = server()
        .cli(&["PTTL", &s.user_history_key("pseudonym-alice")])
        .trim()
        .parse()
        .unwrap();
    assert!(
        ttl > 3_600_000,
        "the history index outlives the session: {ttl}"
    );

    // A history index of the wrong type fails the whole call: no record.
    let bad = record(Some("bob"));
    server().cli(&[
        "SET",
        &s.user_history_key("pseudonym-bob"),
        "not a sorted set",
    ]);
    let link = HistoryLink {
        user: "pseudonym-bob",
        session_ends: bad.absolute_deadline,
    };
    let err = s.create_linked(&bad, &link).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert_eq!(
        server().cli(&["EXISTS", &s.record_key(&bad.id)]).trim(),
        "0"
    );
    assert!(s.sessions_of_user("bob").await.unwrap().is_empty());
}

/// A cut tail, a deleted history and a removed checkpoint, made in Redis
/// itself, are reported against the sink's file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_report_cuts_made_in_redis() {
    let s = store(1000).await;
    let cut = |sid: SessionId, keep: u64| {
        let key = s.history_key(&sid);
        async move {
            let last = (keep - 1).to_string();
            assert_eq!(server().cli(&["LTRIM", &key, "0", &last]).trim(), "OK");
        }
    };
    let drop_checkpoint = |writer: session_trail::history::WriterId, counter: u64| {
        let key = s.checkpoints_key(&writer);
        async move {
            let client = session_trail::redis::Client::open(server().url()).unwrap();
            let mut c = client.get_multiplexed_async_connection().await.unwrap();
            let members: Vec<Vec<u8>> = session_trail::redis::cmd("ZRANGE")
                .arg(&key)
                .arg(0)
                .arg(-1)
                .query_async(&mut c)
                .await
                .unwrap();
            let member = members
                .into_iter()
                .find(|m| {
                    session_trail::history::Checkpoint::decode(m)
                        .is_ok_and(|cp| cp.counter == counter)
                })
                .expect("the checkpoint is in Redis");
            let removed: i64 = session_trail::redis::cmd("ZREM")
                .arg(&key)
                .arg(member)
                .query_async(&mut c)
                .await
                .unwrap();
            assert_eq!(removed, 1);
        }
    };
    common::checkpoints::cuts_in_the_store_are_reported(s.clone(), cut, drop_checkpoint).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_take_erasures_and_trims_in_redis_for_lawful() {
    common::checkpoints::erasure_and_trims_through_the_store_are_not_reported(store(3).await).await;
}
