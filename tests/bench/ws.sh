#!/usr/bin/env bash
# tests/bench/ws.sh [DURATION]: WebSockets (issue 8) beside Node's `ws` and
# uvicorn with `websockets` (tests/bench/ws/), all serving the same two
# routes (apps/bench's /ws/echo and /ws/room/{name}), driven the same way by
# one C load client (tests/bench/ws/wsload.c, built here into build/bench/):
#
#   echo    ECHO_CONNS (64) connections, each with one MSG_BYTES (64) text
#           message in flight, DURATION s (default 10) after 2 s of warm-up:
#           round trips per second, their p50/p99, and the server's CPU time
#           per round trip (user + system from /proc/PID/stat over the
#           measured window): on this 2-core machine the client may be the
#           bottleneck (client_cpu near 1.00), and then that is the figure
#           to compare. ROUNDS (4) rounds, order alternating, medians.
#   fanout  FANOUT_CONNS (2000) connections in one room; one of them
#           publishes a message; the time until the last member has read it
#           whole. FANOUTS (20) fan-outs per server start, FANOUT_ROUNDS (2)
#           starts, order alternating; median and p99 over all, and the
#           server's CPU time per fan-out (median of the starts).
#
# The server runs on CPU 0, the client on CPU 1 (taskset). Ratios are
# luaserve's figure over the peer's (rate), or the peer's over luaserve's
# (times, CPU): above 1 luaserve does better. Env: WS_PEERS ("luaserve node
# uvicorn"), LUASERVE_DIR (the checkout whose ./luaserve runs; default this
# one), UVICORN_LOOP (auto: uvloop where installed; asyncio),
# UVICORN_HTTP (auto: httptools where installed; h11). Every server listens
# on 127.0.0.1 and is stopped by its pid, also on failure; every client run
# is bounded by `timeout`.
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT="$PWD"
DUR="${1:-${BENCH_DURATION:-10}}"
ROUNDS="${ROUNDS:-4}"
FANOUT_ROUNDS="${FANOUT_ROUNDS:-2}"
FANOUTS="${FANOUTS:-20}"
ECHO_CONNS="${ECHO_CONNS:-64}"
FANOUT_CONNS="${FANOUT_CONNS:-2000}"
MSG_BYTES="${MSG_BYTES:-64}"
read -r -a PEERS <<< "${WS_PEERS:-luaserve node uvicorn}"
PYTHON="${PYTHON:-/usr/bin/python3}"
export NODE_PATH="${NODE_PATH:-/usr/share/nodejs}"

# 2,000 connections on each side: as many descriptors as allowed.
HARD="$(ulimit -Hn)"; [ "$HARD" = unlimited ] && HARD=65536
ulimit -n "$HARD" 2>/dev/null || true
if [ "$(ulimit -n)" -lt $((FANOUT_CONNS + 100)) ]; then
  echo "ws.sh: the open-file limit ($(ulimit -n)) is below $((FANOUT_CONNS + 100))" >&2
  exit 1
fi

CLIENT=build/bench/wsload
mkdir -p build/bench
if [ ! -x "$CLIENT" ] || [ tests/bench/ws/wsload.c -nt "$CLIENT" ]; then
  cc -O2 -Wall -Wextra -o "$CLIENT" tests/bench/ws/wsload.c || exit 1
fi

tmp="$(mktemp -d)"
PID=""
stop() {
  if [ -n "$PID" ]; then kill "$PID" 2>/dev/null; wait "$PID" 2>/dev/null; PID=""; fi
}
trap 'stop; rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM

# start NAME: the server on CPU 0 and a free port (PORT); its pid in PID.
start() {
  PORT=$(( 20000 + RANDOM % 10000 ))
  while (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; do   # taken: another
    PORT=$(( 20000 + RANDOM % 10000 ))
  done
  case "$1" in
    luaserve) ( cd "${LUASERVE_DIR:-$ROOT}" && exec taskset -c 0 ./luaserve apps/bench \
                --port "$PORT" --no-access-log 2>>"$tmp/$1.log" ) & ;;
    node) PORT=$PORT taskset -c 0 node tests/bench/ws/node_ws.js 2>>"$tmp/$1.log" & ;;
    uvicorn) taskset -c 0 "$PYTHON" -m uvicorn uvicorn_app:app --app-dir tests/bench/ws \
               --ws websockets --loop "${UVICORN_LOOP:-auto}" --http "${UVICORN_HTTP:-auto}" \
               --host 127.0.0.1 --port "$PORT" --backlog 4096 --no-access-log \
               --log-level warning 2>>"$tmp/$1.log" & ;;
    *) echo "ws.sh: unknown server $1 (luaserve, node, uvicorn)" >&2; return 1 ;;
  esac
  PID=$!
  for _ in $(seq 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && return 0
    kill -0 "$PID" 2>/dev/null || break
    sleep 0.1
  done
  echo "ws.sh: $1 did not start:" >&2; tail -5 "$tmp/$1.log" >&2
  stop
  return 1
}

# measure NAME MODE: one server start, one client run; appends "NAME fields".
measure() {
  local name="$1" mode="$2" line
  start "$name" || return 0
  if [ "$mode" = echo ]; then
    line=$(timeout $((DUR + 60)) taskset -c 1 "$CLIENT" echo 127.0.0.1 "$PORT" /ws/echo \
      -c "$ECHO_CONNS" -s "$MSG_BYTES" -d "$DUR" -w 2 -p "$PID")
  else
    line=$(timeout 600 taskset -c 1 "$CLIENT" fanout 127.0.0.1 "$PORT" /ws/room/bench \
      -c "$FANOUT_CONNS" -s "$MSG_BYTES" -r "$FANOUTS" -p "$PID")
  fi
  local rc=$?
  stop
  if [ "$rc" != 0 ] || [ -z "$line" ]; then
    echo "ws.sh: $name $mode failed (status $rc): $line" >&2
    return 0
  fi
  echo "$name $line" >> "$tmp/$mode"
}

# order R: the peers forward in odd rounds, reversed in even ones.
order() {
  if [ $(( $1 % 2 )) = 1 ]; then echo "${PEERS[@]}"
  else for (( i = ${#PEERS[@]} - 1; i >= 0; i-- )); do printf '%s ' "${PEERS[i]}"; done; fi
}

touch "$tmp/echo" "$tmp/fanout"
bars=""
for r in $(seq "$ROUNDS"); do
  for p in $(order "$r"); do measure "$p" echo; done
done
for r in $(seq "$FANOUT_ROUNDS"); do
  for p in $(order "$r"); do measure "$p" fanout; done
done

# field NAME KEY FILE: every value of KEY in NAME's lines, one a line.
field() { awk -v n="$1" -v k="$2" '$1 == n { for (i = 2; i <= NF; i++) { split($i, kv, "="); if (kv[1] == k) print kv[2] } }' "$3"; }
# median [PRINTF_FORMAT]: of the numbers on stdin ("-" if none)
median() { sort -g | awk -v f="${1:-%.2f}" '{ v[NR] = $1 } END { if (NR == 0) print "-"; else printf f "\n", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b == 0) print "-"; else printf "%.2f", a / b }'; }

echo "echo: $ECHO_CONNS connections, $MSG_BYTES-byte messages, one in flight each, ${DUR}s, $ROUNDS rounds alternating (server CPU 0, client CPU 1), medians"
printf "%-9s %10s %8s %8s %13s %10s %10s %12s %14s\n" server "round/s" p50_us p99_us server_us/msg server_cpu client_cpu "ls/peer rate" "peer/ls cpu/msg"
ls_rate=$(field luaserve rate "$tmp/echo" | median %.0f)
ls_us=$(field luaserve server_us_per_msg "$tmp/echo" | median)
for p in "${PEERS[@]}"; do
  rate=$(field "$p" rate "$tmp/echo" | median %.0f)
  us=$(field "$p" server_us_per_msg "$tmp/echo" | median)
  printf "%-9s %10s %8s %8s %13s %10s %10s %12s %14s\n" "$p" "$rate" \
    "$(field "$p" p50_us "$tmp/echo" | median %.0f)" "$(field "$p" p99_us "$tmp/echo" | median %.0f)" "$us" \
    "$(field "$p" server_cpu_util "$tmp/echo" | median)" "$(field "$p" client_cpu_util "$tmp/echo" | median)" \
    "$(ratio "$ls_rate" "$rate")" "$(ratio "$us" "$ls_us")"
  case "$p" in node) want=1.0 ;; uvicorn) want=1.5 ;; *) continue ;; esac
  bars="$bars; ${want}x $p: rate $(ratio "$ls_rate" "$rate"), cpu/msg $(ratio "$us" "$ls_us")"
done
[ -n "${bars:-}" ] && echo "bars of issue 8 (luaserve at least${bars#;})"
echo
echo "fanout: one message to $FANOUT_CONNS connections in one room (the publisher one of them), $FANOUTS fan-outs x $FANOUT_ROUNDS starts alternating; time until the last member has it"
printf "%-9s %9s %9s %9s %16s %16s %14s %14s\n" server p50_ms p99_ms max_ms server_ms/fanout client_ms/fanout "peer/ls p50" "peer/ls cpu"
# every fan-out time of NAME, one a line
times() { field "$1" all_ms "$tmp/fanout" | tr ',' '\n' | sed '/^$/d'; }
# nearest-rank percentile Q (0..1) of the values on stdin
pct() { sort -g | awk -v q="$1" '{ v[NR] = $1 } END { if (NR == 0) { print "-"; exit } i = int(q * NR + 0.999999); if (i < 1) i = 1; print v[i] }'; }
ls_p50=$(times luaserve | pct 0.5)
ls_cpu=$(field luaserve server_ms_per_fanout "$tmp/fanout" | median)
for p in "${PEERS[@]}"; do
  p50=$(times "$p" | pct 0.5)
  cpu=$(field "$p" server_ms_per_fanout "$tmp/fanout" | median)
  printf "%-9s %9s %9s %9s %16s %16s %14s %14s\n" "$p" "$p50" "$(times "$p" | pct 0.99)" "$(times "$p" | pct 1)" \
    "$cpu" "$(field "$p" client_ms_per_fanout "$tmp/fanout" | median)" "$(ratio "$p50" "$ls_p50")" "$(ratio "$cpu" "$ls_cpu")"
done
cat "$tmp/echo" "$tmp/fanout" > build/bench/ws-runs.txt
echo "(every run's figures: build/bench/ws-runs.txt)"
for p in "${PEERS[@]}"; do
  n=$(awk -v n="$p" '$1 == n' "$tmp/echo" | wc -l); m=$(awk -v n="$p" '$1 == n' "$tmp/fanout" | wc -l)
  if [ "$n" != "$ROUNDS" ] || [ "$m" != "$FANOUT_ROUNDS" ]; then
    echo "($p: $n of $ROUNDS echo runs and $m of $FANOUT_ROUNDS fan-out runs succeeded; see above)"
  fi
done
