//! Users' control of sessions and history on the in-memory store.

mod common;

use session_trail::store::MemoryStore;

users_suite!(|| async { MemoryStore::new() });

mod hook_responses {
    use super::common::app::{Client, router};
    use session_trail::store::{HistoryStore, MemoryStore};
    use session_trail::{Key, SessionLayer, SuspicionResponse};

    const FIREFOX: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";
    const CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36";

    async fn setup(response: SuspicionResponse) -> (MemoryStore, SessionLayer, Client) {
        let store = MemoryStore::new();
        let layer = SessionLayer::builder(store.clone(), Key::generate())
            .on_suspicious(move |_, _| response)
            .build()
            .unwrap();
        let mut c = Client::new(router(layer.clone()));
        c.user_agent = Some(FIREFOX.into());
        c.send("POST", "/login/hook-user").await;
        (store, layer, c)
    }

    async fn kinds(store: &MemoryStore, layer: &SessionLayer, sid: &str) -> Vec<serde_json::Value> {
        layer.history_writer().unwrap().flush().await.unwrap();
        store
            .read_all(&sid.parse().unwrap())
            .await
            .unwrap()
            .iter()
            .map(|b| session_trail::history::Entry::decode(b).unwrap().to_json())
            .filter(|e| e["kind"] != "request")
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_end_response_ends_the_session_and_says_why() {
        let (store, layer, mut c) = setup(SuspicionResponse::End).await;
        let sid = c.json("GET", "/me").await["session"]
            .as_str()
            .unwrap()
            .to_owned();
        c.user_agent = Some(CHROME.into());
        assert_eq!(c.json("GET", "/me").await["anonymous"], true);
        c.user_agent = Some(FIREFOX.into());
        assert_eq!(
            c.json("GET", "/me").await["anonymous"],
            true,
            "the session is gone"
        );
        let entries = kinds(&store, &layer, &sid).await;
        assert!(
            entries.iter().any(|e| e["kind"] == "suspicious"
                && e["signal"] == "device_changed"
                && e["action"] == "ended"),
            "{entries:?}"
        );
        assert!(
            entries
                .iter()
                .any(|e| e["kind"] == "ended" && e["reason"] == "suspicious"),
            "{entries:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_rotate_response_rotates_and_keeps_the_user_logged_in() {
        let (store, layer, mut c) = setup(SuspicionResponse::Rotate).await;
        let sid = c.json("GET", "/me").await["session"]
            .as_str()
            .unwrap()
            .to_owned();
        let before = c.cookie.clone();
        c.user_agent = Some(CHROME.into());
        assert_eq!(c.json("GET", "/me").await["user"], "hook-user");
        assert_ne!(c.cookie, before, "the token rotated");
        assert_eq!(c.json("GET", "/me").await["user"], "hook-user");
        let entries = kinds(&store, &layer, &sid).await;
        let suspicious: Vec<_> = entries
            .iter()
            .filter(|e| e["kind"] == "suspicious")
            .collect();
        assert_eq!(
            suspicious.len(),
            1,
            "the new client became the baseline: {entries:?}"
        );
        assert_eq!(suspicious[0]["action"], "rotated");
        assert!(
            entries
                .iter()
                .any(|e| e["kind"] == "rotated" && e["reason"] == "regenerate")
        );
    }
}
