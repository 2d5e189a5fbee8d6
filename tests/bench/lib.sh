# tests/bench/lib.sh: what the benchmark scripts share (sourced; they set
# DUR, the measured seconds).
TICK=$(getconf CLK_TCK)

# median: the median of the numbers on stdin; NA when there are none.
median() {
  sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "NA"
    else print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# free_port: a TCP port free on 127.0.0.1 now.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# cpu_ticks PID: the clock ticks (user + system) the process has used.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# wrk_cpu PID CONNS URL [wrk args]: 2 s of warm-up, then DUR seconds of wrk
# on CPU 1; prints "rps us_per_req", the server's CPU time per request
# from /proc/PID/stat over the measured run. Non-2xx answers and socket
# errors are named on stderr.
wrk_cpu() {
  local pid="$1" conns="$2" url="$3" t0 t1 out n
  shift 3
  timeout 30 taskset -c 1 wrk -t1 -c"$conns" -d2s "$@" "$url" >/dev/null 2>&1
  t0=$(cpu_ticks "$pid")
  out=$(timeout $((DUR + 20)) taskset -c 1 wrk -t1 -c"$conns" -d"${DUR}s" "$@" "$url" 2>&1)
  t1=$(cpu_ticks "$pid")
  if echo "$out" | grep -q "Non-2xx\|Socket errors"; then
    echo "($url: $(echo "$out" | grep "Non-2xx\|Socket errors" | tr '\n' ' '))" >&2
  fi
  n=$(echo "$out" | sed -n 's/^ *\([0-9]*\) requests in.*/\1/p')
  awk -v n="${n:-0}" -v dt="$((t1 - t0))" -v tick="$TICK" -v d="$DUR" \
    'BEGIN { if (n > 0) printf "%.0f %.3f\n", n / d, dt / tick * 1e6 / n; else print "0 NA" }'
}
