#!/bin/sh
# pg-test-server.sh — a private, throw-away PostgreSQL server for tests.
#
#   scripts/pg-test-server.sh start    DIR        initdb into DIR (if needed), start, print the URL
#   scripts/pg-test-server.sh stop     DIR        stop (fast; kill -9 if it will not), idempotent
#   scripts/pg-test-server.sh restart  DIR        restart on the same port, print the URL
#   scripts/pg-test-server.sh url      DIR        print the URL of the database "kzhook"
#   scripts/pg-test-server.sh createdb DIR NAME   drop NAME if it exists, create it, print its URL
#   scripts/pg-test-server.sh status   DIR        exit 0 when running
#
# The server runs as an unprivileged user (PostgreSQL refuses root): $KZ_PG_USER, else the
# caller when not root, else "postgres", else a "kztest" user created on the spot. It listens on
# 127.0.0.1 only, on a free port chosen at the first start and kept in DIR/port, with its unix
# socket in DIR, trust authentication, fsync and synchronous_commit on (durability tests mean
# something). Binaries come from $PG_BIN, else /usr/lib/postgresql/15/bin.
#
# Layout: DIR/data (PGDATA), DIR/port, DIR/server.log. DIR is created when missing; remove it
# after `stop` to throw everything away.
set -eu

PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}

die() {
    echo "pg-test-server: $*" >&2
    exit 1
}

usage() {
    die "usage: $0 start|stop|restart|url|status DIR | createdb DIR NAME"
}

[ $# -ge 2 ] || usage
cmd=$1
dir=$2
[ -x "$PG_BIN/pg_ctl" ] || die "no PostgreSQL binaries in $PG_BIN (apt-get install postgresql)"
case $dir in
/*) ;;
*) dir=$(pwd)/$dir ;;
esac
data=$dir/data

# ---- the unprivileged user ----
if [ -n "${KZ_PG_USER:-}" ]; then
    user=$KZ_PG_USER
elif [ "$(id -u)" -ne 0 ]; then
    user=$(id -un)
elif id postgres >/dev/null 2>&1; then
    user=postgres
else
    user=kztest
    id kztest >/dev/null 2>&1 || useradd --system --no-create-home --shell /bin/sh kztest ||
        id kztest >/dev/null 2>&1 || die "cannot create user kztest"
fi

# Runs a command as $user (directly when we already are that user).
as_user() {
    if [ "$(id -un)" = "$user" ]; then
        "$@"
    elif command -v runuser >/dev/null 2>&1; then
        runuser -u "$user" -- "$@"
    else
        su -s /bin/sh "$user" -c "$(printf '%s ' "$@")"
    fi
}

port() {
    [ -s "$dir/port" ] || die "$dir is not initialised (run: $0 start $dir)"
    cat "$dir/port"
}

url_for() {
    echo "postgresql://$user@127.0.0.1:$(port)/$1"
}

# Exit status 0 when a live postmaster owns $data.
running() {
    [ -f "$data/postmaster.pid" ] || return 1
    as_user "$PG_BIN/pg_ctl" -D "$data" status >/dev/null 2>&1
}

# A port nobody listens on now (the server may still lose a race for it: start retries).
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' \
        2>/dev/null || echo $((20000 + $$ % 20000))
}

init() {
    mkdir -p "$dir"
    chown "$user" "$dir"
    chmod 0700 "$dir"
    if [ ! -s "$data/PG_VERSION" ]; then
        rm -rf "$data"
        as_user "$PG_BIN/initdb" -D "$data" -U "$user" --auth=trust -E UTF8 --locale=C \
            >"$dir/initdb.log" 2>&1 || {
            cat "$dir/initdb.log" >&2
            die "initdb failed"
        }
        cat >>"$data/postgresql.conf" <<EOF
# pg-test-server.sh
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
fsync = on
synchronous_commit = on
full_page_writes = on
max_connections = 200
log_min_messages = warning
EOF
    fi
}

# Starts the server on the saved port, or on a fresh free port (retrying a lost race).
start_server() {
    tries=0
    while :; do
        if [ ! -s "$dir/port" ]; then
            free_port >"$dir/port"
        fi
        p=$(cat "$dir/port")
        # A stale pid file (a killed server) makes pg_ctl refuse: remove it when nothing runs.
        if [ -f "$data/postmaster.pid" ] && ! running; then
            rm -f "$data/postmaster.pid"
        fi
        if as_user "$PG_BIN/pg_ctl" -D "$data" -l "$dir/server.log" -w -t 60 \
            -o "-p $p" start >/dev/null 2>&1; then
            break
        fi
        tries=$((tries + 1))
        if [ "$tries" -ge 5 ] || ! grep -q "could not bind\|already in use" "$dir/server.log" 2>/dev/null; then
            tail -n 20 "$dir/server.log" >&2 2>/dev/null || true
            die "cannot start the server in $data"
        fi
        rm -f "$dir/port" # the port was taken meanwhile: pick another
    done
}

ensure_db() {
    p=$(port)
    if ! as_user "$PG_BIN/psql" -h 127.0.0.1 -p "$p" -U "$user" -d postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname = '$1'" | grep -q 1; then
        as_user "$PG_BIN/createdb" -h 127.0.0.1 -p "$p" -U "$user" "$1"
    fi
}

stop_server() {
    [ -d "$data" ] || return 0
    if running; then
        as_user "$PG_BIN/pg_ctl" -D "$data" -m fast -w -t 30 stop >/dev/null 2>&1 || true
    fi
    if [ -f "$data/postmaster.pid" ]; then
        pid=$(head -n 1 "$data/postmaster.pid" 2>/dev/null || true)
        case $pid in
        '' | *[!0-9]*) ;;
        *)
            if kill -0 "$pid" 2>/dev/null && [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = postgres ]; then
                kill -9 "$pid" 2>/dev/null || true
                sleep 0.5
            fi
            ;;
        esac
        rm -f "$data/postmaster.pid"
    fi
}

case $cmd in
start)
    init
    running || start_server
    ensure_db kzhook
    url_for kzhook
    ;;
stop)
    stop_server
    ;;
restart)
    [ -s "$data/PG_VERSION" ] || die "$dir is not initialised"
    if running; then
        as_user "$PG_BIN/pg_ctl" -D "$data" -l "$dir/server.log" -m fast -w -t 60 restart \
            >/dev/null 2>&1 || die "restart failed"
    else
        start_server
    fi
    url_for kzhook
    ;;
url)
    url_for kzhook
    ;;
status)
    running
    ;;
createdb)
    [ $# -ge 3 ] || usage
    name=$3
    case $name in
    '' | *[!A-Za-z0-9_]*) die "database name must be [A-Za-z0-9_]+" ;;
    esac
    running || die "no server running in $dir"
    PGOPTIONS="-c client_min_messages=warning" as_user "$PG_BIN/psql" -h 127.0.0.1 \
        -p "$(port)" -U "$user" -d postgres -qtAc "DROP DATABASE IF EXISTS \"$name\" WITH (FORCE)" >/dev/null
    as_user "$PG_BIN/createdb" -h 127.0.0.1 -p "$(port)" -U "$user" "$name"
    url_for "$name"
    ;;
*)
    usage
    ;;
esac
