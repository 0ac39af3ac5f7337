//! Verifying a session's chain of entries.
//!
//! Each entry carries `seq` and `prev` (the tag of entry `seq - 1`) and is
//! tagged with the history key, so a reader with the key can tell a chain as
//! written from one that was modified, cut, spliced or reordered.
//!
//! [`verify`] walks the entries in stored order and reports every break with
//! its kind and position, and keeps going after the first:
//!
//! - an entry whose tag does not match is [`BreakKind::BadTag`] (modified or
//!   forged), one that does not decode is [`BreakKind::Malformed`], one
//!   signed with a key not in the ring is [`BreakKind::UnknownKey`];
//! - among entries with good tags, the longest run in increasing `seq` order
//!   is taken as the chain; entries outside it are
//!   [`BreakKind::Duplicate`] (a copy of an entry in the chain) or
//!   [`BreakKind::OutOfOrder`];
//! - along the chain, `seq` numbers that are absent (and not accounted for
//!   by a bad or out-of-order entry in their place) are
//!   [`BreakKind::Missing`], reported where they should have been; an entry
//!   with the next `seq` whose `prev` is not its predecessor's tag is
//!   [`BreakKind::BrokenLink`].
//!
//! Entries removed by retention are not tampering: when the stored chain
//! starts after `seq` 1 and the list is as long as the store keeps
//! ([`Options::keep`]), the verification reports it in
//! [`Verification::trimmed_before`] instead of as a break. A newest-*N*
//! window is verified with [`Options::window`], which does not ask for the
//! start of the chain.
//!
//! Limit: a chain alone cannot show that its *newest* entries were cut off
//! (every remaining entry is still valid), or that a whole history was
//! deleted: [`verify_checkpointed`](super::verify_checkpointed) checks the
//! chain against the writer's signed checkpoints for that.

use std::collections::HashMap;

use subtle::ConstantTimeEq;

use super::entry::{TAG_LEN, parse};
use crate::SessionId;
use crate::key::KeyRing;

/// How a chain broke at one place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BreakKind {
    /// The entry does not decode.
    Malformed,
    /// The entry names a key that is not in the ring.
    UnknownKey,
    /// The entry's tag does not match its contents: modified or forged.
    BadTag,
    /// Entries with these `seq` numbers are absent here: deleted.
    Missing {
        /// The first absent `seq`.
        from: u64,
        /// The last absent `seq`.
        to: u64,
    },
    /// A valid entry that stands out of `seq` order: moved.
    OutOfOrder,
    /// A second copy of an entry: replayed or inserted.
    Duplicate,
    /// The entry follows its predecessor by `seq` but was chained to
    /// another one (a fork).
    BrokenLink,
    /// A checkpoint attests entries up to `to`, and the newest here is
    /// `from - 1`: the tail was cut (see
    /// [`verify_checkpointed`](super::verify_checkpointed)).
    TruncatedTail {
        /// The first absent `seq`.
        from: u64,
        /// The attested head's `seq`.
        to: u64,
    },
    /// A checkpoint attests a head (`seq` `through`) and the history is
    /// gone, though neither its TTL nor an erasure explains it.
    MissingHistory {
        /// The attested head's `seq`.
        through: u64,
    },
    /// The entry at an attested `seq` is not the attested one.
    Replaced,
}

impl BreakKind {
    /// A short name: `"bad_tag"`, `"missing"`, …
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::UnknownKey => "unknown_key",
            Self::BadTag => "bad_tag",
            Self::Missing { .. } => "missing",
            Self::OutOfOrder => "out_of_order",
            Self::Duplicate => "duplicate",
            Self::BrokenLink => "broken_link",
            Self::TruncatedTail { .. } => "truncated_tail",
            Self::MissingHistory { .. } => "missing_history",
            Self::Replaced => "replaced",
        }
    }

    /// Whether the break was found against checkpoints.
    pub fn is_checkpoint(&self) -> bool {
        matches!(
            self,
            Self::TruncatedTail { .. } | Self::MissingHistory { .. } | Self::Replaced
        )
    }
}

/// One break in a chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Break {
    /// Index in the list as given (0 = oldest given).
    pub position: usize,
    /// The `seq` the entry at that position claims, when it decodes.
    pub seq: Option<u64>,
    /// What is wrong.
    pub kind: BreakKind,
}

impl std::fmt::Display for Break {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind {
            BreakKind::Missing { from, to } if from == to => {
                write!(
                    f,
                    "entry seq {from} missing before position {}",
                    self.position
                )
            }
            BreakKind::Missing { from, to } => {
                write!(
                    f,
                    "entries seq {from}..={to} missing before position {}",
                    self.position
                )
            }
            BreakKind::TruncatedTail { from, to } => write!(
                f,
                "entries seq {from}..={to} cut off the tail (a checkpoint attests seq {to})"
            ),
            BreakKind::MissingHistory { through } => write!(
                f,
                "history missing (a checkpoint attests entries through seq {through})"
            ),
            k => {
                write!(f, "{} at position {}", k.as_str(), self.position)?;
                if let Some(seq) = self.seq {
                    write!(f, " (seq {seq})")?;
                }
                Ok(())
            }
        }
    }
}

/// The result of [`verify`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verification {
    /// How many entries were given.
    pub entries: usize,
    /// Every break, in position order.
    pub breaks: Vec<Break>,
    /// `Some(seq)` when the chain starts at `seq` > 1 because retention
    /// removed older entries.
    pub trimmed_before: Option<u64>,
    /// `Some(seq)` when checkpoints attest the chain up to `seq` and it
    /// holds there ([`verify_checkpointed`](super::verify_checkpointed)).
    pub checkpointed: Option<u64>,
}

impl Verification {
    /// Whether the chain verified without a break.
    pub fn is_ok(&self) -> bool {
        self.breaks.is_empty()
    }

    /// The first break as text, for display.
    pub fn first_error(&self) -> Option<String> {
        self.breaks.first().map(ToString::to_string)
    }
}

/// How to verify.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// The store's keep-*N*: a list this long may have lost its oldest
    /// entries to retention.
    pub keep: usize,
    /// The entries are a newest-*N* window: do not ask for the chain's start.
    pub window: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            keep: crate::store::DEFAULT_HISTORY_KEEP,
            window: false,
        }
    }
}

struct Valid {
    pos: usize,
    seq: u64,
    prev: [u8; TAG_LEN],
    tag: [u8; TAG_LEN],
}

/// Verifies a session's entries, given oldest first.
///
/// ```
/// use session_trail::history::{verify, Options};
/// use session_trail::{Key, KeyRing, SessionId};
///
/// let ring = KeyRing::new(Key::generate());
/// let no_entries: Vec<Vec<u8>> = Vec::new();
/// let v = verify(&ring, &SessionId::generate(), &no_entries, Options::default());
/// assert!(v.is_ok());
/// ```
pub fn verify<E: AsRef<[u8]>>(
    ring: &KeyRing,
    session: &SessionId,
    entries: &[E],
    options: Options,
) -> Verification {
    let mut breaks = Vec::new();
    let mut valid: Vec<Valid> = Vec::with_capacity(entries.len());
    // Positions of entries that failed their own checks.
    let mut invalid: Vec<usize> = Vec::new();

    for (pos, bytes) in entries.iter().enumerate() {
        let bytes = bytes.as_ref();
        let Ok(p) = parse(bytes) else {
            breaks.push(Break {
                position: pos,
                seq: None,
                kind: BreakKind::Malformed,
            });
            invalid.push(pos);
            continue;
        };
        let Some(key) = ring.get(p.key_id) else {
            breaks.push(Break {
                position: pos,
                seq: Some(p.seq),
                kind: BreakKind::UnknownKey,
            });
            invalid.push(pos);
            continue;
        };
        let expected = super::entry::compute_tag(key, session, p.signed);
        if !bool::from(expected.ct_eq(&p.tag)) {
            breaks.push(Break {
                position: pos,
                seq: Some(p.seq),
                kind: BreakKind::BadTag,
            });
            invalid.push(pos);
            continue;
        }
        valid.push(Valid {
            pos,
            seq: p.seq,
            prev: p.prev,
            tag: p.tag,
        });
    }

    let in_chain = longest_increasing(&valid);

    // Valid entries outside the chain: duplicates or moved entries. (An
    // in-order chain, the usual case, has none: build no map for it.)
    let all_in_chain = in_chain.iter().all(|c| *c);
    let mut chain_tags: HashMap<[u8; TAG_LEN], ()> = HashMap::new();
    if !all_in_chain {
        for (i, v) in valid.iter().enumerate() {
            if in_chain[i] {
                chain_tags.insert(v.tag, ());
            }
        }
    }
    let mut outside_seqs: Vec<u64> = Vec::new();
    for (i, v) in valid.iter().enumerate().filter(|_| !all_in_chain) {
        if !in_chain[i] {
            let kind = if chain_tags.contains_key(&v.tag) {
                BreakKind::Duplicate
            } else {
                outside_seqs.push(v.seq);
                BreakKind::OutOfOrder
            };
            breaks.push(Break {
                position: v.pos,
                seq: Some(v.seq),
                kind,
            });
        }
    }
    outside_seqs.sort_unstable();

    let chain: Vec<&Valid> = valid
        .iter()
        .zip(&in_chain)
        .filter(|(_, c)| **c)
        .map(|(v, _)| v)
        .collect();
    let invalid_between =
        |from: usize, to: usize| invalid.iter().filter(|&&p| p > from && p < to).count() as u64;
    let outside_in = |lo: u64, hi: u64| -> u64 {
        // seqs strictly between lo and hi held by out-of-order entries
        let a = outside_seqs.partition_point(|&s| s <= lo);
        let b = outside_seqs.partition_point(|&s| s < hi);
        b.saturating_sub(a) as u64
    };

    let mut trimmed_before = None;
    if let Some(first) = chain.first() {
        if first.seq == 1 {
            if first.prev != [0; TAG_LEN] {
                breaks.push(Break {
                    position: first.pos,
                    seq: Some(1),
                    kind: BreakKind::BrokenLink,
                });
            }
        } else if !options.window {
            let absent = first.seq - 1;
            let explained = invalid.iter().filter(|&&p| p < first.pos).count() as u64
                + outside_in(0, first.seq);
            if entries.len() >= options.keep {
                trimmed_before = Some(first.seq);
            } else if absent > explained {
                breaks.push(Break {
                    position: first.pos,
                    seq: Some(first.seq),
                    kind: BreakKind::Missing {
                        from: 1 + explained,
                        to: first.seq - 1,
                    },
                });
            }
        }
    }
    for pair in chain.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        let gap = b.seq - a.seq - 1;
        if gap == 0 {
            if b.prev != a.tag {
                breaks.push(Break {
                    position: b.pos,
                    seq: Some(b.seq),
                    kind: BreakKind::BrokenLink,
                });
            }
            continue;
        }
        let explained = invalid_between(a.pos, b.pos) + outside_in(a.seq, b.seq);
        if gap > explained {
            breaks.push(Break {
                position: b.pos,
                seq: Some(b.seq),
                kind: BreakKind::Missing {
                    from: a.seq + 1 + explained,
                    to: b.seq - 1,
                },
            });
        }
    }

    breaks.sort_by_key(|b| b.position);
    Verification {
        entries: entries.len(),
        breaks,
        trimmed_before,
        checkpointed: None,
    }
}

/// Marks the longest run of entries with strictly increasing `seq` (in
/// position order). Linear when the chain is in order, as it nearly always is.
///
/// Several runs can be longest: with `seq`s `3, 2, 1` (the first and the
/// last swapped) any one entry is. Among them the run whose entries kept
/// their places is taken: the one with the most consecutive pairs as far
/// apart by position as by `seq`, counting a first entry at position
/// `seq - 1` as one more. So the two entries that moved are reported, and
/// not the one between them that did not.
fn longest_increasing(valid: &[Valid]) -> Vec<bool> {
    if valid.windows(2).all(|w| w[0].seq < w[1].seq) {
        return vec![true; valid.len()];
    }
    // Best run ending at each entry, scored (length, pairs in place), found
    // with a prefix-maximum Fenwick tree over the ranks of the `seq`s.
    type Score = (usize, usize);
    let mut seqs: Vec<u64> = valid.iter().map(|v| v.seq).collect();
    seqs.sort_unstable();
    seqs.dedup();
    let mut tree: Vec<Option<(Score, usize)>> = vec![None; seqs.len() + 1];
    // Best run ending at an entry with this `seq - position`: any of them
    // precedes a later entry with the same offset in `seq` too, in place.
    let mut by_offset: HashMap<i128, (Score, usize)> = HashMap::new();
    let mut prev: Vec<Option<usize>> = vec![None; valid.len()];
    let mut best: Option<(Score, usize)> = None;
    let better = |a: &Option<(Score, usize)>, s: Score| a.is_none_or(|(b, _)| s > b);
    for (i, v) in valid.iter().enumerate() {
        let offset = i128::from(v.seq) - v.pos as i128;
        let mut score: Score = (1, usize::from(offset == 1));
        // Runs ending at a smaller `seq`: ranks 1..=rank.
        let rank = seqs.partition_point(|&s| s < v.seq);
        let mut k = rank;
        let mut before: Option<(Score, usize)> = None;
        while k > 0 {
            if let Some((s, j)) = tree[k]
                && better(&before, s)
            {
                before = Some((s, j));
            }
            k &= k - 1;
        }
        if let Some(((len, aligned), j)) = before {
            score = (len + 1, aligned);
            prev[i] = Some(j);
        }
        if let Some(&((len, aligned), j)) = by_offset.get(&offset)
            && (len + 1, aligned + 1) > score
        {
            score = (len + 1, aligned + 1);
            prev[i] = Some(j);
        }
        let mut k = rank + 1;
        while k < tree.len() {
            if better(&tree[k], score) {
                tree[k] = Some((score, i));
            }
            k += k & k.wrapping_neg();
        }
        let slot = by_offset.entry(offset).or_insert((score, i));
        if score > slot.0 {
            *slot = (score, i);
        }
        if better(&best, score) {
            best = Some((score, i));
        }
    }
    let mut marks = vec![false; valid.len()];
    let mut cur = best.map(|(_, i)| i);
    while let Some(i) = cur {
        marks[i] = true;
        cur = prev[i];
    }
    marks
}
