#!/usr/bin/env bash
# tests/db/services.sh: the real database servers of the test suite.
#
#   eval "$(tests/db/services.sh start DIR)"   # starts both, prints exports
#   tests/db/services.sh stop DIR              # stops both by PID, removes DIR
#
# start makes DIR (it must not exist) and in it:
#   - a PostgreSQL cluster (initdb, run as the `postgres` user when we are
#     root: the server refuses root) listening on 127.0.0.1:<free port> and a
#     socket in DIR/pg, with TLS on (a self-signed certificate made by
#     openssl), password (SCRAM) authentication over TCP for the role
#     `luaserve` and the database `luaserve_test`; durability off.
#   - a redis-server on 127.0.0.1:<free port> with a password, and a TLS port
#     beside it on the same certificate; nothing saved to disk.
# It prints the shell lines that export LUASERVE_TEST_PG (a postgresql://
# URL), LUASERVE_TEST_REDIS (redis://), LUASERVE_TEST_REDISS (rediss://),
# LUASERVE_TEST_PG_CERT and LUASERVE_TEST_DB_DIR. On failure it stops what
# it started and exits non-zero with the server's log on stderr.
set -euo pipefail
cmd="${1:?usage: services.sh start|stop DIR}"; DIR="${2:?usage: services.sh start|stop DIR}"
PGBIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)"
PY="$( [ -x /usr/bin/python3 ] && echo /usr/bin/python3 || echo python3)"
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

stop() {
  # By PID: the postmaster's (first line of postmaster.pid) and redis's.
  if [ -f "$DIR/pg/data/postmaster.pid" ]; then
    pid="$(head -n1 "$DIR/pg/data/postmaster.pid")"
    kill -INT "$pid" 2>/dev/null || true     # fast shutdown
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  for f in "$DIR"/redis*.pid; do
    [ -f "$f" ] || continue
    pid="$(cat "$f")"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  rm -rf "$DIR"
}

if [ "$cmd" = stop ]; then stop; exit 0; fi
[ "$cmd" = start ] || { echo "usage: services.sh start|stop DIR" >&2; exit 2; }
[ -x "$PGBIN/initdb" ] || { echo "services.sh: PostgreSQL is not installed (make test-deps)" >&2; exit 2; }
command -v redis-server >/dev/null || { echo "services.sh: redis-server is not installed (make test-deps)" >&2; exit 2; }
trap 'rc=$?; if [ $rc != 0 ]; then cat "$DIR"/*.log "$DIR"/pg/*.log >&2 2>/dev/null; stop; fi' EXIT

mkdir -p "$DIR/pg"
chmod 755 "$DIR"
# The certificate both servers present (CN=localhost, IP 127.0.0.1).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -keyout "$DIR/server.key" -out "$DIR/server.pem" >/dev/null 2>&1
cp "$DIR/server.key" "$DIR/pg/server.key"; cp "$DIR/server.pem" "$DIR/pg/server.pem"
chmod 600 "$DIR/pg/server.key"
if [ "$(id -u)" = 0 ]; then chown -R postgres "$DIR/pg"; fi

PGPORT="$(free_port)"
as_pg "$PGBIN/initdb" -D "$DIR/pg/data" -A trust -U postgres -E UTF8 --locale=C.UTF-8 \
  >"$DIR/pg/initdb.log" 2>&1
cat >>"$DIR/pg/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PGPORT
unix_socket_directories = '$DIR/pg'
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
ssl = on
ssl_cert_file = '$DIR/pg/server.pem'
ssl_key_file = '$DIR/pg/server.key'
CONF
# Local socket: trust (the set-up below); TCP: the password, SCRAM.
cat >"$DIR/pg/data/pg_hba.conf" <<CONF
local all all trust
host all all 127.0.0.1/32 scram-sha-256
CONF
as_pg "$PGBIN/pg_ctl" -D "$DIR/pg/data" -l "$DIR/pg/server.log" -w -t 60 start >/dev/null
as_pg "$PGBIN/psql" -h "$DIR/pg" -p "$PGPORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -q <<'SQL'
CREATE ROLE luaserve LOGIN SUPERUSER PASSWORD 'luaserve-test-pw';
CREATE DATABASE luaserve_test OWNER luaserve;
SQL

RPORT="$(free_port)"; RTLS="$(free_port)"
redis-server --bind 127.0.0.1 --port "$RPORT" --tls-port "$RTLS" \
  --tls-cert-file "$DIR/server.pem" --tls-key-file "$DIR/server.key" \
  --tls-auth-clients no --requirepass redis-test-pw --save '' --appendonly no \
  --dir "$DIR" --daemonize no --logfile "$DIR/redis.log" </dev/null >/dev/null 2>&1 &
echo $! > "$DIR/redis.pid"
for _ in $(seq 100); do
  redis-cli -p "$RPORT" -a redis-test-pw --no-auth-warning ping 2>/dev/null | grep -q PONG && break
  sleep 0.1
done
redis-cli -p "$RPORT" -a redis-test-pw --no-auth-warning ping | grep -q PONG

echo "export LUASERVE_TEST_DB_DIR='$DIR'"
echo "export LUASERVE_TEST_PG='postgresql://luaserve:luaserve-test-pw@127.0.0.1:$PGPORT/luaserve_test'"
echo "export LUASERVE_TEST_PG_CERT='$DIR/server.pem'"
echo "export LUASERVE_TEST_REDIS='redis://:redis-test-pw@127.0.0.1:$RPORT/0'"
echo "export LUASERVE_TEST_REDISS='rediss://:redis-test-pw@127.0.0.1:$RTLS/0'"
