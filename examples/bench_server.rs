//! The server the load benchmark drives (`bench/load.sh`).
//!
//! ```text
//! cargo run --release --example bench_server -- VARIANT PORT
//! ```
//!
//! Variants: `bare` (axum, no layer), `memory`, `memory-nohistory`, `redis`,
//! `redis-nohistory`, `redis-cached` (Redis at `REDIS_URL`, default
//! `redis://127.0.0.1:6379`). History is recorded in `memory`, `redis` and
//! `redis-cached`; `redis-cached` also turns on the Redis store's local
//! cache (`RedisStoreBuilder::local_cache`).
//!
//! Routes: `GET /` loads a counter from the session, increments and saves
//! it, and answers the number; `GET /static` touches nothing; `POST /login`
//! sets a user and rotates the token.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use session_trail::{Key, Session, SessionLayer, SessionLayerBuilder};

async fn counter(session: Session) -> Result<String, session_trail::Error> {
    let n: u64 = session.get("n").await?.unwrap_or(0) + 1;
    session.insert("n", n).await?;
    Ok(n.to_string())
}

async fn login(session: Session) -> Result<&'static str, session_trail::Error> {
    session.set_user(Some("bench-user".into())).await?;
    // Rotate on every login, also when the user was already logged in, so
    // each request measures a rotation.
    session.regenerate().await?;
    Ok("ok")
}

fn routes() -> Router {
    Router::new()
        .route("/", get(counter))
        .route("/static", get(|| async { "static" }))
        .route("/login", post(login))
}

fn bare() -> Router {
    // The same work without sessions: a counter that is not kept.
    Router::new()
        .route("/", get(|| async { "1" }))
        .route("/static", get(|| async { "static" }))
        .route("/login", post(|| async { "ok" }))
}

fn configure(b: SessionLayerBuilder, history: bool) -> SessionLayerBuilder {
    // Plain HTTP on loopback.
    let b = b.cookie_secure(false);
    if history { b } else { b.without_history() }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let variant = args.next().unwrap_or_else(|| "memory".into());
    let port: u16 = args.next().map_or(Ok(3000), |p| p.parse())?;
    // A constant key (not one byte repeated: `Key` refuses that), so the
    // load benchmark's runs are alike.
    let key = Key::from_bytes(b"session-trail bench_server key!!")?;
    let (app, writer) = match variant.as_str() {
        "bare" => (bare(), None),
        "memory" | "memory-nohistory" => {
            let store = session_trail::store::MemoryStore::new();
            let layer =
                configure(SessionLayer::builder(store, key), variant == "memory").build()?;
            let w = layer.history_writer().cloned();
            (routes().layer(layer), w)
        }
        #[cfg(feature = "redis")]
        "redis" | "redis-nohistory" | "redis-cached" => {
            use session_trail::store::{
                DEFAULT_LOCAL_CACHE_CAPACITY, DEFAULT_LOCAL_CACHE_MAX_AGE, RedisStore,
            };
            let url =
                std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
            let mut builder = RedisStore::builder(url);
            if variant == "redis-cached" {
                builder =
                    builder.local_cache(DEFAULT_LOCAL_CACHE_CAPACITY, DEFAULT_LOCAL_CACHE_MAX_AGE);
            }
            let store = builder.connect().await?;
            let history = variant != "redis-nohistory";
            let layer = configure(SessionLayer::builder(store, key), history).build()?;
            let w = layer.history_writer().cloned();
            (routes().layer(layer), w)
        }
        other => return Err(format!("unknown variant {other:?}").into()),
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("bench_server {variant} listening on http://{addr}");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    if let Some(w) = writer {
        w.shutdown(Duration::from_secs(10)).await?;
        eprintln!("history: {:?}", w.stats());
    }
    Ok(())
}
