//! Error types.

use std::error::Error as StdError;
use std::fmt;

type BoxError = Box<dyn StdError + Send + Sync>;

/// What went wrong, in broad classes an application can act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The store could not be reached or answered with an error. Maps to
    /// `503 Service Unavailable` (gRPC `UNAVAILABLE`).
    Unavailable,
    /// A value could not be serialized or deserialized.
    Serialization,
    /// Input from the application was refused (an oversized event, a
    /// control character in an event name, …).
    InvalidInput,
    /// The thing asked for does not exist (or does not belong to the caller).
    NotFound,
    /// The operation needs a logged-in user and there is none. Maps to `401`.
    Unauthenticated,
    /// The operation is refused by policy (for example a session limit).
    Refused,
    /// The request was refused as a cross-site request forgery (see
    /// [`csrf`](crate::csrf)). Maps to `403 Forbidden` (gRPC
    /// `PERMISSION_DENIED`).
    Forbidden,
    /// The history writer has shut down.
    Closed,
    /// A deadline passed before the operation completed.
    Timeout,
    /// Stored data could not be decoded.
    Corrupt,
    /// A new session's id is taken already in the store (an id collision:
    /// ids are 128 random bits, so in practice a broken random number
    /// generator). The stored session was not overwritten. Maps to `500`
    /// (gRPC `INTERNAL`).
    Conflict,
    /// The store refused this client's configuration: wrong credentials,
    /// a missing permission, a database that does not exist. Unlike
    /// [`Unavailable`](Self::Unavailable), retrying does not help: fix the
    /// configuration. Maps to `500` (gRPC `INTERNAL`).
    Misconfigured,
}

impl ErrorKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Unavailable => "session store unavailable",
            Self::Serialization => "serialization failed",
            Self::InvalidInput => "invalid input",
            Self::NotFound => "not found",
            Self::Unauthenticated => "no user is logged in",
            Self::Refused => "refused",
            Self::Forbidden => "cross-site request refused",
            Self::Closed => "history writer closed",
            Self::Timeout => "timed out",
            Self::Corrupt => "stored data is corrupt",
            Self::Misconfigured => "session store refused the configuration",
            Self::Conflict => "session id taken",
        }
    }

    /// What a client is told: short, stable, and free of anything the
    /// error's message or source says.
    fn client_message(self) -> &'static str {
        match self {
            Self::Unavailable => "session store unavailable; try again shortly",
            Self::Closed => "session service shutting down; try again shortly",
            Self::Timeout => "session store timed out; try again shortly",
            Self::Serialization => "session data could not be encoded or decoded",
            Self::InvalidInput => "invalid input",
            Self::NotFound => "not found",
            Self::Unauthenticated => "no user is logged in",
            Self::Refused => "refused by policy (for example a session limit)",
            Self::Forbidden => "cross-site request refused",
            Self::Misconfigured => "session service misconfigured",
            Self::Corrupt => "session data could not be read",
            Self::Conflict => "session could not be created; try again",
        }
    }
}

/// The error type of sessions, stores and the history writer.
///
/// It is opaque: match on [`Error::kind`], and reach the underlying cause
/// through [`std::error::Error::source`].
pub struct Error {
    kind: ErrorKind,
    message: Option<Box<str>>,
    source: Option<BoxError>,
}

impl Error {
    /// An error of the given kind with a message.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: Some(message.into().into_boxed_str()),
            source: None,
        }
    }

    /// An error of the given kind caused by `source`.
    pub fn with_source(kind: ErrorKind, source: impl Into<BoxError>) -> Self {
        Self {
            kind,
            message: None,
            source: Some(source.into()),
        }
    }

    /// A store error: the store is unreachable or failed.
    pub fn unavailable(source: impl Into<BoxError>) -> Self {
        Self::with_source(ErrorKind::Unavailable, source)
    }

    /// Adds a message that explains the context: it comes before the
    /// error's own message (`loading the session: redis … (HGETALL)`); the
    /// source stays the cause.
    pub fn context(mut self, message: impl Into<String>) -> Self {
        let mut message = message.into();
        if let Some(old) = &self.message {
            message.push_str(": ");
            message.push_str(old);
        }
        self.message = Some(message.into_boxed_str());
        self
    }

    /// The error and all its causes on one line (`a: b: c`), for logs:
    /// [`Display`](fmt::Display) describes this level only, as the Rust API
    /// guidelines ask, and the causes are reached through
    /// [`source`](std::error::Error::source).
    ///
    /// ```
    /// use session_trail::{Error, ErrorKind};
    ///
    /// let io = std::io::Error::other("connection refused");
    /// let e = Error::unavailable(io).context("loading the session");
    /// assert_eq!(e.to_string(), "session store unavailable: loading the session");
    /// assert_eq!(
    ///     e.report().to_string(),
    ///     "session store unavailable: loading the session: connection refused"
    /// );
    /// ```
    pub fn report(&self) -> impl fmt::Display + '_ {
        Report(self)
    }

    /// A copy for another caller of the same failed operation: the same
    /// kind, its message and the text of its causes (the causes themselves
    /// are not cloneable).
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn copy_for_another(&self) -> Error {
        let mut text = self.message.as_deref().unwrap_or("").to_owned();
        let mut next = StdError::source(self);
        while let Some(e) = next {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&e.to_string());
            next = e.source();
        }
        Error::new(self.kind, text)
    }

    /// The class of this error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// A short message for clients, the same for every error of this
    /// [`kind`](Self::kind).
    ///
    /// It is what the layer, the axum extractor's rejection,
    /// `IntoResponse for Error` and `From<Error> for tonic::Status` answer
    /// with. The error's own text ([`Display`](fmt::Display): its message
    /// and source, which may quote the store's reply, a setting's name and
    /// value, or a user's input) is for logs only and never sent to a
    /// client.
    ///
    /// ```
    /// use session_trail::{Error, ErrorKind};
    ///
    /// let e = Error::unavailable("READONLY You can't write against a read only replica.");
    /// assert_eq!(e.client_message(), "session store unavailable; try again shortly");
    /// assert!(e.report().to_string().contains("READONLY"));
    /// ```
    pub fn client_message(&self) -> &'static str {
        self.kind.client_message()
    }

    /// Logs the error with its causes when the crate answers a client with
    /// it, on the target [`ANSWER_TARGET`]: `WARN` for a server-side
    /// failure (a `5xx`: the store is down, misconfigured, corrupt), `DEBUG`
    /// for the client's own (`4xx`). Each answer is logged once.
    pub(crate) fn log_answered(&self) {
        let status = self.status().as_u16();
        if status >= 500 {
            tracing::warn!(
                target: ANSWER_TARGET,
                status,
                kind = ?self.kind,
                error = %self.report(),
                "session error answered to a client"
            );
        } else {
            tracing::debug!(
                target: ANSWER_TARGET,
                status,
                kind = ?self.kind,
                error = %self.report(),
                "session error answered to a client"
            );
        }
    }

    /// The HTTP status this error maps to when answered to a client.
    pub fn status(&self) -> http::StatusCode {
        use http::StatusCode as S;
        match self.kind {
            ErrorKind::Unavailable | ErrorKind::Closed | ErrorKind::Timeout => {
                S::SERVICE_UNAVAILABLE
            }
            ErrorKind::InvalidInput | ErrorKind::Serialization => S::BAD_REQUEST,
            ErrorKind::NotFound => S::NOT_FOUND,
            ErrorKind::Unauthenticated => S::UNAUTHORIZED,
            ErrorKind::Refused => S::CONFLICT,
            ErrorKind::Forbidden => S::FORBIDDEN,
            ErrorKind::Corrupt | ErrorKind::Misconfigured | ErrorKind::Conflict => {
                S::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// The gRPC status code this error maps to (`14 UNAVAILABLE` for store
    /// failures).
    pub fn grpc_code(&self) -> u16 {
        match self.kind {
            ErrorKind::Unavailable | ErrorKind::Closed => 14,
            ErrorKind::Timeout => 4,
            ErrorKind::InvalidInput | ErrorKind::Serialization => 3,
            ErrorKind::NotFound => 5,
            ErrorKind::Unauthenticated => 16,
            ErrorKind::Refused => 9,
            ErrorKind::Forbidden => 7,
            ErrorKind::Corrupt | ErrorKind::Misconfigured | ErrorKind::Conflict => 13,
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind);
        if let Some(m) = &self.message {
            d.field("message", m);
        }
        if let Some(s) = &self.source {
            d.field("source", s);
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    /// This level only: the kind and the message. The cause is the
    /// [`source`](std::error::Error::source); [`Error::report`] prints the
    /// whole chain.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind.as_str())?;
        if let Some(m) = &self.message {
            write!(f, ": {m}")?;
        }
        Ok(())
    }
}

/// The log target of every error the crate answers to a client (the
/// extractor's rejections, `IntoResponse for Error`, the layer's own `503`
/// when a save fails, gRPC statuses).
pub const ANSWER_TARGET: &str = "session_trail::answer";

struct Report<'a>(&'a Error);

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut next = StdError::source(self.0);
        while let Some(e) = next {
            write!(f, ": {e}")?;
            next = e.source();
        }
        Ok(())
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source.as_deref().map(|e| e as _)
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Self::with_source(ErrorKind::Serialization, e)
    }
}

/// An invalid configuration, found when the layer or a store is built.
///
/// Its message names the setting and says why it was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    setting: &'static str,
    reason: String,
}

impl ConfigError {
    pub(crate) fn new(setting: &'static str, reason: impl Into<String>) -> Self {
        Self {
            setting,
            reason: reason.into(),
        }
    }

    /// The name of the setting that was refused (the builder method's name).
    pub fn setting(&self) -> &'static str {
        self.setting
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid `{}`: {}", self.setting, self.reason)
    }
}

impl StdError for ConfigError {}
