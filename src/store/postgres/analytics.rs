//! Analytics on PostgreSQL: the queries run in the database (see
//! [`crate::analytics`]), through the indexes of schema version 2.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::PostgresStore;
use super::sql::with_schema;
use tokio_postgres::Row;
use tokio_postgres::types::{FromSql, ToSql};

use crate::analytics::{
    CohortReport, Cohorts, EventCountReport, EventCounts, Funnel, FunnelReport, HistoryAnalytics,
    QUERY_TIMEOUT, cohort_report, event_count_report, funnel_report, funnel_sql,
};
use crate::error::{Error, ErrorKind};
use crate::util::now_ms;

/// A time in Unix milliseconds, `>= 0`, as a `timestamptz` parameter.
fn time(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

impl PostgresStore {
    /// How long an analytics query may run: at least the store's
    /// statement timeout, as it reads up to every history row.
    fn analytics_timeout(&self) -> Duration {
        QUERY_TIMEOUT.max(self.inner.statement_timeout)
    }

    /// Runs an analytics statement, `QUERIES_AT_ONCE` at a time per
    /// store (the others wait for a turn): each holds a pooled
    /// connection, and the sessions need theirs.
    async fn analyze(
        &self,
        sql: &str,
        what: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, Error> {
        let _turn = self
            .inner
            .analytics
            .acquire()
            .await
            .map_err(|_| Error::new(ErrorKind::Closed, "PostgreSQL store: analytics closed"))?;
        self.run_with(sql, what, params, self.analytics_timeout(), false)
            .await
    }
}

/// Column `i` of an answer row; a value of another type (a row edited
/// outside the store) is [`ErrorKind::Corrupt`], not a panic.
fn column<'a, T: FromSql<'a>>(row: &'a Row, i: usize, what: &str) -> Result<T, Error> {
    row.try_get(i)
        .map_err(|e| super::corrupt(what, &format!("column {i}: {e}")))
}

/// `(key, period, count)` answer rows.
fn counted<'a, T: FromSql<'a>>(rows: &'a [Row], what: &str) -> Result<Vec<(T, i64, u64)>, Error> {
    rows.iter()
        .map(|r| {
            let n: i64 = column(r, 2, what)?;
            Ok((column(r, 0, what)?, column(r, 1, what)?, n.max(0) as u64))
        })
        .collect()
}

impl HistoryAnalytics for PostgresStore {
    async fn funnel(&self, query: &Funnel) -> Result<FunnelReport, Error> {
        let sql = with_schema(
            &funnel_sql(
                include_str!("sql/funnel.sql"),
                include_str!("sql/funnel_step.sql"),
                query.steps().len(),
            ),
            &self.inner.schema,
        );
        let (from, until) = query.time_range().bounds();
        let rows = self
            .analyze(
                &sql,
                "funnel",
                &[
                    &query.steps(),
                    &query.within_ms(),
                    &time(from),
                    &time(until),
                    &now_ms(),
                    &self.inner.ms.keep,
                ],
            )
            .await?;
        let counts = match rows.first() {
            Some(r) => (0..query.steps().len())
                .map(|i| column(r, i, "funnel"))
                .collect::<Result<Vec<i64>, Error>>()?,
            None => Vec::new(),
        };
        Ok(funnel_report(query, counts))
    }

    async fn cohorts(&self, query: &Cohorts) -> Result<CohortReport, Error> {
        let sql = with_schema(include_str!("sql/cohorts.sql"), &self.inner.schema);
        let (shift, days) = query.period().shift_and_days();
        let (from, until) = query.time_range().bounds();
        let rows = self
            .analyze(
                &sql,
                "cohorts",
                &[
                    &(shift as i32),
                    &(days as i32),
                    &time(from),
                    &time(until),
                    &now_ms(),
                    &self.inner.ms.keep,
                ],
            )
            .await?;
        Ok(cohort_report(query.period(), &counted(&rows, "cohorts")?))
    }

    async fn event_counts(&self, query: &EventCounts) -> Result<EventCountReport, Error> {
        let sql = with_schema(include_str!("sql/event_counts.sql"), &self.inner.schema);
        let (shift, days) = query.period().shift_and_days();
        let (from, until) = query.time_range().bounds();
        let rows = self
            .analyze(
                &sql,
                "event counts",
                &[
                    &(shift as i32),
                    &(days as i32),
                    &time(from),
                    &time(until),
                    &query.event_names(),
                    &now_ms(),
                    &self.inner.ms.keep,
                ],
            )
            .await?;
        let rows = counted(&rows, "event counts")?;
        Ok(event_count_report(query.period(), rows))
    }
}
