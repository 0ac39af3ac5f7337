//! The in-memory store: the zero set-up default.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;

use super::{
    Append, AppendOutcome, Claim, DEFAULT_HISTORY_KEEP, DEFAULT_HISTORY_TTL, HistoryStore, Record,
    Retention, SessionStore, Update, UpdateOutcome, tag_of,
};
use crate::SessionId;
use crate::error::{ConfigError, Error, ErrorKind};
use crate::util::now_ms;

/// How many expired items one operation evicts at most (the rest are
/// evicted by later operations), so no single call pays for a backlog.
const EVICT_PER_CALL: usize = 64;

/// Sessions and history in the process's memory.
///
/// It has the semantics of the Redis store: conditional per-key updates,
/// compare-and-append, keep-*N* and a sliding TTL for history, and eviction
/// of expired sessions and histories (memory never grows without bound).
/// Cloning is cheap and shares the data.
///
/// It can inject faults ([`MemoryStore::session_faults`],
/// [`MemoryStore::history_faults`], [`MemoryStore::wipe`]) so that the
/// layer's and the history writer's failure handling can be tested without
/// Redis.
///
/// ```
/// use session_trail::store::MemoryStore;
/// use std::time::Duration;
///
/// let store = MemoryStore::new()
///     .history_retention(500, Duration::from_secs(7 * 24 * 3600))
///     .unwrap();
/// assert!(MemoryStore::new().history_retention(0, Duration::from_secs(1)).is_err());
/// # let _ = store;
/// ```
#[derive(Clone, Debug)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

/// Ordered maps (B-trees) throughout, not hash maps: a B-tree grows a node
/// at a time, where a hash table that doubles copies every entry while its
/// lock is held, a pause that grows with the store (tens of milliseconds at
/// a million sessions).
#[derive(Debug)]
struct Inner {
    sessions: Mutex<Sessions>,
    history: Mutex<Histories>,
    keep: usize,
    ttl_ms: i64,
    session_faults: Faults,
    history_faults: Faults,
}

#[derive(Debug, Default)]
struct Sessions {
    map: BTreeMap<SessionId, Record>,
    /// By [`Record::evict_at`].
    expiry: BTreeSet<(i64, SessionId)>,
    users: BTreeMap<String, BTreeSet<SessionId>>,
    /// Places claimed by logins not saved yet: session → (user, until).
    claims: BTreeMap<SessionId, (String, i64)>,
    /// Sessions being ended to make room for a claimed login: → until.
    ending: BTreeMap<SessionId, i64>,
}

#[derive(Debug, Default)]
struct Histories {
    map: BTreeMap<SessionId, History>,
    expiry: BTreeSet<(i64, SessionId)>,
    /// User pseudonym → sessions (with their link order), and expiry.
    users: BTreeMap<String, UserHistory>,
    /// Erasure markers: session → until.
    erased: BTreeMap<SessionId, i64>,
    /// Sessions whose appends fail (fault injection).
    poisoned: BTreeSet<SessionId>,
    /// Checkpoints by writer and counter: (at, encoded).
    checkpoints: BTreeMap<([u8; 16], u64), (i64, Bytes)>,
}

/// A user's history index: the linked sessions with their link order,
/// when the index expires, and the next link's order.
#[derive(Debug, Default)]
struct UserHistory {
    sessions: BTreeMap<SessionId, u64>,
    expires: i64,
    next: u64,
}

#[derive(Debug, Default)]
struct History {
    entries: VecDeque<Bytes>,
    expires_at: i64,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store with the default history retention (1,000 entries per
    /// session, 30 days after the last entry).
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                sessions: Mutex::default(),
                history: Mutex::default(),
                keep: DEFAULT_HISTORY_KEEP,
                ttl_ms: DEFAULT_HISTORY_TTL.as_millis() as i64,
                session_faults: Faults::default(),
                history_faults: Faults::default(),
            }),
        }
    }

    /// Sets history retention: keep the newest `keep` entries of each
    /// session, and drop a session's history `ttl` after its last entry.
    ///
    /// Call it before cloning the store.
    ///
    /// # Errors
    ///
    /// Fails when `keep` or `ttl` is zero.
    pub fn history_retention(self, keep: usize, ttl: Duration) -> Result<Self, ConfigError> {
        super::check_retention(keep, ttl)?;
        Ok(Self {
            inner: Arc::new(Inner {
                sessions: Mutex::default(),
                history: Mutex::default(),
                keep,
                ttl_ms: ttl.as_millis().min(i64::MAX as u128) as i64,
                session_faults: Faults::default(),
                history_faults: Faults::default(),
            }),
        })
    }

    /// Faults injected into session operations.
    pub fn session_faults(&self) -> &Faults {
        &self.inner.session_faults
    }

    /// Faults injected into history operations.
    pub fn history_faults(&self) -> &Faults {
        &self.inner.history_faults
    }

    /// Deletes everything, as a Redis restart without persistence would.
    pub fn wipe(&self) {
        *lock(&self.inner.sessions) = Sessions::default();
        *lock(&self.inner.history) = Histories::default();
    }

    /// How many sessions are stored (expired ones included until evicted).
    pub fn session_count(&self) -> usize {
        let mut s = lock(&self.inner.sessions);
        s.evict(now_ms(), usize::MAX);
        s.map.len()
    }

    /// Makes every append to `session`'s history fail on its own
    /// ([`AppendOutcome::Failed`]) while `on`, as a Redis key of the wrong
    /// type would; other sessions are not affected.
    pub fn poison_history(&self, session: SessionId, on: bool) {
        let mut h = lock(&self.inner.history);
        if on {
            h.poisoned.insert(session);
        } else {
            h.poisoned.remove(&session);
        }
    }

    /// How many sessions have history stored.
    pub fn history_count(&self) -> usize {
        let mut h = lock(&self.inner.history);
        h.evict(now_ms(), usize::MAX);
        h.map.len()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave these maps half-updated in
    // a way that matters more than losing the store; keep serving.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Sessions {
    fn evict(&mut self, now: i64, max: usize) {
        for _ in 0..max {
            let Some(&(at, id)) = self.expiry.first() else {
                break;
            };
            if at > now {
                break;
            }
            self.expiry.pop_first();
            if let Some(rec) = self.map.remove(&id) {
                self.unindex(&rec);
            }
        }
        if self.claims.len() > 1024 || max == usize::MAX {
            let stale: Vec<(SessionId, String)> = self
                .claims
                .iter()
                .filter(|(_, (_, until))| *until <= now)
                .map(|(id, (user, _))| (*id, user.clone()))
                .collect();
            for (id, user) in stale {
                self.claims.remove(&id);
                self.unclaim(&user, &id);
            }
            self.ending.retain(|_, until| *until > now);
        }
    }

    /// Drops a claimed place unless the record now names the user.
    fn unclaim(&mut self, user: &str, id: &SessionId) {
        if self.map.get(id).and_then(|r| r.user.as_deref()) == Some(user) {
            return;
        }
        if let Some(set) = self.users.get_mut(user) {
            set.remove(id);
            if set.is_empty() {
                self.users.remove(user);
            }
        }
    }

    fn unindex(&mut self, rec: &Record) {
        if let Some(user) = &rec.user
            && let Some(set) = self.users.get_mut(user)
        {
            set.remove(&rec.id);
            if set.is_empty() {
                self.users.remove(user);
            }
        }
    }

    fn index(&mut self, rec: &Record) {
        if let Some(user) = &rec.user {
            self.users.entry(user.clone()).or_default().insert(rec.id);
        }
    }
}

impl Histories {
    fn evict(&mut self, now: i64, max: usize) {
        for _ in 0..max {
            let Some(&(at, id)) = self.expiry.first() else {
                break;
            };
            if at > now {
                break;
            }
            self.expiry.pop_first();
            self.map.remove(&id);
        }
        if self.users.len() > 1024 || max == usize::MAX {
            self.users.retain(|_, u| u.expires > now);
        }
        if self.erased.len() > 1024 || max == usize::MAX {
            self.erased.retain(|_, until| *until > now);
        }
    }
}

impl SessionStore for MemoryStore {
    async fn load(&self, id: &SessionId) -> Result<Option<Record>, Error> {
        self.inner.session_faults.before().await?;
        let now = now_ms();
        let mut s = lock(&self.inner.sessions);
        s.evict(now, EVICT_PER_CALL);
        // Expired records are answered until evicted: the layer records why
        // the session ended.
        Ok(s.map.get(id).filter(|r| r.evict_at() > now).cloned())
    }

    async fn create(&self, record: &Record) -> Result<(), Error> {
        self.inner.session_faults.before().await?;
        let mut s = lock(&self.inner.sessions);
        s.evict(now_ms(), EVICT_PER_CALL);
        if s.map.contains_key(&record.id) {
            return Err(Error::new(
                ErrorKind::Conflict,
                "create a session: a session with this id exists already (an id collision); \
                 it was not overwritten",
            ));
        }
        s.claims.remove(&record.id);
        s.expiry.insert((record.evict_at(), record.id));
        s.index(record);
        s.map.insert(record.id, record.clone());
        drop(s);
        self.inner.session_faults.after()
    }

    async fn update(&self, id: &SessionId, update: &Update) -> Result<UpdateOutcome, Error> {
        self.inner.session_faults.before().await?;
        let now = now_ms();
        let mut s = lock(&self.inner.sessions);
        s.evict(now, EVICT_PER_CALL);
        let Some(mut rec) = s.map.remove(id) else {
            return Ok(UpdateOutcome::Missing);
        };
        if rec.is_expired(now) || !rec.token_hash.ct_eq(&update.token_hash) {
            s.map.insert(*id, rec);
            return Ok(UpdateOutcome::Missing);
        }
        let old_expiry = rec.evict_at();
        if update.user.is_some() {
            s.unindex(&rec);
        }
        update.apply_to(&mut rec);
        if update.user.is_some() {
            s.index(&rec);
            s.claims.remove(id);
        }
        if rec.evict_at() != old_expiry {
            s.expiry.remove(&(old_expiry, rec.id));
            s.expiry.insert((rec.evict_at(), rec.id));
        }
        s.map.insert(*id, rec);
        drop(s);
        self.inner.session_faults.after()?;
        Ok(UpdateOutcome::Applied)
    }

    async fn delete(&self, id: &SessionId) -> Result<bool, Error> {
        self.inner.session_faults.before().await?;
        let mut s = lock(&self.inner.sessions);
        let existed = match s.map.remove(id) {
            Some(rec) => {
                s.expiry.remove(&(rec.evict_at(), rec.id));
                s.unindex(&rec);
                s.ending.remove(id);
                true
            }
            None => false,
        };
        drop(s);
        self.inner.session_faults.after()?;
        Ok(existed)
    }

    async fn sessions_of_user(&self, user: &str) -> Result<Vec<Record>, Error> {
        self.inner.session_faults.before().await?;
        let now = now_ms();
        let mut s = lock(&self.inner.sessions);
        s.evict(now, EVICT_PER_CALL);
        let Some(ids) = s.users.get(user) else {
            return Ok(Vec::new());
        };
        let mut out: Vec<Record> = ids
            .iter()
            .filter_map(|id| s.map.get(id))
            .filter(|r| !r.is_expired(now) && r.user.as_deref() == Some(user))
            .cloned()
            .collect();
        out.sort_by_key(|r| (r.created, r.id));
        Ok(out)
    }

    async fn claim_user_slot(
        &self,
        user: &str,
        session: &SessionId,
        absolute_deadline: i64,
        max: usize,
        policy: crate::SessionLimit,
    ) -> Result<Claim, Error> {
        self.inner.session_faults.before().await?;
        let now = now_ms();
        let mut s = lock(&self.inner.sessions);
        s.evict(now, EVICT_PER_CALL);
        // Decided and reserved under one lock: concurrent logins see each
        // other's places. A place claimed by a login still being saved
        // counts (and cannot be ended); sessions being ended to make room
        // for another login no longer count.
        let mut others: Vec<Record> = Vec::new();
        let mut claimed = 0;
        for id in s.users.get(user).into_iter().flatten() {
            if id == session || s.ending.get(id).is_some_and(|until| *until > now) {
                continue;
            }
            match s.map.get(id) {
                Some(r) if !r.is_expired(now) && r.user.as_deref() == Some(user) => {
                    others.push(r.clone());
                }
                _ => {
                    if s.claims.get(id).is_some_and(|(_, until)| *until > now) {
                        claimed += 1;
                    }
                }
            }
        }
        let count = others.len() + claimed;
        let claim = if count < max {
            Claim::Granted { end: Vec::new() }
        } else {
            let n = count + 1 - max;
            match policy {
                crate::SessionLimit::EndOldest if others.len() >= n => {
                    others.sort_by_key(|r| (r.created, r.id));
                    Claim::Granted {
                        end: others.iter().take(n).map(|r| r.id).collect(),
                    }
                }
                _ => Claim::Refused,
            }
        };
        if let Claim::Granted { end } = &claim {
            // A claim, and the ending of its victims, lapse if its login
            // never completes.
            let until = super::claim_lapses_at(absolute_deadline, now);
            for id in end {
                s.ending.insert(*id, until);
            }
            s.users.entry(user.to_owned()).or_default().insert(*session);
            s.claims.insert(*session, (user.to_owned(), until));
        }
        Ok(claim)
    }

    async fn release_user_slot(
        &self,
        user: &str,
        session: &SessionId,
        ended: &[SessionId],
    ) -> Result<(), Error> {
        let mut s = lock(&self.inner.sessions);
        s.claims.remove(session);
        s.unclaim(user, session);
        for id in ended {
            s.ending.remove(id);
        }
        Ok(())
    }
}

impl HistoryStore for MemoryStore {
    fn checks_tokens(&self) -> bool {
        true
    }

    fn retention(&self) -> Retention {
        Retention {
            keep: self.inner.keep,
            ttl: std::time::Duration::from_millis(self.inner.ttl_ms as u64),
        }
    }

    async fn append(&self, batch: &[Append]) -> Result<Vec<AppendOutcome>, Error> {
        self.inner.history_faults.before().await?;
        let now = now_ms();
        // Token checks and appends under both locks (sessions first, the
        // only place both are held): one atomic step, as in Redis.
        let sessions = batch
            .iter()
            .any(|a| a.token.is_some())
            .then(|| lock(&self.inner.sessions));
        let mut h = lock(&self.inner.history);
        h.evict(now, EVICT_PER_CALL);
        let mut out = Vec::with_capacity(batch.len());
        for append in batch {
            if h.poisoned.contains(&append.session) {
                out.push(AppendOutcome::Failed {
                    reason: "injected fault: this session's history is poisoned".into(),
                });
                continue;
            }
            if let (Some(token), Some(s)) = (&append.token, &sessions) {
                let record = s.map.get(&append.session);
                let live = record.is_some_and(|r| !r.is_expired(now) && r.token_hash.ct_eq(token));
                if !live {
                    let replaced_at = record
                        .and_then(|r| r.replaced)
                        .filter(|r| r.token_hash.ct_eq(token))
                        .map(|r| r.at);
                    out.push(AppendOutcome::TokenMismatch { replaced_at });
                    continue;
                }
            }
            let erased = h.erased.get(&append.session).is_some_and(|t| *t > now);
            // A list past its TTL is gone, as in the other stores, though
            // eviction may not have reached it yet: it starts afresh. (Its
            // expiry is never set before its last append plus the TTL.)
            if let Some(list) = h.map.get_mut(&append.session)
                && list.expires_at <= now
            {
                let old = std::mem::take(&mut list.expires_at);
                list.entries.clear();
                h.expiry.remove(&(old, append.session));
            }
            let list = h.map.entry(append.session).or_default();
            if list.entries.back().is_some_and(|e| e.len() < 16) {
                out.push(AppendOutcome::Failed {
                    reason: "the last stored entry is shorter than a tag: corrupt history".into(),
                });
                continue;
            }
            let head = list.entries.back().and_then(|e| tag_of(e));
            if head == append.expected_head {
                list.entries.extend(append.entries.iter().cloned());
                while list.entries.len() > self.inner.keep {
                    list.entries.pop_front();
                }
                // Slide the TTL as the other stores do: the expiry index is
                // touched only when the expiry would come too early.
                let old = list.expires_at;
                let (earliest, slack) = super::list_expiry(self.inner.ttl_ms, now);
                if old < earliest {
                    let new = earliest + slack;
                    list.expires_at = new;
                    h.expiry.remove(&(old, append.session));
                    h.expiry.insert((new, append.session));
                }
                out.push(AppendOutcome::Appended);
            } else if head.is_some() && head == append.last_tag() {
                out.push(AppendOutcome::AlreadyApplied);
            } else {
                let last = list.entries.back().cloned();
                if list.entries.is_empty() {
                    h.map.remove(&append.session);
                }
                out.push(if erased {
                    AppendOutcome::Erased { last }
                } else {
                    AppendOutcome::Conflict { last }
                });
            }
        }
        drop(h);
        drop(sessions);
        self.inner.history_faults.after()?;
        Ok(out)
    }

    async fn read_newest(&self, session: &SessionId, n: usize) -> Result<Vec<Bytes>, Error> {
        self.inner.history_faults.before().await?;
        let h = lock(&self.inner.history);
        Ok(match h.map.get(session) {
            Some(list) if list.expires_at > now_ms() => {
                let skip = list.entries.len().saturating_sub(n);
                list.entries.iter().skip(skip).cloned().collect()
            }
            _ => Vec::new(),
        })
    }

    async fn read_all(&self, session: &SessionId) -> Result<Vec<Bytes>, Error> {
        self.read_newest(session, usize::MAX).await
    }

    async fn delete(&self, session: &SessionId) -> Result<u64, Error> {
        self.inner.history_faults.before().await?;
        let now = now_ms();
        let mut h = lock(&self.inner.history);
        let n = match h.map.remove(session) {
            Some(list) => {
                h.expiry.remove(&(list.expires_at, *session));
                list.entries.len() as u64
            }
            None => 0,
        };
        let until = now.saturating_add(self.inner.ttl_ms);
        h.erased.insert(*session, until);
        Ok(n)
    }

    async fn link_user(
        &self,
        user: &str,
        session: &SessionId,
        session_ends: i64,
    ) -> Result<(), Error> {
        self.inner.history_faults.before().await?;
        let expires = session_ends.max(now_ms()).saturating_add(self.inner.ttl_ms);
        let mut h = lock(&self.inner.history);
        let u = h.users.entry(user.to_owned()).or_default();
        // Link order from a counter: constant time however many sessions
        // the user has.
        if let std::collections::btree_map::Entry::Vacant(v) = u.sessions.entry(*session) {
            v.insert(u.next);
            u.next += 1;
        }
        u.expires = u.expires.max(expires);
        Ok(())
    }

    async fn user_sessions(&self, user: &str) -> Result<Vec<SessionId>, Error> {
        self.inner.history_faults.before().await?;
        let h = lock(&self.inner.history);
        Ok(match h.users.get(user) {
            Some(UserHistory {
                sessions, expires, ..
            }) if *expires > now_ms() => {
                let mut linked: Vec<(u64, SessionId)> =
                    sessions.iter().map(|(s, o)| (*o, *s)).collect();
                linked.sort_unstable();
                linked.into_iter().map(|(_, s)| s).collect()
            }
            _ => Vec::new(),
        })
    }

    async fn unlink_sessions(&self, user: &str, sessions: &[SessionId]) -> Result<(), Error> {
        self.inner.history_faults.before().await?;
        let mut h = lock(&self.inner.history);
        if let Some(UserHistory {
            sessions: linked, ..
        }) = h.users.get_mut(user)
        {
            for s in sessions {
                linked.remove(s);
            }
            if linked.is_empty() {
                h.users.remove(user);
            }
        }
        Ok(())
    }

    fn keeps_checkpoints(&self) -> bool {
        true
    }

    async fn put_checkpoint(&self, cp: &crate::history::Checkpoint) -> Result<(), Error> {
        self.inner.history_faults.before().await?;
        let bytes = Bytes::from(cp.encode());
        let cutoff = now_ms().saturating_sub(self.inner.ttl_ms);
        let mut h = lock(&self.inner.history);
        h.checkpoints.retain(|_, (at, _)| *at > cutoff);
        h.checkpoints
            .insert((*cp.writer.as_bytes(), cp.counter), (cp.at, bytes));
        Ok(())
    }

    async fn erased_at(&self, session: &SessionId) -> Result<Option<i64>, Error> {
        self.inner.history_faults.before().await?;
        let now = now_ms();
        let h = lock(&self.inner.history);
        Ok(h.erased
            .get(session)
            .filter(|until| **until > now)
            .map(|until| until.saturating_sub(self.inner.ttl_ms)))
    }

    async fn checkpoints(&self) -> Result<Vec<Bytes>, Error> {
        self.inner.history_faults.before().await?;
        let h = lock(&self.inner.history);
        Ok(h.checkpoints.values().map(|(_, b)| b.clone()).collect())
    }
}

/// Faults to inject into a [`MemoryStore`]'s operations, and a count of
/// the operations made.
///
/// ```
/// use session_trail::store::MemoryStore;
///
/// let store = MemoryStore::new();
/// store.session_faults().fail_next(2);
/// store.session_faults().set_down(false);
/// assert_eq!(store.session_faults().calls(), 0);
/// ```
#[derive(Debug, Default)]
pub struct Faults {
    calls: AtomicU64,
    fail_next: AtomicU64,
    down: AtomicBool,
    delay_ms: AtomicU64,
    lose_acks: AtomicU64,
}

impl Faults {
    /// The next `n` operations fail before doing anything.
    pub fn fail_next(&self, n: u64) {
        self.fail_next.store(n, Ordering::SeqCst);
    }

    /// While `down`, every operation fails (an outage).
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// Every operation waits this long first (a slow store).
    pub fn set_delay(&self, delay: Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// The next `n` writes are applied but answer an error, as when the
    /// connection drops before the acknowledgement arrives.
    pub fn lose_next_acks(&self, n: u64) {
        self.lose_acks.store(n, Ordering::SeqCst);
    }

    /// How many operations were attempted.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    async fn before(&self) -> Result<(), Error> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let delay = self.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if self.down.load(Ordering::SeqCst) || take_one(&self.fail_next) {
            return Err(Error::new(
                ErrorKind::Unavailable,
                "injected fault: store down",
            ));
        }
        Ok(())
    }

    fn after(&self) -> Result<(), Error> {
        if take_one(&self.lose_acks) {
            return Err(Error::new(
                ErrorKind::Unavailable,
                "injected fault: acknowledgement lost",
            ));
        }
        Ok(())
    }
}

fn take_one(counter: &AtomicU64) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

/// Analytics stream the histories, at most 1,000 sessions or about 16,000
/// entries per lock (see [`crate::analytics`]); histories past their TTL
/// are left out.
#[cfg(feature = "analytics")]
impl MemoryStore {
    async fn scan_history(&self, s: &mut crate::analytics::Stream<'_>) -> Result<(), Error> {
        use std::ops::Bound;
        /// At most this many sessions, or about this many entries, per lock.
        const CHUNK: usize = 1000;
        const CHUNK_ENTRIES: usize = 16_384;
        self.inner.history_faults.before().await?;
        let mut after: Option<SessionId> = None;
        loop {
            let now = now_ms();
            let mut more = false;
            let chunk: Vec<Vec<Bytes>> = {
                let h = lock(&self.inner.history);
                let range = match after {
                    Some(a) => h.map.range((Bound::Excluded(a), Bound::Unbounded)),
                    None => h.map.range(..),
                };
                let mut chunk = Vec::new();
                let (mut visited, mut entries) = (0, 0);
                for (sid, list) in range {
                    if visited == CHUNK || entries >= CHUNK_ENTRIES {
                        more = true;
                        break;
                    }
                    visited += 1;
                    after = Some(*sid);
                    if list.expires_at > now {
                        entries += list.entries.len();
                        chunk.push(list.entries.iter().cloned().collect());
                    }
                }
                chunk
            };
            for list in &chunk {
                s.session(list);
            }
            if !more {
                return Ok(());
            }
            // Other tasks run between chunks.
            tokio::task::yield_now().await;
        }
    }
}

#[cfg(feature = "analytics")]
crate::analytics::streamed_analytics!(MemoryStore);

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn link_order_survives_unlinking_and_stays_oldest_first() {
        let store = MemoryStore::new();
        let [a, b, c, d] = [(); 4].map(|()| SessionId::generate());
        let ends = now_ms() + 60_000;
        for s in [a, b, c] {
            store.link_user("u", &s, ends).await.unwrap();
        }
        store.unlink_sessions("u", &[b]).await.unwrap();
        store.link_user("u", &d, ends).await.unwrap();
        // Linking again keeps the first place.
        store.link_user("u", &a, ends).await.unwrap();
        assert_eq!(store.user_sessions("u").await.unwrap(), vec![a, c, d]);
    }
}
