//! The Redis store (feature `redis`): sessions and history in Redis or
//! Redis Cluster. See [`RedisStore`] for the key layout and the scripts.
#[cfg(feature = "analytics")]
mod analytics;
mod cache;
mod conn;
mod history;
mod record;
mod version;

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use super::{
    Append, AppendOutcome, DEFAULT_HISTORY_KEEP, DEFAULT_HISTORY_TTL, HistoryLink, HistoryStore,
    Record, Retention, SessionStore, Update, UpdateOutcome,
};
use crate::SessionId;
use crate::error::{ConfigError, Error};

pub use cache::LocalCacheStats;
use cache::NearCache;
use conn::{Conn, Scripts, Target};
use history::RefreshMemo;
use version::{MIN_REDIS_VERSION, info_texts, server_version};

/// The default key prefix.
pub const DEFAULT_KEY_PREFIX: &str = "session-trail";
/// The default time Redis may take to answer one command or pipeline.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);
/// The default time one connection attempt may take.
pub const DEFAULT_CONNECTION_TIMEOUT: Duration = Duration::from_secs(1);
/// The default number of session records the local cache holds.
pub const DEFAULT_LOCAL_CACHE_CAPACITY: usize = 16_384;
/// The default longest time the local cache serves a record after it was
/// last read from Redis.
pub const DEFAULT_LOCAL_CACHE_MAX_AGE: Duration = Duration::from_secs(5);

/// Sessions and history in Redis (a single node, or Redis Cluster through
/// the same type).
///
/// - Session records are hashes, updated per field by one Lua script that
///   also checks the token hash (a destroyed session is never resurrected),
///   rotates the token and slides the TTL to the nearer deadline.
/// - History is one list per session; an append is an atomic
///   compare-and-append script per session (two commands on the hot path),
///   and a batch of many sessions travels in one pipelined round trip on a
///   single node (on a cluster, the calls are sent concurrently and
///   multiplexed per node). Details below.
/// - Retention: the newest *N* entries per session (default 1,000) and a
///   sliding TTL (default 30 days after the last entry).
/// - Scripts are reloaded after `NOSCRIPT` (a restart or a failover).
/// - An optional local cache of records, kept coherent by Redis's
///   client-side caching (`CLIENT TRACKING`), saves the load's round trip:
///   see [`RedisStoreBuilder::local_cache`] for how it stays coherent and
///   when to turn it on.
///
/// The connection reconnects by itself, for as long as the store lives:
/// while Redis is down, operations fail fast with
/// [`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable) (the layer
/// answers 503 to handlers that read the session; the history writer keeps
/// its entries and retries), and succeed again once Redis is back.
///
/// Cloning is cheap and shares the connection.
///
/// # Key layout
///
/// Every key of a session carries the session id as its hash tag, so in
/// Redis Cluster they all live in one slot and each operation on them is
/// atomic (one script, or one `MULTI` for `create`):
///
/// | key | type | holds |
/// |---|---|---|
/// | `<prefix>:{<sid>}:s` | hash | the session record |
/// | `<prefix>:{<sid>}:h` | list | the session's history, oldest first |
/// | `<prefix>:{<sid>}:e` | string | set when the session's history was erased (for the history TTL) |
/// | `<prefix>:user:{<hash of user>}` | sorted set | the user's live session ids, scored by absolute deadline |
/// | `<prefix>:user-claims:{<hash of user>}` | sorted set | logins in progress under the session limit, scored by when the claim lapses |
/// | `<prefix>:user-ending:{<hash of user>}` | sorted set | sessions being ended to make room for such a login (they no longer count) |
/// | `<prefix>:user-history:{<hash of pseudonym>}` | sorted set | the sessions whose history belongs to a user, scored by first link |
///
/// The record hash has one field per piece of metadata (`tok`, `rtok`,
/// `rat`, `user`, `priv`, `created`, `seen`, `idle`, `abs`, `dev`, `net`,
/// and `ver`, a version incremented by every update) and one field
/// `d:<key>` per data key, holding the value's JSON text, so an update
/// writes only the fields that changed. Token hashes are stored
/// as hex; tokens never are. The update script (`update.lua`) applies only
/// when the record exists and holds the request's token hash; it also
/// recognises an earlier attempt of the same rotating call (the record
/// holds the new hash and the presented one as replaced) and answers
/// `Applied` again, so a retry after a lost answer does not lose the
/// rotation.
///
/// The user index cannot share the session's slot in Redis Cluster, so it
/// is written beside the record, in an order that never lets it miss a
/// live session: `create` writes the record, then indexes it (nobody holds
/// the new token until both succeeded; if indexing fails the record is
/// taken back); a login (`update` naming a new user) indexes first, then
/// writes the record; a logout or `delete` writes the record first, then
/// unindexes. Reads drop members past their absolute deadline or whose
/// record is gone, and skip (without dropping) members whose record names
/// another user, which may be a login in progress.
///
/// # History appends
///
/// The compare-and-append is one Lua script (`append.lua`): per session,
/// `LINDEX key -1` reads the head and `RPUSH` appends; `LTRIM` runs only
/// when the list outgrows the retention's *N*, and `PEXPIRE` only for a new
/// list or when this process has not refreshed the session's TTL for a 64th
/// of the TTL (at most an hour; it remembers when it last did, per session),
/// so a history lives at least the TTL after its last entry, and at most a
/// 64th longer.
///
/// On a single node a batch travels in one pipelined round trip, as script
/// calls of up to 64 sessions each: the fixed cost of a script call is
/// several times that of the two commands it runs, so a call carries many
/// sessions (each still appended atomically, with the same two commands). On a cluster each session's script is
/// its own call, routed to its slot's node; the calls are sent at once and
/// share each node's multiplexed connection. Calls answered with `NOSCRIPT`
/// did not run: the script is loaded again and they are resent.
///
/// # Restarts and persistence
///
/// Everything this store keeps lives in Redis's memory. When Redis
/// restarts without persistence (or with RDB snapshots only, which lose
/// what was written since the last one):
///
/// - **Everyone is logged out.** The session records are gone. Cookies
///   still carry a valid MAC but name no session, so their requests are
///   served as anonymous visitors, and a write starts a new session.
/// - **History is lost**, with the user indexes behind export and erasure.
///   A history writer that had entries of a session acknowledged records a
///   signed `gap` entry with reason `store_lost` (and the lost `seq`
///   range) when it next appends to that session; other app servers'
///   writers cannot know, and a session nobody appends to again keeps no
///   trace of the loss.
///
/// The local cache, if on, is cleared when its tracking connection drops,
/// so it does not serve records the restart lost.
///
/// To avoid it, turn on the append-only file:
///
/// - `appendonly yes` with `appendfsync everysec` (the usual choice): a
///   restart or a crash of the Redis process loses nothing (its writes
///   are in the operating system's cache); a crash of the machine (power,
///   kernel) loses up to about the last second or two of writes.
/// - `appendonly yes` with `appendfsync always`: a write is on disk before
///   Redis acknowledges it, so nothing acknowledged is lost, at the cost of
///   an fsync per write (Redis shares one among the writes it handles
///   together, such as a pipelined history batch): latency follows the
///   disk, and throughput drops on slow disks.
///
/// Replicas do not close the gap on their own: replication is
/// asynchronous, so a failover (Sentinel, Redis Cluster) can promote a
/// replica that lacks the latest acknowledged writes, which are then lost
/// as above (recent logins and rotations undone, recent entries gone,
/// `gap{store_lost}` where a writer notices). `min-replicas-to-write`
/// narrows that window without closing it. Also keep `maxmemory-policy
/// noeviction`: an evicting policy drops records and histories the same
/// way, silently, when memory runs out (every key here has a TTL, so the
/// `volatile-*` policies evict them too); with `noeviction` writes fail
/// with an error instead.
///
/// # Example
///
/// ```no_run
/// use std::time::Duration;
/// use session_trail::{Key, SessionLayer, store::RedisStore};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// // Fails with `ErrorKind::Unavailable` when Redis cannot be reached:
/// // the application chooses to wait and retry, or to start degraded
/// // with `RedisStore::builder(url).build()`, which connects lazily.
/// let store = RedisStore::builder("redis://127.0.0.1:6379")
///     .key_prefix("myapp")
///     .history_retention(500, Duration::from_secs(7 * 24 * 3600))
///     .connect()
///     .await?;
/// let layer = SessionLayer::builder(store, Key::generate()).build()?;
/// # let _ = layer;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    conn: Conn,
    scripts: Scripts,
    prefix: String,
    keep: usize,
    ttl: Duration,
    response_timeout: Duration,
    /// The target without credentials, for `Debug` and error messages.
    target: String,
    memo: Mutex<RefreshMemo>,
    /// Single node only; `None` when turned off.
    cache: Option<NearCache>,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        f.debug_struct("RedisStore")
            .field("target", &i.target)
            .field("cluster", &i.conn.is_cluster())
            .field("key_prefix", &i.prefix)
            .field("keep", &i.keep)
            .field("ttl", &i.ttl)
            .field("response_timeout", &i.response_timeout)
            .field("local_cache", &i.cache.as_ref().map(NearCache::stats))
            .finish()
    }
}

impl RedisStore {
    /// Connects with the default settings and checks that Redis answers.
    ///
    /// `url` is one of:
    ///
    /// - `redis://[user:password@]host[:port][/db]` or `rediss://…` (TLS):
    ///   a single node;
    /// - `redis-cluster://[user:password@]host1:port1,host2:port2,…` (or
    ///   `rediss-cluster://…`): Redis Cluster, from these seed nodes;
    /// - a comma-separated list of `redis://` URLs: Redis Cluster.
    ///
    /// TLS needs a TLS feature of the [`redis`](::redis) crate (for example
    /// `tokio-rustls-comp`) enabled in the application's `Cargo.toml`; this
    /// crate re-exports the `redis` it is built with, so the versions match.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) for a
    /// malformed URL (its source is the [`ConfigError`] naming the
    /// setting), and for a server older than Redis 7.0 (the message names
    /// the version found);
    /// [`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable) when Redis
    /// cannot be reached. Whether start-up then waits and retries, or
    /// starts degraded with a lazily connecting store from
    /// [`RedisStoreBuilder::build`], is the application's choice; `build`
    /// makes no I/O, so it does not check the server's version.
    pub async fn connect(url: impl Into<String>) -> Result<Self, Error> {
        Self::builder(url).connect().await
    }

    /// A builder for a store at `url` (see [`connect`](Self::connect) for
    /// the URL forms).
    pub fn builder(url: impl Into<String>) -> RedisStoreBuilder {
        RedisStoreBuilder {
            url: url.into(),
            prefix: DEFAULT_KEY_PREFIX.to_owned(),
            keep: DEFAULT_HISTORY_KEEP,
            ttl: DEFAULT_HISTORY_TTL,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            connection_timeout: DEFAULT_CONNECTION_TIMEOUT,
            local_cache: None,
        }
    }

    /// Checks that Redis answers (`PING`; on a cluster, one node).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable) when it
    /// does not.
    pub async fn ping(&self) -> Result<(), Error> {
        let mut c = self.inner.conn.clone();
        ::redis::cmd("PING")
            .query_async::<()>(&mut c)
            .await
            .map_err(|e| self.unavailable(e, "PING"))
    }

    /// Refuses a server older than Redis 7.0, from the
    /// `redis_version` of `INFO server` (on a cluster, of every primary).
    /// Where `INFO` is not allowed (an ACL without `@dangerous`), the
    /// command the older servers lack is tried instead: `PEXPIREAT` with
    /// `NX` on a key that does not exist, which changes nothing.
    async fn check_version(&self) -> Result<(), Error> {
        let mut c = self.inner.conn.clone();
        let reply = ::redis::cmd("INFO")
            .arg("server")
            .query_async::<::redis::Value>(&mut c)
            .await;
        let mut texts = Vec::new();
        match reply {
            Ok(v) => info_texts(&v, &mut texts),
            // An error reply: refused, so probe below.
            Err(e) if e.code().is_some() => {}
            Err(e) => return Err(self.unavailable(e, "INFO server")),
        }
        if texts.is_empty() {
            return self.probe_version().await;
        }
        for text in &texts {
            server_version(text).map_err(|reason| {
                Error::new(
                    crate::ErrorKind::InvalidInput,
                    format!("{reason} (Redis at {})", self.inner.target),
                )
            })?;
        }
        Ok(())
    }

    /// `PEXPIREAT <prefix>:version-probe 0 NX`: `0` on Redis 7.0 and newer
    /// (the key does not exist, so nothing changes), an error before.
    async fn probe_version(&self) -> Result<(), Error> {
        let mut c = self.inner.conn.clone();
        let key = format!("{}:version-probe", self.inner.prefix);
        match ::redis::cmd("PEXPIREAT")
            .arg(&key)
            .arg(0)
            .arg("NX")
            .query_async::<i64>(&mut c)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.code().is_some() => Err(Error::new(
                crate::ErrorKind::InvalidInput,
                format!(
                    "the server refused `PEXPIREAT … NX` ({e}): session-trail needs Redis \
                     {}.{} or newer (Redis at {})",
                    MIN_REDIS_VERSION.0, MIN_REDIS_VERSION.1, self.inner.target
                ),
            )),
            Err(e) => Err(self.unavailable(e, "PEXPIREAT NX")),
        }
    }

    /// The local cache's counters; `None` when the store has no local
    /// cache (turned off, or Redis Cluster). See
    /// [`RedisStoreBuilder::local_cache`].
    pub fn local_cache_stats(&self) -> Option<LocalCacheStats> {
        self.inner.cache.as_ref().map(NearCache::stats)
    }

    /// Whether this store talks to Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.inner.conn.is_cluster()
    }

    /// The key prefix.
    pub fn key_prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The key of a session's record (a hash).
    pub fn record_key(&self, id: &SessionId) -> String {
        self.session_key(id, 's')
    }

    /// The key of a session's history (a list).
    pub fn history_key(&self, id: &SessionId) -> String {
        self.session_key(id, 'h')
    }

    /// The key of a session's erasure marker (a string, set when its
    /// history is deleted, for the retention TTL).
    pub fn erased_key(&self, id: &SessionId) -> String {
        self.session_key(id, 'e')
    }

    /// `<prefix>:{<sid hex>}:<kind>`, built in one allocation (it is made
    /// for every session of every history batch).
    fn session_key(&self, id: &SessionId, kind: char) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let prefix = &self.inner.prefix;
        let mut key = String::with_capacity(prefix.len() + 37);
        key.push_str(prefix);
        key.push_str(":{");
        for b in id.as_bytes() {
            key.push(char::from(DIGITS[usize::from(b >> 4)]));
            key.push(char::from(DIGITS[usize::from(b & 15)]));
        }
        key.push_str("}:");
        key.push(kind);
        key
    }

    /// The key of a user's index of live sessions (a sorted set). User
    /// names may hold any characters, so the key carries a hash of the
    /// name, never the name.
    pub fn user_key(&self, user: &str) -> String {
        format!("{}:user:{{{}}}", self.inner.prefix, name_hash(user))
    }

    /// The key of a user's claimed places: logins in progress under the
    /// session limit (a sorted set; the same hash tag as [`user_key`](Self::user_key)).
    pub fn user_claims_key(&self, user: &str) -> String {
        format!("{}:user-claims:{{{}}}", self.inner.prefix, name_hash(user))
    }

    /// The key of a user's sessions being ended to make room for a login
    /// under the session limit (a sorted set; the same hash tag as
    /// [`user_key`](Self::user_key)).
    pub fn user_ending_key(&self, user: &str) -> String {
        format!("{}:user-ending:{{{}}}", self.inner.prefix, name_hash(user))
    }

    /// The key of a user's history index (a sorted set of session ids,
    /// see [`HistoryStore::link_user`]); `user` is the user's pseudonym.
    pub fn user_history_key(&self, user: &str) -> String {
        format!("{}:user-history:{{{}}}", self.inner.prefix, name_hash(user))
    }

    /// The key of one history writer's checkpoints (a sorted set of
    /// encoded checkpoints scored by their time; the writer id is the hash
    /// tag).
    pub fn checkpoints_key(&self, writer: &crate::history::WriterId) -> String {
        format!("{}:checkpoints:{{{writer}}}", self.inner.prefix)
    }

    /// The key of the index of writers with checkpoints (a sorted set of
    /// writer ids scored by their last checkpoint's time).
    pub fn checkpoint_writers_key(&self) -> String {
        format!("{}:checkpoint-writers", self.inner.prefix)
    }

    /// A Redis error as the crate's: [`ErrorKind::Misconfigured`](crate::ErrorKind::Misconfigured)
    /// when Redis refused this client's configuration (retrying cannot
    /// help), else [`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable).
    fn unavailable(&self, e: ::redis::RedisError, what: &str) -> Error {
        let kind = if is_misconfiguration(&e) {
            crate::ErrorKind::Misconfigured
        } else {
            crate::ErrorKind::Unavailable
        };
        Error::with_source(kind, e).context(format!("redis {} ({what})", self.inner.target))
    }
}

/// Whether Redis refused the client's configuration rather than failing:
/// wrong or missing credentials, an ACL without the permission, a database
/// index the server does not have.
///
/// Decided on the server's error codes, and on the client library's
/// authentication failure (it reports a refused `AUTH` that way, without
/// the server's code). A client-side configuration error such as a host
/// that does not resolve right now stays `Unavailable`, so retries go on.
/// One case is misread: a proxy that answers `AUTH` with a transient error
/// during a failover is reported as `Misconfigured`.
fn is_misconfiguration(e: &::redis::RedisError) -> bool {
    if e.kind() == ::redis::ErrorKind::AuthenticationFailed {
        return true;
    }
    if matches!(e.code(), Some("NOAUTH" | "WRONGPASS" | "NOPERM")) {
        return true;
    }
    let text = e.to_string();
    text.contains("DB index is out of range")
        || text.contains("WRONGPASS")
        || text.contains("NOAUTH")
        || text.contains("NOPERM")
}

/// Builds a [`RedisStore`]; from [`RedisStore::builder`].
///
/// ```
/// use std::time::Duration;
/// use session_trail::store::RedisStore;
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// // No I/O yet: the store connects on first use.
/// let store = RedisStore::builder("redis://127.0.0.1:6379")
///     .key_prefix("shop")
///     .response_timeout(Duration::from_millis(500))
///     .build()
///     .unwrap();
/// assert_eq!(store.record_key(&"00112233445566778899aabbccddeeff".parse().unwrap()),
///            "shop:{00112233445566778899aabbccddeeff}:s");
///
/// let err = RedisStore::builder("http://example.com").build().unwrap_err();
/// assert_eq!(err.setting(), "url");
/// let err = RedisStore::builder("redis://127.0.0.1")
///     .history_retention(0, Duration::from_secs(60))
///     .build()
///     .unwrap_err();
/// assert_eq!(err.setting(), "history_retention");
/// # });
/// ```
#[must_use = "call .connect() or .build() to get the store"]
pub struct RedisStoreBuilder {
    url: String,
    prefix: String,
    keep: usize,
    ttl: Duration,
    response_timeout: Duration,
    connection_timeout: Duration,
    local_cache: Option<(usize, Duration)>,
}

impl fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may carry a password: show none of it.
        f.debug_struct("RedisStoreBuilder")
            .field("key_prefix", &self.prefix)
            .field("keep", &self.keep)
            .field("ttl", &self.ttl)
            .field("response_timeout", &self.response_timeout)
            .field("connection_timeout", &self.connection_timeout)
            .field("local_cache", &self.local_cache)
            .finish_non_exhaustive()
    }
}

impl RedisStoreBuilder {
    /// The prefix of every key. Default `session-trail`. It must not
    /// contain `{` or `}` (they would change the keys' hash tag), spaces or
    /// control characters.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// History retention: keep the newest `keep` entries of each session,
    /// and drop a session's history `ttl` after its last entry. Default
    /// 1,000 entries and 30 days.
    ///
    /// The TTL is refreshed at most every `ttl / 64` (capped at an hour) per
    /// session and process, and set with that much slack, so a history
    /// lives at least `ttl` and at most `ttl + ttl / 64` after its last
    /// entry, without a `PEXPIRE` on every append.
    pub fn history_retention(mut self, keep: usize, ttl: Duration) -> Self {
        self.keep = keep;
        self.ttl = ttl;
        self
    }

    /// How long Redis may take to answer one command or pipeline before the
    /// operation fails with
    /// [`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable). Default
    /// 1 s.
    pub fn response_timeout(mut self, d: Duration) -> Self {
        self.response_timeout = d;
        self
    }

    /// How long one connection attempt may take. Default 1 s.
    pub fn connection_timeout(mut self, d: Duration) -> Self {
        self.connection_timeout = d;
        self
    }

    /// Turns on the local cache of session records (single node only; a
    /// Redis Cluster store ignores it): at most `capacity` records, each
    /// served at most `max_age` after it was last read from Redis (this
    /// process's own writes update a copy but do not extend that). Off by
    /// default; [`DEFAULT_LOCAL_CACHE_CAPACITY`] and
    /// [`DEFAULT_LOCAL_CACHE_MAX_AGE`] are good starting values.
    ///
    /// A load answered from the cache costs no round trip, so a request
    /// that loads and saves its session costs one round trip instead of
    /// two. The cache is kept coherent by Redis: records are read and
    /// written over a dedicated RESP3 connection with `CLIENT TRACKING` on,
    /// and Redis pushes an invalidation on that connection, in order with
    /// its replies, when any other client changes, expires or deletes a
    /// cached record (another server revoking a session, an operator's
    /// `DEL`, a `FLUSHALL`). This process's own writes update its copy only
    /// when the record's version shows that no other write came between,
    /// and a write whose answer never arrived (a timeout, a cancelled
    /// request) drops the copy. When the tracking connection drops or times
    /// out, the cache is cleared and bypassed until tracking is on again.
    ///
    /// **When to turn it on.** Within one process, loads always see that
    /// process's own writes. Across processes the cache is coherent only
    /// as fast as the invalidation travels: a write made through another
    /// server is seen here once its push has been read, normally well
    /// under a millisecond later, and at the latest after `max_age`. So a
    /// client whose consecutive requests land on different servers within
    /// that window may be served the record as it was (for example,
    /// logged out right after logging in elsewhere, or a counter one
    /// behind). Turn it on for a single application instance, or behind
    /// sticky routing (each session served by one instance); leave it off
    /// when requests of one session alternate between servers and must
    /// see each other's writes at once.
    ///
    /// Needs Redis 6 or newer (RESP3 and `CLIENT TRACKING`). When Redis
    /// refuses `CLIENT TRACKING` (a proxy, an ACL), the store logs a
    /// warning once and works without the cache; when the tracking
    /// connection cannot be opened (Redis down, or a server without RESP3),
    /// it works without the cache and tries again every second.
    ///
    /// ```
    /// use std::time::Duration;
    /// use session_trail::store::{RedisStore, DEFAULT_LOCAL_CACHE_CAPACITY};
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let store = RedisStore::builder("redis://127.0.0.1:6379")
    ///     .local_cache(DEFAULT_LOCAL_CACHE_CAPACITY, Duration::from_secs(5))
    ///     .build()
    ///     .unwrap();
    /// assert!(store.local_cache_stats().is_some());
    ///
    /// let err = RedisStore::builder("redis://127.0.0.1:6379")
    ///     .local_cache(0, Duration::from_secs(5))
    ///     .build()
    ///     .unwrap_err();
    /// assert_eq!(err.setting(), "local_cache");
    /// # });
    /// ```
    pub fn local_cache(mut self, capacity: usize, max_age: Duration) -> Self {
        self.local_cache = Some((capacity, max_age));
        self
    }

    /// Builds the store without any I/O: it connects on first use and
    /// reconnects by itself (a degraded start: operations fail with
    /// [`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable) until Redis
    /// answers). Call inside a Tokio runtime.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the setting: `url` (malformed, or `rediss`
    /// without TLS support compiled in), `key_prefix`, `history_retention`
    /// (zero `keep` or `ttl`), `response_timeout` or `connection_timeout`
    /// (zero), `local_cache` (zero capacity or age), or `runtime` outside a
    /// Tokio runtime.
    pub fn build(self) -> Result<RedisStore, ConfigError> {
        check_prefix(&self.prefix)?;
        super::check_retention(self.keep, self.ttl)?;
        if self.response_timeout.is_zero() {
            return Err(ConfigError::new(
                "response_timeout",
                "must be greater than zero",
            ));
        }
        if self.connection_timeout.is_zero() {
            return Err(ConfigError::new(
                "connection_timeout",
                "must be greater than zero",
            ));
        }
        if let Some((capacity, max_age)) = self.local_cache {
            if capacity == 0 {
                return Err(ConfigError::new(
                    "local_cache",
                    "capacity must be at least 1",
                ));
            }
            if max_age.is_zero() {
                return Err(ConfigError::new(
                    "local_cache",
                    "max_age must be greater than zero",
                ));
            }
        }
        let target = Target::parse(&self.url)?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(ConfigError::new(
                "runtime",
                "the Redis store runs on Tokio: build it inside a Tokio runtime",
            ));
        }
        let description = target.describe();
        let cache = match self.local_cache {
            Some((capacity, max_age)) => conn::tracking_client(&target)?.map(|client| {
                NearCache::new(
                    client,
                    &self.prefix,
                    capacity,
                    max_age,
                    self.response_timeout,
                    self.connection_timeout,
                )
            }),
            None => None,
        };
        let conn = Conn::open(target, self.response_timeout, self.connection_timeout)?;
        Ok(RedisStore {
            inner: Arc::new(Inner {
                conn,
                scripts: Scripts::new(),
                prefix: self.prefix,
                keep: self.keep,
                ttl: self.ttl,
                response_timeout: self.response_timeout,
                target: description,
                memo: Mutex::new(RefreshMemo::default()),
                cache,
            }),
        })
    }

    /// Builds the store, checks that Redis answers and that it is Redis 7.0
    /// or newer.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) for an
    /// invalid setting (its source is the [`ConfigError`] from
    /// [`build`](Self::build), which names the setting), or for a server
    /// older than Redis 7.0 (the message names the version found: the user
    /// history index needs `PEXPIREAT … NX/GT`, without which export and
    /// erasure would silently find nothing);
    /// [`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable) when Redis
    /// cannot be reached. [`build`](Self::build) makes no I/O and checks
    /// neither.
    pub async fn connect(self) -> Result<RedisStore, Error> {
        let store = self.build().map_err(|e| {
            Error::with_source(crate::ErrorKind::InvalidInput, e)
                .context("the Redis store's settings are invalid")
        })?;
        store.ping().await.map_err(|e| {
            let target = store.inner.target.clone();
            e.context(format!("could not reach Redis at {target}"))
        })?;
        store.check_version().await?;
        Ok(store)
    }
}

/// The first 16 bytes of SHA-256, as hex: a fixed-length, brace-free key
/// part for any name.
fn name_hash(name: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(name.as_bytes());
    crate::util::hex(&digest[..16])
}

fn check_prefix(prefix: &str) -> Result<(), ConfigError> {
    if prefix.is_empty() {
        return Err(ConfigError::new("key_prefix", "must not be empty"));
    }
    if prefix.len() > 256 {
        return Err(ConfigError::new("key_prefix", "must be at most 256 bytes"));
    }
    if prefix.contains(['{', '}']) {
        return Err(ConfigError::new(
            "key_prefix",
            "must not contain { or }: they would change the keys' hash tag",
        ));
    }
    if prefix.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ConfigError::new(
            "key_prefix",
            "must not contain spaces or control characters",
        ));
    }
    Ok(())
}

impl SessionStore for RedisStore {
    async fn load(&self, id: &SessionId) -> Result<Option<Record>, Error> {
        record::load(self, id).await
    }

    async fn create(&self, record: &Record) -> Result<(), Error> {
        record::create(self, record, None).await.map(|_| ())
    }

    async fn create_linked(&self, record: &Record, link: &HistoryLink<'_>) -> Result<bool, Error> {
        record::create(self, record, Some((link.user, link.session_ends))).await
    }

    async fn update(&self, id: &SessionId, update: &Update) -> Result<UpdateOutcome, Error> {
        record::update(self, id, update).await
    }

    async fn delete(&self, id: &SessionId) -> Result<bool, Error> {
        record::delete(self, id).await
    }

    async fn sessions_of_user(&self, user: &str) -> Result<Vec<Record>, Error> {
        record::sessions_of_user(self, user).await
    }

    async fn claim_user_slot(
        &self,
        user: &str,
        session: &SessionId,
        absolute_deadline: i64,
        max: usize,
        policy: crate::SessionLimit,
    ) -> Result<super::Claim, Error> {
        record::claim_user_slot(self, user, session, absolute_deadline, max, policy).await
    }

    async fn release_user_slot(
        &self,
        user: &str,
        session: &SessionId,
        ended: &[SessionId],
    ) -> Result<(), Error> {
        record::release_user_slot(self, user, session, ended).await
    }
}

impl HistoryStore for RedisStore {
    fn checks_tokens(&self) -> bool {
        true
    }

    fn retention(&self) -> Retention {
        Retention {
            keep: self.inner.keep,
            ttl: self.inner.ttl,
        }
    }

    async fn append(&self, batch: &[Append]) -> Result<Vec<AppendOutcome>, Error> {
        history::append(self, batch).await
    }

    async fn read_newest(&self, session: &SessionId, n: usize) -> Result<Vec<Bytes>, Error> {
        history::read_newest(self, session, n).await
    }

    async fn read_all(&self, session: &SessionId) -> Result<Vec<Bytes>, Error> {
        history::read_newest(self, session, usize::MAX).await
    }

    async fn delete(&self, session: &SessionId) -> Result<u64, Error> {
        history::delete(self, session).await
    }

    async fn link_user(
        &self,
        user: &str,
        session: &SessionId,
        session_ends: i64,
    ) -> Result<(), Error> {
        history::link_user(self, user, session, session_ends).await
    }

    async fn user_sessions(&self, user: &str) -> Result<Vec<SessionId>, Error> {
        history::user_sessions(self, user).await
    }

    async fn unlink_sessions(&self, user: &str, sessions: &[SessionId]) -> Result<(), Error> {
        history::unlink_sessions(self, user, sessions).await
    }

    fn keeps_checkpoints(&self) -> bool {
        true
    }

    async fn put_checkpoint(&self, checkpoint: &crate::history::Checkpoint) -> Result<(), Error> {
        history::put_checkpoint(self, checkpoint).await
    }

    async fn checkpoints(&self) -> Result<Vec<Bytes>, Error> {
        history::checkpoints(self).await
    }

    async fn erased_at(&self, session: &SessionId) -> Result<Option<i64>, Error> {
        // The marker's value is the time of the erasure.
        let mut c = self.inner.conn.clone();
        let at: Option<String> = ::redis::cmd("GET")
            .arg(self.erased_key(session))
            .query_async(&mut c)
            .await
            .map_err(|e| self.unavailable(e, "read an erasure marker"))?;
        Ok(at.and_then(|v| v.parse().ok()))
    }
}
