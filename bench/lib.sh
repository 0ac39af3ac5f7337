# Shared by bench/load.sh and bench/profile.sh (sourced, not run): the
# servers they build, a redis-server of their own on a free loopback port,
# the routes and the session cookies wrk replays.
#
# Expects $CONNS (and $BENCH_TOOLS: more commands it needs); sets $out, $OURS, $PEERS, $redis_pid, $redis_port,
# $server_pid and REDIS_URL.

for tool in wrk redis-server redis-cli curl python3 ${BENCH_TOOLS:-}; do
    command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y wrk redis-server redis-tools curl python3 linux-perf" >&2; exit 1; }
done

cargo build --release --quiet --example bench_server
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
cleanup() {
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
    kill "$redis_pid" 2>/dev/null || true
    rm -rf "$redis_dir"
}
trap cleanup EXIT
for _ in $(seq 100); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.05; done
export REDIS_URL="redis://127.0.0.1:$redis_port"

# start_server VARIANT PORT: starts it (ours or tower-sessions') and waits
# until it answers.
start_server() {
    local variant=$1 port=$2
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
