#!/usr/bin/env bash
# tests/bench/validation.sh [DURATION]: what a declared body costs (issue
# 12): server CPU per request (user + system time, /proc/PID/stat) for the
# same JSON POST to a route that declares its body (decoded, validated,
# defaults applied: luaserve.schema's compiled check) and to one that
# does not (the handler decodes it), and for a GET without any schema.
# Same run, order alternating, server on CPU 0 and wrk on CPU 1, ROUNDS
# rounds (default 4), medians; the validated route's cost over the decoded
# one is the validator's. Servers listen on 127.0.0.1, stopped by pid.
set -uo pipefail
cd "$(dirname "$0")/../.."
DUR="${1:-${BENCH_DURATION:-10}}"
ROUNDS="${ROUNDS:-4}"
. tests/bench/lib.sh

# run NAME PATH [wrk args]: one measured run; prints "NAME rps us_per_req"
run() {
  local name="$1" path="$2"; shift 2
  local port=$(( 20000 + RANDOM % 10000 ))
  taskset -c 0 ./luaserve tests/bench/validation_app.lua --port "$port" --no-access-log \
    >/dev/null 2>&1 &
  local pid=$!
  for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$port/plaintext" && break; sleep 0.1; done
  echo "$name $(wrk_cpu "$pid" 64 "http://127.0.0.1:$port$path" "$@")"
  kill "$pid"; wait "$pid" 2>/dev/null
}

tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
for r in $(seq "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then
    run decoded /decoded -s tests/bench/validation.lua >> "$tmp"
    run validated /validated -s tests/bench/validation.lua >> "$tmp"
  else
    run validated /validated -s tests/bench/validation.lua >> "$tmp"
    run decoded /decoded -s tests/bench/validation.lua >> "$tmp"
  fi
  run plaintext /plaintext >> "$tmp"
done
printf "%-12s %10s %10s %10s\n" variant rps us/req vs_decoded
dus=$(awk '$1 == "decoded" { print $3 }' "$tmp" | median)
for v in decoded validated plaintext; do
  rps=$(awk -v v="$v" '$1 == v { print $2 }' "$tmp" | median)
  us=$(awk -v v="$v" '$1 == v { print $3 }' "$tmp" | median)
  printf "%-12s %10s %10s %10.3f\n" "$v" "$rps" "$us" "$(awk -v a="$us" -v b="$dus" 'BEGIN { print a / b }')"
done
echo "validator cost per request: $(awk -v a="$(awk '$1 == "validated" { print $3 }' "$tmp" | median)" -v b="$dus" 'BEGIN { printf "%.2f", a - b }') us"
