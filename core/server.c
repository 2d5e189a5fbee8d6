/* server.c: listeners and client connections: reading and parsing requests
 * on a connection's stream (stream.c), keep-alive and pipelining, timeouts,
 * lingering closes, and what Lua hears of a connection (a request to
 * dispatch; a client that went away). Everything here runs on the loop
 * thread of its runtime. */
#define _GNU_SOURCE   /* accept4 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

#define LS_SERVER_MT "luaserve.server"
/* A client that pipelines more than this ahead of our answers is not read
 * until we catch up: memory per connection stays bounded. */
#define LS_MAX_PENDING (256 * 1024)
/* How long a lingering close waits for the client's EOF. */
#define LS_LINGER_MS 2000

#define CONN(st) ((ls_conn_t *)(st))   /* the stream is the first member */

typedef struct {
  ls_server_t *server;      /* NULL once closed */
} server_ud_t;

static void conn_process(ls_conn_t *c);


/* ---- connection lifetime ---------------------------------------------- */

/* Free the connection once libuv, Lua and the notify queue are done. */
static void conn_maybe_free(ls_conn_t *c) {
  if (c->stream_open || c->lua_holds > 0 || c->notify.queued || c->in_notify)
    return;
  ls__buf_free(&c->req);
  ls__buf_free(&c->hdrs);
  ls__buf_free(&c->body);
  ls__buf_free(&c->pending);
  ls__buf_free(&c->out);
  ls__buf_free(&c->written_refs);
  if (c->slot != UINT32_MAX)
    ls__slot_free(c->rt, c->slot);
  free(c);
}


/* Resolve every target waiting for the answers to be written: true, or
 * nil, "closed" when the connection closed first. */
static void conn_resolve_written(ls_conn_t *c, int ok) {
  ls_runtime_t *rt = c->rt;
  /* Taken off the connection first: a task resumed by a resolve may
   * answer on it again and add to (reallocate) the list. */
  ls_buf_t list = c->written_refs;
  memset(&c->written_refs, 0, sizeof(c->written_refs));
  size_t n = list.len / sizeof(int);
  int *refs = (int *)list.data;
  for (size_t i = 0; i < n; i++) {
    if (rt->closing)
      break;
    if (ok) {
      lua_pushboolean(rt->L, 1);
      ls__resolve(rt, refs[i], 1);
    } else {
      lua_pushnil(rt->L);
      lua_pushliteral(rt->L, "closed");
      ls__resolve(rt, refs[i], 2);
    }
  }
  ls__buf_free(&list);
}


int ls__conn_when_written(ls_conn_t *c, lua_State *L, int idx) {
  if (ls__buf_reserve(&c->written_refs, sizeof(int)))
    return UV_ENOMEM;
  lua_pushvalue(L, idx);
  int ref = luaL_ref(L, LUA_REGISTRYINDEX);
  memcpy(c->written_refs.data + c->written_refs.len, &ref, sizeof(int));
  c->written_refs.len += sizeof(int);
  return 0;
}


/* What Lua must hear, from the loop: the client went away (abort), a
 * streamed write waiting for the socket will never drain, answers that
 * background tasks wait for are written (or never will be), pipelined
 * bytes wait to be parsed. */
static void conn_on_notify(ls_defer_t *d) {
  ls_conn_t *c = (ls_conn_t *)((char *)d - offsetof(ls_conn_t, notify));
  ls_runtime_t *rt = c->rt;
  c->in_notify = 1;
  if (c->notify_written) {
    c->notify_written = 0;
    conn_resolve_written(c, c->state != LS_CONN_CLOSING);
  }
  if (c->notify_closed && c->drain_ref > 0) {
    int ref = c->drain_ref;
    c->drain_ref = 0;
    lua_pushnil(rt->L);
    lua_pushliteral(rt->L, "closed");
    ls__resolve(rt, ref, 2);
  }
  c->notify_closed = 0;
  if (c->notify_abort && c->lua_holds > 0) {
    /* Lua cancels the request's task and calls release(handle). */
    lua_State *L = rt->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, c->server->abort_ref);
    lua_pushnumber(L, c->handle);
    ls__pcall_entry(rt, 1, "abort");
  }
  c->notify_abort = 0;
  if (c->notify_body) {   /* a streamed body's reader (body.c), after the
                             abort: a cancelled task reads no more */
    c->notify_body = 0;
    ls__body_notify(c);
  }
  if (c->notify_process) {
    c->notify_process = 0;
    if (c->state == LS_CONN_IDLE || c->state == LS_CONN_READING)
      conn_process(c);
  }
  if (c->notify_ws_early) {   /* frames the client sent with its upgrade */
    c->notify_ws_early = 0;
    if (c->ws && c->state == LS_CONN_WS && c->pending.len)
      ls__ws_on_read(c->ws, c->pending.data, c->pending.len);
    ls__buf_free(&c->pending);
  }
  c->in_notify = 0;
  conn_maybe_free(c);
}


static void conn_notify(ls_conn_t *c) {
  ls__defer(c->rt, &c->notify, conn_on_notify);
}


void ls__conn_notify(ls_conn_t *c) {
  conn_notify(c);
}


/* Unlink from the server, close the stream; Lua hears of a request it
 * holds through the notify queue. Never frees: the stream's close does. */
void ls__conn_close(ls_conn_t *c) {
  ls_server_t *s = c->server;
  if (c->state == LS_CONN_CLOSING)
    return;
  /* A request in Lua is cancelled when its client leaves; a WebSocket's
   * too, unless its close handshake went through (the handler goes on). */
  int was_busy = c->state == LS_CONN_BUSY ||
                 (c->state == LS_CONN_WS && !(c->ws && ls__ws_clean(c->ws)));
  c->state = LS_CONN_CLOSING;
  c->rt->wslot->conns--;
  if (c->rt->wslot_shared)
    __atomic_sub_fetch(&ls__shm_region->conns_total, 1, __ATOMIC_RELAXED);
  if (c->prev) c->prev->next = c->next; else s->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  c->prev = c->next = NULL;
  if (c->send)
    ls__send_detach(c);   /* a file mid-send: it stops */
  /* The client left while its request was in Lua: nothing more goes to
   * it, and a reset frees both ends at once. A FIN would leave the
   * client's port in TIME_WAIT, and a client that reconnects at once (a
   * pool, a benchmark's next run) reuses such ports on loopback: a SYN
   * that meets this end still closing waits a second to be resent. */
  if (was_busy && c->stream.eof)
    ls__stream_reset(&c->stream);
  ls__stream_close(&c->stream);
  if (!c->rt->closing) {
    if (c->drain_ref > 0)
      c->notify_closed = 1;
    if (c->body_ref > 0)
      c->notify_body = 1;
    if (was_busy && c->lua_holds > 0)
      c->notify_abort = 1;
    if (c->written_refs.len)
      c->notify_written = 1;
    if (c->notify_closed || c->notify_abort || c->notify_written ||
        c->notify_body)
      conn_notify(c);
  } else {
    ls__buf_free(&c->written_refs);   /* Lua is gone: nothing to release */
  }
  ls__shutdown_check(c->rt);
}


static void conn_on_close(ls_stream_t *st) {
  ls_conn_t *c = CONN(st);
  c->stream_open = 0;
  if (c->ws) {
    ls__ws_transport_closed(c->ws);
    c->ws = NULL;
  }
  conn_maybe_free(c);
}


/* Header or body too slow: 408. Idle keep-alive, a handshake that never
 * ends, or lingering: close. A client that reads nothing: close. */
static void conn_on_timeout(ls_stream_t *st, int kind) {
  ls_conn_t *c = CONN(st);
  if (c->ws && kind == LS_TIMEOUT_DEADLINE) {
    ls__ws_on_timeout(c->ws);
    return;
  }
  if (kind == LS_TIMEOUT_SEND) {
    ls__log_at(c->rt, 2, "info", "send timeout: %s:%u took no bytes for %.0f s; "
               "connection closed", c->peer_host, c->peer_port,
               (double)c->server->lim.send_timeout / 1000.0);
    ls__conn_close(c);
  } else if (c->state == LS_CONN_READING) {
    ls__http_error_response(c, 408, "request timeout");
  } else if (c->state == LS_CONN_BUSY && c->body_stream == LS_BODY_OPEN) {
    ls__body_fail(c, 408, "request body timeout");
  } else {
    ls__conn_close(c);
  }
}


/* The end of the client's input (EOF, reset) closes: a request in Lua is
 * cancelled. */
static void conn_on_end(ls_stream_t *st, int err) {
  ls_conn_t *c = CONN(st);
  if (c->ws)
    ls__ws_on_end(c->ws, err);   /* it closes the connection */
  else
    ls__conn_close(c);
}


/* What a plain HTTP request to the TLS port gets, unencrypted (as nginx
 * does): a browser or curl shows why instead of an empty reply. */
static const char plain_to_tls[] =
    "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n"
    "Content-Length: 49\r\nConnection: close\r\n\r\n"
    "This port speaks HTTPS: use https:// to connect.\n";


static void conn_on_handshake(ls_stream_t *st, int err) {
  ls_conn_t *c = CONN(st);
  if (err == 0)
    return;
  /* Bad input on the TLS port (plain HTTP, a broken ClientHello, a client
   * gone mid-handshake) closes this connection only. */
  const char *why = err == LS_ETLS ? ls__stream_error(st) : ls_strerror(err);
  ls__log_at(c->rt, 1, "debug", "tls: %s:%u: handshake failed: %s",
             c->peer_host, c->peer_port, why);
  if (strcmp(why, "http request") == 0) {   /* best effort: then close */
    uv_buf_t b = uv_buf_init((char *)plain_to_tls, sizeof(plain_to_tls) - 1);
    uv_try_write((uv_stream_t *)&st->tcp, &b, 1);
  }
  ls__conn_close(c);
}


/* Closing at once after an error answer would turn into an RST if the
 * client is still sending (a body we refused), and an RST can destroy the
 * answer before the client reads it. So: half-close once the answer is
 * written, read and discard until the client's EOF, and close then or
 * after LS_LINGER_MS. */
void ls__conn_linger(ls_conn_t *c) {
  if (c->state == LS_CONN_CLOSING || c->state == LS_CONN_LINGER)
    return;
  c->state = LS_CONN_LINGER;
  c->keepalive = 0;
  ls__stream_shutdown(&c->stream);
  if (c->state != LS_CONN_LINGER)
    return;   /* the shutdown failed: closed */
  ls__stream_deadline(&c->stream, LS_LINGER_MS);
  ls__stream_read_start(&c->stream);
}


/* ---- writing ------------------------------------------------------------ */

int ls__conn_write(ls_conn_t *c, uv_buf_t *bufs, unsigned nbufs) {
  if (c->state == LS_CONN_CLOSING)
    return UV_ECANCELED;
  return ls__stream_write(&c->stream, bufs, nbufs);
}


/* The socket took what waited (or failed). Wake a streamed write that
 * waits; close a connection that was to close after its answer; else
 * the keep-alive timer starts now, and reading goes on. */
static void conn_on_drain(ls_stream_t *st, int status) {
  ls_conn_t *c = CONN(st);
  if (c->ws) {
    ls__ws_on_drain(c->ws, status);
    return;
  }
  if (status < 0) {   /* the client is gone */
    ls__conn_close(c);
    return;
  }
  if (c->send)   /* a file body waits for what was queued before it */
    ls__send_on_drain(c);
  if (c->drain_ref > 0) {
    int ref = c->drain_ref;
    c->drain_ref = 0;
    lua_pushboolean(c->rt->L, 1);
    ls__resolve(c->rt, ref, 1);
  }
  if (c->written_refs.len && ls__stream_queued(st) == 0 &&
      c->state != LS_CONN_CLOSING)
    conn_resolve_written(c, 1);
  if (c->state == LS_CONN_CLOSING || c->state == LS_CONN_LINGER)
    return;
  if (c->close_after_write)
    ls__conn_close(c);
  else if (c->state == LS_CONN_IDLE || c->state == LS_CONN_READING)
    conn_process(c);
  else if (c->body_stream == LS_BODY_OPEN)
    ls__body_pump(c);   /* reading stopped while the 100 Continue waited */
}


/* ---- reading and parsing ------------------------------------------------ */

/* Hand the parsed request to Lua. The request's data is copied onto the Lua
 * stack, so the connection's parse buffers are free again afterwards. */
static void conn_dispatch(ls_conn_t *c) {
  ls_server_t *s = c->server;
  lua_State *L = c->rt->L;
  if (s->lim.limit_concurrency > 0 && s->inflight >= s->lim.limit_concurrency) {
    c->keepalive = 0;
    ls__body_done(c);
    ls__http_error_response(c, 503, "Service Unavailable");
    return;
  }
  if (s->draining)
    c->keepalive = 0;
  c->state = LS_CONN_BUSY;
  c->lua_holds = 1;
  c->is_head = c->parser.method == HTTP_HEAD;
  c->handle = ls__slot_next(c->rt, c->slot);
  s->inflight++;
  ls_wslot_t *ws = c->rt->wslot;
  ws->inflight++;
  if (++ws->requests == ws->max_requests)   /* --max-requests */
    ls__worker_retire();
  ls__stream_deadline(&c->stream, 0);
  lua_rawgeti(L, LUA_REGISTRYINDEX, s->dispatch_ref);
  lua_pushnumber(L, c->handle);
  int n = ls__http_push_request(L, c);
  ls__http_reset(c);
  if (ls__pcall_entry(c->rt, 1 + n, "dispatch") != 0 && c->lua_holds > 0) {
    /* The framework itself failed: answer for it rather than hang. */
    c->lua_holds = 0;
    ls__slot_next(c->rt, c->slot);
    s->inflight--;
    ws->inflight--;
    c->state = LS_CONN_READING;
    ls__body_done(c);
    ls__http_error_response(c, 500, "Internal Server Error");
  } else if (c->state == LS_CONN_BUSY) {
    /* The request waits in Lua (a sleep, an upstream): a parked request
     * keeps no parse buffers; the next request allocates them again. */
    ls__buf_free(&c->req);
    ls__buf_free(&c->hdrs);
    ls__buf_free(&c->body);
  }
}


/* Keep-alive: wait for the next request once the answers are written
 * (a slow reader of a big answer is bounded by the send timeout, not cut
 * off by the idle one), and read while the client reads its answers. */
static void conn_await_next(ls_conn_t *c) {
  int drained = ls__stream_queued(&c->stream) == 0;
  if (c->state == LS_CONN_IDLE) {
    ls__stream_deadline(&c->stream, drained ? c->server->lim.keepalive_timeout
                                            : 0);
    c->idle_since = uv_now(c->rt->loop);
  }
  if (drained && c->pending.len < LS_MAX_PENDING)
    ls__stream_read_start(&c->stream);
}


/* The response to the current request is written (or queued): go on with
 * the next request on this connection, or close. Parsing pipelined bytes
 * dispatches into Lua, so from inside a Lua call it is deferred. */
void ls__conn_request_done(ls_conn_t *c) {
  c->lua_holds = 0;
  ls__slot_next(c->rt, c->slot);   /* the request's handle goes stale */
  c->server->inflight--;
  c->rt->wslot->inflight--;
  int unread = c->body_stream ? ls__body_done(c) : 0;
  if (c->state == LS_CONN_CLOSING) {
    conn_maybe_free(c);
    return;
  }
  if (c->state == LS_CONN_WS)
    return;   /* the WebSocket closes the connection after its handshake */
  if (!c->keepalive || unread || c->server->draining) {
    if (c->pending.len > 0 || unread)   /* unread bytes: avoid an RST */
      ls__conn_linger(c);
    else if (ls__stream_queued(&c->stream) > 0)
      c->close_after_write = 1;
    else
      ls__conn_close(c);
    return;
  }
  c->state = LS_CONN_IDLE;
  if (c->in_process)
    return;   /* the parse loop goes on by itself */
  if (c->pending.len > 0) {
    c->notify_process = 1;
    conn_notify(c);
  } else {
    conn_await_next(c);
  }
}


/* Parse what is in `data`; dispatch complete requests one at a time. Returns
 * how many bytes were consumed (less than len when a request is in Lua). */
static size_t conn_parse(ls_conn_t *c, const char *data, size_t len) {
  size_t off = 0;
  while (off < len &&
         (c->state == LS_CONN_IDLE || c->state == LS_CONN_READING ||
          (c->state == LS_CONN_BUSY && c->body_stream == LS_BODY_OPEN))) {
    if (c->state == LS_CONN_IDLE) {
      c->state = LS_CONN_READING;
      ls__stream_deadline(&c->stream, c->server->lim.header_timeout);
    }
    llhttp_errno_t err = llhttp_execute(&c->parser, data + off, len - off);
    if (err == HPE_OK) {
      off = len;
      if (c->in_body)   /* a body arriving: its pauses are bounded instead */
        ls__stream_deadline(&c->stream, c->server->lim.header_timeout);
      break;
    }
    if (err == HPE_PAUSED && c->body_stream) {   /* a streamed body (body.c) */
      off = (size_t)(llhttp_get_error_pos(&c->parser) - data);
      llhttp_resume(&c->parser);
      if (c->body_stream == LS_BODY_DISPATCH) {   /* headers complete */
        c->body_stream = LS_BODY_OPEN;
        conn_dispatch(c);   /* then its body is parsed on, as it comes */
      } else {   /* message complete: what follows waits in pending */
        ls__body_ended(c);
      }
      continue;
    }
    if (err == HPE_PAUSED) {   /* on_message_complete: a whole request */
      off = (size_t)(llhttp_get_error_pos(&c->parser) - data);
      llhttp_resume(&c->parser);
      /* The last request of what was read: its answer goes out at once,
       * with the answers corked before it, and is not copied. */
      c->stream.cork_open = off == len;
      conn_dispatch(c);
      c->stream.cork_open = 0;
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
    if (c->state == LS_CONN_BUSY)   /* in a streamed body: Lua answers */
      ls__body_fail(c, status, c->error_status ? reason : "malformed body");
    else
      ls__http_error_response(c, status, reason);
    return len;
  }
  return off;
}


/* Answers written while parsing are corked: the answers to pipelined
 * requests that are ready together go out in one write. */
static void conn_uncork(ls_conn_t *c) {
  if (ls__stream_uncork(&c->stream) != 0 && c->state != LS_CONN_CLOSING) {
    ls__conn_close(c);
    return;
  }
  if (c->state == LS_CONN_CLOSING || ls__stream_queued(&c->stream) > 0)
    return;
  if (c->written_refs.len)   /* background tasks wait for these answers */
    conn_resolve_written(c, 1);
  if (c->close_after_write && c->state != LS_CONN_CLOSING)
    ls__conn_close(c);
}


/* Parse buffered bytes left from an earlier read, then read again. */
static void conn_process(ls_conn_t *c) {
  ls__stream_cork(&c->stream);
  c->in_process++;
  while (c->pending.len > 0 &&
         (c->state == LS_CONN_IDLE || c->state == LS_CONN_READING)) {
    size_t n = conn_parse(c, c->pending.data, c->pending.len);
    memmove(c->pending.data, c->pending.data + n, c->pending.len - n);
    c->pending.len -= n;
  }
  c->in_process--;
  conn_uncork(c);
  if (c->state == LS_CONN_CLOSING || c->state == LS_CONN_LINGER)
    return;
  if (c->pending.len == 0)
    ls__buf_free(&c->pending);
  if (c->state == LS_CONN_IDLE || c->state == LS_CONN_READING)
    conn_await_next(c);
  else if (c->body_stream)
    ls__body_pump(c);
}


static void conn_on_read(ls_stream_t *st, const char *data, size_t len) {
  ls_conn_t *c = CONN(st);
  if (c->ws) {
    ls__ws_on_read(c->ws, data, len);
    return;
  }
  if (c->state == LS_CONN_CLOSING || c->state == LS_CONN_LINGER)
    return;   /* lingering: what the client still sends is discarded */
  size_t used = 0;
  ls__stream_cork(st);
  c->in_process++;
  if (c->pending.len == 0)
    used = conn_parse(c, data, len);
  if (used < len && c->state != LS_CONN_CLOSING &&
      c->state != LS_CONN_LINGER) {
    /* A request is in Lua: keep the rest for when it is answered. */
    if (ls__buf_append(&c->pending, data + used, len - used)) {
      c->in_process--;
      ls__conn_close(c);
      return;
    }
    if (c->pending.len >= LS_MAX_PENDING)
      ls__stream_read_stop(st);
    if (c->state != LS_CONN_BUSY) {
      c->in_process--;
      conn_uncork(c);
      conn_process(c);
      return;
    }
  }
  c->in_process--;
  conn_uncork(c);
  if (c->state == LS_CONN_CLOSING || c->state == LS_CONN_LINGER)
    return;
  if (c->body_stream)
    ls__body_pump(c);   /* a streamed body: full buffer, waiting reader */
  else if (ls__stream_queued(st) > 0)
    ls__stream_read_stop(st);   /* the client does not read its answers */
  else if (c->state == LS_CONN_IDLE) {
    ls__stream_deadline(st, c->server->lim.keepalive_timeout);
    c->idle_since = uv_now(c->rt->loop);
  }
}


static const ls_stream_ops_t conn_ops = {
  .on_read = conn_on_read,
  .on_end = conn_on_end,
  .on_drain = conn_on_drain,
  .on_timeout = conn_on_timeout,
  .on_handshake = conn_on_handshake,
  .on_close = conn_on_close,
};


/* A new connection: accepted from the listener (listener_fd < 0), or
 * already accepted as conn_fd (workers: see server_on_accept_ready). */
static void server_new_conn(ls_server_t *s, uv_stream_t *listener,
                            int conn_fd) {
  ls_conn_t *c = calloc(1, sizeof(*c));
  if (c == NULL) {
    if (conn_fd >= 0)
      close(conn_fd);
    return;
  }
  c->rt = s->rt;
  c->server = s;
  int init_err = ls__stream_init(s->rt, &c->stream, &conn_ops);
  c->stream_open = 1;
  c->state = LS_CONN_IDLE;
  c->next = s->conns;
  if (s->conns) s->conns->prev = c;
  s->conns = c;
  s->rt->wslot->conns++;
  if (s->rt->wslot_shared)
    __atomic_add_fetch(&ls__shm_region->conns_total, 1, __ATOMIC_RELAXED);
  c->idle_since = uv_now(s->rt->loop);
  llhttp_init(&c->parser, HTTP_REQUEST, &ls__http_settings);
  c->parser.data = c;
  c->slot = ls__slot_new(s->rt, c);
  int err = init_err || c->slot == UINT32_MAX ? UV_ENOMEM
            : conn_fd >= 0 ? uv_tcp_open(&c->stream.tcp, conn_fd)
                           : uv_accept(listener, (uv_stream_t *)&c->stream.tcp);
  if (err) {
    if (conn_fd >= 0)   /* not the handle's: uv_tcp_open failed or never ran */
      close(conn_fd);
    ls__conn_close(c);
    return;
  }
  uv_tcp_nodelay(&c->stream.tcp, 1);
  /* The client's address, once: the access log wants it per request, and
   * still after the client left (a 499). */
  struct sockaddr_storage peer;
  int plen = sizeof(peer);
  if (uv_tcp_getpeername(&c->stream.tcp, (struct sockaddr *)&peer, &plen) == 0)
    c->peer_port = (uint16_t)ls__format_addr(&peer, c->peer_host,
                                             sizeof(c->peer_host));
  ls__stream_send_timeout(&c->stream, s->lim.send_timeout);
  if ((s->tls_ctx && ls__stream_tls(&c->stream, s->tls_ctx, 1, NULL, 0)) ||
      ls__stream_read_start(&c->stream)) {
    ls__conn_close(c);
    return;
  }
  /* The first request (and a TLS handshake) is awaited for the header
   * timeout, not the keep-alive one: a client that connects and sends
   * nothing is a slow sender. */
  ls__stream_deadline(&c->stream, s->lim.header_timeout);
}


static void server_on_connection(uv_stream_t *listener, int status) {
  if (status < 0) {
    ls__log("warn", "accept: %s", uv_strerror(status));
    return;
  }
  server_new_conn(listener->data, listener, -1);
}


/* Workers share one listening socket. libuv accepts until the queue is
 * empty, so a burst of connections (a benchmark's, a balancer's pool)
 * could all go to the worker that woke first. Here each worker takes one
 * connection per wakeup (nginx's multi_accept off), and one that holds
 * more than its share of all workers' connections first yields the core
 * for a moment (libuv's UV_TCP_SINGLE_ACCEPT trick, nginx's
 * ngx_accept_disabled), so the others take theirs. It never refuses: a
 * peer whose loop is blocked cannot stall it. */
#define LS_ACCEPT_SLACK 2
static void server_on_accept_ready(uv_poll_t *p, int status, int events) {
  ls_server_t *s = p->data;
  ls_shm_t *h = ls__shm_region;
  if (status < 0)
    return;
  if (h && h->workers > 1) {
    int64_t total = __atomic_load_n(&h->conns_total, __ATOMIC_RELAXED);
    if (s->rt->wslot->conns > total / h->workers + LS_ACCEPT_SLACK) {
      struct timespec t = {0, 1};   /* the timer slack: about 50 us */
      nanosleep(&t, NULL);
    }
  }
  int fd = accept4(s->accept_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
  if (fd < 0) {
    if (errno != EAGAIN && errno != EWOULDBLOCK && errno != ECONNABORTED &&
        errno != EINTR)
      ls__log("warn", "accept: %s", strerror(errno));
    return;
  }
  server_new_conn(s, NULL, fd);
}


/* Accept from a shared socket (workers): listen, then poll it. */
static int server_accept_shared(ls_server_t *s) {
  if (listen(s->accept_fd, s->backlog) != 0)
    return -errno;
  s->accept_poll = malloc(sizeof(uv_poll_t));
  if (s->accept_poll == NULL)
    return UV_ENOMEM;
  int err = uv_poll_init_socket(s->rt->loop, s->accept_poll, s->accept_fd);
  if (err) {
    free(s->accept_poll);
    s->accept_poll = NULL;
    return err;
  }
  s->accept_poll->data = s;
  return uv_poll_start(s->accept_poll, UV_READABLE, server_on_accept_ready);
}


static void close_accept_poll(ls_server_t *s) {
  if (s->accept_poll) {
    uv_close((uv_handle_t *)s->accept_poll, (uv_close_cb)free);
    s->accept_poll = NULL;
  }
}


static void conn_ws_close(void *owner) {
  ls__conn_close(owner);
}


static const ls_ws_owner_t conn_ws_owner = { conn_ws_close };


/* ws_accept(handle, headers, opts): answer the request 101 Switching
 * Protocols with headers (Upgrade, Connection, Sec-WebSocket-Accept, ...)
 * and make the connection a WebSocket (ws.c; opts are its options). The
 * request stays Lua's until release(handle); the connection closes after
 * the close handshake. A ws userdata, or nil, "closed". */
int ls__lua_ws_accept(lua_State *L) {
  ls_conn_t *c = ls__conn_lookup(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  if (c == NULL || c->lua_holds == 0 || c->state != LS_CONN_BUSY || c->streaming) {
    lua_pushnil(L);
    lua_pushliteral(L, "closed");
    return 2;
  }
  int err = ls__http_format_head(L, c, 101, NULL, 0, 0, 2);
  uv_buf_t b = uv_buf_init(c->out.data, (unsigned)c->out.len);
  if (err == 0)
    err = ls__conn_write(c, &b, 1);
  c->out.len = 0;
  ls_ws_t *ws = err ? NULL
                    : ls__ws_new(L, &c->stream, 1, lua_istable(L, 3) ? 3 : 0,
                                 &conn_ws_owner, c);
  if (ws == NULL) {
    ls__conn_close(c);
    lua_pushnil(L);
    lua_pushliteral(L, "closed");
    return 2;
  }
  c->ws = ws;
  c->state = LS_CONN_WS;
  c->keepalive = 0;
  if (c->pending.len) {   /* frames that came with the request: from the loop */
    c->notify_ws_early = 1;
    conn_notify(c);
  }
  ls__stream_read_start(&c->stream);
  return 1;
}


ls_conn_t *ls__conn_lookup(lua_State *L, int idx) {
  return ls__slot_get(LS__RT(L), luaL_checknumber(L, idx));
}


/* ---- servers ------------------------------------------------------------ */

static void server_on_close(uv_handle_t *h) {
  ls_server_t *s = h->data;
  s->listening = 0;
  ls__shutdown_check(s->rt);
}


void ls__server_stop_listening(ls_server_t *s) {
  close_accept_poll(s);
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


/* listen{host=, port=, dispatch=fn, abort=fn, tls=context, limits...}: a
 * server userdata, or nil, err (e.g. "address already in use"). */
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
  void *tls_ctx = NULL;
  lua_getfield(L, 1, "tls");
  if (!lua_isnil(L, -1))
    tls_ctx = ls__tls_check_context(L, -1);
  lua_pop(L, 1);
  lua_getfield(L, 1, "dispatch");
  luaL_checktype(L, -1, LUA_TFUNCTION);
  lua_getfield(L, 1, "abort");
  luaL_checktype(L, -1, LUA_TFUNCTION);
  lua_pop(L, 2);
  ls_server_t *s = calloc(1, sizeof(*s));
  if (s == NULL)
    return ls__push_error(L, UV_ENOMEM);
  s->rt = rt;
  s->lim.max_header_bytes = opt_uint(L, "max_header_bytes", 16384);
  s->lim.max_headers = (unsigned)opt_uint(L, "max_headers", 100);
  s->lim.max_body = opt_uint(L, "max_body", 1024 * 1024);
  if (s->lim.max_body > LS_BUF_MAX)   /* a body read whole fits a buffer */
    s->lim.max_body = LS_BUF_MAX;
  s->lim.header_timeout = opt_uint(L, "header_timeout_ms", 10000);
  s->lim.keepalive_timeout = opt_uint(L, "keepalive_timeout_ms", 5000);
  s->lim.send_timeout = opt_uint(L, "send_timeout_ms", 60000);
  s->lim.limit_concurrency = (unsigned)opt_uint(L, "limit_concurrency", 0);
  s->lim.max_upload = opt_uint(L, "max_upload", 100 * 1024 * 1024);
  s->lim.stream_multipart = (int)opt_uint(L, "stream_multipart", 1);
  uv_tcp_init(rt->loop, &s->listener);
  s->listener.data = s;
  s->backlog = (int)opt_uint(L, "backlog", 1024);
  lua_getfield(L, 1, "paused");
  int paused = lua_toboolean(L, -1);
  lua_getfield(L, 1, "fd");   /* a socket the master bound (workers) */
  int fd = lua_isnumber(L, -1) ? (int)lua_tointeger(L, -1) : -1;
  lua_pop(L, 2);
  s->accept_fd = fd;
  if (fd >= 0) {
    err = uv_tcp_open(&s->listener, fd);
    if (err == 0 && !paused) {
      err = server_accept_shared(s);
      s->accepting = err == 0;
    }
    if (err)
      close_accept_poll(s);
  } else {
    err = uv_tcp_bind(&s->listener, (struct sockaddr *)&addr, 0);
  }
  if (fd >= 0) {
    /* opened above */
  } else if (err == 0 && paused) {
    /* Bound (the port is ours) but not listening: no connection is
     * accepted until server:start(). libuv keeps a failed bind's error
     * for uv_listen; an unbound socket has port 0. */
    struct sockaddr_storage bound;
    int blen = sizeof(bound);
    err = uv_tcp_getsockname(&s->listener, (struct sockaddr *)&bound, &blen);
    uint16_t bport = bound.ss_family == AF_INET6
                         ? ((struct sockaddr_in6 *)&bound)->sin6_port
                         : ((struct sockaddr_in *)&bound)->sin_port;
    if (err == 0 && bport == 0)
      err = UV_EADDRINUSE;
  } else if (err == 0) {
    err = uv_listen((uv_stream_t *)&s->listener, s->backlog,
                    server_on_connection);
    s->accepting = err == 0;
  }
  if (err) {
    uv_close((uv_handle_t *)&s->listener, (uv_close_cb)free);
    return ls__push_error(L, err);
  }
  s->listening = 1;
  if (tls_ctx) {
    ls__tls_context_ref(tls_ctx);
    s->tls_ctx = tls_ctx;
  }
  lua_getfield(L, 1, "dispatch");
  s->dispatch_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_getfield(L, 1, "abort");
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


/* server:start(): accept connections (a server listened paused). true,
 * or nil, err ("address already in use"). */
static int server_start(lua_State *L) {
  ls_server_t *s = check_server(L);
  if (s == NULL || !s->listening)
    return ls__push_error(L, UV_EBADF);
  if (!s->accepting) {
    int err = s->accept_fd >= 0
                  ? server_accept_shared(s)
                  : uv_listen((uv_stream_t *)&s->listener, s->backlog,
                              server_on_connection);
    if (err) {
      close_accept_poll(s);
      return ls__push_error(L, err);
    }
    s->accepting = 1;
  }
  lua_pushboolean(L, 1);
  return 1;
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
  {"start", server_start},
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
    close_accept_poll(s);
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
    if (s->tls_ctx)
      ls__tls_context_unref(s->tls_ctx);
    free(s);
  }
  ls__shutdown_close(rt);
}
