//! The background task behind [`HistoryWriter`](super::HistoryWriter).

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use super::checkpointer::Advance;
use super::entry::{Draft, EntryKind, TAG_LEN, parse};
use super::writer::{Incoming, MAX_DROP_SESSIONS, Shared};
use crate::SessionId;
use crate::credential::TokenHash;
use crate::store::{Append, AppendOutcome, tag_of};

pub(crate) enum Msg {
    /// Resolve once the entries enqueued before it (of these sessions, or
    /// of all) are finished.
    Flush {
        sessions: Option<Vec<SessionId>>,
        reply: oneshot::Sender<()>,
    },
    Pending {
        session: SessionId,
        reply: oneshot::Sender<Vec<Draft>>,
    },
    Shutdown {
        until: Instant,
        reply: oneshot::Sender<usize>,
    },
    /// The session's history was erased: drop its cached head, and its
    /// entries enqueued up to the mark (before the erase began).
    Forget {
        session: SessionId,
        mark: u64,
        /// Answered once no append in flight holds the session's entries
        /// (so none of them can land after the caller deletes the history).
        reply: oneshot::Sender<()>,
    },
    /// Hand the advanced heads to the checkpointer now; answered once it
    /// kept them.
    Checkpoint { reply: oneshot::Sender<()> },
    /// This history was erased at `at`: a receipt for the next checkpoint.
    Erased { session: SessionId, at: i64 },
}

struct Item {
    draft: Draft,
    /// `None` for entries the writer made itself (gap and suspicious
    /// entries).
    ordinal: Option<u64>,
    /// The session's pending `gap` entry: its count lives in
    /// [`Sess::dropped`] and its body is made when it is signed, so a
    /// session never holds more than one.
    gap: bool,
}

impl Item {
    fn own(draft: Draft) -> Self {
        Self {
            draft,
            ordinal: None,
            gap: false,
        }
    }
}

fn gap_draft(dropped: u64) -> Draft {
    Draft::lifecycle(
        EntryKind::Gap,
        &json!({"reason": "queue_full", "dropped": dropped}),
    )
}

/// Most entries one session may hold in the writer; later ones are dropped
/// into its gap count, so one session (failing, or fed by a client that
/// alternates a live and a dead credential) cannot take the whole queue.
const SESSION_CAP: usize = 1024;

/// How many dead tokens a session remembers, to refuse their entries
/// without asking the store again.
const DEAD_TOKENS: usize = 4;

/// How often a persisting outage or failing session is logged again.
const LOG_EVERY: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Sess {
    /// The head we chain onto: `None` when the list is (believed) empty.
    head: Option<(u64, [u8; TAG_LEN])>,
    /// The highest `seq` the store acknowledged to us since the head was
    /// last learned; a store answering with less has lost entries.
    acked_seq: u64,
    pending: VecDeque<Item>,
    in_flight: bool,
    /// In `order`.
    queued: bool,
    /// Backing off after failures of its own, until then.
    parked: Option<Instant>,
    failures: u32,
    /// Entries dropped for this session, for its pending gap entry.
    dropped: u64,
    /// An earlier attempt of its entries may have been applied without an
    /// answer: before re-chaining after a conflict, the stored tail is
    /// checked for them.
    maybe_applied: bool,
    /// Tokens the store said are not the session's (newest last).
    dead: Vec<TokenHash>,
    /// The session's history was erased: entries with ordinals up to this
    /// were enqueued before, and are dropped rather than written.
    erased_upto: u64,
    /// When the first batch holding entries of this session not yet
    /// acknowledged was formed (the writer's clock): none of them was
    /// written before, whichever attempt the store applied.
    first_sent: Option<i64>,
}

impl Sess {
    fn is_dead(&self, token: Option<TokenHash>) -> bool {
        token.is_some_and(|t| self.dead.iter().any(|d| d.ct_eq(&t)))
    }
}

struct Part {
    session: SessionId,
    items: Vec<Item>,
    first_seq: u64,
    token: Option<TokenHash>,
    maybe_applied: bool,
}

struct InFlight {
    /// When it was formed (Unix milliseconds): none of its appends was sent
    /// before.
    formed_ms: i64,
    appends: Vec<Append>,
    parts: Vec<Part>,
    attempts: u32,
    retry_at: Instant,
}

/// A store outage (whole batches failing), for rate-limited logs.
struct Outage {
    since: Instant,
    attempts: u64,
    logged: Instant,
}

struct FlushWait {
    /// Entries up to this ordinal must be finished.
    mark: u64,
    sessions: Option<Vec<SessionId>>,
    reply: oneshot::Sender<()>,
}

pub(crate) struct Worker {
    shared: Arc<Shared>,
    rx: mpsc::UnboundedReceiver<Msg>,
    sessions: HashMap<SessionId, Sess>,
    /// Sessions with pending entries that may be sent, oldest first.
    order: VecDeque<SessionId>,
    /// Pending entries in all sessions (parked ones included).
    pending_total: usize,
    /// Of those, the entries of parked sessions.
    parked_items: usize,
    /// Parked sessions by the time they may try again.
    parked: BTreeSet<(Instant, SessionId)>,
    /// Sessions with a pending gap entry.
    gap_sessions: usize,
    first_pending_at: Option<Instant>,
    /// Accepted entries not yet acknowledged, with their enqueue times.
    outstanding: Outstanding,
    next_ordinal: u64,
    flushes: Vec<FlushWait>,
    in_flight: Option<InFlight>,
    shutdown: Option<(Instant, oneshot::Sender<usize>)>,
    closed: bool,
    outage: Option<Outage>,
    failing_logged: Option<Instant>,
    /// Erasures waiting for a session's append in flight to finish.
    forget_waits: Vec<(SessionId, oneshot::Sender<()>)>,
    checkpoints: Option<Checkpoints>,
}

/// The heads advanced since the last checkpoint, and when to hand them on.
struct Checkpoints {
    interval: Duration,
    tx: mpsc::UnboundedSender<Advance>,
    advance: Advance,
    due: Option<Instant>,
}

impl Checkpoints {
    fn touched(&mut self, now: Instant) {
        if self.due.is_none() {
            self.due = Some(now + self.interval);
        }
    }

    fn hand_over(&mut self) {
        self.due = None;
        let _ = self.tx.send(std::mem::take(&mut self.advance));
    }
}

impl Worker {
    pub(crate) fn new(
        shared: Arc<Shared>,
        rx: mpsc::UnboundedReceiver<Msg>,
        checkpoints: Option<(Duration, mpsc::UnboundedSender<Advance>)>,
    ) -> Self {
        Self {
            shared,
            rx,
            sessions: HashMap::new(),
            order: VecDeque::new(),
            pending_total: 0,
            parked_items: 0,
            parked: BTreeSet::new(),
            gap_sessions: 0,
            first_pending_at: None,
            outstanding: Outstanding::default(),
            next_ordinal: 1,
            flushes: Vec::new(),
            in_flight: None,
            shutdown: None,
            closed: false,
            outage: None,
            failing_logged: None,
            forget_waits: Vec::new(),
            checkpoints: checkpoints.map(|(interval, tx)| Checkpoints {
                interval,
                tx,
                advance: Advance::default(),
                due: None,
            }),
        }
    }

    pub(crate) async fn run(mut self) {
        loop {
            self.take_buffer();
            self.collect_drops();
            let now = Instant::now();
            self.unpark(now);
            if self.finished(now) {
                break;
            }
            let wake = self.next_wake(now);
            if wake.is_none() {
                // Nothing to do: sleep until an entry arrives. Announced under
                // the queue's lock, so an entry handed over meanwhile is
                // either seen here or wakes the task.
                let mut q = self.shared.queue();
                if q.buffered > 0 {
                    continue;
                }
                q.idle = true;
            }
            // A checkpoint due wakes the task too, but leaves it idle: an
            // entry handed over meanwhile still wakes it at once.
            let wake = match (wake, self.checkpoints.as_ref().and_then(|c| c.due)) {
                (Some(w), Some(d)) => Some(w.min(d)),
                (w, d) => w.or(d),
            };
            let listening = !self.closed;
            let shared = Arc::clone(&self.shared);
            tokio::select! {
                biased;
                m = self.rx.recv(), if listening => match m {
                    Some(m) => self.handle(m),
                    None => self.closed = true,
                },
                () = shared.notify.notified() => {}
                () = sleep_until_opt(wake) => {}
            }
            // Take whatever else is already waiting, so batches fill.
            for _ in 0..4096 {
                match self.rx.try_recv() {
                    Ok(m) => self.handle(m),
                    Err(_) => break,
                }
            }
            self.take_buffer();
            self.collect_drops();
            let now = Instant::now();
            self.unpark(now);
            if let Some(f) = &self.in_flight {
                if f.retry_at <= now {
                    self.attempt().await;
                }
            } else if self.should_send(now) {
                self.form_batch();
                self.attempt().await;
            }
            if let Some(c) = &mut self.checkpoints
                && c.due.is_some_and(|d| d <= Instant::now())
            {
                c.hand_over();
            }
            // Publish the counters before answering flushes, so a caller
            // whose flush resolved reads current figures.
            self.publish();
            self.resolve_flushes();
        }
        // The last checkpoint covers everything written. Without a
        // shutdown's deadline, keeping it may take the flush timeout.
        if let Some(c) = &mut self.checkpoints {
            if !c.advance.is_empty() {
                c.hand_over();
            }
            if let Some(cp) = &self.shared.checkpoints {
                let mut stop = cp.stop.lock().unwrap_or_else(|p| p.into_inner());
                stop.get_or_insert(Instant::now() + self.shared.config.flush_timeout);
            }
        }
        // Anything handed over after the last look is dropped, and counted.
        let left: Vec<Incoming> = {
            let mut q = self.shared.queue();
            q.stopped = true;
            q.buffered = 0;
            std::mem::take(&mut q.incoming)
        };
        for incoming in left {
            let n = incoming.drafts.len();
            self.shared
                .counters
                .dropped
                .fetch_add(n as u64, Ordering::Relaxed);
        }
        self.publish();
    }

    /// The writer's clock: the checkpoints' (which never goes back) when it
    /// signs them.
    fn now_ms(&self) -> i64 {
        self.shared
            .checkpoints
            .as_ref()
            .map_or_else(crate::util::now_ms, |c| c.now_ms())
    }

    /// Takes the entries the request path handed over.
    fn take_buffer(&mut self) {
        let incoming: Vec<Incoming> = {
            let mut q = self.shared.queue();
            if q.incoming.is_empty() {
                return;
            }
            q.buffered = 0;
            std::mem::take(&mut q.incoming)
        };
        for Incoming {
            session,
            drafts,
            at,
        } in incoming
        {
            for draft in drafts.into_vec_iter() {
                let ordinal = self.next_ordinal;
                self.next_ordinal += 1;
                self.outstanding.insert(ordinal, at);
                self.push(
                    session,
                    Item {
                        draft,
                        ordinal: Some(ordinal),
                        gap: false,
                    },
                );
            }
        }
    }

    /// Whether the task should stop, answering a pending shutdown.
    fn finished(&mut self, now: Instant) -> bool {
        let idle = self.pending_total == 0 && self.in_flight.is_none();
        if let Some((until, _)) = &self.shutdown {
            if idle || now >= *until {
                let left = self.outstanding.len();
                if let Some((_, reply)) = self.shutdown.take() {
                    let _ = reply.send(left);
                }
                self.rx.close();
                return true;
            }
            return false;
        }
        self.closed && idle
    }

    fn sendable(&self) -> usize {
        self.pending_total - self.parked_items
    }

    fn next_wake(&self, now: Instant) -> Option<Instant> {
        let mut wake = if let Some(f) = &self.in_flight {
            Some(f.retry_at)
        } else if self.sendable() == 0 {
            None
        } else if self.should_send(now) {
            Some(now)
        } else {
            self.first_pending_at
                .map(|t| t + self.shared.config.flush_interval)
        };
        if let Some(&(at, _)) = self.parked.first() {
            wake = Some(wake.map_or(at, |w| w.min(at)));
        }
        if let Some((until, _)) = &self.shutdown {
            wake = Some(wake.map_or(*until, |w| w.min(*until)));
        }
        wake
    }

    fn should_send(&self, now: Instant) -> bool {
        if self.sendable() == 0 {
            return false;
        }
        self.sendable() >= self.shared.config.batch_entries
            || !self.flushes.is_empty()
            || self.shutdown.is_some()
            || self.closed
            || self
                .first_pending_at
                .is_some_and(|t| now >= t + self.shared.config.flush_interval)
    }

    fn handle(&mut self, msg: Msg) {
        // Every entry handed over before this message was sent is taken
        // first, so flushes and reads see them.
        self.take_buffer();
        match msg {
            Msg::Flush { sessions, reply } => {
                self.flushes.push(FlushWait {
                    mark: self.next_ordinal - 1,
                    sessions,
                    reply,
                });
                self.resolve_flushes();
            }
            Msg::Pending { session, reply } => {
                let mut drafts = Vec::new();
                if let Some(f) = &self.in_flight {
                    for part in f.parts.iter().filter(|p| p.session == session) {
                        drafts.extend(part.items.iter().map(|i| i.draft.clone()));
                    }
                }
                if let Some(s) = self.sessions.get(&session) {
                    drafts.extend(s.pending.iter().map(|i| {
                        if i.gap {
                            gap_draft(s.dropped)
                        } else {
                            i.draft.clone()
                        }
                    }));
                }
                let _ = reply.send(drafts);
            }
            Msg::Shutdown { until, reply } => {
                self.shutdown = Some((until, reply));
            }
            Msg::Forget {
                session,
                mark,
                reply,
            } => {
                // Drops counted before the erase belong to the erased
                // history: take them in first, so its gap goes too.
                self.collect_drops();
                self.forget(session, mark);
                if self.sessions.get(&session).is_some_and(|s| s.in_flight) {
                    self.forget_waits.push((session, reply));
                } else {
                    let _ = reply.send(());
                }
            }
            Msg::Checkpoint { reply } => match &mut self.checkpoints {
                Some(c) => {
                    c.advance.replies.push(reply);
                    c.hand_over();
                }
                None => drop(reply),
            },
            Msg::Erased { session, at } => {
                if let Some(c) = &mut self.checkpoints {
                    c.advance.erased(session, at);
                    c.touched(Instant::now());
                }
            }
        }
    }

    /// The session's history was erased. Entries enqueued before the erase
    /// began (ordinals up to `mark`: the erase flushed them first, unless
    /// the session's appends were failing) are dropped, with its pending
    /// gap, and so are those of an append in flight if they come back;
    /// what was enqueued after is kept. The cached head is dropped, so the
    /// next append starts a new chain (an erasure is never a loss).
    fn forget(&mut self, session: SessionId, mark: u64) {
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        s.erased_upto = s.erased_upto.max(mark);
        let (old, keep): (Vec<Item>, Vec<Item>) = s
            .pending
            .drain(..)
            .partition(|i| i.gap || i.ordinal.is_some_and(|o| o <= mark));
        s.pending.extend(keep);
        if old.iter().any(|i| i.gap) {
            s.dropped = 0;
            self.gap_sessions -= 1;
        }
        let parked = s.parked.is_some();
        if !s.in_flight {
            // In flight, its answer sets the head; a conflict with the
            // erasure marker then re-chains it.
            s.head = None;
            s.acked_seq = 0;
            s.maybe_applied = false;
            // What is written next belongs to the new history: it is dated
            // by its own batch, not by an attempt from before the erasure.
            s.first_sent = None;
        }
        self.pending_total -= old.len();
        if parked {
            self.parked_items -= old.len();
        }
        self.release(&old);
    }

    /// Gives back the queue space of accepted entries that are done
    /// (written, refused, or erased before they were).
    fn release(&mut self, items: &[Item]) {
        let mut released = 0;
        let mut bytes = 0;
        for item in items {
            if let Some(o) = item.ordinal {
                self.outstanding.remove(o);
                released += 1;
                bytes += item.draft.body_len() + 64;
            }
        }
        if released > 0 {
            let mut q = self.shared.queue();
            q.entries -= released;
            q.bytes -= bytes;
        }
    }

    fn push(&mut self, session: SessionId, item: Item) {
        let s = self.sessions.entry(session).or_default();
        if s.is_dead(item.draft.token) {
            // The store already refused this token for this session.
            self.shared.counters.refused.fetch_add(1, Ordering::Relaxed);
            self.release(std::slice::from_ref(&item));
            return;
        }
        if s.pending.len() >= SESSION_CAP && item.ordinal.is_some() {
            // A session keeps at most its share; the rest becomes its gap
            // count.
            s.dropped += 1;
            let needs_gap = !s.pending.iter().any(|i| i.gap);
            self.shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
            self.release(std::slice::from_ref(&item));
            if needs_gap {
                self.push_gap(session);
            }
            return;
        }
        s.pending.push_back(item);
        self.counted_pending(session);
    }

    /// Adds the session's (single) pending gap entry.
    fn push_gap(&mut self, session: SessionId) {
        self.gap_sessions += 1;
        let s = self.sessions.entry(session).or_default();
        let item = Item {
            draft: gap_draft(s.dropped),
            ordinal: None,
            gap: true,
        };
        s.pending.push_front(item);
        self.counted_pending(session);
    }

    /// Counts one entry just added to `session`'s pending ones, and queues
    /// the session to be sent unless it is backing off.
    fn counted_pending(&mut self, session: SessionId) {
        self.pending_total += 1;
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        if s.parked.is_some() {
            self.parked_items += 1;
            return;
        }
        if !s.queued {
            s.queued = true;
            self.order.push_back(session);
        }
        self.first_pending_at.get_or_insert_with(Instant::now);
    }

    fn collect_drops(&mut self) {
        let drops = {
            let mut map = self.shared.drops.lock().unwrap_or_else(|e| e.into_inner());
            if map.is_empty() {
                return;
            }
            std::mem::take(&mut *map)
        };
        for (session, dropped) in drops {
            let has_gap = self
                .sessions
                .get(&session)
                .is_some_and(|s| s.pending.iter().any(|i| i.gap));
            // Checked before a session is added: the writer's memory stays
            // bounded however long an outage lasts.
            if !has_gap && self.gap_sessions >= MAX_DROP_SESSIONS {
                self.shared
                    .counters
                    .unattributed
                    .fetch_add(dropped, Ordering::Relaxed);
                continue;
            }
            let s = self.sessions.entry(session).or_default();
            s.dropped += dropped;
            if !has_gap {
                self.push_gap(session);
            }
        }
    }

    /// Puts a session aside until `until`, with its pending entries.
    fn park(&mut self, session: SessionId, until: Instant) {
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        if s.parked.is_some() {
            return;
        }
        s.parked = Some(until);
        self.parked_items += s.pending.len();
        self.parked.insert((until, session));
        if s.queued {
            s.queued = false;
            self.order.retain(|o| *o != session);
        }
        if self.sendable() == 0 {
            self.first_pending_at = None;
        }
    }

    /// Lets parked sessions whose time has come try again.
    fn unpark(&mut self, now: Instant) {
        while let Some(&(at, session)) = self.parked.first() {
            if at > now {
                break;
            }
            self.parked.pop_first();
            let Some(s) = self.sessions.get_mut(&session) else {
                continue;
            };
            s.parked = None;
            self.parked_items -= s.pending.len();
            if !s.pending.is_empty() && !s.queued {
                s.queued = true;
                self.order.push_front(session);
                self.first_pending_at.get_or_insert(now);
            }
        }
    }

    fn form_batch(&mut self) {
        let limit = self.shared.config.batch_entries;
        let key = self.shared.ring.current().clone();
        let mut taken = 0;
        let mut appends = Vec::new();
        let mut parts = Vec::new();
        let mut skipped = Vec::new();
        let formed_ms = self.now_ms();
        while taken < limit {
            let Some(session) = self.order.pop_front() else {
                break;
            };
            let Some(s) = self.sessions.get_mut(&session) else {
                continue;
            };
            if s.in_flight {
                skipped.push(session);
                continue;
            }
            // One append names at most one token: take entries up to the
            // first that needs another.
            let mut token: Option<TokenHash> = None;
            let mut n = 0;
            for item in s.pending.iter().take(limit - taken) {
                if let Some(t) = item.draft.token {
                    match token {
                        None => token = Some(t),
                        Some(held) if !held.ct_eq(&t) => break,
                        Some(_) => {}
                    }
                }
                n += 1;
            }
            let mut items: Vec<Item> = s.pending.drain(..n).collect();
            if s.pending.is_empty() {
                s.queued = false;
            } else {
                skipped.push(session);
            }
            if items.is_empty() {
                continue;
            }
            taken += n;
            for item in items.iter_mut().filter(|i| i.gap) {
                item.draft = gap_draft(std::mem::take(&mut s.dropped));
                item.gap = false;
                self.gap_sessions -= 1;
            }
            let (base_seq, base_tag) = s.head.unwrap_or((0, [0; TAG_LEN]));
            let mut prev = base_tag;
            let mut entries = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let bytes = item
                    .draft
                    .sign(&key, &session, base_seq + 1 + i as u64, &prev);
                prev = tag_of(&bytes).unwrap_or([0; TAG_LEN]);
                entries.push(bytes);
            }
            s.in_flight = true;
            s.first_sent.get_or_insert(formed_ms);
            appends.push(Append {
                session,
                expected_head: s.head.map(|h| h.1),
                entries,
                token,
            });
            parts.push(Part {
                session,
                items,
                first_seq: base_seq + 1,
                token,
                maybe_applied: s.maybe_applied,
            });
        }
        for session in skipped.into_iter().rev() {
            self.order.push_front(session);
        }
        self.pending_total -= taken;
        if self.sendable() == 0 {
            self.first_pending_at = None;
        }
        if !appends.is_empty() {
            self.in_flight = Some(InFlight {
                formed_ms,
                appends,
                parts,
                attempts: 0,
                retry_at: Instant::now(),
            });
        }
    }

    async fn attempt(&mut self) {
        self.take_back_erased();
        let Some(f) = &mut self.in_flight else { return };
        let mut timeout = self.shared.config.attempt_timeout;
        if let Some((until, _)) = &self.shutdown {
            timeout = timeout.min(until.saturating_duration_since(Instant::now()));
        }
        let result = tokio::time::timeout(timeout, self.shared.store.append(&f.appends)).await;
        match result {
            Ok(Ok(outcomes)) if outcomes.len() == f.appends.len() => {
                let tails = self.tails(&outcomes).await;
                if let Some(o) = self.outage.take() {
                    tracing::info!(
                        failed_attempts = o.attempts,
                        after = ?o.since.elapsed(),
                        "history writes recovered"
                    );
                }
                self.complete(outcomes, tails);
            }
            other => {
                let reason = match other {
                    Ok(Ok(_)) => "the store answered the wrong number of outcomes".to_owned(),
                    Ok(Err(e)) => e.report().to_string(),
                    Err(_) => format!("no answer within {timeout:?}"),
                };
                f.attempts += 1;
                // The store may have applied some appends without answering.
                for part in &mut f.parts {
                    part.maybe_applied = true;
                }
                let delay = backoff(f.attempts, self.shared.config.backoff_max);
                f.retry_at = Instant::now() + delay;
                self.shared.counters.retried.fetch_add(1, Ordering::Relaxed);
                let entries = f.parts.iter().map(|p| p.items.len()).sum::<usize>();
                let now = Instant::now();
                match &mut self.outage {
                    None => {
                        tracing::warn!(
                            entries,
                            retry_in = ?delay,
                            %reason,
                            "history write failed; retrying with the same entries"
                        );
                        self.outage = Some(Outage {
                            since: now,
                            attempts: 1,
                            logged: now,
                        });
                    }
                    Some(o) => {
                        o.attempts += 1;
                        if now.saturating_duration_since(o.logged) >= LOG_EVERY {
                            o.logged = now;
                            tracing::warn!(
                                failed_attempts = o.attempts,
                                since = ?o.since.elapsed(),
                                entries,
                                %reason,
                                "history writes still failing; retrying"
                            );
                        } else {
                            tracing::debug!(attempt = f.attempts, %reason, "history write failed again");
                        }
                    }
                }
            }
        }
    }

    /// For conflicts of appends that may have been applied before without
    /// an answer: the ids of the stored tail, so entries already there are
    /// not appended a second time under new `seq`s.
    async fn tails(
        &self,
        outcomes: &[AppendOutcome],
    ) -> HashMap<SessionId, Option<HashSet<[u8; 16]>>> {
        let mut tails = HashMap::new();
        let Some(f) = &self.in_flight else {
            return tails;
        };
        let depth = self.shared.store.retention().keep.min(4096);
        for (part, outcome) in f.parts.iter().zip(outcomes) {
            let conflicted = matches!(
                outcome,
                AppendOutcome::Conflict { .. } | AppendOutcome::Erased { .. }
            );
            if !conflicted || !part.maybe_applied {
                continue;
            }
            let ids = match self.shared.store.read_newest(&part.session, depth).await {
                Ok(stored) => Some(
                    stored
                        .iter()
                        .filter_map(|b| parse(b).ok().map(|p| p.id))
                        .collect(),
                ),
                // Unknown: the session waits rather than risk a duplicate.
                Err(_) => None,
            };
            tails.insert(part.session, ids);
        }
        tails
    }

    fn complete(
        &mut self,
        outcomes: Vec<AppendOutcome>,
        mut tails: HashMap<SessionId, Option<HashSet<[u8; 16]>>>,
    ) {
        let Some(f) = self.in_flight.take() else {
            return;
        };
        let now = Instant::now();
        for ((part, append), outcome) in f.parts.into_iter().zip(f.appends).zip(outcomes) {
            let Some(s) = self.sessions.get_mut(&part.session) else {
                continue;
            };
            s.in_flight = false;
            let mut back: Vec<Item> = Vec::new();
            match outcome {
                AppendOutcome::Appended | AppendOutcome::AlreadyApplied => {
                    let last_seq = part.first_seq + part.items.len() as u64 - 1;
                    let last_tag = append.last_tag().unwrap_or([0; TAG_LEN]);
                    let sent = s.first_sent.take().unwrap_or(f.formed_ms).min(f.formed_ms);
                    if let Some(c) = &mut self.checkpoints {
                        c.advance.add(part.session, last_seq, last_tag, sent);
                        c.touched(now);
                    }
                    s.head = Some((last_seq, last_tag));
                    s.acked_seq = last_seq;
                    s.maybe_applied = false;
                    if s.failures > 0 {
                        tracing::info!(session = %part.session, failures = s.failures, "history appends of a session recovered");
                        s.failures = 0;
                    }
                    self.shared
                        .counters
                        .written
                        .fetch_add(part.items.len() as u64, Ordering::Relaxed);
                    self.release(&part.items);
                    continue;
                }
                AppendOutcome::TokenMismatch { replaced_at } => {
                    let token = part.token;
                    s.maybe_applied |= part.maybe_applied;
                    let is_token = |t: Option<TokenHash>| matches!((t, token), (Some(a), Some(b)) if a.ct_eq(&b));
                    if let Some(t) = token {
                        if s.dead.len() >= DEAD_TOKENS {
                            s.dead.remove(0);
                        }
                        s.dead.push(t);
                    }
                    // Its entries still queued would be refused too.
                    let (later, rest): (Vec<Item>, Vec<Item>) =
                        s.pending.drain(..).partition(|i| is_token(i.draft.token));
                    s.pending.extend(rest);
                    self.pending_total -= later.len();
                    if s.parked.is_some() {
                        self.parked_items -= later.len();
                    }
                    let (refused, keep): (Vec<Item>, Vec<Item>) = part
                        .items
                        .into_iter()
                        .partition(|i| is_token(i.draft.token));
                    let refused: Vec<Item> = refused.into_iter().chain(later).collect();
                    let window = self.shared.config.dead_token_window.as_millis() as i64;
                    // Only requests made with the dead token count: a
                    // refused cross-site request's entry is dropped silently
                    // (a third party made it, and it must not use up the
                    // allowance of a replay's entry).
                    let requests: Vec<&Item> = refused
                        .iter()
                        .filter(|i| i.draft.kind == EntryKind::Request)
                        .collect();
                    // Requests in flight when their token was rotated are
                    // not suspicious: they end within the grace window.
                    let in_flight = replaced_at
                        .is_some_and(|at| requests.iter().all(|i| i.draft.ts <= at + window));
                    let n = requests.len() as u64;
                    self.shared
                        .counters
                        .refused
                        .fetch_add(refused.len() as u64, Ordering::Relaxed);
                    self.release(&refused);
                    if n > 0 && !in_flight && self.shared.allow_dead_signal(part.session, now) {
                        back.push(Item::own(Draft::lifecycle(
                            EntryKind::Suspicious,
                            &json!({
                                "signal": "dead_token_used",
                                "detail": {"requests": n},
                                "action": "refused",
                            }),
                        )));
                    }
                    back.extend(keep);
                }
                AppendOutcome::Failed { reason } => {
                    s.maybe_applied = true;
                    self.fail_session(part.session, part.items, &reason, now);
                    continue;
                }
                conflict => {
                    let (last, erased) = match conflict {
                        AppendOutcome::Conflict { last } => (last, false),
                        AppendOutcome::Erased { last } => (last, true),
                        _ => unreachable!("the other outcomes are matched above"),
                    };
                    self.shared
                        .counters
                        .conflicts
                        .fetch_add(1, Ordering::Relaxed);
                    let parsed = last.as_deref().map(parse);
                    if let Some(Err(_)) = parsed {
                        // The stored head is not an entry: corrupt history.
                        // Report it and back off; never loop on it.
                        self.fail_session(
                            part.session,
                            part.items,
                            "the stored history ends with an element that is not an entry (corrupt)",
                            now,
                        );
                        continue;
                    }
                    let store_head = parsed.and_then(Result::ok).map(|p| (p.seq, p.tag));
                    let store_seq = store_head.map_or(0, |h| h.0);
                    let mut items = part.items;
                    let tail = tails.remove(&part.session);
                    if let Some(None) = tail {
                        self.fail_session(
                            part.session,
                            items,
                            "could not read the stored tail to check for entries already appended",
                            now,
                        );
                        continue;
                    }
                    if let Some(Some(ids)) = tail {
                        let (done, rest): (Vec<Item>, Vec<Item>) =
                            items.into_iter().partition(|i| ids.contains(&i.draft.id));
                        self.shared
                            .counters
                            .written
                            .fetch_add(done.len() as u64, Ordering::Relaxed);
                        self.release(&done);
                        items = rest;
                    }
                    let s = self.sessions.get_mut(&part.session).expect("present");
                    if !erased && s.acked_seq > 0 && store_seq < s.acked_seq {
                        tracing::warn!(
                            session = %part.session,
                            acknowledged_through = s.acked_seq,
                            store_head = store_seq,
                            "history store lost acknowledged entries; recording a gap"
                        );
                        back.push(Item::own(Draft::lifecycle(
                            EntryKind::Gap,
                            &json!({
                                "reason": "store_lost",
                                "lost_after_seq": store_seq,
                                "lost_through_seq": s.acked_seq,
                            }),
                        )));
                    }
                    s.acked_seq = 0;
                    s.maybe_applied = false;
                    s.head = store_head;
                    back.extend(items);
                }
            }
            if !back.is_empty() {
                self.requeue_front(part.session, back);
            }
        }
        if self.sendable() > 0 && self.first_pending_at.is_none() {
            self.first_pending_at = Some(Instant::now());
        }
        self.answer_forgets();
        // Forget idle sessions now and then so the head cache stays bounded
        // (a forgotten head costs one conflict round trip when it returns).
        if self.sessions.len() > 100_000 {
            self.sessions.retain(|_, s| {
                s.queued || s.in_flight || s.parked.is_some() || !s.pending.is_empty()
            });
        }
    }

    /// Answers the erasures waiting for appends in flight that are done (and
    /// forgets those whose caller stopped waiting).
    fn answer_forgets(&mut self) {
        let mut i = 0;
        while i < self.forget_waits.len() {
            let session = self.forget_waits[i].0;
            let waiting = !self.forget_waits[i].1.is_closed();
            if waiting && self.sessions.get(&session).is_some_and(|s| s.in_flight) {
                i += 1;
            } else {
                let (_, reply) = self.forget_waits.swap_remove(i);
                let _ = reply.send(());
            }
        }
    }

    /// Before an append in flight is tried again: if it holds entries of a
    /// history erased meanwhile, it is taken back and its entries requeued
    /// (the erased ones dropped), to be re-formed and signed afresh. A
    /// retried append that started its chain from nothing would otherwise
    /// write them into the emptied list.
    fn take_back_erased(&mut self) {
        let Some(f) = &self.in_flight else { return };
        if f.attempts == 0 {
            return;
        }
        let erased = f.parts.iter().any(|p| {
            let upto = self.sessions.get(&p.session).map_or(0, |s| s.erased_upto);
            p.items.iter().any(|i| i.ordinal.is_some_and(|o| o <= upto))
        });
        if !erased {
            return;
        }
        let Some(f) = self.in_flight.take() else {
            return;
        };
        for part in f.parts {
            if let Some(s) = self.sessions.get_mut(&part.session) {
                s.in_flight = false;
                // It may have been applied without an answer.
                s.maybe_applied = true;
            }
            self.requeue_front(part.session, part.items);
        }
        if self.sendable() > 0 && self.first_pending_at.is_none() {
            self.first_pending_at = Some(Instant::now());
        }
        self.answer_forgets();
    }

    /// Puts entries back at the front of a session's queue (they were
    /// taken for an append that did not apply).
    fn requeue_front(&mut self, session: SessionId, items: Vec<Item>) {
        let upto = self.sessions.get(&session).map_or(0, |s| s.erased_upto);
        // Entries of a history erased while they were in flight are gone.
        let (erased, items): (Vec<Item>, Vec<Item>) = items
            .into_iter()
            .partition(|i| i.ordinal.is_some_and(|o| o <= upto));
        self.release(&erased);
        let s = self.sessions.entry(session).or_default();
        let n = items.len();
        for item in items.into_iter().rev() {
            if item.gap {
                self.gap_sessions += 1;
            }
            s.pending.push_front(item);
        }
        self.pending_total += n;
        if s.parked.is_some() {
            self.parked_items += n;
        } else if !s.queued && !s.pending.is_empty() {
            s.queued = true;
            self.order.push_front(session);
        }
    }

    /// A session's append failed on its own: its entries wait, and it backs
    /// off alone (counted, logged at most every [`LOG_EVERY`] after the
    /// first), never holding up other sessions.
    fn fail_session(&mut self, session: SessionId, items: Vec<Item>, reason: &str, now: Instant) {
        let failures = {
            let s = self.sessions.entry(session).or_default();
            s.failures += 1;
            s.failures
        };
        self.shared
            .counters
            .session_failures
            .fetch_add(1, Ordering::Relaxed);
        let log_now = failures == 1
            || self
                .failing_logged
                .is_none_or(|t| now.saturating_duration_since(t) >= LOG_EVERY);
        if log_now {
            self.failing_logged = Some(now);
            tracing::warn!(
                %session,
                failures,
                %reason,
                "history append failed for one session; it backs off alone, the others go on"
            );
        }
        self.requeue_front(session, items);
        // Longer than a whole-batch retry (this session is the problem):
        // from half a second, doubling, up to eight times `backoff_max`.
        let max = self.shared.config.backoff_max.saturating_mul(8);
        self.park(session, now + session_backoff(failures, max));
    }

    /// The oldest unfinished ordinal among a session's entries.
    fn oldest_of(&self, session: &SessionId) -> u64 {
        let mut oldest = u64::MAX;
        if let Some(s) = self.sessions.get(session) {
            for item in &s.pending {
                if let Some(o) = item.ordinal {
                    oldest = oldest.min(o);
                }
            }
        }
        if let Some(f) = &self.in_flight {
            for part in f.parts.iter().filter(|p| p.session == *session) {
                for item in &part.items {
                    if let Some(o) = item.ordinal {
                        oldest = oldest.min(o);
                    }
                }
            }
        }
        oldest
    }

    fn resolve_flushes(&mut self) {
        if self.flushes.is_empty() {
            return;
        }
        let oldest = self.outstanding.oldest().map_or(u64::MAX, |(o, _)| o);
        let mut i = 0;
        while i < self.flushes.len() {
            let f = &self.flushes[i];
            let done = match &f.sessions {
                None => f.mark < oldest,
                Some(sessions) => sessions.iter().all(|s| f.mark < self.oldest_of(s)),
            };
            if done {
                let f = self.flushes.swap_remove(i);
                let _ = f.reply.send(());
            } else {
                i += 1;
            }
        }
    }

    fn publish(&self) {
        let c = &self.shared.counters;
        let v = self.outstanding.oldest().map_or(u64::MAX, |(_, t)| {
            t.saturating_duration_since(self.shared.epoch).as_millis() as u64
        });
        c.oldest_pending.store(v, Ordering::Relaxed);
        c.backing_off
            .store(self.parked.len() as u64, Ordering::Relaxed);
    }
}

/// Accepted entries not yet acknowledged, by ordinal: a window from the
/// oldest one on. Ordinals are handed out consecutively and entries finish
/// nearly in order, so the window stays about a batch or two long, and
/// every operation is O(1).
#[derive(Default)]
struct Outstanding {
    /// The ordinal of `slots[0]`.
    base: u64,
    /// Enqueue time of each ordinal from `base` on; `None` once finished.
    slots: VecDeque<Option<Instant>>,
    live: usize,
}

impl Outstanding {
    /// Adds the next ordinal (one more than the last one added).
    fn insert(&mut self, ordinal: u64, at: Instant) {
        if self.slots.is_empty() {
            self.base = ordinal;
        }
        debug_assert_eq!(ordinal, self.base + self.slots.len() as u64);
        self.slots.push_back(Some(at));
        self.live += 1;
    }

    fn remove(&mut self, ordinal: u64) {
        let slot = ordinal
            .checked_sub(self.base)
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| self.slots.get_mut(i));
        if let Some(slot) = slot
            && slot.take().is_some()
        {
            self.live -= 1;
        }
        while matches!(self.slots.front(), Some(None)) {
            self.slots.pop_front();
            self.base += 1;
        }
    }

    fn len(&self) -> usize {
        self.live
    }

    /// The oldest unfinished ordinal and its enqueue time.
    fn oldest(&self) -> Option<(u64, Instant)> {
        match self.slots.front() {
            Some(Some(at)) => Some((self.base, *at)),
            _ => None,
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// A failing session's pause: exponential from 500 ms, capped (at least
/// at 500 ms), with jitter in the upper half.
fn session_backoff(failures: u32, max: Duration) -> Duration {
    let first = Duration::from_millis(500);
    let base = first.saturating_mul(1 << failures.saturating_sub(1).min(16));
    let capped = base.min(max.max(first));
    let mut r = [0u8; 4];
    crate::util::fill_random(&mut r);
    let frac = f64::from(u32::from_le_bytes(r)) / f64::from(u32::MAX);
    capped.mul_f64(0.5 + 0.5 * frac)
}

/// Exponential from 10 ms, capped, with jitter in the upper half.
pub(crate) fn backoff(attempt: u32, max: Duration) -> Duration {
    let base = Duration::from_millis(10).saturating_mul(1 << attempt.min(16));
    let capped = base.min(max);
    let mut r = [0u8; 4];
    crate::util::fill_random(&mut r);
    let frac = f64::from(u32::from_le_bytes(r)) / f64::from(u32::MAX);
    capped.mul_f64(0.5 + 0.5 * frac)
}
