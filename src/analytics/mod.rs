//! Session analytics over the stored history: funnels, cohort retention
//! and event counts.
//!
//! Every store that keeps history answers the same typed queries through
//! [`HistoryAnalytics`]. The SQL stores run them in the database (a few
//! grouped joins over the history rows, served by indexes on event names
//! and on user pseudonyms); the memory and Redis stores stream every stored
//! history through the same computation in Rust. The answers are the same
//! on all four (a test runs one generated history through each of them),
//! with two exceptions noted under [Limits](#limits).
//!
//! # The three queries
//!
//! - [`Funnel`]: for each step *k*, how many sessions recorded step 1, then
//!   step 2 after it, … then step *k*, all within a window measured from the
//!   session's **first** step-1 event. "After" is the session's own order
//!   (the entries' `seq`), not the clock. A step recorded out of order, or
//!   after the window closed, does not advance the session; a repeated step
//!   counts once. Steps are event names ([`Session::record`](crate::Session::record)).
//! - [`Cohorts`]: users grouped by the period (UTC day, or ISO week from
//!   Monday) of their first session, and for each cohort the number of its
//!   users with a session active in period 0, 1, 2, … after it. A user is
//!   active in a period when one of their sessions recorded an entry that
//!   names them (by pseudonym) in it: a request made while logged in, a
//!   login. Their "first session" is thus their first entry as that user:
//!   a session that spans midnight counts in both days, and what a session
//!   did before its user logged in is not the user's (a visit on Sunday
//!   that logs in on Monday puts the user in Monday's cohort). Anonymous
//!   sessions are in no cohort.
//! - [`EventCounts`]: how many events of each name were recorded per
//!   period, the series a dashboard plots.
//!
//! Each takes a [`TimeRange`]: only entries inside it are read, so a
//! user's "first session" is their first one inside the range.
//!
//! ```
//! use std::time::Duration;
//! use session_trail::analytics::{Cohorts, Funnel, HistoryAnalytics, Period};
//! use session_trail::store::MemoryStore;
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let store = MemoryStore::new();
//! let funnel = Funnel::new(["view_product", "add_to_cart", "checkout"], Duration::from_secs(3600))?;
//! let report = store.funnel(&funnel).await?;
//! assert_eq!(report.steps.len(), 3);
//! assert_eq!(report.steps[0].event, "view_product");
//! assert_eq!(report.steps[0].sessions, 0); // an empty store
//!
//! let cohorts = store.cohorts(&Cohorts::new(Period::Week)).await?;
//! assert!(cohorts.cohorts.is_empty());
//! # Ok::<_, session_trail::Error>(()) }).unwrap();
//! ```
//!
//! # What analytics trust, and how to audit them
//!
//! Analytics read the history **as stored**: the decoded columns of the SQL
//! stores' rows, or the entries' bytes in memory and Redis. They do not
//! check signatures (a million HMACs per query would cost more than the
//! query). Someone who can write to the store can therefore skew a chart
//! without being noticed by the chart. The signed bytes stay the evidence:
//! [`verify`](crate::history::verify) a session's entries (the demo does it
//! on every `/api/history`) to audit the sessions behind a figure. In the
//! SQL stores each row keeps those bytes beside its columns, and the
//! columns are decoded from them when the row is written.
//!
//! Analytics count what a history read would answer, on every store: the
//! newest keep-*N* entries of histories within their TTL, not erased. In
//! the SQL stores that holds before maintenance has deleted the rest: the
//! queries leave it out themselves.
//!
//! # Privacy
//!
//! Users appear only as the keyed pseudonyms the entries carry, never as
//! user names, and the reports hold counts only: no pseudonym and no
//! session id leaves a query. Counts of few users still describe those
//! users: a cohort of one shows when that one person came back. Keep the
//! reports to people who may see that, or leave out small cohorts before
//! sharing them.
//!
//! # Cost
//!
//! On PostgreSQL and SQLite a funnel reads each step's events from an
//! index on (event name, session, seq) that holds their times too, in
//! session order, so the steps are matched without sorting; a cohort
//! query reads the entries that name a user from an index on (user
//! pseudonym, time). On PostgreSQL these are index-only scans once
//! (auto)vacuum has marked the table's pages visible; rows written since
//! are looked up in the table. Both indexes arrive with schema version 2
//! (`migrate` on PostgreSQL; SQLite upgrades its file when it opens it)
//! and cost every append that writes an event or names a user: about 7%
//! of PostgreSQL's append throughput when every entry names a user, and
//! no measurable part of SQLite's.
//!
//! A SQL store runs two analytics queries at a time (the others wait for
//! a turn), each on a connection of its own: on PostgreSQL from the pool,
//! leaving the sessions one connection at least (a pool of two runs one
//! query at a time; a pool of one shares its connection). A query runs for
//! at most two minutes (on PostgreSQL, or the store's statement timeout if
//! that is longer), then it is cancelled; on SQLite it also stops when its
//! caller gives up. On SQLite, a query
//! reads one snapshot; while it runs, checkpoints cannot move the pages
//! written after it into the database file, so the write-ahead log grows
//! by what is written meanwhile.
//!
//! On the memory and Redis stores every query reads every stored history:
//! fine for a dashboard refreshed now and then, not for every request.
//! Redis finds the lists with `SCAN` (on every primary of a cluster, and
//! refuses to answer when the reachable primaries do not serve every
//! slot) and counts each list once. Figures are in `BENCHMARKS.md`.
//!
//! # Limits
//!
//! - PostgreSQL's `ts` column (`timestamptz`, written through a
//!   floating-point conversion) holds times after about the year 2255 to
//!   within a few microseconds only: a window or a range bound that falls
//!   on such a time to the millisecond can then differ from the other
//!   stores by one entry.
//! - The SQL stores' columns replace U+0000 with U+FFFD (see the stores'
//!   docs), so two user pseudonyms that differ only there are one user
//!   in SQL. The crate's own pseudonyms are hex; only the holder of the
//!   history key can sign others.

// Each store uses part of the helpers below: the SQL stores the SQL
// composer and the row shapers, memory and Redis the streaming
// computation; a build with only some stores leaves the rest unused.
#![cfg_attr(
    not(all(
        any(feature = "memory-store", feature = "redis"),
        any(feature = "postgres", feature = "sqlite")
    )),
    allow(dead_code)
)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind};
use crate::history::EntryKind;

/// The most steps a [`Funnel`] may have.
pub const MAX_FUNNEL_STEPS: usize = 16;

/// How long one query may run in a SQL store before it is cancelled.
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub(crate) const QUERY_TIMEOUT: Duration = Duration::from_secs(120);

/// How many queries one SQL store runs at once (the others wait): each
/// holds a connection, of the pool on PostgreSQL, so that dashboards
/// never take the connections the sessions need.
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub(crate) const QUERIES_AT_ONCE: usize = 2;

/// The latest time the SQL stores' rows hold (9999-12-31T23:59:59.999Z),
/// Unix milliseconds: entries' times are clamped to `0..=LATEST_MS` in the
/// decoded columns, and analytics clamp them the same way everywhere.
pub(crate) const LATEST_MS: i64 = 253_402_300_799_999;

const DAY_MS: i64 = 86_400_000;

/// Runs analytics queries over a store's history.
///
/// Implemented by every store that keeps history. The answers do not
/// depend on the store (see the [module docs](self)).
pub trait HistoryAnalytics: Send + Sync {
    /// The funnel: for each step, how many sessions reached it in order
    /// within the window.
    ///
    /// # Errors
    ///
    /// When the store cannot answer.
    fn funnel(&self, query: &Funnel) -> impl Future<Output = Result<FunnelReport, Error>> + Send;

    /// Cohort retention by the period of each user's first session.
    ///
    /// # Errors
    ///
    /// When the store cannot answer.
    fn cohorts(&self, query: &Cohorts) -> impl Future<Output = Result<CohortReport, Error>> + Send;

    /// Events recorded per name and period.
    ///
    /// # Errors
    ///
    /// When the store cannot answer.
    fn event_counts(
        &self,
        query: &EventCounts,
    ) -> impl Future<Output = Result<EventCountReport, Error>> + Send;
}

/// A half-open range of entry times, `[from, until)`; either end may be
/// open. The default is every entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeRange {
    /// The earliest time read, Unix milliseconds (inclusive).
    pub from_ms: Option<i64>,
    /// The first time not read any more, Unix milliseconds (exclusive).
    pub until_ms: Option<i64>,
}

impl TimeRange {
    /// Every entry.
    pub fn all() -> Self {
        Self::default()
    }

    /// Entries from `t` on.
    #[must_use]
    pub fn from(mut self, t: SystemTime) -> Self {
        self.from_ms = Some(unix_ms(t));
        self
    }

    /// Entries before `t`.
    #[must_use]
    pub fn until(mut self, t: SystemTime) -> Self {
        self.until_ms = Some(unix_ms(t));
        self
    }

    /// The range as `[from, until)` in Unix milliseconds within the times
    /// the stores hold; empty when `from >= until`.
    pub(crate) fn bounds(&self) -> (i64, i64) {
        let from = self.from_ms.unwrap_or(0).clamp(0, LATEST_MS + 1);
        let until = self
            .until_ms
            .unwrap_or(LATEST_MS + 1)
            .clamp(0, LATEST_MS + 1);
        (from, until)
    }

    fn contains(&self, ts: i64) -> bool {
        let (from, until) = self.bounds();
        ts >= from && ts < until
    }
}

fn unix_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_millis()).map_or(i64::MIN, |ms| -ms),
    }
}

/// The length of a cohort or count period, in UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    /// A calendar day, from midnight UTC.
    Day,
    /// An ISO week, from Monday midnight UTC.
    Week,
}

impl Period {
    /// `"day"` or `"week"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Day => "day",
            Self::Week => "week",
        }
    }

    /// `(shift, days)`: the period of day number `d` (days since
    /// 1970-01-01, a Thursday) is `(d + shift) / days`. The SQL stores
    /// compute the same.
    pub(crate) fn shift_and_days(self) -> (i64, i64) {
        match self {
            Self::Day => (0, 1),
            // Monday 1969-12-29 starts week 0.
            Self::Week => (3, 7),
        }
    }

    /// The period number of a time (Unix milliseconds, `>= 0`).
    pub(crate) fn index(self, ts: i64) -> i64 {
        let (shift, days) = self.shift_and_days();
        (ts.div_euclid(DAY_MS) + shift).div_euclid(days)
    }

    /// The first day of period `index`, as an RFC 3339 full date.
    pub(crate) fn start_date(self, index: i64) -> String {
        let (shift, days) = self.shift_and_days();
        let midnight = (index * days - shift).saturating_mul(DAY_MS);
        // `YYYY-MM-DD` of the timestamp's RFC 3339 text.
        let text = crate::util::rfc3339(midnight);
        text.get(..10).unwrap_or_default().to_owned()
    }
}

impl std::str::FromStr for Period {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "day" => Ok(Self::Day),
            "week" => Ok(Self::Week),
            _ => Err(Error::new(
                ErrorKind::InvalidInput,
                "period: expected `day` or `week`",
            )),
        }
    }
}

/// A funnel query: ordered steps (event names) and a window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Funnel {
    steps: Vec<String>,
    within: Duration,
    range: TimeRange,
}

impl Funnel {
    /// A funnel over `steps`, each reached within `within` of the session's
    /// first event of step 1.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`] when there are no steps or more than
    /// [`MAX_FUNNEL_STEPS`], when a step is not an event name (1–64
    /// letters, digits and `_ . : -`, as
    /// [`Session::record`](crate::Session::record) takes), or when `within`
    /// is under a millisecond.
    pub fn new<I, S>(steps: I, within: Duration) -> Result<Self, Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let steps: Vec<String> = steps.into_iter().map(Into::into).collect();
        if steps.is_empty() || steps.len() > MAX_FUNNEL_STEPS {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("funnel steps: expected 1 to {MAX_FUNNEL_STEPS} steps"),
            ));
        }
        for s in &steps {
            crate::history::entry::check_event_name(s)
                .map_err(|e| e.context("funnel steps: a step is not an event name"))?;
        }
        if within.as_millis() < 1 {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "funnel within: must be at least 1 ms",
            ));
        }
        Ok(Self {
            steps,
            within,
            range: TimeRange::all(),
        })
    }

    /// Reads only the entries in `range`.
    #[must_use]
    pub fn range(mut self, range: TimeRange) -> Self {
        self.range = range;
        self
    }

    /// The steps.
    pub fn steps(&self) -> &[String] {
        &self.steps
    }

    /// The window.
    pub fn within(&self) -> Duration {
        self.within
    }

    /// The window in milliseconds, as the queries take it.
    pub(crate) fn within_ms(&self) -> i64 {
        // Beyond the times the stores hold it is all the same window.
        i64::try_from(self.within.as_millis()).map_or(LATEST_MS + 1, |ms| ms.min(LATEST_MS + 1))
    }

    /// The time range.
    pub fn time_range(&self) -> TimeRange {
        self.range
    }
}

/// A cohort query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cohorts {
    period: Period,
    range: TimeRange,
}

impl Cohorts {
    /// Cohorts by `period`.
    pub fn new(period: Period) -> Self {
        Self {
            period,
            range: TimeRange::all(),
        }
    }

    /// Reads only the entries in `range`.
    #[must_use]
    pub fn range(mut self, range: TimeRange) -> Self {
        self.range = range;
        self
    }

    /// The period.
    pub fn period(&self) -> Period {
        self.period
    }

    /// The time range.
    pub fn time_range(&self) -> TimeRange {
        self.range
    }
}

/// An event count query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventCounts {
    period: Period,
    events: Option<Vec<String>>,
    range: TimeRange,
}

impl EventCounts {
    /// Counts of every event name by `period`.
    pub fn new(period: Period) -> Self {
        Self {
            period,
            events: None,
            range: TimeRange::all(),
        }
    }

    /// Counts only these event names.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`] when a name is not an event name, or
    /// when there are more than 64.
    pub fn events<I, S>(mut self, events: I) -> Result<Self, Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let events: Vec<String> = events.into_iter().map(Into::into).collect();
        if events.len() > 64 {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "event counts: at most 64 event names",
            ));
        }
        for e in &events {
            crate::history::entry::check_event_name(e)
                .map_err(|err| err.context("event counts: not an event name"))?;
        }
        self.events = Some(events);
        Ok(self)
    }

    /// Reads only the entries in `range`.
    #[must_use]
    pub fn range(mut self, range: TimeRange) -> Self {
        self.range = range;
        self
    }

    /// The period.
    pub fn period(&self) -> Period {
        self.period
    }

    /// The event names counted (`None`: all).
    pub fn event_names(&self) -> Option<&[String]> {
        self.events.as_deref()
    }

    /// The time range.
    pub fn time_range(&self) -> TimeRange {
        self.range
    }
}

/// A [`Funnel`]'s answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunnelReport {
    /// One per step, in order; `sessions` never grows from one to the next.
    pub steps: Vec<FunnelStep>,
}

/// One step of a [`FunnelReport`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunnelStep {
    /// The step's event name.
    pub event: String,
    /// How many sessions reached this step.
    pub sessions: u64,
}

/// A [`Cohorts`] query's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CohortReport {
    /// The period.
    pub period: Period,
    /// One per period in which some user's first session started, oldest
    /// first.
    pub cohorts: Vec<Cohort>,
}

/// One cohort of a [`CohortReport`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cohort {
    /// The first day of the cohort's period (RFC 3339 full date, UTC).
    pub start: String,
    /// How many users had their first session in it.
    pub users: u64,
    /// `active[k]`: how many of them had a session active `k` periods
    /// later (`active[0] == users`), up to the newest period any user
    /// was active in, but not past the current period (activity dated in
    /// the future is not charted).
    pub active: Vec<u64>,
}

/// An [`EventCounts`] query's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventCountReport {
    /// The period.
    pub period: Period,
    /// By event name, then period; periods without events are left out.
    pub counts: Vec<EventCount>,
}

/// One point of an [`EventCountReport`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventCount {
    /// The event name.
    pub event: String,
    /// The first day of the period (RFC 3339 full date, UTC).
    pub start: String,
    /// How many such events were recorded in it.
    pub count: u64,
}

/// Builds a [`CohortReport`] from `(cohort period, offset, users)` rows,
/// the shape the SQL stores answer (and the streaming computation
/// produces).
pub(crate) fn cohort_report(period: Period, rows: &[(i64, i64, u64)]) -> CohortReport {
    // Activity dated after the current period (a clock ahead, an import)
    // is not charted: one entry dated in the year 9999 would otherwise
    // stretch every cohort's row over thousands of years.
    let current = period.index(crate::util::now_ms().clamp(0, LATEST_MS));
    let newest = rows
        .iter()
        .map(|&(c, k, _)| c + k)
        .max()
        .map(|n| n.min(current));
    let mut cohorts: BTreeMap<i64, Vec<u64>> = BTreeMap::new();
    for &(c, k, n) in rows {
        let Some(newest) = newest else { break };
        let len = usize::try_from(newest - c + 1).unwrap_or(0).max(1);
        let active = cohorts.entry(c).or_insert_with(|| vec![0; len]);
        if let Some(slot) = usize::try_from(k).ok().and_then(|k| active.get_mut(k)) {
            *slot = n;
        }
    }
    CohortReport {
        period,
        cohorts: cohorts
            .into_iter()
            .map(|(c, active)| Cohort {
                start: period.start_date(c),
                users: active.first().copied().unwrap_or(0),
                active,
            })
            .collect(),
    }
}

/// Builds an [`EventCountReport`] from `(name, period, count)` rows.
pub(crate) fn event_count_report(
    period: Period,
    mut rows: Vec<(String, i64, u64)>,
) -> EventCountReport {
    // By bytes, not by a database's collation.
    rows.sort_unstable();
    EventCountReport {
        period,
        counts: rows
            .into_iter()
            .map(|(event, p, count)| EventCount {
                event,
                start: period.start_date(p),
                count,
            })
            .collect(),
    }
}

/// The SQL of an `steps`-step funnel, from a dialect's query
/// (`funnel.sql`, with `{steps}` and `{counts}` to fill) and its step
/// (`funnel_step.sql`: `{k}` the step, `{prev}` the one before it,
/// `{param}` the parameter number of its name in SQLite, `k + 5`).
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub(crate) fn funnel_sql(query: &str, step: &str, steps: usize) -> String {
    let mut more = String::new();
    for k in 2..=steps {
        more.push_str(
            &step
                .replace("{k}", &k.to_string())
                .replace("{prev}", &(k - 1).to_string())
                .replace("{param}", &(k + 5).to_string()),
        );
    }
    let counts: Vec<String> = (1..=steps)
        .map(|k| format!("(SELECT count(*) FROM s{k})"))
        .collect();
    query
        .replace("{steps}", more.trim_end())
        .replace("{counts}", &counts.join(", "))
}

/// A funnel's answer from its counts per step.
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub(crate) fn funnel_report(query: &Funnel, counts: impl IntoIterator<Item = i64>) -> FunnelReport {
    FunnelReport {
        steps: query
            .steps
            .iter()
            .zip(counts)
            .map(|(event, n)| FunnelStep {
                event: event.clone(),
                sessions: u64::try_from(n).unwrap_or(0),
            })
            .collect(),
    }
}

/// Implements [`HistoryAnalytics`] for a store that streams its histories
/// through a [`Stream`] with `async fn scan_history(&self, &mut Stream<'_>)
/// -> Result<(), Error>` (the memory and Redis stores).
#[cfg(any(feature = "memory-store", feature = "redis"))]
macro_rules! streamed_analytics {
    ($store:ty) => {
        impl $crate::analytics::HistoryAnalytics for $store {
            async fn funnel(
                &self,
                query: &$crate::analytics::Funnel,
            ) -> Result<$crate::analytics::FunnelReport, $crate::Error> {
                let mut s = $crate::analytics::Stream::funnel(query);
                self.scan_history(&mut s).await?;
                Ok(s.funnel_report())
            }

            async fn cohorts(
                &self,
                query: &$crate::analytics::Cohorts,
            ) -> Result<$crate::analytics::CohortReport, $crate::Error> {
                let mut s = $crate::analytics::Stream::cohorts(query);
                self.scan_history(&mut s).await?;
                Ok(s.cohort_report())
            }

            async fn event_counts(
                &self,
                query: &$crate::analytics::EventCounts,
            ) -> Result<$crate::analytics::EventCountReport, $crate::Error> {
                let mut s = $crate::analytics::Stream::counts(query);
                self.scan_history(&mut s).await?;
                Ok(s.count_report())
            }
        }
    };
}
#[cfg(any(feature = "memory-store", feature = "redis"))]
pub(crate) use streamed_analytics;

/// The fields of a stored entry the queries read.
struct Fields<'a> {
    ts: i64,
    kind: EntryKind,
    name: Option<&'a str>,
    user: Option<String>,
}

fn fields(bytes: &[u8]) -> Option<Fields<'_>> {
    let c = crate::history::entry::columns(bytes).ok()?;
    Some(Fields {
        ts: c.ts.clamp(0, LATEST_MS),
        kind: c.kind,
        name: c.name,
        user: c.user,
    })
}

/// A query computed by streaming histories through it, one session at a
/// time (entries oldest first): the memory and Redis stores' way, and the
/// definition the SQL queries match.
pub(crate) enum Stream<'q> {
    Funnel {
        query: &'q Funnel,
        reached: Vec<u64>,
    },
    Cohorts {
        query: &'q Cohorts,
        /// Pseudonym → the periods in which entries named the user.
        users: HashMap<String, BTreeSet<i64>>,
    },
    Counts {
        query: &'q EventCounts,
        counts: BTreeMap<(String, i64), u64>,
    },
}

impl<'q> Stream<'q> {
    pub(crate) fn funnel(query: &'q Funnel) -> Self {
        Self::Funnel {
            query,
            reached: vec![0; query.steps.len()],
        }
    }

    pub(crate) fn cohorts(query: &'q Cohorts) -> Self {
        Self::Cohorts {
            query,
            users: HashMap::new(),
        }
    }

    pub(crate) fn counts(query: &'q EventCounts) -> Self {
        Self::Counts {
            query,
            counts: BTreeMap::new(),
        }
    }

    /// Feeds one session's stored entries, oldest first. Entries that do
    /// not decode are skipped (the SQL stores never hold them).
    pub(crate) fn session<B: AsRef<[u8]>>(&mut self, entries: &[B]) {
        let decoded = entries.iter().filter_map(|b| fields(b.as_ref()));
        match self {
            Self::Funnel { query, reached } => {
                let mut next = 0;
                let mut start = 0;
                for f in decoded {
                    if f.kind != EntryKind::Event || !query.range.contains(f.ts) {
                        continue;
                    }
                    let Some(step) = query.steps.get(next) else {
                        break;
                    };
                    if f.name != Some(step.as_str()) {
                        continue;
                    }
                    if next == 0 {
                        start = f.ts;
                    } else if f.ts > start.saturating_add(query.within_ms()) {
                        continue;
                    }
                    reached[next] += 1;
                    next += 1;
                }
            }
            Self::Cohorts { query, users } => {
                for f in decoded {
                    if let Some(u) = f.user
                        && query.range.contains(f.ts)
                    {
                        users.entry(u).or_default().insert(query.period.index(f.ts));
                    }
                }
            }
            Self::Counts { query, counts } => {
                for f in decoded {
                    if f.kind != EntryKind::Event || !query.range.contains(f.ts) {
                        continue;
                    }
                    let Some(name) = f.name else { continue };
                    if query
                        .events
                        .as_ref()
                        .is_some_and(|only| !only.iter().any(|e| e == name))
                    {
                        continue;
                    }
                    *counts
                        .entry((name.to_owned(), query.period.index(f.ts)))
                        .or_default() += 1;
                }
            }
        }
    }

    pub(crate) fn funnel_report(self) -> FunnelReport {
        match self {
            Self::Funnel { query, reached } => FunnelReport {
                steps: query
                    .steps
                    .iter()
                    .zip(reached)
                    .map(|(event, sessions)| FunnelStep {
                        event: event.clone(),
                        sessions,
                    })
                    .collect(),
            },
            _ => unreachable!("a funnel stream answers a funnel"),
        }
    }

    pub(crate) fn cohort_report(self) -> CohortReport {
        match self {
            Self::Cohorts { query, users } => {
                let mut rows: BTreeMap<(i64, i64), u64> = BTreeMap::new();
                for periods in users.values() {
                    let Some(&first) = periods.first() else {
                        continue;
                    };
                    for p in periods {
                        *rows.entry((first, p - first)).or_default() += 1;
                    }
                }
                let rows: Vec<_> = rows.into_iter().map(|((c, k), n)| (c, k, n)).collect();
                cohort_report(query.period, &rows)
            }
            _ => unreachable!("a cohort stream answers cohorts"),
        }
    }

    pub(crate) fn count_report(self) -> EventCountReport {
        match self {
            Self::Counts { query, counts } => event_count_report(
                query.period,
                counts.into_iter().map(|((e, p), n)| (e, p, n)).collect(),
            ),
            _ => unreachable!("a count stream answers counts"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_start_on_midnight_and_monday() {
        // 2026-11-30 is a Monday.
        let monday = 1_795_996_800_000; // 2026-11-30T00:00:00Z
        assert_eq!(
            Period::Day.start_date(Period::Day.index(monday)),
            "2026-11-30"
        );
        assert_eq!(
            Period::Week.start_date(Period::Week.index(monday)),
            "2026-11-30"
        );
        assert_eq!(
            Period::Week.start_date(Period::Week.index(monday - 1)),
            "2026-11-23"
        );
        assert_eq!(
            Period::Week.start_date(Period::Week.index(monday + 7 * DAY_MS - 1)),
            "2026-11-30"
        );
        assert_eq!(Period::Day.start_date(0), "1970-01-01");
        assert_eq!(Period::Week.start_date(0), "1969-12-29");
    }

    #[test]
    fn funnel_input_is_checked() {
        let h = Duration::from_secs(3600);
        assert!(Funnel::new(Vec::<String>::new(), h).is_err());
        assert!(Funnel::new(["a b"], h).is_err());
        assert!(Funnel::new(["a"; 17], h).is_err());
        assert!(Funnel::new(["a"], Duration::ZERO).is_err());
        assert!(Funnel::new(["a", "a"], h).is_ok());
        assert!(EventCounts::new(Period::Day).events(["x\n"]).is_err());
    }

    #[test]
    fn cohort_rows_fill_the_triangle() {
        let r = cohort_report(
            Period::Day,
            &[(10, 0, 3), (10, 2, 1), (11, 0, 2), (11, 1, 2)],
        );
        assert_eq!(r.cohorts.len(), 2);
        assert_eq!(r.cohorts[0].active, vec![3, 0, 1]);
        assert_eq!(r.cohorts[1].active, vec![2, 2]);
        assert_eq!(r.cohorts[1].users, 2);
    }

    #[test]
    fn activity_dated_in_the_future_stretches_no_row() {
        let today = Period::Day.index(crate::util::now_ms());
        let far = Period::Day.index(LATEST_MS);
        let r = cohort_report(
            Period::Day,
            &[
                (today - 1, 0, 2),
                (today - 1, far - today + 1, 1),
                (far, 0, 1),
            ],
        );
        assert_eq!(r.cohorts.len(), 2);
        assert_eq!(r.cohorts[0].active, vec![2, 0]);
        // A cohort that starts in the future: its users, and nothing after.
        assert_eq!(r.cohorts[1].active, vec![1]);
        assert_eq!(r.cohorts[1].start, "9999-12-31");
    }
}
