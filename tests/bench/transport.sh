#!/usr/bin/env bash
# tests/bench/transport.sh [DURATION]: the transport's figures beside
# OpenResty's, in the same run (issue 7), one worker each, server on CPU 0
# and wrk on CPU 1:
#
#   1. pipelined plaintext (PIPELINE=16) over plain HTTP: goal >= 1.5x;
#   2. plaintext and json over TLS with keep-alive: goal >= 0.9x;
#   3. new TLS connections per second (json, Connection: close): goal
#      >= 0.9x (wrk's handshakes cost as much as the server's: read
#      load_cpu_util before reading the ratio as the server's).
#
# The certificate is RSA 2048, made here (build/bench-tls/), as in
# ../shared/bench/README.md. Env: ROUNDS (default 4 for 1-2, 2 for 3),
# SECTIONS (default "1 2 3"), SHARED_BENCH.
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT="$PWD"
SHARED="${SHARED_BENCH:-$ROOT/../shared/bench}"
DUR="${1:-${BENCH_DURATION:-10}}"
export LUASERVE_DIR="$ROOT"
PLAIN='./luaserve apps/bench --port $PORT --no-access-log'
TLS='./luaserve apps/bench --port $PORT --no-access-log --ssl-certfile $TLS_CERT --ssl-keyfile $TLS_KEY'

CERTS="$ROOT/build/bench-tls"
mkdir -p "$CERTS"
if [ ! -s "$CERTS/cert.pem" ]; then
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$CERTS/key.pem" -out "$CERTS/cert.pem" \
    -days 30 -subj /CN=localhost >/dev/null 2>&1
fi

for section in ${SECTIONS:-1 2 3}; do
  case "$section" in
    1) echo "### pipelined plaintext (x16), plain HTTP"
       PIPELINE=16 ROUNDS="${ROUNDS:-4}" LUASERVE_CMD="$PLAIN" \
         "$SHARED/compare.sh" plaintext "$DUR" luaserve openresty 2>/dev/null ;;
    2) for s in plaintext json; do
         echo "### $s over TLS, keep-alive"
         SCHEME=https TLS_CERT="$CERTS/cert.pem" TLS_KEY="$CERTS/key.pem" ROUNDS="${ROUNDS:-4}" \
           LUASERVE_CMD="$TLS" "$SHARED/compare.sh" "$s" "$DUR" luaserve openresty 2>/dev/null
       done ;;
    3) echo "### new TLS connections per second (json, Connection: close)"
       SCHEME=https CLOSE=1 TLS_CERT="$CERTS/cert.pem" TLS_KEY="$CERTS/key.pem" \
         ROUNDS="${ROUNDS:-2}" LUASERVE_CMD="$TLS" \
         "$SHARED/compare.sh" json "$DUR" luaserve openresty 2>/dev/null ;;
  esac
  echo
done
