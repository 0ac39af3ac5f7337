//! `peer_server VARIANT PORT`: tower-sessions with the same three routes as
//! session-trail's `bench_server`. Variants: `ts-memory` (signed cookies),
//! `ts-redis` (Redis at `REDIS_URL`, default `redis://127.0.0.1:6379`),
//! `ts-postgres` (`tower-sessions-sqlx-store`'s `PostgresStore` at
//! `DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/postgres`,
//! migrated at start-up; a pool of `PG_POOL` connections, default
//! `PG_POOL_SIZE`, the same as session-trail's `bench_server`), and
//! `ts-sqlite` (its `SqliteStore` in the file at `SQLITE_PATH`, default
//! `bench-sqlite.db`, created when missing, migrated at start-up; WAL with
//! `synchronous = NORMAL`, as session-trail's SQLite store; sqlx's default
//! pool).

use std::net::SocketAddr;

use axum::Router;
use axum::routing::{get, post};
use tower_sessions::cookie::Key;
use tower_sessions::{MemoryStore, Session, SessionManagerLayer, SessionStore};

/// The pool size of `ts-postgres`: as session-trail's `bench_server`
/// (see its `PG_POOL_SIZE` for the measurements).
const PG_POOL_SIZE: u32 = 8;

async fn counter(session: Session) -> String {
    let n: u64 = session.get("n").await.unwrap().unwrap_or(0) + 1;
    session.insert("n", n).await.unwrap();
    n.to_string()
}

async fn login(session: Session) -> &'static str {
    session.cycle_id().await.unwrap();
    session.insert("user", "bench-user").await.unwrap();
    "ok"
}

fn app<S: SessionStore + Clone>(store: S) -> Router {
    let layer = SessionManagerLayer::new(store)
        .with_secure(false)
        .with_signed(Key::from(&[0x5e; 64]));
    Router::new()
        .route("/", get(counter))
        .route("/static", get(|| async { "static" }))
        .route("/login", post(login))
        .layer(layer)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let variant = args.next().unwrap_or_else(|| "ts-memory".into());
    let port: u16 = args.next().map_or(Ok(3000), |p| p.parse())?;
    let router = match variant.as_str() {
        "ts-memory" => app(MemoryStore::default()),
        "ts-redis" => {
            use tower_sessions_redis_store::RedisStore;
            use tower_sessions_redis_store::fred::prelude::*;
            let url =
                std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
            let pool = Pool::new(Config::from_url(&url)?, None, None, None, 6)?;
            let _ = pool.connect();
            pool.wait_for_connect().await?;
            app(RedisStore::new(pool))
        }
        "ts-postgres" => {
            use tower_sessions_sqlx_store::PostgresStore;
            use tower_sessions_sqlx_store::sqlx::postgres::PgPoolOptions;
            let url = std::env::var("DATABASE_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
            let size = match std::env::var("PG_POOL") {
                Ok(n) => n.parse()?,
                Err(_) => PG_POOL_SIZE,
            };
            let pool = PgPoolOptions::new()
                .max_connections(size)
                .connect(&url)
                .await?;
            let store = PostgresStore::new(pool);
            store.migrate().await?;
            app(store)
        }
        "ts-sqlite" => {
            use tower_sessions_sqlx_store::SqliteStore;
            use tower_sessions_sqlx_store::sqlx::sqlite::{
                SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
            };
            let path = std::env::var("SQLITE_PATH").unwrap_or_else(|_| "bench-sqlite.db".into());
            let options = SqliteConnectOptions::new()
                .filename(path)
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal);
            let pool = SqlitePoolOptions::new().connect_with(options).await?;
            let store = SqliteStore::new(pool);
            store.migrate().await?;
            app(store)
        }
        other => return Err(format!("unknown variant {other:?}").into()),
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("peer_server {variant} listening on http://{addr}");
    axum::serve(listener, router).await?;
    Ok(())
}
