//! Analytics on SQLite: the queries run in the database (see
//! [`crate::analytics`]), through the indexes of schema version 2, on a
//! read-only connection of their own in a blocking thread. The store's
//! thread goes on serving requests meanwhile (WAL: readers do not block
//! the writer), and the query reads one consistent snapshot. While it
//! does, checkpoints cannot copy the pages written after that snapshot
//! into the database file, so the write-ahead log grows by what is
//! written during the query (the next checkpoint catches up).

use rusqlite::types::Value;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rusqlite::{Connection, OpenFlags, params_from_iter};

use super::SqliteStore;
use super::worker::{Fail, error};
use crate::analytics::{
    CohortReport, Cohorts, EventCountReport, EventCounts, Funnel, FunnelReport, HistoryAnalytics,
    QUERY_TIMEOUT, cohort_report, event_count_report, funnel_report, funnel_sql,
};
use crate::error::{Error, ErrorKind};
use crate::util::now_ms;

impl SqliteStore {
    /// Runs `query` on a new read-only connection in a blocking thread,
    /// `QUERIES_AT_ONCE` at a time per store (the others wait for a turn;
    /// a turn ends when the thread does). A query that runs past
    /// `QUERY_TIMEOUT`, or whose caller gives up (drops the future), is
    /// stopped at its next step.
    async fn analyze<T, F>(&self, what: &'static str, query: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, rusqlite::Error> + Send + 'static,
    {
        let path = &self.inner.path;
        // From here on, dropping this stops the query.
        let stop = StopOnDrop(Arc::new(AtomicBool::new(false)));
        let turn = Arc::clone(&self.inner.analytics)
            .acquire_owned()
            .await
            .map_err(|_| Error::new(ErrorKind::Closed, "SQLite store: analytics closed"))?;
        let stopped = Arc::clone(&stop.0);
        let busy = self.inner.busy_timeout;
        let file = self.inner.file.clone();
        let run = move || {
            let _turn = turn;
            let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
            let conn = Connection::open_with_flags(&file, flags)?;
            // Asked every few thousand steps of the query: a set flag
            // interrupts it (and stays set, unlike an interrupt that
            // arrives between statements).
            let flag = Arc::clone(&stopped);
            conn.progress_handler(4096, Some(move || flag.load(Ordering::Relaxed)))?;
            conn.busy_timeout(busy)?;
            // Grouping many rows: in memory, not in temporary files.
            conn.pragma_update(None, "temp_store", "MEMORY")?;
            conn.pragma_update(None, "cache_size", -65_536)?;
            query(&conn)
        };
        let task = tokio::task::spawn_blocking(run);
        match tokio::time::timeout(QUERY_TIMEOUT, task).await {
            Ok(Ok(result)) => result.map_err(|e| error(path, Fail::Sql(e), what)),
            Ok(Err(e)) => Err(Error::new(
                ErrorKind::Unavailable,
                format!(
                    "SQLite database {}: {what}: the query's thread failed: {e}",
                    path.display()
                ),
            )),
            Err(_) => Err(Error::new(
                ErrorKind::Unavailable,
                format!(
                    "SQLite database {}: {what}: not done within {QUERY_TIMEOUT:?} (stopped)",
                    path.display()
                ),
            )),
        }
    }
}

/// Sets its flag when dropped: the query it belongs to stops.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The parameters every query starts with: `(shift, days)` of the
/// period, then the time range.
fn period_params(shift: i64, days: i64, (from, until): (i64, i64)) -> Vec<Value> {
    vec![
        Value::Integer(shift),
        Value::Integer(days),
        Value::Integer(from),
        Value::Integer(until),
    ]
}

fn json_names(names: &[String]) -> Value {
    Value::Text(serde_json::to_string(names).unwrap_or_else(|_| "[]".into()))
}

impl HistoryAnalytics for SqliteStore {
    async fn funnel(&self, query: &Funnel) -> Result<FunnelReport, Error> {
        let n = query.steps().len();
        let sql = funnel_sql(
            include_str!("sql/funnel.sql"),
            include_str!("sql/funnel_step.sql"),
            n,
        );
        let (from, until) = query.time_range().bounds();
        let mut params = vec![
            Value::Integer(query.within_ms()),
            Value::Integer(from),
            Value::Integer(until),
            Value::Integer(now_ms()),
            Value::Integer(self.inner.ms.keep),
        ];
        params.extend(query.steps().iter().map(|s| Value::Text(s.clone())));
        let counts = self
            .analyze("funnel", move |conn| {
                conn.query_row(&sql, params_from_iter(params), |r| {
                    (0..n)
                        .map(|i| r.get::<_, i64>(i))
                        .collect::<Result<Vec<_>, _>>()
                })
            })
            .await?;
        Ok(funnel_report(query, counts))
    }

    async fn cohorts(&self, query: &Cohorts) -> Result<CohortReport, Error> {
        let (shift, days) = query.period().shift_and_days();
        let mut params = period_params(shift, days, query.time_range().bounds());
        params.extend([Value::Integer(now_ms()), Value::Integer(self.inner.ms.keep)]);
        let rows = self
            .analyze("cohorts", move |conn| {
                let mut stmt = conn.prepare(include_str!("sql/cohorts.sql"))?;
                let rows = stmt.query_map(params_from_iter(params), |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)?.max(0) as u64))
                })?;
                rows.collect::<Result<Vec<(i64, i64, u64)>, _>>()
            })
            .await?;
        Ok(cohort_report(query.period(), &rows))
    }

    async fn event_counts(&self, query: &EventCounts) -> Result<EventCountReport, Error> {
        let (shift, days) = query.period().shift_and_days();
        let mut params = period_params(shift, days, query.time_range().bounds());
        params.extend([
            query.event_names().map_or(Value::Null, json_names),
            Value::Integer(now_ms()),
            Value::Integer(self.inner.ms.keep),
        ]);
        let rows = self
            .analyze("event counts", move |conn| {
                let mut stmt = conn.prepare(include_str!("sql/event_counts.sql"))?;
                let rows = stmt.query_map(params_from_iter(params), |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)?.max(0) as u64))
                })?;
                rows.collect::<Result<Vec<(String, i64, u64)>, _>>()
            })
            .await?;
        Ok(event_count_report(query.period(), rows))
    }
}
