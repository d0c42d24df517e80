#!/usr/bin/env bash
# A local PostgreSQL server for shared-study tests and CI. It listens on 127.0.0.1 and on a unix
# socket in its own directory, nowhere else.
#   bash scripts/postgres.sh start   # installs Debian's postgresql if missing (as root), starts the
#                                    # server, puts its password in libpq's password file and prints,
#                                    # last, the study storage's URL, which holds no password
#   bash scripts/postgres.sh url     # that URL, while the server runs
#   bash scripts/postgres.sh stop    # stops the server (its data stays for the next start)
# MMPT_PG_DIR (default /tmp/mmpt-postgres) holds the data, the socket, the log, the port and a
# password made at the first start (database and role `mmpt`). The password file is $PGPASSFILE,
# default ~/.pgpass (mode 600): its line for this server is `127.0.0.1:PORT:*:mmpt:PASSWORD`.
set -euo pipefail
dir=${MMPT_PG_DIR:-/tmp/mmpt-postgres}
data=$dir/data

die() { echo "postgres.sh: $*" >&2; exit 1; }

bindir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

install_server() {
  [[ -n $(bindir) ]] && return
  [[ $(id -u) == 0 ]] || die "PostgreSQL is not installed (Debian: apt-get install postgresql, as root)"
  command -v apt-get >/dev/null || die "PostgreSQL is not installed and there is no apt-get to install it"
  echo "installing Debian's postgresql ..."
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  [[ -n $(bindir) ]] || die "apt-get installed postgresql, but no /usr/lib/postgresql/*/bin"
}

# as_owner CMD...: the server refuses to run as root; root runs it as Debian's `postgres` user
as_owner() {
  if [[ $(id -u) == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# url: the server's line put in libpq's password file (any older line for its port replaced), a
# line saying so, then the URL without password
url() {
  [[ -f $dir/port && -f $dir/password ]] || die "no server in $dir: run start first"
  local pgpass=${PGPASSFILE:-$HOME/.pgpass} port; port=$(cat "$dir/port")
  (umask 077; touch "$pgpass")
  { grep -v "^127\.0\.0\.1:$port:" "$pgpass" || true; echo "127.0.0.1:$port:*:mmpt:$(cat "$dir/password")"; } >"$pgpass.tmp"
  chmod 600 "$pgpass.tmp" && mv "$pgpass.tmp" "$pgpass"
  echo "# the password is in $pgpass (libpq's password file), not in the URL"
  echo "postgresql://mmpt@127.0.0.1:$port/mmpt"
}

running() { [[ -d $data ]] && as_owner "$(bindir)/pg_ctl" -D "$data" status >/dev/null 2>&1; }

start() {
  install_server
  local bin; bin=$(bindir)
  if [[ ! -f $data/PG_VERSION ]]; then
    mkdir -p "$dir"
    [[ $(id -u) == 0 ]] && chown postgres: "$dir"
    chmod 700 "$dir"
    as_owner sh -c "umask 077; od -An -N12 -tx1 /dev/urandom | tr -d ' \n' > '$dir/password'"
    free_port >"$dir/port"
    as_owner "$bin/initdb" -D "$data" -U mmpt --pwfile="$dir/password" --auth-local=trust \
      --auth-host=scram-sha-256 >"$dir/initdb.log" 2>&1 || die "initdb failed: $(tail -n 1 "$dir/initdb.log")"
  fi
  if ! running; then
    as_owner "$bin/pg_ctl" -D "$data" -l "$dir/server.log" -w -t 60 start \
      -o "-c listen_addresses=127.0.0.1 -c port=$(cat "$dir/port") -c unix_socket_directories=$dir" \
      >/dev/null || die "the server did not start: $(tail -n 1 "$dir/server.log")"
  fi
  local psql=("$bin/psql" -h "$dir" -p "$(cat "$dir/port")" -U mmpt -d postgres -tAq)
  if [[ $(as_owner "${psql[@]}" -c "SELECT 1 FROM pg_database WHERE datname = 'mmpt'") != 1 ]]; then
    as_owner "${psql[@]}" -c "CREATE DATABASE mmpt" >/dev/null
  fi
  url
}

stop() {
  if running; then
    as_owner "$(bindir)/pg_ctl" -D "$data" -m fast -w -t 60 stop >/dev/null
  fi
  echo "stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  url) running || die "the server in $dir is not running"; url ;;
  *) die "usage: bash scripts/postgres.sh start|url|stop" ;;
esac
