//! The history entry format.
//!
//! An entry is stored as exactly these bytes, and its tag is a MAC over them
//! (there is no separate canonical form):
//!
//! | bytes | field |
//! |---|---|
//! | 1 | format version (1) |
//! | 4 | id of the history key that signed it |
//! | 1 | kind |
//! | varint | `seq`, per session, from 1 |
//! | varint | timestamp, Unix milliseconds |
//! | 16 | unique entry id (random) |
//! | 16 | `prev`: the tag of entry `seq - 1` (zeros for `seq` 1) |
//! | … | body, by kind |
//! | 16 | tag: HMAC-SHA256(history key, domain ‖ session id ‖ all bytes above), truncated |
//!
//! Request bodies are binary (method, route, status, latency, user
//! pseudonym) because there is one per request; other bodies are compact
//! JSON.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};
use hmac::Mac;
use serde_json::{Map, Value, json};

use crate::SessionId;
use crate::key::Key;
use crate::util::{self, hex};

pub(crate) const VERSION: u8 = 1;
const DOMAIN: &[u8] = b"session-trail/history/v1";
/// Length of a tag, and of `prev`.
pub const TAG_LEN: usize = 16;

/// What an entry records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EntryKind {
    /// A request: method, route, status, latency.
    Request,
    /// A domain event recorded by a handler.
    Event,
    /// The session started.
    Started,
    /// The token was rotated.
    Rotated,
    /// The user or the privilege changed.
    PrivilegeChanged,
    /// The session ended (logout, expiry, revocation, …).
    Ended,
    /// Entries were lost (dropped at a full queue, or lost by the store).
    Gap,
    /// Something about the session's use looked wrong.
    Suspicious,
}

impl EntryKind {
    fn code(self) -> u8 {
        match self {
            Self::Request => 1,
            Self::Event => 2,
            Self::Started => 3,
            Self::Rotated => 4,
            Self::PrivilegeChanged => 5,
            Self::Ended => 6,
            Self::Gap => 7,
            Self::Suspicious => 8,
        }
    }

    fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            1 => Self::Request,
            2 => Self::Event,
            3 => Self::Started,
            4 => Self::Rotated,
            5 => Self::PrivilegeChanged,
            6 => Self::Ended,
            7 => Self::Gap,
            8 => Self::Suspicious,
            _ => return None,
        })
    }

    /// The kind's name in JSON (`"request"`, `"privilege_changed"`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Request => "request",
            Self::Event => "event",
            Self::Started => "started",
            Self::Rotated => "rotated",
            Self::PrivilegeChanged => "privilege_changed",
            Self::Ended => "ended",
            Self::Gap => "gap",
            Self::Suspicious => "suspicious",
        }
    }

    /// Whether this is a lifecycle entry (not a request or an event).
    pub fn is_lifecycle(self) -> bool {
        !matches!(self, Self::Request | Self::Event)
    }
}

impl fmt::Display for EntryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An entry not yet chained: everything but `seq`, `prev`, key id and tag.
///
/// The layer builds drafts on the request path (cheap: no MAC) and the
/// [`HistoryWriter`](super::HistoryWriter) chains and signs them. Build your
/// own to record entries outside a request (a background job) with
/// [`HistoryWriter::enqueue`](super::HistoryWriter::enqueue), or to sign a
/// chain in tests with [`Draft::sign`].
///
/// ```
/// use session_trail::history::{Draft, Entry, EntryKind};
/// use session_trail::{Key, SessionId};
///
/// let key = Key::generate();
/// let sid = SessionId::generate();
/// let draft = Draft::event("add_to_cart", &serde_json::json!({"item": "book"})).unwrap();
/// let bytes = draft.sign(&key, &sid, 1, &[0; 16]);
/// let entry = Entry::decode(&bytes).unwrap();
/// assert_eq!(entry.kind, EntryKind::Event);
/// assert_eq!(entry.seq, 1);
/// ```
#[derive(Clone, Debug)]
pub struct Draft {
    pub(crate) kind: EntryKind,
    pub(crate) ts: i64,
    pub(crate) id: [u8; 16],
    body: DraftBody,
    /// Appended only while the session's record holds this token hash (a
    /// request whose handler never loaded the session: its credential was
    /// never checked against the store).
    pub(crate) token: Option<crate::credential::TokenHash>,
}

/// A draft's body: encoded already, or (for the layer's request entries)
/// fields that are encoded straight into the signed entry by the writer, so
/// the request path allocates nothing for them.
#[derive(Clone, Debug)]
enum DraftBody {
    Encoded(Bytes),
    Request {
        method: http::Method,
        route: Route,
        status: u16,
        latency_us: u64,
        user: Option<[u8; 8]>,
    },
}

/// Where a request entry's route text lives.
#[derive(Clone, Debug)]
pub(crate) enum Route {
    /// A route template an extractor recorded, or a long path (capped).
    Template(String),
    /// axum's matched route template (shared, not copied).
    #[cfg(feature = "axum")]
    Matched(axum::extract::MatchedPath),
    /// A short path, copied inline: no allocation, and the request's
    /// buffers are not kept alive until the writer gets to the entry.
    Inline { len: u8, buf: [u8; INLINE_ROUTE] },
    /// A request no route matched: its path is not recorded.
    Unmatched,
}

const INLINE_ROUTE: usize = 62;

/// The longest path recorded, in bytes; a longer one is cut at a character
/// boundary and ends with [`CUT_MARK`].
pub const MAX_RECORDED_PATH: usize = 256;
/// What ends a recorded path that was cut.
pub const CUT_MARK: &str = "…";
/// What a request that matched no route is recorded with instead of its
/// path.
pub const UNMATCHED_ROUTE: &str = "(unmatched)";

impl Route {
    /// The path of a request (never its query), capped at
    /// [`MAX_RECORDED_PATH`] bytes.
    pub(crate) fn path(path: &str) -> Self {
        if path.len() <= INLINE_ROUTE {
            let mut buf = [0u8; INLINE_ROUTE];
            buf[..path.len()].copy_from_slice(path.as_bytes());
            Self::Inline {
                len: path.len() as u8,
                buf,
            }
        } else if path.len() <= MAX_RECORDED_PATH {
            Self::Template(path.to_owned())
        } else {
            let mut end = MAX_RECORDED_PATH - CUT_MARK.len();
            while !path.is_char_boundary(end) {
                end -= 1;
            }
            Self::Template(format!("{}{CUT_MARK}", &path[..end]))
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        match self {
            Self::Template(t) => t,
            #[cfg(feature = "axum")]
            Self::Matched(m) => m.as_str(),
            // Copied from a &str whole: always valid UTF-8.
            Self::Inline { len, buf } => std::str::from_utf8(&buf[..*len as usize]).unwrap_or(""),
            Self::Unmatched => UNMATCHED_ROUTE,
        }
    }
}

impl Draft {
    fn new(kind: EntryKind, body: Bytes) -> Self {
        Self::with_body(kind, DraftBody::Encoded(body))
    }

    fn with_body(kind: EntryKind, body: DraftBody) -> Self {
        Self {
            id: unique_id(),
            kind,
            ts: util::now_ms(),
            body,
            token: None,
        }
    }

    /// About how many bytes the body takes (for the writer's byte budget).
    pub(crate) fn body_len(&self) -> usize {
        match &self.body {
            DraftBody::Encoded(b) => b.len(),
            DraftBody::Request { method, route, .. } => {
                method.as_str().len() + route.as_str().len() + 24
            }
        }
    }

    /// A request entry as the layer records it, without encoding it yet.
    pub(crate) fn request_fields(
        method: http::Method,
        route: Route,
        status: u16,
        latency_us: u64,
        user: Option<[u8; 8]>,
    ) -> Self {
        Self::with_body(
            EntryKind::Request,
            DraftBody::Request {
                method,
                route,
                status,
                latency_us,
                user,
            },
        )
    }

    /// The kind of entry this becomes.
    pub fn kind(&self) -> EntryKind {
        self.kind
    }

    /// A lifecycle draft's details (its JSON body), without signing it.
    pub(crate) fn details(&self) -> Option<Value> {
        match &self.body {
            DraftBody::Encoded(b) if self.kind.is_lifecycle() => serde_json::from_slice(b).ok(),
            _ => None,
        }
    }

    /// A request entry: method, route (template, or path without query
    /// string), status, latency, and the user's keyed pseudonym.
    pub fn request(
        method: &str,
        route: &str,
        status: u16,
        latency_us: u64,
        user: Option<[u8; 8]>,
    ) -> Self {
        let mut b = BytesMut::with_capacity(16 + method.len() + route.len());
        put_request(&mut b, method, route, status, latency_us, user);
        Self::new(EntryKind::Request, b.freeze())
    }

    /// The same draft with its time set to `ts` (Unix milliseconds)
    /// instead of the time it was made: for importing history kept
    /// elsewhere, or generating some (tests, demos, benchmarks).
    ///
    /// The chain proves the order of a session's entries, not their
    /// times: a time is what the holder of the history key signed.
    ///
    /// ```
    /// use session_trail::history::{Draft, Entry};
    /// use session_trail::{Key, SessionId};
    ///
    /// let draft = Draft::event("checkout", &serde_json::json!({})).unwrap().at(1_700_000_000_000);
    /// let bytes = draft.sign(&Key::generate(), &SessionId::generate(), 1, &[0; 16]);
    /// assert_eq!(Entry::decode(&bytes).unwrap().ts, 1_700_000_000_000);
    /// ```
    #[must_use]
    pub fn at(mut self, ts: i64) -> Self {
        self.ts = ts;
        self
    }

    /// An event entry.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) when the
    /// name is not 1–64 characters of letters, digits and `_ . : -`.
    pub fn event(name: &str, data: &Value) -> Result<Self, crate::Error> {
        check_event_name(name)?;
        let data = serde_json::to_vec(data)?;
        Ok(Self::event_raw(name, &data))
    }

    /// An event entry from a checked name and serialized data.
    pub(crate) fn event_raw(name: &str, data: &[u8]) -> Self {
        let mut b = BytesMut::with_capacity(4 + name.len() + data.len());
        put_str(&mut b, name);
        b.put_slice(data);
        Self::new(EntryKind::Event, b.freeze())
    }

    /// A lifecycle, gap or suspicious entry with a JSON body. (For
    /// [`EntryKind::Request`] and [`EntryKind::Event`] use their own
    /// constructors: a JSON body would not decode as those kinds.)
    pub fn lifecycle(kind: EntryKind, body: &Value) -> Self {
        let bytes = serde_json::to_vec(body).unwrap_or_default();
        Self::new(kind, Bytes::from(bytes))
    }

    /// Encodes the draft as entry `seq` chained after the entry whose tag is
    /// `prev` (zeros for `seq` 1), and signs it with `key`'s history key.
    pub fn sign(&self, key: &Key, session: &SessionId, seq: u64, prev: &[u8; TAG_LEN]) -> Bytes {
        let mut b = BytesMut::with_capacity(64 + self.body_len());
        b.put_u8(VERSION);
        b.put_u32(key.id());
        b.put_u8(self.kind.code());
        put_varint(&mut b, seq);
        put_varint(&mut b, self.ts.max(0) as u64);
        b.put_slice(&self.id);
        b.put_slice(prev);
        match &self.body {
            DraftBody::Encoded(body) => b.put_slice(body),
            DraftBody::Request {
                method,
                route,
                status,
                latency_us,
                user,
            } => put_request(
                &mut b,
                method.as_str(),
                route.as_str(),
                *status,
                *latency_us,
                *user,
            ),
        }
        let tag = compute_tag(key, session, &b);
        b.put_slice(&tag);
        b.freeze()
    }
}

/// A unique entry id without a system call per entry: 8 random bytes drawn
/// once per process, then a counter. Ids must be unique, not secret (they
/// are stored in clear in the entry).
fn unique_id() -> [u8; 16] {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static PREFIX: OnceLock<[u8; 8]> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| {
        let mut p = [0u8; 8];
        util::fill_random(&mut p);
        p
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(prefix);
    id[8..].copy_from_slice(&n.to_be_bytes());
    id
}

pub(crate) fn check_event_name(name: &str) -> Result<(), crate::Error> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b));
    if valid {
        Ok(())
    } else {
        Err(crate::Error::new(
            crate::ErrorKind::InvalidInput,
            "an event name is 1-64 characters of letters, digits and _ . : -",
        ))
    }
}

pub(crate) fn compute_tag(key: &Key, session: &SessionId, signed: &[u8]) -> [u8; TAG_LEN] {
    let mut mac = key.derived().history.clone();
    mac.update(DOMAIN);
    mac.update(session.as_bytes());
    mac.update(signed);
    let full = mac.finalize().into_bytes();
    let mut tag = [0u8; TAG_LEN];
    tag.copy_from_slice(&full[..TAG_LEN]);
    tag
}

/// A decoded history entry.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// The id of the key that signed it.
    pub key_id: u32,
    /// What it records.
    pub kind: EntryKind,
    /// Position in the session's chain, from 1.
    pub seq: u64,
    /// When it happened, Unix milliseconds.
    pub ts: i64,
    /// A unique id.
    pub id: [u8; 16],
    /// The tag of the previous entry.
    pub prev: [u8; TAG_LEN],
    /// This entry's tag.
    pub tag: [u8; TAG_LEN],
    /// What happened.
    pub body: Body,
}

/// The body of an [`Entry`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Body {
    /// A request.
    Request {
        /// HTTP method.
        method: String,
        /// Route template, or the path without its query string.
        route: String,
        /// Response status.
        status: u16,
        /// Time spent in the inner service, microseconds.
        latency_us: u64,
        /// Keyed pseudonym of the user, if one was logged in.
        user: Option<[u8; 8]>,
    },
    /// A recorded event.
    Event {
        /// Its name.
        name: String,
        /// Its attributes.
        data: Value,
    },
    /// A lifecycle, gap or suspicious entry's details.
    Details(Value),
}

/// Why an entry could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeError;

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("malformed history entry")
    }
}

impl std::error::Error for DecodeError {}

/// Splits an encoded entry into its signed part and its header fields,
/// without looking at the body. Never panics.
pub(crate) struct Parsed<'a> {
    pub(crate) key_id: u32,
    pub(crate) kind: EntryKind,
    pub(crate) seq: u64,
    pub(crate) ts: i64,
    pub(crate) id: [u8; 16],
    pub(crate) prev: [u8; TAG_LEN],
    pub(crate) body: &'a [u8],
    pub(crate) signed: &'a [u8],
    pub(crate) tag: [u8; TAG_LEN],
}

pub(crate) fn parse(bytes: &[u8]) -> Result<Parsed<'_>, DecodeError> {
    let body_end = bytes.len().checked_sub(TAG_LEN).ok_or(DecodeError)?;
    let signed = &bytes[..body_end];
    let tag: [u8; TAG_LEN] = bytes[body_end..].try_into().map_err(|_| DecodeError)?;
    let mut r = Reader(signed);
    if r.u8()? != VERSION {
        return Err(DecodeError);
    }
    let key_id = u32::from_be_bytes(r.array()?);
    let kind = EntryKind::from_code(r.u8()?).ok_or(DecodeError)?;
    let seq = r.varint()?;
    let ts = i64::try_from(r.varint()?).map_err(|_| DecodeError)?;
    let id = r.array()?;
    let prev = r.array()?;
    if seq == 0 {
        return Err(DecodeError);
    }
    Ok(Parsed {
        key_id,
        kind,
        seq,
        ts,
        id,
        prev,
        body: r.0,
        signed,
        tag,
    })
}

impl Entry {
    /// Decodes an entry (without checking its tag: see
    /// [`verify`](crate::history::verify)).
    ///
    /// # Errors
    ///
    /// [`DecodeError`] when the bytes are not a well-formed entry.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let p = parse(bytes)?;
        let body = match p.kind {
            EntryKind::Request => {
                let mut r = Reader(p.body);
                let method = r.str()?.to_owned();
                let route = r.str()?.to_owned();
                let status = u16::from_be_bytes(r.array()?);
                let latency_us = r.varint()?;
                let user = match r.u8()? {
                    0 => None,
                    1 => Some(r.array()?),
                    _ => return Err(DecodeError),
                };
                Body::Request {
                    method,
                    route,
                    status,
                    latency_us,
                    user,
                }
            }
            EntryKind::Event => {
                let mut r = Reader(p.body);
                let name = r.str()?.to_owned();
                let data = serde_json::from_slice(r.0).map_err(|_| DecodeError)?;
                Body::Event { name, data }
            }
            _ => Body::Details(serde_json::from_slice(p.body).map_err(|_| DecodeError)?),
        };
        Ok(Self {
            key_id: p.key_id,
            kind: p.kind,
            seq: p.seq,
            ts: p.ts,
            id: p.id,
            prev: p.prev,
            tag: p.tag,
            body,
        })
    }

    /// The entry as JSON: `seq`, `ts` (RFC 3339), `kind`, `id` (hex), `key`
    /// (the signing key's id, 8 hex digits), `prev` and `mac` (hex), and the
    /// body's fields (`method`, `path`, `status`, `latency_us`, and `user`
    /// when a user was logged in, for requests; `event` and `data` for
    /// events; the details' fields for the rest, except any that would
    /// replace one above, or the details under `details` when they are not
    /// a JSON object). Its [`Serialize`](serde::Serialize) output is the
    /// same.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("seq".into(), json!(self.seq));
        m.insert("ts".into(), json!(util::rfc3339(self.ts)));
        m.insert("kind".into(), json!(self.kind.as_str()));
        m.insert("id".into(), json!(hex(&self.id)));
        match &self.body {
            Body::Request {
                method,
                route,
                status,
                latency_us,
                user,
            } => {
                m.insert("method".into(), json!(method));
                m.insert("path".into(), json!(route));
                m.insert("status".into(), json!(status));
                m.insert("latency_us".into(), json!(latency_us));
                if let Some(u) = user {
                    m.insert("user".into(), json!(hex(u)));
                }
            }
            Body::Event { name, data } => {
                m.insert("event".into(), json!(name));
                m.insert("data".into(), data.clone());
            }
            Body::Details(Value::Object(details)) => {
                for (k, v) in details {
                    m.entry(k.clone()).or_insert_with(|| v.clone());
                }
            }
            Body::Details(other) => {
                m.insert("details".into(), other.clone());
            }
        }
        m.insert("key".into(), json!(format!("{:08x}", self.key_id)));
        m.insert("prev".into(), json!(hex(&self.prev)));
        m.insert("mac".into(), json!(hex(&self.tag)));
        Value::Object(m)
    }
}

/// Serializes as [`to_json`](Entry::to_json) does, so an entry can be a
/// field of an application's own response type.
impl serde::Serialize for Entry {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serde::Serialize::serialize(&self.to_json(), s)
    }
}

fn put_request(
    b: &mut BytesMut,
    method: &str,
    route: &str,
    status: u16,
    latency_us: u64,
    user: Option<[u8; 8]>,
) {
    put_str(b, method);
    put_str(b, cap_route(route).as_ref());
    b.put_u16(status);
    put_varint(b, latency_us);
    match user {
        Some(p) => {
            b.put_u8(1);
            b.put_slice(&p);
        }
        None => b.put_u8(0),
    }
}

/// A route as recorded: at most [`MAX_RECORDED_PATH`] bytes, cut at a
/// character boundary and marked with [`CUT_MARK`] (matched templates are
/// capped here too).
fn cap_route(route: &str) -> std::borrow::Cow<'_, str> {
    if route.len() <= MAX_RECORDED_PATH {
        return std::borrow::Cow::Borrowed(route);
    }
    let mut end = MAX_RECORDED_PATH - CUT_MARK.len();
    while !route.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}{CUT_MARK}", &route[..end]))
}

fn put_varint(b: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        b.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    b.put_u8(v as u8);
}

fn put_str(b: &mut BytesMut, s: &str) {
    put_varint(b, s.len() as u64);
    b.put_slice(s.as_bytes());
}

/// An entry's fields as the SQL stores keep them in columns beside the
/// entry's bytes (for queries; the bytes stay the evidence).
// Without a SQL store, analytics read some of the fields only.
#[cfg_attr(not(any(feature = "postgres", feature = "sqlite")), allow(dead_code))]
pub(crate) struct Columns<'a> {
    pub(crate) seq: u64,
    pub(crate) ts: i64,
    pub(crate) kind: EntryKind,
    /// The event's name, or the request's route.
    pub(crate) name: Option<&'a str>,
    pub(crate) method: Option<&'a str>,
    pub(crate) status: Option<u16>,
    /// The user's keyed pseudonym (hex), when the entry names one.
    pub(crate) user: Option<String>,
    /// JSON text: an event's data, a lifecycle entry's details, or a
    /// request's `{"latency_us": …}`.
    pub(crate) attrs: Option<std::borrow::Cow<'a, str>>,
}

/// Reads the fields of [`Columns`] from an encoded entry, checking that
/// the entry is well formed (its tag is not checked). Never panics.
#[cfg_attr(
    not(any(feature = "postgres", feature = "sqlite", feature = "analytics")),
    allow(dead_code)
)]
pub(crate) fn columns(bytes: &[u8]) -> Result<Columns<'_>, DecodeError> {
    let p = parse(bytes)?;
    let mut c = Columns {
        seq: p.seq,
        ts: p.ts,
        kind: p.kind,
        name: None,
        method: None,
        status: None,
        user: None,
        attrs: None,
    };
    match p.kind {
        EntryKind::Request => {
            let mut r = Reader(p.body);
            c.method = Some(r.str()?);
            c.name = Some(r.str()?);
            c.status = Some(u16::from_be_bytes(r.array()?));
            let latency_us = r.varint()?;
            c.user = match r.u8()? {
                0 => None,
                1 => Some(hex(&r.array::<8>()?)),
                _ => return Err(DecodeError),
            };
            c.attrs = Some(format!("{{\"latency_us\":{latency_us}}}").into());
        }
        EntryKind::Event => {
            let mut r = Reader(p.body);
            c.name = Some(r.str()?);
            c.attrs = Some(json_text(r.0)?.into());
        }
        _ => {
            let details: Value = serde_json::from_slice(p.body).map_err(|_| DecodeError)?;
            c.user = details
                .get("user")
                .and_then(Value::as_str)
                .map(str::to_owned);
            c.attrs = Some(json_text(p.body)?.into());
        }
    }
    Ok(c)
}

/// Checks that `raw` is one JSON value and answers it as text.
fn json_text(raw: &[u8]) -> Result<&str, DecodeError> {
    serde_json::from_slice::<serde::de::IgnoredAny>(raw).map_err(|_| DecodeError)?;
    std::str::from_utf8(raw).map_err(|_| DecodeError)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Result<u8, DecodeError> {
        let (&b, rest) = self.0.split_first().ok_or(DecodeError)?;
        self.0 = rest;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        self.take(N)?.try_into().map_err(|_| DecodeError)
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f).checked_shl(shift).ok_or(DecodeError)?;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DecodeError)
    }

    fn str(&mut self) -> Result<&'a str, DecodeError> {
        let n = usize::try_from(self.varint()?).map_err(|_| DecodeError)?;
        std::str::from_utf8(self.take(n)?).map_err(|_| DecodeError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_entry_round_trips_and_is_compact() {
        let key = Key::generate();
        let sid = SessionId::generate();
        let d = Draft::request("GET", "/api/visits", 200, 1234, Some([7; 8]));
        let bytes = d.sign(&key, &sid, 42, &[1; 16]);
        assert!(bytes.len() < 110, "{} bytes", bytes.len());
        let e = Entry::decode(&bytes).unwrap();
        assert_eq!(e.seq, 42);
        assert_eq!(e.prev, [1; 16]);
        assert_eq!(e.kind, EntryKind::Request);
        assert_eq!(e.tag, compute_tag(&key, &sid, &bytes[..bytes.len() - 16]));
        let j = e.to_json();
        assert_eq!(j["method"], "GET");
        assert_eq!(j["path"], "/api/visits");
        assert_eq!(j["status"], 200);
        assert_eq!(j["kind"], "request");
    }

    #[test]
    fn event_and_lifecycle_round_trip() {
        let key = Key::generate();
        let sid = SessionId::generate();
        let e = Entry::decode(
            &Draft::event_raw("add_to_cart", br#"{"item":"book"}"#).sign(&key, &sid, 1, &[0; 16]),
        )
        .unwrap();
        assert_eq!(e.to_json()["event"], "add_to_cart");
        assert_eq!(e.to_json()["data"]["item"], "book");
        let l = Draft::lifecycle(EntryKind::Ended, &json!({"reason": "logout"}));
        let e = Entry::decode(&l.sign(&key, &sid, 2, &[0; 16])).unwrap();
        assert_eq!(e.to_json()["reason"], "logout");
        assert_eq!(e.to_json()["kind"], "ended");
    }

    #[test]
    fn entries_serialize_exactly_as_their_json() {
        let key = Key::generate();
        let sid = SessionId::generate();
        let drafts = [
            Draft::request("GET", "/cart", 200, 77, Some([3; 8])),
            Draft::request("GET", "/", 404, 5, None),
            Draft::event("add_to_cart", &json!({"item": "book", "n": 2})).unwrap(),
            Draft::lifecycle(EntryKind::Ended, &json!({"reason": "logout"})),
            // Details that are not an object, and a field named like a
            // header field.
            Draft::lifecycle(EntryKind::Gap, &json!(3)),
            Draft::lifecycle(EntryKind::Suspicious, &json!({"seq": 99, "why": "x"})),
        ];
        for (seq, d) in (1..).zip(&drafts) {
            let e = Entry::decode(&d.sign(&key, &sid, seq, &[0; 16])).unwrap();
            assert_eq!(serde_json::to_value(&e).unwrap(), e.to_json(), "{e:?}");
            assert_eq!(e.to_json()["key"], format!("{:08x}", key.id()));
        }
    }

    #[test]
    fn truncated_entries_never_decode_and_never_panic() {
        let key = Key::generate();
        let sid = SessionId::generate();
        let bytes = Draft::request("GET", "/", 200, 1, None).sign(&key, &sid, 1, &[0; 16]);
        for n in 0..bytes.len() - 1 {
            let _ = Entry::decode(&bytes[..n]);
        }
    }
}
