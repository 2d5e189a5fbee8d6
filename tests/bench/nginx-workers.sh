#!/usr/bin/env bash
# tests/bench/nginx-workers.sh: an "nginx" for ../shared/bench's OpenResty
# peer (its start.sh runs $NGINX): the peer's own configuration, with
# worker_processes set to $NGINX_WORKERS (default 2), then the real nginx.
# The peer's files are used as they are; only the copy start.sh made in its
# prefix is changed.
set -euo pipefail
prefix=""
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  [ "${args[$i]}" = -p ] && prefix="${args[$((i + 1))]}"
done
[ -n "$prefix" ] || { echo "nginx-workers.sh: no -p PREFIX" >&2; exit 2; }
sed -i -E "s/^(\s*)worker_processes\s+[0-9a-z]+;/\1worker_processes ${NGINX_WORKERS:-2};/" \
  "$prefix/conf/nginx.conf"
exec "${REAL_NGINX:-nginx}" "$@"
