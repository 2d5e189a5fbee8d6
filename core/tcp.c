/* tcp.c: client sockets for Lua on the stream layer (stream.c): connect
 * (with an asynchronous DNS look-up through libuv's getaddrinfo; numeric
 * addresses skip it), the TLS handshake, write, read one chunk at a time,
 * wait idle in a keep-alive pool, close.
 *
 * Every pending operation anchors a Lua target (registry reference) that
 * is resolved exactly once: with its result, with nil, "timeout" when the
 * operation's deadline passes, or with nil, "closed" when the socket is
 * closed first; a cancelled operation's target is released unresolved.
 * Results reach Lua from libuv callbacks or the deferred queue, never from
 * inside a call Lua made (a close from Lua resolves its targets later).
 * The stream's one deadline serves the connect, handshake, read and idle
 * timeouts (those never overlap); its send timeout bounds a write that
 * makes no progress. Loop thread of the runtime only. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define LS_TCP_MT "luaserve.tcp"

typedef struct tcp_ud_s tcp_ud_t;

/* What the stream's deadline is for (one at a time). */
enum { WAIT_NONE, WAIT_CONNECT, WAIT_HANDSHAKE, WAIT_READ, WAIT_IDLE };

/* The C side of a socket. Allocated apart from the Lua userdata: it lives
 * until its stream is closed, the DNS request has finished, no result is
 * queued for Lua, and Lua has let go of it (tcp_maybe_free). */
typedef struct {
  ls_stream_t stream;       /* first: a stream pointer is the socket */
  uv_connect_t connect_req;
  uv_getaddrinfo_t dns_req;
  ls_defer_t notify;        /* resolves the targets of a closed socket */
  ls_runtime_t *rt;
  tcp_ud_t *ud;             /* the Lua side, NULL once collected */
  int connect_ref;          /* target of connect, or LUA_NOREF */
  int read_ref;             /* target of the pending read */
  int idle_ref;             /* target of the idle watch */
  int drain_ref;            /* target waiting for queued writes */
  int hs_ref;               /* target of the TLS handshake */
  int wait;                 /* WAIT_*: what the deadline means */
  int resolving;            /* getaddrinfo in flight */
  int closed;               /* close() called: the stream is closing */
  ls_ws_t *ws;              /* a WebSocket took the socket over, or NULL */
  int stream_open;          /* until the stream's on_close */
  const char *close_why;    /* what closed targets hear ("closed") */
} ls_tcp_t;

struct tcp_ud_s {
  ls_tcp_t *s;
};

#define TCP(st) ((ls_tcp_t *)(st))


static void tcp_maybe_free(ls_tcp_t *s) {
  if (s->stream_open || s->resolving || s->ud != NULL || s->notify.queued)
    return;
  free(s);
}


/* Resolve the target in *ref (if any) with the values on top of the stack;
 * pops them either way. */
static void tcp_resolve(ls_tcp_t *s, int *ref, int nargs) {
  int r = *ref;
  *ref = LUA_NOREF;
  if (r == LUA_NOREF || s->rt->closing) {
    lua_pop(s->rt->L, nargs);
    if (r != LUA_NOREF && !s->rt->closing)
      luaL_unref(s->rt->L, LUA_REGISTRYINDEX, r);
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


/* The targets of a closed socket hear of it from the loop. */
static void tcp_on_notify(ls_defer_t *d) {
  ls_tcp_t *s = (ls_tcp_t *)((char *)d - offsetof(ls_tcp_t, notify));
  const char *why = s->close_why ? s->close_why : "closed";
  tcp_resolve_error(s, &s->connect_ref, why);
  tcp_resolve_error(s, &s->hs_ref, why);
  tcp_resolve_error(s, &s->read_ref, why);
  tcp_resolve_error(s, &s->drain_ref, why);
  tcp_maybe_free(s);
}


/* Leave the idle state: the socket counts for the loop again. */
static void tcp_idle_end(ls_tcp_t *s) {
  if (s->wait != WAIT_IDLE)
    return;
  s->wait = WAIT_NONE;
  ls__stream_read_stop(&s->stream);
  ls__stream_deadline(&s->stream, 0);
  if (!s->closed)
    uv_ref((uv_handle_t *)&s->stream.tcp);
}


/* Close the socket; pending targets get nil, why (default "closed") from
 * the loop; an idle watch is released (whoever closes an idle socket
 * knows). */
static void tcp_close(ls_tcp_t *s, const char *why) {
  if (s->closed)
    return;
  tcp_idle_end(s);
  s->closed = 1;
  s->close_why = why;
  if (s->resolving)
    uv_cancel((uv_req_t *)&s->dns_req);
  ls__stream_close(&s->stream);
  tcp_unref(s, &s->idle_ref);
  if (!s->rt->closing &&
      (s->connect_ref != LUA_NOREF || s->hs_ref != LUA_NOREF ||
       s->read_ref != LUA_NOREF || s->drain_ref != LUA_NOREF))
    ls__defer(s->rt, &s->notify, tcp_on_notify);
}


static void tcp_wait(ls_tcp_t *s, int what, double ms) {
  s->wait = what;
  ls__stream_deadline(&s->stream, ms > 0 ? (uint64_t)(ms + 0.5) : 0);
}


/* ---- stream events ------------------------------------------------------ */

static void tcp_on_read(ls_stream_t *st, const char *data, size_t len) {
  ls_tcp_t *s = TCP(st);
  if (s->ws) {
    ls__ws_on_read(s->ws, data, len);
    return;
  }
  if (s->wait == WAIT_IDLE) {
    /* While idle anything from the peer means the connection cannot carry
     * another request. */
    tcp_idle_end(s);
    lua_pushliteral(s->rt->L, "data");
    tcp_resolve(s, &s->idle_ref, 1);
    return;
  }
  ls__stream_read_stop(st);   /* one chunk per read(): Lua pulls */
  s->wait = WAIT_NONE;
  ls__stream_deadline(st, 0);
  lua_pushlstring(s->rt->L, data, len);
  tcp_resolve(s, &s->read_ref, 1);
}


/* The message for an end of input: "closed", or the TLS reason. */
static const char *end_message(ls_tcp_t *s, int err, char *buf, size_t n) {
  if (err == LS_ETLS) {
    snprintf(buf, n, "tls: %s", ls__stream_error(&s->stream));
    return buf;
  }
  return ls_strerror(err);
}


static void tcp_on_end(ls_stream_t *st, int err) {
  ls_tcp_t *s = TCP(st);
  char msg[200];
  if (s->ws) {
    ls__ws_on_end(s->ws, err);
    return;
  }
  if (s->wait == WAIT_IDLE) {
    tcp_idle_end(s);
    lua_pushliteral(s->rt->L, "closed");
    tcp_resolve(s, &s->idle_ref, 1);
    return;
  }
  s->wait = WAIT_NONE;
  ls__stream_deadline(st, 0);
  tcp_resolve_error(s, &s->read_ref, end_message(s, err, msg, sizeof(msg)));
}


static void tcp_on_drain(ls_stream_t *st, int status) {
  ls_tcp_t *s = TCP(st);
  if (s->ws) {
    ls__ws_on_drain(s->ws, status);
    return;
  }
  if (status < 0) {
    char msg[200];
    int ref = s->drain_ref;
    s->drain_ref = LUA_NOREF;
    tcp_close(s, NULL);
    tcp_resolve_error(s, &ref, end_message(s, status, msg, sizeof(msg)));
    return;
  }
  lua_pushboolean(s->rt->L, 1);
  tcp_resolve(s, &s->drain_ref, 1);
}


static void tcp_on_timeout(ls_stream_t *st, int kind) {
  ls_tcp_t *s = TCP(st);
  if (s->ws && kind == LS_TIMEOUT_DEADLINE) {
    ls__ws_on_timeout(s->ws);
    return;
  }
  if (kind == LS_TIMEOUT_SEND) {   /* a write made no progress: closed */
    int ref = s->drain_ref;
    s->drain_ref = LUA_NOREF;
    tcp_close(s, NULL);
    tcp_resolve_error(s, &ref, "timeout");
    return;
  }
  if (s->wait == WAIT_IDLE) {
    tcp_idle_end(s);
    lua_pushliteral(s->rt->L, "timeout");
    tcp_resolve(s, &s->idle_ref, 1);
    return;
  }
  int what = s->wait;
  s->wait = WAIT_NONE;
  if (what == WAIT_READ) {   /* the socket stays open */
    ls__stream_read_stop(st);
    tcp_resolve_error(s, &s->read_ref, "timeout");
  } else if (what == WAIT_CONNECT || what == WAIT_HANDSHAKE) {
    int *ref = what == WAIT_CONNECT ? &s->connect_ref : &s->hs_ref;
    int r = *ref;
    *ref = LUA_NOREF;
    tcp_close(s, NULL);
    tcp_resolve_error(s, &r, what == WAIT_CONNECT ? "timeout"
                                                   : "tls: handshake timeout");
  }
}


static void tcp_on_handshake(ls_stream_t *st, int err) {
  ls_tcp_t *s = TCP(st);
  char msg[200];
  s->wait = WAIT_NONE;
  ls__stream_deadline(st, 0);
  if (err == 0) {
    lua_pushboolean(s->rt->L, 1);
    tcp_resolve(s, &s->hs_ref, 1);
    return;
  }
  if (err == LS_ETLS)
    snprintf(msg, sizeof(msg), "tls: %s", ls__stream_error(st));
  else
    snprintf(msg, sizeof(msg), "tls: handshake failed: %s", ls_strerror(err));
  int ref = s->hs_ref;
  s->hs_ref = LUA_NOREF;
  tcp_close(s, NULL);
  tcp_resolve_error(s, &ref, msg);
}


static void tcp_on_close(ls_stream_t *st) {
  ls_tcp_t *s = TCP(st);
  s->stream_open = 0;
  if (s->ws) {
    ls__ws_transport_closed(s->ws);
    s->ws = NULL;
  }
  tcp_maybe_free(s);
}


static const ls_stream_ops_t tcp_ops = {
  .on_read = tcp_on_read,
  .on_end = tcp_on_end,
  .on_drain = tcp_on_drain,
  .on_timeout = tcp_on_timeout,
  .on_handshake = tcp_on_handshake,
  .on_close = tcp_on_close,
};


/* ---- connecting --------------------------------------------------------- */

static void tcp_on_connect(uv_connect_t *req, int status) {
  ls_tcp_t *s = req->data;
  if (s->rt->closing || status == UV_ECANCELED || s->closed)
    return;   /* close() resolves the target */
  s->wait = WAIT_NONE;
  ls__stream_deadline(&s->stream, 0);
  if (status < 0) {
    tcp_resolve_error(s, &s->connect_ref, ls_strerror(status));
    return;
  }
  uv_tcp_nodelay(&s->stream.tcp, 1);
  lua_pushboolean(s->rt->L, 1);
  tcp_resolve(s, &s->connect_ref, 1);
}


/* Start connecting to addr; 0 or a libuv error. */
static int tcp_start_connect(ls_tcp_t *s, const struct sockaddr *addr) {
  s->connect_req.data = s;
  return uv_tcp_connect(&s->connect_req, &s->stream.tcp, addr, tcp_on_connect);
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
    s->wait = WAIT_NONE;
    ls__stream_deadline(&s->stream, 0);
    tcp_resolve_error(s, &s->connect_ref, msg);
  } else if ((err = tcp_start_connect(s, res->ai_addr)) != 0) {
    s->wait = WAIT_NONE;
    ls__stream_deadline(&s->stream, 0);
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
  s->connect_ref = s->read_ref = s->idle_ref = s->drain_ref = s->hs_ref =
      LUA_NOREF;
  int err = ls__stream_init(rt, &s->stream, &tcp_ops);
  s->stream.timer_weak = 1;   /* its deadline never keeps the loop alive */
  s->stream_open = 1;

  if (err) {
    numeric = 1;   /* reported as it is, not as a DNS failure */
  } else if (numeric) {
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
    tcp_close(s, NULL);
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
  tcp_wait(s, WAIT_CONNECT, timeout_ms);
  return 1;
}


static ls_tcp_t *check_tcp(lua_State *L) {
  tcp_ud_t *ud = luaL_checkudata(L, 1, LS_TCP_MT);
  return ud->s;
}


/* sock:tls(context, name, check_name, target[, timeout_ms]): start a TLS
 * handshake over the connected socket; name is sent as SNI (names only)
 * and, with check_name, the certificate must be for it. target gets true,
 * or nil, "tls: <reason>" (the socket is closed then). Returns true, or
 * nil, err at once. */
static int tcp_tls(lua_State *L) {
  ls_tcp_t *s = check_tcp(L);
  void *ctx = ls__tls_check_context(L, 2);
  const char *name = luaL_optstring(L, 3, NULL);
  int check_name = lua_toboolean(L, 4);
  luaL_checkany(L, 5);
  double timeout_ms = luaL_optnumber(L, 6, 0);
  if (s == NULL || s->closed)
    return ls__push_error(L, UV_EOF);
  if (s->stream.tls || s->wait != WAIT_NONE || s->stream.writing ||
      s->stream.out.len)
    return luaL_error(L, "tcp: sslhandshake on a busy socket, or twice");
  int err = ls__stream_tls(&s->stream, ctx, 0, name, check_name);
  if (err) {
    char msg[200];
    lua_pushnil(L);
    lua_pushstring(L, end_message(s, err, msg, sizeof(msg)));
    tcp_close(s, NULL);
    return 2;
  }
  lua_pushvalue(L, 5);
  s->hs_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  tcp_wait(s, WAIT_HANDSHAKE, timeout_ms);
  lua_pushboolean(L, 1);
  return 1;
}


static void tcp_ws_close(void *owner) {
  tcp_close(owner, NULL);
}


static const ls_ws_owner_t tcp_ws_owner = { tcp_ws_close };


/* sock:ws_attach(early, opts): the socket becomes a WebSocket's (client
 * side), after its handshake; early is what was read past the 101's head.
 * A ws userdata (keep this socket's userdata alive as long as it), or nil,
 * err. The socket's own methods are done with. */
static int tcp_ws_attach(lua_State *L) {
  ls_tcp_t *s = check_tcp(L);
  size_t elen;
  const char *early = luaL_optlstring(L, 2, "", &elen);
  if (s == NULL || s->closed || s->stream.eof)
    return ls__push_error(L, UV_EOF);
  if (s->ws || s->wait != WAIT_NONE || s->read_ref != LUA_NOREF)
    return luaL_error(L, "tcp: ws_attach on a busy socket");
  ls_ws_t *ws = ls__ws_new(L, &s->stream, 0, lua_istable(L, 3) ? 3 : 0,
                           &tcp_ws_owner, s);
  if (ws == NULL)
    return ls__push_error(L, UV_ENOMEM);
  s->ws = ws;
  int err = ls__stream_read_start(&s->stream);
  if (err)
    return ls__push_error(L, err);
  if (elen)
    ls__ws_on_read(ws, early, elen);   /* frames that came with the 101 */
  return 1;
}


/* ---- writing and reading ------------------------------------------------ */

/* sock:write(data, target[, send_timeout_ms]): true when all was written
 * now (target is not used); false when the rest is queued (copied): the
 * target then gets true once everything queued is written, or nil, err
 * ("timeout" when the peer took nothing for send_timeout_ms: the socket
 * is closed); or nil, err at once. One target waits at a time: a later
 * write while one waits shares it. */
static int tcp_write(lua_State *L) {
  ls_tcp_t *s = check_tcp(L);
  size_t len;
  const char *data = luaL_checklstring(L, 2, &len);
  luaL_checkany(L, 3);
  double send_ms = luaL_optnumber(L, 4, 0);
  if (s == NULL || s->closed)
    return ls__push_error(L, UV_EOF);
  ls__stream_send_timeout(&s->stream, send_ms > 0 ? (uint64_t)send_ms : 0);
  uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
  int err = ls__stream_write(&s->stream, &b, 1);
  if (err) {
    char msg[200];
    lua_pushnil(L);
    lua_pushstring(L, end_message(s, err, msg, sizeof(msg)));
    return 2;
  }
  if (ls__stream_queued(&s->stream) == 0) {
    lua_pushboolean(L, 1);
    return 1;
  }
  if (s->drain_ref == LUA_NOREF) {
    lua_pushvalue(L, 3);
    s->drain_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  lua_pushboolean(L, 0);
  return 1;
}


/* sock:read(target[, timeout_ms]): target gets the next chunk of bytes, or
 * nil, err ("closed" at the end of the stream, "timeout" when nothing came
 * for timeout_ms: the socket stays open then; "tls: <reason>"). Returns
 * true, or nil, err at once (target unused). One read at a time; never
 * while idle. */
static int tcp_read(lua_State *L) {
  ls_tcp_t *s = check_tcp(L);
  luaL_checkany(L, 2);
  double timeout_ms = luaL_optnumber(L, 3, 0);
  if (s == NULL || s->closed || s->stream.eof)
    return ls__push_error(L, UV_EOF);
  if (s->read_ref != LUA_NOREF || s->wait == WAIT_IDLE)
    return luaL_error(L, "tcp: a read is already pending on this socket");
  int err = ls__stream_read_start(&s->stream);
  if (err)
    return ls__push_error(L, err);
  lua_pushvalue(L, 2);
  s->read_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  tcp_wait(s, WAIT_READ, timeout_ms);
  lua_pushboolean(L, 1);
  return 1;
}


/* sock:cancel_read(): forget a pending read (its target is released, not
 * resolved). */
static int tcp_cancel_read(lua_State *L) {
  ls_tcp_t *s = check_tcp(L);
  if (s && s->read_ref != LUA_NOREF) {
    ls__stream_read_stop(&s->stream);
    s->wait = WAIT_NONE;
    ls__stream_deadline(&s->stream, 0);
    tcp_unref(s, &s->read_ref);
  }
  return 0;
}


/* sock:set_idle(ms, target): the socket waits in a keep-alive pool. A read
 * stays armed and the deadline runs for ms (0: no limit); target is
 * resolved with "closed" or "data" when the peer closes or sends, or
 * "timeout". Neither keeps the loop alive. Returns true, or nil, err. */
static int tcp_set_idle(lua_State *L) {
  ls_tcp_t *s = check_tcp(L);
  double ms = luaL_checknumber(L, 2);
  luaL_checkany(L, 3);
  if (s == NULL || s->closed || s->stream.eof)
    return ls__push_error(L, UV_EOF);
  if (s->wait != WAIT_NONE || s->read_ref != LUA_NOREF ||
      s->connect_ref != LUA_NOREF || s->hs_ref != LUA_NOREF ||
      ls__stream_queued(&s->stream) > 0)
    return luaL_error(L, "tcp: set_idle on a busy socket");
  int err = ls__stream_read_start(&s->stream);
  if (err)
    return ls__push_error(L, err);
  uv_unref((uv_handle_t *)&s->stream.tcp);
  lua_pushvalue(L, 3);
  s->idle_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  tcp_wait(s, WAIT_IDLE, ms);
  return (lua_pushboolean(L, 1), 1);
}


/* sock:clear_idle(): taken out of the pool; the watch stops and its target
 * is released. true if the socket is still open. */
static int tcp_clear_idle(lua_State *L) {
  ls_tcp_t *s = check_tcp(L);
  if (s == NULL)
    return 0;
  tcp_idle_end(s);
  tcp_unref(s, &s->idle_ref);
  lua_pushboolean(L, !s->closed && !s->stream.eof);
  return 1;
}


static int tcp_close_lua(lua_State *L) {
  ls_tcp_t *s = check_tcp(L);
  if (s)
    tcp_close(s, NULL);
  return 0;
}


/* sock:peer(): address and port of the other end, or nothing. */
static int tcp_peer(lua_State *L) {
  ls_tcp_t *s = check_tcp(L);
  struct sockaddr_storage addr;
  int len = sizeof(addr);
  if (s == NULL || s->closed ||
      uv_tcp_getpeername(&s->stream.tcp, (struct sockaddr *)&addr, &len) != 0)
    return 0;
  return ls__push_addr(L, &addr);
}


/* sock:local_port(): the local port, or nothing. */
static int tcp_local_port(lua_State *L) {
  ls_tcp_t *s = check_tcp(L);
  struct sockaddr_storage addr;
  int len = sizeof(addr);
  if (s == NULL || s->closed ||
      uv_tcp_getsockname(&s->stream.tcp, (struct sockaddr *)&addr, &len) != 0)
    return 0;
  if (addr.ss_family == AF_INET6)
    lua_pushinteger(L, ntohs(((struct sockaddr_in6 *)&addr)->sin6_port));
  else
    lua_pushinteger(L, ntohs(((struct sockaddr_in *)&addr)->sin_port));
  return 1;
}


/* sock:tls_info(): {version, cipher, alpn, peer_subject, peer_verified}
 * once a handshake is done, else nothing. */
static int tcp_tls_info(lua_State *L) {
  ls_tcp_t *s = check_tcp(L);
  if (s == NULL || s->closed || !s->stream.tls || !s->stream.tls_ready)
    return 0;
  ls__tls_push_info(L, s->stream.tls);
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
  tcp_unref(s, &s->drain_ref);
  tcp_unref(s, &s->hs_ref);
  tcp_close(s, NULL);
  tcp_maybe_free(s);
  return 0;
}


static const luaL_Reg tcp_methods[] = {
  {"write", tcp_write},
  {"read", tcp_read},
  {"cancel_read", tcp_cancel_read},
  {"tls", tcp_tls},
  {"tls_info", tcp_tls_info},
  {"ws_attach", tcp_ws_attach},
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


/* resolve_sync(name): the addresses a host name has (numeric strings, in
 * the resolver's order, duplicates dropped), or nil, err. It blocks: for
 * startup only (the listening address), never from a request. */
int ls__lua_resolve_sync(lua_State *L) {
  ls_runtime_t *rt = ls__runtime(L);
  const char *name = luaL_checkstring(L, 1);
  struct addrinfo hints;
  memset(&hints, 0, sizeof(hints));
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  uv_getaddrinfo_t req;
  int err = uv_getaddrinfo(rt->loop, &req, NULL, name, NULL, &hints);
  if (err)
    return ls__push_error(L, err);
  lua_newtable(L);
  int n = 0;
  for (struct addrinfo *ai = req.addrinfo; ai; ai = ai->ai_next) {
    char host[INET6_ADDRSTRLEN];
    if (ai->ai_family == AF_INET)
      uv_ip4_name((struct sockaddr_in *)ai->ai_addr, host, sizeof(host));
    else if (ai->ai_family == AF_INET6)
      uv_ip6_name((struct sockaddr_in6 *)ai->ai_addr, host, sizeof(host));
    else
      continue;
    int dup = 0;
    for (int i = 1; i <= n && !dup; i++) {
      lua_rawgeti(L, -1, i);
      dup = strcmp(lua_tostring(L, -1), host) == 0;
      lua_pop(L, 1);
    }
    if (!dup) {
      lua_pushstring(L, host);
      lua_rawseti(L, -2, ++n);
    }
  }
  uv_freeaddrinfo(req.addrinfo);
  return 1;
}
