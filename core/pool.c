/* pool.c: the sync pool. A fixed set of threads, each with its own libuv
 * loop and its own Lua state holding the app (loaded the way the main state
 * loaded it), runs the functions marked sync; a bounded job queue feeds
 * them. It is the pool's own, not libuv's shared threadpool: that one also
 * runs getaddrinfo and file requests, which user code must never stall.
 *
 * A job carries its function's key and its arguments encoded by copy.c;
 * the worker decodes them into its state, calls luaserve.sync._run_job and
 * encodes what it returns. Finished jobs go on one locked list and the loop
 * thread is woken through one uv_async_t whose callback drains the whole
 * list (uv_async_send coalesces: one callback may see many jobs).
 *
 * Ownership: a job is created and freed on the loop thread. While queued
 * it belongs to the queue (lock); a worker takes it out, runs it without
 * the lock and puts it on the done list (lock). Its target (the Lua
 * future, a registry reference of the main state) and its Lua handle are
 * touched on the loop thread only. Cancelling a queued job unlinks and
 * frees it at once; cancelling a running or done one marks it aborted and
 * its result is freed unread when it is drained. */
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#ifdef __linux__
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "internal.h"

#define LS_JOB_MT "luaserve.pool.job"

enum { JOB_QUEUED, JOB_RUNNING, JOB_DONE };

typedef struct ls_job_s ls_job_t;
typedef struct ls_pool_s ls_pool_t;

typedef struct {
  ls_job_t *job;            /* NULL once delivered or cancelled */
} job_ud_t;

struct ls_job_s {
  ls_job_t *prev, *next;    /* the queue or the done list (lock) */
  ls_pool_t *pool;
  int state;                /* JOB_* (lock) */
  int kind;                 /* what _run_job does: a call or a request */
  int aborted;              /* loop thread: nobody wants the result */
  int ok;                   /* worker: result holds values (1) or an error */
  int target_ref;           /* loop thread: resolved with the result */
  job_ud_t *ud;             /* loop thread: the Lua handle, or NULL */
  char *key;                /* the sync function's identity */
  ls_buf_t args;            /* copy format; read by the worker */
  ls_buf_t result;          /* copy format; written by the worker */
};

typedef struct {
  ls_pool_t *pool;
  uv_thread_t tid;
  int created;              /* the thread exists: join it */
  uv_loop_t loop;
  ls_runtime_t *rt;         /* this thread's state; NULL until set up */
  int run_ref;              /* luaserve.sync._run_job in that state */
} worker_t;

struct ls_pool_s {
  ls_runtime_t *rt;         /* the main runtime */
  uv_async_t async;         /* on the main loop: done jobs to drain */
  /* The lock guards the queue, the done list, the counters and the flags
   * marked (lock). Workers hold it only to take or hand back a job. */
  uv_mutex_t lock;
  uv_cond_t work;           /* a job was queued, or stopping */
  uv_cond_t ready;          /* a worker finished starting */
  ls_job_t *queue_head, *queue_tail;    /* (lock) */
  ls_job_t *done_head, *done_tail;      /* (lock) */
  unsigned queued;          /* (lock) jobs in the queue; changed with
                               atomics: spinning workers peek without it */
  unsigned busy;            /* (lock) workers running a job */
  double completed;         /* (lock) jobs run to the end */
  unsigned started;         /* (lock) workers done starting */
  unsigned start_failed;    /* (lock) */
  int stopping;             /* (lock; read without it while spinning) */
  unsigned spinning;        /* (lock) workers spinning for the next job */
  unsigned spin_max;        /* at most this many spin: the cores */
  char start_err[1024];     /* (lock) the first start failure */
  unsigned max_queue;
  int nice;                 /* added to the workers' nice value */
  double rejected;          /* (lock) submissions refused: pool full */
  unsigned inflight;        /* loop thread: jobs not yet drained */
  ls_buf_t init;            /* copy format: what _pool_init gets */
  ls_defer_t finish;        /* stopped from Lua: the rest is delivered
                               from the loop (see pool_stop) */
  ls_pool_t *next_stopping; /* the runtime's stopped, unfinished pools */
  unsigned nthreads;
  worker_t workers[];
};

static const ls_copy_ctx_t arg_ctx = {
  "argument", 1, "cannot cross into a sync function"
};
static const ls_copy_ctx_t result_ctx = {
  "result", 1, "cannot cross out of a sync function"
};


/* ---- lists (lock held) -------------------------------------------------- */

static void list_push(ls_job_t **head, ls_job_t **tail, ls_job_t *j) {
  j->next = NULL;
  j->prev = *tail;
  if (*tail)
    (*tail)->next = j;
  else
    *head = j;
  *tail = j;
}


static void list_unlink(ls_job_t **head, ls_job_t **tail, ls_job_t *j) {
  if (j->prev) j->prev->next = j->next; else *head = j->next;
  if (j->next) j->next->prev = j->prev; else *tail = j->prev;
  j->prev = j->next = NULL;
}


/* The pool's gauges for the metrics, in this process's worker slot (lock
 * held: the slot has one writer at a time). */
static void publish(ls_pool_t *pool) {
  ls_wslot_t *ws = pool->rt->wslot;
  ws->pool_busy = pool->busy;
  ws->pool_queued = pool->queued;
}


/* ---- the worker threads ------------------------------------------------- */

/* In the worker's state, protected: decode the job, run it, encode what
 * _run_job returns (ok, values...). Upvalue-free; args: worker, job. */
static int worker_call(lua_State *L) {
  worker_t *w = lua_touserdata(L, 1);
  ls_job_t *job = lua_touserdata(L, 2);
  lua_settop(L, 0);
  lua_rawgeti(L, LUA_REGISTRYINDEX, w->run_ref);
  lua_pushinteger(L, job->kind);
  lua_pushstring(L, job->key);
  int n;
  if (ls__copy_decode(L, job->args.data, job->args.len, &n) != 0)
    return luaL_error(L, "sync job: malformed arguments");
  lua_call(L, 2 + n, LUA_MULTRET);
  int nres = lua_gettop(L);
  char err[512];
  job->ok = nres > 0 && lua_toboolean(L, 1);
  int r = ls__copy_encode(L, 2, nres > 0 ? nres - 1 : 0, &job->result, &result_ctx, err,
                          sizeof(err));
  if (r) {
    ls__log("error", "sync function %s: %s", job->key, err);
    job->ok = 0;
    job->result.len = 0;
    lua_pushstring(L, err);
    if (ls__copy_encode(L, -1, 1, &job->result, &result_ctx, NULL, 0))
      return luaL_error(L, "sync job: out of memory");
  }
  return 0;
}


/* Run one job in w's state (worker thread, without the lock). */
static void worker_run(worker_t *w, ls_job_t *job) {
  lua_State *L = w->rt->L;
  /* The loop slept in a condition wait, not in uv_run: its clock is as old
   * as the last job, and a timer armed on it would fire early. */
  uv_update_time(&w->loop);
  lua_pushcfunction(L, worker_call);
  lua_pushlightuserdata(L, w);
  lua_pushlightuserdata(L, job);
  if (lua_pcall(L, 2, 0, 0) != 0) {
    const char *msg = lua_tostring(L, -1);
    ls__log("error", "sync function %s: %s", job->key,
            msg ? msg : "(error object is not a string)");
    job->ok = 0;
    job->result.len = 0;
    if (ls__copy_encode(L, -1, 1, &job->result, &result_ctx, NULL, 0))
      job->result.len = 0;   /* the loop thread answers "malformed" */
  }
  lua_settop(L, 0);
}


/* Lower this thread's priority by pool->nice: when the loop thread and a
 * pool thread want the same core, the loop (latency) goes first and the
 * pool (throughput) takes what is left; an idle core still goes to the
 * pool in full. Linux gives each thread its own nice value; elsewhere this
 * does nothing. Worker thread. */
static void worker_lower_priority(ls_pool_t *pool) {
#ifdef __linux__
  if (pool->nice <= 0)
    return;
  pid_t tid = (pid_t)syscall(SYS_gettid);
  errno = 0;
  int cur = getpriority(PRIO_PROCESS, (id_t)tid);
  if (errno == 0)
    setpriority(PRIO_PROCESS, (id_t)tid, cur + pool->nice);
#else
  (void)pool;
#endif
}


/* Create the state and load the app in it: 0, or -1 with err set.
 * Worker thread. */
static int worker_setup(worker_t *w, char *err, size_t errlen) {
  ls_pool_t *pool = w->pool;
  worker_lower_priority(pool);
  if (uv_loop_init(&w->loop) != 0) {
    snprintf(err, errlen, "cannot create a loop");
    return -1;
  }
  w->rt = ls_runtime_new(&w->loop, pool->rt->lua_dir);
  if (w->rt == NULL) {
    uv_loop_close(&w->loop);
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  /* Before anything is required: future.lua reads it when it loads. */
  w->rt->is_pool_state = 1;
  w->rt->pool = pool;
  lua_State *L = w->rt->L;
  lua_getglobal(L, "require");
  lua_pushliteral(L, "luaserve.sync");
  int status = lua_pcall(L, 1, 1, 0);
  if (status == 0) {
    lua_getfield(L, -1, "_run_job");
    w->run_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_getfield(L, -1, "_pool_init");
    int n;
    if (ls__copy_decode(L, pool->init.data, pool->init.len, &n) != 0)
      lua_pushnil(L), n = 1;
    status = lua_pcall(L, n, 2, 0);
    if (status == 0 && !lua_toboolean(L, -2)) {
      status = -1;
      lua_remove(L, -2);
    }
  }
  if (status != 0) {
    const char *msg = lua_tostring(L, -1);
    snprintf(err, errlen, "%s", msg ? msg : "(error object is not a string)");
  }
  lua_settop(L, 0);
  return status == 0 ? 0 : -1;
}


/* Spin (yielding the core) up to LS__POOL_SPIN_NS for the next job before
 * sleeping on the condition variable. Waking a sleeping thread costs far
 * more than the job hand-off itself on a virtual machine (the idle vCPU
 * must be woken by the host): with two connections of 0.7 ms CPU jobs on
 * two cores, sleeping at once gave 1.5x the requests/s of one connection,
 * spinning 2.1x. Spinning is adaptive and bounded: a worker spins only if
 * its last wait for a job was that short (a busy pool), at most `spin_max`
 * workers spin at once, and sched_yield lets anything else runnable have
 * the core meanwhile. Lock held on entry and exit. */
#define LS__POOL_SPIN_NS (200 * 1000)

static void worker_spin(ls_pool_t *pool, uint64_t last_wait) {
  if (last_wait > LS__POOL_SPIN_NS || pool->spinning >= pool->spin_max ||
      pool->queue_head != NULL || pool->stopping)
    return;
  pool->spinning++;
  uv_mutex_unlock(&pool->lock);
  uint64_t t0 = uv_hrtime();
  while (__atomic_load_n(&pool->queued, __ATOMIC_RELAXED) == 0 &&
         !__atomic_load_n(&pool->stopping, __ATOMIC_RELAXED) &&
         uv_hrtime() - t0 < LS__POOL_SPIN_NS)
    sched_yield();
  uv_mutex_lock(&pool->lock);
  pool->spinning--;
}


static void worker_loop(worker_t *w) {
  ls_pool_t *pool = w->pool;
  uint64_t last_wait = UINT64_MAX;   /* no spinning before the first job */
  uv_mutex_lock(&pool->lock);
  for (;;) {
    uint64_t idle_since = uv_hrtime();
    worker_spin(pool, last_wait);
    while (!pool->stopping && pool->queue_head == NULL)
      uv_cond_wait(&pool->work, &pool->lock);
    if (pool->stopping)
      break;
    last_wait = uv_hrtime() - idle_since;
    ls_job_t *job = pool->queue_head;
    list_unlink(&pool->queue_head, &pool->queue_tail, job);
    __atomic_sub_fetch(&pool->queued, 1, __ATOMIC_RELAXED);
    job->state = JOB_RUNNING;
    pool->busy++;
    publish(pool);
    uv_mutex_unlock(&pool->lock);

    worker_run(w, job);

    uv_mutex_lock(&pool->lock);
    job->state = JOB_DONE;
    pool->busy--;
    pool->completed++;
    publish(pool);
    list_push(&pool->done_head, &pool->done_tail, job);
    /* The async handle outlives every worker (closed after the joins). */
    uv_async_send(&pool->async);
  }
  uv_mutex_unlock(&pool->lock);
}


static void worker_main(void *arg) {
  worker_t *w = arg;
  ls_pool_t *pool = w->pool;
  char err[900];
  err[0] = '\0';
  int ok = worker_setup(w, err, sizeof(err)) == 0;
  uv_mutex_lock(&pool->lock);
  pool->started++;
  if (!ok) {
    if (pool->start_failed++ == 0)
      snprintf(pool->start_err, sizeof(pool->start_err), "%s", err);
  }
  uv_cond_signal(&pool->ready);
  uv_mutex_unlock(&pool->lock);
  if (ok)
    worker_loop(w);
  if (w->rt) {
    w->rt->pool = NULL;
    ls_runtime_free(w->rt);   /* closes the loop too */
    w->rt = NULL;
  }
}


/* ---- the loop thread ---------------------------------------------------- */

static void job_free(ls_job_t *job) {
  ls__buf_free(&job->args);
  ls__buf_free(&job->result);
  free(job->key);
  free(job);
}


/* A job leaves the pool's books (loop thread). */
static void job_gone(ls_pool_t *pool) {
  if (--pool->inflight == 0)
    uv_unref((uv_handle_t *)&pool->async);
}


/* In the main state, protected: resolve the job's target with its result
 * (values, or nil and the error). Arg: the job. */
static int deliver_call(lua_State *L) {
  ls_job_t *job = lua_touserdata(L, 1);
  ls_runtime_t *rt = ls__runtime(L);
  lua_settop(L, 0);
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->resolve_ref);
  lua_rawgeti(L, LUA_REGISTRYINDEX, job->target_ref);
  luaL_unref(L, LUA_REGISTRYINDEX, job->target_ref);
  job->target_ref = LUA_NOREF;
  int n;
  if (!job->ok)
    lua_pushnil(L);
  if (ls__copy_decode(L, job->result.data, job->result.len, &n) != 0) {
    lua_settop(L, 2);
    lua_pushnil(L);
    lua_pushliteral(L, "sync function: malformed result");
  }
  lua_call(L, lua_gettop(L) - 1, 0);
  return 0;
}


/* Hand each finished job to Lua, or drop it if aborted. Loop thread. */
static void pool_drain(ls_pool_t *pool) {
  ls_runtime_t *rt = pool->rt;
  uv_mutex_lock(&pool->lock);
  ls_job_t *job = pool->done_head;
  pool->done_head = pool->done_tail = NULL;
  uv_mutex_unlock(&pool->lock);
  while (job) {
    ls_job_t *next = job->next;
    if (job->ud)
      job->ud->job = NULL;
    job->ud = NULL;
    if (job->target_ref != LUA_NOREF && !job->aborted && !rt->closing) {
      lua_pushcfunction(rt->L, deliver_call);
      lua_pushlightuserdata(rt->L, job);
      ls__pcall_entry(rt, 1, "sync result");   /* resumes tasks: timed */
    }
    if (job->target_ref != LUA_NOREF && !rt->closing)
      luaL_unref(rt->L, LUA_REGISTRYINDEX, job->target_ref);
    job_free(job);
    job_gone(pool);
    job = next;
  }
}


static void pool_on_async(uv_async_t *h) {
  pool_drain(h->data);
}


/* Cancel: a queued job is unlinked and freed now; a running or done one is
 * marked aborted (its result is dropped when drained). The target is
 * released either way. Loop thread. */
static void job_cancel(ls_job_t *job) {
  ls_pool_t *pool = job->pool;
  ls_runtime_t *rt = pool->rt;
  if (job->ud)
    job->ud->job = NULL;
  job->ud = NULL;
  if (job->target_ref != LUA_NOREF && !rt->closing)
    luaL_unref(rt->L, LUA_REGISTRYINDEX, job->target_ref);
  job->target_ref = LUA_NOREF;
  uv_mutex_lock(&pool->lock);
  if (job->state == JOB_QUEUED) {
    list_unlink(&pool->queue_head, &pool->queue_tail, job);
    __atomic_sub_fetch(&pool->queued, 1, __ATOMIC_RELAXED);
    publish(pool);
    uv_mutex_unlock(&pool->lock);
    job_free(job);
    job_gone(pool);
    return;
  }
  job->aborted = 1;
  uv_mutex_unlock(&pool->lock);
}


static void pool_on_close(uv_handle_t *h) {
  ls_pool_t *pool = h->data;
  ls__buf_free(&pool->init);
  uv_cond_destroy(&pool->work);
  uv_cond_destroy(&pool->ready);
  uv_mutex_destroy(&pool->lock);
  free(pool);
}


/* Deliver what the stopped workers finished, fail what is still queued
 * with "pool stopped", close. No worker is left: the lists are the loop
 * thread's alone. */
static void pool_finish(ls_pool_t *pool) {
  ls_runtime_t *rt = pool->rt;
  ls_pool_t **pp = (ls_pool_t **)&rt->stopping_pools;
  while (*pp && *pp != pool)
    pp = &(*pp)->next_stopping;
  if (*pp)
    *pp = pool->next_stopping;
  pool_drain(pool);
  ls_job_t *job;
  while ((job = pool->queue_head) != NULL) {
    list_unlink(&pool->queue_head, &pool->queue_tail, job);
    __atomic_sub_fetch(&pool->queued, 1, __ATOMIC_RELAXED);
    if (job->ud)
      job->ud->job = NULL;
    if (job->target_ref != LUA_NOREF && !rt->closing) {
      lua_pushnil(rt->L);
      lua_pushliteral(rt->L, "pool stopped");
      ls__resolve(rt, job->target_ref, 2);
    }
    job_free(job);
    job_gone(pool);
  }
  uv_close((uv_handle_t *)&pool->async, pool_on_close);
}


static void pool_on_finish(ls_defer_t *d) {
  pool_finish((ls_pool_t *)((char *)d - offsetof(ls_pool_t, finish)));
}


/* Stop the workers (a running job finishes first), then finish: now on
 * the exit path, from the loop when Lua asked (results resume tasks, which
 * must not happen inside the Lua call that stops the pool). */
static void pool_stop(ls_pool_t *pool, int from_lua) {
  ls_runtime_t *rt = pool->rt;
  if (rt->pool == pool)
    rt->pool = NULL;
  uv_mutex_lock(&pool->lock);
  __atomic_store_n(&pool->stopping, 1, __ATOMIC_RELAXED);
  uv_cond_broadcast(&pool->work);
  uv_mutex_unlock(&pool->lock);
  for (unsigned i = 0; i < pool->nthreads; i++)
    if (pool->workers[i].created)
      uv_thread_join(&pool->workers[i].tid);
  pool->next_stopping = rt->stopping_pools;
  rt->stopping_pools = pool;
  if (from_lua && !rt->closing)
    ls__defer(rt, &pool->finish, pool_on_finish);
  else
    pool_finish(pool);
}


void ls__pool_free(ls_runtime_t *rt) {
  if (rt->is_pool_state)
    return;
  while (rt->stopping_pools)   /* stopped from Lua, not finished yet */
    pool_finish(rt->stopping_pools);
  if (rt->pool)
    pool_stop(rt->pool, 0);
}


/* ---- Lua-facing --------------------------------------------------------- */

static unsigned opt_count(lua_State *L, int t, const char *name, unsigned def,
                          unsigned min) {
  lua_getfield(L, t, name);
  double v = lua_isnil(L, -1) ? def : luaL_checknumber(L, -1);
  lua_pop(L, 1);
  if (v < min || v > 100000 || v != (unsigned)v)
    luaL_error(L, "pool_start: %s must be a whole number from %d to 100000",
               name, (int)min);
  return (unsigned)v;
}


/* pool_start{threads = n, queue = n, nice = n, init = {...}}: start the
 * pool, each thread loading the app through luaserve.sync._pool_init(init);
 * waits until every thread has. true, or nil and why a thread could not
 * start. threads = 0: one per core; nice: lower the threads' priority. */
int ls__lua_pool_start(lua_State *L) {
  ls_runtime_t *rt = ls__runtime(L);
  luaL_checktype(L, 1, LUA_TTABLE);
  if (rt->is_pool_state)
    return luaL_error(L, "pool_start: not inside a pool thread");
  if (rt->pool)
    return luaL_error(L, "pool_start: the pool is already running");
  unsigned threads = opt_count(L, 1, "threads", 0, 0);
  unsigned queue = opt_count(L, 1, "queue", 128, 0);
  unsigned nice = opt_count(L, 1, "nice", 0, 0);
  if (threads == 0)
    threads = uv_available_parallelism();
  if (threads == 0)
    threads = 1;
  ls_pool_t *pool = calloc(1, sizeof(*pool) + threads * sizeof(worker_t));
  if (pool == NULL)
    return ls__push_error(L, UV_ENOMEM);
  char err[1024];
  lua_getfield(L, 1, "init");
  static const ls_copy_ctx_t init_ctx = {"init", 0, "cannot be given to the pool"};
  int r = ls__copy_encode(L, -1, 1, &pool->init, &init_ctx, err, sizeof(err));
  lua_pop(L, 1);
  if (r) {
    ls__buf_free(&pool->init);
    free(pool);
    lua_pushstring(L, err);
    return lua_error(L);
  }
  pool->rt = rt;
  pool->nthreads = threads;
  pool->max_queue = queue;
  pool->nice = nice > 19 ? 19 : (int)nice;
  pool->spin_max = uv_available_parallelism();
  uv_mutex_init(&pool->lock);
  uv_cond_init(&pool->work);
  uv_cond_init(&pool->ready);
  uv_async_init(rt->loop, &pool->async, pool_on_async);
  pool->async.data = pool;
  uv_unref((uv_handle_t *)&pool->async);   /* ref'd while jobs are out */
  rt->pool = pool;
  rt->wslot->pool_threads = threads;

  unsigned created = 0;
  for (unsigned i = 0; i < threads; i++) {
    worker_t *w = &pool->workers[i];
    w->pool = pool;
    w->run_ref = LUA_NOREF;
    if (uv_thread_create(&w->tid, worker_main, w) != 0)
      break;
    w->created = 1;
    created++;
  }
  uv_mutex_lock(&pool->lock);
  while (pool->started < created)
    uv_cond_wait(&pool->ready, &pool->lock);
  int failed = pool->start_failed > 0 || created < threads;
  if (failed && pool->start_err[0] == '\0')
    snprintf(pool->start_err, sizeof(pool->start_err), "cannot create threads");
  snprintf(err, sizeof(err), "%s", pool->start_err);
  uv_mutex_unlock(&pool->lock);
  if (failed) {
    pool_stop(pool, 0);   /* no job yet: nothing to deliver */
    lua_pushnil(L);
    lua_pushstring(L, err);
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}


/* pool_submit(kind, key, target, ...): queue a job running the sync
 * function `key` with the values; target is resolved with its results (or
 * nil, err) on this loop. Returns the job handle (for pool_cancel), or
 * nil, "pool full", or nil, message, true when the values cannot cross or
 * no pool runs (misuse: the caller raises). */
int ls__lua_pool_submit(lua_State *L) {
  ls_runtime_t *rt = ls__runtime(L);
  int kind = (int)luaL_checkinteger(L, 1);
  const char *key = luaL_checkstring(L, 2);
  luaL_checkany(L, 3);
  ls_pool_t *pool = rt->pool;
  if (pool == NULL || rt->is_pool_state) {
    lua_pushnil(L);
    lua_pushliteral(L, "a sync function was called but no pool is running: "
                    "serve the app with `luaserve APP`, or give "
                    "testing.client the app's file path");
    lua_pushboolean(L, 1);
    return 3;
  }
  uv_mutex_lock(&pool->lock);
  int full = pool->queued >= pool->max_queue;
  if (full)
    pool->rejected++;
  uv_mutex_unlock(&pool->lock);
  if (full)
    return ls__push_error(L, LS_EPOOLFULL);
  ls_job_t *job = calloc(1, sizeof(*job));
  char *k = strdup(key);
  if (job == NULL || k == NULL) {
    free(job);
    free(k);
    return ls__push_error(L, UV_ENOMEM);
  }
  char err[512];
  int r = ls__copy_encode(L, 4, lua_gettop(L) - 3, &job->args, &arg_ctx,
                          err, sizeof(err));
  if (r) {
    job->key = k;
    job_free(job);
    lua_pushnil(L);
    lua_pushstring(L, err);
    lua_pushboolean(L, 1);
    return 3;
  }
  job_ud_t *ud = lua_newuserdata(L, sizeof(*ud));
  luaL_getmetatable(L, LS_JOB_MT);
  lua_setmetatable(L, -2);
  ud->job = job;
  job->ud = ud;
  job->pool = pool;
  job->kind = kind;
  job->key = k;
  job->state = JOB_QUEUED;
  lua_pushvalue(L, 3);
  job->target_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  if (pool->inflight++ == 0)
    uv_ref((uv_handle_t *)&pool->async);
  uv_mutex_lock(&pool->lock);
  list_push(&pool->queue_head, &pool->queue_tail, job);
  __atomic_add_fetch(&pool->queued, 1, __ATOMIC_RELAXED);
  publish(pool);
  uv_cond_signal(&pool->work);
  uv_mutex_unlock(&pool->lock);
  return 1;
}


/* pool_cancel(job): the result is no longer wanted (see job_cancel). */
int ls__lua_pool_cancel(lua_State *L) {
  job_ud_t *ud = luaL_checkudata(L, 1, LS_JOB_MT);
  if (ud->job)
    job_cancel(ud->job);
  return 0;
}


/* pool_stats(): { threads, busy, queued, completed, rejected, queue_max };
 * zeros without a pool. In a pool thread: the pool it belongs to. */
int ls__lua_pool_stats(lua_State *L) {
  ls_pool_t *pool = ls__runtime(L)->pool;
  double threads = 0, busy = 0, queued = 0, completed = 0, rejected = 0;
  double max_queue = 0;
  if (pool) {
    uv_mutex_lock(&pool->lock);
    threads = pool->nthreads;
    busy = pool->busy;
    queued = pool->queued;
    completed = pool->completed;
    rejected = pool->rejected;
    uv_mutex_unlock(&pool->lock);
    max_queue = pool->max_queue;
  }
  lua_createtable(L, 0, 6);
  lua_pushnumber(L, threads);
  lua_setfield(L, -2, "threads");
  lua_pushnumber(L, busy);
  lua_setfield(L, -2, "busy");
  lua_pushnumber(L, queued);
  lua_setfield(L, -2, "queued");
  lua_pushnumber(L, completed);
  lua_setfield(L, -2, "completed");
  lua_pushnumber(L, rejected);
  lua_setfield(L, -2, "rejected");
  lua_pushnumber(L, max_queue);
  lua_setfield(L, -2, "queue_max");
  return 1;
}


/* pool_stop(): stop the pool (see pool_stop); nothing if none runs. */
int ls__lua_pool_stop(lua_State *L) {
  ls_runtime_t *rt = ls__runtime(L);
  if (rt->is_pool_state)
    return luaL_error(L, "pool_stop: not inside a pool thread");
  if (rt->pool)
    pool_stop(rt->pool, 1);
  return 0;
}


static int job_gc(lua_State *L) {
  job_ud_t *ud = luaL_checkudata(L, 1, LS_JOB_MT);
  if (ud->job)
    job_cancel(ud->job);
  return 0;
}


void ls__pool_open(lua_State *L) {
  ls__new_class(L, LS_JOB_MT, NULL, job_gc);
}
