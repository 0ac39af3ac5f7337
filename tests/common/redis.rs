//! Real `redis-server` processes for the Redis store's tests: a single node
//! (optionally with an append-only file, for kill/restart tests) and a
//! three-master Redis Cluster.
//!
//! Every server binds 127.0.0.1 on a free port (never the machine's 6379)
//! and keeps its files in its own temporary directory. Servers are started
//! through a small shell wrapper that holds a pipe from this process: when
//! the test process ends, however it ends, the wrapper kills its server, so
//! no `redis-server` outlives the tests (even one kept in a `static`).
//!
//! Readiness is polled with deadlines (PING, `cluster_state:ok`), never
//! waited for with fixed sleeps. Without `redis-server` on the PATH the
//! tests fail with a message saying how to install it; they never skip.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const INSTALL_HINT: &str = "redis-server is not on the PATH: the Redis store's tests run a real \
     server. Install it with `apt-get install -y redis-server` (the CI script does).";

/// Kills the server when the test process closes the wrapper's stdin (on
/// drop, or when the process exits), then removes the directory if asked.
const WRAPPER: &str = r#"
dir="$1"; cleanup="$2"; shift 2
redis-server "$@" >/dev/null 2>&1 &
pid=$!
echo "$pid"
cat >/dev/null
kill -9 "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
if [ "$cleanup" = 1 ]; then rm -rf "$dir"; fi
"#;

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// How a server keeps its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Persistence {
    /// Nothing on disk (`--save "" --appendonly no`): a restart loses all.
    None,
    /// `--appendonly yes --appendfsync always`: every acknowledged write
    /// survives `kill -9`.
    AofAlways,
}

struct Process {
    wrapper: Child,
    pid: u32,
}

/// One `redis-server`.
pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    extra: Vec<String>,
    persistence: Persistence,
    /// The current process, and earlier (killed) ones whose wrappers are
    /// kept until the end so that they do not remove the directory.
    current: Option<Process>,
    old: Vec<Process>,
}

fn ensure_installed() {
    match Command::new("redis-server").arg("--version").output() {
        Ok(out) if out.status.success() => {}
        _ => panic!("{INSTALL_HINT}"),
    }
}

/// A port nobody listens on right now (the OS picks it; never 6379).
/// One plain server for the whole test binary; tests keep apart by key
/// prefix (see [`test_prefix`]).
pub fn shared_server() -> &'static RedisServer {
    static SERVER: std::sync::OnceLock<RedisServer> = std::sync::OnceLock::new();
    SERVER.get_or_init(RedisServer::start)
}

/// A key prefix of its own for one test on the shared server.
pub fn test_prefix(tag: &str) -> String {
    format!("{tag}-{}", session_trail::SessionId::generate())
}

pub fn free_port() -> u16 {
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        let port = l.local_addr().unwrap().port();
        if port != 6379 && port < 60000 {
            return port;
        }
    }
}

fn temp_dir(tag: &str) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let dir = std::env::temp_dir().join(format!(
        "session-trail-{tag}-{}-{n}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("create a temporary directory");
    dir
}

/// Whether a process runs (a zombie, killed but not yet reaped by its
/// wrapper, does not).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

/// Sends one inline command and reads the first reply line (`+PONG`, …).
fn probe(port: u16, command: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(
        &format!("127.0.0.1:{port}").parse().unwrap(),
        Duration::from_millis(200),
    )
    .ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    s.write_all(format!("{command}\r\n").as_bytes()).ok()?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).ok()?;
    Some(line.trim_end().to_owned())
}

impl RedisServer {
    /// A server without persistence.
    pub fn start() -> Self {
        Self::start_with(Persistence::None, &[])
    }

    /// A server with an append-only file fsynced on every write.
    pub fn start_with_aof() -> Self {
        Self::start_with(Persistence::AofAlways, &[])
    }

    /// A server with extra `redis-server` arguments.
    pub fn start_with(persistence: Persistence, extra: &[&str]) -> Self {
        ensure_installed();
        let mut last_log = String::new();
        for _ in 0..5 {
            let mut s = Self {
                port: free_port(),
                dir: temp_dir("redis"),
                extra: extra.iter().map(|s| (*s).to_owned()).collect(),
                persistence,
                current: None,
                old: Vec::new(),
            };
            s.spawn(true);
            if s.wait_ready(Duration::from_secs(10)) {
                return s;
            }
            // Most likely someone took the port in between: try another.
            last_log = s.log();
        }
        panic!("redis-server did not start; its log:\n{last_log}");
    }

    fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = [
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--dir",
            self.dir.to_str().unwrap(),
            "--logfile",
            "redis.log",
            "--save",
            "",
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        match self.persistence {
            Persistence::None => a.extend(["--appendonly", "no"].map(String::from)),
            Persistence::AofAlways => {
                a.extend(["--appendonly", "yes", "--appendfsync", "always"].map(String::from));
            }
        }
        a.extend(self.extra.iter().cloned());
        a
    }

    fn spawn(&mut self, cleanup: bool) {
        let mut wrapper = Command::new("sh")
            .arg("-c")
            .arg(WRAPPER)
            .arg("sh")
            .arg(&self.dir)
            .arg(if cleanup { "1" } else { "0" })
            .args(self.args())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn sh for redis-server");
        let mut out = wrapper.stdout.take().unwrap();
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while out.read(&mut byte).unwrap_or(0) == 1 && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        let pid: u32 = String::from_utf8_lossy(&line)
            .trim()
            .parse()
            .expect("the wrapper prints the server's pid");
        self.current = Some(Process { wrapper, pid });
    }

    /// Polls PING until the server answers `+PONG` (it answers `-LOADING`
    /// while it replays its append-only file).
    pub fn wait_ready(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            // A server with a password answers -NOAUTH: it is up too.
            let reply = probe(self.port, "PING").unwrap_or_default();
            if reply == "+PONG" || reply.starts_with("-NOAUTH") {
                return true;
            }
            if let Some(p) = &self.current {
                // The server died (port taken, bad argument): stop waiting.
                if !alive(p.pid) {
                    return false;
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }

    /// `kill -9` the server and wait until it is gone.
    pub fn kill9(&mut self) {
        let Some(p) = self.current.take() else { return };
        let status = Command::new("kill")
            .args(["-9", &p.pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -9 {} failed", p.pid);
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive(p.pid) || probe(self.port, "PING").is_some() {
            assert!(Instant::now() < deadline, "redis-server survived kill -9");
            std::thread::sleep(Duration::from_millis(5));
        }
        self.old.push(p);
    }

    /// Starts the server again on the same port with the same directory
    /// (and so the same append-only file), and waits until it answers.
    pub fn restart(&mut self) {
        assert!(self.current.is_none(), "restart after kill9");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            self.spawn(false);
            if self.wait_ready(Duration::from_secs(10)) {
                return;
            }
            // The port may linger for a moment after the kill.
            let p = self.current.take().unwrap();
            self.old.push(p);
            assert!(
                Instant::now() < deadline,
                "redis-server did not restart; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `redis-cli -p PORT ARGS…` and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        cli(self.port, args)
    }
}

/// Runs `redis-cli -p PORT ARGS…` and returns its output.
pub fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .unwrap_or_else(|_| panic!("{INSTALL_HINT}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn close(mut p: Process) {
    drop(p.wrapper.stdin.take());
    let _ = p.wrapper.wait();
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // The first wrapper removes the directory: close it last.
        let mut all: Vec<Process> = self.current.take().into_iter().collect();
        all.extend(self.old.drain(..).rev());
        for p in all {
            close(p);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis Cluster of three masters and no replicas.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> Self {
        ensure_installed();
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                RedisServer::start_with(
                    Persistence::None,
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "2000",
                    ],
                )
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .unwrap_or_else(|_| panic!("{INSTALL_HINT}"));
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = Self { nodes };
        cluster.wait_ok(Duration::from_secs(30));
        cluster
    }

    /// Polls every node until it reports `cluster_state:ok` with all slots
    /// assigned and knows all three masters.
    pub fn wait_ok(&self, within: Duration) {
        let deadline = Instant::now() + within;
        for n in &self.nodes {
            loop {
                let info = n.cli(&["CLUSTER", "INFO"]);
                let ok = info.contains("cluster_state:ok")
                    && info.contains("cluster_slots_ok:16384")
                    && info.contains("cluster_known_nodes:3");
                if ok {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the cluster did not become ok:\n{info}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// `redis-cluster://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3`.
    pub fn url(&self) -> String {
        let addrs: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis-cluster://{}", addrs.join(","))
    }

    /// The node that serves `key`'s slot, and the slot.
    pub fn node_of(&self, key: &str) -> (u16, u16) {
        let slot: u16 = self.nodes[0]
            .cli(&["CLUSTER", "KEYSLOT", key])
            .trim()
            .parse()
            .expect("CLUSTER KEYSLOT answers a number");
        // Ask each node whether it owns the slot: only the owner answers a
        // key lookup without a MOVED redirection.
        for n in &self.nodes {
            let reply = probe(n.port, &format!("EXISTS {key}")).unwrap_or_default();
            if !reply.starts_with("-MOVED") {
                return (n.port, slot);
            }
        }
        panic!("no node owns slot {slot}");
    }
}
