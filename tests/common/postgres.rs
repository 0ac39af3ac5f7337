//! Real PostgreSQL clusters for the PostgreSQL store's tests.
//!
//! Every cluster is made afresh by `initdb` in its own temporary directory,
//! listens only on 127.0.0.1 at a free port (never the machine's 5432) and
//! keeps its Unix socket in that directory (never /var/run/postgresql).
//! When the tests run as root, `initdb`, `postgres` and `pg_ctl` run as the
//! `postgres` user (they refuse to run as root).
//!
//! The postmaster runs in the foreground of a small shell wrapper that holds
//! a pipe from this process: when the test process ends, however it ends,
//! the wrapper `kill -9`s the postmaster and its children, so no server
//! outlives the tests (even one kept in a `static`). The directories are
//! `/tmp/session-trail-pg-*` and every server process's title has
//! `session-trail-pg-PORT` (the `cluster_name`): `ps -ef | grep
//! session-trail-pg` finds any left over.
//!
//! Clusters use the C locale and UTF-8, the `postgres` superuser and
//! `trust` authentication (no password).
//!
//! `fsync` is off (the tests kill processes, not the machine) but
//! `synchronous_commit` stays on: a commit acknowledged before a `kill -9`
//! survives it.
//!
//! Readiness is polled with deadlines (a TCP connection and `pg_isready`),
//! never waited for with fixed sleeps. Without the server binaries the tests
//! fail with a message saying how to install them; they never skip.

use std::ffi::OsString;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const INSTALL_HINT: &str = "PostgreSQL's server binaries (initdb, pg_ctl) are not installed: \
     the PostgreSQL store's tests run a real server. Install them with \
     `apt-get install -y postgresql` (scripts/test.sh does).";

/// How long a start (or restart, crash recovery included) may take.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// How long a killed or stopped server may take to be gone.
const GONE_WITHIN: Duration = Duration::from_secs(20);

/// Runs the postmaster (`"$@"`) in the background, prints its pid, and when
/// the test process closes the wrapper's stdin (on drop, or when the process
/// exits) stops it (so that it forks no more), lists its children, kills
/// them all with SIGKILL, removes the System V shared memory segment the
/// postmaster made (a killed postmaster leaves it behind, and leaked
/// segments would pile up to the kernel's limit over many runs), and
/// removes the directory if asked.
///
/// The segment is removed only if `postmaster.pid` still names this
/// wrapper's postmaster (a later one, after a restart, has removed the old
/// segment itself), and only if a segment with that key and that id exists.
///
/// The wrapper ignores SIGHUP, SIGINT and SIGTERM: when the test process
/// exits, its process group (wrappers and postmasters) is orphaned, and the
/// kernel sends SIGHUP to an orphaned group that has a stopped member (the
/// postmaster, between STOP and KILL), which would kill the wrapper before
/// it kills the postmaster. Likewise a Ctrl-C (SIGINT to the group) must not
/// end the wrapper before it has done its work.
const WRAPPER: &str = r#"
dir="$1"; cleanup="$2"; log="$3"; shift 3
"$@" >>"$log" 2>&1 </dev/null &
pid=$!
trap '' HUP INT TERM
echo "$pid"
cat >/dev/null
lock="$dir/data/postmaster.pid"
shm=""
if [ -f "$lock" ] && [ "$(sed -n 1p "$lock" 2>/dev/null)" = "$pid" ]; then
    shm=$(sed -n 7p "$lock" 2>/dev/null)
fi
kill -STOP "$pid" 2>/dev/null
kids=$(pgrep -P "$pid" 2>/dev/null)
kill -9 "$pid" $kids 2>/dev/null
wait "$pid" 2>/dev/null
if [ -n "$shm" ]; then
    set -- $shm
    if [ $# = 2 ] && [ -r /proc/sysvipc/shm ] &&
        awk -v k="$1" -v id="$2" '$1 == k && $2 == id { found = 1 } END { exit !found }' \
            /proc/sysvipc/shm; then
        ipcrm -m "$2" 2>/dev/null
    fi
fi
if [ "$cleanup" = 1 ]; then rm -rf "$dir"; fi
"#;

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Where the PostgreSQL programs are.
struct Bins {
    initdb: PathBuf,
    pg_ctl: PathBuf,
    postgres: PathBuf,
    pg_isready: PathBuf,
    psql: PathBuf,
    /// `initdb --no-instructions` exists (PostgreSQL 13+).
    no_instructions: bool,
}

fn executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| executable(p))
}

/// The newest `/usr/lib/postgresql/VERSION/bin` that holds the server.
fn newest_lib_dir() -> Option<PathBuf> {
    let mut dirs: Vec<(Vec<u64>, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let version: Vec<u64> = e
                .file_name()
                .to_str()?
                .split('.')
                .map(|n| n.parse().ok())
                .collect::<Option<_>>()?;
            let bin = e.path().join("bin");
            ["initdb", "pg_ctl", "postgres"]
                .iter()
                .all(|n| executable(&bin.join(n)))
                .then_some((version, bin))
        })
        .collect();
    dirs.sort();
    dirs.pop().map(|(_, d)| d)
}

fn bins() -> &'static Bins {
    static BINS: OnceLock<Bins> = OnceLock::new();
    BINS.get_or_init(|| {
        // PATH first (all three there), else the newest versioned directory.
        // The other programs come from the directory `initdb` really lives
        // in, so that they are all of one version.
        let dir = match (on_path("initdb"), on_path("pg_ctl"), on_path("postgres")) {
            (Some(initdb), Some(_), Some(_)) => std::fs::canonicalize(&initdb)
                .unwrap_or(initdb)
                .parent()
                .unwrap()
                .to_path_buf(),
            _ => newest_lib_dir().unwrap_or_else(|| panic!("{INSTALL_HINT}")),
        };
        let find = |name: &str| -> PathBuf {
            let p = dir.join(name);
            if executable(&p) {
                return p;
            }
            on_path(name).unwrap_or_else(|| {
                panic!(
                    "{name} is not installed next to {} nor on the PATH. {INSTALL_HINT}",
                    dir.join("initdb").display()
                )
            })
        };
        let initdb = find("initdb");
        let help = Command::new(&initdb)
            .arg("--help")
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}. {INSTALL_HINT}", initdb.display()));
        Bins {
            no_instructions: String::from_utf8_lossy(&help.stdout).contains("--no-instructions"),
            pg_ctl: find("pg_ctl"),
            postgres: find("postgres"),
            pg_isready: find("pg_isready"),
            psql: find("psql"),
            initdb,
        }
    })
}

/// When the tests run as root: the uid and gid of the `postgres` user, as
/// which the server programs run.
fn run_as() -> Option<(u32, u32)> {
    static IDS: OnceLock<Option<(u32, u32)>> = OnceLock::new();
    *IDS.get_or_init(|| {
        let euid = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                let line = s.lines().find(|l| l.starts_with("Uid:"))?.to_owned();
                line.split_whitespace().nth(2)?.parse::<u32>().ok()
            })
            .or_else(|| id(&["-u"]))
            .expect("find out this process's uid");
        if euid != 0 {
            return None;
        }
        let ids = id(&["-u", "postgres"]).zip(id(&["-g", "postgres"]));
        Some(ids.unwrap_or_else(|| {
            panic!(
                "the tests run as root, and PostgreSQL refuses to: they run the server as \
                 the `postgres` user, which does not exist. {INSTALL_HINT}"
            )
        }))
    })
}

fn id(args: &[&str]) -> Option<u32> {
    let out = Command::new("id").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// The argument vector that runs `program` as the server's user: through
/// `setpriv` (which execs, so the pid is the program's) when root.
fn as_server_user(program: &Path) -> Vec<OsString> {
    let mut argv = Vec::new();
    if let Some((uid, gid)) = run_as() {
        argv.extend(
            [
                "setpriv".to_owned(),
                format!("--reuid={uid}"),
                format!("--regid={gid}"),
                "--clear-groups".to_owned(),
                "--".to_owned(),
            ]
            .map(OsString::from),
        );
    }
    argv.push(program.into());
    argv
}

fn server_user_command(program: &Path, cwd: &Path) -> Command {
    let argv = as_server_user(program);
    let mut c = Command::new(&argv[0]);
    c.args(&argv[1..]).current_dir(cwd);
    c
}

/// A port nobody listens on right now (the OS picks it; never 5432).
pub fn free_port() -> u16 {
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        let port = l.local_addr().unwrap().port();
        if port != 5432 && port != 6379 && port < 60000 {
            return port;
        }
    }
}

/// A new directory `/tmp/session-trail-pg-PID-N-NANOS`, owned by the
/// server's user.
fn temp_dir() -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let dir = std::env::temp_dir().join(format!(
        "session-trail-pg-{}-{n}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("create a temporary directory");
    if let Some((uid, gid)) = run_as() {
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
            .expect("chown the temporary directory to postgres");
    }
    dir
}

/// Whether a process runs (a zombie does not).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

/// Whether a process exists at all, zombies included. A zombie postmaster
/// still counts for PostgreSQL's lock file check (`kill(pid, 0)` succeeds),
/// so a restart waits until its wrapper has reaped it.
fn exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The pids of `pid`'s children.
fn children(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| {
            let child: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).ok()?;
            let (_, rest) = stat.rsplit_once(") ")?;
            let ppid: u32 = rest.split_whitespace().nth(1)?.parse().ok()?;
            (ppid == pid).then_some(child)
        })
        .collect()
}

fn signal(signal: &str, pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .args(pids.iter().map(u32::to_string))
        .stderr(Stdio::null())
        .status();
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
fn tcp_open(port: u16) -> bool {
    TcpStream::connect_timeout(
        &format!("127.0.0.1:{port}").parse().unwrap(),
        Duration::from_millis(200),
    )
    .is_ok()
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

struct Process {
    wrapper: Child,
    /// The postmaster's pid.
    pid: u32,
}

/// One PostgreSQL cluster (a data directory and, while it runs, its
/// postmaster).
pub struct PgServer {
    port: u16,
    dir: PathBuf,
    /// The running postmaster, and earlier (killed or stopped) ones whose
    /// wrappers are kept until the end so that they do not remove the
    /// directory.
    current: Option<Process>,
    old: Vec<Process>,
}

/// One cluster for the whole test binary; tests keep apart by schema (see
/// [`test_schema`]) or by database.
pub fn shared_server() -> &'static PgServer {
    static SERVER: OnceLock<PgServer> = OnceLock::new();
    SERVER.get_or_init(PgServer::start)
}

/// A schema name of its own for one test: `tag` (lower-cased, anything but
/// `[a-z0-9_]` made `_`), `_`, and 16 random hex digits. A valid SQL
/// identifier that needs no quoting.
pub fn test_schema(tag: &str) -> String {
    let mut t: String = tag
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    if !t.starts_with(|c: char| c.is_ascii_lowercase() || c == '_') {
        t.insert(0, 't');
    }
    let id = session_trail::SessionId::generate()
        .to_string()
        .to_lowercase();
    let name = format!("{t}_{}", &id[..16]);
    debug_assert!(
        name.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    );
    name
}

/// `sid`'s 16 bytes as an SQL `bytea` expression: `'\x…'::bytea`.
pub fn bytea(sid: &session_trail::SessionId) -> String {
    bytea_of(sid.as_bytes())
}

/// `bytes` as an SQL `bytea` expression: `'\x…'::bytea`.
pub fn bytea_of(bytes: &[u8]) -> String {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("'\\x{hex}'::bytea")
}

/// An initdb'd data directory to copy clusters from, made once per
/// machine (per server version and user) under the temporary directory:
/// made beside its final name, then renamed there, so a reader never sees
/// half of one, and racing test processes each make one and keep the first.
fn template() -> PathBuf {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    TEMPLATE
        .get_or_init(|| {
            let b = bins();
            let version = std::fs::canonicalize(&b.initdb)
                .unwrap_or_else(|_| b.initdb.clone())
                .display()
                .to_string()
                .replace(|c: char| !c.is_ascii_alphanumeric(), "_");
            let uid = run_as().map_or(0, |(u, _)| u);
            let path =
                std::env::temp_dir().join(format!("session-trail-pg-template-{version}-{uid}-v1"));
            if path.join("PG_VERSION").exists() {
                return path;
            }
            let scratch = temp_dir();
            let data = scratch.join("data");
            let mut initdb = server_user_command(&b.initdb, &scratch);
            initdb.arg("-D").arg(&data).args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ]);
            if b.no_instructions {
                initdb.arg("--no-instructions");
            }
            let out = initdb
                .output()
                .unwrap_or_else(|e| panic!("run initdb: {e}. {INSTALL_HINT}"));
            if !out.status.success() {
                let _ = std::fs::remove_dir_all(&scratch);
                panic!(
                    "initdb failed ({}):\n{}{}",
                    out.status,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            // Another process may have won the race: keep its template.
            if std::fs::rename(&data, &path).is_err() && !path.join("PG_VERSION").exists() {
                panic!("cannot keep the template cluster at {}", path.display());
            }
            let _ = std::fs::remove_dir_all(&scratch);
            path
        })
        .clone()
}

impl PgServer {
    /// A fresh cluster, running and ready.
    pub fn start() -> Self {
        let dir = temp_dir();
        let data = dir.join("data");
        // A copy of one initdb'd cluster: initdb costs most of a start, and
        // a test binary run by nextest starts one cluster per test.
        let out = Command::new("cp")
            .arg("-a")
            .arg(template())
            .arg(&data)
            .output()
            .expect("run cp");
        if !out.status.success() {
            let _ = std::fs::remove_dir_all(&dir);
            panic!(
                "copying the template cluster failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut s = Self {
            port: 0,
            dir,
            current: None,
            old: Vec::new(),
        };
        for _ in 0..5 {
            s.port = free_port();
            s.spawn();
            if s.wait_ready(READY_WITHIN) {
                return s;
            }
            // Most likely someone took the port in between: try another.
            s.kill_current(false);
        }
        panic!(
            "postgres did not start; the end of its log:\n{}",
            tail(&s.log(), 60)
        );
    }

    /// The port it listens on (127.0.0.1 only).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:PORT/DB` (no password: trust).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// The cluster's directory (the data directory is its `data`; the Unix
    /// socket and `postgres.log` are in it).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The running postmaster's pid.
    pub fn postmaster_pid(&self) -> Option<u32> {
        self.current.as_ref().map(|p| p.pid)
    }

    /// The server's log so far (all runs of it).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
    }

    fn server_argv(&self) -> Vec<OsString> {
        let mut argv = as_server_user(&bins().postgres);
        argv.push("-D".into());
        argv.push(self.dir.join("data").into());
        argv.push("-p".into());
        argv.push(self.port.to_string().into());
        argv.push("-k".into());
        argv.push(self.dir.clone().into());
        for setting in [
            "listen_addresses=127.0.0.1".to_owned(),
            "fsync=off".to_owned(),
            "synchronous_commit=on".to_owned(),
            "full_page_writes=on".to_owned(),
            "max_connections=200".to_owned(),
            "shared_buffers=32MB".to_owned(),
            "logging_collector=off".to_owned(),
            "log_destination=stderr".to_owned(),
            // Shows in every server process's title: `ps` finds them all.
            format!("cluster_name=session-trail-pg-{}", self.port),
        ] {
            argv.push("-c".into());
            argv.push(setting.into());
        }
        argv
    }

    fn spawn(&mut self) {
        // The first wrapper removes the directory when the process ends.
        let cleanup = self.current.is_none() && self.old.is_empty();
        assert!(self.current.is_none(), "a postmaster already runs");
        let mut wrapper = Command::new("sh")
            .arg("-c")
            .arg(WRAPPER)
            .arg("sh")
            .arg(&self.dir)
            .arg(if cleanup { "1" } else { "0" })
            .arg(self.dir.join("postgres.log"))
            .args(self.server_argv())
            .current_dir(&self.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn sh for postgres");
        let mut out = wrapper.stdout.take().unwrap();
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while out.read(&mut byte).unwrap_or(0) == 1 && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        let pid: u32 = String::from_utf8_lossy(&line)
            .trim()
            .parse()
            .expect("the wrapper prints the postmaster's pid");
        self.current = Some(Process { wrapper, pid });
    }

    /// Whether it accepts TCP connections and `pg_isready` says it accepts
    /// sessions (not while it starts or recovers).
    pub fn is_ready(&self) -> bool {
        tcp_open(self.port)
            && Command::new(&bins().pg_isready)
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .args(["-U", "postgres", "-d", "postgres", "-t", "2"])
                .stdin(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
    }

    /// Polls until it is ready; false when the deadline passes or the
    /// postmaster has died.
    fn wait_ready(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.is_ready() {
                return true;
            }
            match &self.current {
                Some(p) if alive(p.pid) => {}
                _ => return false,
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Polls until the postmaster (reaped) and its `children` are gone, and
    /// when the port was `ours` (the server had been ready), until nothing
    /// listens on it.
    fn wait_gone(&self, pid: u32, children: &[u32], what: &str, ours: bool) {
        let deadline = Instant::now() + GONE_WITHIN;
        let port_open = || ours && tcp_open(self.port);
        while exists(pid) || children.iter().any(|&c| alive(c)) || port_open() {
            assert!(
                Instant::now() < deadline,
                "postgres (pid {pid}) is not gone {} after {what}; still there: postmaster {}, \
                 children {:?}, port open {}",
                GONE_WITHIN.as_secs(),
                exists(pid),
                children.iter().filter(|&&c| alive(c)).collect::<Vec<_>>(),
                port_open(),
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn kill_current(&mut self, ours: bool) {
        let Some(p) = self.current.take() else { return };
        // Stopped, the postmaster cannot fork a child we would miss.
        signal("STOP", &[p.pid]);
        let kids = children(p.pid);
        signal("KILL", &[p.pid]);
        signal("KILL", &kids);
        self.wait_gone(p.pid, &kids, "kill -9", ours);
        self.old.push(p);
    }

    /// `kill -9` the postmaster (and its backends and auxiliary processes,
    /// as a machine losing power would), and waits until they are gone.
    /// Commits acknowledged before survive; [`restart`](Self::restart) runs
    /// crash recovery. Does nothing when it is not running.
    pub fn kill9(&mut self) {
        self.kill_current(true);
    }

    /// `pg_ctl stop -m immediate`: the postmaster makes all its processes
    /// quit at once, without a checkpoint (the next start runs crash
    /// recovery). Waits until they are gone. Does nothing when it is not
    /// running.
    pub fn stop_immediate(&mut self) {
        let Some(p) = self.current.take() else { return };
        let kids = children(p.pid);
        let out = server_user_command(&bins().pg_ctl, &self.dir)
            .arg("stop")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "-w", "-t", "30"])
            .output()
            .expect("run pg_ctl");
        assert!(
            out.status.success(),
            "pg_ctl stop -m immediate failed ({}):\n{}{}\nthe end of the server's log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            tail(&self.log(), 40)
        );
        self.wait_gone(p.pid, &kids, "pg_ctl stop -m immediate", true);
        self.old.push(p);
    }

    /// Starts it again on the same data directory and port, and waits until
    /// it accepts sessions (after [`kill9`](Self::kill9) or
    /// [`stop_immediate`](Self::stop_immediate), once crash recovery is
    /// done). If it still runs, it is first killed with [`kill9`](Self::kill9).
    pub fn restart(&mut self) {
        self.kill_current(true);
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            self.spawn();
            if self.wait_ready(deadline.saturating_duration_since(Instant::now())) {
                return;
            }
            // The postmaster died (or did not get ready in time): the port
            // or the old shared memory may linger for a moment. Try again.
            self.kill_current(false);
            assert!(
                Instant::now() < deadline,
                "postgres did not restart on port {} within {}s; the end of its log:\n{}",
                self.port,
                READY_WITHIN.as_secs(),
                tail(&self.log(), 60)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `sql` with `psql` on database `db` and returns its output
    /// (unaligned, tuples only: one line per row, columns separated by `|`,
    /// no trailing newline). Several `;`-separated statements run in one
    /// transaction and only the last one's rows are printed. Panics with
    /// psql's error if it fails.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new(&bins().psql)
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-d", db, "-c", sql])
            .env("PGCONNECT_TIMEOUT", "10")
            .env_remove("PGOPTIONS")
            .env_remove("PGSERVICE")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {}: {e}. Install the client with \
                     `apt-get install -y postgresql-client`",
                    bins().psql.display()
                )
            });
        assert!(
            out.status.success(),
            "psql -d {db} -c {sql:?} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
        while s.ends_with('\n') {
            s.pop();
        }
        s
    }

    /// `CREATE DATABASE "name"`.
    pub fn create_database(&self, name: &str) {
        assert!(
            !name.is_empty() && !name.contains('"') && !name.contains('\0'),
            "bad database name {name:?}"
        );
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""));
    }
}

fn close(mut p: Process) {
    drop(p.wrapper.stdin.take());
    let _ = p.wrapper.wait();
}

impl Drop for PgServer {
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
