//! Storage: the [`SessionStore`] and [`HistoryStore`] traits, and the stores
//! this crate ships.
//!
//! Sessions and history are two traits so they can live in different places
//! (sessions in Redis, history in a database, say). One type may implement
//! both; [`MemoryStore`] does.
//!
//! # Contracts
//!
//! A session store keeps [`Record`]s by [`SessionId`]:
//!
//! - [`create`](SessionStore::create) never overwrites: an id that exists
//!   already (a collision of 128 random bits) is refused with
//!   [`ErrorKind::Conflict`](crate::ErrorKind::Conflict) and nothing
//!   changes.
//! - [`update`](SessionStore::update) applies an [`Update`] atomically, and
//!   only when the record exists *and* its current token hash equals
//!   [`Update::token_hash`]. It changes only the data keys listed, so two
//!   concurrent requests that write different keys both survive, and a
//!   destroyed session is never resurrected by a late write.
//! - Records expire at [`Record::expires_at`] (the nearer of the idle and
//!   absolute deadlines). A store keeps an expired record until
//!   [`Record::evict_at`] and answers it from [`load`](SessionStore::load)
//!   until then (the layer then records the expiry and ends the session);
//!   `update` never applies to an expired record and `sessions_of_user`
//!   never lists one. It evicts records at `evict_at`, so storage never
//!   grows without bound.
//! - A store keeps an index of sessions by user, maintained by `create`,
//!   `update` (when the user changes) and `delete`.
//!
//! A history store keeps, per session, a list of opaque entries, oldest
//! first. The *head* of a list is the last 16 bytes of its last entry (the
//! entry's tag); the store never needs a key to find it.
//! [`append`](HistoryStore::append) is a compare-and-append, per session:
//!
//! 1. if the head equals [`Append::expected_head`] (`None`: the list is
//!    empty), push the entries, trim to the newest *N*, refresh the TTL, and
//!    answer [`AppendOutcome::Appended`];
//! 2. otherwise, if the head equals the tag of the batch's last entry, the
//!    batch was applied before (a retry after a lost acknowledgement): answer
//!    [`AppendOutcome::AlreadyApplied`] and push nothing;
//! 3. otherwise answer [`AppendOutcome::Conflict`] with the last entry, so
//!    the writer can chain onto it and retry (or [`AppendOutcome::Erased`]
//!    when the session's history was erased within the retention TTL: the
//!    shorter chain is then explained, not a loss).
//!
//! Two conditions come before the head is compared:
//!
//! - **The token.** When [`Append::token`] is `Some`, the entries are
//!   appended only if this store also keeps the session's record and that
//!   record is live (not past either deadline) and holds exactly this token
//!   hash; otherwise nothing is appended and the answer is
//!   [`AppendOutcome::TokenMismatch`]. The layer sets it for requests whose
//!   handler never loaded the session, so a dead credential (replaced,
//!   revoked, logged out, expired) never writes request entries. The check
//!   and the append are one atomic step.
//! - **Per-session failures.** A store error that concerns one session only
//!   (a key of the wrong type, a corrupt stored entry, a cluster shard
//!   that is down) answers [`AppendOutcome::Failed`] for that session and
//!   leaves the others' appends alone. An error for the whole call (the
//!   store is unreachable) is the method's `Err`.
//!
//! [`delete`](HistoryStore::delete) leaves an erasure marker for the
//! retention TTL, so a writer on another server that still knows the old
//! head learns of the erasure instead of taking it for lost entries.
//!
//! # Implementing a store
//!
//! A complete (if unindexed and never-expiring) session store over a
//! `HashMap`:
//!
//! ```
//! use std::collections::HashMap;
//! use std::sync::Mutex;
//! use session_trail::store::{Record, SessionStore, Update, UpdateOutcome};
//! use session_trail::{Error, ErrorKind, SessionId};
//!
//! #[derive(Default)]
//! struct MapStore(Mutex<HashMap<SessionId, Record>>);
//!
//! impl SessionStore for MapStore {
//!     async fn load(&self, id: &SessionId) -> Result<Option<Record>, Error> {
//!         Ok(self.0.lock().unwrap().get(id).cloned())
//!     }
//!
//!     async fn create(&self, record: &Record) -> Result<(), Error> {
//!         match self.0.lock().unwrap().entry(record.id) {
//!             std::collections::hash_map::Entry::Occupied(_) => {
//!                 Err(Error::new(ErrorKind::Conflict, "session id taken"))
//!             }
//!             std::collections::hash_map::Entry::Vacant(v) => {
//!                 v.insert(record.clone());
//!                 Ok(())
//!             }
//!         }
//!     }
//!
//!     async fn update(&self, id: &SessionId, update: &Update) -> Result<UpdateOutcome, Error> {
//!         let mut map = self.0.lock().unwrap();
//!         match map.get_mut(id) {
//!             Some(record) if record.token_hash.ct_eq(&update.token_hash) => {
//!                 update.apply_to(record);
//!                 Ok(UpdateOutcome::Applied)
//!             }
//!             _ => Ok(UpdateOutcome::Missing),
//!         }
//!     }
//!
//!     async fn delete(&self, id: &SessionId) -> Result<bool, Error> {
//!         Ok(self.0.lock().unwrap().remove(id).is_some())
//!     }
//!
//!     async fn sessions_of_user(&self, user: &str) -> Result<Vec<Record>, Error> {
//!         let map = self.0.lock().unwrap();
//!         Ok(map.values().filter(|r| r.user.as_deref() == Some(user)).cloned().collect())
//!     }
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! use session_trail::{Key, SessionLayer};
//! let layer = SessionLayer::with_session_store(MapStore::default(), Key::generate()).build().unwrap();
//! # let _ = layer;
//! # });
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use serde_json::Value;

pub use crate::credential::TokenHash;
use crate::{Error, SessionId};

#[cfg(feature = "memory-store")]
mod memory;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod rows;

/// For an append at `now` to a history kept `ttl_ms` after its last
/// entry: the earliest the list may expire (now plus the TTL), and how
/// much later than that an expiry that moves is set. Every store moves a
/// list's expiry only when it would come before the first, and then by a
/// 64th of the TTL (at most an hour) beyond it, as the Redis store
/// refreshes its TTLs: most appends leave it alone, and no list expires
/// before its TTL has passed since its last append.
#[cfg(any(feature = "memory-store", feature = "postgres", feature = "sqlite"))]
pub(crate) fn list_expiry(ttl_ms: i64, now: i64) -> (i64, i64) {
    let expires = now.saturating_add(ttl_ms);
    let slack = (ttl_ms / 64).min(3_600_000).min(i64::MAX - expires);
    (expires, slack)
}
#[cfg(feature = "memory-store")]
pub use memory::{Faults, MemoryStore};
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub use rows::{DEFAULT_MAINTENANCE_BATCH, DEFAULT_MAINTENANCE_INTERVAL, MaintenanceReport};
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "postgres")]
pub use self::postgres::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_POOL_SIZE, DEFAULT_SCHEMA, DEFAULT_STATEMENT_TIMEOUT,
    PostgresStore, PostgresStoreBuilder, SCHEMA_VERSION,
};
#[cfg(feature = "sqlite")]
mod sqlite;
#[cfg(feature = "sqlite")]
pub use self::sqlite::{
    DEFAULT_BUSY_TIMEOUT, SQLITE_SCHEMA_VERSION, SqliteStore, SqliteStoreBuilder, Synchronous,
};
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "redis")]
pub use self::redis::{
    DEFAULT_CONNECTION_TIMEOUT, DEFAULT_KEY_PREFIX, DEFAULT_LOCAL_CACHE_CAPACITY,
    DEFAULT_LOCAL_CACHE_MAX_AGE, DEFAULT_RESPONSE_TIMEOUT, LocalCacheStats, RedisStore,
    RedisStoreBuilder,
};

/// The default number of history entries kept per session.
pub const DEFAULT_HISTORY_KEEP: usize = 1_000;
/// The default sliding lifetime of a session's history after its last entry
/// (30 days).
pub const DEFAULT_HISTORY_TTL: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

/// How long a history store keeps entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// The newest this many entries of each session are kept.
    pub keep: usize,
    /// A session's history is dropped this long after its last entry.
    pub ttl: std::time::Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            keep: DEFAULT_HISTORY_KEEP,
            ttl: DEFAULT_HISTORY_TTL,
        }
    }
}

/// When a place claimed under the session limit lapses if its login is
/// never saved: a minute after `now`, or the session's absolute deadline if
/// that comes first. The same in every store.
#[cfg_attr(
    not(any(
        feature = "memory-store",
        feature = "redis",
        feature = "postgres",
        feature = "sqlite"
    )),
    allow(dead_code)
)]
pub(crate) fn claim_lapses_at(absolute_deadline: i64, now: i64) -> i64 {
    absolute_deadline.min(now.saturating_add(60_000))
}

/// Refuses a retention that keeps nothing (`history_retention`).
#[cfg_attr(
    not(any(feature = "memory-store", feature = "redis")),
    allow(dead_code)
)]
pub(crate) fn check_retention(
    keep: usize,
    ttl: std::time::Duration,
) -> Result<(), crate::ConfigError> {
    if keep == 0 {
        return Err(crate::ConfigError::new(
            "history_retention",
            "keep must be at least 1",
        ));
    }
    if ttl.is_zero() {
        return Err(crate::ConfigError::new(
            "history_retention",
            "ttl must be greater than zero",
        ));
    }
    Ok(())
}

/// A session as stored.
///
/// Its `Debug` output shows the id, whether a user is set, the privilege,
/// the data's keys (not their values), the times and the device; never the
/// user's name, data values or token hashes.
#[derive(Clone, PartialEq)]
pub struct Record {
    /// The public session id.
    pub id: SessionId,
    /// SHA-256 of the current token.
    pub token_hash: TokenHash,
    /// The token this one replaced, kept for the rotation grace window.
    pub replaced: Option<Replaced>,
    /// The logged-in user, if any.
    pub user: Option<String>,
    /// The privilege level or role, if any.
    pub privilege: Option<String>,
    /// Application data.
    pub data: HashMap<String, Value>,
    /// Creation time, Unix milliseconds.
    pub created: i64,
    /// Last recorded activity, Unix milliseconds (updated when the idle
    /// deadline slides, so it is as coarse as the slide threshold).
    pub last_seen: i64,
    /// The idle deadline, Unix milliseconds.
    pub idle_deadline: i64,
    /// The absolute deadline, Unix milliseconds.
    pub absolute_deadline: i64,
    /// A coarse description of the client the session started with (the
    /// User-Agent family), for device lists and anomaly signals.
    pub device: Option<String>,
    /// A keyed pseudonym of the client network the session started from.
    pub network: Option<String>,
}

impl std::fmt::Debug for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |v: bool| v.then_some(format_args!("<set>"));
        let mut keys: Vec<&str> = self.data.keys().map(String::as_str).collect();
        keys.sort_unstable();
        f.debug_struct("Record")
            .field("id", &self.id)
            .field("token_hash", &format_args!("<hidden>"))
            .field("replaced_at", &self.replaced.map(|r| r.at))
            .field("user", &set(self.user.is_some()))
            .field("privilege", &self.privilege)
            .field("data_keys", &keys)
            .field("created", &self.created)
            .field("last_seen", &self.last_seen)
            .field("idle_deadline", &self.idle_deadline)
            .field("absolute_deadline", &self.absolute_deadline)
            .field("device", &self.device)
            .field("network", &set(self.network.is_some()))
            .finish()
    }
}

/// How long a store keeps a record after it expired (see
/// [`Record::evict_at`]): a client that comes back within this time has its
/// session's expiry recorded (`ended` with reason `idle_timeout` or
/// `absolute_timeout`) before it is served as anonymous.
pub const EXPIRED_RECORD_LINGER: std::time::Duration = std::time::Duration::from_secs(3600);

impl Record {
    /// When the session expires: the nearer of its two deadlines.
    pub fn expires_at(&self) -> i64 {
        self.idle_deadline.min(self.absolute_deadline)
    }

    /// Whether the session has expired at `now` (Unix milliseconds).
    pub fn is_expired(&self, now: i64) -> bool {
        self.expires_at() <= now
    }

    /// When a store drops the record: [`EXPIRED_RECORD_LINGER`] after it
    /// expired. Until then [`SessionStore::load`] still answers it (expired),
    /// so the layer can record why the session ended; nothing else treats an
    /// expired record as live.
    pub fn evict_at(&self) -> i64 {
        self.expires_at()
            .saturating_add(EXPIRED_RECORD_LINGER.as_millis() as i64)
    }
}

/// The answer of [`SessionStore::claim_user_slot`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// The session may carry the user; these older sessions of the user
    /// must be ended (empty unless the policy is
    /// [`SessionLimit::EndOldest`](crate::SessionLimit::EndOldest)).
    Granted {
        /// The sessions to end once the login is saved.
        end: Vec<SessionId>,
    },
    /// The user already has the maximum number of sessions.
    Refused,
}

/// A token that was replaced by rotation, and when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Replaced {
    /// SHA-256 of the replaced token.
    pub token_hash: TokenHash,
    /// When it was replaced, Unix milliseconds.
    pub at: i64,
}

/// A token rotation inside an [`Update`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rotation {
    /// SHA-256 of the new token.
    pub new_token_hash: TokenHash,
    /// When the rotation happened, Unix milliseconds.
    pub at: i64,
}

/// The changes one request made to a session, applied atomically.
///
/// Its `Debug` output names the data keys written and removed, never their
/// values, the user's name or token hashes.
#[derive(Clone, Default, PartialEq)]
pub struct Update {
    /// The update applies only if the record's current token hash is this.
    pub token_hash: TokenHash,
    /// Data keys written.
    pub set: Vec<(String, Value)>,
    /// Data keys removed.
    pub remove: Vec<String>,
    /// `Some` when the user changed.
    pub user: Option<Option<String>>,
    /// `Some` when the privilege changed.
    pub privilege: Option<Option<String>>,
    /// `Some` when the token rotates: the current hash moves to
    /// [`Record::replaced`] and the new one becomes current.
    pub rotate: Option<Rotation>,
    /// `Some((last_seen, idle_deadline))` when the idle deadline slides.
    pub touch: Option<(i64, i64)>,
    /// `Some` when the client description ([`Record::device`]) changes.
    pub device: Option<Option<String>>,
    /// `Some` when the client network pseudonym ([`Record::network`])
    /// changes.
    pub network: Option<Option<String>>,
}

impl Default for TokenHash {
    fn default() -> Self {
        TokenHash::from_bytes([0; 32])
    }
}

impl Update {
    /// Whether the update changes nothing.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
            && self.remove.is_empty()
            && self.user.is_none()
            && self.privilege.is_none()
            && self.rotate.is_none()
            && self.touch.is_none()
            && self.device.is_none()
            && self.network.is_none()
    }

    /// Applies the update to a record (the token condition is the caller's
    /// to check). Stores that keep whole records can use this.
    pub fn apply_to(&self, record: &mut Record) {
        for (k, v) in &self.set {
            record.data.insert(k.clone(), v.clone());
        }
        for k in &self.remove {
            record.data.remove(k);
        }
        if let Some(user) = &self.user {
            record.user.clone_from(user);
        }
        if let Some(privilege) = &self.privilege {
            record.privilege.clone_from(privilege);
        }
        if let Some(rotate) = &self.rotate {
            record.replaced = Some(Replaced {
                token_hash: record.token_hash,
                at: rotate.at,
            });
            record.token_hash = rotate.new_token_hash;
        }
        if let Some((last_seen, idle_deadline)) = self.touch {
            record.last_seen = last_seen;
            record.idle_deadline = idle_deadline;
        }
        if let Some(device) = &self.device {
            record.device.clone_from(device);
        }
        if let Some(network) = &self.network {
            record.network.clone_from(network);
        }
    }
}

impl std::fmt::Debug for Update {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let changed = |v: bool| v.then_some(format_args!("<changed>"));
        let set: Vec<&str> = self.set.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("Update")
            .field("token_hash", &format_args!("<hidden>"))
            .field("set_keys", &set)
            .field("remove", &self.remove)
            .field("user", &changed(self.user.is_some()))
            .field("privilege", &self.privilege)
            .field("rotate", &self.rotate.map(|r| r.at))
            .field("touch", &self.touch)
            .field("device", &self.device)
            .field("network", &changed(self.network.is_some()))
            .finish()
    }
}

/// What [`SessionStore::update`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpdateOutcome {
    /// The update was applied.
    Applied,
    /// The record no longer exists, or its token changed: nothing was written.
    Missing,
}

/// A session's history, to be indexed under its user (see
/// [`SessionStore::create_linked`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryLink<'a> {
    /// The user's keyed pseudonym (never the user id itself).
    pub user: &'a str,
    /// The session's absolute deadline, Unix milliseconds.
    pub session_ends: i64,
}

/// Where sessions are kept.
///
/// See the [module documentation](self) for the contract and a complete
/// example implementation.
pub trait SessionStore: Send + Sync + 'static {
    /// Loads a record.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable) when the
    /// store cannot answer.
    fn load(&self, id: &SessionId) -> impl Future<Output = Result<Option<Record>, Error>> + Send;

    /// Stores a new record (and indexes its user, if any). It never
    /// overwrites a record.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Conflict`](crate::ErrorKind::Conflict) when a record
    /// with this id exists (nothing is changed); others when the store
    /// cannot answer.
    fn create(&self, record: &Record) -> impl Future<Output = Result<(), Error>> + Send;

    /// [`create`](Self::create), and in the same operation, when it can,
    /// links the session's history under the user's pseudonym the way
    /// [`HistoryStore::link_user`] does. Answers whether it linked.
    ///
    /// The layer calls it for a new session that has a user when this
    /// store is also its history store, so that a login costs one store
    /// operation instead of two. The default creates the record and
    /// answers `false`: the layer then calls `link_user` itself. The Redis
    /// store links on a single node (one script, one round trip), not on a
    /// cluster (the user's index lives in another slot).
    ///
    /// Unlike a separate [`HistoryStore::link_user`], whose failure the
    /// layer only logs, a link that fails here fails the create, and with
    /// it the login: a session missing from its user's history index would
    /// be missed by that user's export and erasure.
    ///
    /// # Errors
    ///
    /// When the store cannot answer, or an index cannot be written; then
    /// the session was not created (index members may be left behind
    /// without it: readers skip a member whose session is missing, and it
    /// expires).
    fn create_linked(
        &self,
        record: &Record,
        link: &HistoryLink<'_>,
    ) -> impl Future<Output = Result<bool, Error>> + Send {
        let _ = link;
        async move { self.create(record).await.map(|()| false) }
    }

    /// Applies `update` if the record exists and its token hash matches.
    ///
    /// # Errors
    ///
    /// When the store cannot answer.
    fn update(
        &self,
        id: &SessionId,
        update: &Update,
    ) -> impl Future<Output = Result<UpdateOutcome, Error>> + Send;

    /// Deletes a record; `true` if it existed.
    ///
    /// # Errors
    ///
    /// When the store cannot answer.
    fn delete(&self, id: &SessionId) -> impl Future<Output = Result<bool, Error>> + Send;

    /// The live sessions of a user.
    ///
    /// # Errors
    ///
    /// When the store cannot answer.
    fn sessions_of_user(
        &self,
        user: &str,
    ) -> impl Future<Output = Result<Vec<Record>, Error>> + Send;

    /// Reserves a place for `session` among `user`'s sessions before a
    /// login is saved, enforcing at most `max` live sessions per user.
    /// A store should decide and reserve in one atomic step, so concurrent
    /// logins cannot exceed the limit: a claimed place counts until its
    /// login is saved (then the session itself counts) or it lapses. With
    /// [`SessionLimit::EndOldest`](crate::SessionLimit::EndOldest) the
    /// sessions it answers no longer count (they stay listed until the
    /// caller ends them, after the login is saved); logins still in
    /// progress cannot be ended, so when they alone fill the limit the
    /// answer is [`Claim::Refused`] whatever the policy.
    ///
    /// The default implementation reads [`sessions_of_user`](Self::sessions_of_user)
    /// and is *not* atomic: override it. [`MemoryStore`] and the Redis
    /// store do.
    ///
    /// # Errors
    ///
    /// When the store cannot answer.
    fn claim_user_slot(
        &self,
        user: &str,
        session: &SessionId,
        absolute_deadline: i64,
        max: usize,
        policy: crate::SessionLimit,
    ) -> impl Future<Output = Result<Claim, Error>> + Send {
        let _ = absolute_deadline;
        async move {
            let mut others: Vec<Record> = self
                .sessions_of_user(user)
                .await?
                .into_iter()
                .filter(|r| r.id != *session)
                .collect();
            Ok(decide_claim(&mut others, max, policy))
        }
    }

    /// Gives back a place taken by [`claim_user_slot`](Self::claim_user_slot)
    /// for a login that was not saved; `ended` are the sessions the claim
    /// answered, which count again. Best effort.
    ///
    /// # Errors
    ///
    /// When the store cannot answer.
    fn release_user_slot(
        &self,
        user: &str,
        session: &SessionId,
        ended: &[SessionId],
    ) -> impl Future<Output = Result<(), Error>> + Send {
        let _ = (user, session, ended);
        async { Ok(()) }
    }
}

/// The limit's decision over the user's other live sessions.
pub(crate) fn decide_claim(
    others: &mut [Record],
    max: usize,
    policy: crate::SessionLimit,
) -> Claim {
    if others.len() < max {
        return Claim::Granted { end: Vec::new() };
    }
    match policy {
        crate::SessionLimit::RefuseNew => Claim::Refused,
        crate::SessionLimit::EndOldest => {
            others.sort_by_key(|r| (r.created, r.id));
            let n = others.len() + 1 - max;
            Claim::Granted {
                end: others.iter().take(n).map(|r| r.id).collect(),
            }
        }
    }
}

/// One session's part of a [`HistoryStore::append`] call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Append {
    /// The session.
    pub session: SessionId,
    /// The head the entries were chained to; `None` for an empty list.
    pub expected_head: Option<[u8; 16]>,
    /// Encoded entries, oldest first; never empty.
    pub entries: Vec<Bytes>,
    /// When `Some`, append only if the session's record is live and holds
    /// this token hash (see the [module documentation](self)).
    pub token: Option<TokenHash>,
}

impl Append {
    /// The tag of the last entry: the head once this append is applied.
    pub fn last_tag(&self) -> Option<[u8; 16]> {
        self.entries.last().and_then(|e| tag_of(e))
    }
}

/// The tag (the last 16 bytes) of an encoded entry.
pub fn tag_of(entry: &[u8]) -> Option<[u8; 16]> {
    let start = entry.len().checked_sub(16)?;
    entry[start..].try_into().ok()
}

/// What [`HistoryStore::append`] did for one session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppendOutcome {
    /// The entries were appended.
    Appended,
    /// The head already was the batch's last tag: applied before, not
    /// appended again.
    AlreadyApplied,
    /// The head was something else; here is the last stored entry (`None`:
    /// the list is empty).
    Conflict {
        /// The last stored entry.
        last: Option<Bytes>,
    },
    /// The head was something else, and the session's history was erased
    /// within the retention TTL: a shorter chain than the writer knew is
    /// the erasure, not a loss. Nothing was appended.
    Erased {
        /// The last stored entry (`None`: the list is empty).
        last: Option<Bytes>,
    },
    /// [`Append::token`] was given and the session's record is gone, past
    /// a deadline, or holds another token. Nothing was appended.
    TokenMismatch {
        /// When the record still knows the given token as the one it
        /// replaced, when that happened (Unix milliseconds).
        replaced_at: Option<i64>,
    },
    /// This session's append failed on its own (a key of the wrong type, a
    /// corrupt stored entry, its cluster shard down); nothing was appended.
    /// Other sessions of the call are not affected.
    Failed {
        /// What the store said (never shown to clients).
        reason: String,
    },
}

/// Where session history is kept. See the [module documentation](self) for
/// the compare-and-append contract.
pub trait HistoryStore: Send + Sync + 'static {
    /// The retention this store enforces (the verifier needs `keep` to tell
    /// trimmed history from deleted history).
    fn retention(&self) -> Retention;

    /// Whether this store honours [`Append::token`]: it keeps the session
    /// records too and checks the token atomically with the append. Default
    /// `false`: the layer then never relies on it, and does not record
    /// requests whose handler did not load the session (their credential
    /// was never checked). [`MemoryStore`] and the Redis store answer
    /// `true`.
    fn checks_tokens(&self) -> bool {
        false
    }

    /// How many entries this store would like per [`append`](Self::append)
    /// call, when the writer's
    /// [`batch_entries`](crate::history::WriterConfig::batch_entries) is
    /// not set. Default `None`: the writer's default (512). The SQLite and
    /// PostgreSQL stores answer 2,048: their cost per entry falls with the
    /// size of a call (SQLite's is mostly the pages a call's transaction
    /// writes, which the sessions of one call share).
    fn preferred_batch_entries(&self) -> Option<usize> {
        None
    }

    /// Compare-and-append for many sessions at once, in one round trip where
    /// the backend allows. The outcomes are in the order of `batch`.
    ///
    /// # Errors
    ///
    /// When the store cannot answer; then the writer cannot know which
    /// appends were applied, and retries them all (the compare-and-append
    /// makes that safe).
    fn append(
        &self,
        batch: &[Append],
    ) -> impl Future<Output = Result<Vec<AppendOutcome>, Error>> + Send;

    /// The newest `n` entries of a session, oldest first.
    ///
    /// # Errors
    ///
    /// When the store cannot answer.
    fn read_newest(
        &self,
        session: &SessionId,
        n: usize,
    ) -> impl Future<Output = Result<Vec<Bytes>, Error>> + Send;

    /// Every stored entry of a session, oldest first.
    ///
    /// # Errors
    ///
    /// When the store cannot answer.
    fn read_all(
        &self,
        session: &SessionId,
    ) -> impl Future<Output = Result<Vec<Bytes>, Error>> + Send;

    /// Deletes a session's history and leaves an erasure marker for the
    /// retention TTL (see [`AppendOutcome::Erased`]); answers how many
    /// entries were removed.
    ///
    /// # Errors
    ///
    /// When the store cannot answer.
    fn delete(&self, session: &SessionId) -> impl Future<Output = Result<u64, Error>> + Send;

    /// Adds a session to a user's history index, so the user's history can
    /// be exported and erased after the session ends. `user` is a keyed
    /// pseudonym, never a raw user name. `session_ends` (Unix milliseconds)
    /// is the latest the session can end; its history may be appended to
    /// until then and is kept a TTL after, so the index must live at least
    /// until `session_ends` plus the retention TTL (links never shorten it).
    ///
    /// # Errors
    ///
    /// When the store cannot answer.
    fn link_user(
        &self,
        user: &str,
        session: &SessionId,
        session_ends: i64,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// The sessions in a user's history index, oldest link first.
    ///
    /// # Errors
    ///
    /// When the store cannot answer.
    fn user_sessions(
        &self,
        user: &str,
    ) -> impl Future<Output = Result<Vec<SessionId>, Error>> + Send;

    /// Removes sessions from a user's history index (the others stay
    /// linked).
    ///
    /// # Errors
    ///
    /// When the store cannot answer.
    fn unlink_sessions(
        &self,
        user: &str,
        sessions: &[SessionId],
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Whether this store keeps the history writer's checkpoints
    /// ([`put_checkpoint`](Self::put_checkpoint)). Every store of this
    /// crate answers `true`; the default `false` makes the writer hand its
    /// checkpoints to its sink alone, and an audit read them from there
    /// ([`CheckpointLog::outside_only`](crate::history::CheckpointLog::outside_only)).
    fn keeps_checkpoints(&self) -> bool {
        false
    }

    /// Keeps a signed checkpoint of the history writer (see
    /// [`history::checkpoint`](crate::history::checkpoint)), as
    /// [`Checkpoint::encode`](crate::history::Checkpoint::encode) gives it,
    /// heads included, for at least the retention TTL after its
    /// [`at`](crate::history::Checkpoint::at). Keeping one a second time
    /// (same writer and counter) is not an error. Called only when
    /// [`keeps_checkpoints`](Self::keeps_checkpoints) answers `true`; the
    /// default answers [`ErrorKind::Misconfigured`](crate::ErrorKind::Misconfigured).
    ///
    /// # Errors
    ///
    /// When the store cannot answer (the writer retries with backoff).
    fn put_checkpoint(
        &self,
        checkpoint: &crate::history::Checkpoint,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        let _ = checkpoint;
        std::future::ready(Err(Error::new(
            crate::ErrorKind::Misconfigured,
            "this history store keeps no checkpoints",
        )))
    }

    /// When the session's history was last erased (Unix milliseconds),
    /// while its erasure marker lasts (see [`delete`](Self::delete)). The
    /// layer's history reads ask it only when a history is shorter than
    /// this app server's checkpoints attest, to tell an erasure made by
    /// another app server (whose signed receipt this one has not seen)
    /// from a cut. The default answers `None`.
    ///
    /// # Errors
    ///
    /// When the store cannot answer.
    fn erased_at(
        &self,
        session: &SessionId,
    ) -> impl Future<Output = Result<Option<i64>, Error>> + Send {
        let _ = session;
        std::future::ready(Ok(None))
    }

    /// Every checkpoint kept, encoded, of every writer, in no particular
    /// order (see [`CheckpointLog`](crate::history::CheckpointLog)). The
    /// default answers none.
    ///
    /// # Errors
    ///
    /// When the store cannot answer.
    fn checkpoints(&self) -> impl Future<Output = Result<Vec<Bytes>, Error>> + Send {
        std::future::ready(Ok(Vec::new()))
    }
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Object-safe form of [`SessionStore`], used inside the layer.
pub(crate) trait DynSessionStore: Send + Sync + 'static {
    fn load<'a>(&'a self, id: &'a SessionId) -> BoxFuture<'a, Result<Option<Record>, Error>>;
    fn create<'a>(&'a self, record: &'a Record) -> BoxFuture<'a, Result<(), Error>>;
    fn create_linked<'a>(
        &'a self,
        record: &'a Record,
        link: &'a HistoryLink<'a>,
    ) -> BoxFuture<'a, Result<bool, Error>>;
    fn update<'a>(
        &'a self,
        id: &'a SessionId,
        update: &'a Update,
    ) -> BoxFuture<'a, Result<UpdateOutcome, Error>>;
    fn delete<'a>(&'a self, id: &'a SessionId) -> BoxFuture<'a, Result<bool, Error>>;
    fn sessions_of_user<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<Vec<Record>, Error>>;
    fn claim_user_slot<'a>(
        &'a self,
        user: &'a str,
        session: &'a SessionId,
        absolute_deadline: i64,
        max: usize,
        policy: crate::SessionLimit,
    ) -> BoxFuture<'a, Result<Claim, Error>>;
    fn release_user_slot<'a>(
        &'a self,
        user: &'a str,
        session: &'a SessionId,
        ended: &'a [SessionId],
    ) -> BoxFuture<'a, Result<(), Error>>;
}

impl<T: SessionStore> DynSessionStore for T {
    fn load<'a>(&'a self, id: &'a SessionId) -> BoxFuture<'a, Result<Option<Record>, Error>> {
        Box::pin(SessionStore::load(self, id))
    }
    fn create<'a>(&'a self, record: &'a Record) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(SessionStore::create(self, record))
    }
    fn create_linked<'a>(
        &'a self,
        record: &'a Record,
        link: &'a HistoryLink<'a>,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(SessionStore::create_linked(self, record, link))
    }
    fn update<'a>(
        &'a self,
        id: &'a SessionId,
        update: &'a Update,
    ) -> BoxFuture<'a, Result<UpdateOutcome, Error>> {
        Box::pin(SessionStore::update(self, id, update))
    }
    fn delete<'a>(&'a self, id: &'a SessionId) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(SessionStore::delete(self, id))
    }
    fn sessions_of_user<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<Vec<Record>, Error>> {
        Box::pin(SessionStore::sessions_of_user(self, user))
    }
    fn claim_user_slot<'a>(
        &'a self,
        user: &'a str,
        session: &'a SessionId,
        absolute_deadline: i64,
        max: usize,
        policy: crate::SessionLimit,
    ) -> BoxFuture<'a, Result<Claim, Error>> {
        Box::pin(SessionStore::claim_user_slot(
            self,
            user,
            session,
            absolute_deadline,
            max,
            policy,
        ))
    }
    fn release_user_slot<'a>(
        &'a self,
        user: &'a str,
        session: &'a SessionId,
        ended: &'a [SessionId],
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(SessionStore::release_user_slot(self, user, session, ended))
    }
}

/// Object-safe form of [`HistoryStore`], used by the writer.
pub(crate) trait DynHistoryStore: Send + Sync + 'static {
    fn retention(&self) -> Retention;
    fn checks_tokens(&self) -> bool;
    fn preferred_batch_entries(&self) -> Option<usize>;
    fn append<'a>(
        &'a self,
        batch: &'a [Append],
    ) -> BoxFuture<'a, Result<Vec<AppendOutcome>, Error>>;
    fn read_newest<'a>(
        &'a self,
        session: &'a SessionId,
        n: usize,
    ) -> BoxFuture<'a, Result<Vec<Bytes>, Error>>;
    fn read_all<'a>(&'a self, session: &'a SessionId) -> BoxFuture<'a, Result<Vec<Bytes>, Error>>;
    fn delete<'a>(&'a self, session: &'a SessionId) -> BoxFuture<'a, Result<u64, Error>>;
    fn link_user<'a>(
        &'a self,
        user: &'a str,
        session: &'a SessionId,
        session_ends: i64,
    ) -> BoxFuture<'a, Result<(), Error>>;
    fn user_sessions<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<Vec<SessionId>, Error>>;
    fn unlink_sessions<'a>(
        &'a self,
        user: &'a str,
        sessions: &'a [SessionId],
    ) -> BoxFuture<'a, Result<(), Error>>;
    fn keeps_checkpoints(&self) -> bool;
    fn put_checkpoint<'a>(
        &'a self,
        checkpoint: &'a crate::history::Checkpoint,
    ) -> BoxFuture<'a, Result<(), Error>>;
    fn checkpoints(&self) -> BoxFuture<'_, Result<Vec<Bytes>, Error>>;
    fn erased_at<'a>(&'a self, session: &'a SessionId)
    -> BoxFuture<'a, Result<Option<i64>, Error>>;
}

impl<T: HistoryStore> DynHistoryStore for T {
    fn retention(&self) -> Retention {
        HistoryStore::retention(self)
    }
    fn checks_tokens(&self) -> bool {
        HistoryStore::checks_tokens(self)
    }
    fn preferred_batch_entries(&self) -> Option<usize> {
        HistoryStore::preferred_batch_entries(self)
    }
    fn append<'a>(
        &'a self,
        batch: &'a [Append],
    ) -> BoxFuture<'a, Result<Vec<AppendOutcome>, Error>> {
        Box::pin(HistoryStore::append(self, batch))
    }
    fn read_newest<'a>(
        &'a self,
        session: &'a SessionId,
        n: usize,
    ) -> BoxFuture<'a, Result<Vec<Bytes>, Error>> {
        Box::pin(HistoryStore::read_newest(self, session, n))
    }
    fn read_all<'a>(&'a self, session: &'a SessionId) -> BoxFuture<'a, Result<Vec<Bytes>, Error>> {
        Box::pin(HistoryStore::read_all(self, session))
    }
    fn delete<'a>(&'a self, session: &'a SessionId) -> BoxFuture<'a, Result<u64, Error>> {
        Box::pin(HistoryStore::delete(self, session))
    }
    fn link_user<'a>(
        &'a self,
        user: &'a str,
        session: &'a SessionId,
        session_ends: i64,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(HistoryStore::link_user(self, user, session, session_ends))
    }
    fn user_sessions<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<Vec<SessionId>, Error>> {
        Box::pin(HistoryStore::user_sessions(self, user))
    }
    fn unlink_sessions<'a>(
        &'a self,
        user: &'a str,
        sessions: &'a [SessionId],
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(HistoryStore::unlink_sessions(self, user, sessions))
    }
    fn keeps_checkpoints(&self) -> bool {
        HistoryStore::keeps_checkpoints(self)
    }
    fn put_checkpoint<'a>(
        &'a self,
        checkpoint: &'a crate::history::Checkpoint,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(HistoryStore::put_checkpoint(self, checkpoint))
    }
    fn checkpoints(&self) -> BoxFuture<'_, Result<Vec<Bytes>, Error>> {
        Box::pin(HistoryStore::checkpoints(self))
    }
    fn erased_at<'a>(
        &'a self,
        session: &'a SessionId,
    ) -> BoxFuture<'a, Result<Option<i64>, Error>> {
        Box::pin(HistoryStore::erased_at(self, session))
    }
}
