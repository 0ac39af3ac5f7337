//! The store conformance suite: the same contract checked on every store.
//!
//! Use it with [`store_conformance!`](crate::store_conformance), giving an
//! async factory `|keep: usize| async { store }` that returns a fresh,
//! empty store keeping `keep` history entries per session.

use std::collections::HashMap;

use bytes::Bytes;
use serde_json::json;
use session_trail::history::{Draft, EntryKind, Options, verify};
use session_trail::store::{
    Append, AppendOutcome, HistoryStore, Record, Rotation, SessionStore, TokenHash, Update,
    UpdateOutcome, tag_of,
};
use session_trail::{Key, KeyRing, SessionId};

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

pub fn record(user: Option<&str>) -> Record {
    let now = now_ms();
    Record {
        id: SessionId::generate(),
        token_hash: TokenHash::from_bytes([1; 32]),
        replaced: None,
        user: user.map(str::to_owned),
        privilege: None,
        data: HashMap::from([("a".to_owned(), json!(1)), ("b".to_owned(), json!("two"))]),
        created: now,
        last_seen: now,
        idle_deadline: now + 60_000,
        absolute_deadline: now + 3_600_000,
        device: Some("Firefox on Linux".into()),
        network: None,
    }
}

/// `create` over an id that exists is refused (`ErrorKind::Conflict`, an id
/// collision) and changes nothing: the contract is the same in every
/// store, and none overwrites another session.
pub async fn create_never_overwrites_an_existing_id<S: SessionStore>(store: S) {
    let mut old = record(Some("alice"));
    old.privilege = Some("admin".into());
    old.replaced = Some(session_trail::store::Replaced {
        token_hash: TokenHash::from_bytes([9; 32]),
        at: now_ms(),
    });
    store.create(&old).await.unwrap();
    let mut fresh = record(None);
    fresh.id = old.id;
    fresh.token_hash = TokenHash::from_bytes([2; 32]);
    fresh.data = HashMap::from([("c".to_owned(), json!(3))]);
    fresh.device = None;
    let err = store.create(&fresh).await.unwrap_err();
    assert_eq!(err.kind(), session_trail::ErrorKind::Conflict, "{err:?}");
    assert_eq!(err.status(), http::StatusCode::INTERNAL_SERVER_ERROR);
    let back = store.load(&old.id).await.unwrap().expect("the old record");
    assert_eq!(back, old);
    let listed = store.sessions_of_user("alice").await.unwrap();
    assert!(listed.iter().any(|r| r.id == old.id), "{listed:?}");
}

pub async fn create_then_load_round_trips<S: SessionStore>(store: S) {
    let r = record(Some("alice"));
    store.create(&r).await.unwrap();
    let back = store
        .load(&r.id)
        .await
        .unwrap()
        .expect("stored record loads");
    assert_eq!(back, r);
    assert!(store.load(&SessionId::generate()).await.unwrap().is_none());
}

pub async fn update_requires_the_current_token<S: SessionStore>(store: S) {
    let r = record(None);
    store.create(&r).await.unwrap();
    let wrong = Update {
        token_hash: TokenHash::from_bytes([9; 32]),
        set: vec![("a".into(), json!(100))],
        ..Update::default()
    };
    assert_eq!(
        store.update(&r.id, &wrong).await.unwrap(),
        UpdateOutcome::Missing
    );
    assert_eq!(
        store.load(&r.id).await.unwrap().unwrap().data["a"],
        json!(1)
    );
}

pub async fn concurrent_updates_to_different_keys_both_survive<S: SessionStore>(store: S) {
    let r = record(None);
    store.create(&r).await.unwrap();
    let u1 = Update {
        token_hash: r.token_hash,
        set: vec![("a".into(), json!(10))],
        ..Update::default()
    };
    let u2 = Update {
        token_hash: r.token_hash,
        set: vec![("c".into(), json!([1, 2]))],
        remove: vec!["b".into()],
        ..Update::default()
    };
    let (x, y) = tokio::join!(store.update(&r.id, &u1), store.update(&r.id, &u2));
    assert_eq!(x.unwrap(), UpdateOutcome::Applied);
    assert_eq!(y.unwrap(), UpdateOutcome::Applied);
    let back = store.load(&r.id).await.unwrap().unwrap();
    assert_eq!(back.data["a"], json!(10));
    assert_eq!(back.data["c"], json!([1, 2]));
    assert!(!back.data.contains_key("b"));
}

pub async fn update_after_delete_does_not_resurrect<S: SessionStore>(store: S) {
    let r = record(Some("bob"));
    store.create(&r).await.unwrap();
    assert!(store.delete(&r.id).await.unwrap());
    assert!(!store.delete(&r.id).await.unwrap());
    let u = Update {
        token_hash: r.token_hash,
        set: vec![("a".into(), json!(2))],
        touch: Some((now_ms(), now_ms() + 60_000)),
        ..Update::default()
    };
    assert_eq!(
        store.update(&r.id, &u).await.unwrap(),
        UpdateOutcome::Missing
    );
    assert!(store.load(&r.id).await.unwrap().is_none());
    assert!(store.sessions_of_user("bob").await.unwrap().is_empty());
}

pub async fn rotation_replaces_the_token_and_keeps_the_old_hash<S: SessionStore>(store: S) {
    let r = record(None);
    store.create(&r).await.unwrap();
    let new = TokenHash::from_bytes([2; 32]);
    let at = now_ms();
    let u = Update {
        token_hash: r.token_hash,
        user: Some(Some("carol".into())),
        privilege: Some(Some("admin".into())),
        rotate: Some(Rotation {
            new_token_hash: new,
            at,
        }),
        ..Update::default()
    };
    assert_eq!(
        store.update(&r.id, &u).await.unwrap(),
        UpdateOutcome::Applied
    );
    let back = store.load(&r.id).await.unwrap().unwrap();
    assert_eq!(back.token_hash, new);
    let replaced = back.replaced.expect("old hash kept");
    assert_eq!(replaced.token_hash, r.token_hash);
    assert_eq!(replaced.at, at);
    assert_eq!(back.user.as_deref(), Some("carol"));
    assert_eq!(back.privilege.as_deref(), Some("admin"));
    // The old token no longer updates.
    let stale = Update {
        token_hash: r.token_hash,
        set: vec![("x".into(), json!(1))],
        ..Update::default()
    };
    assert_eq!(
        store.update(&r.id, &stale).await.unwrap(),
        UpdateOutcome::Missing
    );
}

pub async fn touch_moves_the_idle_deadline<S: SessionStore>(store: S) {
    let r = record(None);
    store.create(&r).await.unwrap();
    let later = now_ms() + 120_000;
    let u = Update {
        token_hash: r.token_hash,
        touch: Some((now_ms(), later)),
        ..Update::default()
    };
    assert_eq!(
        store.update(&r.id, &u).await.unwrap(),
        UpdateOutcome::Applied
    );
    assert_eq!(
        store.load(&r.id).await.unwrap().unwrap().idle_deadline,
        later
    );
}

pub async fn expired_records_load_as_expired_until_evicted<S: SessionStore>(store: S) {
    let mut r = record(Some("dave"));
    let now = now_ms();
    // Expired already, and evicted 300 ms from now.
    let linger = session_trail::store::EXPIRED_RECORD_LINGER.as_millis() as i64;
    r.idle_deadline = now + 300 - linger;
    store.create(&r).await.unwrap();
    let loaded = store
        .load(&r.id)
        .await
        .unwrap()
        .expect("an expired record still loads");
    assert!(loaded.is_expired(now_ms()));
    // Never listed, never updated.
    assert!(store.sessions_of_user("dave").await.unwrap().is_empty());
    let u = Update {
        token_hash: r.token_hash,
        set: vec![("k".into(), serde_json::json!(1))],
        ..Update::default()
    };
    assert_eq!(
        store.update(&r.id, &u).await.unwrap(),
        UpdateOutcome::Missing
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if store.load(&r.id).await.unwrap().is_none() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "expired record still loads after its eviction time"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

pub async fn user_index_follows_create_update_delete<S: SessionStore>(store: S) {
    let user = format!("erin-{}", SessionId::generate());
    let a = record(Some(&user));
    let b = record(None);
    store.create(&a).await.unwrap();
    store.create(&b).await.unwrap();
    let ids = |v: Vec<Record>| v.into_iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.sessions_of_user(&user).await.unwrap()),
        vec![a.id]
    );
    let login = Update {
        token_hash: b.token_hash,
        user: Some(Some(user.clone())),
        ..Update::default()
    };
    store.update(&b.id, &login).await.unwrap();
    let mut both = ids(store.sessions_of_user(&user).await.unwrap());
    both.sort();
    let mut want = vec![a.id, b.id];
    want.sort();
    assert_eq!(both, want);
    let logout = Update {
        token_hash: a.token_hash,
        user: Some(None),
        ..Update::default()
    };
    store.update(&a.id, &logout).await.unwrap();
    store.delete(&b.id).await.unwrap();
    assert!(store.sessions_of_user(&user).await.unwrap().is_empty());
}

/// `n` signed request entries of `sid`, from `from_seq`, chained after
/// `prev`.
pub fn chain(key: &Key, sid: &SessionId, from_seq: u64, prev: [u8; 16], n: usize) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut prev = prev;
    for i in 0..n {
        let d = if i % 2 == 0 {
            Draft::request("GET", "/x", 200, 10, None)
        } else {
            Draft::lifecycle(EntryKind::Started, &json!({"i": i}))
        };
        let b = d.sign(key, sid, from_seq + i as u64, &prev);
        prev = tag_of(&b).unwrap();
        out.push(b);
    }
    out
}

/// Starts `sid`'s history in `store` with `n` signed entries (see
/// [`chain`]); answers them.
pub async fn start_list<S: HistoryStore>(
    store: &S,
    key: &Key,
    sid: &SessionId,
    n: usize,
) -> Vec<Bytes> {
    let entries = chain(key, sid, 1, [0; 16], n);
    let out = store
        .append(&[Append {
            session: *sid,
            expected_head: None,
            entries: entries.clone(),
            token: None,
        }])
        .await
        .unwrap();
    assert_eq!(out, vec![AppendOutcome::Appended]);
    entries
}

/// Verifies `kept`, what a store kept of `sid`'s history under keep-`keep`
/// retention (no time window), asserts that it has no break, and answers
/// the verification (for `trimmed_before`).
pub fn assert_kept_chain(
    key: &Key,
    sid: &SessionId,
    kept: &[Bytes],
    keep: usize,
) -> session_trail::history::Verification {
    let v = verify(
        &KeyRing::new(key.clone()),
        sid,
        kept,
        Options {
            keep,
            window: false,
        },
    );
    assert!(v.is_ok(), "{:?}", v.breaks);
    v
}

pub async fn compare_and_append_contract<S: HistoryStore>(store: S) {
    let key = Key::generate();
    let sid = SessionId::generate();
    let first = chain(&key, &sid, 1, [0; 16], 3);
    let a1 = Append {
        session: sid,
        expected_head: None,
        token: None,
        entries: first.clone(),
    };
    assert_eq!(
        store.append(std::slice::from_ref(&a1)).await.unwrap(),
        vec![AppendOutcome::Appended]
    );
    // The same batch again (a retry after a lost ack): applied once only.
    assert_eq!(
        store.append(std::slice::from_ref(&a1)).await.unwrap(),
        vec![AppendOutcome::AlreadyApplied]
    );
    // A batch chained to a stale head conflicts and returns the last entry.
    let stale = Append {
        session: sid,
        expected_head: None,
        token: None,
        entries: chain(&key, &sid, 1, [0; 16], 1),
    };
    assert_eq!(
        store.append(&[stale]).await.unwrap(),
        vec![AppendOutcome::Conflict {
            last: Some(first[2].clone())
        }]
    );
    let next = chain(&key, &sid, 4, tag_of(&first[2]).unwrap(), 2);
    let a2 = Append {
        session: sid,
        expected_head: tag_of(&first[2]),
        token: None,
        entries: next.clone(),
    };
    assert_eq!(
        store.append(&[a2]).await.unwrap(),
        vec![AppendOutcome::Appended]
    );
    let all = store.read_all(&sid).await.unwrap();
    assert_eq!(all.len(), 5);
    assert_eq!(all[..3], first[..]);
    assert_eq!(all[3..], next[..]);
    assert!(verify(&KeyRing::new(key), &sid, &all, Options::default()).is_ok());
    assert_eq!(store.read_newest(&sid, 2).await.unwrap(), next);
    // An empty list conflicts with a non-empty expectation.
    let other = SessionId::generate();
    let orphan = Append {
        session: other,
        expected_head: Some([7; 16]),
        token: None,
        entries: chain(&Key::generate(), &other, 2, [7; 16], 1),
    };
    assert_eq!(
        store.append(&[orphan]).await.unwrap(),
        vec![AppendOutcome::Conflict { last: None }]
    );
    assert!(store.read_all(&other).await.unwrap().is_empty());
}

pub async fn one_call_appends_many_sessions_in_order<S: HistoryStore>(store: S) {
    let key = Key::generate();
    let sids: Vec<SessionId> = (0..20).map(|_| SessionId::generate()).collect();
    let batch: Vec<Append> = sids
        .iter()
        .map(|s| Append {
            session: *s,
            expected_head: None,
            token: None,
            entries: chain(&key, s, 1, [0; 16], 2),
        })
        .collect();
    let mut bad = batch.clone();
    bad[7].expected_head = Some([3; 16]);
    let out = store.append(&bad).await.unwrap();
    assert_eq!(out.len(), 20);
    for (i, o) in out.iter().enumerate() {
        if i == 7 {
            assert_eq!(*o, AppendOutcome::Conflict { last: None });
        } else {
            assert_eq!(*o, AppendOutcome::Appended);
        }
    }
    for (i, s) in sids.iter().enumerate() {
        assert_eq!(
            store.read_all(s).await.unwrap().len(),
            if i == 7 { 0 } else { 2 }
        );
    }
}

/// Needs a store built with keep = 5.
pub async fn keep_n_trims_the_oldest_and_verifies_as_trimmed<S: HistoryStore>(store: S) {
    assert_eq!(store.retention().keep, 5);
    let key = Key::generate();
    let sid = SessionId::generate();
    let entries = chain(&key, &sid, 1, [0; 16], 8);
    let mut head = None;
    for e in &entries {
        let a = Append {
            session: sid,
            expected_head: head,
            token: None,
            entries: vec![e.clone()],
        };
        assert_eq!(
            store.append(&[a]).await.unwrap(),
            vec![AppendOutcome::Appended]
        );
        head = tag_of(e);
    }
    let all = store.read_all(&sid).await.unwrap();
    assert_eq!(all, entries[3..]);
    let v = verify(
        &KeyRing::new(key),
        &sid,
        &all,
        Options {
            keep: 5,
            window: false,
        },
    );
    assert!(v.is_ok(), "{:?}", v.breaks);
    assert_eq!(v.trimmed_before, Some(4));
}

pub async fn history_delete_removes_a_session_only<S: HistoryStore>(store: S) {
    let key = Key::generate();
    let (s1, s2) = (SessionId::generate(), SessionId::generate());
    for s in [s1, s2] {
        let a = Append {
            session: s,
            expected_head: None,
            token: None,
            entries: chain(&key, &s, 1, [0; 16], 3),
        };
        store.append(&[a]).await.unwrap();
    }
    assert_eq!(store.delete(&s1).await.unwrap(), 3);
    assert_eq!(store.delete(&s1).await.unwrap(), 0);
    assert!(store.read_all(&s1).await.unwrap().is_empty());
    assert_eq!(store.read_all(&s2).await.unwrap().len(), 3);
}

pub async fn appends_with_a_token_need_the_live_record<S: SessionStore + HistoryStore>(store: S) {
    let key = Key::generate();
    let r = record(None);
    store.create(&r).await.unwrap();
    let entry = |seq: u64, prev: [u8; 16]| {
        Draft::request("GET", "/", 200, 1, None).sign(&key, &r.id, seq, &prev)
    };
    let e1 = entry(1, [0; 16]);
    let append = |expected_head, entries, token| Append {
        session: r.id,
        expected_head,
        entries,
        token,
    };
    // Another token: refused, nothing appended.
    let other = Some(TokenHash::from_bytes([9; 32]));
    assert_eq!(
        store
            .append(&[append(None, vec![e1.clone()], other)])
            .await
            .unwrap(),
        vec![AppendOutcome::TokenMismatch { replaced_at: None }]
    );
    assert!(store.read_all(&r.id).await.unwrap().is_empty());
    // The record's own token: appended.
    assert_eq!(
        store
            .append(&[append(None, vec![e1.clone()], Some(r.token_hash))])
            .await
            .unwrap(),
        vec![AppendOutcome::Appended]
    );
    // After a rotation the old token is refused, and said to be replaced.
    let at = now_ms();
    let rotate = Update {
        token_hash: r.token_hash,
        rotate: Some(Rotation {
            new_token_hash: TokenHash::from_bytes([2; 32]),
            at,
        }),
        ..Update::default()
    };
    assert_eq!(
        store.update(&r.id, &rotate).await.unwrap(),
        UpdateOutcome::Applied
    );
    let e2 = entry(2, tag_of(&e1).unwrap());
    assert_eq!(
        store
            .append(&[append(tag_of(&e1), vec![e2.clone()], Some(r.token_hash))])
            .await
            .unwrap(),
        vec![AppendOutcome::TokenMismatch {
            replaced_at: Some(at)
        }]
    );
    assert_eq!(
        store
            .append(&[append(
                tag_of(&e1),
                vec![e2],
                Some(TokenHash::from_bytes([2; 32]))
            )])
            .await
            .unwrap(),
        vec![AppendOutcome::Appended]
    );
    // No record, or an expired one: refused.
    let gone = Append {
        session: SessionId::generate(),
        expected_head: None,
        entries: vec![entry(1, [0; 16])],
        token: Some(r.token_hash),
    };
    assert_eq!(
        store.append(&[gone]).await.unwrap(),
        vec![AppendOutcome::TokenMismatch { replaced_at: None }]
    );
    let mut expired = record(None);
    expired.idle_deadline = now_ms() - 1;
    store.create(&expired).await.unwrap();
    let late = Append {
        session: expired.id,
        expected_head: None,
        entries: vec![Draft::request("GET", "/", 200, 1, None).sign(
            &key,
            &expired.id,
            1,
            &[0; 16],
        )],
        token: Some(expired.token_hash),
    };
    assert_eq!(
        store.append(&[late]).await.unwrap(),
        vec![AppendOutcome::TokenMismatch { replaced_at: None }]
    );
}

pub async fn an_erased_history_answers_erased_not_conflict<S: HistoryStore>(store: S) {
    let key = Key::generate();
    let sid = SessionId::generate();
    let e = |seq: u64, prev: [u8; 16]| {
        Draft::request("GET", "/", 200, seq, None).sign(&key, &sid, seq, &prev)
    };
    let e1 = e(1, [0; 16]);
    let e2 = e(2, tag_of(&e1).unwrap());
    let a = |expected_head, entries| Append {
        session: sid,
        expected_head,
        entries,
        token: None,
    };
    assert_eq!(
        store
            .append(&[a(None, vec![e1, e2.clone()])])
            .await
            .unwrap(),
        vec![AppendOutcome::Appended]
    );
    assert_eq!(HistoryStore::delete(&store, &sid).await.unwrap(), 2);
    // A writer that still knows the old head learns of the erasure.
    let e3 = e(3, tag_of(&e2).unwrap());
    assert_eq!(
        store
            .append(&[a(tag_of(&e2), vec![e3.clone()])])
            .await
            .unwrap(),
        vec![AppendOutcome::Erased { last: None }]
    );
    let f1 = e(1, [0; 16]);
    assert_eq!(
        store.append(&[a(None, vec![f1.clone()])]).await.unwrap(),
        vec![AppendOutcome::Appended]
    );
    assert_eq!(
        store.append(&[a(tag_of(&e2), vec![e3])]).await.unwrap(),
        vec![AppendOutcome::Erased { last: Some(f1) }]
    );
}

pub async fn claims_enforce_the_session_limit<S: SessionStore>(store: S) {
    use session_trail::SessionLimit::{EndOldest, RefuseNew};
    use session_trail::store::Claim;
    let user = format!("limited-{}", SessionId::generate());
    let now = now_ms();
    let mut a = record(Some(&user));
    a.created = now - 2_000;
    a.absolute_deadline = now + 1_000_000;
    let mut b = record(Some(&user));
    b.created = now - 1_000;
    b.absolute_deadline = now + 2_000_000;
    store.create(&a).await.unwrap();
    store.create(&b).await.unwrap();
    let (c, d) = (SessionId::generate(), SessionId::generate());
    let abs = now + 3_000_000;
    let claim = |id: &SessionId, max, policy| {
        let id = *id;
        let (store, user) = (&store, &user);
        async move {
            store
                .claim_user_slot(user, &id, abs, max, policy)
                .await
                .unwrap()
        }
    };
    assert_eq!(claim(&c, 2, RefuseNew).await, Claim::Refused);
    assert_eq!(
        claim(&c, 3, RefuseNew).await,
        Claim::Granted { end: vec![] }
    );
    // The claimed place counts before its login is saved.
    assert_eq!(claim(&d, 3, RefuseNew).await, Claim::Refused);
    assert_eq!(
        claim(&d, 3, EndOldest).await,
        Claim::Granted { end: vec![a.id] }
    );
    // A session being ended for a login stays listed until it is ended,
    // but no longer counts.
    let listed: Vec<SessionId> = store
        .sessions_of_user(&user)
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert!(listed.contains(&a.id), "{listed:?}");
    let e = SessionId::generate();
    assert_eq!(
        claim(&e, 3, EndOldest).await,
        Claim::Granted { end: vec![b.id] }
    );
    // Only logins in progress fill the limit now: they cannot be ended.
    assert_eq!(
        claim(&SessionId::generate(), 3, EndOldest).await,
        Claim::Refused
    );
    // Logins that were not saved give their places back, and the sessions
    // they were to end count again.
    store.release_user_slot(&user, &d, &[a.id]).await.unwrap();
    store.release_user_slot(&user, &e, &[b.id]).await.unwrap();
    store.release_user_slot(&user, &c, &[]).await.unwrap();
    assert_eq!(claim(&c, 2, RefuseNew).await, Claim::Refused);
    assert_eq!(
        claim(&c, 3, RefuseNew).await,
        Claim::Granted { end: vec![] }
    );
}

/// Generates one `#[tokio::test]` per contract point for a store factory
/// `|keep: usize| async { store }`.
#[macro_export]
macro_rules! store_conformance {
    ($factory:expr) => {
        $crate::store_conformance!(@tests $factory;
            create_then_load_round_trips,
            create_never_overwrites_an_existing_id,
            update_requires_the_current_token,
            concurrent_updates_to_different_keys_both_survive,
            update_after_delete_does_not_resurrect,
            rotation_replaces_the_token_and_keeps_the_old_hash,
            touch_moves_the_idle_deadline,
            expired_records_load_as_expired_until_evicted,
            user_index_follows_create_update_delete,
            compare_and_append_contract,
            one_call_appends_many_sessions_in_order,
            history_delete_removes_a_session_only,
            appends_with_a_token_need_the_live_record,
            an_erased_history_answers_erased_not_conflict,
            claims_enforce_the_session_limit,
        );
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn checkpoints_are_kept_once_and_read_back() {
            let store = ($factory)(1000).await;
            $crate::common::checkpoints::checkpoints_are_kept_once_and_read_back(store).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn erased_at_answers_the_time_of_the_erasure() {
            let store = ($factory)(1000).await;
            $crate::common::checkpoints::erased_at_answers_the_time_of_the_erasure(store).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn keep_n_trims_the_oldest_and_verifies_as_trimmed() {
            let store = ($factory)(5).await;
            $crate::common::conformance::keep_n_trims_the_oldest_and_verifies_as_trimmed(store).await;
        }
    };
    (@tests $factory:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let store = ($factory)(1000).await;
                $crate::common::conformance::$name(store).await;
            }
        )*
    };
}
