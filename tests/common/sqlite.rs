//! Helpers for the SQLite store's tests: database files of their own under
//! Cargo's temporary directory for tests, and direct SQL on them.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// A fresh path for a database file (the file does not exist yet).
pub fn temp_db(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("sqlite-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let n = N.fetch_add(1, Ordering::Relaxed);
    let path = dir.join(format!("{tag}-{}-{n}.db", std::process::id()));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    path
}

/// A connection of the test's own to a store's file.
pub fn connect(path: &std::path::Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn
}

/// Runs statements on a store's file.
pub fn exec(path: &std::path::Path, sql: &str) {
    connect(path)
        .execute_batch(sql)
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// One integer answer.
pub fn count(path: &std::path::Path, sql: &str) -> i64 {
    connect(path)
        .query_row(sql, [], |r| r.get(0))
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// A blob literal for a session id.
pub fn blob(sid: &session_trail::SessionId) -> String {
    let hex: String = sid.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
    format!("X'{hex}'")
}
