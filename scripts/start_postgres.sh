#!/usr/bin/env bash
# Start a throw-away PostgreSQL server on loopback for the sweep tests (and for trying
# multi-machine sweeps on one machine).
#
#   eval "$(scripts/start_postgres.sh)"        # exports ENDEBIAS_TEST_POSTGRES_URL, ENDEBIAS_PG_DIR
#   scripts/start_postgres.sh --stop "$ENDEBIAS_PG_DIR"
#
# Installs Debian's postgresql package if no server binaries are found (needs root and
# apt), creates a cluster in a temporary folder owned by a non-root user (the server
# refuses to run as root), with password authentication, on a free port of 127.0.0.1.
# Only the `export` lines go to stdout (for eval); progress goes to stderr.
set -euo pipefail

say() { echo "start_postgres: $*" >&2; }

run_as() {  # run_as USER CMD...: as USER when we are root, else as ourselves
    local user=$1; shift
    if [ "$(id -u)" -eq 0 ]; then runuser -u "$user" -- "$@"; else "$@"; fi
}

find_bindir() {
    local dir
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then echo "$dir"; return 0; fi
    done
    if command -v pg_ctl >/dev/null && command -v initdb >/dev/null; then
        dirname "$(command -v pg_ctl)"; return 0
    fi
    return 1
}

if [ "${1:-}" = "--stop" ]; then
    dir=${2:?usage: start_postgres.sh --stop DIR}
    [ -f "$dir/data/PG_VERSION" ] || { say "$dir holds no cluster"; exit 1; }
    bindir=$(find_bindir)
    owner=$(stat -c %U "$dir/data")
    run_as "$owner" "$bindir/pg_ctl" -D "$dir/data" -m fast -w stop >&2 || true
    rm -rf "$dir"
    exit 0
fi

if ! bindir=$(find_bindir); then
    if [ "$(id -u)" -ne 0 ]; then
        say "no PostgreSQL server found and not root: install postgresql first"; exit 1
    fi
    say "installing Debian's postgresql package"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq postgresql >&2
    bindir=$(find_bindir) || { say "postgresql installed but initdb/pg_ctl not found"; exit 1; }
fi

user=$(id -un)
if [ "$(id -u)" -eq 0 ]; then
    user=postgres
    id "$user" >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin "$user"
fi

dir=$(mktemp -d "${TMPDIR:-/tmp}/endebias-pg.XXXXXX")
chmod 700 "$dir"
umask 077  # the password files below: readable by their owner only
password=$(od -An -tx1 -N12 /dev/urandom | tr -d ' \n')
# The password never goes on a command line (any user sees those in `ps`): initdb reads
# it from a file, and createdb from a .pgpass file named by PGPASSFILE (mode 0600).
printf '%s\n' "$password" > "$dir/pwfile"
[ "$(id -u)" -ne 0 ] || chown -R "$user" "$dir"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

run_as "$user" "$bindir/initdb" -D "$dir/data" -U endebias --pwfile="$dir/pwfile" \
    --auth=scram-sha-256 -E UTF8 --no-instructions >/dev/null
rm -f "$dir/pwfile"
run_as "$user" "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off" start >/dev/null \
    || { say "server did not start; log:"; cat "$dir/server.log" >&2; exit 1; }
printf '127.0.0.1:%s:*:endebias:%s\n' "$port" "$password" > "$dir/pgpass"
[ "$(id -u)" -ne 0 ] || chown "$user" "$dir/pgpass"
run_as "$user" env PGPASSFILE="$dir/pgpass" \
    "$bindir/createdb" -h 127.0.0.1 -p "$port" -U endebias endebias
rm -f "$dir/pgpass"
say "PostgreSQL $("$bindir/pg_ctl" --version | awk '{print $3}') on 127.0.0.1:$port (data in $dir)"

echo "export ENDEBIAS_TEST_POSTGRES_URL=postgresql://endebias:$password@127.0.0.1:$port/endebias"
echo "export ENDEBIAS_PG_DIR=$dir"
