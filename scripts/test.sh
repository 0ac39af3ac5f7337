#!/usr/bin/env bash
# Sets up a fresh Debian machine and runs the whole test suite.
#
# Installs what the tests need when it is missing (redis-server for the Redis
# store's tests, which start their own servers on free loopback ports;
# PostgreSQL's server for the PostgreSQL store's tests, likewise;
# Chromium and its chromedriver for the demo page's browser test), then runs
# every test, doc tests included.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
# The PostgreSQL store's tests start their own clusters (initdb + postgres
# on free loopback ports, in temporary directories): they need the server
# binaries, on the PATH or under /usr/lib/postgresql/*/bin, and psql.
if ! command -v initdb >/dev/null 2>&1 &&
    ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
    missing+=(postgresql postgresql-client)
fi
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
if ((${#missing[@]})); then
    echo "installing: ${missing[*]}"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --all-features --no-fail-fast
else
    cargo test --all-features --no-fail-fast --lib --bins --tests --examples
fi
cargo test --all-features --doc
