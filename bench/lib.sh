# Shared by bench/load.sh and bench/profile.sh (sourced, not run): the
# servers they build, a redis-server of their own on a free loopback port,
# a PostgreSQL cluster of their own (only when a variant named in $VARIANTS
# or $VARIANT contains `postgres`), the routes and the session cookies wrk
# replays. SQLite variants use the file $SQLITE_PATH (bench/out), new for
# each server.
#
# Expects $CONNS (and $BENCH_TOOLS: more commands it needs; $PG_OPTS: more
# `-c name=value` settings for PostgreSQL); sets $out, $OURS, $PEERS,
# $redis_pid, $redis_port, $server_pid and REDIS_URL, and with PostgreSQL
# $pg_pid (the postmaster, else empty), $pg_port and DATABASE_URL.

needs_pg=""
case " ${VARIANTS:-} ${VARIANT:-} " in *postgres*) needs_pg=1 ;; esac

for tool in wrk redis-server redis-cli curl python3 ${needs_pg:+psql} ${BENCH_TOOLS:-}; do
    command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y wrk redis-server redis-tools curl python3 linux-perf postgresql" >&2; exit 1; }
done

cargo build --release --quiet --example bench_server --features postgres
cargo build --release --quiet --manifest-path bench/peers/Cargo.toml
OURS=target/release/examples/bench_server
PEERS=bench/peers/target/release/session-trail-bench-peers

out=bench/out
mkdir -p "$out"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

redis_port=$(free_port)
redis_dir=$(mktemp -d)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$redis_dir" --daemonize no >"$out/redis.log" 2>&1 &
redis_pid=$!
server_pid=""
pg_pid=""
pg_dir=""
cleanup() {
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
    kill "$redis_pid" 2>/dev/null || true
    rm -rf "$redis_dir"
    local pm=$pg_pid
    [ -z "$pm" ] && [ -n "$pg_dir" ] && pm=$(head -n 1 "$pg_dir/data/postmaster.pid" 2>/dev/null || true)
    if [ -n "$pm" ]; then
        # Immediate shutdown (SIGQUIT): the cluster is thrown away anyway.
        kill -QUIT "$pm" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$pm" 2>/dev/null || break; sleep 0.05; done
    fi
    [ -n "$pg_dir" ] && rm -rf "$pg_dir"
    return 0
}
trap cleanup EXIT
for _ in $(seq 100); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.05; done
export REDIS_URL="redis://127.0.0.1:$redis_port"

# PostgreSQL: initdb, pg_ctl and postgres from PATH, else from the newest
# /usr/lib/postgresql/*/bin; run as the `postgres` user when we are root.
# fsync=off skips the disk flushes (a throw-away cluster on a shared disk);
# synchronous_commit stays on, so every commit still waits for its WAL
# write, as in a durable deployment.
pg_bin() {
    local dir
    if command -v initdb >/dev/null && command -v pg_ctl >/dev/null && command -v postgres >/dev/null; then
        dirname "$(command -v postgres)"
        return
    fi
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    [ -n "$dir" ] && [ -x "$dir/postgres" ] && [ -x "$dir/initdb" ] || {
        echo "no PostgreSQL server binaries (initdb, postgres): apt-get install -y postgresql" >&2
        exit 1
    }
    echo "$dir"
}
as_pg() {
    if [ "$(id -u)" = 0 ]; then
        setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"
    else
        "$@"
    fi
}
# pg_sql SQL...: runs each statement (its own -c) as `postgres` on the
# bench cluster's maintenance database.
pg_sql() {
    local args=()
    for s in "$@"; do args+=(-c "$s"); done
    psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$pg_port" -U postgres -d postgres "${args[@]}"
}
# pg_reset_db: drops and creates the database `bench` the servers use, so
# each variant's run starts from empty tables.
pg_reset_db() {
    pg_sql 'DROP DATABASE IF EXISTS bench WITH (FORCE)' 'CREATE DATABASE bench' >/dev/null
}
if [ -n "$needs_pg" ]; then
    bin=$(pg_bin)
    pg_dir=$(mktemp -d)
    [ "$(id -u)" = 0 ] && chown postgres: "$pg_dir"
    as_pg "$bin/initdb" -D "$pg_dir/data" -U postgres --auth=trust -E UTF8 --locale=C --no-sync \
        >"$out/postgres-initdb.log" 2>&1 || { cat "$out/postgres-initdb.log" >&2; exit 1; }
    pg_port=$(free_port)
    while [ "$pg_port" = 5432 ]; do pg_port=$(free_port); done
    # shellcheck disable=SC2086
    as_pg "$bin/postgres" -D "$pg_dir/data" -c listen_addresses=127.0.0.1 -p "$pg_port" -k "$pg_dir" \
        -c fsync=off -c synchronous_commit=on -c max_connections=200 -c shared_buffers=128MB \
        ${PG_OPTS:-} >"$out/postgres.log" 2>&1 &
    pg_starter=$!
    for _ in $(seq 200); do
        psql -X -h 127.0.0.1 -p "$pg_port" -U postgres -d postgres -c 'SELECT 1' >/dev/null 2>&1 && break
        kill -0 "$pg_starter" 2>/dev/null || { cat "$out/postgres.log" >&2; exit 1; }
        sleep 0.05
    done
    # The postmaster (not $!, which can be the subshell running as_pg): the
    # pid whose children are the backends, and the one to stop.
    pg_pid=$(head -n 1 "$pg_dir/data/postmaster.pid")
    pg_sql 'SELECT 1' >/dev/null || { cat "$out/postgres.log" >&2; exit 1; }
    export DATABASE_URL="postgres://postgres@127.0.0.1:$pg_port/bench"
fi

# pg_ticks: CPU clock ticks (user + system) of the bench cluster so far:
# the postmaster's own and its reaped children's (cutime + cstime), and
# those of its live children (backends, checkpointer, WAL writer...). 0
# without PostgreSQL.
pg_ticks() {
    [ -n "$pg_pid" ] || { echo 0; return; }
    local kids
    kids=$({ ps -o pid= --ppid "$pg_pid" || true; } | awk '{printf "/proc/%s/stat ", $1}')
    # Fields after "pid (comm) ": utime, stime, cutime, cstime are the 12th
    # to 15th. A child that exits meanwhile is skipped (cat's error, which
    # must not end the run under pipefail).
    # shellcheck disable=SC2086
    { cat "/proc/$pg_pid/stat" $kids 2>/dev/null || true; } \
        | awk '{sub(/^.*\) /, ""); t += $12 + $13 + $14 + $15} END {print t + 0}'
}

# start_server VARIANT PORT: starts it (ours or tower-sessions') and waits
# until it answers. A variant on PostgreSQL gets an empty database first,
# one on SQLite a new file.
export SQLITE_PATH="$out/bench-sqlite.db"
start_server() {
    local variant=$1 port=$2
    case $variant in *postgres*) pg_reset_db ;; esac
    case $variant in *sqlite*) rm -f "$SQLITE_PATH" "$SQLITE_PATH-wal" "$SQLITE_PATH-shm" ;; esac
    case $variant in
        ts-*) "$PEERS" "$variant" "$port" >"$out/server.log" 2>&1 & ;;
        *) "$OURS" "$variant" "$port" >"$out/server.log" 2>&1 & ;;
    esac
    server_pid=$!
    for _ in $(seq 200); do
        curl -s -o /dev/null "http://127.0.0.1:$port/static" && return 0
        sleep 0.05
    done
    echo "server $variant did not start" >&2
    cat "$out/server.log" >&2
    exit 1
}

# route_of ROUTE: sets $path, $method and $keep (0: wrk never updates the
# cookies it replays).
route_of() {
    keep=1
    case $1 in
        static) path=/static; method=GET ;;
        counter) path=/; method=GET ;;
        login-stale) path=/login; method=POST; keep=0 ;;
        login-new) path=/login; method=POST ;;
        login-rotate) path=/login; method=POST ;;
        *) echo "unknown route $1" >&2; exit 1 ;;
    esac
}

# cookies_for ROUTE PORT FILE: the cookies wrk starts from: none for
# login-new (a new session per login), else $CONNS fresh sessions.
cookies_for() {
    local route=$1 port=$2 file=$3
    : > "$file"
    [ "$route" = login-new ] && return 0
    for _ in $(seq "$CONNS"); do
        curl -s -o /dev/null -D - "http://127.0.0.1:$port/" \
            | awk 'tolower($1)=="set-cookie:" {split($2,a,";"); print a[1]}' >> "$file"
    done
}
