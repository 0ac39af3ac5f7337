//! The demo's application: settings, the layer, the routes and the page.
//!
//! `examples/demo.rs` runs it; the tests build it in-process with
//! `#[path = "../examples/demo/app.rs"] mod app;`. The HTTP interface is
//! fixed by the demo contract (`DEMO-CONTRACT.md`).
//!
//! Choices where the contract is silent:
//!
//! - "Anonymous" means *no logged-in user*: `/api/me`, `/api/elevate`,
//!   `/api/sessions`, `DELETE /api/sessions/{session}`, `/api/export` and
//!   `DELETE /api/history` answer 401 without one.
//! - `/api/history` is about the session, not the user: without a session
//!   it answers an empty page (`"session": null`, no entries, chain ok).
//!   Its `chain` verdict checks the history writer's signed checkpoints
//!   (every `DEMO_CHECKPOINT_SECONDS`): `"checkpointed": N` when one attests
//!   the history up to entry N, and a tail cut off after a checkpoint makes
//!   `ok` false (`truncated_tail`, or `replaced` once newer entries were
//!   chained onto the cut).
//! - `limit` is clamped to 1..=1000; a `limit` that is not a number is 400.
//! - Login always rotates the token (also when the same user logs in
//!   again) and sets the privilege to `user`; elevate always rotates too.
//! - `/api/cart` works for anonymous visitors (a shop's cart does); the item
//!   is 1–64 characters without control characters.
//! - Static assets (`/app.js`, `/app.css`) and `/api/stats` are mounted
//!   outside the session layer: they never need a session, so they cost no
//!   store call and do not clutter history.
//! - Every error, including axum's own rejections (bad JSON, wrong method,
//!   unknown route) and the layer's own 503, is `{"error": "..."}`.
//! - CSRF protection covers every unsafe request of the session layer's
//!   routes (not only POST, PUT, PATCH and DELETE under `/api/`: any method
//!   but GET, HEAD, OPTIONS and TRACE). The demo serves plain HTTP, so its
//!   own origin is `http://` plus the `Host` header: an `Origin` of
//!   `https://` the same host is another origin. `GET /api/csrf` answers
//!   with `Cache-Control: no-store`. `DEMO_CSRF` also accepts `lenient`,
//!   the default.
//! - `/api/view` takes the same item as `/api/cart`. `/api/checkout`
//!   counts the items added to the cart since the last checkout.
//! - The insights answer 401 without a user and 403 for a user whose
//!   privilege is not `admin`; a query they cannot take (no steps, a step
//!   that is not an event name, `within=0`, a period other than `day` or
//!   `week`) is a 400 that says why. Defaults: the shop's funnel
//!   (`view_product,add_to_cart,checkout`), `within=3600`, `period=week`.
//!   They read the store that keeps the history (the database when
//!   `DATABASE_URL` is set). `/insights` itself is served to anyone: the
//!   page says when its data is refused.

use std::future::Future;
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query};
use axum::http::header::{
    CACHE_CONTROL, CONTENT_DISPOSITION, CONTENT_LENGTH, CONTENT_SECURITY_POLICY, CONTENT_TYPE,
    REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router, middleware};
use futures_util::future::BoxFuture;
use serde::Deserialize;
use serde_json::{Value, json};
use session_trail::analytics::{
    CohortReport, Cohorts, Funnel, FunnelReport, HistoryAnalytics, Period,
};
use session_trail::history::{Draft, EntryKind, HistoryWriter, WriterConfig};
use session_trail::store::{HistoryStore, MemoryStore, SessionStore};
use session_trail::{
    ConfigError, Csrf, Error, ErrorKind, Key, Session, SessionId, SessionInfo, SessionLayer,
    SessionLayerBuilder,
};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The page and its assets, served as they are (no build step).
const INDEX_HTML: &str = include_str!("index.html");
const APP_JS: &str = include_str!("app.js");
const APP_CSS: &str = include_str!("app.css");
const INSIGHTS_HTML: &str = include_str!("insights.html");
const INSIGHTS_JS: &str = include_str!("insights.js");

/// The funnel `/api/insights/funnel` and the insights page show by default.
const DEFAULT_FUNNEL: &str = "view_product,add_to_cart,checkout";
/// Its default window, in seconds.
const DEFAULT_WITHIN_SECS: u64 = 3600;
/// The most sessions `DEMO_SEED` may make.
const MAX_SEED: usize = 1_000_000;

/// The demo users and their passwords.
const USERS: [(&str, &str); 2] = [("alice", "alice-pw"), ("bob", "bob-pw")];

/// `DEMO_CHECKPOINT_SECONDS`'s default and largest value.
const DEFAULT_CHECKPOINT_SECONDS: u64 = 30;
const MAX_CHECKPOINT_SECONDS: u64 = 86_400;

/// `/api/history`'s default and largest `limit`.
const HISTORY_DEFAULT: usize = 50;
const HISTORY_MAX: usize = 1000;

/// The longest cart item, in characters.
const MAX_ITEM_CHARS: usize = 64;

/// What the environment configures.
#[derive(Debug)]
pub(crate) struct Settings {
    /// `DEMO_ADDR`, default `127.0.0.1:3000` (a host name is resolved).
    pub(crate) addr: String,
    /// `REDIS_URL`: the Redis store; unset: the memory store.
    pub(crate) redis_url: Option<String>,
    /// `DATABASE_URL`: the SQL store (`postgres://…`); with `REDIS_URL`
    /// too, it keeps the history and Redis the sessions.
    pub(crate) database_url: Option<String>,
    /// The master key (`SESSION_KEY`, or a random one).
    pub(crate) key: Key,
    /// Warnings to log at start-up.
    pub(crate) warnings: Vec<String>,
    /// How the layer is set up.
    pub(crate) options: Options,
    /// `DEMO_SEED=N`: N synthetic sessions of the last eight weeks are
    /// written through the history writer at start-up (0: none).
    pub(crate) seed: usize,
}

/// How the session layer is set up.
#[derive(Clone, Debug)]
pub(crate) struct Options {
    /// `DEMO_INSECURE_COOKIE=1`: no `Secure` attribute.
    pub(crate) insecure_cookie: bool,
    /// `DEMO_ISSUE_ON_FIRST_VISIT=1`: a session on every first visit.
    pub(crate) issue_on_first_visit: bool,
    /// `DEMO_HEADER=NAME`: the credential also travels in this header.
    pub(crate) header: Option<String>,
    /// `DEMO_CSRF=strict`: the CSRF token is required on every unsafe
    /// request of a session (otherwise checked whenever one is sent).
    pub(crate) csrf_strict: bool,
    /// `DEMO_CHECKPOINT_SECONDS=N`: the history writer's checkpoint
    /// interval (default 30).
    pub(crate) checkpoint_seconds: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            insecure_cookie: false,
            issue_on_first_visit: false,
            header: None,
            csrf_strict: false,
            checkpoint_seconds: DEFAULT_CHECKPOINT_SECONDS,
        }
    }
}

impl Settings {
    /// Reads the settings through `var` (`std::env::var` in the demo).
    ///
    /// # Keys
    ///
    /// The crate derives its cookie, history and pseudonym keys from *one*
    /// master secret with HKDF-SHA256 under distinct labels, so the key that
    /// signs credentials never signs history. `SESSION_KEY` is that master
    /// secret. `HISTORY_KEY` cannot key history separately; it is checked
    /// (hex, at least 32 bytes) so a broken deployment is noticed, and when
    /// it differs from `SESSION_KEY` a warning says it is ignored. Without
    /// `SESSION_KEY` a random key is generated and a warning says sessions
    /// (and the verification of stored history) will not survive a restart.
    pub(crate) fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let var = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let flag = |name: &str| -> Result<bool, String> {
            match var(name).as_deref().map(str::trim) {
                None | Some("0") => Ok(false),
                Some("1") => Ok(true),
                Some(other) => Err(format!("{name} must be 1 or 0, not {other:?}")),
            }
        };
        let mut warnings = Vec::new();
        let key = master_key(var("SESSION_KEY"), var("HISTORY_KEY"), &mut warnings)?;
        let options = Options {
            insecure_cookie: flag("DEMO_INSECURE_COOKIE")?,
            issue_on_first_visit: flag("DEMO_ISSUE_ON_FIRST_VISIT")?,
            header: var("DEMO_HEADER").map(|h| h.trim().to_owned()),
            csrf_strict: match var("DEMO_CSRF").as_deref().map(str::trim) {
                None => false,
                Some(v) if v.eq_ignore_ascii_case("strict") => true,
                Some(v) if v.eq_ignore_ascii_case("lenient") => false,
                Some(other) => {
                    return Err(format!(
                        "DEMO_CSRF must be strict or lenient, not {other:?}"
                    ));
                }
            },
            checkpoint_seconds: match var("DEMO_CHECKPOINT_SECONDS") {
                None => DEFAULT_CHECKPOINT_SECONDS,
                Some(v) => match v.trim().parse::<u64>() {
                    Ok(n) if (1..=MAX_CHECKPOINT_SECONDS).contains(&n) => n,
                    _ => {
                        return Err(format!(
                            "DEMO_CHECKPOINT_SECONDS must be a number of seconds from 1 to \
                             {MAX_CHECKPOINT_SECONDS}, not {v:?}"
                        ));
                    }
                },
            },
        };
        if options.insecure_cookie {
            warnings.push(
                "DEMO_INSECURE_COOKIE=1: the session cookie is not Secure and crosses plain HTTP"
                    .to_owned(),
            );
        }
        let seed = match var("DEMO_SEED") {
            None => 0,
            Some(v) => match v.trim().parse::<usize>() {
                Ok(n) if n <= MAX_SEED => n,
                _ => {
                    return Err(format!(
                        "DEMO_SEED must be a number of sessions from 0 to {MAX_SEED}, not {v:?}"
                    ));
                }
            },
        };
        Ok(Self {
            addr: var("DEMO_ADDR").unwrap_or_else(|| "127.0.0.1:3000".to_owned()),
            seed,
            redis_url: var("REDIS_URL"),
            database_url: var("DATABASE_URL"),
            key,
            warnings,
            options,
        })
    }
}

fn master_key(
    session: Option<String>,
    history: Option<String>,
    warnings: &mut Vec<String>,
) -> Result<Key, String> {
    let parse = |name: &str, hex: &str| Key::from_hex(hex).map_err(|e| format!("{name}: {e}"));
    if let Some(h) = &history {
        parse("HISTORY_KEY", h)?;
    }
    let normalized = |hex: &str| hex.trim().to_ascii_lowercase();
    let ignored = "HISTORY_KEY is ignored: history is signed with a key derived from \
                   SESSION_KEY (HKDF, its own label), never with the cookie key";
    match session {
        Some(s) => {
            let key = parse("SESSION_KEY", &s)?;
            if history.is_some_and(|h| normalized(&h) != normalized(&s)) {
                warnings.push(ignored.to_owned());
            }
            Ok(key)
        }
        None => {
            if history.is_some() {
                warnings.push(ignored.to_owned());
            }
            warnings.push(
                "SESSION_KEY is not set: using a random key; sessions will not survive a \
                 restart, and history stored before it will not verify"
                    .to_owned(),
            );
            Ok(Key::generate())
        }
    }
}

/// The analytics of the store that keeps the history, whichever it is.
pub(crate) trait Analyze: Send + Sync {
    fn funnel<'a>(&'a self, query: &'a Funnel) -> BoxFuture<'a, Result<FunnelReport, Error>>;
    fn cohorts<'a>(&'a self, query: &'a Cohorts) -> BoxFuture<'a, Result<CohortReport, Error>>;
}

impl<T: HistoryAnalytics> Analyze for T {
    fn funnel<'a>(&'a self, query: &'a Funnel) -> BoxFuture<'a, Result<FunnelReport, Error>> {
        Box::pin(HistoryAnalytics::funnel(self, query))
    }

    fn cohorts<'a>(&'a self, query: &'a Cohorts) -> BoxFuture<'a, Result<CohortReport, Error>> {
        Box::pin(HistoryAnalytics::cohorts(self, query))
    }
}

/// The demo's session layer and the analytics of its history store. It
/// derefs to the layer.
#[derive(Clone)]
pub(crate) struct Demo {
    pub(crate) layer: SessionLayer,
    pub(crate) insights: Arc<dyn Analyze>,
}

impl std::fmt::Debug for Demo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Demo")
            .field("layer", &self.layer)
            .finish_non_exhaustive()
    }
}

impl Deref for Demo {
    type Target = SessionLayer;

    fn deref(&self) -> &SessionLayer {
        &self.layer
    }
}

/// The session layer over `store` (sessions and history in it).
///
/// # Errors
///
/// The layer's [`ConfigError`], e.g. an invalid `DEMO_HEADER` name.
pub(crate) fn layer<S>(store: S, key: Key, options: &Options) -> Result<Demo, ConfigError>
where
    S: SessionStore + HistoryStore + HistoryAnalytics + Clone,
{
    let insights = Arc::new(store.clone());
    Ok(Demo {
        layer: builder(store, key, options).build()?,
        insights,
    })
}

/// The demo's layer settings over `store`, for a caller that adds a
/// history store of its own before `build`.
pub(crate) fn builder<S>(store: S, key: Key, options: &Options) -> SessionLayerBuilder
where
    S: SessionStore + HistoryStore + Clone,
{
    // The demo serves plain HTTP itself (no TLS), so that is its scheme:
    // an `Origin` of https://the-same-host is another origin.
    let csrf = Csrf::new().scheme("http").strict(options.csrf_strict);
    let writer = WriterConfig::default()
        .checkpoint_interval(Duration::from_secs(options.checkpoint_seconds));
    let mut builder = SessionLayer::builder(store, key)
        .history_writer(writer)
        .cookie_secure(!options.insecure_cookie)
        .issue_on_first_visit(options.issue_on_first_visit)
        .csrf(csrf);
    if let Some(name) = &options.header {
        builder = builder.header(name);
    }
    builder
}

/// The demo's layer over the store the settings name: memory (neither
/// URL set), Redis (`REDIS_URL`), PostgreSQL or SQLite (`DATABASE_URL`),
/// or sessions in Redis and history in the database (both). The
/// database's tables are created here (idempotent).
pub(crate) async fn open(settings: &Settings) -> Result<Demo, String> {
    let key = settings.key.clone();
    let options = &settings.options;
    let built = match (
        settings.redis_url.as_deref(),
        settings.database_url.as_deref(),
    ) {
        (None, None) => {
            tracing::info!("store: memory (neither REDIS_URL nor DATABASE_URL is set)");
            layer(MemoryStore::new(), key, options)
        }
        (Some(url), None) => {
            let store = redis_store(url).await?;
            tracing::info!(?store, "store: Redis");
            layer(store, key, options)
        }
        (redis, Some(url)) => {
            let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
            match scheme.as_deref() {
                Some("postgres" | "postgresql") => {
                    let database = postgres_store(url).await?;
                    with_database(database, "PostgreSQL", redis, key, options).await?
                }
                Some("sqlite") => {
                    let database = sqlite_store(&url["sqlite://".len()..]).await?;
                    with_database(database, "SQLite", redis, key, options).await?
                }
                _ => {
                    return Err(
                        "DATABASE_URL must be a postgres://, postgresql:// or sqlite:// URL".into(),
                    );
                }
            }
        }
    };
    built.map_err(|e| e.to_string())
}

/// The layer over a database: sessions and history in it, or, with a Redis
/// URL, sessions in Redis and history in the database.
async fn with_database<D>(
    database: D,
    name: &str,
    redis: Option<&str>,
    key: Key,
    options: &Options,
) -> Result<Result<Demo, session_trail::ConfigError>, String>
where
    D: SessionStore + HistoryStore + HistoryAnalytics + std::fmt::Debug + Clone,
{
    Ok(match redis {
        None => {
            tracing::info!(store = ?database, "store: {name}");
            layer(database, key, options)
        }
        Some(redis) => {
            let sessions = redis_store(redis).await?;
            tracing::info!(
                ?sessions,
                history = ?database,
                "store: sessions in Redis, history in {name}"
            );
            let insights = Arc::new(database.clone());
            builder(sessions, key, options)
                .history(database)
                .build()
                .map(|layer| Demo { layer, insights })
        }
    })
}

#[cfg(feature = "sqlite")]
async fn sqlite_store(path: &str) -> Result<session_trail::store::SqliteStore, String> {
    if path.is_empty() {
        return Err("DATABASE_URL=sqlite://PATH needs a file path, e.g. sqlite://demo.db".into());
    }
    if path.contains(['?', '#']) {
        return Err(
            "DATABASE_URL=sqlite://PATH takes a file path only, without ?options or #fragment \
             (the store sets its own options)"
                .into(),
        );
    }
    let path = percent_decoded(path)
        .ok_or("DATABASE_URL=sqlite://PATH: the path has an invalid %-escape or is not UTF-8")?;
    // Creates the file and its tables when missing; a second demo on the
    // same file shares it.
    session_trail::store::SqliteStore::open(path)
        .await
        .map_err(|e| format!("DATABASE_URL: cannot use SQLite: {}", e.report()))
}

/// A URL path with its `%XX` escapes decoded.
#[cfg(feature = "sqlite")]
fn percent_decoded(path: &str) -> Option<String> {
    let mut out = Vec::with_capacity(path.len());
    let mut bytes = path.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next()?, bytes.next()?];
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(not(feature = "sqlite"))]
async fn sqlite_store(_path: &str) -> Result<MemoryStore, String> {
    Err(
        "DATABASE_URL is a sqlite:// URL, but this build has no SQLite support: build with \
         `--features sqlite` (a default feature), or unset DATABASE_URL"
            .into(),
    )
}

#[cfg(feature = "postgres")]
async fn postgres_store(url: &str) -> Result<session_trail::store::PostgresStore, String> {
    // The URL may carry a password: errors and logs name the store by its
    // redacted Debug, never the URL.
    let store = session_trail::store::PostgresStore::connect(url)
        .await
        .map_err(|e| format!("DATABASE_URL: cannot use PostgreSQL: {}", e.report()))?;
    // Idempotent, and safe when several demos start at once.
    store
        .migrate()
        .await
        .map_err(|e| format!("DATABASE_URL: cannot create the tables: {}", e.report()))?;
    Ok(store)
}

#[cfg(not(feature = "postgres"))]
async fn postgres_store(_url: &str) -> Result<MemoryStore, String> {
    Err(
        "DATABASE_URL is a PostgreSQL URL, but this build has no PostgreSQL support: run the \
         demo with `--features postgres`, or unset DATABASE_URL"
            .into(),
    )
}

#[cfg(feature = "redis")]
async fn redis_store(url: &str) -> Result<session_trail::store::RedisStore, String> {
    session_trail::store::RedisStore::connect(url)
        .await
        .map_err(|e| format!("REDIS_URL: cannot use Redis: {e}"))
}

#[cfg(not(feature = "redis"))]
async fn redis_store(_url: &str) -> Result<MemoryStore, String> {
    Err(
        "REDIS_URL is set, but this build has no Redis support: build with \
         `--features redis`, or unset REDIS_URL to use the memory store"
            .into(),
    )
}

/// The demo's routes around `demo`'s layer.
pub(crate) fn router(demo: &Demo) -> Router {
    let layer = &demo.layer;
    let writer = layer.history_writer().cloned();
    let insights = Arc::clone(&demo.insights);
    let cohort_insights = Arc::clone(&demo.insights);
    let with_session = Router::new()
        .route("/", get(page))
        .route("/api/visits", get(visits))
        .route("/api/ping", get(ping))
        .route("/api/login", post(login))
        .route("/api/elevate", post(elevate))
        .route("/api/logout", post(logout))
        .route("/api/me", get(me))
        .route("/api/view", post(view))
        .route("/api/cart", post(cart))
        .route("/api/checkout", post(checkout))
        .route("/insights", get(insights_page))
        .route(
            "/api/insights/funnel",
            get(move |session, query| funnel(session, query, Arc::clone(&insights))),
        )
        .route(
            "/api/insights/cohorts",
            get(move |session, query| cohorts(session, query, Arc::clone(&cohort_insights))),
        )
        .route("/api/history", get(history).delete(erase))
        .route("/api/sessions", get(sessions))
        .route("/api/sessions/{session}", delete(revoke))
        .route("/api/export", get(export))
        .route("/api/csrf", get(csrf_token))
        .layer(layer.clone());
    Router::new()
        .merge(with_session)
        // Outside the session layer: nothing here needs a session.
        .route("/app.js", get(script))
        .route("/app.css", get(style))
        .route("/insights.js", get(insights_script))
        .route("/api/stats", get(move || stats(writer.clone())))
        .fallback(not_found)
        .layer(middleware::map_response(json_errors))
}

/// Serves `app` with the peer address (for the network-change signal) until
/// `shutdown` resolves, then waits for open requests to finish.
///
/// # Errors
///
/// I/O errors of the listener.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// Writes `sessions` synthetic sessions of the last eight weeks through
/// `writer` (`DEMO_SEED`), so the insights have something to show. They
/// are signed and chained like any other history: only their times are
/// set (`Draft::at`). Their users are made-up pseudonyms (no demo user is
/// named); a quarter of them come back in later weeks, fewer each week.
///
/// # Errors
///
/// When the writer cannot write them (the store is down).
pub(crate) async fn seed(writer: &HistoryWriter, sessions: usize) -> Result<(), Error> {
    const WEEK: i64 = 7 * 86_400_000;
    const MIN: i64 = 60_000;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let start = now - 8 * WEEK;
    // A small deterministic generator: the same seed draws the same shop.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut below = move |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n.max(1)
    };
    let users = (sessions as u64 / 3).max(1);
    let items = ["book", "lamp", "mug", "plant", "poster"];
    for done in (0..sessions).step_by(1000) {
        for _ in done..(done + 1000).min(sessions) {
            let user = below(users);
            let pseudonym: [u8; 8] = Sha256::digest(format!("demo-seed-user-{user}").as_bytes())
                [..8]
                .try_into()
                .unwrap_or_default();
            // The user's first week, then later visits, each less likely.
            let first = start + (user as i64 * 7_919 % 8) * WEEK;
            let mut week = 0;
            while below(100) < 45 {
                week += 1;
            }
            let mut ts = first + week * WEEK + below(WEEK as u64) as i64;
            if ts > now - 10 * MIN {
                ts = first + below((now - first).max(1) as u64) as i64;
            }
            let item = items[below(items.len() as u64) as usize];
            let mut drafts = vec![
                Draft::lifecycle(EntryKind::Started, &json!({})).at(ts),
                Draft::request("GET", "/", 200, 800, Some(pseudonym)).at((ts + 1_000).min(now)),
            ];
            let mut step = |name: &str, data: Value, after: i64, drafts: &mut Vec<Draft>| {
                // Never in the future.
                ts = (ts + after).min(now);
                if let Ok(d) = Draft::event(name, &data) {
                    drafts.push(d.at(ts));
                }
            };
            if below(100) < 85 {
                step(
                    "view_product",
                    json!({ "item": item }),
                    2 * MIN,
                    &mut drafts,
                );
                if below(100) < 55 {
                    // Now and then the cart comes too late for the hour.
                    let late = if below(100) < 8 { 90 * MIN } else { 4 * MIN };
                    step("add_to_cart", json!({ "item": item }), late, &mut drafts);
                    if below(100) < 50 {
                        step("checkout", json!({ "items": 1 }), 3 * MIN, &mut drafts);
                    }
                }
            }
            if !writer.enqueue(SessionId::generate(), drafts) {
                return Err(Error::new(
                    ErrorKind::Unavailable,
                    "DEMO_SEED: the history writer's queue is full",
                ));
            }
        }
        writer.flush().await?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The JSON API

type ApiResult<T> = Result<T, Error>;

/// GET /api/csrf: the session's CSRF token (creating the session). Never
/// cached: it belongs to one session and changes with its token.
async fn csrf_token(session: Session) -> ApiResult<Response> {
    let token = session.csrf_token().await?;
    let mut res = Json(json!({ "token": token })).into_response();
    res.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(res)
}

fn unauthenticated() -> Error {
    Error::new(ErrorKind::Unauthenticated, "log in first")
}

async fn require_user(session: &Session) -> ApiResult<String> {
    session.user().await?.ok_or_else(unauthenticated)
}

/// The demo user `user` if `password` is theirs. Every user is compared,
/// each in constant time over SHA-256 digests (no early exit, no length
/// leak), so timing tells nothing about which part was wrong.
fn check_password(user: &str, password: &str) -> Option<&'static str> {
    let digest = |s: &str| Sha256::digest(s.as_bytes());
    let (user, password) = (digest(user), digest(password));
    let mut found = None;
    for (name, pw) in USERS {
        let ok = digest(name).as_slice().ct_eq(user.as_slice())
            & digest(pw).as_slice().ct_eq(password.as_slice());
        if bool::from(ok) {
            found = Some(name);
        }
    }
    found
}

async fn visits(session: Session) -> ApiResult<Json<Value>> {
    let n: u64 = session.get("visits").await?.unwrap_or(0) + 1;
    session.insert("visits", n).await?;
    Ok(Json(json!({ "visits": n })))
}

async fn ping() -> Json<Value> {
    Json(json!({ "ok": true }))
}

#[derive(Deserialize)]
struct Login {
    user: String,
    password: String,
}

async fn login(session: Session, Json(body): Json<Login>) -> ApiResult<Json<Value>> {
    let Some(user) = check_password(&body.user, &body.password) else {
        // Worth a line in an existing session's history; an anonymous
        // failure creates no session (and no cookie).
        if session.exists().await? {
            session
                .record("login_failed", json!({ "reason": "bad_credentials" }))
                .await?;
        }
        return Err(Error::new(
            ErrorKind::Unauthenticated,
            "wrong user name or password",
        ));
    };
    session.set_user(Some(user.to_owned())).await?;
    session.set_privilege(Some("user".to_owned())).await?;
    // A changed user rotates the token by itself; a fresh token on every
    // login, even the same user's again, costs nothing and is simpler to
    // reason about.
    session.regenerate().await?;
    session
        .record("login", json!({ "method": "password" }))
        .await?;
    Ok(Json(json!({ "user": user })))
}

async fn elevate(session: Session) -> ApiResult<Json<Value>> {
    require_user(&session).await?;
    // A step-up: the privilege change rotates the token; an admin elevating
    // again gets a fresh token too.
    session.set_privilege(Some("admin".to_owned())).await?;
    session.regenerate().await?;
    Ok(Json(json!({ "privilege": "admin" })))
}

async fn logout(session: Session) -> ApiResult<StatusCode> {
    session.destroy().await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn me(session: Session) -> ApiResult<Json<Value>> {
    let user = require_user(&session).await?;
    Ok(Json(json!({
        "user": user,
        "privilege": session.privilege().await?,
        "visits": session.get::<u64>("visits").await?.unwrap_or(0),
        "session": session.id().await?,
    })))
}

#[derive(Deserialize)]
struct CartItem {
    item: String,
}

async fn cart(session: Session, Json(body): Json<CartItem>) -> ApiResult<Json<Value>> {
    let item = item_of(&body)?;
    session
        .record("add_to_cart", json!({ "item": item }))
        .await?;
    let n: u64 = session.get("cart_items").await?.unwrap_or(0) + 1;
    session.insert("cart_items", n).await?;
    Ok(Json(json!({ "items": n })))
}

/// The item of a `/api/view` or `/api/cart` body, checked.
fn item_of(body: &CartItem) -> ApiResult<&str> {
    let item = body.item.trim();
    let chars = item.chars().count();
    if chars == 0 || chars > MAX_ITEM_CHARS || item.chars().any(char::is_control) {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("item must be 1 to {MAX_ITEM_CHARS} characters without control characters"),
        ));
    }
    Ok(item)
}

async fn view(session: Session, Json(body): Json<CartItem>) -> ApiResult<Json<Value>> {
    let item = item_of(&body)?;
    session
        .record("view_product", json!({ "item": item }))
        .await?;
    Ok(Json(json!({ "ok": true })))
}

async fn checkout(session: Session) -> ApiResult<Response> {
    let n: u64 = session.get("cart_items").await?.unwrap_or(0);
    if n == 0 {
        return Ok(error_response(StatusCode::CONFLICT, "the cart is empty"));
    }
    session.record("checkout", json!({ "items": n })).await?;
    session.remove("cart_items").await?;
    Ok(Json(json!({ "items": n })).into_response())
}

/// `{"error": message}` with `status`.
fn error_response(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// Analytics are for admins: 401 without a user, 403 for a user who has
/// not elevated.
async fn require_admin(session: &Session) -> Result<(), Response> {
    let privilege = async {
        require_user(session).await?;
        session.privilege().await
    };
    match privilege.await {
        Ok(Some(p)) if p == "admin" => Ok(()),
        Ok(_) => Err(error_response(
            StatusCode::FORBIDDEN,
            "insights are for admins: POST /api/elevate first",
        )),
        Err(e) => Err(e.into_response()),
    }
}

/// A query the analytics refused, with the reason (it names the
/// parameter, never stored data).
fn bad_query(e: &Error) -> Response {
    error_response(StatusCode::BAD_REQUEST, &e.to_string())
}

#[derive(Deserialize)]
struct FunnelParams {
    steps: Option<String>,
    within: Option<u64>,
}

async fn funnel(
    session: Session,
    Query(params): Query<FunnelParams>,
    insights: Arc<dyn Analyze>,
) -> Response {
    if let Err(refused) = require_admin(&session).await {
        return refused;
    }
    let steps = params.steps.as_deref().unwrap_or(DEFAULT_FUNNEL);
    let within = Duration::from_secs(params.within.unwrap_or(DEFAULT_WITHIN_SECS));
    let query = match Funnel::new(steps.split(',').map(str::trim), within) {
        Ok(q) => q,
        Err(e) => return bad_query(&e),
    };
    match insights.funnel(&query).await {
        Ok(report) => Json(report).into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
struct CohortParams {
    period: Option<String>,
}

async fn cohorts(
    session: Session,
    Query(params): Query<CohortParams>,
    insights: Arc<dyn Analyze>,
) -> Response {
    if let Err(refused) = require_admin(&session).await {
        return refused;
    }
    let period: Period = match params.period.as_deref().unwrap_or("week").parse() {
        Ok(p) => p,
        Err(e) => return bad_query(&e),
    };
    match insights.cohorts(&Cohorts::new(period)).await {
        Ok(report) => Json(report).into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
struct HistoryParams {
    limit: Option<usize>,
}

async fn history(session: Session, Query(params): Query<HistoryParams>) -> ApiResult<Json<Value>> {
    let limit = params
        .limit
        .unwrap_or(HISTORY_DEFAULT)
        .clamp(1, HISTORY_MAX);
    if session.id().await?.is_none() {
        // No session, no history: an empty page of the same shape.
        return Ok(Json(json!({
            "session": null,
            "entries": [],
            "chain": {
                "ok": true, "error": null, "breaks": [], "trimmed_before": null, "checkpointed": null,
            },
        })));
    }
    Ok(Json(session.history(limit).await?.to_json()))
}

async fn erase(session: Session) -> ApiResult<StatusCode> {
    // The crate logs the receipt (target `session_trail::erasure`).
    session.erase_history().await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn sessions(session: Session) -> ApiResult<Json<Value>> {
    let list = session.sessions().await?;
    Ok(Json(list.iter().map(SessionInfo::to_json).collect()))
}

async fn revoke(session: Session, Path(id): Path<String>) -> ApiResult<StatusCode> {
    require_user(&session).await?;
    // A malformed id names nobody's session: the same 404 as someone else's.
    let id: SessionId = id
        .parse()
        .map_err(|_| Error::new(ErrorKind::NotFound, "no such session"))?;
    session.revoke(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn export(session: Session) -> ApiResult<Response> {
    let lines = session.export().await?;
    Ok((
        [
            (CONTENT_TYPE, "application/x-ndjson"),
            (
                CONTENT_DISPOSITION,
                "attachment; filename=\"session-history.ndjson\"",
            ),
        ],
        Body::from_stream(lines),
    )
        .into_response())
}

async fn stats(writer: Option<HistoryWriter>) -> Json<Value> {
    let s = writer.map(|w| w.stats()).unwrap_or_default();
    Json(json!({
        "queued": s.queue_depth,
        "written": s.written,
        "retried": s.retried,
        "dropped": s.dropped,
    }))
}

async fn not_found() -> Response {
    error_response(StatusCode::NOT_FOUND, "no such route")
}

/// Makes every error answer JSON: axum's own rejections (bad JSON body,
/// wrong content type, wrong method) and the session layer's own answers
/// (503 when a session cannot be saved) come as plain text or empty; their
/// text becomes the `error`.
async fn json_errors(res: Response) -> Response {
    let status = res.status();
    let is_json = res
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return res;
    }
    let (mut parts, body) = res.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .ok()
        .and_then(|b| String::from_utf8(b.to_vec()).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty());
    let message = text.unwrap_or_else(|| {
        status
            .canonical_reason()
            .unwrap_or("error")
            .to_ascii_lowercase()
    });
    parts.headers.remove(CONTENT_LENGTH);
    parts
        .headers
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Response::from_parts(parts, Body::from(json!({ "error": message }).to_string()))
}

// ---------------------------------------------------------------------------
// The page

/// Scripts and styles come from this origin only and data is rendered as
/// text, never as HTML: the page has no inline code to inject into.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
                   form-action 'self'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (CONTENT_TYPE, content_type),
            (CACHE_CONTROL, "no-cache"),
            (X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

async fn page() -> Response {
    let mut res = asset("text/html; charset=utf-8", INDEX_HTML);
    let h = res.headers_mut();
    h.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    res
}

async fn insights_page() -> Response {
    let mut res = asset("text/html; charset=utf-8", INSIGHTS_HTML);
    let h = res.headers_mut();
    h.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    res
}

async fn insights_script() -> Response {
    asset("text/javascript; charset=utf-8", INSIGHTS_JS)
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}
