/* pg.c: PostgreSQL connections for Lua, libpq in non-blocking mode driven
 * by the loop. libpq owns its socket; a uv_poll_t watches PQsocket and
 * tells libpq when to go on. Nothing here blocks the loop:
 *
 *  - the host name is looked up with uv_getaddrinfo and handed to libpq
 *    as `hostaddr`, so libpq never resolves on the loop;
 *  - the connection is made with PQconnectStartParams / PQconnectPoll;
 *    polling is stopped around each PQconnectPoll (libpq may close its
 *    socket and open another one, even under the same number) and
 *    restarted on whatever PQsocket is then, with a new poll handle when
 *    the number changed;
 *  - commands are sent with PQsendQueryParams / PQsendPrepare /
 *    PQsendQueryPrepared (parameters are never put into the SQL text),
 *    several at once in libpq's pipeline mode, and flushed as the socket
 *    takes them;
 *  - cancelling a running command uses libpq's blocking PQcancel, so it
 *    runs on libuv's thread pool (uv_queue_work) and the connection is
 *    closed at once: it is never reused, so a cancel request that lands
 *    late can never hit a later command.
 *
 * Close order: the poll handle is stopped and closed first; libpq closes
 * the socket (PQfinish) in the poll handle's close callback. The C side
 * lives until its handles are closed, the DNS request and the cancel
 * request are finished, nothing is queued for Lua and Lua has let go of
 * it (pg_maybe_free). Every target is resolved exactly once, from a libuv
 * callback or the deferred queue, never from inside a call Lua made; a
 * target of a connection closed from Lua hears nil, "closed" (or is
 * released unresolved by close(true): its future is being cancelled).
 * Loop thread of the runtime only. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "internal.h"

#define LS_PG_MT "luaserve.pg.conn"

typedef struct pg_ud_s {
  ls_pg_t *p;
} pg_ud_t;

static void pg_on_poll(uv_poll_t *h, int status, int events);


static void pg_maybe_free(ls_pg_t *p) {
  if (p->polls_open || p->timer_open || p->resolving || p->cancel ||
      p->ud != NULL || p->notify.queued)
    return;
  free(p->conninfo);
  free(p);
}


void ls__pg_unref(ls_pg_t *p, int *ref) {
  if (*ref != LUA_NOREF && !p->rt->closing)
    luaL_unref(p->rt->L, LUA_REGISTRYINDEX, *ref);
  *ref = LUA_NOREF;
}


/* Resolve the target in *ref with the nargs values on top (popped). */
void ls__pg_resolve(ls_pg_t *p, int *ref, int nargs) {
  int r = *ref;
  *ref = LUA_NOREF;
  if (r == LUA_NOREF || p->rt->closing) {
    lua_pop(p->rt->L, nargs);
    if (r != LUA_NOREF && !p->rt->closing)
      luaL_unref(p->rt->L, LUA_REGISTRYINDEX, r);
    return;
  }
  ls__resolve(p->rt, r, nargs);
}


static void pg_resolve_error(ls_pg_t *p, int *ref, const char *msg) {
  if (*ref == LUA_NOREF)
    return;
  lua_pushnil(p->rt->L);
  lua_pushstring(p->rt->L, msg);
  ls__pg_resolve(p, ref, 2);
}


/* The first line of libpq's last error, into buf. */
const char *ls__pg_conn_error(ls_pg_t *p, char *buf, size_t n) {
  /* buf may be p->why (pg_fail copies nothing then) */
  const char *m = p->conn ? PQerrorMessage(p->conn) : "";
  size_t len = strcspn(m, "\n");
  if (len == 0) {
    snprintf(buf, n, "closed");
    return buf;
  }
  snprintf(buf, n, "%.*s", (int)len, m);
  return buf;
}


/* ---- the poll handle ------------------------------------------------------ */

static void pg_on_poll_close(uv_handle_t *h) {
  ls_pg_t *p = h->data;
  free(h);
  p->polls_open--;
  /* libpq closes its socket only once nothing polls it */
  if (p->polls_open == 0 && p->phase == LS_PG_CLOSED && p->conn) {
    PQfinish(p->conn);
    p->conn = NULL;
  }
  pg_maybe_free(p);
}


static void poll_close(ls_pg_t *p) {
  if (p->poll == NULL)
    return;
  uv_close((uv_handle_t *)p->poll, pg_on_poll_close);
  p->poll = NULL;
  p->events = 0;
}


static void poll_stop(ls_pg_t *p) {
  if (p->poll && p->events) {
    uv_poll_stop(p->poll);
    p->events = 0;
  }
}


/* Watch PQsocket for events; `active`: the loop waits for it (a command,
 * a connect, a notification wanted), else it only notices the server
 * going away or sending. 0 or a libuv error. */
int ls__pg_watch(ls_pg_t *p, int events, int active) {
  int fd = PQsocket(p->conn);
  if (fd < 0)
    return UV_EBADF;
  if (p->poll && p->fd != fd) {   /* libpq opened another socket */
    poll_stop(p);
    poll_close(p);
  }
  if (p->poll == NULL) {
    uv_poll_t *h = malloc(sizeof(*h));
    if (h == NULL)
      return UV_ENOMEM;
    int err = uv_poll_init(p->rt->loop, h, fd);
    if (err) {
      free(h);
      return err;
    }
    h->data = p;
    p->poll = h;
    p->fd = fd;
    p->polls_open++;
  }
  if (p->events != events) {
    int err = uv_poll_start(p->poll, events, pg_on_poll);
    if (err)
      return err;
    p->events = events;
  }
  if (active)
    uv_ref((uv_handle_t *)p->poll);
  else
    uv_unref((uv_handle_t *)p->poll);
  return 0;
}


/* ---- closing and cancelling ---------------------------------------------- */

static void pg_on_cancel_work(uv_work_t *req) {
  ls_pg_t *p = req->data;
  char err[256];
  PQcancel(p->cancel, err, sizeof(err));   /* blocking: off the loop */
}


static void pg_on_cancel_done(uv_work_t *req, int status) {
  ls_pg_t *p = req->data;
  PQfreeCancel(p->cancel);
  p->cancel = NULL;
  pg_maybe_free(p);
}


/* Ask the server to cancel the command in flight, off the loop. */
static void start_cancel(ls_pg_t *p) {
  if (p->cancel || p->conn == NULL)
    return;
  p->cancel = PQgetCancel(p->conn);
  if (p->cancel == NULL)
    return;
  p->cancel_req.data = p;
  if (uv_queue_work(p->rt->loop, &p->cancel_req, pg_on_cancel_work,
                    pg_on_cancel_done) != 0) {
    PQfreeCancel(p->cancel);
    p->cancel = NULL;
  }
}


static void pg_on_timer_close(uv_handle_t *h) {
  ls_pg_t *p = h->data;
  p->timer_open = 0;
  pg_maybe_free(p);
}


/* The targets of a connection closed from Lua hear of it from the loop. */
static void pg_on_notify(ls_defer_t *d) {
  ls_pg_t *p = (ls_pg_t *)((char *)d - offsetof(ls_pg_t, notify));
  const char *why = p->close_why ? p->close_why : "closed";
  pg_resolve_error(p, &p->op_ref, why);
  pg_resolve_error(p, &p->wait_ref, why);
  pg_maybe_free(p);
}


void ls__pg_free_kinds(ls_pg_t *p) {
  if (p->kinds != p->kinds_inline)
    free(p->kinds);
  p->kinds = NULL;
  p->nkinds = p->kpos = 0;
}


/* Close the connection (idempotent). A command in flight is cancelled on
 * the server. Targets still pending hear nil, why from the loop; take a
 * target out first to resolve it otherwise. */
void ls__pg_close(ls_pg_t *p, const char *why) {
  if (p->phase == LS_PG_CLOSED)
    return;
  if (p->phase == LS_PG_BUSY)
    start_cancel(p);
  p->phase = LS_PG_CLOSED;
  p->close_why = why;
  if (p->resolving)
    uv_cancel((uv_req_t *)&p->dns_req);
  if (p->timer_open && !uv_is_closing((uv_handle_t *)&p->timer))
    uv_close((uv_handle_t *)&p->timer, pg_on_timer_close);
  poll_stop(p);
  poll_close(p);
  if (p->polls_open == 0 && p->conn) {
    PQfinish(p->conn);
    p->conn = NULL;
  }
  ls__pg_free_kinds(p);
  ls__pg_unref(p, &p->results_ref);
  ls__pg_unref(p, &p->perr_ref);
  if (!p->rt->closing && (p->op_ref != LUA_NOREF || p->wait_ref != LUA_NOREF))
    ls__defer(p->rt, &p->notify, pg_on_notify);
}


/* The connection failed: close it; pending targets hear nil, msg from
 * the loop (the failure may be found inside a call Lua made). */
void ls__pg_fail(ls_pg_t *p, const char *msg) {
  if (msg != p->why)
    snprintf(p->why, sizeof(p->why), "%s", msg);
  ls__pg_close(p, p->why);
}


static void pg_on_timer(uv_timer_t *h) {
  ls_pg_t *p = h->data;
  ls__pg_fail(p, "timeout");
}


void ls__pg_deadline(ls_pg_t *p, double ms) {
  if (ms > 0)
    uv_timer_start(&p->timer, pg_on_timer, (uint64_t)(ms + 0.5), 0);
  else
    uv_timer_stop(&p->timer);
}


/* ---- connecting ------------------------------------------------------------ */

/* Server notices go to the debug log, never to stderr by themselves. */
static void pg_on_notice(void *arg, const char *msg) {
  ls_pg_t *p = arg;
  ls__log_at(p->rt, 1, "debug", "pg: %.*s", (int)strcspn(msg, "\n"), msg);
}


static void connect_step(ls_pg_t *p) {
  char msg[256];
  /* Not polled while libpq works: it may close the socket and open
   * another one. */
  poll_stop(p);
  PostgresPollingStatusType st = PQconnectPoll(p->conn);
  int err = 0;
  switch (st) {
  case PGRES_POLLING_READING:
    err = ls__pg_watch(p, UV_READABLE, 1);
    break;
  case PGRES_POLLING_WRITING:
    err = ls__pg_watch(p, UV_WRITABLE, 1);
    break;
  case PGRES_POLLING_OK:
    if (PQsetnonblocking(p->conn, 1) != 0) {
      ls__pg_fail(p, ls__pg_conn_error(p, msg, sizeof(msg)));
      return;
    }
    ls__pg_deadline(p, 0);
    p->phase = LS_PG_READY;
    if ((err = ls__pg_watch(p, UV_READABLE, 0)) != 0)
      break;
    lua_pushboolean(p->rt->L, 1);
    ls__pg_resolve(p, &p->op_ref, 1);
    return;
  default:
    ls__pg_fail(p, ls__pg_conn_error(p, msg, sizeof(msg)));
    return;
  }
  if (err)
    ls__pg_fail(p, ls_strerror(err));
}


/* Start libpq's connect; hostaddr: the address looked up, or NULL. */
static void start_connect(ls_pg_t *p, const char *hostaddr) {
  char msg[256];
  /* Later keywords win: the URL's client_encoding over ours, the address
   * we looked up over the URL's. */
  const char *kw[] = {"client_encoding", "fallback_application_name",
                      "dbname", "hostaddr", NULL};
  const char *val[] = {"UTF8", "luaserve", p->conninfo, hostaddr, NULL};
  if (hostaddr == NULL)
    kw[3] = NULL;
  p->phase = LS_PG_CONNECTING;
  p->conn = PQconnectStartParams(kw, val, 1);
  if (p->conn == NULL) {
    ls__pg_fail(p, "out of memory");
    return;
  }
  if (PQstatus(p->conn) == CONNECTION_BAD) {
    ls__pg_fail(p, ls__pg_conn_error(p, msg, sizeof(msg)));
    return;
  }
  PQsetNoticeProcessor(p->conn, pg_on_notice, p);
  int err = ls__pg_watch(p, UV_WRITABLE, 1);
  if (err)
    ls__pg_fail(p, ls_strerror(err));
}


static void pg_on_dns(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
  ls_pg_t *p = req->data;
  p->resolving = 0;
  if (p->rt->closing || p->phase == LS_PG_CLOSED) {
    uv_freeaddrinfo(res);
    pg_maybe_free(p);
    return;
  }
  if (status == 0 && res == NULL)
    status = UV_EAI_NONAME;
  if (status < 0) {
    char msg[160];
    snprintf(msg, sizeof(msg), "dns: %s", uv_strerror(status));
    ls__pg_fail(p, msg);
    uv_freeaddrinfo(res);
    return;
  }
  char ip[64];
  if (res->ai_family == AF_INET6)
    uv_ip6_name((struct sockaddr_in6 *)res->ai_addr, ip, sizeof(ip));
  else
    uv_ip4_name((struct sockaddr_in *)res->ai_addr, ip, sizeof(ip));
  uv_freeaddrinfo(res);
  start_connect(p, ip);
}


/* The host of a conninfo that needs a look-up (a name, not an address,
 * a socket folder or a hostaddr), copied into host. 1: look it up; 0:
 * connect at once; -1: unsupported (several hosts). */
static int needs_lookup(PQconninfoOption *opts, char *host, size_t n) {
  const char *h = NULL, *addr = NULL;
  for (PQconninfoOption *o = opts; o->keyword; o++) {
    if (o->val == NULL || o->val[0] == '\0')
      continue;
    if (strcmp(o->keyword, "host") == 0)
      h = o->val;
    else if (strcmp(o->keyword, "hostaddr") == 0)
      addr = o->val;
  }
  if (addr || h == NULL || h[0] == '/' || h[0] == '@')
    return 0;
  if (strchr(h, ',') || strlen(h) >= n)
    return -1;
  strcpy(host, h);
  unsigned char buf[sizeof(struct in6_addr)];
  if (uv_inet_pton(AF_INET, h, buf) == 0 || uv_inet_pton(AF_INET6, h, buf) == 0)
    return 0;
  return 1;
}


/* pg_connect(conninfo, target[, timeout_ms]): a connection userdata;
 * target gets true once connected, or nil, err ("timeout" after
 * timeout_ms, DNS included; "dns: <reason>"; libpq's message). conninfo
 * is a postgresql:// URL or key=value pairs (libpq's syntax, sslmode and
 * all). A conninfo that does not parse returns nil, err at once. */
int ls__lua_pg_connect(lua_State *L) {
  ls_runtime_t *rt = LS__RT(L);
  const char *conninfo = luaL_checkstring(L, 1);
  luaL_checkany(L, 2);
  double timeout_ms = luaL_optnumber(L, 3, 0);
  char *perr = NULL;
  PQconninfoOption *opts = PQconninfoParse(conninfo, &perr);
  if (opts == NULL) {
    lua_pushnil(L);
    lua_pushfstring(L, "bad url: %s", perr ? perr : "out of memory");
    if (perr)
      PQfreemem(perr);
    return 2;
  }
  char host[256];
  int lookup = needs_lookup(opts, host, sizeof(host));
  PQconninfoFree(opts);
  if (lookup < 0) {
    lua_pushnil(L);
    lua_pushliteral(L, "bad url: one host only");
    return 2;
  }
  ls_pg_t *p = calloc(1, sizeof(*p));
  if (p == NULL || (p->conninfo = strdup(conninfo)) == NULL) {
    free(p);
    return ls__push_error(L, UV_ENOMEM);
  }
  p->rt = rt;
  p->fd = -1;
  p->op_ref = p->wait_ref = p->results_ref = p->perr_ref = LUA_NOREF;
  uv_timer_init(rt->loop, &p->timer);
  uv_unref((uv_handle_t *)&p->timer);
  p->timer.data = p;
  p->timer_open = 1;

  pg_ud_t *ud = lua_newuserdata(L, sizeof(*ud));
  luaL_getmetatable(L, LS_PG_MT);
  lua_setmetatable(L, -2);
  ud->p = p;
  p->ud = ud;
  lua_pushvalue(L, 2);
  p->op_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  ls__pg_deadline(p, timeout_ms);
  if (lookup) {
    struct addrinfo hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    p->phase = LS_PG_RESOLVING;
    p->dns_req.data = p;
    int err = uv_getaddrinfo(rt->loop, &p->dns_req, pg_on_dns, host, NULL,
                             &hints);
    if (err == 0) {
      p->resolving = 1;
      return 1;
    }
    ls__pg_unref(p, &p->op_ref);
    ls__pg_close(p, NULL);
    lua_pushnil(L);
    lua_pushfstring(L, "dns: %s", uv_strerror(err));
    return 2;
  }
  /* No look-up: a failure to start reaches the target from the loop. */
  start_connect(p, NULL);
  return 1;
}


static void deliver_notification(ls_pg_t *p) {
  if (p->wait_ref == LUA_NOREF)
    return;
  PGnotify *n = PQnotifies(p->conn);
  if (n == NULL)
    return;
  lua_State *L = p->rt->L;
  lua_pushstring(L, n->relname);
  lua_pushstring(L, n->extra);
  lua_pushinteger(L, n->be_pid);
  PQfreemem(n);
  ls__pg_watch(p, UV_READABLE, 0);
  ls__pg_resolve(p, &p->wait_ref, 3);
}


static void pg_on_poll(uv_poll_t *h, int status, int events) {
  ls_pg_t *p = h->data;
  if (p->phase == LS_PG_CLOSED)
    return;
  if (p->phase == LS_PG_CONNECTING) {
    connect_step(p);
    return;
  }
  if (status < 0) {
    ls__pg_fail(p, ls_strerror(status));
    return;
  }
  int lost = (events & UV_READABLE) && !PQconsumeInput(p->conn);
  if (p->phase == LS_PG_BUSY) {
    if (!lost && (p->events & UV_WRITABLE)) {
      int f = PQflush(p->conn);
      if (f < 0)
        lost = 1;
      else if (f == 0)
        ls__pg_watch(p, UV_READABLE, 1);
    }
    ls__pg_collect(p);   /* also after a loss: libpq gives the results it has */
    if (lost && p->phase == LS_PG_BUSY)
      ls__pg_fail(p, ls__pg_conn_error(p, p->why, sizeof(p->why)));
    return;
  }
  if (lost) {
    ls__pg_fail(p, ls__pg_conn_error(p, p->why, sizeof(p->why)));
    return;
  }
  deliver_notification(p);
}


ls_pg_t *ls__pg_check(lua_State *L) {
  pg_ud_t *ud = luaL_checkudata(L, 1, LS_PG_MT);
  return ud->p;
}


/* The connection can take a command: 1; closed or broken: 0 (Lua gets
 * nil, "closed"); busy: raises. */
int ls__pg_ready(lua_State *L, ls_pg_t *p) {
  if (p == NULL || p->phase == LS_PG_CLOSED || p->broken ||
      PQstatus(p->conn) != CONNECTION_OK)
    return 0;
  if (p->phase != LS_PG_READY || p->wait_ref != LUA_NOREF)
    return luaL_error(L, "pg: the connection is busy");
  return 1;
}


/* conn:notification(target): channel, payload, pid of a notification that
 * came; else true, and target gets them when one comes (or nil, err).
 * nil, "closed" on a closed connection. */
static int pg_notification(lua_State *L) {
  ls_pg_t *p = ls__pg_check(L);
  luaL_checkany(L, 2);
  if (!ls__pg_ready(L, p))
    return ls__push_error(L, UV_EOF);
  PGnotify *n = PQnotifies(p->conn);
  if (n) {
    lua_pushstring(L, n->relname);
    lua_pushstring(L, n->extra);
    lua_pushinteger(L, n->be_pid);
    PQfreemem(n);
    return 3;
  }
  if (ls__pg_watch(p, UV_READABLE, 1) != 0)
    return ls__push_error(L, UV_EOF);
  lua_pushvalue(L, 2);
  p->wait_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_pushboolean(L, 1);
  return 1;
}


/* conn:stop_waiting(): forget a notification wait (its target released). */
static int pg_stop_waiting(lua_State *L) {
  ls_pg_t *p = ls__pg_check(L);
  if (p && p->wait_ref != LUA_NOREF) {
    ls__pg_unref(p, &p->wait_ref);
    if (p->phase == LS_PG_READY)
      ls__pg_watch(p, UV_READABLE, 0);
  }
  return 0;
}


/* conn:close([quiet]): close now; a command in flight is cancelled on
 * the server (PQcancel off the loop) and the connection is never used
 * again. Pending targets get nil, "closed", or are released unresolved
 * with quiet (their futures are being cancelled). */
static int pg_close_lua(lua_State *L) {
  ls_pg_t *p = ls__pg_check(L);
  if (p == NULL)
    return 0;
  if (lua_toboolean(L, 2)) {
    ls__pg_unref(p, &p->op_ref);
    ls__pg_unref(p, &p->wait_ref);
  }
  ls__pg_close(p, NULL);
  return 0;
}


/* conn:ok(): true while the connection is open and usable. */
static int pg_ok(lua_State *L) {
  ls_pg_t *p = ls__pg_check(L);
  lua_pushboolean(L, p && p->phase != LS_PG_CLOSED && !p->broken && p->conn &&
                     PQstatus(p->conn) == CONNECTION_OK);
  return 1;
}


/* conn:info(): {pid, ssl, server_version, datestyle} of an open
 * connection, or nothing. */
static int pg_info(lua_State *L) {
  ls_pg_t *p = ls__pg_check(L);
  if (p == NULL || p->phase == LS_PG_CLOSED || p->conn == NULL ||
      p->phase < LS_PG_READY)
    return 0;
  lua_createtable(L, 0, 4);
  lua_pushinteger(L, PQbackendPID(p->conn));
  lua_setfield(L, -2, "pid");
  lua_pushboolean(L, PQsslInUse(p->conn));
  lua_setfield(L, -2, "ssl");
  lua_pushinteger(L, PQserverVersion(p->conn));
  lua_setfield(L, -2, "server_version");
  const char *ds = PQparameterStatus(p->conn, "DateStyle");
  lua_pushstring(L, ds ? ds : "");
  lua_setfield(L, -2, "datestyle");
  return 1;
}


/* Collected: release every target, close. */
static int pg_gc(lua_State *L) {
  pg_ud_t *ud = luaL_checkudata(L, 1, LS_PG_MT);
  ls_pg_t *p = ud->p;
  if (p == NULL)
    return 0;
  ud->p = NULL;
  p->ud = NULL;
  ls__pg_unref(p, &p->op_ref);
  ls__pg_unref(p, &p->wait_ref);
  ls__pg_close(p, NULL);
  pg_maybe_free(p);
  return 0;
}


void ls__pg_open(lua_State *L) {
  static const luaL_Reg methods[] = {
    {"query", ls__pg_query},
    {"batch", ls__pg_batch},
    {"notification", pg_notification},
    {"stop_waiting", pg_stop_waiting},
    {"close", pg_close_lua},
    {"ok", pg_ok},
    {"info", pg_info},
    {NULL, NULL},
  };
  ls__new_class(L, LS_PG_MT, methods, pg_gc);
}
