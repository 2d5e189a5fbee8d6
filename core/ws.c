/* ws.c: WebSocket (RFC 6455) on a stream, for both ends: the server's
 * connections after a 101 and the client's sockets after theirs. Framing
 * is wslay's (Debian's libwslay, the library h2o and nghttp2 use): it
 * checks masking, opcodes, reserved bits, fragmentation and control
 * frames, UTF-8 in text and close frames, close codes and the size of a
 * message, answers pings and echoes a close, and queues the close code a
 * protocol error calls for. This file feeds it the stream's bytes, hands
 * its frames to the stream, keeps received messages until Lua takes them
 * (reading stops while too much waits: back-pressure), compresses with
 * permessage-deflate when negotiated (no context takeover either way:
 * nothing kept per connection between messages), pings the peer and gives
 * up on one that does not answer, and closes the transport once the close
 * handshake is done (or has timed out).
 *
 * The owner of the stream (a server connection, a client socket) forwards
 * its stream events here while it is in WebSocket mode and closes the
 * transport when asked (owner->close). Lua holds a ws by a userdata whose
 * pointer is cleared when the ws goes; its waiting targets hear from
 * libuv callbacks or the deferred queue. Loop thread only. */
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <wslay/wslay.h>
#include <zlib.h>
#include <openssl/evp.h>

#include "internal.h"

#define LS_WS_MT "luaserve.ws"
/* Received messages Lua has not taken: past this much, reading stops. */
#define WS_QUEUE_MAX (1024 * 1024)
/* Queued output past which a send waits (back-pressure). */
#define WS_SEND_HIGH (256 * 1024)
/* Messages shorter than this are sent uncompressed. */
#define WS_DEFLATE_MIN 64

enum { WS_OPEN, WS_CLOSING, WS_CLOSED };

typedef struct ws_msg_s {
  struct ws_msg_s *next;
  int binary;
  size_t len;
  char data[];
} ws_msg_t;

typedef struct ws_ud_s {
  ls_ws_t *ws;              /* NULL once the ws is gone */
} ws_ud_t;

struct ls_ws_s {
  ls_stream_t *stream;
  ls_runtime_t *rt;
  const ls_ws_owner_t *owner;
  void *owner_data;
  wslay_event_context_ptr ctx;
  ws_ud_t *ud;
  ls_defer_t notify;        /* resolves targets after a close from Lua */
  const char *in;           /* bytes of the read being fed to wslay */
  size_t in_len;
  ws_msg_t *q_head, *q_tail;
  size_t q_bytes;
  int recv_ref;             /* target of the pending receive */
  int drain_ref;            /* target of a send waiting for the socket */
  int closed_ref;           /* target waiting for the close to finish */
  int state;                /* WS_* */
  int server;
  int deflate;              /* permessage-deflate negotiated */
  int deflate_bits;         /* our window (server_max_window_bits) */
  uint16_t code;            /* the close code (received, or ours) */
  char reason[124];         /* its reason text */
  int transport_gone;       /* the owner closed the stream */
  int closed_cleanly;       /* both close frames went through */
  uint64_t ping_ms;         /* ping after this much silence; 0: never */
  uint64_t pong_ms;         /* a ping must be answered within this */
  uint64_t close_ms;        /* the close handshake's bound */
  int awaiting_pong;
  size_t max_message;
};


/* Is data valid UTF-8 (no overlongs, no surrogates, nothing past
 * U+10FFFF)? For text that arrived compressed: wslay checks the rest. */
static int utf8_valid(const char *data, size_t len) {
  const unsigned char *s = (const unsigned char *)data;
  size_t i = 0;
  while (i < len) {
    uint64_t eight;   /* ASCII eight bytes at a time */
    if (i + 8 <= len && (memcpy(&eight, s + i, 8),
                         (eight & 0x8080808080808080ULL) == 0)) {
      i += 8;
      continue;
    }
    unsigned c = s[i];
    if (c < 0x80) {
      i++;
      continue;
    }
    size_t n;
    unsigned lo = 0x80, hi = 0xbf;
    if (c >= 0xc2 && c <= 0xdf) n = 1;
    else if (c >= 0xe0 && c <= 0xef) {
      n = 2;
      if (c == 0xe0) lo = 0xa0;
      if (c == 0xed) hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
      n = 3;
      if (c == 0xf0) lo = 0x90;
      if (c == 0xf4) hi = 0x8f;
    } else {
      return 0;
    }
    if (i + n >= len)   /* the sequence is cut short */
      return 0;
    if (s[i + 1] < lo || s[i + 1] > hi)
      return 0;
    for (size_t k = 2; k <= n; k++)
      if ((s[i + k] & 0xc0) != 0x80)
        return 0;
    i += n + 1;
  }
  return 1;
}


/* ---- targets -------------------------------------------------------------- */

static void ws_unref(ls_ws_t *ws, int *ref) {
  if (*ref != LUA_NOREF && !ws->rt->closing)
    luaL_unref(ws->rt->L, LUA_REGISTRYINDEX, *ref);
  *ref = LUA_NOREF;
}


static void ws_resolve(ls_ws_t *ws, int *ref, int nargs) {
  int r = *ref;
  *ref = LUA_NOREF;
  if (r == LUA_NOREF || ws->rt->closing) {
    lua_pop(ws->rt->L, nargs);
    if (r != LUA_NOREF && !ws->rt->closing)
      luaL_unref(ws->rt->L, LUA_REGISTRYINDEX, r);
    return;
  }
  ls__resolve(ws->rt, r, nargs);
}


/* Push what a receive gets once the connection is closing or closed: nil,
 * "close <code>", code, reason. */
static int push_closed(lua_State *L, ls_ws_t *ws) {
  lua_pushnil(L);
  lua_pushfstring(L, "close %d", (int)ws->code);
  lua_pushinteger(L, ws->code);
  lua_pushstring(L, ws->reason);
  return 4;
}


/* Wake the targets that wait on a connection that is over. */
static void ws_wake_closed(ls_ws_t *ws) {
  if (ws->recv_ref != LUA_NOREF)
    ws_resolve(ws, &ws->recv_ref, push_closed(ws->rt->L, ws));
  if (ws->drain_ref != LUA_NOREF) {
    lua_pushnil(ws->rt->L);
    lua_pushliteral(ws->rt->L, "closed");
    ws_resolve(ws, &ws->drain_ref, 2);
  }
  if (ws->closed_ref != LUA_NOREF && ws->state == WS_CLOSED) {
    lua_pushinteger(ws->rt->L, ws->code);
    ws_resolve(ws, &ws->closed_ref, 1);
  }
}


static void ws_on_notify(ls_defer_t *d) {
  ls_ws_t *ws = (ls_ws_t *)((char *)d - offsetof(ls_ws_t, notify));
  ws_wake_closed(ws);
  if (ws->transport_gone && ws->ud == NULL)
    ls__ws_free(ws);
}


/* ---- closing -------------------------------------------------------------- */

/* Close the transport (through the owner). Targets hear it from the loop. */
static void ws_end(ls_ws_t *ws, uint16_t code) {
  if (ws->state == WS_CLOSED)
    return;
  if (ws->code == 0)
    ws->code = code;
  ws->state = WS_CLOSED;
  ws->closed_cleanly = wslay_event_get_close_received(ws->ctx) &&
                       wslay_event_get_close_sent(ws->ctx);
  /* The owner first: a server connection that ends abnormally cancels its
   * request's task (its notification is queued before ours), so the
   * handler is cancelled rather than woken with 1006. */
  ws->owner->close(ws->owner_data);
  ls__defer(ws->rt, &ws->notify, ws_on_notify);
}


/* Write what wslay has queued; end the connection once the close
 * handshake is done (the server closes the transport first, RFC 6455 7.1.1;
 * a client waits a while for the server to). */
static void ws_flush(ls_ws_t *ws) {
  if (ws->state == WS_CLOSED)
    return;
  /* wslay hands over a frame's head and payload in separate calls:
   * corked, all that is queued leaves in one system call. */
  ls__stream_cork(ws->stream);
  int failed = wslay_event_send(ws->ctx) != 0;
  if (ls__stream_uncork(ws->stream) != 0)
    failed = 1;
  if (failed) {
    ws_end(ws, 1006);
    return;
  }
  int sent = wslay_event_get_close_sent(ws->ctx);
  int received = wslay_event_get_close_received(ws->ctx);
  if (sent && received && (ws->server || ls__stream_queued(ws->stream) == 0)) {
    if (ls__stream_queued(ws->stream) == 0)
      ws_end(ws, 0);
    /* else: on_drain ends it once the close frame is out */
  } else if ((sent || received) && ws->state == WS_OPEN) {
    ws->state = WS_CLOSING;
    ls__stream_deadline(ws->stream, ws->close_ms);
  }
}


/* ---- wslay's callbacks ----------------------------------------------------- */

static ssize_t ws_recv_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len,
                          int flags, void *user) {
  ls_ws_t *ws = user;
  (void)flags;
  if (ws->in_len == 0) {
    wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
    return -1;
  }
  size_t n = len < ws->in_len ? len : ws->in_len;
  memcpy(buf, ws->in, n);
  ws->in += n;
  ws->in_len -= n;
  return (ssize_t)n;
}


static ssize_t ws_send_cb(wslay_event_context_ptr ctx, const uint8_t *data,
                          size_t len, int flags, void *user) {
  ls_ws_t *ws = user;
  (void)flags;
  uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
  if (ls__stream_write(ws->stream, &b, 1) != 0) {
    wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
    return -1;
  }
  return (ssize_t)len;
}


static int ws_genmask_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len,
                         void *user) {
  (void)ctx;
  (void)user;
  ls__random_bytes(buf, len);
  return 0;
}


/* permessage-deflate without context takeover: every message starts
 * afresh, so one raw stream per runtime and direction serves every
 * connection, reset between messages (deflateInit allocates and clears
 * some 256 KB: too much per message). The deflater is kept for the window
 * size it was made for. Freed with the runtime (ls__ws_zfree). */
typedef struct {
  z_stream def, inf;
  int def_bits;             /* the deflater's window bits, 0: none yet */
  int inf_ready;
} ws_zlib_t;


static ws_zlib_t *ws_zlib(ls_runtime_t *rt) {
  if (rt->ws_zlib == NULL)
    rt->ws_zlib = calloc(1, sizeof(ws_zlib_t));
  return rt->ws_zlib;
}


void ls__ws_zfree(ls_runtime_t *rt) {
  ws_zlib_t *zl = rt->ws_zlib;
  if (zl == NULL)
    return;
  if (zl->def_bits)
    deflateEnd(&zl->def);
  if (zl->inf_ready)
    inflateEnd(&zl->inf);
  free(zl);
  rt->ws_zlib = NULL;
}


/* The runtime's raw inflater, reset; NULL without memory. */
static z_stream *ws_inflater(ls_runtime_t *rt) {
  ws_zlib_t *zl = ws_zlib(rt);
  if (zl == NULL)
    return NULL;
  if (zl->inf_ready)
    return inflateReset(&zl->inf) == Z_OK ? &zl->inf : NULL;
  if (inflateInit2(&zl->inf, -15) != Z_OK)
    return NULL;
  zl->inf_ready = 1;
  return &zl->inf;
}


/* The runtime's raw deflater for a window of bits, reset; NULL without
 * memory. */
static z_stream *ws_deflater(ls_runtime_t *rt, int bits) {
  ws_zlib_t *zl = ws_zlib(rt);
  if (zl == NULL)
    return NULL;
  if (zl->def_bits == bits)
    return deflateReset(&zl->def) == Z_OK ? &zl->def : NULL;
  if (zl->def_bits) {
    deflateEnd(&zl->def);
    zl->def_bits = 0;
  }
  memset(&zl->def, 0, sizeof(zl->def));
  if (deflateInit2(&zl->def, 1, Z_DEFLATED, -bits, 8, Z_DEFAULT_STRATEGY) != Z_OK)
    return NULL;
  zl->def_bits = bits;
  return &zl->def;
}


/* permessage-deflate, receiving: the message with 00 00 ff ff appended,
 * inflated (raw) up to max_message. 0, or the close code. */
static int ws_inflate(ls_ws_t *ws, const uint8_t *in, size_t len,
                      ls_buf_t *out) {
  z_stream *zp = ws_inflater(ws->rt);
  if (zp == NULL)
    return 1011;
  static const uint8_t tail[4] = {0x00, 0x00, 0xff, 0xff};
  int code = 0;
  for (int part = 0; part < 2 && code == 0; part++) {
    zp->next_in = (Bytef *)(part ? tail : in);
    zp->avail_in = (uInt)(part ? sizeof(tail) : len);
    while (zp->avail_in > 0) {
      if (ls__buf_reserve(out, 16384)) {
        code = 1011;
        break;
      }
      zp->next_out = (Bytef *)(out->data + out->len);
      zp->avail_out = 16384;
      int r = inflate(zp, Z_SYNC_FLUSH);
      out->len += 16384 - zp->avail_out;
      if (out->len > ws->max_message) {
        code = 1009;
        break;
      }
      if (r == Z_BUF_ERROR && zp->avail_out > 0)
        break;   /* all input used */
      if (r != Z_OK && r != Z_STREAM_END && r != Z_BUF_ERROR) {
        code = 1007;
        break;
      }
    }
  }
  return code;
}


static void ws_on_msg_cb(wslay_event_context_ptr ctx,
                         const struct wslay_event_on_msg_recv_arg *arg,
                         void *user) {
  ls_ws_t *ws = user;
  if (arg->opcode == WSLAY_CONNECTION_CLOSE) {
    ws->code = arg->status_code ? arg->status_code : 1005;
    size_t rl = arg->msg_length > 2 ? arg->msg_length - 2 : 0;
    if (rl >= sizeof(ws->reason))
      rl = sizeof(ws->reason) - 1;
    if (rl)
      memcpy(ws->reason, arg->msg + 2, rl);
    ws->reason[rl] = '\0';
    return;   /* wslay has queued the echo; ws_flush ends it */
  }
  if (arg->opcode == WSLAY_PONG) {
    ws->awaiting_pong = 0;
    return;
  }
  if (arg->opcode != WSLAY_TEXT_FRAME && arg->opcode != WSLAY_BINARY_FRAME)
    return;
  const uint8_t *data = arg->msg;
  size_t len = arg->msg_length;
  ls_buf_t plain = {0};
  if (arg->rsv & WSLAY_RSV1_BIT) {
    int code = ws->deflate ? ws_inflate(ws, data, len, &plain) : 1002;
    if (code == 0 && arg->opcode == WSLAY_TEXT_FRAME &&
        !utf8_valid(plain.data, plain.len))
      code = 1007;
    if (code) {
      ls__buf_free(&plain);
      wslay_event_queue_close(ctx, (uint16_t)code, NULL, 0);
      wslay_event_shutdown_read(ctx);
      return;
    }
    data = (const uint8_t *)plain.data;
    len = plain.len;
  }
  int binary = arg->opcode == WSLAY_BINARY_FRAME;
  if (ws->recv_ref != LUA_NOREF && ws->q_head == NULL) {
    lua_pushlstring(ws->rt->L, (const char *)data, len);
    lua_pushstring(ws->rt->L, binary ? "binary" : "text");
    ws_resolve(ws, &ws->recv_ref, 2);
  } else {
    ws_msg_t *m = malloc(sizeof(*m) + len);
    if (m == NULL) {
      wslay_event_queue_close(ctx, 1011, NULL, 0);
    } else {
      m->next = NULL;
      m->binary = binary;
      m->len = len;
      if (len)
        memcpy(m->data, data, len);
      if (ws->q_tail) ws->q_tail->next = m; else ws->q_head = m;
      ws->q_tail = m;
      ws->q_bytes += len + 64;
      if (ws->q_bytes > WS_QUEUE_MAX)
        ls__stream_read_stop(ws->stream);   /* Lua takes its time: wait */
    }
  }
  ls__buf_free(&plain);
}


static const struct wslay_event_callbacks ws_callbacks = {
  ws_recv_cb, ws_send_cb, ws_genmask_cb, NULL, NULL, NULL, ws_on_msg_cb,
};


/* ---- the owner's stream events --------------------------------------------- */

void ls__ws_on_read(ls_ws_t *ws, const char *data, size_t len) {
  if (ws->state == WS_CLOSED)
    return;
  ws->in = data;
  ws->in_len = len;
  ws->awaiting_pong = 0;   /* the peer is alive */
  if (ws->state == WS_OPEN && ws->ping_ms)
    ls__stream_deadline(ws->stream, ws->ping_ms);
  int r = wslay_event_recv(ws->ctx);
  ws->in_len = 0;
  if (r == WSLAY_ERR_CALLBACK_FAILURE) {
    /* A frame wslay could not parse (a fragmented or oversized control
     * frame, a bad length): our callbacks never fail, so it is the peer's
     * protocol error. wslay queued a close without a code; say 1002. */
    static const char close1002[4] = {(char)0x88, 2, 0x03, (char)0xea};
    wslay_event_shutdown_write(ws->ctx);
    uv_buf_t b = uv_buf_init((char *)close1002, sizeof(close1002));
    ls__stream_write(ws->stream, &b, 1);
    ws->code = 1002;
    ws_end(ws, 1002);
    return;
  }
  if (r != 0) {
    ws_end(ws, 1011);
    return;
  }
  ws_flush(ws);
}


void ls__ws_on_end(ls_ws_t *ws, int err) {
  (void)err;
  ws_end(ws, 1006);   /* the peer is gone without a close frame */
}


void ls__ws_on_drain(ls_ws_t *ws, int status) {
  if (status < 0) {
    ws_end(ws, 1006);
    return;
  }
  if (ws->drain_ref != LUA_NOREF) {
    lua_pushboolean(ws->rt->L, 1);
    ws_resolve(ws, &ws->drain_ref, 1);
  }
  ws_flush(ws);
}


void ls__ws_on_timeout(ls_ws_t *ws) {
  if (ws->state == WS_CLOSING) {   /* the peer did not finish the close */
    ws_end(ws, ws->code ? ws->code : 1006);
    return;
  }
  if (ws->awaiting_pong) {
    wslay_event_queue_close(ws->ctx, 1011, (const uint8_t *)"keepalive ping timeout", 22);
    ws->code = 1011;
    ws_flush(ws);
    if (ws->state != WS_CLOSED)
      ws_end(ws, 1011);
    return;
  }
  struct wslay_event_msg ping = {WSLAY_PING, (const uint8_t *)"", 0};
  wslay_event_queue_msg(ws->ctx, &ping);
  ws->awaiting_pong = 1;
  ls__stream_deadline(ws->stream, ws->pong_ms);
  ws_flush(ws);
}


/* The transport is closed (by us or the peer): the owner is freeing it. */
void ls__ws_transport_closed(ls_ws_t *ws) {
  if (ws->state != WS_CLOSED) {
    ws->state = WS_CLOSED;
    if (ws->code == 0)
      ws->code = 1006;
    ls__defer(ws->rt, &ws->notify, ws_on_notify);
  }
  ws->transport_gone = 1;
  ws->stream = NULL;
  if (ws->ud == NULL && !ws->notify.queued)
    ls__ws_free(ws);
}


void ls__ws_free(ls_ws_t *ws) {
  ls__defer_cancel(ws->rt, &ws->notify);
  ws_unref(ws, &ws->recv_ref);
  ws_unref(ws, &ws->drain_ref);
  ws_unref(ws, &ws->closed_ref);
  while (ws->q_head) {
    ws_msg_t *m = ws->q_head;
    ws->q_head = m->next;
    free(m);
  }
  if (ws->ud)
    ws->ud->ws = NULL;
  wslay_event_context_free(ws->ctx);
  free(ws);
}


int ls__ws_clean(const ls_ws_t *ws) {
  return ws->closed_cleanly;
}


void ls__ws_going_away(ls_ws_t *ws) {
  if (ws->state != WS_OPEN || wslay_event_get_close_sent(ws->ctx))
    return;
  ws->code = 1001;
  wslay_event_queue_close(ws->ctx, 1001, (const uint8_t *)"server shutting down", 20);
  ws_flush(ws);
}


/* ---- making one ------------------------------------------------------------ */

static uint64_t opt_ms(lua_State *L, int t, const char *name, double def) {
  lua_getfield(L, t, name);
  double s = lua_isnumber(L, -1) ? lua_tonumber(L, -1) : def;
  lua_pop(L, 1);
  return s > 0 ? (uint64_t)(s * 1000 + 0.5) : 0;
}


/* A ws on stream, its userdata pushed. opts (stack idx): max_message,
 * deflate (false, or the window bits), ping_interval, ping_timeout,
 * close_timeout (seconds). The bytes `early` (read after the handshake)
 * are fed at once. Returns the ws, or NULL (pushes nothing; out of
 * memory). */
ls_ws_t *ls__ws_new(lua_State *L, ls_stream_t *stream, int server, int opts,
                    const ls_ws_owner_t *owner, void *owner_data) {
  ls_ws_t *ws = calloc(1, sizeof(*ws));
  if (ws == NULL)
    return NULL;
  int r = server ? wslay_event_context_server_init(&ws->ctx, &ws_callbacks, ws)
                 : wslay_event_context_client_init(&ws->ctx, &ws_callbacks, ws);
  if (r != 0) {
    free(ws);
    return NULL;
  }
  ws->stream = stream;
  ws->rt = stream->rt;
  ws->owner = owner;
  ws->owner_data = owner_data;
  ws->server = server;
  ws->recv_ref = ws->drain_ref = ws->closed_ref = LUA_NOREF;
  ws->max_message = 1024 * 1024;
  ws->close_ms = 5000;
  ws->ping_ms = 20000;
  ws->pong_ms = 20000;
  if (opts > 0 && lua_istable(L, opts)) {
    lua_getfield(L, opts, "max_message");
    if (lua_isnumber(L, -1))
      ws->max_message = (size_t)lua_tonumber(L, -1);
    lua_getfield(L, opts, "deflate");
    if (lua_isnumber(L, -1)) {
      ws->deflate = 1;
      ws->deflate_bits = (int)lua_tointeger(L, -1);
    }
    lua_pop(L, 2);
    ws->ping_ms = opt_ms(L, opts, "ping_interval", 20);
    ws->pong_ms = opt_ms(L, opts, "ping_timeout", 20);
    ws->close_ms = opt_ms(L, opts, "close_timeout", 5);
  }
  wslay_event_config_set_max_recv_msg_length(ws->ctx, ws->max_message);
  if (ws->deflate)
    wslay_event_config_set_allowed_rsv_bits(ws->ctx, WSLAY_RSV1_BIT);
  ws_ud_t *ud = lua_newuserdata(L, sizeof(*ud));
  ud->ws = ws;
  ws->ud = ud;
  luaL_getmetatable(L, LS_WS_MT);
  lua_setmetatable(L, -2);
  if (ws->ping_ms)
    ls__stream_deadline(stream, ws->ping_ms);
  return ws;
}


/* ---- Lua ---------------------------------------------------------------------- */

static ls_ws_t *check_ws(lua_State *L) {
  ws_ud_t *ud = luaL_checkudata(L, 1, LS_WS_MT);
  return ud->ws;
}


/* ws:receive([target]): msg, kind now when one waits; else true, and
 * target (when given) gets msg, kind (or nil, "close <code>", code,
 * reason) later: without one, nothing is kept (ask again with one). Once
 * the connection is closing or closed: nil, "close <code>", code, reason. */
static int ws_receive(lua_State *L) {
  ls_ws_t *ws = check_ws(L);
  if (ws == NULL)
    return luaL_error(L, "websocket: this connection is gone");
  ws_msg_t *m = ws->q_head;
  if (m) {
    ws->q_head = m->next;
    if (ws->q_head == NULL)
      ws->q_tail = NULL;
    ws->q_bytes -= m->len + 64;
    lua_pushlstring(L, m->data, m->len);
    lua_pushstring(L, m->binary ? "binary" : "text");
    free(m);
    if (ws->q_bytes <= WS_QUEUE_MAX / 2 && ws->state != WS_CLOSED)
      ls__stream_read_start(ws->stream);
    return 2;
  }
  if (ws->state != WS_OPEN || !wslay_event_get_read_enabled(ws->ctx))
    return push_closed(L, ws);
  if (ws->recv_ref != LUA_NOREF)
    return luaL_error(L, "websocket: a receive is already waiting");
  if (!lua_isnoneornil(L, 2)) {
    lua_pushvalue(L, 2);
    ws->recv_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  lua_pushboolean(L, 1);
  return 1;
}


/* ws:cancel_receive(): forget a waiting receive (released, not resolved). */
static int ws_cancel_receive(lua_State *L) {
  ls_ws_t *ws = check_ws(L);
  if (ws)
    ws_unref(ws, &ws->recv_ref);
  return 0;
}


/* Is more queued than a sender should add to (it waits for the drain)? */
static int ws_backlogged(ls_ws_t *ws) {
  return ls__stream_queued(ws->stream) >= WS_SEND_HIGH && ws->stream->writing;
}


/* Compress a message for permessage-deflate; 0 or an error. */
static int ws_deflate(ls_ws_t *ws, const char *data, size_t len, ls_buf_t *out) {
  int bits = ws->deflate_bits < 9 ? 9 : ws->deflate_bits;
  z_stream *z = ws_deflater(ws->rt, bits);
  if (z == NULL)
    return UV_ENOMEM;
  size_t bound = deflateBound(z, len) + 16;
  if (ls__buf_reserve(out, bound))
    return UV_ENOMEM;
  z->next_in = (Bytef *)data;
  z->avail_in = (uInt)len;
  z->next_out = (Bytef *)out->data;
  z->avail_out = (uInt)bound;
  int r = deflate(z, Z_SYNC_FLUSH);
  out->len = bound - z->avail_out;
  if (r != Z_OK || out->len < 4)
    return UV_EINVAL;
  out->len -= 4;   /* the 00 00 ff ff a sync flush ends with */
  return 0;
}


/* ws:send(data, binary): queue a message. true when the socket keeps up;
 * false when much is queued (ws:wait_drain tells when it is written: the
 * back-pressure); nil, "closed" once closing. */
static int ws_send(lua_State *L) {
  ls_ws_t *ws = check_ws(L);
  size_t len;
  const char *data = luaL_checklstring(L, 2, &len);
  int binary = lua_toboolean(L, 3);
  if (!binary && !utf8_valid(data, len))
    return luaL_error(L, "websocket: a text message must be valid UTF-8 "
                      "(send it as binary)");
  if (ws == NULL || ws->state != WS_OPEN || !wslay_event_get_write_enabled(ws->ctx) ||
      wslay_event_get_close_sent(ws->ctx)) {
    lua_pushnil(L);
    lua_pushliteral(L, "closed");
    return 2;
  }
  ls_buf_t z = {0};
  uint8_t rsv = WSLAY_RSV_NONE;
  if (ws->deflate && len >= WS_DEFLATE_MIN && ws_deflate(ws, data, len, &z) == 0 &&
      z.len < len) {
    data = z.data;
    len = z.len;
    rsv = WSLAY_RSV1_BIT;
  }
  struct wslay_event_msg msg = {
    (uint8_t)(binary ? WSLAY_BINARY_FRAME : WSLAY_TEXT_FRAME),
    (const uint8_t *)data, len,
  };
  int r = wslay_event_queue_msg_ex(ws->ctx, &msg, rsv);
  ls__buf_free(&z);
  if (r != 0)
    return luaL_error(L, "websocket: cannot queue the message (%d)", r);
  ws_flush(ws);
  if (ws->state == WS_CLOSED) {
    lua_pushnil(L);
    lua_pushliteral(L, "closed");
    return 2;
  }
  lua_pushboolean(L, !ws_backlogged(ws));
  return 1;
}


/* ws:wait_drain(target): after a send that gave false, target gets true
 * once the socket has taken the backlog, or nil, "closed". One target at a
 * time (Lua shares it between the senders that wait; a new one replaces
 * the last). Returns true when
 * there is nothing to wait for, nil, "closed" when the connection is
 * closing, else false. */
static int ws_wait_drain(lua_State *L) {
  ls_ws_t *ws = check_ws(L);
  luaL_checkany(L, 2);
  if (ws == NULL || ws->state != WS_OPEN) {
    lua_pushnil(L);
    lua_pushliteral(L, "closed");
    return 2;
  }
  if (!ws_backlogged(ws)) {
    lua_pushboolean(L, 1);
    return 1;
  }
  ws_unref(ws, &ws->drain_ref);   /* one that Lua gave up (cancelled) */
  lua_pushvalue(L, 2);
  ws->drain_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_pushboolean(L, 0);
  return 1;
}


/* ws:ping(data): queue a ping. true, or nil, "closed". */
static int ws_ping(lua_State *L) {
  ls_ws_t *ws = check_ws(L);
  size_t len;
  const char *data = luaL_optlstring(L, 2, "", &len);
  if (len > 125)
    return luaL_argerror(L, 2, "a ping carries at most 125 bytes");
  if (ws == NULL || ws->state != WS_OPEN) {
    lua_pushnil(L);
    lua_pushliteral(L, "closed");
    return 2;
  }
  struct wslay_event_msg msg = {WSLAY_PING, (const uint8_t *)data, len};
  wslay_event_queue_msg(ws->ctx, &msg);
  ws_flush(ws);
  lua_pushboolean(L, 1);
  return 1;
}


/* ws:close(code, reason[, target]): start the close handshake (nothing if
 * it started); target gets the close code once the connection is closed.
 * Returns true, or the code when it is closed already. */
static int ws_close(lua_State *L) {
  ls_ws_t *ws = check_ws(L);
  int code = (int)luaL_optinteger(L, 2, 1000);
  size_t rlen;
  const char *reason = luaL_optlstring(L, 3, "", &rlen);
  if (rlen > 123)
    return luaL_argerror(L, 3, "a close reason has at most 123 bytes");
  if (!(code == 1000 || (code >= 1001 && code <= 1003) ||
        (code >= 1007 && code <= 1014) || (code >= 3000 && code <= 4999)))
    return luaL_argerror(L, 2, "not a close code an endpoint may send");
  if (ws == NULL || ws->state == WS_CLOSED) {
    lua_pushinteger(L, ws ? ws->code : 1006);
    return 1;
  }
  if (!wslay_event_get_close_sent(ws->ctx)) {
    if (ws->code == 0)
      ws->code = (uint16_t)code;
    wslay_event_queue_close(ws->ctx, (uint16_t)code, (const uint8_t *)reason, rlen);
    ws_flush(ws);
  }
  if (!lua_isnoneornil(L, 4) && ws->closed_ref == LUA_NOREF &&
      ws->state != WS_CLOSED) {
    lua_pushvalue(L, 4);
    ws->closed_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  if (ws->state == WS_CLOSED) {
    lua_pushinteger(L, ws->code);
    return 1;
  }
  lua_pushboolean(L, 1);
  return 1;
}


/* ws:abort(): close the transport now, no close handshake. */
static int ws_abort(lua_State *L) {
  ls_ws_t *ws = check_ws(L);
  if (ws && ws->state != WS_CLOSED)
    ws_end(ws, 1006);
  return 0;
}


/* ws:state(): "open", "closing" or "closed", and the close code. */
static int ws_state(lua_State *L) {
  ls_ws_t *ws = check_ws(L);
  static const char *const names[] = {"open", "closing", "closed"};
  lua_pushstring(L, ws ? names[ws->state] : "closed");
  lua_pushinteger(L, ws ? ws->code : 1006);
  return 2;
}


static int ws_gc(lua_State *L) {
  ws_ud_t *ud = luaL_checkudata(L, 1, LS_WS_MT);
  ls_ws_t *ws = ud->ws;
  if (ws == NULL)
    return 0;
  ud->ws = NULL;
  ws->ud = NULL;
  if (ws->transport_gone && !ws->notify.queued)
    ls__ws_free(ws);
  else if (ws->state != WS_CLOSED)
    ws_end(ws, 1001);   /* nobody can use it any more */
  return 0;
}


/* ws_accept_key(key): Sec-WebSocket-Accept for a Sec-WebSocket-Key. */
int ls__lua_ws_accept_key(lua_State *L) {
  static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
  size_t klen;
  const char *key = luaL_checklstring(L, 1, &klen);
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int dlen = 0;
  EVP_MD_CTX *md = EVP_MD_CTX_new();
  if (md == NULL || !EVP_DigestInit_ex(md, EVP_sha1(), NULL) ||
      !EVP_DigestUpdate(md, key, klen) ||
      !EVP_DigestUpdate(md, guid, sizeof(guid) - 1) ||
      !EVP_DigestFinal_ex(md, digest, &dlen)) {
    EVP_MD_CTX_free(md);
    return luaL_error(L, "ws_accept_key: sha1 failed");
  }
  EVP_MD_CTX_free(md);
  unsigned char out[64];
  int n = EVP_EncodeBlock(out, digest, (int)dlen);
  lua_pushlstring(L, (const char *)out, (size_t)n);
  return 1;
}


/* base64(data): data in base64 (the client's Sec-WebSocket-Key). */
int ls__lua_base64(lua_State *L) {
  size_t len;
  const char *data = luaL_checklstring(L, 1, &len);
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  while (len > 0) {
    size_t n = len < 48 ? len : 48;   /* 48 bytes -> 64 characters */
    unsigned char out[68];
    int k = EVP_EncodeBlock(out, (const unsigned char *)data, (int)n);
    luaL_addlstring(&b, (const char *)out, (size_t)k);
    data += n;
    len -= n;
  }
  luaL_pushresult(&b);
  return 1;
}


void ls__ws_open(lua_State *L) {
  static const luaL_Reg methods[] = {
    {"receive", ws_receive},
    {"cancel_receive", ws_cancel_receive},
    {"send", ws_send},
    {"wait_drain", ws_wait_drain},
    {"ping", ws_ping},
    {"close", ws_close},
    {"abort", ws_abort},
    {"state", ws_state},
    {NULL, NULL},
  };
  ls__new_class(L, LS_WS_MT, methods, ws_gc);
}
