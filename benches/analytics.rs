//! Analytics over 1,000,000 history entries in 100,000 sessions, on each
//! store (criterion; time per query).
//!
//! ```text
//! cargo bench --all-features --bench analytics
//! ANALYTICS_STORES=postgres,sqlite cargo bench --all-features --bench analytics
//! ```
//!
//! The history: 100,000 sessions over twelve weeks, ten entries each (a
//! start, requests, and `view_product`, `add_to_cart`, `checkout` and
//! `search` events); half of them logged in, as one of 20,000 users. It is
//! signed and written through each store's `append` before the clock
//! starts. PostgreSQL and Redis are servers this bench starts itself on
//! free loopback ports (as the tests do); SQLite is a file under the
//! target directory. The PostgreSQL table is analyzed and vacuumed after
//! loading, as autovacuum would do.
//!
//! The queries: a three-step funnel (`view_product`, `add_to_cart`,
//! `checkout` within an hour) and weekly cohorts, both over everything.
//!
//! Targets (2-core machine): PostgreSQL ≤ 1 s each, SQLite ≤ 2 s each;
//! memory and Redis reported as they are.

#[path = "../tests/common/postgres.rs"]
#[allow(dead_code, unreachable_pub, missing_docs)]
mod pg;

#[path = "../tests/common/redis.rs"]
#[allow(dead_code, unreachable_pub, missing_docs)]
mod rd;

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::Criterion;
use serde_json::json;
use session_trail::analytics::{Cohorts, Funnel, HistoryAnalytics, Period};
use session_trail::history::{Draft, EntryKind};
use session_trail::store::{
    Append, AppendOutcome, HistoryStore, MemoryStore, PostgresStore, RedisStore, SqliteStore,
    tag_of,
};
use session_trail::{Key, SessionId};

const SESSIONS: usize = 100_000;
const PER_SESSION: usize = 10;
const USERS: u64 = 20_000;
const DAY: i64 = 86_400_000;
/// Monday 2026-06-01.
const START: i64 = 1_780_272_000_000;

/// Deterministic numbers (a 64-bit LCG).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 16) % n
    }
}

/// The history, as appends of 200 sessions each (2,000 entries).
fn history() -> Vec<Vec<Append>> {
    let key = Key::generate();
    let mut rng = Rng(42);
    let mut batches = Vec::new();
    let mut batch = Vec::new();
    for _ in 0..SESSIONS {
        let sid = SessionId::generate();
        let user = (rng.below(2) == 0).then(|| {
            let u = rng.below(USERS);
            let mut p = [0u8; 8];
            p.copy_from_slice(&u.to_be_bytes());
            p
        });
        let mut ts = START + rng.below(84 * DAY as u64) as i64;
        let mut prev = [0; 16];
        let mut entries: Vec<Bytes> = Vec::with_capacity(PER_SESSION);
        for i in 0..PER_SESSION {
            let draft = match (i, rng.below(10)) {
                (0, _) => Draft::lifecycle(EntryKind::Started, &json!({})),
                (_, 0..=2) => Draft::request("GET", "/products/{id}", 200, 900, user),
                (_, 3..=5) => Draft::event("view_product", &json!({"item": "book"})).unwrap(),
                (_, 6..=7) => Draft::event("add_to_cart", &json!({"item": "book"})).unwrap(),
                (_, 8) => Draft::event("checkout", &json!({"items": 1})).unwrap(),
                _ => Draft::event("search", &json!({"q": "x"})).unwrap(),
            };
            ts += rng.below(15 * 60_000) as i64;
            let bytes = draft.at(ts).sign(&key, &sid, i as u64 + 1, &prev);
            prev = tag_of(&bytes).unwrap();
            entries.push(bytes);
        }
        batch.push(Append {
            session: sid,
            expected_head: None,
            entries,
            token: None,
        });
        if batch.len() == 200 {
            batches.push(std::mem::take(&mut batch));
        }
    }
    batches
}

async fn load<S: HistoryStore>(store: &S, batches: &[Vec<Append>]) {
    let started = Instant::now();
    for b in batches {
        let out = store.append(b).await.expect("append");
        assert!(out.iter().all(|o| *o == AppendOutcome::Appended));
    }
    eprintln!(
        "  loaded {} entries in {:.1} s",
        SESSIONS * PER_SESSION,
        started.elapsed().as_secs_f64()
    );
}

fn bench_store<S: HistoryAnalytics>(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    name: &str,
    store: &S,
) {
    let funnel = Funnel::new(
        ["view_product", "add_to_cart", "checkout"],
        Duration::from_secs(3600),
    )
    .unwrap();
    let cohorts = Cohorts::new(Period::Week);
    // The answers, once, so a run shows what was computed.
    let f = rt.block_on(store.funnel(&funnel)).expect("funnel");
    let k = rt.block_on(store.cohorts(&cohorts)).expect("cohorts");
    eprintln!(
        "  {name}: funnel {:?}; {} weekly cohorts, the first {:?}",
        f.steps.iter().map(|s| s.sessions).collect::<Vec<_>>(),
        k.cohorts.len(),
        k.cohorts.first().map(|c| &c.active)
    );
    let mut g = c.benchmark_group(format!("analytics_1m/{name}"));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(5));
    g.bench_function("funnel_3_steps", |b| {
        b.to_async(rt)
            .iter(|| async { store.funnel(&funnel).await.unwrap() })
    });
    g.bench_function("cohorts_week", |b| {
        b.to_async(rt)
            .iter(|| async { store.cohorts(&cohorts).await.unwrap() })
    });
    g.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let stores =
        std::env::var("ANALYTICS_STORES").unwrap_or_else(|_| "postgres,sqlite,memory,redis".into());
    let batches = history();
    for name in stores.split(',') {
        eprintln!("{name}:");
        match name.trim() {
            "postgres" => {
                let server = pg::PgServer::start();
                let schema = pg::test_schema("analytics");
                let store = rt.block_on(async {
                    let store = PostgresStore::builder(server.url("postgres"))
                        .schema(&schema)
                        .maintenance_interval(None)
                        .connect()
                        .await
                        .expect("connect");
                    store.migrate().await.expect("migrate");
                    load(&store, &batches).await;
                    store
                });
                server.psql(
                    "postgres",
                    &format!("VACUUM ANALYZE {schema}.session_trail_history"),
                );
                bench_store(&mut c, &rt, "postgres", &store);
            }
            "sqlite" => {
                let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
                let path = dir.join(format!("analytics-bench-{}.db", std::process::id()));
                let store = rt.block_on(async {
                    let store = SqliteStore::builder(&path)
                        .maintenance_interval(None)
                        .open()
                        .await
                        .expect("open");
                    load(&store, &batches).await;
                    store
                });
                bench_store(&mut c, &rt, "sqlite", &store);
                drop(store);
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                }
            }
            "memory" => {
                let store = MemoryStore::new();
                rt.block_on(load(&store, &batches));
                bench_store(&mut c, &rt, "memory", &store);
            }
            "redis" => {
                let server = rd::RedisServer::start();
                let store = rt.block_on(async {
                    let store = RedisStore::builder(server.url())
                        .connect()
                        .await
                        .expect("connect");
                    load(&store, &batches).await;
                    store
                });
                bench_store(&mut c, &rt, "redis", &store);
            }
            other => panic!("ANALYTICS_STORES: unknown store `{other}`"),
        }
    }
    c.final_summary();
}
