//! The store conformance suite on the in-memory store.

mod common;

use std::time::Duration;

use session_trail::store::MemoryStore;

store_conformance!(|keep: usize| async move {
    MemoryStore::new()
        .history_retention(keep, Duration::from_secs(3600))
        .unwrap()
});

/// An append without a token.
fn append_to(
    session: session_trail::SessionId,
    expected_head: Option<[u8; 16]>,
    entries: Vec<bytes::Bytes>,
) -> session_trail::store::Append {
    session_trail::store::Append {
        session,
        expected_head,
        entries,
        token: None,
    }
}

/// A history past its TTL is gone, as in the other stores, also before
/// eviction has reached it: an append chained to its old head is a
/// conflict, one that starts a new list is taken, and a read answers the
/// new entries only.
#[tokio::test]
async fn an_expired_history_starts_afresh_before_eviction() {
    use session_trail::store::{AppendOutcome, HistoryStore};
    use session_trail::{Key, SessionId};
    let store = MemoryStore::new()
        .history_retention(100, Duration::from_secs(1))
        .unwrap();
    let key = Key::generate();
    let sid = SessionId::generate();
    let old = common::conformance::chain(&key, &sid, 1, [0; 16], 2);
    let append = |head, entries| append_to(sid, head, entries);
    let out = store.append(&[append(None, old.clone())]).await.unwrap();
    assert_eq!(out, vec![AppendOutcome::Appended]);
    common::app::eventually(5, "the history to expire", || async {
        store.read_all(&sid).await.unwrap().is_empty().then_some(())
    })
    .await;
    let old_head = session_trail::store::tag_of(old.last().unwrap());
    let more = common::conformance::chain(&key, &sid, 3, old_head.unwrap(), 1);
    let out = store.append(&[append(old_head, more)]).await.unwrap();
    assert!(matches!(out[0], AppendOutcome::Conflict { .. }), "{out:?}");
    let fresh = common::conformance::chain(&key, &sid, 1, [0; 16], 1);
    let out = store.append(&[append(None, fresh.clone())]).await.unwrap();
    assert_eq!(out, vec![AppendOutcome::Appended]);
    assert_eq!(store.read_all(&sid).await.unwrap(), fresh);
}

/// A history never expires before its TTL has passed since its last
/// append: appended at 0 s, 0.5 s and 2.2 s with a TTL of 2 s, it keeps
/// all three entries.
#[tokio::test]
async fn a_history_in_use_outlives_its_ttl() {
    use session_trail::store::{AppendOutcome, HistoryStore, tag_of};
    use session_trail::{Key, SessionId};
    let store = MemoryStore::new()
        .history_retention(100, Duration::from_secs(2))
        .unwrap();
    let key = Key::generate();
    let sid = SessionId::generate();
    let all = common::conformance::chain(&key, &sid, 1, [0; 16], 3);
    // Wall-clock time passes between appends: the TTL is measured
    // against it.
    let pauses = [500, 1700, 0];
    for (i, entry) in all.iter().enumerate() {
        let head = i.checked_sub(1).and_then(|p| tag_of(&all[p]));
        let out = store
            .append(&[append_to(sid, head, vec![entry.clone()])])
            .await
            .unwrap();
        assert_eq!(out, vec![AppendOutcome::Appended], "append {i}");
        tokio::time::sleep(Duration::from_millis(pauses[i])).await;
    }
    assert_eq!(store.read_all(&sid).await.unwrap(), all);
}
