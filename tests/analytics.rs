//! Analytics: one history, written to all four stores (memory, Redis and
//! Redis Cluster, PostgreSQL, SQLite), answers the same funnels, cohorts
//! and event counts everywhere, and the hand-made traps among it answer
//! the counts worked out by hand: steps out of order, repeated steps, a
//! step outside the window, a window that starts at the first step, a
//! request whose route has a step's name, a session across a week's
//! boundary, a user with sessions in several periods, a session that logs
//! in after its first period (its user's cohort is the login's), and a
//! session that names no user.
#![cfg(all(
    feature = "analytics",
    feature = "memory-store",
    feature = "redis",
    feature = "postgres",
    feature = "sqlite"
))]

mod common;

use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use session_trail::analytics::{
    CohortReport, Cohorts, EventCountReport, EventCounts, Funnel, FunnelReport, HistoryAnalytics,
    Period, TimeRange,
};
use session_trail::history::{Draft, EntryKind};
use session_trail::store::{
    Append, AppendOutcome, HistoryStore, MemoryStore, PostgresStore, RedisStore, SqliteStore,
    tag_of,
};
use session_trail::{ErrorKind, Key, SessionId};

const MIN: i64 = 60_000;
const HOUR: i64 = 60 * MIN;
const DAY: i64 = 24 * HOUR;
/// Monday 2026-11-02T00:00:00Z: the traps' week W1 starts here.
const T0: i64 = 1_793_577_600_000;
/// The traps' range: W0 (from Monday 2026-10-26) to the end of W3.
const TRAPS: (i64, i64) = (T0 - 7 * DAY, T0 + 21 * DAY);
/// The generated history lies in 2025, outside the traps' range.
const GENERATED_FROM: i64 = 1_735_689_600_000; // 2025-01-01

/// What an entry of a made-up history is.
#[derive(Clone, Debug)]
enum What {
    Event(&'static str),
    /// A request by a user (by pseudonym number), or anonymous.
    Request(&'static str, Option<u8>),
    /// A lifecycle entry naming a user, as a login's does.
    Login(u8),
    Started,
}

fn pseudonym(n: u8) -> [u8; 8] {
    [0xa0, 1, 2, 3, 4, 5, 6, n]
}

/// One session's history, signed.
fn signed(key: &Key, sid: &SessionId, entries: &[(i64, What)]) -> Vec<Bytes> {
    let mut prev = [0; 16];
    let mut out = Vec::new();
    for (i, (ts, what)) in entries.iter().enumerate() {
        let draft = match what {
            What::Event(name) => Draft::event(name, &json!({"n": i})).unwrap(),
            What::Request(route, user) => {
                Draft::request("GET", route, 200, 10, user.map(pseudonym))
            }
            What::Login(u) => {
                let hex: String = pseudonym(*u).iter().map(|b| format!("{b:02x}")).collect();
                Draft::lifecycle(
                    EntryKind::PrivilegeChanged,
                    &json!({"user": hex, "privilege": "user"}),
                )
            }
            What::Started => Draft::lifecycle(EntryKind::Started, &json!({})),
        };
        let bytes = draft.at(*ts).sign(key, sid, i as u64 + 1, &prev);
        prev = tag_of(&bytes).unwrap();
        out.push(bytes);
    }
    out
}

use What::{Event, Login, Request, Started};

/// Sessions of made-up entries.
type Sessions = Vec<Vec<(i64, What)>>;

/// The traps, with the counts worked out by hand in the tests below.
fn traps() -> Sessions {
    let t = T0 + 9 * HOUR;
    vec![
        // 1. The whole funnel in order: reaches 3.
        vec![
            (t + 10 * MIN, Event("view_product")),
            (t + 20 * MIN, Event("add_to_cart")),
            (t + 30 * MIN, Event("checkout")),
        ],
        // 2. Out of order: the cart before the view does not count, so the
        //    checkout after the view does not either: reaches 1.
        vec![
            (t + MIN, Event("add_to_cart")),
            (t + 2 * MIN, Event("view_product")),
            (t + 3 * MIN, Event("checkout")),
        ],
        // 3. Repeated steps count once: reaches 3.
        vec![
            (t, Event("view_product")),
            (t + MIN, Event("view_product")),
            (t + 2 * MIN, Event("add_to_cart")),
            (t + 3 * MIN, Event("add_to_cart")),
            (t + 4 * MIN, Event("checkout")),
        ],
        // 4. The checkout 61 minutes after the view, outside the hour:
        //    reaches 2.
        vec![
            (t, Event("view_product")),
            (t + 30 * MIN, Event("add_to_cart")),
            (t + 61 * MIN, Event("checkout")),
        ],
        // 5. The window runs from the first view, not the second: reaches 2.
        vec![
            (t, Event("view_product")),
            (t + 50 * MIN, Event("view_product")),
            (t + 55 * MIN, Event("add_to_cart")),
            (t + 70 * MIN, Event("checkout")),
        ],
        // 6. No view: reaches 0.
        vec![(t, Event("add_to_cart")), (t + MIN, Event("checkout"))],
        // 7. Requests whose route is a step's name are not events: 0.
        vec![
            (t, Request("view_product", None)),
            (t + MIN, Request("add_to_cart", None)),
        ],
        // 8. The cart's clock is earlier than the view's, but it comes after
        //    it in the session (seq): order is the session's, reaches 2.
        vec![
            (t + 5 * MIN, Event("view_product")),
            (t + 4 * MIN, Event("add_to_cart")),
        ],
        // Cohorts (weeks W0 = from 2026-10-26, W1, W2, W3).
        // User 1: a session from Sunday 23:30 across midnight into W1, and
        // another in W3: cohort W0, active in W0, W1, W3.
        vec![
            (T0 - 30 * MIN, Request("/", Some(1))),
            (T0 + 30 * MIN, Request("/", Some(1))),
        ],
        vec![(T0 + 15 * DAY, Request("/", Some(1)))],
        // User 4: browses anonymously on Sunday (W0), logs in on Monday
        // (W1): what came before the login is not the user's, so the
        // cohort is W1.
        vec![
            (T0 - HOUR, Started),
            (T0 - HOUR + MIN, Request("/", None)),
            (T0 + HOUR, Login(4)),
            (T0 + HOUR + MIN, Request("/", Some(4))),
        ],
        // User 2: W1 (named by a login only) and W2: cohort W1.
        vec![(T0 + DAY, Started), (T0 + DAY + MIN, Login(2))],
        vec![(T0 + 8 * DAY, Request("/", Some(2)))],
        // User 3: a W2 session written first, then a W1 one: cohort W1,
        // active in W1 and W2.
        vec![(T0 + 9 * DAY, Request("/", Some(3)))],
        vec![(T0 + 2 * DAY, Request("/", Some(3)))],
        // No user: in no cohort (its week still counts as a period).
        vec![(T0 + 16 * DAY, Request("/", None))],
    ]
}

/// A generated history in 2025: 400 sessions of 20 users and anonymous
/// visitors, with events in and out of order, repeats, pauses past the
/// window, and sessions across days and weeks.
fn generated() -> Sessions {
    let mut seed: u64 = 0x5eed_1234_abcd;
    let mut next = move |n: u64| {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 16) % n
    };
    let names = ["view_product", "add_to_cart", "checkout", "search"];
    let mut out = Vec::new();
    for _ in 0..400 {
        let user = match next(3) {
            0 => None,
            _ => Some(next(20) as u8),
        };
        let mut ts = GENERATED_FROM + next(42 * DAY as u64) as i64;
        let mut session = vec![(ts, Started)];
        for _ in 0..next(12) {
            ts += match next(10) {
                0 => 2 * HOUR,
                1 => 9 * HOUR,
                2 => -5 * MIN,
                _ => next(20 * MIN as u64) as i64,
            };
            let what = match next(4) {
                0 => Request("/shop", user),
                1 if user.is_some() && next(4) == 0 => Login(user.unwrap()),
                _ => Event(names[next(4) as usize]),
            };
            session.push((ts, what));
        }
        out.push(session);
    }
    out
}

/// Writes every session to `store`.
async fn write<S: HistoryStore>(store: &S, key: &Key, sessions: &[Vec<(i64, What)>]) {
    let batch: Vec<Append> = sessions
        .iter()
        .map(|entries| {
            let sid = SessionId::generate();
            Append {
                session: sid,
                expected_head: None,
                entries: signed(key, &sid, entries),
                token: None,
            }
        })
        .collect();
    for chunk in batch.chunks(64) {
        let out = store.append(chunk).await.expect("append");
        assert!(out.iter().all(|o| *o == AppendOutcome::Appended), "{out:?}");
    }
}

fn range((from, until): (i64, i64)) -> TimeRange {
    TimeRange {
        from_ms: Some(from),
        until_ms: Some(until),
    }
}

fn shop_funnel() -> Funnel {
    Funnel::new(
        ["view_product", "add_to_cart", "checkout"],
        Duration::from_secs(3600),
    )
    .unwrap()
}

fn funnel_counts(r: &FunnelReport) -> Vec<u64> {
    r.steps.iter().map(|s| s.sessions).collect()
}

/// Every query the stores are compared on.
#[derive(Debug, PartialEq)]
struct Answers {
    funnels: Vec<FunnelReport>,
    cohorts: Vec<CohortReport>,
    counts: Vec<EventCountReport>,
}

async fn answers<S: HistoryAnalytics>(store: &S) -> Answers {
    let generated = range((GENERATED_FROM, GENERATED_FROM + 60 * DAY));
    let funnels = [
        shop_funnel(),
        shop_funnel().range(range(TRAPS)),
        shop_funnel().range(generated),
        Funnel::new(
            ["view_product", "view_product", "checkout"],
            Duration::from_secs(600),
        )
        .unwrap(),
        Funnel::new(["search"], Duration::from_millis(1)).unwrap(),
        Funnel::new(
            ["checkout", "view_product"],
            Duration::from_secs(86_400 * 400),
        )
        .unwrap(),
    ];
    let mut out = Answers {
        funnels: Vec::new(),
        cohorts: Vec::new(),
        counts: Vec::new(),
    };
    for f in &funnels {
        out.funnels.push(store.funnel(f).await.expect("funnel"));
    }
    for period in [Period::Day, Period::Week] {
        for r in [TimeRange::all(), range(TRAPS), generated] {
            out.cohorts.push(
                store
                    .cohorts(&Cohorts::new(period).range(r))
                    .await
                    .expect("cohorts"),
            );
            out.counts.push(
                store
                    .event_counts(&EventCounts::new(period).range(r))
                    .await
                    .expect("event counts"),
            );
        }
    }
    out.counts.push(
        store
            .event_counts(&EventCounts::new(Period::Day).events(["checkout"]).unwrap())
            .await
            .expect("event counts"),
    );
    out
}

/// The traps' answers, worked out by hand (see `traps`).
fn check_traps(a: &Answers) {
    // Sessions 1-5 and 8 viewed; 1, 3, 4, 5 and 8 added to the cart after
    // the view within the hour; 1 and 3 checked out within it.
    assert_eq!(funnel_counts(&a.funnels[1]), vec![6, 5, 2], "trap funnel");
    // W0 cohort: user 1; W1 cohort: users 2, 3 and 4.
    let weeks = &a.cohorts[4];
    assert_eq!(weeks.period, Period::Week);
    let got: Vec<(&str, u64, &[u64])> = weeks
        .cohorts
        .iter()
        .map(|c| (c.start.as_str(), c.users, c.active.as_slice()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("2026-10-26", 1, &[1, 1, 0, 1][..]),
            ("2026-11-02", 3, &[3, 2, 0][..]),
        ]
    );
    // By day (Sunday is 11-01).
    let days = &a.cohorts[1];
    let got: Vec<(&str, u64)> = days
        .cohorts
        .iter()
        .map(|c| (c.start.as_str(), c.users))
        .collect();
    // User 1 first came on Sunday 11-01, user 4 (logged in) on 11-02,
    // user 2 on 11-03, user 3 on 11-04 (its 11-11 session was written
    // first).
    assert_eq!(
        got,
        vec![
            ("2026-11-01", 1),
            ("2026-11-02", 1),
            ("2026-11-03", 1),
            ("2026-11-04", 1)
        ]
    );
    let sunday = &days.cohorts[0].active;
    assert_eq!(sunday.len(), 17, "up to 11-17, the newest active day");
    // Sunday and Monday (across midnight), then 11-17.
    assert_eq!((sunday[0], sunday[1], sunday[2], sunday[16]), (1, 1, 0, 1));
    assert_eq!(sunday.iter().sum::<u64>(), 3);
    // Event counts by day in the traps' range: all on 11-02.
    let counts: Vec<(&str, &str, u64)> = a.counts[1]
        .counts
        .iter()
        .map(|c| (c.event.as_str(), c.start.as_str(), c.count))
        .collect();
    assert_eq!(
        counts,
        vec![
            ("add_to_cart", "2026-11-02", 8),
            ("checkout", "2026-11-02", 6),
            ("view_product", "2026-11-02", 8),
        ]
    );
}

/// The history every store gets: traps and generated.
fn history() -> &'static (Key, Sessions) {
    static H: OnceLock<(Key, Sessions)> = OnceLock::new();
    H.get_or_init(|| {
        let mut all = traps();
        all.extend(generated());
        (Key::generate(), all)
    })
}

/// The memory store's answers: the reference the others are held to.
async fn reference() -> Answers {
    let (key, sessions) = history();
    let store = MemoryStore::new();
    write(&store, key, sessions).await;
    let a = answers(&store).await;
    check_traps(&a);
    // The generated part has something in every funnel step, and its
    // cohorts span weeks.
    assert!(a.funnels[2].steps[2].sessions > 5, "{:?}", a.funnels[2]);
    assert!(a.cohorts[5].cohorts.len() >= 2, "{:?}", a.cohorts[5]);
    assert!(
        a.cohorts[5].cohorts[0].active.len() >= 6,
        "{:?}",
        a.cohorts[5]
    );
    a
}

async fn agree_with_memory<S: HistoryStore + HistoryAnalytics>(store: S) {
    let (key, sessions) = history();
    write(&store, key, sessions).await;
    let got = answers(&store).await;
    check_traps(&got);
    let want = reference().await;
    assert_eq!(got.funnels, want.funnels, "funnels");
    assert_eq!(got.cohorts, want.cohorts, "cohorts");
    assert_eq!(got.counts, want.counts, "event counts");
}

/// A PostgreSQL store in a schema of its own on the shared server,
/// migrated.
async fn postgres(tag: &str) -> (PostgresStore, String) {
    let schema = common::postgres::test_schema(tag);
    let store = PostgresStore::builder(common::postgres::shared_server().url("postgres"))
        .schema(&schema)
        .connect()
        .await
        .unwrap();
    store.migrate().await.unwrap();
    (store, schema)
}

/// Takes a PostgreSQL schema back to version 1: without the analytics
/// indexes.
fn postgres_to_version_1(schema: &str) {
    common::postgres::shared_server().psql(
        "postgres",
        &format!(
            "DROP INDEX {schema}.session_trail_history_events; \
             DROP INDEX {schema}.session_trail_history_users; \
             DROP TABLE {schema}.session_trail_checkpoints; \
             DELETE FROM {schema}.session_trail_schema WHERE version >= 2;"
        ),
    );
}

#[tokio::test]
async fn memory_answers_the_hand_counts() {
    reference().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_agrees() {
    let store = SqliteStore::open(common::sqlite::temp_db("analytics"))
        .await
        .unwrap();
    agree_with_memory(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_agrees() {
    agree_with_memory(postgres("analytics").await.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_agrees() {
    let server = common::redis::shared_server();
    let store = RedisStore::builder(server.url())
        // A glob character in the prefix must not widen the scan.
        .key_prefix(format!("{}*[x]", common::redis::test_prefix("analytics")))
        .connect()
        .await
        .unwrap();
    // Another prefix's history on the same server is not counted.
    let other = RedisStore::builder(server.url())
        .key_prefix(common::redis::test_prefix("analytics-other"))
        .connect()
        .await
        .unwrap();
    write(&other, &history().0, &traps()).await;
    // A key named like a history list that holds no list is skipped.
    let foreign = format!("{}:{{{}}}:h", store.key_prefix(), "0".repeat(32));
    server.cli(&["SET", &foreign, "not a list"]);
    agree_with_memory(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_agrees() {
    let cluster = common::redis::RedisCluster::start();
    let store = RedisStore::builder(cluster.url())
        .key_prefix(common::redis::test_prefix("analytics"))
        .connect()
        .await
        .unwrap();
    agree_with_memory(store).await;
}

#[tokio::test]
async fn bad_queries_are_refused_with_the_setting() {
    let h = Duration::from_secs(3600);
    for (err, what) in [
        (
            Funnel::new(Vec::<String>::new(), h).unwrap_err(),
            "funnel steps",
        ),
        (
            Funnel::new(["a'; DROP TABLE x; --"], h).unwrap_err(),
            "funnel steps",
        ),
        (
            Funnel::new(["a"], Duration::from_micros(10)).unwrap_err(),
            "funnel within",
        ),
        (
            EventCounts::new(Period::Day).events(["é"]).unwrap_err(),
            "event counts",
        ),
        ("month".parse::<Period>().unwrap_err(), "period"),
    ] {
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(err.to_string().contains(what), "{err}");
    }
}

#[tokio::test]
async fn an_empty_range_and_huge_windows_answer_zero_not_errors() {
    let (key, sessions) = history();
    let store = SqliteStore::open(common::sqlite::temp_db("analytics-edges"))
        .await
        .unwrap();
    write(&store, key, sessions).await;
    let empty = range((T0, T0));
    let f = store.funnel(&shop_funnel().range(empty)).await.unwrap();
    assert_eq!(funnel_counts(&f), vec![0, 0, 0]);
    let c = store
        .cohorts(&Cohorts::new(Period::Week).range(empty))
        .await
        .unwrap();
    assert!(c.cohorts.is_empty());
    // A window beyond every time the stores hold, and ranges beyond them.
    let wide = Funnel::new(["view_product", "checkout"], Duration::MAX)
        .unwrap()
        .range(range((i64::MIN, i64::MAX)));
    let want = MemoryStore::new();
    write(&want, key, sessions).await;
    assert_eq!(
        store.funnel(&wide).await.unwrap(),
        want.funnel(&wide).await.unwrap()
    );
}

/// A history written under schema version 1 (the same file with version
/// 2's indexes taken away) is upgraded when the store opens it: the
/// indexes are built over the rows already there, and the queries answer
/// as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_version_1_files_get_the_analytics_indexes() {
    let (key, sessions) = history();
    let path = common::sqlite::temp_db("analytics-v1");
    let store = SqliteStore::open(&path).await.unwrap();
    write(&store, key, sessions).await;
    let want = store.funnel(&shop_funnel()).await.unwrap();
    store.close().await.unwrap();
    common::sqlite::exec(
        &path,
        "DROP INDEX session_trail_history_events; DROP INDEX session_trail_history_users; \
         DROP TABLE session_trail_checkpoints; DELETE FROM session_trail_schema WHERE version >= 2;",
    );
    let indexes = "SELECT count(*) FROM sqlite_master WHERE type = 'index' \
                   AND name IN ('session_trail_history_events', 'session_trail_history_users')";
    assert_eq!(common::sqlite::count(&path, indexes), 0);
    let store = SqliteStore::open(&path).await.unwrap();
    store.check_schema().await.unwrap();
    assert_eq!(common::sqlite::count(&path, indexes), 2);
    assert_eq!(store.funnel(&shop_funnel()).await.unwrap(), want);
}

/// The same on PostgreSQL: a schema at version 1 is refused by
/// `check_schema` until `migrate` builds the indexes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_version_1_schemas_get_the_analytics_indexes_on_migrate() {
    let (key, sessions) = history();
    let server = common::postgres::shared_server();
    let (store, schema) = postgres("analytics_v1").await;
    write(&store, key, sessions).await;
    let want = store.cohorts(&Cohorts::new(Period::Week)).await.unwrap();
    postgres_to_version_1(&schema);
    let err = store.check_schema().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Misconfigured);
    assert!(err.to_string().contains("version 1"), "{err}");
    store.migrate().await.unwrap();
    store.check_schema().await.unwrap();
    let indexes = server.psql(
        "postgres",
        &format!(
            "SELECT count(*) FROM pg_indexes WHERE schemaname = '{schema}' \
             AND indexname IN ('session_trail_history_events', 'session_trail_history_users')"
        ),
    );
    assert_eq!(indexes.trim(), "2");
    assert_eq!(
        store.cohorts(&Cohorts::new(Period::Week)).await.unwrap(),
        want
    );
}

/// A migration that runs out of time (here: its index build waits for a
/// lock another transaction holds) is cancelled and rolled back on the
/// server: it leaves no lock request behind that would hold up appends,
/// and a later migration does the work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_out_of_time_is_rolled_back_and_holds_up_no_append() {
    use session_trail::tokio_postgres;
    let (key, sessions) = history();
    let server = common::postgres::shared_server();
    let (store, schema) = postgres("analytics_slow").await;
    write(&store, key, &sessions[..50]).await;
    postgres_to_version_1(&schema);
    // Another transaction writes to the history table and stays open.
    let (mut blocker, conn) =
        tokio_postgres::connect(&server.url("postgres"), tokio_postgres::NoTls)
            .await
            .unwrap();
    tokio::spawn(conn);
    let tx = blocker.transaction().await.unwrap();
    tx.batch_execute(&format!(
        "LOCK TABLE {schema}.session_trail_history IN ROW EXCLUSIVE MODE"
    ))
    .await
    .unwrap();

    let err = store
        .migrate_within(Duration::from_millis(1500))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{}", err.report());
    assert!(err.to_string().contains("migrate_within"), "{err}");
    // Nothing of the migration is left waiting on the server (the cancel
    // is asynchronous: poll), and appends go through while the other
    // transaction still holds its lock.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let waiting = server.psql(
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%CREATE INDEX%' \
             AND pid <> pg_backend_pid()",
        );
        if waiting.trim() == "0" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the migration still runs"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    write(&store, key, &sessions[50..60]).await;
    tx.commit().await.unwrap();
    store.migrate().await.unwrap();
    store.check_schema().await.unwrap();
}

/// Analytics read what a history read would answer: the newest `keep`
/// entries of live lists, on every store, whether or not the SQL stores'
/// maintenance has trimmed the rest yet (it is off here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_beyond_keep_count_nowhere() {
    let key = Key::generate();
    let t = T0 + 9 * HOUR;
    // Keep 2: the view is trimmed away, the cart and the checkout remain.
    let sessions = vec![
        vec![
            (t, Event("view_product")),
            (t + MIN, Event("add_to_cart")),
            (t + 2 * MIN, Event("checkout")),
        ],
        vec![
            (t, Request("/", Some(9))),
            (t + DAY, Request("/", Some(9))),
            (t + 2 * DAY, Request("/", Some(9))),
        ],
    ];
    let ttl = Duration::from_secs(3600);
    let memory = MemoryStore::new().history_retention(2, ttl).unwrap();
    let sqlite = SqliteStore::builder(common::sqlite::temp_db("analytics-keep"))
        .history_retention(2, ttl)
        .maintenance_interval(None)
        .open()
        .await
        .unwrap();
    let postgres = PostgresStore::builder(common::postgres::shared_server().url("postgres"))
        .schema(common::postgres::test_schema("analytics_keep"))
        .history_retention(2, ttl)
        .maintenance_interval(None)
        .connect()
        .await
        .unwrap();
    postgres.migrate().await.unwrap();
    let view = Funnel::new(["view_product"], Duration::from_secs(60)).unwrap();
    let cart = Funnel::new(["add_to_cart", "checkout"], Duration::from_secs(600)).unwrap();
    let days = Cohorts::new(Period::Day);
    let counts = EventCounts::new(Period::Day);
    async fn ask<S: HistoryStore + HistoryAnalytics>(
        store: &S,
        key: &Key,
        sessions: &[Vec<(i64, What)>],
        queries: (&Funnel, &Funnel, &Cohorts, &EventCounts),
    ) -> (Vec<u64>, Vec<u64>, CohortReport, EventCountReport) {
        write(store, key, sessions).await;
        (
            funnel_counts(&store.funnel(queries.0).await.unwrap()),
            funnel_counts(&store.funnel(queries.1).await.unwrap()),
            store.cohorts(queries.2).await.unwrap(),
            store.event_counts(queries.3).await.unwrap(),
        )
    }
    let q = (&view, &cart, &days, &counts);
    let want = ask(&memory, &key, &sessions, q).await;
    assert_eq!((want.0.clone(), want.1.clone()), (vec![0], vec![1, 1]));
    // User 9's first day is gone: the cohort starts on the second.
    assert_eq!(want.2.cohorts.len(), 1);
    assert_eq!(want.2.cohorts[0].active, vec![1, 1]);
    assert!(want.3.counts.iter().all(|c| c.event != "view_product"));
    assert_eq!(ask(&sqlite, &key, &sessions, q).await, want, "SQLite");
    // The trimmed view is still in the file: only the query left it out.
    assert_eq!(
        common::sqlite::count(
            sqlite.path(),
            "SELECT count(*) FROM session_trail_history WHERE name = 'view_product'"
        ),
        1
    );
    assert_eq!(ask(&postgres, &key, &sessions, q).await, want, "PostgreSQL");
}
