//! The local cache of session records: records kept in process and kept
//! coherent with Redis by server-assisted client-side caching
//! (`CLIENT TRACKING`, RESP3).
//!
//! How it stays coherent:
//!
//! - Records are read and written over one dedicated connection with
//!   tracking on (default mode, `NOLOOP`). Redis remembers which records
//!   this connection read, and pushes an `invalidate` message on that same
//!   connection when anyone else changes, expires or deletes one. The push
//!   handler runs inside the connection's reader, in stream order, so an
//!   invalidation is handled before any reply that Redis sent after it.
//! - `NOLOOP` keeps this connection's own writes from invalidating its
//!   entries. Instead, every write script increments the record's `ver`
//!   field and answers the new version; the cached copy takes the write
//!   only when it held the version just before it, else it is dropped. The
//!   scripts end with a read of the record, so it stays tracked after the
//!   write.
//! - A read answered while an invalidation was handled for its shard, or
//!   while the connection changed, is not cached (the `Ticket` check), so a
//!   reply cannot put back what an invalidation just removed.
//! - When the tracking connection drops or a command on it times out, the
//!   cache is cleared and bypassed until a new connection has tracking on
//!   again; invalidations that could have been missed cannot matter.
//! - A write whose answer this process never saw (an error, a dropped
//!   future) evicts its record (`Unsettled`).
//! - Each entry is served at most `max_age` after it was last read whole,
//!   a bound on staleness even if an invalidation were lost some other way.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ::redis::aio::MultiplexedConnection;
use ::redis::{AsyncConnectionConfig, Client, PushInfo, PushKind, RedisError, Value};

use crate::SessionId;
use crate::store::{Record, Update};

const SHARDS: usize = 32;
/// Pause before trying the tracking connection again after it failed.
const RETRY: Duration = Duration::from_secs(1);

/// What a lookup found.
pub(super) enum Lookup {
    /// A fresh cached record.
    Hit(Record),
    /// Not cached: read it over this connection, then [`NearCache::fill`].
    Miss(MultiplexedConnection, Ticket),
    /// The cache is not usable now (no tracking connection): use the
    /// store's ordinary connection and cache nothing.
    Off,
}

/// The state a command was sent in; its reply may change the cache only if
/// nothing was invalidated in between.
#[derive(Clone, Copy, Debug)]
pub(super) struct Ticket {
    generation: u64,
    shard: usize,
    epoch: u64,
}

/// Counters of the local cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LocalCacheStats {
    /// Loads answered from the cache.
    pub hits: u64,
    /// Loads that went to Redis while the cache was usable.
    pub misses: u64,
    /// Records dropped because Redis reported a change by someone else.
    pub invalidations: u64,
    /// Records held now.
    pub entries: u64,
    /// Whether the tracking connection is up (the cache is in use).
    pub tracking: bool,
}

pub(super) struct NearCache {
    shared: Arc<Shared>,
}

struct Shared {
    shards: Vec<Mutex<Shard>>,
    shard_capacity: usize,
    max_age: Duration,
    /// The tracking connection's generation; 0 while there is none.
    current: AtomicU64,
    next_generation: AtomicU64,
    link: Mutex<Link>,
    client: Client,
    response_timeout: Duration,
    connection_timeout: Duration,
    /// `<prefix>:{`, to find the session id in an invalidated key.
    key_start: String,
    hits: AtomicU64,
    misses: AtomicU64,
    invalidations: AtomicU64,
}

#[derive(Default)]
struct Shard {
    map: HashMap<SessionId, Cached>,
    /// Bumped by every invalidation and eviction in this shard.
    epoch: u64,
}

struct Cached {
    record: Record,
    version: i64,
    confirmed: Instant,
}

enum Link {
    Down {
        connecting: bool,
        /// `None`: Redis refused tracking; the cache stays off.
        retry_at: Option<Instant>,
    },
    Up {
        generation: u64,
        conn: MultiplexedConnection,
    },
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn shard_of(id: &SessionId) -> usize {
    // Session ids are random: any byte spreads them evenly.
    usize::from(id.as_bytes()[0]) % SHARDS
}

/// Evicts a record when dropped armed: a write whose outcome this process
/// did not see (its future was dropped after the command was sent) must not
/// leave the old copy behind, since no invalidation will come for it.
pub(super) struct Unsettled<'a> {
    cache: Option<&'a NearCache>,
    id: SessionId,
}

impl<'a> Unsettled<'a> {
    pub(super) fn new(cache: Option<&'a NearCache>, id: SessionId) -> Self {
        Self { cache, id }
    }

    /// The outcome reached the cache: nothing to evict.
    pub(super) fn settle(mut self) {
        self.cache = None;
    }
}

impl Drop for Unsettled<'_> {
    fn drop(&mut self) {
        if let Some(cache) = self.cache {
            cache.evict(&self.id);
        }
    }
}

/// Whether an error leaves the connection in an unknown state (replies may
/// have been lost), so the cache must not trust it any more.
pub(super) fn breaks_connection(e: &RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_unrecoverable_error()
}

impl NearCache {
    /// A cache of at most `capacity` records, each served at most
    /// `max_age` after it was read. `client` must speak RESP3.
    pub(super) fn new(
        client: Client,
        prefix: &str,
        capacity: usize,
        max_age: Duration,
        response_timeout: Duration,
        connection_timeout: Duration,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
                shard_capacity: capacity.div_ceil(SHARDS).max(1),
                max_age,
                current: AtomicU64::new(0),
                next_generation: AtomicU64::new(1),
                link: Mutex::new(Link::Down {
                    connecting: false,
                    retry_at: Some(Instant::now()),
                }),
                client,
                response_timeout,
                connection_timeout,
                key_start: format!("{prefix}:{{"),
                hits: AtomicU64::new(0),
                misses: AtomicU64::new(0),
                invalidations: AtomicU64::new(0),
            }),
        }
    }

    /// Looks a record up for a load.
    pub(super) fn lookup(&self, id: &SessionId) -> Lookup {
        let s = &self.shared;
        if s.current.load(Ordering::Acquire) == 0 {
            s.maybe_connect();
            return Lookup::Off;
        }
        {
            let shard = lock(&s.shards[shard_of(id)]);
            if let Some(c) = shard.map.get(id).filter(|c| s.fresh(c)) {
                s.hits.fetch_add(1, Ordering::Relaxed);
                return Lookup::Hit(c.record.clone());
            }
        }
        match self.connection(id) {
            Some((conn, ticket)) => {
                s.misses.fetch_add(1, Ordering::Relaxed);
                Lookup::Miss(conn, ticket)
            }
            None => Lookup::Off,
        }
    }

    /// The tracking connection for a write of `id`, with the ticket its
    /// reply needs; `None` when the cache is not usable now.
    pub(super) fn connection(&self, id: &SessionId) -> Option<(MultiplexedConnection, Ticket)> {
        let s = &self.shared;
        let up = match &*lock(&s.link) {
            Link::Up { generation, conn } => Some((*generation, conn.clone())),
            Link::Down { .. } => None,
        };
        let Some((generation, conn)) = up else {
            s.maybe_connect();
            return None;
        };
        let shard = shard_of(id);
        let epoch = lock(&s.shards[shard]).epoch;
        Some((
            conn,
            Ticket {
                generation,
                shard,
                epoch,
            },
        ))
    }

    /// The absolute deadline of a cached record (it never changes after
    /// the record is created).
    pub(super) fn absolute_deadline(&self, id: &SessionId) -> Option<i64> {
        let s = &self.shared;
        if s.current.load(Ordering::Acquire) == 0 {
            return None;
        }
        let shard = lock(&s.shards[shard_of(id)]);
        shard
            .map
            .get(id)
            .filter(|c| s.fresh(c))
            .map(|c| c.record.absolute_deadline)
    }

    /// Caches what a read (or a create) sent under `ticket` answered,
    /// unless an own write has since cached a newer version.
    pub(super) fn fill(&self, ticket: Ticket, record: &Record, version: i64) {
        let s = &self.shared;
        let mut shard = self.valid_shard(ticket);
        let Some(shard) = shard.as_mut() else {
            return;
        };
        if shard
            .map
            .get(&record.id)
            .is_some_and(|c| c.version > version)
        {
            return;
        }
        if shard.map.len() >= s.shard_capacity && !shard.map.contains_key(&record.id) {
            let now = crate::util::now_ms();
            shard
                .map
                .retain(|_, c| s.fresh(c) && c.record.expires_at() > now);
            if shard.map.len() >= s.shard_capacity
                && let Some(victim) = shard.map.keys().next().copied()
            {
                shard.map.remove(&victim);
            }
        }
        shard.map.insert(
            record.id,
            Cached {
                record: record.clone(),
                version,
                confirmed: Instant::now(),
            },
        );
    }

    /// Applies this process's own write (sent under `ticket`, answered
    /// with the record's new `version`) to the cached copy, or drops the
    /// copy when it did not hold the version just before. The copy keeps
    /// the time Redis last sent it whole: `max_age` bounds every entry,
    /// however often this process writes it.
    pub(super) fn written(&self, ticket: Ticket, id: &SessionId, update: &Update, version: i64) {
        let mut guard = self.valid_shard(ticket);
        match guard.as_mut() {
            Some(shard) => {
                let follows = shard
                    .map
                    .get(id)
                    .is_some_and(|c| c.version.checked_add(1) == Some(version));
                if follows {
                    if let Some(c) = shard.map.get_mut(id) {
                        update.apply_to(&mut c.record);
                        c.version = version;
                    }
                } else {
                    // Also when nothing was cached: a read sent before this
                    // write and answered after it must not be cached.
                    shard.map.remove(id);
                    shard.epoch += 1;
                }
            }
            None => {
                drop(guard);
                self.evict(id);
            }
        }
    }

    /// Drops a record (after a delete, a failed or unknown write).
    pub(super) fn evict(&self, id: &SessionId) {
        let mut shard = lock(&self.shared.shards[shard_of(id)]);
        shard.map.remove(id);
        shard.epoch += 1;
    }

    /// A command on the tracking connection failed: when the connection
    /// may have lost replies (or pushes), stop using it.
    pub(super) fn failed(&self, ticket: Ticket, e: &RedisError) {
        if breaks_connection(e) {
            self.shared.tear_down(ticket.generation);
        }
    }

    pub(super) fn stats(&self) -> LocalCacheStats {
        let s = &self.shared;
        LocalCacheStats {
            hits: s.hits.load(Ordering::Relaxed),
            misses: s.misses.load(Ordering::Relaxed),
            invalidations: s.invalidations.load(Ordering::Relaxed),
            entries: s.shards.iter().map(|m| lock(m).map.len() as u64).sum(),
            tracking: s.current.load(Ordering::Acquire) != 0,
        }
    }

    /// The ticket's shard, locked, if nothing changed since the ticket was
    /// taken.
    fn valid_shard(&self, ticket: Ticket) -> Option<MutexGuard<'_, Shard>> {
        let s = &self.shared;
        if s.current.load(Ordering::Acquire) != ticket.generation {
            return None;
        }
        let shard = lock(&s.shards[ticket.shard]);
        (shard.epoch == ticket.epoch).then_some(shard)
    }
}

impl Shared {
    /// Whether an entry may still be served: read whole within `max_age`.
    fn fresh(&self, c: &Cached) -> bool {
        c.confirmed.elapsed() < self.max_age
    }

    /// Starts connecting the tracking connection, unless that is under way,
    /// waiting for its retry time, or refused by Redis.
    fn maybe_connect(self: &Arc<Self>) {
        let mut link = lock(&self.link);
        let Link::Down {
            connecting,
            retry_at,
        } = &mut *link
        else {
            return;
        };
        if *connecting || retry_at.is_none_or(|at| Instant::now() < at) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        *connecting = true;
        runtime.spawn(Arc::clone(self).connect());
    }

    async fn connect(self: Arc<Self>) {
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let weak = Arc::downgrade(&self);
        // Runs inside the connection's reader, in stream order.
        let on_push = move |info: PushInfo| -> Result<(), Infallible> {
            if let Some(shared) = weak.upgrade() {
                shared.on_push(generation, info);
            }
            Ok(())
        };
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connection_timeout))
            .set_response_timeout(Some(self.response_timeout))
            .set_push_sender(on_push);
        // A failure to connect (Redis down, a wrong password, a server
        // without RESP3) is retried; Redis refusing `CLIENT TRACKING` on a
        // working connection (an old server, a proxy, an ACL) turns the
        // cache off for good.
        let result = match self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
        {
            Err(e) => Err((e, false)),
            Ok(mut conn) => ::redis::cmd("CLIENT")
                .arg("TRACKING")
                .arg("ON")
                .arg("NOLOOP")
                .query_async::<()>(&mut conn)
                .await
                .map(|()| conn)
                .map_err(|e| {
                    let refused = !breaks_connection(&e);
                    (e, refused)
                }),
        };
        let mut link = lock(&self.link);
        match result {
            Ok(conn) => {
                *link = Link::Up { generation, conn };
                self.current.store(generation, Ordering::Release);
                tracing::debug!("redis local cache: tracking connection up");
            }
            Err((e, false)) => {
                *link = Link::Down {
                    connecting: false,
                    retry_at: Some(Instant::now() + RETRY),
                };
                tracing::debug!(error = %e, "redis local cache: no tracking connection yet");
            }
            Err((e, true)) => {
                *link = Link::Down {
                    connecting: false,
                    retry_at: None,
                };
                tracing::warn!(
                    error = %e,
                    "redis refused client tracking (it needs Redis 6 or newer); \
                     the local session cache is off"
                );
            }
        }
    }

    fn on_push(&self, generation: u64, info: PushInfo) {
        match info.kind {
            PushKind::Invalidate => {
                for value in &info.data {
                    match value {
                        Value::Array(keys) => {
                            for key in keys {
                                match self.session_of(key) {
                                    Some(id) => self.invalidate(&id),
                                    None => self.clear(),
                                }
                            }
                        }
                        // A flush: every tracked key is gone.
                        _ => self.clear(),
                    }
                }
            }
            PushKind::Disconnection => self.tear_down(generation),
            _ => {}
        }
    }

    /// The session id in `<prefix>:{<sid>}:s`.
    fn session_of(&self, key: &Value) -> Option<SessionId> {
        let Value::BulkString(key) = key else {
            return None;
        };
        let rest = key.strip_prefix(self.key_start.as_bytes())?;
        let (hex, tail) = rest.split_at_checked(32)?;
        if tail != b"}:s" {
            return None;
        }
        std::str::from_utf8(hex).ok()?.parse().ok()
    }

    fn invalidate(&self, id: &SessionId) {
        let mut shard = lock(&self.shards[shard_of(id)]);
        shard.epoch += 1;
        if shard.map.remove(id).is_some() {
            self.invalidations.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn clear(&self) {
        for m in &self.shards {
            let mut shard = lock(m);
            shard.epoch += 1;
            let n = shard.map.len() as u64;
            shard.map.clear();
            self.invalidations.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Stops using the tracking connection of `generation` (if it is still
    /// the current one) and forgets everything it vouched for.
    fn tear_down(&self, generation: u64) {
        {
            let mut link = lock(&self.link);
            if !matches!(&*link, Link::Up { generation: g, .. } if *g == generation) {
                return;
            }
            // First make the cache unusable, then empty it.
            self.current.store(0, Ordering::Release);
            *link = Link::Down {
                connecting: false,
                retry_at: Some(Instant::now()),
            };
        }
        self.clear();
        tracing::debug!("redis local cache: tracking connection lost; cache cleared");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::TokenHash;
    use serde_json::json;

    /// A cache whose tracking connection counts as up (generation 7), with
    /// no I/O: the client is never used.
    fn cache() -> NearCache {
        let client = Client::open("redis://127.0.0.1:1/").unwrap();
        let c = NearCache::new(
            client,
            "p",
            64,
            Duration::from_secs(60),
            Duration::from_secs(1),
            Duration::from_secs(1),
        );
        c.shared.current.store(7, Ordering::Release);
        c
    }

    fn ticket(c: &NearCache, id: &SessionId) -> Ticket {
        let shard = shard_of(id);
        Ticket {
            generation: c.shared.current.load(Ordering::Acquire),
            shard,
            epoch: lock(&c.shared.shards[shard]).epoch,
        }
    }

    fn record(id: SessionId, n: i64) -> Record {
        Record {
            id,
            token_hash: TokenHash::from_bytes([1; 32]),
            replaced: None,
            user: None,
            privilege: None,
            data: HashMap::from([("n".to_owned(), json!(n))]),
            created: 0,
            last_seen: 0,
            idle_deadline: i64::MAX,
            absolute_deadline: i64::MAX,
            device: None,
            network: None,
        }
    }

    fn set_n(n: i64) -> Update {
        Update {
            token_hash: TokenHash::from_bytes([1; 32]),
            set: vec![("n".to_owned(), json!(n))],
            ..Update::default()
        }
    }

    fn cached(c: &NearCache, id: &SessionId) -> Option<(i64, serde_json::Value)> {
        let shard = lock(&c.shared.shards[shard_of(id)]);
        shard
            .map
            .get(id)
            .map(|e| (e.version, e.record.data["n"].clone()))
    }

    #[test]
    fn a_read_answered_after_an_own_write_is_not_cached() {
        let c = cache();
        let id = SessionId::generate();
        let read = ticket(&c, &id);
        let write = ticket(&c, &id);
        // Redis ran the read (version 3), then the write (version 4); the
        // write's answer is handled first, with nothing cached.
        c.written(write, &id, &set_n(4), 4);
        c.fill(read, &record(id, 3), 3);
        assert_eq!(cached(&c, &id), None);
    }

    #[test]
    fn an_older_version_never_replaces_a_newer_one() {
        let c = cache();
        let id = SessionId::generate();
        let read = ticket(&c, &id);
        c.fill(ticket(&c, &id), &record(id, 3), 3);
        c.written(ticket(&c, &id), &id, &set_n(4), 4);
        assert_eq!(cached(&c, &id), Some((4, json!(4))));
        // A read sent before the write, answered after it.
        c.fill(read, &record(id, 3), 3);
        assert_eq!(cached(&c, &id), Some((4, json!(4))));
    }

    #[test]
    fn own_writes_apply_only_in_sequence() {
        let c = cache();
        let id = SessionId::generate();
        c.fill(ticket(&c, &id), &record(id, 1), 1);
        c.written(ticket(&c, &id), &id, &set_n(2), 2);
        assert_eq!(cached(&c, &id), Some((2, json!(2))));
        // Version 3 was someone else's: the copy cannot follow.
        c.written(ticket(&c, &id), &id, &set_n(9), 4);
        assert_eq!(cached(&c, &id), None);
        // A version at the end of the range does not overflow.
        c.fill(ticket(&c, &id), &record(id, 1), i64::MAX);
        c.written(ticket(&c, &id), &id, &set_n(2), i64::MIN);
        assert_eq!(cached(&c, &id), None);
    }

    #[test]
    fn an_invalidation_evicts_and_turns_away_reads_in_flight() {
        let c = cache();
        let id = SessionId::generate();
        let other = SessionId::generate();
        c.fill(ticket(&c, &id), &record(id, 1), 1);
        c.fill(ticket(&c, &other), &record(other, 1), 1);
        let in_flight = ticket(&c, &id);
        let key = Value::BulkString(format!("p:{{{id}}}:s").into_bytes());
        c.shared.on_push(
            7,
            PushInfo {
                kind: PushKind::Invalidate,
                data: vec![Value::Array(vec![key])],
            },
        );
        assert_eq!(cached(&c, &id), None);
        assert!(cached(&c, &other).is_some());
        c.fill(in_flight, &record(id, 1), 1);
        assert_eq!(cached(&c, &id), None);
        // A flush (null) empties everything.
        c.shared.on_push(
            7,
            PushInfo {
                kind: PushKind::Invalidate,
                data: vec![Value::Nil],
            },
        );
        assert_eq!(cached(&c, &other), None);
        assert_eq!(c.stats().invalidations, 2);
    }

    #[test]
    fn a_write_dropped_before_its_answer_evicts() {
        let c = cache();
        let id = SessionId::generate();
        c.fill(ticket(&c, &id), &record(id, 1), 1);
        drop(Unsettled::new(Some(&c), id));
        assert_eq!(cached(&c, &id), None);
        c.fill(ticket(&c, &id), &record(id, 1), 1);
        Unsettled::new(Some(&c), id).settle();
        assert!(cached(&c, &id).is_some());
    }

    #[test]
    fn only_record_keys_of_this_prefix_name_a_session() {
        let c = cache();
        let id = SessionId::generate();
        let key = |k: String| Value::BulkString(k.into_bytes());
        assert_eq!(c.shared.session_of(&key(format!("p:{{{id}}}:s"))), Some(id));
        assert_eq!(c.shared.session_of(&key(format!("p:{{{id}}}:h"))), None);
        assert_eq!(c.shared.session_of(&key(format!("q:{{{id}}}:s"))), None);
        assert_eq!(c.shared.session_of(&key("p:{zz}:s".into())), None);
        assert_eq!(c.shared.session_of(&Value::Int(1)), None);
    }
}
