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
#
# For a variant on PostgreSQL (its name contains `postgres`) it also
# prints PostgreSQL's CPU per request (the bench cluster's processes) and,
# from pg_stat_statements (preloaded in the bench cluster), each
# statement's calls, execution time (wall clock, so waits count) and WAL
# per request, also of the statements run inside the store's functions
# (marked nested: their time is also in the calling statement's); and it
# records the server's backends with perf too
# (bench/out/perf-VARIANT-ROUTE-pg.data): the inclusive share of the
# phases of a statement, and the top symbols, user and kernel.
set -euo pipefail
cd "$(dirname "$0")/.."

VARIANT=${1:?variant}
ROUTE=${2:?route}
SECONDS_=${3:-5}
CONNS=${CONNS:-64}

BENCH_TOOLS=perf
case $VARIANT in *postgres*) PG_OPTS="${PG_OPTS:-} -c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=all" ;; esac
. bench/lib.sh
[ -n "$pg_pid" ] && pg_sql 'CREATE EXTENSION IF NOT EXISTS pg_stat_statements' >/dev/null

port=$(free_port)
start_server "$VARIANT" "$port"
route_of "$ROUTE"
cookies="$out/profile-cookies.txt"
cookies_for "$ROUTE" "$port" "$cookies"
export KEEP_COOKIES=$keep COOKIES=$cookies METHOD=$method
wrk -t2 -c"$CONNS" -d2s -s bench/wrk.lua "http://127.0.0.1:$port$path" >/dev/null
redis-cli -p "$redis_port" config resetstat >/dev/null
data="$out/perf-$VARIANT-$ROUTE.data"
pg_data="$out/perf-$VARIANT-$ROUTE-pg.data"
pg_perf_pid=""
if [ -n "$pg_pid" ]; then
    pg_sql 'SELECT pg_stat_statements_reset()' >/dev/null
    # The server's connections (after the warm-up the pool holds them).
    backends=$(psql -X -At -h 127.0.0.1 -p "$pg_port" -U postgres -d postgres \
        -c "SELECT string_agg(pid::text, ',') FROM pg_stat_activity WHERE datname = 'bench' AND pid <> pg_backend_pid()")
    if [ -n "$backends" ]; then
        perf record -e cpu-clock -F 299 --call-graph dwarf,16384 -p "$backends" -o "$pg_data" -- sleep "$SECONDS_" >/dev/null 2>&1 &
        pg_perf_pid=$!
    fi
fi
g0=$(pg_ticks)
perf record -e cpu-clock -F 299 --call-graph dwarf,16384 -p "$server_pid" -o "$data" -- sleep "$SECONDS_" >/dev/null 2>&1 &
perf_pid=$!
wrk -t2 -c"$CONNS" -d"${SECONDS_}s" -s bench/wrk.lua "http://127.0.0.1:$port$path" > "$out/wrk.txt"
g1=$(pg_ticks)
wait "$perf_pid" || true
[ -n "$pg_perf_pid" ] && { wait "$pg_perf_pid" || true; }
requests=$(grep -o '[0-9]* requests in' "$out/wrk.txt" | cut -d' ' -f1)
echo "$VARIANT $ROUTE: $(grep Requests/sec "$out/wrk.txt" | awk '{print $2}') req/s (slowed by perf)"
if [ -n "$pg_pid" ]; then
    echo
    echo "PostgreSQL: $(python3 -c "print(f'{($g1 - $g0) / $(getconf CLK_TCK) * 1e6 / max($requests, 1):.1f}')") µs CPU per request (all the cluster's processes); per request, by statement:"
    psql -X -At -F $'\t' -h 127.0.0.1 -p "$pg_port" -U postgres -d postgres -c "
        SELECT calls, total_exec_time, total_plan_time, rows, wal_bytes,
               CASE WHEN toplevel THEN '' ELSE '  (nested) ' END || left(regexp_replace(regexp_replace(query, '--[^\n]*', '', 'g'), '\s+', ' ', 'g'), 110)
        FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
        WHERE d.datname = 'bench'
        ORDER BY total_exec_time DESC LIMIT 20" \
        | python3 -c "
import sys
n = $requests
for line in sys.stdin:
    calls, ex, pl, rows, wal, q = line.rstrip('\n').split('\t', 5)
    print(f'  {int(calls)/n:6.3f} calls  {float(ex)*1000/n:7.1f} µs exec  {float(pl)*1000/n:5.1f} µs plan  {int(rows)/n:6.2f} rows  {int(float(wal))/n:6.0f} WAL B  {q.rstrip()}')
"
    if [ -n "$pg_perf_pid" ]; then
        echo
        echo "PostgreSQL backends of the server, inclusive share of samples (statement phases, the history function, commit, the socket, waiting):"
        perf report -i "$pg_data" --children --sort symbol --stdio -g none 2>/dev/null \
            | grep -E '^ +[0-9.]+%' \
            | grep -E '\] (PostgresMain|exec_bind_message|exec_execute_message|PortalRun|standard_ExecutorStart|standard_ExecutorRun|standard_ExecutorEnd|plpgsql_call_handler|SPI_execute_plan_with_paramlist|ExecModifyTable|ExecInsert|ExecUpdate|CommitTransactionCommand|StartTransactionCommand|XLogFlush|XLogInsert|pq_getbyte|secure_read|secure_write|internal_flush|WaitEventSetWait|epoll_wait|jsonb_in|GetCachedPlan|LockAcquireExtended|heap_update|heap_insert|index_insert|_bt_doinsert|ExecInitModifyTable|ExecInitIndexScan|entry_SYSCALL_64_after_hwframe)( |$)' \
            | head -40 | cut -c1-150
        echo
        echo "PostgreSQL backends of the server, self share of samples (top symbols):"
        perf report -i "$pg_data" --no-children --sort dso,symbol --stdio -g none 2>/dev/null \
            | grep -E '^ +[0-9.]+%' | head -20 | cut -c1-150
    fi
fi
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
