//! The [`Session`] handle that handlers use.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::OnceCell;

use crate::SessionId;
use crate::credential::{Credential, Token};
use crate::error::{Error, ErrorKind};
use crate::history::HistoryPage;
use crate::history::entry::{Draft, EntryKind, Route};
use crate::manager::Shared;
use crate::store::{HistoryLink, Record, Rotation, Update, UpdateOutcome};
use crate::util::now_ms;

/// A request's session.
///
/// The layer puts one into every request's extensions; with the `axum`
/// feature it is also an extractor. Cloning is cheap and shares the state.
///
/// The record is loaded from the store on first use only (the axum
/// extractor loads it when the handler asks for it), so a handler that never
/// touches its session costs no store round trip. Changes are persisted by
/// the layer when the response leaves, as per-key updates.
///
/// Privilege changes ([`set_user`](Self::set_user),
/// [`set_privilege`](Self::set_privilege)) make the layer rotate the token on
/// the way out, by itself: session fixation is impossible by construction.
///
/// ```
/// # use session_trail::{Key, SessionLayer, Session, store::MemoryStore};
/// # use tower::{Service, ServiceBuilder, ServiceExt};
/// # use http::{Request, Response};
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let layer = SessionLayer::builder(MemoryStore::new(), Key::generate()).build().unwrap();
/// let svc = ServiceBuilder::new().layer(layer).service_fn(|req: Request<String>| async move {
///     let session = req.extensions().get::<Session>().unwrap().clone();
///     let visits: u64 = session.get("visits").await?.unwrap_or(0);
///     session.insert("visits", visits + 1).await?;
///     Ok::<_, session_trail::Error>(Response::new(String::new()))
/// });
/// let res = svc.oneshot(Request::new(String::new())).await.unwrap();
/// assert!(res.headers().contains_key("set-cookie"));
/// # });
/// ```
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    presented: Option<Presented>,
    loaded: OnceCell<()>,
    state: Mutex<State>,
    meta: RequestMeta,
}

/// A credential that verified, and under which key.
pub(crate) struct Presented {
    pub(crate) credential: Credential,
    pub(crate) current_key: bool,
}

/// Facts about the request the layer passes on.
#[derive(Clone, Debug, Default)]
pub(crate) struct RequestMeta {
    pub(crate) user_agent: Option<http::HeaderValue>,
    pub(crate) client_ip: Option<std::net::IpAddr>,
    /// When the request arrived (Unix ms): the rotation grace window is
    /// measured from it, not from a load late in a slow handler.
    pub(crate) started_ms: i64,
}

#[derive(Debug, Default, PartialEq, Eq, Clone, Copy)]
enum Origin {
    /// No credential, or the session has not been loaded.
    #[default]
    None,
    /// The credential names a live session.
    Live,
    /// The credential's token was replaced moments ago (rotation grace), or
    /// the live record holds a token it does not know (replaced twice
    /// within the grace window, or a local cache not yet told of a
    /// rotation): served as anonymous, its cookie kept.
    Replaced,
    /// The credential names no live session.
    Stale,
}

#[derive(Default)]
struct State {
    origin: Origin,
    /// The session this request acts on (live or new).
    sid: Option<SessionId>,
    new: bool,
    record: Option<Record>,
    data: HashMap<String, Value>,
    set: HashMap<String, Value>,
    removed: HashSet<String>,
    user: Option<String>,
    privilege: Option<String>,
    regenerate: bool,
    destroy: bool,
    /// The live session was left for a new one in the same request (a
    /// logout then a write, or a change of user): the old one must still be
    /// ended, with this reason.
    end_live: Option<(SessionId, &'static str)>,
    events: Vec<Draft>,
    /// Entries for other sessions (an expired one found on load).
    ended: Option<(SessionId, &'static str)>,
    route: Option<String>,
    committed: bool,
    /// Other sessions of the user to end once this one's login is saved
    /// (the session limit's `EndOldest`).
    evict: Vec<SessionId>,
    /// A place claimed among the user's sessions (user, session), to give
    /// back if the login is not saved.
    claim: Option<(String, SessionId)>,
    /// Events recorded on the session this request left for a new one (a
    /// change of user): they stay in the old session's history.
    left_events: Vec<Draft>,
    /// The presented credential is known dead (its session is gone or
    /// expired, or its token was replaced past the grace window).
    dead: bool,
    /// Suspicious-use entries for the presented session.
    signals: Vec<Draft>,
    /// New device / network baseline after a recorded change.
    rebaseline: Option<(Option<String>, Option<String>)>,
    /// The request erased its user's history: record nothing for it.
    suppress_history: bool,
    /// The credential token the next save issues (a new session or a
    /// rotation), made early when a CSRF token was minted for it.
    next_token: Option<Token>,
}

impl State {
    /// Whether the request ends the session or reduces what it allows (a
    /// logout, a change of user, a rotation, a dropped privilege): saved
    /// even when the handler answered a server error.
    fn reduces_access(&self) -> bool {
        let (user, privilege) = match &self.record {
            Some(r) => (r.user.clone(), r.privilege.clone()),
            None => (None, None),
        };
        // A request that grants anything (a login, a change to another
        // user, a new or raised privilege) is never saved by a failed
        // handler, whatever else it does.
        let grants = (self.user.is_some() && self.user != user)
            || (self.privilege.is_some() && self.privilege != privilege);
        !grants
            && (self.destroy
                || self.regenerate
                || self.end_live.is_some_and(|(_, reason)| reason == "logout")
                || (user.is_some() && self.user.is_none())
                || (privilege.is_some() && self.privilege.is_none()))
    }
}

/// How long the request path waits for the history writer's queue when it
/// checks how a gone session ended (the store is read instead after it).
const PENDING_WAIT: std::time::Duration = std::time::Duration::from_millis(20);

/// The length of a value's JSON text, counted without building it.
fn json_size(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    let _ = serde_json::to_writer(&mut c, value);
    c.0
}

/// How the layer answers a suspicious use of a session; see
/// [`SessionLayerBuilder::on_suspicious`](crate::SessionLayerBuilder::on_suspicious).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SuspicionResponse {
    /// Record a signed `suspicious` entry and go on (the default). The new
    /// client becomes the baseline, so one change is recorded once.
    Record,
    /// Record, and rotate the session's token on the way out.
    Rotate,
    /// Record, and end the session: the request is served as anonymous.
    End,
}

/// What to do when a user's session limit is reached at login; see
/// [`SessionLayerBuilder::max_sessions_per_user`](crate::SessionLayerBuilder::max_sessions_per_user).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionLimit {
    /// Refuse the login: [`Session::set_user`] fails with
    /// [`ErrorKind::Refused`].
    RefuseNew,
    /// End the user's oldest sessions (each gets an `ended` entry with reason
    /// `session_limit`).
    EndOldest,
}

/// A suspicious use of a session, as given to the
/// [`on_suspicious`](crate::SessionLayerBuilder::on_suspicious) hook.
#[derive(Clone, Debug, PartialEq)]
pub struct Signal {
    /// `device_changed`, `network_changed`, `replaced_token_reused` or
    /// `ended_session_used`.
    pub kind: &'static str,
    /// Details (pseudonyms and coarse descriptions only).
    pub detail: Value,
}

impl Signal {
    fn new(kind: &'static str, detail: Value) -> Self {
        Self { kind, detail }
    }

    fn draft(&self, response: SuspicionResponse) -> Draft {
        let action = match response {
            SuspicionResponse::Record => "recorded",
            SuspicionResponse::Rotate => "rotated",
            SuspicionResponse::End => "ended",
        };
        Draft::lifecycle(
            EntryKind::Suspicious,
            &json!({"signal": self.kind, "detail": self.detail, "action": action}),
        )
    }
}

/// What the transport must do on the way out.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum CredentialAction {
    Keep,
    Set(String),
    Clear,
}

/// What [`Session::save`] did.
struct Saved {
    action: CredentialAction,
    /// Lifecycle entries before the handler's events (`started`).
    before: Vec<Draft>,
    /// Lifecycle entries after them (privilege changed, rotated, ended).
    after: Vec<Draft>,
    /// A login (a new user) reached the store.
    login_saved: bool,
    /// The session's user's pseudonym, computed once per request.
    user_pseudonym: Option<[u8; 8]>,
}

/// The request's own history entry, as the layer records it.
pub(crate) struct RequestEntry {
    pub(crate) method: http::Method,
    pub(crate) route: Route,
    pub(crate) start: std::time::Instant,
    /// The status the handler answered.
    pub(crate) status: u16,
}

/// The status recorded for a request whose response future was dropped
/// before its session was saved (as nginx logs a client that went away).
pub(crate) const STATUS_CLIENT_GONE: u16 = 499;

impl RequestEntry {
    pub(crate) fn draft(&self, status: u16, user: Option<[u8; 8]>) -> Draft {
        let latency = self.start.elapsed().as_micros().min(u128::from(u64::MAX)) as u64;
        Draft::request_fields(
            self.method.clone(),
            self.route.clone(),
            status,
            latency,
            user,
        )
    }
}

/// What one request recorded, enqueued exactly once: by
/// [`emit`](Self::emit) after the save, or by `Drop` when the future is
/// dropped first.
struct Recorded {
    shared: Arc<Shared>,
    /// The session the credential named: signals are about it.
    presented: Option<SessionId>,
    signals: Vec<Draft>,
    /// An expired session found on load, and why it ended.
    ended: Option<(SessionId, &'static str)>,
    /// The session the request acted on (live or new): its entries.
    sid: Option<SessionId>,
    events: Vec<Draft>,
    /// The session the request left for a new one, with the events
    /// recorded on it before.
    left: Option<(SessionId, Vec<Draft>)>,
    request: Option<RequestEntry>,
    /// The request erased its user's history: it records nothing.
    suppress: bool,
    /// A place claimed for a login not yet settled: (user, session, the
    /// sessions it was to end). Given back unless the login was saved.
    claim: Option<(String, SessionId, Vec<SessionId>)>,
}

impl Recorded {
    fn emit(&mut self, status: u16, user: Option<[u8; 8]>, before: Vec<Draft>, after: Vec<Draft>) {
        let Some(request) = self.request.take() else {
            return;
        };
        if self.suppress {
            return;
        }
        if let Some((old, reason)) = self.ended.take() {
            self.shared
                .enqueue(old, vec![crate::manager::ended(reason)]);
        }
        if let Some((old, events)) = self.left.take()
            && !events.is_empty()
        {
            self.shared.enqueue(old, events);
        }
        let signals = std::mem::take(&mut self.signals);
        let mut drafts = Vec::new();
        match self.presented {
            // Signals are about the presented session, wherever the
            // request's own entries go.
            Some(p) if self.sid != Some(p) => self.shared.enqueue(p, signals),
            _ => drafts = signals,
        }
        if let Some(sid) = self.sid {
            drafts.extend(before);
            drafts.append(&mut self.events);
            drafts.extend(after);
            drafts.push(request.draft(status, user));
            self.shared.enqueue(sid, drafts);
        }
    }
}

impl Drop for Recorded {
    fn drop(&mut self) {
        if self.request.is_some() {
            self.emit(STATUS_CLIENT_GONE, None, Vec::new(), Vec::new());
        }
        // Dropped mid-save: the login's place goes back (a login that was
        // saved all the same is recognised by the store and kept).
        if let Some((user, sid, ended)) = self.claim.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let store = Arc::clone(&self.shared.store);
            rt.spawn(async move {
                let _ = store.release_user_slot(&user, &sid, &ended).await;
            });
        }
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.state();
        f.debug_struct("Session")
            .field("id", &st.sid)
            // Whether a user is logged in, never who.
            .field("user", &st.user.as_ref().map(|_| format_args!("<set>")))
            .field("privilege", &st.privilege)
            .field("keys", &st.data.len())
            .finish_non_exhaustive()
    }
}

impl Session {
    pub(crate) fn new(
        shared: Arc<Shared>,
        presented: Option<Presented>,
        meta: RequestMeta,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                shared,
                presented,
                loaded: OnceCell::new(),
                state: Mutex::default(),
                meta,
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Loads the session from the store, once; later calls return at once.
    ///
    /// Every other method loads as needed, so calling this is only useful to
    /// surface a store failure early (the axum extractor does).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Unavailable`] when the store cannot answer.
    pub async fn load(&self) -> Result<(), Error> {
        self.inner
            .loaded
            .get_or_try_init(|| self.load_from_store())
            .await
            .map(|_| ())
    }

    pub(crate) fn is_loaded(&self) -> bool {
        self.inner.loaded.initialized()
    }

    async fn load_from_store(&self) -> Result<(), Error> {
        let Some(presented) = &self.inner.presented else {
            return Ok(());
        };
        let sid = presented.credential.sid;
        let record = self
            .inner
            .shared
            .store
            .load(&sid)
            .await
            .map_err(|e| e.context("loading the session"))?;
        let now = now_ms();
        let hash = presented.credential.token.hash();
        let Some(record) = record else {
            // Gone: ended (logout, revocation, a change of user), expired
            // and evicted, or lost. Ended moments ago, this request was in
            // flight then: it keeps its cookie, as a replaced token does.
            let dead = self.check_ended_use(sid).await;
            let mut st = self.state();
            st.origin = Origin::Stale;
            st.dead = dead;
            return Ok(());
        };
        let expired = if record.absolute_deadline <= now {
            Some("absolute_timeout")
        } else if record.idle_deadline <= now {
            Some("idle_timeout")
        } else {
            None
        };
        if let Some(reason) = expired {
            {
                // Once per session, not once per parallel request racing
                // the delete below.
                let first = self
                    .inner
                    .shared
                    .writer
                    .as_ref()
                    .is_some_and(|w| w.allow_expiry_entry(sid));
                let mut st = self.state();
                st.origin = Origin::Stale;
                st.dead = true;
                if first {
                    st.ended = Some((sid, reason));
                }
            }
            // Best effort: the store's TTL removes it anyway.
            if let Err(e) = self.inner.shared.store.delete(&sid).await {
                tracing::debug!(session = %sid, error = %e.report(), "could not delete an expired session");
            }
            return Ok(());
        }
        let grace = self.inner.shared.config.rotation_grace.as_millis() as i64;
        let started = self.inner.meta.started_ms;
        if record.token_hash.ct_eq(&hash) {
            // Compare with the baseline only where the record has one.
            let device = record.device.as_ref().and_then(|_| self.device());
            let network = record.network.as_ref().and_then(|_| self.network());
            let mut signals = Vec::new();
            if device.is_some() && record.device != device {
                signals.push(Signal::new(
                    "device_changed",
                    json!({"from": record.device, "to": device}),
                ));
            }
            if network.is_some() && record.network != network {
                signals.push(Signal::new(
                    "network_changed",
                    json!({"from": record.network, "to": network}),
                ));
            }
            let response = self.judge(&sid, &signals);
            if response == SuspicionResponse::End {
                return self.end_suspicious(sid).await;
            }
            let mut st = self.state();
            if !signals.is_empty() {
                // The client as it is now becomes the baseline.
                st.rebaseline = Some((self.device(), self.network()));
            }
            st.regenerate = response == SuspicionResponse::Rotate;
            let mut record = record;
            st.origin = Origin::Live;
            st.sid = Some(sid);
            // The record's data is not needed again: move it.
            st.data = std::mem::take(&mut record.data);
            st.user.clone_from(&record.user);
            st.privilege.clone_from(&record.privilege);
            st.record = Some(record);
        } else if let Some(r) = record.replaced.filter(|r| r.token_hash.ct_eq(&hash)) {
            if started.saturating_sub(r.at) <= grace {
                self.state().origin = Origin::Replaced;
            } else {
                // A token replaced long ago: a copy of an old credential.
                let signal = Signal::new(
                    "replaced_token_reused",
                    json!({"replaced_ms_ago": now.saturating_sub(r.at)}),
                );
                {
                    let mut st = self.state();
                    st.origin = Origin::Stale;
                    st.dead = true;
                }
                // The presenter does not hold the live token, so rotating
                // the live session amounts to ending it.
                if self.judge_dead(&sid, &signal) != SuspicionResponse::Record {
                    return self.end_suspicious(sid).await;
                }
            }
        } else {
            self.state().origin = Origin::Replaced;
        }
        Ok(())
    }

    /// A verified credential whose session is gone: answers whether it is
    /// known dead, so its cookie may be taken back. Its history decides:
    /// an `ended` entry older than the grace window (measured from this
    /// request's arrival), or no history at all (lost, or expired long
    /// ago). Ended within the window, or unknown (history off, unreadable,
    /// or its end still queued on another server), the cookie stays: a
    /// removal cookie landing after a new one would log the browser out. A
    /// deliberate end (logout, revocation, …) used past the window is
    /// suspicious.
    async fn check_ended_use(&self, sid: SessionId) -> bool {
        let Some(writer) = &self.inner.shared.writer else {
            return false;
        };
        let is_lifecycle = |k: EntryKind| {
            matches!(
                k,
                EntryKind::Started
                    | EntryKind::Rotated
                    | EntryKind::PrivilegeChanged
                    | EntryKind::Ended
            )
        };
        // The newest lifecycle entry: queued here first (with a short
        // bound: this is the request path), then stored.
        let queued = tokio::time::timeout(PENDING_WAIT, writer.pending(sid))
            .await
            .ok()
            .flatten()
            .unwrap_or_default()
            .into_iter()
            .rev()
            .find(|d| is_lifecycle(d.kind));
        let (kind, ts, details) = match queued {
            // A queued draft answers directly: no signing just to read it.
            Some(d) => (d.kind, d.ts, d.details().unwrap_or_default()),
            None => {
                let Ok(newest) = writer.store().read_newest(&sid, 8).await else {
                    return false;
                };
                if newest.is_empty() {
                    return true;
                }
                let Some(e) = newest
                    .iter()
                    .rev()
                    .filter_map(|b| crate::history::Entry::decode(b).ok())
                    .find(|e| is_lifecycle(e.kind))
                else {
                    return false;
                };
                (e.kind, e.ts, e.to_json())
            }
        };
        if kind != EntryKind::Ended {
            return false;
        }
        let grace = self.inner.shared.config.rotation_grace.as_millis() as i64;
        // A request in flight when its session ended is no replay.
        if self.inner.meta.started_ms.saturating_sub(ts) <= grace {
            return false;
        }
        let reason = details["reason"].clone();
        let deliberate = matches!(
            reason.as_str(),
            Some("logout" | "revoked" | "session_limit" | "suspicious" | "user_changed")
        );
        if deliberate {
            let signal = Signal::new("ended_session_used", json!({"ended": reason}));
            self.judge_dead(&sid, &signal);
        }
        true
    }

    /// Asks the `on_suspicious` hook about each signal, queues a signed
    /// `suspicious` entry for each (with the action taken), and answers the
    /// strongest response.
    fn judge(&self, sid: &SessionId, signals: &[Signal]) -> SuspicionResponse {
        self.judge_use(sid, signals, false)
    }

    /// [`judge`](Self::judge) for the use of a dead credential (a token
    /// replaced long ago, an ended session): its entries are rate-limited to
    /// one per session per rotation grace window, so an old cookie cannot
    /// fill the session's history.
    fn judge_dead(&self, sid: &SessionId, signal: &Signal) -> SuspicionResponse {
        self.judge_use(sid, std::slice::from_ref(signal), true)
    }

    fn judge_use(&self, sid: &SessionId, signals: &[Signal], dead: bool) -> SuspicionResponse {
        let hook = &self.inner.shared.config.on_suspicious;
        let response = signals
            .iter()
            .map(|s| hook.respond(sid, s))
            .max()
            .unwrap_or(SuspicionResponse::Record);
        let record = !dead
            || self
                .inner
                .shared
                .writer
                .as_ref()
                .is_some_and(|w| w.allow_dead_signal(*sid));
        if record {
            self.state()
                .signals
                .extend(signals.iter().map(|s| s.draft(response)));
        }
        response
    }

    /// Ends a session the hook chose to end: the request is served as
    /// anonymous and the session's history records why.
    async fn end_suspicious(&self, sid: SessionId) -> Result<(), Error> {
        self.inner.shared.store.delete(&sid).await?;
        let mut st = self.state();
        st.origin = Origin::Stale;
        st.dead = true;
        st.ended = Some((sid, "suspicious"));
        Ok(())
    }

    /// The session id, once there is a session (after loading, or after the
    /// first write created one).
    ///
    /// # Errors
    ///
    /// When loading fails.
    pub async fn id(&self) -> Result<Option<SessionId>, Error> {
        self.load().await?;
        Ok(self.state().sid)
    }

    /// Whether this request has a stored session (or created one).
    ///
    /// # Errors
    ///
    /// When loading fails.
    pub async fn exists(&self) -> Result<bool, Error> {
        self.load().await?;
        let st = self.state();
        Ok(st.sid.is_some() && !st.destroy)
    }

    /// A value by key.
    ///
    /// # Errors
    ///
    /// When loading fails, or the stored value does not deserialize as `T`
    /// ([`ErrorKind::Serialization`]).
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Error> {
        self.load().await?;
        let st = self.state();
        match st.data.get(key) {
            Some(v) => Ok(Some(T::deserialize(v)?)),
            None => Ok(None),
        }
    }

    /// Writes a value (creating the session if there is none).
    ///
    /// # Errors
    ///
    /// When loading fails, the value does not serialize, or its JSON is
    /// larger than the configured `max_value_bytes`.
    pub async fn insert<T: Serialize>(&self, key: &str, value: T) -> Result<(), Error> {
        let value = serde_json::to_value(value)?;
        let size = json_size(&value);
        if size > self.inner.shared.config.max_value_bytes {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "value for {key:?} is {size} bytes; max_value_bytes is {}",
                    self.inner.shared.config.max_value_bytes
                ),
            ));
        }
        self.load().await?;
        self.check_open()?;
        let mut st = self.state();
        self.ensure_session(&mut st);
        st.removed.remove(key);
        st.data.insert(key.to_owned(), value.clone());
        st.set.insert(key.to_owned(), value);
        Ok(())
    }

    /// Removes a value; answers the old one.
    ///
    /// # Errors
    ///
    /// When loading fails.
    pub async fn remove(&self, key: &str) -> Result<Option<Value>, Error> {
        self.load().await?;
        self.check_open()?;
        let mut st = self.state();
        let old = st.data.remove(key);
        st.set.remove(key);
        if old.is_some() && !st.new {
            st.removed.insert(key.to_owned());
        }
        Ok(old)
    }

    /// The logged-in user.
    ///
    /// # Errors
    ///
    /// When loading fails.
    pub async fn user(&self) -> Result<Option<String>, Error> {
        self.load().await?;
        Ok(self.state().user.clone())
    }

    /// Logs a user in (`Some`) or out (`None`). A change rotates the token
    /// when the response leaves.
    ///
    /// A session's history never spans two users: when the session already
    /// has a user and it changes (to another user, or to `None`), the
    /// request moves to a **new, empty session** with a new public id:
    /// nothing of the old user's carries over (data, privilege, the events
    /// this request recorded before the change, which stay in the old
    /// session's history); the old session ends (`ended` with reason
    /// `user_changed`, or `logout` for `None`). Set the new session's
    /// privilege and data after this call. Logging in from an anonymous
    /// session keeps the session, its id and its data (a cart survives the
    /// login). The old session is ended before the new one is stored: when
    /// ending it fails, the request fails (`503`) and the old session stays;
    /// when storing the new one fails after that, the request fails and the
    /// old user is logged out (fail closed).
    ///
    /// With [`max_sessions_per_user`](crate::SessionLayerBuilder::max_sessions_per_user),
    /// a login first claims a place among the user's sessions in the store
    /// (atomically, so concurrent logins cannot exceed the limit); sessions
    /// ended to make room end only once this login is saved.
    ///
    /// # Errors
    ///
    /// When loading fails; [`ErrorKind::Refused`] when the session limit
    /// refuses the login; [`ErrorKind::InvalidInput`] after the response
    /// has left (see [`insert`](Self::insert)).
    pub async fn set_user(&self, user: Option<String>) -> Result<(), Error> {
        self.load().await?;
        self.check_open()?;
        let (switch, target, absolute) = {
            let st = self.state();
            if st.user == user {
                return Ok(());
            }
            if user.is_none() && st.sid.is_none() {
                return Ok(());
            }
            // A session that has a user never gets another one.
            let switch = st.user.is_some() && st.sid.is_some() && !st.new;
            let target = match st.sid {
                Some(sid) if !switch && !st.destroy => sid,
                _ => SessionId::generate(),
            };
            let now = now_ms();
            let absolute = st.record.as_ref().filter(|_| !switch).map_or(
                now + self.inner.shared.config.absolute_timeout.as_millis() as i64,
                |r| r.absolute_deadline,
            );
            (switch, target, absolute)
        };
        let mut evict = Vec::new();
        let mut claim = None;
        if let (Some(u), Some((max, policy))) = (&user, self.inner.shared.config.session_limit) {
            match self
                .inner
                .shared
                .store
                .claim_user_slot(u, &target, absolute, max, policy)
                .await?
            {
                crate::store::Claim::Granted { end } => {
                    evict = end;
                    claim = Some((u.clone(), target));
                }
                crate::store::Claim::Refused => {
                    return Err(Error::new(
                        ErrorKind::Refused,
                        format!("session limit reached: this user already has {max} sessions"),
                    ));
                }
            }
        }
        let (earlier, earlier_evict) = {
            let mut st = self.state();
            (
                std::mem::replace(&mut st.claim, claim),
                std::mem::replace(&mut st.evict, evict),
            )
        };
        if let Some((u, sid)) = earlier {
            // Claimed by an earlier call of this request: give it back.
            let _ = self
                .inner
                .shared
                .store
                .release_user_slot(&u, &sid, &earlier_evict)
                .await;
        }
        let mut st = self.state();
        if switch {
            let old = st.sid.expect("a session with a user has an id");
            let reason = if user.is_some() {
                "user_changed"
            } else {
                "logout"
            };
            st.end_live = Some((old, reason));
            st.sid = Some(target);
            st.new = true;
            st.record = None;
            // Nothing of the old user's carries over: not their data, not
            // their privilege, not what this request recorded for them.
            st.set.clear();
            st.removed.clear();
            st.data.clear();
            st.privilege = None;
            let mut events = std::mem::take(&mut st.events);
            st.left_events.append(&mut events);
        } else {
            self.ensure_session_as(&mut st, Some(target));
        }
        st.user = user;
        Ok(())
    }

    /// Fails once the layer has saved the session: a write through a clone
    /// of the handle after the response left would be lost silently.
    fn check_open(&self) -> Result<(), Error> {
        if self.state().committed {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "the session was already saved when the response left; this change would be lost",
            ));
        }
        Ok(())
    }

    /// The privilege level or role.
    ///
    /// # Errors
    ///
    /// When loading fails.
    pub async fn privilege(&self) -> Result<Option<String>, Error> {
        self.load().await?;
        Ok(self.state().privilege.clone())
    }

    /// Changes the privilege level or role. A change rotates the token when
    /// the response leaves.
    ///
    /// # Errors
    ///
    /// When loading fails.
    pub async fn set_privilege(&self, privilege: Option<String>) -> Result<(), Error> {
        self.load().await?;
        self.check_open()?;
        let mut st = self.state();
        if st.privilege == privilege {
            return Ok(());
        }
        if privilege.is_some() {
            self.ensure_session(&mut st);
        } else if st.sid.is_none() {
            return Ok(());
        }
        st.privilege = privilege;
        Ok(())
    }

    /// Rotates the token when the response leaves, keeping the session.
    ///
    /// # Errors
    ///
    /// When loading fails.
    pub async fn regenerate(&self) -> Result<(), Error> {
        self.load().await?;
        self.check_open()?;
        let mut st = self.state();
        if st.origin == Origin::Live {
            st.regenerate = true;
        }
        Ok(())
    }

    /// A token that protects this session's unsafe requests against
    /// cross-site request forgery (see [`crate::csrf`]), creating the
    /// session if there is none. Send it to the page (a JSON field, a
    /// hidden form field named `csrf_token`, a `<meta>` tag); the page
    /// sends it back in the `X-CSRF-Token` header or the form field.
    ///
    /// It is bound to the session's credential token, so it changes when
    /// the token rotates: the token this call answers is the one the
    /// response's credential will hold, also when this request logs in or
    /// changes the privilege before calling it (call it after such
    /// changes). Each call answers different bytes (a fresh mask), and all
    /// of them verify.
    ///
    /// # Errors
    ///
    /// When loading fails; [`ErrorKind::InvalidInput`] after the response
    /// has left; [`ErrorKind::Refused`] (`409`) for a request whose
    /// credential token a concurrent login or privilege change has just
    /// replaced (within the rotation grace window): the client retries with
    /// the cookie it got, rather than this request creating a new session
    /// whose cookie would replace that one.
    pub async fn csrf_token(&self) -> Result<String, Error> {
        self.load().await?;
        self.check_open()?;
        let shared = &self.inner.shared;
        let mut st = self.state();
        if st.origin == Origin::Replaced && st.sid.is_none() {
            // A request that left while a login or privilege change of its
            // session replaced the token (once or more): a token for a new
            // session would replace the browser's fresh cookie.
            return Err(Error::new(
                ErrorKind::Refused,
                "this request's session token was just replaced; retry with the new cookie",
            ));
        }
        self.ensure_session(&mut st);
        let sid = st.sid.expect("ensure_session gives an id");
        let changes_privilege = st
            .record
            .as_ref()
            .is_some_and(|r| r.user != st.user || r.privilege != st.privilege);
        let issues_token = st.new || st.regenerate || changes_privilege;
        let token = match &self.inner.presented {
            Some(p) if !issues_token && st.origin == Origin::Live => *p.credential.token.as_bytes(),
            _ => *st.next_token.get_or_insert_with(Token::generate).as_bytes(),
        };
        Ok(crate::csrf::mint(shared.ring.current(), &sid, &token))
    }

    /// Whether `sent` is a valid CSRF token of the credential this request
    /// presented (see [`csrf_token`](Self::csrf_token)), in constant time.
    /// The layer checks the header itself (and, in strict mode, the field
    /// of a urlencoded form) and [`CsrfForm`](crate::CsrfForm) checks the
    /// form field; call this for a token sent another way (a JSON body).
    pub fn verify_csrf_token(&self, sent: &str) -> bool {
        let Some(p) = &self.inner.presented else {
            return false;
        };
        crate::csrf::verify(
            &self.inner.shared.ring,
            &p.credential.sid,
            p.credential.token.as_bytes(),
            sent.as_bytes(),
        )
    }

    /// The largest form the layer reads in strict CSRF mode.
    #[cfg(feature = "axum")]
    pub(crate) fn csrf_form_limit(&self) -> usize {
        self.inner
            .shared
            .config
            .csrf
            .as_ref()
            .map_or(crate::csrf::DEFAULT_FORM_LIMIT, |c| c.form_limit)
    }

    /// The form field a CSRF token is read from.
    #[cfg(feature = "axum")]
    pub(crate) fn csrf_field(&self) -> &str {
        self.inner
            .shared
            .config
            .csrf
            .as_ref()
            .map_or(crate::csrf::DEFAULT_FORM_FIELD, |c| c.field.as_str())
    }

    /// Records a refused cross-site request in the presented session's
    /// history: a signed `suspicious` entry, appended only if the presented
    /// token is still the session's live token (checked by the store, as
    /// for a request that never loads its session), at most one per session
    /// per `dead_signal_every`. Nothing is loaded, so a refusal has no other
    /// effect on the session (an expired session's `ended` entry is left to
    /// its next real request).
    pub(crate) fn record_csrf_refusal(&self, check: &'static str) {
        let shared = &self.inner.shared;
        let (Some(presented), Some(writer)) = (&self.inner.presented, &shared.writer) else {
            return;
        };
        let sid = presented.credential.sid;
        let token = presented.credential.token.hash();
        if !shared.history_checks_tokens || !writer.allow_csrf_signal(sid, &token) {
            return;
        }
        let mut draft = Draft::lifecycle(
            EntryKind::Suspicious,
            &json!({
                "signal": "csrf",
                "reason": "csrf",
                "detail": {"check": check},
                "action": "recorded",
            }),
        );
        draft.token = Some(token);
        writer.enqueue_one(sid, draft);
    }

    /// Ends the session: the record is deleted and the credential cleared
    /// when the response leaves.
    ///
    /// # Errors
    ///
    /// When loading fails.
    pub async fn destroy(&self) -> Result<(), Error> {
        self.load().await?;
        self.check_open()?;
        let mut st = self.state();
        st.destroy = true;
        st.set.clear();
        st.removed.clear();
        st.data.clear();
        // A write later in this request starts a new, anonymous session.
        st.user = None;
        st.privilege = None;
        Ok(())
    }

    /// Records a domain event in the session's history (creating the
    /// session if there is none).
    ///
    /// `name` is 1–64 characters of letters, digits and `_ . : -`; `data`
    /// serializes to at most `max_event_bytes` of JSON (4 KiB by default).
    /// Nothing is truncated: anything larger is refused.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`] for a bad name or oversized data;
    /// loading errors.
    pub async fn record(&self, name: &str, data: impl Serialize) -> Result<(), Error> {
        crate::history::entry::check_event_name(name)?;
        let data = serde_json::to_vec(&data)?;
        let max = self.inner.shared.config.max_event_bytes;
        if data.len() > max {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "event data is {} bytes; max_event_bytes is {max}",
                    data.len()
                ),
            ));
        }
        self.load().await?;
        self.check_open()?;
        let mut st = self.state();
        self.ensure_session(&mut st);
        st.events.push(Draft::event_raw(name, &data));
        Ok(())
    }

    /// Records a domain event in the session's history **if the request
    /// has a session**, without ever creating one; answers whether it did.
    /// Without a session the event goes to the application's log instead:
    /// an `INFO` event on the target `session_trail::anonymous` with the
    /// event's name, its data and a keyed pseudonym of the client's network
    /// (never its address).
    ///
    /// Use it for events of visitors who may have no session, above all
    /// **failed logins**: [`record`](Self::record) would store a session and
    /// set a cookie for every unauthenticated caller (a password-spraying
    /// client would fill the store), while this records a failed login in
    /// the history of a session that exists (a signed-in user confirming
    /// their password) and logs the rest.
    ///
    /// # Errors
    ///
    /// As [`record`](Self::record).
    pub async fn record_if_session(&self, name: &str, data: impl Serialize) -> Result<bool, Error> {
        crate::history::entry::check_event_name(name)?;
        let data = serde_json::to_value(&data)?;
        let max = self.inner.shared.config.max_event_bytes;
        let size = json_size(&data);
        if size > max {
            // The same bound as `record`: what an attacker sends in a failed
            // login must not flood the log either.
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("event data is {size} bytes; max_event_bytes is {max}"),
            ));
        }
        self.load().await?;
        if !self.exists().await? {
            tracing::info!(
                target: "session_trail::anonymous",
                event = name,
                data = %data,
                network = self.network().as_deref().unwrap_or("-"),
                "event without a session"
            );
            return Ok(false);
        }
        self.record(name, data).await?;
        Ok(true)
    }

    /// The session's newest `limit` history entries (newest first), with the
    /// chain's verification. Entries this process has queued but not yet
    /// written are included, so a session reads its own writes.
    ///
    /// A visitor without a session gets an empty page (`session` is
    /// `None`); asking creates no session.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`] when the layer records no history; store
    /// errors.
    pub async fn history(&self, limit: usize) -> Result<HistoryPage, Error> {
        let Some(writer) = &self.inner.shared.writer else {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "history is not enabled on this layer",
            ));
        };
        match self.id().await? {
            Some(sid) => crate::history::read_page(writer, sid, limit).await,
            _ => Ok(HistoryPage {
                session: None,
                entries: Vec::new(),
                verification: crate::history::Verification::default(),
            }),
        }
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }

    pub(crate) fn writer(&self) -> Result<&crate::history::HistoryWriter, Error> {
        self.inner.shared.writer.as_ref().ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidInput,
                "history is not enabled on this layer",
            )
        })
    }

    pub(crate) fn suppress_history(&self) {
        self.state().suppress_history = true;
    }

    /// A keyed pseudonym of the client's network (/24 for IPv4, /48 for
    /// IPv6).
    pub(crate) fn network(&self) -> Option<String> {
        let ip = self.inner.meta.client_ip?;
        let prefix: Vec<u8> = match ip {
            std::net::IpAddr::V4(v4) => v4.octets()[..3].to_vec(),
            std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => v4.octets()[..3].to_vec(),
                None => v6.octets()[..6].to_vec(),
            },
        };
        Some(crate::util::hex(&crate::key::pseudonym(
            self.inner.shared.ring.pseudonym_key(),
            b"network",
            &prefix,
        )))
    }

    /// A coarse description of the client, from its User-Agent.
    pub(crate) fn device(&self) -> Option<String> {
        let ua = self.inner.meta.user_agent.as_ref()?.to_str().ok()?;
        Some(crate::client::device_of(ua))
    }

    /// Remembers the matched route template for the request entry.
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) fn set_route(&self, route: &str) {
        self.state().route = Some(route.to_owned());
    }

    /// The matched route template, if an extractor saw one. Read it before
    /// [`Session::commit`], which consumes the request's state.
    pub(crate) fn route(&self) -> Option<crate::history::entry::Route> {
        self.state()
            .route
            .as_deref()
            .map(crate::history::entry::Route::path)
    }

    fn ensure_session(&self, st: &mut State) {
        self.ensure_session_as(st, None);
    }

    /// Makes sure the request has a session to write to: the live one, or a
    /// new one (with `id`, when one was chosen already).
    fn ensure_session_as(&self, st: &mut State, id: Option<SessionId>) {
        if st.sid.is_some() && !st.destroy {
            return;
        }
        if st.destroy
            && st.origin == Origin::Live
            && st.end_live.is_none()
            && let Some(sid) = st.sid
        {
            st.end_live = Some((sid, "logout"));
            // What was recorded before the logout stays with that session.
            let mut events = std::mem::take(&mut st.events);
            st.left_events.append(&mut events);
        }
        st.sid = Some(id.unwrap_or_else(SessionId::generate));
        st.new = true;
        st.destroy = false;
        st.record = None;
    }

    /// Records the request of a session its handler never loaded. Its
    /// credential's token was never checked against the store, so the entry
    /// is appended only while the session's record is live and holds that
    /// token (the store checks, atomically with the append): a dead
    /// credential writes no request entries. When history lives in a store
    /// that cannot check (not the session store), nothing is recorded.
    pub(crate) fn record_unloaded(&self, request: &RequestEntry, status: u16) {
        let shared = &self.inner.shared;
        let (Some(presented), Some(writer)) = (&self.inner.presented, &shared.writer) else {
            return;
        };
        if !shared.history_checks_tokens {
            return;
        }
        let mut draft = request.draft(status, None);
        draft.token = Some(presented.credential.token.hash());
        writer.enqueue_one(presented.credential.sid, draft);
    }

    /// The response future was dropped before the session was saved (the
    /// handler was still running: status 499), or the inner service failed:
    /// what the handler recorded is enqueued with the request entry.
    pub(crate) fn abandon(&self, request: RequestEntry) {
        let status = request.status;
        if !self.is_loaded() {
            self.record_unloaded(&request, status);
            return;
        }
        let mut st = std::mem::take(&mut *self.state());
        self.state().committed = true;
        if let Some((user, sid)) = st.claim.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            // The login will not be saved: give its place back.
            let store = Arc::clone(&self.inner.shared.store);
            let ended = std::mem::take(&mut st.evict);
            rt.spawn(async move {
                let _ = store.release_user_slot(&user, &sid, &ended).await;
            });
        }
        let sid = if st.origin == Origin::Live && !st.new {
            st.sid
        } else {
            // A session that was never stored: nobody could read its
            // history.
            None
        };
        let mut recorded = Recorded {
            shared: Arc::clone(&self.inner.shared),
            presented: self.presented_sid(),
            signals: std::mem::take(&mut st.signals),
            ended: st.ended.take(),
            sid,
            events: if sid.is_some() {
                std::mem::take(&mut st.events)
            } else {
                Vec::new()
            },
            left: st
                .end_live
                .map(|(old, _)| (old, std::mem::take(&mut st.left_events))),
            request: Some(request),
            suppress: st.suppress_history,
            claim: None,
        };
        recorded.emit(status, None, Vec::new(), Vec::new());
    }

    /// The session id the request entry is recorded under, without loading:
    /// the presented (verified) one.
    pub(crate) fn presented_sid(&self) -> Option<SessionId> {
        self.inner.presented.as_ref().map(|p| p.credential.sid)
    }

    /// Persists the request's changes, enqueues its history entries, and
    /// says what to do with the credential. Called once, after the inner
    /// service answered.
    ///
    /// What the handler recorded (events, suspicious signals) is enqueued
    /// whatever happens to the save: with the lifecycle entries when it
    /// succeeds; with the request entry's failure status when it fails; and
    /// with status 499 when the future is dropped mid-save (a client that
    /// went away, a timeout layer outside this one), when the store may or
    /// may not have applied it (no lifecycle entry is written then).
    pub(crate) async fn commit(&self, request: RequestEntry) -> Result<CredentialAction, Error> {
        let shared = Arc::clone(&self.inner.shared);
        let now = now_ms();
        if !self.is_loaded() {
            // Only a first visit with `issue_on_first_visit` gets here.
            self.load().await?;
            let mut st = self.state();
            self.ensure_session(&mut st);
        }
        let mut st = std::mem::take(&mut *self.state());
        self.state().committed = true;
        let entry_sid = if st.new && st.destroy {
            st.end_live.map(|(sid, _)| sid)
        } else if st.new || st.origin == Origin::Live {
            st.sid
        } else {
            // A dead or replaced credential, or no session: no request
            // entry (only the signals about the presented session).
            None
        };
        // Events recorded on a new session that is destroyed again belong
        // to no stored session: they are not moved to another one.
        let events = if st.new && st.destroy {
            Vec::new()
        } else {
            std::mem::take(&mut st.events)
        };
        let mut recorded = Recorded {
            shared: Arc::clone(&shared),
            presented: self.presented_sid(),
            signals: std::mem::take(&mut st.signals),
            ended: st.ended.take(),
            sid: entry_sid,
            events,
            left: None,
            request: Some(request),
            suppress: st.suppress_history,
            claim: None,
        };
        // What was recorded on a session this request left (a change of
        // user) is queued now, before that session's `ended` entry.
        if let Some((old, _)) = st.end_live
            && !st.left_events.is_empty()
            && !st.suppress_history
        {
            shared.enqueue(old, std::mem::take(&mut st.left_events));
        }
        recorded.claim = st
            .claim
            .take()
            .map(|(user, sid)| (user, sid, st.evict.clone()));
        let status = recorded.request.as_ref().map_or(0, |r| r.status);
        if status >= 500 && !shared.config.save_on_server_error && !st.reduces_access() {
            // The handler failed: its changes are not saved (what it
            // recorded is, on the session it had). A request that ends or
            // reduces the session (a logout, a rotation, a dropped
            // privilege) is saved whatever its status.
            if let Some((user, sid, ended)) = &recorded.claim {
                let _ = shared.store.release_user_slot(user, sid, ended).await;
            }
            // Taken only now: dropped during the await, `Drop` releases.
            recorded.claim = None;
            recorded.sid = self.presented_sid().filter(|_| st.origin == Origin::Live);
            if recorded.sid.is_none() || st.new {
                // Recorded for a session that will not exist.
                recorded.events.clear();
            }
            recorded.emit(status, None, Vec::new(), Vec::new());
            return Ok(CredentialAction::Keep);
        }
        match self.save(&mut st, now).await {
            Ok(saved) => {
                if let Some((user, sid, ended)) = &recorded.claim
                    && !saved.login_saved
                {
                    let _ = shared.store.release_user_slot(user, sid, ended).await;
                }
                recorded.claim = None;
                let user = saved
                    .user_pseudonym
                    .filter(|_| st.user.is_some() && saved.action != CredentialAction::Clear);
                let status = recorded.request.as_ref().map_or(0, |r| r.status);
                recorded.emit(status, user, saved.before, saved.after);
                Ok(saved.action)
            }
            Err(e) => {
                if let Some((user, sid, ended)) = &recorded.claim {
                    let _ = shared.store.release_user_slot(user, sid, ended).await;
                }
                recorded.claim = None;
                recorded.emit(e.status().as_u16(), None, Vec::new(), Vec::new());
                Err(e)
            }
        }
    }

    /// The store operations of [`commit`](Self::commit), and the lifecycle
    /// entries they call for.
    async fn save(&self, st: &mut State, now: i64) -> Result<Saved, Error> {
        let shared = &self.inner.shared;
        let config = &shared.config;
        let key = shared.ring.current();
        let mut saved = Saved {
            action: CredentialAction::Keep,
            before: Vec::new(),
            after: Vec::new(),
            login_saved: false,
            // Only history names the user (as a keyed pseudonym).
            user_pseudonym: st
                .user
                .as_deref()
                .filter(|_| shared.writer.is_some())
                .map(|u| shared.user_pseudonym_bytes(u)),
        };
        // Its text form, made only where an entry or a link needs it.
        let user_bytes = saved.user_pseudonym;
        let pseudonym = move || user_bytes.map(|p| crate::util::hex(&p));
        if st.new && !st.destroy {
            let sid = st.sid.expect("a new session has an id");
            let token = st.next_token.take().unwrap_or_else(Token::generate);
            let record = Record {
                id: sid,
                token_hash: token.hash(),
                replaced: None,
                user: st.user.clone(),
                privilege: st.privilege.clone(),
                data: st.data.clone(),
                created: now,
                last_seen: now,
                idle_deadline: now + config.idle_timeout.as_millis() as i64,
                absolute_deadline: now + config.absolute_timeout.as_millis() as i64,
                device: self.device(),
                network: self.network(),
            };
            // The session this one replaces (a logout, a change of user)
            // ends first, and its failure fails the request: a logout
            // never leaves the old credential working.
            if let Some((old, reason)) = st.end_live {
                shared
                    .end_session(old, reason)
                    .await
                    .map_err(|e| e.context("ending the session"))?;
            }
            // With history kept in the session store, the user's history
            // index is written with the record (one operation, not two).
            let link_as = pseudonym().filter(|_| shared.history_is_session_store);
            let linked = match &link_as {
                Some(user) => {
                    let link = HistoryLink {
                        user,
                        session_ends: record.absolute_deadline,
                    };
                    shared.store.create_linked(&record, &link).await
                }
                None => shared.store.create(&record).await.map(|()| false),
            }
            .map_err(|e| e.context("creating the session"))?;
            saved.login_saved = true;
            // Sessions ended for the session limit go once the login is
            // saved, best effort: its client must get the new cookie.
            self.end_evicted(st).await;
            saved.before.push(Draft::lifecycle(
                EntryKind::Started,
                &json!({
                    "device": record.device,
                    "network": record.network,
                    "user": pseudonym(),
                }),
            ));
            if st.user.is_some() || st.privilege.is_some() {
                saved
                    .after
                    .push(self.privilege_entry(None, None, pseudonym(), st));
            }
            if !linked {
                self.link_user(sid, link_as.or_else(pseudonym), now).await;
            }
            saved.action = CredentialAction::Set(Credential { sid, token }.encode(key));
        } else if st.new {
            // Created and destroyed again within this request.
            if let Some((old, reason)) = st.end_live {
                shared
                    .end_session(old, reason)
                    .await
                    .map_err(|e| e.context("ending the session"))?;
                saved.action = CredentialAction::Clear;
            }
        } else if st.origin == Origin::Stale && st.dead {
            // The credential's session is gone (ended, expired, lost) or its
            // token was replaced longer ago than the grace window: take it
            // from the client, so it stops being sent. A token the record
            // does not know at all (replaced twice within the grace window,
            // or a local cache not yet told of a rotation) keeps its cookie.
            saved.action = CredentialAction::Clear;
        } else if st.origin == Origin::Live {
            let sid = st.sid.expect("a live session has an id");
            let record = st.record.take().expect("a live session has its record");
            let presented = self
                .inner
                .presented
                .as_ref()
                .expect("a live session was presented");
            if st.destroy {
                shared
                    .store
                    .delete(&sid)
                    .await
                    .map_err(|e| e.context("ending the session"))?;
                saved.after.push(crate::manager::ended("logout"));
                saved.action = CredentialAction::Clear;
                return Ok(saved);
            }
            let privilege_changed = st.user != record.user || st.privilege != record.privilege;
            let rotate = privilege_changed || st.regenerate;
            let idle_ms = config.idle_timeout.as_millis() as i64;
            let refresh_after = (idle_ms as f64 * config.idle_refresh) as i64;
            let touch = now.saturating_sub(record.last_seen) >= refresh_after;
            let mut update = Update {
                token_hash: record.token_hash,
                set: st.set.drain().collect(),
                remove: st.removed.drain().collect(),
                user: (st.user != record.user).then(|| st.user.clone()),
                privilege: (st.privilege != record.privilege).then(|| st.privilege.clone()),
                rotate: None,
                touch: touch.then_some((now, (now + idle_ms).min(record.absolute_deadline))),
                device: st.rebaseline.as_ref().map(|r| r.0.clone()),
                network: st.rebaseline.as_ref().map(|r| r.1.clone()),
            };
            let new_token = rotate.then(|| st.next_token.take().unwrap_or_else(Token::generate));
            if let Some(t) = &new_token {
                update.rotate = Some(Rotation {
                    new_token_hash: t.hash(),
                    at: now,
                });
            }
            let outcome = if update.is_empty() {
                UpdateOutcome::Applied
            } else {
                shared
                    .store
                    .update(&sid, &update)
                    .await
                    .map_err(|e| e.context("saving the session"))?
            };
            match outcome {
                UpdateOutcome::Applied => {
                    saved.login_saved = true;
                    self.end_evicted(st).await;
                    if privilege_changed {
                        saved.after.push(self.privilege_entry(
                            record.user.as_deref(),
                            record.privilege.as_deref(),
                            pseudonym(),
                            st,
                        ));
                    }
                    if st.user.is_some() && st.user != record.user {
                        self.link_user(sid, pseudonym(), now).await;
                    }
                    if let Some(token) = new_token {
                        let reason = if privilege_changed {
                            "privilege_change"
                        } else {
                            "regenerate"
                        };
                        saved.after.push(Draft::lifecycle(
                            EntryKind::Rotated,
                            &json!({
                                "reason": reason,
                                "from_privilege": record.privilege,
                                "to_privilege": st.privilege,
                            }),
                        ));
                        saved.action = CredentialAction::Set(Credential { sid, token }.encode(key));
                    } else if !presented.current_key {
                        // Re-sign with the current key: same token.
                        saved.action = CredentialAction::Set(presented.credential.encode(key));
                    }
                }
                UpdateOutcome::Missing => {
                    // Ended or rotated by a concurrent request: never
                    // resurrect it.
                    tracing::debug!(session = %sid, "session changed concurrently; update not applied");
                }
            }
        }
        Ok(saved)
    }

    /// Ends the sessions the session limit made room with, once the login
    /// that needed the room is saved.
    async fn end_evicted(&self, st: &mut State) {
        for other in std::mem::take(&mut st.evict) {
            self.end_best_effort(other, "session_limit").await;
        }
    }

    /// Ends another session after this request's own save succeeded: a
    /// failure is logged (and the session expires by itself), never
    /// answered, since the client must get the credential just saved.
    async fn end_best_effort(&self, session: SessionId, reason: &'static str) {
        if let Err(e) = self.inner.shared.end_session(session, reason).await {
            tracing::warn!(%session, reason, error = %e.report(), "could not end a session after a login; it ends at its deadline");
        }
    }

    /// Indexes the session's history under its user, for export and
    /// erasure.
    async fn link_user(&self, sid: SessionId, pseudonym: Option<String>, now: i64) {
        let shared = &self.inner.shared;
        let (Some(pseudonym), Some(w)) = (pseudonym, &shared.writer) else {
            return;
        };
        let ends = now + shared.config.absolute_timeout.as_millis() as i64;
        if let Err(e) = w.store().link_user(&pseudonym, &sid, ends).await {
            tracing::warn!(session = %sid, error = %e.report(), "could not index the session's history under its user");
        }
    }

    fn privilege_entry(
        &self,
        old_user: Option<&str>,
        old_privilege: Option<&str>,
        to_user: Option<String>,
        st: &State,
    ) -> Draft {
        let from_user = old_user.map(|u| self.inner.shared.user_pseudonym(u));
        Draft::lifecycle(
            EntryKind::PrivilegeChanged,
            &json!({
                "from_user": from_user,
                "to_user": to_user,
                "from_privilege": old_privilege,
                "to_privilege": st.privilege,
            }),
        )
    }
}
