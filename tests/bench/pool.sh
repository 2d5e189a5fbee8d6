#!/usr/bin/env bash
# tests/bench/pool.sh [DURATION]: the sync pool's benchmarks (issue 3).
#
#   1. scaling: /cpu?n=25 at 1 and at 2 connections, server and wrk on both
#      cores; goal: 2 connections >= 1.8x the requests/s of 1.
#   2. a free loop: /plaintext p99 while 4 clients keep the pool saturated
#      with /cpu?n=27; goal: p99 under 5 ms.
#   3. peers: /cpu?n=25 at 4 connections, TARGET_CPU=0,1 LOAD_CPU=0,1,
#      luaserve vs OpenResty's ngx.run_worker_thread and FastAPI's `def`
#      endpoint; goal: >= 1.0x OpenResty.
#
# Uses ../shared/bench/run.sh and compare.sh (SHARED_BENCH to override).
# Every run is bounded in time; servers listen on 127.0.0.1 and are
# stopped by pid. Env: ROUNDS (default 2), PEERS (default "openresty
# fastapi"), SECTIONS (default "1 2 3").
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT="$PWD"
SHARED="${SHARED_BENCH:-$ROOT/../shared/bench}"
DUR="${1:-${BENCH_DURATION:-10}}"
ROUNDS="${ROUNDS:-2}"
export LUASERVE_DIR="$ROOT"
export LUASERVE_CMD='./luaserve apps/bench --port $PORT --no-access-log'

field() { # field NAME LINE -> the value of NAME=... in a run.sh line
  echo "$2" | tr ' ' '\n' | sed -n "s/^$1=//p"
}

. tests/bench/lib.sh

section_scaling() {
  echo "### 1. /cpu?n=25 scaling: 1 vs 2 connections (server and wrk on CPUs 0,1; $ROUNDS rounds of ${DUR}s)"
  local r c line one=() two=()
  for ((r = 1; r <= ROUNDS; r++)); do
    for c in 1 2; do
      line="$(CONNS=$c TARGET_CPU=0,1 LOAD_CPU=0,1 "$SHARED/run.sh" luaserve cpu "$DUR" 2>/dev/null)"
      echo "raw: conns=$c $line"
      if [ "$c" = 1 ]; then one+=("$(field rps "$line")"); else two+=("$(field rps "$line")"); fi
    done
  done
  local m1 m2
  m1="$(printf '%s\n' "${one[@]}" | grep -v NA | median)"
  m2="$(printf '%s\n' "${two[@]}" | grep -v NA | median)"
  awk -v a="$m1" -v b="$m2" 'BEGIN {
    if (a == "NA" || b == "NA" || a == 0) { print "result: NA"; exit }
    printf "result: 1 conn %.0f rps, 2 conns %.0f rps: %.2fx (goal >= 1.8x)\n", a, b, b / a }'
}

section_free_loop() {
  echo "### 2. /plaintext latency while 4 clients saturate the pool with /cpu?n=27 (${DUR}s)"
  local port pid load_pid out
  port="$(free_port)" || { echo "no free port"; return; }
  ./luaserve apps/bench --port "$port" --no-access-log 2>/dev/null &
  pid=$!
  for _ in $(seq 100); do
    curl -s -o /dev/null "http://127.0.0.1:$port/plaintext" && break
    sleep 0.1
  done
  # The load: 4 connections of fib(27) (~1.7 ms each), for longer than the probe.
  timeout $((DUR + 30)) wrk -t1 -c4 -d"$((DUR + 4))s" "http://127.0.0.1:$port/cpu?n=27" \
    > build/pool-bench-load.txt 2>&1 &
  load_pid=$!
  sleep 2
  out="$(timeout $((DUR + 30)) wrk -t1 -c4 -d"${DUR}s" --latency "http://127.0.0.1:$port/plaintext" 2>&1)"
  wait "$load_pid"
  kill -TERM "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  echo "$out" | sed -n 's/^/probe: /p' | grep -E "Latency|50%|90%|99%|Requests/sec|Non-2xx|Socket errors"
  sed -n 's/^/load: /p' build/pool-bench-load.txt | grep -E "Requests/sec|Non-2xx|Socket errors"
  local p99
  p99="$(echo "$out" | awk '$1 == "99%" { print $2 }')"
  echo "result: /plaintext p99 $p99 with the pool saturated (goal < 5ms)"
}

section_peers() {
  echo "### 3. /cpu?n=25 at 4 connections, both cores for the servers (TARGET_CPU=0,1 LOAD_CPU=0,1; $ROUNDS rounds of ${DUR}s)"
  read -r -a peers <<< "${PEERS:-openresty fastapi}"
  TARGET_CPU=0,1 LOAD_CPU=0,1 ROUNDS="$ROUNDS" REF=openresty \
    "$SHARED/compare.sh" cpu "$DUR" luaserve "${peers[@]}" 2>/dev/null
}

[ -x "$SHARED/run.sh" ] || { echo "no $SHARED/run.sh: skipped"; exit 0; }
mkdir -p build
for s in ${SECTIONS:-1 2 3}; do
  case "$s" in
    1) section_scaling ;;
    2) section_free_loop ;;
    3) section_peers ;;
  esac
  echo
done
