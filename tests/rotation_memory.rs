//! Key rotation on the in-memory store.

mod common;

use session_trail::store::MemoryStore;

rotation_suite!(|| async { MemoryStore::new() });
