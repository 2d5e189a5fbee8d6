#!/usr/bin/env bash
# tests/bench/forms.sh [DURATION]: streamed uploads (issue 14).
#   1. The hot paths must not pay for them: server CPU per request of
#      plaintext, json and POST /echo (apps/bench) for this tree and, with
#      BASE=DIR, for another checkout built in DIR (its ./luaserve and lua/):
#      same run, order alternating, server on CPU 0, wrk on CPU 1, ROUNDS
#      rounds (default 4), medians, ratio this / base.
#   2. Uploads: a 20 MB multipart file posted UPLOADS times (default 10) with
#      curl to tests/apps/forms_app.lua, into a temp file (/upload, digested
#      from disk by a sync function) and streamed through a digest without
#      touching the disk (/parts): MB/s, server CPU per MB, the server's peak
#      RSS over its RSS before.
# Servers listen on 127.0.0.1 and are stopped by pid.
set -uo pipefail
cd "$(dirname "$0")/../.."
DUR="${1:-${BENCH_DURATION:-10}}"
ROUNDS="${ROUNDS:-4}"
UPLOADS="${UPLOADS:-10}"
ROUTES="${ROUTES:-plaintext json echo}"
. tests/bench/lib.sh
HERE="$PWD"


# start DIR APP PORT: a server from the checkout in DIR; prints its pid.
start() {
  (cd "$1" && LUASERVE_LUA_DIR="$1/lua" exec taskset -c 0 ./luaserve "$2" --port "$3" \
    --no-access-log >/dev/null 2>&1) &
  local pid=$!
  for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$3/" && break; sleep 0.1; done
  echo "$pid"
}

# stop PID: SIGTERM, and wait until it is gone (not our child: no wait).
stop() {
  kill "$1" 2>/dev/null
  for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.05; done
}

# run NAME DIR PATH: one measured wrk run; prints "NAME rps us_per_req"
run() {
  local name="$1" dir="$2" path="$3" port=$(( 20000 + RANDOM % 10000 ))
  local script=()
  [ "$path" = /echo ] && script=(-s "$HERE/tests/bench/echo.lua")
  local pid; pid=$(start "$dir" apps/bench "$port")
  echo "$name $(wrk_cpu "$pid" 64 "http://127.0.0.1:$port$path" "${script[@]}")"
  stop "$pid"
}

if [ -n "${BASE:-}" ]; then
  BASE="$(cd "$BASE" && pwd)"
  echo "== hot paths: this tree against $BASE (server CPU per request, medians of $ROUNDS)"
  tmp=$(mktemp)
  for r in $(seq "$ROUNDS"); do
    for p in $ROUTES; do
      if [ $((r % 2)) = 1 ]; then
        run "$p-base" "$BASE" "/$p" >> "$tmp"; run "$p-this" "$HERE" "/$p" >> "$tmp"
      else
        run "$p-this" "$HERE" "/$p" >> "$tmp"; run "$p-base" "$BASE" "/$p" >> "$tmp"
      fi
    done
  done
  printf "%-10s %12s %12s %10s %10s %8s\n" route rps_base rps_this us_base us_this ratio
  for p in $ROUTES; do
    rb=$(awk -v v="$p-base" '$1 == v { print $2 }' "$tmp" | median)
    rt=$(awk -v v="$p-this" '$1 == v { print $2 }' "$tmp" | median)
    ub=$(awk -v v="$p-base" '$1 == v { print $3 }' "$tmp" | median)
    ut=$(awk -v v="$p-this" '$1 == v { print $3 }' "$tmp" | median)
    printf "%-10s %12s %12s %10s %10s %8.3f\n" "$p" "$rb" "$rt" "$ub" "$ut" \
      "$(awk -v a="$ut" -v b="$ub" 'BEGIN { print a / b }')"
  done
  rm -f "$tmp"
fi

echo "== uploads: a 20 MB file, $UPLOADS times (tests/apps/forms_app.lua)"
work=$(mktemp -d)
head -c $((20 * 1024 * 1024)) /dev/urandom > "$work/f.bin"
mkdir "$work/tmp"
port=$(( 20000 + RANDOM % 10000 ))
pid=$( (cd "$HERE" && TMPDIR="$work/tmp" LUASERVE_LUA_DIR="$HERE/lua" exec taskset -c 0 \
  ./luaserve tests/apps/forms_app.lua --port "$port" --no-access-log >/dev/null 2>&1) &
  echo $! )
for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$port/ping" && break; sleep 0.1; done
printf "%-8s %8s %10s %12s\n" route MB/s cpu_ms/MB peak_rss_kB
for route in upload parts; do
  curl -s -o /dev/null -F "f=@$work/f.bin" "http://127.0.0.1:$port/$route"   # warm-up
  rss0=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
  echo 5 > "/proc/$pid/clear_refs"
  t0=$(cpu_ticks "$pid"); s0=$(date +%s%N)
  for i in $(seq "$UPLOADS"); do
    curl -s -o /dev/null -F "f=@$work/f.bin" "http://127.0.0.1:$port/$route"
  done
  s1=$(date +%s%N); t1=$(cpu_ticks "$pid")
  peak=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
  awk -v r="$route" -v n="$UPLOADS" -v dt="$((t1 - t0))" -v tick="$TICK" -v s="$(( (s1 - s0) / 1000000 ))" \
    -v p="$peak" -v r0="$rss0" \
    'BEGIN { mb = n * 20; printf "%-8s %8.0f %10.2f %12s\n", r, mb / (s / 1000), dt / tick * 1000 / mb, "+" (p - r0) }'
done
stop "$pid"
left=$(ls "$work/tmp" | wc -l)
rm -rf "$work"
[ "$left" = 0 ] || echo "temp files left behind: $left"
