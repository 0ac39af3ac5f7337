//! `examples/tonic.rs` end to end, in-process: its gRPC server on a free
//! loopback port, its client script against it.
#![cfg(feature = "memory-store")]

#[allow(dead_code)]
#[path = "../examples/tonic.rs"]
mod example;

use std::time::Duration;

use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tonic_example_rotates_at_login_records_history_and_logs_out() {
    let layer = example::layer().unwrap();
    let writer = layer.history_writer().cloned().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(example::serve(listener, layer, async {
        let _ = stopped.await;
    }));

    let report = example::run_client(addr).await.unwrap();

    assert_eq!(report.before_session, 0, "no session: an empty page");
    assert_eq!(report.wrong_password, Code::Unauthenticated);
    assert!(
        report.rotated_at_login,
        "login rotates the header credential"
    );
    assert_eq!(report.cart_items, 2, "the anonymous cart survives login");
    assert!(report.cleared_at_logout);
    assert_eq!(report.after_logout, 0, "logged out: an empty page");

    let h = &report.history;
    assert!(h.chain_ok, "{}", h.chain_error);
    let seqs: Vec<u64> = h.entries.iter().map(|e| e.seq).collect();
    let expected: Vec<u64> = (1..=seqs.len() as u64).rev().collect();
    assert_eq!(seqs, expected, "newest first, one session from its start");
    let kinds: Vec<&str> = h.entries.iter().map(|e| e.kind.as_str()).collect();
    for kind in [
        "started",
        "privilege_changed",
        "rotated",
        "event",
        "request",
    ] {
        assert!(kinds.contains(&kind), "{kind} missing in {kinds:?}");
    }
    let events: Vec<&str> = h
        .entries
        .iter()
        .filter(|e| e.kind == "event")
        .map(|e| e.summary.as_str())
        .collect();
    assert_eq!(
        events,
        [
            r#"add_to_cart {"item":"coffee"}"#,
            r#"login {"via":"grpc"}"#,
            r#"add_to_cart {"item":"book"}"#
        ]
    );
    assert!(
        h.entries
            .iter()
            .any(|e| e.summary == "POST /trail.Shop/AddToCart 200"),
        "{:?}",
        h.entries
    );

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
    writer.shutdown(Duration::from_secs(5)).await.unwrap();
    let stats = writer.stats();
    assert_eq!(stats.queue_depth, 0);
    assert_eq!(stats.dropped, 0);
}
