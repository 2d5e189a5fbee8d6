#!/usr/bin/env bash
# tests/bench/workers.sh [DURATION]: the process model's figures (issue 9).
#
#   1. luaserve --workers 2 beside OpenResty with worker_processes 2 (its
#      peer in ../shared/bench, through tests/bench/nginx-workers.sh), on
#      plaintext and json. Server and wrk share both cores (TARGET_CPU and
#      LOAD_CPU 0,1): these figures are not comparable with the pinned
#      one-worker ones of `make bench`. Goal: >= 0.95x OpenResty.
#   2. One worker: does this tree cost more per request than the main
#      branch? The main branch's binary is built in build/bench-base (from
#      `git archive $BASE_REF`), both run alternating, pinned (server CPU 0,
#      wrk CPU 1); the medians of requests/s and of the server's CPU per
#      request (target_us_per_req), and their ratios.
#   3. One worker with --metrics-path on, against off: what the metrics
#      cost per request when used.
#
# Env: ROUNDS (default 4), SECTIONS (default "1 2 3"), BASE_REF (main),
# SHARED_BENCH. Every server listens on 127.0.0.1 and is stopped by pid
# (run.sh); every load run is bounded in time.
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT="$PWD"
SHARED="${SHARED_BENCH:-$ROOT/../shared/bench}"
DUR="${1:-${BENCH_DURATION:-10}}"
R="${ROUNDS:-4}"
export LUASERVE_DIR="$ROOT"
ONE='./luaserve apps/bench --port $PORT --no-access-log'

# run.sh's line -> the value of key
field() { tr ' ' '\n' | sed -n "s/^$1=//p"; }
. tests/bench/lib.sh

# Alternate two luaserve variants (dir and command each) for $R rounds on
# one scenario; print each variant's median rps and us/req and the ratios.
alternate() {   # name_a dir_a cmd_a name_b dir_b cmd_b scenario
  local out; out="$(mktemp)"
  for ((r = 1; r <= R; r++)); do
    for v in a b; do
      if (( r % 2 == 0 )); then v=$([ $v = a ] && echo b || echo a); fi
      if [ $v = a ]; then dir="$2" cmd="$3"; else dir="$5" cmd="$6"; fi
      line="$(LUASERVE_DIR="$dir" LUASERVE_CMD="$cmd" "$SHARED/run.sh" luaserve "$7" "$DUR" 2>/dev/null)"
      echo "$v $line" >> "$out"
      echo "  raw $([ $v = a ] && echo "$1" || echo "$4"): $line"
    done
  done
  local ra rb ua ub
  ra="$(grep '^a ' "$out" | field rps | median)"; rb="$(grep '^b ' "$out" | field rps | median)"
  ua="$(grep '^a ' "$out" | field target_us_per_req | median)"; ub="$(grep '^b ' "$out" | field target_us_per_req | median)"
  printf '%-12s rps_median=%s us_per_req_median=%s\n' "$1" "$ra" "$ua"
  printf '%-12s rps_median=%s us_per_req_median=%s\n' "$4" "$rb" "$ub"
  awk -v ra="$ra" -v rb="$rb" -v ua="$ua" -v ub="$ub" -v a="$1" -v b="$4" 'BEGIN {
    if (ra > 0 && ua > 0) printf "ratio %s/%s: rps %.3f, cpu per request %.3f\n", b, a, rb / ra, ub / ua }'
  rm -f "$out"
}

for section in ${SECTIONS:-1 2 3}; do
  case "$section" in
    1) for s in plaintext json; do
         echo "### $s: luaserve --workers 2 vs OpenResty worker_processes 2 (both cores shared with wrk: not comparable with pinned figures)"
         TARGET_CPU=0,1 LOAD_CPU=0,1 ROUNDS="$R" REF=openresty \
           NGINX="$ROOT/tests/bench/nginx-workers.sh" NGINX_WORKERS=2 \
           LUASERVE_CMD='./luaserve apps/bench --port $PORT --no-access-log --workers 2' \
           "$SHARED/compare.sh" "$s" "$DUR" luaserve openresty 2>/dev/null
       done ;;
    2) BASE="$ROOT/build/bench-base"
       if [ ! -x "$BASE/luaserve" ] || [ "$(cat "$BASE/.ref" 2>/dev/null)" != "$(git rev-parse "${BASE_REF:-main}")" ]; then
         rm -rf "$BASE" && mkdir -p "$BASE"
         git archive "${BASE_REF:-main}" | tar -x -C "$BASE"
         make -C "$BASE" build >/dev/null 2>&1 || { echo "(cannot build ${BASE_REF:-main} in $BASE)"; continue; }
         git rev-parse "${BASE_REF:-main}" > "$BASE/.ref"
       fi
       for s in plaintext json; do
         echo "### $s, one worker: ${BASE_REF:-main} (build/bench-base) vs this tree, $R alternating rounds"
         alternate base "$BASE" "$ONE" this "$ROOT" "$ONE" "$s"
       done ;;
    3) echo "### plaintext, one worker: --metrics-path /metrics off vs on"
       alternate off "$ROOT" "$ONE" metrics "$ROOT" "$ONE --metrics-path /metrics" plaintext ;;
  esac
  echo
done
