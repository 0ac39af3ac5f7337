//! Property tests of the chain verifier: every kind of tampering is reported
//! exactly where it happened, and nowhere else.

use bytes::Bytes;
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::json;
use session_trail::history::{BreakKind, Draft, EntryKind, Options, Verification, verify};
use session_trail::{Key, KeyRing, SessionId};

const LIFECYCLE: [EntryKind; 6] = [
    EntryKind::Started,
    EntryKind::Rotated,
    EntryKind::PrivilegeChanged,
    EntryKind::Ended,
    EntryKind::Gap,
    EntryKind::Suspicious,
];

/// What a random chain is made of.
#[derive(Clone, Debug)]
struct Spec {
    secret: [u8; 32],
    sid: [u8; 16],
    /// One per entry: which constructor builds it.
    kinds: Vec<u8>,
}

fn spec(len: std::ops::Range<usize>) -> impl Strategy<Value = Spec> {
    (
        any::<[u8; 32]>(),
        any::<[u8; 16]>(),
        prop::collection::vec(0u8..8, len),
    )
        .prop_map(|(secret, sid, kinds)| Spec { secret, sid, kinds })
}

/// A chain of 2..40 entries.
fn chain_spec() -> impl Strategy<Value = Spec> {
    spec(2..40)
}

struct Chain {
    key: Key,
    sid: SessionId,
    drafts: Vec<Draft>,
    entries: Vec<Bytes>,
}

impl Chain {
    fn ring(&self) -> KeyRing {
        KeyRing::new(self.key.clone())
    }

    fn verify(&self, entries: &[Bytes]) -> Verification {
        verify(&self.ring(), &self.sid, entries, Options::default())
    }
}

fn draft(i: usize, code: u8) -> Draft {
    match code {
        0 | 1 => Draft::request("GET", "/api/visits", 200, 850 + i as u64, Some([7; 8])),
        2 => Draft::request("POST", "/login/{user}", 303, i as u64, None),
        3 | 4 => Draft::event("add_to_cart", &json!({ "item": i })).unwrap(),
        k => Draft::lifecycle(
            LIFECYCLE[(usize::from(k) + i) % LIFECYCLE.len()],
            &json!({ "n": i }),
        ),
    }
}

fn tag(entry: &[u8]) -> [u8; 16] {
    entry[entry.len() - 16..].try_into().unwrap()
}

/// Signs `drafts` as one session's chain, seq 1.., each entry signed by the
/// key `signer(index)` picks.
fn sign_chain<'k>(
    drafts: &[Draft],
    sid: &SessionId,
    signer: impl Fn(usize) -> &'k Key,
) -> Vec<Bytes> {
    let mut prev = [0u8; 16];
    let mut out = Vec::with_capacity(drafts.len());
    for (i, d) in drafts.iter().enumerate() {
        let bytes = d.sign(signer(i), sid, i as u64 + 1, &prev);
        prev = tag(&bytes);
        out.push(bytes);
    }
    out
}

/// The key of a generated secret. `Key` refuses a secret that is one byte
/// repeated, which proptest can generate or shrink to: such a secret gets
/// its last byte flipped.
fn key_of(secret: [u8; 32]) -> Key {
    let mut secret = secret;
    if secret.iter().all(|&b| b == secret[0]) {
        secret[31] ^= 0xff;
    }
    Key::from_bytes(&secret).unwrap()
}

fn build(spec: &Spec) -> Chain {
    let key = key_of(spec.secret);
    let sid = SessionId::from_bytes(spec.sid);
    let drafts: Vec<Draft> = spec
        .kinds
        .iter()
        .enumerate()
        .map(|(i, &k)| draft(i, k))
        .collect();
    let entries = sign_chain(&drafts, &sid, |_| &key);
    Chain {
        key,
        sid,
        drafts,
        entries,
    }
}

fn positions(v: &Verification) -> Vec<usize> {
    v.breaks.iter().map(|b| b.position).collect()
}

/// A key that is certainly not `key`.
fn other_key(key: &Key, secret: [u8; 32]) -> Key {
    let k = key_of(secret);
    if k.id() == key.id() {
        key_of(secret.map(|b| !b))
    } else {
        k
    }
}

/// A session id that is certainly not `sid`.
fn other_sid(sid: &SessionId, bytes: [u8; 16]) -> SessionId {
    if &bytes == sid.as_bytes() {
        SessionId::from_bytes(bytes.map(|b| !b))
    } else {
        SessionId::from_bytes(bytes)
    }
}

/// What to insert into a chain.
#[derive(Clone, Debug)]
enum Forgery {
    /// Arbitrary bytes.
    Random(Vec<u8>),
    /// Entry `at` of the chain signed, with the same seq and prev, for
    /// another session.
    OtherSession { at: Index, sid: [u8; 16] },
    /// Entry `at` of the chain signed, with the same seq and prev, by a key
    /// that is not in the ring.
    UnknownKey { at: Index, secret: [u8; 32] },
}

fn forgery() -> impl Strategy<Value = Forgery> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200).prop_map(Forgery::Random),
        (any::<Index>(), any::<[u8; 16]>()).prop_map(|(at, sid)| Forgery::OtherSession { at, sid }),
        (any::<Index>(), any::<[u8; 32]>())
            .prop_map(|(at, secret)| Forgery::UnknownKey { at, secret }),
    ]
}

fn forge(chain: &Chain, f: &Forgery) -> Bytes {
    let prev_of = |i: usize| {
        if i == 0 {
            [0; 16]
        } else {
            tag(&chain.entries[i - 1])
        }
    };
    match f {
        Forgery::Random(bytes) => Bytes::from(bytes.clone()),
        Forgery::OtherSession { at, sid } => {
            let i = at.index(chain.entries.len());
            let sid = other_sid(&chain.sid, *sid);
            chain.drafts[i].sign(&chain.key, &sid, i as u64 + 1, &prev_of(i))
        }
        Forgery::UnknownKey { at, secret } => {
            let i = at.index(chain.entries.len());
            let key = other_key(&chain.key, *secret);
            chain.drafts[i].sign(&key, &chain.sid, i as u64 + 1, &prev_of(i))
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// An untouched chain verifies, with nothing trimmed.
    #[test]
    fn untouched_chain_verifies(spec in chain_spec()) {
        let c = build(&spec);
        let v = c.verify(&c.entries);
        prop_assert!(v.is_ok(), "{:?}", v.breaks);
        prop_assert_eq!(v.entries, c.entries.len());
        prop_assert_eq!(v.trimmed_before, None);
    }

    /// A chain signed by an old key verifies while the key is in the ring;
    /// without it, every entry is `UnknownKey` and nothing else is reported.
    /// A chain whose key was rotated part-way verifies with both keys.
    #[test]
    fn old_keys_verify_only_while_in_the_ring(
        spec in chain_spec(),
        new_secret in any::<[u8; 32]>(),
        rotate_at in any::<Index>(),
    ) {
        let c = build(&spec);
        let new = other_key(&c.key, new_secret);
        let with_old = KeyRing::new(new.clone()).with_previous(c.key.clone());
        let v = verify(&with_old, &c.sid, &c.entries, Options::default());
        prop_assert!(v.is_ok(), "{:?}", v.breaks);

        let without_old = KeyRing::new(new.clone());
        let v = verify(&without_old, &c.sid, &c.entries, Options::default());
        prop_assert_eq!(positions(&v), (0..c.entries.len()).collect::<Vec<_>>());
        prop_assert!(v.breaks.iter().all(|b| b.kind == BreakKind::UnknownKey), "{:?}", v.breaks);

        let k = rotate_at.index(c.entries.len() + 1);
        let rotated = sign_chain(&c.drafts, &c.sid, |i| if i < k { &c.key } else { &new });
        let v = verify(&with_old, &c.sid, &rotated, Options::default());
        prop_assert!(v.is_ok(), "{:?}", v.breaks);
    }

    /// One flipped bit anywhere in entry i is reported at i and only there.
    #[test]
    fn bit_flip_is_reported_exactly_there(
        spec in chain_spec(),
        at in any::<Index>(),
        byte in any::<Index>(),
        bit in 0u8..8,
    ) {
        let c = build(&spec);
        let i = at.index(c.entries.len());
        let mut entries = c.entries.clone();
        let mut e = entries[i].to_vec();
        let b = byte.index(e.len());
        e[b] ^= 1 << bit;
        entries[i] = Bytes::from(e);
        let v = c.verify(&entries);
        prop_assert_eq!(positions(&v), vec![i], "{:?}", v.breaks);
        prop_assert!(
            matches!(v.breaks[0].kind, BreakKind::BadTag | BreakKind::Malformed | BreakKind::UnknownKey),
            "{:?}", v.breaks
        );
    }

    /// Deleting any entry but the newest is one `Missing` break for exactly
    /// its seq, at the position it left.
    #[test]
    fn deletion_is_reported_as_missing_at_its_place(spec in chain_spec(), at in any::<Index>()) {
        let c = build(&spec);
        let i = at.index(c.entries.len() - 1);
        let mut entries = c.entries.clone();
        entries.remove(i);
        let v = c.verify(&entries);
        let seq = i as u64 + 1;
        prop_assert_eq!(positions(&v), vec![i], "{:?}", v.breaks);
        prop_assert_eq!(v.breaks[0].kind, BreakKind::Missing { from: seq, to: seq });
    }

    /// The documented limit: cutting off the newest entries leaves a chain
    /// that verifies.
    #[test]
    fn deleting_the_newest_entries_is_not_detectable(spec in chain_spec(), cut in any::<Index>()) {
        let c = build(&spec);
        let keep = 1 + cut.index(c.entries.len() - 1);
        let v = c.verify(&c.entries[..keep]);
        prop_assert!(v.is_ok(), "{:?}", v.breaks);
    }

    /// A forged entry (garbage, another session's entry, an entry signed
    /// with an unknown key) inserted anywhere is reported there and only
    /// there.
    #[test]
    fn forged_insertion_is_reported_exactly_there(
        spec in chain_spec(),
        at in any::<Index>(),
        f in forgery(),
    ) {
        let c = build(&spec);
        let i = at.index(c.entries.len() + 1);
        let mut entries = c.entries.clone();
        entries.insert(i, forge(&c, &f));
        let v = c.verify(&entries);
        prop_assert_eq!(positions(&v), vec![i], "{:?}", v.breaks);
        let kind = v.breaks[0].kind;
        match f {
            Forgery::Random(_) => prop_assert!(
                matches!(kind, BreakKind::Malformed | BreakKind::UnknownKey | BreakKind::BadTag),
                "{:?}", kind
            ),
            Forgery::OtherSession { .. } => prop_assert_eq!(kind, BreakKind::BadTag),
            Forgery::UnknownKey { .. } => prop_assert_eq!(kind, BreakKind::UnknownKey),
        }
    }

    /// A copy of entry j inserted anywhere is one `Duplicate`, reported at
    /// one of the two identical copies.
    #[test]
    fn replayed_copy_is_one_duplicate(spec in chain_spec(), from in any::<Index>(), to in any::<Index>()) {
        let c = build(&spec);
        let j = from.index(c.entries.len());
        let i = to.index(c.entries.len() + 1);
        let mut entries = c.entries.clone();
        entries.insert(i, c.entries[j].clone());
        let original = if i <= j { j + 1 } else { j };
        let v = c.verify(&entries);
        prop_assert_eq!(v.breaks.len(), 1, "{:?}", v.breaks);
        prop_assert!(v.breaks[0].position == i || v.breaks[0].position == original, "{:?}", v.breaks);
        prop_assert_eq!(v.breaks[0].kind, BreakKind::Duplicate);
    }

    /// Swapping two entries is reported, and only at the two swapped
    /// positions.
    #[test]
    fn swap_is_reported_only_at_the_swapped_positions(
        spec in chain_spec(),
        a in any::<Index>(),
        b in any::<Index>(),
    ) {
        let c = build(&spec);
        let n = c.entries.len();
        let i = a.index(n);
        let j = (i + 1 + b.index(n - 1)) % n;
        prop_assume!(i != j);
        let mut entries = c.entries.clone();
        entries.swap(i, j);
        let v = c.verify(&entries);
        let pos = positions(&v);
        prop_assert!(!pos.is_empty());
        prop_assert!(pos.iter().all(|&p| p == i || p == j), "swap {} {}: {:?}", i, j, v.breaks);
    }

    /// Retention: a list as long as `keep` whose oldest entries are gone
    /// verifies and says where it was trimmed; the same cut on a list
    /// shorter than `keep` is `Missing` at position 0.
    #[test]
    fn trimmed_chain_verifies_only_at_the_retention_limit(
        spec in chain_spec(),
        cut in any::<Index>(),
        keep_pick in any::<Index>(),
        short_pick in any::<Index>(),
    ) {
        let c = build(&spec);
        let n = c.entries.len();
        let k = 1 + cut.index(n - 1); // entries removed: 1..n-1
        let rest = &c.entries[k..];
        let first_seq = k as u64 + 1;

        let keep = 1 + keep_pick.index(rest.len()); // 1..=rest.len()
        let v = verify(&c.ring(), &c.sid, rest, Options { keep, window: false });
        prop_assert!(v.is_ok(), "{:?}", v.breaks);
        prop_assert_eq!(v.trimmed_before, Some(first_seq));

        let keep = rest.len() + 1 + short_pick.index(1000);
        let v = verify(&c.ring(), &c.sid, rest, Options { keep, window: false });
        prop_assert_eq!(v.trimmed_before, None);
        prop_assert_eq!(positions(&v), vec![0], "{:?}", v.breaks);
        prop_assert_eq!(v.breaks[0].kind, BreakKind::Missing { from: 1, to: k as u64 });
    }

    /// A newest-N window verifies with `window: true`.
    #[test]
    fn newest_window_verifies(spec in chain_spec(), cut in any::<Index>()) {
        let c = build(&spec);
        let k = cut.index(c.entries.len());
        let options = Options { window: true, ..Options::default() };
        let v = verify(&c.ring(), &c.sid, &c.entries[k..], options);
        prop_assert!(v.is_ok(), "{:?}", v.breaks);
    }
}

/// The retention limit with the default options: 1,000 entries kept of a
/// longer chain.
#[test]
fn default_keep_trims_a_long_chain() {
    let c = build(&Spec {
        secret: *b"0123456789abcdef0123456789abcdef",
        sid: [2; 16],
        kinds: (0..1005).map(|i| (i % 8) as u8).collect(),
    });
    let keep = Options::default().keep;
    assert_eq!(keep, 1000);
    let v = c.verify(&c.entries[c.entries.len() - keep..]);
    assert!(v.is_ok(), "{:?}", v.breaks);
    assert_eq!(v.trimmed_before, Some(6));
    // One more entry removed, and the list is shorter than `keep`.
    let v = c.verify(&c.entries[c.entries.len() - keep + 1..]);
    assert_eq!(positions(&v), vec![0]);
    assert_eq!(v.breaks[0].kind, BreakKind::Missing { from: 1, to: 6 });
}

/// The verifier keeps going after the first break: several independent
/// breaks are all reported.
#[test]
fn every_break_is_reported() {
    let c = build(&Spec {
        secret: *b"fedcba9876543210fedcba9876543210",
        sid: [4; 16],
        kinds: (0..20).map(|i| (i % 8) as u8).collect(),
    });
    let mut entries = c.entries.clone();
    let mut e = entries[3].to_vec();
    e[20] ^= 1;
    entries[3] = Bytes::from(e); // bad tag at 3
    entries.remove(10); // seq 11 missing, now at position 10
    entries.insert(15, Bytes::from_static(b"junk")); // malformed at 15
    let v = c.verify(&entries);
    assert_eq!(positions(&v), vec![3, 10, 15], "{:?}", v.breaks);
    assert_eq!(v.breaks[1].kind, BreakKind::Missing { from: 11, to: 11 });
}
