#!/usr/bin/env bash
# tests/bench/client.sh [SECONDS]: the HTTP client's benchmarks (make bench
# runs it from tests/bench/run; it runs alone too).
#  1. fanout: apps/bench `/fanout?n=3` under wrk (64 connections, SECONDS
#     s, default 10) against a local upstream (a second apps/bench):
#     requests/s, and how many upstream connections it took, counted on the
#     upstream's port with `ss` (distinct connections seen established,
#     sampled every 0.2 s, plus those closed, in TIME-WAIT, at the end).
#  2. the client alone: `luaserve lua tests/bench/client_seq.lua`, 1,000
#     sequential keep-alive GETs of the upstream's /json per round (5
#     rounds, the median), side by side with `wrk -t1 -c1` on the same
#     /json, as a ratio.
# The upstream runs on CPU 1, what loads it on CPU 0 (when taskset exists).
# Servers listen on 127.0.0.1 and are stopped by their pids.
set -uo pipefail
cd "$(dirname "$0")/../.."
DUR="${1:-10}"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; }
trap cleanup EXIT
trap 'exit 130' INT TERM   # the EXIT trap then stops the servers

. tests/bench/lib.sh   # free_port
# Always run in a subshell (&, $(...), a pipe): exec, so that $! is the
# program's own pid and the cleanup stops the server, not a wrapper.
on_cpu() { local c="$1"; shift; if command -v taskset >/dev/null; then exec taskset -c "$c" "$@"; else exec "$@"; fi; }
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 did not open" >&2; return 1; }
rps() { awk '/^Requests\/sec:/ {print int($2)}'; }

UP=$(free_port); FRONT=$(free_port)
on_cpu 1 ./luaserve apps/bench --port "$UP" --no-access-log 2>/dev/null & PIDS+=($!)
wait_port "$UP" || exit 1

# ---- 1. /fanout?n=3 ---------------------------------------------------------
LUASERVE_UPSTREAM="http://127.0.0.1:$UP" on_cpu 0 ./luaserve apps/bench \
  --port "$FRONT" --no-access-log 2>/dev/null & PIDS+=($!)
wait_port "$FRONT" || exit 1
curl -sf "http://127.0.0.1:$FRONT/fanout?n=3" >/dev/null || { echo "fanout does not answer"; exit 1; }
seen="$(mktemp)"
( end=$((SECONDS + DUR + 1))
  while [ "$SECONDS" -lt "$end" ]; do
    ss -Htn state established "( dport = :$UP )" | awk '{print $3}' >> "$seen"
    sleep 0.2
  done ) & sampler=$!
out="$(on_cpu 0 timeout $((DUR + 30)) wrk -t1 -c64 -d"${DUR}s" "http://127.0.0.1:$FRONT/fanout?n=3")"
wait "$sampler"
requests=$(echo "$out" | awk '/requests in/ {print $1}')
established=$(sort -u "$seen" | wc -l)
closed=$(ss -Htn state time-wait "( dport = :$UP )" | wc -l)
rm -f "$seen"
echo "fanout (/fanout?n=3, wrk -t1 -c64, ${DUR}s, upstream apps/bench /json):"
echo "  $(echo "$out" | rps) requests/s; $requests requests = $((requests * 3)) upstream calls"
echo "  upstream connections: $established distinct seen established + $closed closed (TIME-WAIT)"
kill "${PIDS[1]}" 2>/dev/null

# ---- 2. the client alone ----------------------------------------------------
rounds="$(on_cpu 0 ./luaserve lua tests/bench/client_seq.lua "http://127.0.0.1:$UP/json" 1000 5)" \
  || { echo "client_seq.lua failed"; exit 1; }
client=$(echo "$rounds" | awk '{print $3}' | sort -n | sed -n 3p)
wrk1=$(on_cpu 0 timeout 60 wrk -t1 -c1 -d"$(( DUR < 5 ? DUR : 5 ))s" "http://127.0.0.1:$UP/json" | rps)
echo "client alone (1,000 sequential keep-alive GETs of /json, median of 5 rounds):"
echo "  luaserve.http $client requests/s; wrk -t1 -c1 $wrk1 requests/s; ratio $(awk -v a="$client" -v b="$wrk1" 'BEGIN {printf "%.2f", a / b}')"
