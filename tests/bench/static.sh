#!/usr/bin/env bash
# tests/bench/static.sh [DURATION]: static files, luaserve's app:static
# beside nginx's `location /static/` (Debian's nginx, sendfile on, one
# worker, access log off), a 1 KB and a 1 MB file; on 1 KB also luaserve
# with its open-file cache off (luaserve-nocache: a trip to the thread
# pool per request). Same run, order rotating, server on CPU 0 and wrk on CPU 1 (-t1 -c64 for 1 KB, -c16
# for 1 MB), ROUNDS rounds (default 3), medians of requests per second and
# of server CPU per request (user + system time of the process and its
# threads, from /proc/PID/stat). Bar (issue 12): at least 0.8x nginx's
# requests per second on 1 KB, 0.9x on 1 MB. Servers listen on 127.0.0.1
# and are stopped by pid.
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT="$PWD"
DUR="${1:-${BENCH_DURATION:-10}}"
ROUNDS="${ROUNDS:-3}"
. tests/bench/lib.sh
NGINX="${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}"
work="$(mktemp -d -t luaserve-static.XXXXXX)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/www/static" "$work/nginx"
head -c 1024 /dev/urandom > "$work/www/static/1k.bin"
head -c 1048576 /dev/urandom > "$work/www/static/1m.bin"

# start_server NAME PORT: starts it, prints its pid
start_server() {
  local name="$1" port="$2"
  if [ "$name" = nginx ]; then
    cat > "$work/nginx/nginx.conf" <<CONF
worker_processes 1;
daemon off;
master_process off;
error_log $work/nginx/error.log warn;
pid $work/nginx/nginx.pid;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  types { application/octet-stream bin; }
  client_body_temp_path $work/nginx; proxy_temp_path $work/nginx;
  fastcgi_temp_path $work/nginx; uwsgi_temp_path $work/nginx; scgi_temp_path $work/nginx;
  server {
    listen 127.0.0.1:$port;
    location /static/ { root $work/www; etag on; }
  }
}
CONF
    taskset -c 0 "$NGINX" -c "$work/nginx/nginx.conf" -p "$work/nginx" \
      >/dev/null 2>>"$work/nginx/error.log" &
  else
    # (start_server runs in $(...): the variable stays in that subshell)
    if [ "$name" = luaserve-nocache ]; then export LUASERVE_BENCH_NOCACHE=1; fi
    LUASERVE_BENCH_STATIC="$work/www/static" taskset -c 0 ./luaserve tests/bench/static_app.lua \
      --port "$port" --no-access-log >/dev/null 2>>"$work/luaserve.log" &
  fi
  echo $!
}

# run NAME FILE CONNS: one measured run; prints "NAME-FILE rps us_per_req"
run() {
  local name="$1" file="$2" conns="$3"
  local port=$(( 20000 + RANDOM % 10000 ))
  local pid; pid=$(start_server "$name" "$port")
  for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$port/static/1k.bin" && break; sleep 0.1; done
  echo "$name-$file $(wrk_cpu "$pid" "$conns" "http://127.0.0.1:$port/static/$file")"
  kill "$pid"; wait "$pid" 2>/dev/null
}


tmp="$work/results"
for r in $(seq "$ROUNDS"); do
  case $((r % 3)) in
    1) order="luaserve nginx luaserve-nocache" ;;
    2) order="nginx luaserve-nocache luaserve" ;;
    0) order="luaserve-nocache luaserve nginx" ;;
  esac
  for s in $order; do run "$s" 1k.bin 64 >> "$tmp"; done
  for s in $order; do [ "$s" = luaserve-nocache ] || run "$s" 1m.bin 16 >> "$tmp"; done
done
printf "%-24s %10s %10s %10s\n" variant rps us/req rps_vs_nginx
for f in 1k.bin 1m.bin; do
  nrps=$(awk -v v="nginx-$f" '$1 == v { print $2 }' "$tmp" | median)
  variants="luaserve nginx"
  [ "$f" = 1k.bin ] && variants="luaserve luaserve-nocache nginx"
  for s in $variants; do
    rps=$(awk -v v="$s-$f" '$1 == v { print $2 }' "$tmp" | median)
    us=$(awk -v v="$s-$f" '$1 == v { print $3 }' "$tmp" | median)
    printf "%-24s %10s %10s %10.3f\n" "$s-$f" "$rps" "$us" "$(awk -v a="$rps" -v b="$nrps" 'BEGIN { print a / b }')"
  done
done
