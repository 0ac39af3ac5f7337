//! Users' control of sessions and history, written once and run on every
//! store with [`users_suite!`](crate::users_suite).

use std::time::Duration;

use serde_json::Value;
use session_trail::store::{HistoryStore, SessionStore};
use session_trail::{Key, SessionLayer, SessionLimit};

use super::app::{Client, body_json, router};

fn key() -> Key {
    Key::from_bytes(&super::secret(77)).unwrap()
}

pub fn layer<S: SessionStore + HistoryStore + Clone>(store: &S) -> SessionLayer {
    SessionLayer::builder(store.clone(), key())
        .history_writer(
            session_trail::history::WriterConfig::default()
                .flush_interval(Duration::from_millis(5)),
        )
        .build()
        .unwrap()
}

pub fn user_name() -> String {
    format!("user-{}", session_trail::SessionId::generate())
}

async fn login(app: &axum::Router, user: &str, ua: &str) -> Client {
    let mut c = Client::new(app.clone());
    c.user_agent = Some(ua.into());
    let res = c.send("POST", &format!("/login/{user}")).await;
    assert!(res.status().is_success());
    c
}

const FIREFOX: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";
const CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36";

pub async fn listing_shows_the_users_sessions_and_marks_the_current<
    S: SessionStore + HistoryStore + Clone,
>(
    store: S,
) {
    let app = router(layer(&store));
    let user = user_name();
    let mut a = login(&app, &user, FIREFOX).await;
    let _b = login(&app, &user, CHROME).await;
    let _other = login(&app, &user_name(), CHROME).await;
    let list = a.json("GET", "/sessions").await;
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2, "{list:?}");
    let current: Vec<&Value> = list.iter().filter(|s| s["current"] == true).collect();
    assert_eq!(current.len(), 1);
    assert_eq!(current[0]["device"], "Firefox on Linux");
    assert!(list.iter().any(|s| s["device"] == "Chrome on Windows"));
    for s in list {
        assert!(
            s["created"].as_str().unwrap().contains('T'),
            "RFC 3339: {s}"
        );
        assert!(s["last_seen"].is_string());
    }
    // Anonymous: 401.
    let mut anon = Client::new(app.clone());
    assert_eq!(anon.send("GET", "/sessions").await.status(), 401);
}

pub async fn revoking_works_for_own_sessions_only<S: SessionStore + HistoryStore + Clone>(
    store: S,
) {
    let app = router(layer(&store));
    let user = user_name();
    let mut a = login(&app, &user, FIREFOX).await;
    let mut b = login(&app, &user, CHROME).await;
    let mut mallory = login(&app, &user_name(), CHROME).await;
    let b_id = b.json("GET", "/me").await["session"]
        .as_str()
        .unwrap()
        .to_owned();
    // Someone else's session: not found, and it survives.
    assert_eq!(
        mallory
            .send("DELETE", &format!("/sessions/{b_id}"))
            .await
            .status(),
        404
    );
    assert_eq!(
        mallory.send("DELETE", "/sessions/not-an-id").await.status(),
        404
    );
    assert_eq!(b.json("GET", "/me").await["user"], user.as_str());
    // Own session: revoked, and it ends.
    assert_eq!(
        a.send("DELETE", &format!("/sessions/{b_id}"))
            .await
            .status(),
        204
    );
    assert_eq!(b.json("GET", "/me").await["anonymous"], true);
    assert_eq!(
        a.json("GET", "/sessions").await.as_array().unwrap().len(),
        1
    );
}

pub async fn revoke_others_keeps_only_the_current_session<
    S: SessionStore + HistoryStore + Clone,
>(
    store: S,
) {
    let app = router(layer(&store));
    let user = user_name();
    let mut a = login(&app, &user, FIREFOX).await;
    let mut others = Vec::new();
    for _ in 0..3 {
        others.push(login(&app, &user, CHROME).await);
    }
    assert_eq!(a.json("POST", "/revoke-others").await["revoked"], 3);
    for o in &mut others {
        assert_eq!(o.json("GET", "/me").await["anonymous"], true);
    }
    assert_eq!(a.json("GET", "/me").await["user"], user.as_str());
    assert_eq!(
        a.json("GET", "/sessions").await.as_array().unwrap().len(),
        1
    );
}

pub async fn the_session_limit_refuses_or_ends_the_oldest<
    S: SessionStore + HistoryStore + Clone,
>(
    store: S,
) {
    // Refuse.
    let l = SessionLayer::builder(store.clone(), key())
        .max_sessions_per_user(2, SessionLimit::RefuseNew)
        .build()
        .unwrap();
    let app = router(l);
    let user = user_name();
    login(&app, &user, FIREFOX).await;
    login(&app, &user, FIREFOX).await;
    let mut third = Client::new(app.clone());
    let res = third.send("POST", &format!("/login/{user}")).await;
    assert_eq!(res.status(), 409);
    assert!(
        body_json(res).await["error"]
            .as_str()
            .unwrap()
            .contains("session limit")
    );
    // End the oldest.
    let l = SessionLayer::builder(store.clone(), key())
        .max_sessions_per_user(2, SessionLimit::EndOldest)
        .history_writer(
            session_trail::history::WriterConfig::default()
                .flush_interval(Duration::from_millis(5)),
        )
        .build()
        .unwrap();
    let writer = l.history_writer().unwrap().clone();
    let app = router(l);
    let user = user_name();
    let mut first = login(&app, &user, FIREFOX).await;
    let first_id: session_trail::SessionId = first.json("GET", "/me").await["session"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let mut second = login(&app, &user, FIREFOX).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let mut third = login(&app, &user, FIREFOX).await;
    assert_eq!(
        first.json("GET", "/me").await["anonymous"],
        true,
        "the oldest ended"
    );
    assert_eq!(second.json("GET", "/me").await["user"], user.as_str());
    assert_eq!(third.json("GET", "/me").await["user"], user.as_str());
    writer.flush().await.unwrap();
    let raw = store.read_all(&first_id).await.unwrap();
    let ended: Vec<Value> = raw
        .iter()
        .map(|b| session_trail::history::Entry::decode(b).unwrap().to_json())
        .filter(|e| e["kind"] == "ended")
        .collect();
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0]["reason"], "session_limit");
}

fn ndjson(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

pub async fn export_covers_every_session_with_verified_chains<
    S: SessionStore + HistoryStore + Clone,
>(
    store: S,
) {
    let app = router(layer(&store));
    let user = user_name();
    let mut a = login(&app, &user, FIREFOX).await;
    a.send_body(
        "POST",
        "/event/add_to_cart",
        Some(serde_json::json!({"item": "book"})),
    )
    .await;
    let a_id = a.json("GET", "/me").await["session"].clone();
    let mut b = login(&app, &user, CHROME).await;
    let b_id = b.json("GET", "/me").await["session"].clone();
    // Ended sessions are exported too.
    b.send("POST", "/logout").await;
    let lines = ndjson(&a.text("GET", "/export").await);
    let sessions: std::collections::HashSet<String> = lines
        .iter()
        .map(|l| l["session"].as_str().unwrap().to_owned())
        .collect();
    assert!(sessions.contains(a_id.as_str().unwrap()));
    assert!(sessions.contains(b_id.as_str().unwrap()));
    assert_eq!(sessions.len(), 2);
    assert!(lines.iter().all(|l| l["verified"] == true), "{lines:?}");
    assert!(lines.iter().any(|l| l["event"] == "add_to_cart"));
    assert!(
        lines
            .iter()
            .any(|l| l["kind"] == "ended" && l["session"] == b_id)
    );
    for l in &lines {
        assert!(l["seq"].is_u64() && l["mac"].is_string() && l["prev"].is_string());
    }
}

pub async fn erase_then_export_is_empty_and_re_erasing_is_harmless<
    S: SessionStore + HistoryStore + Clone,
>(
    store: S,
) {
    let app = router(layer(&store));
    let user = user_name();
    let mut a = login(&app, &user, FIREFOX).await;
    let mut b = login(&app, &user, CHROME).await;
    for _ in 0..3 {
        a.send("GET", "/visits").await;
        b.send("GET", "/visits").await;
    }
    // The export request's own entry may be exported too, or not yet
    // (it is written while the export streams): not counted here.
    let before = ndjson(&a.text("GET", "/export").await)
        .iter()
        .filter(|l| l["path"] != "/export")
        .count() as u64;
    let receipt = a.json("DELETE", "/history").await;
    assert_eq!(receipt["sessions"], 2);
    // The export request itself was recorded before the erase.
    assert_eq!(
        receipt["entries"].as_u64().unwrap(),
        before + 1,
        "{receipt}"
    );
    assert!(
        !receipt.to_string().contains(&user),
        "no personal data in the receipt"
    );
    assert_eq!(receipt["user"].as_str().unwrap().len(), 16);
    assert_eq!(
        a.text("GET", "/export").await,
        "",
        "erase then export is empty"
    );
    let again = a.json("DELETE", "/history").await;
    assert_eq!(again["user"], receipt["user"]);
    // Only the one export request recorded since the first erase.
    assert!(again["entries"].as_u64().unwrap() <= 1, "{again}");
    assert_eq!(
        a.json("GET", "/me").await["user"],
        user.as_str(),
        "still logged in"
    );
}

async fn suspicious(
    store: &(impl HistoryStore + Clone),
    sid: &session_trail::SessionId,
) -> Vec<Value> {
    store
        .read_all(sid)
        .await
        .unwrap()
        .iter()
        .map(|b| session_trail::history::Entry::decode(b).unwrap().to_json())
        .filter(|e| e["kind"] == "suspicious")
        .collect()
}

pub async fn a_user_agent_change_is_recorded_as_suspicious<
    S: SessionStore + HistoryStore + Clone,
>(
    store: S,
) {
    let l = layer(&store);
    let writer = l.history_writer().unwrap().clone();
    let app = router(l);
    let mut a = login(&app, &user_name(), FIREFOX).await;
    let sid = a.json("GET", "/me").await["session"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    a.user_agent = Some(CHROME.into());
    assert_eq!(
        a.json("GET", "/me").await["anonymous"],
        false,
        "recorded, not logged out"
    );
    a.json("GET", "/me").await;
    writer.flush().await.unwrap();
    let s = suspicious(&store, &sid).await;
    assert_eq!(s.len(), 1, "one change is recorded once: {s:?}");
    assert_eq!(s[0]["signal"], "device_changed");
    assert_eq!(s[0]["detail"]["from"], "Firefox on Linux");
    assert_eq!(s[0]["detail"]["to"], "Chrome on Windows");
}

pub async fn replaying_a_rotated_token_is_recorded_as_suspicious<
    S: SessionStore + HistoryStore + Clone,
>(
    store: S,
) {
    let l = SessionLayer::builder(store.clone(), key())
        .rotation_grace(Duration::from_millis(1))
        .history_writer(
            session_trail::history::WriterConfig::default()
                .flush_interval(Duration::from_millis(5)),
        )
        .build()
        .unwrap();
    let writer = l.history_writer().unwrap().clone();
    let app = router(l);
    let mut a = login(&app, &user_name(), FIREFOX).await;
    let sid = a.json("GET", "/me").await["session"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let old = a.cookie.clone();
    a.send("POST", "/elevate").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut replay = a.fork();
    replay.cookie = old;
    assert_eq!(replay.json("GET", "/me").await["anonymous"], true);
    writer.flush().await.unwrap();
    let s = suspicious(&store, &sid).await;
    assert_eq!(s.len(), 1, "{s:?}");
    assert_eq!(s[0]["signal"], "replaced_token_reused");
    // The default hook records only: the real user is still logged in.
    assert_eq!(a.json("GET", "/me").await["privilege"], "admin");
    // A revoked session's credential used again is recorded too.
    let mut b = login(&app, &user_name(), FIREFOX).await;
    let b_sid = b.json("GET", "/me").await["session"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let kept = b.cookie.clone();
    b.send("POST", "/logout").await;
    writer.flush().await.unwrap();
    // Past the grace window: a request in flight at the logout is no
    // replay.
    tokio::time::sleep(Duration::from_millis(20)).await;
    b.cookie = kept;
    assert_eq!(b.json("GET", "/me").await["anonymous"], true);
    writer.flush().await.unwrap();
    let s = suspicious(&store, &b_sid).await;
    assert_eq!(s.len(), 1, "{s:?}");
    assert_eq!(s[0]["signal"], "ended_session_used");
}

pub async fn erase_of_100_sessions_by_100_entries_completes_and_export_streams<
    S: SessionStore + HistoryStore + Clone,
>(
    store: S,
) {
    use http_body_util::BodyExt;
    use session_trail::history::Draft;
    let l = layer(&store);
    let writer = l.history_writer().unwrap().clone();
    let app = router(l);
    let user = user_name();
    let mut clients = Vec::new();
    for _ in 0..100 {
        clients.push(login(&app, &user, FIREFOX).await);
    }
    for c in &mut clients {
        // started, privilege_changed, login request, this request: 4 entries.
        let sid = c.json("GET", "/me").await["session"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let drafts = (0..96)
            .map(|i| Draft::request("GET", &format!("/item/{i}"), 200, 10, None))
            .collect();
        assert!(writer.enqueue(sid, drafts));
    }
    writer.flush().await.unwrap();
    // The export streams: many body frames, one NDJSON line per entry.
    let res = clients[0].send("GET", "/export").await;
    assert_eq!(res.status(), 200);
    let mut body = res.into_body();
    let (mut frames, mut all) = (0, Vec::new());
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            frames += 1;
            all.extend_from_slice(&data);
        }
    }
    // The export request's own entry is written while the export streams:
    // it may or may not be read, depending on timing. Every other entry is.
    let exported = ndjson(&String::from_utf8(all).unwrap());
    let own = exported.iter().filter(|l| l["path"] == "/export").count();
    assert!(own <= 1, "{own}");
    assert_eq!(exported.len() - own, 100 * 100);
    assert!(frames >= 100, "streamed in {frames} frames");
    let receipt = clients[0].json("DELETE", "/history").await;
    assert_eq!(receipt["sessions"], 100);
    // Everything exported, plus the export request itself.
    assert_eq!(receipt["entries"], 100 * 100 + 1);
    assert_eq!(clients[0].text("GET", "/export").await, "");
}

#[macro_export]
macro_rules! users_suite {
    ($factory:expr) => {
        $crate::users_suite!(@tests $factory;
            listing_shows_the_users_sessions_and_marks_the_current,
            revoking_works_for_own_sessions_only,
            revoke_others_keeps_only_the_current_session,
            the_session_limit_refuses_or_ends_the_oldest,
            export_covers_every_session_with_verified_chains,
            erase_then_export_is_empty_and_re_erasing_is_harmless,
            a_user_agent_change_is_recorded_as_suspicious,
            replaying_a_rotated_token_is_recorded_as_suspicious,
            erase_of_100_sessions_by_100_entries_completes_and_export_streams,
        );
    };
    (@tests $factory:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let store = ($factory)().await;
                $crate::common::users::$name(store).await;
            }
        )*
    };
}
