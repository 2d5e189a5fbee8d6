/* body.c: streamed request bodies. A multipart/form-data request is
 * dispatched to Lua as soon as its headers are in (http.c pauses there);
 * its body bytes, decoded by llhttp (chunked too), collect in the
 * connection's `body` buffer and Lua takes them with body_read. The buffer
 * is bounded: past LS_BODY_HIGH the connection stops reading from the
 * socket (TCP pushes back on the client) until Lua has taken what waits.
 * A 100 Continue is sent when Lua first reads, so a handler that refuses
 * the upload before reading it never makes the client send it. A handler
 * that answers before the whole body came in gets its answer sent with
 * Connection: close and a lingering close (the rest is discarded, never
 * parsed as a next request). Loop thread only. */
#include "internal.h"

/* Reading from the socket stops while this much waits for Lua. */
#define LS_BODY_HIGH (256 * 1024)


/* Push what a reader gets now: bytes, nil (the end), nil, reason, status
 * (failed or gone). Returns how many values, 0: nothing yet. */
static int body_push(lua_State *L, ls_conn_t *c) {
  if (c->body.len > 0) {
    lua_pushlstring(L, c->body.data, c->body.len);
    c->body.len = 0;
    return 1;
  }
  if (c->body_stream == LS_BODY_END) {
    lua_pushnil(L);
    return 1;
  }
  if (c->body_stream == LS_BODY_FAILED) {
    lua_pushnil(L);
    lua_pushstring(L, c->body_reason);
    lua_pushinteger(L, c->body_status);
    return 3;
  }
  if (c->state == LS_CONN_CLOSING) {
    lua_pushnil(L);
    lua_pushliteral(L, "closed");
    return 2;
  }
  return 0;
}


/* Is there something for a waiting reader? */
static int body_ready(ls_conn_t *c) {
  return c->body.len > 0 || c->body_stream == LS_BODY_END ||
         c->body_stream == LS_BODY_FAILED || c->state == LS_CONN_CLOSING;
}


void ls__body_pump(ls_conn_t *c) {
  if (c->body_stream == LS_BODY_OPEN && c->state == LS_CONN_BUSY) {
    if (c->body.len >= LS_BODY_HIGH) {
      ls__stream_read_stop(&c->stream);
      ls__stream_deadline(&c->stream, 0);   /* Lua is slow, not the client */
    } else if (!c->stream.reading ||
               (c->stream.deadline == 0 && !c->want_continue)) {
      /* A client that pauses longer than the header timeout mid-body is
       * a slow sender: 408. Also one that sent the headers and nothing
       * more (dispatch cleared the deadline; no 100 Continue is owed). */
      ls__stream_deadline(&c->stream, c->server->lim.header_timeout);
      ls__stream_read_start(&c->stream);
    }
  }
  if (c->body_ref > 0 && body_ready(c)) {
    c->notify_body = 1;
    ls__conn_notify(c);
  }
}


void ls__body_ended(ls_conn_t *c) {
  c->body_stream = LS_BODY_END;
  ls__stream_deadline(&c->stream, 0);
  ls__body_pump(c);
}


void ls__body_fail(ls_conn_t *c, int status, const char *reason) {
  c->body_stream = LS_BODY_FAILED;
  c->body_status = status;
  c->body_reason = reason ? reason : ls__http_reason(status);
  c->keepalive = 0;
  c->in_body = 0;
  ls__stream_read_stop(&c->stream);
  ls__stream_deadline(&c->stream, 0);
  ls__body_pump(c);
}


void ls__body_notify(ls_conn_t *c) {
  ls_runtime_t *rt = c->rt;
  if (c->body_ref <= 0 || rt->closing)
    return;
  int n = body_push(rt->L, c);
  if (n == 0)
    return;   /* taken by a read meanwhile: the reader waits on */
  int ref = c->body_ref;
  c->body_ref = 0;
  ls__body_pump(c);   /* room again: read on */
  ls__resolve(rt, ref, n);
}


int ls__body_done(ls_conn_t *c) {
  int unread = c->body_stream != LS_BODY_NONE &&
               c->body_stream != LS_BODY_END;
  if (c->body_ref > 0 && !c->rt->closing)
    luaL_unref(c->rt->L, LUA_REGISTRYINDEX, c->body_ref);
  c->body_ref = 0;
  c->notify_body = 0;
  c->want_continue = 0;
  c->body_stream = LS_BODY_NONE;
  ls__buf_free(&c->body);
  return unread;
}


/* body_read(handle, target): the next bytes of a streamed body (all that
 * wait, at most LS_BODY_HIGH plus one read); nil at its end; nil, reason,
 * status when it failed (413 too large, 400 malformed, 408 too slow) or
 * nil, "closed" once the client is gone or the request over. false when
 * nothing is there yet: target gets one of the above later (a new read
 * replaces a reader that was cancelled). */
int ls__lua_body_read(lua_State *L) {
  ls_conn_t *c = ls__conn_lookup(L, 1);
  if (c == NULL || c->lua_holds == 0) {
    lua_pushnil(L);
    lua_pushliteral(L, "closed");
    return 2;
  }
  if (c->body_stream == LS_BODY_NONE)
    return luaL_error(L, "body_read: the request's body is not streamed");
  if (c->want_continue) {
    c->want_continue = 0;
    if (c->state == LS_CONN_BUSY)
      ls__http_continue(c);
  }
  int n = body_push(L, c);
  if (n > 0) {
    ls__body_pump(c);
    return n;
  }
  luaL_checkany(L, 2);
  if (c->body_ref > 0)
    luaL_unref(L, LUA_REGISTRYINDEX, c->body_ref);
  lua_pushvalue(L, 2);
  c->body_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  ls__body_pump(c);
  lua_pushboolean(L, 0);
  return 1;
}
