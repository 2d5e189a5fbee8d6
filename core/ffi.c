/* ffi.c: the calls a request makes most, for LuaJIT's FFI (declared in
 * lua/luaserve/ffi.lua). A compiled trace calls these in line, where a
 * lua_CFunction ends the trace (it resumes, stitched, after the call).
 * Each takes its Lua state's runtime (core.runtime()) and never touches a
 * Lua state: during an FFI call from compiled code the state's stack is
 * not in order, so nothing here may call Lua or the Lua C API, even
 * indirectly. What could (a target to resolve, a streamed body) is left
 * to the classic functions: ls_ffi_respond says -1 and does nothing. */
#include "internal.h"

/* The exported names are the declarations ffi.lua makes; nothing in C
 * calls them. */
double ls_ffi_now_ms(ls_runtime_t *rt);
double ls_ffi_hrtime(void);
int ls_ffi_respond(ls_runtime_t *rt, double handle, int status,
                   const char *body, size_t blen, const char *ctype,
                   size_t ctlen);
int ls_ffi_peer(ls_runtime_t *rt, double handle, const char **host);


/* now_ms(), read now (as core.now_ms). */
double ls_ffi_now_ms(ls_runtime_t *rt) {
  uv_update_time(rt->loop);
  return (double)uv_now(rt->loop);
}


/* hrtime(): seconds (as core.hrtime). */
double ls_ffi_hrtime(void) {
  return (double)uv_hrtime() / 1e9;
}


/* respond(handle, status, body, content_type) with no header table and
 * nothing to tell when written (as core.respond): 1 answered, 0 the
 * request is over (its client left), -1 not for this path: nothing was
 * done, call core.respond. */
int ls_ffi_respond(ls_runtime_t *rt, double handle, int status,
                   const char *body, size_t blen, const char *ctype,
                   size_t ctlen) {
  ls_conn_t *c = ls__slot_get(rt, handle);
  if (c == NULL)
    return 0;
  /* A request that waited (a sleep, an upstream call) finds its connection
   * out of the caches: the answer reads and writes a dozen of its cache
   * lines, one after another. Asked for at once, their misses overlap. */
#pragma GCC unroll 16   /* one instruction per 64-byte line (13), not a loop */
  for (size_t off = 0; off < sizeof(*c); off += 64)
    __builtin_prefetch((const char *)c + off, 1);
  if (c->lua_holds == 0)
    return 0;
  /* Anything whose end may concern Lua goes the classic way. */
  if (c->state != LS_CONN_BUSY || c->streaming || c->body_stream ||
      c->send || c->drain_ref || c->body_ref || c->written_refs.len ||
      status < 100 || status > 999)
    return -1;
  int err = ls__http_format_head(NULL, c, status, ctype, ctlen, blen, 0);
  if (err == UV_EINVAL)   /* a content type with CR or LF: core.respond */
    return -1;            /* raises it (nothing was written) */
  err = ls__respond_whole(c, err, body, blen);
  ls__conn_request_done(c);
  return err ? 0 : 1;
}


/* peer(handle) (as core.peer): the client's port, with *host its address
 * (the connection's, valid while the request holds it); -1 the request
 * is over, -2 the address is unknown. */
int ls_ffi_peer(ls_runtime_t *rt, double handle, const char **host) {
  ls_conn_t *c = ls__slot_get(rt, handle);
  if (c == NULL || c->lua_holds == 0)
    return -1;
  if (c->peer_host[0] == '\0')
    return -2;
  *host = c->peer_host;
  return c->peer_port;
}
