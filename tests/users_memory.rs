//! Users' control of sessions and history on the in-memory store.

mod common;

use session_trail::store::MemoryStore;

users_suite!(|| async { MemoryStore::new() });
