#!/usr/bin/env bash
# Profiles one variant on one route under load: where the server's CPU goes
# (perf, call graphs from DWARF) and where redis-server's goes (INFO
# commandstats: calls and microseconds per request, per command).
#
#   bench/profile.sh VARIANT ROUTE [SECONDS]
#   bench/profile.sh redis login-new 5
#
# VARIANT and ROUTE as in bench/load.sh. Writes bench/out/perf-VARIANT-ROUTE.data
# and prints the commandstats table and perf's top entries (inclusive, for the
# crate's own functions and the allocator). Needs perf (linux-perf); it
# samples on the cpu-clock event, which works where hardware counters do
# not.
set -euo pipefail
cd "$(dirname "$0")/.."

VARIANT=${1:?variant}
ROUTE=${2:?route}
SECONDS_=${3:-5}
CONNS=${CONNS:-64}

for tool in wrk redis-server redis-cli curl python3 perf; do
    command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y wrk redis-server redis-tools curl python3 linux-perf" >&2; exit 1; }
done
cargo build --release --quiet --example bench_server
cargo build --release --quiet --manifest-path bench/peers/Cargo.toml

out=bench/out
mkdir -p "$out"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
redis_port=$(free_port)
port=$(free_port)
redis_dir=$(mktemp -d)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$redis_dir" >"$out/redis.log" 2>&1 &
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

case $VARIANT in
    ts-*) bench/peers/target/release/session-trail-bench-peers "$VARIANT" "$port" >"$out/server.log" 2>&1 & ;;
    *) target/release/examples/bench_server "$VARIANT" "$port" >"$out/server.log" 2>&1 & ;;
esac
server_pid=$!
for _ in $(seq 200); do curl -s -o /dev/null "http://127.0.0.1:$port/static" && break; sleep 0.05; done

keep=1
case $ROUTE in
    static) path=/static; method=GET ;;
    counter) path=/; method=GET ;;
    login-stale) path=/login; method=POST; keep=0 ;;
    login-new|login-rotate) path=/login; method=POST ;;
    *) echo "unknown route $ROUTE" >&2; exit 1 ;;
esac
cookies="$out/profile-cookies.txt"
: > "$cookies"
if [ "$ROUTE" != login-new ]; then
    for _ in $(seq "$CONNS"); do
        curl -s -o /dev/null -D - "http://127.0.0.1:$port/" \
            | awk 'tolower($1)=="set-cookie:" {split($2,a,";"); print a[1]}' >> "$cookies"
    done
fi
export KEEP_COOKIES=$keep COOKIES=$cookies METHOD=$method
wrk -t2 -c"$CONNS" -d2s -s bench/wrk.lua "http://127.0.0.1:$port$path" >/dev/null
redis-cli -p "$redis_port" config resetstat >/dev/null
data="$out/perf-$VARIANT-$ROUTE.data"
perf record -e cpu-clock -F 299 --call-graph dwarf,16384 -p "$server_pid" -o "$data" -- sleep "$SECONDS_" >/dev/null 2>&1 &
perf_pid=$!
wrk -t2 -c"$CONNS" -d"${SECONDS_}s" -s bench/wrk.lua "http://127.0.0.1:$port$path" > "$out/wrk.txt"
wait "$perf_pid" || true
requests=$(grep -o '[0-9]* requests in' "$out/wrk.txt" | cut -d' ' -f1)
echo "$VARIANT $ROUTE: $(grep Requests/sec "$out/wrk.txt" | awk '{print $2}') req/s (slowed by perf)"
echo
echo "redis-server, per request:"
redis-cli -p "$redis_port" info commandstats | grep '^cmdstat' | python3 -c "
import sys
n = $requests
for line in sys.stdin:
    name, rest = line.strip().split(':', 1)
    d = dict(kv.split('=') for kv in rest.split(','))
    if name.endswith('resetstat'):
        continue
    print(f\"  {name[8:]:14s} {int(d['calls'])/n:6.3f} calls  {int(d['usec'])/n:6.2f} µs  ({float(d['usec_per_call']):.2f} µs a call)\")
"
echo
echo "server, inclusive share of samples (crate functions, allocator, syscalls):"
perf report -i "$data" --children --sort symbol --stdio -g none 2>/dev/null \
    | grep -E '^ +[0-9.]+%' \
    | grep -E 'session_trail::[a-z_:]+(::\{\{closure\}\}|::[A-Za-z_]+)$|<session_trail[^ ]*>::[a-z_]+::|_int_malloc|_int_free|malloc_consolidate|entry_SYSCALL' \
    | head -40 | cut -c1-150
