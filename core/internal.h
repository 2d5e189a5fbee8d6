/* internal.h: what the core's files share, grouped by file. Not installed. */
#ifndef LS_INTERNAL_H
#define LS_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>
#include <lua.h>
#include <lauxlib.h>
#include <llhttp.h>

#include "luaserve.h"

#define LS__CORE_MODULE "luaserve.core"

/* ---- runtime.c ---------------------------------------------------------- */

/* Work the loop does after the current callback, never from inside a Lua
 * call: an owner embeds an ls_defer_t and queues it (ls__defer); the
 * runtime's idle and check handles run the queue (see runtime.c). */
typedef struct ls_defer_s ls_defer_t;
typedef void (*ls_defer_cb)(ls_defer_t *d);
struct ls_defer_s {
  ls_defer_t *prev, *next;
  ls_defer_cb cb;
  int queued;               /* on the queue: the owner must not be freed */
};

/* A checked handle table: Lua holds a number (generation and index), never
 * a pointer; a stale number finds nothing (see ls__slot_get). */
typedef struct {
  void *ptr;                /* NULL: free */
  uint32_t gen;
  uint32_t next_free;       /* index + 1 of the next free slot, 0: none */
} ls_slot_t;

/* Per Lua state: its loop and what the C side calls back into. */
struct ls_runtime_s {
  uv_loop_t *loop;
  lua_State *L;
  int resolve_ref;     /* Lua function resolve(target, ...) for I/O results */
  int traceback_ref;   /* debug.traceback, the error handler of every call */
  int closing;         /* set by ls_runtime_free: callbacks must not enter Lua */
  void *pool;          /* the thread pool (main state) or NULL */
  void *stopping_pools; /* pools stopped from Lua, finishing (pool.c) */
  void *shared;        /* the shared dictionary, or NULL */
  void *gzip;          /* compress.c's reusable deflate stream, or NULL */
  void *ws_zlib;       /* ws.c's permessage-deflate streams, or NULL */
  int is_pool_state;   /* 1 in a pool thread's state */
  char *lua_dir;       /* the framework's Lua folder (pool states need it) */
  char *read_buf;      /* LS__READ_BUF bytes every read of this loop lands in:
                          a waiting connection or socket holds no buffer */
  int read_buf_busy;
  int method_refs[48];  /* registry refs of method name strings, 0: none */
  uint64_t block_warn_ns;  /* an entry into Lua this long blocked the loop */
  int blocked_ref;         /* Lua blocked(seconds) hook, 0: none */
  int in_run_once;         /* inside core.run_once (see ls__pcall_entry) */
  struct ls_server_s *servers;     /* this runtime's listening servers */
  struct ls_shutdown_s *shutdown;  /* signal watchers (shutdown.c), or NULL */
  uv_timer_t sleep_timer;  /* the one timer behind every sleep() (timer.c) */
  /* The streams' deadlines (stream.c): a min-heap of the streams that have
   * one, by timer_due (1-based; [0] unused), behind one libuv timer. A
   * connection then holds no timer handle of its own (152 bytes). */
  uv_timer_t stream_timer;
  struct ls_stream_s **deadlines;
  uint32_t ndeadlines, deadlines_cap;
  uint32_t nstreams;          /* open streams: each has a place reserved */
  uint32_t deadlines_strong;  /* of them, those that keep the loop alive */
  uint64_t stream_timer_due;  /* when stream_timer fires, if it runs */
  int deadlines_firing;       /* inside stream_timer's callback */
  int sleep_ref;           /* Lua fire(now_ms) that sleep_timer calls, or 0 */
  uv_idle_t defer_idle;    /* runs the deferred queue before the loop waits */
  uv_check_t defer_check;  /* and after the I/O callbacks of an iteration */
  ls_defer_t *defer_head, *defer_tail;
  ls_slot_t *slots;        /* request handles (server.c) */
  uint32_t nslots, slot_cap, slot_free;
  /* This process's worker slot in shared memory (master.c), or a private
   * one: gauges, heartbeat, loop lag. wslot_shared: entries are timed. */
  struct ls_wslot_s *wslot;
  int wslot_shared;
};

#define LS__READ_BUF (64 * 1024)

/* ls__read_alloc: alloc_cb handing out the runtime's read buffer; the
 * handle's loop->data is the runtime. */
void ls__read_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf);
/* ls__read_done: the read callback is done with buf (call it last). */
void ls__read_done(uv_handle_t *h, const uv_buf_t *buf);

/* ls__runtime: the runtime of L (stored in the registry). */
ls_runtime_t *ls__runtime(lua_State *L);
/* LS__RT: the runtime, inside a function of the core module (its
 * upvalue: no registry look-up). */
#define LS__RT(L) ((ls_runtime_t *)lua_touserdata((L), lua_upvalueindex(1)))
/* ls__pcall: lua_pcall with a traceback handler; on error logs `what` and
 * the traceback, pops it and returns the nonzero status. */
int ls__pcall(lua_State *L, int nargs, int nresults, const char *what);
/* ls__pcall_entry: ls__pcall (no results) of an entry from the loop into
 * Lua; one that held the loop longer than watch_blocking's threshold is
 * reported to the Lua hook. */
int ls__pcall_entry(ls_runtime_t *rt, int nargs, const char *what);
/* ls__resolve: call resolve(target, <nargs values on top>) and unref target.
 * Pops the nargs values. Does nothing (but pop and unref) when closing. */
void ls__resolve(ls_runtime_t *rt, int target_ref, int nargs);
/* ls__log (log.c): one line on stderr with the time and the level
 * ("debug", "info", "warn", "error"), after the buffered access lines. */
void ls__log(const char *level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* ls__log_flush (log.c): write the buffered access lines now. */
void ls__log_flush(void);
/* ls__log_level (log.c): the process's level, 1 debug .. 4 error. */
int ls__log_level(void);
/* ls__new_class: a metatable `name` (with __name), methods as __index,
 * gc as __gc (either may be NULL); leaves the stack as it was. */
void ls__new_class(lua_State *L, const char *name, const luaL_Reg *methods,
                   lua_CFunction gc);
/* ls__format_addr: the address's host as text into host; returns the port. */
int ls__format_addr(const struct sockaddr_storage *addr, char *host,
                    size_t size);
/* ls__push_addr: push the address's host and port; returns 2. */
int ls__push_addr(lua_State *L, const struct sockaddr_storage *addr);
/* ls__push_error: push nil and the message of err; returns 2. */
int ls__push_error(lua_State *L, int err);
/* ls__log_at: ls__log when level (1 debug .. 4 error) passes the log's. */
#define ls__log_at(rt, lvl, name, ...)                                      \
  do {                                                                      \
    (void)(rt);                                                             \
    if ((lvl) >= ls__log_level()) ls__log(name, __VA_ARGS__);              \
  } while (0)
/* ls__defer: run cb(d) after the current callback, from the loop (never
 * inside a Lua call). Queuing a queued item does nothing. Not while the
 * runtime closes. */
void ls__defer(ls_runtime_t *rt, ls_defer_t *d, ls_defer_cb cb);
/* ls__defer_cancel: take d off the queue if it is on it. */
void ls__defer_cancel(ls_runtime_t *rt, ls_defer_t *d);
/* ls__slot_new: a handle slot for ptr; its index, or UINT32_MAX (no memory). */
uint32_t ls__slot_new(ls_runtime_t *rt, void *ptr);
/* ls__slot_free: the slot's handles are stale from now on. */
void ls__slot_free(ls_runtime_t *rt, uint32_t idx);
/* ls__slot_next: a new handle for the slot; earlier ones go stale. */
double ls__slot_next(ls_runtime_t *rt, uint32_t idx);
/* ls__slot_get: the pointer a handle names, or NULL when it is stale. */
void *ls__slot_get(ls_runtime_t *rt, double handle);

/* ---- buffers (buf.c) ---------------------------------------------------- */

/* A growable byte buffer; `data` is malloc'd, NULL when empty. Up to
 * LS_BUF_MAX bytes: 32-bit sizes keep it at 16 bytes (a connection holds
 * eight of them); growing past that is UV_ENOMEM. */
typedef struct {
  char *data;
  uint32_t len;
  uint32_t cap;
} ls_buf_t;
#define LS_BUF_MAX UINT32_MAX

/* ls__buf_append: append n bytes; returns 0 or UV_ENOMEM. */
int ls__buf_append(ls_buf_t *b, const char *p, size_t n);
/* ls__buf_reserve: make room for n more bytes; returns 0 or UV_ENOMEM. */
int ls__buf_reserve(ls_buf_t *b, size_t n);
/* ls__buf_free: release the storage; the buffer is empty again. */
void ls__buf_free(ls_buf_t *b);
/* ls__put_uint: v's decimal digits at p (up to 20); returns past them. */
char *ls__put_uint(char *p, uint64_t v);

/* ---- stream.c: the byte stream under every socket ---------------------- */

typedef struct ls_stream_s ls_stream_t;
typedef struct ls_tls_s ls_tls_t;

enum { LS_TIMEOUT_DEADLINE, LS_TIMEOUT_SEND };

/* What a stream tells its owner. Each runs from a libuv callback or the
 * deferred queue, never from inside a call the owner made. */
typedef struct {
  /* plaintext bytes, only while the owner reads; data is valid during the
   * call only */
  void (*on_read)(ls_stream_t *s, const char *data, size_t len);
  /* no more input: UV_EOF, a socket error or LS_ETLS; reading stopped */
  void (*on_end)(ls_stream_t *s, int err);
  /* what waited for the socket is written (0), or writing failed (< 0) */
  void (*on_drain)(ls_stream_t *s, int status);
  /* the owner's deadline passed (LS_TIMEOUT_DEADLINE), or queued output
   * made no progress for the send timeout (LS_TIMEOUT_SEND) */
  void (*on_timeout)(ls_stream_t *s, int kind);
  /* the TLS handshake finished (0) or failed (LS_ETLS, UV_EOF, ...) */
  void (*on_handshake)(ls_stream_t *s, int err);
  /* both handles are closed and nothing is in flight: free the owner */
  void (*on_close)(ls_stream_t *s);
} ls_stream_ops_t;

/* A TCP byte stream, embedded in its owner. Reads are pulled (nothing is
 * read while the owner does not read); writes go through one queue: `out`
 * collects bytes (ciphertext under TLS) while `flight` is with uv_write.
 * The owner's deadline and the send timeout are one entry in the
 * runtime's deadline heap. */
struct ls_stream_s {
  uv_tcp_t tcp;             /* tcp.data = the stream */
  ls_runtime_t *rt;
  const ls_stream_ops_t *ops;
  ls_tls_t *tls;            /* the TLS filter, or NULL: plain TCP */
  struct ls_stream_tx_s *tx;/* with tls only: what TLS alone needs (apart:
                               48 bytes less per plain connection) */
  ls_buf_t out;             /* bytes waiting behind the write in flight */
  ls_buf_t flight;          /* bytes handed to uv_write (one write in
                               flight at most; its request is malloc'd) */
  uint64_t deadline;        /* the owner's, loop ms; 0: none */
  uint64_t send_ms;         /* send timeout; 0: none */
  uint64_t send_deadline;   /* loop ms while output waits; 0: none */
  uint64_t bytes_in;        /* bytes ever queued for the socket */
  uint64_t send_mark;       /* bytes the kernel had taken at the last check */
  uint64_t timer_due;       /* its key in the runtime's deadline heap */
  int corked;               /* writes collect until uncorked */
  int cork_open;            /* the next write goes out now, with what the
                               cork holds (the last answer of a batch) */
  uint32_t heap_idx;        /* its place in the deadline heap; 0: none */
  unsigned reading : 1;     /* the owner reads */
  unsigned uv_reading : 1;  /* libuv reads */
  unsigned writing : 1;     /* flight is with uv_write */
  unsigned closing : 1;
  unsigned eof : 1;         /* no more input */
  unsigned wfailed : 1;     /* a write failed: output is dropped */
  unsigned tls_ready : 1;   /* handshake done */
  unsigned end_pending : 1; /* close once output is written */
  unsigned shut_pending : 1;/* half-close once output is written */
  unsigned timer_weak : 1;  /* its deadline never keeps the loop alive */
  unsigned counted : 1;     /* its place in the deadline heap is reserved */
};

/* ls__stream_deadlines_init / _close / _free: the runtime's deadline heap
 * and its timer (runtime.c: at start; close with the other handles; free
 * once the loop has run their close callbacks). */
void ls__stream_deadlines_init(ls_runtime_t *rt);
void ls__stream_deadlines_close(ls_runtime_t *rt);
void ls__stream_deadlines_free(ls_runtime_t *rt);
/* ls__stream_init: the handle on rt's loop and a place in the deadline
 * heap; the owner zeroed s. 0, or UV_ENOMEM: the owner closes s (as any
 * stream: ls__stream_close) and gives up on it. */
int ls__stream_init(ls_runtime_t *rt, ls_stream_t *s,
                    const ls_stream_ops_t *ops);
/* ls__stream_read_start / _stop: the owner wants bytes, or not now.
 * read_start returns 0 or a libuv error. */
int ls__stream_read_start(ls_stream_t *s);
void ls__stream_read_stop(ls_stream_t *s);
/* ls__stream_write: queue bufs (copied where the socket does not take them
 * now). 0, or an error: the stream cannot write any more. */
int ls__stream_write(ls_stream_t *s, const uv_buf_t *bufs, unsigned nbufs);
/* ls__stream_queued: output bytes not yet taken by the kernel (a corked
 * stream's included). */
size_t ls__stream_queued(const ls_stream_t *s);
/* ls__stream_blocked: the socket is full: output waits for it, and
 * on_drain will come. */
#define ls__stream_blocked(s) ((s)->writing)
/* ls__stream_cork / _uncork: collect writes, then write them at once
 * (pipelined answers in one system call). uncork returns 0 or an error.
 * Setting s->cork_open lets the next write go out at once together with
 * what is collected (no copy when it is the last of the batch). */
void ls__stream_cork(ls_stream_t *s);
int ls__stream_uncork(ls_stream_t *s);
/* ls__stream_deadline: the owner's one deadline, ms from now (0: none).
 * Inline: requests move it several times. */
void ls__stream_deadline_at(ls_stream_t *s, uint64_t ms);
static inline void ls__stream_deadline(ls_stream_t *s, uint64_t ms) {
  if (ms == 0)
    s->deadline = 0;
  else
    ls__stream_deadline_at(s, ms);
}
/* ls__stream_send_timeout: ms queued output may go without progress. */
void ls__stream_send_timeout(ls_stream_t *s, uint64_t ms);
/* ls__stream_close: close now (queued output is dropped; TLS sends its
 * close_notify if the socket takes it). Idempotent. */
void ls__stream_close(ls_stream_t *s);
/* ls__stream_reset: the close that follows sends a reset (SO_LINGER 0),
 * not a FIN. For a peer that is gone. */
void ls__stream_reset(ls_stream_t *s);
/* ls__stream_end: close once the queued output is written. */
void ls__stream_end(ls_stream_t *s);
/* ls__stream_shutdown: half-close once the queued output is written;
 * reading goes on (a lingering close). */
void ls__stream_shutdown(ls_stream_t *s);
/* ls__stream_tls: put a TLS filter on s (server: accept; client: connect,
 * with `name` for SNI and the certificate check, NULL: none) and start
 * the handshake; its end comes through on_handshake. 0 or an error. */
int ls__stream_tls(ls_stream_t *s, void *ssl_ctx, int server,
                   const char *name, int check_name);
/* ls__stream_error: the reason of the last TLS error ("" if none). */
const char *ls__stream_error(const ls_stream_t *s);

/* ---- tls.c: OpenSSL contexts and the filter under a stream ------------- */

/* ls__tls_new: a filter on ctx (an SSL_CTX), memory BIOs both ways. */
ls_tls_t *ls__tls_new(void *ctx, int server, const char *name,
                      int check_name);
void ls__tls_free(ls_tls_t *t);
/* ls__tls_feed: bytes from the socket; 0 or UV_ENOMEM. */
int ls__tls_feed(ls_tls_t *t, const char *data, size_t len);
/* ls__tls_handshake: 1 done, 0 needs input, LS_ETLS failed (reason). */
int ls__tls_handshake(ls_tls_t *t);
/* ls__tls_read: plaintext bytes (> 0), 0 needs input, UV_EOF (the peer's
 * close_notify) or LS_ETLS. */
int ls__tls_read(ls_tls_t *t, char *buf, size_t cap);
/* ls__tls_write: encrypt len bytes; 0 or LS_ETLS. */
int ls__tls_write(ls_tls_t *t, const char *data, size_t len);
/* ls__tls_output: append the bytes to send to out; 0 or UV_ENOMEM. */
int ls__tls_output(ls_tls_t *t, ls_buf_t *out);
/* ls__tls_pending: input held that may give plaintext without a read. */
int ls__tls_pending(ls_tls_t *t);
/* ls__tls_close_notify: queue the close_notify alert (ls__tls_output). */
void ls__tls_close_notify(ls_tls_t *t);
/* ls__tls_reason: what the last failure was ("" if none). */
const char *ls__tls_reason(const ls_tls_t *t);
/* ls__tls_push_info: push a table {version, cipher, alpn, peer_subject,
 * peer_verified} of an established connection. */
void ls__tls_push_info(lua_State *L, ls_tls_t *t);
/* ls__tls_check_context: the SSL_CTX of the context userdata at idx. */
void *ls__tls_check_context(lua_State *L, int idx);
/* ls__tls_context_ref / _unref: keep a context alive (a server's). */
void ls__tls_context_ref(void *ctx);
void ls__tls_context_unref(void *ctx);

/* ---- ws.c: WebSocket on a stream ---------------------------------------- */

typedef struct ls_ws_s ls_ws_t;

/* What a ws needs of the stream's owner. */
typedef struct {
  void (*close)(void *owner);   /* close the transport (once) */
} ls_ws_owner_t;

/* ls__ws_new: a ws on stream (server or client side), its userdata pushed;
 * opts is the stack index of its options (0: none). NULL on out of memory
 * (nothing pushed). The owner forwards its stream events to it. */
ls_ws_t *ls__ws_new(lua_State *L, ls_stream_t *stream, int server, int opts,
                    const ls_ws_owner_t *owner, void *owner_data);
/* The owner's stream events, in WebSocket mode. */
void ls__ws_on_read(ls_ws_t *ws, const char *data, size_t len);
void ls__ws_on_end(ls_ws_t *ws, int err);
void ls__ws_on_drain(ls_ws_t *ws, int status);
void ls__ws_on_timeout(ls_ws_t *ws);
/* ls__ws_transport_closed: the owner's stream is closed (the ws frees
 * itself once Lua has let go of it). */
void ls__ws_transport_closed(ls_ws_t *ws);
/* ls__ws_free: release everything (the exit path, or via the above). */
void ls__ws_free(ls_ws_t *ws);
/* ls__ws_clean: both close frames went through (a clean end). */
int ls__ws_clean(const ls_ws_t *ws);
/* ls__ws_going_away: start the close handshake with 1001 (shutdown). */
void ls__ws_going_away(ls_ws_t *ws);

/* ---- server.c: listeners, connections, reads, writes, timeouts ---------- */

/* Limits and timeouts of one server; set from Lua at listen time. */
typedef struct {
  size_t max_header_bytes;  /* request line + headers; over it: 431 */
  unsigned max_headers;     /* header count; over it: 431 */
  size_t max_body;          /* body bytes; over it: 413 */
  uint64_t header_timeout;  /* ms from a request's first byte to its headers;
                               also the longest pause inside a body, and
                               the TLS handshake's bound */
  uint64_t keepalive_timeout; /* ms an idle keep-alive connection is kept,
                                 counted once its last answer is written */
  uint64_t send_timeout;    /* ms an answer may wait without progress */
  unsigned limit_concurrency; /* requests in Lua at once; 0: no limit */
  uint64_t max_upload;      /* a streamed (multipart) body's bytes; 413 */
  int stream_multipart;     /* stream multipart/form-data bodies (body.c) */
} ls_limits_t;

typedef struct ls_server_s ls_server_t;
typedef struct ls_send_s ls_send_t;   /* static.c: a file being sent */

/* One header of the request being parsed: offsets into conn->req. */
typedef struct {
  uint32_t name_off, name_len, value_off, value_len;
} ls_hdr_t;

/* IDLE: between requests; READING: a request's bytes are arriving; BUSY: a
 * request is in Lua; LINGER: answered an error, draining input before the
 * close; WS: upgraded, the bytes are a WebSocket's (ws.c); CLOSING: handles
 * closing. Only IDLE and READING parse. */
enum { LS_CONN_IDLE, LS_CONN_READING, LS_CONN_BUSY, LS_CONN_CLOSING,
       LS_CONN_LINGER, LS_CONN_WS };

/* A client connection. Allocated apart from Lua, which knows it by a
 * checked handle (a slot); freed when its stream is closed, Lua no longer
 * holds a request of it and no notification is queued (conn_maybe_free). */
typedef struct ls_conn_s {
  ls_stream_t stream;       /* first: a stream pointer is the connection */
  ls_runtime_t *rt;
  ls_server_t *server;
  struct ls_conn_s *prev, *next;  /* the server's connection list */
  llhttp_t parser;
  ls_defer_t notify;        /* tells Lua what happened, from the loop */
  uint32_t slot;            /* the handle slot */
  uint16_t error_status;    /* status chosen by a parser callback, or 0 */
  uint8_t state;            /* LS_CONN_* */
  uint8_t in_process;       /* parsing (nested calls): answers are corked,
                               the parse loop goes on by itself */
  double handle;            /* the request in Lua's handle */
  const char *error_reason; /* and its detail (static): llhttp replaces
                               the reason of non-span callbacks */
  uint8_t host_seen;        /* Host header fields in the request */
  unsigned stream_open : 1;       /* until the stream's on_close */
  unsigned lua_holds : 1;         /* Lua has a request of this connection */
  unsigned in_notify : 1;         /* inside the notify callback: do not free */
  unsigned keepalive : 1;         /* the current request allows keep-alive */
  unsigned close_after_write : 1; /* close once queued writes are done */
  unsigned is_head : 1;           /* the request in Lua is HEAD */
  unsigned last_was_value : 1;    /* header callbacks: last span was a value */
  unsigned in_body : 1;           /* headers done, body being read */
  unsigned nheaders;
  size_t header_bytes;      /* request line + headers so far */
  ls_buf_t req;             /* url and header bytes of the request */
  ls_buf_t hdrs;            /* ls_hdr_t array */
  ls_buf_t body;
  ls_buf_t pending;         /* unparsed bytes read ahead (pipelining) */
  ls_buf_t out;             /* the response head being formatted */
  uint32_t url_len;
  unsigned streaming : 1;   /* a streamed response is being written */
  uint16_t peer_port;       /* the client's address, read once at accept */
  char peer_host[46];       /* (INET6_ADDRSTRLEN); "" if unknown */
  int drain_ref;            /* target waiting for the write queue, or 0 */
  ls_ws_t *ws;              /* in WebSocket mode: the protocol, or NULL */
  ls_buf_t written_refs;    /* int targets waiting for answers to be
                               written (background tasks), oldest first */
  uint64_t idle_since;      /* loop ms: idle (no request, nothing to write)
                               since; a drain spares a recent one a while */
  ls_send_t *send;          /* a file body being sent (static.c), or NULL */
  unsigned notify_abort : 1;   /* tell Lua the client went away */
  unsigned notify_closed : 1;  /* wake drain_ref with nil, "closed" */
  unsigned notify_process : 1; /* parse pipelined bytes */
  unsigned notify_written : 1; /* resolve written_refs (true or "closed") */
  unsigned notify_ws_early : 1; /* feed the ws what came after the upgrade */
  /* A streamed request body (body.c): a multipart/form-data request goes
   * to Lua at headers-complete; its body collects in `body` (bounded:
   * reading stops while it is full) until Lua takes it with body_read. */
  unsigned notify_body : 1;    /* wake body_ref */
  unsigned want_continue : 1;  /* send 100 Continue at the first body_read */
  int body_stream;          /* LS_BODY_* */
  int body_ref;             /* target waiting for body bytes, or 0 */
  int body_status;          /* LS_BODY_FAILED: 400, 408, 413 or 503 */
  const char *body_reason;  /* and why (static) */
  uint64_t body_total;      /* body bytes received so far */
} ls_conn_t;

/* A streamed body: NONE (the body is whole in `body`, or none), DISPATCH
 * (headers complete, to dispatch), OPEN (Lua has the request, bytes are
 * arriving), END (all received), FAILED (too large, malformed, too slow:
 * body_status says). */
enum { LS_BODY_NONE, LS_BODY_DISPATCH, LS_BODY_OPEN, LS_BODY_END,
       LS_BODY_FAILED };

struct ls_server_s {
  uv_tcp_t listener;
  ls_runtime_t *rt;
  ls_limits_t lim;
  void *tls_ctx;            /* SSL_CTX: the listener speaks TLS; or NULL */
  int dispatch_ref;         /* Lua dispatch(handle, method, target, headers, body) */
  int abort_ref;            /* Lua abort(handle): the client went away */
  int listening;
  int accepting;            /* uv_listen was called (not paused) */
  int backlog;
  int draining;             /* shutting down: finish in-flight, accept none */
  unsigned inflight;        /* connections with a request in Lua */
  int accept_fd;            /* a socket shared with other workers, or -1 */
  uv_poll_t *accept_poll;   /* watches it (one accept per wakeup), or NULL */
  ls_conn_t *conns;         /* every open connection */
  ls_server_t *next_server; /* every server of this runtime */
};

/* ls__respond_whole (respond.c): write the head in c->out (err: its
 * formatting failed) and the body; on an error close the connection.
 * Returns 0 or the error; the caller ends the request. No Lua. */
int ls__respond_whole(ls_conn_t *c, int err, const char *body, size_t blen);
/* ls__conn_write: write bufs on c's stream. 0 or an error. */
int ls__conn_write(ls_conn_t *c, uv_buf_t *bufs, unsigned nbufs);
/* ls__conn_request_done: the answer to the request in Lua is written (or
 * abandoned): Lua's hold ends; go on with the next request, or close.
 * Safe from inside a Lua call: parsing what is pipelined is deferred. */
void ls__conn_request_done(ls_conn_t *c);
/* ls__conn_close: start closing (idempotent); freed later. Lua hears of a
 * request it holds through the deferred notify, never from inside here. */
void ls__conn_close(ls_conn_t *c);
/* ls__conn_linger: close after an error answer that is written or queued:
 * half-close, discard what the client still sends, close on its EOF or
 * after a short while. Nothing more is parsed. */
void ls__conn_linger(ls_conn_t *c);
/* ls__conn_when_written: target (stack idx) is resolved with true once
 * everything queued on c is written (nil, "closed" if it never is). 0 or
 * UV_ENOMEM. */
int ls__conn_when_written(ls_conn_t *c, lua_State *L, int idx);
/* ls__conn_lookup: the connection of a request handle (Lua value at idx),
 * or NULL when that request is over. Core module functions only (LS__RT). */
ls_conn_t *ls__conn_lookup(lua_State *L, int idx);
/* ls__conn_notify: run c's notifications from the loop (body.c sets
 * notify_body first). */
void ls__conn_notify(ls_conn_t *c);

/* ---- body.c: streamed request bodies ------------------------------------ */

/* ls__body_pump: after bytes were parsed or taken: reading on while the
 * buffer has room, off while it is full; wake a waiting reader. */
void ls__body_pump(ls_conn_t *c);
/* ls__body_ended: the last byte of the body was parsed. */
void ls__body_ended(ls_conn_t *c);
/* ls__body_fail: the body cannot be read on (status, static reason); the
 * reader hears it, the connection closes after the answer. */
void ls__body_fail(ls_conn_t *c, int status, const char *reason);
/* ls__body_notify: from the loop: hand the waiting reader what there is. */
void ls__body_notify(ls_conn_t *c);
/* ls__body_done: the request is over: drop the buffer and the reader.
 * Returns 1 when the body was not all read from the client (the
 * connection must not be reused). */
int ls__body_done(ls_conn_t *c);

/* ---- http.c: the llhttp glue and response formatting -------------------- */

/* The request parser settings (llhttp keeps a pointer: static storage). */
extern const llhttp_settings_t ls__http_settings;
/* ls__http_reset: forget the request being assembled. */
void ls__http_reset(ls_conn_t *c);
/* ls__http_push_headers: push a table of n headers (spans of base): names
 * lower-cased, repeated ones joined with ", ". */
void ls__http_push_headers(lua_State *L, const char *base, const ls_hdr_t *h,
                           unsigned n);
/* ls__http_push_packed: push a table of headers packed as
 * "name\0value\0..." (what ls__http_push_request gives Lua). */
void ls__http_push_packed(lua_State *L, const char *s, size_t len);
int ls__lua_unpack_headers(lua_State *L);
/* ls__http_push_request: push method, target, packed headers, body (false:
 * streamed), the path's length in the target and whether the path holds
 * a %-escape on L; returns the number pushed (6). */
int ls__http_push_request(lua_State *L, ls_conn_t *c);
/* body_len of a streamed response: chunked (or close-delimited) */
#define LS__STREAMED ((size_t)-1)

/* ls__http_format_head: format status line and headers into c->out.
 * `headers` is the stack index of a table {name = value | {values}} or 0.
 * Returns 0 or UV_ENOMEM; raises on a bad header table or a content type
 * with CR or LF (L NULL: returns UV_EINVAL for it, with no header table). */
int ls__http_format_head(lua_State *L, ls_conn_t *c, int status,
                         const char *ctype, size_t ctype_len, size_t body_len,
                         int headers);
/* ls__http_error_response: answer status with a small JSON body and close. */
void ls__http_error_response(ls_conn_t *c, int status, const char *detail);
/* ls__http_reason: the reason phrase of status ("Unknown" if none). */
const char *ls__http_reason(int status);
/* ls__http_continue: write 100 Continue (a streamed body's first read). */
void ls__http_continue(ls_conn_t *c);

/* ---- static.c: files off the loop ---------------------------------------- */

/* ls__send_on_drain: the connection's queue drained: the file goes on. */
void ls__send_on_drain(ls_conn_t *c);
/* ls__send_detach: the connection closes: the send ends without it (the
 * work in flight finishes alone; Lua hears of it through the abort). */
void ls__send_detach(ls_conn_t *c);

/* ---- copy.c: values between Lua states, by copy ------------------------- */

/* How a copy error names the value: "<root>[ <n>]<path>: <what> <verb>",
 * e.g. "argument 2.items[3]: function cannot cross into a sync function". */
typedef struct {
  const char *root;         /* "argument", "result", "value" */
  int numbered;             /* add the value's position (1-based) */
  const char *verb;         /* "cannot cross into a sync function" */
} ls_copy_ctx_t;

/* ls__copy_encode: append the n values from stack index first to out.
 * Returns 0, LS_ECOPY (message in err naming the value's path) or
 * UV_ENOMEM; out is unchanged on error. Never raises; stack unchanged. */
int ls__copy_encode(lua_State *L, int first, int n, ls_buf_t *out,
                    const ls_copy_ctx_t *ctx, char *err, size_t errlen);
/* ls__copy_decode: push the values encoded in data, *n of them. Returns 0
 * or LS_ECOPY (malformed; nothing pushed). Raises only on out of memory. */
int ls__copy_decode(lua_State *L, const char *data, size_t len, int *n);

/* ---- pool.c: the sync pool ---------------------------------------------- */

/* ls__pool_free: stop the main state's pool, join its threads (exit path;
 * running jobs finish first). */
void ls__pool_free(ls_runtime_t *rt);
/* ls__pool_open: the job handle's metatable. */
void ls__pool_open(lua_State *L);

/* ---- shared.c: the shared dictionary ------------------------------------ */

/* ls__shared_release: rt no longer uses the dictionary (freed with the
 * last runtime that did). */
void ls__shared_release(ls_runtime_t *rt);

/* ---- shm.c: the shared-memory region (workers, metrics, dictionary) ---- */

#include <pthread.h>

#define LS_SHM_MAX_SLOTS 512
#define LS_METRIC_BUCKETS 15   /* latency histogram bounds, +Inf included */

/* One worker process's place in the region (in a single process: slot 0).
 * Written by that worker's loop thread (pool gauges: under the pool's
 * lock); read by the master and by any worker rendering metrics. */
typedef struct ls_wslot_s {
  int32_t pid;              /* the master's: 0 when free */
  uint32_t gen;             /* the master's: which start of this slot */
  uint64_t beat;            /* uv_hrtime of the worker's last heartbeat */
  uint64_t entry_t0;        /* an entry from the loop into Lua runs since
                               (uv_hrtime ns); 0: none */
  uint64_t lag_ns[2];       /* the longest entry of this window, the last */
  uint64_t lag_window;      /* when this window began (ns) */
  int64_t conns;            /* gauges: open connections */
  int64_t inflight;         /* requests in Lua */
  int64_t pool_threads, pool_busy, pool_queued;
  uint64_t requests;        /* requests dispatched by this process */
  uint64_t max_requests;    /* retire after this many; 0: never */
  char running[232];        /* "GET /x (route /x)" of the task resumed
                               last, NUL-terminated */
} ls_wslot_t;

/* A metrics series' key: route NUL method NUL status. */
typedef struct {
  uint32_t len;             /* 0 until the key is whole */
  char key[252];
} ls_series_key_t;

/* A series' counters in one slot (one writer: that worker's loop). */
typedef struct {
  uint64_t count;
  uint64_t sum_ns;
  uint64_t buckets[LS_METRIC_BUCKETS];   /* not cumulative */
} ls_series_t;

typedef struct {
  uint64_t magic;
  uint64_t size;
  pthread_mutex_t meta_lock;   /* registering series */
  uint32_t nslots, max_series;
  uint32_t nseries;            /* series registered (meta_lock) */
  uint32_t workers;            /* the master's: workers alive */
  uint64_t restarts;           /* the master's: workers replaced, ever */
  int64_t conns_total;         /* open connections of all workers (atomic) */
  uint64_t slots_off, keys_off, counters_off, dict_off;
} ls_shm_t;

/* The region once made (inherited by forked workers), else NULL. */
extern ls_shm_t *ls__shm_region;
/* ls__shm_create: make the region (dict_bytes 0: the default). 0,
 * UV_EEXIST when it exists, or an error. */
int ls__shm_create(size_t dict_bytes, unsigned nslots, unsigned max_series);
/* ls__shm: the region, made with the defaults on first use; NULL on
 * failure. */
ls_shm_t *ls__shm(void);
/* ls__shm_slot: worker slot i. */
ls_wslot_t *ls__shm_slot(ls_shm_t *h, unsigned i);
/* ls__shm_dict: the dictionary's base. */
void *ls__shm_dict(ls_shm_t *h);
/* ls__shm_set_default_dict: the capacity a region made later gets; 1 if
 * it is made already. */
int ls__shm_set_default_dict(size_t bytes);
/* ls__shm_mutex_init: a process-shared robust mutex. 0 or an error. */
int ls__shm_mutex_init(pthread_mutex_t *m);
/* ls__shm_lock: lock m; if its owner died holding it, repair(arg) runs
 * (lock held) and m is made consistent. 0, 1 (repaired) or an error. */
int ls__shm_lock(pthread_mutex_t *m, void (*repair)(void *), void *arg);

/* ls__wslot_local: the slot of a process that shares none. */
extern ls_wslot_t ls__wslot_local;
/* ls__wslot_entry_done: an entry into Lua that began at t1 - dt is over:
 * no entry runs, and the loop lag's window keeps its longest. */
#define LS__LAG_WINDOW_NS 10000000000ull
static inline void ls__wslot_entry_done(ls_wslot_t *ws, uint64_t t1,
                                        uint64_t dt) {
  ws->entry_t0 = 0;
  if (t1 - ws->lag_window >= LS__LAG_WINDOW_NS) {
    ws->lag_ns[1] = t1 - ws->lag_window < 2 * LS__LAG_WINDOW_NS
                        ? ws->lag_ns[0] : 0;
    ws->lag_ns[0] = 0;
    ws->lag_window = t1;
  }
  if (dt > ws->lag_ns[0])
    ws->lag_ns[0] = dt;
}

/* ---- master.c: the master's system calls, the worker's side ----------- */

/* ls__worker_retire: --max-requests reached: ask for a replacement. */
void ls__worker_retire(void);

/* ---- shmdict.c: luaserve.shared's dictionary in the region ------------- */

typedef struct ls_dict_s ls_dict_t;

typedef struct {
  int is_num;
  double num;
  const char *data;         /* copy.c's format, when not a number */
  size_t len;
} ls_dict_value_t;

typedef struct {
  uint64_t count, bytes, capacity, evicted, repairs;
} ls_dict_stats_t;

enum { LS_DICT_ADD = 1, LS_DICT_NO_EVICT = 2 };

/* ls__dict_region_size: bytes a dictionary of this capacity needs. */
size_t ls__dict_region_size(size_t capacity);
/* ls__dict_init: a dictionary in size bytes at base. 0 or an error. */
int ls__dict_init(void *base, size_t size, size_t capacity);
/* ls__dict_lock / _unlock: every function below needs the lock held.
 * lock: 0, 1 (a dead owner's lock: repaired), or an error. */
int ls__dict_lock(ls_dict_t *d);
void ls__dict_unlock(ls_dict_t *d);
/* ls__dict_recover: without waiting, repair the lock if its owner died;
 * 1 if it did. No lock held. */
int ls__dict_recover(ls_dict_t *d);
uint32_t ls__dict_hash(const char *k, size_t n);
/* ls__dict_find: key's live entry (touched: most recently used) or NULL;
 * an expired one is dropped. */
void *ls__dict_find(ls_dict_t *d, const char *k, size_t n, uint32_t h,
                    uint64_t now, int touch);
/* ls__dict_entry: an entry's value (pointing into the region) and expiry. */
void ls__dict_entry(void *e, ls_dict_value_t *v, uint64_t *expires);
/* ls__dict_add_num: add to a number entry's value. */
void ls__dict_add_num(void *e, double by);
/* ls__dict_store: key = v. flags LS_DICT_ADD (UV_EEXIST if live),
 * LS_DICT_NO_EVICT (only expired entries make room). 0, UV_EEXIST or
 * LS_ESHAREDFULL. */
int ls__dict_store(ls_dict_t *d, const char *k, size_t n, uint32_t h,
                   const ls_dict_value_t *v, uint64_t expires, uint64_t now,
                   int flags);
void ls__dict_delete(ls_dict_t *d, const char *k, size_t n, uint32_t h);
void ls__dict_flush(ls_dict_t *d);
void ls__dict_sweep(ls_dict_t *d, uint64_t now);
/* ls__dict_each: fn(arg, key, len) for each live key, most recently used
 * first, until fn returns nonzero (then 1). */
int ls__dict_each(ls_dict_t *d, uint64_t now,
                  int (*fn)(void *arg, const char *k, size_t n), void *arg);
void ls__dict_stats(ls_dict_t *d, ls_dict_stats_t *st);
void ls__dict_set_capacity(ls_dict_t *d, uint64_t bytes);
/* ls__dict_verify: NULL if the structure is sound, else what is wrong. */
const char *ls__dict_verify(ls_dict_t *d, char *buf, size_t size);

/* ---- pg.c, pgquery.c, pgresult.c: PostgreSQL on libpq (luaserve.pg) ---- */

struct pg_conn;
struct pg_cancel;
struct pg_result;

/* RESOLVING: looking the host up; CONNECTING: PQconnectPoll steps; READY:
 * idle; BUSY: a command is in flight; CLOSED. */
enum { LS_PG_RESOLVING, LS_PG_CONNECTING, LS_PG_READY, LS_PG_BUSY,
       LS_PG_CLOSED };

/* What each result of a command in flight is: a prepare's (it matters only
 * if it failed) or an execution's (one value of the answer). */
enum { LS_PG_PREPARE = 'P', LS_PG_EXEC = 'E' };

/* A connection. Allocated apart from its Lua userdata; lives until its
 * handles are closed, the DNS and cancel requests are done, nothing is
 * queued for Lua and Lua let go of it (pg.c). */
typedef struct ls_pg_s {
  struct pg_conn *conn;     /* libpq's; PQfinish'ed once no poll is open */
  ls_runtime_t *rt;
  struct pg_ud_s *ud;       /* the Lua side, NULL once collected */
  uv_poll_t *poll;          /* watches fd (malloc'd); NULL: none */
  int fd;
  int events;               /* what the poll is started for; 0: stopped */
  int polls_open;           /* poll handles not yet closed */
  uv_timer_t timer;         /* the deadline of the connect or command */
  int timer_open;
  uv_getaddrinfo_t dns_req;
  int resolving;
  uv_work_t cancel_req;
  struct pg_cancel *cancel; /* a cancel request running off the loop */
  ls_defer_t notify;        /* resolves the targets of a closed connection */
  int phase;                /* LS_PG_* */
  int op_ref;               /* target of the connect or command */
  int wait_ref;             /* target waiting for a notification */
  int results_ref;          /* the command's results, being collected */
  int perr_ref;             /* a failed prepare's error, for its exec */
  int nexec;                /* results stored so far */
  int single;               /* one command: its own result (2: an error) */
  int pipeline;             /* the command went in pipeline mode */
  int broken;               /* not usable any more: close after the answer */
  char *kinds;              /* LS_PG_PREPARE/EXEC of each result expected */
  int nkinds, kpos;
  char kinds_inline[8];
  char *conninfo;
  const char *close_why;    /* what pending targets hear, NULL: "closed" */
  char why[200];            /* the message of a failure (close_why) */
} ls_pg_t;

/* pg.c: the connection, its poll handle, its life. */
/* ls__pg_check: the connection of the userdata at index 1, NULL once
 * collected. */
ls_pg_t *ls__pg_check(lua_State *L);
/* ls__pg_ready: 1 if a command can be sent now, 0 if the connection is
 * closed or broken; raises when it is busy. */
int ls__pg_ready(lua_State *L, ls_pg_t *p);
/* ls__pg_watch: poll PQsocket for events; active: the loop waits for it.
 * 0 or a libuv error. */
int ls__pg_watch(ls_pg_t *p, int events, int active);
/* ls__pg_deadline: fail the pending operation with "timeout" in ms (0:
 * no deadline). */
void ls__pg_deadline(ls_pg_t *p, double ms);
/* ls__pg_close: close (idempotent); a command in flight is cancelled on
 * the server; pending targets hear nil, why ("closed") from the loop. */
void ls__pg_close(ls_pg_t *p, const char *why);
/* ls__pg_fail: ls__pg_close with a copy of msg. */
void ls__pg_fail(ls_pg_t *p, const char *msg);
/* ls__pg_unref / _resolve: release, or resolve with the nargs values on
 * top, the target in *ref (which becomes LUA_NOREF). */
void ls__pg_unref(ls_pg_t *p, int *ref);
void ls__pg_resolve(ls_pg_t *p, int *ref, int nargs);
/* ls__pg_conn_error: the first line of libpq's last error, into buf. */
const char *ls__pg_conn_error(ls_pg_t *p, char *buf, size_t n);
/* ls__pg_free_kinds: forget what results the command expected. */
void ls__pg_free_kinds(ls_pg_t *p);
/* pgquery.c: commands and their results. */
/* ls__pg_collect: take the results that came; finish when all are in. */
void ls__pg_collect(ls_pg_t *p);
int ls__pg_query(lua_State *L);            /* conn:query(...) */
int ls__pg_batch(lua_State *L);            /* conn:batch(...) */
/* pgresult.c: results as Lua values. */
/* ls__pg_push_rows: the rows table of a successful result. */
void ls__pg_push_rows(lua_State *L, const struct pg_result *r);
/* ls__pg_push_error: the error table of a failed result (r may be NULL;
 * fallback: the message when the result has none). */
void ls__pg_push_error(lua_State *L, const struct pg_result *r,
                       const char *fallback);

/* ---- redis.c: hiredis's reply reader and command formatter ------------- */

void ls__redis_open(lua_State *L);         /* redis.c: metatables */

/* ---- Lua-facing functions, one per line, registered in runtime.c -------- */

int ls__lua_listen(lua_State *L);          /* server.c: listen(opts) */
int ls__lua_respond(lua_State *L);         /* respond.c: whole response */
int ls__lua_release(lua_State *L);         /* respond.c: release(conn) */
int ls__lua_respond_start(lua_State *L);   /* respond.c: streamed head */
int ls__lua_write_chunk(lua_State *L);     /* respond.c: one chunk */
int ls__lua_respond_end(lua_State *L);     /* respond.c: last chunk */
int ls__lua_peer(lua_State *L);            /* respond.c: peer(handle) */
int ls__lua_tls_info(lua_State *L);        /* respond.c: tls_info(handle) */
int ls__lua_file_open(lua_State *L);       /* static.c: file_open(root, path, t) */
int ls__lua_dir_list(lua_State *L);        /* static.c: dir_list(root, path, t, max) */
int ls__lua_respond_file(lua_State *L);    /* static.c: respond_file(handle, ...) */
void ls__static_open(lua_State *L);        /* static.c: metatables */
int ls__lua_tls_server_context(lua_State *L); /* tls.c: server context */
int ls__lua_tls_client_context(lua_State *L); /* tls.c: client context */
void ls__tls_open(lua_State *L);           /* tls.c: metatables */
int ls__lua_shutdown_on_signals(lua_State *L); /* shutdown.c */
void ls__server_open(lua_State *L);        /* server.c: metatables */
void ls__server_close_all(ls_runtime_t *rt); /* server.c: exit path */
void ls__server_stop_listening(ls_server_t *s); /* server.c: close listener */
void ls__shutdown_check(ls_runtime_t *rt);  /* shutdown.c: stop loop if idle */
void ls__shutdown_close(ls_runtime_t *rt);  /* shutdown.c: exit path */

int ls__lua_timer(lua_State *L);           /* timer.c: timer(ms, target) */
int ls__lua_now(lua_State *L);             /* timer.c: loop time, seconds */
int ls__lua_hrtime(lua_State *L);          /* timer.c: monotonic seconds */
int ls__lua_run(lua_State *L);             /* timer.c: run the loop */
int ls__lua_run_once(lua_State *L);        /* timer.c: one loop iteration */
int ls__lua_stop(lua_State *L);            /* timer.c: stop the loop */
void ls__timer_open(lua_State *L);         /* timer.c: metatables */

int ls__lua_tcp_connect(lua_State *L);     /* tcp.c: connect(host, port, t, ms) */
int ls__lua_resolve_sync(lua_State *L);    /* tcp.c: resolve_sync(name) */
int ls__lua_now_ms(lua_State *L);          /* timer.c: now_ms() */
int ls__lua_sleep_init(lua_State *L);      /* timer.c: sleep_init(fire) */
int ls__lua_sleep_arm(lua_State *L);       /* timer.c: sleep_arm(at_ms|nil) */
void ls__tcp_open(lua_State *L);           /* tcp.c: metatables */

int ls__lua_response_parser(lua_State *L); /* client.c: response_parser() */
void ls__client_open(lua_State *L);        /* client.c: metatables */

void ls__ws_zfree(ls_runtime_t *rt);       /* ws.c: its zlib streams */
int ls__lua_gzip(lua_State *L);            /* compress.c: gzip(data, level) */
int ls__lua_gunzip(lua_State *L);          /* compress.c: gunzip(data, max) */
int ls__lua_deflater(lua_State *L);        /* compress.c: deflater(level) */
void ls__compress_open(lua_State *L);      /* compress.c: metatables */
void ls__compress_free(ls_runtime_t *rt);  /* compress.c: exit path */
int ls__lua_random_hex(lua_State *L);      /* random.c: random_hex(n) */
int ls__lua_log(lua_State *L);             /* log.c: log(level, msg, ...) */
int ls__lua_log_access(lua_State *L);      /* log.c: an access line */
int ls__lua_log_flush(lua_State *L);       /* log.c: write the buffered */
int ls__lua_log_config(lua_State *L);      /* log.c: {format, level} */
void ls__random_bytes(void *buf, size_t len); /* random.c: not for secrets */
int ls__lua_ws_accept_key(lua_State *L);   /* ws.c: ws_accept_key(key) */
int ls__lua_base64(lua_State *L);          /* ws.c: base64(data) */
int ls__lua_ws_accept(lua_State *L);       /* server.c: ws_accept(handle, headers, opts) */
void ls__ws_open(lua_State *L);            /* ws.c: metatables */
int ls__lua_spawn(lua_State *L);           /* proc.c: spawn(file, args, on_exit) */
int ls__lua_watch(lua_State *L);           /* proc.c: watch(path, on_change) */
int ls__lua_scandir(lua_State *L);         /* proc.c: scandir(path) */
int ls__lua_on_signal(lua_State *L);       /* proc.c: on_signal(signum, fn) */
int ls__lua_exepath(lua_State *L);         /* proc.c: exepath() */
void ls__proc_open(lua_State *L);          /* proc.c: metatables, signals */

int ls__lua_copy(lua_State *L);            /* copy.c: copy(...) */
int ls__lua_copy_register(lua_State *L);   /* copy.c: copy_register(code, mt) */

int ls__lua_pool_start(lua_State *L);      /* pool.c: pool_start(opts) */
int ls__lua_pool_submit(lua_State *L);     /* pool.c: pool_submit(kind, key, t, ...) */
int ls__lua_pool_cancel(lua_State *L);     /* pool.c: pool_cancel(job) */
int ls__lua_pool_stats(lua_State *L);      /* pool.c: pool_stats() */
int ls__lua_pool_stop(lua_State *L);       /* pool.c: pool_stop() */

int ls__lua_shared_get(lua_State *L);      /* shared.c: shared_get(key) */
int ls__lua_shared_set(lua_State *L);      /* shared.c: shared_set(key, v, ttl) */
int ls__lua_shared_add(lua_State *L);      /* shared.c: shared_add(key, v, ttl) */
int ls__lua_shared_incr(lua_State *L);     /* shared.c: shared_incr(key, by, init, ttl) */
int ls__lua_shared_delete(lua_State *L);   /* shared.c: shared_delete(key) */
int ls__lua_shared_ttl(lua_State *L);      /* shared.c: shared_ttl(key) */
int ls__lua_shared_keys(lua_State *L);     /* shared.c: shared_keys(max) */
int ls__lua_shared_flush_all(lua_State *L); /* shared.c: shared_flush_all() */
int ls__lua_shared_stats(lua_State *L);    /* shared.c: shared_stats() */
int ls__lua_shared_configure(lua_State *L); /* shared.c: shared_configure(bytes) */

/* workers, shared memory, metrics */
int ls__lua_shm_init(lua_State *L);        /* shm.c: shm_init{shared_size, slots, series} */
int ls__lua_shared_safe_set(lua_State *L); /* shared.c: set, evicting nothing */
int ls__lua_shared_safe_add(lua_State *L); /* shared.c: add, evicting nothing */
int ls__lua_shared_verify(lua_State *L);   /* shared.c: check the structure */
int ls__lua_master_open(lua_State *L);     /* master.c: master_open() */
int ls__lua_master_close(lua_State *L);    /* master.c: master_close() */
int ls__lua_master_wait(lua_State *L);     /* master.c: master_wait(s) */
int ls__lua_master_fork(lua_State *L);     /* master.c: master_fork(slot, gen, max) */
int ls__lua_master_figures(lua_State *L);  /* master.c: master_figures(n, restarts) */
int ls__lua_kill(lua_State *L);            /* master.c: kill(pid, signal) */
int ls__lua_slot_info(lua_State *L);       /* master.c: slot_info(i) */
int ls__lua_slot_release(lua_State *L);    /* master.c: slot_release(i) */
int ls__lua_shared_recover(lua_State *L);  /* master.c: shared_recover() */
int ls__lua_listen_socket(lua_State *L);   /* master.c: listen_socket(host, port) */
int ls__lua_worker_notify(lua_State *L);   /* master.c: worker_notify(kind, text) */
int ls__lua_worker_beat(lua_State *L);     /* master.c: worker_beat() */
int ls__lua_worker_running(lua_State *L);  /* master.c: worker_running(m, p, r) */
int ls__lua_worker_attach(lua_State *L);   /* master.c: worker_attach() */
int ls__lua_worker_slot(lua_State *L);     /* master.c: worker_slot() */
int ls__lua_getpid(lua_State *L);          /* master.c: getpid() */
int ls__lua_metrics_series(lua_State *L);  /* metrics.c: metrics_series(route, method, status) */
int ls__lua_metrics_observe(lua_State *L); /* metrics.c: metrics_observe(i, seconds) */
int ls__lua_metrics_snapshot(lua_State *L); /* metrics.c: metrics_snapshot() */
int ls__lua_cpus(lua_State *L);            /* master.c: cpus() */

int ls__lua_pg_connect(lua_State *L);     /* pg.c: pg_connect(conninfo, t, ms) */
int ls__lua_pg_init(lua_State *L);        /* pgresult.c: pg_init(null, err_mt) */
void ls__pg_open(lua_State *L);           /* pg.c: metatables */
int ls__lua_redis_reader(lua_State *L);   /* redis.c: redis_reader() */
int ls__lua_redis_format(lua_State *L);   /* redis.c: redis_format(...) */

int ls__lua_body_read(lua_State *L);       /* body.c: body_read(handle, target) */
int ls__lua_sha256(lua_State *L);          /* crypto.c: sha256(data) */
int ls__lua_sha256_new(lua_State *L);      /* crypto.c: sha256_new() */
int ls__lua_hmac_sha256(lua_State *L);     /* crypto.c: hmac_sha256(key, data) */
int ls__lua_random_bytes(lua_State *L);    /* crypto.c: random_bytes(n) */
int ls__lua_const_equal(lua_State *L);     /* crypto.c: const_equal(a, b) */
int ls__lua_to_hex(lua_State *L);          /* crypto.c: to_hex(data) */
void ls__crypto_open(lua_State *L);        /* crypto.c: metatables */
int ls__lua_fs_open(lua_State *L);         /* fs.c: fs_open(path, mode, perm, t) */
int ls__lua_fs_mkstemp(lua_State *L);      /* fs.c: fs_mkstemp(template, t) */
int ls__lua_fs_write(lua_State *L);        /* fs.c: fs_write(fd, data, off, t) */
int ls__lua_fs_read(lua_State *L);         /* fs.c: fs_read(fd, n, off, t) */
int ls__lua_fs_close(lua_State *L);        /* fs.c: fs_close(fd, t) */
int ls__lua_fs_unlink(lua_State *L);       /* fs.c: fs_unlink(path, t) */
int ls__lua_fs_rename(lua_State *L);       /* fs.c: fs_rename(from, to, t) */
int ls__lua_fs_copyfile(lua_State *L);     /* fs.c: fs_copyfile(from, to, t) */
int ls__lua_fs_stat(lua_State *L);         /* fs.c: fs_stat(path, t) */

int ls__lua_json_encoder(lua_State *L);    /* json.c: json_encoder(array_mt) */

#endif /* LS_INTERNAL_H */
