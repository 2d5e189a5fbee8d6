#!/usr/bin/env bash
# tests/bench/cpusplit.sh [SECONDS]: where a request's server CPU goes,
# luaserve beside OpenResty: user-space and kernel microseconds per request
# (utime and stime of /proc/PID/stat over the measured run), for plaintext,
# json (64 connections) and /sleep?ms=100 (1,000 connections). Server on
# CPU 0, wrk on CPU 1, ROUNDS (default 4) alternating rounds, medians.
# The kernel's part is nearly the same work for both (one receive and one
# send per request; luaserve's recv/send skip read/writev's VFS layer, but
# libuv's level-triggered epoll polls each socket once more): a ratio of
# total CPU far below 1 needs a user-space part far below OpenResty's. Everything listens on 127.0.0.1; servers are stopped
# by pid, also on Ctrl-C.
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT="$PWD"
SHARED="${SHARED_BENCH:-$ROOT/../shared/bench}"
DUR="${1:-10}"
ROUNDS="${ROUNDS:-4}"
HARD="$(ulimit -Hn)"; [ "$HARD" = unlimited ] && HARD=65536
ulimit -n "$HARD" 2>/dev/null || true
. tests/bench/lib.sh
[ -x "$SHARED/peers/openresty/start.sh" ] || { echo "cpusplit: no $SHARED" >&2; exit 1; }

PID=""
stop() { [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null; PID=""; }
trap 'stop; exit 130' INT TERM
trap stop EXIT

# start NAME PORT: the server on CPU 0; sets PID (the process that serves:
# OpenResty's worker is measured, its master stopped by pid).
start() {
  local port="$2"
  if [ "$1" = openresty ]; then
    PORT="$port" taskset -c 0 "$SHARED/peers/openresty/start.sh" >/dev/null 2>&1 &
  else
    taskset -c 0 ./luaserve apps/bench --port "$port" --no-access-log >/dev/null 2>&1 &
  fi
  PID=$!
  for _ in $(seq 100); do
    curl -s -o /dev/null "http://127.0.0.1:$port/plaintext" && break
    sleep 0.1
  done
}

# measure PID CONNS URL: "user_us sys_us" per request over DUR seconds.
measure() {
  local pid="$1" conns="$2" url="$3" u0 s0 u1 s1 out n
  timeout 30 taskset -c 1 wrk -t1 -c"$conns" -d2s "$url" >/dev/null 2>&1
  read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$pid/stat")
  out=$(timeout $((DUR + 20)) taskset -c 1 wrk -t1 -c"$conns" -d"${DUR}s" "$url" 2>&1)
  read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$pid/stat")
  n=$(echo "$out" | sed -n 's/^ *\([0-9]*\) requests in.*/\1/p')
  awk -v n="${n:-0}" -v du="$((u1 - u0))" -v ds="$((s1 - s0))" -v t="$TICK" \
    'BEGIN { if (n > 0) printf "%.3f %.3f\n", du / t * 1e6 / n, ds / t * 1e6 / n; else print "NA NA" }'
}

declare -A U S
echo "# cpusplit: server CPU per request, user-space and kernel (µs), $ROUNDS rounds of ${DUR}s"
for scenario in plaintext json sleep; do
  case "$scenario" in
    sleep) conns=1000 path="/sleep?ms=100" ;;
    *) conns=64 path="/$scenario" ;;
  esac
  for r in $(seq "$ROUNDS"); do
    order="luaserve openresty"; [ $((r % 2)) = 0 ] && order="openresty luaserve"
    for t in $order; do
      port=$(free_port)
      start "$t" "$port"
      w="$PID"
      [ "$t" = openresty ] && w=$(pgrep -P "$PID" | head -1)
      read -r u s < <(measure "$w" "$conns" "http://127.0.0.1:$port$path")
      stop
      U[$scenario.$t]+="$u "
      S[$scenario.$t]+="$s "
    done
  done
  lu=$(echo ${U[$scenario.luaserve]} | tr ' ' '\n' | median)
  ls=$(echo ${S[$scenario.luaserve]} | tr ' ' '\n' | median)
  ou=$(echo ${U[$scenario.openresty]} | tr ' ' '\n' | median)
  os=$(echo ${S[$scenario.openresty]} | tr ' ' '\n' | median)
  awk -v sc="$scenario" -v lu="$lu" -v ls="$ls" -v ou="$ou" -v os="$os" 'BEGIN {
    printf "%-9s luaserve user %6.2f kernel %6.2f total %6.2f | openresty user %6.2f kernel %6.2f total %6.2f | total %.2fx, user %.2fx, kernel %.2fx\n",
      sc, lu, ls, lu + ls, ou, os, ou + os, (lu + ls) / (ou + os), lu / ou, ls / os }'
done
