/* runtime.c: a Lua state bound to a libuv loop. Creates the state, sets its
 * package paths, registers the core module, and is the one place C calls
 * into Lua (protected, with a traceback) and the one place errors are
 * logged. Each runtime is used by one thread only. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lualib.h>

#include "internal.h"

static const char runtime_key = 'r';   /* registry key of the runtime */

static const char *const errnames[] = {
#define XX(name, msg) msg,
  LS_ERRNO_MAP(XX)
#undef XX
};


const char *ls_strerror(int err) {
  if (err > LS__ERRNO_BASE && err <= LS__ERRNO_BASE + (int)(sizeof(errnames) /
                                                     sizeof(errnames[0])))
    return errnames[err - LS__ERRNO_BASE - 1];
  if (err == UV_ECONNREFUSED)
    return "connection refused";
  if (err == UV_EOF)
    return "closed";
  if (err == UV_ETIMEDOUT)
    return "timeout";
  return uv_strerror(err);
}


int ls__push_error(lua_State *L, int err) {
  lua_pushnil(L);
  lua_pushstring(L, ls_strerror(err));
  return 2;
}


ls_runtime_t *ls__runtime(lua_State *L) {
  lua_pushlightuserdata(L, (void *)&runtime_key);
  lua_rawget(L, LUA_REGISTRYINDEX);
  ls_runtime_t *rt = lua_touserdata(L, -1);
  lua_pop(L, 1);
  return rt;
}


/* lua_pcall with the traceback handler, on the runtime's state. */
static int pcall_rt(ls_runtime_t *rt, int nargs, int nresults,
                    const char *what) {
  lua_State *L = rt->L;
  int base = lua_gettop(L) - nargs;   /* the function's index */
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->traceback_ref);
  lua_insert(L, base);
  int status = lua_pcall(L, nargs, nresults, base);
  lua_remove(L, base);
  if (status != 0) {
    const char *msg = lua_tostring(L, -1);
    ls__log("error", "%s: %s", what, msg ? msg : "(error object is not a string)");
    lua_pop(L, 1);
  }
  return status;
}


int ls__pcall(lua_State *L, int nargs, int nresults, const char *what) {
  return pcall_rt(ls__runtime(L), nargs, nresults, what);
}


int ls__pcall_entry(ls_runtime_t *rt, int nargs, const char *what) {
  /* Inside core.run_once (an await outside a task: the loop runs until a
   * future is done), Lua ran: end the iteration instead of polling on, so
   * that the awaiting code looks at its future again. */
  if (rt->in_run_once)
    uv_stop(rt->loop);
  if (rt->block_warn_ns == 0 && !rt->wslot_shared)
    return pcall_rt(rt, nargs, 0, what);
  uint64_t t0 = uv_hrtime();
  /* Workers publish the entry (the master's heartbeat check) and keep
   * its length (the loop lag metric). */
  if (rt->wslot_shared)
    rt->wslot->entry_t0 = t0;
  int status = pcall_rt(rt, nargs, 0, what);
  uint64_t t1 = uv_hrtime(), dt = t1 - t0;
  if (rt->wslot_shared)
    ls__wslot_entry_done(rt->wslot, t1, dt);
  if (rt->block_warn_ns && dt >= rt->block_warn_ns && !rt->closing) {
    lua_rawgeti(rt->L, LUA_REGISTRYINDEX, rt->blocked_ref);
    lua_pushnumber(rt->L, (double)dt / 1e9);
    pcall_rt(rt, 1, 0, "blocked");
  }
  return status;
}


void ls__resolve(ls_runtime_t *rt, int target_ref, int nargs) {
  lua_State *L = rt->L;
  if (rt->closing) {
    lua_pop(L, nargs);
    return;
  }
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->resolve_ref);
  lua_rawgeti(L, LUA_REGISTRYINDEX, target_ref);
  luaL_unref(L, LUA_REGISTRYINDEX, target_ref);
  lua_insert(L, -2 - nargs);
  lua_insert(L, -2 - nargs);
  ls__pcall_entry(rt, nargs + 1, "resolve");
}


/* ---- deferred work ------------------------------------------------------
 * C never calls back into Lua from inside a Lua call (a resume must never
 * nest in a running task). What a call into C sets in motion, a close that
 * must tell Lua, pipelined bytes to parse after an answer, goes on a queue
 * that the loop runs: the idle handle runs it before the loop would wait
 * (and keeps it from waiting while work is queued), the check handle right
 * after the I/O callbacks of the iteration. */

static void defer_run(ls_runtime_t *rt) {
  ls_defer_t *d;
  while ((d = rt->defer_head) != NULL && !rt->closing) {
    rt->defer_head = d->next;
    if (rt->defer_head) rt->defer_head->prev = NULL; else rt->defer_tail = NULL;
    d->next = d->prev = NULL;
    d->queued = 0;
    d->cb(d);
  }
  uv_idle_stop(&rt->defer_idle);
}


static void defer_on_idle(uv_idle_t *h) {
  defer_run(h->data);
}


static void defer_on_check(uv_check_t *h) {
  ls_runtime_t *rt = h->data;
  if (rt->defer_head)
    defer_run(rt);
}


void ls__defer(ls_runtime_t *rt, ls_defer_t *d, ls_defer_cb cb) {
  if (d->queued || rt->closing)
    return;
  d->cb = cb;
  d->queued = 1;
  d->next = NULL;
  d->prev = rt->defer_tail;
  if (rt->defer_tail) rt->defer_tail->next = d; else rt->defer_head = d;
  rt->defer_tail = d;
  if (!uv_is_active((uv_handle_t *)&rt->defer_idle))
    uv_idle_start(&rt->defer_idle, defer_on_idle);
}


void ls__defer_cancel(ls_runtime_t *rt, ls_defer_t *d) {
  if (!d->queued)
    return;
  if (d->prev) d->prev->next = d->next; else rt->defer_head = d->next;
  if (d->next) d->next->prev = d->prev; else rt->defer_tail = d->prev;
  d->next = d->prev = NULL;
  d->queued = 0;
}


/* ---- handles --------------------------------------------------------------
 * A handle is gen * LS__SLOT_SPAN + index, a number Lua can hold and
 * compare (exact up to 2^53). Each new handle of a slot bumps its
 * generation, so every earlier one goes stale. */

#define LS__SLOT_SPAN 4194304.0   /* 2^22 slots */
#define LS__SLOT_GENS 0x3fffffffu /* generations wrap below 2^30 */

uint32_t ls__slot_new(ls_runtime_t *rt, void *ptr) {
  uint32_t idx;
  if (rt->slot_free) {
    idx = rt->slot_free - 1;
    rt->slot_free = rt->slots[idx].next_free;
  } else {
    if (rt->nslots == rt->slot_cap) {
      uint32_t cap = rt->slot_cap ? rt->slot_cap * 2 : 256;
      if (cap > (uint32_t)LS__SLOT_SPAN)
        return UINT32_MAX;
      ls_slot_t *p = realloc(rt->slots, cap * sizeof(*p));
      if (p == NULL)
        return UINT32_MAX;
      rt->slots = p;
      rt->slot_cap = cap;
    }
    idx = rt->nslots++;
    rt->slots[idx].gen = 0;
  }
  rt->slots[idx].ptr = ptr;
  rt->slots[idx].next_free = 0;
  return idx;
}


void ls__slot_free(ls_runtime_t *rt, uint32_t idx) {
  ls_slot_t *sl = &rt->slots[idx];
  sl->ptr = NULL;
  sl->gen = (sl->gen + 1) & LS__SLOT_GENS;
  sl->next_free = rt->slot_free;
  rt->slot_free = idx + 1;
}


double ls__slot_next(ls_runtime_t *rt, uint32_t idx) {
  ls_slot_t *sl = &rt->slots[idx];
  sl->gen = (sl->gen + 1) & LS__SLOT_GENS;
  return (double)sl->gen * LS__SLOT_SPAN + (double)idx;
}


void *ls__slot_get(ls_runtime_t *rt, double handle) {
  if (!(handle >= 0 && handle < LS__SLOT_SPAN * (LS__SLOT_GENS + 1.0)))
    return NULL;
  uint64_t h = (uint64_t)handle;
  uint32_t idx = (uint32_t)(h & ((uint64_t)LS__SLOT_SPAN - 1));
  uint32_t gen = (uint32_t)(h / (uint64_t)LS__SLOT_SPAN);
  if (idx >= rt->nslots || rt->slots[idx].gen != gen || (double)h != handle)
    return NULL;
  return rt->slots[idx].ptr;
}


void ls__read_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  ls_runtime_t *rt = h->loop->data;
  (void)hint;
  if (rt->read_buf == NULL)
    rt->read_buf = malloc(LS__READ_BUF);
  if (rt->read_buf != NULL && !rt->read_buf_busy) {
    rt->read_buf_busy = 1;
    *buf = uv_buf_init(rt->read_buf, LS__READ_BUF);
  } else {   /* a nested read (never on one thread in practice): its own */
    char *p = malloc(LS__READ_BUF);
    *buf = uv_buf_init(p, p ? LS__READ_BUF : 0);
  }
}


void ls__read_done(uv_handle_t *h, const uv_buf_t *buf) {
  ls_runtime_t *rt = h->loop->data;
  if (buf->base == rt->read_buf)
    rt->read_buf_busy = 0;
  else
    free(buf->base);
}


void ls__new_class(lua_State *L, const char *name, const luaL_Reg *methods,
                   lua_CFunction gc) {
  luaL_newmetatable(L, name);
  lua_pushstring(L, name);
  lua_setfield(L, -2, "__name");
  if (gc) {
    lua_pushcfunction(L, gc);
    lua_setfield(L, -2, "__gc");
  }
  if (methods) {
    lua_newtable(L);
    luaL_register(L, NULL, methods);
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
}


int ls__format_addr(const struct sockaddr_storage *addr, char *host,
                    size_t size) {
  if (addr->ss_family == AF_INET6) {
    const struct sockaddr_in6 *a6 = (const struct sockaddr_in6 *)addr;
    uv_ip6_name(a6, host, size);
    return ntohs(a6->sin6_port);
  }
  const struct sockaddr_in *a4 = (const struct sockaddr_in *)addr;
  uv_ip4_name(a4, host, size);
  return ntohs(a4->sin_port);
}


int ls__push_addr(lua_State *L, const struct sockaddr_storage *addr) {
  char host[64];
  int port = ls__format_addr(addr, host, sizeof(host));
  lua_pushstring(L, host);
  lua_pushinteger(L, port);
  return 2;
}


/* init(resolve): the Lua function C calls with I/O results. */
static int core_init(lua_State *L) {
  ls_runtime_t *rt = ls__runtime(L);
  luaL_checktype(L, 1, LUA_TFUNCTION);
  if (rt->resolve_ref != LUA_NOREF)
    luaL_unref(L, LUA_REGISTRYINDEX, rt->resolve_ref);
  lua_pushvalue(L, 1);
  rt->resolve_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  return 0;
}


/* watch_blocking(seconds, fn): after any entry from the loop into Lua (a
 * request dispatched, an I/O result) that held the loop at least that
 * long, fn(seconds_held) is called. 0 turns it off. Not in pool states:
 * blocking is what their threads are for. */
static int core_watch_blocking(lua_State *L) {
  ls_runtime_t *rt = ls__runtime(L);
  double s = luaL_checknumber(L, 1);
  if (rt->blocked_ref > 0)
    luaL_unref(L, LUA_REGISTRYINDEX, rt->blocked_ref);
  rt->blocked_ref = 0;
  rt->block_warn_ns = 0;
  if (s > 0 && !rt->is_pool_state) {
    luaL_checktype(L, 2, LUA_TFUNCTION);
    lua_pushvalue(L, 2);
    rt->blocked_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    rt->block_warn_ns = (uint64_t)(s * 1e9);
  }
  return 0;
}




/* runtime(): this state's runtime, for the FFI calls (ffi.lua). */
static int core_runtime(lua_State *L) {
  lua_pushlightuserdata(L, ls__runtime(L));
  return 1;
}


/* is_pool_state(): true in a pool thread's state. */
static int core_is_pool_state(lua_State *L) {
  lua_pushboolean(L, ls__runtime(L)->is_pool_state);
  return 1;
}


static const luaL_Reg core_functions[] = {
  {"init", core_init},
  {"is_pool_state", core_is_pool_state},
  {"runtime", core_runtime},
  {"watch_blocking", core_watch_blocking},
  {"log", ls__lua_log},
  {"log_access", ls__lua_log_access},
  {"log_flush", ls__lua_log_flush},
  {"log_config", ls__lua_log_config},
  {"listen", ls__lua_listen},
  {"respond", ls__lua_respond},
  {"release", ls__lua_release},
  {"respond_start", ls__lua_respond_start},
  {"write_chunk", ls__lua_write_chunk},
  {"respond_end", ls__lua_respond_end},
  {"peer", ls__lua_peer},
  {"unpack_headers", ls__lua_unpack_headers},
  {"tls_info", ls__lua_tls_info},
  {"tls_server_context", ls__lua_tls_server_context},
  {"tls_client_context", ls__lua_tls_client_context},
  {"shutdown_on_signals", ls__lua_shutdown_on_signals},
  {"timer", ls__lua_timer},
  {"now", ls__lua_now},
  {"hrtime", ls__lua_hrtime},
  {"run", ls__lua_run},
  {"run_once", ls__lua_run_once},
  {"stop", ls__lua_stop},
  {"tcp_connect", ls__lua_tcp_connect},
  {"resolve_sync", ls__lua_resolve_sync},
  {"now_ms", ls__lua_now_ms},
  {"sleep_init", ls__lua_sleep_init},
  {"sleep_arm", ls__lua_sleep_arm},
  {"response_parser", ls__lua_response_parser},
  {"gzip", ls__lua_gzip},
  {"gunzip", ls__lua_gunzip},
  {"deflater", ls__lua_deflater},
  {"random_hex", ls__lua_random_hex},
  {"ws_accept_key", ls__lua_ws_accept_key},
  {"base64", ls__lua_base64},
  {"ws_accept", ls__lua_ws_accept},
  {"spawn", ls__lua_spawn},
  {"watch", ls__lua_watch},
  {"scandir", ls__lua_scandir},
  {"on_signal", ls__lua_on_signal},
  {"exepath", ls__lua_exepath},
  {"copy", ls__lua_copy},
  {"copy_register", ls__lua_copy_register},
  {"pool_start", ls__lua_pool_start},
  {"pool_submit", ls__lua_pool_submit},
  {"pool_cancel", ls__lua_pool_cancel},
  {"pool_stats", ls__lua_pool_stats},
  {"pool_stop", ls__lua_pool_stop},
  {"shared_get", ls__lua_shared_get},
  {"shared_set", ls__lua_shared_set},
  {"shared_add", ls__lua_shared_add},
  {"shared_incr", ls__lua_shared_incr},
  {"shared_delete", ls__lua_shared_delete},
  {"shared_ttl", ls__lua_shared_ttl},
  {"shared_keys", ls__lua_shared_keys},
  {"shared_flush_all", ls__lua_shared_flush_all},
  {"shared_stats", ls__lua_shared_stats},
  {"shared_configure", ls__lua_shared_configure},
  {"pg_connect", ls__lua_pg_connect},
  {"pg_init", ls__lua_pg_init},
  {"redis_reader", ls__lua_redis_reader},
  {"redis_format", ls__lua_redis_format},
  /* issue 14: streamed request bodies, crypto, files */
  {"body_read", ls__lua_body_read},
  {"sha256", ls__lua_sha256},
  {"sha256_new", ls__lua_sha256_new},
  {"hmac_sha256", ls__lua_hmac_sha256},
  {"random_bytes", ls__lua_random_bytes},
  {"const_equal", ls__lua_const_equal},
  {"to_hex", ls__lua_to_hex},
  {"fs_open", ls__lua_fs_open},
  {"fs_mkstemp", ls__lua_fs_mkstemp},
  {"fs_write", ls__lua_fs_write},
  {"fs_read", ls__lua_fs_read},
  {"fs_close", ls__lua_fs_close},
  {"fs_unlink", ls__lua_fs_unlink},
  {"fs_rename", ls__lua_fs_rename},
  {"fs_copyfile", ls__lua_fs_copyfile},
  {"fs_stat", ls__lua_fs_stat},
  /* workers, shared memory, metrics (issue 9) */
  {"shm_init", ls__lua_shm_init},
  {"shared_safe_set", ls__lua_shared_safe_set},
  {"shared_safe_add", ls__lua_shared_safe_add},
  {"shared_verify", ls__lua_shared_verify},
  {"master_open", ls__lua_master_open},
  {"master_close", ls__lua_master_close},
  {"master_wait", ls__lua_master_wait},
  {"master_fork", ls__lua_master_fork},
  {"master_figures", ls__lua_master_figures},
  {"kill", ls__lua_kill},
  {"slot_info", ls__lua_slot_info},
  {"slot_release", ls__lua_slot_release},
  {"shared_recover", ls__lua_shared_recover},
  {"listen_socket", ls__lua_listen_socket},
  {"worker_notify", ls__lua_worker_notify},
  {"worker_beat", ls__lua_worker_beat},
  {"worker_running", ls__lua_worker_running},
  {"worker_attach", ls__lua_worker_attach},
  {"worker_slot", ls__lua_worker_slot},
  {"getpid", ls__lua_getpid},
  {"metrics_series", ls__lua_metrics_series},
  {"metrics_observe", ls__lua_metrics_observe},
  {"metrics_snapshot", ls__lua_metrics_snapshot},
  {"cpus", ls__lua_cpus},
  {"file_open", ls__lua_file_open},
  {"dir_list", ls__lua_dir_list},
  {"respond_file", ls__lua_respond_file},
  /* issue 13: JSON encoding in C */
  {"json_encoder", ls__lua_json_encoder},
  {NULL, NULL},
};


static int core_open(lua_State *L) {
  lua_newtable(L);
  /* Every core function has the runtime as its upvalue (LS__RT): the
   * hot ones find it without a registry look-up. */
  lua_pushlightuserdata(L, ls__runtime(L));
  luaL_openlib(L, NULL, core_functions, 1);
  lua_pushliteral(L, LS_VERSION);
  lua_setfield(L, -2, "version");
  /* a handle's slot is handle % SLOT_SPAN: stable across its generations */
  lua_pushnumber(L, LS__SLOT_SPAN);
  lua_setfield(L, -2, "SLOT_SPAN");
  ls__server_open(L);
  ls__timer_open(L);
  ls__tcp_open(L);
  ls__client_open(L);
  ls__pool_open(L);
  ls__tls_open(L);
  ls__compress_open(L);
  ls__proc_open(L);
  ls__ws_open(L);
  ls__pg_open(L);
  ls__redis_open(L);
  ls__crypto_open(L);
  ls__static_open(L);
  return 1;
}


ls_runtime_t *ls_runtime_new(uv_loop_t *loop, const char *lua_dir) {
  ls_runtime_t *rt = calloc(1, sizeof(*rt));
  if (rt == NULL)
    return NULL;
  lua_State *L = luaL_newstate();
  if (L == NULL) {
    free(rt);
    return NULL;
  }
  rt->loop = loop;
  rt->L = L;
  rt->resolve_ref = LUA_NOREF;
  rt->lua_dir = strdup(lua_dir);
  if (rt->lua_dir == NULL) {
    lua_close(L);
    free(rt);
    return NULL;
  }
  rt->wslot = &ls__wslot_local;
  loop->data = rt;
  uv_timer_init(loop, &rt->sleep_timer);
  rt->sleep_timer.data = rt;
  ls__stream_deadlines_init(rt);
  uv_idle_init(loop, &rt->defer_idle);
  uv_check_init(loop, &rt->defer_check);
  rt->defer_idle.data = rt->defer_check.data = rt;
  uv_check_start(&rt->defer_check, defer_on_check);
  uv_unref((uv_handle_t *)&rt->defer_check);
  luaL_openlibs(L);
  lua_pushlightuserdata(L, (void *)&runtime_key);
  lua_pushlightuserdata(L, rt);
  lua_rawset(L, LUA_REGISTRYINDEX);

  lua_getglobal(L, "debug");
  lua_getfield(L, -1, "traceback");
  rt->traceback_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_pop(L, 1);

  /* package.path: the framework first, then what the system has. */
  lua_getglobal(L, "package");
  lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;", lua_dir, lua_dir);
  lua_getfield(L, -2, "path");
  lua_concat(L, 2);
  lua_setfield(L, -2, "path");
  lua_getfield(L, -1, "preload");
  lua_pushcfunction(L, core_open);
  lua_setfield(L, -2, LS__CORE_MODULE);
  lua_pop(L, 2);
  return rt;
}


lua_State *ls_runtime_state(ls_runtime_t *rt) {
  return rt->L;
}


static void close_leftover(uv_handle_t *h, void *arg) {
  (void)arg;
  if (!uv_is_closing(h))
    uv_close(h, NULL);
}


void ls_runtime_free(ls_runtime_t *rt) {
  rt->closing = 1;
  /* Nothing deferred runs any more; owners may be freed. */
  while (rt->defer_head)
    ls__defer_cancel(rt, rt->defer_head);
  /* The pool first: its threads are joined before the state they report
   * to closes. Pool states never serve: the server list is the main's. */
  ls__pool_free(rt);
  if (!rt->is_pool_state)
    ls__server_close_all(rt);
  /* Finalizers of timers and sockets close their handles; their close
   * callbacks free the C side without entering Lua (rt->closing). */
  lua_close(rt->L);
  rt->L = NULL;
  uv_close((uv_handle_t *)&rt->sleep_timer, NULL);
  ls__stream_deadlines_close(rt);
  uv_close((uv_handle_t *)&rt->defer_idle, NULL);
  uv_close((uv_handle_t *)&rt->defer_check, NULL);
  uv_run(rt->loop, UV_RUN_DEFAULT);
  if (uv_loop_close(rt->loop) == UV_EBUSY) {
    uv_walk(rt->loop, close_leftover, NULL);
    uv_run(rt->loop, UV_RUN_DEFAULT);
    uv_loop_close(rt->loop);
  }
  ls__shared_release(rt);
  ls__compress_free(rt);
  ls__ws_zfree(rt);
  ls__stream_deadlines_free(rt);
  free(rt->slots);
  free(rt->read_buf);
  free(rt->lua_dir);
  free(rt);
}


int ls_runtime_call_main(ls_runtime_t *rt, const char *module, int argc,
                         char **argv) {
  lua_State *L = rt->L;
  lua_getglobal(L, "require");
  lua_pushstring(L, module);
  if (ls__pcall(L, 1, 1, "startup") != 0)
    return 2;
  lua_getfield(L, -1, "main");
  lua_remove(L, -2);
  for (int i = 0; i < argc; i++)
    lua_pushstring(L, argv[i]);
  if (ls__pcall(L, argc, 1, "main") != 0)
    return 2;
  int status = (int)lua_tointeger(L, -1);
  lua_pop(L, 1);
  return status;
}
