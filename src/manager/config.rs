//! The layer's settings and their defaults, each with its reason.

use std::sync::Arc;
use std::time::Duration;

use cookie::SameSite;
use http::HeaderName;

use crate::error::ConfigError;
use crate::history::{HistoryWriter, WriterConfig};
use crate::key::KeyRing;
use crate::store::{DynHistoryStore, DynSessionStore, HistoryStore, SessionStore};

use super::Shared;
use super::layer::SessionLayer;

/// Where the credential travels.
#[derive(Clone, Debug)]
pub(crate) struct CookieConfig {
    pub(crate) name: String,
    pub(crate) http_only: bool,
    pub(crate) secure: bool,
    pub(crate) same_site: SameSite,
    pub(crate) path: String,
    pub(crate) domain: Option<String>,
    pub(crate) max_age: Option<Duration>,
}

impl Default for CookieConfig {
    fn default() -> Self {
        Self {
            name: "session".to_owned(),
            // Scripts never need the credential; keeping it from them
            // contains the damage of an XSS bug.
            http_only: true,
            // A bearer credential must not cross plain HTTP.
            secure: true,
            // Lax stops the credential riding along on cross-site POSTs
            // (CSRF) but keeps top-level navigation logged in.
            same_site: SameSite::Lax,
            path: "/".to_owned(),
            // No Domain: the cookie goes to this host only, not subdomains.
            domain: None,
            // A browser-session cookie; the server enforces expiry.
            max_age: None,
        }
    }
}

/// Where the client's address comes from, for the network-change signal.
///
/// The network is compared as a /24 (IPv4) or /48 (IPv6) prefix and stored
/// as a keyed pseudonym, never as an address.
///
/// # Without an address
///
/// When the chosen source yields no address (the default
/// [`ConnectInfo`](Self::ConnectInfo) on a server that does not provide
/// the peer address, a missing or malformed header, or
/// [`None`](Self::None)), nothing fails, but the signal is off: a new
/// session gets no network baseline (its `started` entry has
/// `"network": null`) and, lacking one, raises no `network_changed`
/// signal. Nothing warns about it.
///
/// # Providing it
///
/// - axum: serve the router with its peer address,
///   `axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())`
///   (a bare `axum::serve(listener, app)` provides none).
/// - Other servers (hyper, tonic, a custom accept loop): insert the peer's
///   `std::net::SocketAddr` as a request extension before the layer.
/// - Behind a reverse proxy or load balancer the peer is the proxy: use
///   [`Header`](Self::Header) with the header the proxy sets.
///
/// ```
/// use session_trail::{ClientAddress, Key, SessionLayer, store::MemoryStore};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let behind_proxy = SessionLayer::builder(MemoryStore::new(), Key::generate())
///     .client_address(ClientAddress::Header(http::HeaderName::from_static("x-forwarded-for")))
///     .build()
///     .unwrap();
/// # let _ = behind_proxy;
/// # });
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientAddress {
    /// The peer address of the connection: axum's
    /// `ConnectInfo<SocketAddr>` or a `SocketAddr` request extension (the
    /// default). Behind a proxy this is the proxy.
    #[default]
    ConnectInfo,
    /// The last address in this header (e.g. `x-forwarded-for`), as appended
    /// by *your* proxy. Use it only behind a proxy that sets it.
    Header(HeaderName),
    /// No address: no network-change signal.
    None,
}

type HookFn = dyn Fn(&crate::SessionId, &crate::Signal) -> crate::SuspicionResponse + Send + Sync;

/// Decides how to answer a [`Signal`](crate::Signal).
#[derive(Clone)]
pub(crate) struct SuspicionHook(Option<Arc<HookFn>>);

impl SuspicionHook {
    pub(crate) fn respond(
        &self,
        sid: &crate::SessionId,
        signal: &crate::Signal,
    ) -> crate::SuspicionResponse {
        let response = match &self.0 {
            Some(f) => f(sid, signal),
            None => crate::SuspicionResponse::Record,
        };
        tracing::warn!(target: "session_trail::suspicious", session = %sid, signal = signal.kind, ?response, "suspicious session use");
        response
    }
}

impl std::fmt::Debug for SuspicionHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "custom" } else { "record" })
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) cookie: Option<CookieConfig>,
    pub(crate) header: Option<HeaderName>,
    pub(crate) idle_timeout: Duration,
    pub(crate) absolute_timeout: Duration,
    pub(crate) idle_refresh: f64,
    pub(crate) rotation_grace: Duration,
    pub(crate) issue_on_first_visit: bool,
    pub(crate) max_event_bytes: usize,
    pub(crate) max_value_bytes: usize,
    pub(crate) session_limit: Option<(usize, crate::SessionLimit)>,
    pub(crate) on_suspicious: SuspicionHook,
    pub(crate) client_address: ClientAddress,
    pub(crate) save_on_server_error: bool,
    pub(crate) csrf: Option<crate::csrf::CsrfCheck>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            cookie: Some(CookieConfig::default()),
            header: None,
            // OWASP's range for low-risk applications is 15–30 minutes.
            idle_timeout: Duration::from_secs(30 * 60),
            // A stolen credential is useless after a working day at most.
            absolute_timeout: Duration::from_secs(12 * 3600),
            // Slide the idle deadline only after a tenth of the window has
            // passed: at most one store write per session per 3 minutes
            // with the defaults, at the cost of up to 10% of the window.
            idle_refresh: 0.1,
            // Long enough for requests already in flight at a login to
            // finish, short enough to be of no use to anyone else.
            rotation_grace: Duration::from_secs(10),
            // Crawlers and one-off visitors do not fill the store.
            issue_on_first_visit: false,
            max_event_bytes: 4096,
            max_value_bytes: 64 * 1024,
            // No limit unless the application asks for one.
            session_limit: None,
            // Record only: no hard binding that logs users out on a new
            // network or browser update.
            on_suspicious: SuspicionHook(None),
            client_address: ClientAddress::ConnectInfo,
            // A handler that failed half-way must not leave half its
            // changes behind (tower-sessions and Django agree).
            save_on_server_error: false,
            csrf: None,
        }
    }
}

/// Builds a [`SessionLayer`]; from [`SessionLayer::builder`].
///
/// Every setter takes and returns the builder; [`build`](Self::build)
/// checks the settings and names the first invalid one.
///
/// ```
/// use std::time::Duration;
/// use session_trail::{Key, SessionLayer, store::MemoryStore};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let layer = SessionLayer::builder(MemoryStore::new(), Key::generate())
///     .cookie_name("__Host-session")
///     .idle_timeout(Duration::from_secs(15 * 60))
///     .header("x-session")
///     .build()
///     .unwrap();
/// # let _ = layer;
///
/// let err = SessionLayer::builder(MemoryStore::new(), Key::generate())
///     .idle_timeout(Duration::ZERO)
///     .build()
///     .unwrap_err();
/// assert_eq!(err.setting(), "idle_timeout");
/// # });
/// ```
#[must_use = "call .build() to get the layer"]
pub struct SessionLayerBuilder {
    store: Arc<dyn DynSessionStore>,
    history: Option<Arc<dyn DynHistoryStore>>,
    writer: WriterConfig,
    ring: KeyRing,
    config: Config,
    header_error: Option<ConfigError>,
    csrf: Option<crate::Csrf>,
    /// History goes to the session store itself.
    history_is_session_store: bool,
}

impl std::fmt::Debug for SessionLayerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionLayerBuilder")
            .field("ring", &self.ring)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl SessionLayerBuilder {
    pub(crate) fn new<S: SessionStore>(store: S, keys: KeyRing) -> Self {
        Self {
            store: Arc::new(store),
            history: None,
            writer: WriterConfig::default(),
            ring: keys,
            config: Config::default(),
            header_error: None,
            csrf: None,
            history_is_session_store: false,
        }
    }

    pub(crate) fn new_with_history<S: SessionStore + HistoryStore + Clone>(
        store: S,
        keys: KeyRing,
    ) -> Self {
        let mut b = Self::new(store.clone(), keys);
        b.history = Some(Arc::new(store));
        b.history_is_session_store = true;
        b
    }

    /// Records history into `store` (by default: into the session store,
    /// when it is also a history store, as [`MemoryStore`](crate::store::MemoryStore)
    /// and the Redis store are).
    ///
    /// A history store apart from the session store cannot check a
    /// credential's token when it appends, so with one the requests whose
    /// handler never loads the session are not recorded (a dead credential
    /// must not write history); requests that load it are.
    pub fn history<H: HistoryStore>(mut self, store: H) -> Self {
        self.history = Some(Arc::new(store));
        self.history_is_session_store = false;
        self
    }

    /// Records no history at all.
    pub fn without_history(mut self) -> Self {
        self.history = None;
        self
    }

    /// Settings of the history writer.
    pub fn history_writer(mut self, config: WriterConfig) -> Self {
        self.writer = config;
        self
    }

    /// The cookie's name. Default `session`. A name starting with `__Host-`
    /// requires `Secure`, `Path=/` and no `Domain`, checked by `build`.
    pub fn cookie_name(mut self, name: impl Into<String>) -> Self {
        self.cookie().name = name.into();
        self
    }

    /// `HttpOnly`. Default on.
    pub fn cookie_http_only(mut self, on: bool) -> Self {
        self.cookie().http_only = on;
        self
    }

    /// `Secure`. Default on; turn off only for plain-HTTP development.
    pub fn cookie_secure(mut self, on: bool) -> Self {
        self.cookie().secure = on;
        self
    }

    /// `SameSite`. Default `Lax`.
    pub fn cookie_same_site(mut self, same_site: SameSite) -> Self {
        self.cookie().same_site = same_site;
        self
    }

    /// `Path`. Default `/`.
    pub fn cookie_path(mut self, path: impl Into<String>) -> Self {
        self.cookie().path = path.into();
        self
    }

    /// `Domain`. Default none: the cookie goes to this host only.
    pub fn cookie_domain(mut self, domain: impl Into<String>) -> Self {
        self.cookie().domain = Some(domain.into());
        self
    }

    /// `Max-Age`. Default none (a browser-session cookie; the server
    /// enforces the idle and absolute timeouts either way).
    pub fn cookie_max_age(mut self, max_age: Duration) -> Self {
        self.cookie().max_age = Some(max_age);
        self
    }

    /// Carries the credential in no cookie (header transport only).
    pub fn without_cookie(mut self) -> Self {
        self.config.cookie = None;
        self
    }

    /// Also accepts the credential from, and returns it in, this header
    /// (for API and gRPC clients). A response carries the header only when
    /// the request did (its value may be empty for a first request) or when
    /// there is no cookie transport, so browsers never see the credential in
    /// a header their scripts could read.
    pub fn header(mut self, name: impl AsRef<str>) -> Self {
        match HeaderName::try_from(name.as_ref()) {
            Ok(h) => self.config.header = Some(h),
            Err(_) => {
                self.header_error = Some(ConfigError::new(
                    "header",
                    format!("{:?} is not a valid header name", name.as_ref()),
                ));
            }
        }
        self
    }

    /// How long a session may go unused. Default 30 minutes.
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.config.idle_timeout = d;
        self
    }

    /// How long a session may live at all. Default 12 hours.
    pub fn absolute_timeout(mut self, d: Duration) -> Self {
        self.config.absolute_timeout = d;
        self
    }

    /// The part of the idle window (0 < f < 1) that must pass before a
    /// request that reads a session slides its idle deadline with a store
    /// write. Default 0.1. `build` refuses 1 and more: the deadline would
    /// be due to slide only once the session had already expired, so it
    /// would never slide.
    pub fn idle_refresh_fraction(mut self, f: f64) -> Self {
        self.config.idle_refresh = f;
        self
    }

    /// How long after a rotation a request bearing the replaced token is
    /// served as anonymous without being handed a new cookie. Default 10 s.
    pub fn rotation_grace(mut self, d: Duration) -> Self {
        self.config.rotation_grace = d;
        self
    }

    /// Stores a session and sets the credential on a visitor's first
    /// request, even when nothing is written to it. Default off.
    pub fn issue_on_first_visit(mut self, on: bool) -> Self {
        self.config.issue_on_first_visit = on;
        self
    }

    /// The largest serialized attributes of one recorded event. Default
    /// 4 KiB.
    pub fn max_event_bytes(mut self, n: usize) -> Self {
        self.config.max_event_bytes = n;
        self
    }

    /// The largest serialized value of one data key. Default 64 KiB.
    pub fn max_value_bytes(mut self, n: usize) -> Self {
        self.config.max_value_bytes = n;
        self
    }

    /// Limits how many sessions one user may have at once; `policy` says
    /// whether a new login is refused or the oldest sessions end. Default:
    /// no limit.
    pub fn max_sessions_per_user(mut self, max: usize, policy: crate::SessionLimit) -> Self {
        self.config.session_limit = Some((max, policy));
        self
    }

    /// Decides what happens when a session is used suspiciously: from
    /// another User-Agent family or network than it started with, with a
    /// token replaced longer ago than the rotation grace, or after it was
    /// ended on purpose. Every such use is recorded as a signed `suspicious`
    /// entry whatever the hook answers. Default: record only.
    ///
    /// ```
    /// use session_trail::{Key, SessionLayer, SuspicionResponse, store::MemoryStore};
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let layer = SessionLayer::builder(MemoryStore::new(), Key::generate())
    ///     .on_suspicious(|_session, signal| match signal.kind {
    ///         "replaced_token_reused" | "ended_session_used" => SuspicionResponse::End,
    ///         _ => SuspicionResponse::Rotate,
    ///     })
    ///     .build()
    ///     .unwrap();
    /// # let _ = layer;
    /// # });
    /// ```
    pub fn on_suspicious<F>(mut self, hook: F) -> Self
    where
        F: Fn(&crate::SessionId, &crate::Signal) -> crate::SuspicionResponse
            + Send
            + Sync
            + 'static,
    {
        self.config.on_suspicious = SuspicionHook(Some(Arc::new(hook)));
        self
    }

    /// Whether the changes a handler made are saved when it answers with a
    /// server error (`5xx`). Default off: a handler that failed half-way
    /// leaves none of its changes (data, login, privilege, rotation,
    /// logout), while what it recorded (events, the request entry) is kept
    /// in the history of the session it had. Responses below 500 (a `400`
    /// after a validation error, a `401` that counted a failed attempt)
    /// always save, and so does a request that ends or reduces the session
    /// whatever its status (a logout, `destroy`, a rotation, a dropped user
    /// or privilege): a failed handler never keeps a session more open
    /// than it asked for.
    ///
    /// ```
    /// use session_trail::{Key, SessionLayer, store::MemoryStore};
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let layer = SessionLayer::builder(MemoryStore::new(), Key::generate())
    ///     .save_on_server_error(true)
    ///     .build();
    /// assert!(layer.is_ok());
    /// # });
    /// ```
    pub fn save_on_server_error(mut self, on: bool) -> Self {
        self.config.save_on_server_error = on;
        self
    }

    /// Turns on CSRF protection: unsafe requests the browser marks as
    /// cross-site are refused with 403 before the handler runs, and
    /// [`Session::csrf_token`](crate::Session::csrf_token) issues a token
    /// bound to the session that requests may carry (and, in strict mode,
    /// must). See the [`csrf`](crate::csrf) module. Default off.
    ///
    /// ```
    /// use session_trail::{Csrf, Key, SessionLayer, store::MemoryStore};
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let layer = SessionLayer::builder(MemoryStore::new(), Key::generate())
    ///     .csrf(Csrf::new())
    ///     .build();
    /// assert!(layer.is_ok());
    /// # });
    /// ```
    pub fn csrf(mut self, csrf: crate::Csrf) -> Self {
        self.csrf = Some(csrf);
        self
    }

    /// Where the client's address comes from (for the network-change
    /// signal). Default [`ClientAddress::ConnectInfo`].
    pub fn client_address(mut self, source: ClientAddress) -> Self {
        self.config.client_address = source;
        self
    }

    /// Adds an older key that still verifies credentials and history. Add
    /// older keys newest first: the last one added is the ring's oldest,
    /// whose derived key makes pseudonyms unless
    /// [`pseudonym_key`](Self::pseudonym_key) pins one.
    pub fn previous_key(mut self, key: crate::Key) -> Self {
        self.ring = self.ring.with_previous(key);
        self
    }

    /// Pins the key of users' and networks' keyed pseudonyms (the user
    /// history index behind [`Session::export`](crate::Session::export) and
    /// [`Session::erase_history`](crate::Session::erase_history), the user
    /// in request entries, the network baseline of the network-change
    /// signal). It only makes pseudonyms: it signs and verifies nothing.
    ///
    /// Default: the ring's oldest key, i.e. the key the deployment started
    /// with, so rotating the signing key (a new current key plus
    /// [`previous_key`](Self::previous_key) with the old one) keeps every
    /// pseudonym. **Before retiring that oldest key from the ring, pin it
    /// here**: without it the pseudonyms change, the user index no longer
    /// finds any session linked before, so export and erasure miss their
    /// history, and every live session raises `network_changed` once.
    ///
    /// ```
    /// use session_trail::{Key, SessionLayer, store::MemoryStore};
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let first = Key::generate(); // the deployment's first key
    /// let second = Key::generate();
    /// let third = Key::generate();
    ///
    /// // Rotation: `second` signs, `first` still verifies and, as the
    /// // oldest key, still makes the pseudonyms.
    /// let rotated = SessionLayer::builder(MemoryStore::new(), second.clone())
    ///     .previous_key(first.clone())
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(rotated.key_ring().pseudonym_key().id(), first.id());
    ///
    /// // Retiring `first` from the ring: pin it for pseudonyms.
    /// let retired = SessionLayer::builder(MemoryStore::new(), third)
    ///     .previous_key(second)
    ///     .pseudonym_key(first.clone())
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(retired.key_ring().pseudonym_key().id(), first.id());
    /// assert!(retired.key_ring().get(first.id()).is_none());
    /// # });
    /// ```
    pub fn pseudonym_key(mut self, key: crate::Key) -> Self {
        self.ring = self.ring.with_pseudonym_key(key);
        self
    }

    fn cookie(&mut self) -> &mut CookieConfig {
        self.config.cookie.get_or_insert_with(CookieConfig::default)
    }

    /// Checks the settings and builds the layer, starting the history
    /// writer on the current Tokio runtime.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first invalid setting: a zero timeout,
    /// an idle timeout longer than the absolute one, an
    /// `idle_refresh_fraction` outside (0, 1) (1 would turn sliding off), an
    /// invalid header or cookie name, a `__Host-` cookie
    /// without `Secure`, `Path=/` or with a `Domain`, no transport at all,
    /// an invalid history writer setting, or (with history) no Tokio
    /// runtime.
    pub fn build(mut self) -> Result<SessionLayer, ConfigError> {
        if let Some(e) = self.header_error {
            return Err(e);
        }
        if let Some(csrf) = self.csrf.take() {
            self.config.csrf = Some(csrf.build()?);
        }
        let c = &self.config;
        if c.idle_timeout.is_zero() {
            return Err(ConfigError::new(
                "idle_timeout",
                "must be greater than zero",
            ));
        }
        if c.absolute_timeout.is_zero() {
            return Err(ConfigError::new(
                "absolute_timeout",
                "must be greater than zero",
            ));
        }
        if c.idle_timeout > c.absolute_timeout {
            return Err(ConfigError::new(
                "idle_timeout",
                "must not be longer than absolute_timeout",
            ));
        }
        if !(c.idle_refresh > 0.0 && c.idle_refresh < 1.0) {
            return Err(ConfigError::new(
                "idle_refresh_fraction",
                format!(
                    "{} is outside (0, 1): it must be greater than 0 and less than 1 \
                     (at 1 the idle deadline would never slide)",
                    c.idle_refresh
                ),
            ));
        }
        if c.max_event_bytes == 0 {
            return Err(ConfigError::new(
                "max_event_bytes",
                "must be greater than zero",
            ));
        }
        if c.max_value_bytes == 0 {
            return Err(ConfigError::new(
                "max_value_bytes",
                "must be greater than zero",
            ));
        }
        if c.session_limit.is_some_and(|(max, _)| max == 0) {
            return Err(ConfigError::new(
                "max_sessions_per_user",
                "must be at least 1",
            ));
        }
        if c.cookie.is_none() && c.header.is_none() {
            return Err(ConfigError::new(
                "without_cookie",
                "no transport left: set a header too",
            ));
        }
        if let Some(ck) = &c.cookie {
            check_cookie(ck)?;
        }
        let mut writer_config = self.writer;
        writer_config.dead_token_window = self.config.rotation_grace;
        writer_config.csrf_signal_every = self.config.absolute_timeout;
        writer_config.dead_signal_every = self
            .config
            .rotation_grace
            .max(crate::history::MIN_DEAD_SIGNAL_EVERY);
        let same_store = self.history_is_session_store && self.history.is_some();
        let checks_tokens = same_store && self.history.as_ref().is_some_and(|h| h.checks_tokens());
        let writer = match self.history {
            Some(store) => Some(HistoryWriter::start_dyn(
                store,
                self.ring.clone(),
                writer_config,
            )?),
            None => None,
        };
        Ok(SessionLayer::from_shared(Shared::new(
            self.store,
            self.ring,
            self.config,
            writer,
            checks_tokens,
            same_store,
        )))
    }
}

fn check_cookie(ck: &CookieConfig) -> Result<(), ConfigError> {
    let valid_token = !ck.name.is_empty()
        && ck
            .name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b));
    if !valid_token {
        return Err(ConfigError::new(
            "cookie_name",
            format!("{:?} is not a valid cookie name", ck.name),
        ));
    }
    if ck.name.starts_with("__Host-") {
        if !ck.secure {
            return Err(ConfigError::new(
                "cookie_secure",
                "a __Host- cookie must be Secure",
            ));
        }
        if ck.path != "/" {
            return Err(ConfigError::new(
                "cookie_path",
                "a __Host- cookie must have Path=/",
            ));
        }
        if ck.domain.is_some() {
            return Err(ConfigError::new(
                "cookie_domain",
                "a __Host- cookie must not have a Domain",
            ));
        }
    }
    if ck.name.starts_with("__Secure-") && !ck.secure {
        return Err(ConfigError::new(
            "cookie_secure",
            "a __Secure- cookie must be Secure",
        ));
    }
    if ck.same_site == SameSite::None && !ck.secure {
        return Err(ConfigError::new(
            "cookie_same_site",
            "browsers refuse SameSite=None without Secure",
        ));
    }
    if ck.path.is_empty() || !ck.path.starts_with('/') || ck.path.contains(';') {
        return Err(ConfigError::new(
            "cookie_path",
            "must start with / and contain no ;",
        ));
    }
    Ok(())
}
