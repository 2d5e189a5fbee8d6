#!/usr/bin/env bash
# tests/bench/instructions.sh [SECONDS]: user-space instructions per request
# (valgrind's callgrind), the figure issue 13 set a bar on: plaintext, json,
# /sleep?ms=1, and plaintext with the access log on (the default). wrk
# keeps 8 connections busy; callgrind counts only during the measured run
# (after a warm-up that lets LuaJIT compile the path), so start-up is left
# out. Deterministic enough to compare two builds, unlike CPU time on a
# shared machine; it says nothing of the kernel's part or of cache misses
# (the collector's marking costs more time than its instructions say).
#
# Env: APP (default apps/bench), LJLIB: a folder holding a
# libluajit-5.1.so.2 built with symbols (callgrind then names LuaJIT's
# functions instead of addresses: `apt-get source luajit2`, then `make amalg
# CCDEBUG=-g` and copy src/libluajit.so there); KEEP=1 keeps each profile
# in build/callgrind.NAME for callgrind_annotate. The server listens on
# 127.0.0.1 and is stopped by its pid.
set -uo pipefail
cd "$(dirname "$0")/../.."
DUR="${1:-4}"
APP="${APP:-apps/bench}"
. tests/bench/lib.sh
command -v valgrind >/dev/null || { echo "instructions: valgrind is not installed" >&2; exit 0; }

# A LuaJIT of one's own: its default module path differs from Debian's.
ENV=(env)
[ -n "${LJLIB:-}" ] && ENV=(env LD_LIBRARY_PATH="$LJLIB"
  LUA_CPATH="/usr/lib/$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)/lua/5.1/?.so;;")

PID=""
stop() { [ -n "$PID" ] && kill -INT "$PID" 2>/dev/null && wait "$PID" 2>/dev/null; PID=""; }
trap 'stop; exit 130' INT TERM
trap stop EXIT

# count NAME PATH [server options]: prints "NAME: N instructions/request".
count() {
  local name="$1" path="$2" port out n ir
  shift 2
  port=$(free_port)
  out="build/callgrind.$name"
  rm -f "$out"
  mkdir -p build
  "${ENV[@]}" valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" \
    ./luaserve "$APP" --port "$port" "$@" >/dev/null 2>&1 &
  PID=$!
  for _ in $(seq 100); do
    curl -s -o /dev/null "http://127.0.0.1:$port/plaintext" && break
    sleep 0.2
  done
  timeout 30 wrk -t1 -c8 -d2s "http://127.0.0.1:$port$path" >/dev/null 2>&1
  callgrind_control -i on "$PID" >/dev/null 2>&1
  n=$(timeout $((DUR + 20)) wrk -t1 -c8 -d"${DUR}s" "http://127.0.0.1:$port$path" 2>&1 |
    sed -n 's/^ *\([0-9]*\) requests in.*/\1/p')
  callgrind_control -i off "$PID" >/dev/null 2>&1
  stop
  ir=$(callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }')
  [ "${KEEP:-0}" = 1 ] || rm -f "$out"
  awk -v name="$name" -v ir="${ir:-0}" -v n="${n:-0}" 'BEGIN {
    if (n > 0 && ir > 0) printf "%-22s %6.0f instructions/request (%d requests)\n", name, ir / n, n
    else printf "%-22s NA (no requests counted)\n", name }'
}

count plaintext /plaintext --no-access-log
count json /json --no-access-log
count sleep "/sleep?ms=1" --no-access-log
count plaintext+access-log /plaintext
