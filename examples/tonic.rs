//! A tonic gRPC server behind the session layer, and a client that uses it.
//!
//! ```text
//! cargo run --example tonic
//! ```
//!
//! gRPC clients have no cookie jar, so the layer carries the credential in
//! a metadata header instead (`.without_cookie().header("x-session")`): the
//! client sends back whatever value the server last returned in that
//! header. Rotation on login, history, and store failures (`UNAVAILABLE`)
//! work as with axum.
//!
//! The service is written by hand with prost's derive and
//! `tonic::server::Grpc`, so no `protoc` is needed. Its `.proto` would be:
//!
//! ```proto
//! service Shop {
//!   rpc Login(LoginRequest) returns (LoginReply);
//!   rpc AddToCart(CartRequest) returns (CartReply);
//!   rpc History(HistoryRequest) returns (HistoryReply);
//!   rpc Logout(Empty) returns (Empty);
//! }
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::PathAndQuery;
use serde_json::{Value, json};
use session_trail::store::MemoryStore;
use session_trail::{ConfigError, Key, Session, SessionLayer};
use tonic::body::Body;
use tonic::metadata::MetadataValue;
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};
use tonic_prost::ProstCodec;

/// The metadata header that carries the session credential.
const HEADER: &str = "x-session";

// ---------------------------------------------------------------------------
// Messages

#[derive(Clone, PartialEq, prost::Message)]
struct LoginRequest {
    #[prost(string, tag = "1")]
    user: String,
    #[prost(string, tag = "2")]
    password: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct LoginReply {
    #[prost(string, tag = "1")]
    user: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct CartRequest {
    #[prost(string, tag = "1")]
    item: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct CartReply {
    #[prost(uint64, tag = "1")]
    items: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct HistoryRequest {
    #[prost(uint32, tag = "1")]
    limit: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct HistoryEntry {
    #[prost(uint64, tag = "1")]
    pub(crate) seq: u64,
    #[prost(string, tag = "2")]
    pub(crate) ts: String,
    #[prost(string, tag = "3")]
    pub(crate) kind: String,
    /// A one-line summary: `POST /trail.Shop/Login 200`, `add_to_cart
    /// {"item":"book"}`, `rotated reason=privilege_change`.
    #[prost(string, tag = "4")]
    pub(crate) summary: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct HistoryReply {
    #[prost(string, tag = "1")]
    pub(crate) session: String,
    /// Newest first.
    #[prost(message, repeated, tag = "2")]
    pub(crate) entries: Vec<HistoryEntry>,
    #[prost(bool, tag = "3")]
    pub(crate) chain_ok: bool,
    #[prost(string, tag = "4")]
    pub(crate) chain_error: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Empty {}

// ---------------------------------------------------------------------------
// The server

type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A session error as a gRPC status. (With the crate's `tonic` feature,
/// `From<session_trail::Error> for Status` does this and `?` works; this
/// example maps by hand so that it runs without features.)
fn status(e: session_trail::Error) -> Status {
    Status::new(Code::from_i32(i32::from(e.grpc_code())), e.to_string())
}

/// One unary method: a plain function of the request's session and message.
struct Method<Req, Res>(fn(Session, Req) -> BoxFut<Result<Res, Status>>);

impl<Req, Res> UnaryService<Req> for Method<Req, Res>
where
    Req: Send + 'static,
    Res: Send + 'static,
{
    type Response = Res;
    type Future = BoxFut<Result<Response<Res>, Status>>;

    fn call(&mut self, req: Request<Req>) -> Self::Future {
        let handler = self.0;
        Box::pin(async move {
            // The layer puts the session into every request's extensions.
            let session = req
                .extensions()
                .get::<Session>()
                .cloned()
                .ok_or_else(|| Status::internal("the session layer is not installed"))?;
            handler(session, req.into_inner()).await.map(Response::new)
        })
    }
}

async fn unary<Req, Res>(
    method: fn(Session, Req) -> BoxFut<Result<Res, Status>>,
    req: http::Request<Body>,
) -> http::Response<Body>
where
    Req: prost::Message + Default + Send + 'static,
    Res: prost::Message + Send + 'static,
{
    Grpc::new(ProstCodec::<Res, Req>::default())
        .unary(Method(method), req)
        .await
}

const USERS: [(&str, &str); 2] = [("alice", "alice-pw"), ("bob", "bob-pw")];

fn login(session: Session, req: LoginRequest) -> BoxFut<Result<LoginReply, Status>> {
    Box::pin(async move {
        use subtle::ConstantTimeEq;
        let known = USERS.iter().find(|(u, p)| {
            bool::from(
                u.as_bytes().ct_eq(req.user.as_bytes())
                    & p.as_bytes().ct_eq(req.password.as_bytes()),
            )
        });
        let Some((user, _)) = known else {
            return Err(Status::unauthenticated("wrong user name or password"));
        };
        // The layer rotates the token on the way out and returns the new
        // credential in the `x-session` response header.
        session
            .set_user(Some((*user).to_owned()))
            .await
            .map_err(status)?;
        session
            .record("login", json!({ "via": "grpc" }))
            .await
            .map_err(status)?;
        Ok(LoginReply {
            user: (*user).to_owned(),
        })
    })
}

fn add_to_cart(session: Session, req: CartRequest) -> BoxFut<Result<CartReply, Status>> {
    Box::pin(async move {
        if req.item.is_empty() || req.item.len() > 64 {
            return Err(Status::invalid_argument("item must be 1 to 64 bytes"));
        }
        // Anonymous visitors have carts too: the first write starts a
        // session and the layer returns its credential.
        session
            .record("add_to_cart", json!({ "item": req.item }))
            .await
            .map_err(status)?;
        let items: u64 = session
            .get("cart_items")
            .await
            .map_err(status)?
            .unwrap_or(0)
            + 1;
        session.insert("cart_items", items).await.map_err(status)?;
        Ok(CartReply { items })
    })
}

fn summary(e: &Value) -> String {
    match e["kind"].as_str().unwrap_or_default() {
        "request" => format!(
            "{} {} {}",
            e["method"].as_str().unwrap_or("?"),
            e["path"].as_str().unwrap_or("?"),
            e["status"]
        ),
        "event" => format!("{} {}", e["event"].as_str().unwrap_or("?"), e["data"]),
        kind => {
            let mut s = kind.to_owned();
            for key in [
                "reason",
                "from_privilege",
                "to_privilege",
                "to_user",
                "device",
            ] {
                if let Some(v) = e.get(key).filter(|v| !v.is_null()) {
                    s.push_str(&format!(
                        " {key}={}",
                        v.as_str().map_or_else(|| v.to_string(), str::to_owned)
                    ));
                }
            }
            s
        }
    }
}

fn history(session: Session, req: HistoryRequest) -> BoxFut<Result<HistoryReply, Status>> {
    Box::pin(async move {
        let limit = req.limit.clamp(1, 1000) as usize;
        let page = session.history(limit).await.map_err(status)?;
        Ok(HistoryReply {
            session: page.session.map(|s| s.to_string()).unwrap_or_default(),
            entries: page
                .entries
                .iter()
                .map(|e| {
                    let v = e.to_json();
                    HistoryEntry {
                        seq: v["seq"].as_u64().unwrap_or_default(),
                        ts: v["ts"].as_str().unwrap_or_default().to_owned(),
                        kind: v["kind"].as_str().unwrap_or_default().to_owned(),
                        summary: summary(&v),
                    }
                })
                .collect(),
            chain_ok: page.verification.is_ok(),
            chain_error: page.verification.first_error().unwrap_or_default(),
        })
    })
}

fn logout(session: Session, _: Empty) -> BoxFut<Result<Empty, Status>> {
    Box::pin(async move {
        session.destroy().await.map_err(status)?;
        Ok(Empty {})
    })
}

/// The `trail.Shop` service.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Shop;

impl NamedService for Shop {
    const NAME: &'static str = "trail.Shop";
}

impl tower::Service<http::Request<Body>> for Shop {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFut<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        Box::pin(async move {
            Ok(match req.uri().path() {
                "/trail.Shop/Login" => unary(login, req).await,
                "/trail.Shop/AddToCart" => unary(add_to_cart, req).await,
                "/trail.Shop/History" => unary(history, req).await,
                "/trail.Shop/Logout" => unary(logout, req).await,
                _ => Status::unimplemented("no such method").into_http(),
            })
        })
    }
}

/// The session layer for gRPC: no cookie, the credential in `x-session`.
///
/// # Errors
///
/// The layer's [`ConfigError`] (none with these settings).
pub(crate) fn layer() -> Result<SessionLayer, ConfigError> {
    SessionLayer::builder(MemoryStore::new(), Key::generate())
        .without_cookie()
        .header(HEADER)
        .build()
}

/// Serves the shop behind `layer` until `shutdown` resolves.
///
/// # Errors
///
/// Transport errors of the server.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    layer: SessionLayer,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .layer(layer)
        .add_service(Shop)
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown,
        )
        .await
}

// ---------------------------------------------------------------------------
// The client

/// A shop client that keeps the session credential as a browser keeps a
/// cookie: it sends the last value the server returned in `x-session`.
pub(crate) struct ShopClient {
    grpc: tonic::client::Grpc<Channel>,
    credential: Option<String>,
}

impl ShopClient {
    pub(crate) async fn connect(addr: SocketAddr) -> Result<Self, tonic::transport::Error> {
        let channel = Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await?;
        Ok(Self {
            grpc: tonic::client::Grpc::new(channel),
            credential: None,
        })
    }

    /// The credential this client holds (a secret: never print it).
    pub(crate) fn credential(&self) -> Option<&str> {
        self.credential.as_deref()
    }

    async fn call<Req, Res>(&mut self, method: &'static str, msg: Req) -> Result<Res, Status>
    where
        Req: prost::Message + Send + Sync + 'static,
        Res: prost::Message + Default + Send + Sync + 'static,
    {
        self.grpc
            .ready()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let mut req = Request::new(msg);
        if let Some(c) = &self.credential {
            let value = MetadataValue::try_from(c.as_str())
                .map_err(|_| Status::internal("credential is not a valid header value"))?;
            req.metadata_mut().insert(HEADER, value);
        }
        let res = self
            .grpc
            .unary(
                req,
                PathAndQuery::from_static(method),
                ProstCodec::<Req, Res>::default(),
            )
            .await;
        // The credential comes back on success and failure alike; empty
        // means "cleared" (logout).
        let metadata = match &res {
            Ok(r) => r.metadata(),
            Err(s) => s.metadata(),
        };
        if let Some(v) = metadata.get(HEADER).and_then(|v| v.to_str().ok()) {
            self.credential = (!v.is_empty()).then(|| v.to_owned());
        }
        res.map(Response::into_inner)
    }

    pub(crate) async fn login(&mut self, user: &str, password: &str) -> Result<String, Status> {
        let req = LoginRequest {
            user: user.into(),
            password: password.into(),
        };
        let reply: LoginReply = self.call("/trail.Shop/Login", req).await?;
        Ok(reply.user)
    }

    pub(crate) async fn add_to_cart(&mut self, item: &str) -> Result<u64, Status> {
        let req = CartRequest { item: item.into() };
        let reply: CartReply = self.call("/trail.Shop/AddToCart", req).await?;
        Ok(reply.items)
    }

    pub(crate) async fn history(&mut self, limit: u32) -> Result<HistoryReply, Status> {
        self.call("/trail.Shop/History", HistoryRequest { limit })
            .await
    }

    pub(crate) async fn logout(&mut self) -> Result<(), Status> {
        let _: Empty = self.call("/trail.Shop/Logout", Empty {}).await?;
        Ok(())
    }
}

/// What the client saw (`tests/tonic_example.rs` checks it).
#[derive(Debug)]
#[allow(dead_code)] // the example itself only prints
pub(crate) struct Report {
    /// Entries in the history page of a client without a session (an
    /// empty page, and no session created for asking).
    pub(crate) before_session: usize,
    pub(crate) wrong_password: Code,
    pub(crate) rotated_at_login: bool,
    pub(crate) cart_items: u64,
    pub(crate) history: HistoryReply,
    pub(crate) cleared_at_logout: bool,
    pub(crate) after_logout: usize,
}

/// The client's script: an anonymous cart, a refused and a good login (the
/// token rotates, the session and its cart stay), the history, logout.
/// Prints what happens.
///
/// # Errors
///
/// Any unexpected gRPC status or transport error.
pub(crate) async fn run_client(addr: SocketAddr) -> Result<Report, Box<dyn std::error::Error>> {
    let mut shop = ShopClient::connect(addr).await?;
    let unexpected = |what: &str| format!("{what} unexpectedly succeeded");

    let before = shop.history(10).await?;
    println!(
        "History, no session yet   → {} entries; credential issued: {}",
        before.entries.len(),
        shop.credential().is_some()
    );

    let n = shop.add_to_cart("book").await?;
    let anonymous = shop.credential().map(str::to_owned);
    println!(
        "AddToCart book, anonymous → {n} in the cart; credential issued in `{HEADER}` ({} bytes)",
        anonymous.as_deref().map_or(0, str::len)
    );

    let wrong = shop
        .login("alice", "guess")
        .await
        .err()
        .ok_or_else(|| unexpected("Login"))?;
    println!(
        "Login, wrong password     → {:?}: {}",
        wrong.code(),
        wrong.message()
    );

    let user = shop.login("alice", "alice-pw").await?;
    let rotated_at_login = anonymous.is_some() && shop.credential() != anonymous.as_deref();
    println!("Login                     → {user}; token rotated: {rotated_at_login}");

    let cart_items = shop.add_to_cart("coffee").await?;
    println!("AddToCart coffee          → {cart_items} in the cart (same session)");

    let history = shop.history(50).await?;
    println!(
        "History of session {}: {} entries, chain {}",
        history.session,
        history.entries.len(),
        if history.chain_ok {
            "verified".to_owned()
        } else {
            format!("BROKEN: {}", history.chain_error)
        }
    );
    for e in &history.entries {
        println!("  #{:<3} {:<18} {}", e.seq, e.kind, e.summary);
    }

    shop.logout().await?;
    let cleared_at_logout = shop.credential().is_none();
    println!("Logout                    → credential cleared: {cleared_at_logout}");
    let after = shop.history(10).await?;
    println!(
        "History after logout      → {} entries (no session)",
        after.entries.len()
    );

    Ok(Report {
        before_session: before.entries.len(),
        wrong_password: wrong.code(),
        rotated_at_login,
        cart_items,
        history,
        cleared_at_logout,
        after_logout: after.entries.len(),
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let layer = layer()?;
    let writer = layer.history_writer().cloned();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    println!("gRPC server on http://{addr} (credential in the `{HEADER}` header)\n");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, layer, async {
        let _ = stopped.await;
    }));

    let outcome = run_client(addr).await;

    let _ = stop.send(());
    server.await??;
    // Nothing queued is lost at exit.
    if let Some(w) = writer {
        w.shutdown(Duration::from_secs(5)).await?;
        println!("\nhistory writer: {} entries written", w.stats().written);
    }
    outcome.map(|_| ())
}
