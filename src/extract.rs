//! axum extractors (feature `axum`).

use axum::extract::MatchedPath;
use axum_core::body::Body;
use axum_core::extract::{FromRequestParts, OptionalFromRequestParts};
use axum_core::response::{IntoResponse, Response};
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::request::Parts;
use http::{HeaderValue, StatusCode};

use crate::Session;
use crate::error::Error;
use crate::transport::grpc_message;

/// Why the [`Session`] extractor refused.
///
/// - The layer is not installed: `500` with a message saying so.
/// - The store could not be reached: `503` with `Retry-After` (for gRPC
///   requests, `UNAVAILABLE`), never a silent logout.
///
/// Bodies are JSON: `{"error": "..."}`; for a store error the message is
/// its [`Error::client_message`], never the store's own reply.
#[derive(Debug)]
pub struct SessionRejection {
    error: Option<Error>,
    grpc: bool,
}

impl SessionRejection {
    /// The store error, when that was the cause.
    pub fn error(&self) -> Option<&Error> {
        self.error.as_ref()
    }

    /// The status this rejection answers with.
    pub fn status(&self) -> StatusCode {
        match &self.error {
            None => StatusCode::INTERNAL_SERVER_ERROR,
            Some(e) => e.status(),
        }
    }
}

impl std::fmt::Display for SessionRejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.error {
            None => f.write_str(
                "no session in the request: is `SessionLayer` installed around this router?",
            ),
            // This level only: the cause is the source.
            Some(_) => f.write_str("the session could not be loaded"),
        }
    }
}

impl std::error::Error for SessionRejection {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error.as_ref().map(|e| e as _)
    }
}

fn is_grpc(parts: &Parts) -> bool {
    parts
        .headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

impl<S: Send + Sync> FromRequestParts<S> for Session {
    type Rejection = SessionRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let grpc = is_grpc(parts);
        let session = parts
            .extensions
            .get::<Session>()
            .cloned()
            .ok_or(SessionRejection { error: None, grpc })?;
        if let Some(route) = parts.extensions.get::<MatchedPath>() {
            session.set_route(route.as_str());
        }
        session.load().await.map_err(|e| SessionRejection {
            error: Some(e),
            grpc,
        })?;
        Ok(session)
    }
}

/// `Option<Session>`: `Some` when the request has a live session, `None` for
/// anonymous requests. Store failures still reject with 503.
impl<S: Send + Sync> OptionalFromRequestParts<S> for Session {
    type Rejection = SessionRejection;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        let grpc = is_grpc(parts);
        let session = <Session as FromRequestParts<S>>::from_request_parts(parts, state).await?;
        let exists = session.exists().await.map_err(|e| SessionRejection {
            error: Some(e),
            grpc,
        })?;
        Ok(exists.then_some(session))
    }
}

impl IntoResponse for SessionRejection {
    fn into_response(self) -> Response {
        let message = self.to_string();
        match self.error {
            Some(e) => respond(&e, self.grpc),
            None => json_error(StatusCode::INTERNAL_SERVER_ERROR, &message),
        }
    }
}

/// Answers a session error: the error's status with `{"error": "..."}`,
/// where the message is [`Error::client_message`], the same for every error
/// of a kind: the error's own text (the store's reply, a setting's name and
/// value) is logged, never sent. Store failures answer `503` with
/// `Retry-After`.
impl IntoResponse for Error {
    fn into_response(self) -> Response {
        respond(&self, false)
    }
}

fn respond(e: &Error, grpc: bool) -> Response {
    e.log_answered();
    let public = e.client_message();
    if grpc {
        let mut res = Response::new(Body::empty());
        let h = res.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        h.insert("grpc-status", HeaderValue::from(e.grpc_code()));
        if let Ok(v) = HeaderValue::from_str(&grpc_message(public)) {
            h.insert("grpc-message", v);
        }
        return res;
    }
    let mut res = json_error(e.status(), public);
    if e.status() == StatusCode::SERVICE_UNAVAILABLE {
        res.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    res
}

fn json_error(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({ "error": message }).to_string();
    let mut res = Response::new(Body::from(body));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}

/// An `application/x-www-form-urlencoded` form whose CSRF token field
/// (`csrf_token` unless [`Csrf::form_field`](crate::Csrf::form_field) says
/// otherwise) must verify against the request's session; see
/// [`crate::csrf`].
///
/// A missing or invalid token is refused with `403` and a JSON body (the
/// handler does not run), and recorded as a `suspicious` entry of a live
/// session; a body that is not such a form gets `415`, one that does not
/// deserialize into `T` gets `400`, one over the route's body limit (axum's
/// `DefaultBodyLimit`, 2 MiB unless set) `413`. The token field
/// may or may not be a field of `T` (serde ignores unknown fields unless
/// `T` denies them). For a multipart form, read the field yourself and call
/// [`Session::verify_csrf_token`].
///
/// ```
/// use axum::{Router, routing::post};
/// use serde::Deserialize;
/// use session_trail::CsrfForm;
///
/// #[derive(Deserialize)]
/// struct Comment {
///     text: String,
/// }
///
/// async fn comment(CsrfForm(c): CsrfForm<Comment>) -> String {
///     c.text
/// }
///
/// let app: Router = Router::new().route("/comment", post(comment));
/// # let _ = app;
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct CsrfForm<T>(pub T);

impl<S, T> axum_core::extract::FromRequest<S> for CsrfForm<T>
where
    S: Send + Sync,
    T: serde::de::DeserializeOwned,
{
    type Rejection = Response;

    async fn from_request(req: http::Request<Body>, state: &S) -> Result<Self, Self::Rejection> {
        let Some(session) = req.extensions().get::<Session>().cloned() else {
            return Err(SessionRejection {
                error: None,
                grpc: false,
            }
            .into_response());
        };
        let is_form = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| {
                v.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            });
        if !is_form {
            return Err(json_error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "expected an application/x-www-form-urlencoded form",
            ));
        }
        // Through axum's own extractor, so the route's body limit applies.
        let bytes = <bytes::Bytes as axum_core::extract::FromRequest<S>>::from_request(req, state)
            .await
            .map_err(|rejection| {
                let status = rejection.status();
                if status == StatusCode::PAYLOAD_TOO_LARGE {
                    json_error(status, "form too large")
                } else {
                    json_error(StatusCode::BAD_REQUEST, "the form could not be read")
                }
            })?;
        let field = session.csrf_field();
        let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(&bytes)
            .map_err(|_| json_error(StatusCode::BAD_REQUEST, "malformed form"))?;
        let sent = pairs
            .iter()
            .find(|(k, _)| *k == field)
            .map(|(_, v)| v.as_str());
        if !sent.is_some_and(|t| session.verify_csrf_token(t)) {
            session.record_csrf_refusal("form_token");
            return Err(json_error(
                StatusCode::FORBIDDEN,
                "cross-site request refused",
            ));
        }
        let value = serde_urlencoded::from_bytes(&bytes)
            .map_err(|e| json_error(StatusCode::BAD_REQUEST, &format!("invalid form: {e}")))?;
        Ok(Self(value))
    }
}
