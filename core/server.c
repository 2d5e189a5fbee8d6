/* server.c: listeners, client connections, reads, writes, timeouts and
 * graceful shutdown. Everything here runs on the loop thread of its runtime. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define LS_SERVER_MT "luaserve.server"
/* A client that pipelines more than this ahead of our answers is not read
 * until we catch up: memory per connection stays bounded. */
#define LS_MAX_PENDING (256 * 1024)
/* How long a lingering close waits for the client's EOF. */
#define LS_LINGER_MS 2000

typedef struct {
  uv_write_t req;
  ls_conn_t *conn;
  size_t len;
  char data[];
} write_req_t;

typedef struct {
  ls_server_t *server;      /* NULL once closed */
} server_ud_t;

static void conn_process(ls_conn_t *c);
static void conn_resolve_drain(ls_conn_t *c, int ok);
static void conn_on_read(uv_stream_t *stream, ssize_t nread,
                         const uv_buf_t *buf);


/* ---- connection lifetime ---------------------------------------------- */

/* Free the connection once libuv and Lua are both done with it. */
static void conn_maybe_free(ls_conn_t *c) {
  if (c->handles_open > 0 || c->lua_holds > 0 || c->writes_pending > 0)
    return;
  ls__buf_free(&c->req);
  ls__buf_free(&c->hdrs);
  ls__buf_free(&c->body);
  ls__buf_free(&c->pending);
  ls__buf_free(&c->out);
  free(c);
}


static void conn_on_close(uv_handle_t *h) {
  ls_conn_t *c = h->data;
  c->handles_open--;
  conn_maybe_free(c);
}


/* Unlink from the server, tell Lua if it holds a request, close both
 * handles. Never frees: that happens in the close callbacks. */
void ls__conn_close(ls_conn_t *c) {
  ls_server_t *s = c->server;
  if (c->state == LS_CONN_CLOSING)
    return;
  int was_busy = c->state == LS_CONN_BUSY;
  c->state = LS_CONN_CLOSING;
  if (c->prev) c->prev->next = c->next; else s->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  c->prev = c->next = NULL;
  uv_close((uv_handle_t *)&c->tcp, conn_on_close);
  uv_close((uv_handle_t *)&c->timer, conn_on_close);
  if (c->drain_ref > 0)
    conn_resolve_drain(c, 0);
  if (was_busy && c->lua_holds > 0 && !s->rt->closing) {
    /* The client went away mid-request: Lua cancels its waits and calls
     * release(conn) (possibly right now). */
    lua_State *L = s->rt->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, s->abort_ref);
    lua_pushlightuserdata(L, c);
    ls__pcall(L, 1, 0, "abort");
  }
  ls__shutdown_check(s->rt);
}


/* Header or body too slow: 408. Idle keep-alive, or lingering: close.
 * Deadlines move lazily (see conn_timer_arm): a timer that fires early only
 * re-arms itself for the time left. */
static void conn_on_timeout(uv_timer_t *t) {
  ls_conn_t *c = t->data;
  uint64_t now = uv_now(t->loop);
  if (c->deadline == 0)
    return;
  if (now < c->deadline) {
    c->timer_due = c->deadline;
    uv_timer_start(&c->timer, conn_on_timeout, c->deadline - now, 0);
    return;
  }
  c->deadline = 0;
  if (c->state == LS_CONN_READING) {
    ls__http_error_response(c, 408, "request timeout");
    return;
  }
  ls__conn_close(c);
}


/* Set the connection's one deadline, ms from now (0: none). Every request
 * moves it several times, so the libuv timer is only restarted when the
 * deadline comes earlier than the timer is due; otherwise the timer fires,
 * sees the later deadline and re-arms (no timer-heap work per request). */
static void conn_timer_arm(ls_conn_t *c, uint64_t ms) {
  if (ms == 0) {
    c->deadline = 0;
    return;
  }
  c->deadline = uv_now(c->timer.loop) + ms;
  if (!uv_is_active((uv_handle_t *)&c->timer) || c->timer_due > c->deadline) {
    c->timer_due = c->deadline;
    uv_timer_start(&c->timer, conn_on_timeout, ms, 0);
  }
}


static void conn_on_shutdown(uv_shutdown_t *req, int status) {
  if (status < 0)   /* also UV_ECANCELED when the connection closed first */
    ls__conn_close(req->handle->data);
}


/* Closing at once after an error answer would turn into an RST if the
 * client is still sending (a body we refused), and an RST can destroy the
 * answer before the client reads it. So: half-close once the answer is
 * written (uv_shutdown waits for queued writes), read and discard until
 * the client's EOF, and close then or after LS_LINGER_MS. */
void ls__conn_linger(ls_conn_t *c) {
  if (c->state == LS_CONN_CLOSING || c->state == LS_CONN_LINGER)
    return;
  c->state = LS_CONN_LINGER;
  c->keepalive = 0;
  if (uv_shutdown(&c->shutdown, (uv_stream_t *)&c->tcp, conn_on_shutdown)) {
    ls__conn_close(c);
    return;
  }
  conn_timer_arm(c, LS_LINGER_MS);
  if (c->read_stopped &&
      uv_read_start((uv_stream_t *)&c->tcp, ls__read_alloc, conn_on_read) == 0)
    c->read_stopped = 0;
}


/* ---- writing ------------------------------------------------------------ */

/* A streamed response waits for the socket (drain_ref): wake it with true
 * (the queue is written) or nil, "closed". */
static void conn_resolve_drain(ls_conn_t *c, int ok) {
  ls_runtime_t *rt = c->server->rt;
  int ref = c->drain_ref;
  c->drain_ref = 0;
  if (rt->closing)
    return;
  if (ok) {
    lua_pushboolean(rt->L, 1);
    ls__resolve(rt, ref, 1);
  } else {
    lua_pushnil(rt->L);
    lua_pushliteral(rt->L, "closed");
    ls__resolve(rt, ref, 2);
  }
}


static void conn_on_write(uv_write_t *req, int status) {
  write_req_t *w = (write_req_t *)req;
  ls_conn_t *c = w->conn;
  free(w);
  c->writes_pending--;
  if (status < 0) {
    ls__conn_close(c);
  } else if (c->writes_pending == 0 && c->state != LS_CONN_CLOSING) {
    if (c->drain_ref > 0)
      conn_resolve_drain(c, 1);
    if (c->close_after_write)
      ls__conn_close(c);
    else if (c->read_stopped && (c->state == LS_CONN_IDLE ||
                                 c->state == LS_CONN_READING))
      conn_process(c);
  }
  conn_maybe_free(c);
}


int ls__conn_write(ls_conn_t *c, uv_buf_t *bufs, unsigned nbufs) {
  size_t total = 0, done = 0;
  if (c->state == LS_CONN_CLOSING)
    return UV_ECANCELED;
  for (unsigned i = 0; i < nbufs; i++)
    total += bufs[i].len;
  if (c->writes_pending == 0) {
    int n = uv_try_write((uv_stream_t *)&c->tcp, bufs, nbufs);
    if (n < 0 && n != UV_EAGAIN)
      return n;
    if (n > 0)
      done = (size_t)n;
    if (done == total)
      return 0;
  }
  /* The socket is full: copy what is left, it is written in order. */
  write_req_t *w = malloc(sizeof(*w) + (total - done));
  if (w == NULL)
    return UV_ENOMEM;
  w->conn = c;
  w->len = 0;
  for (unsigned i = 0; i < nbufs; i++) {
    size_t skip = done > bufs[i].len ? bufs[i].len : done;
    done -= skip;
    memcpy(w->data + w->len, bufs[i].base + skip, bufs[i].len - skip);
    w->len += bufs[i].len - skip;
  }
  uv_buf_t b = uv_buf_init(w->data, (unsigned)w->len);
  int err = uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, conn_on_write);
  if (err < 0) {
    free(w);
    return err;
  }
  c->writes_pending++;
  return 0;
}


/* ---- reading and parsing ------------------------------------------------ */

static void conn_read_stop(ls_conn_t *c) {
  if (!c->read_stopped) {
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->read_stopped = 1;
  }
}


/* Hand the parsed request to Lua. The request's data is copied onto the Lua
 * stack, so the connection's parse buffers are free again afterwards. */
static void conn_dispatch(ls_conn_t *c) {
  ls_server_t *s = c->server;
  lua_State *L = s->rt->L;
  if (s->lim.limit_concurrency > 0 && s->inflight >= s->lim.limit_concurrency) {
    c->keepalive = 0;
    ls__http_error_response(c, 503, "Service Unavailable");
    return;
  }
  if (s->draining)
    c->keepalive = 0;
  c->state = LS_CONN_BUSY;
  c->lua_holds = 1;
  c->is_head = c->parser.method == HTTP_HEAD;
  c->started = uv_now(s->rt->loop);
  s->inflight++;
  conn_timer_arm(c, 0);
  lua_rawgeti(L, LUA_REGISTRYINDEX, s->dispatch_ref);
  lua_pushlightuserdata(L, c);
  int n = ls__http_push_request(L, c);
  ls__http_reset(c);
  if (ls__pcall_entry(s->rt, 1 + n, "dispatch") != 0 && c->lua_holds > 0) {
    /* The framework itself failed: answer for it rather than hang. */
    c->lua_holds = 0;
    s->inflight--;
    c->state = LS_CONN_READING;
    ls__http_error_response(c, 500, "Internal Server Error");
  } else if (c->state == LS_CONN_BUSY) {
    /* The request waits in Lua (a sleep, an upstream): a parked request
     * keeps no parse buffers; the next request allocates them again. */
    ls__buf_free(&c->req);
    ls__buf_free(&c->hdrs);
    ls__buf_free(&c->body);
  }
}


/* The response to the current request is written: go on with the next
 * request on this connection (pipelined bytes first), or close. */
void ls__conn_request_done(ls_conn_t *c) {
  c->lua_holds = 0;
  c->server->inflight--;
  if (c->state == LS_CONN_CLOSING) {
    conn_maybe_free(c);
    return;
  }
  if (!c->keepalive || c->server->draining) {
    if (c->pending.len > 0)   /* unread pipelined bytes: avoid an RST */
      ls__conn_linger(c);
    else if (c->writes_pending > 0)
      c->close_after_write = 1;
    else
      ls__conn_close(c);
    return;
  }
  c->state = LS_CONN_IDLE;
  if (!c->in_process)
    conn_process(c);
}


/* Parse what is in `data`; dispatch complete requests one at a time. Returns
 * how many bytes were consumed (less than len when a request is in Lua). */
static size_t conn_parse(ls_conn_t *c, const char *data, size_t len) {
  size_t off = 0;
  while (off < len &&
         (c->state == LS_CONN_IDLE || c->state == LS_CONN_READING)) {
    if (c->state == LS_CONN_IDLE) {
      c->state = LS_CONN_READING;
      conn_timer_arm(c, c->server->lim.header_timeout);
    }
    llhttp_errno_t err = llhttp_execute(&c->parser, data + off, len - off);
    if (err == HPE_OK) {
      off = len;
      if (c->in_body)   /* a body arriving: its pauses are bounded instead */
        conn_timer_arm(c, c->server->lim.header_timeout);
      break;
    }
    if (err == HPE_PAUSED) {   /* on_message_complete: a whole request */
      off = (size_t)(llhttp_get_error_pos(&c->parser) - data);
      llhttp_resume(&c->parser);
      conn_dispatch(c);
      continue;
    }
    if (err == HPE_PAUSED_UPGRADE) {
      /* Bytes after an Upgrade or CONNECT request: no upgrades here, that
       * request is answered with a close (http.c); nothing more is read. */
      return len;
    }
    /* A malformed request: a 4xx and a close, nothing reaches Lua. The
     * detail: our callback's reason, else llhttp's. */
    int status = c->error_status ? c->error_status : 400;
    const char *reason = c->error_status ? c->error_reason
                                         : llhttp_get_error_reason(&c->parser);
    ls__http_error_response(c, status, reason);
    return len;
  }
  return off;
}


/* Parse buffered bytes left from an earlier read, then read again. */
static void conn_process(ls_conn_t *c) {
  c->in_process = 1;
  while (c->pending.len > 0 &&
         (c->state == LS_CONN_IDLE || c->state == LS_CONN_READING)) {
    size_t n = conn_parse(c, c->pending.data, c->pending.len);
    memmove(c->pending.data, c->pending.data + n, c->pending.len - n);
    c->pending.len -= n;
  }
  c->in_process = 0;
  if (c->state == LS_CONN_CLOSING || c->state == LS_CONN_LINGER)
    return;
  if (c->pending.len == 0)
    ls__buf_free(&c->pending);
  if (c->state == LS_CONN_IDLE)
    conn_timer_arm(c, c->server->lim.keepalive_timeout);
  if (c->read_stopped && c->pending.len < LS_MAX_PENDING &&
      c->writes_pending == 0) {
    if (uv_read_start((uv_stream_t *)&c->tcp, ls__read_alloc, conn_on_read) == 0)
      c->read_stopped = 0;
  }
}


static void conn_read(ls_conn_t *c, ssize_t nread, const uv_buf_t *buf) {
  if (nread == 0)
    return;
  if (nread < 0) {
    /* EOF or error. With a request in Lua this cancels it (abort). */
    ls__conn_close(c);
    return;
  }
  if (c->state == LS_CONN_CLOSING || c->state == LS_CONN_LINGER)
    return;   /* lingering: what the client still sends is discarded */
  size_t used = 0;
  if (c->pending.len == 0) {
    c->in_process = 1;
    used = conn_parse(c, buf->base, (size_t)nread);
    c->in_process = 0;
    if (c->state == LS_CONN_CLOSING || c->state == LS_CONN_LINGER)
      return;
  }
  if (used < (size_t)nread) {
    /* A request is in Lua: keep the rest for when it is answered. */
    if (ls__buf_append(&c->pending, buf->base + used, (size_t)nread - used)) {
      ls__conn_close(c);
      return;
    }
    if (c->pending.len >= LS_MAX_PENDING)
      conn_read_stop(c);
    if (c->state != LS_CONN_BUSY)
      conn_process(c);
  } else if (c->state == LS_CONN_IDLE) {
    conn_timer_arm(c, c->server->lim.keepalive_timeout);
  }
  if (c->writes_pending > 0)   /* the client does not read its answers */
    conn_read_stop(c);
}


static void conn_on_read(uv_stream_t *stream, ssize_t nread,
                         const uv_buf_t *buf) {
  conn_read(stream->data, nread, buf);
  ls__read_done((uv_handle_t *)stream, buf);
}


static void server_on_connection(uv_stream_t *listener, int status) {
  ls_server_t *s = listener->data;
  if (status < 0) {
    ls__log("warn", "accept: %s", uv_strerror(status));
    return;
  }
  ls_conn_t *c = calloc(1, sizeof(*c));
  if (c == NULL)
    return;
  c->server = s;
  uv_tcp_init(s->rt->loop, &c->tcp);
  uv_timer_init(s->rt->loop, &c->timer);
  c->tcp.data = c->timer.data = c;
  c->handles_open = 2;
  c->state = LS_CONN_IDLE;
  c->next = s->conns;
  if (s->conns) s->conns->prev = c;
  s->conns = c;
  llhttp_init(&c->parser, HTTP_REQUEST, &ls__http_settings);
  c->parser.data = c;
  if (uv_accept(listener, (uv_stream_t *)&c->tcp) != 0) {
    ls__conn_close(c);
    return;
  }
  uv_tcp_nodelay(&c->tcp, 1);
  /* The client's address, once: the access log wants it per request, and
   * still after the client left (a 499). */
  struct sockaddr_storage peer;
  int plen = sizeof(peer);
  if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&peer, &plen) == 0)
    c->peer_port = (uint16_t)ls__format_addr(&peer, c->peer_host,
                                             sizeof(c->peer_host));
  c->read_stopped = 1;
  conn_process(c);   /* starts reading */
  /* The first request is awaited for the header timeout, not the keep-alive
   * one: a client that connects and sends nothing is a slow sender. */
  conn_timer_arm(c, s->lim.header_timeout);
}


/* ---- servers ------------------------------------------------------------ */

static void server_on_close(uv_handle_t *h) {
  ls_server_t *s = h->data;
  s->listening = 0;
  ls__shutdown_check(s->rt);
}


void ls__server_stop_listening(ls_server_t *s) {
  if (s->listening && !uv_is_closing((uv_handle_t *)&s->listener))
    uv_close((uv_handle_t *)&s->listener, server_on_close);
}


/* Read one integer option from the table at index 1. */
static uint64_t opt_uint(lua_State *L, const char *name, uint64_t def) {
  lua_getfield(L, 1, name);
  uint64_t v = lua_isnumber(L, -1) ? (uint64_t)lua_tonumber(L, -1) : def;
  lua_pop(L, 1);
  return v;
}


/* listen{host=, port=, dispatch=fn, abort=fn, limits...}: a server userdata,
 * or nil, err (e.g. "address already in use"). */
int ls__lua_listen(lua_State *L) {
  ls_runtime_t *rt = ls__runtime(L);
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_getfield(L, 1, "host");
  const char *host = luaL_optstring(L, -1, "127.0.0.1");
  lua_pop(L, 1);
  int port = (int)opt_uint(L, "port", 8080);
  struct sockaddr_storage addr;
  int err = uv_ip4_addr(host, port, (struct sockaddr_in *)&addr);
  if (err)
    err = uv_ip6_addr(host, port, (struct sockaddr_in6 *)&addr);
  if (err)
    return luaL_error(L, "listen: host must be a numeric address, got '%s'",
                      host);
  ls_server_t *s = calloc(1, sizeof(*s));
  if (s == NULL)
    return ls__push_error(L, UV_ENOMEM);
  s->rt = rt;
  s->lim.max_header_bytes = opt_uint(L, "max_header_bytes", 16384);
  s->lim.max_headers = (unsigned)opt_uint(L, "max_headers", 100);
  s->lim.max_body = opt_uint(L, "max_body", 1024 * 1024);
  s->lim.header_timeout = opt_uint(L, "header_timeout_ms", 10000);
  s->lim.keepalive_timeout = opt_uint(L, "keepalive_timeout_ms", 5000);
  s->lim.limit_concurrency = (unsigned)opt_uint(L, "limit_concurrency", 0);
  uv_tcp_init(rt->loop, &s->listener);
  s->listener.data = s;
  err = uv_tcp_bind(&s->listener, (struct sockaddr *)&addr, 0);
  if (err == 0)
    err = uv_listen((uv_stream_t *)&s->listener,
                    (int)opt_uint(L, "backlog", 1024), server_on_connection);
  if (err) {
    uv_close((uv_handle_t *)&s->listener, (uv_close_cb)free);
    return ls__push_error(L, err);
  }
  s->listening = 1;
  lua_getfield(L, 1, "dispatch");
  luaL_checktype(L, -1, LUA_TFUNCTION);
  s->dispatch_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_getfield(L, 1, "abort");
  luaL_checktype(L, -1, LUA_TFUNCTION);
  s->abort_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  s->next_server = rt->servers;
  rt->servers = s;
  server_ud_t *ud = lua_newuserdata(L, sizeof(*ud));
  ud->server = s;
  luaL_getmetatable(L, LS_SERVER_MT);
  lua_setmetatable(L, -2);
  return 1;
}


static ls_server_t *check_server(lua_State *L) {
  server_ud_t *ud = luaL_checkudata(L, 1, LS_SERVER_MT);
  return ud->server;
}


/* server:address(): host, port actually bound (port 0 picks one). */
static int server_address(lua_State *L) {
  ls_server_t *s = check_server(L);
  struct sockaddr_storage addr;
  int len = sizeof(addr);
  if (s == NULL || !s->listening)
    return ls__push_error(L, UV_EBADF);
  uv_tcp_getsockname(&s->listener, (struct sockaddr *)&addr, &len);
  return ls__push_addr(L, &addr);
}


/* server:close(): stop listening and close every connection now. */
static int server_close(lua_State *L) {
  ls_server_t *s = check_server(L);
  if (s == NULL)
    return 0;
  ls__server_stop_listening(s);
  while (s->conns)
    ls__conn_close(s->conns);
  return 0;
}


static const luaL_Reg server_methods[] = {
  {"address", server_address},
  {"close", server_close},
  {NULL, NULL},
};


void ls__server_open(lua_State *L) {
  ls__new_class(L, LS_SERVER_MT, server_methods, NULL);
}


/* Close everything at exit; the runtime then runs the loop until closed.
 * Server structs are freed here: no callback can reach them any more. */
void ls__server_close_all(ls_runtime_t *rt) {
  while (rt->servers) {
    ls_server_t *s = rt->servers;
    rt->servers = s->next_server;
    if (s->listening && !uv_is_closing((uv_handle_t *)&s->listener))
      uv_close((uv_handle_t *)&s->listener, NULL);
    s->listening = 0;
    /* Lua runs no more (rt->closing): drop its holds so that the close
     * callbacks free every connection before s goes. */
    while (s->conns) {
      s->conns->lua_holds = 0;
      ls__conn_close(s->conns);
    }
    uv_run(rt->loop, UV_RUN_NOWAIT);
    luaL_unref(rt->L, LUA_REGISTRYINDEX, s->dispatch_ref);
    luaL_unref(rt->L, LUA_REGISTRYINDEX, s->abort_ref);
    free(s);
  }
  ls__shutdown_close(rt);
}
