//! The task that forms, signs and keeps the writer's checkpoints.
//!
//! The writer's task only collects the heads it advanced and hands them
//! over at each interval; forming the Merkle tree, signing, and the round
//! trips to the store and the sink happen here, so a checkpoint over many
//! sessions (or a slow sink) never holds up history writes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use super::audit::CheckpointLog;
use super::checkpoint::{Checkpoint, Digest, Erasure, Fields, Head, WriterId};
use super::entry::TAG_LEN;
use super::sink::CheckpointSink;
use crate::SessionId;
use crate::key::KeyRing;
use crate::store::DynHistoryStore;
use crate::util::now_ms;

/// Most sessions the read path's index of this writer's attestations
/// holds; beyond it the older half is dropped (their reads are then
/// verified without checkpoints).
const READ_INDEX_CAP: usize = 1 << 20;

/// Heads indexed for the read path per hold of its lock.
const INDEX_SLICE: usize = 2048;

/// Heads of more sessions than this are hashed and signed on a blocking
/// thread rather than on the runtime's.
const BLOCKING_OVER: usize = 4096;

/// How often a persisting failure to keep checkpoints is logged again.
const LOG_EVERY: Duration = Duration::from_secs(30);

/// Hashes session ids for the map of advanced heads, which takes one
/// insert per session per batch on the writer's task: the ids are 128
/// random bits the crate made, so mixing their bytes with a per-process
/// seed spreads them as well as SipHash does, at a fraction of the cost.
#[derive(Clone, Copy)]
pub(crate) struct SidHasher(u64);

impl std::hash::Hasher for SidHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0 ^ u64::from_le_bytes(b))
                .rotate_left(29)
                .wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
}

#[derive(Clone, Copy)]
pub(crate) struct SidHash(u64);

impl Default for SidHash {
    fn default() -> Self {
        static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        Self(*SEED.get_or_init(|| {
            let mut b = [0u8; 8];
            crate::util::fill_random(&mut b);
            u64::from_le_bytes(b)
        }))
    }
}

impl std::hash::BuildHasher for SidHash {
    type Hasher = SidHasher;

    fn build_hasher(&self) -> SidHasher {
        SidHasher(self.0)
    }
}

/// What the writer advanced since its last hand-over.
#[derive(Default)]
pub(crate) struct Advance {
    /// Per session: `seq`, tag, and when the append that wrote it was sent.
    pub(crate) heads: HashMap<SessionId, (u64, [u8; TAG_LEN], i64), SidHash>,
    /// Per session, the latest erasure: a user who erases again and again
    /// adds one receipt.
    pub(crate) erasures: HashMap<SessionId, i64, SidHash>,
    /// Answered once everything handed over so far is kept.
    pub(crate) replies: Vec<oneshot::Sender<()>>,
}

impl Advance {
    pub(crate) fn is_empty(&self) -> bool {
        self.heads.is_empty() && self.erasures.is_empty()
    }

    pub(crate) fn add(&mut self, session: SessionId, seq: u64, tag: [u8; TAG_LEN], sent: i64) {
        self.heads.insert(session, (seq, tag, sent));
    }

    /// Records an erasure: the receipt, and the head it removed.
    pub(crate) fn erased(&mut self, session: SessionId, at: i64) {
        self.forget_before(session, at);
        let e = self.erasures.entry(session).or_insert(at);
        *e = (*e).max(at);
    }

    /// Drops the session's head if it was written before `at`.
    pub(crate) fn forget_before(&mut self, session: SessionId, at: i64) {
        if self.heads.get(&session).is_some_and(|h| h.2 < at) {
            self.heads.remove(&session);
        }
    }

    fn merge(&mut self, later: Advance) {
        // A head from before a later erasure is gone with its history.
        for (&session, &at) in &later.erasures {
            self.forget_before(session, at);
        }
        self.heads.extend(later.heads);
        for (session, at) in later.erasures {
            self.erased(session, at);
        }
        // A caller of `checkpoint()` that gave up is answered by no one.
        self.replies.retain(|r| !r.is_closed());
        self.replies.extend(later.replies);
    }
}

/// What the writer's handles see of its checkpoints.
pub(crate) struct CheckpointShared {
    pub(crate) writer: WriterId,
    /// This writer's own attestations, for the read path.
    pub(crate) log: Mutex<CheckpointLog>,
    pub(crate) formed: AtomicU64,
    pub(crate) kept: AtomicU64,
    /// Set once the task has stopped: having kept all it was handed, or
    /// at the stop time.
    pub(crate) done: watch::Receiver<bool>,
    /// When to give up retrying a checkpoint: set by the writer's shutdown
    /// (its deadline), or when its task ends without one (then the flush
    /// timeout after), so the task never outlives the writer for long.
    pub(crate) stop: Mutex<Option<Instant>>,
    /// The latest time the writer's clock gave (see [`now_ms`](Self::now_ms)).
    clock: AtomicI64,
    /// Set before `done` when a checkpoint was given up at the stop time.
    pub(crate) gave_up: std::sync::atomic::AtomicBool,
}

impl CheckpointShared {
    /// The wall clock (Unix milliseconds), never going back: the times a
    /// writer signs (heads' `sent`, erasures, checkpoints) are compared
    /// with each other exactly, so a clock stepped back must not reorder
    /// them.
    pub(crate) fn now_ms(&self) -> i64 {
        let t = now_ms();
        self.clock.fetch_max(t, Ordering::AcqRel).max(t)
    }
}

pub(crate) struct Checkpointer {
    rx: mpsc::UnboundedReceiver<Advance>,
    store: Arc<dyn DynHistoryStore>,
    ring: KeyRing,
    sink: Arc<dyn CheckpointSink>,
    shared: Arc<CheckpointShared>,
    done: watch::Sender<bool>,
    counter: u64,
    prev: Digest,
    attempt_timeout: Duration,
    backoff_max: Duration,
}

impl Checkpointer {
    pub(crate) fn new(
        store: Arc<dyn DynHistoryStore>,
        ring: KeyRing,
        sink: Arc<dyn CheckpointSink>,
        attempt_timeout: Duration,
        backoff_max: Duration,
    ) -> (Self, mpsc::UnboundedSender<Advance>, Arc<CheckpointShared>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (done, done_rx) = watch::channel(false);
        let shared = Arc::new(CheckpointShared {
            writer: WriterId::generate(),
            log: Mutex::default(),
            formed: AtomicU64::new(0),
            kept: AtomicU64::new(0),
            done: done_rx,
            stop: Mutex::new(None),
            clock: AtomicI64::new(i64::MIN),
            gave_up: std::sync::atomic::AtomicBool::new(false),
        });
        let task = Self {
            rx,
            store,
            ring,
            sink,
            shared: Arc::clone(&shared),
            done,
            counter: 0,
            prev: [0; 32],
            attempt_timeout,
            backoff_max,
        };
        (task, tx, shared)
    }

    pub(crate) async fn run(mut self) {
        let mut pending: Option<Advance> = None;
        loop {
            let mut advance = match pending.take() {
                Some(a) => a,
                None => match self.rx.recv().await {
                    Some(a) => a,
                    None => break,
                },
            };
            while let Ok(later) = self.rx.try_recv() {
                advance.merge(later);
            }
            if !advance.is_empty() {
                // `None`: the runtime is shutting down.
                let Some(cp) = self.form(&mut advance).await else {
                    self.shared.gave_up.store(true, Ordering::SeqCst);
                    break;
                };
                if !self.keep(&cp, &mut pending).await {
                    self.shared.gave_up.store(true, Ordering::SeqCst);
                    break;
                }
            }
            for reply in advance.replies {
                let _ = reply.send(());
            }
        }
        let _ = self.done.send(true);
    }

    async fn form(&mut self, advance: &mut Advance) -> Option<Checkpoint> {
        self.counter += 1;
        let at = self.shared.now_ms();
        let fields = Fields {
            writer: self.shared.writer,
            counter: self.counter,
            at,
            prev: self.prev,
        };
        let heads: Vec<Head> = advance
            .heads
            .drain()
            .map(|(session, (seq, tag, sent))| Head {
                session,
                seq,
                tag,
                sent,
            })
            .collect();
        let erasures = advance
            .erasures
            .drain()
            .map(|(session, at)| Erasure { session, at })
            .collect();
        let key = self.ring.current().clone();
        let cp = if heads.len() > BLOCKING_OVER {
            let fields_heads = (fields, heads, erasures);
            tokio::task::spawn_blocking(move || {
                let (f, h, e) = fields_heads;
                Checkpoint::sign(&key, f, h, e)
            })
            .await
            .ok()?
        } else {
            Checkpoint::sign(&key, fields, heads, erasures)
        };
        self.prev = cp.digest();
        self.shared.formed.fetch_add(1, Ordering::Relaxed);
        // Into the read path's index a slice at a time: history reads take
        // the same lock.
        let log = || self.shared.log.lock().unwrap_or_else(|p| p.into_inner());
        log().add_own_header(&cp);
        for heads in cp.heads.chunks(INDEX_SLICE) {
            log().index_heads(&cp, heads);
            tokio::task::yield_now().await;
        }
        log().prune(self.store.retention().ttl, at, READ_INDEX_CAP);
        Some(cp)
    }

    /// Keeps the checkpoint in the store, then hands it to the sink, each
    /// retried with backoff until it succeeds: a copy in the sink is one
    /// the store had too, so one missing from the store was removed. What
    /// the writer hands over meanwhile is merged into `pending`, so memory
    /// stays bounded by the sessions advanced. Answers `false` when it gave
    /// up at the stop time ([`CheckpointShared::stop`]).
    async fn keep(&mut self, cp: &Checkpoint, pending: &mut Option<Advance>) -> bool {
        let mut stored = !self.store.keeps_checkpoints();
        let mut published = false;
        let mut attempt = 0u32;
        let mut logged: Option<Instant> = None;
        loop {
            let mut reason = String::new();
            if !stored {
                match tokio::time::timeout(self.attempt_timeout, self.store.put_checkpoint(cp))
                    .await
                {
                    Ok(Ok(())) => stored = true,
                    Ok(Err(e)) => reason = format!("store: {}", e.report()),
                    Err(_) => {
                        reason = format!("store: no answer within {:?}", self.attempt_timeout)
                    }
                }
            }
            if stored && !published {
                match tokio::time::timeout(self.attempt_timeout, self.sink.publish(cp)).await {
                    Ok(Ok(())) => published = true,
                    Ok(Err(e)) => reason = format!("sink: {}", e.report()),
                    Err(_) => reason = format!("sink: no answer within {:?}", self.attempt_timeout),
                }
            }
            if published {
                self.shared.kept.fetch_add(1, Ordering::Relaxed);
                if logged.is_some() {
                    tracing::info!(
                        counter = cp.counter,
                        "history checkpoint kept after retries"
                    );
                }
                return true;
            }
            while let Ok(later) = self.rx.try_recv() {
                pending.get_or_insert_with(Advance::default).merge(later);
            }
            let stop = *self.shared.stop.lock().unwrap_or_else(|p| p.into_inner());
            if stop.is_some_and(|t| Instant::now() >= t) {
                tracing::error!(
                    counter = cp.counter,
                    %reason,
                    "the writer stopped before this history checkpoint was kept; the heads it covers are not checkpointed"
                );
                return false;
            }
            attempt += 1;
            if logged.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
                logged = Some(Instant::now());
                tracing::warn!(counter = cp.counter, attempt, %reason, "keeping a history checkpoint failed; retrying");
            }
            tokio::time::sleep(super::worker::backoff(attempt, self.backoff_max)).await;
        }
    }
}
