//! The tower layer, its service and its response future.

mod config;
mod future;
mod layer;
mod service;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

pub use config::{ClientAddress, SessionLayerBuilder};
pub use future::ResponseFuture;
pub use layer::SessionLayer;
pub use service::SessionService;

use crate::SessionId;
use crate::history::HistoryWriter;
use crate::history::entry::Draft;
use crate::key::KeyRing;
use crate::store::DynSessionStore;
pub(crate) use config::Config;

/// An `ended` lifecycle entry.
pub(crate) fn ended(reason: &str) -> Draft {
    Draft::lifecycle(
        crate::history::EntryKind::Ended,
        &serde_json::json!({ "reason": reason }),
    )
}

/// State shared by the layer, its services and every request's session.
pub(crate) struct Shared {
    pub(crate) store: Arc<dyn DynSessionStore>,
    pub(crate) ring: KeyRing,
    pub(crate) config: Config,
    pub(crate) writer: Option<HistoryWriter>,
    pub(crate) invalid_credentials: AtomicU64,
    /// The history store is the session store, so it can check a token
    /// atomically with an append (see [`crate::store::Append::token`]).
    pub(crate) history_checks_tokens: bool,
    /// The history store is the session store: a new session's history is
    /// linked to its user when the record is created
    /// ([`crate::store::SessionStore::create_linked`]).
    pub(crate) history_is_session_store: bool,
}

impl Shared {
    pub(crate) fn new(
        store: Arc<dyn DynSessionStore>,
        ring: KeyRing,
        config: Config,
        writer: Option<HistoryWriter>,
        history_checks_tokens: bool,
        history_is_session_store: bool,
    ) -> Self {
        Self {
            store,
            ring,
            config,
            writer,
            invalid_credentials: AtomicU64::new(0),
            history_checks_tokens,
            history_is_session_store,
        }
    }

    pub(crate) fn enqueue(&self, session: SessionId, drafts: Vec<Draft>) {
        if let Some(w) = &self.writer {
            w.enqueue(session, drafts);
        }
    }

    /// Deletes a session and records why in its history; `true` if it
    /// existed.
    pub(crate) async fn end_session(
        &self,
        session: SessionId,
        reason: &str,
    ) -> Result<bool, crate::Error> {
        let existed = self.store.delete(&session).await?;
        if existed {
            self.enqueue(session, vec![ended(reason)]);
        }
        Ok(existed)
    }

    /// A keyed pseudonym of a user name, as hex.
    pub(crate) fn user_pseudonym(&self, user: &str) -> String {
        crate::util::hex(&self.user_pseudonym_bytes(user))
    }

    pub(crate) fn user_pseudonym_bytes(&self, user: &str) -> [u8; 8] {
        // Not the signing key: a pseudonym must survive key rotation.
        crate::key::pseudonym(self.ring.pseudonym_key(), b"user", user.as_bytes())
    }
}
