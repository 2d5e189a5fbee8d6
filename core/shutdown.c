/* shutdown.c: graceful shutdown on SIGINT and SIGTERM. Stop accepting, close
 * idle connections, let requests in flight finish and answers being written
 * reach their clients, up to a drain timeout,
 * then stop the loop so run() returns and the program exits 0. A second
 * signal cuts the wait. Loop thread of the main runtime only. */
#include <signal.h>
#include <stdlib.h>

#include "internal.h"

/* How long a connection that was idle only a moment ago may still send
 * one last request once draining begins. */
#define LS_DRAIN_IDLE_MS 500

/* The signal watchers and the drain timer of one runtime. */
typedef struct ls_shutdown_s {
  uv_signal_t sig_int;
  uv_signal_t sig_term;
  uv_timer_t drain;
  ls_runtime_t *rt;
  uint64_t drain_ms;
  int started;            /* a signal came: draining */
  int open_handles;       /* 3 until every close callback ran */
  int quiet;              /* a worker: the master logs the shutdown */
} ls_shutdown_t;


/* Stop the loop once no listener and no connection is left. */
void ls__shutdown_check(ls_runtime_t *rt) {
  ls_shutdown_t *sd = rt->shutdown;
  if (sd == NULL || !sd->started)
    return;
  for (ls_server_t *s = rt->servers; s; s = s->next_server)
    if (s->listening || s->conns)
      return;
  uv_stop(rt->loop);
}


static void on_drain_timeout(uv_timer_t *t) {
  ls_shutdown_t *sd = t->data;
  ls__log("warn", "drain timeout: closing connections with requests in flight");
  for (ls_server_t *s = sd->rt->servers; s; s = s->next_server)
    while (s->conns)
      ls__conn_close(s->conns);
  ls__shutdown_check(sd->rt);
}


static void on_signal(uv_signal_t *h, int signum) {
  ls_shutdown_t *sd = h->data;
  if (sd->started) {   /* a second Ctrl+C: do not wait any longer */
    on_drain_timeout(&sd->drain);
    return;
  }
  sd->started = 1;
  ls__log_at(sd->rt, sd->quiet ? 1 : 2, sd->quiet ? "debug" : "info",
             "%s: shutting down, finishing requests in flight",
             signum == SIGINT ? "SIGINT" : "SIGTERM");
  uint64_t now = uv_now(sd->rt->loop);
  for (ls_server_t *s = sd->rt->servers; s; s = s->next_server) {
    s->draining = 1;
    ls__server_stop_listening(s);
    ls_conn_t *c = s->conns, *next;
    for (; c; c = next) {
      next = c->next;
      if (c->ws) {   /* a WebSocket: goodbye (1001); it closes after that */
        ls__ws_going_away(c->ws);
        continue;
      }
      if (c->state != LS_CONN_IDLE || c->pending.len > 0)
        continue;   /* a request in flight: its answer closes it */
      if (ls__stream_queued(&c->stream) > 0) {
        c->close_after_write = 1;   /* an answer still being written */
        continue;
      }
      /* A connection idle only a moment ago may have a request on its
       * way (a busy keep-alive client sends the next one at once):
       * closing now would reset it. It gets LS_DRAIN_IDLE_MS to arrive,
       * and its answer says Connection: close; one idle longer closes. */
      uint64_t idle = now - c->idle_since;
      if (idle >= LS_DRAIN_IDLE_MS)
        ls__conn_close(c);
      else
        ls__stream_deadline(&c->stream, LS_DRAIN_IDLE_MS - idle);
    }
  }
  uv_timer_start(&sd->drain, on_drain_timeout, sd->drain_ms, 0);
  ls__shutdown_check(sd->rt);
}


/* shutdown_on_signals(drain_ms[, worker]): SIGINT/SIGTERM stop accepting,
 * wait up to drain_ms for requests in flight, then stop the loop (run()
 * returns). A worker (worker true) hears SIGTERM only, from its master,
 * and logs it at debug level. The watchers do not keep the loop alive. */
int ls__lua_shutdown_on_signals(lua_State *L) {
  ls_runtime_t *rt = ls__runtime(L);
  uint64_t ms = (uint64_t)luaL_checknumber(L, 1);
  if (rt->shutdown != NULL)
    return 0;
  ls_shutdown_t *sd = calloc(1, sizeof(*sd));
  if (sd == NULL)
    return luaL_error(L, "shutdown_on_signals: out of memory");
  sd->rt = rt;
  sd->drain_ms = ms;
  uv_signal_init(rt->loop, &sd->sig_int);
  uv_signal_init(rt->loop, &sd->sig_term);
  uv_timer_init(rt->loop, &sd->drain);
  sd->sig_int.data = sd->sig_term.data = sd->drain.data = sd;
  sd->open_handles = 3;
  sd->quiet = lua_toboolean(L, 2);
  if (!sd->quiet)
    uv_signal_start(&sd->sig_int, on_signal, SIGINT);
  uv_signal_start(&sd->sig_term, on_signal, SIGTERM);
  uv_unref((uv_handle_t *)&sd->sig_int);
  uv_unref((uv_handle_t *)&sd->sig_term);
  uv_unref((uv_handle_t *)&sd->drain);
  rt->shutdown = sd;
  return 0;
}


static void on_close(uv_handle_t *h) {
  ls_shutdown_t *sd = h->data;
  if (--sd->open_handles == 0)
    free(sd);
}


/* Close the watchers (exit path); freed by the last close callback. */
void ls__shutdown_close(ls_runtime_t *rt) {
  ls_shutdown_t *sd = rt->shutdown;
  if (sd == NULL)
    return;
  rt->shutdown = NULL;
  uv_close((uv_handle_t *)&sd->sig_int, on_close);
  uv_close((uv_handle_t *)&sd->sig_term, on_close);
  uv_close((uv_handle_t *)&sd->drain, on_close);
}
