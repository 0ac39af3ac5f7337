use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tower_layer::Layer;

use super::{SessionLayerBuilder, SessionService, Shared};
use crate::history::HistoryWriter;
use crate::key::KeyRing;
use crate::store::{HistoryStore, SessionStore};

/// The session layer: wrap a service (an axum `Router`, a tonic server, any
/// tower service over `http` requests) and every request gets a
/// [`Session`](crate::Session).
///
/// It holds configuration and shared state only; cloning is cheap.
///
/// ```
/// use axum::{Router, routing::get};
/// use session_trail::{Key, Session, SessionLayer, store::MemoryStore};
///
/// async fn visits(session: Session) -> Result<String, session_trail::Error> {
///     let n: u64 = session.get("visits").await?.unwrap_or(0) + 1;
///     session.insert("visits", n).await?;
///     Ok(n.to_string())
/// }
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let layer = SessionLayer::builder(MemoryStore::new(), Key::generate()).build()?;
/// let app: Router = Router::new().route("/", get(visits)).layer(layer);
/// # let _ = app;
/// # Ok::<_, session_trail::ConfigError>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct SessionLayer {
    shared: Arc<Shared>,
}

impl SessionLayer {
    /// A builder over a store that keeps both sessions and history (as
    /// [`MemoryStore`](crate::store::MemoryStore) and the Redis store do).
    /// History is recorded into the same store.
    pub fn builder<S>(store: S, keys: impl Into<KeyRing>) -> SessionLayerBuilder
    where
        S: SessionStore + HistoryStore + Clone,
    {
        SessionLayerBuilder::new_with_history(store, keys.into())
    }

    /// A builder over a store that keeps sessions only. No history is
    /// recorded unless [`SessionLayerBuilder::history`] names a store for it.
    pub fn with_session_store<S: SessionStore>(
        store: S,
        keys: impl Into<KeyRing>,
    ) -> SessionLayerBuilder {
        SessionLayerBuilder::new(store, keys.into())
    }

    pub(crate) fn from_shared(shared: Shared) -> Self {
        Self {
            shared: Arc::new(shared),
        }
    }

    /// The history writer, when history is recorded: its counters,
    /// [`flush`](HistoryWriter::flush) and
    /// [`shutdown`](HistoryWriter::shutdown).
    pub fn history_writer(&self) -> Option<&HistoryWriter> {
        self.shared.writer.as_ref()
    }

    /// The layer's keys: the current one signs, the others verify, and
    /// [`KeyRing::pseudonym_key`] makes pseudonyms. Their `Debug` output
    /// names key ids only.
    pub fn key_ring(&self) -> &KeyRing {
        &self.shared.ring
    }

    /// How many requests carried a credential that did not verify (forged,
    /// malformed, oversized, or signed with an unknown key).
    pub fn invalid_credentials(&self) -> u64 {
        self.shared.invalid_credentials.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for SessionLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionLayer")
            .field("keys", &self.shared.ring)
            .field("config", &self.shared.config)
            .field("history", &self.shared.writer.is_some())
            .finish()
    }
}

impl<S> Layer<S> for SessionLayer {
    type Service = SessionService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SessionService::new(inner, Arc::clone(&self.shared))
    }
}
