//! The layer around a real tonic gRPC server, driven by a tonic client over
//! TCP with the credential in a metadata header.
#![cfg(feature = "tonic")]

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::PathAndQuery;
use session_trail::store::MemoryStore;
use session_trail::{Key, Session, SessionLayer};
use tonic::body::Body;
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;

#[derive(Clone, PartialEq, prost::Message)]
struct Text {
    #[prost(string, tag = "1")]
    text: String,
}

type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send>>;

fn session(req: &Request<Text>) -> Result<Session, Status> {
    req.extensions()
        .get::<Session>()
        .cloned()
        .ok_or_else(|| Status::internal("session layer missing"))
}

/// One unary method: `Login` sets the user, `Record` records an event,
/// `Whoami` answers the user and the number of history entries.
#[derive(Clone, Copy)]
struct Method(&'static str);

impl UnaryService<Text> for Method {
    type Response = Text;
    type Future = BoxFut<Result<Response<Text>, Status>>;

    fn call(&mut self, req: Request<Text>) -> Self::Future {
        let name = self.0;
        Box::pin(async move {
            let s = session(&req)?;
            let arg = req.into_inner().text;
            let text = match name {
                "Login" => {
                    s.set_user(Some(arg)).await?;
                    "ok".to_owned()
                }
                "Record" => {
                    s.record(&arg, serde_json::json!({"via": "grpc"})).await?;
                    "recorded".to_owned()
                }
                _ => {
                    let user = s.user().await?.unwrap_or_default();
                    let page = s.history(100).await?;
                    let events = page
                        .entries
                        .iter()
                        .filter(|e| e.to_json()["event"] == arg)
                        .count();
                    format!("{user} {events} {}", page.verification.is_ok())
                }
            };
            Ok(Response::new(Text { text }))
        })
    }
}

#[derive(Clone)]
struct Demo;

impl NamedService for Demo {
    const NAME: &'static str = "demo.Demo";
}

impl tower::Service<http::Request<Body>> for Demo {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFut<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        Box::pin(async move {
            let method = match req.uri().path() {
                "/demo.Demo/Login" => Method("Login"),
                "/demo.Demo/Record" => Method("Record"),
                _ => Method("Whoami"),
            };
            Ok(Grpc::new(ProstCodec::<Text, Text>::default())
                .unary(method, req)
                .await)
        })
    }
}

async fn call(
    client: &mut tonic::client::Grpc<tonic::transport::Channel>,
    method: &'static str,
    text: &str,
    token: &mut Option<String>,
) -> Result<String, Status> {
    client
        .ready()
        .await
        .map_err(|e| Status::unknown(e.to_string()))?;
    let mut req = Request::new(Text { text: text.into() });
    req.metadata_mut()
        .insert("x-session", token.as_deref().unwrap_or("").parse().unwrap());
    let path = PathAndQuery::from_static(method);
    let res = client
        .unary(req, path, ProstCodec::<Text, Text>::default())
        .await?;
    if let Some(v) = res.metadata().get("x-session") {
        *token = Some(v.to_str().unwrap().to_owned());
    }
    Ok(res.into_inner().text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tonic_server_behind_the_layer_logs_in_records_and_reads_history() {
    let store = MemoryStore::new();
    let layer = SessionLayer::builder(store.clone(), Key::generate())
        .without_cookie()
        .header("x-session")
        .build()
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tonic::transport::Server::builder()
        .layer(layer)
        .add_service(Demo)
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    let server = tokio::spawn(server);

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap();
    let mut client = tonic::client::Grpc::new(channel);
    let mut token = None;

    assert_eq!(
        call(&mut client, "/demo.Demo/Login", "dana", &mut token)
            .await
            .unwrap(),
        "ok"
    );
    let first = token
        .clone()
        .expect("the login answer carries the credential");
    assert_eq!(
        call(&mut client, "/demo.Demo/Record", "checkout", &mut token)
            .await
            .unwrap(),
        "recorded"
    );
    assert_eq!(
        token.as_deref(),
        Some(first.as_str()),
        "no rotation without a privilege change"
    );
    let who = call(&mut client, "/demo.Demo/Whoami", "checkout", &mut token)
        .await
        .unwrap();
    assert_eq!(who, "dana 1 true");

    // A store outage is a gRPC UNAVAILABLE, not an HTTP error.
    store.session_faults().set_down(true);
    let err = call(&mut client, "/demo.Demo/Whoami", "checkout", &mut token)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    store.session_faults().set_down(false);
    assert!(
        call(&mut client, "/demo.Demo/Whoami", "x", &mut token)
            .await
            .unwrap()
            .starts_with("dana")
    );
    server.abort();
}

#[tokio::test]
async fn grpc_status_hides_store_error_text() {
    use tower::ServiceExt;

    // An application's `?` on a session error.
    let status: Status = session_trail::Error::unavailable("secret-redis-detail").into();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(
        !status.message().contains("secret-redis-detail"),
        "{status:?}"
    );
    assert_eq!(
        status.message(),
        "session store unavailable; try again shortly"
    );

    // The layer's own answer when saving fails after the handler.
    let store = MemoryStore::new();
    let layer = SessionLayer::builder(store.clone(), Key::generate())
        .without_history()
        .build()
        .unwrap();
    let app = axum::Router::new()
        .route(
            "/Shop/Visit",
            axum::routing::post(|s: Session| async move {
                s.insert("visits", 1).await?;
                Ok::<_, session_trail::Error>("")
            }),
        )
        .layer(layer);
    store.session_faults().fail_next(1);
    let req = http::Request::post("/Shop/Visit")
        .header("content-type", "application/grpc")
        .body(axum::body::Body::empty())
        .unwrap();
    let res = app.oneshot(req).await.unwrap();
    assert_eq!(res.headers()["grpc-status"], "14");
    let message = res.headers()["grpc-message"].to_str().unwrap();
    assert_eq!(message, "session store unavailable; try again shortly");
}
