//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub, missing_docs)]

pub mod app;
pub mod checkpoints;
pub mod conformance;
pub mod faults;
pub mod hardening;
pub mod postgres;
pub mod redis;
pub mod rotation;
pub mod sqlite;
pub mod users;

/// A session's stored history (`sid` in its text form), decoded to JSON,
/// oldest first.
pub async fn history_json(
    store: &impl session_trail::store::HistoryStore,
    sid: &str,
) -> Vec<serde_json::Value> {
    let sid: session_trail::SessionId = sid.parse().unwrap();
    store
        .read_all(&sid)
        .await
        .unwrap()
        .iter()
        .map(|b| session_trail::history::Entry::decode(b).unwrap().to_json())
        .collect()
}

/// `s` percent-encoded for a urlencoded form.
pub fn form_value(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A constant master secret for tests: the same for the same `n`, distinct
/// for distinct `n` (a `Key` refuses a secret that is one byte repeated).
pub fn secret(n: u8) -> [u8; 32] {
    let mut s = *b"session-trail test master secret";
    s[31] = n;
    s
}

/// The users', hardening and key rotation suites, each in a module of its
/// own, on the store `$store` that `$factory(keep)` opens (a path seen
/// from inside those modules, e.g. `super::store`).
#[macro_export]
macro_rules! store_suites {
    ($store:ty, $factory:path) => {
        mod users {
            async fn store() -> $store {
                $factory(1000).await
            }
            $crate::users_suite!(store);
        }

        mod hardening {
            async fn store() -> $store {
                $factory(1000).await
            }
            $crate::hardening_suite!(store);
        }

        mod rotation {
            async fn store() -> $store {
                $factory(1000).await
            }
            $crate::rotation_suite!(store);
        }
    };
}
