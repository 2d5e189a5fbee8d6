#!/usr/bin/env bash
# tests/bench/db.sh [DURATION]: the TechEmpower database routes of apps/bench
# (luaserve.pg) side by side with the FastAPI + asyncpg peer of
# ../shared/bench (peers/fastapi-db), in the same run, one worker each, on
# the same throw-away PostgreSQL (../shared/bench/db/start-postgres.sh):
# /db, /queries?queries=20, /fortunes, /updates?queries=5. Prints per
# scenario each run's requests/s, the mean, the ratio luaserve / FastAPI,
# and CPU per request: the server's core (run.sh's target_us_per_req) and
# the PostgreSQL server's (every process of the cluster, from /proc, over
# the warm-up and the measured run: an estimate).
#
# Env: DB_ROUNDS (default 2, order alternating), DB_SCENARIOS, SHARED_BENCH,
# LUASERVE_CMD. Every load run is bounded in time; PostgreSQL is stopped by
# its script (pg_ctl, by its data folder) whatever happens.
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/bench/lib.sh   # free_port
ROOT="$PWD"
SHARED="${SHARED_BENCH:-$ROOT/../shared/bench}"
DUR="${1:-${BENCH_DURATION:-5}}"
ROUNDS="${DB_ROUNDS:-2}"
WARM="${WARMUP:-1}"
export WARMUP="$WARM"
export LUASERVE_DIR="${LUASERVE_DIR:-$ROOT}"
export LUASERVE_CMD="${LUASERVE_CMD:-./luaserve apps/bench --port \$PORT --no-access-log}"
if [ ! -x "$SHARED/db/start-postgres.sh" ] || [ ! -x "$SHARED/run.sh" ]; then
  echo "(no $SHARED/db: the database benchmark is skipped)"; exit 0
fi

D="$(mktemp -d /tmp/luaserve-benchdb.XXXXXX)"
chmod 755 "$D"   # the postgres user must reach it
trap '"$SHARED/db/stop-postgres.sh" "$D/pg" >/dev/null 2>&1; rm -rf "$D"' EXIT
trap 'exit 130' INT TERM
PORT="$(free_port)"
PG_URL="$("$SHARED/db/start-postgres.sh" "$D/pg" "$PORT")" || { echo "PostgreSQL did not start"; exit 1; }
export PG_URL LUASERVE_PG="$PG_URL"
PM="$(head -n1 "$D/pg/data/postmaster.pid")"
HZ="$(getconf CLK_TCK)"

# CPU ticks of the cluster so far: the postmaster (its own and its reaped
# children's) and every live child of it (the backends), from /proc.
pg_ticks() {
  local total=0 f line pid
  for f in /proc/[0-9]*/stat; do
    read -r line < "$f" 2>/dev/null || continue
    pid="${f#/proc/}"; pid="${pid%/stat}"
    set -- ${line##*) }   # the fields after "(comm) ": state ppid ...
    if [ "$pid" = "$PM" ]; then
      total=$((total + ${12} + ${13} + ${14} + ${15}))
    elif [ "$2" = "$PM" ]; then
      total=$((total + ${12} + ${13}))
    fi
  done
  echo "$total"
}

echo "# database routes: luaserve vs FastAPI + asyncpg, ${ROUNDS} alternating rounds of ${DUR}s (+${WARM}s warm-up), server on CPU 0, wrk on CPU 1, PostgreSQL unpinned"
for s in ${DB_SCENARIOS:-db queries fortunes updates}; do
  raw="$D/$s.txt"
  : > "$raw"
  for ((r = 1; r <= ROUNDS; r++)); do
    if (( r % 2 == 1 )); then order="luaserve fastapi-db"; else order="fastapi-db luaserve"; fi
    for t in $order; do
      t0="$(pg_ticks)"
      line="$("$SHARED/run.sh" "$t" "$s" "$DUR" 2>/dev/null)"
      t1="$(pg_ticks)"
      echo "$t $((t1 - t0)) $line" >> "$raw"
      sleep 1
    done
  done
  awk -v s="$s" -v dur="$DUR" -v warm="$WARM" -v hz="$HZ" '
    function val(k,   i, kv) { for (i = 3; i <= NF; i++) { split($i, kv, "="); if (kv[1] == k) return kv[2] } return "NA" }
    {
      t = $1; rps = val("rps"); if (rps == "NA") { runs[t] = runs[t] " NA"; next }
      runs[t] = runs[t] sprintf(" %.0f", rps); n[t]++; sum[t] += rps
      us[t] += val("target_us_per_req"); err[t] += val("errors")
      pgus[t] += ($2 / hz * 1e6) / (rps * (dur + warm))
    }
    END {
      printf "## %s\n%-11s %-16s %9s %8s %13s %13s %7s\n", s, "target", "rps_runs", "rps_mean",
        "errors", "server_us/req", "postgres_us/req", "ratio"
      ref = n["fastapi-db"] ? sum["fastapi-db"] / n["fastapi-db"] : 0
      split("luaserve fastapi-db", ts, " ")
      for (i = 1; i <= 2; i++) {
        t = ts[i]
        if (!n[t]) { printf "%-11s %-16s %9s\n", t, runs[t], "NA"; continue }
        m = sum[t] / n[t]
        printf "%-11s %-16s %9.0f %8d %13.1f %13.1f %7s\n", t, runs[t], m, err[t], us[t] / n[t],
          pgus[t] / n[t], ref ? sprintf("%.2fx", m / ref) : "NA"
      }
    }' "$raw"
  sed 's/^/raw: /' "$raw"
  echo
done
