//! What the history benches write: a request entry as the layer records
//! one (a route, a status, a latency, a user pseudonym).

use session_trail::history::Draft;

/// The `i`-th request entry (its latency varies with `i`).
pub(crate) fn request_entry(i: usize) -> Draft {
    Draft::request(
        "GET",
        "/products/{id}",
        200,
        850 + (i % 300) as u64,
        Some([7; 8]),
    )
}
