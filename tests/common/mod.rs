//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub, missing_docs)]

pub mod app;
pub mod conformance;
pub mod hardening;
pub mod redis;
pub mod rotation;
pub mod users;

/// A constant master secret for tests: the same for the same `n`, distinct
/// for distinct `n` (a `Key` refuses a secret that is one byte repeated).
pub fn secret(n: u8) -> [u8; 32] {
    let mut s = *b"session-trail test master secret";
    s[31] = n;
    s
}
