//! The store conformance suite on the in-memory store.

mod common;

use std::time::Duration;

use session_trail::store::MemoryStore;

store_conformance!(|keep: usize| async move {
    MemoryStore::new()
        .history_retention(keep, Duration::from_secs(3600))
        .unwrap()
});
