//! Signed checkpoints of the history writer.
//!
//! A chain of entries shows every edit *inside* a session's history, but not
//! that its newest entries were cut off, or that the whole history was
//! deleted: what is left still verifies. A checkpoint answers that. At an
//! interval (see [`WriterConfig::checkpoint_interval`]), the history writer
//! takes the head `(session, seq, tag)` of every session it advanced since
//! its last checkpoint (with the time the append that wrote it was sent), hashes them into a Merkle tree (RFC 6962's shape,
//! SHA-256), and signs the root with its writer id, a counter, the times it
//! covers, the erasures it made, and the digest of its previous
//! checkpoint. Each writer (each [`HistoryWriter`] started, usually one per
//! app server) has a chain of its own.
//!
//! Checkpoints are kept in the history store and handed to a
//! [`CheckpointSink`](super::CheckpointSink): a copy outside the store is
//! what makes them evidence, since whoever can cut a history in the store
//! can cut its checkpoints there too. [`CheckpointLog`](super::CheckpointLog)
//! checks them and [`verify_checkpointed`](super::verify_checkpointed) checks
//! a session against them.
//!
//! The signature is an HMAC-SHA256 under the *checkpoint key*, derived from
//! the master key for checkpoints alone: anyone who verifies checkpoints
//! holds the key, as with history entries.
//!
//! ```
//! use serde_json::json;
//! use session_trail::history::{Checkpoint, Draft, HistoryWriter, WriterConfig};
//! use session_trail::store::{HistoryStore, MemoryStore};
//! use session_trail::{Key, KeyRing, SessionId};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let store = MemoryStore::new();
//! let ring = KeyRing::new(Key::generate());
//! let writer = HistoryWriter::start(store.clone(), ring.clone(), WriterConfig::default()).unwrap();
//! let session = SessionId::generate();
//! writer.enqueue(session, vec![Draft::event("checkout", &json!({})).unwrap()]);
//! writer.checkpoint().await.unwrap(); // or wait for the interval
//!
//! // An audit of every session against the store's checkpoints.
//! let log = writer.checkpoint_log(&[]).await.unwrap();
//! assert!(log.problems().is_empty());
//! let v = writer.audit(&session, &log).await.unwrap();
//! assert_eq!(v.checkpointed, Some(1));
//!
//! // An auditor who holds only the root checks this one session.
//! let stored = store.checkpoints().await.unwrap();
//! let cp = Checkpoint::decode(&stored[0]).unwrap();
//! let proof = cp.prove(&session).unwrap();
//! assert!(proof.verify(&cp.root));
//! assert_eq!(proof.head.seq, 1);
//! # });
//! ```
//!
//! What checkpoints do not catch, and why, is in the crate's
//! [security model](crate#security-model).
//!
//! [`WriterConfig::checkpoint_interval`]: super::WriterConfig::checkpoint_interval
//! [`HistoryWriter`]: super::HistoryWriter

use std::fmt;

use hmac::Mac;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

use super::entry::TAG_LEN;
use crate::key::{Key, KeyRing};
use crate::util::{hex, unhex};
use crate::{Error, ErrorKind, SessionId};

/// A SHA-256 digest: a Merkle root, a node, or a checkpoint's own digest.
pub type Digest = [u8; 32];

const DOMAIN: &[u8] = b"session-trail checkpoint v1\0";
const MAGIC: &[u8; 5] = b"STCP1";
const HEAD_LEN: usize = 16 + 8 + TAG_LEN + 8;
const ERASURE_LEN: usize = 16 + 8;

/// The id of one history writer's checkpoint chain: random, made when the
/// writer starts.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WriterId([u8; 16]);

impl WriterId {
    /// A new random id.
    pub fn generate() -> Self {
        let mut b = [0u8; 16];
        crate::util::fill_random(&mut b);
        Self(b)
    }

    /// The id's bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// The id from its bytes.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }
}

impl fmt::Display for WriterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl fmt::Debug for WriterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WriterId({self})")
    }
}

/// A session's head as a checkpoint attests it: its newest entry's `seq`
/// and tag when the checkpoint was formed, and when the append that wrote
/// it was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    /// The session.
    pub session: SessionId,
    /// The newest entry's `seq`.
    pub seq: u64,
    /// The newest entry's tag.
    pub tag: [u8; TAG_LEN],
    /// The append that wrote it was sent no earlier than this (Unix
    /// milliseconds, the writer's clock): what tells a head written after
    /// an erasure from one the erasure removed, and when its history can
    /// expire at the earliest.
    pub sent: i64,
}

impl Head {
    fn bytes(&self) -> [u8; HEAD_LEN] {
        let mut b = [0u8; HEAD_LEN];
        b[..16].copy_from_slice(self.session.as_bytes());
        b[16..24].copy_from_slice(&self.seq.to_be_bytes());
        b[24..24 + TAG_LEN].copy_from_slice(&self.tag);
        b[24 + TAG_LEN..].copy_from_slice(&self.sent.to_be_bytes());
        b
    }

    fn from_bytes(b: &[u8]) -> Self {
        let mut sid = [0u8; 16];
        sid.copy_from_slice(&b[..16]);
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&b[24..24 + TAG_LEN]);
        Self {
            session: SessionId::from_bytes(sid),
            seq: u64::from_be_bytes(b[16..24].try_into().expect("8 bytes")),
            tag,
            sent: i64::from_be_bytes(b[24 + TAG_LEN..HEAD_LEN].try_into().expect("8 bytes")),
        }
    }

    /// The Merkle leaf hash of this head: `SHA-256(0x00 ‖ session ‖ seq ‖
    /// tag ‖ sent)`, `seq` and `sent` as 8 big-endian bytes.
    pub fn leaf_hash(&self) -> Digest {
        let mut h = Sha256::new();
        h.update([0u8]);
        h.update(self.bytes());
        h.finalize().into()
    }
}

/// A signed record that a session's history was erased, and when: the
/// erasure of a checkpointed history is lawful, not a cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Erasure {
    /// The session whose history was erased.
    pub session: SessionId,
    /// When the erasure finished, Unix milliseconds.
    pub at: i64,
}

/// One signed checkpoint. See the [module docs](self).
///
/// A copy may be *header-only* (no [`heads`](Self::heads), as the
/// [`TracingSink`](super::TracingSink) logs it): its root and signature
/// still check, and a session is checked against it with an
/// [`InclusionProof`] from a full copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// The writer whose chain it belongs to.
    pub writer: WriterId,
    /// Its place in the writer's chain, from 1.
    pub counter: u64,
    /// When it was formed, Unix milliseconds.
    pub at: i64,
    /// The earliest [`Head::sent`] of its heads (Unix milliseconds; `at`
    /// when it has none).
    pub since: i64,
    /// The [`digest`](Self::digest) of the writer's previous checkpoint;
    /// zeros for its first.
    pub prev: Digest,
    /// The Merkle root over the heads.
    pub root: Digest,
    /// How many heads the root covers.
    pub leaves: u64,
    /// The heads, by session id; empty in a header-only copy.
    pub heads: Vec<Head>,
    /// The histories the writer erased since its previous checkpoint.
    pub erasures: Vec<Erasure>,
    /// The id of the key that signed it.
    pub key_id: u32,
    /// HMAC-SHA256 under the checkpoint key over everything above but the
    /// heads (the root covers them).
    pub mac: Digest,
}

/// Why a checkpoint did not decode.
#[derive(Debug)]
pub struct CheckpointDecodeError(&'static str);

impl fmt::Display for CheckpointDecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed checkpoint: {}", self.0)
    }
}

impl std::error::Error for CheckpointDecodeError {}

impl From<CheckpointDecodeError> for Error {
    fn from(e: CheckpointDecodeError) -> Self {
        Error::new(ErrorKind::Corrupt, e.to_string())
    }
}

impl Checkpoint {
    /// Forms and signs a checkpoint. `heads` may come in any order, one per
    /// session.
    pub(crate) fn sign(
        key: &Key,
        fields: Fields,
        mut heads: Vec<Head>,
        erasures: Vec<Erasure>,
    ) -> Self {
        heads.sort_unstable_by(|a, b| a.session.as_bytes().cmp(b.session.as_bytes()));
        let root = merkle_root(&heads);
        let since = heads.iter().map(|h| h.sent).min().unwrap_or(fields.at);
        let mut cp = Self {
            writer: fields.writer,
            counter: fields.counter,
            at: fields.at,
            since,
            prev: fields.prev,
            root,
            leaves: heads.len() as u64,
            heads,
            erasures,
            key_id: key.id(),
            mac: [0; 32],
        };
        cp.mac = cp.compute_mac(key);
        cp
    }

    fn signed_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(150 + self.erasures.len() * ERASURE_LEN);
        b.extend_from_slice(&self.writer.0);
        b.extend_from_slice(&self.counter.to_be_bytes());
        b.extend_from_slice(&self.at.to_be_bytes());
        b.extend_from_slice(&self.since.to_be_bytes());
        b.extend_from_slice(&self.prev);
        b.extend_from_slice(&self.root);
        b.extend_from_slice(&self.leaves.to_be_bytes());
        b.extend_from_slice(&self.key_id.to_be_bytes());
        b.extend_from_slice(&(self.erasures.len() as u32).to_be_bytes());
        for e in &self.erasures {
            b.extend_from_slice(e.session.as_bytes());
            b.extend_from_slice(&e.at.to_be_bytes());
        }
        b
    }

    fn compute_mac(&self, key: &Key) -> Digest {
        let mut mac = key.derived().checkpoint.clone();
        mac.update(DOMAIN);
        mac.update(&self.signed_bytes());
        mac.finalize().into_bytes().into()
    }

    /// The checkpoint's digest, `SHA-256` of its signed fields and MAC: what
    /// the writer's next checkpoint names as [`prev`](Self::prev).
    pub fn digest(&self) -> Digest {
        let mut h = Sha256::new();
        h.update(DOMAIN);
        h.update(self.signed_bytes());
        h.update(self.mac);
        h.finalize().into()
    }

    /// Checks the signature with the ring's keys.
    ///
    /// # Errors
    ///
    /// [`CheckpointProblem::UnknownKey`](super::CheckpointProblem::UnknownKey)
    /// or [`BadSignature`](super::CheckpointProblem::BadSignature).
    pub fn check_signature(&self, ring: &KeyRing) -> Result<(), super::CheckpointProblem> {
        let at = (self.writer, self.counter);
        let Some(key) = ring.get(self.key_id) else {
            return Err(super::CheckpointProblem::UnknownKey(at.0, at.1));
        };
        if bool::from(self.compute_mac(key).ct_eq(&self.mac)) {
            Ok(())
        } else {
            Err(super::CheckpointProblem::BadSignature(at.0, at.1))
        }
    }

    /// Whether this copy carries its heads (it is not header-only).
    pub fn has_heads(&self) -> bool {
        self.leaves == 0 || !self.heads.is_empty()
    }

    /// Whether the heads hash to the root (true for a header-only copy,
    /// which has none to check).
    pub fn heads_match_root(&self) -> bool {
        if self.heads.is_empty() {
            return true;
        }
        self.heads.len() as u64 == self.leaves
            && self
                .heads
                .windows(2)
                .all(|w| w[0].session.as_bytes() < w[1].session.as_bytes())
            && merkle_root(&self.heads) == self.root
    }

    /// The head this checkpoint attests for a session, if any.
    pub fn head_of(&self, session: &SessionId) -> Option<&Head> {
        self.heads
            .binary_search_by(|h| h.session.as_bytes().cmp(session.as_bytes()))
            .ok()
            .map(|i| &self.heads[i])
    }

    /// The proof that a session's head is in this checkpoint's root, for
    /// an auditor who holds only the root (see the [module docs](self)).
    /// `None` when the session is not in it, or this copy is header-only.
    pub fn prove(&self, session: &SessionId) -> Option<InclusionProof> {
        let index = self
            .heads
            .binary_search_by(|h| h.session.as_bytes().cmp(session.as_bytes()))
            .ok()?;
        let leaves: Vec<Digest> = self.heads.iter().map(Head::leaf_hash).collect();
        let mut path = Vec::new();
        audit_path(index, &leaves, &mut path);
        Some(InclusionProof {
            head: self.heads[index],
            index: index as u64,
            leaves: self.leaves,
            path,
        })
    }

    /// The checkpoint without its heads.
    pub fn header(&self) -> Self {
        Self {
            heads: Vec::new(),
            ..self.clone()
        }
    }

    /// The binary form the stores keep.
    pub fn encode(&self) -> Vec<u8> {
        let signed = self.signed_bytes();
        let mut b =
            Vec::with_capacity(MAGIC.len() + signed.len() + 40 + self.heads.len() * HEAD_LEN);
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&signed);
        b.extend_from_slice(&self.mac);
        b.extend_from_slice(&(self.heads.len() as u64).to_be_bytes());
        for h in &self.heads {
            b.extend_from_slice(&h.bytes());
        }
        b
    }

    /// Decodes [`encode`](Self::encode)'s form. Nothing is verified: see
    /// [`check_signature`](Self::check_signature).
    ///
    /// # Errors
    ///
    /// When the bytes are not a checkpoint.
    pub fn decode(bytes: &[u8]) -> Result<Self, CheckpointDecodeError> {
        let mut r = Reader(bytes);
        if r.take(MAGIC.len())? != MAGIC {
            return Err(CheckpointDecodeError("unknown format"));
        }
        let writer = WriterId(r.array()?);
        let counter = r.u64()?;
        let at = r.u64()? as i64;
        let since = r.u64()? as i64;
        let prev = r.array()?;
        let root = r.array()?;
        let leaves = r.u64()?;
        let key_id = u32::from_be_bytes(r.array()?);
        let n = u32::from_be_bytes(r.array()?) as usize;
        if n > r.0.len() / ERASURE_LEN {
            return Err(CheckpointDecodeError("truncated"));
        }
        let mut erasures = Vec::with_capacity(n);
        for _ in 0..n {
            erasures.push(Erasure {
                session: SessionId::from_bytes(r.array()?),
                at: r.u64()? as i64,
            });
        }
        let mac = r.array()?;
        let n = r.u64()?;
        if n != 0 && n != leaves {
            return Err(CheckpointDecodeError("head count differs from leaves"));
        }
        let rest = r.take(r.0.len())?;
        if (rest.len() as u64) != n.saturating_mul(HEAD_LEN as u64) {
            return Err(CheckpointDecodeError("heads truncated or trailing bytes"));
        }
        let heads = rest.chunks_exact(HEAD_LEN).map(Head::from_bytes).collect();
        Ok(Self {
            writer,
            counter,
            at,
            since,
            prev,
            root,
            leaves,
            heads,
            erasures,
            key_id,
            mac,
        })
    }

    /// The checkpoint as JSON, one object: `{"writer", "counter", "at",
    /// "since", "prev", "root", "leaves", "erasures": [{"session", "at"}],
    /// "key_id", "mac", "digest", "heads": [[session, seq, tag, sent], ...]}`, the
    /// digests and tags in hex, `heads` left out of a header-only copy.
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "writer": self.writer.to_string(),
            "counter": self.counter,
            "at": self.at,
            "since": self.since,
            "prev": hex(&self.prev),
            "root": hex(&self.root),
            "leaves": self.leaves,
            "erasures": self.erasures.iter().map(|e| json!({"session": e.session, "at": e.at})).collect::<Vec<_>>(),
            "key_id": self.key_id,
            "mac": hex(&self.mac),
            "digest": hex(&self.digest()),
        });
        if !self.heads.is_empty() {
            v["heads"] = self
                .heads
                .iter()
                .map(|h| json!([h.session, h.seq, hex(&h.tag), h.sent]))
                .collect();
        }
        v
    }

    /// Reads [`to_json`](Self::to_json)'s form (`digest` is not read: it is
    /// computed). Nothing is verified.
    ///
    /// # Errors
    ///
    /// When a field is absent or of the wrong form.
    pub fn from_json(v: &Value) -> Result<Self, CheckpointDecodeError> {
        let bad = |what| CheckpointDecodeError(what);
        let u = |k: &'static str| v[k].as_u64().ok_or(bad(k));
        let i = |k: &'static str| v[k].as_i64().ok_or(bad(k));
        let d = |k: &'static str| v[k].as_str().and_then(unhex::<32>).ok_or(bad(k));
        let sid = |x: &Value| x.as_str().and_then(|s| s.parse::<SessionId>().ok());
        let erasures = v["erasures"]
            .as_array()
            .ok_or(bad("erasures"))?
            .iter()
            .map(|e| {
                Some(Erasure {
                    session: sid(&e["session"])?,
                    at: e["at"].as_i64()?,
                })
            })
            .collect::<Option<Vec<_>>>()
            .ok_or(bad("erasures"))?;
        let heads = match &v["heads"] {
            Value::Null => Vec::new(),
            Value::Array(a) => a
                .iter()
                .map(|h| {
                    Some(Head {
                        session: sid(&h[0])?,
                        seq: h[1].as_u64()?,
                        tag: h[2].as_str().and_then(unhex::<TAG_LEN>)?,
                        sent: h[3].as_i64()?,
                    })
                })
                .collect::<Option<Vec<_>>>()
                .ok_or(bad("heads"))?,
            _ => return Err(bad("heads")),
        };
        Ok(Self {
            writer: WriterId(
                v["writer"]
                    .as_str()
                    .and_then(unhex::<16>)
                    .ok_or(bad("writer"))?,
            ),
            counter: u("counter")?,
            at: i("at")?,
            since: i("since")?,
            prev: d("prev")?,
            root: d("root")?,
            leaves: u("leaves")?,
            heads,
            erasures,
            key_id: u32::try_from(u("key_id")?).map_err(|_| bad("key_id"))?,
            mac: d("mac")?,
        })
    }
}

/// The signed fields of a checkpoint that the writer chooses.
pub(crate) struct Fields {
    pub(crate) writer: WriterId,
    pub(crate) counter: u64,
    pub(crate) at: i64,
    pub(crate) prev: Digest,
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CheckpointDecodeError> {
        if self.0.len() < n {
            return Err(CheckpointDecodeError("truncated"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], CheckpointDecodeError> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }

    fn u64(&mut self) -> Result<u64, CheckpointDecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
}

/// The Merkle root over heads in the given order (a checkpoint orders them
/// by session id), the tree of RFC 6962 §2.1 with SHA-256: a leaf is
/// [`Head::leaf_hash`], a node `SHA-256(0x01 ‖ left ‖ right)`, and the
/// root of no heads is `SHA-256("")`.
pub fn merkle_root(heads: &[Head]) -> Digest {
    let leaves: Vec<Digest> = heads.iter().map(Head::leaf_hash).collect();
    subtree(&leaves)
}

fn node(left: &Digest, right: &Digest) -> Digest {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The largest power of two below `n` (`n` > 1).
fn split(n: usize) -> usize {
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

fn subtree(leaves: &[Digest]) -> Digest {
    match leaves.len() {
        0 => Sha256::digest(b"").into(),
        1 => leaves[0],
        n => {
            let k = split(n);
            node(&subtree(&leaves[..k]), &subtree(&leaves[k..]))
        }
    }
}

fn audit_path(m: usize, leaves: &[Digest], out: &mut Vec<Digest>) {
    let n = leaves.len();
    if n <= 1 {
        return;
    }
    let k = split(n);
    if m < k {
        audit_path(m, &leaves[..k], out);
        out.push(subtree(&leaves[k..]));
    } else {
        audit_path(m - k, &leaves[k..], out);
        out.push(subtree(&leaves[..k]));
    }
}

/// The proof that one session's head is in a checkpoint's Merkle root
/// (RFC 6962 §2.1.1's audit path).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InclusionProof {
    /// The head proven.
    pub head: Head,
    /// Its index among the checkpoint's leaves.
    pub index: u64,
    /// How many leaves the checkpoint has.
    pub leaves: u64,
    /// The sibling hashes from the leaf up.
    pub path: Vec<Digest>,
}

impl InclusionProof {
    /// Whether the proof leads from the head to `root` (RFC 9162 §2.1.3.2).
    pub fn verify(&self, root: &Digest) -> bool {
        if self.index >= self.leaves {
            return false;
        }
        let (mut f, mut s) = (self.index, self.leaves - 1);
        let mut r = self.head.leaf_hash();
        for p in &self.path {
            if s == 0 {
                return false;
            }
            if f & 1 == 1 || f == s {
                r = node(p, &r);
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            } else {
                r = node(&r, p);
            }
            f >>= 1;
            s >>= 1;
        }
        s == 0 && bool::from(r.ct_eq(root))
    }

    /// The proof as JSON: `{"session", "seq", "tag", "index", "leaves",
    /// "path": [hex, ...]}`.
    pub fn to_json(&self) -> Value {
        json!({
            "session": self.head.session,
            "seq": self.head.seq,
            "tag": hex(&self.head.tag),
            "index": self.index,
            "leaves": self.leaves,
            "path": self.path.iter().map(|d| hex(d)).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heads(n: usize) -> Vec<Head> {
        let mut v: Vec<Head> = (0..n)
            .map(|i| Head {
                session: SessionId::generate(),
                seq: i as u64 + 1,
                tag: [i as u8; TAG_LEN],
                sent: 1_700_000_000_000 + i as i64,
            })
            .collect();
        v.sort_unstable_by(|a, b| a.session.as_bytes().cmp(b.session.as_bytes()));
        v
    }

    fn signed(key: &Key, n: usize) -> Checkpoint {
        let fields = Fields {
            writer: WriterId::generate(),
            counter: 3,
            at: 1_700_000_000_000,
            prev: [7; 32],
        };
        let erasures = vec![Erasure {
            session: SessionId::generate(),
            at: 5,
        }];
        Checkpoint::sign(key, fields, heads(n), erasures)
    }

    #[test]
    fn every_leaf_proves_against_the_root_and_nothing_else_does() {
        for n in [1, 2, 3, 5, 8, 13, 64, 100] {
            let cp = signed(&Key::generate(), n);
            for h in &cp.heads {
                let proof = cp.prove(&h.session).unwrap();
                assert!(proof.verify(&cp.root), "n={n} index={}", proof.index);
                let mut wrong = proof.clone();
                wrong.head.seq += 1;
                assert!(!wrong.verify(&cp.root));
                let mut moved = proof.clone();
                moved.index = (moved.index + 1) % n as u64;
                assert!(n == 1 || !moved.verify(&cp.root));
                if let Some(p) = proof.path.first() {
                    let mut cut = proof.clone();
                    cut.path.pop();
                    assert!(!cut.verify(&cp.root), "{p:?}");
                }
            }
            assert!(cp.prove(&SessionId::generate()).is_none());
        }
    }

    #[test]
    fn root_matches_rfc6962_shape() {
        let h = heads(3);
        let l: Vec<Digest> = h.iter().map(Head::leaf_hash).collect();
        assert_eq!(merkle_root(&h), node(&node(&l[0], &l[1]), &l[2]));
        assert_eq!(merkle_root(&[]), <[u8; 32]>::from(Sha256::digest(b"")));
    }

    #[test]
    fn encodings_round_trip_and_tampering_fails_the_signature() {
        let key = Key::generate();
        let ring = KeyRing::new(key.clone());
        let cp = signed(&key, 9);
        assert!(cp.check_signature(&ring).is_ok());
        assert!(cp.heads_match_root());
        assert_eq!(Checkpoint::decode(&cp.encode()).unwrap(), cp);
        assert_eq!(Checkpoint::from_json(&cp.to_json()).unwrap(), cp);
        let header = cp.header();
        assert_eq!(Checkpoint::from_json(&header.to_json()).unwrap(), header);
        assert_eq!(header.digest(), cp.digest());
        let mut bad = cp.clone();
        bad.since -= 1;
        assert!(bad.check_signature(&ring).is_err());
        let mut bad = cp.clone();
        bad.heads[0].seq += 1;
        assert!(bad.check_signature(&ring).is_ok());
        assert!(!bad.heads_match_root());
        let enc = cp.encode();
        for cut in [0, 4, 40, enc.len() - 1] {
            assert!(Checkpoint::decode(&enc[..cut]).is_err());
        }
        assert!(Checkpoint::decode(&[enc.as_slice(), &[0]].concat()).is_err());
    }
}
