#!/usr/bin/env bash
# Runs a throwaway PostgreSQL cluster on 127.0.0.1:PORT in a temporary folder, for
# stagegate's `process` dependency; the folder goes when the server stops.
# Usage: bash postgres.sh PORT
# PostgreSQL refuses to run as root, so as root the server runs as the `postgres` user
# that Debian's package creates.
set -eu
port=$1
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
if [ -z "$bin" ]; then
  echo "PostgreSQL is not installed (apt-get install postgresql)" >&2
  exit 1
fi
dir=$(mktemp -d /tmp/stagegate-pg.XXXXXX)
as_owner=()
if [ "$(id -u)" = 0 ]; then
  chown postgres "$dir"
  as_owner=(setpriv --reuid=postgres --regid=postgres --init-groups --)
fi
"${as_owner[@]}" "$bin/initdb" -D "$dir/data" -U stagegate --auth=trust -E UTF8 >/dev/null
"${as_owner[@]}" "$bin/postgres" -D "$dir/data" -p "$port" -h 127.0.0.1 -k "$dir" \
  -c fsync=off -c synchronous_commit=off -c full_page_writes=off &
server=$!
# stagegate stops the process group with SIGTERM; PostgreSQL's fast shutdown is SIGINT.
trap 'kill -INT $server 2>/dev/null' TERM INT
# A trapped signal ends `wait` early (status above 128): wait again until the server
# is gone (then `wait` answers 127, no such child).
while true; do
  status=0
  wait "$server" || status=$?
  [ "$status" -gt 128 ] || break
done
rm -rf "$dir"
