//! History appends into PostgreSQL through the real `HistoryWriter`
//! (criterion; throughput in entries per second).
//!
//! ```text
//! cargo bench --features postgres --bench postgres_history
//! ```
//!
//! It starts its own PostgreSQL cluster (`initdb`/`postgres` from Debian's
//! `postgresql` package, as the `postgres` user when run as root) on a free
//! loopback port, with `synchronous_commit = on` (every batch is committed
//! before it is acknowledged) and `fsync = off` (the disk's flush latency
//! is not what is measured).
//!
//! The case: 10,000 sessions × 20 entries, one entry per session per
//! batch (each round of 10,000 is flushed before the next, so every batch
//! names as many different sessions as it holds entries: the most sessions
//! per entry). Batches are the store's preferred size (2,048 entries).
//!
//! Target (2-core machine, local PostgreSQL): spread ≥ 50k entries/s.

#[path = "../tests/common/postgres.rs"]
#[allow(dead_code, unreachable_pub, missing_docs)]
mod harness;

#[path = "common/entries.rs"]
mod entries;

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use entries::request_entry;
use session_trail::history::{HistoryWriter, WriterConfig};
use session_trail::store::PostgresStore;
use session_trail::{Key, KeyRing, SessionId};

const SPREAD_SESSIONS: usize = 10_000;
const SPREAD_ROUNDS: usize = 20;

async fn writer(url: &str, queue: usize) -> HistoryWriter {
    let store = PostgresStore::builder(url)
        .schema(harness::test_schema("bench"))
        .maintenance_interval(None)
        .connect()
        .await
        .expect("connect to PostgreSQL");
    store.migrate().await.expect("migrate");
    HistoryWriter::start(
        store,
        KeyRing::new(Key::generate()),
        WriterConfig::default()
            .queue_entries(queue)
            .queue_bytes(256 << 20),
    )
    .expect("start the writer")
}

async fn finish(writer: HistoryWriter, entries: usize) {
    let stats = writer.stats();
    assert_eq!(stats.written as usize, entries, "{stats:?}");
    assert_eq!(stats.dropped, 0, "{stats:?}");
    writer
        .shutdown(Duration::from_secs(30))
        .await
        .expect("shutdown");
}

/// 10,000 new sessions × 20 rounds, each round flushed.
async fn spread(url: &str) -> Duration {
    let writer = writer(url, 65_536).await;
    let sids: Vec<SessionId> = (0..SPREAD_SESSIONS)
        .map(|_| SessionId::generate())
        .collect();
    let started = Instant::now();
    for round in 0..SPREAD_ROUNDS {
        for (i, sid) in sids.iter().enumerate() {
            assert!(writer.enqueue(*sid, vec![request_entry(round * SPREAD_SESSIONS + i)]));
        }
        writer.flush().await.expect("flush");
    }
    let elapsed = started.elapsed();
    finish(writer, SPREAD_SESSIONS * SPREAD_ROUNDS).await;
    elapsed
}

fn bench(c: &mut Criterion) {
    let server = harness::PgServer::start();
    let url = server.url("postgres");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("postgres_history");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(30));
    group.throughput(Throughput::Elements(
        (SPREAD_SESSIONS * SPREAD_ROUNDS) as u64,
    ));
    group.bench_function("spread_10k_sessions_x20", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| rt.block_on(spread(&url)))
                .sum::<Duration>()
        });
    });
    group.finish();
    drop(server);
}

fn main() {
    // What `criterion_group!` and `criterion_main!` expand to.
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
}
