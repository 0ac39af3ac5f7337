//! Session history: signed, chained entries, written in the background.
//!
//! Every request that carries a session, every event a handler records with
//! [`Session::record`](crate::Session::record), and every lifecycle change
//! (started, rotated, privilege changed, ended) becomes an [`Entry`] in the
//! session's chain. Entries are built on the request path without any I/O,
//! then chained, signed and written by the [`HistoryWriter`] task.
//!
//! See [`entry`] for the format and [`verify`] for what verification
//! reports.

mod audit;
mod chain;
pub mod checkpoint;
mod checkpointer;
pub mod entry;
mod sink;
mod worker;
mod writer;

use std::collections::HashSet;

use bytes::Bytes;
use serde_json::{Value, json};

pub use audit::{Attestation, CheckpointLog, CheckpointProblem, EXPIRY_SLACK, verify_checkpointed};
pub use chain::{Break, BreakKind, Options, Verification, verify};
pub use checkpoint::{
    Checkpoint, CheckpointDecodeError, Digest, Erasure, Head, InclusionProof, WriterId, merkle_root,
};
pub use entry::{Body, DecodeError, Draft, Entry, EntryKind};
pub use sink::{CheckpointSink, FileSink, SinkFuture, TracingSink};
pub(crate) use writer::MIN_DEAD_SIGNAL_EVERY;
pub use writer::{HistoryWriter, WriterConfig, WriterStats};

use crate::{Error, SessionId};
use entry::{TAG_LEN, parse};

/// A page of a session's history, newest first, with the verification of
/// the chain it was read from.
#[derive(Clone, Debug)]
pub struct HistoryPage {
    /// The session; `None` for a visitor without one (the page is empty).
    pub session: Option<SessionId>,
    /// The entries, newest first.
    pub entries: Vec<Entry>,
    /// The verification of the entries read.
    pub verification: Verification,
}

impl HistoryPage {
    /// The page as JSON: `{"session", "entries": [...], "chain": {"ok",
    /// "error", "breaks": [{"position", "seq", "kind", "text"}],
    /// "trimmed_before", "checkpointed"}}`, each entry as [`Entry::to_json`]
    /// gives it. `error` is the first break as text or `null`;
    /// `trimmed_before` is [`Verification::trimmed_before`] (`null` unless
    /// retention removed older entries); `checkpointed` is
    /// [`Verification::checkpointed`] (`null` unless this writer's
    /// checkpoints attest the chain). Its [`Serialize`](serde::Serialize) output is the
    /// same.
    pub fn to_json(&self) -> Value {
        json!({
            "session": self.session,
            "entries": self.entries.iter().map(Entry::to_json).collect::<Vec<_>>(),
            "chain": chain_json(&self.verification),
        })
    }

    /// The page's entries of one kind, newest first.
    ///
    /// It filters this page: of a page read with
    /// [`Session::history(limit)`](crate::Session::history), the entries of
    /// that kind among the newest `limit`. For lifecycle entries of every
    /// kind, filter [`entries`](Self::entries) with
    /// [`EntryKind::is_lifecycle`].
    ///
    /// ```
    /// use serde_json::json;
    /// use session_trail::history::{Draft, Entry, EntryKind, HistoryPage, Options, verify};
    /// use session_trail::{Key, KeyRing, SessionId};
    ///
    /// // A chain of four entries, signed as the history writer would.
    /// let key = Key::generate();
    /// let session = SessionId::generate();
    /// let drafts = [
    ///     Draft::lifecycle(EntryKind::Started, &json!({})),
    ///     Draft::event("add_to_cart", &json!({"item": "book"})).unwrap(),
    ///     Draft::request("POST", "/cart", 200, 310, None),
    ///     Draft::event("checkout", &json!({})).unwrap(),
    /// ];
    /// let mut prev = [0; 16];
    /// let mut stored = Vec::new();
    /// for (seq, draft) in (1..).zip(&drafts) {
    ///     let bytes = draft.sign(&key, &session, seq, &prev);
    ///     prev = Entry::decode(&bytes).unwrap().tag;
    ///     stored.push(bytes);
    /// }
    /// let page = HistoryPage {
    ///     session: Some(session),
    ///     verification: verify(&KeyRing::new(key), &session, &stored, Options::default()),
    ///     entries: stored.iter().rev().map(|b| Entry::decode(b).unwrap()).collect(),
    /// };
    ///
    /// let events: Vec<String> = page
    ///     .of_kind(EntryKind::Event)
    ///     .map(|e| e.to_json()["event"].as_str().unwrap().to_owned())
    ///     .collect();
    /// assert_eq!(events, ["checkout", "add_to_cart"]); // newest first
    /// assert_eq!(page.of_kind(EntryKind::Request).count(), 1);
    /// assert_eq!(page.of_kind(EntryKind::Ended).count(), 0);
    /// ```
    pub fn of_kind(&self, kind: EntryKind) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(move |e| e.kind == kind)
    }
}

/// Serializes as [`to_json`](HistoryPage::to_json) does, so a page can be a
/// field of an application's own response type.
impl serde::Serialize for HistoryPage {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serde::Serialize::serialize(&self.to_json(), s)
    }
}

pub(crate) fn chain_json(v: &Verification) -> Value {
    json!({
        "ok": v.is_ok(),
        "error": v.first_error(),
        "breaks": v.breaks.iter().map(|b| json!({
            "position": b.position,
            "seq": b.seq,
            "kind": b.kind.as_str(),
            "text": b.to_string(),
        })).collect::<Vec<_>>(),
        "trimmed_before": v.trimmed_before,
        "checkpointed": v.checkpointed,
    })
}

/// Reads the newest `limit` entries of a session, including entries this
/// process has queued but not yet written (read-your-own-writes).
pub(crate) async fn read_page(
    writer: &HistoryWriter,
    session: SessionId,
    limit: usize,
) -> Result<HistoryPage, Error> {
    let limit = limit.max(1);
    // Ask the writer first: anything it no longer holds is in the store by
    // the time the store is read.
    let pending = writer.pending(session).await.unwrap_or_default();
    let mut all: Vec<Bytes> = writer.store().read_newest(&session, limit).await?;
    let read = all.len();
    let stored_ids: HashSet<[u8; 16]> = all
        .iter()
        .filter_map(|b| parse(b).ok().map(|p| p.id))
        .collect();
    let (mut seq, mut prev) = all
        .last()
        .and_then(|b| parse(b).ok().map(|p| (p.seq, p.tag)))
        .unwrap_or((0, [0; TAG_LEN]));
    let key = writer.ring().current();
    for draft in pending.iter().filter(|d| !stored_ids.contains(&d.id)) {
        seq += 1;
        let bytes = draft.sign(key, &session, seq, &prev);
        prev = crate::store::tag_of(&bytes).unwrap_or([0; TAG_LEN]);
        all.push(bytes);
    }
    let options = Options {
        keep: writer.store().retention().keep,
        window: read >= limit,
    };
    let verification = writer.verify_read(&session, &all, options).await;
    let skip = all.len().saturating_sub(limit);
    let entries = all[skip..]
        .iter()
        .rev()
        .filter_map(|b| Entry::decode(b).ok())
        .collect();
    Ok(HistoryPage {
        session: Some(session),
        entries,
        verification,
    })
}
