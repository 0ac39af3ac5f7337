//! The store conformance, users', hardening and key rotation suites on a
//! real PostgreSQL cluster this test binary starts itself (one for the
//! whole binary; each test has a schema of its own), plus the PostgreSQL
//! store's own behaviour: configuration errors, migrations (also two at
//! once), schema checks, maintenance, and values PostgreSQL cannot store.
#![cfg(feature = "postgres")]

mod common;

use std::time::Duration;

use common::postgres::{shared_server as server, test_schema};
use session_trail::store::{
    Append, AppendOutcome, HistoryStore, PostgresStore, SCHEMA_VERSION, SessionStore, Update,
};
use session_trail::{ErrorKind, Key, SessionId};

fn url() -> String {
    server().url("postgres")
}

async fn store_in(schema: &str, keep: usize) -> PostgresStore {
    let store = PostgresStore::builder(url())
        .schema(schema)
        .history_retention(keep, Duration::from_secs(3600))
        .pool_size(4)
        .connect()
        .await
        .expect("connect to the test PostgreSQL");
    store.migrate().await.expect("migrate");
    store
}

async fn store(keep: usize) -> PostgresStore {
    store_in(&test_schema("t"), keep).await
}

store_conformance!(|keep: usize| store(keep));

store_suites!(session_trail::store::PostgresStore, super::store);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_settings_name_the_setting() {
    for (builder, setting) in [
        (PostgresStore::builder("redis://127.0.0.1/x"), "url"),
        (PostgresStore::builder("postgres://[::1/x"), "url"),
        (PostgresStore::builder(url()).schema("a-b"), "schema"),
        (PostgresStore::builder(url()).schema("1a"), "schema"),
        (PostgresStore::builder(url()).schema(""), "schema"),
        (
            PostgresStore::builder(url()).history_retention(0, Duration::from_secs(1)),
            "history_retention",
        ),
        (PostgresStore::builder(url()).pool_size(0), "pool_size"),
        (
            PostgresStore::builder(url()).statement_timeout(Duration::ZERO),
            "statement_timeout",
        ),
        (
            PostgresStore::builder(url()).maintenance_interval(Some(Duration::ZERO)),
            "maintenance_interval",
        ),
        (
            PostgresStore::builder(url()).maintenance_batch(0),
            "maintenance_batch",
        ),
    ] {
        let err = builder.build().unwrap_err();
        assert_eq!(err.setting(), setting, "{err}");
    }
    // The URL's password never appears in the error.
    let err = PostgresStore::builder("postgres://u:hunter2@[::1/x")
        .build()
        .unwrap_err();
    assert!(!err.to_string().contains("hunter2"), "{err}");
}

#[test]
fn the_maintenance_task_needs_a_runtime_or_is_turned_off() {
    let err = PostgresStore::builder(url()).build().unwrap_err();
    assert_eq!(err.setting(), "maintenance_interval", "{err}");
    PostgresStore::builder(url())
        .maintenance_interval(None)
        .build()
        .expect("no task, no runtime needed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_unavailable_and_a_missing_database_misconfigured() {
    let port = common::postgres::free_port();
    let err = PostgresStore::builder(format!("postgres://postgres@127.0.0.1:{port}/postgres"))
        .connect_timeout(Duration::from_millis(500))
        .connect()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{}", err.report());
    let err = PostgresStore::connect(server().url("no_such_database_here"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Misconfigured, "{}", err.report());
    assert!(
        err.report().to_string().contains("no_such_database_here"),
        "{}",
        err.report()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_is_idempotent_versioned_and_touches_only_its_tables() {
    let schema = test_schema("m");
    let store = store_in(&schema, 10).await;
    store.migrate().await.unwrap();
    store.check_schema().await.unwrap();
    let versions = server().psql(
        "postgres",
        &format!(
            "SELECT string_agg(version::text, ',' ORDER BY version) FROM {schema}.session_trail_schema"
        ),
    );
    let all: Vec<String> = (1..=SCHEMA_VERSION).map(|v| v.to_string()).collect();
    assert_eq!(versions.trim(), all.join(","));
    let tables = server().psql(
        "postgres",
        &format!(
            "SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables \
             WHERE schemaname = '{schema}'"
        ),
    );
    for t in tables.trim().split(',') {
        assert!(t.starts_with("session_trail_"), "{t}");
    }
    let functions = server().psql(
        "postgres",
        &format!(
            "SELECT string_agg(p.proname, ',') FROM pg_proc p JOIN pg_namespace n \
             ON n.oid = p.pronamespace WHERE n.nspname = '{schema}'"
        ),
    );
    for f in functions.trim().split(',') {
        assert!(f.starts_with("session_trail_"), "{f}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_migrating_at_once_both_succeed() {
    let schema = test_schema("race");
    let a = PostgresStore::builder(url())
        .schema(&schema)
        .build()
        .unwrap();
    let b = PostgresStore::builder(url())
        .schema(&schema)
        .build()
        .unwrap();
    let (ra, rb) = tokio::join!(a.migrate(), b.migrate());
    ra.unwrap();
    rb.unwrap();
    let versions = server().psql(
        "postgres",
        &format!("SELECT count(*) FROM {schema}.session_trail_schema"),
    );
    assert_eq!(versions.trim(), SCHEMA_VERSION.to_string());
    // Both work on the same tables.
    let r = common::conformance::record(Some("alice"));
    a.create(&r).await.unwrap();
    assert_eq!(b.load(&r.id).await.unwrap(), Some(r));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_problems_name_the_table() {
    let schema = test_schema("bad");
    let store = PostgresStore::builder(url())
        .schema(&schema)
        .build()
        .unwrap();
    // Never migrated: the check, and every operation, say so.
    let err = store.check_schema().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Misconfigured);
    assert!(err.to_string().contains("session_trail_schema"), "{err}");
    assert!(err.to_string().contains("migrate"), "{err}");
    let err = store.load(&SessionId::generate()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Misconfigured, "{}", err.report());
    assert!(err.to_string().contains("session_trail_sessions"), "{err}");
    assert!(err.to_string().contains("migrate"), "{err}");

    store.migrate().await.unwrap();
    server().psql(
        "postgres",
        &format!("ALTER TABLE {schema}.session_trail_history DROP COLUMN attrs"),
    );
    let err = store.check_schema().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Misconfigured);
    assert!(err.to_string().contains("session_trail_history"), "{err}");
    assert!(err.to_string().contains("attrs"), "{err}");

    // A newer schema than this build knows is refused, not downgraded.
    server().psql(
        "postgres",
        &format!("INSERT INTO {schema}.session_trail_schema (version) VALUES (999)"),
    );
    let err = store.migrate().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Misconfigured);
    assert!(err.to_string().contains("999"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_session_store_is_unavailable_not_a_panic() {
    let schema = test_schema("drop");
    let store = store_in(&schema, 10).await;
    server().psql(
        "postgres",
        &format!("DROP TABLE {schema}.session_trail_sessions CASCADE"),
    );
    let err = store.load(&SessionId::generate()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Misconfigured, "{}", err.report());
    assert!(err.to_string().contains("session_trail_sessions"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_postgresql_cannot_store_are_invalid_input() {
    let store = store(10).await;
    let r = common::conformance::record(None);
    store.create(&r).await.unwrap();
    let update = Update {
        token_hash: r.token_hash,
        set: vec![("name".into(), serde_json::json!("a\u{0}b"))],
        ..Update::default()
    };
    let err = store.update(&r.id, &update).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{}", err.report());
    assert_eq!(err.status(), http::StatusCode::BAD_REQUEST);
    // The record is unchanged and still usable.
    assert_eq!(store.load(&r.id).await.unwrap(), Some(r.clone()));

    // An event whose data holds U+0000 is stored: its bytes as they are,
    // its decoded attributes with U+FFFD.
    let key = Key::generate();
    let sid = SessionId::generate();
    let draft =
        session_trail::history::Draft::event("odd", &serde_json::json!({"v": "x\u{0}y"})).unwrap();
    let entry = draft.sign(&key, &sid, 1, &[0; 16]);
    let out = store
        .append(&[Append {
            session: sid,
            expected_head: None,
            entries: vec![entry.clone()],
            token: None,
        }])
        .await
        .unwrap();
    assert_eq!(out, vec![AppendOutcome::Appended]);
    assert_eq!(store.read_all(&sid).await.unwrap(), vec![entry]);
    let attrs = server().psql(
        "postgres",
        &format!(
            "SELECT attrs->>'v' FROM {}.session_trail_history WHERE sid = {}",
            store.schema(),
            common::postgres::bytea(&sid)
        ),
    );
    assert_eq!(attrs.trim(), "x\u{fffd}y");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_rows_carry_decoded_columns_beside_the_exact_bytes() {
    let store = store(10).await;
    let key = Key::generate();
    let sid = SessionId::generate();
    use session_trail::history::Draft;
    let user = [7u8; 8];
    let d1 = Draft::request("POST", "/cart/{id}", 201, 1500, Some(user));
    let e1 = d1.sign(&key, &sid, 1, &[0; 16]);
    let d2 = Draft::event("checkout", &serde_json::json!({"total": 42})).unwrap();
    let e2 = d2.sign(&key, &sid, 2, &session_trail::store::tag_of(&e1).unwrap());
    let out = store
        .append(&[Append {
            session: sid,
            expected_head: None,
            entries: vec![e1.clone(), e2.clone()],
            token: None,
        }])
        .await
        .unwrap();
    assert_eq!(out, vec![AppendOutcome::Appended]);
    let rows = server().psql(
        "postgres",
        &format!(
            "SELECT seq, kind, name, coalesce(method, '-'), coalesce(status::text, '-'), \
                    coalesce(user_pseudonym, '-'), attrs::text, \
                    entry = {e1b} OR entry = {e2b}, \
                    abs(extract(epoch from ts) * 1000 - {ts}) < 1000 \
             FROM {s}.session_trail_history WHERE sid = {b} ORDER BY seq",
            s = store.schema(),
            b = common::postgres::bytea(&sid),
            e1b = common::postgres::bytea_of(&e1),
            e2b = common::postgres::bytea_of(&e2),
            ts = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis()
        ),
    );
    let lines: Vec<&str> = rows.trim().lines().collect();
    assert_eq!(
        lines,
        vec![
            "1|request|/cart/{id}|POST|201|0707070707070707|{\"latency_us\": 1500}|t|t",
            "2|event|checkout|-|-|-|{\"total\": 42}|t|t",
        ],
        "{rows}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_deletes_expired_and_trimmed_rows_in_batches() {
    let schema = test_schema("maint");
    let store = PostgresStore::builder(url())
        .schema(&schema)
        .history_retention(3, Duration::from_secs(3600))
        .maintenance_interval(None)
        .maintenance_batch(2)
        .connect()
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let key = Key::generate();
    // Five sessions with 5 entries each: 2 beyond keep apiece.
    let mut sids = Vec::new();
    for _ in 0..5 {
        let sid = SessionId::generate();
        common::conformance::start_list(&store, &key, &sid, 5).await;
        sids.push(sid);
    }
    let count = |sql: String| {
        server()
            .psql("postgres", &sql)
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    assert_eq!(
        count(format!(
            "SELECT count(*) FROM {schema}.session_trail_history"
        )),
        25
    );
    // Only the newest 3 are read before maintenance ran.
    assert_eq!(store.read_all(&sids[0]).await.unwrap().len(), 3);

    // Expire two sessions' records and one history, and lapse a link.
    let mut gone = common::conformance::record(None);
    gone.idle_deadline = 1;
    gone.absolute_deadline = 2;
    store.create(&gone).await.unwrap();
    let live = common::conformance::record(None);
    store.create(&live).await.unwrap();
    server().psql(
        "postgres",
        &format!(
            "UPDATE {schema}.session_trail_history_heads SET expires_at = 1 WHERE sid = {}",
            common::postgres::bytea(&sids[4])
        ),
    );
    store.link_user("p", &sids[0], 1).await.unwrap();
    server().psql(
        "postgres",
        &format!("UPDATE {schema}.session_trail_user_history SET until = 1"),
    );

    let report = store.run_maintenance().await.unwrap();
    assert_eq!(report.sessions, 1, "{report:?}");
    assert_eq!(report.histories, 1, "{report:?}");
    assert_eq!(report.trimmed, 4, "{report:?}");
    assert_eq!(report.links, 1, "{report:?}");
    // 4 sessions × 3 kept entries; the expired history is gone.
    assert_eq!(
        count(format!(
            "SELECT count(*) FROM {schema}.session_trail_history"
        )),
        12
    );
    assert!(store.load(&gone.id).await.unwrap().is_none());
    assert!(store.load(&live.id).await.unwrap().is_some());
    for sid in &sids[..4] {
        let kept = store.read_all(sid).await.unwrap();
        assert_eq!(kept.len(), 3);
        let v = common::conformance::assert_kept_chain(&key, sid, &kept, 3);
        assert_eq!(v.trimmed_before, Some(3));
    }
    // Nothing left to do.
    let again = store.run_maintenance().await.unwrap();
    assert_eq!(again, session_trail::store::MaintenanceReport::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_maintenance_task_runs_by_itself_and_survives_errors() {
    let schema = test_schema("task");
    let store = PostgresStore::builder(url())
        .schema(&schema)
        .maintenance_interval(Some(Duration::from_millis(100)))
        .build()
        .unwrap();
    // Before migrate, every round fails; the task logs and goes on.
    tokio::time::sleep(Duration::from_millis(300)).await;
    store.migrate().await.unwrap();
    let mut gone = common::conformance::record(None);
    gone.idle_deadline = 1;
    gone.absolute_deadline = 2;
    store.create(&gone).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while store.load(&gone.id).await.unwrap().is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "the task never evicted the record"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An erase that races a session's first append leaves no row behind: the
/// rows the store no longer answers are gone from the table too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erase_racing_a_first_append_leaves_no_rows() {
    let store = store(1000).await;
    let key = Key::generate();
    for _ in 0..60 {
        let sid = SessionId::generate();
        let entries = common::conformance::chain(&key, &sid, 1, [0; 16], 3);
        let (a, b) = (store.clone(), store.clone());
        let append = tokio::spawn(async move {
            a.append(&[Append {
                session: sid,
                expected_head: None,
                entries,
                token: None,
            }])
            .await
        });
        let erase = tokio::spawn(async move { HistoryStore::delete(&b, &sid).await });
        append.await.unwrap().unwrap();
        erase.await.unwrap().unwrap();
        let readable = store.read_all(&sid).await.unwrap().len();
        let rows: usize = server()
            .psql(
                "postgres",
                &format!(
                    "SELECT count(*) FROM {}.session_trail_history WHERE sid = {}",
                    store.schema(),
                    common::postgres::bytea(&sid)
                ),
            )
            .trim()
            .parse()
            .unwrap();
        assert_eq!(rows, readable, "rows the store does not answer are left");
    }
}

/// Two servers appending the first entries of the same new sessions, in
/// opposite orders: no call fails (no deadlock, no key clash), and each
/// session gets exactly one of the two chains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_appends_in_opposite_orders_never_fail() {
    let schema = test_schema("race_new");
    let a = store_in(&schema, 1000).await;
    let b = store_in(&schema, 1000).await;
    let key = Key::generate();
    for _ in 0..10 {
        let sids: Vec<SessionId> = (0..100).map(|_| SessionId::generate()).collect();
        let batch = |sids: &[SessionId]| -> Vec<Append> {
            sids.iter()
                .map(|sid| Append {
                    session: *sid,
                    expected_head: None,
                    entries: common::conformance::chain(&key, sid, 1, [0; 16], 2),
                    token: None,
                })
                .collect()
        };
        let forward = batch(&sids);
        let mut reversed = batch(&sids);
        reversed.reverse();
        let (ra, rb) = tokio::join!(a.append(&forward), b.append(&reversed));
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        for (i, sid) in sids.iter().enumerate() {
            let (x, y) = (&ra[i], &rb[sids.len() - 1 - i]);
            let appended = [x, y]
                .iter()
                .filter(|o| ***o == AppendOutcome::Appended)
                .count();
            assert_eq!(appended, 1, "{sid}: {x:?} {y:?}");
            assert_eq!(store_len(&a, sid).await, 2);
        }
    }
}

async fn store_len(store: &PostgresStore, sid: &SessionId) -> usize {
    store.read_all(sid).await.unwrap().len()
}

/// A statement that times out is cancelled and its connection closed: the
/// pool's next caller is not stuck behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_statement_does_not_block_the_pool() {
    let schema = test_schema("slow");
    let store = PostgresStore::builder(url())
        .schema(&schema)
        .pool_size(1)
        .statement_timeout(Duration::from_millis(300))
        .connect()
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let r = common::conformance::record(None);
    store.create(&r).await.unwrap();
    // Another client holds the history table for two seconds.
    let locker = std::thread::spawn({
        let schema = schema.clone();
        move || {
            server().psql(
                "postgres",
                &format!(
                    "BEGIN; LOCK TABLE {schema}.session_trail_history_heads IN ACCESS EXCLUSIVE \
                     MODE; SELECT pg_sleep(2); COMMIT;"
                ),
            )
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while server()
        .psql(
            "postgres",
            "SELECT count(*) FROM pg_locks WHERE mode = 'AccessExclusiveLock' AND granted \
             AND locktype = 'relation'",
        )
        .trim()
        == "0"
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the lock was never taken"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let err = store.read_all(&SessionId::generate()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{}", err.report());
    // The session table is not locked: a load answers at once, on a new
    // connection, while the lock is still held.
    assert_eq!(store.load(&r.id).await.unwrap(), Some(r));
    assert!(
        !locker.is_finished(),
        "the lock was released too early to tell"
    );
    // And the cancelled statement is not left waiting on the server.
    let waiting = server().psql(
        "postgres",
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%session_trail_history_heads h%' \
         AND state = 'active' AND pid <> pg_backend_pid()",
    );
    assert_eq!(waiting.trim(), "0");
    locker.join().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extreme_retention_settings_keep_everything() {
    let store = PostgresStore::builder(url())
        .schema(test_schema("keepall"))
        .history_retention(usize::MAX, Duration::MAX)
        .maintenance_interval(None)
        .connect()
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let key = Key::generate();
    let sid = SessionId::generate();
    let entries = common::conformance::start_list(&store, &key, &sid, 3).await;
    assert_eq!(store.read_all(&sid).await.unwrap(), entries);
    store.run_maintenance().await.unwrap();
    assert_eq!(store.read_all(&sid).await.unwrap(), entries);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_that_only_looks_like_a_nul_escape_is_stored() {
    let store = store(10).await;
    let mut r = common::conformance::record(None);
    r.data
        .insert("path".into(), serde_json::json!("C:\\u0000 is not a NUL"));
    store.create(&r).await.unwrap();
    assert_eq!(store.load(&r.id).await.unwrap(), Some(r));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_column_is_reported_with_its_table() {
    let schema = test_schema("col");
    let store = store_in(&schema, 10).await;
    server().psql(
        "postgres",
        &format!("ALTER TABLE {schema}.session_trail_sessions DROP COLUMN network"),
    );
    let err = store.load(&SessionId::generate()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Misconfigured, "{}", err.report());
    assert!(err.to_string().contains("session_trail_sessions"), "{err}");
}

/// A batch of many sessions is split into concurrent calls: every outcome
/// still lands at its append's place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_batch_answers_each_append_in_its_place() {
    let store = store(1000).await;
    let key = Key::generate();
    let sids: Vec<SessionId> = (0..300).map(|_| SessionId::generate()).collect();
    let batch: Vec<Append> = sids
        .iter()
        .enumerate()
        .map(|(i, sid)| Append {
            session: *sid,
            // Every third one expects a head its empty list does not have.
            expected_head: (i % 3 == 0).then_some([9; 16]),
            entries: common::conformance::chain(&key, sid, 1, [0; 16], 1 + i % 4),
            token: None,
        })
        .collect();
    let out = store.append(&batch).await.unwrap();
    for (i, (sid, o)) in sids.iter().zip(&out).enumerate() {
        if i % 3 == 0 {
            assert_eq!(*o, AppendOutcome::Conflict { last: None }, "{i}");
            assert!(store.read_all(sid).await.unwrap().is_empty());
        } else {
            assert_eq!(*o, AppendOutcome::Appended, "{i}");
            assert_eq!(store.read_all(sid).await.unwrap(), batch[i].entries);
        }
    }
}

/// Loads of concurrent requests share statements: each still gets its own
/// record (or none), also for a session asked for twice in one batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_loads_are_batched_and_each_gets_its_own_answer() {
    let store = store(1000).await;
    let mut records = Vec::new();
    for n in 0..50 {
        let mut r = common::conformance::record(Some(&format!("user{n}")));
        r.data.insert("n".into(), serde_json::json!(n));
        store.create(&r).await.unwrap();
        records.push(r);
    }
    let missing: Vec<SessionId> = (0..20).map(|_| SessionId::generate()).collect();
    let mut tasks = Vec::new();
    for round in 0..4 {
        for r in &records {
            let (s, id, n) = (store.clone(), r.id, r.data["n"].clone());
            tasks.push(tokio::spawn(async move {
                let got = s.load(&id).await.unwrap().expect("a stored record");
                assert_eq!(got.id, id, "round {round}");
                assert_eq!(got.data["n"], n);
            }));
        }
        for id in &missing {
            let (s, id) = (store.clone(), *id);
            tasks.push(tokio::spawn(async move {
                assert!(s.load(&id).await.unwrap().is_none());
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// The load task runs in the runtime of the first load; when that runtime
/// ends, the next load (from another runtime) starts a new one.
#[test]
fn loads_go_on_after_the_runtime_of_the_first_load_ended() {
    let record = common::conformance::record(None);
    let store = {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let store = store(1000).await;
            store.create(&record).await.unwrap();
            assert!(store.load(&record.id).await.unwrap().is_some());
            store
        })
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let got = store.load(&record.id).await.unwrap();
        assert_eq!(got.map(|r| r.id), Some(record.id));
    });
}

/// A row that cannot be read fails its own session's loads only, also when
/// the loads of other sessions share its statement; past its linger it is
/// not read at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_session_row_fails_its_own_loads_only() {
    let schema = test_schema("corruptload");
    let store = store_in(&schema, 1000).await;
    let good = common::conformance::record(None);
    store.create(&good).await.unwrap();
    let (bad, gone) = (SessionId::generate(), SessionId::generate());
    let far = "9000000000000";
    for (sid, deadline) in [(bad, far), (gone, "1")] {
        server().psql(
            "postgres",
            &format!(
                "INSERT INTO {schema}.session_trail_sessions (sid, token_hash, data, created, \
                 last_seen, idle_deadline, absolute_deadline) VALUES ({}, '\\x0102', '[]', 0, 0, \
                 {deadline}, {deadline})",
                common::postgres::bytea(&sid)
            ),
        );
    }
    let missing = SessionId::generate();
    for _ in 0..20 {
        let (a, b, c, d) = tokio::join!(
            store.load(&good.id),
            store.load(&bad),
            store.load(&missing),
            store.load(&gone)
        );
        assert_eq!(a.unwrap().map(|r| r.id), Some(good.id));
        let err = b.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupt, "{}", err.report());
        assert!(c.unwrap().is_none());
        assert!(d.unwrap().is_none(), "past its linger: never read");
    }
}

/// An error shared by the loads of one statement reads as the error of
/// each, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_load_says_what_failed_once() {
    let port = common::postgres::free_port();
    let store = PostgresStore::builder(format!("postgres://postgres@127.0.0.1:{port}/postgres"))
        .connect_timeout(Duration::from_millis(300))
        .maintenance_interval(None)
        .build()
        .unwrap();
    let ids: Vec<SessionId> = (0..4).map(|_| SessionId::generate()).collect();
    let answers = futures_util::future::join_all(ids.iter().map(|id| store.load(id))).await;
    for answer in answers {
        let err = answer.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        let text = err.report().to_string();
        assert_eq!(
            text.matches("session store unavailable").count(),
            1,
            "{text}"
        );
        assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    }
}

/// A caller that gives up on a statement (a client that disconnects, the
/// history writer's attempt timeout) costs no connection: the statement
/// ends, and its connection goes back to the pool instead of being closed
/// and replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_gives_up_costs_no_connection() {
    use session_trail::tokio_postgres;
    let app = format!("st_{}", &SessionId::generate().to_string()[..12]);
    let schema = test_schema("give_up");
    let store = PostgresStore::builder(format!("{}?application_name={app}", url()))
        .schema(&schema)
        .pool_size(1)
        .connect()
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let sid = SessionId::generate();
    let backends = || {
        server().psql(
            "postgres",
            &format!(
                "SELECT string_agg(pid::text, ',' ORDER BY pid) FROM pg_stat_activity \
                 WHERE application_name = '{app}'"
            ),
        )
    };
    store.read_all(&sid).await.unwrap();
    let before = backends();
    assert!(!before.trim().is_empty(), "the pool's connection is open");
    // Another transaction holds the history table: the read waits on the
    // server, and its caller gives up meanwhile.
    let (mut blocker, conn) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let tx = blocker.transaction().await.unwrap();
    tx.batch_execute(&format!(
        "LOCK TABLE {schema}.session_trail_history IN ACCESS EXCLUSIVE MODE"
    ))
    .await
    .unwrap();
    let gave_up = tokio::time::timeout(Duration::from_millis(200), store.read_all(&sid)).await;
    assert!(gave_up.is_err(), "the read waited for the lock");
    tx.commit().await.unwrap();
    // The pool's one connection answers again, and it is the same one.
    store.read_all(&sid).await.unwrap();
    assert_eq!(backends(), before);
}

/// A cut tail, a deleted history and a removed checkpoint, made in
/// PostgreSQL itself, are reported against the sink's file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_report_cuts_made_in_postgresql() {
    let schema = test_schema("cp");
    let s = store_in(&schema, 1000).await;
    let cut = |sid: SessionId, keep: u64| {
        let sql = format!(
            "DELETE FROM \"{schema}\".session_trail_history WHERE sid = {} AND seq > {keep}",
            common::postgres::bytea(&sid)
        );
        async move {
            server().psql("postgres", &sql);
        }
    };
    let drop_checkpoint = |writer: session_trail::history::WriterId, counter: u64| {
        let sql = format!(
            "DELETE FROM \"{schema}\".session_trail_checkpoints WHERE writer = {} AND counter = {counter}",
            common::postgres::bytea_of(writer.as_bytes())
        );
        async move {
            server().psql("postgres", &sql);
        }
    };
    common::checkpoints::cuts_in_the_store_are_reported(s.clone(), cut, drop_checkpoint).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_take_erasures_and_trims_in_postgresql_for_lawful() {
    common::checkpoints::erasure_and_trims_through_the_store_are_not_reported(store(3).await).await;
}
