//! The versioned schema: creating and upgrading it, and checking it.

use rusqlite::{Connection, OptionalExtension, params};

use super::immediate;
use super::worker::Fail;
use crate::error::{Error, ErrorKind};
use crate::util::now_ms;

/// The schema version this build creates and expects.
pub const SCHEMA_VERSION: i64 = 3;

/// The scripts that bring a file from version `n - 1` to `n`, in order.
const MIGRATIONS: [&str; SCHEMA_VERSION as usize] = [
    include_str!("sql/v1.sql"),
    include_str!("sql/v2.sql"),
    include_str!("sql/v3.sql"),
];

/// The tables and the columns the store uses.
const TABLES: [(&str, &[&str]); 6] = [
    (
        "session_trail_sessions",
        &[
            "sid",
            "token_hash",
            "replaced_hash",
            "replaced_at",
            "user_id",
            "privilege",
            "data",
            "created",
            "last_seen",
            "idle_deadline",
            "absolute_deadline",
            "expires_at",
            "device",
            "network",
        ],
    ),
    ("session_trail_claims", &["sid", "kind", "user_id", "until"]),
    (
        "session_trail_history",
        &[
            "id",
            "sid",
            "session",
            "seq",
            "ts",
            "kind",
            "name",
            "method",
            "status",
            "user_pseudonym",
            "attrs",
            "entry",
        ],
    ),
    (
        "session_trail_history_heads",
        &["sid", "low_seq", "expires_at", "erased_until"],
    ),
    (
        "session_trail_user_history",
        &["linked", "user_pseudonym", "sid", "until"],
    ),
    (
        "session_trail_checkpoints",
        &["writer", "counter", "at", "body"],
    ),
];

fn misconfigured(message: String) -> Fail {
    Fail::Err(Error::new(ErrorKind::Misconfigured, message))
}

/// Applies the versions the file lacks, in one write transaction (another
/// process opening the same file at once waits, then finds them applied).
pub(super) fn migrate(conn: &mut Connection) -> Result<(), Fail> {
    let tx = immediate(conn)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS session_trail_schema (
             version    INTEGER PRIMARY KEY,
             applied_at INTEGER NOT NULL
         )",
    )?;
    let current: i64 = tx.query_row(
        "SELECT coalesce(max(version), 0) FROM session_trail_schema",
        [],
        |r| r.get(0),
    )?;
    if current > SCHEMA_VERSION {
        return Err(misconfigured(format!(
            "the file holds schema version {current} (table session_trail_schema), newer than \
             this build's {SCHEMA_VERSION}: use a newer session-trail"
        )));
    }
    for version in current + 1..=SCHEMA_VERSION {
        tx.execute_batch(MIGRATIONS[(version - 1) as usize])?;
        tx.execute(
            "INSERT INTO session_trail_schema (version, applied_at) VALUES (?1, ?2)",
            params![version, now_ms()],
        )?;
        tracing::info!(version, "session store schema version applied");
    }
    tx.commit()?;
    Ok(())
}

/// Checks the version and that every table has the store's columns.
pub(super) fn check(conn: &mut Connection) -> Result<(), Fail> {
    let version: Option<i64> = conn
        .query_row("SELECT max(version) FROM session_trail_schema", [], |r| {
            r.get(0)
        })
        .optional()
        .map_err(|_| misconfigured("table session_trail_schema is missing".into()))?
        .flatten();
    if version != Some(SCHEMA_VERSION) {
        return Err(misconfigured(format!(
            "table session_trail_schema records version {version:?}, this build needs \
             {SCHEMA_VERSION}"
        )));
    }
    for (table, columns) in TABLES {
        // `table_xinfo` lists generated columns too.
        let mut stmt = conn.prepare(&format!("PRAGMA table_xinfo({table})"))?;
        let present = stmt
            .query_map([], |r| r.get::<_, String>(1))?
            .collect::<Result<Vec<_>, _>>()?;
        if present.is_empty() {
            return Err(misconfigured(format!("table {table} is missing")));
        }
        if let Some(missing) = columns.iter().find(|c| !present.iter().any(|p| p == *c)) {
            return Err(misconfigured(format!(
                "table {table} has no column {missing}"
            )));
        }
    }
    Ok(())
}
