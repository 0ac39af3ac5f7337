//! History throughput into Redis through the real `HistoryWriter`, against
//! `redis-benchmark`'s pipelined RPUSH as the baseline, and Redis memory per
//! stored entry.
//!
//! ```text
//! cargo bench --features redis --bench redis_history
//! REDIS_URL=redis://127.0.0.1:6390 cargo bench --features redis --bench redis_history
//! ```
//!
//! Without `REDIS_URL` it starts its own `redis-server` (no persistence) on
//! a free loopback port. With `REDIS_URL` it writes under a fresh key prefix
//! and runs the baseline against that server's port (it must be local).
//!
//! Cases:
//! - spread: 10,000 sessions × 20 entries, one entry per session per batch
//!   (each round of 10,000 is flushed before the next, so every batch of 512
//!   names 512 different sessions: the worst case for round trips per entry);
//! - hot: 16 sessions, 200,000 entries enqueued at once (many entries per
//!   session per batch).
//!
//! Targets (2-core machine, local Redis): spread ≥ 60k entries/s, hot ≥
//! 150k entries/s, ≤ 160 bytes of Redis memory per stored request entry.

#[path = "../tests/common/redis.rs"]
#[allow(dead_code, unreachable_pub, missing_docs)]
mod harness;

#[path = "common/entries.rs"]
mod entries;

use std::process::Command;
use std::time::{Duration, Instant};

use entries::request_entry;
use session_trail::history::{HistoryWriter, WriterConfig};
use session_trail::store::RedisStore;
use session_trail::{Key, KeyRing, SessionId};

const SPREAD_SESSIONS: usize = 10_000;
const SPREAD_ROUNDS: usize = 20;
const HOT_SESSIONS: usize = 16;
const HOT_ENTRIES: usize = 200_000;

fn used_memory(port: u16) -> i64 {
    let info = harness::cli(port, &["INFO", "memory"]);
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("INFO memory has used_memory")
}

async fn store(url: &str) -> RedisStore {
    RedisStore::builder(url)
        .key_prefix(format!("bench-{}", SessionId::generate()))
        .connect()
        .await
        .expect("connect to Redis")
}

async fn spread(url: &str, port: u16) -> (f64, f64) {
    let store = store(url).await;
    let writer = HistoryWriter::start(
        store,
        KeyRing::new(Key::generate()),
        WriterConfig::default(),
    )
    .expect("start the writer");
    let sids: Vec<SessionId> = (0..SPREAD_SESSIONS)
        .map(|_| SessionId::generate())
        .collect();
    let before = used_memory(port);
    let started = Instant::now();
    for round in 0..SPREAD_ROUNDS {
        for (i, sid) in sids.iter().enumerate() {
            assert!(writer.enqueue(*sid, vec![request_entry(round * SPREAD_SESSIONS + i)]));
        }
        writer.flush().await.expect("flush");
    }
    let elapsed = started.elapsed();
    let entries = (SPREAD_SESSIONS * SPREAD_ROUNDS) as f64;
    let after = used_memory(port);
    let stats = writer.stats();
    assert_eq!(stats.written as f64, entries, "{stats:?}");
    writer
        .shutdown(Duration::from_secs(10))
        .await
        .expect("shutdown");
    println!(
        "spread: {SPREAD_SESSIONS} sessions × {SPREAD_ROUNDS} entries, one per session per batch: \
         {entries} entries in {elapsed:.2?} = {:.0} entries/s (retried {}, conflicts {})",
        entries / elapsed.as_secs_f64(),
        stats.retried,
        stats.conflicts
    );
    (
        entries / elapsed.as_secs_f64(),
        (after - before) as f64 / entries,
    )
}

async fn hot(url: &str) -> f64 {
    let store = store(url).await;
    let writer = HistoryWriter::start(
        store,
        KeyRing::new(Key::generate()),
        WriterConfig::default().queue_entries(HOT_ENTRIES + 1),
    )
    .expect("start the writer");
    let sids: Vec<SessionId> = (0..HOT_SESSIONS).map(|_| SessionId::generate()).collect();
    let started = Instant::now();
    for i in 0..HOT_ENTRIES {
        assert!(writer.enqueue(sids[i % HOT_SESSIONS], vec![request_entry(i)]));
    }
    writer.flush().await.expect("flush");
    let elapsed = started.elapsed();
    let stats = writer.stats();
    assert_eq!(stats.written as usize, HOT_ENTRIES, "{stats:?}");
    writer
        .shutdown(Duration::from_secs(10))
        .await
        .expect("shutdown");
    let rate = HOT_ENTRIES as f64 / elapsed.as_secs_f64();
    println!(
        "hot: {HOT_SESSIONS} sessions, {HOT_ENTRIES} entries at once: {elapsed:.2?} = {rate:.0} entries/s"
    );
    rate
}

/// `redis-benchmark -p PORT -t rpush -P 64 -n 1000000 -q`: requests/s.
fn baseline(port: u16) -> f64 {
    let out = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-t", "rpush", "-P", "64", "-n", "1000000", "-q"])
        .output()
        .expect("run redis-benchmark (apt-get install -y redis-tools)");
    let text = String::from_utf8_lossy(&out.stdout);
    // "RPUSH: 1851851.88 requests per second, p50=1.319 msec" (after \r
    // progress lines).
    let line = text
        .rsplit(['\r', '\n'])
        .find(|l| l.starts_with("RPUSH:"))
        .unwrap_or_else(|| panic!("unexpected redis-benchmark output: {text}"));
    println!("baseline: {}", line.trim());
    line["RPUSH:".len()..]
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .expect("a rate")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes `--bench`; a filter argument is not supported.
    let own;
    let (url, port) = match std::env::var("REDIS_URL") {
        Ok(url) => {
            let port = url
                .rsplit(':')
                .next()
                .and_then(|p| p.trim_end_matches('/').parse().ok())
                .expect("REDIS_URL=redis://127.0.0.1:PORT");
            (url, port)
        }
        Err(_) => {
            own = harness::RedisServer::start();
            (own.url(), own.port)
        }
    };
    println!("redis: {url}");
    let (spread_rate, bytes_per_entry) = spread(&url, port).await;
    let hot_rate = hot(&url).await;
    let rpush = baseline(port);
    println!();
    println!(
        "spread  {spread_rate:>10.0} entries/s  (target ≥ 60000)   {:.3} of RPUSH -P 64",
        spread_rate / rpush
    );
    println!(
        "hot     {hot_rate:>10.0} entries/s  (target ≥ 150000)  {:.3} of RPUSH -P 64",
        hot_rate / rpush
    );
    println!(
        "memory  {bytes_per_entry:>10.1} bytes/entry (target ≤ 160; used_memory delta / entries, spread case)"
    );
    println!("rpush   {rpush:>10.0} requests/s (redis-benchmark -t rpush -P 64 -n 1000000)");
}
