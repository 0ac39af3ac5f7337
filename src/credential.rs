//! The session credential: a public session id, a secret token, and a MAC.
//!
//! The client carries `base64url(version ‖ key id ‖ sid ‖ token ‖ mac)`, 114
//! characters, where `mac` is HMAC-SHA256 with the cookie key over a domain
//! string and everything before it. The MAC is checked in constant time
//! before anything else happens, so a forged or random value never reaches
//! the store.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::Mac;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::key::{Key, KeyRing};
use crate::util;

const VERSION: u8 = 1;
const DOMAIN: &[u8] = b"session-trail/credential/v1";
const RAW_LEN: usize = 1 + 4 + 16 + 32 + 32;
/// The length of an encoded credential, in characters.
pub(crate) const ENCODED_LEN: usize = (RAW_LEN * 4).div_ceil(3);

/// The public identifier of a session: 128 random bits, shown as 32 hex
/// digits.
///
/// It is not a secret: it names the session in store keys, history, logs and
/// analytics. Possession of it grants nothing; the secret token does.
///
/// ```
/// use session_trail::SessionId;
///
/// let id = SessionId::generate();
/// let text = id.to_string();
/// assert_eq!(text.len(), 32);
/// assert_eq!(text.parse::<SessionId>().unwrap(), id);
/// assert!("not-an-id".parse::<SessionId>().is_err());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId([u8; 16]);

impl SessionId {
    /// A new random id.
    pub fn generate() -> Self {
        let mut b = [0u8; 16];
        util::fill_random(&mut b);
        Self(b)
    }

    /// The id's 16 bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// The id from its 16 bytes.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&util::hex(&self.0))
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({self})")
    }
}

/// The text was not a session id (32 hex digits).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseSessionIdError;

impl fmt::Display for ParseSessionIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a session id is 32 hex digits")
    }
}

impl std::error::Error for ParseSessionIdError {}

impl FromStr for SessionId {
    type Err = ParseSessionIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        util::unhex::<16>(s).map(Self).ok_or(ParseSessionIdError)
    }
}

impl serde::Serialize for SessionId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for SessionId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The secret half of a credential: 256 bits from the OS CSPRNG.
#[derive(Clone)]
pub(crate) struct Token([u8; 32]);

impl Token {
    pub(crate) fn generate() -> Self {
        let mut b = [0u8; 32];
        util::fill_random(&mut b);
        Self(b)
    }

    pub(crate) fn hash(&self) -> TokenHash {
        TokenHash(Sha256::digest(self.0).into())
    }

    pub(crate) fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// SHA-256 of a session token: what stores keep instead of the token.
///
/// A dump of the store yields no live credentials. Compare with
/// [`TokenHash::ct_eq`], which takes constant time.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    /// The hash's bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The hash from its bytes (as read back from a store).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Constant-time equality.
    pub fn ct_eq(&self, other: &TokenHash) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not a secret, but nothing is gained by printing it.
        f.write_str("TokenHash(..)")
    }
}

/// A verified credential: the MAC matched a key of the ring.
#[derive(Clone, Debug)]
pub(crate) struct Credential {
    pub(crate) sid: SessionId,
    pub(crate) token: Token,
}

impl Credential {
    #[cfg(test)]
    pub(crate) fn generate() -> Self {
        Self {
            sid: SessionId::generate(),
            token: Token::generate(),
        }
    }

    /// Encodes and signs with the ring's current key.
    pub(crate) fn encode(&self, key: &Key) -> String {
        let mut raw = [0u8; RAW_LEN];
        raw[0] = VERSION;
        raw[1..5].copy_from_slice(&key.id().to_be_bytes());
        raw[5..21].copy_from_slice(&self.sid.0);
        raw[21..53].copy_from_slice(&self.token.0);
        let mac = mac(key, &raw[..53]);
        raw[53..].copy_from_slice(&mac);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Decodes and verifies `value`; `None` for anything that is not a
    /// credential signed by a key of the ring. Never panics.
    #[cfg(test)]
    pub(crate) fn verify(value: &[u8], ring: &KeyRing) -> Option<Self> {
        Self::verify_with_key_id(value, ring).map(|(c, _)| c)
    }

    /// As [`Credential::verify`], also answering the id of the key that
    /// signed it.
    pub(crate) fn verify_with_key_id(value: &[u8], ring: &KeyRing) -> Option<(Self, u32)> {
        // Length first: oversized input costs nothing more.
        if value.len() != ENCODED_LEN {
            return None;
        }
        let mut raw = [0u8; RAW_LEN];
        let n = URL_SAFE_NO_PAD.decode_slice(value, &mut raw).ok()?;
        if n != RAW_LEN || raw[0] != VERSION {
            return None;
        }
        let kid = u32::from_be_bytes([raw[1], raw[2], raw[3], raw[4]]);
        let key = ring.get(kid)?;
        let expected = mac(key, &raw[..53]);
        if !bool::from(expected.ct_eq(&raw[53..])) {
            return None;
        }
        let mut sid = [0u8; 16];
        sid.copy_from_slice(&raw[5..21]);
        let mut token = [0u8; 32];
        token.copy_from_slice(&raw[21..53]);
        Some((
            Self {
                sid: SessionId(sid),
                token: Token(token),
            },
            kid,
        ))
    }
}

fn mac(key: &Key, signed: &[u8]) -> [u8; 32] {
    let mut m = key.derived().cookie.clone();
    m.update(DOMAIN);
    m.update(signed);
    m.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ring() -> KeyRing {
        KeyRing::new(Key::from_bytes(b"0123456789abcdef0123456789abcdef").unwrap())
    }

    #[test]
    fn round_trip_and_length() {
        let ring = ring();
        let c = Credential::generate();
        let s = c.encode(ring.current());
        assert_eq!(s.len(), ENCODED_LEN);
        let back = Credential::verify(s.as_bytes(), &ring).unwrap();
        assert_eq!(back.sid, c.sid);
        assert!(back.token.hash().ct_eq(&c.token.hash()));
    }

    #[test]
    fn every_single_bit_flip_is_rejected() {
        let ring = ring();
        let s = Credential::generate().encode(ring.current());
        let mut raw = URL_SAFE_NO_PAD.decode(&s).unwrap();
        for i in 0..raw.len() * 8 {
            raw[i / 8] ^= 1 << (i % 8);
            let forged = URL_SAFE_NO_PAD.encode(&raw);
            assert!(
                Credential::verify(forged.as_bytes(), &ring).is_none(),
                "bit {i}"
            );
            raw[i / 8] ^= 1 << (i % 8);
        }
    }

    #[test]
    fn old_keys_verify_and_unknown_keys_do_not() {
        let old = Key::generate();
        let new = Key::generate();
        let s = Credential::generate().encode(&old);
        assert!(Credential::verify(s.as_bytes(), &KeyRing::new(new.clone())).is_none());
        let ring = KeyRing::new(new).with_previous(old);
        assert!(Credential::verify(s.as_bytes(), &ring).is_some());
    }

    #[test]
    fn debug_never_shows_the_token() {
        let c = Credential::generate();
        let dbg = format!("{c:?}");
        assert!(dbg.contains("redacted"));
        assert!(!dbg.contains(&util::hex(&c.token.0)));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_verify_and_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            prop_assert!(Credential::verify(&bytes, &ring()).is_none());
        }

        #[test]
        fn arbitrary_text_of_the_right_length_never_verifies(s in "[A-Za-z0-9_-]{114}") {
            prop_assert!(Credential::verify(s.as_bytes(), &ring()).is_none());
        }
    }
}
