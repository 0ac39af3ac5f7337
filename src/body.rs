//! The bodies of the layer's own answers.

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
/// `Vec<u8>` and `Bytes`. For a body type of your own, implement it in one
/// line: the provided method answers an empty body, or override it.
///
/// ```
/// use session_trail::ErrorBody;
///
/// #[derive(Default)]
/// struct MyBody(Vec<u8>);
///
/// impl ErrorBody for MyBody {
///     fn from_json(json: String) -> Self {
///         MyBody(json.into_bytes())
///     }
/// }
///
/// let body = MyBody::from_json(r#"{"error":"x"}"#.to_owned());
/// assert_eq!(body.0, br#"{"error":"x"}"#);
/// assert_eq!(<String as ErrorBody>::from_json("{}".into()), "{}");
/// ```
pub trait ErrorBody: Default {
    /// A body holding `json` (an object with an `error` message). The
    /// provided method ignores it and answers an empty body.
    fn from_json(json: String) -> Self {
        let _ = json;
        Self::default()
    }
}

impl ErrorBody for String {
    fn from_json(json: String) -> Self {
        json
    }
}

impl ErrorBody for Vec<u8> {
    fn from_json(json: String) -> Self {
        json.into_bytes()
    }
}

impl ErrorBody for bytes::Bytes {
    fn from_json(json: String) -> Self {
        bytes::Bytes::from(json)
    }
}

#[cfg(feature = "axum")]
impl ErrorBody for axum_core::body::Body {
    fn from_json(json: String) -> Self {
        axum_core::body::Body::from(json)
    }
}

/// gRPC errors travel in trailers-only responses: the body stays empty.
#[cfg(feature = "tonic")]
impl ErrorBody for tonic::body::Body {}
