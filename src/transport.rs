//! Where the credential travels: the cookie and the header.

use std::sync::atomic::Ordering;

use cookie::Cookie;
use http::header::{CONTENT_TYPE, COOKIE, SET_COOKIE, USER_AGENT};
use http::{HeaderMap, HeaderValue, Response, StatusCode};

use crate::credential::Credential;
use crate::error::Error;
use crate::manager::Shared;
use crate::session::{CredentialAction, Presented};

pub(crate) struct Read {
    pub(crate) presented: Option<Presented>,
    pub(crate) used_cookie: bool,
    pub(crate) used_header: bool,
    /// The presented credential came from the cookie (not the header).
    pub(crate) presented_by_cookie: bool,
    pub(crate) grpc: bool,
    pub(crate) user_agent: Option<HeaderValue>,
}

/// Reads and verifies the credential. Anything that does not verify is
/// treated as absent (and counted); nothing here can fail or panic.
pub(crate) fn read(shared: &Shared, headers: &HeaderMap) -> Read {
    let mut presented = None;
    let mut used_header = false;
    let mut used_cookie = false;
    let mut seen_invalid = false;
    let ring = &shared.ring;
    let try_value = |v: &[u8], presented: &mut Option<Presented>, seen_invalid: &mut bool| {
        if presented.is_some() {
            return;
        }
        match Credential::verify_with_key_id(v, ring) {
            Some((credential, kid)) => {
                *presented = Some(Presented {
                    credential,
                    current_key: kid == ring.current().id(),
                });
            }
            None if !v.is_empty() => *seen_invalid = true,
            None => {}
        }
    };
    if let Some(name) = &shared.config.header
        && let Some(v) = headers.get(name)
    {
        used_header = true;
        try_value(v.as_bytes(), &mut presented, &mut seen_invalid);
    }
    let by_header = presented.is_some();
    if let Some(ck) = &shared.config.cookie {
        // By bytes, not as text: another cookie of the site (an analytics
        // cookie with a non-ASCII byte) must not hide ours.
        for header in headers.get_all(COOKIE) {
            for value in cookie_values(header.as_bytes(), ck.name.as_bytes()) {
                used_cookie = true;
                if value.is_ascii() {
                    try_value(value, &mut presented, &mut seen_invalid);
                } else {
                    seen_invalid = true;
                }
            }
        }
    }
    if presented.is_none() && seen_invalid {
        shared.invalid_credentials.fetch_add(1, Ordering::Relaxed);
    }
    let grpc = headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let user_agent = headers.get(USER_AGENT).cloned();
    Read {
        presented_by_cookie: presented.is_some() && !by_header,
        presented,
        used_cookie,
        used_header,
        grpc,
        user_agent,
    }
}

/// The values of the pairs called `name` in one `Cookie` header, found by
/// bytes: pairs are separated by `;`, a pair is split at its first `=`, and
/// spaces and tabs around names and values are trimmed. Pairs without `=`
/// and other cookies' bytes, whatever they are, are skipped.
fn cookie_values<'a>(header: &'a [u8], name: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
    header.split(|&b| b == b';').filter_map(move |pair| {
        let eq = pair.iter().position(|&b| b == b'=')?;
        (pair[..eq].trim_ascii() == name).then(|| pair[eq + 1..].trim_ascii())
    })
}

/// The client's address, from the configured source.
pub(crate) fn client_ip<B>(
    source: &crate::manager::ClientAddress,
    req: &http::Request<B>,
) -> Option<std::net::IpAddr> {
    use crate::manager::ClientAddress;
    match source {
        ClientAddress::ConnectInfo => {
            #[cfg(feature = "axum")]
            if let Some(ci) = req
                .extensions()
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            {
                return Some(ci.0.ip());
            }
            req.extensions()
                .get::<std::net::SocketAddr>()
                .map(|a| a.ip())
        }
        ClientAddress::Header(name) => {
            let text = req
                .headers()
                .get_all(name)
                .iter()
                .next_back()?
                .to_str()
                .ok()?;
            text.rsplit(',').next()?.trim().parse().ok()
        }
        _ => None,
    }
}

/// Sets or clears the credential on the response, on the transports the
/// request used (a first request: the cookie when there is one).
pub(crate) fn write<B>(
    shared: &Shared,
    res: &mut Response<B>,
    action: &CredentialAction,
    used_cookie: bool,
    used_header: bool,
) {
    let value = match action {
        CredentialAction::Keep => return,
        CredentialAction::Set(v) => Some(v.as_str()),
        CredentialAction::Clear => None,
    };
    let header_out = shared
        .config
        .header
        .as_ref()
        .filter(|_| used_header || shared.config.cookie.is_none());
    let cookie_out = shared
        .config
        .cookie
        .as_ref()
        .filter(|_| used_cookie || header_out.is_none());
    if let Some(name) = header_out
        && let Ok(v) = HeaderValue::from_str(value.unwrap_or(""))
    {
        res.headers_mut().insert(name.clone(), v);
    }
    if let Some(ck) = cookie_out {
        let mut c = Cookie::build((ck.name.clone(), value.unwrap_or("").to_owned()))
            .http_only(ck.http_only)
            .secure(ck.secure)
            .same_site(ck.same_site)
            .path(ck.path.clone());
        if let Some(d) = &ck.domain {
            c = c.domain(d.clone());
        }
        match value {
            None => {
                c = c
                    .max_age(cookie::time::Duration::ZERO)
                    .expires(cookie::time::OffsetDateTime::UNIX_EPOCH);
            }
            Some(_) => {
                if let Some(age) = ck.max_age {
                    c = c.max_age(cookie::time::Duration::seconds(age.as_secs() as i64));
                }
            }
        }
        if let Ok(v) = HeaderValue::from_str(&c.build().to_string()) {
            res.headers_mut().append(SET_COOKIE, v);
        }
    }
}

/// The layer's own answer when the session cannot be saved: 503 with
/// `Retry-After` and the JSON body every error of this crate has, or for
/// gRPC requests a trailers-only response with the error's gRPC status and
/// its [`Error::client_message`] (never the error's own text, which may
/// quote the store). Logged once, with its cause.
pub(crate) fn error_response<B: crate::ErrorBody>(err: &Error, grpc: bool) -> Response<B> {
    err.log_answered();
    let json = serde_json::json!({ "error": err.client_message() }).to_string();
    let mut res = match B::from_json(json).filter(|_| !grpc) {
        Some(body) => {
            let mut res = Response::new(body);
            res.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            res
        }
        None => Response::new(B::default()),
    };
    if grpc {
        let h = res.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        h.insert("grpc-status", HeaderValue::from(err.grpc_code()));
        if let Ok(v) = HeaderValue::from_str(&grpc_message(err.client_message())) {
            h.insert("grpc-message", v);
        }
    } else {
        *res.status_mut() = err.status();
        if err.status() == StatusCode::SERVICE_UNAVAILABLE {
            res.headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
    }
    res
}

/// Percent-encodes a gRPC message as the protocol asks.
pub(crate) fn grpc_message(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    for b in msg.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::cookie_values;

    #[test]
    fn cookie_values_are_found_by_bytes() {
        let header = b"other=caf\xc3\xa9;session=abc ; \tsession = def;x;=y;sessionx=no;session=";
        let found: Vec<&[u8]> = cookie_values(header, b"session").collect();
        assert_eq!(found, [&b"abc"[..], b"def", b""]);
        assert_eq!(cookie_values(b"", b"session").count(), 0);
        assert_eq!(
            cookie_values(b"a=b=c", b"a").collect::<Vec<_>>(),
            [&b"b=c"[..]]
        );
    }
}
