//! The SQLite store across processes: this test binary starts copies of
//! itself as the app processes (`child_process`, run only when a parent
//! starts it), so it can kill one with `kill -9` in the middle of a burst
//! of writes, stop one with SIGTERM, and run two at once on one file.
#![cfg(feature = "sqlite")]

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use session_trail::history::{HistoryWriter, Options, WriterConfig, verify};
use session_trail::store::{Append, AppendOutcome, HistoryStore, SqliteStore, tag_of};
use session_trail::{Key, KeyRing, SessionId};

use common::faults::{assert_every_tick_once, check_chain, tick};

const ROLE: &str = "SESSION_TRAIL_SQLITE_CHILD";
const DB: &str = "SESSION_TRAIL_SQLITE_DB";
const SIDS: &str = "SESSION_TRAIL_SQLITE_SIDS";

fn key() -> Key {
    Key::from_bytes(&common::secret(11)).unwrap()
}

fn sids(n: usize) -> Vec<SessionId> {
    (0..n).map(|_| SessionId::generate()).collect()
}

/// This test binary again, as an app process in `role`.
fn spawn(role: &str, db: &Path, sids: &[SessionId]) -> Child {
    let list: Vec<String> = sids.iter().map(ToString::to_string).collect();
    Command::new(std::env::current_exe().unwrap())
        .args(["child_process", "--exact", "--ignored", "--nocapture"])
        .env(ROLE, role)
        .env(DB, db)
        .env(SIDS, list.join(","))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start a child process")
}

/// Reads the child's lines until `until` says stop, within a deadline.
fn read_until(
    lines: &mut impl Iterator<Item = std::io::Result<String>>,
    mut until: impl FnMut(&str) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(120);
    for line in lines {
        let line = line.expect("the child's output");
        if until(&line) {
            return;
        }
        assert!(Instant::now() < deadline, "the child took too long");
    }
    panic!("the child ended early");
}

fn wait(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "the child did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The entry point of the child processes; a plain test run skips it.
#[test]
#[ignore = "run by the other tests of this binary as a child process"]
fn child_process() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let db = std::env::var(DB).unwrap();
    let sids: Vec<SessionId> = std::env::var(SIDS)
        .unwrap()
        .split(',')
        .map(|s| s.parse().unwrap())
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let store = SqliteStore::open(&db).await.unwrap();
        match role.as_str() {
            "append" => append_forever(store, sids).await,
            "sigterm" => drain_on_sigterm(store, sids).await,
            "share" => share(store, sids, 1_000).await,
            other => panic!("unknown role {other}"),
        }
    });
}

/// Appends chained entries to every session, round after round, straight
/// through the store, printing `ack <session> <seq>` for each append the
/// store acknowledged; runs until killed.
async fn append_forever(store: SqliteStore, sids: Vec<SessionId>) {
    let key = key();
    let mut heads: Vec<(u64, [u8; 16])> = vec![(0, [0; 16]); sids.len()];
    let mut out = std::io::stdout().lock();
    loop {
        let batch: Vec<Append> = sids
            .iter()
            .zip(&heads)
            .map(|(sid, &(seq, head))| Append {
                session: *sid,
                expected_head: (seq > 0).then_some(head),
                entries: common::conformance::chain(&key, sid, seq + 1, head, 3),
                token: None,
            })
            .collect();
        let outcomes = store.append(&batch).await.unwrap();
        for (i, (a, o)) in batch.iter().zip(outcomes).enumerate() {
            assert_eq!(o, AppendOutcome::Appended);
            heads[i] = (heads[i].0 + 3, a.last_tag().unwrap());
            writeln!(out, "ack {i} {}", heads[i].0).unwrap();
        }
        out.flush().unwrap();
    }
}

/// Enqueues a burst into a writer that holds it (a long flush interval and
/// a batch larger than the burst), says `enqueued`, and on SIGTERM shuts
/// the writer down (writing the queue), then exits.
async fn drain_on_sigterm(store: SqliteStore, sids: Vec<SessionId>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).unwrap();
    let writer = HistoryWriter::start(
        store,
        KeyRing::new(key()),
        WriterConfig::default()
            .batch_entries(100_000)
            .queue_entries(100_000)
            .flush_interval(Duration::from_secs(3600)),
    )
    .unwrap();
    for round in 0..100 {
        for sid in &sids {
            assert!(writer.enqueue(*sid, vec![tick(round)]));
        }
    }
    println!("enqueued {}", writer.stats().queue_depth);
    term.recv().await;
    writer.shutdown(Duration::from_secs(30)).await.unwrap();
    let stats = writer.stats();
    println!("written {} dropped {}", stats.written, stats.dropped);
    std::process::exit(0);
}

/// Waits for a `go` line on stdin, then writes ticks `base..base + 150`
/// to every session through a writer, flushes, and prints its conflicts.
async fn share(store: SqliteStore, sids: Vec<SessionId>, base: u64) {
    let writer =
        HistoryWriter::start(store, KeyRing::new(key()), common::faults::writer_config()).unwrap();
    println!("ready");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "go");
    for round in base..base + 150 {
        for sid in &sids {
            assert!(writer.enqueue(*sid, vec![tick(round)]));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    common::faults::flush(&writer).await;
    let stats = writer.stats();
    assert_eq!(stats.dropped, 0, "{stats:?}");
    println!("conflicts {}", stats.conflicts);
}

#[test]
fn kill_9_during_a_burst_of_writes_loses_no_acknowledged_append() {
    let db = common::sqlite::temp_db("crash");
    let sids = sids(30);
    let mut child = spawn("append", &db, &sids);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut acked: HashMap<usize, u64> = HashMap::new();
    read_until(&mut lines, |line| {
        let Some(ack) = line.strip_prefix("ack ") else {
            return false;
        };
        let mut parts = ack.split(' ');
        let i: usize = parts.next().unwrap().parse().unwrap();
        let seq: u64 = parts.next().unwrap().parse().unwrap();
        acked.insert(i, seq);
        // Well into the burst: hundreds of transactions committed.
        acked.values().all(|&s| s >= 600)
    });
    // In the middle of the next transactions.
    child.kill().unwrap();
    let status = wait(&mut child);
    assert!(!status.success(), "{status}");
    // Lines the child printed before it died count too.
    for line in lines {
        let Ok(line) = line else { break };
        let Some(ack) = line.strip_prefix("ack ") else {
            continue;
        };
        let mut parts = ack.split(' ');
        if let (Some(i), Some(seq)) = (parts.next(), parts.next())
            && let (Ok(i), Ok(seq)) = (i.parse::<usize>(), seq.parse::<u64>())
        {
            acked.insert(i, seq);
        }
    }

    // The file opens cleanly, passes SQLite's own check, holds every
    // acknowledged append, and every chain verifies.
    let conn = common::sqlite::connect(&db);
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    drop(conn);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = SqliteStore::open(&db).await.unwrap();
        let ring = KeyRing::new(key());
        for (i, sid) in sids.iter().enumerate() {
            let all = store.read_all(sid).await.unwrap();
            let v = verify(&ring, sid, &all, Options::default());
            assert!(v.is_ok(), "session {i}: {:?}", v.breaks);
            let stored = all.len() as u64;
            assert!(
                stored >= acked[&i],
                "session {i}: {stored} entries stored, {} acknowledged",
                acked[&i]
            );
            // Whole appends only: a transaction is there or not.
            assert_eq!(stored % 3, 0, "session {i}");
            let last = session_trail::history::Entry::decode(all.last().unwrap()).unwrap();
            assert_eq!(last.seq, stored);
            assert!(tag_of(all.last().unwrap()).is_some());
        }
    });
}

#[test]
fn sigterm_with_the_writer_shut_down_loses_nothing_queued() {
    let db = common::sqlite::temp_db("sigterm");
    let sids = sids(20);
    let mut child = spawn("sigterm", &db, &sids);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    read_until(&mut lines, |line| line.starts_with("enqueued"));
    // Everything is still in the writer's queue: nothing is in the file.
    assert_eq!(
        common::sqlite::count(&db, "SELECT count(*) FROM session_trail_history"),
        0
    );
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut report = String::new();
    read_until(&mut lines, |line| {
        report = line.to_owned();
        line.starts_with("written")
    });
    assert_eq!(report, "written 2000 dropped 0");
    assert!(wait(&mut child).success());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = SqliteStore::open(&db).await.unwrap();
        let ring = KeyRing::new(key());
        for sid in &sids {
            let c = check_chain(&store, &ring, sid).await;
            assert_every_tick_once(sid, &c, 0..100);
        }
    });
}

#[test]
fn two_processes_on_one_file_extend_the_same_chains() {
    let db = common::sqlite::temp_db("share");
    let sids = sids(20);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // The file and its schema exist before either writes.
    let store = rt.block_on(SqliteStore::open(&db)).unwrap();
    let mut child = spawn("share", &db, &sids);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    read_until(&mut lines, |line| line == "ready");
    let mut stdin = child.stdin.take().unwrap();
    // Both go at once: the child writes ticks 1000.., this process 0...
    writeln!(stdin, "go").unwrap();
    let ours = rt.block_on(async {
        let writer = HistoryWriter::start(
            store.clone(),
            KeyRing::new(key()),
            common::faults::writer_config(),
        )
        .unwrap();
        for round in 0..150 {
            for sid in &sids {
                assert!(writer.enqueue(*sid, vec![tick(round)]));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        common::faults::flush(&writer).await;
        writer.stats()
    });
    assert_eq!(ours.dropped, 0, "{ours:?}");
    let mut theirs = 0;
    read_until(&mut lines, |line| {
        if let Some(n) = line.strip_prefix("conflicts ") {
            theirs = n.parse::<u64>().unwrap();
            true
        } else {
            false
        }
    });
    assert!(wait(&mut child).success());
    // The writers did race for the same heads, across processes.
    assert!(
        ours.conflicts + theirs > 0,
        "no conflict: the processes did not overlap"
    );
    rt.block_on(async {
        let ring = KeyRing::new(key());
        for sid in &sids {
            let c = check_chain(&store, &ring, sid).await;
            assert_every_tick_once(sid, &c, 0..150);
            for n in 1_000..1_150 {
                assert_eq!(c.ticks.get(&n), Some(&1), "session {sid}: tick {n}");
            }
        }
    });
}
