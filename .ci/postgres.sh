#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the store's tests, for CI and developers alike.
#
#   eval "$(.ci/postgres.sh start)"   # starts one; exports BATON_TEST_POSTGRES_URL, BATON_PG_DIR
#   make test-postgres
#   .ci/postgres.sh stop [DIR]        # stops the cluster in DIR (default $BATON_PG_DIR), deletes it
#   .ci/postgres.sh install           # as root on Debian: apt-get install postgresql if missing
#
# From another bash script: `source .ci/postgres.sh; postgres_start; ...; postgres_stop`.
#
# The cluster lives in one temp directory (data, socket, log), listens on 127.0.0.1 on a free
# port, and trades durability for speed (fsync off): it exists for one test session.
# initdb refuses to run as root, so as root the server runs as `postgres` (or a created
# `baton-postgres` user). Binaries: $PG_BIN, else pg_ctl/initdb on PATH, else the newest
# /usr/lib/postgresql/*/bin (Debian's layout, not on PATH).

_pg_bin_dir() {
    if [[ -n "${PG_BIN:-}" ]]; then
        if [[ -x "$PG_BIN/initdb" && -x "$PG_BIN/pg_ctl" ]]; then echo "$PG_BIN"; fi
        return 0
    fi
    local pg_ctl dir
    if pg_ctl=$(command -v pg_ctl) && command -v initdb >/dev/null; then
        dirname "$(readlink -f "$pg_ctl")"
        return
    fi
    dir=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin 2>/dev/null | sort -V | tail -n 1)
    if [[ -n "$dir" && -x "$dir/initdb" && -x "$dir/pg_ctl" ]]; then echo "$dir"; fi
}

# The unprivileged user to run the server as when we are root; empty otherwise.
_pg_user() {
    [[ $(id -u) -eq 0 ]] || return 0
    if id -u postgres >/dev/null 2>&1; then
        echo postgres
        return
    fi
    id -u baton-postgres >/dev/null 2>&1 ||
        useradd --system --no-create-home --shell /usr/sbin/nologin baton-postgres
    echo baton-postgres
}

_pg_as() {
    local user=$1
    shift
    if [[ -n "$user" ]]; then
        runuser -u "$user" -- "$@"
    else
        "$@"
    fi
}

_pg_free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

postgres_install() {
    [[ -n "$(_pg_bin_dir)" ]] && return 0
    if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
        echo "postgres.sh: no PostgreSQL found; install PostgreSQL 15+ (e.g. sudo apt-get install postgresql) or set PG_BIN to its bin directory" >&2
        return 1
    fi
    echo "postgres.sh: installing PostgreSQL from Debian's package" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql >&2
    if [[ -z "$(_pg_bin_dir)" ]]; then
        echo "postgres.sh: apt-get installed postgresql but no initdb is in /usr/lib/postgresql/*/bin" >&2
        return 1
    fi
}

postgres_start() {
    local bin user dir password port attempt started=""
    bin=$(_pg_bin_dir)
    if [[ -z "$bin" ]]; then
        echo "postgres.sh: no initdb/pg_ctl on PATH or in /usr/lib/postgresql/*/bin; run '.ci/postgres.sh install' as root, install PostgreSQL 15+, or set PG_BIN" >&2
        return 1
    fi
    user=$(_pg_user) || return 1
    dir=$(mktemp -d "${TMPDIR:-/tmp}/baton-postgres.XXXXXX") || return 1
    [[ -z "$user" ]] || chown "$user" "$dir"
    printf '%s\n%s\n' "$bin" "$user" >"$dir/cluster"

    password=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
    printf '%s\n' "$password" >"$dir/password"
    [[ -z "$user" ]] || chown "$user" "$dir/password"
    if ! _pg_as "$user" "$bin/initdb" -D "$dir/data" -U baton --pwfile="$dir/password" \
        --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --locale=C --no-sync \
        >"$dir/initdb.log" 2>&1; then
        echo "postgres.sh: initdb failed:" >&2
        cat "$dir/initdb.log" >&2
        rm -rf "$dir"
        return 1
    fi
    rm -f "$dir/password"

    # Another program may take the free port before the server binds it: try a few.
    for attempt in 1 2 3; do
        port=$(_pg_free_port)
        if _pg_as "$user" "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 \
            -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c max_connections=200 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
            start >/dev/null 2>&1; then
            started=yes
            break
        fi
        echo "postgres.sh: start attempt $attempt on port $port failed" >&2
    done
    if [[ -z "$started" ]]; then
        echo "postgres.sh: PostgreSQL did not start; its log ($dir/postgres.log):" >&2
        tail -n 20 "$dir/postgres.log" >&2 || true
        rm -rf "$dir"
        return 1
    fi
    if ! _pg_as "$user" "$bin/createdb" -h "$dir" -p "$port" -U baton baton_test >&2; then
        postgres_stop "$dir"
        return 1
    fi

    export BATON_PG_DIR="$dir"
    export BATON_TEST_POSTGRES_URL="postgresql+psycopg://baton:${password}@127.0.0.1:${port}/baton_test"
    echo "postgres.sh: PostgreSQL $("$bin/pg_ctl" --version | awk '{print $3}') on 127.0.0.1:$port, data in $dir" >&2
}

postgres_stop() {
    local dir=${1:-${BATON_PG_DIR:-}} bin user
    [[ -n "$dir" && -d "$dir" ]] || return 0
    if [[ -f "$dir/cluster" ]]; then
        { read -r bin && read -r user; } <"$dir/cluster" || true
        if [[ -f "$dir/data/postmaster.pid" ]] &&
            ! _pg_as "$user" "$bin/pg_ctl" -D "$dir/data" -m fast -w -t 30 stop >/dev/null 2>&1; then
            echo "postgres.sh: pg_ctl stop failed for $dir; see $dir/postgres.log (left in place)" >&2
            return 1
        fi
    fi
    rm -rf "$dir"
    if [[ "${BATON_PG_DIR:-}" == "$dir" ]]; then
        unset BATON_PG_DIR BATON_TEST_POSTGRES_URL
    fi
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    set -euo pipefail
    case "${1:-}" in
    start)
        postgres_start
        printf 'export BATON_PG_DIR=%q\n' "$BATON_PG_DIR"
        printf 'export BATON_TEST_POSTGRES_URL=%q\n' "$BATON_TEST_POSTGRES_URL"
        ;;
    stop)
        if [[ -z "${2:-${BATON_PG_DIR:-}}" ]]; then
            echo "usage: $0 stop DIR (or set BATON_PG_DIR, as 'eval \"\$($0 start)\"' does)" >&2
            exit 2
        fi
        postgres_stop "${2:-}"
        ;;
    install)
        postgres_install
        ;;
    *)
        echo "usage: $0 start | stop [DIR] | install   (e.g. eval \"\$($0 start)\")" >&2
        exit 2
        ;;
    esac
fi
