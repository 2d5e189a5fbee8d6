/* tcp.c: client TCP sockets for Lua: connect (with an asynchronous DNS
 * look-up through libuv's getaddrinfo; numeric addresses skip it), write,
 * read one chunk at a time, wait idle in a keep-alive pool, close.
 *
 * Every pending operation anchors a Lua target (registry reference) that
 * is resolved exactly once: with its result, with nil, "timeout" when the
 * operation's timer fires, or with nil, "closed" when the socket is closed
 * first; a cancelled operation's target is released unresolved. One timer
 * per socket serves the connect, read and idle timeouts (those never
 * overlap); send timeouts are the Lua side's. Loop thread of the runtime
 * only. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define LS_TCP_MT "luaserve.tcp"

typedef struct tcp_ud_s tcp_ud_t;

/* The C side of a socket. Allocated apart from the Lua userdata: it lives
 * until both handles are closed, the DNS request and every write have
 * finished, and Lua has let go of it (tcp_maybe_free). */
typedef struct {
  uv_tcp_t handle;
  uv_timer_t timer;         /* connect, read or idle timeout; never keeps
                               the loop alive by itself (unref'd) */
  uv_connect_t connect_req;
  uv_getaddrinfo_t dns_req;
  ls_runtime_t *rt;
  tcp_ud_t *ud;             /* the Lua side, NULL once collected */
  int port;
  int connect_ref;          /* target of connect, or LUA_NOREF */
  int read_ref;             /* target of the pending read, or LUA_NOREF */
  int idle_ref;             /* target of the idle watch, or LUA_NOREF */
  int writes;               /* uv_write requests in flight */
  int resolving;            /* getaddrinfo in flight */
  int closed;               /* close() called: handles closing or closed */
  int handles_open;         /* 2 until both close callbacks ran */
  int idle;                 /* waiting in a pool: handle unref'd */
} ls_tcp_t;

struct tcp_ud_s {
  ls_tcp_t *s;
};

typedef struct {
  uv_write_t req;
  ls_tcp_t *s;
  int target_ref;
  char data[];
} tcp_write_t;


static void tcp_maybe_free(ls_tcp_t *s) {
  if (s->handles_open > 0 || s->resolving || s->writes > 0 || s->ud != NULL)
    return;
  free(s);
}


static void tcp_on_close(uv_handle_t *h) {
  ls_tcp_t *s = h->data;
  s->handles_open--;
  tcp_maybe_free(s);
}


/* Resolve the target in *ref (if any) with the values on top of the stack;
 * pops them either way. */
static void tcp_resolve(ls_tcp_t *s, int *ref, int nargs) {
  int r = *ref;
  *ref = LUA_NOREF;
  if (r == LUA_NOREF) {
    lua_pop(s->rt->L, nargs);
    return;
  }
  ls__resolve(s->rt, r, nargs);
}


static void tcp_resolve_error(ls_tcp_t *s, int *ref, const char *msg) {
  if (*ref == LUA_NOREF)
    return;
  lua_pushnil(s->rt->L);
  lua_pushstring(s->rt->L, msg);
  tcp_resolve(s, ref, 2);
}


/* Release the target in *ref without resolving it. */
static void tcp_unref(ls_tcp_t *s, int *ref) {
  if (*ref != LUA_NOREF && !s->rt->closing)
    luaL_unref(s->rt->L, LUA_REGISTRYINDEX, *ref);
  *ref = LUA_NOREF;
}


/* Leave the idle state: the handle counts for the loop again. */
static void tcp_idle_end(ls_tcp_t *s) {
  if (!s->idle)
    return;
  s->idle = 0;
  uv_read_stop((uv_stream_t *)&s->handle);
  uv_timer_stop(&s->timer);
  if (!s->closed)
    uv_ref((uv_handle_t *)&s->handle);
}


/* Close the socket; pending connect and read targets get nil, "closed", an
 * idle watch is released (whoever closes an idle socket knows). */
static void tcp_close(ls_tcp_t *s) {
  if (s->closed)
    return;
  tcp_idle_end(s);
  s->closed = 1;
  if (s->resolving)
    uv_cancel((uv_req_t *)&s->dns_req);
  uv_close((uv_handle_t *)&s->timer, tcp_on_close);
  uv_close((uv_handle_t *)&s->handle, tcp_on_close);
  tcp_unref(s, &s->idle_ref);
  if (!s->rt->closing) {
    tcp_resolve_error(s, &s->connect_ref, "closed");
    tcp_resolve_error(s, &s->read_ref, "closed");
  }
}


static void tcp_timer_start(ls_tcp_t *s, uv_timer_cb cb, double ms) {
  if (ms > 0)
    uv_timer_start(&s->timer, cb, (uint64_t)(ms + 0.5), 0);
}


/* The connect timer fired (DNS and connect took too long): close, and the
 * connect target gets nil, "timeout". */
static void tcp_on_connect_timeout(uv_timer_t *t) {
  ls_tcp_t *s = t->data;
  int ref = s->connect_ref;
  s->connect_ref = LUA_NOREF;
  tcp_close(s);
  tcp_resolve_error(s, &ref, "timeout");
}


static void tcp_on_connect(uv_connect_t *req, int status) {
  ls_tcp_t *s = req->data;
  if (s->rt->closing || status == UV_ECANCELED || s->closed)
    return;   /* close() resolved the target already */
  uv_timer_stop(&s->timer);
  if (status < 0) {
    tcp_resolve_error(s, &s->connect_ref, ls_strerror(status));
    return;
  }
  uv_tcp_nodelay(&s->handle, 1);
  lua_pushboolean(s->rt->L, 1);
  tcp_resolve(s, &s->connect_ref, 1);
}


/* Start connecting to addr; 0 or a libuv error. */
static int tcp_start_connect(ls_tcp_t *s, const struct sockaddr *addr) {
  s->connect_req.data = s;
  return uv_tcp_connect(&s->connect_req, &s->handle, addr, tcp_on_connect);
}


static void tcp_on_dns(uv_getaddrinfo_t *req, int status,
                       struct addrinfo *res) {
  ls_tcp_t *s = req->data;
  s->resolving = 0;
  if (s->rt->closing || s->closed) {
    uv_freeaddrinfo(res);
    tcp_maybe_free(s);
    return;
  }
  int err = status;
  if (status == 0 && res == NULL)
    err = UV_EAI_NONAME;
  if (err < 0) {
    char msg[160];
    snprintf(msg, sizeof(msg), "dns: %s", uv_strerror(err));
    uv_timer_stop(&s->timer);
    tcp_resolve_error(s, &s->connect_ref, msg);
  } else if ((err = tcp_start_connect(s, res->ai_addr)) != 0) {
    uv_timer_stop(&s->timer);
    tcp_resolve_error(s, &s->connect_ref, ls_strerror(err));
  }
  uv_freeaddrinfo(res);
}


/* tcp_connect(host, port, target[, timeout_ms]): a socket userdata, and
 * target is resolved later with true or nil, err (nil, "timeout" after
 * timeout_ms, which covers DNS and connect; 0 or none: no limit). Numeric
 * addresses, "[v6]" too, skip the DNS look-up. A failure to start at all
 * returns nil, err and leaves target alone. */
int ls__lua_tcp_connect(lua_State *L) {
  ls_runtime_t *rt = ls__runtime(L);
  const char *host = luaL_checkstring(L, 1);
  int port = (int)luaL_checkinteger(L, 2);
  luaL_checkany(L, 3);
  double timeout_ms = luaL_optnumber(L, 4, 0);
  if (port <= 0 || port > 65535)
    return luaL_argerror(L, 2, "port out of range");

  char h[256];
  size_t hl = strlen(host);
  if (hl >= sizeof(h))
    return ls__push_error(L, UV_EAI_NONAME);
  if (hl > 2 && host[0] == '[' && host[hl - 1] == ']') {
    memcpy(h, host + 1, hl - 2);   /* [::1] -> ::1 */
    h[hl - 2] = '\0';
  } else {
    memcpy(h, host, hl + 1);
  }
  struct sockaddr_storage addr;
  int numeric = uv_ip4_addr(h, port, (struct sockaddr_in *)&addr) == 0 ||
                uv_ip6_addr(h, port, (struct sockaddr_in6 *)&addr) == 0;

  ls_tcp_t *s = calloc(1, sizeof(*s));
  if (s == NULL)
    return ls__push_error(L, UV_ENOMEM);
  s->rt = rt;
  s->port = port;
  s->connect_ref = s->read_ref = s->idle_ref = LUA_NOREF;
  uv_tcp_init(rt->loop, &s->handle);
  uv_timer_init(rt->loop, &s->timer);
  uv_unref((uv_handle_t *)&s->timer);
  s->handle.data = s->timer.data = s;
  s->handles_open = 2;

  int err;
  if (numeric) {
    err = tcp_start_connect(s, (struct sockaddr *)&addr);
  } else {
    char portstr[16];
    struct addrinfo hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    snprintf(portstr, sizeof(portstr), "%d", port);
    s->dns_req.data = s;
    err = uv_getaddrinfo(rt->loop, &s->dns_req, tcp_on_dns, h, portstr,
                         &hints);
    s->resolving = err == 0;
  }
  if (err) {   /* nothing started: close what was opened, tell the caller */
    tcp_close(s);
    lua_pushnil(L);
    if (numeric)
      lua_pushstring(L, ls_strerror(err));
    else
      lua_pushfstring(L, "dns: %s", uv_strerror(err));
    return 2;
  }
  tcp_ud_t *ud = lua_newuserdata(L, sizeof(*ud));
  luaL_getmetatable(L, LS_TCP_MT);
  lua_setmetatable(L, -2);
  ud->s = s;
  s->ud = ud;
  lua_pushvalue(L, 3);
  s->connect_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  tcp_timer_start(s, tcp_on_connect_timeout, timeout_ms);
  return 1;
}


static ls_tcp_t *check_tcp(lua_State *L) {
  tcp_ud_t *ud = luaL_checkudata(L, 1, LS_TCP_MT);
  return ud->s;
}


static void tcp_on_write(uv_write_t *req, int status) {
  tcp_write_t *w = (tcp_write_t *)req;
  ls_tcp_t *s = w->s;
  int ref = w->target_ref;
  free(w);
  s->writes--;
  if (!s->rt->closing && ref != LUA_NOREF) {
    if (status < 0) {
      tcp_resolve_error(s, &ref, status == UV_ECANCELED ? "closed"
                                                        : ls_strerror(status));
    } else {
      lua_pushboolean(s->rt->L, 1);
      tcp_resolve(s, &ref, 1);
    }
  }
  tcp_maybe_free(s);
}


/* sock:write(data, target): true when all was written now (target is not
 * used); false when the rest is queued (copied) and target will get true
 * or nil, err; or nil, err at once. */
static int tcp_write(lua_State *L) {
  ls_tcp_t *s = check_tcp(L);
  size_t len;
  const char *data = luaL_checklstring(L, 2, &len);
  luaL_checkany(L, 3);
  if (s == NULL || s->closed)
    return ls__push_error(L, UV_EOF);
  size_t done = 0;
  if (s->writes == 0) {
    uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
    int n = uv_try_write((uv_stream_t *)&s->handle, &b, 1);
    if (n < 0 && n != UV_EAGAIN)
      return ls__push_error(L, n);
    if (n > 0)
      done = (size_t)n;
    if (done == len) {
      lua_pushboolean(L, 1);
      return 1;
    }
  }
  tcp_write_t *w = malloc(sizeof(*w) + (len - done));
  if (w == NULL)
    return ls__push_error(L, UV_ENOMEM);
  memcpy(w->data, data + done, len - done);
  w->s = s;
  uv_buf_t b = uv_buf_init(w->data, (unsigned)(len - done));
  int err = uv_write(&w->req, (uv_stream_t *)&s->handle, &b, 1, tcp_on_write);
  if (err) {
    free(w);
    return ls__push_error(L, err);
  }
  lua_pushvalue(L, 3);
  w->target_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  s->writes++;
  lua_pushboolean(L, 0);
  return 1;
}


static void tcp_on_read(uv_stream_t *stream, ssize_t nread,
                        const uv_buf_t *buf) {
  ls_tcp_t *s = stream->data;
  if (nread != 0) {
    uv_read_stop(stream);   /* one chunk per read(): Lua pulls */
    uv_timer_stop(&s->timer);
    if (s->rt->closing) {
      /* nothing */
    } else if (nread > 0) {
      lua_pushlstring(s->rt->L, buf->base, (size_t)nread);
      tcp_resolve(s, &s->read_ref, 1);
    } else {
      tcp_resolve_error(s, &s->read_ref, ls_strerror((int)nread));
    }
  }
  ls__read_done((uv_handle_t *)stream, buf);
}


static void tcp_on_read_timeout(uv_timer_t *t) {
  ls_tcp_t *s = t->data;
  uv_read_stop((uv_stream_t *)&s->handle);
  tcp_resolve_error(s, &s->read_ref, "timeout");
}


/* sock:read(target[, timeout_ms]): target gets the next chunk of bytes, or
 * nil, err ("closed" at the end of the stream, "timeout" when nothing came
 * for timeout_ms; the socket stays open then). Returns true, or nil, err
 * at once (target unused). One read at a time; never while idle. */
static int tcp_read(lua_State *L) {
  ls_tcp_t *s = check_tcp(L);
  luaL_checkany(L, 2);
  double timeout_ms = luaL_optnumber(L, 3, 0);
  if (s == NULL || s->closed)
    return ls__push_error(L, UV_EOF);
  if (s->read_ref != LUA_NOREF || s->idle)
    return luaL_error(L, "tcp: a read is already pending on this socket");
  int err = uv_read_start((uv_stream_t *)&s->handle, ls__read_alloc,
                          tcp_on_read);
  if (err)
    return ls__push_error(L, err);
  lua_pushvalue(L, 2);
  s->read_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  tcp_timer_start(s, tcp_on_read_timeout, timeout_ms);
  lua_pushboolean(L, 1);
  return 1;
}


/* sock:cancel_read(): forget a pending read (its target is released, not
 * resolved). */
static int tcp_cancel_read(lua_State *L) {
  ls_tcp_t *s = check_tcp(L);
  if (s && s->read_ref != LUA_NOREF) {
    uv_read_stop((uv_stream_t *)&s->handle);
    uv_timer_stop(&s->timer);
    tcp_unref(s, &s->read_ref);
  }
  return 0;
}


/* While idle anything from the peer, bytes or the end of the stream, means
 * the connection cannot carry another request. */
static void tcp_on_idle_read(uv_stream_t *stream, ssize_t nread,
                             const uv_buf_t *buf) {
  ls_tcp_t *s = stream->data;
  ls__read_done((uv_handle_t *)stream, buf);
  if (nread == 0 || s->rt->closing)
    return;
  tcp_idle_end(s);
  lua_pushstring(s->rt->L, nread > 0 ? "data" : "closed");
  tcp_resolve(s, &s->idle_ref, 1);
}


static void tcp_on_idle_timeout(uv_timer_t *t) {
  ls_tcp_t *s = t->data;
  tcp_idle_end(s);
  lua_pushliteral(s->rt->L, "timeout");
  tcp_resolve(s, &s->idle_ref, 1);
}


/* sock:set_idle(ms, target): the socket waits in a keep-alive pool. A read
 * stays armed and a timer runs for ms (0: no limit); target is resolved
 * with "closed" or "data" when the peer closes or sends, or "timeout".
 * Neither keeps the loop alive. Returns true, or nil, err. */
static int tcp_set_idle(lua_State *L) {
  ls_tcp_t *s = check_tcp(L);
  double ms = luaL_checknumber(L, 2);
  luaL_checkany(L, 3);
  if (s == NULL || s->closed)
    return ls__push_error(L, UV_EOF);
  if (s->idle || s->read_ref != LUA_NOREF || s->connect_ref != LUA_NOREF ||
      s->writes > 0)
    return luaL_error(L, "tcp: set_idle on a busy socket");
  int err = uv_read_start((uv_stream_t *)&s->handle, ls__read_alloc,
                          tcp_on_idle_read);
  if (err)
    return ls__push_error(L, err);
  s->idle = 1;
  uv_unref((uv_handle_t *)&s->handle);
  lua_pushvalue(L, 3);
  s->idle_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  tcp_timer_start(s, tcp_on_idle_timeout, ms);
  lua_pushboolean(L, 1);
  return 1;
}


/* sock:clear_idle(): taken out of the pool; the watch stops and its target
 * is released. true if the socket is still open. */
static int tcp_clear_idle(lua_State *L) {
  ls_tcp_t *s = check_tcp(L);
  if (s == NULL)
    return 0;
  tcp_idle_end(s);
  tcp_unref(s, &s->idle_ref);
  lua_pushboolean(L, !s->closed);
  return 1;
}


static int tcp_close_lua(lua_State *L) {
  ls_tcp_t *s = check_tcp(L);
  if (s)
    tcp_close(s);
  return 0;
}


/* sock:peer(): address and port of the other end, or nothing. */
static int tcp_peer(lua_State *L) {
  ls_tcp_t *s = check_tcp(L);
  struct sockaddr_storage addr;
  int len = sizeof(addr);
  if (s == NULL || s->closed ||
      uv_tcp_getpeername(&s->handle, (struct sockaddr *)&addr, &len) != 0)
    return 0;
  return ls__push_addr(L, &addr);
}


/* sock:local_port(): the local port, or nothing. */
static int tcp_local_port(lua_State *L) {
  ls_tcp_t *s = check_tcp(L);
  struct sockaddr_storage addr;
  int len = sizeof(addr);
  if (s == NULL || s->closed ||
      uv_tcp_getsockname(&s->handle, (struct sockaddr *)&addr, &len) != 0)
    return 0;
  if (addr.ss_family == AF_INET6)
    lua_pushinteger(L, ntohs(((struct sockaddr_in6 *)&addr)->sin6_port));
  else
    lua_pushinteger(L, ntohs(((struct sockaddr_in *)&addr)->sin_port));
  return 1;
}


/* Collected: release every target, close. (A socket with a pending
 * operation is not collected: its target holds it.) */
static int tcp_gc(lua_State *L) {
  tcp_ud_t *ud = luaL_checkudata(L, 1, LS_TCP_MT);
  ls_tcp_t *s = ud->s;
  if (s == NULL)
    return 0;
  ud->s = NULL;
  s->ud = NULL;
  tcp_unref(s, &s->connect_ref);
  tcp_unref(s, &s->read_ref);
  tcp_unref(s, &s->idle_ref);
  tcp_close(s);
  tcp_maybe_free(s);
  return 0;
}


static const luaL_Reg tcp_methods[] = {
  {"write", tcp_write},
  {"read", tcp_read},
  {"cancel_read", tcp_cancel_read},
  {"set_idle", tcp_set_idle},
  {"clear_idle", tcp_clear_idle},
  {"close", tcp_close_lua},
  {"peer", tcp_peer},
  {"local_port", tcp_local_port},
  {NULL, NULL},
};


void ls__tcp_open(lua_State *L) {
  ls__new_class(L, LS_TCP_MT, tcp_methods, tcp_gc);
}
