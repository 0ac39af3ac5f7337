//! Cross-site request forgery (CSRF) protection, bound to the session.
//!
//! A cookie session is what a cross-site request rides on: the browser
//! attaches the cookie to a form posted from any site. With
//! [`SessionLayerBuilder::csrf`](crate::SessionLayerBuilder::csrf) the
//! layer refuses such requests before the handler runs, in two ways:
//!
//! 1. **What the browser says about the request.** A request with an
//!    unsafe method (anything but `GET`, `HEAD` and `OPTIONS`) is refused
//!    when `Sec-Fetch-Site` is anything but `same-origin` or `none` (a
//!    navigation the user typed): `cross-site`, `same-site`, or a value
//!    this crate does not know. Without that header (older browsers), it
//!    is refused when `Origin` is not the request's own origin (`null`
//!    included); without both, when `Referer` is not. An `Origin` or
//!    `Referer` that is present but unreadable is refused, never taken as
//!    absent. A request with none of the three (a non-browser client:
//!    `curl`, a server, a gRPC client) passes: it carries no ambient cookie
//!    a third site could have made it send. These are the checks of
//!    OWASP's CSRF cheat sheet and of Go's `CrossOriginProtection` (which
//!    tower-http's `CsrfLayer` ports), in the same order, with OWASP's
//!    `Referer` fallback added.
//! 2. **A token bound to the session.**
//!    [`Session::csrf_token`](crate::Session::csrf_token) answers a token
//!    the page sends back in the `X-CSRF-Token` header (or, for an HTML
//!    form, in the `csrf_token` field, read by [`CsrfForm`](crate::CsrfForm)).
//!    The token is an HMAC of the session id and the session's current
//!    credential token under a key of its own (derived from the layer's
//!    [`Key`]), so it needs no storage, and it changes whenever the
//!    credential's token rotates: at login, at a privilege change, on
//!    [`regenerate`](crate::Session::regenerate). Each call masks it with
//!    fresh random bytes, so no two responses carry the same bytes (the
//!    BREACH attack on compressed responses), and every masked form
//!    verifies, in constant time. A request that carries a token that does
//!    not verify is refused, whatever its headers say.
//!
//! In [`strict`](Csrf::strict) mode, every unsafe request that presents a
//! session in the cookie must carry a valid token. The layer reads it from
//! the header, or, for a request whose body is a urlencoded form, from the
//! form's field, before the handler runs; the handler gets the same bytes.
//! The form is read up to [`form_limit`](Csrf::form_limit) (2 MiB; `413`
//! above it), as axum's request body: add the layer with `Router::layer`
//! (or inside any layer that changes the body type), else such forms are
//! answered `500` with a message saying so. Any other request without the
//! header is refused (a multipart form must send the token in the header).
//! Neither a form too large nor a body that fails while it is read is
//! recorded as an attack. A credential sent in the layer's request header
//! (API and gRPC clients) needs no token: browsers never attach it on
//! their own.
//!
//! A refusal is answered with `403 Forbidden` and a JSON body
//! `{"error": "..."}` (gRPC: `PERMISSION_DENIED`); the handler never runs.
//! When the request presented a live session, the session's history gets a
//! signed `suspicious` entry (`signal` and `reason` `csrf`, with the check
//! that failed). The entry is appended only if the presented token is
//! still the session's live token (the store checks it atomically, as for
//! a request that never loads its session; so only when the history is
//! kept in the session store), and at most once per credential token, per
//! server, counted apart from the entries of replayed credentials, so a
//! hostile page can neither push the session's own history out (keep-N)
//! nor use up the entries that would record a stolen cookie's replay.
//! Further refusals of the same credential are answered the same way and
//! logged at `DEBUG`, not recorded. A refusal changes nothing else
//! about the session: it is not loaded, ended or rotated, since the request
//! was made by a third party.
//!
//! # The request's own origin
//!
//! The host (and port) is the request's `Host` header (or its URI's
//! authority, in HTTP/2). Behind a reverse proxy that rewrites `Host`, turn
//! on [`trust_forwarded_headers`](Csrf::trust_forwarded_headers): the
//! first `X-Forwarded-Host` and `X-Forwarded-Proto` (or `Forwarded`'s
//! `host=` and `proto=`) are used instead. Only do so when the proxy
//! overwrites these headers: a client could otherwise claim any origin.
//! The scheme is the one set with [`scheme`](Csrf::scheme), else the
//! forwarded one, else the URI's; when none is known (plain HTTP/1.1
//! behind no configuration), only host and port are compared, as Go does.
//! Other origins allowed to post (a second front end) are listed with
//! [`trusted_origin`](Csrf::trusted_origin).
//!
//! # With tower-http's `CsrfLayer`
//!
//! This crate does not depend on it: the layer here performs the same
//! Fetch Metadata and `Origin` checks, and adds what needs the session (the
//! token, the `Referer` fallback OWASP asks for, and the history entry).
//! Running both is harmless but redundant.
//!
//! # What a deployment must still do
//!
//! Serve over HTTPS (with HSTS): the checks trust the browser's headers,
//! which a network attacker on plain HTTP can forge, and a scheme that is
//! not known is not compared. Keep the session cookie `SameSite=Lax` (the
//! default) or `Strict`. Never change state on `GET`. When a response
//! carrying a token may be cached, mark it `Cache-Control: no-store` (the
//! token belongs to one session) and `Vary: Cookie`.
//!
//! ```
//! use session_trail::{Csrf, Key, SessionLayer, store::MemoryStore};
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let layer = SessionLayer::builder(MemoryStore::new(), Key::generate())
//!     .csrf(
//!         Csrf::new()
//!             .strict(true)
//!             .scheme("https")
//!             .trusted_origin("https://admin.example.com"),
//!     )
//!     .build()
//!     .unwrap();
//! # let _ = layer;
//! // A setting that cannot work fails at construction, naming it.
//! let err = SessionLayer::builder(MemoryStore::new(), Key::generate())
//!     .csrf(Csrf::new().trusted_origin("admin.example.com"))
//!     .build()
//!     .unwrap_err();
//! assert_eq!(err.setting(), "csrf_trusted_origin");
//! # });
//! ```

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::Mac;
use http::{HeaderMap, HeaderName, Method, Uri, header};

use crate::SessionId;
use crate::error::ConfigError;
use crate::key::{Key, KeyRing};

/// The default header the token is read from.
pub const DEFAULT_HEADER: &str = "x-csrf-token";
/// The default form field the token is read from (see [`CsrfForm`](crate::CsrfForm)).
pub const DEFAULT_FORM_FIELD: &str = "csrf_token";

/// The most the layer reads of a urlencoded form in strict mode (axum's
/// default body limit).
/// The default of [`Csrf::form_limit`].
pub const DEFAULT_FORM_LIMIT: usize = 2 * 1024 * 1024;

const RAW_LEN: usize = 32;
const MASKED_LEN: usize = 2 * RAW_LEN;

/// CSRF protection settings; see the [module documentation](self).
#[derive(Clone, Debug)]
pub struct Csrf {
    strict: bool,
    scheme: Option<String>,
    trust_forwarded: bool,
    trusted: Vec<String>,
    header: String,
    field: String,
    form_limit: usize,
}

impl Default for Csrf {
    fn default() -> Self {
        Self::new()
    }
}

impl Csrf {
    /// Lenient mode, no trusted extra origin, the token in
    /// `X-CSRF-Token` or the form field `csrf_token`.
    pub fn new() -> Self {
        Self {
            strict: false,
            scheme: None,
            trust_forwarded: false,
            trusted: Vec::new(),
            header: DEFAULT_HEADER.to_owned(),
            field: DEFAULT_FORM_FIELD.to_owned(),
            form_limit: DEFAULT_FORM_LIMIT,
        }
    }

    /// Strict mode: every unsafe request that presents a session in the
    /// cookie must carry a valid token (in the header, or in the form field
    /// of a form read by [`CsrfForm`](crate::CsrfForm)), whatever its other
    /// headers say. A credential sent in the layer's request header (API and
    /// gRPC clients) needs none: browsers never attach it on their own.
    /// Default off: the token is checked whenever a request carries one.
    pub fn strict(mut self, strict: bool) -> Self {
        self.strict = strict;
        self
    }

    /// The scheme this service is reached by (`http` or `https`), so that
    /// an `Origin` of the other scheme is refused. Checked by `build`.
    pub fn scheme(mut self, scheme: impl Into<String>) -> Self {
        self.scheme = Some(scheme.into().to_ascii_lowercase());
        self
    }

    /// Reads the request's own host and scheme from `X-Forwarded-Host` and
    /// `X-Forwarded-Proto` (or `Forwarded`) instead of `Host`. Only behind
    /// a proxy that overwrites them. Default off.
    pub fn trust_forwarded_headers(mut self, trust: bool) -> Self {
        self.trust_forwarded = trust;
        self
    }

    /// An origin (`scheme://host[:port]`) whose unsafe requests pass the
    /// origin checks (the token is still checked). Checked by `build`.
    pub fn trusted_origin(mut self, origin: impl Into<String>) -> Self {
        self.trusted.push(origin.into());
        self
    }

    /// The header the token is read from. Default `X-CSRF-Token`.
    pub fn header_name(mut self, name: impl Into<String>) -> Self {
        self.header = name.into();
        self
    }

    /// The largest urlencoded form (in bytes) the layer reads in strict
    /// mode to find its token field; a larger form is answered `413` (and
    /// not recorded as an attack). In strict mode this, not axum's
    /// `DefaultBodyLimit`, bounds what is read of such a form before the
    /// handler runs. Default 2 MiB; checked by `build` (at least 1).
    pub fn form_limit(mut self, bytes: usize) -> Self {
        self.form_limit = bytes;
        self
    }

    /// The form field [`CsrfForm`](crate::CsrfForm) reads the token from. Default
    /// `csrf_token`.
    pub fn form_field(mut self, name: impl Into<String>) -> Self {
        self.field = name.into();
        self
    }

    /// Validates the settings into the form the layer checks with.
    pub(crate) fn build(self) -> Result<CsrfCheck, ConfigError> {
        if let Some(s) = &self.scheme
            && s != "http"
            && s != "https"
        {
            return Err(ConfigError::new(
                "csrf_scheme",
                format!("{s:?} is not a web scheme; use \"http\" or \"https\""),
            ));
        }
        let header = HeaderName::from_bytes(self.header.as_bytes()).map_err(|_| {
            ConfigError::new(
                "csrf_header",
                format!("{:?} is not a valid header name", self.header),
            )
        })?;
        if self.strict && !cfg!(feature = "axum") {
            return Err(ConfigError::new(
                "csrf_strict",
                "strict mode reads forms as axum's request body: enable the `axum` feature, \
                 or leave strict mode off",
            ));
        }
        if self.form_limit == 0 {
            return Err(ConfigError::new(
                "csrf_form_limit",
                "must be at least 1 byte",
            ));
        }
        if self.field.is_empty() {
            return Err(ConfigError::new(
                "csrf_form_field",
                "the field name is empty",
            ));
        }
        let mut trusted = Vec::with_capacity(self.trusted.len());
        for t in &self.trusted {
            let o = Origin::parse(t)
                .filter(|o| o.explicit_only)
                .ok_or_else(|| {
                    ConfigError::new(
                        "csrf_trusted_origin",
                        format!("{t:?} is not an origin of the form scheme://host[:port]"),
                    )
                })?;
            trusted.push(o);
        }
        Ok(CsrfCheck {
            strict: self.strict,
            scheme: self.scheme,
            trust_forwarded: self.trust_forwarded,
            trusted,
            header,
            field: self.field,
            form_limit: self.form_limit,
        })
    }
}

/// The validated settings.
#[derive(Clone, Debug)]
pub(crate) struct CsrfCheck {
    pub(crate) strict: bool,
    scheme: Option<String>,
    trust_forwarded: bool,
    trusted: Vec<Origin>,
    pub(crate) header: HeaderName,
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) field: String,
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) form_limit: usize,
}

/// What the check decided for one request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Pass,
    /// Strict mode, a urlencoded form without the header token: the layer
    /// reads the form and verifies its field before calling the inner
    /// service.
    FormPending,
    /// Refused; the check that failed.
    Refuse(&'static str),
}

/// Whether a method can change state (anything but `GET`, `HEAD` and
/// `OPTIONS`, as Go and tower-http count them).
pub(crate) fn is_unsafe(m: &Method) -> bool {
    !matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS)
}

impl CsrfCheck {
    /// Checks an unsafe request. `presented` is the verified credential the
    /// request presented (`None` without one), `via_cookie` whether it came
    /// in the cookie: strict mode requires the token only then, since a
    /// credential in a request header is never attached by a browser on
    /// its own.
    pub(crate) fn check(
        &self,
        uri: &Uri,
        headers: &HeaderMap,
        presented: Option<(&KeyRing, &SessionId, &[u8; 32])>,
        via_cookie: bool,
    ) -> Verdict {
        if let Err(check) = self.origin_check(uri, headers) {
            return Verdict::Refuse(check);
        }
        let sent = headers.get(&self.header);
        match (sent, presented) {
            (Some(v), Some((ring, sid, token))) => {
                if verify(ring, sid, token, v.as_bytes()) {
                    Verdict::Pass
                } else {
                    Verdict::Refuse("token")
                }
            }
            // A token with no session to verify it against.
            (Some(_), None) => Verdict::Refuse("token"),
            (None, Some(_)) if self.strict && via_cookie => {
                if is_urlencoded_form(headers) {
                    Verdict::FormPending
                } else {
                    Verdict::Refuse("token_missing")
                }
            }
            (None, _) => Verdict::Pass,
        }
    }

    fn origin_check(&self, uri: &Uri, headers: &HeaderMap) -> Result<(), &'static str> {
        // A header that is present but not text is treated as hostile, never
        // as absent.
        let origin = headers.get(header::ORIGIN).map(|v| v.to_str().ok());
        if let Some(Some(o)) = origin
            && let Some(o) = Origin::parse(o)
            && self.trusted.iter().any(|t| t.same(&o))
        {
            return Ok(());
        }
        if let Some(site) = headers.get("sec-fetch-site") {
            // Only the two values that mean "not cross-site" pass: anything
            // else (`cross-site`, `same-site`, a value of a later
            // specification) is refused, as Go does.
            return match site.as_bytes() {
                b"same-origin" | b"none" => Ok(()),
                _ => Err("sec_fetch_site"),
            };
        }
        if let Some(o) = origin {
            return match o.and_then(Origin::parse) {
                Some(o) if self.is_own(&o, uri, headers) => Ok(()),
                _ => Err("origin"),
            };
        }
        if let Some(r) = headers.get(header::REFERER) {
            return match r.to_str().ok().and_then(Origin::of_url) {
                Some(o) if self.is_own(&o, uri, headers) => Ok(()),
                _ => Err("referer"),
            };
        }
        Ok(())
    }

    /// Whether `o` is the request's own origin.
    fn is_own(&self, o: &Origin, uri: &Uri, headers: &HeaderMap) -> bool {
        let (fwd_host, fwd_proto) = match self.trust_forwarded.then(|| forwarded(headers)).flatten()
        {
            Some((h, p)) => (h, p),
            None => (None, None),
        };
        let host = match &fwd_host {
            Some(h) => Some(h.as_str()),
            _ => uri
                .authority()
                .map(|a| a.as_str())
                .or_else(|| headers.get(header::HOST).and_then(|v| v.to_str().ok())),
        };
        let Some(host) = host else {
            return false;
        };
        let scheme = self
            .scheme
            .clone()
            .or(fwd_proto)
            .or_else(|| uri.scheme_str().map(str::to_ascii_lowercase));
        let Some((own_host, own_port)) = split_host(host) else {
            return false;
        };
        if let Some(s) = &scheme
            && *s != o.scheme
        {
            return false;
        }
        let port_scheme = scheme.as_deref().unwrap_or(&o.scheme);
        let own_port = own_port.or_else(|| default_port(port_scheme));
        own_host.eq_ignore_ascii_case(&o.host) && own_port == o.port
    }
}

/// `(host, proto)` from `X-Forwarded-Host`/`X-Forwarded-Proto`, else from
/// `Forwarded`; the first hop's values.
fn forwarded(headers: &HeaderMap) -> Option<(Option<String>, Option<String>)> {
    let first = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    let mut host = first("x-forwarded-host");
    let mut proto = first("x-forwarded-proto").map(|p| p.to_ascii_lowercase());
    if host.is_none()
        && proto.is_none()
        && let Some(f) = first("forwarded")
    {
        for pair in f.split(';') {
            let Some((k, v)) = pair.split_once('=') else {
                continue;
            };
            let v = v.trim().trim_matches('"').to_owned();
            match k.trim().to_ascii_lowercase().as_str() {
                "host" => host = Some(v),
                "proto" => proto = Some(v.to_ascii_lowercase()),
                _ => {}
            }
        }
    }
    (host.is_some() || proto.is_some()).then_some((host, proto))
}

/// A web origin: scheme, host and port (the scheme's default when absent).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Origin {
    scheme: String,
    host: String,
    port: Option<u16>,
    /// Nothing but `scheme://host[:port]` (no path, no user).
    explicit_only: bool,
}

impl Origin {
    /// Parses an `Origin` header value (`null` and anything else that is
    /// not `scheme://host[:port]` gives `None`).
    fn parse(s: &str) -> Option<Self> {
        let o = Self::of_url(s)?;
        o.explicit_only.then_some(o)
    }

    /// The origin of a URL (a `Referer`).
    fn of_url(s: &str) -> Option<Self> {
        let (scheme, rest) = s.split_once("://")?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme.is_empty()
            || !scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        {
            return None;
        }
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let authority = &rest[..end];
        if authority.contains('@') {
            return None;
        }
        let (host, port) = split_host(authority)?;
        if host.is_empty() {
            return None;
        }
        let port = port.or_else(|| default_port(&scheme));
        Some(Self {
            explicit_only: end == rest.len(),
            scheme,
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    fn same(&self, other: &Self) -> bool {
        self.scheme == other.scheme && self.host == other.host && self.port == other.port
    }
}

/// Splits `host[:port]` (IPv6 in brackets); `None` when the port is not a
/// number.
fn split_host(authority: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let close = rest.find(']')?;
        let host = &authority[..close + 2];
        match &rest[close + 1..] {
            "" => (host, None),
            p => (host, Some(p.strip_prefix(':')?)),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port = match port {
        Some(p) => Some(p.parse().ok()?),
        None => None,
    };
    Some((host, port))
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

/// Whether the body is a urlencoded HTML form.
fn is_urlencoded_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|ct| {
            ct.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

/// The unmasked token of a session's credential token under `key`.
fn raw(key: &Key, sid: &SessionId, token: &[u8; 32]) -> hmac::Hmac<sha2::Sha256> {
    let mut mac = key.derived().csrf.clone();
    mac.update(b"session-trail/csrf/v1\0");
    mac.update(sid.as_bytes());
    mac.update(token);
    mac
}

/// A masked token: random pad ‖ (pad ⊕ token), base64url.
pub(crate) fn mint(key: &Key, sid: &SessionId, token: &[u8; 32]) -> String {
    let t = raw(key, sid, token).finalize().into_bytes();
    let mut out = [0u8; MASKED_LEN];
    crate::util::fill_random(&mut out[..RAW_LEN]);
    for i in 0..RAW_LEN {
        out[RAW_LEN + i] = out[i] ^ t[i];
    }
    URL_SAFE_NO_PAD.encode(out)
}

/// Verifies a masked token against the credential's token, under every key
/// of the ring (a token minted before a key rotation still verifies), in
/// constant time.
pub(crate) fn verify(ring: &KeyRing, sid: &SessionId, token: &[u8; 32], sent: &[u8]) -> bool {
    let sent = sent.trim_ascii();
    if sent.len() != URL_SAFE_NO_PAD.encode([0u8; MASKED_LEN]).len() {
        return false;
    }
    let mut masked = [0u8; MASKED_LEN];
    match URL_SAFE_NO_PAD.decode_slice(sent, &mut masked) {
        Ok(MASKED_LEN) => {}
        _ => return false,
    }
    let mut t = [0u8; RAW_LEN];
    for i in 0..RAW_LEN {
        t[i] = masked[i] ^ masked[RAW_LEN + i];
    }
    let mut ok = false;
    for key in ring.keys() {
        ok |= raw(key, sid, token).verify_slice(&t).is_ok();
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(c: &CsrfCheck, headers: &[(&str, &str)]) -> Verdict {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        c.check(&Uri::from_static("/api/x"), &h, None, false)
    }

    #[test]
    fn origins_parse_with_default_ports_and_refuse_the_rest() {
        let o = Origin::parse("https://Example.com").unwrap();
        assert_eq!((o.host.as_str(), o.port), ("example.com", Some(443)));
        assert_eq!(Origin::parse("http://[::1]:8080").unwrap().port, Some(8080));
        for bad in [
            "null",
            "example.com",
            "https://",
            "https://a.com/path",
            "https://u@a.com",
            "http://a:x",
        ] {
            assert!(Origin::parse(bad).is_none(), "{bad}");
        }
        assert!(Origin::of_url("https://a.com/path?q").is_some());
    }

    #[test]
    fn the_origin_checks_follow_fetch_metadata_then_origin_then_referer() {
        let c = Csrf::new().scheme("http").build().unwrap();
        let host = ("host", "127.0.0.1:3000");
        use Verdict::*;
        assert_eq!(check(&c, &[host]), Pass);
        assert_eq!(check(&c, &[host, ("sec-fetch-site", "same-origin")]), Pass);
        assert_eq!(check(&c, &[host, ("sec-fetch-site", "none")]), Pass);
        assert_eq!(
            check(&c, &[host, ("sec-fetch-site", "cross-site")]),
            Refuse("sec_fetch_site")
        );
        assert_eq!(
            check(&c, &[host, ("sec-fetch-site", "same-site")]),
            Refuse("sec_fetch_site")
        );
        // Fetch Metadata wins over a matching Origin.
        assert_eq!(
            check(
                &c,
                &[
                    host,
                    ("sec-fetch-site", "cross-site"),
                    ("origin", "http://127.0.0.1:3000")
                ]
            ),
            Refuse("sec_fetch_site")
        );
        assert_eq!(
            check(&c, &[host, ("origin", "http://127.0.0.1:3000")]),
            Pass
        );
        assert_eq!(
            check(&c, &[host, ("origin", "https://127.0.0.1:3000")]),
            Refuse("origin")
        );
        assert_eq!(
            check(&c, &[host, ("origin", "http://localhost:3000")]),
            Refuse("origin")
        );
        assert_eq!(
            check(&c, &[host, ("origin", "http://127.0.0.1:3001")]),
            Refuse("origin")
        );
        assert_eq!(check(&c, &[host, ("origin", "null")]), Refuse("origin"));
        assert_eq!(
            check(&c, &[host, ("referer", "http://127.0.0.1:3000/page")]),
            Pass
        );
        assert_eq!(
            check(&c, &[host, ("referer", "http://evil.test/")]),
            Refuse("referer")
        );
        // Origin decides before Referer.
        assert_eq!(
            check(
                &c,
                &[
                    host,
                    ("origin", "http://evil.test"),
                    ("referer", "http://127.0.0.1:3000/")
                ]
            ),
            Refuse("origin")
        );
    }

    #[test]
    fn without_a_known_scheme_host_and_port_are_compared() {
        let c = Csrf::new().build().unwrap();
        assert_eq!(
            check(&c, &[("host", "a.test"), ("origin", "https://a.test")]),
            Verdict::Pass
        );
        assert_eq!(
            check(
                &c,
                &[("host", "a.test:8443"), ("origin", "https://a.test:8443")]
            ),
            Verdict::Pass
        );
        assert_eq!(
            check(&c, &[("host", "a.test:8443"), ("origin", "https://a.test")]),
            Verdict::Refuse("origin")
        );
    }

    #[test]
    fn trusted_origins_and_forwarded_headers() {
        let c = Csrf::new()
            .trusted_origin("https://admin.example.com")
            .trust_forwarded_headers(true)
            .build()
            .unwrap();
        let trusted = [
            ("host", "internal:8080"),
            ("sec-fetch-site", "cross-site"),
            ("origin", "https://admin.example.com"),
        ];
        assert_eq!(check(&c, &trusted), Verdict::Pass);
        let proxied = [
            ("host", "internal:8080"),
            ("x-forwarded-host", "app.example.com"),
            ("x-forwarded-proto", "https"),
            ("origin", "https://app.example.com"),
        ];
        assert_eq!(check(&c, &proxied), Verdict::Pass);
        let forwarded = [
            ("host", "internal:8080"),
            ("forwarded", "for=1.2.3.4;host=app.example.com;proto=https"),
            ("origin", "http://app.example.com"),
        ];
        assert_eq!(check(&c, &forwarded), Verdict::Refuse("origin"));
        // Not trusted: the Host header decides.
        let c = Csrf::new().build().unwrap();
        assert_eq!(check(&c, &proxied), Verdict::Refuse("origin"));
    }

    #[test]
    fn invalid_settings_name_the_setting() {
        let e = Csrf::new().scheme("ftp").build().unwrap_err();
        assert_eq!(e.setting(), "csrf_scheme");
        let e = Csrf::new().header_name("bad header").build().unwrap_err();
        assert_eq!(e.setting(), "csrf_header");
        let e = Csrf::new()
            .trusted_origin("https://a.com/")
            .build()
            .unwrap_err();
        assert_eq!(e.setting(), "csrf_trusted_origin");
        let e = Csrf::new().form_field("").build().unwrap_err();
        assert_eq!(e.setting(), "csrf_form_field");
    }

    #[test]
    fn masked_tokens_differ_and_all_verify_only_for_their_credential() {
        let key = Key::generate();
        let ring = KeyRing::new(key.clone());
        let sid = SessionId::generate();
        let token = [7u8; 32];
        let a = mint(&key, &sid, &token);
        let b = mint(&key, &sid, &token);
        assert_ne!(a, b);
        assert!(verify(&ring, &sid, &token, a.as_bytes()));
        assert!(verify(&ring, &sid, &token, b.as_bytes()));
        assert!(
            !verify(&ring, &sid, &[8u8; 32], a.as_bytes()),
            "another token"
        );
        assert!(
            !verify(&ring, &SessionId::generate(), &token, a.as_bytes()),
            "another session"
        );
        assert!(
            !verify(&ring, &sid, &token, &a.as_bytes()[..a.len() - 1]),
            "truncated"
        );
        assert!(!verify(&ring, &sid, &token, b""));
        let mut flipped = a.clone().into_bytes();
        flipped[70] = if flipped[70] == b'A' { b'B' } else { b'A' };
        assert!(!verify(&ring, &sid, &token, &flipped));
        // A token minted under the previous key still verifies.
        let rotated = KeyRing::new(Key::generate()).with_previous(key);
        assert!(verify(&rotated, &sid, &token, a.as_bytes()));
    }
}
