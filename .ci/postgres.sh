#!/usr/bin/env bash
# A throwaway PostgreSQL server for the tests of plugins/flowcore-postgres (and the benchmark):
#
#   FLOWCORE_TEST_POSTGRES="$(bash .ci/postgres.sh start [DIR])"   # prints the URL on stdout
#   bash .ci/postgres.sh stop "$FLOWCORE_TEST_POSTGRES"             # or: stop DIR
#
# `start` makes a cluster in DIR (default: a new temporary folder), with initdb and pg_ctl
# of the newest PostgreSQL installed from Debian (/usr/lib/postgresql/*/bin) or on PATH,
# starts it listening on a Unix socket in DIR only (no TCP port: nothing to collide with
# another server on the machine, and nobody else can reach it: DIR is 0700), with trust
# authentication for the `postgres` role on that socket, creates the database `flowcore`,
# and prints its URL. Run as root, the server runs as the `postgres` system user (initdb
# refuses root) in a DIR handed to it. fsync is off: a test server needs no protection
# against power loss (a killed client process loses nothing committed either way).
# `stop` stops the server (fast shutdown) and removes DIR. Progress goes to stderr.
set -euo pipefail

log() { echo "postgres: $*" >&2; }

find_bin() {
    local name="$1" dir
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [[ -x "$dir/$name" ]]; then echo "$dir/$name"; return 0; fi
    done
    command -v "$name" 2>/dev/null && return 0
    log "no $name found (looked in /usr/lib/postgresql/*/bin and on PATH); install it with" \
        "\`apt-get install postgresql\` (Debian), or set FLOWCORE_TEST_POSTGRES to the URL of" \
        "a server you run yourself"
    return 1
}

# as_owner CMD...: run CMD as the user that owns the cluster (postgres when we are root).
as_owner() {
    if [[ "$(id -u)" == 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

dir_of() {
    # A DIR, or a URL made by `start` (its host= parameter is DIR).
    local given="$1"
    if [[ "$given" == postgres*://* ]]; then
        given="${given##*host=}"
        given="${given%%&*}"
    fi
    echo "$given"
}

start() {
    local dir="${1:-}"
    local initdb pg_ctl
    initdb="$(find_bin initdb)"
    pg_ctl="$(find_bin pg_ctl)"
    if [[ -z "$dir" ]]; then
        dir="$(mktemp -d "${TMPDIR:-/tmp}/flowcore-postgres.XXXXXX")"
    else
        mkdir -p "$dir"
    fi
    dir="$(cd "$dir" && pwd)"
    if [[ -e "$dir/data" ]]; then
        log "$dir/data exists already; stop that server first (bash .ci/postgres.sh stop $dir)"
        return 1
    fi
    if [[ "$(id -u)" == 0 ]]; then
        if ! id postgres >/dev/null 2>&1; then
            log "running as root, but there is no 'postgres' system user to run the server" \
                "(initdb refuses root); install Debian's postgresql package, which creates it"
            return 1
        fi
        chown postgres: "$dir"
    fi
    chmod 700 "$dir"
    local start_time=$SECONDS
    log "initdb in $dir/data ..."
    if ! as_owner "$initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --locale=C \
        --no-sync >"$dir/initdb.log" 2>&1; then
        cat "$dir/initdb.log" >&2
        log "initdb failed (the output is above)"
        return 1
    fi
    # The socket's port number only names the socket file: any number does.
    if ! as_owner "$pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-c listen_addresses='' -k $dir -p 5432 -c fsync=off -c full_page_writes=off \
            -c synchronous_commit=on -c max_connections=200 -c shared_buffers=128MB" \
        start >&2; then
        cat "$dir/server.log" >&2 || true
        log "the server did not start (its log is above)"
        return 1
    fi
    local psql
    psql="$(find_bin psql)"
    as_owner "$psql" -q -h "$dir" -p 5432 -U postgres -d postgres \
        -c "CREATE DATABASE flowcore" >&2
    log "ready in $((SECONDS - start_time)) s; stop it with: bash .ci/postgres.sh stop $dir"
    echo "postgresql://postgres@/flowcore?host=$dir&port=5432"
}

stop() {
    local dir
    dir="$(dir_of "${1:?usage: postgres.sh stop DIR|URL}")"
    if [[ ! -d "$dir/data" ]]; then
        log "no server in $dir (nothing to stop)"
        return 0
    fi
    local pg_ctl
    pg_ctl="$(find_bin pg_ctl)"
    as_owner "$pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >&2 || true
    rm -rf "$dir"
    log "stopped and removed $dir"
}

case "${1:-start}" in
    start) shift || true; start "${1:-}" ;;
    stop) shift; stop "${1:-}" ;;
    *) log "usage: bash .ci/postgres.sh start [DIR] | stop DIR|URL"; exit 2 ;;
esac
