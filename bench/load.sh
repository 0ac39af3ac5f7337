#!/usr/bin/env bash
# Load benchmark: bare axum, session-trail's variants and tower-sessions,
# side by side, in interleaved rounds on this machine.
#
#   bench/load.sh                 # 3 rounds of 10 s per variant and route
#   ROUNDS=5 DURATION=20s bench/load.sh
#   VARIANTS="postgres postgres-nohistory redis-postgres ts-postgres" bench/load.sh
#   VARIANTS="sqlite sqlite-nohistory ts-sqlite" bench/load.sh
#
# Prints a table of medians: req/s, p50/p99 latency, CPU µs per request of
# the server, of redis-server and of PostgreSQL (from /proc/PID/stat), and
# ratios against bare axum and tower-sessions (the variant with the same
# session store: ts-memory, ts-redis, ts-postgres for `postgres*`, or
# ts-sqlite for `sqlite*`; our
# `redis-postgres` keeps sessions in Redis, so its peer is ts-redis). Raw
# rows go to bench/out/results.tsv. It starts its own redis-server on a
# free loopback port.
#
# Variants (VARIANTS=...; the default leaves PostgreSQL out):
#   bare, memory, memory-nohistory, redis, redis-nohistory, redis-cached
#                 examples/bench_server.rs
#   postgres, postgres-nohistory
#                 sessions (and history) in PostgreSQL
#   redis-postgres
#                 sessions in Redis, history in PostgreSQL
#   sqlite, sqlite-nohistory
#                 sessions (and history) in an SQLite file (new for each
#                 server; WAL, synchronous=NORMAL)
#   ts-memory, ts-redis, ts-postgres, ts-sqlite
#                 tower-sessions 0.14 (bench/peers; ts-postgres and
#                 ts-sqlite: tower-sessions-sqlx-store 0.15, its SQLite
#                 file in WAL with synchronous=NORMAL too)
# With a variant whose name contains `postgres`, it also starts its own
# PostgreSQL cluster (initdb in a temp dir, a free loopback port; fsync=off,
# synchronous_commit=on), and gives each such variant's server a freshly
# created database. PG_POOL sets both libraries' pool size (default 8);
# PG_OPTS adds settings to the cluster's command line (`-c name=value`).
#
# Routes (ROUTES=...):
#   static        GET /static: the layer runs, the handler never loads
#   counter       GET /: load, increment, save
#   login-stale   POST /login presenting a cookie that is never updated from
#                 the response: after the first, each login presents a
#                 replaced token and logs in a new session
#   login-new     POST /login without a cookie: a new session per login
#   login-rotate  POST /login with the cookie kept current (bench/wrk.lua):
#                 each login rotates a live session
# Each route starts from 64 fresh session cookies (one per connection).
set -euo pipefail
trap 'echo "bench/load.sh: failed at line $LINENO: $BASH_COMMAND" >&2' ERR
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
CONNS=${CONNS:-64}
THREADS=${THREADS:-2}
VARIANTS=${VARIANTS:-"bare memory memory-nohistory ts-memory redis redis-nohistory redis-cached ts-redis"}
ROUTES=${ROUTES:-"static counter login-stale login-new login-rotate"}

. bench/lib.sh

results="$out/results.tsv"
printf 'round\tvariant\troute\trps\tp50_us\tp99_us\tserver_us\tredis_us\tpg_us\trequests\n' > "$results"

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
clk=$(getconf CLK_TCK)

for round in $(seq "$ROUNDS"); do
    for variant in $VARIANTS; do
        redis-cli -p "$redis_port" flushall >/dev/null
        port=$(free_port)
        start_server "$variant" "$port"
        cookies="$out/cookies-$variant.txt"
        for route in $ROUTES; do
            route_of "$route"
            cookies_for "$route" "$port" "$cookies"
            export KEEP_COOKIES=$keep
            COOKIES=$cookies METHOD=$method wrk -t"$THREADS" -c"$CONNS" -d"$WARMUP" -s bench/wrk.lua "http://127.0.0.1:$port$path" >/dev/null
            s0=$(ticks "$server_pid"); r0=$(ticks "$redis_pid"); g0=$(pg_ticks)
            COOKIES=$cookies METHOD=$method wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency -s bench/wrk.lua "http://127.0.0.1:$port$path" > "$out/wrk.txt"
            s1=$(ticks "$server_pid"); r1=$(ticks "$redis_pid"); g1=$(pg_ticks)
            python3 - "$out/wrk.txt" "$round" "$variant" "$route" "$((s1 - s0))" "$((r1 - r0))" "$((g1 - g0))" "$clk" >> "$results" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
rnd, variant, route, sticks, rticks, gticks, clk = sys.argv[2:9]
def us(v, unit):
    return float(v) * {"us": 1, "ms": 1e3, "s": 1e6}[unit]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
reqs = int(re.search(r"(\d+) requests in", text).group(1))
lat = dict((p, us(v, u)) for p, v, u in re.findall(r"\s(\d+)%\s+([\d.]+)(us|ms|s)", text))
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
if errors:
    print(f"warning: {variant} {route}: {errors.group(1)} non-2xx responses", file=sys.stderr)
per = lambda t: int(t) / int(clk) * 1e6 / max(reqs, 1)
print(f"{rnd}\t{variant}\t{route}\t{rps:.0f}\t{lat.get('50', 0):.0f}\t{lat.get('99', 0):.0f}\t{per(sticks):.1f}\t{per(rticks):.1f}\t{per(gticks):.1f}\t{reqs}")
PY
            tail -n 1 "$results"
        done
        kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=""
    done
done

python3 - "$results" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
med = {}
for r in rows:
    med.setdefault((r["variant"], r["route"]), []).append(r)
def m(v, route, col):
    rs = med.get((v, route))
    return statistics.median(float(x[col]) for x in rs) if rs else None
variants = list(dict.fromkeys(r["variant"] for r in rows))
routes = list(dict.fromkeys(r["route"] for r in rows))
def peer(v):
    if v.startswith("redis"):
        return "ts-redis"
    if v.startswith("postgres"):
        return "ts-postgres"
    if v.startswith("sqlite"):
        return "ts-sqlite"
    return "ts-memory"
print()
print("| route | variant | req/s | × bare | × tower-sessions | p50 µs | p99 µs | CPU µs/req server + redis + postgres |")
print("|---|---|---|---|---|---|---|---|")
for route in routes:
    bare = m("bare", route, "rps")
    for v in variants:
        rps = m(v, route, "rps")
        if rps is None:
            continue
        xb = f"{rps / bare:.2f}" if bare else "–"
        p = m(peer(v), route, "rps") if not v.startswith("ts-") and v != "bare" else None
        xp = f"{rps / p:.2f}" if p else "–"
        cpu = f"{m(v, route, 'server_us'):.1f} + {m(v, route, 'redis_us'):.1f} + {m(v, route, 'pg_us'):.1f}"
        print(f"| {route} | {v} | {rps:,.0f} | {xb} | {xp} | {m(v, route, 'p50_us'):.0f} | {m(v, route, 'p99_us'):.0f} | {cpu} |")
PY
