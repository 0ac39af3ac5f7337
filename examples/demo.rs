//! The showcase: a small shop whose every request, login, rotation and
//! add-to-cart lands in a signed, chained history that a page shows as a
//! timeline.
//!
//! ```text
//! cargo run --release --example demo        # then open http://127.0.0.1:3000
//! DATABASE_URL=postgres://localhost/demo cargo run --release --example demo --features postgres
//! ```
//!
//! Plain HTTP on `127.0.0.1`/`localhost` is enough for a browser: both are
//! secure contexts, so the `Secure` cookie is kept. Set
//! `DEMO_INSECURE_COOKIE=1` to reach it over plain HTTP from elsewhere.
//!
//! | variable | effect |
//! |---|---|
//! | `DEMO_ADDR` | listen address, default `127.0.0.1:3000` |
//! | `REDIS_URL` | the Redis store (`redis://…`; `redis-cluster://h:p,h:p` or a comma-separated list: Redis Cluster); unset: the memory store |
//! | `DATABASE_URL` | `postgres://…`: sessions and history in PostgreSQL (needs `--features postgres`; the tables are created at start-up); with `REDIS_URL` too, sessions in Redis and history in PostgreSQL |
//! | `SESSION_KEY` | hex master key, at least 32 bytes; unset: a random key (with a warning) |
//! | `HISTORY_KEY` | checked, but history keys derive from `SESSION_KEY` (see `app::Settings::from_env`) |
//! | `DEMO_INSECURE_COOKIE=1` | no `Secure` attribute |
//! | `DEMO_ISSUE_ON_FIRST_VISIT=1` | a session on every first visit |
//! | `DEMO_HEADER=NAME` | the credential also travels in header `NAME` |
//! | `DEMO_CHECKPOINT_SECONDS=N` | the history writer signs a checkpoint every N seconds (default 30); `/api/history`'s verdict checks against them |
//! | `DEMO_SEED=N` | writes N synthetic sessions of the last eight weeks through the history writer at start-up, for `/insights` |
//! | `RUST_LOG` | log filter, default `info` |
//!
//! The JSON API (`/api/…`) is described in `app.rs`. With curl:
//!
//! ```text
//! curl -c jar -b jar -H 'content-type: application/json' \
//!      -d '{"user":"alice","password":"alice-pw"}' localhost:3000/api/login
//! curl -c jar -b jar -H 'content-type: application/json' -d '{"item":"book"}' localhost:3000/api/cart
//! curl -c jar -b jar localhost:3000/api/history
//! ```
//!
//! SIGINT or SIGTERM stops accepting connections, lets open requests
//! finish, then drains the history writer so nothing queued is lost.

#[path = "demo/app.rs"]
mod app;

use std::error::Error;
use std::process::ExitCode;
use std::time::Duration;

/// How long the history writer may take to write what is queued at exit.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() -> ExitCode {
    // Logs go to stderr; stdout carries only the line saying where the
    // server listens, for scripts that start it.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn Error>> {
    let settings = app::Settings::from_env(|name| std::env::var(name).ok())?;
    for warning in &settings.warnings {
        tracing::warn!("{warning}");
    }
    let layer = app::open(&settings).await?;
    if settings.seed > 0 {
        let writer = layer.history_writer().ok_or("the demo records history")?;
        app::seed(writer, settings.seed).await?;
        tracing::info!(
            sessions = settings.seed,
            "seeded synthetic history (DEMO_SEED)"
        );
    }
    serve(layer, &settings.addr).await
}

async fn serve(layer: app::Demo, addr: &str) -> Result<(), Box<dyn Error>> {
    let writer = layer
        .history_writer()
        .cloned()
        .ok_or("the demo records history")?;
    let router = app::router(&layer);
    drop(layer);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("DEMO_ADDR={addr}: {e}"))?;
    let addr = listener.local_addr()?;
    println!("session-trail demo listening on http://{addr}");
    app::serve(listener, router, shutdown_signal()).await?;

    tracing::info!(
        queued = writer.stats().queue_depth,
        "draining the history queue"
    );
    match writer.shutdown(DRAIN_DEADLINE).await {
        Ok(()) => {
            let s = writer.stats();
            tracing::info!(
                written = s.written,
                dropped = s.dropped,
                "history written; bye"
            );
            Ok(())
        }
        Err(e) => Err(format!("history not fully written at exit: {e}").into()),
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!("cannot listen for SIGINT: {e}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => tracing::info!("SIGINT: shutting down"),
        () = terminate => tracing::info!("SIGTERM: shutting down"),
    }
}
