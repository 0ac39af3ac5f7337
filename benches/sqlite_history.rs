//! History appends into SQLite through the real `HistoryWriter`
//! (criterion; throughput in entries per second).
//!
//! ```text
//! cargo bench --features sqlite --bench sqlite_history
//! ```
//!
//! Each iteration writes into a new database file under `target/` with the
//! store's defaults (WAL, `synchronous = NORMAL`: every batch is committed
//! before it is acknowledged).
//!
//! The case: 10,000 sessions × 20 entries, one entry per session per
//! batch (each round of 10,000 is flushed before the next, so every batch
//! of 512 names 512 different sessions: the most sessions per entry).
//!
//! Target (2-core machine): ≥ 100k entries/s.

#[path = "common/entries.rs"]
mod entries;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use entries::request_entry;
use session_trail::history::{HistoryWriter, WriterConfig};
use session_trail::store::SqliteStore;
use session_trail::{Key, KeyRing, SessionId};

const SESSIONS: usize = 10_000;
const ROUNDS: usize = 20;

fn fresh(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

/// 10,000 new sessions × 20 rounds, each round flushed.
async fn spread(path: &Path) -> Duration {
    fresh(path);
    let store = SqliteStore::builder(path)
        .maintenance_interval(None)
        .open()
        .await
        .expect("open the SQLite store");
    let writer = HistoryWriter::start(
        store,
        KeyRing::new(Key::generate()),
        WriterConfig::default()
            .queue_entries(65_536)
            .queue_bytes(256 << 20),
    )
    .expect("start the writer");
    let sids: Vec<SessionId> = (0..SESSIONS).map(|_| SessionId::generate()).collect();
    let started = Instant::now();
    for round in 0..ROUNDS {
        for (i, sid) in sids.iter().enumerate() {
            assert!(writer.enqueue(*sid, vec![request_entry(round * SESSIONS + i)]));
        }
        writer.flush().await.expect("flush");
    }
    let elapsed = started.elapsed();
    let stats = writer.stats();
    assert_eq!(stats.written as usize, SESSIONS * ROUNDS, "{stats:?}");
    assert_eq!(stats.dropped, 0, "{stats:?}");
    writer
        .shutdown(Duration::from_secs(30))
        .await
        .expect("shutdown");
    elapsed
}

fn bench(c: &mut Criterion) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-sqlite");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("history.db");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("sqlite_history");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements((SESSIONS * ROUNDS) as u64));
    group.bench_function("spread_10k_sessions_x20", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| rt.block_on(spread(&path)))
                .sum::<Duration>()
        });
    });
    group.finish();
    fresh(&path);
}

fn main() {
    // What `criterion_group!` and `criterion_main!` expand to.
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
}
