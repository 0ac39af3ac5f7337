//! Times a user's export and erase at scale: 100 sessions × 100 entries,
//! on the memory store and on a redis-server this bench starts itself
//! (or `REDIS_URL`).
//!
//! ```text
//! cargo bench --bench erase_export
//! ```

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::routing::{delete, get, post};
use futures_util::StreamExt;
use http::Request;
use http_body_util::BodyExt;
use session_trail::history::{Draft, WriterConfig};
use session_trail::store::{HistoryStore, MemoryStore, RedisStore, SessionStore};
use session_trail::{Key, Session, SessionLayer};
use tower::ServiceExt;

const SESSIONS: usize = 100;
const ENTRIES: usize = 100;

fn app(layer: SessionLayer) -> Router {
    Router::new()
        .route(
            "/login",
            post(|s: Session| async move {
                s.set_user(Some("export-user".into())).await?;
                Ok::<_, session_trail::Error>(s.id().await?.unwrap().to_string())
            }),
        )
        .route(
            "/export",
            get(|s: Session| async move {
                let stream = s.export().await?;
                Ok::<_, session_trail::Error>(Body::from_stream(stream))
            }),
        )
        .route(
            "/history",
            delete(|s: Session| async move {
                Ok::<_, session_trail::Error>(axum::Json(s.erase_history().await?))
            }),
        )
        .layer(layer)
}

async fn run<S: SessionStore + HistoryStore + Clone>(name: &str, store: S) {
    let layer = SessionLayer::builder(store, Key::generate())
        .cookie_secure(false)
        .history_writer(WriterConfig::default().queue_entries(1 << 20))
        .build()
        .unwrap();
    let writer = layer.history_writer().unwrap().clone();
    let app = app(layer);
    let mut cookie = String::new();
    for _ in 0..SESSIONS {
        let res = app
            .clone()
            .oneshot(Request::post("/login").body(Body::empty()).unwrap())
            .await
            .unwrap();
        cookie = res.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned();
        let sid = String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec())
            .unwrap();
        // The login wrote 3 entries (started, privilege_changed, request).
        let drafts = (0..ENTRIES - 3)
            .map(|i| Draft::request("GET", &format!("/item/{i}"), 200, 10, None))
            .collect();
        writer.enqueue(sid.parse().unwrap(), drafts);
    }
    let t = Instant::now();
    writer.flush().await.unwrap();
    let write = t.elapsed();

    let t = Instant::now();
    let req = Request::get("/export")
        .header("cookie", &cookie)
        .body(Body::empty())
        .unwrap();
    let res = app.clone().oneshot(req).await.unwrap();
    let first = t.elapsed();
    let mut stream = res.into_body().into_data_stream();
    let (mut lines, mut frames) = (0usize, 0usize);
    let mut first_frame = None;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        first_frame.get_or_insert_with(|| t.elapsed());
        frames += 1;
        lines += chunk.iter().filter(|b| **b == b'\n').count();
    }
    let export = t.elapsed();

    let t = Instant::now();
    let req = Request::delete("/history")
        .header("cookie", &cookie)
        .body(Body::empty())
        .unwrap();
    let res = app.clone().oneshot(req).await.unwrap();
    let receipt =
        String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    let erase = t.elapsed();
    println!(
        "{name}: write {SESSIONS}x{ENTRIES} flushed in {write:?}; export {lines} lines in {frames} frames: \
         headers after {first:?}, first line after {:?}, done in {export:?} ({:.0} entries/s); \
         erase in {erase:?}: {receipt}",
        first_frame.unwrap_or_default(),
        lines as f64 / export.as_secs_f64(),
    );
}

struct OwnRedis(Child);

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn own_redis() -> (String, Option<OwnRedis>) {
    if let Ok(url) = std::env::var("REDIS_URL") {
        return (url, None);
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server not found: apt-get install -y redis-server");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (format!("redis://127.0.0.1:{port}"), Some(OwnRedis(child)))
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        run("memory", MemoryStore::new()).await;
        let (url, _server) = own_redis();
        run("redis", RedisStore::connect(url).await.unwrap()).await;
    });
}
