//! What the SQL stores share: history entries as rows (the decoded columns
//! beside the exact bytes), a batch of appends split into calls whose
//! sessions are distinct, and the report of a maintenance round.

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::Duration;

use super::{Append, AppendOutcome};
use crate::SessionId;
use crate::history::entry::columns;

/// One history row: the columns decoded from an entry, and the entry.
pub(crate) struct EntryRow<'a> {
    pub(crate) seq: i64,
    pub(crate) ts: i64,
    pub(crate) kind: &'static str,
    pub(crate) name: Option<Cow<'a, str>>,
    pub(crate) method: Option<Cow<'a, str>>,
    pub(crate) status: Option<i16>,
    pub(crate) user: Option<String>,
    pub(crate) attrs: Option<Cow<'a, str>>,
    pub(crate) bytes: &'a [u8],
}

/// The row of an encoded entry, or why it cannot be stored.
///
/// Text columns cannot hold U+0000 in PostgreSQL: a NUL in a name, method
/// or route becomes U+FFFD, and so does the JSON escape `\u0000` in the
/// attributes. Only the decoded columns change; the entry's bytes, which
/// `verify` checks, are stored as they are.
pub(crate) fn entry_row(bytes: &[u8]) -> Result<EntryRow<'_>, &'static str> {
    let c = columns(bytes).map_err(|_| "an entry is malformed")?;
    // The entry's own time, within the years SQL timestamps hold (0001 to
    // 9999); the bytes keep the exact value.
    const LATEST: i64 = 253_402_300_799_999;
    let ts = c.ts.clamp(0, LATEST);
    // A request's attributes are this crate's own (its latency); an
    // event's or a lifecycle entry's are checked once more, strictly.
    let own_attrs = c.kind == crate::history::EntryKind::Request;
    let seq = i64::try_from(c.seq).map_err(|_| "an entry's seq is out of range")?;
    let status = match c.status {
        Some(s) => Some(i16::try_from(s).map_err(|_| "an entry's status is out of range")?),
        None => None,
    };
    Ok(EntryRow {
        seq,
        ts,
        kind: c.kind.as_str(),
        name: c.name.map(text_column),
        method: c.method.map(text_column),
        status,
        user: c.user.map(|u| text_column(&u).into_owned()),
        attrs: c.attrs.filter(|a| own_attrs || storable_json(a)).map(|a| {
            if a.contains("\\u0000") {
                Cow::Owned(a.replace("\\u0000", "\\ufffd"))
            } else {
                a
            }
        }),
        bytes,
    })
}

/// Whether JSON text the entry decoder accepted is also accepted by SQL
/// JSON types: no unpaired surrogate escape, no number beyond a double
/// (PostgreSQL's `jsonb` refuses both). Attributes that are not are left
/// out of the decoded column (NULL); the entry itself is stored as it is.
fn storable_json(text: &str) -> bool {
    fn numbers_fit(v: &serde_json::Value) -> bool {
        match v {
            serde_json::Value::Number(n) => n.as_f64().is_some_and(f64::is_finite),
            serde_json::Value::Array(a) => a.iter().all(numbers_fit),
            serde_json::Value::Object(o) => o.values().all(numbers_fit),
            _ => true,
        }
    }
    serde_json::from_str::<serde_json::Value>(text).is_ok_and(|v| numbers_fit(&v))
}

/// `s`, with any NUL replaced by U+FFFD.
fn text_column(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', "\u{fffd}"))
    } else {
        Cow::Borrowed(s)
    }
}

/// One session's append, ready for a store call.
pub(crate) struct Prepared<'a> {
    /// Its place in the caller's batch.
    pub(crate) index: usize,
    pub(crate) append: &'a Append,
    pub(crate) rows: Vec<EntryRow<'a>>,
}

impl Prepared<'_> {
    pub(crate) fn first_seq(&self) -> i64 {
        self.rows.first().map_or(0, |r| r.seq)
    }

    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn last_seq(&self) -> i64 {
        self.rows.last().map_or(0, |r| r.seq)
    }
}

/// Splits a batch into calls in which every session appears once, in the
/// batch's order (a session's second append goes in the next call, after
/// its first was applied). An append whose entries cannot be stored (a
/// malformed entry, seqs that do not increase, no entries) is answered
/// [`AppendOutcome::Failed`] in `out` and left out.
pub(crate) fn split_batch<'a>(
    batch: &'a [Append],
    out: &mut [Option<AppendOutcome>],
) -> Vec<Vec<Prepared<'a>>> {
    let mut calls: Vec<Vec<Prepared<'a>>> = Vec::new();
    // The call each session was last put in.
    let mut last_call: HashMap<SessionId, usize> = HashMap::new();
    for (index, append) in batch.iter().enumerate() {
        let rows = match rows_of(append) {
            Ok(rows) => rows,
            Err(reason) => {
                out[index] = Some(AppendOutcome::Failed {
                    reason: reason.to_owned(),
                });
                continue;
            }
        };
        let call = last_call.get(&append.session).map_or(0, |&c| c + 1);
        last_call.insert(append.session, call);
        if call == calls.len() {
            calls.push(Vec::new());
        }
        calls[call].push(Prepared {
            index,
            append,
            rows,
        });
    }
    calls
}

fn rows_of(append: &Append) -> Result<Vec<EntryRow<'_>>, &'static str> {
    if append.entries.is_empty() {
        return Err("an append without entries");
    }
    let rows = append
        .entries
        .iter()
        .map(|e| entry_row(e))
        .collect::<Result<Vec<_>, _>>()?;
    if rows.windows(2).any(|w| w[1].seq <= w[0].seq) {
        return Err("the entries' seqs do not increase");
    }
    Ok(rows)
}

/// The default time between two rounds of maintenance.
pub const DEFAULT_MAINTENANCE_INTERVAL: Duration = Duration::from_secs(60);
/// The default most rows (or sessions' histories) one maintenance
/// statement (a SQL store's) deletes.
pub const DEFAULT_MAINTENANCE_BATCH: usize = 1_000;

/// A SQL store's retention in the units its statements take: *keep* as
/// an `i64`, the TTL in milliseconds (both saturating).
#[derive(Clone, Copy, Debug)]
pub(crate) struct RetentionMs {
    pub(crate) keep: i64,
    pub(crate) ttl: i64,
}

impl RetentionMs {
    pub(crate) fn new(keep: usize, ttl: Duration) -> Self {
        Self {
            keep: i64::try_from(keep).unwrap_or(i64::MAX),
            ttl: i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX),
        }
    }

    /// Until when a user's history link lives: the latest the session can
    /// end, plus the history TTL.
    pub(crate) fn link_until(self, session_ends: i64) -> i64 {
        session_ends
            .max(crate::util::now_ms())
            .saturating_add(self.ttl)
    }

    /// For an append at `now`: the earliest the list may expire (now plus
    /// the TTL), and how much later than that an expiry that moves is set.
    /// A list's expiry moves only when it would come before the first, and
    /// then by a 64th of the TTL (at most an hour) beyond it, as the Redis
    /// store refreshes its TTLs: most appends leave it alone.
    pub(crate) fn expiry(self, now: i64) -> (i64, i64) {
        super::list_expiry(self.ttl, now)
    }
}

/// What one round of maintenance deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MaintenanceReport {
    /// Session records past their linger after expiry.
    pub sessions: u64,
    /// Lapsed claims of the session limit.
    pub claims: u64,
    /// Lapsed links of users' history indexes.
    pub links: u64,
    /// Expired histories (all their entries).
    pub histories: u64,
    /// Histories trimmed to their newest *keep* entries.
    pub trimmed: u64,
}
