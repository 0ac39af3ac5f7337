//! The store's thread: it owns the connection, runs the operations sent to
//! it one after another, and runs maintenance between them.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rusqlite::types::Value;
use rusqlite::{Connection, ErrorCode, OpenFlags, params};

use super::{Synchronous, immediate, schema, sql};
use crate::error::{Error, ErrorKind};
use crate::store::EXPIRED_RECORD_LINGER;
use crate::store::rows::MaintenanceReport;
use crate::util::now_ms;

/// An operation for the store's thread.
pub(super) type Job = Box<dyn FnOnce(&mut Db) + Send>;

/// Why an operation failed: SQLite's error, or one of this crate's.
pub(super) enum Fail {
    Sql(rusqlite::Error),
    Err(Error),
}

impl From<rusqlite::Error> for Fail {
    fn from(e: rusqlite::Error) -> Self {
        Self::Sql(e)
    }
}

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        Self::Err(e)
    }
}

/// What the thread needs to open the file and keep it.
pub(super) struct Settings {
    pub(super) path: PathBuf,
    pub(super) synchronous: Synchronous,
    pub(super) busy_timeout: Duration,
    pub(super) keep: i64,
    pub(super) maintenance_interval: Option<Duration>,
    pub(super) maintenance_batch: i64,
}

/// The connection, with what maintenance needs.
pub(super) struct Db {
    conn: Connection,
    path: PathBuf,
    keep: i64,
    batch: i64,
    /// Where maintenance's pass through the lists for trimming goes on
    /// (the sid after which; empty: from the start).
    trim_from: Vec<u8>,
}

impl Db {
    pub(super) fn conn(&mut self) -> &mut Connection {
        &mut self.conn
    }

    /// The next maintenance batch goes through the lists for trimming
    /// from the first.
    pub(super) fn restart_trim_pass(&mut self) {
        self.trim_from.clear();
    }

    /// A failure as this crate's error, naming the file and the operation.
    pub(super) fn error(&self, e: Fail, what: &str) -> Error {
        error(&self.path, e, what)
    }
}

/// A failure as this crate's error: its kind from SQLite's result code, its
/// message from SQLite's message (which names tables and columns, never
/// values).
pub(super) fn error(path: &std::path::Path, e: Fail, what: &str) -> Error {
    let place = format!("SQLite database {}: {what}", path.display());
    let e = match e {
        Fail::Err(e) => return e.context(place),
        Fail::Sql(e) => e,
    };
    let (kind, hint) = match &e {
        rusqlite::Error::SqliteFailure(f, _) => match f.code {
            ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => (
                ErrorKind::Unavailable,
                "; another connection held the write lock past the busy timeout",
            ),
            ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt => (
                ErrorKind::Corrupt,
                "; the file is not a SQLite database or is damaged: restore it from a backup, \
                 or move it away and start with a new file",
            ),
            ErrorCode::CannotOpen | ErrorCode::PermissionDenied | ErrorCode::ReadOnly => (
                ErrorKind::Misconfigured,
                "; check that the directory exists and that the file and its directory are \
                 writable by this process",
            ),
            ErrorCode::TooBig => (ErrorKind::InvalidInput, ""),
            ErrorCode::Unknown => (
                // SQLITE_ERROR: a missing table or column, a SQL error.
                ErrorKind::Misconfigured,
                "; the tables differ from what this build needs (SqliteStore::check_schema \
                 says what is wrong)",
            ),
            // A full disk, an I/O error, out of memory: may pass.
            _ => (ErrorKind::Unavailable, ""),
        },
        rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::InvalidColumnType(..)
        | rusqlite::Error::IntegralValueOutOfRange(..) => (
            ErrorKind::Corrupt,
            "; a stored value has an unexpected type",
        ),
        _ => (ErrorKind::Unavailable, ""),
    };
    Error::new(kind, format!("{place}: {e}{hint}"))
}

/// Starts the thread, which opens the file and prepares it; answers the
/// channel to send it operations once the file is ready.
/// Answers the channel for operations and one that closes when the file
/// is closed (both threads ended, their connections closed).
pub(super) async fn start(
    settings: Settings,
) -> Result<(mpsc::Sender<Job>, tokio::sync::oneshot::Receiver<()>), Error> {
    let (ready, opened) = tokio::sync::oneshot::channel();
    let (closed_tx, closed) = tokio::sync::oneshot::channel::<()>();
    let (jobs, queue) = mpsc::channel::<Job>();
    let path = settings.path.clone();
    std::thread::Builder::new()
        .name("session-trail-sqlite".into())
        .spawn(move || {
            // Dropped last, when the file is closed.
            let _closed = closed_tx;
            let db = match open(&settings) {
                Ok(db) => db,
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return;
                }
            };
            // Nudges the checkpoint thread after writes; it ends when this
            // is dropped.
            let (nudge, nudged) = mpsc::sync_channel::<()>(1);
            let checkpointer = match checkpoints(&settings, nudged) {
                Ok(handle) => handle,
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return;
                }
            };
            if ready.send(Ok(())).is_ok() {
                // Until the last clone of the store is dropped; the
                // connection closes with `db`.
                run(db, &settings, &queue, &nudge);
            }
            drop(nudge);
            let _ = checkpointer.join();
        })
        .map_err(|e| {
            Error::with_source(ErrorKind::Unavailable, e).context(format!(
                "SQLite database {}: start the store's thread",
                path.display()
            ))
        })?;
    opened.await.map_err(|_| {
        Error::new(
            ErrorKind::Unavailable,
            format!(
                "SQLite database {}: the store's thread stopped while opening it",
                path.display()
            ),
        )
    })??;
    Ok((jobs, closed))
}

/// The checkpoint thread copies the log into the database file at most
/// this often (while operations go on; never while none does).
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(20);
/// The log's size (pages) past which the store's own connection
/// checkpoints.
const WAL_BACKSTOP_PAGES: i64 = 40_000;

/// Starts the thread that checkpoints the write-ahead log: when the store's
/// thread nudges it after an operation, at most every
/// [`CHECKPOINT_INTERVAL`], it copies the committed pages into the
/// database file (`PRAGMA wal_checkpoint(PASSIVE)`, which never blocks the
/// writer) and syncs the file, so the store's thread never waits for that
/// sync. It ends, after a last checkpoint, when the nudging side is
/// dropped.
fn checkpoints(
    s: &Settings,
    nudged: mpsc::Receiver<()>,
) -> Result<std::thread::JoinHandle<()>, Error> {
    let fail = |e: rusqlite::Error| error(&s.path, e.into(), "open a checkpoint connection");
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(&s.path, flags).map_err(fail)?;
    conn.busy_timeout(s.busy_timeout).map_err(fail)?;
    conn.pragma_update(None, "synchronous", s.synchronous.pragma())
        .map_err(fail)?;
    let path = s.path.clone();
    let checkpoint = move |conn: &Connection| {
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::debug!(path = %path.display(), error = %e, "checkpoint failed (retried)");
        }
    };
    std::thread::Builder::new()
        .name("session-trail-sqlite-checkpoint".into())
        .spawn(move || {
            while nudged.recv().is_ok() {
                checkpoint(&conn);
                std::thread::sleep(CHECKPOINT_INTERVAL);
            }
            checkpoint(&conn);
        })
        .map_err(|e| {
            Error::with_source(ErrorKind::Unavailable, e).context(format!(
                "SQLite database {}: start the checkpoint thread",
                s.path.display()
            ))
        })
}

fn open(s: &Settings) -> Result<Db, Error> {
    let fail = |e: Fail, what: &str| error(&s.path, e, what);
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(&s.path, flags).map_err(|e| fail(e.into(), "open"))?;
    let mut db = Db {
        conn,
        path: s.path.clone(),
        keep: s.keep,
        batch: s.maintenance_batch,
        trim_from: Vec::new(),
    };
    let setup = |conn: &mut Connection| -> Result<(), Fail> {
        conn.busy_timeout(s.busy_timeout)?;
        conn.set_prepared_statement_cache_capacity(64);
        // Reading the file's header: a file that is not a database fails
        // here, before anything is written to it.
        conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| {
            r.get::<_, i64>(0)
        })?;
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Fail::Err(Error::new(
                ErrorKind::Misconfigured,
                format!("SQLite kept journal mode {mode:?} instead of WAL"),
            )));
        }
        conn.pragma_update(None, "synchronous", s.synchronous.pragma())?;
        // Checkpoints (copying the log into the file, and syncing it) run
        // on a thread of their own (see `checkpoints`); this connection
        // checkpoints only when the log grows past this many pages
        // anyway (about 40 MiB: the other thread fell behind).
        conn.pragma_update(None, "wal_autocheckpoint", WAL_BACKSTOP_PAGES)?;
        // After a checkpoint, a log that grew large is cut back to this.
        conn.pragma_update(None, "journal_size_limit", 64 << 20)?;
        // 16 MiB of page cache (SQLite's default is 2 MiB): a history's
        // index and the sessions stay in memory longer.
        conn.pragma_update(None, "cache_size", -16_384)?;
        Ok(())
    };
    setup(&mut db.conn).map_err(|e| fail(e, "open"))?;
    schema::migrate(&mut db.conn).map_err(|e| fail(e, "migrate the schema"))?;
    schema::check(&mut db.conn).map_err(|e| fail(e, "check the schema"))?;
    Ok(db)
}

/// Runs operations until every sender is gone, and a maintenance batch
/// whenever one is due (every interval, and right after one that found
/// more to do, between the operations waiting).
fn run(mut db: Db, s: &Settings, queue: &mpsc::Receiver<Job>, nudge: &mpsc::SyncSender<()>) {
    let interval = s.maintenance_interval;
    // `None`: never (also an interval beyond what `Instant` can hold).
    let after = |d: Duration| Instant::now().checked_add(d);
    let mut due = interval.and_then(|i| after(i.min(Duration::from_secs(5))));
    let mut backoff = Duration::from_secs(1);
    loop {
        if let (Some(at), Some(interval)) = (due, interval)
            && Instant::now() >= at
        {
            // A panic in maintenance is logged like a failed batch; the
            // thread goes on.
            let next = catch_unwind(AssertUnwindSafe(|| {
                maintain(&mut db, interval, &mut backoff)
            }))
            .unwrap_or_else(|_| {
                tracing::error!(path = %db.path.display(), "a SQLite maintenance batch panicked");
                interval
            });
            due = after(next);
            let _ = nudge.try_send(());
        }
        let job = match due {
            Some(at) => match queue.recv_timeout(at.saturating_duration_since(Instant::now())) {
                Ok(job) => job,
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            },
            None => match queue.recv() {
                Ok(job) => job,
                Err(_) => return,
            },
        };
        // An operation that panics answers nothing (its caller sees the
        // reply dropped); its transaction rolls back, and the thread goes
        // on with the next.
        if catch_unwind(AssertUnwindSafe(|| job(&mut db))).is_err() {
            tracing::error!(path = %db.path.display(), "a SQLite store operation panicked");
        }
        // Full: a checkpoint is due already.
        let _ = nudge.try_send(());
    }
}

/// Logs a row maintenance passes over: a value of an unexpected type,
/// written outside the store.
fn passed_over(path: &std::path::Path, table: &str, column: &str) {
    tracing::warn!(
        path = %path.display(),
        table,
        column,
        "maintenance passed over a row whose value has an unexpected type"
    );
}

/// One maintenance batch; answers when the next is due.
fn maintain(db: &mut Db, interval: Duration, backoff: &mut Duration) -> Duration {
    match maintenance_batch(db) {
        Ok((report, more)) => {
            tracing::debug!(?report, "session store maintenance");
            *backoff = Duration::from_secs(1).min(interval);
            if more { Duration::ZERO } else { interval }
        }
        Err(e) => {
            let wait = *backoff;
            tracing::warn!(
                error = %db.error(e, "maintenance").report(),
                retry_in = ?wait,
                "session store maintenance failed"
            );
            *backoff = (*backoff * 2).min(interval);
            wait
        }
    }
}

/// Deletes up to a batch of each kind of expired row, in one write
/// transaction; answers what it deleted and whether more is left.
pub(super) fn maintenance_batch(db: &mut Db) -> Result<(MaintenanceReport, bool), Fail> {
    let (keep, batch) = (db.keep, db.batch);
    let now = now_ms();
    let linger_cut = now.saturating_sub(EXPIRED_RECORD_LINGER.as_millis() as i64);
    let tx = immediate(&mut db.conn)?;
    let sessions = tx
        .prepare_cached(sql::EXPIRE_SESSIONS)?
        .execute(params![linger_cut, batch])? as u64;
    let claims = tx
        .prepare_cached(sql::EXPIRE_CLAIMS)?
        .execute(params![now, batch])? as u64;
    let links = tx
        .prepare_cached(sql::EXPIRE_LINKS)?
        .execute(params![now, batch])? as u64;
    // History rows: at most `batch` deleted per transaction, however many
    // entries the lists hold (`budget`); a list left half done is finished
    // by the next batch.
    let mut budget = batch;
    let mut more = false;
    // Read as they are stored: a row of another type (edited outside the
    // store) is passed over with a warning, never the end of maintenance.
    let expired: Vec<(Value, Value)> = tx
        .prepare_cached(sql::EXPIRED_HISTORIES)?
        .query_map(params![now, batch], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let mut histories = 0;
    for (sid, erasure_remembered) in &expired {
        let Value::Blob(sid) = sid else {
            passed_over(&db.path, "session_trail_history_heads", "sid");
            continue;
        };
        let erasure_remembered = matches!(erasure_remembered, Value::Integer(n) if *n != 0);
        // Dead from now on, whatever time a waiting operation holds: a
        // list cut short by the budget is never read or appended to again.
        tx.prepare_cached(sql::KILL_HEAD)?.execute([sid])?;
        let n = tx
            .prepare_cached(sql::DROP_SOME_ENTRIES)?
            .execute(params![sid, budget])? as i64;
        budget -= n;
        if budget <= 0 {
            more = true;
            break;
        }
        let sql = if erasure_remembered {
            sql::EMPTY_HEAD
        } else {
            sql::DROP_HEAD
        };
        tx.prepare_cached(sql)?.execute([sid])?;
        histories += 1;
    }

    // A batch of lists in sid order from where the last batch stopped;
    // those holding more than `keep` entries are trimmed.
    let scanned: Vec<(Value, Value, Value)> = if more {
        Vec::new()
    } else {
        tx.prepare_cached(sql::OVERFULL_HISTORIES)?
            .query_map(params![keep, batch, db.trim_from], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?
            .collect::<Result<_, _>>()?
    };
    let mut scan_done = !more && (scanned.len() as i64) < batch;
    let mut next_from = db.trim_from.clone();
    let mut trimmed = 0;
    for (sid, upto, low_seq) in &scanned {
        let Value::Blob(sid) = sid else {
            passed_over(&db.path, "session_trail_history_heads", "sid");
            continue;
        };
        let (upto, low_seq) = match (upto, low_seq) {
            (Value::Integer(upto), Value::Integer(low)) => (Some(*upto), *low),
            // No entries.
            (Value::Null, Value::Integer(low)) => (None, *low),
            _ => {
                passed_over(&db.path, "session_trail_history", "seq or low_seq");
                next_from.clone_from(sid);
                continue;
            }
        };
        if let Some(upto) = upto
            && upto >= low_seq
        {
            let n = tx
                .prepare_cached(sql::TRIM_HISTORY)?
                .execute(params![sid, upto, budget])? as i64;
            budget -= n;
            if budget <= 0 {
                // This list may hold more: the next batch starts with it.
                scan_done = false;
                break;
            }
            tx.prepare_cached(sql::TRIMMED_HEAD)?
                .execute(params![sid, upto])?;
            trimmed += 1;
        }
        next_from.clone_from(sid);
    }
    tx.commit()?;
    db.trim_from = if scan_done { Vec::new() } else { next_from };
    let report = MaintenanceReport {
        sessions,
        claims,
        links,
        histories,
        trimmed,
    };
    let full = |n: u64| n >= batch as u64;
    let more = more
        || !scan_done
        || [
            report.sessions,
            report.claims,
            report.links,
            report.histories,
        ]
        .into_iter()
        .any(full);
    Ok((report, more))
}
