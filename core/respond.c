/* respond.c: the Lua side of a request in the core: respond (a whole
 * response), respond_start / write_chunk / respond_end (a streamed one,
 * with back-pressure), release (a request Lua will not answer), peer and
 * tls_info. A request is the number dispatch() gave Lua, a checked handle:
 * once the request is answered, released or its connection is gone, the
 * handle is stale and these calls give nil, "closed" (respond_start,
 * write_chunk, peer) or do nothing. Loop thread only. */
#include <stdio.h>

#include "internal.h"


/* The connection of the request handle at idx, or NULL: the request is
 * over. */
#define check_conn ls__conn_lookup

static int push_closed(lua_State *L) {
  lua_pushnil(L);
  lua_pushliteral(L, "closed");
  return 2;
}


/* The index of an optional target argument: 0 when it was not given (read
 * at entry, before anything is pushed). */
static int target_arg(lua_State *L, int idx) {
  return lua_gettop(L) >= idx && !lua_isnil(L, idx) ? idx : 0;
}


/* After an answer is written or queued: with a target (stack idx, 0:
 * none) and output still queued, the target waits for it to be written;
 * push true, and true again when it waits. */
static int push_written(lua_State *L, ls_conn_t *c, int idx) {
  int waits = idx > 0 && ls__stream_queued(&c->stream) > 0 &&
              c->state != LS_CONN_CLOSING && ls__conn_when_written(c, L, idx) == 0;
  lua_pushboolean(L, 1);
  if (!waits)
    return 1;
  lua_pushboolean(L, 1);
  return 2;
}


/* Write the head formatted in c->out (err: formatting failed) and the
 * body; a buffer grown big is let go. The request ends, and on a write
 * error (the client is gone: a reset, a broken pipe) so does the
 * connection. Returns 0 or the error. Calls no Lua: ffi.c uses it. */
int ls__respond_whole(ls_conn_t *c, int err, const char *body, size_t blen) {
  uv_buf_t bufs[2] = {
    uv_buf_init(c->out.data, (unsigned)c->out.len),
    uv_buf_init((char *)body, (unsigned)blen),
  };
  if (err == 0)
    err = ls__conn_write(c, bufs, c->is_head || blen == 0 ? 1 : 2);
  if (c->out.cap > 4096)
    ls__buf_free(&c->out);
  else
    c->out.len = 0;
  if (err)
    ls__conn_close(c);
  return err;
}


/* respond(handle, status, body, content_type, headers|nil, written|nil):
 * true, or nil, "closed" when the client is gone (or the request was
 * over). Ends the request either way. With a target `written`, a second
 * true says the answer is still queued: the target gets true once it is
 * written, or nil, "closed". */
int ls__lua_respond(lua_State *L) {
  ls_conn_t *c = check_conn(L, 1);
  int status = (int)luaL_checkinteger(L, 2);
  size_t blen, ctlen = 0;
  const char *body = luaL_optlstring(L, 3, "", &blen);
  const char *ctype = luaL_optlstring(L, 4, NULL, &ctlen);
  int headers = lua_istable(L, 5) ? 5 : 0;
  int written = target_arg(L, 6);
  if (c == NULL || c->lua_holds == 0)
    return push_closed(L);
  if (c->state == LS_CONN_CLOSING) {
    ls__conn_request_done(c);
    return push_closed(L);
  }
  if (status < 100 || status > 999)
    return luaL_error(L, "respond: bad status %d", status);
  int err = ls__http_format_head(L, c, status, ctype, ctlen, blen, headers);
  if (ls__respond_whole(c, err, body, blen)) {
    ls__conn_request_done(c);
    return push_closed(L);
  }
  int n = push_written(L, c, written);
  ls__conn_request_done(c);
  return n;
}


/* respond_start(handle, status, content_type, headers|nil): write the head
 * of a streamed response: chunked, or for an HTTP/1.0 client delimited by
 * the close. true, or nil, "closed". Lua keeps the request until
 * respond_end. */
int ls__lua_respond_start(lua_State *L) {
  ls_conn_t *c = check_conn(L, 1);
  int status = (int)luaL_checkinteger(L, 2);
  size_t ctlen = 0;
  const char *ctype = luaL_optlstring(L, 3, NULL, &ctlen);
  int headers = lua_istable(L, 4) ? 4 : 0;
  if (status < 200 || status > 999 || status == 204 || status == 304)
    return luaL_error(L, "respond_start: status %d cannot have a body", status);
  if (c == NULL || c->lua_holds == 0 || c->state == LS_CONN_CLOSING)
    return push_closed(L);
  if (c->streaming)
    return luaL_error(L, "respond_start: this request was already answered");
  if (c->parser.http_major == 1 && c->parser.http_minor == 0)
    c->keepalive = 0;   /* no chunked encoding: the close ends the body */
  int err = ls__http_format_head(L, c, status, ctype, ctlen, LS__STREAMED,
                                 headers);   /* raises on a bad header */
  c->streaming = 1;
  uv_buf_t b = uv_buf_init(c->out.data, (unsigned)c->out.len);
  if (err == 0)
    err = ls__conn_write(c, &b, 1);
  c->out.len = 0;
  if (err) {
    ls__conn_close(c);
    return push_closed(L);
  }
  lua_pushboolean(L, 1);
  return 1;
}


/* write_chunk(handle, data, target): true when the socket took it now;
 * false when it is queued behind a full socket: target then gets true once
 * the queue is written, or nil, "closed" (back-pressure); nil, "closed"
 * when the client is gone or the request is over. */
int ls__lua_write_chunk(lua_State *L) {
  ls_conn_t *c = check_conn(L, 1);
  size_t len;
  const char *data = luaL_checklstring(L, 2, &len);
  if (c == NULL || c->lua_holds == 0 || c->state == LS_CONN_CLOSING)
    return push_closed(L);
  if (!c->streaming)
    return luaL_error(L, "write_chunk: no streamed response in progress");
  if (len == 0 || c->is_head) {
    lua_pushboolean(L, 1);
    return 1;
  }
  char size[24];
  int n = c->keepalive || c->parser.http_minor > 0
              ? snprintf(size, sizeof(size), "%zx\r\n", len) : 0;
  uv_buf_t bufs[3] = {
    uv_buf_init(size, (unsigned)n),
    uv_buf_init((char *)data, (unsigned)len),
    uv_buf_init("\r\n", n ? 2 : 0),
  };
  int err = ls__conn_write(c, bufs, 3);
  if (err) {   /* a reset, a broken pipe: the client is gone */
    ls__conn_close(c);
    return push_closed(L);
  }
  if (!ls__stream_blocked(&c->stream)) {   /* written, or corked: soon */
    lua_pushboolean(L, 1);
    return 1;
  }
  luaL_checkany(L, 3);
  if (c->drain_ref > 0)
    return luaL_error(L, "write_chunk: a write is already waiting");
  lua_pushvalue(L, 3);
  c->drain_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_pushboolean(L, 0);
  return 1;
}


/* respond_end(handle, abort, written|nil): the last chunk, and the
 * request is done; with abort true the connection is closed instead (an
 * error mid-stream: the client must not take a cut body for a whole one).
 * Ends the request; nothing when it was over. Returns true, and true again
 * when the target `written` waits for the rest to be written (respond). */
int ls__lua_respond_end(lua_State *L) {
  ls_conn_t *c = check_conn(L, 1);
  int abort = lua_toboolean(L, 2);
  int written = target_arg(L, 3);
  if (c == NULL || c->lua_holds == 0)
    return 0;
  if (!c->streaming)
    return luaL_error(L, "respond_end: no streamed response in progress");
  c->streaming = 0;
  if (c->drain_ref > 0)
    luaL_unref(L, LUA_REGISTRYINDEX, c->drain_ref);
  c->drain_ref = 0;
  if (abort) {
    c->keepalive = 0;
    if (c->state != LS_CONN_CLOSING)
      ls__conn_close(c);
  } else if (c->state != LS_CONN_CLOSING && !c->is_head &&
             (c->keepalive || c->parser.http_minor > 0)) {
    uv_buf_t b = uv_buf_init("0\r\n\r\n", 5);
    if (ls__conn_write(c, &b, 1) != 0)
      ls__conn_close(c);
  }
  int n = push_written(L, c, written);
  ls__conn_request_done(c);
  return n;
}


/* release(handle): Lua is done with a request it will not answer (its
 * client went away). */
int ls__lua_release(lua_State *L) {
  ls_conn_t *c = check_conn(L, 1);
  if (c && c->lua_holds > 0) {
    if (c->state != LS_CONN_CLOSING)
      ls__conn_close(c);
    ls__conn_request_done(c);
  }
  return 0;
}


/* peer(handle): the client's address and port; nothing if unknown; nil,
 * "closed" when the request is over. */
int ls__lua_peer(lua_State *L) {
  ls_conn_t *c = check_conn(L, 1);
  if (c == NULL || c->lua_holds == 0)
    return push_closed(L);
  if (c->peer_host[0] == '\0')
    return 0;
  lua_pushstring(L, c->peer_host);
  lua_pushinteger(L, c->peer_port);
  return 2;
}


/* tls_info(handle): {version, cipher, alpn, peer_subject, peer_verified}
 * of a TLS connection; nothing for plain TCP; nil, "closed" when the
 * request is over. */
int ls__lua_tls_info(lua_State *L) {
  ls_conn_t *c = check_conn(L, 1);
  if (c == NULL || c->lua_holds == 0)
    return push_closed(L);
  if (c->stream.tls == NULL)
    return 0;
  ls__tls_push_info(L, c->stream.tls);
  return 1;
}
