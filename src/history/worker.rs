//! The background task behind [`HistoryWriter`](super::HistoryWriter).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use super::entry::{Draft, EntryKind, TAG_LEN, parse};
use super::writer::{Incoming, Shared};
use crate::SessionId;
use crate::store::{Append, AppendOutcome, tag_of};

pub(crate) enum Msg {
    Flush(oneshot::Sender<()>),
    Pending {
        session: SessionId,
        reply: oneshot::Sender<Vec<Draft>>,
    },
    Shutdown {
        until: Instant,
        reply: oneshot::Sender<usize>,
    },
    /// The session's history was erased: drop what is queued for it and
    /// its cached head (an empty list is then not a loss).
    Forget(SessionId),
}

struct Item {
    draft: Draft,
    /// `None` for entries the writer made itself (gap entries).
    ordinal: Option<u64>,
}

#[derive(Default)]
struct Sess {
    /// The head we chain onto: `None` when the list is (believed) empty.
    head: Option<(u64, [u8; TAG_LEN])>,
    /// The highest `seq` the store acknowledged to us since the head was
    /// last learned; a store answering with less has lost entries.
    acked_seq: u64,
    pending: VecDeque<Item>,
    in_flight: bool,
    queued: bool,
}

struct Part {
    session: SessionId,
    items: Vec<Item>,
    first_seq: u64,
}

struct InFlight {
    appends: Vec<Append>,
    parts: Vec<Part>,
    attempts: u32,
    retry_at: Instant,
}

pub(crate) struct Worker {
    shared: Arc<Shared>,
    rx: mpsc::UnboundedReceiver<Msg>,
    sessions: HashMap<SessionId, Sess>,
    /// Sessions with pending entries, oldest first.
    order: VecDeque<SessionId>,
    pending_total: usize,
    first_pending_at: Option<Instant>,
    /// Accepted entries not yet acknowledged, with their enqueue times.
    outstanding: Outstanding,
    next_ordinal: u64,
    flushes: Vec<(u64, oneshot::Sender<()>)>,
    in_flight: Option<InFlight>,
    shutdown: Option<(Instant, oneshot::Sender<usize>)>,
    closed: bool,
}

impl Worker {
    pub(crate) fn new(shared: Arc<Shared>, rx: mpsc::UnboundedReceiver<Msg>) -> Self {
        Self {
            shared,
            rx,
            sessions: HashMap::new(),
            order: VecDeque::new(),
            pending_total: 0,
            first_pending_at: None,
            outstanding: Outstanding::default(),
            next_ordinal: 1,
            flushes: Vec::new(),
            in_flight: None,
            shutdown: None,
            closed: false,
        }
    }

    pub(crate) async fn run(mut self) {
        loop {
            self.take_buffer();
            self.collect_drops();
            let now = Instant::now();
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
            if let Some(f) = &self.in_flight {
                if f.retry_at <= now {
                    self.attempt().await;
                }
            } else if self.should_send(now) {
                self.form_batch();
                self.attempt().await;
            }
            // Publish the counters before answering flushes, so a caller
            // whose flush resolved reads current figures.
            self.publish_oldest();
            self.resolve_flushes();
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
        self.publish_oldest();
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

    fn next_wake(&self, now: Instant) -> Option<Instant> {
        let mut wake = if let Some(f) = &self.in_flight {
            Some(f.retry_at)
        } else if self.pending_total == 0 {
            None
        } else if self.should_send(now) {
            Some(now)
        } else {
            self.first_pending_at
                .map(|t| t + self.shared.config.flush_interval)
        };
        if let Some((until, _)) = &self.shutdown {
            wake = Some(wake.map_or(*until, |w| w.min(*until)));
        }
        wake
    }

    fn should_send(&self, now: Instant) -> bool {
        if self.pending_total == 0 {
            return false;
        }
        self.pending_total >= self.shared.config.batch_entries
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
            Msg::Flush(reply) => {
                self.flushes.push((self.next_ordinal - 1, reply));
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
                    drafts.extend(s.pending.iter().map(|i| i.draft.clone()));
                }
                let _ = reply.send(drafts);
            }
            Msg::Shutdown { until, reply } => {
                self.shutdown = Some((until, reply));
            }
            Msg::Forget(session) => self.forget(session),
        }
    }

    fn forget(&mut self, session: SessionId) {
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        let dropped: Vec<Item> = s.pending.drain(..).collect();
        s.head = None;
        s.acked_seq = 0;
        self.pending_total -= dropped.len();
        self.release(&dropped);
        if self.pending_total == 0 {
            self.first_pending_at = None;
        }
    }

    /// Gives back the queue space of accepted entries that are done
    /// (written, or erased before they were).
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
        s.pending.push_back(item);
        if !s.queued {
            s.queued = true;
            self.order.push_back(session);
        }
        self.pending_total += 1;
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
            let draft = Draft::lifecycle(
                EntryKind::Gap,
                &json!({"reason": "queue_full", "dropped": dropped}),
            );
            self.push(
                session,
                Item {
                    draft,
                    ordinal: None,
                },
            );
        }
    }

    fn form_batch(&mut self) {
        let limit = self.shared.config.batch_entries;
        let key = self.shared.ring.current().clone();
        let mut taken = 0;
        let mut appends = Vec::new();
        let mut parts = Vec::new();
        let mut skipped = Vec::new();
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
            let n = s.pending.len().min(limit - taken);
            let items: Vec<Item> = s.pending.drain(..n).collect();
            if s.pending.is_empty() {
                s.queued = false;
            } else {
                skipped.push(session);
            }
            if items.is_empty() {
                continue;
            }
            taken += n;
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
            appends.push(Append {
                session,
                expected_head: s.head.map(|h| h.1),
                entries,
            });
            parts.push(Part {
                session,
                items,
                first_seq: base_seq + 1,
            });
        }
        for session in skipped.into_iter().rev() {
            self.order.push_front(session);
        }
        self.pending_total -= taken;
        if self.pending_total == 0 {
            self.first_pending_at = None;
        }
        if !appends.is_empty() {
            self.in_flight = Some(InFlight {
                appends,
                parts,
                attempts: 0,
                retry_at: Instant::now(),
            });
        }
    }

    async fn attempt(&mut self) {
        let Some(f) = &mut self.in_flight else { return };
        let mut timeout = self.shared.config.attempt_timeout;
        if let Some((until, _)) = &self.shutdown {
            timeout = timeout.min(until.saturating_duration_since(Instant::now()));
        }
        let result = tokio::time::timeout(timeout, self.shared.store.append(&f.appends)).await;
        match result {
            Ok(Ok(outcomes)) if outcomes.len() == f.appends.len() => self.complete(outcomes),
            other => {
                let reason = match other {
                    Ok(Ok(_)) => "the store answered the wrong number of outcomes".to_owned(),
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => format!("no answer within {timeout:?}"),
                };
                f.attempts += 1;
                let delay = backoff(f.attempts, self.shared.config.backoff_max);
                f.retry_at = Instant::now() + delay;
                self.shared.counters.retried.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    attempt = f.attempts,
                    entries = f.parts.iter().map(|p| p.items.len()).sum::<usize>(),
                    retry_in = ?delay,
                    %reason,
                    "history write failed; retrying with the same entries"
                );
            }
        }
    }

    fn complete(&mut self, outcomes: Vec<AppendOutcome>) {
        let Some(f) = self.in_flight.take() else {
            return;
        };
        let mut requeue: Vec<SessionId> = Vec::new();
        for ((part, append), outcome) in f.parts.into_iter().zip(f.appends).zip(outcomes) {
            let Some(s) = self.sessions.get_mut(&part.session) else {
                continue;
            };
            s.in_flight = false;
            match outcome {
                AppendOutcome::Appended | AppendOutcome::AlreadyApplied => {
                    let last_seq = part.first_seq + part.items.len() as u64 - 1;
                    let last_tag = append.last_tag().unwrap_or([0; TAG_LEN]);
                    s.head = Some((last_seq, last_tag));
                    s.acked_seq = last_seq;
                    self.release(&part.items);
                    self.shared
                        .counters
                        .written
                        .fetch_add(part.items.len() as u64, Ordering::Relaxed);
                }
                AppendOutcome::Conflict { last } => {
                    self.shared
                        .counters
                        .conflicts
                        .fetch_add(1, Ordering::Relaxed);
                    let store_head = last.as_deref().map(|bytes| {
                        let seq = parse(bytes).map(|p| p.seq).unwrap_or(0);
                        (seq, tag_of(bytes).unwrap_or([0; TAG_LEN]))
                    });
                    let store_seq = store_head.map_or(0, |h| h.0);
                    let mut items = part.items;
                    if s.acked_seq > 0 && store_seq < s.acked_seq {
                        tracing::warn!(
                            session = %part.session,
                            acknowledged_through = s.acked_seq,
                            store_head = store_seq,
                            "history store lost acknowledged entries; recording a gap"
                        );
                        let gap = Draft::lifecycle(
                            EntryKind::Gap,
                            &json!({
                                "reason": "store_lost",
                                "lost_after_seq": store_seq,
                                "lost_through_seq": s.acked_seq,
                            }),
                        );
                        items.insert(
                            0,
                            Item {
                                draft: gap,
                                ordinal: None,
                            },
                        );
                    }
                    s.acked_seq = 0;
                    s.head = store_head;
                    self.pending_total += items.len();
                    for item in items.into_iter().rev() {
                        s.pending.push_front(item);
                    }
                    if !s.queued {
                        s.queued = true;
                        requeue.push(part.session);
                    }
                }
            }
        }
        for session in requeue.into_iter().rev() {
            self.order.push_front(session);
        }
        if self.pending_total > 0 && self.first_pending_at.is_none() {
            self.first_pending_at = Some(Instant::now());
        }
        // Forget idle sessions now and then so the head cache stays bounded
        // (a forgotten head costs one conflict round trip when it returns).
        if self.sessions.len() > 100_000 {
            self.sessions.retain(|_, s| s.queued || s.in_flight);
        }
    }

    fn resolve_flushes(&mut self) {
        if self.flushes.is_empty() {
            return;
        }
        let oldest = self.outstanding.oldest().map_or(u64::MAX, |(o, _)| o);
        let mut i = 0;
        while i < self.flushes.len() {
            if self.flushes[i].0 < oldest {
                let (_, reply) = self.flushes.swap_remove(i);
                let _ = reply.send(());
            } else {
                i += 1;
            }
        }
    }

    fn publish_oldest(&self) {
        let v = self.outstanding.oldest().map_or(u64::MAX, |(_, t)| {
            t.saturating_duration_since(self.shared.epoch).as_millis() as u64
        });
        self.shared
            .counters
            .oldest_pending
            .store(v, Ordering::Relaxed);
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

/// Exponential from 10 ms, capped, with jitter in the upper half.
fn backoff(attempt: u32, max: Duration) -> Duration {
    let base = Duration::from_millis(10).saturating_mul(1 << attempt.min(16));
    let capped = base.min(max);
    let mut r = [0u8; 4];
    crate::util::fill_random(&mut r);
    let frac = f64::from(u32::from_le_bytes(r)) / f64::from(u32::MAX);
    capped.mul_f64(0.5 + 0.5 * frac)
}
