//! The PostgreSQL store (feature `postgres`). See [`PostgresStore`].
#[cfg(feature = "analytics")]
mod analytics;
mod schema;
mod sql;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::rows::{
    DEFAULT_MAINTENANCE_BATCH, DEFAULT_MAINTENANCE_INTERVAL, MaintenanceReport, RetentionMs,
    split_batch,
};
use super::{
    Append, AppendOutcome, Claim, DEFAULT_HISTORY_KEEP, DEFAULT_HISTORY_TTL, EXPIRED_RECORD_LINGER,
    HistoryLink, HistoryStore, Record, Replaced, Retention, SessionStore, TokenHash, Update,
    UpdateOutcome,
};
use crate::SessionId;
use crate::error::{ConfigError, Error, ErrorKind};
use crate::util::now_ms;
use sql::Statements;

pub use schema::SCHEMA_VERSION;

/// The default schema the tables are created in.
pub const DEFAULT_SCHEMA: &str = "public";
/// The default most connections the store's pool opens.
pub const DEFAULT_POOL_SIZE: usize = 16;
/// The default time one statement may take, from sending it to its answer.
pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(2);
/// The default time opening a connection (or waiting for a free one in the
/// pool) may take.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Into how many concurrent calls an append of many sessions is split.
const APPEND_SPLIT: usize = 2;
/// The fewest sessions worth a call of their own.
const APPEND_SPLIT_MIN: usize = 64;
/// How long one maintenance statement may take (a batch of deletions).
const MAINTENANCE_STATEMENT_TIMEOUT: Duration = Duration::from_secs(60);

/// Sessions and history in PostgreSQL: one database shared by every app
/// server, persistent, and queryable with SQL.
///
/// - **Sessions** are rows. An update changes only the data keys the
///   request wrote or removed, in one statement that also checks that the
///   record exists, is live and holds the request's token hash
///   (`data = (data - removed) || changed … WHERE sid = $1 AND token_hash =
///   $2`): concurrent requests that write different keys both survive, and
///   a destroyed session is never resurrected. `create` is a plain
///   `INSERT`: an id that exists is refused
///   ([`ErrorKind::Conflict`]), never overwritten.
/// - **History** is one row per entry: the exact signed bytes, which
///   [`verify`](crate::history::verify) checks, and columns decoded from
///   them for SQL (time, kind, event name or route, method, status, user
///   pseudonym, attributes as `jsonb`). An append is a compare-and-append
///   against a per-session heads row, for every session of a batch at once
///   (one function call over arrays; a batch of more than 64 sessions is
///   split in two calls that run side by side on two connections), with
///   the same three outcomes as the other stores.
/// - **Loads** of concurrent requests share a statement: while one load
///   statement runs, the loads that arrive wait and then go together in
///   the next (`sid = ANY($1)`, up to 256), so under load most requests
///   cost one round trip (their update) instead of two; a load that finds
///   no statement running goes at once. History appends go in batches of
///   up to 2,048 entries
///   ([`HistoryStore::preferred_batch_entries`]), whose cost per entry is
///   lower than at the writer's default of 512.
/// - **Retention and clean-up**: reads only ever show a list's newest
///   *keep* entries and nothing past its TTL (a history lives at least the
///   TTL after its last entry, and at most a 64th of it longer, an hour at
///   most: its expiry is moved only now and then, so most appends update
///   the heads row in place); a maintenance task deletes
///   expired sessions, expired histories, entries beyond *keep*, lapsed
///   claims and links, in bounded batches (see
///   [`PostgresStoreBuilder::maintenance_interval`]). It logs a database
///   error, backs off and goes on; it stops when the store is dropped.
/// - **Failures**: while PostgreSQL cannot be reached, operations fail
///   with [`ErrorKind::Unavailable`] (the layer answers 503, gRPC
///   `UNAVAILABLE`; the history writer keeps its entries and retries),
///   and the pool opens new connections once it is back. A missing or
///   outdated schema is [`ErrorKind::Misconfigured`], naming the table.
///
/// # Driver
///
/// [`tokio_postgres`] with a [`deadpool_postgres`] pool, both re-exported
/// by this crate so the versions match. `tokio-postgres` has had a stable
/// API since 0.7, speaks PostgreSQL's binary protocol (arrays of `bytea`
/// for a whole batch of entries in one statement), and leaves the
/// connection handling to a small, widely used pool; the store caches
/// its prepared statements per connection. TLS: build the pool with a TLS
/// connector and hand it to [`PostgresStore::from_pool`].
///
/// # Schema
///
/// [`migrate`](PostgresStore::migrate) creates the tables in the
/// configured schema (default `public`; created if missing), all named
/// `session_trail_*`, and touches nothing else. It is versioned (the
/// table `session_trail_schema` records the versions applied), idempotent,
/// and safe when several app servers start at once: it runs in one
/// transaction under an advisory lock. Times are Unix milliseconds
/// (`bigint`), except the history's `ts`.
///
/// ```sql
#[doc = include_str!("sql/v1.sql")]
/// ```
///
/// The functions behind the atomic operations (compare-and-append,
/// erasure, the session limit's claims, maintenance) are in
/// `src/store/postgres/sql/v1_functions.sql`.
///
/// Queries over the history, for example the most used routes of the last
/// day:
///
/// ```sql
/// SELECT name, count(*) FROM session_trail_history
/// WHERE kind = 'request' AND ts > now() - interval '1 day'
/// GROUP BY name ORDER BY count(*) DESC LIMIT 10;
/// ```
///
/// The decoded columns are what analytics trust; the evidence is the
/// `entry` bytes, which `verify` checks (a row whose columns were edited
/// still verifies: only its bytes are signed). Rows past a list's *keep*
/// or TTL may linger until maintenance deletes them: query through
/// `session_trail_history_heads` (`seq > last_seq - keep`, `expires_at >`
/// now) to see exactly what the store would answer.
///
/// A large history table can be partitioned by time (`PARTITION BY RANGE
/// (ts)`, detaching old partitions instead of deleting rows): create it
/// yourself with the same columns and primary key including `ts`, before
/// the first `migrate`, which then leaves it alone. The store's
/// statements do not depend on the table's storage.
///
/// # Durability
///
/// An operation is acknowledged after PostgreSQL committed it, so with the
/// default `synchronous_commit = on` nothing acknowledged is lost when
/// PostgreSQL crashes or is killed; with `synchronous_commit = off` the
/// last few hundred milliseconds of commits can be, and the history writer
/// then records a `gap` where it notices, as with Redis.
///
/// # Example
///
/// ```no_run
/// use std::time::Duration;
/// use session_trail::{Key, SessionLayer, store::PostgresStore};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let store = PostgresStore::builder("postgres://app@127.0.0.1/app")
///     .schema("sessions")
///     .history_retention(500, Duration::from_secs(7 * 24 * 3600))
///     .connect()
///     .await?;
/// store.migrate().await?;
/// let layer = SessionLayer::builder(store, Key::generate()).build()?;
/// # let _ = layer;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    sql: Statements,
    schema: String,
    keep: usize,
    ttl: Duration,
    /// `keep` and `ttl` as the statements take them.
    ms: RetentionMs,
    statement_timeout: Duration,
    maintenance_batch: usize,
    /// Where the database is, without credentials.
    target: String,
    /// Dropped with the store: the maintenance task then stops.
    _stop: tokio::sync::watch::Sender<bool>,
    /// The task that answers loads in batches (started on first use, in
    /// the runtime of that use; again if that runtime ended).
    loads: std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedSender<LoadJob>>>,
    /// Analytics queries running (see `analytics.rs`).
    #[cfg(feature = "analytics")]
    analytics: tokio::sync::Semaphore,
}

/// One load waiting for its batch: the sid and where its answer goes.
type LoadJob = (
    [u8; 16],
    tokio::sync::oneshot::Sender<Result<Option<Record>, Error>>,
);

/// The most sessions one load statement asks for.
const LOAD_BATCH_MAX: usize = 256;
/// The entries per append call the store asks the writer for (see
/// [`HistoryStore::preferred_batch_entries`]): a call's cost per entry
/// falls with its size (58k entries/s at 2,048 against 39k at 512 in the
/// `postgres_history` bench).
const PREFERRED_BATCH_ENTRIES: usize = 2_048;

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        f.debug_struct("PostgresStore")
            .field("target", &i.target)
            .field("schema", &i.schema)
            .field("keep", &i.keep)
            .field("ttl", &i.ttl)
            .field("statement_timeout", &i.statement_timeout)
            .field("pool_size", &i.pool.status().max_size)
            .finish()
    }
}

/// Where the builder gets its connections.
enum Source {
    Url(String),
    Config(Box<tokio_postgres::Config>),
    Pool(Pool),
}

/// Builds a [`PostgresStore`].
///
/// ```
/// use std::time::Duration;
/// use session_trail::store::PostgresStore;
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// // `build` makes no I/O: the pool connects on first use.
/// let store = PostgresStore::builder("postgres://app@127.0.0.1:5432/app")
///     .schema("sessions")
///     .pool_size(8)
///     .build()
///     .unwrap();
/// # drop(store);
/// let err = PostgresStore::builder("postgres://x/y").schema("no spaces").build().unwrap_err();
/// assert_eq!(err.setting(), "schema");
/// let err = PostgresStore::builder("mysql://x/y").build().unwrap_err();
/// assert_eq!(err.setting(), "url");
/// # });
/// ```
#[must_use]
pub struct PostgresStoreBuilder {
    source: Source,
    schema: String,
    keep: usize,
    ttl: Duration,
    pool_size: usize,
    statement_timeout: Duration,
    connect_timeout: Duration,
    maintenance_interval: Option<Duration>,
    maintenance_batch: usize,
}

impl fmt::Debug for PostgresStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStoreBuilder")
            .field("schema", &self.schema)
            .field("keep", &self.keep)
            .field("ttl", &self.ttl)
            .field("pool_size", &self.pool_size)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects with the default settings and checks that PostgreSQL
    /// answers. `url` is a `postgres://` (or `postgresql://`) URL, or a
    /// `key=value` connection string, as
    /// [`tokio_postgres::Config`] parses them.
    ///
    /// The tables are not created: call [`migrate`](Self::migrate).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`] for a malformed URL (its source is the
    /// [`ConfigError`] naming the setting);
    /// [`ErrorKind::Unavailable`] when PostgreSQL cannot be reached, and
    /// [`ErrorKind::Misconfigured`] when it refuses the connection (wrong
    /// credentials, a database that does not exist).
    pub async fn connect(url: impl Into<String>) -> Result<Self, Error> {
        Self::builder(url).connect().await
    }

    /// A builder for a store at `url` (see [`connect`](Self::connect)).
    pub fn builder(url: impl Into<String>) -> PostgresStoreBuilder {
        PostgresStoreBuilder::new(Source::Url(url.into()))
    }

    /// A builder for a store connecting with `config`.
    pub fn from_config(config: tokio_postgres::Config) -> PostgresStoreBuilder {
        PostgresStoreBuilder::new(Source::Config(Box::new(config)))
    }

    /// A builder for a store using the application's own pool (its size
    /// and timeouts are the pool's; [`PostgresStoreBuilder::pool_size`]
    /// and [`PostgresStoreBuilder::connect_timeout`] do not apply).
    ///
    /// The store's own pools connect with `enable_seqscan=off`: its
    /// statements are prepared once per connection, and a plan made while
    /// a table was tiny (when a sequential scan is cheapest) would
    /// otherwise be kept once the table is large. Give the application's
    /// pool the same setting (`options=-c enable_seqscan=off` in the URL, or
    /// [`tokio_postgres::Config::options`]), or `plan_cache_mode =
    /// force_custom_plan`; the functions the store calls set it themselves.
    ///
    /// The setting travels as the `options` startup parameter (appended to
    /// any the URL or config gives). A connection pooler that refuses that
    /// parameter (PgBouncer without `ignore_startup_parameters = options`)
    /// needs it allowed, or a pool of the application's own given here.
    pub fn from_pool(pool: Pool) -> PostgresStoreBuilder {
        PostgresStoreBuilder::new(Source::Pool(pool))
    }

    /// The connection pool.
    pub fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    /// The schema the tables are in.
    pub fn schema(&self) -> &str {
        &self.inner.schema
    }

    /// Checks that PostgreSQL answers (`SELECT 1`).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Unavailable`] when it does not;
    /// [`ErrorKind::Misconfigured`] when it refuses the connection.
    pub async fn ping(&self) -> Result<(), Error> {
        self.query("SELECT 1", "SELECT 1", &[]).await.map(drop)
    }

    /// Creates or upgrades the schema to [`SCHEMA_VERSION`], then checks
    /// it (see [`check_schema`](Self::check_schema)). Idempotent; safe to
    /// call from every app server at start-up, also at the same time (one
    /// transaction under an advisory lock: the others wait, then find the
    /// work done).
    ///
    /// The migration may take up to two minutes (waiting for another
    /// server's included); see [`migrate_within`](Self::migrate_within)
    /// for a large history table.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Unavailable`] when PostgreSQL cannot be reached or the
    /// migration is not done in time (it is then cancelled and rolled
    /// back, unless it was committing: nothing is left holding locks);
    /// [`ErrorKind::Misconfigured`] when it refuses (no right to create
    /// the schema or the tables), when the database holds a newer schema
    /// version than this build knows, or when the tables differ from what
    /// the store needs (the message names the table).
    pub async fn migrate(&self) -> Result<(), Error> {
        self.migrate_within(schema::MIGRATE_TIMEOUT).await
    }

    /// [`migrate`](Self::migrate) with a deadline of your own. Version 2
    /// builds two indexes over the history table (for
    /// [`analytics`](crate::analytics)), a few seconds per million rows,
    /// while appends to the history wait (the history writer queues and
    /// retries them); give a large table the time it needs, or run the
    /// migration before the new build takes traffic.
    ///
    /// # Errors
    ///
    /// As [`migrate`](Self::migrate).
    pub async fn migrate_within(&self, timeout: Duration) -> Result<(), Error> {
        schema::migrate(self, timeout).await?;
        self.check_schema().await
    }

    /// Checks that the schema is at [`SCHEMA_VERSION`] and that every
    /// table has the columns the store uses, with their types.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Misconfigured`] naming the table and what is wrong
    /// (missing, a missing column, a column of another type, an older or
    /// newer version); [`ErrorKind::Unavailable`] when PostgreSQL cannot
    /// be reached.
    pub async fn check_schema(&self) -> Result<(), Error> {
        schema::check(self).await
    }

    /// Runs one round of maintenance now: deletes expired sessions,
    /// expired histories, entries beyond the retention's *keep*, and
    /// lapsed claims and history links, each in batches of at most
    /// [`PostgresStoreBuilder::maintenance_batch`], until none is left.
    /// The maintenance task calls it at every interval.
    ///
    /// # Errors
    ///
    /// When a statement fails; what was deleted before stays deleted.
    pub async fn run_maintenance(&self) -> Result<MaintenanceReport, Error> {
        let mut report = MaintenanceReport::default();
        let batch = i64::try_from(self.inner.maintenance_batch).unwrap_or(i64::MAX);
        let batch_i32 = i32::try_from(self.inner.maintenance_batch).unwrap_or(i32::MAX);
        let keep = self.inner.ms.keep;
        loop {
            let now = now_ms();
            let linger_cut = now.saturating_sub(EXPIRED_RECORD_LINGER.as_millis() as i64);
            let sql = &self.inner.sql;
            let t = MAINTENANCE_STATEMENT_TIMEOUT.max(self.inner.statement_timeout);
            let sessions = self
                .run_execute(
                    &sql.expire_sessions,
                    "evict sessions",
                    &[&linger_cut, &batch],
                    t,
                )
                .await?;
            let claims = self
                .run_execute(&sql.expire_claims, "drop lapsed claims", &[&now, &batch], t)
                .await?;
            let links = self
                .run_execute(&sql.expire_links, "drop lapsed links", &[&now, &batch], t)
                .await?;
            let count = |rows: Vec<Row>, what| {
                rows.first()
                    .and_then(|r| r.try_get::<_, Option<i64>>(0).ok().flatten())
                    .ok_or_else(|| corrupt(what, "no answer"))
            };
            let histories = count(
                self.run(
                    &sql.expire_history,
                    "expire histories",
                    &[&now, &batch_i32],
                    t,
                )
                .await?,
                "expire histories",
            )?;
            let trimmed = count(
                self.run(&sql.trim_history, "trim histories", &[&keep, &batch_i32], t)
                    .await?,
                "trim histories",
            )?;
            report.sessions += sessions;
            report.claims += claims;
            report.links += links;
            report.histories += histories as u64;
            report.trimmed += trimmed as u64;
            let full = |n: u64| n >= batch as u64;
            if ![sessions, claims, links, histories as u64, trimmed as u64]
                .into_iter()
                .any(full)
            {
                return Ok(report);
            }
        }
    }

    async fn query(
        &self,
        sql: &str,
        what: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, Error> {
        self.run(sql, what, params, self.inner.statement_timeout)
            .await
    }

    async fn execute(
        &self,
        sql: &str,
        what: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, Error> {
        self.run_execute(sql, what, params, self.inner.statement_timeout)
            .await
    }

    /// Runs one statement on a pooled connection within `timeout`. A
    /// statement that times out is cancelled on the server (a cancel
    /// request, best effort) and its connection is closed instead of going
    /// back to the pool, where the next caller would queue behind it.
    async fn run(
        &self,
        sql: &str,
        what: &'static str,
        params: &[&(dyn ToSql + Sync)],
        timeout: Duration,
    ) -> Result<Vec<Row>, Error> {
        self.run_with(sql, what, params, timeout, true).await
    }

    /// [`run`](Self::run), with the statement kept prepared on its
    /// connection (`cached`) or prepared afresh, so that it is planned for
    /// this call's parameters: PostgreSQL plans a statement executed often
    /// once for any parameters (a generic plan), which suits the store's
    /// point queries and can be far off for the analytics' large ones.
    async fn run_with(
        &self,
        sql: &str,
        what: &'static str,
        params: &[&(dyn ToSql + Sync)],
        timeout: Duration,
        cached: bool,
    ) -> Result<Vec<Row>, Error> {
        let in_use = InUse::new(self.client(what).await?, self.inner.statement_timeout);
        let client = in_use.client();
        let run = async {
            let stmt = if cached {
                client.prepare_cached(sql).await?
            } else {
                client.prepare(sql).await?
            };
            client.query(&stmt, params).await
        };
        match tokio::time::timeout(timeout, run).await {
            Ok(result) => {
                in_use.release();
                result.map_err(|e| self.pg_error(e, what))
            }
            Err(_) => {
                in_use.cancel();
                Err(self.timed_out(what, timeout))
            }
        }
    }

    /// [`run`](Self::run) for a statement answering a row count.
    async fn run_execute(
        &self,
        sql: &str,
        what: &'static str,
        params: &[&(dyn ToSql + Sync)],
        timeout: Duration,
    ) -> Result<u64, Error> {
        let in_use = InUse::new(self.client(what).await?, self.inner.statement_timeout);
        let client = in_use.client();
        let run = async {
            let stmt = client.prepare_cached(sql).await?;
            client.execute(&stmt, params).await
        };
        match tokio::time::timeout(timeout, run).await {
            Ok(result) => {
                in_use.release();
                result.map_err(|e| self.pg_error(e, what))
            }
            Err(_) => {
                in_use.cancel();
                Err(self.timed_out(what, timeout))
            }
        }
    }

    async fn client(&self, what: &str) -> Result<deadpool_postgres::Object, Error> {
        self.inner
            .pool
            .get()
            .await
            .map_err(|e| self.pool_error(e, what))
    }

    fn timed_out(&self, what: &str, timeout: Duration) -> Error {
        Error::new(
            ErrorKind::Unavailable,
            format!(
                "PostgreSQL at {}: {what}: no answer within {timeout:?} (cancelled)",
                self.inner.target
            ),
        )
    }

    /// A statement answering one `bigint`.
    async fn scalar(
        &self,
        sql: &str,
        what: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<i64, Error> {
        let rows = self.query(sql, what, params).await?;
        rows.first()
            .and_then(|r| r.try_get::<_, Option<i64>>(0).ok().flatten())
            .ok_or_else(|| corrupt(what, "no answer"))
    }

    fn pool_error(&self, e: PoolError, what: &str) -> Error {
        match e {
            PoolError::Backend(e) => self.pg_error(e, what),
            e => Error::with_source(ErrorKind::Unavailable, e.to_string()).context(format!(
                "PostgreSQL at {}: {what}: no connection",
                self.inner.target
            )),
        }
    }

    /// A database error as this crate's error: its kind from the SQLSTATE,
    /// its message from PostgreSQL's message (never its detail, which can
    /// quote values).
    fn pg_error(&self, e: tokio_postgres::Error, what: &str) -> Error {
        let target = &self.inner.target;
        let Some(db) = e.as_db_error() else {
            // I/O, a closed connection, a protocol error: the server is
            // gone or going.
            return Error::unavailable(e).context(format!("PostgreSQL at {target}: {what}"));
        };
        let code = db.code().code();
        let schema_problem = matches!(code, "42P01" | "42703" | "42883" | "3F000");
        let kind = match code {
            // Only a create inserts where a key can clash: an id collision.
            "23505" if what == CREATE => ErrorKind::Conflict,
            // A missing table, column or function: the schema.
            _ if schema_problem => ErrorKind::Misconfigured,
            // Credentials, permissions, a missing database.
            c if c.starts_with("28") || c == "42501" || c == "3D000" => ErrorKind::Misconfigured,
            // Data PostgreSQL cannot store (class 22, data exceptions).
            c if c.starts_with("22") || c == "54000" => ErrorKind::InvalidInput,
            _ => ErrorKind::Unavailable,
        };
        let hint = if schema_problem {
            format!(
                "; the tables of schema {:?} differ from what this build needs ({}): run \
                 PostgresStore::migrate, or check_schema for what is wrong",
                self.inner.schema,
                table_of(what)
            )
        } else {
            String::new()
        };
        Error::new(
            kind,
            format!(
                "PostgreSQL at {target}: {what}: {} (SQLSTATE {code}){hint}",
                db.message()
            ),
        )
    }
}

/// A pooled connection with a statement running on it.
///
/// - Released, it goes back to the pool.
/// - Cancelled (the store's own timeout ran out), its statement is
///   cancelled on the server and the connection closed, so no later caller
///   queues behind a statement nobody waits for.
/// - Dropped before either (the caller gave up: the history writer's
///   attempt timeout, a dropped request), it stays out of the pool until
///   its statement has ended (a task waits, at most `settle`), then goes
///   back: a client that disconnects costs no connection. A statement
///   still running after `settle` is cancelled and its connection closed.
///
/// Cancel requests go over plain TCP (`NoTls`): with a pool whose
/// connections use TLS and a server that refuses plain connections, the
/// cancel fails and the statement runs until it ends; the connection is
/// closed all the same.
struct InUse {
    client: Option<deadpool_postgres::Object>,
    settle: Duration,
}

impl InUse {
    fn new(client: deadpool_postgres::Object, settle: Duration) -> Self {
        Self {
            client: Some(client),
            settle,
        }
    }

    fn client(&self) -> &deadpool_postgres::Object {
        self.client
            .as_ref()
            .expect("a connection in use until released")
    }

    fn client_mut(&mut self) -> &mut deadpool_postgres::Object {
        self.client
            .as_mut()
            .expect("a connection in use until released")
    }

    /// The statement ended: the connection goes back to the pool.
    fn release(mut self) {
        drop(self.client.take());
    }

    /// The store gave up on the statement: cancel it, close the
    /// connection.
    fn cancel(mut self) {
        if let Some(client) = self.client.take() {
            cancel_and_close(client);
        }
    }
}

impl Drop for InUse {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            cancel_and_close(client);
            return;
        };
        let settle = self.settle;
        runtime.spawn(async move {
            // Answered once the statement before it has ended.
            match tokio::time::timeout(settle, client.simple_query("")).await {
                Ok(Ok(_)) => drop(client),
                _ => cancel_and_close(client),
            }
        });
    }
}

/// Cancels what runs on `client` (best effort) and closes it: it leaves
/// the pool.
fn cancel_and_close(client: deadpool_postgres::Object) {
    let cancel = client.cancel_token();
    drop(deadpool_postgres::Object::take(client));
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move {
            let _ = cancel.cancel_query(tokio_postgres::NoTls).await;
        });
    }
}

/// The operation name of a create, for telling its key clash apart.
const CREATE: &str = "create a session";

/// The table an operation is mainly about, for schema error messages.
fn table_of(what: &str) -> &'static str {
    if what.contains("claim") {
        "session_trail_claims"
    } else if what.contains("link") || what.contains("user's history") {
        "session_trail_user_history"
    } else if what.contains("histor") {
        "session_trail_history"
    } else {
        "session_trail_sessions"
    }
}

fn corrupt(what: &str, why: &str) -> Error {
    Error::new(ErrorKind::Corrupt, format!("PostgreSQL: {what}: {why}"))
}

impl PostgresStoreBuilder {
    fn new(source: Source) -> Self {
        Self {
            source,
            schema: DEFAULT_SCHEMA.to_owned(),
            keep: DEFAULT_HISTORY_KEEP,
            ttl: DEFAULT_HISTORY_TTL,
            pool_size: DEFAULT_POOL_SIZE,
            statement_timeout: DEFAULT_STATEMENT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            maintenance_interval: Some(DEFAULT_MAINTENANCE_INTERVAL),
            maintenance_batch: DEFAULT_MAINTENANCE_BATCH,
        }
    }

    /// The schema of the tables (default `public`): letters, digits and
    /// `_`, not starting with a digit, at most 63 bytes.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// Keep the newest `keep` history entries per session, and a session's
    /// history until `ttl` after its last entry.
    pub fn history_retention(mut self, keep: usize, ttl: Duration) -> Self {
        self.keep = keep;
        self.ttl = ttl;
        self
    }

    /// The most connections the pool opens (default
    /// [`DEFAULT_POOL_SIZE`]).
    pub fn pool_size(mut self, n: usize) -> Self {
        self.pool_size = n;
        self
    }

    /// How long one statement may take before the operation fails with
    /// [`ErrorKind::Unavailable`] (default [`DEFAULT_STATEMENT_TIMEOUT`]).
    pub fn statement_timeout(mut self, timeout: Duration) -> Self {
        self.statement_timeout = timeout;
        self
    }

    /// How long opening a connection, or waiting for a free one, may take
    /// (default [`DEFAULT_CONNECT_TIMEOUT`]).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How often the maintenance task runs (default
    /// [`DEFAULT_MAINTENANCE_INTERVAL`]); `None` turns it off, for an
    /// application that calls [`PostgresStore::run_maintenance`] itself
    /// (from one server only, say). With several app servers each runs
    /// its own task; they skip the rows another holds, so they share the
    /// work instead of waiting for each other.
    pub fn maintenance_interval(mut self, interval: Option<Duration>) -> Self {
        self.maintenance_interval = interval;
        self
    }

    /// The most rows one maintenance statement deletes (default
    /// [`DEFAULT_MAINTENANCE_BATCH`]), so no statement holds locks or
    /// writes WAL for long.
    pub fn maintenance_batch(mut self, n: usize) -> Self {
        self.maintenance_batch = n;
        self
    }

    /// Builds the store without any I/O: connections open on first use.
    /// The maintenance task, if on, is spawned on the current Tokio
    /// runtime.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the setting: `url` (malformed, or not
    /// PostgreSQL), `schema`, `history_retention`, `pool_size`,
    /// `statement_timeout`, `connect_timeout`, `maintenance_interval`
    /// (zero, or no Tokio runtime to run the task on),
    /// `maintenance_batch`.
    pub fn build(mut self) -> Result<PostgresStore, ConfigError> {
        let valid_schema = !self.schema.is_empty()
            && self.schema.len() <= 63
            && !self.schema.as_bytes()[0].is_ascii_digit()
            && self
                .schema
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid_schema {
            return Err(ConfigError::new(
                "schema",
                "a schema name is 1-63 letters, digits and `_`, not starting with a digit",
            ));
        }
        super::check_retention(self.keep, self.ttl)?;
        for (setting, bad) in [
            ("pool_size", self.pool_size == 0),
            ("statement_timeout", self.statement_timeout.is_zero()),
            ("connect_timeout", self.connect_timeout.is_zero()),
            ("maintenance_batch", self.maintenance_batch == 0),
            (
                "maintenance_interval",
                self.maintenance_interval.is_some_and(|d| d.is_zero()),
            ),
        ] {
            if bad {
                return Err(ConfigError::new(setting, "must be greater than zero"));
            }
        }
        let handle = match self.maintenance_interval {
            Some(_) => Some(tokio::runtime::Handle::try_current().map_err(|_| {
                ConfigError::new(
                    "maintenance_interval",
                    "the maintenance task needs a Tokio runtime: build the store inside one, \
                     or turn the task off with maintenance_interval(None)",
                )
            })?),
            None => None,
        };
        let source = std::mem::replace(&mut self.source, Source::Url(String::new()));
        let (pool, target) = match source {
            Source::Pool(pool) => {
                let target = "the application's pool".to_owned();
                (pool, target)
            }
            Source::Url(url) => {
                let config = parse_url(&url)?;
                self.pool(config)?
            }
            Source::Config(config) => self.pool(*config)?,
        };
        let (stop, stopped) = tokio::sync::watch::channel(false);
        // Analytics leave the sessions a connection of the pool at least.
        #[cfg(feature = "analytics")]
        let analytics = crate::analytics::QUERIES_AT_ONCE
            .min(pool.status().max_size.saturating_sub(1))
            .max(1);
        let store = PostgresStore {
            inner: Arc::new(Inner {
                pool,
                sql: Statements::new(&self.schema),
                schema: self.schema,
                keep: self.keep,
                ttl: self.ttl,
                ms: RetentionMs::new(self.keep, self.ttl),
                statement_timeout: self.statement_timeout,
                maintenance_batch: self.maintenance_batch,
                target,
                _stop: stop,
                loads: std::sync::Mutex::new(None),
                #[cfg(feature = "analytics")]
                analytics: tokio::sync::Semaphore::new(analytics),
            }),
        };
        if let (Some(interval), Some(handle)) = (self.maintenance_interval, handle) {
            handle.spawn(maintain(Arc::downgrade(&store.inner), interval, stopped));
        }
        Ok(store)
    }

    fn pool(&self, mut config: tokio_postgres::Config) -> Result<(Pool, String), ConfigError> {
        config.connect_timeout(self.connect_timeout);
        // Every statement of the store finds its rows by index. A plan is
        // cached per connection, and one made while a table was tiny (a
        // sequential scan is then cheapest) would scan it whole once it is
        // not: the store's own connections never plan one.
        let options = match config.get_options() {
            Some(o) if !o.is_empty() => format!("{o} -c enable_seqscan=off"),
            _ => "-c enable_seqscan=off".to_owned(),
        };
        config.options(options);
        if config.get_application_name().is_none() {
            config.application_name("session-trail");
        }
        let target = target_of(&config);
        let manager = Manager::from_config(
            config,
            tokio_postgres::NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(self.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(self.connect_timeout))
            .create_timeout(Some(self.connect_timeout))
            .recycle_timeout(Some(self.connect_timeout))
            .build()
            .map_err(|e| ConfigError::new("url", e.to_string()))?;
        Ok((pool, target))
    }

    /// [`build`](Self::build), then checks that PostgreSQL answers.
    ///
    /// # Errors
    ///
    /// As [`build`](Self::build) (as [`ErrorKind::InvalidInput`] with the
    /// [`ConfigError`] as its source), and as
    /// [`PostgresStore::ping`].
    pub async fn connect(self) -> Result<PostgresStore, Error> {
        let store = self
            .build()
            .map_err(|e| Error::with_source(ErrorKind::InvalidInput, e))?;
        store.ping().await?;
        Ok(store)
    }
}

fn parse_url(url: &str) -> Result<tokio_postgres::Config, ConfigError> {
    let scheme_ok = url.starts_with("postgres://") || url.starts_with("postgresql://");
    let looks_like_kv = !url.contains("://") && url.contains('=');
    if !scheme_ok && !looks_like_kv {
        return Err(ConfigError::new(
            "url",
            "expected a postgres:// or postgresql:// URL, or a key=value connection string",
        ));
    }
    // The parser's message can quote the URL, password included: not shown.
    url.parse::<tokio_postgres::Config>()
        .map_err(|_| ConfigError::new("url", "not a valid PostgreSQL connection URL"))
}

/// Host, port and database, never credentials.
fn target_of(config: &tokio_postgres::Config) -> String {
    use tokio_postgres::config::Host;
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config.get_dbname().unwrap_or("");
    format!("{host}:{port}/{db}")
}

/// The maintenance task: a round every `interval`, until the store is
/// dropped. A failed round is logged and retried sooner (from a second,
/// doubling up to the interval).
async fn maintain(
    inner: Weak<Inner>,
    interval: Duration,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let mut wait = interval.min(Duration::from_secs(5));
    let mut backoff = Duration::from_secs(1).min(interval);
    loop {
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = stopped.changed() => return,
        }
        let Some(inner) = inner.upgrade() else { return };
        let store = PostgresStore { inner };
        match store.run_maintenance().await {
            Ok(report) => {
                tracing::debug!(?report, "session store maintenance");
                wait = interval;
                backoff = Duration::from_secs(1).min(interval);
            }
            Err(e) => {
                tracing::warn!(
                    error = %e.report(),
                    retry_in = ?backoff,
                    "session store maintenance failed"
                );
                wait = backoff;
                backoff = (backoff * 2).min(interval);
            }
        }
    }
}

/// Answers loads in batches, one statement at a time: the loads that
/// arrive while a statement runs wait for it, then go together in the next
/// (`sid = ANY($1)`, at most [`LOAD_BATCH_MAX`]), so concurrent requests
/// share a round trip; a load that finds no statement running goes at
/// once. One statement in flight measured best (`/` in the load
/// benchmark: 11.1k requests/s against 10.8k with two, 9.2k with four, and
/// 8.6k loading one by one), and a batch of 256 per round trip is far
/// beyond what the app server asks.
async fn load_batches(inner: Weak<Inner>, mut jobs: tokio::sync::mpsc::UnboundedReceiver<LoadJob>) {
    while let Some(first) = jobs.recv().await {
        let mut batch = vec![first];
        while batch.len() < LOAD_BATCH_MAX {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let Some(inner) = inner.upgrade() else { return };
        PostgresStore { inner }.load_batch(batch).await;
    }
}

/// Each loaded session's answer: its record, or why it could not be read.
type Loaded = HashMap<[u8; 16], Result<Record, Error>>;

impl PostgresStore {
    /// Answers a batch of loads; callers that stopped waiting are left out.
    async fn load_batch(&self, mut batch: Vec<LoadJob>) {
        batch.retain(|(_, reply)| !reply.is_closed());
        if batch.is_empty() {
            return;
        }
        let sids: Vec<[u8; 16]> = batch.iter().map(|(sid, _)| *sid).collect();
        match self.load_now(&sids).await {
            Ok(found) => {
                for (sid, reply) in batch {
                    let answer = match found.get(&sid) {
                        None => Ok(None),
                        Some(Ok(record)) => Ok(Some(record.clone())),
                        Some(Err(e)) => Err(e.copy_for_another()),
                    };
                    let _ = reply.send(answer);
                }
            }
            Err(e) => {
                let mut batch = batch.into_iter();
                let first = batch.next();
                for (_, reply) in batch {
                    let _ = reply.send(Err(e.copy_for_another()));
                }
                if let Some((_, reply)) = first {
                    let _ = reply.send(Err(e));
                }
            }
        }
    }

    /// Loads records in one statement. A row is read only while it is not
    /// past its linger (as it was evicted); a row that cannot be read is
    /// that session's error alone.
    async fn load_now(&self, sids: &[[u8; 16]]) -> Result<Loaded, Error> {
        let since = now_ms().saturating_sub(EXPIRED_RECORD_LINGER.as_millis() as i64);
        let params: Vec<&[u8]> = sids.iter().map(<[u8; 16]>::as_slice).collect();
        let rows = self
            .query(&self.inner.sql.load, "load a session", &[&params])
            .await?;
        let mut found = HashMap::with_capacity(rows.len());
        for row in &rows {
            let sid: Option<[u8; 16]> = row
                .try_get::<_, &[u8]>(0)
                .ok()
                .and_then(|b| b.try_into().ok());
            let Some(sid) = sid else {
                tracing::warn!("a session row whose sid is not 16 bytes was passed over");
                continue;
            };
            let expires_at = match (row.try_get::<_, i64>(9), row.try_get::<_, i64>(10)) {
                (Ok(idle), Ok(absolute)) => idle.min(absolute),
                _ => i64::MAX,
            };
            // Evicted at the linger's end, read or not.
            if expires_at > since {
                found.insert(sid, record_of(row));
            }
        }
        Ok(found)
    }
}

const RECORD_COLUMNS: usize = 13;

/// A record from a row of `load.sql`'s columns.
fn record_of(row: &Row) -> Result<Record, Error> {
    debug_assert_eq!(row.len(), RECORD_COLUMNS);
    let bad = |what: &str| corrupt("reading a session", what);
    let get_err = |_| bad("a column of an unexpected type");
    let sid: &[u8] = row.try_get(0).map_err(get_err)?;
    let id = SessionId::from_bytes(sid.try_into().map_err(|_| bad("a sid is not 16 bytes"))?);
    let hash = |b: &[u8]| -> Result<TokenHash, Error> {
        Ok(TokenHash::from_bytes(
            b.try_into()
                .map_err(|_| bad("a token hash is not 32 bytes"))?,
        ))
    };
    let token_hash = hash(row.try_get(1).map_err(get_err)?)?;
    let replaced_hash: Option<&[u8]> = row.try_get(2).map_err(get_err)?;
    let replaced_at: Option<i64> = row.try_get(3).map_err(get_err)?;
    let replaced = match (replaced_hash, replaced_at) {
        (Some(h), Some(at)) => Some(Replaced {
            token_hash: hash(h)?,
            at,
        }),
        _ => None,
    };
    let data: &str = row.try_get(6).map_err(get_err)?;
    let data: HashMap<String, serde_json::Value> =
        serde_json::from_str(data).map_err(|_| bad("data is not a JSON object"))?;
    Ok(Record {
        id,
        token_hash,
        replaced,
        user: row.try_get(4).map_err(get_err)?,
        privilege: row.try_get(5).map_err(get_err)?,
        data,
        created: row.try_get(7).map_err(get_err)?,
        last_seen: row.try_get(8).map_err(get_err)?,
        idle_deadline: row.try_get(9).map_err(get_err)?,
        absolute_deadline: row.try_get(10).map_err(get_err)?,
        device: row.try_get(11).map_err(get_err)?,
        network: row.try_get(12).map_err(get_err)?,
    })
}

/// PostgreSQL's text and `jsonb` cannot hold U+0000: refused with a clear
/// error instead of a database error (the layer answers 400 for it, not
/// 503).
fn storable(what: &str, text: &str) -> Result<(), Error> {
    if text.contains('\0') {
        return Err(nul(what));
    }
    Ok(())
}

fn storable_value(what: &str, value: &serde_json::Value) -> Result<(), Error> {
    use serde_json::Value;
    let ok = match value {
        Value::String(s) => !s.contains('\0'),
        Value::Array(a) => return a.iter().try_for_each(|v| storable_value(what, v)),
        Value::Object(o) => {
            for (k, v) in o {
                storable(what, k)?;
                storable_value(what, v)?;
            }
            true
        }
        _ => true,
    };
    if ok { Ok(()) } else { Err(nul(what)) }
}

fn nul(what: &str) -> Error {
    Error::new(
        ErrorKind::InvalidInput,
        format!("{what} contains U+0000, which PostgreSQL cannot store"),
    )
}

fn storable_record(record: &Record) -> Result<String, Error> {
    for (what, v) in [
        ("the user", &record.user),
        ("the privilege", &record.privilege),
        ("the device", &record.device),
        ("the network", &record.network),
    ] {
        if let Some(v) = v {
            storable(what, v)?;
        }
    }
    for (k, v) in &record.data {
        storable("the session data", k)?;
        storable_value("the session data", v)?;
    }
    Ok(serde_json::to_string(&record.data)?)
}

impl PostgresStore {
    async fn create_with(
        &self,
        record: &Record,
        link: Option<&HistoryLink<'_>>,
    ) -> Result<(), Error> {
        let data = storable_record(record)?;
        let sid = record.id.as_bytes().as_slice();
        let token = record.token_hash.as_bytes().as_slice();
        let replaced_hash = record.replaced.map(|r| *r.token_hash.as_bytes());
        let replaced_hash = replaced_hash.as_ref().map(<[u8; 32]>::as_slice);
        let replaced_at = record.replaced.map(|r| r.at);
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![
            &sid,
            &token,
            &replaced_hash,
            &replaced_at,
            &record.user,
            &record.privilege,
            &data,
            &record.created,
            &record.last_seen,
            &record.idle_deadline,
            &record.absolute_deadline,
            &record.device,
            &record.network,
        ];
        let (sql, until);
        match link {
            Some(link) => {
                until = self.inner.ms.link_until(link.session_ends);
                params.push(&link.user);
                params.push(&until);
                sql = &self.inner.sql.create_linked;
            }
            None => sql = &self.inner.sql.create,
        }
        self.execute(sql, CREATE, &params)
            .await
            .map(drop)
            .map_err(|e| {
                if e.kind() == ErrorKind::Conflict {
                    e.context("a session with this id exists already (an id collision); it was not overwritten")
                } else {
                    e
                }
            })
    }

    /// One compare-and-append call for distinct sessions; the outcomes
    /// with each append's place in the caller's batch.
    async fn append_call(
        &self,
        call: &[super::rows::Prepared<'_>],
    ) -> Result<Vec<(usize, AppendOutcome)>, Error> {
        let mut out = Vec::with_capacity(call.len());
        let n = call.len();
        let mut s_sid = Vec::with_capacity(n);
        let mut s_expected = Vec::with_capacity(n);
        let mut s_token = Vec::with_capacity(n);
        let mut s_last = Vec::with_capacity(n);
        let mut s_first_seq = Vec::with_capacity(n);
        let mut s_last_seq = Vec::with_capacity(n);
        let entries: usize = call.iter().map(|p| p.rows.len()).sum();
        let mut e_i = Vec::with_capacity(entries);
        let mut e_seq = Vec::with_capacity(entries);
        let mut e_ts = Vec::with_capacity(entries);
        let mut e_kind = Vec::with_capacity(entries);
        let mut e_name = Vec::with_capacity(entries);
        let mut e_method = Vec::with_capacity(entries);
        let mut e_status = Vec::with_capacity(entries);
        let mut e_user = Vec::with_capacity(entries);
        let mut e_attrs = Vec::with_capacity(entries);
        let mut e_entry = Vec::with_capacity(entries);
        for (k, p) in call.iter().enumerate() {
            let a = p.append;
            s_sid.push(a.session.as_bytes().as_slice());
            s_expected.push(a.expected_head.as_ref().map(<[u8; 16]>::as_slice));
            s_token.push(a.token.as_ref().map(|t| t.as_bytes().as_slice()));
            s_last.push(super::tag_of(a.entries.last().map_or(&[][..], |e| e)).unwrap_or([0; 16]));
            s_first_seq.push(p.first_seq());
            s_last_seq.push(p.last_seq());
            for r in &p.rows {
                e_i.push(k as i32 + 1);
                e_seq.push(r.seq);
                e_ts.push(r.ts);
                e_kind.push(r.kind);
                e_name.push(r.name.as_deref());
                e_method.push(r.method.as_deref());
                e_status.push(r.status);
                e_user.push(r.user.as_deref());
                e_attrs.push(r.attrs.as_deref());
                e_entry.push(r.bytes);
            }
        }
        let s_last: Vec<&[u8]> = s_last.iter().map(<[u8; 16]>::as_slice).collect();
        let now = now_ms();
        let (expires, slack) = self.inner.ms.expiry(now);
        let rows = self
            .query(
                &self.inner.sql.append,
                "append history",
                &[
                    &now,
                    &expires,
                    &slack,
                    &s_sid,
                    &s_expected,
                    &s_token,
                    &s_last,
                    &s_first_seq,
                    &s_last_seq,
                    &e_i,
                    &e_seq,
                    &e_ts,
                    &e_kind,
                    &e_name,
                    &e_method,
                    &e_status,
                    &e_user,
                    &e_attrs,
                    &e_entry,
                ],
            )
            .await?;
        if rows.len() != n {
            return Err(corrupt(
                "append history",
                "an answer per session is missing",
            ));
        }
        for row in rows {
            let bad = |_| corrupt("append history", "an answer of an unexpected type");
            let k: i32 = row.try_get(0).map_err(bad)?;
            let outcome: i16 = row.try_get(1).map_err(bad)?;
            let replaced_at: Option<i64> = row.try_get(2).map_err(bad)?;
            let last: Option<&[u8]> = row.try_get(3).map_err(bad)?;
            let p = usize::try_from(k - 1)
                .ok()
                .and_then(|k| call.get(k))
                .ok_or_else(|| corrupt("append history", "an answer for no session"))?;
            let last = last.map(Bytes::copy_from_slice);
            out.push((
                p.index,
                match outcome {
                    1 => AppendOutcome::Appended,
                    2 => AppendOutcome::AlreadyApplied,
                    3 => AppendOutcome::TokenMismatch { replaced_at },
                    4 => AppendOutcome::Erased { last },
                    0 => AppendOutcome::Conflict { last },
                    _ => AppendOutcome::Failed {
                        reason: "the stored head names an entry that is missing or corrupt, or \
                             the batch's first seq does not follow it"
                            .into(),
                    },
                },
            ));
        }
        Ok(out)
    }
}

/// Key/value pairs serialized as a JSON object.
struct JsonObject<'a>(&'a [(String, serde_json::Value)]);

impl serde::Serialize for JsonObject<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

fn ids_of(rows: &[Row], column: usize, what: &str) -> Result<Vec<SessionId>, Error> {
    rows.iter()
        .map(|r| {
            let b: &[u8] = r
                .try_get(column)
                .map_err(|_| corrupt(what, "a sid of an unexpected type"))?;
            Ok(SessionId::from_bytes(
                b.try_into()
                    .map_err(|_| corrupt(what, "a sid is not 16 bytes"))?,
            ))
        })
        .collect()
}

impl SessionStore for PostgresStore {
    async fn load(&self, id: &SessionId) -> Result<Option<Record>, Error> {
        // The load task lives on a multi-threaded runtime, which runs it
        // whatever its callers do; elsewhere each load is a statement of
        // its own.
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if !multi_thread {
            let mut answer = self.load_now(&[*id.as_bytes()]).await?;
            return answer.remove(id.as_bytes()).transpose();
        }
        // Twice at most: a load task whose runtime ended (its queue went
        // with it) is replaced by one in this runtime.
        for _ in 0..2 {
            let (reply, answer) = tokio::sync::oneshot::channel();
            let sent = {
                let mut loads = self.inner.loads.lock().unwrap_or_else(|e| e.into_inner());
                let task = loads.get_or_insert_with(|| {
                    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                    tokio::spawn(load_batches(Arc::downgrade(&self.inner), rx));
                    tx
                });
                task.send((*id.as_bytes(), reply)).is_ok()
            };
            if sent && let Ok(answer) = answer.await {
                return answer;
            }
            // The task is gone (its receiver closed): forget it, unless
            // another load has started a new one meanwhile.
            let mut loads = self.inner.loads.lock().unwrap_or_else(|e| e.into_inner());
            if loads.as_ref().is_some_and(|task| task.is_closed()) {
                *loads = None;
            }
        }
        Err(Error::new(
            ErrorKind::Unavailable,
            format!(
                "PostgreSQL at {}: load a session: no answer (the load task's runtime is \
                 shutting down)",
                self.inner.target
            ),
        ))
    }

    async fn create(&self, record: &Record) -> Result<(), Error> {
        self.create_with(record, None).await
    }

    async fn create_linked(&self, record: &Record, link: &HistoryLink<'_>) -> Result<bool, Error> {
        self.create_with(record, Some(link)).await?;
        Ok(true)
    }

    async fn update(&self, id: &SessionId, update: &Update) -> Result<UpdateOutcome, Error> {
        let sid = id.as_bytes().as_slice();
        let token = update.token_hash.as_bytes().as_slice();
        for (k, v) in &update.set {
            storable("the session data", k)?;
            storable_value("the session data", v)?;
        }
        // The changed keys as one JSON object, written straight from the
        // update (no copy of its values).
        let set = serde_json::to_string(&JsonObject(&update.set))?;
        for (what, v) in [
            ("the user", &update.user),
            ("the privilege", &update.privilege),
            ("the device", &update.device),
            ("the network", &update.network),
        ] {
            if let Some(Some(v)) = v {
                storable(what, v)?;
            }
        }
        fn flat(v: &Option<Option<String>>) -> Option<&str> {
            v.as_ref().and_then(Option::as_deref)
        }
        let new_hash = update.rotate.map(|r| *r.new_token_hash.as_bytes());
        let new_hash = new_hash.as_ref().map(<[u8; 32]>::as_slice);
        let rotated_at = update.rotate.map(|r| r.at);
        let (user, privilege, device, network) = (
            flat(&update.user),
            flat(&update.privilege),
            flat(&update.device),
            flat(&update.network),
        );
        let now = now_ms();
        let params: [&(dyn ToSql + Sync); 17] = [
            &sid,
            &token,
            &update.remove,
            &set,
            &update.user.is_some(),
            &user,
            &update.privilege.is_some(),
            &privilege,
            &new_hash,
            &rotated_at,
            &update.touch.map(|t| t.0),
            &update.touch.map(|t| t.1),
            &update.device.is_some(),
            &device,
            &update.network.is_some(),
            &network,
            &now,
        ];
        // A plain UPDATE answering its row count; with a change of user,
        // the variant that also ends the login's claim.
        let n = if update.user.is_some() {
            self.scalar(&self.inner.sql.update_user, "update a session", &params)
                .await? as u64
        } else {
            self.execute(&self.inner.sql.update, "update a session", &params)
                .await?
        };
        Ok(if n > 0 {
            UpdateOutcome::Applied
        } else {
            UpdateOutcome::Missing
        })
    }

    async fn delete(&self, id: &SessionId) -> Result<bool, Error> {
        let sid = id.as_bytes().as_slice();
        let n = self
            .scalar(&self.inner.sql.delete, "delete a session", &[&sid])
            .await?;
        Ok(n > 0)
    }

    async fn sessions_of_user(&self, user: &str) -> Result<Vec<Record>, Error> {
        let now = now_ms();
        let rows = self
            .query(
                &self.inner.sql.sessions_of_user,
                "list a user's sessions",
                &[&user, &now],
            )
            .await?;
        rows.iter().map(record_of).collect()
    }

    async fn claim_user_slot(
        &self,
        user: &str,
        session: &SessionId,
        absolute_deadline: i64,
        max: usize,
        policy: crate::SessionLimit,
    ) -> Result<Claim, Error> {
        storable("the user", user)?;
        let now = now_ms();
        let until = super::claim_lapses_at(absolute_deadline, now);
        let sid = session.as_bytes().as_slice();
        let max = i32::try_from(max).unwrap_or(i32::MAX);
        let end_oldest = policy == crate::SessionLimit::EndOldest;
        let rows = self
            .query(
                &self.inner.sql.claim,
                "claim a place under the session limit",
                &[&user, &sid, &now, &until, &max, &end_oldest],
            )
            .await?;
        let row = rows
            .first()
            .ok_or_else(|| corrupt("claim a place", "no answer"))?;
        let granted: bool = row
            .try_get(0)
            .map_err(|_| corrupt("claim a place", "an answer of an unexpected type"))?;
        if !granted {
            return Ok(Claim::Refused);
        }
        let ended: Vec<&[u8]> = row
            .try_get(1)
            .map_err(|_| corrupt("claim a place", "an answer of an unexpected type"))?;
        let end = ended
            .into_iter()
            .map(|b| {
                b.try_into()
                    .map(SessionId::from_bytes)
                    .map_err(|_| corrupt("claim a place", "a sid is not 16 bytes"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Claim::Granted { end })
    }

    async fn release_user_slot(
        &self,
        user: &str,
        session: &SessionId,
        ended: &[SessionId],
    ) -> Result<(), Error> {
        let sid = session.as_bytes().as_slice();
        let ended: Vec<&[u8]> = ended.iter().map(|s| s.as_bytes().as_slice()).collect();
        self.execute(
            &self.inner.sql.release,
            "release a claimed place",
            &[&user, &sid, &ended],
        )
        .await
        .map(drop)
    }
}

impl HistoryStore for PostgresStore {
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
        let mut out: Vec<Option<AppendOutcome>> = vec![None; batch.len()];
        for call in split_batch(batch, &mut out) {
            // A call's sessions are distinct, so its halves touch no row in
            // common: they run at once, on two connections (two backends,
            // two cores), each still one atomic step per session.
            let half = call.len().div_ceil(APPEND_SPLIT).max(APPEND_SPLIT_MIN);
            // Both halves run to their end even when one fails: a half
            // dropped mid-query would hand its busy connection back to
            // the pool (the writer retries the whole batch either way).
            let answers = futures_util::future::join_all(
                call.chunks(half).map(|chunk| self.append_call(chunk)),
            )
            .await;
            for answer in answers {
                for (index, outcome) in answer? {
                    out[index] = Some(outcome);
                }
            }
        }
        Ok(out
            .into_iter()
            .map(|o| {
                o.unwrap_or(AppendOutcome::Failed {
                    reason: "no answer".into(),
                })
            })
            .collect())
    }

    async fn read_newest(&self, session: &SessionId, n: usize) -> Result<Vec<Bytes>, Error> {
        let sid = session.as_bytes().as_slice();
        let now = now_ms();
        let keep = self.inner.ms.keep;
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        let rows = self
            .query(
                &self.inner.sql.read_newest,
                "read history",
                &[&sid, &now, &keep, &n],
            )
            .await?;
        let mut out = rows
            .iter()
            .map(|r| {
                r.try_get::<_, &[u8]>(0)
                    .map(Bytes::copy_from_slice)
                    .map_err(|_| corrupt("read history", "an entry of an unexpected type"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        out.reverse();
        Ok(out)
    }

    async fn read_all(&self, session: &SessionId) -> Result<Vec<Bytes>, Error> {
        self.read_newest(session, usize::MAX).await
    }

    async fn delete(&self, session: &SessionId) -> Result<u64, Error> {
        let sid = session.as_bytes().as_slice();
        let now = now_ms();
        let keep = self.inner.ms.keep;
        let until = now.saturating_add(self.inner.ms.ttl);
        let n = self
            .scalar(
                &self.inner.sql.erase,
                "erase history",
                &[&sid, &now, &keep, &until],
            )
            .await?;
        Ok(n.max(0) as u64)
    }

    async fn link_user(
        &self,
        user: &str,
        session: &SessionId,
        session_ends: i64,
    ) -> Result<(), Error> {
        let sid = session.as_bytes().as_slice();
        let until = self.inner.ms.link_until(session_ends);
        self.execute(
            &self.inner.sql.link_user,
            "link a user's history",
            &[&user, &sid, &until],
        )
        .await
        .map(drop)
    }

    async fn user_sessions(&self, user: &str) -> Result<Vec<SessionId>, Error> {
        let now = now_ms();
        let rows = self
            .query(
                &self.inner.sql.user_sessions,
                "list a user's history",
                &[&user, &now],
            )
            .await?;
        ids_of(&rows, 0, "list a user's history")
    }

    async fn unlink_sessions(&self, user: &str, sessions: &[SessionId]) -> Result<(), Error> {
        let sids: Vec<&[u8]> = sessions.iter().map(|s| s.as_bytes().as_slice()).collect();
        self.execute(
            &self.inner.sql.unlink,
            "unlink a user's history",
            &[&user, &sids],
        )
        .await
        .map(drop)
    }

    fn keeps_checkpoints(&self) -> bool {
        true
    }

    async fn put_checkpoint(&self, cp: &crate::history::Checkpoint) -> Result<(), Error> {
        let cutoff = now_ms().saturating_sub(self.inner.ttl.as_millis() as i64);
        let writer = cp.writer.as_bytes().as_slice();
        let counter = i64::try_from(cp.counter).unwrap_or(i64::MAX);
        let body = cp.encode();
        self.execute(
            &self.inner.sql.put_checkpoint,
            "keep a checkpoint",
            &[&writer, &counter, &cp.at, &body, &cutoff],
        )
        .await
        .map(drop)
    }

    async fn erased_at(&self, session: &SessionId) -> Result<Option<i64>, Error> {
        let sid = session.as_bytes().as_slice();
        let rows = self
            .query(
                &self.inner.sql.erased_at,
                "read an erasure marker",
                &[&sid, &now_ms()],
            )
            .await?;
        match rows.first() {
            None => Ok(None),
            Some(r) => r
                .try_get::<_, i64>(0)
                .map(|until| Some(until.saturating_sub(self.inner.ms.ttl)))
                .map_err(|e| Error::with_source(ErrorKind::Corrupt, e)),
        }
    }

    async fn checkpoints(&self) -> Result<Vec<Bytes>, Error> {
        let rows = self
            .query(&self.inner.sql.checkpoints, "read checkpoints", &[])
            .await?;
        rows.iter()
            .map(|r| {
                r.try_get::<_, Vec<u8>>(0)
                    .map(Bytes::from)
                    .map_err(|e| Error::with_source(ErrorKind::Corrupt, e))
            })
            .collect()
    }
}
