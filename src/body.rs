//! The bodies of the layer's own answers.

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::{BoxBody, UnsyncBoxBody};
use http_body_util::{Empty, Full};

/// A response body type the layer can answer with on its own.
///
/// When saving a session fails after the handler answered, the layer
/// answers by itself (`503` with `Retry-After`, or the gRPC status for gRPC
/// requests), in the inner service's response body type. Where that type
/// can carry text, the answer has the same JSON body as every other error of
/// this crate: `{"error": "session store unavailable; try again shortly"}`
/// (see [`Error::client_message`](crate::Error::client_message)).
///
/// Implemented for axum's body (feature `axum`), tonic's (feature `tonic`:
/// gRPC errors are trailers-only, so the body stays empty), `String`,
/// `Vec<u8>`, `Bytes`, and `http-body-util`'s `Full<Bytes>`, `Empty<Bytes>`,
/// `BoxBody<Bytes, E>` and `UnsyncBoxBody<Bytes, E>`. For a body type of
/// your own, implement it: the provided method answers no text (an empty
/// body, and no `content-type`).
///
/// ```
/// use session_trail::ErrorBody;
///
/// #[derive(Default)]
/// struct MyBody(Vec<u8>);
///
/// impl ErrorBody for MyBody {
///     fn from_json(json: String) -> Option<Self> {
///         Some(MyBody(json.into_bytes()))
///     }
/// }
///
/// let body = MyBody::from_json(r#"{"error":"x"}"#.to_owned()).unwrap();
/// assert_eq!(body.0, br#"{"error":"x"}"#);
/// assert_eq!(<String as ErrorBody>::from_json("{}".into()).as_deref(), Some("{}"));
/// ```
pub trait ErrorBody: Default {
    /// A body holding `json` (an object with an `error` message), or `None`
    /// when this type cannot carry it (the answer then has an empty body).
    /// The provided method answers `None`.
    fn from_json(json: String) -> Option<Self> {
        let _ = json;
        None
    }
}

impl ErrorBody for String {
    fn from_json(json: String) -> Option<Self> {
        Some(json)
    }
}

impl ErrorBody for Vec<u8> {
    fn from_json(json: String) -> Option<Self> {
        Some(json.into_bytes())
    }
}

impl ErrorBody for Bytes {
    fn from_json(json: String) -> Option<Self> {
        Some(Bytes::from(json))
    }
}

impl ErrorBody for Full<Bytes> {
    fn from_json(json: String) -> Option<Self> {
        Some(Full::new(Bytes::from(json)))
    }
}

impl ErrorBody for Empty<Bytes> {}

impl<E: 'static> ErrorBody for BoxBody<Bytes, E> {
    fn from_json(json: String) -> Option<Self> {
        Some(
            Full::new(Bytes::from(json))
                .map_err(|never| match never {})
                .boxed(),
        )
    }
}

impl<E: 'static> ErrorBody for UnsyncBoxBody<Bytes, E> {
    fn from_json(json: String) -> Option<Self> {
        Some(
            Full::new(Bytes::from(json))
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
    }
}

#[cfg(feature = "axum")]
impl ErrorBody for axum_core::body::Body {
    fn from_json(json: String) -> Option<Self> {
        Some(axum_core::body::Body::from(json))
    }
}

/// gRPC errors travel in trailers-only responses: the body stays empty.
#[cfg(feature = "tonic")]
impl ErrorBody for tonic::body::Body {}
