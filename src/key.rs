//! Secrets: the master key, the keys derived from it, and the key ring.
//!
//! One master secret per key generation. The purpose keys are derived from
//! it with HKDF-SHA256 under distinct labels, so a key used for one purpose
//! never signs anything of another:
//!
//! | derived key | signs |
//! |---|---|
//! | cookie key | the session credential carried by the client |
//! | history key | history entries (the chain tags) |
//! | pseudonym key | keyed pseudonyms of users in history entries |
//! | CSRF key | the CSRF tokens bound to a session |
//! | checkpoint key | the history writer's signed checkpoints |
//!
//! A [`KeyRing`] holds the current key (it signs) and any number of older
//! ones (they still verify), so keys can be rotated without logging every
//! user out or breaking verification of old history.

use std::fmt;
use std::sync::Arc;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::ConfigError;

pub(crate) type HmacSha256 = Hmac<Sha256>;

/// The smallest master secret accepted, in bytes.
pub const MIN_KEY_LEN: usize = 32;

const LABEL_COOKIE: &[u8] = b"session-trail v1 cookie key";
const LABEL_HISTORY: &[u8] = b"session-trail v1 history key";
const LABEL_PSEUDONYM: &[u8] = b"session-trail v1 pseudonym key";
const LABEL_CSRF: &[u8] = b"session-trail v1 csrf key";
const LABEL_CHECKPOINT: &[u8] = b"session-trail v1 checkpoint key";
const LABEL_ID: &[u8] = b"session-trail v1 key id";

/// A master secret of at least [`MIN_KEY_LEN`] bytes.
///
/// A secret that is one byte repeated (all zeros, all `0xff`, `AAAA…`) is
/// refused: it is a placeholder or an unfilled buffer, not a secret. This
/// is a guard against such mistakes, not a measure of entropy: generate
/// secrets with a CSPRNG (`openssl rand -hex 32`).
///
/// Its `Debug` output names only its public key id, never the secret.
///
/// ```
/// use session_trail::Key;
///
/// let key = Key::try_from(&b"0123456789abcdef0123456789abcdef"[..]).unwrap();
/// assert!(Key::try_from(&b"too short"[..]).is_err());
/// assert!(Key::try_from(&[0u8; 32][..]).is_err());
/// assert!(!format!("{key:?}").contains("30313233")); // "0123" in hex
/// ```
#[derive(Clone)]
pub struct Key {
    inner: Arc<Derived>,
}

pub(crate) struct Derived {
    pub(crate) id: u32,
    pub(crate) cookie: HmacSha256,
    pub(crate) history: HmacSha256,
    pub(crate) pseudonym: HmacSha256,
    pub(crate) csrf: HmacSha256,
    pub(crate) checkpoint: HmacSha256,
}

impl Key {
    /// Builds a key from a master secret.
    ///
    /// # Errors
    ///
    /// Fails when `secret` is shorter than [`MIN_KEY_LEN`] bytes, or is one
    /// byte repeated (all zeros, all `0xff`, …).
    pub fn from_bytes(secret: &[u8]) -> Result<Self, ConfigError> {
        if secret.len() < MIN_KEY_LEN {
            return Err(ConfigError::new(
                "key",
                format!(
                    "the master secret is {} bytes; at least {MIN_KEY_LEN} are required",
                    secret.len()
                ),
            ));
        }
        if secret.iter().all(|&b| b == secret[0]) {
            return Err(ConfigError::new(
                "key",
                format!(
                    "the master secret is the byte 0x{:02x} repeated, a placeholder rather \
                     than a secret; generate one with a CSPRNG (`openssl rand -hex 32`)",
                    secret[0]
                ),
            ));
        }
        let hk = hkdf::Hkdf::<Sha256>::new(Some(b"session-trail"), secret);
        let derive = |label: &[u8]| {
            let mut out = [0u8; 32];
            hk.expand(label, &mut out)
                .expect("32 bytes is a valid HKDF-SHA256 output length");
            out
        };
        let mut id_bytes = [0u8; 4];
        hk.expand(LABEL_ID, &mut id_bytes)
            .expect("4 bytes is a valid HKDF-SHA256 output length");
        let mac = |k: [u8; 32]| {
            <HmacSha256 as Mac>::new_from_slice(&k).expect("HMAC accepts keys of any length")
        };
        Ok(Self {
            inner: Arc::new(Derived {
                id: u32::from_be_bytes(id_bytes),
                cookie: mac(derive(LABEL_COOKIE)),
                history: mac(derive(LABEL_HISTORY)),
                pseudonym: mac(derive(LABEL_PSEUDONYM)),
                csrf: mac(derive(LABEL_CSRF)),
                checkpoint: mac(derive(LABEL_CHECKPOINT)),
            }),
        })
    }

    /// Builds a key from a hexadecimal master secret (at least 64 hex
    /// digits, either case).
    ///
    /// Whitespace around the digits is ignored (the trailing newline of a
    /// secret read from a file or an environment variable), and so is a
    /// `0x` or `0X` prefix. Whitespace between digits is not.
    ///
    /// ```
    /// use session_trail::Key;
    ///
    /// let hex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    /// let key = Key::from_hex(hex).unwrap();
    /// assert_eq!(Key::from_hex(&format!("0x{hex}\n")).unwrap().id(), key.id());
    /// assert!(Key::from_hex(&"00".repeat(32)).is_err()); // one byte repeated
    /// ```
    ///
    /// # Errors
    ///
    /// Fails when the text is not hexadecimal, or decodes to a secret that
    /// [`from_bytes`](Self::from_bytes) refuses (fewer than [`MIN_KEY_LEN`]
    /// bytes, or one byte repeated).
    pub fn from_hex(hex: &str) -> Result<Self, ConfigError> {
        let hex = hex.trim();
        let hex = hex
            .strip_prefix("0x")
            .or_else(|| hex.strip_prefix("0X"))
            .unwrap_or(hex);
        if !hex.len().is_multiple_of(2) {
            return Err(ConfigError::new(
                "key",
                "hex secret has an odd number of digits",
            ));
        }
        let mut bytes = Vec::with_capacity(hex.len() / 2);
        for pair in hex.as_bytes().chunks(2) {
            let s = std::str::from_utf8(pair).map_err(|_| ConfigError::new("key", "not hex"))?;
            let b = u8::from_str_radix(s, 16)
                .map_err(|_| ConfigError::new("key", "hex secret contains a non-hex digit"))?;
            bytes.push(b);
        }
        Self::from_bytes(&bytes)
    }

    /// A fresh random key from the operating system's CSPRNG.
    ///
    /// Sessions signed with it do not survive a restart: use it in tests and
    /// demos, and load a persistent secret in production.
    pub fn generate() -> Self {
        let mut secret = [0u8; 32];
        loop {
            crate::util::fill_random(&mut secret);
            // Refused only when one byte repeats 32 times (odds 2^-248).
            if let Ok(key) = Self::from_bytes(&secret) {
                return key;
            }
        }
    }

    /// The public identifier of this key, written into credentials and
    /// history entries so the right key is picked to verify them.
    ///
    /// It is derived from the secret and reveals nothing about it.
    pub fn id(&self) -> u32 {
        self.inner.id
    }

    pub(crate) fn derived(&self) -> &Derived {
        &self.inner
    }
}

impl TryFrom<&[u8]> for Key {
    type Error = ConfigError;

    fn try_from(secret: &[u8]) -> Result<Self, Self::Error> {
        Self::from_bytes(secret)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("id", &format_args!("{:08x}", self.inner.id))
            .finish_non_exhaustive()
    }
}

/// The current key, which signs, and older keys, which still verify.
///
/// The ring also names the key of users' and networks' keyed pseudonyms
/// (see [`pseudonym_key`](Self::pseudonym_key)). Unlike the signing key,
/// it does not change when a new key is added: a pseudonym must stay the
/// same across key rotations, or a user's history index, export and
/// erasure would miss every session linked before the rotation.
///
/// ```
/// use session_trail::{Key, KeyRing};
///
/// let old = Key::generate();
/// let new = Key::generate();
/// let ring = KeyRing::new(new.clone()).with_previous(old.clone());
/// assert_eq!(ring.current().id(), new.id());
/// assert!(ring.get(old.id()).is_some());
/// // Pseudonyms keep the key the deployment started with.
/// assert_eq!(ring.pseudonym_key().id(), old.id());
/// ```
#[derive(Clone, Debug)]
pub struct KeyRing {
    keys: Vec<Key>,
    pseudonym: Option<Key>,
}

impl KeyRing {
    /// A ring with one key, which signs and verifies.
    pub fn new(current: Key) -> Self {
        Self {
            keys: vec![current],
            pseudonym: None,
        }
    }

    /// Adds an older key that still verifies but no longer signs.
    ///
    /// Add older keys newest first: the last one added is taken as the
    /// oldest, whose derived pseudonym key is the default
    /// [`pseudonym_key`](Self::pseudonym_key).
    pub fn with_previous(mut self, key: Key) -> Self {
        if self.get(key.id()).is_none() {
            self.keys.push(key);
        }
        self
    }

    /// The key that signs.
    pub fn current(&self) -> &Key {
        &self.keys[0]
    }

    /// The key with this id, if the ring holds it.
    pub fn get(&self, id: u32) -> Option<&Key> {
        self.keys.iter().find(|k| k.id() == id)
    }

    /// Every key of the ring, the current one first.
    pub fn keys(&self) -> &[Key] {
        &self.keys
    }

    /// Pins the key whose derived pseudonym key makes users' and networks'
    /// keyed pseudonyms, whatever keys the ring holds. It only makes
    /// pseudonyms: it need not be (and after its retirement, is not) in
    /// the ring, and it never signs or verifies credentials or history.
    ///
    /// Pin it before retiring the oldest key from the ring, with the key
    /// the pseudonyms were made with so far (see
    /// [`pseudonym_key`](Self::pseudonym_key)); otherwise the pseudonyms
    /// change and every session linked to a user before is lost to that
    /// user's export and erasure.
    pub fn with_pseudonym_key(mut self, key: Key) -> Self {
        self.pseudonym = Some(key);
        self
    }

    /// The key of users' and networks' keyed pseudonyms: the one pinned
    /// with [`with_pseudonym_key`](Self::with_pseudonym_key), otherwise the
    /// ring's oldest key (the last one added with
    /// [`with_previous`](Self::with_previous); the current key when there
    /// is no other). It does not follow the signing key, so a pseudonym
    /// stays the same when a new key is put in front of the ring.
    pub fn pseudonym_key(&self) -> &Key {
        match &self.pseudonym {
            Some(k) => k,
            None => self.keys.last().expect("a ring holds at least one key"),
        }
    }
}

impl From<Key> for KeyRing {
    fn from(key: Key) -> Self {
        Self::new(key)
    }
}

/// A keyed pseudonym: the first 8 bytes of HMAC-SHA256 with the pseudonym key.
pub(crate) fn pseudonym(key: &Key, domain: &[u8], value: &[u8]) -> [u8; 8] {
    let mut mac = key.derived().pseudonym.clone();
    mac.update(domain);
    mac.update(&[0]);
    mac.update(value);
    let full = mac.finalize().into_bytes();
    let mut out = [0u8; 8];
    out.copy_from_slice(&full[..8]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_key_is_refused_with_a_message_naming_the_setting() {
        let err = Key::from_bytes(&[1u8; 31]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("key"), "{msg}");
        assert!(msg.contains("31"), "{msg}");
    }

    const SECRET: &[u8; 32] = b"0123456789abcdef0123456789abcdef";
    const HEX: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    #[test]
    fn derived_keys_differ_per_purpose_and_ids_are_stable() {
        let a = Key::from_bytes(SECRET).unwrap();
        let b = Key::from_bytes(SECRET).unwrap();
        assert_eq!(a.id(), b.id());
        let tag = |m: &HmacSha256| m.clone().finalize().into_bytes();
        let d = a.derived();
        let all = [&d.cookie, &d.history, &d.pseudonym, &d.csrf, &d.checkpoint].map(tag);
        for (i, x) in all.iter().enumerate() {
            for y in &all[i + 1..] {
                assert_ne!(x, y);
            }
        }
    }

    #[test]
    fn hex_keys_parse_and_bad_hex_is_refused() {
        let key = Key::from_hex(HEX).unwrap();
        assert_eq!(key.id(), Key::from_hex(&HEX.to_uppercase()).unwrap().id());
        assert!(Key::from_hex("zz").is_err());
        assert!(Key::from_hex(&HEX[..32]).is_err(), "16 bytes");
        assert!(Key::from_hex(&HEX[1..]).is_err(), "odd number of digits");
        assert!(Key::from_hex(&HEX.replace('a', "g")).is_err());
        assert!(Key::from_hex(&format!("{} {}", &HEX[..32], &HEX[32..])).is_err());
        assert!(Key::from_hex(&format!("0x0x{HEX}")).is_err());
        assert!(Key::from_hex(&format!("é{}", &HEX[2..])).is_err());
    }

    #[test]
    fn degenerate_key_is_refused() {
        for byte in [0x00, 0xff, 0x41, 0x07] {
            for len in [32, 33, 64] {
                let secret = vec![byte; len];
                let err = Key::from_bytes(&secret).unwrap_err();
                assert_eq!(err.setting(), "key");
                let msg = err.to_string();
                assert!(msg.contains(&format!("0x{byte:02x} repeated")), "{msg}");
                let hex = format!("{byte:02x}").repeat(len);
                assert_eq!(Key::from_hex(&hex).unwrap_err().setting(), "key");
                assert!(Key::try_from(&secret[..]).is_err());
            }
        }
        // One byte apart from the rest is enough to be a (bad) secret, not a
        // placeholder: the check refuses mistakes, it does not grade secrets.
        let mut secret = [0u8; 32];
        secret[31] = 1;
        assert!(Key::from_bytes(&secret).is_ok());
    }

    #[test]
    fn hex_key_with_0x_prefix_and_newline_is_accepted() {
        let id = Key::from_hex(HEX).unwrap().id();
        assert_eq!(id, Key::from_bytes(&unhex(HEX)).unwrap().id());
        for text in [
            format!("0x{HEX}"),
            format!("0X{HEX}"),
            format!("{HEX}\n"),
            format!("0x{HEX}\n"),
            format!("  0x{HEX}\r\n"),
            format!("\t{}\n", HEX.to_uppercase()),
        ] {
            assert_eq!(Key::from_hex(&text).unwrap().id(), id, "{text:?}");
        }
    }

    fn unhex(hex: &str) -> Vec<u8> {
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn pseudonym_key_is_the_oldest_unless_pinned() {
        let (a, b, c) = (Key::generate(), Key::generate(), Key::generate());
        assert_eq!(KeyRing::new(a.clone()).pseudonym_key().id(), a.id());
        let ring = KeyRing::new(c.clone())
            .with_previous(b.clone())
            .with_previous(a.clone());
        assert_eq!(ring.current().id(), c.id());
        assert_eq!(ring.pseudonym_key().id(), a.id());
        let pinned = KeyRing::new(c.clone()).with_pseudonym_key(a.clone());
        assert_eq!(pinned.pseudonym_key().id(), a.id());
        assert!(
            pinned.get(a.id()).is_none(),
            "pinning adds no verifying key"
        );
        assert_eq!(
            pinned.with_previous(b).pseudonym_key().id(),
            a.id(),
            "a pinned key survives added keys"
        );
    }

    #[test]
    fn debug_hides_the_secret() {
        let k = Key::from_bytes(&[0xAB, 0xCD].repeat(16)).unwrap();
        let s = format!("{k:?}");
        assert!(!s.to_lowercase().contains("abcd"), "{s}");
    }
}
