//! Tower session middleware with signed credentials, automatic token
//! rotation, and a tamper-evident session history.
//!
//! [`SessionLayer`] wraps any tower service over `http` requests (an axum
//! `Router`, a tonic server). Every request gets a [`Session`]: a lazily
//! loaded handle to server-side data, the logged-in user and a privilege
//! level. The client carries a signed credential in a cookie (secure
//! defaults) or a header (API and gRPC clients). The layer rotates the token
//! by itself whenever the user or the privilege changes, and records every
//! request, every event a handler records, and every lifecycle change as an
//! HMAC-signed, chained [`history`] entry, written in the background
//! so the request path never waits for it.
//!
//! # Example
//!
//! ```
//! use axum::{Router, routing::{get, post}};
//! use session_trail::{Key, Session, SessionLayer, store::MemoryStore};
//!
//! async fn visit(session: Session) -> Result<String, session_trail::Error> {
//!     let n: u64 = session.get("visits").await?.unwrap_or(0) + 1;
//!     session.insert("visits", n).await?;
//!     Ok(format!("visit {n}"))
//! }
//!
//! async fn login(session: Session) -> Result<&'static str, session_trail::Error> {
//!     // The layer rotates the token on the way out: no session fixation.
//!     session.set_user(Some("alice".into())).await?;
//!     session.record("login", serde_json::json!({"method": "password"})).await?;
//!     Ok("welcome")
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let layer = SessionLayer::builder(MemoryStore::new(), Key::generate()).build()?;
//! let app: Router = Router::new()
//!     .route("/", get(visit))
//!     .route("/login", post(login))
//!     .layer(layer);
//! # let _ = app; Ok(()) }
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(run()).unwrap();
//! ```
//!
//! In production, load the master key from a secret store
//! ([`Key::from_hex`], at least 32 bytes), use a store that survives a
//! restart ([`store::SqliteStore`] on one host; Redis or PostgreSQL when
//! several app servers share sessions), and call [`HistoryWriter::shutdown`](history::HistoryWriter::shutdown)
//! on graceful shutdown so no history is lost.
//!
//! # Features
//!
//! | feature | default | what |
//! |---|---|---|
//! | `axum` | yes | `Session` and `Option<Session>` extractors; `IntoResponse` for [`Error`] |
//! | `memory-store` | yes | [`store::MemoryStore`]: sessions and history in memory |
//! | `redis` | yes | [`store::RedisStore`]: Redis and Redis Cluster; re-exports the `redis` crate |
//! | `sqlite` | yes | [`store::SqliteStore`]: one SQLite file (SQLite compiled in); re-exports `rusqlite` |
//! | `postgres` | no | `store::PostgresStore`: PostgreSQL; re-exports `tokio_postgres` and `deadpool_postgres` |
//! | `analytics` | yes | [`analytics`]: funnels, cohort retention and event counts over the stored history |
//! | `tonic` | no | `From<Error> for tonic::Status` |
//!
//! # Stores
//!
//! Every store has the same semantics (the conformance suite runs on each):
//! per-key updates checked against the token hash, creates that never
//! overwrite, compare-and-append history with keep-*N* and a sliding TTL,
//! user and history indexes for listing, revoking, export and erasure.
//!
//! | | memory | SQLite | Redis | PostgreSQL |
//! |---|---|---|---|---|
//! | type | [`store::MemoryStore`] | [`store::SqliteStore`] | [`store::RedisStore`] | `store::PostgresStore` |
//! | feature | `memory-store` (default) | `sqlite` (default) | `redis` (default) | `postgres` |
//! | set-up | none | none: a file, created with its tables | a Redis 7 server or cluster | a database; `migrate()` creates the tables |
//! | shared by several app servers | no | processes on one host | yes | yes |
//! | survives a restart | no | yes (committed before acknowledged) | with the append-only file | yes (committed before acknowledged) |
//! | history appends | — | a batch per write transaction | a batch (one script call per 64 sessions) | a batch (one function call) |
//! | history queryable | no | SQL: one row per entry, decoded columns beside the signed bytes | no | the same as SQLite |
//! | [`analytics`] | streamed | in SQL, through its indexes | streamed (`SCAN`) | in SQL, through its indexes |
//! | expiry | on access | maintenance between operations, in bounded batches | Redis TTLs | a maintenance task, in bounded batches |
//!
//! Sessions and history can live apart: `SessionLayer::builder(redis,
//! key).history(postgres)` keeps sessions in Redis and the history in
//! PostgreSQL (or SQLite).
//!
//! # Security model
//!
//! - **Two identities.** A session has a public id (128 random bits: store
//!   keys, history, logs) and a secret token (256 bits from the OS CSPRNG).
//!   The client carries both with an HMAC-SHA256 MAC. The MAC is checked in
//!   constant time *before* any store access, so forged, truncated, oversized
//!   or non-UTF-8 values are anonymous requests that never reach the store.
//! - **No live credentials at rest.** Stores keep SHA-256 of the token, never
//!   the token; history and logs name the public id only.
//! - **Keys.** One master secret per [`Key`]; HKDF-SHA256 derives separate
//!   cookie, history, pseudonym, CSRF and checkpoint keys, so the credential key never signs
//!   history. A [`KeyRing`] lets the newest key sign while older ones verify.
//! - **Fixation is impossible by construction.** When a request changes the
//!   user or the privilege, the layer issues a new token (same public id)
//!   and the old one stops working at once. A request already in flight with
//!   the replaced token (within [`rotation_grace`](SessionLayerBuilder::rotation_grace))
//!   is served as anonymous and gets no cookie, so it neither sees the new
//!   session nor logs the browser out.
//! - **Cookie defaults.** `HttpOnly`, `Secure`, `SameSite=Lax`, `Path=/`, no
//!   `Domain`; `__Host-` names are checked at build time. The credential is
//!   sent only when its value changes.
//! - **Cross-site requests** (opt-in, [`SessionLayerBuilder::csrf`]): unsafe
//!   requests a browser marks as cross-site are refused before the handler,
//!   and a token derived from the session's current token (no storage,
//!   new at every rotation, masked per response) can be required; see
//!   [`csrf`] for what is checked and what a deployment must still do.
//! - **History is evidence.** Entries are MAC'd (history key) over their exact
//!   stored bytes and chained by `seq` and `prev`; [`history::verify`] reports
//!   every modification, deletion, insertion and reordering, with its
//!   position. Users appear as keyed pseudonyms (their own key, which does
//!   not rotate with the signing key: see
//!   [`pseudonym_key`](SessionLayerBuilder::pseudonym_key)); tokens, cookies,
//!   authorization headers, query strings and bodies never enter history, and
//!   a request is recorded under its route template, never a raw path that
//!   matched no route (see [Limits](#limits)).
//! - **Only the current token writes a session's history.** A request whose
//!   handler loaded the session was checked against the store; one that did
//!   not is appended on the condition that its token is still the session's
//!   current one, checked by the store in the same atomic step as the append
//!   (the record and the history share the session's slot). A dead
//!   credential (replaced past the grace window, revoked, logged out,
//!   expired) adds no request entries; each use adds at most one rate-limited
//!   `suspicious` entry per session per grace window, so an old cookie cannot
//!   fill a victim's history or push its real entries out through keep-*N*.
//! - **Cuts are caught by signed checkpoints.** Every 30 s (when something
//!   was written) the history writer signs a Merkle root over the heads
//!   `(session, seq, tag)` it advanced, chained to its previous checkpoint
//!   under a key derived for checkpoints alone, keeps it in the store and
//!   hands it to a [`CheckpointSink`](history::CheckpointSink) outside it.
//!   [`history::verify_checkpointed`] then reports a cut-off tail
//!   (`truncated_tail`), a deleted history (`missing_history`) and a
//!   rewritten tail (`replaced`); [`history::CheckpointLog`] reports
//!   checkpoints that were altered, forged, or removed from the store but
//!   kept outside. An erasure is signed into the chain as a receipt and
//!   retention (keep-*N*, the TTL) is taken into account, so neither is
//!   reported. See [`history::checkpoint`].
//! - **One session, one user.** When the user changes, the request moves to
//!   a new session with a new public id: one user's export or erasure never
//!   reaches another's entries.
//! - **Failures are loud.** A store outage makes session reads answer `503`
//!   (gRPC `UNAVAILABLE`), never a silent logout; lost history is recorded as
//!   a signed `gap` entry, and what a handler recorded is kept even when the
//!   save fails or the response future is dropped.
//!
//! What the history does **not** guarantee:
//!
//! - Entries wait in the writer's queue for up to its flush interval (50 ms
//!   by default; longer while the store is down). A `kill -9` of an app
//!   server, or a crash, loses what its queue held, with no `gap` entry (the
//!   process that would write it is gone); a graceful shutdown with
//!   [`HistoryWriter::shutdown`](history::HistoryWriter::shutdown) loses
//!   nothing.
//! - A chain alone cannot show that its newest entries were cut off or that
//!   a whole history was deleted by someone with write access to the store;
//!   checkpoints can, within these limits:
//!   - entries written after the last checkpoint (up to its interval, 30 s
//!     by default) can be cut unnoticed, and a `kill -9` loses the
//!     advances not yet checkpointed;
//!   - checkpoints kept only in the store can be cut with the history:
//!     only a sink where the store's operators cannot rewrite them makes
//!     the newest ones evidence;
//!   - a history gone, or started afresh, once its TTL could have passed
//!     since the checkpoint (less [`history::EXPIRY_SLACK`], 10 minutes for
//!     clocks and queues) is taken for an expiry;
//!   - checkpoints are kept in the store for the history TTL; the reads of
//!     [`Session::history`] check against this writer's own checkpoints
//!     (held in memory, up to about a million sessions), not other app
//!     servers'; an audit reads them all ([`history::HistoryWriter::checkpoint_log`]);
//!   - an erasure through one app server voids the other servers'
//!     attestations of the session from [`history::EXPIRY_SLACK`] before
//!     it (their clocks differ): what another server wrote that soon after
//!     the erasure waits for a later checkpoint of it to be protected;
//!   - a sink's file line cut short by a crash is passed over when read;
//!   - those reads take the store's erasure marker for an erasure made
//!     through another app server (its signed receipt is in that server's
//!     chain): whoever can write to the store can hide a deletion from the
//!     reads' verdict that way, not from an audit, which trusts signed
//!     receipts only;
//!   - the signature is an HMAC: whoever verifies holds the key and could
//!     sign (as with entries), so the sink's copy must be out of their reach
//!     too.
//! - A store that loses acknowledged writes (Redis without persistence
//!   restarting, a failover to a lagging replica) loses entries; the writer
//!   that had them acknowledged records a `gap{store_lost}` when it next
//!   appends to that session, other writers cannot know. Within the
//!   retention TTL after a history was erased, a shorter chain is taken for
//!   the erasure: a loss in that time is not recorded as a gap.
//! - Requests of a session that was loaded and checked are recorded even if
//!   the session is revoked in the milliseconds between that check and the
//!   append.
//! - On Redis Cluster, one session's failing append (a key of the wrong
//!   type, a slot that moved) holds only that session. A master that is
//!   down without a replica to fail over to can make the cluster client
//!   fail commands for every node once it refreshes its view of the
//!   cluster; history then waits in the queue until the cluster is whole.
//! - With a history store apart from the session store
//!   ([`history`](SessionLayerBuilder::history)), tokens cannot be checked at
//!   append time, so requests whose handler never loads the session are not
//!   recorded at all.
//! - The [`analytics`] read the history as stored and check no MAC: whoever
//!   can write to the store can skew a funnel or a cohort without the
//!   report showing it. [`history::verify`] audits the sessions behind a
//!   figure; reports hold counts only, never a pseudonym or a session id.
//! - An entry's time is what the holder of the history key signed
//!   ([`Draft::at`](history::Draft::at) sets it); the chain proves the
//!   order of a session's entries, not their clock.
//!
//! # Life cycle
//!
//! 1. The credential is read from the cookie and/or header and verified.
//! 2. The handler gets a lazy [`Session`]; the record is loaded on first use
//!    (the axum extractor loads it). Expired sessions are ended then.
//! 3. On the way out the layer persists the changed keys only (so concurrent
//!    requests writing different keys both survive), rotates the token if
//!    the privilege changed, deletes the record on
//!    [`destroy`](Session::destroy), slides the idle deadline when part of
//!    the window has passed (reads count as activity), and sets or clears
//!    the credential when it changed. A handler that answered a server
//!    error (`5xx`) leaves none of its changes (what it recorded is still
//!    written to the history of the session it had), unless
//!    [`save_on_server_error`](SessionLayerBuilder::save_on_server_error);
//!    any other status saves (a `400` after a validation error, a `401`
//!    that counted a failed attempt); a request that ends or reduces the
//!    session is saved whatever its status, and a failed one never grants
//!    anything. A credential the load found dead (its history shows its
//!    session ended longer ago than the grace window, or it has no history
//!    left: lost or long expired; it expired; a token replaced longer ago
//!    than the grace window) is cleared from the client with a removal
//!    cookie, so it stops being sent. When the end cannot be told (history
//!    off, or the end still queued on another server) the cookie stays. The grace window is measured from the
//!    request's arrival: a request in flight when its session rotated or
//!    ended keeps its cookie (a removal cookie landing after the new one
//!    would log the browser out), and so does a token the record does not
//!    know at all (replaced twice within the window); a request that never
//!    loads its session cannot know, and keeps it.
//! 4. It enqueues the request's history entries (lifecycle, events, the
//!    request) without waiting; the writer chains, signs and stores them.
//!    When saving fails, the events and the request entry (with the error's
//!    status) are still enqueued, and the layer answers the error; when the
//!    response future is dropped first (a client that went away, a timeout
//!    layer outside), a drop guard enqueues them with status 499. A handle
//!    kept past this point (a clone in a spawned task) refuses writes.
//!
//! Expiry: a record past its idle or absolute deadline is never served. The
//! store keeps it for [`store::EXPIRED_RECORD_LINGER`] (an hour) after the
//! deadline, so a client that comes back within that hour has its session
//! ended with a recorded reason (`ended` with `idle_timeout` or
//! `absolute_timeout`); after that the record is gone, and the history ends
//! without an `ended` entry.
//!
//! Anonymous visitors get no stored session and no cookie until something
//! is written, unless [`issue_on_first_visit`](SessionLayerBuilder::issue_on_first_visit).
//! [`Session::record`] writes (it creates a session to record into); record
//! events of visitors who may have none, such as failed logins, with
//! [`Session::record_if_session`], which never creates one.
//!
//! # Retention
//!
//! Everything that decides how long data lives, in one place:
//!
//! | what | default | set with | enforced by |
//! |---|---|---|---|
//! | session idle timeout (sliding; reads count) | 30 minutes | [`SessionLayerBuilder::idle_timeout`] | the layer on load, and the store's TTL |
//! | part of the idle window before a read slides it | 0.1 | [`SessionLayerBuilder::idle_refresh_fraction`] | the layer |
//! | session absolute timeout | 12 hours | [`SessionLayerBuilder::absolute_timeout`] | the layer on load, and the store's TTL |
//! | replaced-token grace window (and the rate limit of dead-credential `suspicious` entries: one per session per window, never under 10 s) | 10 seconds | [`SessionLayerBuilder::rotation_grace`] | the layer, the writer |
//! | an expired record, kept to record why the session ended | 1 hour after its deadline | [`store::EXPIRED_RECORD_LINGER`] | the store |
//! | an erasure marker (tells other app servers a history was erased, not lost) | the history TTL | — | the store |
//! | history TTL (sliding: from the last entry) | 30 days | `history_retention` on [`store::MemoryStore`] and the other stores' builders | the store |
//! | history entries kept per session (newest *N*) | 1,000 | the same | the store |
//! | the history writer's signed checkpoints | the history TTL after each was made | the same TTL; interval: [`history::WriterConfig::checkpoint_interval`] | the store (when it keeps the next one); the sink's copy is the application's |
//! | a user's history index (for export and erase) | the history TTL after the user's latest session can end | — | the store |
//! | a record in the Redis store's local cache (off by default) | until Redis reports a change, at most 5 s | `local_cache` on `store::RedisStoreBuilder` | the store |
//! | PostgreSQL and SQLite rows past their deadline, TTL or keep-*N* (never read) | until the next maintenance round, every 60 s | `maintenance_interval` on `store::PostgresStoreBuilder` and [`store::SqliteStoreBuilder`] | the store's maintenance task (SQLite: its thread, between operations) |
//!
//! The memory store evicts expired sessions and histories as Redis would,
//! so memory never grows without bound. A record's store TTL follows the
//! nearer of its idle and absolute deadlines, plus the linger above.
//! [`Session::erase_history`] deletes a user's history at once; the user's
//! live sessions stay in the index, so what they record afterwards can be
//! erased again.
//!
//! # Errors
//!
//! Every fallible call answers an [`Error`]; match on its [`ErrorKind`]:
//!
//! | kind | means | retry? | answered as |
//! |---|---|---|---|
//! | `Unavailable` | the store is down, slow or failed | yes, with backoff | `503` + `Retry-After` / `UNAVAILABLE` |
//! | `Misconfigured` | the store refused this client (wrong password, missing ACL permission, no such database), or PostgreSQL's tables are missing or differ (the message names the table), or an SQLite file cannot be opened or written (the message names the path) | no: fix the configuration, or run `migrate()` | `500` / `INTERNAL` |
//! | `Timeout`, `Closed` | a deadline passed; the writer shut down | yes | `503` / `DEADLINE_EXCEEDED`, `UNAVAILABLE` |
//! | `InvalidInput`, `Serialization` | the application's input was refused | no | `400` / `INVALID_ARGUMENT` |
//! | `NotFound`, `Unauthenticated`, `Refused` | as named | no | `404`, `401`, `409` |
//! | `Corrupt` | stored data does not decode | no | `500` / `INTERNAL` |
//! | `Conflict` | a new session's id is taken (a collision; nothing was overwritten) | yes | `500` / `INTERNAL` |
//!
//! Its [`Display`](std::fmt::Display) describes its own level (`session
//! store unavailable: loading the session`) and its cause is its
//! [`source`](std::error::Error::source), so `{:#}` in anyhow or
//! [`Error::report`] prints each text once. Clients never see that text:
//! `IntoResponse for Error`, the extractor's rejections, the layer's own
//! `503` and `From<Error> for tonic::Status` answer
//! [`Error::client_message`] (short and stable per kind) with
//! [`Error::status`] or [`Error::grpc_code`], and log the full error once.
//! To answer in your own shape, map the error in your handler:
//!
//! ```
//! use axum::{Json, http::StatusCode};
//! use session_trail::{Error, ErrorKind};
//!
//! fn to_response(e: Error) -> (StatusCode, Json<serde_json::Value>) {
//!     let code = match e.kind() {
//!         ErrorKind::Unauthenticated => "login_required",
//!         ErrorKind::Unavailable | ErrorKind::Timeout => "try_again",
//!         _ => "internal",
//!     };
//!     (e.status(), Json(serde_json::json!({ "code": code })))
//! }
//!
//! let (status, body) = to_response(Error::new(ErrorKind::Unauthenticated, "log in first"));
//! assert_eq!(status, StatusCode::UNAUTHORIZED);
//! assert_eq!(body.0["code"], "login_required");
//! ```
//!
//! # Logging
//!
//! The crate logs with [`tracing`]; every target starts with
//! `session_trail` (filter with `RUST_LOG=session_trail=info`). It never
//! logs a token, a credential, a cookie, a password, a raw user name, a
//! client address, a query string or a body: sessions appear by public id,
//! users and networks as keyed pseudonyms.
//!
//! | target | level | event |
//! |---|---|---|
//! | `session_trail::answer` ([`ANSWER_TARGET`]) | `WARN` (5xx) / `DEBUG` (4xx) | an error answered to a client (the extractor's `503`, the layer's own `503` after a failed save, `IntoResponse for Error`, gRPC statuses), once, with its cause |
//! | `session_trail::suspicious` | `WARN` | a suspicious use of a session (signal and the response chosen) |
//! | `session_trail::history::worker` | `WARN` | history writes failing (the first failure, then a summary every 30 s), `INFO` when they recover; one session's appends failing (first, then every 30 s); a store that lost acknowledged entries |
//! | `session_trail::history::writer` | `WARN` | entries dropped at a full queue (once per burst; `gap` entries record the counts) |
//! | `session_trail::checkpoint` | `INFO` | a signed checkpoint's header, from the default [`TracingSink`](history::TracingSink) |
//! | `session_trail::history::checkpointer` | `WARN`, `INFO` | a checkpoint the store or the sink could not keep (retried with backoff; every 30 s while it fails), and when it was kept after all |
//! | `session_trail::erasure` | `INFO` | a history erased: the user's pseudonym and the counts (the receipt) |
//! | `session_trail::anonymous` | `INFO` | an event of a visitor without a session ([`Session::record_if_session`]) |
//! | `session_trail::session` | `WARN`, `DEBUG` | a session's history could not be indexed under its user; concurrent changes not applied |
//! | `session_trail::store::redis::*` | `WARN`, `DEBUG` | the local cache's tracking connection |
//! | `session_trail::store::postgres` | `WARN`, `INFO`, `DEBUG` | a maintenance round failed (it retries with backoff); a schema version applied; what a round deleted |
//! | `session_trail::store::sqlite::*` | `ERROR`, `WARN`, `INFO`, `DEBUG` | an operation panicked (the thread goes on); a maintenance batch failed (retried with backoff); a schema version applied; what a batch deleted; a checkpoint that failed (retried) |
//!
//! # Where the layer goes
//!
//! Put it *inside* layers that answer on their own without needing a session
//! (CORS preflight, compression, timeouts, request ids, tracing) and
//! *outside* anything that reads the session (authentication, your routes).
//! Its own CSRF guard ([`SessionLayerBuilder::csrf`]) runs first inside it,
//! before the inner service is called: a refused request reaches neither
//! authentication nor the handler. A CORS layer outside it answers
//! preflights; the requests it lets through are still checked. With axum, `Router::layer` wraps the routes added before
//! it, and the layer reads the matched route template (`/users/{id}`) for
//! every request. Outside a router (wrapping the whole `Router` with
//! `ServiceBuilder`), templates are known only to handlers that extract the
//! session; other requests record their path, capped.
//!
//! ```text
//! TraceLayer → TimeoutLayer → CorsLayer → SessionLayer → auth → routes
//! ```
//!
//! # Testing your application
//!
//! - **A store per test.** [`store::MemoryStore`] needs no set-up: give each
//!   test its own `MemoryStore::new()` and tests never see each other's
//!   sessions or history. On a shared Redis, give each test its own
//!   `key_prefix` (on `store::RedisStoreBuilder`): tests that share a
//!   prefix share its user indexes, so one test's `alice` sees and revokes
//!   the other's `alice` sessions, counts towards their session limit and,
//!   with the same key, exports and erases their history.
//! - **Flush before asserting on history.** The writer stores entries in the
//!   background; [`HistoryWriter::flush`](history::HistoryWriter::flush)
//!   resolves once everything enqueued before it is stored. (Inside a
//!   request, [`Session::history`] reads its own writes without it.)
//! - **Failure paths without breaking a server.** `MemoryStore` injects
//!   faults: [`session_faults`](store::MemoryStore::session_faults) and
//!   [`history_faults`](store::MemoryStore::history_faults) fail the next
//!   *n* operations, take the store down, slow it or lose acknowledgements
//!   ([`store::Faults`]); [`wipe`](store::MemoryStore::wipe) is a Redis
//!   restart without persistence; [`poison_history`](store::MemoryStore::poison_history)
//!   makes one session's appends fail.
//! - **Keys.** [`Key::generate`], or a constant that is not one byte
//!   repeated (refused: see [`Key`]) where a test needs the same key twice.
//!
//! Drive the layer without a server, with `tower::ServiceExt::oneshot`:
//!
//! ```
//! use axum::{Router, body::Body, routing::post};
//! use http::{Request, StatusCode};
//! use http_body_util::BodyExt;
//! use session_trail::history::{Entry, EntryKind};
//! use session_trail::store::{HistoryStore, MemoryStore};
//! use session_trail::{Key, Session, SessionId, SessionLayer};
//! use tower::ServiceExt;
//!
//! async fn add_to_cart(session: Session) -> Result<String, session_trail::Error> {
//!     session.record("add_to_cart", serde_json::json!({"item": "book"})).await?;
//!     Ok(session.id().await?.map(|id| id.to_string()).unwrap_or_default())
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let store = MemoryStore::new(); // this test's own
//! let layer = SessionLayer::builder(store.clone(), Key::generate()).build().unwrap();
//! let writer = layer.history_writer().unwrap().clone();
//! let app = Router::new().route("/cart", post(add_to_cart)).layer(layer);
//! let cart = || Request::post("/cart").body(Body::empty()).unwrap();
//!
//! let res = app.clone().oneshot(cart()).await.unwrap();
//! assert_eq!(res.status(), StatusCode::OK);
//! let body = res.into_body().collect().await.unwrap().to_bytes();
//! let sid: SessionId = std::str::from_utf8(&body).unwrap().parse().unwrap();
//!
//! // Written in the background: flush, then read what the store holds.
//! writer.flush().await.unwrap();
//! let kinds: Vec<EntryKind> = store
//!     .read_all(&sid)
//!     .await
//!     .unwrap()
//!     .iter()
//!     .map(|bytes| Entry::decode(bytes).unwrap().kind)
//!     .collect();
//! assert_eq!(kinds, [EntryKind::Started, EntryKind::Event, EntryKind::Request]);
//!
//! // A store outage: the new session cannot be saved, the layer answers 503.
//! store.session_faults().set_down(true);
//! let res = app.clone().oneshot(cart()).await.unwrap();
//! assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
//! store.session_faults().set_down(false);
//! # });
//! ```
//!
//! # Limits
//!
//! - A request whose handler never touches its session makes no store
//!   call, so it cannot slide the idle deadline.
//! - A chain alone cannot show that its newest entries were cut off; every
//!   other change is reported.
//! - A request that carries a valid credential is recorded under its
//!   session id even when its handler never loads the session (the layer
//!   does not look the session up just to record the request), but only if
//!   the store confirms its token is the current one when the entry is
//!   written.
//! - Recorded routes: the matched template when there is one; a request
//!   that matched no route and answered `404` is recorded as
//!   `(unmatched)`. A fallback that answers something else (a single-page
//!   app's index, a static file service) has its path recorded. Any
//!   recorded route is cut at 256 bytes and ends with `…`.
//! - When saving fails after the handler answered, the layer itself answers
//!   `503` with `Retry-After` and an empty body (it only knows the response
//!   body type implements `Default`); the extractor's rejections and
//!   [`Error`]'s `IntoResponse` carry a JSON message.
//! - Request entries of gRPC calls record the HTTP status (200), not the
//!   `grpc-status`; record a domain event for outcomes that matter.
//! - Writes racing a rotation of the same session (a request that loaded the
//!   session before another request rotated it) are refused by the store's
//!   token check rather than applied to the rotated session.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod body;
mod client;
mod controls;
mod credential;
mod error;
mod key;
mod manager;
mod session;
mod transport;
mod util;

#[cfg(feature = "analytics")]
pub mod analytics;

pub mod csrf;
#[cfg(feature = "axum")]
mod extract;
pub mod history;
pub mod store;

pub use body::ErrorBody;
pub use controls::{ErasureReceipt, HistoryExport, SessionInfo};
pub use cookie::SameSite;
pub use credential::SessionId;
pub use csrf::Csrf;
pub use error::{ANSWER_TARGET, ConfigError, Error, ErrorKind};
#[cfg(feature = "axum")]
pub use extract::{CsrfForm, SessionRejection};
pub use key::{Key, KeyRing, MIN_KEY_LEN};
pub use manager::{
    ClientAddress, ResponseFuture, SessionLayer, SessionLayerBuilder, SessionService,
};
pub use session::{Session, SessionLimit, Signal, SuspicionResponse};

/// The `redis` crate the Redis store is built on, re-exported so that an
/// application uses the matching version (and can enable its TLS features).
#[cfg(feature = "redis")]
pub use redis;

/// The `tokio-postgres` driver and the `deadpool-postgres` pool the
/// PostgreSQL store is built on, re-exported so that an application uses
/// the matching versions (to build its own pool for
/// [`PostgresStore::from_pool`](store::PostgresStore::from_pool), with TLS
/// say).
#[cfg(feature = "postgres")]
pub use {deadpool_postgres, tokio_postgres};

/// The `rusqlite` driver the SQLite store is built on (with SQLite
/// compiled in), re-exported so that an application's own queries on the
/// store's file use the same version.
#[cfg(feature = "sqlite")]
pub use rusqlite;

/// The error's gRPC code with its [`Error::client_message`]: the error's
/// own text (the store's reply, a setting's name and value) is logged here,
/// never sent to the client.
#[cfg(feature = "tonic")]
impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        let code = tonic::Code::from_i32(i32::from(e.grpc_code()));
        e.log_answered();
        tonic::Status::new(code, e.client_message())
    }
}
