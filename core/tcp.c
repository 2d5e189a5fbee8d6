/* tcp.c: client TCP sockets for Lua: connect (with an asynchronous DNS
 * look-up through libuv's getaddrinfo), write, read one chunk at a time,
 * close. Every pending operation anchors a Lua target (registry reference)
 * that is resolved exactly once: with its result, or with nil, "closed"
 * when the socket is closed first. Loop thread of the runtime only. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define LS_TCP_MT "luaserve.tcp"

typedef struct tcp_ud_s tcp_ud_t;

typedef struct {
  uv_tcp_t handle;
  uv_connect_t connect_req;
  uv_getaddrinfo_t dns_req;
  ls_runtime_t *rt;
  tcp_ud_t *ud;             /* the Lua side, NULL once collected */
  int port;
  int connect_ref;          /* target of connect, or LUA_NOREF */
  int read_ref;             /* target of the pending read, or LUA_NOREF */
  int writes;               /* uv_write requests in flight */
  int resolving;            /* getaddrinfo in flight */
  int connecting;           /* uv_tcp_connect in flight */
  int closed;               /* close() called: handle closing or closed */
  int handle_open;          /* handle initialised and not yet closed */
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


/* The C struct goes once the handle, the DNS request and every write have
 * finished with it. */
static void tcp_maybe_free(ls_tcp_t *s) {
  if (s->handle_open || s->resolving || s->writes > 0 || s->ud != NULL)
    return;
  free(s);
}


static void tcp_on_close(uv_handle_t *h) {
  ls_tcp_t *s = h->data;
  s->handle_open = 0;
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


/* Close the socket; pending connect and read targets get nil, "closed". */
static void tcp_close(ls_tcp_t *s) {
  if (s->closed)
    return;
  s->closed = 1;
  if (s->resolving)
    uv_cancel((uv_req_t *)&s->dns_req);
  if (s->handle_open && !uv_is_closing((uv_handle_t *)&s->handle))
    uv_close((uv_handle_t *)&s->handle, tcp_on_close);
  if (!s->rt->closing) {
    tcp_resolve_error(s, &s->connect_ref, "closed");
    tcp_resolve_error(s, &s->read_ref, "closed");
  }
}


static void tcp_on_connect(uv_connect_t *req, int status) {
  ls_tcp_t *s = req->data;
  s->connecting = 0;
  if (s->rt->closing)
    return;
  if (status == UV_ECANCELED || s->closed)
    return;   /* close() resolved the target already */
  if (status < 0) {
    tcp_resolve_error(s, &s->connect_ref, ls_strerror(status));
    return;
  }
  uv_tcp_nodelay(&s->handle, 1);
  lua_pushboolean(s->rt->L, 1);
  tcp_resolve(s, &s->connect_ref, 1);
}


static void tcp_start_connect(ls_tcp_t *s, const struct sockaddr *addr) {
  s->connect_req.data = s;
  int err = uv_tcp_connect(&s->connect_req, &s->handle, addr, tcp_on_connect);
  if (err)
    tcp_resolve_error(s, &s->connect_ref, ls_strerror(err));
  else
    s->connecting = 1;
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
  if (status < 0 || res == NULL) {
    char msg[160];
    snprintf(msg, sizeof(msg), "dns: %s", uv_strerror(status));
    tcp_resolve_error(s, &s->connect_ref, msg);
  } else {
    tcp_start_connect(s, res->ai_addr);
  }
  uv_freeaddrinfo(res);
}


/* tcp_connect(host, port, target): a socket userdata; target is resolved
 * with true or nil, err. Numeric addresses skip the DNS look-up. */
int ls__lua_tcp_connect(lua_State *L) {
  ls_runtime_t *rt = ls__runtime(L);
  const char *host = luaL_checkstring(L, 1);
  int port = (int)luaL_checkinteger(L, 2);
  luaL_checkany(L, 3);
  if (port <= 0 || port > 65535)
    return luaL_argerror(L, 2, "port out of range");
  ls_tcp_t *s = calloc(1, sizeof(*s));
  if (s == NULL)
    return luaL_error(L, "tcp: out of memory");
  tcp_ud_t *ud = lua_newuserdata(L, sizeof(*ud));
  luaL_getmetatable(L, LS_TCP_MT);
  lua_setmetatable(L, -2);
  ud->s = s;
  s->ud = ud;
  s->rt = rt;
  s->port = port;
  s->read_ref = LUA_NOREF;
  lua_pushvalue(L, 3);
  s->connect_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  uv_tcp_init(rt->loop, &s->handle);
  s->handle.data = s;
  s->handle_open = 1;

  struct sockaddr_storage addr;
  const char *h = host;
  char buf[64];
  size_t hl = strlen(host);
  if (hl > 2 && hl < sizeof(buf) && host[0] == '[' && host[hl - 1] == ']') {
    memcpy(buf, host + 1, hl - 2);   /* [::1] -> ::1 */
    buf[hl - 2] = '\0';
    h = buf;
  }
  if (uv_ip4_addr(h, port, (struct sockaddr_in *)&addr) == 0 ||
      uv_ip6_addr(h, port, (struct sockaddr_in6 *)&addr) == 0) {
    tcp_start_connect(s, (struct sockaddr *)&addr);
    return 1;
  }
  char portstr[16];
  struct addrinfo hints;
  memset(&hints, 0, sizeof(hints));
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  snprintf(portstr, sizeof(portstr), "%d", port);
  s->dns_req.data = s;
  int err = uv_getaddrinfo(rt->loop, &s->dns_req, tcp_on_dns, h, portstr,
                           &hints);
  if (err) {
    lua_pushnil(L);
    lua_pushfstring(L, "dns: %s", uv_strerror(err));
    tcp_resolve(s, &s->connect_ref, 2);
  } else {
    s->resolving = 1;
  }
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
    if (status < 0 && !s->closed) {
      lua_pushnil(s->rt->L);
      lua_pushstring(s->rt->L, ls_strerror(status));
      tcp_resolve(s, &ref, 2);
    } else if (status < 0) {
      tcp_resolve_error(s, &ref, "closed");
    } else {
      lua_pushboolean(s->rt->L, 1);
      tcp_resolve(s, &ref, 1);
    }
  }
  tcp_maybe_free(s);
}


/* sock:write(data, target): true when all was written now; false when the
 * rest is queued (copied) and target will get true or nil, err; or nil, err. */
static int tcp_write(lua_State *L) {
  ls_tcp_t *s = check_tcp(L);
  size_t len;
  const char *data = luaL_checklstring(L, 2, &len);
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
  luaL_checkany(L, 3);
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
    uv_read_stop(stream);   /* one chunk per read(): Lua pulls, no buffering */
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


/* sock:read(target): target gets the next chunk of bytes, or nil, err
 * ("closed" at end of stream). Returns true, or nil, err at once. */
static int tcp_read(lua_State *L) {
  ls_tcp_t *s = check_tcp(L);
  luaL_checkany(L, 2);
  if (s == NULL || s->closed)
    return ls__push_error(L, UV_EOF);
  if (s->read_ref != LUA_NOREF)
    return luaL_error(L, "tcp: a read is already pending on this socket");
  int err = uv_read_start((uv_stream_t *)&s->handle, ls__read_alloc,
                          tcp_on_read);
  if (err)
    return ls__push_error(L, err);
  lua_pushvalue(L, 2);
  s->read_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_pushboolean(L, 1);
  return 1;
}


/* sock:cancel_read(): forget a pending read (its target is not resolved). */
static int tcp_cancel_read(lua_State *L) {
  ls_tcp_t *s = check_tcp(L);
  if (s && s->read_ref != LUA_NOREF) {
    uv_read_stop((uv_stream_t *)&s->handle);
    luaL_unref(L, LUA_REGISTRYINDEX, s->read_ref);
    s->read_ref = LUA_NOREF;
  }
  return 0;
}


static int tcp_close_lua(lua_State *L) {
  ls_tcp_t *s = check_tcp(L);
  if (s)
    tcp_close(s);
  return 0;
}


/* sock:peer(): address and port of the other end, or nil. */
static int tcp_peer(lua_State *L) {
  ls_tcp_t *s = check_tcp(L);
  struct sockaddr_storage addr;
  int len = sizeof(addr);
  char host[64];
  if (s == NULL || s->closed ||
      uv_tcp_getpeername(&s->handle, (struct sockaddr *)&addr, &len) != 0)
    return 0;
  if (addr.ss_family == AF_INET6)
    uv_ip6_name((struct sockaddr_in6 *)&addr, host, sizeof(host));
  else
    uv_ip4_name((struct sockaddr_in *)&addr, host, sizeof(host));
  lua_pushstring(L, host);
  return 1;
}


static int tcp_gc(lua_State *L) {
  tcp_ud_t *ud = luaL_checkudata(L, 1, LS_TCP_MT);
  ls_tcp_t *s = ud->s;
  if (s == NULL)
    return 0;
  ud->s = NULL;
  s->ud = NULL;
  if (s->rt->closing) {
    s->connect_ref = s->read_ref = LUA_NOREF;
  } else {
    luaL_unref(L, LUA_REGISTRYINDEX, s->connect_ref);
    luaL_unref(L, LUA_REGISTRYINDEX, s->read_ref);
    s->connect_ref = s->read_ref = LUA_NOREF;
  }
  tcp_close(s);
  tcp_maybe_free(s);
  return 0;
}


static const luaL_Reg tcp_methods[] = {
  {"write", tcp_write},
  {"read", tcp_read},
  {"cancel_read", tcp_cancel_read},
  {"close", tcp_close_lua},
  {"peer", tcp_peer},
  {NULL, NULL},
};


void ls__tcp_open(lua_State *L) {
  luaL_newmetatable(L, LS_TCP_MT);
  lua_pushcfunction(L, tcp_gc);
  lua_setfield(L, -2, "__gc");
  lua_newtable(L);
  luaL_register(L, NULL, tcp_methods);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
}
