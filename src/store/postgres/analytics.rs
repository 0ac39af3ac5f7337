//! Analytics on PostgreSQL: the queries run in the database (see
//! [`crate::analytics`]), through the indexes of schema version 2.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::PostgresStore;
use super::sql::with_schema;
use crate::analytics::{
    CohortReport, Cohorts, EventCountReport, EventCounts, Funnel, FunnelReport, HistoryAnalytics,
    cohort_report, event_count_report, funnel_report, funnel_sql,
};
use crate::error::Error;

/// How long an analytics query may run (at least the store's statement
/// timeout): it reads up to every history row.
const ANALYTICS_TIMEOUT: Duration = Duration::from_secs(120);

/// A time in Unix milliseconds, `>= 0`, as a `timestamptz` parameter.
fn time(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

impl PostgresStore {
    fn analytics_timeout(&self) -> Duration {
        ANALYTICS_TIMEOUT.max(self.inner.statement_timeout)
    }
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
            .run_with(
                &sql,
                "funnel",
                &[
                    &query.steps(),
                    &query.within_ms(),
                    &time(from),
                    &time(until),
                ],
                self.analytics_timeout(),
                false,
            )
            .await?;
        let counts: Vec<i64> = rows
            .first()
            .map(|r| {
                (0..query.steps().len())
                    .map(|i| r.get::<_, i64>(i))
                    .collect()
            })
            .unwrap_or_default();
        Ok(funnel_report(query, counts))
    }

    async fn cohorts(&self, query: &Cohorts) -> Result<CohortReport, Error> {
        let sql = with_schema(include_str!("sql/cohorts.sql"), &self.inner.schema);
        let (shift, days) = query.period().shift_and_days();
        let (from, until) = query.time_range().bounds();
        let rows = self
            .run_with(
                &sql,
                "cohorts",
                &[&(shift as i32), &(days as i32), &time(from), &time(until)],
                self.analytics_timeout(),
                false,
            )
            .await?;
        let rows: Vec<(i64, i64, u64)> = rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get::<_, i64>(2).max(0) as u64))
            .collect();
        Ok(cohort_report(query.period(), &rows))
    }

    async fn event_counts(&self, query: &EventCounts) -> Result<EventCountReport, Error> {
        let sql = with_schema(include_str!("sql/event_counts.sql"), &self.inner.schema);
        let (shift, days) = query.period().shift_and_days();
        let (from, until) = query.time_range().bounds();
        let rows = self
            .run_with(
                &sql,
                "event counts",
                &[
                    &(shift as i32),
                    &(days as i32),
                    &time(from),
                    &time(until),
                    &query.event_names(),
                ],
                self.analytics_timeout(),
                false,
            )
            .await?;
        let rows = rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get::<_, i64>(2).max(0) as u64))
            .collect();
        Ok(event_count_report(query.period(), rows))
    }
}
