/* metrics.c: the counters behind --metrics-path, in the shared-memory
 * region (shm.c), so that whichever worker answers a scrape reports the
 * totals of all of them without asking the others. A series is a route
 * template, a method and a status; its key is registered once in the
 * region's table (under the metrics lock), and each worker slot has its
 * own counters for it (count, sum, latency buckets) that only that
 * worker's loop thread writes: no lock and no atomic on the request path.
 * A slot keeps its counters when its worker dies, and the next worker of
 * that slot goes on from them, so totals never go down. The gauges
 * (connections, requests in flight, the pool, the loop's lag) live in the
 * slots too (ls_wslot_t); the dictionary's in its header. */
#include <stdio.h>
#include <string.h>

#include "internal.h"

/* The latency buckets' upper bounds in seconds; the last bucket is +Inf. */
static const double bounds[LS_METRIC_BUCKETS - 1] = {
  0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
  5, 10,
};

#define OTHER_ROUTE "(other)"   /* the series past the table's end */


static ls_series_key_t *keys(ls_shm_t *h) {
  return (ls_series_key_t *)((char *)h + h->keys_off);
}


static ls_series_t *counters(ls_shm_t *h, unsigned slot) {
  return (ls_series_t *)((char *)h + h->counters_off) +
         (size_t)slot * h->max_series;
}


static ls_shm_t *check_region(lua_State *L) {
  ls_shm_t *h = ls__shm_region;
  if (h == NULL || h->max_series == 0)
    luaL_error(L, "metrics: the shared memory holds no metrics "
                  "(--metrics-path was not given at startup)");
  return h;
}


/* Index of key in the table, registering it; the last index is kept for
 * "(other)". Lock held. */
static int find_or_add(ls_shm_t *h, const char *key, size_t len) {
  ls_series_key_t *k = keys(h);
  uint32_t n = h->nseries;
  for (uint32_t i = 0; i < n; i++)
    if (k[i].len == len && memcmp(k[i].key, key, len) == 0)
      return (int)i;
  if (n + 1 >= h->max_series)
    return -1;
  memcpy(k[n].key, key, len);
  __atomic_store_n(&k[n].len, (uint32_t)len, __ATOMIC_RELEASE);
  __atomic_store_n(&h->nseries, n + 1, __ATOMIC_RELEASE);
  return (int)n;
}


/* metrics_series(route, method, status): the index of that series'
 * counters (registered on first use). Past the table's capacity, the
 * route is counted as "(other)". */
int ls__lua_metrics_series(lua_State *L) {
  size_t rl, ml;
  const char *route = luaL_checklstring(L, 1, &rl);
  const char *method = luaL_checklstring(L, 2, &ml);
  int status = (int)luaL_checkinteger(L, 3);
  ls_shm_t *h = check_region(L);
  char key[sizeof(((ls_series_key_t *)0)->key)];
  char st[16];
  int sl = snprintf(st, sizeof(st), "%d", status);
  if (ml > 32)
    ml = 32;
  if (rl + ml + (size_t)sl + 2 > sizeof(key)) {
    route = OTHER_ROUTE;
    rl = strlen(OTHER_ROUTE);
  }
  size_t len = 0;
  memcpy(key, route, rl);
  len += rl;
  key[len++] = '\0';
  memcpy(key + len, method, ml);
  len += ml;
  key[len++] = '\0';
  memcpy(key + len, st, (size_t)sl);
  len += (size_t)sl;
  ls__shm_lock(&h->meta_lock, NULL, NULL);   /* a half-made key has len 0 */
  int i = find_or_add(h, key, len);
  if (i < 0) {   /* full: one "(other)" series in the slot kept for it */
    static const char other[] = OTHER_ROUTE "\0-\0-";
    ls_series_key_t *k = &keys(h)[h->max_series - 1];
    memcpy(k->key, other, sizeof(other) - 1);
    __atomic_store_n(&k->len, (uint32_t)(sizeof(other) - 1), __ATOMIC_RELEASE);
    i = (int)h->max_series - 1;
  }
  pthread_mutex_unlock(&h->meta_lock);
  lua_pushinteger(L, i);
  return 1;
}


/* metrics_observe(index, seconds): one request of that series, answered
 * in that long. Loop thread of a worker. */
int ls__lua_metrics_observe(lua_State *L) {
  ls_runtime_t *rt = LS__RT(L);
  int i = (int)luaL_checkinteger(L, 1);
  double s = luaL_checknumber(L, 2);
  ls_shm_t *h = ls__shm_region;
  if (h == NULL || i < 0 || (uint32_t)i >= h->max_series || !rt->wslot_shared)
    return 0;
  unsigned slot = (unsigned)(rt->wslot - ls__shm_slot(h, 0));
  ls_series_t *c = &counters(h, slot)[i];
  c->count++;
  c->sum_ns += s > 0 ? (uint64_t)(s * 1e9) : 0;
  unsigned b = 0;
  while (b < LS_METRIC_BUCKETS - 1 && s > bounds[b])
    b++;
  c->buckets[b]++;
  return 0;
}


static void set_num(lua_State *L, const char *name, double v) {
  lua_pushnumber(L, v);
  lua_setfield(L, -2, name);
}


/* The totals of every slot for series i, pushed as a table. */
static void push_series(lua_State *L, ls_shm_t *h, uint32_t i) {
  ls_series_key_t *k = &keys(h)[i];
  uint32_t len = __atomic_load_n(&k->len, __ATOMIC_ACQUIRE);
  const char *route = k->key;
  const char *method = memchr(route, '\0', len);
  const char *status = method ? memchr(method + 1, '\0',
                                       len - (size_t)(method + 1 - route))
                              : NULL;
  if (method == NULL || status == NULL) {
    lua_pushnil(L);
    return;
  }
  method++;
  status++;
  uint64_t count = 0, sum = 0, b[LS_METRIC_BUCKETS] = {0};
  for (unsigned s = 0; s < h->nslots; s++) {
    ls_series_t *c = &counters(h, s)[i];
    count += c->count;
    sum += c->sum_ns;
    for (unsigned j = 0; j < LS_METRIC_BUCKETS; j++)
      b[j] += c->buckets[j];
  }
  lua_createtable(L, 0, 6);
  lua_pushstring(L, route);
  lua_setfield(L, -2, "route");
  lua_pushstring(L, method);
  lua_setfield(L, -2, "method");
  lua_pushlstring(L, status, len - (size_t)(status - route));
  lua_setfield(L, -2, "status");
  set_num(L, "count", (double)count);
  set_num(L, "sum", (double)sum / 1e9);
  lua_createtable(L, LS_METRIC_BUCKETS, 0);
  for (unsigned j = 0; j < LS_METRIC_BUCKETS; j++) {
    lua_pushnumber(L, (double)b[j]);
    lua_rawseti(L, -2, (int)j + 1);
  }
  lua_setfield(L, -2, "buckets");
}


/* The loop lag a slot shows now: the longest entry of the last 10-20 s. */
static double slot_lag(const ls_wslot_t *ws, uint64_t now) {
  uint64_t age = now - ws->lag_window;
  uint64_t a = ws->lag_ns[0], b = ws->lag_ns[1];
  if (age >= 2 * LS__LAG_WINDOW_NS)
    return 0;
  if (age >= LS__LAG_WINDOW_NS)
    return (double)a / 1e9;
  return (double)(a > b ? a : b) / 1e9;
}


/* metrics_snapshot(): the totals of every worker: { bounds, series = {
 * {route, method, status, count, sum, buckets} }, conns, inflight,
 * pool_threads, pool_busy, pool_queued, workers = { {slot, pid, lag} },
 * nworkers, restarts, dict = {count, bytes, capacity, evicted} }. */
int ls__lua_metrics_snapshot(lua_State *L) {
  ls_shm_t *h = check_region(L);
  lua_createtable(L, 0, 12);
  lua_createtable(L, LS_METRIC_BUCKETS - 1, 0);
  for (unsigned j = 0; j < LS_METRIC_BUCKETS - 1; j++) {
    lua_pushnumber(L, bounds[j]);
    lua_rawseti(L, -2, (int)j + 1);
  }
  lua_setfield(L, -2, "bounds");
  uint32_t n = __atomic_load_n(&h->nseries, __ATOMIC_ACQUIRE);
  lua_createtable(L, (int)n, 0);
  int k = 0;
  for (uint32_t i = 0; i < h->max_series; i++) {
    if (i >= n && i != h->max_series - 1)
      continue;
    if (keys(h)[i].len == 0)
      continue;
    push_series(L, h, i);
    if (lua_isnil(L, -1))
      lua_pop(L, 1);
    else
      lua_rawseti(L, -2, ++k);
  }
  lua_setfield(L, -2, "series");
  double conns = 0, inflight = 0, threads = 0, busy = 0, queued = 0;
  uint64_t now = uv_hrtime();
  unsigned alive = 0;
  lua_newtable(L);
  for (unsigned s = 0; s < h->nslots; s++) {
    ls_wslot_t *ws = ls__shm_slot(h, s);
    if (ws->pid == 0)
      continue;
    conns += (double)ws->conns;
    inflight += (double)ws->inflight;
    threads += (double)ws->pool_threads;
    busy += (double)ws->pool_busy;
    queued += (double)ws->pool_queued;
    lua_createtable(L, 0, 3);
    set_num(L, "slot", s);
    set_num(L, "pid", ws->pid);
    set_num(L, "lag", slot_lag(ws, now));
    lua_rawseti(L, -2, (int)++alive);
  }
  lua_setfield(L, -2, "workers");
  set_num(L, "conns", conns);
  set_num(L, "inflight", inflight);
  set_num(L, "pool_threads", threads);
  set_num(L, "pool_busy", busy);
  set_num(L, "pool_queued", queued);
  set_num(L, "nworkers", h->workers ? h->workers : alive);
  set_num(L, "restarts", (double)h->restarts);
  ls_dict_t *d = ls__shm_dict(h);
  ls_dict_stats_t st;
  ls__dict_lock(d);
  ls__dict_stats(d, &st);
  ls__dict_unlock(d);
  lua_createtable(L, 0, 4);
  set_num(L, "count", (double)st.count);
  set_num(L, "bytes", (double)st.bytes);
  set_num(L, "capacity", (double)st.capacity);
  set_num(L, "evicted", (double)st.evicted);
  lua_setfield(L, -2, "dict");
  return 1;
}
