#!/usr/bin/env bash
# tests/bench/middleware.sh [DURATION]: what the request pipeline costs
# (issue 10): server CPU per request (user + system time of the process,
# from /proc/PID/stat) for plaintext with 0, 1 and 3 no-op middleware and
# with the four that ship (request id, CORS, GZip, trusted hosts), and
# for a 1.7 KB JSON answer without and with the GZip middleware (the
# client sends Accept-Encoding: gzip). Same run, order alternating, server
# on CPU 0 and wrk on CPU 1, ROUNDS rounds (default 4), medians; ratios to
# the variant without middleware. Goal: one no-op middleware costs at most
# 10% CPU per request. Servers listen on 127.0.0.1, stopped by pid.
set -uo pipefail
cd "$(dirname "$0")/../.."
DUR="${1:-${BENCH_DURATION:-10}}"
ROUNDS="${ROUNDS:-4}"
. tests/bench/lib.sh

# run NAME PATH ENV...: one measured run; prints "NAME rps us_per_req"
run() {
  local name="$1" path="$2"; shift 2
  local port=$(( 20000 + RANDOM % 10000 ))
  env "$@" taskset -c 0 ./luaserve apps/bench --port "$port" --no-access-log 2>/dev/null &
  local pid=$!
  for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$port/plaintext" && break; sleep 0.1; done
  echo "$name $(wrk_cpu "$pid" 64 "http://127.0.0.1:$port$path" -H 'Accept-Encoding: gzip')"
  kill "$pid"; wait "$pid" 2>/dev/null
}

tmp=$(mktemp)
for r in $(seq "$ROUNDS"); do
  run plaintext-mw0 /plaintext LUASERVE_BENCH_MIDDLEWARE=0 >> "$tmp"
  run plaintext-mw1 /plaintext LUASERVE_BENCH_MIDDLEWARE=1 >> "$tmp"
  run plaintext-mw3 /plaintext LUASERVE_BENCH_MIDDLEWARE=3 >> "$tmp"
  run plaintext-builtin /plaintext LUASERVE_BENCH_MIDDLEWARE=builtin >> "$tmp"
  run json-big /json-big LUASERVE_BENCH_GZIP=0 >> "$tmp"
  run json-big-gzip /json-big LUASERVE_BENCH_GZIP=1 >> "$tmp"
done
printf "%-18s %10s %10s %8s\n" variant rps us/req vs_base
for v in plaintext-mw0 plaintext-mw1 plaintext-mw3 plaintext-builtin json-big json-big-gzip; do
  rps=$(awk -v v="$v" '$1 == v { print $2 }' "$tmp" | median)
  us=$(awk -v v="$v" '$1 == v { print $3 }' "$tmp" | median)
  case "$v" in plaintext*) base=plaintext-mw0 ;; *) base=json-big ;; esac
  bus=$(awk -v v="$base" '$1 == v { print $3 }' "$tmp" | median)
  printf "%-18s %10s %10s %8.3f\n" "$v" "$rps" "$us" "$(awk -v a="$us" -v b="$bus" 'BEGIN { print a / b }')"
done
rm -f "$tmp"
