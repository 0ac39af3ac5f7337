//! What signed checkpoints cost.
//!
//! ```text
//! cargo bench --bench checkpoints
//! ROUNDS=7 cargo bench --bench checkpoints
//! ```
//!
//! Cases:
//! - checkpoint: the real writer (memory store, `FileSink` to a temporary
//!   file) has advanced 10,000 and 100,000 sessions; `checkpoint()` is
//!   timed: the hand-over, the Merkle tree, the signature, the store's copy
//!   and the sink's line (written and synced). The Merkle root alone is
//!   timed too.
//! - throughput: 10,000 sessions × 40 entries, one entry per session per
//!   batch, through the real writer into the memory store (no I/O: the
//!   writer's own cost is all there is), with checkpoints off, on at the
//!   default 30 s (a run is shorter: only the bookkeeping of advanced heads
//!   is measured) and on every second (30 times the default rate, so
//!   checkpoints of 10,000 sessions are formed during the run), in
//!   alternating rounds;
//!   entries per second, median of the rounds. Also into a `redis-server`
//!   the bench starts (no persistence) on a free loopback port.
//!
//! `ONLY=memory` or `ONLY=redis` runs that store's throughput alone.
//! With `LONG_SECS=65`, also runs of 65 seconds with checkpoints off and
//! on at the default 30 s, so that checkpoints are formed during the run
//! (`ROUNDS` pairs of them).
//!
//! Target: throughput with checkpoints on within 2% of off.

#[path = "../tests/common/redis.rs"]
#[allow(dead_code, unreachable_pub, missing_docs)]
mod harness;

#[path = "common/entries.rs"]
mod entries;

use std::time::{Duration, Instant};

use entries::request_entry;
use session_trail::history::{FileSink, Head, HistoryWriter, WriterConfig, merkle_root};
use session_trail::store::{HistoryStore, MemoryStore, RedisStore};
use session_trail::{Key, KeyRing, SessionId};

const SESSIONS: usize = 10_000;
const ROUNDS_PER_RUN: usize = 40;

fn ring() -> KeyRing {
    KeyRing::new(Key::generate())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn rounds() -> usize {
    std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7)
}

/// Advances `n` sessions by one entry each, then times `checkpoint()`.
async fn checkpoint_cost(n: usize) -> Duration {
    let sink = std::env::temp_dir().join(format!("bench-cp-{}.jsonl", SessionId::generate()));
    let w = HistoryWriter::start(
        MemoryStore::new(),
        ring(),
        WriterConfig::default()
            .queue_entries(n * 2)
            .checkpoint_interval(Duration::from_secs(3600))
            .checkpoint_sink(FileSink::open(&sink).unwrap()),
    )
    .unwrap();
    for i in 0..n {
        w.enqueue(SessionId::generate(), vec![request_entry(i)]);
    }
    w.flush().await.unwrap();
    let start = Instant::now();
    w.checkpoint().await.unwrap();
    let took = start.elapsed();
    assert_eq!(w.stats().checkpoints_kept, 1);
    let _ = std::fs::remove_file(&sink);
    took
}

/// Entries per second through the writer: `SESSIONS` × `ROUNDS_PER_RUN`.
/// `interval`: `None` for checkpoints off. Runs `ROUNDS_PER_RUN` rounds,
/// and more until `min_secs` have passed.
async fn throughput<H: HistoryStore>(store: H, interval: Option<Duration>, min_secs: f64) -> f64 {
    let mut config = WriterConfig::default().queue_entries(SESSIONS * 2);
    config = match interval {
        Some(d) => config.checkpoint_interval(d),
        None => config.no_checkpoints(),
    };
    let w = HistoryWriter::start(store, ring(), config).unwrap();
    let sessions: Vec<SessionId> = (0..SESSIONS).map(|_| SessionId::generate()).collect();
    let start = Instant::now();
    let mut round = 0;
    while round < ROUNDS_PER_RUN || start.elapsed().as_secs_f64() < min_secs {
        for (i, sid) in sessions.iter().enumerate() {
            w.enqueue(*sid, vec![request_entry(round * SESSIONS + i)]);
        }
        w.flush().await.unwrap();
        round += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    let formed = w.stats().checkpoints_formed;
    if interval.is_some_and(|d| d.as_secs_f64() < secs) {
        assert!(formed > 0, "no checkpoint formed in {secs:.1} s");
    }
    w.shutdown(Duration::from_secs(30)).await.unwrap();
    (SESSIONS * round) as f64 / secs
}

async fn compare<H, F, Fut>(name: &str, make: F)
where
    H: HistoryStore,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = H>,
{
    let variants = [
        None,
        Some(Duration::from_secs(30)),
        Some(Duration::from_secs(1)),
    ];
    // A warm-up run of each, not counted.
    for v in variants {
        throughput(make().await, v, 0.0).await;
    }
    let mut runs = vec![Vec::new(); variants.len()];
    for _ in 0..rounds() {
        for (i, v) in variants.iter().enumerate() {
            runs[i].push(throughput(make().await, *v, 0.0).await);
        }
    }
    let m: Vec<f64> = runs.into_iter().map(median).collect();
    let pct = |x: f64| (x - m[0]) / m[0] * 100.0;
    println!(
        "throughput/{name}: off {:.0} entries/s; on, every 30 s (the default; the \
         run is shorter, so no checkpoint is formed) {:.0} ({:+.2}%); on, every 1 s {:.0} ({:+.2}%)",
        m[0],
        m[1],
        pct(m[1]),
        m[2],
        pct(m[2])
    );
    // Runs long enough for the default interval to form checkpoints.
    let Some(secs) = std::env::var("LONG_SECS")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
    else {
        return;
    };
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for round in 0..rounds() {
        // Each order in turn, so neither always runs second.
        for first in [round % 2 == 0, round % 2 == 1] {
            if first {
                off.push(throughput(make().await, None, secs).await);
            } else {
                on.push(throughput(make().await, Some(Duration::from_secs(30)), secs).await);
            }
        }
    }
    let (off, on) = (median(off), median(on));
    println!(
        "throughput/{name}, {secs:.0}-second runs: off {off:.0} entries/s; on, every 30 s \
         {on:.0} ({:+.2}%)",
        (on - off) / off * 100.0
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for n in [10_000usize, 100_000]
            .into_iter()
            .filter(|_| std::env::var("ONLY").is_err())
        {
            let mut heads: Vec<Head> = (0..n)
                .map(|i| Head {
                    session: SessionId::generate(),
                    seq: i as u64,
                    tag: [3; 16],
                    sent: 1_700_000_000_000,
                })
                .collect();
            heads.sort_by(|a, b| a.session.as_bytes().cmp(b.session.as_bytes()));
            let mut root = Vec::new();
            let mut whole = Vec::new();
            for _ in 0..rounds() {
                let t = Instant::now();
                std::hint::black_box(merkle_root(&heads));
                root.push(t.elapsed().as_secs_f64() * 1000.0);
                whole.push(checkpoint_cost(n).await.as_secs_f64() * 1000.0);
            }
            println!(
                "checkpoint/{n} sessions: merkle root {:.1} ms; checkpoint() {:.1} ms \
                 (form, sign, store, file line synced)",
                median(root),
                median(whole)
            );
        }
        let only = std::env::var("ONLY").ok();
        let wanted = |name: &str| only.as_deref().is_none_or(|o| o == name);
        if wanted("memory") {
            compare("memory", || async { MemoryStore::new() }).await;
        }
        if !wanted("redis") {
            return;
        }
        let server = harness::RedisServer::start();
        let url = server.url();
        let port = server.port;
        compare("redis", || {
            let url = url.clone();
            // Each run starts on an empty server: a fuller one is slower.
            harness::cli(port, &["FLUSHALL"]);
            async move {
                RedisStore::builder(url)
                    .key_prefix(format!("bench-{}", SessionId::generate()))
                    .connect()
                    .await
                    .expect("connect to Redis")
            }
        })
        .await;
    });
}
