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

BENCH_TOOLS=perf
. bench/lib.sh

port=$(free_port)
start_server "$VARIANT" "$port"
route_of "$ROUTE"
cookies="$out/profile-cookies.txt"
cookies_for "$ROUTE" "$port" "$cookies"
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
echo "server, inclusive share of samples (the crate's functions, the allocator, system calls):"
perf report -i "$data" --children --sort symbol --stdio -g none 2>/dev/null \
    | grep -E '^ +[0-9.]+%' \
    | grep -E 'session_trail::|_int_malloc|_int_free|malloc_consolidate|entry_SYSCALL' \
    | grep -vE 'poll<|call_once|catch_unwind|do_call|with_mut|poll_future|poll_inner|\{async|\{closure#' \
    | head -40 | cut -c1-150
