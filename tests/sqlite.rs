//! The store conformance, users', hardening and key rotation suites on the
//! SQLite store (a database file of their own per test), plus its own
//! behaviour: configuration errors, the file and its schema (created,
//! versioned, checked, refused when newer), corrupt and unusable files,
//! the decoded history columns, maintenance, a restart, and two stores on
//! one file.
#![cfg(feature = "sqlite")]

mod common;

use std::time::Duration;

use common::sqlite::{blob, count, exec, temp_db};
use session_trail::store::{
    Append, AppendOutcome, HistoryStore, SQLITE_SCHEMA_VERSION, SessionStore, SqliteStore,
    Synchronous,
};
use session_trail::{ErrorKind, Key, KeyRing, SessionId};

async fn store_keeping(keep: usize) -> SqliteStore {
    SqliteStore::builder(temp_db("t"))
        .history_retention(keep, Duration::from_secs(3600))
        .open()
        .await
        .expect("open a SQLite store")
}

store_conformance!(|keep: usize| store_keeping(keep));

/// A record long past its linger, stored.
async fn expired_record(store: &SqliteStore) -> session_trail::store::Record {
    let mut old = common::conformance::record(None);
    old.idle_deadline = 1;
    old.absolute_deadline = 1;
    store.create(&old).await.unwrap();
    old
}

/// A store in `path` whose maintenance runs only when a test calls
/// `run_maintenance`, `batch` rows at a time.
async fn maintained_by_hand(
    path: impl AsRef<std::path::Path>,
    keep: usize,
    ttl: Duration,
    batch: usize,
) -> SqliteStore {
    SqliteStore::builder(path)
        .history_retention(keep, ttl)
        .maintenance_interval(None)
        .maintenance_batch(batch)
        .open()
        .await
        .unwrap()
}

store_suites!(session_trail::store::SqliteStore, super::store_keeping);

#[tokio::test]
async fn invalid_settings_name_the_setting() {
    let path = temp_db("settings");
    for (builder, setting) in [
        (SqliteStore::builder(""), "path"),
        (SqliteStore::builder(":memory:"), "path"),
        (
            SqliteStore::builder(&path).history_retention(0, Duration::from_secs(1)),
            "history_retention",
        ),
        (
            SqliteStore::builder(&path).history_retention(1, Duration::ZERO),
            "history_retention",
        ),
        (
            SqliteStore::builder(&path).busy_timeout(Duration::ZERO),
            "busy_timeout",
        ),
        (
            SqliteStore::builder(&path).busy_timeout(Duration::from_micros(999)),
            "busy_timeout",
        ),
        (
            SqliteStore::builder(&path).busy_timeout(Duration::from_secs(30 * 24 * 3600)),
            "busy_timeout",
        ),
        (SqliteStore::builder(path.with_file_name("a\0b.db")), "path"),
        (
            SqliteStore::builder(&path).maintenance_interval(Some(Duration::ZERO)),
            "maintenance_interval",
        ),
        (
            SqliteStore::builder(&path).maintenance_batch(0),
            "maintenance_batch",
        ),
    ] {
        let err = builder.open().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{}", err.report());
        let config = std::error::Error::source(&err)
            .and_then(|s| s.downcast_ref::<session_trail::ConfigError>())
            .unwrap_or_else(|| panic!("no ConfigError in {}", err.report()));
        assert_eq!(config.setting(), setting, "{}", err.report());
    }
    assert!(!path.exists(), "an invalid configuration creates no file");
}

#[tokio::test]
async fn open_creates_the_file_in_wal_mode_with_a_versioned_schema_and_only_its_tables() {
    let path = temp_db("open");
    // The application's own table in the same file stays untouched.
    exec(
        &path,
        "CREATE TABLE app_orders (id INTEGER PRIMARY KEY); INSERT INTO app_orders VALUES (7);",
    );
    let store = SqliteStore::builder(&path)
        .synchronous(Synchronous::Full)
        .open()
        .await
        .unwrap();
    store.check_schema().await.unwrap();
    let conn = common::sqlite::connect(&path);
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        tables,
        [
            "app_orders",
            "session_trail_checkpoints",
            "session_trail_claims",
            "session_trail_history",
            "session_trail_history_heads",
            "session_trail_schema",
            "session_trail_sessions",
            "session_trail_user_history",
        ]
    );
    assert_eq!(count(&path, "SELECT id FROM app_orders"), 7);
    assert_eq!(
        count(&path, "SELECT max(version) FROM session_trail_schema"),
        SQLITE_SCHEMA_VERSION
    );
    // Opening again (also while the first store is open) applies nothing.
    let again = SqliteStore::open(&path).await.unwrap();
    assert_eq!(
        count(&path, "SELECT count(*) FROM session_trail_schema"),
        SQLITE_SCHEMA_VERSION
    );
    drop((store, again));
}

#[tokio::test]
async fn a_file_of_an_older_version_is_migrated_and_a_newer_one_refused() {
    // Version 0: a file that has only the version table, as a build before
    // any table was applied would leave it.
    let path = temp_db("older");
    exec(
        &path,
        "CREATE TABLE session_trail_schema (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL);",
    );
    let store = SqliteStore::open(&path).await.unwrap();
    store.check_schema().await.unwrap();
    assert_eq!(
        count(&path, "SELECT max(version) FROM session_trail_schema"),
        SQLITE_SCHEMA_VERSION
    );
    drop(store);

    let newer = temp_db("newer");
    SqliteStore::open(&newer).await.unwrap();
    exec(
        &newer,
        "INSERT INTO session_trail_schema (version, applied_at) VALUES (99, 0);",
    );
    let err = SqliteStore::open(&newer).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Misconfigured, "{}", err.report());
    let text = err.report().to_string();
    for part in ["99", "session_trail_schema", &newer.display().to_string()] {
        assert!(text.contains(part), "{part} not in {text}");
    }
}

#[tokio::test]
async fn a_table_that_differs_is_named() {
    let path = temp_db("differs");
    SqliteStore::open(&path).await.unwrap();
    exec(
        &path,
        "DROP INDEX session_trail_claims_until; ALTER TABLE session_trail_claims DROP COLUMN until;",
    );
    let err = SqliteStore::open(&path).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Misconfigured, "{}", err.report());
    assert!(
        err.report()
            .to_string()
            .contains("table session_trail_claims has no column until"),
        "{}",
        err.report()
    );
}

#[tokio::test]
async fn a_corrupt_or_unusable_file_is_a_clear_error_naming_the_path() {
    // Not a database at all.
    let garbage = temp_db("garbage");
    std::fs::write(&garbage, vec![0x5a; 8192]).unwrap();
    let err = SqliteStore::open(&garbage).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{}", err.report());
    assert!(
        err.report()
            .to_string()
            .contains(&garbage.display().to_string()),
        "{}",
        err.report()
    );
    assert_eq!(
        std::fs::read(&garbage).unwrap(),
        vec![0x5a; 8192],
        "the file is left as it was"
    );

    // A database whose pages were overwritten.
    let damaged = temp_db("damaged");
    {
        let store = SqliteStore::open(&damaged).await.unwrap();
        let record = common::conformance::record(Some("alice"));
        store.create(&record).await.unwrap();
        // Closed: every page is in the file, no thread writes to it.
        store.close().await.unwrap();
    }
    assert!(
        !std::path::PathBuf::from(format!("{}-wal", damaged.display())).exists(),
        "closing checkpoints the log into the file and removes it"
    );
    let mut bytes = std::fs::read(&damaged).unwrap();
    for b in &mut bytes[0..100] {
        *b = 0xff;
    }
    std::fs::write(&damaged, &bytes).unwrap();
    let err = SqliteStore::open(&damaged).await.unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Corrupt), "{}", err.report());
    assert!(
        err.report()
            .to_string()
            .contains(&damaged.display().to_string()),
        "{}",
        err.report()
    );

    // A directory that does not exist, and a path that is a directory.
    let dir = temp_db("dir");
    std::fs::create_dir_all(&dir).unwrap();
    for path in [dir.join("missing").join("sessions.db"), dir.clone()] {
        let err = SqliteStore::open(&path).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Misconfigured, "{}", err.report());
        let text = err.report().to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains("writable"), "{text}");
    }
}

#[tokio::test]
async fn history_rows_carry_the_decoded_columns_beside_the_exact_bytes() {
    let store = store_keeping(1000).await;
    let key = Key::generate();
    let sid = SessionId::generate();
    let entries = common::conformance::start_list(&store, &key, &sid, 2).await;
    let conn = common::sqlite::connect(store.path());
    let hex: String = sid.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
    /// session, seq, ts, kind, name, method, status, entry
    type Columns = (
        String,
        i64,
        i64,
        String,
        Option<String>,
        Option<String>,
        Option<i64>,
        Vec<u8>,
    );
    let row: Columns = conn
        .query_row(
            &format!(
                "SELECT session, seq, ts, kind, name, method, status, entry
                 FROM session_trail_history WHERE sid = {} AND seq = 1",
                blob(&sid)
            ),
            [],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                ))
            },
        )
        .unwrap();
    let decoded = session_trail::history::Entry::decode(&entries[0]).unwrap();
    assert_eq!(row.0, hex);
    assert_eq!(row.1, 1);
    assert_eq!(row.2, decoded.ts);
    assert_eq!(row.3, "request");
    assert_eq!(row.4.as_deref(), Some("/x"));
    assert_eq!(row.5.as_deref(), Some("GET"));
    assert_eq!(row.6, Some(200));
    assert_eq!(row.7, entries[0].to_vec());
    let kind: String = conn
        .query_row(
            &format!(
                "SELECT kind FROM session_trail_history WHERE sid = {} AND seq = 2",
                blob(&sid)
            ),
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(kind, "started");
    // The attributes are JSON that SQLite's JSON functions read.
    let i: i64 = conn
        .query_row(
            &format!(
                "SELECT attrs ->> '$.i' FROM session_trail_history WHERE sid = {} AND seq = 2",
                blob(&sid)
            ),
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(i, 1);
}

#[tokio::test]
async fn maintenance_deletes_expired_and_trimmed_rows_in_batches_and_kept_chains_verify() {
    let path = temp_db("maint");
    let store = maintained_by_hand(&path, 3, Duration::from_secs(3600), 2).await;
    let key = Key::generate();
    let sids: Vec<SessionId> = (0..5).map(|_| SessionId::generate()).collect();
    for sid in &sids {
        common::conformance::start_list(&store, &key, sid, 5).await;
    }
    // One history expired, one session record long past its linger, one
    // lapsed link.
    let gone = blob(&sids[4]);
    exec(
        &path,
        &format!("UPDATE session_trail_history_heads SET expires_at = 1 WHERE sid = {gone}"),
    );
    let old = expired_record(&store).await;
    let live = common::conformance::record(None);
    store.create(&live).await.unwrap();
    store.link_user("pseudo", &sids[0], 1).await.unwrap();
    exec(&path, "UPDATE session_trail_user_history SET until = 1");

    let report = store.run_maintenance().await.unwrap();
    assert_eq!(report.sessions, 1, "{report:?}");
    assert_eq!(report.histories, 1, "{report:?}");
    assert_eq!(report.trimmed, 4, "{report:?}");
    assert_eq!(report.links, 1, "{report:?}");
    assert_eq!(
        count(&path, "SELECT count(*) FROM session_trail_history"),
        12
    );
    assert!(store.load(&old.id).await.unwrap().is_none());
    assert!(store.load(&live.id).await.unwrap().is_some());
    for sid in &sids[..4] {
        let kept = store.read_all(sid).await.unwrap();
        assert_eq!(kept.len(), 3);
        let v = common::conformance::assert_kept_chain(&key, sid, &kept, 3);
        assert_eq!(v.trimmed_before, Some(3));
    }
    assert_eq!(
        store.run_maintenance().await.unwrap(),
        session_trail::store::MaintenanceReport::default()
    );
}

#[tokio::test]
async fn the_maintenance_round_runs_by_itself_and_survives_errors() {
    let path = temp_db("task");
    let store = SqliteStore::builder(&path)
        .maintenance_interval(Some(Duration::from_millis(50)))
        .open()
        .await
        .unwrap();
    // A table maintenance needs is gone: its rounds fail, and are retried.
    exec(
        &path,
        "ALTER TABLE session_trail_claims RENAME TO session_trail_claims_away;",
    );
    expired_record(&store).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        count(&path, "SELECT count(*) FROM session_trail_sessions"),
        1,
        "a failed round deletes nothing"
    );
    exec(
        &path,
        "ALTER TABLE session_trail_claims_away RENAME TO session_trail_claims;",
    );
    common::app::eventually(10, "the maintenance round deletes the old record", || {
        let path = path.clone();
        async move {
            (count(&path, "SELECT count(*) FROM session_trail_sessions") == 0).then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_and_history_survive_the_store_being_dropped_and_reopened() {
    let path = temp_db("restart");
    let key = Key::from_bytes(&common::secret(7)).unwrap();
    let ring = KeyRing::new(key.clone());
    let open = || async {
        let store = SqliteStore::open(&path).await.unwrap();
        let layer = session_trail::SessionLayer::builder(store.clone(), key.clone())
            .history_writer(common::faults::writer_config())
            .build()
            .unwrap();
        (store, layer)
    };
    let (store, layer) = open().await;
    let mut clients = Vec::new();
    for n in 0..5 {
        let mut c = common::app::Client::new(common::app::router(layer.clone()));
        let res = c.send("POST", &format!("/login/user{n}")).await;
        assert_eq!(res.status(), http::StatusCode::OK);
        for _ in 0..3 {
            assert_eq!(
                c.send("GET", "/visits").await.status(),
                http::StatusCode::OK
            );
        }
        clients.push(c);
    }
    // What a SIGTERM handler does: the writer's queue is written first.
    layer
        .history_writer()
        .unwrap()
        .shutdown(Duration::from_secs(30))
        .await
        .unwrap();
    drop((store, layer));

    let (store, layer) = open().await;
    let mut sids = Vec::new();
    for (n, c) in clients.iter_mut().enumerate() {
        c.app = common::app::router(layer.clone());
        let me = c.json("GET", "/me").await;
        assert_eq!(me["user"], format!("user{n}"), "{me}");
        assert_eq!(me["visits"], 3, "{me}");
        sids.push(
            me["session"]
                .as_str()
                .unwrap()
                .parse::<SessionId>()
                .unwrap(),
        );
    }
    layer.history_writer().unwrap().flush().await.unwrap();
    for sid in &sids {
        let all = store.read_all(sid).await.unwrap();
        let v = session_trail::history::verify(
            &ring,
            sid,
            &all,
            session_trail::history::Options::default(),
        );
        assert!(v.is_ok(), "{:?}", v.breaks);
        // The login, three visits, and the request after the restart.
        assert!(all.len() >= 5, "{}", all.len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_on_one_file_share_sessions_and_history_chains() {
    let path = temp_db("two");
    let a = SqliteStore::open(&path).await.unwrap();
    let b = SqliteStore::open(&path).await.unwrap();
    common::faults::two_app_servers_share_sessions_and_history_chains(a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_lock_held_past_the_busy_timeout_is_unavailable_then_passes() {
    let path = temp_db("busy");
    let store = SqliteStore::builder(&path)
        .busy_timeout(Duration::from_millis(200))
        .open()
        .await
        .unwrap();
    let record = common::conformance::record(None);
    // Another connection (another process, say) holds the write lock.
    let holder = common::sqlite::connect(&path);
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();
    let err = store.create(&record).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{}", err.report());
    // Reads go on meanwhile (WAL).
    assert!(store.load(&record.id).await.unwrap().is_none());
    holder.execute_batch("ROLLBACK").unwrap();
    store.create(&record).await.unwrap();
    assert!(store.load(&record.id).await.unwrap().is_some());
}

/// One session's stored entry has the wrong SQL type (edited outside the
/// store): that session's append answers `Failed`, the other sessions of
/// the call are appended, and the writer goes on with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_row_fails_its_session_only_and_stalls_no_other() {
    use session_trail::history::HistoryWriter;
    let path = temp_db("corrupt-row");
    let store = SqliteStore::open(&path).await.unwrap();
    let key = Key::generate();
    let (a, b) = (SessionId::generate(), SessionId::generate());
    let ca = common::conformance::chain(&key, &a, 1, [0; 16], 2);
    let cb = common::conformance::chain(&key, &b, 1, [0; 16], 2);
    let first = |sid, entries: &Vec<bytes::Bytes>| Append {
        session: sid,
        expected_head: None,
        entries: entries[..1].to_vec(),
        token: None,
    };
    assert_eq!(
        store.append(&[first(a, &ca), first(b, &cb)]).await.unwrap(),
        vec![AppendOutcome::Appended, AppendOutcome::Appended]
    );
    exec(
        &path,
        &format!(
            "UPDATE session_trail_history SET entry = 'not an entry' WHERE sid = {}",
            blob(&a)
        ),
    );
    let next = |sid, entries: &Vec<bytes::Bytes>| Append {
        session: sid,
        expected_head: session_trail::store::tag_of(&entries[0]),
        entries: entries[1..].to_vec(),
        token: None,
    };
    let out = store.append(&[next(a, &ca), next(b, &cb)]).await.unwrap();
    assert!(
        matches!(out[0], AppendOutcome::Failed { .. }),
        "session a: {:?}",
        out[0]
    );
    assert_eq!(out[1], AppendOutcome::Appended, "session b");

    // Through the writer: the corrupt session's entries wait, the others'
    // are written.
    let c = SessionId::generate();
    let writer = HistoryWriter::start(
        store.clone(),
        KeyRing::new(key),
        common::faults::writer_config().flush_timeout(Duration::from_secs(3)),
    )
    .unwrap();
    assert!(writer.enqueue(a, vec![common::faults::tick(1)]));
    assert!(writer.enqueue(c, vec![common::faults::tick(2)]));
    common::app::eventually(10, "session c's entry is written", || {
        let store = store.clone();
        async move { (store.read_all(&c).await.unwrap().len() == 1).then_some(()) }
    })
    .await;
}

#[tokio::test]
async fn a_maintenance_interval_too_long_for_a_clock_means_never_not_a_dead_store() {
    let store = SqliteStore::builder(temp_db("interval"))
        .maintenance_interval(Some(Duration::MAX))
        .open()
        .await
        .unwrap();
    // The first round is due after 5 s at most; then the next one would be
    // beyond what `Instant` holds.
    tokio::time::sleep(Duration::from_millis(5_500)).await;
    store
        .load(&SessionId::generate())
        .await
        .unwrap_or_else(|e| panic!("the store died: {}", e.report()));
    store.run_maintenance().await.unwrap();
}

#[tokio::test]
async fn close_waits_until_the_file_is_closed_and_refuses_while_clones_live() {
    let path = temp_db("close");
    let store = SqliteStore::open(&path).await.unwrap();
    store
        .create(&common::conformance::record(Some("alice")))
        .await
        .unwrap();
    let clone = store.clone();
    let store = store
        .close()
        .await
        .expect_err("a clone is alive: not closed");
    store.load(&SessionId::generate()).await.unwrap();
    drop(clone);
    store.close().await.unwrap();
    // Nobody holds the file: a truncating checkpoint is not busy, and the
    // log is gone.
    let conn = common::sqlite::connect(&path);
    let busy: i64 = conn
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
        .unwrap();
    assert_eq!(busy, 0);
    assert_eq!(
        count(&path, "SELECT count(*) FROM session_trail_sessions"),
        1
    );
}

#[tokio::test]
async fn maintenance_in_batches_smaller_than_a_list_finishes_every_list() {
    let path = temp_db("budget");
    let store = maintained_by_hand(&path, 2, Duration::from_secs(3600), 4).await;
    let key = Key::generate();
    // One long list to trim (10 entries, keep 2) and one expired list of 9.
    let (long, old) = (SessionId::generate(), SessionId::generate());
    for (sid, n) in [(long, 10), (old, 9)] {
        common::conformance::start_list(&store, &key, &sid, n).await;
    }
    exec(
        &path,
        &format!(
            "UPDATE session_trail_history_heads SET expires_at = 1 WHERE sid = {}",
            blob(&old)
        ),
    );
    // Every row deleted, counted by a trigger: the batches that stop in the
    // middle of a list (4 rows each) finish it in the next.
    exec(
        &path,
        "CREATE TABLE test_deleted (n INTEGER);
         CREATE TRIGGER test_count AFTER DELETE ON session_trail_history
         BEGIN INSERT INTO test_deleted VALUES (1); END;",
    );
    let report = store.run_maintenance().await.unwrap();
    assert_eq!(report.histories, 1, "{report:?}");
    assert_eq!(report.trimmed, 1, "{report:?}");
    assert_eq!(count(&path, "SELECT count(*) FROM test_deleted"), 9 + 8);
    assert_eq!(
        count(&path, "SELECT count(*) FROM session_trail_history"),
        2
    );
    let kept = store.read_all(&long).await.unwrap();
    common::conformance::assert_kept_chain(&key, &long, &kept, 2);
}

/// A value of the wrong type in one session's history or heads row (edited
/// outside the store): maintenance passes over that list and goes on with
/// everything else.
#[tokio::test]
async fn a_corrupt_row_never_stops_maintenance_for_the_others() {
    for corrupt in [
        "UPDATE session_trail_history SET seq = 2.5 WHERE sid = {a} AND seq = 2",
        "UPDATE session_trail_history_heads SET low_seq = 'x' WHERE sid = {a}",
    ] {
        let path = temp_db("corrupt-maint");
        let store = SqliteStore::builder(&path)
            .maintenance_interval(None)
            .open()
            .await
            .unwrap();
        let key = Key::generate();
        let a = SessionId::generate();
        common::conformance::start_list(&store, &key, &a, 2).await;
        exec(&path, &corrupt.replace("{a}", &blob(&a)));
        expired_record(&store).await;
        let report = store
            .run_maintenance()
            .await
            .unwrap_or_else(|e| panic!("{corrupt}: {}", e.report()));
        assert_eq!(report.sessions, 1, "{corrupt}: {report:?}");
        assert_eq!(
            count(&path, "SELECT count(*) FROM session_trail_sessions"),
            0
        );
    }
}

/// An expired list that maintenance deletes over several transactions is
/// dead from the first: an append or a read that was waiting for the write
/// lock (another process held it) meanwhile never finds it half deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_deleted_expired_list_is_never_revived_or_read() {
    let path = temp_db("revive");
    let store = maintained_by_hand(&path, 100, Duration::from_secs(3600), 2).await;
    let key = Key::generate();
    let sid = SessionId::generate();
    let entries = common::conformance::chain(&key, &sid, 1, [0; 16], 11);
    let out = store
        .append(&[Append {
            session: sid,
            expected_head: None,
            entries: entries[..10].to_vec(),
            token: None,
        }])
        .await
        .unwrap();
    assert_eq!(out, vec![AppendOutcome::Appended]);
    // The list expired; one maintenance transaction deletes 2 of its rows.
    exec(
        &path,
        &format!(
            "UPDATE session_trail_history_heads SET expires_at = 1 WHERE sid = {}",
            blob(&sid)
        ),
    );
    // One batch only: the background round, started by hand.
    let conn = common::sqlite::connect(&path);
    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    let s = store.clone();
    let maintenance = tokio::spawn(async move { s.run_maintenance().await });
    let s = store.clone();
    let next = entries[10..].to_vec();
    let expected = session_trail::store::tag_of(&entries[9]);
    let append = tokio::spawn(async move {
        s.append(&[Append {
            session: sid,
            expected_head: expected,
            entries: next,
            token: None,
        }])
        .await
    });
    conn.execute_batch("COMMIT").unwrap();
    maintenance.await.unwrap().unwrap();
    let out = append.await.unwrap().unwrap();
    assert!(
        matches!(out[0], AppendOutcome::Conflict { last: None }),
        "{out:?}"
    );
    let kept = store.read_all(&sid).await.unwrap();
    common::conformance::assert_kept_chain(&key, &sid, &kept, 100);
}

#[tokio::test]
async fn a_path_starting_with_file_colon_is_a_file_not_a_uri() {
    let real = temp_db("uri");
    let uri = format!("file:{}?nolock=1", real.display());
    let _ = SqliteStore::builder(&uri)
        .busy_timeout(Duration::from_millis(200))
        .open()
        .await;
    assert!(
        !real.exists(),
        "{uri:?} was read as a URI: it opened {}",
        real.display()
    );
}

/// A small deterministic generator for the differential test.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

/// The SQLite store answers as the memory store (the reference semantics)
/// on random histories: appends on random bases (stale heads, empty lists,
/// the same session twice in a call, retries of earlier calls), erasures,
/// maintenance in small batches, and reads, with keep from 1 to 4.
#[tokio::test]
async fn answers_as_the_memory_store_on_random_histories() {
    use session_trail::store::{MemoryStore, tag_of};
    let seq_of = |b: &bytes::Bytes| session_trail::history::Entry::decode(b).unwrap().seq;
    for seed in 0..40u64 {
        let keep = 1 + (seed % 4) as usize;
        let ttl = Duration::from_secs(3600);
        let mem = MemoryStore::new().history_retention(keep, ttl).unwrap();
        let sql = maintained_by_hand(temp_db("diff"), keep, ttl, 1 + (seed % 3) as usize).await;
        let key = Key::generate();
        let sids: Vec<SessionId> = (0..3).map(|_| SessionId::generate()).collect();
        // Every entry appended per session (the bases to chain to), and
        // every append sent (to send again).
        let mut known: Vec<Vec<bytes::Bytes>> = vec![Vec::new(); 3];
        let mut sent: Vec<Append> = Vec::new();
        let mut rng = Lcg(seed * 7919 + 1);
        for step in 0..120 {
            let op = rng.below(10);
            if op < 6 {
                let mut batch = Vec::new();
                for _ in 0..1 + rng.below(3) {
                    let i = rng.below(3) as usize;
                    if !sent.is_empty() && rng.below(5) == 0 {
                        batch.push(sent[rng.below(sent.len() as u64) as usize].clone());
                        continue;
                    }
                    let base = if known[i].is_empty() || rng.below(4) == 0 {
                        None
                    } else {
                        Some(known[i][rng.below(known[i].len() as u64) as usize].clone())
                    };
                    let (seq, prev) = match &base {
                        None => (1, [0; 16]),
                        Some(b) => (seq_of(b) + 1, tag_of(b).unwrap()),
                    };
                    let n = 1 + rng.below(3) as usize;
                    batch.push(Append {
                        session: sids[i],
                        expected_head: base.as_ref().and_then(|b| tag_of(b)),
                        entries: common::conformance::chain(&key, &sids[i], seq, prev, n),
                        token: None,
                    });
                }
                let expected = mem.append(&batch).await.unwrap();
                let got = sql.append(&batch).await.unwrap();
                assert_eq!(got, expected, "seed {seed} step {step}: outcomes");
                for (a, o) in batch.iter().zip(&expected) {
                    if *o == AppendOutcome::Appended {
                        let i = sids.iter().position(|s| *s == a.session).unwrap();
                        known[i].extend(a.entries.iter().cloned());
                    }
                }
                sent.extend(batch);
            } else if op < 7 {
                let i = rng.below(3) as usize;
                let expected = HistoryStore::delete(&mem, &sids[i]).await.unwrap();
                let got = HistoryStore::delete(&sql, &sids[i]).await.unwrap();
                assert_eq!(got, expected, "seed {seed} step {step}: erase counts");
            } else if op < 8 {
                sql.run_maintenance().await.unwrap();
            } else {
                let i = rng.below(3) as usize;
                let n = rng.below(6) as usize;
                let expected = mem.read_newest(&sids[i], n).await.unwrap();
                let got = sql.read_newest(&sids[i], n).await.unwrap();
                assert_eq!(got, expected, "seed {seed} step {step}: read_newest({n})");
            }
        }
    }
}

/// Rows that no heads row names (its heads row deleted outside the store)
/// are dropped when the session's list starts again; they never fail the
/// other sessions of the call.
#[tokio::test]
async fn rows_without_a_heads_row_fail_no_append() {
    let store = store_keeping(1000).await;
    let key = Key::generate();
    let (a, b) = (SessionId::generate(), SessionId::generate());
    common::conformance::start_list(&store, &key, &a, 2).await;
    exec(
        store.path(),
        &format!(
            "DELETE FROM session_trail_history_heads WHERE sid = {}",
            blob(&a)
        ),
    );
    let batch: Vec<Append> = [a, b]
        .iter()
        .map(|sid| Append {
            session: *sid,
            expected_head: None,
            entries: common::conformance::chain(&key, sid, 1, [0; 16], 2),
            token: None,
        })
        .collect();
    let out = store.append(&batch).await.unwrap();
    assert_eq!(out, vec![AppendOutcome::Appended, AppendOutcome::Appended]);
    assert_eq!(store.read_all(&a).await.unwrap(), batch[0].entries);
}

/// A cut tail, a deleted history and a removed checkpoint, made in the
/// SQLite file itself, are reported against the sink's file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_report_cuts_made_in_the_file() {
    let path = temp_db("cp");
    let s = SqliteStore::builder(&path)
        .history_retention(1000, Duration::from_secs(3600))
        .open()
        .await
        .unwrap();
    let cut = |sid: SessionId, keep: u64| {
        let sql = format!(
            "DELETE FROM session_trail_history WHERE sid = {} AND seq > {keep}",
            common::sqlite::blob(&sid)
        );
        let path = path.clone();
        async move { common::sqlite::exec(&path, &sql) }
    };
    let drop_checkpoint = |writer: session_trail::history::WriterId, counter: u64| {
        let hex: String = writer
            .as_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let sql = format!(
            "DELETE FROM session_trail_checkpoints WHERE writer = x'{hex}' AND counter = {counter}"
        );
        let path = path.clone();
        async move { common::sqlite::exec(&path, &sql) }
    };
    common::checkpoints::cuts_in_the_store_are_reported(s.clone(), cut, drop_checkpoint).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_take_erasures_and_trims_in_the_file_for_lawful() {
    common::checkpoints::erasure_and_trims_through_the_store_are_not_reported(
        store_keeping(3).await,
    )
    .await;
}
