//! Benchmarks of the hot paths: the layer's request path, building and
//! signing an entry, verifying a chain, and enqueueing to the history writer.
//!
//! ```text
//! cargo bench --bench hot_paths -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! Besides criterion's report, a run with `--bench` prints the latency
//! percentiles of 100,000 single `HistoryWriter::enqueue` calls.

use std::convert::Infallible;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use http::header::{COOKIE, SET_COOKIE};
use http::{HeaderValue, Request, Response};
use session_trail::history::{Draft, HistoryWriter, Options, WriterConfig, verify};
use session_trail::store::MemoryStore;
use session_trail::{Key, KeyRing, Session, SessionId, SessionLayer};
use tokio::runtime::Runtime;
use tower::{Layer, ServiceExt, service_fn};

/// Enqueues between two flushes: well under the writer's default queue of
/// 65,536 entries, so the enqueue benches never take the drop path.
const FLUSH_EVERY: u64 = 8_192;

fn key() -> Key {
    Key::from_bytes(b"0123456789abcdef0123456789abcdef").unwrap()
}

fn current_thread() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn request_draft() -> Draft {
    Draft::request("GET", "/api/visits", 200, 850, Some([7; 8]))
}

async fn untouched(_req: Request<String>) -> Result<Response<String>, Infallible> {
    Ok(Response::new(String::new()))
}

async fn writes(req: Request<String>) -> Result<Response<String>, Infallible> {
    let session = req
        .extensions()
        .get::<Session>()
        .cloned()
        .expect("the layer adds a session");
    session.insert("visits", 1u64).await.expect("memory store");
    Ok(Response::new(String::new()))
}

async fn reads(req: Request<String>) -> Result<Response<String>, Infallible> {
    let session = req
        .extensions()
        .get::<Session>()
        .cloned()
        .expect("the layer adds a session");
    let visits: Option<u64> = session.get("visits").await.expect("memory store");
    Ok(Response::new(format!("{visits:?}")))
}

/// A valid cookie, issued by a first request that writes to the session.
fn issue_cookie(rt: &Runtime, layer: &SessionLayer) -> HeaderValue {
    let res = rt
        .block_on(
            layer
                .layer(service_fn(writes))
                .oneshot(Request::new(String::new())),
        )
        .unwrap();
    let set_cookie = res
        .headers()
        .get(SET_COOKIE)
        .expect("a cookie is issued")
        .to_str()
        .unwrap();
    let pair = set_cookie.split(';').next().unwrap().to_owned();
    assert!(pair.starts_with("session="), "{set_cookie}");
    HeaderValue::from_str(&pair).unwrap()
}

/// The whole layer around a handler that does not touch the session: with
/// a valid cookie (verify the credential, no store call) and without one.
fn layer(c: &mut Criterion) {
    let rt = current_thread();
    let layer = SessionLayer::builder(MemoryStore::new(), key())
        .without_history()
        .build()
        .unwrap();

    let cookie = issue_cookie(&rt, &layer);
    let with_cookie = || {
        let mut req = Request::new(String::new());
        req.headers_mut().insert(COOKIE, cookie.clone());
        req
    };
    // It is a valid credential for the stored session.
    let res = rt
        .block_on(layer.layer(service_fn(reads)).oneshot(with_cookie()))
        .unwrap();
    assert_eq!(res.body(), "Some(1)");

    let svc = layer.layer(service_fn(untouched));
    let mut g = c.benchmark_group("layer");
    g.throughput(Throughput::Elements(1));
    g.bench_function("untouched_with_cookie", |b| {
        b.to_async(&rt).iter(|| svc.clone().oneshot(with_cookie()));
    });
    g.bench_function("no_cookie", |b| {
        b.to_async(&rt)
            .iter(|| svc.clone().oneshot(Request::new(String::new())));
    });
    g.finish();
    assert_eq!(
        layer.invalid_credentials(),
        0,
        "the benched cookie did not verify"
    );
    drop(svc);
    layer_with_history(c, &rt);
}

/// The same untouched request with history on: the request entry is
/// built and handed to the writer on the condition of the credential's
/// token (one SHA-256 of the token), without any store call.
fn layer_with_history(c: &mut Criterion, rt: &Runtime) {
    let _guard = rt.enter();
    let store = MemoryStore::new();
    let layer = SessionLayer::builder(store, key()).build().unwrap();
    let cookie = issue_cookie(rt, &layer);
    let svc = layer.layer(service_fn(untouched));
    let mut g = c.benchmark_group("layer");
    g.throughput(Throughput::Elements(1));
    g.bench_function("untouched_with_cookie_and_history", |b| {
        b.to_async(rt).iter(|| {
            let mut req = Request::new(String::new());
            req.headers_mut().insert(COOKIE, cookie.clone());
            svc.clone().oneshot(req)
        });
    });
    g.finish();
}

/// Building a request entry and chaining and signing it.
fn entry(c: &mut Criterion) {
    let key = key();
    let sid = SessionId::from_bytes([9; 16]);
    let mut g = c.benchmark_group("entry");
    g.throughput(Throughput::Elements(1));
    g.bench_function("build_and_sign", |b| {
        let (mut seq, mut prev) = (0u64, [0u8; 16]);
        b.iter(|| {
            seq += 1;
            let bytes = request_draft().sign(&key, &sid, seq, &prev);
            prev.copy_from_slice(&bytes[bytes.len() - 16..]);
            bytes
        });
    });
    // The same without building the draft (which reads the OS CSPRNG for
    // the entry id and the clock), to show where the time goes.
    g.bench_function("sign", |b| {
        let draft = request_draft();
        let (mut seq, mut prev) = (0u64, [0u8; 16]);
        b.iter(|| {
            seq += 1;
            let bytes = black_box(&draft).sign(&key, &sid, seq, &prev);
            prev.copy_from_slice(&bytes[bytes.len() - 16..]);
            bytes
        });
    });
    g.finish();
}

/// Verifying a 1,000-entry chain.
fn chain(c: &mut Criterion) {
    let key = key();
    let ring = KeyRing::new(key.clone());
    let sid = SessionId::from_bytes([9; 16]);
    let mut prev = [0u8; 16];
    let entries: Vec<_> = (1..=1000u64)
        .map(|seq| {
            let bytes = request_draft().sign(&key, &sid, seq, &prev);
            prev.copy_from_slice(&bytes[bytes.len() - 16..]);
            bytes
        })
        .collect();
    assert!(verify(&ring, &sid, &entries, Options::default()).is_ok());
    let mut g = c.benchmark_group("chain");
    g.throughput(Throughput::Elements(entries.len() as u64));
    g.bench_function("verify_1000", |b| {
        b.iter(|| {
            verify(
                black_box(&ring),
                &sid,
                black_box(&entries),
                Options::default(),
            )
        });
    });
    g.finish();
}

/// `HistoryWriter::enqueue` of one request entry. The writer runs on a
/// current-thread runtime, so it only works during the untimed flushes
/// between chunks of `FLUSH_EVERY` enqueues: what is timed is the enqueue
/// alone, and the queue never fills.
fn enqueue(c: &mut Criterion) {
    let rt = current_thread();
    let writer = {
        let _guard = rt.enter();
        HistoryWriter::start(
            MemoryStore::new(),
            KeyRing::new(key()),
            WriterConfig::default(),
        )
        .unwrap()
    };
    let sid = SessionId::from_bytes([9; 16]);
    let draft = request_draft();
    let mut g = c.benchmark_group("writer");
    g.throughput(Throughput::Elements(1));
    g.bench_function("enqueue", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            let mut done = 0;
            while done < iters {
                let chunk = (iters - done).min(FLUSH_EVERY);
                let start = Instant::now();
                for _ in 0..chunk {
                    black_box(writer.enqueue(sid, vec![draft.clone()]));
                }
                timed += start.elapsed();
                rt.block_on(writer.flush()).unwrap();
                done += chunk;
            }
            timed
        });
    });
    g.finish();
    let stats = writer.stats();
    assert_eq!(
        stats.dropped, 0,
        "the bench measured the drop path: {stats:?}"
    );
}

/// Latency percentiles of 100,000 single `enqueue(sid, vec![draft.clone()])`
/// calls, each timed with `Instant` (whose own cost, some tens of ns, is included), flushing
/// untimed every `FLUSH_EVERY` calls. Once with the writer idle between
/// flushes (current-thread runtime) and once with it draining the queue on
/// another thread at the same time (multi-thread runtime, one worker).
fn enqueue_latency() {
    const CALLS: usize = 100_000;
    let multi = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    for (name, rt) in [
        ("idle writer", current_thread()),
        ("draining writer", multi),
    ] {
        let writer = {
            let _guard = rt.enter();
            HistoryWriter::start(
                MemoryStore::new(),
                KeyRing::new(key()),
                WriterConfig::default(),
            )
            .unwrap()
        };
        let sid = SessionId::from_bytes([9; 16]);
        let draft = request_draft();
        let mut ns: Vec<u64> = Vec::with_capacity(CALLS);
        for i in 0..CALLS {
            let start = Instant::now();
            let accepted = writer.enqueue(sid, vec![draft.clone()]);
            ns.push(start.elapsed().as_nanos() as u64);
            assert!(accepted, "dropped at call {i}");
            if (i as u64 + 1).is_multiple_of(FLUSH_EVERY) {
                rt.block_on(writer.flush()).unwrap();
            }
        }
        rt.block_on(writer.flush()).unwrap();
        ns.sort_unstable();
        let pct = |p: f64| ns[((ns.len() as f64 * p) as usize).min(ns.len() - 1)];
        println!(
            "writer/enqueue single-call latency, {name}, {CALLS} calls: \
             p50 {} ns, p90 {} ns, p99 {} ns, p99.9 {} ns, max {} ns",
            pct(0.50),
            pct(0.90),
            pct(0.99),
            pct(0.999),
            ns[ns.len() - 1],
        );
    }
}

fn main() {
    // What `criterion_group!` and `criterion_main!` expand to, plus the
    // latency loop, which runs only in a real bench run (not when
    // `cargo test --benches` runs each bench once).
    let mut c = Criterion::default().configure_from_args();
    layer(&mut c);
    entry(&mut c);
    chain(&mut c);
    enqueue(&mut c);
    if std::env::args().any(|a| a == "--bench") {
        enqueue_latency();
    }
    c.final_summary();
}
