//! Key rotation, written once and run on every store with
//! [`rotation_suite!`](crate::rotation_suite).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Extension;
use axum::extract::ConnectInfo;
use serde_json::Value;
use session_trail::store::{HistoryStore, SessionStore};
use session_trail::{Key, SessionId, SessionLayer};

use super::app::{Client, router};

const FIREFOX: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";
const CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36";

fn layer<S: SessionStore + HistoryStore + Clone>(
    store: &S,
    current: Key,
    previous: Option<Key>,
) -> SessionLayer {
    let mut b = SessionLayer::builder(store.clone(), current).history_writer(
        session_trail::history::WriterConfig::default().flush_interval(Duration::from_millis(5)),
    );
    if let Some(k) = previous {
        b = b.previous_key(k);
    }
    b.build().unwrap()
}

/// The app, with every request coming from `addr` (the `ConnectInfo`
/// extension a server made with `into_make_service_with_connect_info`
/// inserts), so the sessions get a network baseline.
fn app(layer: SessionLayer, addr: SocketAddr) -> axum::Router {
    router(layer).layer(Extension(ConnectInfo(addr)))
}

fn ndjson(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn session_of(c: &mut Client) -> String {
    c.json("GET", "/me").await["session"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A new signing key with the old one kept to verify changes no
/// pseudonym: the same client raises no `network_changed`, and export and
/// erasure still find every session the user had before the rotation.
pub async fn key_rotation_keeps_pseudonyms<S: SessionStore + HistoryStore + Clone>(store: S) {
    let key_a = Key::from_bytes(&super::secret(0xA1)).unwrap();
    let key_b = Key::from_bytes(&super::secret(0xB2)).unwrap();
    let addr: SocketAddr = "203.0.113.7:40000".parse().unwrap();
    let user = format!("user-{}", SessionId::generate());

    // Before the rotation: key A only.
    let layer_a = layer(&store, key_a.clone(), None);
    let app_a = app(layer_a.clone(), addr);
    let mut c = Client::new(app_a.clone());
    c.user_agent = Some(FIREFOX.into());
    assert!(
        c.send("POST", &format!("/login/{user}"))
            .await
            .status()
            .is_success()
    );
    c.send("GET", "/visits").await;
    c.send("GET", "/visits").await;
    let res = c
        .send_body(
            "POST",
            "/event/checkout",
            Some(serde_json::json!({"items": 2})),
        )
        .await;
    assert!(res.status().is_success());
    let sid = session_of(&mut c).await;
    // A second session of the same user, never used after the rotation:
    // only the user index can find it.
    let mut other = Client::new(app_a);
    other.user_agent = Some(CHROME.into());
    assert!(
        other
            .send("POST", &format!("/login/{user}"))
            .await
            .status()
            .is_success()
    );
    other.send("GET", "/visits").await;
    let other_sid = session_of(&mut other).await;
    layer_a.history_writer().unwrap().flush().await.unwrap();
    assert!(!super::history_json(&store, &other_sid).await.is_empty());

    // The rotation: key B signs, key A still verifies.
    let layer_b = layer(&store, key_b, Some(key_a));
    c.app = app(layer_b.clone(), addr);
    let me = c.json("GET", "/me").await;
    assert_eq!(me["user"], user.as_str(), "the old cookie still verifies");
    assert_eq!(me["session"], sid.as_str(), "the same session");
    c.send("GET", "/visits").await;
    layer_b.history_writer().unwrap().flush().await.unwrap();
    let history = super::history_json(&store, &sid).await;
    assert!(
        history
            .iter()
            .any(|e| e["kind"] == "started" && e["network"].is_string()),
        "the session has a network baseline: {history:?}"
    );
    assert!(
        !history.iter().any(|e| e["kind"] == "suspicious"),
        "same client, same network: nothing suspicious: {history:?}"
    );
    let users: HashSet<&str> = history.iter().filter_map(|e| e["user"].as_str()).collect();
    assert_eq!(
        users.len(),
        1,
        "one user pseudonym before and after: {history:?}"
    );

    // Export still finds the sessions linked before the rotation.
    let lines = ndjson(&c.text("GET", "/export").await);
    let sessions: HashSet<&str> = lines
        .iter()
        .map(|l| l["session"].as_str().unwrap())
        .collect();
    assert!(sessions.contains(sid.as_str()), "{sessions:?}");
    assert!(sessions.contains(other_sid.as_str()), "{sessions:?}");
    assert!(
        lines
            .iter()
            .any(|l| l["event"] == "checkout" && l["session"] == sid.as_str()),
        "{lines:?}"
    );
    assert!(lines.iter().all(|l| l["verified"] == true), "{lines:?}");

    // And erasure erases them.
    let receipt = c.json("DELETE", "/history").await;
    assert_eq!(receipt["sessions"], 2, "{receipt}");
    assert!(receipt["entries"].as_u64().unwrap() > 0, "{receipt}");
    layer_b.history_writer().unwrap().flush().await.unwrap();
    assert!(
        super::history_json(&store, &other_sid).await.is_empty(),
        "the other session's history is gone"
    );
    assert!(
        super::history_json(&store, &sid).await.is_empty(),
        "the current session's history is gone"
    );
}

#[macro_export]
macro_rules! rotation_suite {
    ($factory:expr) => {
        $crate::rotation_suite!(@tests $factory;
            key_rotation_keeps_pseudonyms,
        );
    };
    (@tests $factory:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let store = ($factory)().await;
                $crate::common::rotation::$name(store).await;
            }
        )*
    };
}
