//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub, missing_docs)]

pub mod app;
pub mod conformance;
pub mod hardening;
pub mod redis;
pub mod rotation;
pub mod users;
