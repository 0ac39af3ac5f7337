//! Checking checkpoint chains, and sessions against them.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

use super::chain::{Break, BreakKind, Options, Verification, verify};
use super::checkpoint::{Checkpoint, WriterId};
use super::entry::{TAG_LEN, parse};
use crate::SessionId;
use crate::key::KeyRing;
use crate::store::Retention;

/// How far the verifier's clock, the store's and the writer's may disagree,
/// and how long an entry may wait in the writer's queue, when telling a
/// history that expired by its TTL from one that was deleted. A cut made
/// within this much of the history's lawful expiry is not reported.
pub const EXPIRY_SLACK: Duration = Duration::from_secs(600);

/// What is wrong with a checkpoint chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CheckpointProblem {
    /// A stored checkpoint does not decode (its index in the list given).
    Malformed(usize),
    /// Signed with a key the ring does not hold.
    UnknownKey(WriterId, u64),
    /// Its signature does not match: modified or forged.
    BadSignature(WriterId, u64),
    /// Its heads do not hash to its signed root: heads modified.
    BadRoot(WriterId, u64),
    /// Two different checkpoints with the writer's same counter.
    Conflict(WriterId, u64),
    /// Its `prev` is not the digest of the writer's checkpoint before it.
    BrokenLink(WriterId, u64),
    /// The writer's checkpoints with these counters are absent between
    /// ones that are kept: removed.
    Missing(WriterId, u64, u64),
    /// In the outside copy but not in the store, and not old enough to have
    /// been trimmed: removed from the store.
    Removed(WriterId, u64),
    /// In both copies, but they differ.
    Altered(WriterId, u64),
}

impl CheckpointProblem {
    /// A short name: `"bad_signature"`, `"removed"`, …
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::UnknownKey(..) => "unknown_key",
            Self::BadSignature(..) => "bad_signature",
            Self::BadRoot(..) => "bad_root",
            Self::Conflict(..) => "conflict",
            Self::BrokenLink(..) => "broken_link",
            Self::Missing(..) => "missing",
            Self::Removed(..) => "removed",
            Self::Altered(..) => "altered",
        }
    }
}

impl fmt::Display for CheckpointProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Malformed(i) => write!(f, "stored checkpoint {i} is malformed"),
            Self::Missing(w, a, b) => write!(f, "checkpoints {a}..={b} of writer {w} missing"),
            Self::UnknownKey(w, c)
            | Self::BadSignature(w, c)
            | Self::BadRoot(w, c)
            | Self::Conflict(w, c)
            | Self::BrokenLink(w, c)
            | Self::Removed(w, c)
            | Self::Altered(w, c) => {
                write!(f, "{} at checkpoint {c} of writer {w}", self.as_str())
            }
        }
    }
}

/// One checkpoint's word on one session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attestation {
    /// The writer of the checkpoint.
    pub writer: WriterId,
    /// The checkpoint's counter.
    pub counter: u64,
    /// The attested head's `seq`.
    pub seq: u64,
    /// The attested head's tag.
    pub tag: [u8; TAG_LEN],
    /// The head's [`sent`](super::Head::sent): no earlier was it written.
    pub since: i64,
}

/// The checkpoints a verifier trusts, checked, and indexed by session.
///
/// Built from the checkpoints the store keeps, and those of a copy kept
/// outside it (a [`FileSink`](super::FileSink)'s file): the union is used,
/// and what the outside copy holds that the store lost or altered is
/// reported. Checkpoints whose signature or root does not check are
/// reported and not used.
///
/// Per session and writer, the newest attestation is kept: a later head
/// of the same session comes with a later `since`, so it covers what an
/// earlier one did about a cut tail or a missing history (an erasure or
/// an expiry that voids the later one voids the earlier too).
///
/// ```
/// use session_trail::history::{CheckpointLog, CheckpointProblem, Options, verify_checkpointed};
/// use session_trail::store::Retention;
/// use session_trail::{Key, KeyRing, SessionId};
///
/// let ring = KeyRing::new(Key::generate());
/// // What a store answered: one element that is not a checkpoint.
/// let stored = vec![b"not a checkpoint".to_vec()];
/// let log = CheckpointLog::new(&ring, &stored, &[], Retention::default(), 0);
/// assert_eq!(log.problems(), &[CheckpointProblem::Malformed(0)]);
/// assert!(log.is_empty());
/// let none: Vec<Vec<u8>> = Vec::new();
/// let v = verify_checkpointed(&ring, &SessionId::generate(), &none, Options::default(), &log);
/// assert!(v.is_ok() && v.checkpointed.is_none());
/// ```
#[derive(Clone, Debug, Default)]
pub struct CheckpointLog {
    /// The times of the checkpoints used, by writer and counter.
    chain: BTreeMap<(WriterId, u64), i64>,
    attest: HashMap<SessionId, Vec<Attestation>>,
    /// Per session, the latest erasure by each writer (`None`: known from
    /// the store's marker, writer unknown).
    erased: HashMap<SessionId, Vec<(Option<WriterId>, i64)>>,
    problems: Vec<CheckpointProblem>,
    ttl_ms: i64,
    now: i64,
    /// When [`prune`](Self::prune) last went through the index.
    pruned_at: i64,
}

impl CheckpointLog {
    /// Checks and indexes checkpoints: `stored` as read from the store
    /// (encoded, [`Checkpoint::encode`]), `outside` from a copy kept
    /// elsewhere. `retention` is the store's and `now` (Unix milliseconds)
    /// the time of the check: a checkpoint older than the TTL may have been
    /// trimmed from the store, and a history whose TTL has passed may have
    /// expired.
    pub fn new<B: AsRef<[u8]>>(
        ring: &KeyRing,
        stored: &[B],
        outside: &[Checkpoint],
        retention: Retention,
        now: i64,
    ) -> Self {
        Self::build(ring, stored, outside, retention, now, true)
    }

    /// Checks and indexes the checkpoints of an outside copy alone, for a
    /// history store that keeps none
    /// ([`HistoryStore::keeps_checkpoints`](crate::store::HistoryStore::keeps_checkpoints)):
    /// nothing is reported as removed.
    pub fn outside_only(
        ring: &KeyRing,
        outside: &[Checkpoint],
        retention: Retention,
        now: i64,
    ) -> Self {
        Self::build::<&[u8]>(ring, &[], outside, retention, now, false)
    }

    fn build<B: AsRef<[u8]>>(
        ring: &KeyRing,
        stored: &[B],
        outside: &[Checkpoint],
        retention: Retention,
        now: i64,
        store_keeps: bool,
    ) -> Self {
        let mut log = Self {
            ttl_ms: i64::try_from(retention.ttl.as_millis()).unwrap_or(i64::MAX),
            now,
            ..Self::default()
        };
        let mut store: BTreeMap<(WriterId, u64), Checkpoint> = BTreeMap::new();
        for (i, raw) in stored.iter().enumerate() {
            match Checkpoint::decode(raw.as_ref()) {
                // Stores keep the heads: a stored copy without them was
                // stripped, and attests nothing.
                Ok(cp) if !cp.has_heads() => {
                    log.problems
                        .push(CheckpointProblem::BadRoot(cp.writer, cp.counter));
                }
                Ok(cp) => log.admit(ring, cp, &mut store),
                Err(_) => log.problems.push(CheckpointProblem::Malformed(i)),
            }
        }
        let mut all = store.clone();
        let slack = EXPIRY_SLACK.as_millis() as i64;
        for cp in outside {
            let id = (cp.writer, cp.counter);
            match store.get(&id) {
                Some(kept) if kept.digest() == cp.digest() => {}
                Some(_) => log.problems.push(CheckpointProblem::Altered(id.0, id.1)),
                None => {
                    let before = log.problems.len();
                    log.admit(ring, cp.clone(), &mut all);
                    // The store trims by the clock of whichever app server
                    // keeps the next checkpoint.
                    let trimmed = cp.at.saturating_add(log.ttl_ms).saturating_sub(slack) <= now;
                    if log.problems.len() == before && !trimmed && store_keeps {
                        log.problems.push(CheckpointProblem::Removed(id.0, id.1));
                    }
                }
            }
        }
        log.link(&all);
        for cp in all.values() {
            log.index(cp);
        }
        log
    }

    /// Adds one checkpoint of the writer's own, already trusted (the
    /// writer's read path), without its heads: see
    /// [`index_heads`](Self::index_heads).
    pub(crate) fn add_own_header(&mut self, cp: &Checkpoint) {
        self.chain.insert((cp.writer, cp.counter), cp.at);
        for e in &cp.erasures {
            self.note_erasure(e.session, Some(cp.writer), e.at);
        }
    }

    /// Drops what lies beyond the TTL (a pass over the index every ten
    /// minutes at most: it runs under the lock the layer's history reads
    /// take), and the oldest half of the sessions when more than `cap` are
    /// indexed.
    pub(crate) fn prune(&mut self, ttl: Duration, now: i64, cap: usize) {
        const EVERY_MS: i64 = 600_000;
        let ttl = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        self.ttl_ms = ttl;
        self.now = now;
        if now.saturating_sub(self.pruned_at) < EVERY_MS && self.attest.len() <= cap {
            return;
        }
        self.pruned_at = now;
        let cutoff = now.saturating_sub(ttl);
        self.chain.retain(|_, at| *at > cutoff);
        self.erased.retain(|_, list| {
            list.retain(|(_, at)| *at > cutoff);
            !list.is_empty()
        });
        self.attest.retain(|_, v| {
            v.retain(|a| a.since > cutoff.saturating_sub(EXPIRY_SLACK.as_millis() as i64));
            !v.is_empty()
        });
        if self.attest.len() > cap {
            // The sessions attested longest ago go first, half of them.
            let mut by_age: Vec<(i64, SessionId)> = self
                .attest
                .iter()
                .map(|(s, v)| (v.iter().map(|a| a.since).max().unwrap_or(0), *s))
                .collect();
            by_age.sort_unstable_by_key(|(since, _)| *since);
            for (_, s) in &by_age[..by_age.len() / 2] {
                self.attest.remove(s);
            }
        }
    }

    /// Records an erasure this writer made (the read path's own log).
    pub(crate) fn note_erasure(&mut self, session: SessionId, writer: Option<WriterId>, at: i64) {
        let list = self.erased.entry(session).or_default();
        match list.iter_mut().find(|(w, _)| *w == writer) {
            Some((_, t)) => *t = (*t).max(at),
            None => list.push((writer, at)),
        }
    }

    /// Whether an erasure voids an attestation: one the same writer made
    /// after the attested appends were sent (one clock), or one of another
    /// writer, or of the store's marker, up to [`EXPIRY_SLACK`] before.
    fn erased_after(&self, session: &SessionId, a: &Attestation) -> bool {
        let slack = EXPIRY_SLACK.as_millis() as i64;
        self.erased.get(session).is_some_and(|list| {
            list.iter().any(|(w, at)| {
                if *w == Some(a.writer) {
                    *at >= a.since
                } else {
                    *at >= a.since.saturating_sub(slack)
                }
            })
        })
    }

    /// A log of this one session's attestations and erasure, checked as of
    /// `now`.
    pub(crate) fn for_session(&self, session: &SessionId, now: i64) -> Self {
        let mut one = Self {
            ttl_ms: self.ttl_ms,
            now,
            ..Self::default()
        };
        if let Some(a) = self.attest.get(session) {
            one.attest.insert(*session, a.clone());
        }
        if let Some(list) = self.erased.get(session) {
            one.erased.insert(*session, list.clone());
        }
        one
    }

    fn admit(
        &mut self,
        ring: &KeyRing,
        cp: Checkpoint,
        into: &mut BTreeMap<(WriterId, u64), Checkpoint>,
    ) {
        let id = (cp.writer, cp.counter);
        if let Err(p) = cp.check_signature(ring) {
            self.problems.push(p);
            return;
        }
        if !cp.heads_match_root() {
            self.problems.push(CheckpointProblem::BadRoot(id.0, id.1));
            return;
        }
        match into.get(&id) {
            Some(kept) if kept.digest() == cp.digest() => {
                // The same checkpoint twice: keep the copy with heads.
                if !kept.has_heads() {
                    into.insert(id, cp);
                }
            }
            Some(_) => self.problems.push(CheckpointProblem::Conflict(id.0, id.1)),
            None => {
                into.insert(id, cp);
            }
        }
    }

    fn link(&mut self, all: &BTreeMap<(WriterId, u64), Checkpoint>) {
        let mut last: Option<&Checkpoint> = None;
        for cp in all.values() {
            match last {
                Some(p) if p.writer == cp.writer => {
                    if cp.counter == p.counter + 1 {
                        if cp.prev != p.digest() {
                            self.problems
                                .push(CheckpointProblem::BrokenLink(cp.writer, cp.counter));
                        }
                    } else {
                        self.problems.push(CheckpointProblem::Missing(
                            cp.writer,
                            p.counter + 1,
                            cp.counter - 1,
                        ));
                    }
                }
                // A writer's first: older ones may have been trimmed.
                _ if cp.counter == 1 && cp.prev != [0; 32] => {
                    self.problems
                        .push(CheckpointProblem::BrokenLink(cp.writer, cp.counter));
                }
                _ => {}
            }
            last = Some(cp);
        }
    }

    fn index(&mut self, cp: &Checkpoint) {
        self.add_own_header(cp);
        self.index_heads(cp, &cp.heads);
    }

    /// Indexes some of a checkpoint's heads (the writer's read path takes
    /// them a slice at a time, so history reads never wait long for the
    /// lock).
    pub(crate) fn index_heads(&mut self, cp: &Checkpoint, heads: &[super::Head]) {
        for h in heads {
            let a = Attestation {
                writer: cp.writer,
                counter: cp.counter,
                seq: h.seq,
                tag: h.tag,
                since: h.sent,
            };
            let list = self.attest.entry(h.session).or_default();
            match list.iter_mut().find(|x| x.writer == cp.writer) {
                Some(x) if x.counter < a.counter => *x = a,
                Some(_) => {}
                None => list.push(a),
            }
        }
    }

    /// What is wrong with the checkpoints, if anything.
    pub fn problems(&self) -> &[CheckpointProblem] {
        &self.problems
    }

    /// How many checkpoints are used.
    pub fn len(&self) -> usize {
        self.chain.len()
    }

    /// Whether no checkpoint is used.
    pub fn is_empty(&self) -> bool {
        self.chain.is_empty()
    }

    /// The newest attestation of each writer for a session.
    pub fn attestations(&self, session: &SessionId) -> &[Attestation] {
        self.attest.get(session).map_or(&[], Vec::as_slice)
    }

    /// When the session's history was last erased, by the receipts.
    pub fn erased_at(&self, session: &SessionId) -> Option<i64> {
        self.erased.get(session)?.iter().map(|(_, at)| *at).max()
    }
}

/// [`verify`] against checkpoints: besides the chain's own breaks,
///
/// - [`BreakKind::TruncatedTail`]: the newest entry is older than a head a
///   checkpoint attests (reported after the last position);
/// - [`BreakKind::MissingHistory`]: no entry at all where a checkpoint
///   attests a head, and the history's TTL cannot have passed;
/// - [`BreakKind::Replaced`]: the entry at an attested `seq` is not the one
///   attested (the tail was rewritten from there).
///
/// Not reported: a history erased after the attestation (by a signed
/// [`Erasure`](super::Erasure) in any checkpoint: the writer's own, to the
/// millisecond by its clock; another writer's, from [`EXPIRY_SLACK`] before
/// the attested appends were sent, for the two clocks, so a history written
/// within that much after an erasure through another app server is not
/// protected until a later checkpoint of it); a history that started
/// afresh, or is gone, after its TTL could have passed since the
/// head's [`sent`](super::Head::sent) time (with [`EXPIRY_SLACK`]);
/// entries trimmed from the front by keep-*N* (the head stays).
/// [`Verification::checkpointed`] is the highest `seq` that held.
pub fn verify_checkpointed<E: AsRef<[u8]>>(
    ring: &KeyRing,
    session: &SessionId,
    entries: &[E],
    options: Options,
    log: &CheckpointLog,
) -> Verification {
    let mut v = verify(ring, session, entries, options);
    let attested = log.attestations(session);
    if attested.is_empty() {
        return v;
    }
    let broken: Vec<usize> = v
        .breaks
        .iter()
        .filter(|b| {
            matches!(
                b.kind,
                BreakKind::Malformed | BreakKind::UnknownKey | BreakKind::BadTag
            )
        })
        .map(|b| b.position)
        .collect();
    // (position, seq, tag, ts) of entries with good tags.
    let good: Vec<(usize, u64, [u8; TAG_LEN], i64)> = entries
        .iter()
        .enumerate()
        .filter(|(i, _)| !broken.contains(i))
        .filter_map(|(i, e)| parse(e.as_ref()).ok().map(|p| (i, p.seq, p.tag, p.ts)))
        .collect();
    let slack = EXPIRY_SLACK.as_millis() as i64;
    let lawful_after = |a: &Attestation| a.since.saturating_add(log.ttl_ms).saturating_sub(slack);
    let oldest_ts = good.iter().map(|g| g.3).min();
    let live: Vec<&Attestation> = attested
        .iter()
        .filter(|a| !log.erased_after(session, a))
        // A history written entirely after the attested one could expire
        // is a new one.
        .filter(|a| oldest_ts.is_none_or(|ts| ts < lawful_after(a)))
        .collect();
    let Some(top) = live.iter().max_by_key(|a| (a.seq, a.since)) else {
        return v;
    };
    let newest = good.iter().map(|g| g.1).max();
    match newest {
        None => {
            // Any attestation whose history cannot have expired yet (an
            // older, higher head may have expired before a newer start).
            if let Some(a) = live
                .iter()
                .filter(|a| log.now < lawful_after(a))
                .max_by_key(|a| a.seq)
            {
                v.breaks.push(Break {
                    position: 0,
                    seq: None,
                    kind: BreakKind::MissingHistory { through: a.seq },
                });
            }
        }
        Some(h) if h < top.seq => v.breaks.push(Break {
            position: entries.len(),
            seq: None,
            kind: BreakKind::TruncatedTail {
                from: h + 1,
                to: top.seq,
            },
        }),
        Some(_) => {}
    }
    let mut replaced = false;
    for a in &live {
        if let Some(g) = good.iter().find(|g| g.1 == a.seq)
            && g.2 != a.tag
        {
            v.breaks.push(Break {
                position: g.0,
                seq: Some(a.seq),
                kind: BreakKind::Replaced,
            });
            replaced = true;
        }
    }
    if !replaced && v.breaks.iter().all(|b| !b.kind.is_checkpoint()) {
        v.checkpointed = Some(top.seq);
    }
    v.breaks.sort_by_key(|b| b.position);
    v.breaks.dedup();
    v
}
