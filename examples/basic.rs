//! The smallest useful app: a visit counter with login and logout.
//!
//! ```text
//! cargo run --example basic
//! curl -c jar -b jar localhost:3000/          # visit 1, 2, …
//! curl -c jar -b jar -X POST localhost:3000/login/alice
//! curl -c jar -b jar localhost:3000/history
//! curl -c jar -b jar -X POST localhost:3000/logout
//! ```

use std::net::SocketAddr;

use axum::extract::Path;
use axum::routing::{get, post};
use axum::{Json, Router};
use session_trail::store::MemoryStore;
use session_trail::{Key, Session, SessionLayer};

async fn visit(session: Session) -> Result<String, session_trail::Error> {
    let n: u64 = session.get("visits").await?.unwrap_or(0) + 1;
    session.insert("visits", n).await?;
    let user = session.user().await?.unwrap_or_else(|| "stranger".into());
    Ok(format!("hello {user}, visit {n}\n"))
}

async fn login(session: Session, Path(user): Path<String>) -> Result<String, session_trail::Error> {
    // Changing the user makes the layer rotate the token on the way out.
    session.set_user(Some(user.clone())).await?;
    Ok(format!("logged in as {user}\n"))
}

async fn logout(session: Session) -> Result<&'static str, session_trail::Error> {
    session.destroy().await?;
    Ok("bye\n")
}

async fn history(session: Session) -> Result<Json<serde_json::Value>, session_trail::Error> {
    Ok(Json(session.history(20).await?.to_json()))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A random key: sessions do not survive a restart. Load a persistent
    // secret (Key::from_hex) in a real deployment.
    let layer = SessionLayer::builder(MemoryStore::new(), Key::generate())
        // Plain HTTP on localhost; keep the default (Secure) behind TLS.
        .cookie_secure(false)
        .build()?;
    let writer = layer.history_writer().cloned();
    let app = Router::new()
        .route("/", get(visit))
        .route("/login/{user}", post(login))
        .route("/logout", post(logout))
        .route("/history", get(history))
        .layer(layer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://{}", listener.local_addr()?);
    // With the peer address (ConnectInfo) the layer records each session's
    // network and flags a session used from another one (`network_changed`).
    // Behind a proxy, use `.client_address(ClientAddress::Header(..))`.
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    if let Some(w) = writer {
        w.shutdown(std::time::Duration::from_secs(5)).await?;
    }
    Ok(())
}
