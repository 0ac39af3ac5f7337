//! The SQLite store (feature `sqlite`). See [`SqliteStore`].
#[cfg(feature = "analytics")]
mod analytics;
mod schema;
mod worker;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};

use super::rows::{
    DEFAULT_MAINTENANCE_BATCH, DEFAULT_MAINTENANCE_INTERVAL, EntryRow, MaintenanceReport,
    RetentionMs, split_batch,
};
use super::{
    Append, AppendOutcome, Claim, DEFAULT_HISTORY_KEEP, DEFAULT_HISTORY_TTL, EXPIRED_RECORD_LINGER,
    HistoryLink, HistoryStore, Record, Replaced, Retention, SessionStore, TokenHash, Update,
    UpdateOutcome,
};
use crate::SessionId;
use crate::error::{ConfigError, Error, ErrorKind};
use crate::util::now_ms;
use worker::{Fail, Job, Settings};

pub use schema::SCHEMA_VERSION as SQLITE_SCHEMA_VERSION;

/// The default time an operation waits for another connection's write
/// (another process sharing the file) before it fails.
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The statements, one file each.
mod sql {
    pub(super) const LOAD: &str = include_str!("sql/load.sql");
    pub(super) const LOAD_LIVE: &str = include_str!("sql/load_live.sql");
    pub(super) const CREATE: &str = include_str!("sql/create.sql");
    pub(super) const SAVE: &str = include_str!("sql/save.sql");
    pub(super) const UNCLAIM_LOGIN: &str = include_str!("sql/unclaim_login.sql");
    pub(super) const DELETE: &str = include_str!("sql/delete.sql");
    pub(super) const DELETE_UNCLAIM: &str = include_str!("sql/delete_unclaim.sql");
    pub(super) const SESSIONS_OF_USER: &str = include_str!("sql/sessions_of_user.sql");
    pub(super) const CLAIM_OTHERS: &str = include_str!("sql/claim_others.sql");
    pub(super) const CLAIM_PENDING: &str = include_str!("sql/claim_pending.sql");
    pub(super) const CLAIM: &str = include_str!("sql/claim.sql");
    pub(super) const RELEASE: &str = include_str!("sql/release.sql");
    pub(super) const HEAD: &str = include_str!("sql/head.sql");
    pub(super) const TOKEN_OF: &str = include_str!("sql/token_of.sql");
    pub(super) const SET_HEAD: &str = include_str!("sql/set_head.sql");
    pub(super) const INSERT_ENTRY: &str = include_str!("sql/insert_entry.sql");
    pub(super) const LAST_ENTRY: &str = include_str!("sql/last_entry.sql");
    pub(super) const DROP_ENTRIES: &str = include_str!("sql/drop_entries.sql");
    pub(super) const DROP_SOME_ENTRIES: &str = include_str!("sql/drop_some_entries.sql");
    pub(super) const READ_NEWEST: &str = include_str!("sql/read_newest.sql");
    pub(super) const ERASE: &str = include_str!("sql/erase.sql");
    pub(super) const COUNT_READABLE: &str = include_str!("sql/count_readable.sql");
    pub(super) const LINK_USER: &str = include_str!("sql/link_user.sql");
    pub(super) const USER_SESSIONS: &str = include_str!("sql/user_sessions.sql");
    pub(super) const UNLINK: &str = include_str!("sql/unlink.sql");
    pub(super) const EXPIRE_SESSIONS: &str = include_str!("sql/expire_sessions.sql");
    pub(super) const EXPIRE_CLAIMS: &str = include_str!("sql/expire_claims.sql");
    pub(super) const EXPIRE_LINKS: &str = include_str!("sql/expire_links.sql");
    pub(super) const EXPIRED_HISTORIES: &str = include_str!("sql/expired_histories.sql");
    pub(super) const DROP_HEAD: &str = include_str!("sql/drop_head.sql");
    pub(super) const KILL_HEAD: &str = include_str!("sql/kill_head.sql");
    pub(super) const EMPTY_HEAD: &str = include_str!("sql/empty_head.sql");
    pub(super) const OVERFULL_HISTORIES: &str = include_str!("sql/overfull_histories.sql");
    pub(super) const TRIM_HISTORY: &str = include_str!("sql/trim_history.sql");
    pub(super) const TRIMMED_HEAD: &str = include_str!("sql/trimmed_head.sql");
    pub(super) const PUT_CHECKPOINT: &str = include_str!("sql/put_checkpoint.sql");
    pub(super) const TRIM_CHECKPOINTS: &str = include_str!("sql/trim_checkpoints.sql");
    pub(super) const CHECKPOINTS: &str = include_str!("sql/checkpoints.sql");
}

/// How SQLite makes a commit durable (its `synchronous` setting; the
/// database is always in WAL mode).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Synchronous {
    /// `synchronous = NORMAL`: a commit is written to the write-ahead log
    /// before it is acknowledged, and the log is synced to disk at each
    /// checkpoint. Nothing acknowledged is lost when the **process**
    /// crashes or is killed (the log is in the operating system's cache);
    /// an **operating system crash or power loss** can lose the commits
    /// since the last checkpoint (the database stays consistent). The
    /// default, and the usual setting for WAL.
    #[default]
    Normal,
    /// `synchronous = FULL`: the log is synced to disk at every commit, so
    /// an acknowledged commit survives a power loss too, for one `fsync`
    /// per write transaction.
    Full,
}

impl Synchronous {
    fn pragma(self) -> &'static str {
        match self {
            Self::Normal => "NORMAL",
            Self::Full => "FULL",
        }
    }
}

/// Sessions and history in one SQLite file: persistent across restarts,
/// with no server to run, and queryable with SQL.
///
/// - **Sessions** are rows. An update reads the record, checks that it is
///   live and holds the request's token hash, changes only the data keys
///   the request wrote or removed, and writes it back, all in one write
///   transaction: concurrent requests that write different keys both
///   survive, also from two processes sharing the file, and a destroyed
///   session is never resurrected. `create` is a plain `INSERT`: an id
///   that exists is refused ([`ErrorKind::Conflict`]), never overwritten.
/// - **History** is one row per entry, as in the PostgreSQL store: the
///   exact signed bytes, which [`verify`](crate::history::verify) checks,
///   and the same columns decoded from them for SQL (time, kind, event name
///   or route, method, status, user pseudonym, attributes as JSON text). A
///   batch of appends is one write transaction, in which each session's
///   compare-and-append is decided against its list (the head is the tag
///   of its newest row), with the same outcomes as the other stores.
/// - **Retention and clean-up**: reads only ever show a list's newest
///   *keep* entries and nothing past its TTL (a history lives at least the
///   TTL after its last entry, and at most a 64th of it longer, an hour at
///   most); a maintenance round deletes expired sessions, expired
///   histories, entries beyond *keep*, lapsed claims and links, in bounded
///   batches (see [`SqliteStoreBuilder::maintenance_interval`]). A round
///   that fails is logged and retried later.
///
/// # Driver and threads
///
/// [`rusqlite`] with SQLite compiled in (no system library needed). SQLite
/// calls block, so the store runs them on a **thread of its own** that
/// owns the one connection: operations are sent to it and their answers
/// awaited, so the async runtime never blocks, and the store works from
/// any runtime (or several). One connection means one writer in the
/// process, which SQLite allows anyway, and statements prepared once; each
/// operation takes a few microseconds, so the thread is rarely the limit:
/// on a 2-core machine the load benchmark's `GET /` (a load and an update)
/// serves about 31k requests/s, 3.2× tower-sessions' sqlx `SqliteStore`,
/// and the history writer appends about 120k entries/s (BENCHMARKS.md). A
/// second thread checkpoints the write-ahead log into the file, so the
/// store's thread never waits for a sync. The store asks the history
/// writer for batches of up to 2,048 entries
/// ([`HistoryStore::preferred_batch_entries`]): a transaction's cost is the
/// pages it writes, which its sessions share; such a batch holds the
/// thread for about 15 ms, and requests' operations wait behind it. The
/// threads end when the last
/// clone of the store is dropped, after the operations already sent
/// ([`close`](SqliteStore::close) waits for that).
///
/// `sqlx`'s SQLite driver was the other candidate: it also runs each
/// connection on a thread, but adds a pool and a query layer this store
/// does not need, and cannot hold a transaction across the compare-and-
/// append's Rust logic without a round trip to the thread per statement.
///
/// # File, schema and processes
///
/// [`open`](SqliteStore::open) creates the file when it is missing,
/// switches it to WAL mode, and creates or upgrades the schema (versioned:
/// the table `session_trail_schema` records the versions applied; a file
/// of a newer version is refused). Every table is named `session_trail_*`;
/// the file may hold the application's own tables too.
///
/// ```sql
#[doc = include_str!("sql/v1.sql")]
/// ```
///
/// Several processes on one host may share the file (two app servers
/// behind a proxy, a deploy that overlaps): writes take SQLite's write
/// lock in turn, waiting up to the
/// [busy timeout](SqliteStoreBuilder::busy_timeout), and every decision
/// (a token check, a compare-and-append) is made inside the write
/// transaction, so it holds across processes. Do not put the file on a
/// network file system: WAL needs shared memory on one host.
///
/// The history table has the PostgreSQL store's columns, in SQLite's
/// types: `ts` is Unix milliseconds (PostgreSQL: `timestamptz`), `attrs`
/// JSON text (`jsonb`), and `id` orders the rows as written. Queries over
/// the history, for example the most used routes of the last day:
///
/// ```sql
/// SELECT name, count(*) FROM session_trail_history
/// WHERE kind = 'request' AND ts > (unixepoch() - 86400) * 1000
/// GROUP BY name ORDER BY count(*) DESC LIMIT 10;
/// ```
///
/// The decoded columns are what analytics trust; the evidence is the
/// `entry` bytes, which `verify` checks (a row whose columns were edited
/// still verifies: only its bytes are signed). Rows past a list's *keep*
/// or TTL may linger until maintenance deletes them; the store reads a
/// list only while its `session_trail_history_heads` row's `expires_at` is
/// ahead, and only its newest *keep* rows by `seq`: filter the same way to
/// see exactly what it would answer.
///
/// # Durability
///
/// An operation is acknowledged after its transaction committed. See
/// [`Synchronous`] for what that survives: with the default
/// ([`Synchronous::Normal`]) a killed process loses nothing acknowledged,
/// a power loss can lose the last commits. The history writer's queue is
/// in memory: entries it has accepted but not yet written are lost if the
/// process is killed (`kill -9`): normally the last flush interval's
/// (50 ms by default), during a store outage up to its whole queue. Shut
/// the writer down
/// ([`HistoryWriter::shutdown`](crate::history::HistoryWriter::shutdown))
/// on `SIGTERM` and they are written first.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use session_trail::{Key, SessionLayer, store::SqliteStore};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// # let dir = std::env::temp_dir().join(format!("st-doc-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir).unwrap();
/// # let path = dir.join("sessions.db");
/// let store = SqliteStore::builder(&path)
///     .history_retention(500, Duration::from_secs(7 * 24 * 3600))
///     .open()
///     .await?;
/// let layer = SessionLayer::builder(store, Key::generate()).build()?;
/// # let _ = layer;
/// # std::fs::remove_dir_all(&dir).unwrap();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    jobs: mpsc::Sender<Job>,
    /// Closes when the store's threads have closed the file.
    closed: tokio::sync::oneshot::Receiver<()>,
    path: PathBuf,
    /// The file the store opened (`path`, with `./` before a name that
    /// starts with `file:`), absolute.
    #[cfg_attr(not(feature = "analytics"), allow(dead_code))]
    file: PathBuf,
    keep: usize,
    ttl: Duration,
    /// `keep` and `ttl` as the statements take them.
    ms: RetentionMs,
    synchronous: Synchronous,
    busy_timeout: Duration,
    /// Analytics queries running (see `analytics.rs`).
    #[cfg(feature = "analytics")]
    analytics: Arc<tokio::sync::Semaphore>,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        f.debug_struct("SqliteStore")
            .field("path", &i.path)
            .field("keep", &i.keep)
            .field("ttl", &i.ttl)
            .field("synchronous", &i.synchronous)
            .field("busy_timeout", &i.busy_timeout)
            .finish()
    }
}

/// Builds a [`SqliteStore`].
///
/// ```
/// use std::time::Duration;
/// use session_trail::store::SqliteStore;
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let err = SqliteStore::builder("sessions.db")
///     .busy_timeout(Duration::ZERO)
///     .open()
///     .await
///     .unwrap_err();
/// assert!(err.report().to_string().contains("busy_timeout"), "{}", err.report());
/// # });
/// ```
#[must_use]
#[derive(Debug)]
pub struct SqliteStoreBuilder {
    path: PathBuf,
    keep: usize,
    ttl: Duration,
    synchronous: Synchronous,
    busy_timeout: Duration,
    maintenance_interval: Option<Duration>,
    maintenance_batch: usize,
}

impl SqliteStore {
    /// Opens (or creates) the database file at `path` with the default
    /// settings; see [`SqliteStoreBuilder::open`].
    ///
    /// # Errors
    ///
    /// As [`SqliteStoreBuilder::open`].
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, Error> {
        Self::builder(path).open().await
    }

    /// A builder for a store in the file at `path`.
    pub fn builder(path: impl AsRef<Path>) -> SqliteStoreBuilder {
        SqliteStoreBuilder {
            path: path.as_ref().to_path_buf(),
            keep: DEFAULT_HISTORY_KEEP,
            ttl: DEFAULT_HISTORY_TTL,
            synchronous: Synchronous::default(),
            busy_timeout: DEFAULT_BUSY_TIMEOUT,
            maintenance_interval: Some(DEFAULT_MAINTENANCE_INTERVAL),
            maintenance_batch: DEFAULT_MAINTENANCE_BATCH,
        }
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Closes the store and waits until the file is closed: the operations
    /// already sent are done, the log is checkpointed into the file, and
    /// the store's threads have ended. Do this before copying, moving or
    /// replacing the file. Dropping the store closes it too, without
    /// waiting.
    ///
    /// # Errors
    ///
    /// The store itself, unchanged, while other clones of it are alive
    /// (a history writer or a layer holds one until it is dropped).
    pub async fn close(self) -> Result<(), SqliteStore> {
        match Arc::try_unwrap(self.inner) {
            Ok(Inner { jobs, closed, .. }) => {
                drop(jobs);
                // An error here is the same news: the thread is gone.
                let _ = closed.await;
                Ok(())
            }
            Err(inner) => Err(SqliteStore { inner }),
        }
    }

    /// Checks that the schema is at [`SQLITE_SCHEMA_VERSION`] and that
    /// every table has the columns the store uses (`open` does this too).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Misconfigured`] naming the table and what is wrong.
    pub async fn check_schema(&self) -> Result<(), Error> {
        self.call("check the schema", |db| schema::check(db.conn()))
            .await
    }

    /// Runs maintenance now: deletes expired sessions, expired histories,
    /// entries beyond the retention's *keep*, and lapsed claims and
    /// history links, in write transactions that each delete at most
    /// [`SqliteStoreBuilder::maintenance_batch`] sessions, claims, links
    /// and history rows (and look at that many lists for trimming), until
    /// none is left.
    ///
    /// # Errors
    ///
    /// When a statement fails; what was deleted before stays deleted.
    pub async fn run_maintenance(&self) -> Result<MaintenanceReport, Error> {
        let mut report = MaintenanceReport::default();
        let mut first = true;
        loop {
            // One batch per operation, so requests' operations run between
            // batches; the first starts the pass through the lists anew.
            let (batch, more) = self
                .call("maintenance", move |db| {
                    if first {
                        db.restart_trim_pass();
                    }
                    worker::maintenance_batch(db)
                })
                .await?;
            first = false;
            report.sessions += batch.sessions;
            report.claims += batch.claims;
            report.links += batch.links;
            report.histories += batch.histories;
            report.trimmed += batch.trimmed;
            if !more {
                return Ok(report);
            }
        }
    }

    /// Runs `f` with the connection on the store's thread; `what` names the
    /// operation in errors.
    async fn call<T, F>(&self, what: &'static str, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&mut worker::Db) -> Result<T, Fail> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |db| {
            // A caller that gave up while the job waited (a timed-out
            // writer attempt is retried) does not hold up the ones behind.
            if tx.is_closed() {
                return;
            }
            let _ = tx.send(f(db).map_err(|e| db.error(e, what)));
        });
        let fail = |why: &str| {
            Error::new(
                ErrorKind::Unavailable,
                format!(
                    "SQLite database {}: {what}: {why}",
                    self.inner.path.display()
                ),
            )
        };
        self.inner
            .jobs
            .send(job)
            .map_err(|_| fail("the store's thread has stopped"))?;
        rx.await.map_err(|_| {
            fail("the operation ended without an answer (it panicked; the store goes on, see its log)")
        })?
    }
}

impl SqliteStoreBuilder {
    /// Keep the newest `keep` history entries per session, and a session's
    /// history until `ttl` after its last entry.
    pub fn history_retention(mut self, keep: usize, ttl: Duration) -> Self {
        self.keep = keep;
        self.ttl = ttl;
        self
    }

    /// How commits are made durable (default [`Synchronous::Normal`]).
    pub fn synchronous(mut self, synchronous: Synchronous) -> Self {
        self.synchronous = synchronous;
        self
    }

    /// How long an operation waits for the write lock another connection
    /// (another process sharing the file) holds, before it fails with
    /// [`ErrorKind::Unavailable`] (default [`DEFAULT_BUSY_TIMEOUT`]). The
    /// store's thread waits meanwhile, so the process's other operations
    /// wait too.
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// How often maintenance runs on the store's thread (default
    /// [`DEFAULT_MAINTENANCE_INTERVAL`]), one batch at a time between
    /// other operations; `None` turns it off, for an application that
    /// calls [`SqliteStore::run_maintenance`] itself.
    pub fn maintenance_interval(mut self, interval: Option<Duration>) -> Self {
        self.maintenance_interval = interval;
        self
    }

    /// The most rows of each kind (sessions, claims, links, history
    /// entries) one maintenance transaction deletes (default
    /// [`DEFAULT_MAINTENANCE_BATCH`]), so no transaction holds the write
    /// lock for long. Trimming walks the lists in sid order, this many per
    /// transaction (with an index lookup each).
    pub fn maintenance_batch(mut self, n: usize) -> Self {
        self.maintenance_batch = n;
        self
    }

    /// Opens the file (creating it when missing), switches it to WAL mode,
    /// applies the `synchronous` setting and the busy timeout, and creates
    /// or upgrades the schema, on the store's own thread. No Tokio runtime
    /// is needed, except to await the answer.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`] for an invalid setting (its source is
    /// the [`ConfigError`] naming it: `path`, `history_retention`,
    /// `busy_timeout`, `maintenance_interval`, `maintenance_batch`). Each
    /// of the following names the file:
    /// [`ErrorKind::Misconfigured`] when the file cannot be opened or
    /// written (a missing directory, no permission, a read-only file
    /// system), when it holds a newer schema version than this build
    /// knows, or tables that differ from what the store needs (naming the
    /// table); [`ErrorKind::Corrupt`] when the file is not a SQLite
    /// database or is damaged; [`ErrorKind::Unavailable`] when another
    /// connection holds the write lock past the busy timeout.
    pub async fn open(self) -> Result<SqliteStore, Error> {
        let invalid = |e: ConfigError| Error::with_source(ErrorKind::InvalidInput, e);
        if self.path.as_os_str().is_empty() {
            return Err(invalid(ConfigError::new("path", "the path is empty")));
        }
        if self.path.as_os_str().as_encoded_bytes().contains(&0) {
            return Err(invalid(ConfigError::new(
                "path",
                "the path contains a NUL byte",
            )));
        }
        if self.path.as_os_str() == ":memory:" {
            return Err(invalid(ConfigError::new(
                "path",
                "an in-memory SQLite database is lost with the process: use MemoryStore, \
                 or a file",
            )));
        }
        super::check_retention(self.keep, self.ttl).map_err(invalid)?;
        // SQLite takes whole milliseconds, as a C int.
        if self.busy_timeout < Duration::from_millis(1)
            || self.busy_timeout.as_millis() > i32::MAX as u128
        {
            return Err(invalid(ConfigError::new(
                "busy_timeout",
                "must be from 1 ms to about 24 days (2^31 - 1 ms)",
            )));
        }
        for (setting, bad) in [
            ("maintenance_batch", self.maintenance_batch == 0),
            (
                "maintenance_interval",
                self.maintenance_interval.is_some_and(|d| d.is_zero()),
            ),
        ] {
            if bad {
                return Err(invalid(ConfigError::new(
                    setting,
                    "must be greater than zero",
                )));
            }
        }
        // SQLite reads a name starting with `file:` as a URI with options:
        // this store opens files only.
        let path = if self
            .path
            .as_os_str()
            .as_encoded_bytes()
            .starts_with(b"file:")
        {
            Path::new(".").join(&self.path)
        } else {
            self.path.clone()
        };
        let opened = path.clone();
        let settings = Settings {
            path,
            synchronous: self.synchronous,
            busy_timeout: self.busy_timeout,
            keep: RetentionMs::new(self.keep, self.ttl).keep,
            maintenance_interval: self.maintenance_interval,
            maintenance_batch: i64::try_from(self.maintenance_batch).unwrap_or(i64::MAX),
        };
        let (jobs, closed) = worker::start(settings).await?;
        // The file as opened, made absolute: other connections (analytics)
        // open the same file whatever the working directory is then.
        let file = std::fs::canonicalize(&opened).unwrap_or(opened);
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                jobs,
                closed,
                path: self.path,
                file,
                keep: self.keep,
                ttl: self.ttl,
                ms: RetentionMs::new(self.keep, self.ttl),
                synchronous: self.synchronous,
                busy_timeout: self.busy_timeout,
                #[cfg(feature = "analytics")]
                analytics: Arc::new(tokio::sync::Semaphore::new(
                    crate::analytics::QUERIES_AT_ONCE,
                )),
            }),
        })
    }
}

const RECORD_COLUMNS: usize = 13;

fn corrupt(what: &str) -> Fail {
    Fail::Err(Error::new(ErrorKind::Corrupt, what.to_owned()))
}

fn sid_of(bytes: &[u8]) -> Result<SessionId, Fail> {
    Ok(SessionId::from_bytes(
        bytes
            .try_into()
            .map_err(|_| corrupt("a sid is not 16 bytes"))?,
    ))
}

/// A record from a row of `load.sql`'s columns.
fn record_of(row: &Row<'_>) -> Result<Record, Fail> {
    debug_assert_eq!(row.as_ref().column_count(), RECORD_COLUMNS);
    let hash = |b: Vec<u8>| -> Result<TokenHash, Fail> {
        Ok(TokenHash::from_bytes(
            b.try_into()
                .map_err(|_| corrupt("a token hash is not 32 bytes"))?,
        ))
    };
    let sid: Vec<u8> = row.get(0)?;
    let replaced_hash: Option<Vec<u8>> = row.get(2)?;
    let replaced_at: Option<i64> = row.get(3)?;
    let replaced = match (replaced_hash, replaced_at) {
        (Some(h), Some(at)) => Some(Replaced {
            token_hash: hash(h)?,
            at,
        }),
        _ => None,
    };
    let data: String = row.get(6)?;
    let data: HashMap<String, serde_json::Value> = serde_json::from_str(&data)
        .map_err(|_| corrupt("a session's data is not a JSON object"))?;
    Ok(Record {
        id: sid_of(&sid)?,
        token_hash: hash(row.get(1)?)?,
        replaced,
        user: row.get(4)?,
        privilege: row.get(5)?,
        data,
        created: row.get(7)?,
        last_seen: row.get(8)?,
        idle_deadline: row.get(9)?,
        absolute_deadline: row.get(10)?,
        device: row.get(11)?,
        network: row.get(12)?,
    })
}

/// The record a statement answers, if any.
fn record(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Option<Record>, Fail> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params)?;
    rows.next()?.map(record_of).transpose()
}

fn records(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<Record>, Fail> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(record_of(row)?);
    }
    Ok(out)
}

/// The token hash a record replaced, if any.
fn replaced_hash(record: &Record) -> Option<[u8; 32]> {
    record.replaced.map(|r| *r.token_hash.as_bytes())
}

/// The record's data as the JSON text stored.
fn data_json(record: &Record) -> Result<String, Fail> {
    serde_json::to_string(&record.data).map_err(|e| Fail::Err(e.into()))
}

fn immediate(conn: &mut Connection) -> Result<rusqlite::Transaction<'_>, Fail> {
    Ok(conn.transaction_with_behavior(TransactionBehavior::Immediate)?)
}

/// Inserts a record (and, with a user, ends the login's claim; with a
/// link, links its history), in one transaction.
fn create_record(
    conn: &mut Connection,
    record: &Record,
    link: Option<(&str, i64)>,
) -> Result<(), Fail> {
    let tx = immediate(conn)?;
    let data = data_json(record)?;
    let inserted = tx.prepare_cached(sql::CREATE)?.execute(params![
        record.id.as_bytes().as_slice(),
        record.token_hash.as_bytes().as_slice(),
        replaced_hash(record).as_ref().map(<[u8; 32]>::as_slice),
        record.replaced.map(|r| r.at),
        record.user,
        record.privilege,
        data,
        record.created,
        record.last_seen,
        record.idle_deadline,
        record.absolute_deadline,
        record.device,
        record.network,
    ]);
    match inserted {
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            return Err(Fail::Err(Error::new(
                ErrorKind::Conflict,
                "a session with this id exists already (an id collision); it was not overwritten",
            )));
        }
        r => r?,
    };
    let sid = record.id.as_bytes().as_slice();
    if record.user.is_some() {
        tx.prepare_cached(sql::UNCLAIM_LOGIN)?.execute([sid])?;
    }
    if let Some((user, until)) = link {
        tx.prepare_cached(sql::LINK_USER)?
            .execute(params![user, sid, until])?;
    }
    tx.commit()?;
    Ok(())
}

impl SqliteStore {
    async fn create_with(
        &self,
        record: &Record,
        link: Option<&HistoryLink<'_>>,
    ) -> Result<(), Error> {
        let record = record.clone();
        let link = link.map(|l| (l.user.to_owned(), self.inner.ms.link_until(l.session_ends)));
        self.call("create a session", move |db| {
            create_record(
                db.conn(),
                &record,
                link.as_ref().map(|(u, t)| (u.as_str(), *t)),
            )
        })
        .await
    }
}

impl SessionStore for SqliteStore {
    async fn load(&self, id: &SessionId) -> Result<Option<Record>, Error> {
        let sid = *id.as_bytes();
        self.call("load a session", move |db| {
            let since = now_ms().saturating_sub(EXPIRED_RECORD_LINGER.as_millis() as i64);
            record(db.conn(), sql::LOAD, params![sid.as_slice(), since])
        })
        .await
    }

    async fn create(&self, record: &Record) -> Result<(), Error> {
        self.create_with(record, None).await
    }

    async fn create_linked(&self, record: &Record, link: &HistoryLink<'_>) -> Result<bool, Error> {
        self.create_with(record, Some(link)).await?;
        Ok(true)
    }

    async fn update(&self, id: &SessionId, update: &Update) -> Result<UpdateOutcome, Error> {
        let sid = *id.as_bytes();
        let update = update.clone();
        self.call("update a session", move |db| {
            let tx = immediate(db.conn())?;
            // The time once the write lock is held (not when the update
            // was sent: it may have waited for another process).
            let now = now_ms();
            let found = record(
                &tx,
                sql::LOAD_LIVE,
                params![sid.as_slice(), update.token_hash.as_bytes().as_slice(), now],
            )?;
            let Some(mut record) = found else {
                return Ok(UpdateOutcome::Missing);
            };
            update.apply_to(&mut record);
            let data = data_json(&record)?;
            tx.prepare_cached(sql::SAVE)?.execute(params![
                sid.as_slice(),
                record.token_hash.as_bytes().as_slice(),
                replaced_hash(&record).as_ref().map(<[u8; 32]>::as_slice),
                record.replaced.map(|r| r.at),
                record.user,
                record.privilege,
                data,
                record.last_seen,
                record.idle_deadline,
                record.device,
                record.network,
            ])?;
            if update.user.is_some() {
                tx.prepare_cached(sql::UNCLAIM_LOGIN)?
                    .execute([sid.as_slice()])?;
            }
            tx.commit()?;
            Ok(UpdateOutcome::Applied)
        })
        .await
    }

    async fn delete(&self, id: &SessionId) -> Result<bool, Error> {
        let sid = *id.as_bytes();
        self.call("delete a session", move |db| {
            let tx = immediate(db.conn())?;
            let n = tx.prepare_cached(sql::DELETE)?.execute([sid.as_slice()])?;
            tx.prepare_cached(sql::DELETE_UNCLAIM)?
                .execute([sid.as_slice()])?;
            tx.commit()?;
            Ok(n > 0)
        })
        .await
    }

    async fn sessions_of_user(&self, user: &str) -> Result<Vec<Record>, Error> {
        let user = user.to_owned();
        self.call("list a user's sessions", move |db| {
            records(db.conn(), sql::SESSIONS_OF_USER, params![user, now_ms()])
        })
        .await
    }

    async fn claim_user_slot(
        &self,
        user: &str,
        session: &SessionId,
        absolute_deadline: i64,
        max: usize,
        policy: crate::SessionLimit,
    ) -> Result<Claim, Error> {
        let user = user.to_owned();
        let sid = *session.as_bytes();
        self.call("claim a place under the session limit", move |db| {
            let tx = immediate(db.conn())?;
            let now = now_ms();
            let until = super::claim_lapses_at(absolute_deadline, now);
            // In one write transaction: a login saved meanwhile (its claim
            // gone and its session there) counts once, and no other claim
            // of this user (in any process) comes between count and claim.
            let others = {
                let mut stmt = tx.prepare_cached(sql::CLAIM_OTHERS)?;
                let rows = stmt.query_map(params![user, sid.as_slice(), now], |r| {
                    r.get::<_, Vec<u8>>(0)
                })?;
                rows.collect::<Result<Vec<_>, _>>()?
            };
            let pending: i64 = tx
                .prepare_cached(sql::CLAIM_PENDING)?
                .query_row(params![user, sid.as_slice(), now], |r| r.get(0))?;
            let total = others
                .len()
                .saturating_add(usize::try_from(pending).unwrap_or(0));
            let mut ends: &[Vec<u8>] = &[];
            if total >= max {
                let n = total + 1 - max;
                if policy != crate::SessionLimit::EndOldest || others.len() < n {
                    return Ok(Claim::Refused);
                }
                ends = &others[..n];
            }
            {
                let mut claim = tx.prepare_cached(sql::CLAIM)?;
                for e in ends {
                    claim.execute(params![e, 1, user, until])?;
                }
                claim.execute(params![sid.as_slice(), 0, user, until])?;
            }
            let end = ends.iter().map(|e| sid_of(e)).collect::<Result<_, _>>()?;
            tx.commit()?;
            Ok(Claim::Granted { end })
        })
        .await
    }

    async fn release_user_slot(
        &self,
        user: &str,
        session: &SessionId,
        ended: &[SessionId],
    ) -> Result<(), Error> {
        let user = user.to_owned();
        let sid = *session.as_bytes();
        let ended: Vec<[u8; 16]> = ended.iter().map(|s| *s.as_bytes()).collect();
        self.call("release a claimed place", move |db| {
            let tx = immediate(db.conn())?;
            tx.prepare_cached(sql::RELEASE)?
                .execute(params![user, sid.as_slice()])?;
            {
                let mut unclaim = tx.prepare_cached(sql::DELETE_UNCLAIM)?;
                for e in &ended {
                    unclaim.execute([e.as_slice()])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }
}

/// What an append's token is checked against: the record's token hash,
/// the hash it replaced and when, and its expiry.
type TokenRow = (Vec<u8>, Option<Vec<u8>>, Option<i64>, i64);

/// Whether an error says a stored value has an unexpected type (a row
/// edited or damaged outside the store).
fn is_type_error(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::FromSqlConversionFailure(..)
            | rusqlite::Error::InvalidColumnType(..)
            | rusqlite::Error::IntegralValueOutOfRange(..)
    )
}

/// A list's heads row.
struct Heads {
    low_seq: i64,
    expires_at: i64,
    erased_until: Option<i64>,
}

/// Compare-and-append for a whole batch in one write transaction: each
/// session's append is decided against its list (its heads row and newest
/// entry) and, for a token, its record, as the transaction's earlier
/// appends left them.
fn append_batch(
    conn: &mut Connection,
    batch: &[Append],
    retention: RetentionMs,
) -> Result<Vec<AppendOutcome>, Fail> {
    let mut out: Vec<Option<AppendOutcome>> = vec![None; batch.len()];
    let calls = split_batch(batch, &mut out);
    let tx = immediate(conn)?;
    // The time once the write lock is held: every decision of the batch is
    // made at it.
    let now = now_ms();
    let (expires, slack) = retention.expiry(now);
    {
        let mut head_of = tx.prepare_cached(sql::HEAD)?;
        let mut last_of = tx.prepare_cached(sql::LAST_ENTRY)?;
        let mut token_of = tx.prepare_cached(sql::TOKEN_OF)?;
        let mut set_head = tx.prepare_cached(sql::SET_HEAD)?;
        let mut insert = tx.prepare_cached(sql::INSERT_ENTRY)?;
        let mut drop_entries = tx.prepare_cached(sql::DROP_ENTRIES)?;
        for p in calls.iter().flatten() {
            let a = p.append;
            let sid = a.session.as_bytes().as_slice();
            // What the decision needs: the heads row, the newest entry of
            // a live list, the record's token. A stored value of the wrong
            // type fails this session alone (before anything is written for
            // it), never the call.
            let reads = (|| -> rusqlite::Result<_> {
                let h = head_of
                    .query_row([sid], |r| {
                        Ok(Heads {
                            low_seq: r.get(0)?,
                            expires_at: r.get(1)?,
                            erased_until: r.get(2)?,
                        })
                    })
                    .optional()?;
                let last: Option<(i64, Vec<u8>)> = match &h {
                    Some(h) if h.expires_at > now => last_of
                        .query_row([sid], |r| Ok((r.get(0)?, r.get(1)?)))
                        .optional()?,
                    _ => None,
                };
                let rec: Option<TokenRow> = match a.token {
                    Some(_) => token_of
                        .query_row([sid], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                        .optional()?,
                    None => None,
                };
                Ok((h, last, rec))
            })();
            let (h, last, rec) = match reads {
                Ok(reads) => reads,
                Err(e) if is_type_error(&e) => {
                    out[p.index] = Some(AppendOutcome::Failed {
                        reason: format!("a stored value of this session is corrupt: {e}"),
                    });
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            // The token condition: a live record holding it.
            if let Some(token) = &a.token {
                let token = token.as_bytes().as_slice();
                let mismatch = match rec {
                    Some((hash, _, _, expires_at)) if hash == token && expires_at > now => None,
                    Some((_, replaced, at, _)) if replaced.as_deref() == Some(token) => Some(at),
                    _ => Some(None),
                };
                if let Some(replaced_at) = mismatch {
                    out[p.index] = Some(AppendOutcome::TokenMismatch { replaced_at });
                    continue;
                }
            }
            let Some(expected) = &a.expected_head else {
                // Chained to an empty list.
                if last.is_none() {
                    start_list(&mut set_head, &mut drop_entries, sid, expires, slack)?;
                    for r in &p.rows {
                        insert_row(&mut insert, sid, r)?;
                    }
                    out[p.index] = Some(AppendOutcome::Appended);
                    continue;
                }
                out[p.index] = Some(refused(a, last, h.as_ref(), now));
                continue;
            };
            let head = last.as_ref().and_then(|(_, e)| super::tag_of(e));
            match &last {
                Some((last_seq, _))
                    if head.as_ref() == Some(expected) && p.first_seq() > *last_seq =>
                {
                    let h = h.as_ref().expect("a live list has a heads row");
                    if h.expires_at < expires {
                        set_head.execute(params![sid, h.low_seq, expires.saturating_add(slack)])?;
                    }
                    for r in &p.rows {
                        insert_row(&mut insert, sid, r)?;
                    }
                    out[p.index] = Some(AppendOutcome::Appended);
                }
                _ => out[p.index] = Some(refused(a, last, h.as_ref(), now)),
            }
        }
    }
    tx.commit()?;
    Ok(out
        .into_iter()
        .map(|o| {
            o.unwrap_or(AppendOutcome::Failed {
                reason: "no answer".into(),
            })
        })
        .collect())
}

/// Starts a list for its first entries: whatever rows the session holds go
/// first (what an expired or erased list left behind, or rows no heads row
/// names, written outside the store: left there, they would clash with the
/// new entries' seqs and fail the whole batch), and its heads row is
/// (re)set.
fn start_list(
    set_head: &mut rusqlite::CachedStatement<'_>,
    drop_entries: &mut rusqlite::CachedStatement<'_>,
    sid: &[u8],
    expires: i64,
    slack: i64,
) -> Result<(), Fail> {
    drop_entries.execute([sid])?;
    set_head.execute(params![sid, 1, expires.saturating_add(slack)])?;
    Ok(())
}

/// Why an append was not applied, given the list's newest entry (`None`:
/// the list is empty or expired).
fn refused(a: &Append, last: Option<(i64, Vec<u8>)>, h: Option<&Heads>, now: i64) -> AppendOutcome {
    let head = last.as_ref().and_then(|(_, e)| super::tag_of(e));
    if last.is_some() {
        if head.is_none() {
            return AppendOutcome::Failed {
                reason: "the newest stored entry is shorter than a tag (corrupt)".into(),
            };
        }
        if head == a.last_tag() {
            return AppendOutcome::AlreadyApplied;
        }
        if head == a.expected_head {
            // The head matched, the seqs did not follow it.
            return AppendOutcome::Failed {
                reason: "the batch's first seq does not follow the stored head's".into(),
            };
        }
    }
    let last = last.map(|(_, e)| Bytes::from(e));
    if h.and_then(|h| h.erased_until)
        .is_some_and(|until| until > now)
    {
        AppendOutcome::Erased { last }
    } else {
        AppendOutcome::Conflict { last }
    }
}

fn insert_row(
    insert: &mut rusqlite::CachedStatement<'_>,
    sid: &[u8],
    r: &EntryRow<'_>,
) -> Result<(), Fail> {
    insert.execute(params![
        sid,
        r.seq,
        r.ts,
        r.kind,
        r.name.as_deref(),
        r.method.as_deref(),
        r.status,
        r.user.as_deref(),
        r.attrs.as_deref(),
        r.bytes,
    ])?;
    Ok(())
}

/// The entries per append call the store asks the writer for (see
/// [`HistoryStore::preferred_batch_entries`]).
const PREFERRED_BATCH_ENTRIES: usize = 2_048;

impl HistoryStore for SqliteStore {
    fn checks_tokens(&self) -> bool {
        true
    }

    fn preferred_batch_entries(&self) -> Option<usize> {
        Some(PREFERRED_BATCH_ENTRIES)
    }

    fn retention(&self) -> Retention {
        Retention {
            keep: self.inner.keep,
            ttl: self.inner.ttl,
        }
    }

    async fn append(&self, batch: &[Append]) -> Result<Vec<AppendOutcome>, Error> {
        let batch = batch.to_vec();
        let retention = self.inner.ms;
        self.call("append history", move |db| {
            append_batch(db.conn(), &batch, retention)
        })
        .await
    }

    async fn read_newest(&self, session: &SessionId, n: usize) -> Result<Vec<Bytes>, Error> {
        let sid = *session.as_bytes();
        let keep = self.inner.ms.keep;
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        self.call("read history", move |db| {
            let now = now_ms();
            let mut stmt = db.conn().prepare_cached(sql::READ_NEWEST)?;
            let rows = stmt.query_map(params![sid.as_slice(), now, keep, n], |r| {
                r.get::<_, Vec<u8>>(0)
            })?;
            let mut out = rows
                .map(|r| r.map(Bytes::from))
                .collect::<Result<Vec<_>, _>>()?;
            out.reverse();
            Ok(out)
        })
        .await
    }

    async fn read_all(&self, session: &SessionId) -> Result<Vec<Bytes>, Error> {
        self.read_newest(session, usize::MAX).await
    }

    async fn delete(&self, session: &SessionId) -> Result<u64, Error> {
        let sid = *session.as_bytes();
        let keep = self.inner.ms.keep;
        let ttl = self.inner.ms.ttl;
        self.call("erase history", move |db| {
            let tx = immediate(db.conn())?;
            let now = now_ms();
            let until = now.saturating_add(ttl);
            let sid = sid.as_slice();
            let n: i64 = tx
                .prepare_cached(sql::COUNT_READABLE)?
                .query_row(params![sid, now, keep], |r| r.get(0))?;
            tx.prepare_cached(sql::DROP_ENTRIES)?.execute([sid])?;
            tx.prepare_cached(sql::ERASE)?
                .execute(params![sid, until])?;
            tx.commit()?;
            Ok(n.max(0) as u64)
        })
        .await
    }

    async fn link_user(
        &self,
        user: &str,
        session: &SessionId,
        session_ends: i64,
    ) -> Result<(), Error> {
        let user = user.to_owned();
        let sid = *session.as_bytes();
        let until = self.inner.ms.link_until(session_ends);
        self.call("link a user's history", move |db| {
            db.conn().prepare_cached(sql::LINK_USER)?.execute(params![
                user,
                sid.as_slice(),
                until
            ])?;
            Ok(())
        })
        .await
    }

    async fn user_sessions(&self, user: &str) -> Result<Vec<SessionId>, Error> {
        let user = user.to_owned();
        self.call("list a user's history", move |db| {
            let mut stmt = db.conn().prepare_cached(sql::USER_SESSIONS)?;
            let rows = stmt.query_map(params![user, now_ms()], |r| r.get::<_, Vec<u8>>(0))?;
            let mut out = Vec::new();
            for sid in rows {
                out.push(sid_of(&sid?)?);
            }
            Ok(out)
        })
        .await
    }

    async fn unlink_sessions(&self, user: &str, sessions: &[SessionId]) -> Result<(), Error> {
        let user = user.to_owned();
        let sids: Vec<[u8; 16]> = sessions.iter().map(|s| *s.as_bytes()).collect();
        self.call("unlink a user's history", move |db| {
            let tx = immediate(db.conn())?;
            {
                let mut unlink = tx.prepare_cached(sql::UNLINK)?;
                for sid in &sids {
                    unlink.execute(params![user, sid.as_slice()])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    fn keeps_checkpoints(&self) -> bool {
        true
    }

    async fn put_checkpoint(&self, cp: &crate::history::Checkpoint) -> Result<(), Error> {
        let cutoff = now_ms().saturating_sub(self.inner.ttl.as_millis() as i64);
        let writer = *cp.writer.as_bytes();
        let counter = i64::try_from(cp.counter).unwrap_or(i64::MAX);
        let at = cp.at;
        let body = cp.encode();
        self.call("keep a checkpoint", move |db| {
            let tx = immediate(db.conn())?;
            tx.prepare_cached(sql::TRIM_CHECKPOINTS)?
                .execute(params![cutoff])?;
            tx.prepare_cached(sql::PUT_CHECKPOINT)?.execute(params![
                writer.as_slice(),
                counter,
                at,
                body
            ])?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn erased_at(&self, session: &SessionId) -> Result<Option<i64>, Error> {
        let sid = *session.as_bytes();
        let ttl = self.inner.ms.ttl;
        self.call("read an erasure marker", move |db| {
            let until: Option<Option<i64>> = db
                .conn()
                .prepare_cached(sql::HEAD)?
                .query_row([sid.as_slice()], |r| r.get(2))
                .optional()?;
            let now = now_ms();
            Ok(until
                .flatten()
                .filter(|u| *u > now)
                .map(|u| u.saturating_sub(ttl)))
        })
        .await
    }

    async fn checkpoints(&self) -> Result<Vec<Bytes>, Error> {
        self.call("read checkpoints", |db| {
            let mut stmt = db.conn().prepare_cached(sql::CHECKPOINTS)?;
            let rows = stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
            let mut out = Vec::new();
            for row in rows {
                out.push(Bytes::from(row?));
            }
            Ok(out)
        })
        .await
    }
}
