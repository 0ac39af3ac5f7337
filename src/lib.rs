//! Tower session middleware with signed credentials, automatic token
//! rotation, and a tamper-evident session history.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod client;
mod credential;
mod error;
mod key;
mod manager;
mod session;
mod transport;
mod util;

#[cfg(feature = "axum")]
mod extract;
pub mod history;
pub mod store;

pub use cookie::SameSite;
pub use credential::SessionId;
pub use error::{ConfigError, Error, ErrorKind};
#[cfg(feature = "axum")]
pub use extract::SessionRejection;
pub use key::{Key, KeyRing, MIN_KEY_LEN};
pub use manager::{ResponseFuture, SessionLayer, SessionLayerBuilder, SessionService};
pub use session::Session;

#[cfg(feature = "tonic")]
impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        let code = tonic::Code::from_i32(i32::from(e.grpc_code()));
        tonic::Status::new(code, e.to_string())
    }
}
