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

/* Per Lua state: its loop and what the C side calls back into. */
struct ls_runtime_s {
  uv_loop_t *loop;
  lua_State *L;
  int resolve_ref;     /* Lua function resolve(target, ...) for I/O results */
  int traceback_ref;   /* debug.traceback, the error handler of every call */
  int closing;         /* set by ls_runtime_free: callbacks must not enter Lua */
  void *pool;          /* the thread pool (main state) or NULL */
  void *shared;        /* the shared dictionary, or NULL */
  int is_pool_state;   /* 1 in a pool thread's state */
  char *lua_dir;       /* the framework's Lua folder (pool states need it) */
  char *read_buf;      /* LS__READ_BUF bytes every read of this loop lands in:
                          a waiting connection or socket holds no buffer */
  int read_buf_busy;
  int method_refs[48];  /* registry refs of method name strings, 0: none */
  uint64_t block_warn_ns;  /* an entry into Lua this long blocked the loop */
  int blocked_ref;         /* Lua blocked(seconds) hook, 0: none */
  struct ls_server_s *servers;     /* this runtime's listening servers */
  struct ls_shutdown_s *shutdown;  /* signal watchers (shutdown.c), or NULL */
};

#define LS__READ_BUF (64 * 1024)

/* ls__read_alloc: alloc_cb handing out the runtime's read buffer; the
 * handle's loop->data is the runtime. */
void ls__read_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf);
/* ls__read_done: the read callback is done with buf (call it last). */
void ls__read_done(uv_handle_t *h, const uv_buf_t *buf);

/* ls__runtime: the runtime of L (stored in the registry). */
ls_runtime_t *ls__runtime(lua_State *L);
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
/* ls__log: one line on stderr, "luaserve: <level>: <message>". */
void ls__log(const char *level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
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

/* ---- buffers (buf.c) ---------------------------------------------------- */

/* A growable byte buffer; `data` is malloc'd, NULL when empty. */
typedef struct {
  char *data;
  size_t len;
  size_t cap;
} ls_buf_t;

/* ls__buf_append: append n bytes; returns 0 or UV_ENOMEM. */
int ls__buf_append(ls_buf_t *b, const char *p, size_t n);
/* ls__buf_reserve: make room for n more bytes; returns 0 or UV_ENOMEM. */
int ls__buf_reserve(ls_buf_t *b, size_t n);
/* ls__buf_free: release the storage; the buffer is empty again. */
void ls__buf_free(ls_buf_t *b);

/* ---- server.c: listeners, connections, reads, writes, timeouts ---------- */

/* Limits and timeouts of one server; set from Lua at listen time. */
typedef struct {
  size_t max_header_bytes;  /* request line + headers; over it: 431 */
  unsigned max_headers;     /* header count; over it: 431 */
  size_t max_body;          /* body bytes; over it: 413 */
  uint64_t header_timeout;  /* ms from a request's first byte to its headers;
                               also the longest pause inside a body */
  uint64_t keepalive_timeout; /* ms an idle keep-alive connection is kept */
  unsigned limit_concurrency; /* requests in Lua at once; 0: no limit */
} ls_limits_t;

typedef struct ls_server_s ls_server_t;

/* One header of the request being parsed: offsets into conn->req. */
typedef struct {
  uint32_t name_off, name_len, value_off, value_len;
} ls_hdr_t;

/* IDLE: between requests; READING: a request's bytes are arriving; BUSY: a
 * request is in Lua; LINGER: answered an error, draining input before the
 * close; CLOSING: handles closing. Only IDLE and READING parse. */
enum { LS_CONN_IDLE, LS_CONN_READING, LS_CONN_BUSY, LS_CONN_CLOSING,
       LS_CONN_LINGER };

/* A client connection. Allocated apart from Lua; freed when both handles are
 * closed and Lua no longer holds it (see conn_maybe_free in server.c). */
typedef struct ls_conn_s {
  uv_tcp_t tcp;             /* tcp.data = the connection */
  uv_timer_t timer;         /* header, body and keep-alive timeouts */
  uv_shutdown_t shutdown;   /* the lingering close's half-close */
  ls_server_t *server;
  struct ls_conn_s *prev, *next;  /* the server's connection list */
  llhttp_t parser;
  int state;                /* LS_CONN_* */
  int handles_open;         /* 2 until both close callbacks ran */
  int lua_holds;            /* 1 while Lua has a request of this connection */
  int in_process;           /* inside conn_process: do not recurse */
  int keepalive;            /* the current request allows keep-alive */
  int close_after_write;    /* close once queued writes are done */
  int read_stopped;         /* reading paused (back-pressure or busy) */
  int is_head;              /* the request in Lua is HEAD */
  int writes_pending;       /* uv_write requests in flight */
  int error_status;         /* status chosen by a parser callback, or 0 */
  const char *error_reason; /* and its detail (static): llhttp replaces
                               the reason of non-span callbacks */
  int last_was_value;       /* header callbacks: last span was a value */
  int in_body;              /* headers done, body being read */
  int host_seen;            /* Host header fields in the request */
  unsigned nheaders;
  size_t header_bytes;      /* request line + headers so far */
  ls_buf_t req;             /* url and header bytes of the request */
  ls_buf_t hdrs;            /* ls_hdr_t array */
  ls_buf_t body;
  ls_buf_t pending;         /* unparsed bytes read ahead (pipelining) */
  ls_buf_t out;             /* the response head being formatted */
  uint32_t url_len;
  uint64_t started;         /* uv_now when the request was dispatched */
  int streaming;             /* a streamed response is being written */
  uint16_t peer_port;       /* the client's address, read once at accept */
  char peer_host[46];       /* (INET6_ADDRSTRLEN); "" if unknown */
  int drain_ref;            /* target waiting for the write queue, or 0 */
  uint64_t deadline;        /* loop time of the current timeout, 0: none */
  uint64_t timer_due;       /* loop time the libuv timer is set for */
} ls_conn_t;

struct ls_server_s {
  uv_tcp_t listener;
  ls_runtime_t *rt;
  ls_limits_t lim;
  int dispatch_ref;         /* Lua dispatch(conn, method, target, headers, body) */
  int abort_ref;            /* Lua abort(conn): the client went away */
  int listening;
  int draining;             /* shutting down: finish in-flight, accept none */
  unsigned inflight;        /* connections with a request in Lua */
  ls_conn_t *conns;         /* every open connection */
  ls_server_t *next_server; /* every server of this runtime */
};

/* ls__conn_write: write bufs now where the socket takes them, queue the
 * rest (copied). Returns 0 or a libuv error. */
int ls__conn_write(ls_conn_t *c, uv_buf_t *bufs, unsigned nbufs);
/* ls__conn_request_done: the answer to the request in Lua is written (or
 * abandoned): Lua's hold ends; go on with the next request, or close. */
void ls__conn_request_done(ls_conn_t *c);
/* ls__conn_close: start closing (idempotent); freed later. */
void ls__conn_close(ls_conn_t *c);
/* ls__conn_linger: close after an error answer that is written or queued:
 * half-close, discard what the client still sends, close on its EOF or
 * after a short while. Nothing more is parsed. */
void ls__conn_linger(ls_conn_t *c);

/* ---- http.c: the llhttp glue and response formatting -------------------- */

/* The request parser settings (llhttp keeps a pointer: static storage). */
extern const llhttp_settings_t ls__http_settings;
/* ls__http_reset: forget the request being assembled. */
void ls__http_reset(ls_conn_t *c);
/* ls__http_push_headers: push a table of n headers (spans of base): names
 * lower-cased, repeated ones joined with ", ". */
void ls__http_push_headers(lua_State *L, const char *base, const ls_hdr_t *h,
                           unsigned n);
/* ls__http_push_request: push method, target, headers table, body on L;
 * returns the number pushed (4). */
int ls__http_push_request(lua_State *L, ls_conn_t *c);
/* body_len of a streamed response: chunked (or close-delimited) */
#define LS__STREAMED ((size_t)-1)

/* ls__http_format_head: format status line and headers into c->out.
 * `headers` is the stack index of a table {name = value | {values}} or 0.
 * Returns 0 or UV_ENOMEM; raises on a bad header table. */
int ls__http_format_head(lua_State *L, ls_conn_t *c, int status,
                         const char *ctype, size_t ctype_len, size_t body_len,
                         int headers);
/* ls__http_error_response: answer status with a small JSON body and close. */
void ls__http_error_response(ls_conn_t *c, int status, const char *detail);
/* ls__http_reason: the reason phrase of status ("Unknown" if none). */
const char *ls__http_reason(int status);

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

/* ---- Lua-facing functions, one per line, registered in runtime.c -------- */

int ls__lua_listen(lua_State *L);          /* server.c: listen(opts) */
int ls__lua_respond(lua_State *L);         /* respond.c: whole response */
int ls__lua_release(lua_State *L);         /* respond.c: release(conn) */
int ls__lua_respond_start(lua_State *L);   /* respond.c: streamed head */
int ls__lua_write_chunk(lua_State *L);     /* respond.c: one chunk */
int ls__lua_respond_end(lua_State *L);     /* respond.c: last chunk */
int ls__lua_peer(lua_State *L);            /* respond.c: peer(conn) */
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
void ls__tcp_open(lua_State *L);           /* tcp.c: metatables */

int ls__lua_response_parser(lua_State *L); /* client.c: response_parser() */
void ls__client_open(lua_State *L);        /* client.c: metatables */

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

#endif /* LS_INTERNAL_H */
