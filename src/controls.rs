//! Users' control of their sessions and history: list and revoke sessions,
//! export and erase history.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use futures_util::stream::{self, StreamExt};
use serde_json::{Value, json};

use crate::SessionId;
use crate::error::{Error, ErrorKind};

use crate::history::{Entry, Options, verify};
use crate::session::Session;
use crate::util::{now_ms, rfc3339};

/// One of a user's active sessions, as listed by [`Session::sessions`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionInfo {
    /// The public session id.
    pub id: SessionId,
    /// When it started, Unix milliseconds.
    pub created: i64,
    /// Last recorded activity, Unix milliseconds (as coarse as the idle
    /// refresh fraction).
    pub last_seen: i64,
    /// A coarse description of the client ("Firefox on Linux").
    pub device: Option<String>,
    /// Whether this is the session of the request that asked.
    pub current: bool,
}

impl SessionInfo {
    /// As JSON: `{"session", "created", "last_seen", "device", "current"}`:
    /// the public id, RFC 3339 times, the device or `null`, and a boolean.
    /// Its [`Serialize`](serde::Serialize) output is the same.
    pub fn to_json(&self) -> Value {
        json!({
            "session": self.id,
            "created": rfc3339(self.created),
            "last_seen": rfc3339(self.last_seen),
            "device": self.device,
            "current": self.current,
        })
    }
}

/// Serializes as [`to_json`](SessionInfo::to_json) does, so a
/// `SessionInfo` can be a field of an application's own response type.
impl serde::Serialize for SessionInfo {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serde::Serialize::serialize(&self.to_json(), s)
    }
}

/// What [`Session::erase_history`] removed. It names the user by pseudonym
/// only, and is also written to the tracing output (target
/// `session_trail::erasure`).
///
/// It serializes as `{"user", "sessions", "entries", "at"}`, its fields.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ErasureReceipt {
    /// The user's keyed pseudonym.
    pub user: String,
    /// How many sessions' histories were erased.
    pub sessions: u64,
    /// How many entries were removed.
    pub entries: u64,
    /// When, RFC 3339.
    pub at: String,
}

/// A stream of NDJSON lines: every history entry of a user, one JSON object
/// a line, session by session (oldest first), each with `"session"` and
/// `"verified"` (its session's chain verified up to and including it).
///
/// It reads one session's history at a time, so memory stays bounded by the
/// store's keep-*N* however long the user's history is.
pub struct HistoryExport {
    inner: Pin<Box<dyn Stream<Item = Result<Bytes, Error>> + Send>>,
}

impl std::fmt::Debug for HistoryExport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HistoryExport").finish_non_exhaustive()
    }
}

impl Stream for HistoryExport {
    type Item = Result<Bytes, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

fn unauthenticated() -> Error {
    Error::new(ErrorKind::Unauthenticated, "log in first")
}

impl Session {
    async fn require_user(&self) -> Result<String, Error> {
        self.user().await?.ok_or_else(unauthenticated)
    }

    /// The logged-in user's active sessions, oldest first.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Unauthenticated`] when no user is logged in; store
    /// errors.
    pub async fn sessions(&self) -> Result<Vec<SessionInfo>, Error> {
        let user = self.require_user().await?;
        let current = self.id().await?;
        let records = self.shared().store.sessions_of_user(&user).await?;
        Ok(records
            .into_iter()
            .map(|r| SessionInfo {
                id: r.id,
                created: r.created,
                last_seen: r.last_seen,
                device: r.device,
                current: Some(r.id) == current,
            })
            .collect())
    }

    /// Ends one of the logged-in user's sessions. Revoking the current
    /// session is [`destroy`](Self::destroy).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotFound`] when the session does not exist or belongs to
    /// someone else (the two are not told apart);
    /// [`ErrorKind::Unauthenticated`]; store errors.
    pub async fn revoke(&self, id: SessionId) -> Result<(), Error> {
        let user = self.require_user().await?;
        if self.id().await? == Some(id) {
            return self.destroy().await;
        }
        let owned = self
            .shared()
            .store
            .sessions_of_user(&user)
            .await?
            .iter()
            .any(|r| r.id == id);
        if !owned {
            return Err(Error::new(ErrorKind::NotFound, "no such session"));
        }
        self.end_other(id, "revoked").await
    }

    /// Ends every other session of the logged-in user ("log out everywhere
    /// else"); answers how many.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Unauthenticated`]; store errors.
    pub async fn revoke_others(&self) -> Result<usize, Error> {
        let user = self.require_user().await?;
        let current = self.id().await?;
        let mut n = 0;
        for r in self.shared().store.sessions_of_user(&user).await? {
            if Some(r.id) != current {
                self.end_other(r.id, "revoked").await?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Ends every session of the logged-in user, this one included; answers
    /// how many.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Unauthenticated`]; store errors.
    pub async fn revoke_all(&self) -> Result<usize, Error> {
        let n = self.revoke_others().await?;
        self.destroy().await?;
        Ok(n + 1)
    }

    /// Deletes another session and records why in its history.
    pub(crate) async fn end_other(&self, id: SessionId, reason: &str) -> Result<(), Error> {
        self.shared().end_session(id, reason).await.map(|_| ())
    }

    /// Every history entry of the logged-in user, across all their sessions
    /// (ended ones included, as long as retention keeps them), as a stream
    /// of NDJSON lines. Entries still queued by this process are written
    /// first.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Unauthenticated`]; [`ErrorKind::InvalidInput`] when the
    /// layer records no history; store errors (also as stream items).
    pub async fn export(&self) -> Result<HistoryExport, Error> {
        let user = self.require_user().await?;
        let writer = self.writer()?.clone();
        let pseudonym = self.shared().user_pseudonym(&user);
        let sessions = writer.store().user_sessions(&pseudonym).await?;
        // Make this process's queued entries of these sessions part of the
        // export (a failing session elsewhere holds up nothing here).
        writer.flush_sessions(sessions.clone()).await?;
        let sessions: VecDeque<SessionId> = sessions.into();
        let state = (writer, sessions);
        let lines = stream::unfold(state, |(writer, mut sessions)| async move {
            let sid = sessions.pop_front()?;
            let chunk = export_session(&writer, sid).await;
            Some((chunk, (writer, sessions)))
        })
        .flat_map(|chunk: Result<Vec<Bytes>, Error>| match chunk {
            Ok(lines) => stream::iter(lines.into_iter().map(Ok).collect::<Vec<_>>()),
            Err(e) => stream::iter(vec![Err(e)]),
        });
        Ok(HistoryExport {
            inner: Box::pin(lines),
        })
    }

    /// Deletes all history of the logged-in user, every session's. It is
    /// idempotent (a second call erases nothing and says so). The receipt
    /// names the user by pseudonym only and is also logged.
    ///
    /// The history of the request that erases is not recorded, so an export
    /// right after an erase is empty. The user's live sessions (every
    /// device) stay in the user's history index, so what they record after
    /// the erase can be exported and erased again; ended sessions leave it.
    /// Each erased history leaves a marker for the retention TTL, so a
    /// writer on another app server takes the shorter chain for the erasure
    /// it is, not for lost entries (no `gap` entry reveals what was erased).
    ///
    /// Entries another app server holds in its queue at the moment of the
    /// erase (at most its flush interval's worth, unless the store was
    /// failing there) are written after it, into a new chain.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Unauthenticated`]; [`ErrorKind::InvalidInput`] when the
    /// layer records no history; store errors.
    pub async fn erase_history(&self) -> Result<ErasureReceipt, Error> {
        let user = self.require_user().await?;
        let writer = self.writer()?.clone();
        let pseudonym = self.shared().user_pseudonym(&user);
        // Entries accepted before this point belong to the erased history.
        let mark = writer.enqueued_mark();
        let store = writer.store();
        let linked = store.user_sessions(&pseudonym).await?;
        let current = self.id().await?;
        let mut live: Vec<SessionId> = self
            .shared()
            .store
            .sessions_of_user(&user)
            .await?
            .into_iter()
            .map(|r| r.id)
            .collect();
        live.extend(current);
        let mut sessions = linked.clone();
        for sid in &live {
            if !sessions.contains(sid) {
                sessions.push(*sid);
            }
        }
        // What this process still holds for them is written first, then
        // erased with the rest. A session whose appends keep failing (a
        // corrupt history) must not make erasure impossible: the delete
        // below clears it, and the entries it held from before the erase
        // are dropped from the queue (`forget` with the mark).
        match writer.flush_sessions(sessions.clone()).await {
            Err(e) if e.kind() == ErrorKind::Timeout => {
                tracing::warn!(
                    target: "session_trail::erasure",
                    user = %pseudonym,
                    "erasing although some of the user's entries could not be written first"
                );
            }
            other => other?,
        }
        let mut entries = 0;
        let mut erased = 0;
        // This server drops what it queued before the erase, and waits for
        // appends in flight, before the histories are deleted: none of the
        // erased entries lands after the delete.
        writer.forget(&sessions, mark).await;
        for sid in &sessions {
            let deleted = store.delete(sid).await;
            // Also when the answer was lost (the delete may have been
            // applied), but not when the store refused it.
            let unclear = deleted
                .as_ref()
                .is_err_and(|e| matches!(e.kind(), ErrorKind::Timeout | ErrorKind::Unavailable));
            if deleted.is_ok() || unclear {
                writer.erased(*sid);
            }
            let n = deleted?;
            if n > 0 {
                erased += 1;
            }
            entries += n;
        }
        // Ended sessions leave the index; every live one stays (or is
        // linked now), so later entries of every device can be erased too.
        let ended: Vec<SessionId> = linked
            .iter()
            .filter(|s| !live.contains(s))
            .copied()
            .collect();
        store.unlink_sessions(&pseudonym, &ended).await?;
        let ends = now_ms() + self.shared().config.absolute_timeout.as_millis() as i64;
        for sid in live.iter().filter(|s| !linked.contains(s)) {
            store.link_user(&pseudonym, sid, ends).await?;
        }
        self.suppress_history();
        let receipt = ErasureReceipt {
            user: pseudonym,
            sessions: erased,
            entries,
            at: rfc3339(now_ms()),
        };
        tracing::info!(
            target: "session_trail::erasure",
            user = %receipt.user,
            sessions = receipt.sessions,
            entries = receipt.entries,
            at = %receipt.at,
            "history erased"
        );
        Ok(receipt)
    }
}

async fn export_session(
    writer: &crate::history::HistoryWriter,
    sid: SessionId,
) -> Result<Vec<Bytes>, Error> {
    let raw = writer.store().read_all(&sid).await?;
    let options = Options {
        keep: writer.store().retention().keep,
        window: false,
    };
    let v = verify(writer.ring(), &sid, &raw, options);
    let first_break = v.breaks.first().map_or(usize::MAX, |b| b.position);
    let mut out = Vec::with_capacity(raw.len());
    for (pos, bytes) in raw.iter().enumerate() {
        let mut line = match Entry::decode(bytes) {
            Ok(e) => e.to_json(),
            Err(_) => json!({ "kind": "malformed" }),
        };
        line["session"] = json!(sid);
        line["verified"] = json!(pos < first_break);
        let mut text = serde_json::to_vec(&line)?;
        text.push(b'\n');
        out.push(Bytes::from(text));
    }
    Ok(out)
}
