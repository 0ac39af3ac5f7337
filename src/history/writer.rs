//! The handle to the background history writer.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::audit::CheckpointLog;
use super::checkpoint::{Checkpoint, WriterId};
use super::checkpointer::{CheckpointShared, Checkpointer};
use super::entry::Draft;
use super::sink::{CheckpointSink, TracingSink};
use super::worker::{Msg, Worker};
use crate::SessionId;
use crate::credential::TokenHash;
use crate::error::{ConfigError, Error, ErrorKind};
use crate::key::KeyRing;
use crate::store::{DynHistoryStore, HistoryStore};

/// Settings of the history writer. Every default is a starting point
/// measured on a 2-core machine with a local Redis; see each setter.
///
/// ```
/// use session_trail::history::WriterConfig;
/// use std::time::Duration;
///
/// let config = WriterConfig::default()
///     .batch_entries(256)
///     .flush_interval(Duration::from_millis(20));
/// assert!(config.validate().is_ok());
/// assert!(WriterConfig::default().batch_entries(0).validate().is_err());
/// ```
#[derive(Clone, Debug)]
pub struct WriterConfig {
    pub(crate) queue_entries: usize,
    pub(crate) queue_bytes: usize,
    pub(crate) batch_entries: usize,
    /// Whether `batch_entries` was set; if not, the store's
    /// [`preferred_batch_entries`](HistoryStore::preferred_batch_entries)
    /// applies.
    pub(crate) batch_entries_set: bool,
    pub(crate) flush_interval: Duration,
    pub(crate) attempt_timeout: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) flush_timeout: Duration,
    /// Uses of a replaced token within this long of its replacement are
    /// requests in flight at the rotation, not suspicious (the layer sets
    /// it to its rotation grace). Also the rate limit of dead-token
    /// `suspicious` entries: one per session per window.
    pub(crate) dead_token_window: Duration,
    /// At most one dead-credential `suspicious` entry per session per this
    /// long: the grace window, but never under [`MIN_DEAD_SIGNAL_EVERY`].
    pub(crate) dead_signal_every: Duration,
    /// At most one refused cross-site request's `suspicious` entry per
    /// session token per this long: the layer sets it to its absolute
    /// timeout, so a credential token gets one such entry in its life, and a
    /// hostile page cannot push the session's history out through keep-N.
    pub(crate) csrf_signal_every: Duration,
    /// `None`: no checkpoints.
    pub(crate) checkpoint_interval: Option<Duration>,
    /// `None`: the [`TracingSink`].
    pub(crate) checkpoint_sink: Option<SinkHandle>,
}

/// A checkpoint sink in the writer's settings.
#[derive(Clone)]
pub(crate) struct SinkHandle(pub(crate) Arc<dyn CheckpointSink>);

impl fmt::Debug for SinkHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CheckpointSink")
    }
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            queue_entries: 65_536,
            queue_bytes: 32 << 20,
            batch_entries: 512,
            batch_entries_set: false,
            flush_interval: Duration::from_millis(50),
            attempt_timeout: Duration::from_secs(2),
            backoff_max: Duration::from_secs(2),
            flush_timeout: Duration::from_secs(10),
            dead_token_window: Duration::from_secs(10),
            dead_signal_every: Duration::from_secs(10),
            csrf_signal_every: Duration::from_secs(12 * 3600),
            checkpoint_interval: Some(Duration::from_secs(30)),
            checkpoint_sink: None,
        }
    }
}

impl WriterConfig {
    /// Most entries waiting (queued or being written) before new ones are
    /// dropped and counted. Default 65,536: about a second of a busy
    /// server's traffic, so a store hiccup of that length loses nothing.
    pub fn queue_entries(mut self, n: usize) -> Self {
        self.queue_entries = n;
        self
    }

    /// Most bytes of entry bodies waiting. Default 32 MiB, which bounds the
    /// writer's memory during an outage.
    pub fn queue_bytes(mut self, n: usize) -> Self {
        self.queue_bytes = n;
        self
    }

    /// Most entries written in one store round trip. Default: the
    /// store's [`preferred_batch_entries`](HistoryStore::preferred_batch_entries),
    /// else 512: large enough that one round trip carries a burst, small
    /// enough that one batch stays well under a millisecond of Redis time.
    pub fn batch_entries(mut self, n: usize) -> Self {
        self.batch_entries = n;
        self.batch_entries_set = true;
        self
    }

    /// How long the first waiting entry may wait for a batch to fill.
    /// Default 50 ms: history appears well within a second.
    pub fn flush_interval(mut self, d: Duration) -> Self {
        self.flush_interval = d;
        self
    }

    /// How long one write attempt may take before it counts as failed and
    /// is retried (with the same bytes). Default 2 s.
    pub fn attempt_timeout(mut self, d: Duration) -> Self {
        self.attempt_timeout = d;
        self
    }

    /// The longest pause between retries (jittered exponential backoff from
    /// 10 ms). Default 2 s.
    pub fn backoff_max(mut self, d: Duration) -> Self {
        self.backoff_max = d;
        self
    }

    /// How long [`HistoryWriter::flush`] (and the users' controls that
    /// flush first: export and erase) wait before answering
    /// [`ErrorKind::Timeout`] instead of hanging while the store is down or
    /// a session's appends keep failing. Default 10 s.
    pub fn flush_timeout(mut self, d: Duration) -> Self {
        self.flush_timeout = d;
        self
    }

    /// How often the writer signs a checkpoint of the sessions it advanced
    /// (see [`checkpoint`](crate::history::checkpoint)): one per interval
    /// at most, and only after something was written or erased. Default
    /// 30 s: a cut made later than that after an entry was written is
    /// caught.
    pub fn checkpoint_interval(mut self, d: Duration) -> Self {
        self.checkpoint_interval = Some(d);
        self
    }

    /// Signs no checkpoints: cut-off tails and deleted histories go
    /// unnoticed, and erasures made through this writer leave no signed
    /// receipt (other app servers' checkpoints of an erased session then
    /// report it as missing in an audit, until its TTL has passed).
    pub fn no_checkpoints(mut self) -> Self {
        self.checkpoint_interval = None;
        self
    }

    /// Where each checkpoint is copied besides the store. Default
    /// [`TracingSink`]; a [`FileSink`](crate::history::FileSink) keeps the
    /// heads too.
    pub fn checkpoint_sink(mut self, sink: impl CheckpointSink) -> Self {
        self.checkpoint_sink = Some(SinkHandle(Arc::new(sink)));
        self
    }

    /// Checks the settings.
    ///
    /// # Errors
    ///
    /// Names the first setting that is zero.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let checks: [(&'static str, bool); 8] = [
            ("queue_entries", self.queue_entries == 0),
            ("queue_bytes", self.queue_bytes == 0),
            ("batch_entries", self.batch_entries == 0),
            ("flush_interval", self.flush_interval.is_zero()),
            ("attempt_timeout", self.attempt_timeout.is_zero()),
            ("backoff_max", self.backoff_max.is_zero()),
            ("flush_timeout", self.flush_timeout.is_zero()),
            (
                "checkpoint_interval",
                self.checkpoint_interval.is_some_and(|d| d.is_zero()),
            ),
        ];
        for (name, bad) in checks {
            if bad {
                return Err(ConfigError::new(name, "must be greater than zero"));
            }
        }
        Ok(())
    }
}

/// Counters of the history writer, readable at any time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct WriterStats {
    /// Entries accepted into the queue.
    pub enqueued: u64,
    /// Entries acknowledged by the store (gap entries included).
    pub written: u64,
    /// Write attempts that failed and were retried.
    pub retried: u64,
    /// Appends that found another head and were re-chained.
    pub conflicts: u64,
    /// Entries dropped at enqueue because the queue was full or closed (or
    /// because their session's appends kept failing and it already held
    /// its share of the queue). Each is recorded in a signed `gap` entry of
    /// its session, except those counted in `unattributed`.
    pub dropped: u64,
    /// Of `dropped`, those whose sessions got no `gap` entry because too
    /// many sessions had drops pending at once (the writer's memory stays
    /// bounded during a long outage).
    pub unattributed: u64,
    /// Request entries of dead credentials (a replaced, revoked, logged-out
    /// or expired token) that the store refused to append.
    pub refused: u64,
    /// Appends that failed for one session alone (a key of the wrong type,
    /// corrupt stored history, a cluster shard down); the session backs off
    /// on its own, the others go on.
    pub session_failures: u64,
    /// Sessions currently backing off after such failures.
    pub sessions_backing_off: u64,
    /// Entries accepted and not yet acknowledged.
    pub queue_depth: u64,
    /// Age of the oldest entry not yet acknowledged, in milliseconds.
    pub oldest_pending_ms: u64,
    /// Checkpoints signed.
    pub checkpoints_formed: u64,
    /// Checkpoints kept by both the store and the sink.
    pub checkpoints_kept: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) written: AtomicU64,
    pub(crate) retried: AtomicU64,
    pub(crate) conflicts: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) unattributed: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) session_failures: AtomicU64,
    pub(crate) backing_off: AtomicU64,
    /// Milliseconds since `epoch` of the oldest pending entry; `u64::MAX`: none.
    pub(crate) oldest_pending: AtomicU64,
}

/// Entries handed over by the request path, waiting for the task.
pub(crate) struct Incoming {
    pub(crate) session: SessionId,
    pub(crate) drafts: Drafts,
    pub(crate) at: Instant,
}

/// One draft (a request's usual hand-over, with no allocation) or several.
pub(crate) enum Drafts {
    One(Draft),
    Many(Vec<Draft>),
}

impl Drafts {
    pub(crate) fn len(&self) -> usize {
        match self {
            Self::One(_) => 1,
            Self::Many(v) => v.len(),
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Self::One(d) => d.body_len() + 64,
            Self::Many(v) => v.iter().map(|d| d.body_len() + 64).sum(),
        }
    }

    pub(crate) fn into_vec_iter(self) -> impl Iterator<Item = Draft> {
        let (one, many) = match self {
            Self::One(d) => (Some(d), Vec::new()),
            Self::Many(v) => (None, v),
        };
        one.into_iter().chain(many)
    }
}

/// The hand-over between the request path and the task, under one lock:
/// a request takes it once (no other shared counter is touched), and the
/// task takes it once per wake-up and once per finished batch.
#[derive(Default)]
pub(crate) struct Queue {
    /// Entries handed over, not yet taken by the task.
    pub(crate) incoming: Vec<Incoming>,
    /// How many entries `incoming` holds.
    pub(crate) buffered: usize,
    /// Entries accepted and not yet finished (here or in the task), and
    /// their bytes: what the queue limits bound.
    pub(crate) entries: usize,
    pub(crate) bytes: usize,
    /// Entries accepted since the start.
    pub(crate) enqueued: u64,
    /// Set by the task when it sleeps with nothing to do: the next entry
    /// handed over wakes it (and clears this). While it has entries waiting
    /// for their flush interval, new ones wake it only when a batch fills.
    pub(crate) idle: bool,
    /// The task has stopped: nothing more is accepted.
    pub(crate) stopped: bool,
}

pub(crate) struct Shared {
    pub(crate) queue: Mutex<Queue>,
    pub(crate) notify: tokio::sync::Notify,
    pub(crate) counters: Counters,
    pub(crate) config: WriterConfig,
    /// Entries dropped at enqueue, per session, for the gap entries (at
    /// most [`MAX_DROP_SESSIONS`] sessions; the rest are unattributed).
    pub(crate) drops: Mutex<HashMap<SessionId, u64>>,
    /// When each session last got a dead-token `suspicious` entry.
    pub(crate) dead_signals: Mutex<HashMap<SessionId, Instant>>,
    /// When each session last got a refused cross-site request's entry
    /// (apart from `dead_signals`, so a third party's refused requests never
    /// use up the allowance of a replayed credential's entries).
    /// Keyed by session and credential token (a prefix of its hash), so a
    /// holder of a dead credential of the session cannot use up the live
    /// credential's allowance.
    pub(crate) csrf_signals: Mutex<HashMap<(SessionId, [u8; 8]), Instant>>,
    /// When each session last got an `ended` entry for its expiry.
    pub(crate) expiry_entries: Mutex<HashMap<SessionId, Instant>>,
    pub(crate) epoch: Instant,
    pub(crate) store: Arc<dyn DynHistoryStore>,
    pub(crate) ring: KeyRing,
    pub(crate) checkpoints: Option<Arc<CheckpointShared>>,
}

/// A handle to the background task that chains, signs and writes history
/// entries. Cheap to clone.
///
/// The request path only enqueues (never awaits the store); the task
/// batches entries, groups them by session, chains and signs them, and
/// writes each batch with one compare-and-append call, retrying with
/// backoff on failure. Entries are dropped only at enqueue when the queue is
/// full, and each drop is counted and later recorded as a signed `gap`
/// entry in the session's chain.
#[derive(Clone)]
pub struct HistoryWriter {
    shared: Arc<Shared>,
    // Held by handles only: when the last handle is dropped the task sees
    // the channel close, writes what it holds, and stops.
    tx: mpsc::UnboundedSender<Msg>,
}

impl fmt::Debug for HistoryWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HistoryWriter")
            .field("config", &self.shared.config)
            .field("stats", &self.stats())
            .finish()
    }
}

impl HistoryWriter {
    /// Starts a writer on the current Tokio runtime.
    ///
    /// # Errors
    ///
    /// Fails when a setting is invalid, or when called outside a Tokio
    /// runtime.
    pub fn start<H: HistoryStore>(
        store: H,
        ring: KeyRing,
        config: WriterConfig,
    ) -> Result<Self, ConfigError> {
        Self::start_dyn(Arc::new(store), ring, config)
    }

    pub(crate) fn start_dyn(
        store: Arc<dyn DynHistoryStore>,
        ring: KeyRing,
        mut config: WriterConfig,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        if !config.batch_entries_set
            && let Some(n) = store.preferred_batch_entries()
            && n > 0
        {
            config.batch_entries = n;
        }
        let handle = tokio::runtime::Handle::try_current().map_err(|_| {
            ConfigError::new(
                "history",
                "the history writer runs on Tokio: build the layer inside a Tokio runtime",
            )
        })?;
        let (tx, rx) = mpsc::unbounded_channel();
        let checkpointer = config.checkpoint_interval.map(|interval| {
            let sink = config.checkpoint_sink.as_ref().map_or_else(
                || Arc::new(TracingSink) as Arc<dyn CheckpointSink>,
                |s| Arc::clone(&s.0),
            );
            let (task, tx, shared) = Checkpointer::new(
                Arc::clone(&store),
                ring.clone(),
                sink,
                config.attempt_timeout,
                config.backoff_max,
            );
            handle.spawn(task.run());
            (interval, tx, shared)
        });
        let shared = Arc::new(Shared {
            queue: Mutex::default(),
            notify: tokio::sync::Notify::new(),
            counters: Counters {
                oldest_pending: AtomicU64::new(u64::MAX),
                ..Counters::default()
            },
            config,
            drops: Mutex::default(),
            dead_signals: Mutex::default(),
            csrf_signals: Mutex::default(),
            expiry_entries: Mutex::default(),
            epoch: Instant::now(),
            store,
            ring,
            checkpoints: checkpointer.as_ref().map(|c| Arc::clone(&c.2)),
        });
        let checkpoints = checkpointer.map(|(interval, tx, _)| (interval, tx));
        handle.spawn(Worker::new(Arc::clone(&shared), rx, checkpoints).run());
        Ok(Self { shared, tx })
    }

    /// Enqueues a session's entries without waiting (no `await`, no store
    /// access): the request path's only contact with history. Answers
    /// `false` when they were dropped because the queue was full or the
    /// writer had stopped; drops are counted and recorded later as a signed
    /// `gap` entry in the session's chain.
    pub fn enqueue(&self, session: SessionId, drafts: Vec<Draft>) -> bool {
        self.hand_over(session, Drafts::Many(drafts))
    }

    /// [`enqueue`](Self::enqueue) for one draft, without a `Vec`.
    pub(crate) fn enqueue_one(&self, session: SessionId, draft: Draft) -> bool {
        self.hand_over(session, Drafts::One(draft))
    }

    fn hand_over(&self, session: SessionId, drafts: Drafts) -> bool {
        let n = drafts.len();
        if n == 0 {
            return true;
        }
        let bytes = drafts.bytes();
        let s = &self.shared;
        let at = Instant::now();
        let mut q = s.queue();
        if !q.stopped
            && q.entries + n <= s.config.queue_entries
            && q.bytes + bytes <= s.config.queue_bytes
        {
            q.entries += n;
            q.bytes += bytes;
            q.enqueued += n as u64;
            let before = q.buffered;
            q.buffered += n;
            q.incoming.push(Incoming {
                session,
                drafts,
                at,
            });
            let batch = s.config.batch_entries;
            // Under the lock: either the task sees this entry before it
            // sleeps, or this sees it idle.
            let wake = std::mem::take(&mut q.idle) || (before < batch && before + n >= batch);
            drop(q);
            if wake {
                s.notify.notify_one();
            }
            return true;
        }
        drop(q);
        s.record_drop(session, n as u64);
        false
    }

    /// Whether a dead-token `suspicious` entry may be recorded for
    /// `session` now: at most one per session per rotation grace window.
    pub(crate) fn allow_dead_signal(&self, session: SessionId) -> bool {
        self.shared.allow_dead_signal(session, Instant::now())
    }

    /// Whether a refused cross-site request's `suspicious` entry may be
    /// recorded for `session` and its credential `token`: once per token
    /// (per `csrf_signal_every`, its longest life), counted apart from the
    /// dead-token entries. The map is bounded like the others: past 65,536
    /// credentials it is cleared, and a cleared one may get one more entry.
    pub(crate) fn allow_csrf_signal(&self, session: SessionId, token: &TokenHash) -> bool {
        let mut prefix = [0u8; 8];
        prefix.copy_from_slice(&token.as_bytes()[..8]);
        once_per(
            &self.shared.csrf_signals,
            (session, prefix),
            Instant::now(),
            self.shared.config.csrf_signal_every,
        )
    }

    /// Whether an expired session's `ended` entry may be recorded now (once
    /// per session, however many requests race the delete of its record).
    pub(crate) fn allow_expiry_entry(&self, session: SessionId) -> bool {
        self.shared.allow_expiry_entry(session)
    }

    /// Resolves when every entry enqueued before this call is acknowledged
    /// by the store (or, for a dead credential's request entry, refused).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Timeout`] when that did not happen within the
    /// [`flush_timeout`](WriterConfig::flush_timeout) (the store is down,
    /// or some session's appends keep failing); [`ErrorKind::Closed`] when
    /// the writer has shut down.
    pub async fn flush(&self) -> Result<(), Error> {
        self.flush_inner(None).await
    }

    /// [`flush`](Self::flush) for the entries of some sessions only: a
    /// session whose appends keep failing delays no one else's flush.
    pub(crate) async fn flush_sessions(&self, sessions: Vec<SessionId>) -> Result<(), Error> {
        self.flush_inner(Some(sessions)).await
    }

    async fn flush_inner(&self, sessions: Option<Vec<SessionId>>) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Msg::Flush {
                sessions,
                reply: tx,
            })
            .map_err(|_| closed())?;
        let limit = self.shared.config.flush_timeout;
        match tokio::time::timeout(limit, rx).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(closed()),
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "history entries were not all written within the flush timeout ({limit:?})"
                ),
            )),
        }
    }

    /// Writes everything queued, signs a last checkpoint of it, and stops
    /// the writer, waiting at most `deadline`. Entries enqueued afterwards
    /// are dropped and counted.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Timeout`] when entries were still unwritten at the
    /// deadline (they are counted in [`WriterStats::queue_depth`]), or the
    /// last checkpoint was not kept by then (the heads it covered are not
    /// checkpointed); [`ErrorKind::Closed`] when the writer had already
    /// stopped.
    pub async fn shutdown(&self, deadline: Duration) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        let until = Instant::now() + deadline;
        self.tx
            .send(Msg::Shutdown { until, reply: tx })
            .map_err(|_| closed())?;
        if let Some(cp) = &self.shared.checkpoints {
            *cp.stop.lock().unwrap_or_else(|p| p.into_inner()) = Some(until);
        }
        let left = rx.await;
        if let (Ok(0), Some(cp)) = (&left, &self.shared.checkpoints) {
            // The last checkpoint covers what was written up to the end.
            let mut done = cp.done.clone();
            let kept = tokio::time::timeout_at(until.into(), done.wait_for(|d| *d)).await;
            if !matches!(kept, Ok(Ok(_))) || cp.gave_up.load(Ordering::SeqCst) {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    "the last history checkpoint was not kept before the shutdown deadline",
                ));
            }
        }
        match left {
            Ok(0) => Ok(()),
            Ok(left) => Err(Error::new(
                ErrorKind::Timeout,
                format!("{left} history entries were not written before the shutdown deadline"),
            )),
            Err(_) => Err(closed()),
        }
    }

    /// The writer's counters.
    pub fn stats(&self) -> WriterStats {
        let c = &self.shared.counters;
        let oldest = c.oldest_pending.load(Ordering::Relaxed);
        let oldest_pending_ms = if oldest == u64::MAX {
            0
        } else {
            (self.shared.epoch.elapsed().as_millis() as u64).saturating_sub(oldest)
        };
        let (enqueued, depth) = {
            let q = self.shared.queue();
            (q.enqueued, q.entries)
        };
        WriterStats {
            enqueued,
            written: c.written.load(Ordering::Relaxed),
            retried: c.retried.load(Ordering::Relaxed),
            conflicts: c.conflicts.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            unattributed: c.unattributed.load(Ordering::Relaxed),
            refused: c.refused.load(Ordering::Relaxed),
            session_failures: c.session_failures.load(Ordering::Relaxed),
            sessions_backing_off: c.backing_off.load(Ordering::Relaxed),
            queue_depth: depth as u64,
            oldest_pending_ms,
            checkpoints_formed: self
                .shared
                .checkpoints
                .as_ref()
                .map_or(0, |c| c.formed.load(Ordering::Relaxed)),
            checkpoints_kept: self
                .shared
                .checkpoints
                .as_ref()
                .map_or(0, |c| c.kept.load(Ordering::Relaxed)),
        }
    }

    /// Writes what is queued, then signs a checkpoint of every session
    /// advanced since the last one (if any was), and waits until the store
    /// and the sink keep it. For tests, and for an application that wants
    /// a checkpoint at a moment of its choosing (before a deploy).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Timeout`] when the writes or the checkpoint took longer
    /// than the [flush timeout](WriterConfig::flush_timeout);
    /// [`ErrorKind::Closed`] when the writer has stopped or signs no
    /// checkpoints.
    pub async fn checkpoint(&self) -> Result<(), Error> {
        if self.shared.checkpoints.is_none() {
            return Err(Error::new(
                ErrorKind::Closed,
                "this history writer signs no checkpoints",
            ));
        }
        self.flush().await?;
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Msg::Checkpoint { reply: tx })
            .map_err(|_| closed())?;
        match tokio::time::timeout(self.shared.config.flush_timeout, rx).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(closed()),
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                "the history checkpoint was not kept within the flush timeout",
            )),
        }
    }

    /// The id of this writer's checkpoint chain; `None` when it signs no
    /// checkpoints.
    pub fn writer_id(&self) -> Option<WriterId> {
        self.shared.checkpoints.as_ref().map(|c| c.writer)
    }

    /// Reads every checkpoint the store keeps and checks them, with
    /// `outside`, a copy kept elsewhere (a [`FileSink`](super::FileSink)'s
    /// file, read with [`FileSink::read`](super::FileSink::read)), against
    /// which what the store lost or altered is reported.
    ///
    /// # Errors
    ///
    /// When the store cannot answer.
    pub async fn checkpoint_log(&self, outside: &[Checkpoint]) -> Result<CheckpointLog, Error> {
        let store = &self.shared.store;
        let (retention, now) = (store.retention(), crate::util::now_ms());
        if !store.keeps_checkpoints() {
            return Ok(CheckpointLog::outside_only(
                &self.shared.ring,
                outside,
                retention,
                now,
            ));
        }
        let stored = store.checkpoints().await?;
        Ok(CheckpointLog::new(
            &self.shared.ring,
            &stored,
            outside,
            retention,
            now,
        ))
    }

    /// Reads every stored entry of a session and verifies them against
    /// `log` ([`verify_checkpointed`](super::verify_checkpointed)).
    ///
    /// # Errors
    ///
    /// When the store cannot answer.
    pub async fn audit(
        &self,
        session: &SessionId,
        log: &CheckpointLog,
    ) -> Result<super::Verification, Error> {
        let entries = self.shared.store.read_all(session).await?;
        let options = super::Options {
            keep: self.shared.store.retention().keep,
            window: false,
        };
        Ok(super::verify_checkpointed(
            &self.shared.ring,
            session,
            &entries,
            options,
            log,
        ))
    }

    /// Verifies a page read by the layer against this writer's own
    /// checkpoints. A history shorter than they attest may have been
    /// erased through another app server, whose receipt this one has not
    /// seen: the store's erasure marker is asked then, and only then.
    pub(crate) async fn verify_read(
        &self,
        session: &SessionId,
        entries: &[bytes::Bytes],
        options: super::Options,
    ) -> super::Verification {
        let ring = &self.shared.ring;
        let Some(cp) = &self.shared.checkpoints else {
            return super::verify(ring, session, entries, options);
        };
        let own = |cp: &CheckpointShared| {
            let log = cp.log.lock().unwrap_or_else(|p| p.into_inner());
            log.for_session(session, crate::util::now_ms())
        };
        let v = super::verify_checkpointed(ring, session, entries, options, &own(cp));
        if !v.breaks.iter().any(|b| b.kind.is_checkpoint()) {
            return v;
        }
        match self.shared.store.erased_at(session).await {
            Ok(Some(at)) => {
                // An unsigned value from the store: never in the future.
                let at = at.min(crate::util::now_ms());
                cp.log
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .note_erasure(*session, None, at);
                super::verify_checkpointed(ring, session, entries, options, &own(cp))
            }
            _ => v,
        }
    }

    /// Records a signed receipt of an erased history in the next
    /// checkpoint.
    pub(crate) fn erased(&self, session: SessionId) {
        if let Some(cp) = &self.shared.checkpoints {
            let at = cp.now_ms();
            // This writer's reads know at once; others learn it from the
            // receipt in the next checkpoint.
            cp.log
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .note_erasure(session, Some(cp.writer), at);
            let _ = self.tx.send(Msg::Erased { session, at });
        }
    }

    /// Entries of `session` that this writer holds and the store may not
    /// have yet (read-your-own-writes). `None` when the writer is gone.
    pub(crate) async fn pending(&self, session: SessionId) -> Option<Vec<Draft>> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Msg::Pending { session, reply: tx }).ok()?;
        rx.await.ok()
    }

    /// Before `sessions`' histories are erased: drops what is queued for
    /// them up to `mark` and their cached heads.
    ///
    /// Resolves once no append in flight holds their entries, so none of
    /// those enqueued before `mark` can land after the caller deletes the
    /// histories; at most the flush timeout for all of them together (an
    /// append still failing then is taken back and re-formed without the
    /// erased entries before it is tried again).
    pub(crate) async fn forget(&self, sessions: &[SessionId], mark: u64) {
        let mut replies = Vec::with_capacity(sessions.len());
        for &session in sessions {
            let (tx, rx) = oneshot::channel();
            let msg = Msg::Forget {
                session,
                mark,
                reply: tx,
            };
            if self.tx.send(msg).is_err() {
                return;
            }
            replies.push(rx);
        }
        let all = futures_util::future::join_all(replies);
        let _ = tokio::time::timeout(self.shared.config.flush_timeout, all).await;
    }

    /// How many entries were accepted so far: the ordinal of the last one.
    /// Entries enqueued after this call have higher ordinals.
    pub(crate) fn enqueued_mark(&self) -> u64 {
        self.shared.queue().enqueued
    }

    pub(crate) fn ring(&self) -> &KeyRing {
        &self.shared.ring
    }

    pub(crate) fn store(&self) -> &Arc<dyn DynHistoryStore> {
        &self.shared.store
    }
}

/// The shortest rate limit of dead-credential `suspicious` entries, so a
/// short (or zero) rotation grace cannot let an old cookie fill a history.
pub(crate) const MIN_DEAD_SIGNAL_EVERY: Duration = Duration::from_secs(10);

/// Most sessions whose drops wait for a `gap` entry at once; drops of
/// further sessions are counted as unattributed, so a long outage cannot
/// grow the writer's memory without bound.
pub(crate) const MAX_DROP_SESSIONS: usize = 65_536;

impl Shared {
    pub(crate) fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts `n` entries of `session` as dropped, for its next gap entry.
    pub(crate) fn record_drop(&self, session: SessionId, n: u64) {
        self.counters.dropped.fetch_add(n, Ordering::Relaxed);
        let mut drops = self.drops.lock().unwrap_or_else(|e| e.into_inner());
        let first = drops.is_empty();
        if let Some(count) = drops.get_mut(&session) {
            *count += n;
        } else if drops.len() < MAX_DROP_SESSIONS {
            drops.insert(session, n);
        } else {
            self.counters.unattributed.fetch_add(n, Ordering::Relaxed);
        }
        drop(drops);
        if first {
            // Once per burst: the writer summarises in its gap entries.
            tracing::warn!(%session, dropped = n, "history queue full; entries dropped (gap entries will record it)");
        }
    }

    pub(crate) fn allow_dead_signal(&self, session: SessionId, now: Instant) -> bool {
        once_per(
            &self.dead_signals,
            session,
            now,
            self.config.dead_signal_every,
        )
    }

    /// Whether an expired session's `ended` entry may be recorded now: once,
    /// however many requests race the delete of its record.
    pub(crate) fn allow_expiry_entry(&self, session: SessionId) -> bool {
        once_per(
            &self.expiry_entries,
            session,
            Instant::now(),
            self.config.dead_signal_every,
        )
    }
}

/// Whether `session` may have one more of something now: at most once per
/// `window`, with a map bounded by [`MAX_DROP_SESSIONS`].
fn once_per<K: std::hash::Hash + Eq>(
    map: &Mutex<HashMap<K, Instant>>,
    session: K,
    now: Instant,
    window: Duration,
) -> bool {
    let mut seen = map.lock().unwrap_or_else(|e| e.into_inner());
    {
        if seen
            .get(&session)
            .is_some_and(|t| now.saturating_duration_since(*t) < window)
        {
            return false;
        }
        if seen.len() >= MAX_DROP_SESSIONS {
            // Amortised: once per this many sessions. A session forgotten
            // here may get one more entry in its window, no more.
            seen.retain(|_, t| now.saturating_duration_since(*t) < window);
            if seen.len() >= MAX_DROP_SESSIONS / 2 {
                seen.clear();
            }
        }
        seen.insert(session, now);
        true
    }
}

fn closed() -> Error {
    Error::new(ErrorKind::Closed, "the history writer has stopped")
}
