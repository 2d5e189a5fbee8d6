/* master.c: what the master process and its workers need from the system
 * (lua/luaserve/master.lua holds the logic). The master runs no libuv
 * loop and no Lua task: it waits in master_wait on a signalfd and on the
 * pipe its workers write to, and forks workers from plain Lua code, so a
 * forked child unwinds back into cli.lua and becomes a worker with the
 * runtime's loop re-initialised (uv_loop_fork) before it ever ran. The
 * listening sockets are made here too, before the fork, so every worker
 * accepts from the same ones.
 *
 * Workers tell the master things through one pipe: messages of at most
 * PIPE_BUF bytes, so each write is atomic ("ready", "failed" with the
 * app's error, "retire" after --max-requests). Worker side: worker_*
 * functions, on the main loop thread. */
#define _GNU_SOURCE   /* pipe2 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "internal.h"

typedef struct {
  uint32_t len;             /* of the whole message */
  uint32_t slot, gen;
  char kind;                /* 'R' ready, 'F' failed, 'X' retire */
  char text[];
} msg_t;

#define MSG_MAX PIPE_BUF

static int sig_fd = -1;             /* the master's signalfd */
static int pipe_rd = -1, pipe_wr = -1;
static sigset_t master_sigs, saved_mask;
static pid_t master_pid;
static char rbuf[65536];
static size_t rlen;

/* In a worker: its slot and the start it is. */
static ls_wslot_t *my_slot;
static uint32_t my_index, my_gen;

ls_wslot_t ls__wslot_local;

static const int handled[] = {SIGCHLD, SIGHUP, SIGTERM, SIGINT, SIGQUIT,
                              SIGTTIN, SIGTTOU};


/* master_open(): block the master's signals and read them through a
 * signalfd; make the workers' pipe. true, or nil, err. */
int ls__lua_master_open(lua_State *L) {
  if (sig_fd >= 0)
    return luaL_error(L, "master_open: already open");
  int p[2];
  sigemptyset(&master_sigs);
  for (size_t i = 0; i < sizeof(handled) / sizeof(handled[0]); i++)
    sigaddset(&master_sigs, handled[i]);
  if (pipe2(p, O_CLOEXEC) != 0)
    return ls__push_error(L, -errno);
  fcntl(p[0], F_SETFL, O_NONBLOCK);
  sigprocmask(SIG_BLOCK, &master_sigs, &saved_mask);
  sig_fd = signalfd(-1, &master_sigs, SFD_CLOEXEC | SFD_NONBLOCK);
  if (sig_fd < 0) {
    int err = -errno;
    sigprocmask(SIG_SETMASK, &saved_mask, NULL);
    close(p[0]);
    close(p[1]);
    return ls__push_error(L, err);
  }
  pipe_rd = p[0];
  pipe_wr = p[1];
  master_pid = getpid();
  lua_pushboolean(L, 1);
  return 1;
}


/* master_close(): the master is done: close its descriptors, unblock. */
int ls__lua_master_close(lua_State *L) {
  if (sig_fd >= 0) {
    close(sig_fd);
    close(pipe_rd);
    close(pipe_wr);
    sig_fd = pipe_rd = pipe_wr = -1;
    sigprocmask(SIG_SETMASK, &saved_mask, NULL);
  }
  return 0;
}


static void push_event(lua_State *L, int *n, const char *kind) {
  lua_createtable(L, 0, 5);
  lua_pushstring(L, kind);
  lua_setfield(L, -2, "kind");
  lua_pushvalue(L, -1);
  lua_rawseti(L, -3, ++*n);
}


/* Messages from the workers, complete ones only (a partial one waits). */
static void read_messages(lua_State *L, int *n) {
  for (;;) {
    ssize_t r = read(pipe_rd, rbuf + rlen, sizeof(rbuf) - rlen);
    if (r <= 0)
      break;
    rlen += (size_t)r;
  }
  size_t off = 0;
  while (rlen - off >= sizeof(msg_t)) {
    msg_t m;
    memcpy(&m, rbuf + off, sizeof(m));
    if (m.len < sizeof(msg_t) || m.len > MSG_MAX) {   /* cannot happen */
      off = rlen;
      break;
    }
    if (rlen - off < m.len)
      break;
    push_event(L, n, m.kind == 'R' ? "ready" : m.kind == 'F' ? "failed"
                                                             : "retire");
    lua_pushinteger(L, m.slot);
    lua_setfield(L, -2, "slot");
    lua_pushinteger(L, m.gen);
    lua_setfield(L, -2, "gen");
    lua_pushlstring(L, rbuf + off + sizeof(msg_t), m.len - sizeof(msg_t));
    lua_setfield(L, -2, "text");
    lua_pop(L, 1);
    off += m.len;
  }
  memmove(rbuf, rbuf + off, rlen - off);
  rlen -= off;
}


/* master_wait(seconds): wait up to that long for signals, exited children
 * and workers' messages; a list of events {kind = "signal", signal = n},
 * {kind = "exit", pid, status, signal}, {kind = "ready" | "failed" |
 * "retire", slot, gen, text} (empty after the timeout). */
int ls__lua_master_wait(lua_State *L) {
  double s = luaL_checknumber(L, 1);
  struct pollfd fds[2] = {{sig_fd, POLLIN, 0}, {pipe_rd, POLLIN, 0}};
  int ms = s <= 0 ? 0 : s > 3600 ? 3600000 : (int)(s * 1000);
  if (sig_fd < 0)
    return luaL_error(L, "master_wait: master_open first");
  poll(fds, 2, ms);
  int n = 0;
  lua_newtable(L);
  struct signalfd_siginfo si;
  while (read(sig_fd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
    if (si.ssi_signo == SIGCHLD)
      continue;   /* the exits are collected below */
    push_event(L, &n, "signal");
    lua_pushinteger(L, si.ssi_signo);
    lua_setfield(L, -2, "signal");
    lua_pop(L, 1);
  }
  /* Exits after the messages: what a worker wrote before it exited (the
   * error it failed with) is read first, so the pipe is read again after
   * the exits are collected. */
  read_messages(L, &n);
  int status, nexit = 0;
  pid_t pid;
  lua_newtable(L);
  while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
    push_event(L, &nexit, "exit");
    lua_pushinteger(L, pid);
    lua_setfield(L, -2, "pid");
    lua_pushinteger(L, WIFEXITED(status) ? WEXITSTATUS(status) : 0);
    lua_setfield(L, -2, "status");
    lua_pushinteger(L, WIFSIGNALED(status) ? WTERMSIG(status) : 0);
    lua_setfield(L, -2, "signal");
    lua_pop(L, 1);
  }
  lua_insert(L, -2);
  read_messages(L, &n);
  for (int i = 1; i <= nexit; i++) {
    lua_rawgeti(L, -2, i);
    lua_rawseti(L, -2, ++n);
  }
  lua_remove(L, -2);
  return 1;
}


/* master_fork(slot, gen, max_requests): fork a worker for that slot. The
 * master gets its pid (or nil, err); the child gets 0, with the master's
 * descriptors closed, its signals back, the loop re-initialised and the
 * slot claimed. The child dies with SIGTERM if the master dies. */
int ls__lua_master_fork(lua_State *L) {
  ls_runtime_t *rt = ls__runtime(L);
  unsigned slot = (unsigned)luaL_checkinteger(L, 1);
  uint32_t gen = (uint32_t)luaL_checkinteger(L, 2);
  double max_requests = luaL_optnumber(L, 3, 0);
  ls_shm_t *h = ls__shm_region;
  if (h == NULL || slot >= h->nslots)
    return luaL_argerror(L, 1, "no such worker slot");
  ls_wslot_t *ws = ls__shm_slot(h, slot);
  fflush(NULL);   /* nothing buffered is written twice */
  pid_t pid = fork();
  if (pid < 0)
    return ls__push_error(L, -errno);
  if (pid > 0) {
    ws->pid = pid;
    ws->gen = gen;
    lua_pushinteger(L, pid);
    return 1;
  }
  /* The worker. */
  prctl(PR_SET_PDEATHSIG, SIGTERM);
  if (getppid() != master_pid)
    _exit(1);   /* the master died before the line above */
  close(sig_fd);
  close(pipe_rd);
  sig_fd = pipe_rd = -1;
  rlen = 0;
  sigprocmask(SIG_SETMASK, &saved_mask, NULL);
  /* Master-only signals: Ctrl+C reaches every process of the group, and
   * the master drains the workers itself (one SIGTERM each). */
  signal(SIGINT, SIG_IGN);
  signal(SIGHUP, SIG_IGN);
  signal(SIGTTIN, SIG_IGN);
  signal(SIGTTOU, SIG_IGN);
  signal(SIGQUIT, SIG_IGN);
  uv_loop_fork(rt->loop);
  memset(ws->running, 0, sizeof(ws->running));
  ws->pid = getpid();
  ws->gen = gen;
  ws->beat = uv_hrtime();
  ws->entry_t0 = 0;
  ws->conns = ws->inflight = 0;
  ws->pool_threads = ws->pool_busy = ws->pool_queued = 0;
  ws->requests = 0;
  ws->max_requests = max_requests > 0 ? (uint64_t)max_requests : 0;
  my_slot = ws;
  my_index = slot;
  my_gen = gen;
  rt->wslot = ws;
  rt->wslot_shared = 1;
  lua_pushinteger(L, 0);
  return 1;
}


/* kill(pid, signal): true, or nil, err. */
int ls__lua_kill(lua_State *L) {
  pid_t pid = (pid_t)luaL_checkinteger(L, 1);
  int sig = (int)luaL_optinteger(L, 2, SIGTERM);
  luaL_argcheck(L, pid > 0, 1, "pid must be > 0");
  if (kill(pid, sig) != 0)
    return ls__push_error(L, -errno);
  lua_pushboolean(L, 1);
  return 1;
}


/* The worker slot numbered by argument 1; raises if there is none. */
static ls_wslot_t *check_slot(lua_State *L) {
  ls_shm_t *h = ls__shm_region;
  unsigned i = (unsigned)luaL_checkinteger(L, 1);
  if (h == NULL || i >= h->nslots)
    luaL_argerror(L, 1, "no such worker slot");
  return ls__shm_slot(h, i);
}


/* slot_info(i): {pid, gen, beat, entry, running, requests} of worker slot
 * i (seconds on the hrtime clock; entry 0: no entry into Lua running). */
int ls__lua_slot_info(lua_State *L) {
  ls_wslot_t *ws = check_slot(L);
  char running[sizeof(ws->running)];
  memcpy(running, ws->running, sizeof(running));
  running[sizeof(running) - 1] = '\0';
  lua_createtable(L, 0, 6);
  lua_pushinteger(L, ws->pid);
  lua_setfield(L, -2, "pid");
  lua_pushinteger(L, ws->gen);
  lua_setfield(L, -2, "gen");
  lua_pushnumber(L, (double)ws->beat / 1e9);
  lua_setfield(L, -2, "beat");
  lua_pushnumber(L, (double)ws->entry_t0 / 1e9);
  lua_setfield(L, -2, "entry");
  lua_pushstring(L, running);
  lua_setfield(L, -2, "running");
  lua_pushnumber(L, (double)ws->requests);
  lua_setfield(L, -2, "requests");
  return 1;
}


/* slot_release(i): the slot's worker is gone (its counters stay, for the
 * metrics' totals). */
int ls__lua_slot_release(lua_State *L) {
  ls_wslot_t *ws = check_slot(L);
  ls_shm_t *h = ls__shm_region;
  ws->pid = 0;
  ws->entry_t0 = 0;
  /* A worker that died had connections no one will close. */
  __atomic_sub_fetch(&h->conns_total, ws->conns, __ATOMIC_RELAXED);
  ws->conns = ws->inflight = 0;
  ws->pool_threads = ws->pool_busy = ws->pool_queued = 0;
  return 0;
}


/* master_figures(workers, restarts): what the metrics show of the master. */
int ls__lua_master_figures(lua_State *L) {
  ls_shm_t *h = ls__shm_region;
  if (h) {
    h->workers = (uint32_t)luaL_checkinteger(L, 1);
    h->restarts = (uint64_t)luaL_checknumber(L, 2);
  }
  return 0;
}


/* shared_recover(): after a worker died: if it held the dictionary's lock,
 * repair the dictionary now (logged). true if it did. */
int ls__lua_shared_recover(lua_State *L) {
  ls_shm_t *h = ls__shm_region;
  lua_pushboolean(L, h && ls__dict_recover(ls__shm_dict(h)));
  return 1;
}


/* listen_socket(host, port, backlog): a bound TCP socket for workers to
 * inherit (SO_REUSEADDR; not listening yet: the first worker that is
 * ready listens, so connections are refused until then). Its fd and the
 * port, or nil, err. */
int ls__lua_listen_socket(lua_State *L) {
  const char *host = luaL_checkstring(L, 1);
  int port = (int)luaL_checkinteger(L, 2);
  struct sockaddr_storage addr;
  socklen_t alen = sizeof(struct sockaddr_in);
  if (uv_ip4_addr(host, port, (struct sockaddr_in *)&addr) != 0) {
    if (uv_ip6_addr(host, port, (struct sockaddr_in6 *)&addr) != 0)
      return luaL_error(L, "listen: host must be a numeric address, got '%s'",
                        host);
    alen = sizeof(struct sockaddr_in6);
  }
  int fd = socket(addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return ls__push_error(L, -errno);
  int on = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
  if (bind(fd, (struct sockaddr *)&addr, alen) != 0) {
    int err = -errno;
    close(fd);
    return ls__push_error(L, err);
  }
  socklen_t blen = sizeof(addr);
  getsockname(fd, (struct sockaddr *)&addr, &blen);
  lua_pushinteger(L, fd);
  lua_pushinteger(L, addr.ss_family == AF_INET6
                         ? ntohs(((struct sockaddr_in6 *)&addr)->sin6_port)
                         : ntohs(((struct sockaddr_in *)&addr)->sin_port));
  return 2;
}


/* ---- the worker's side -------------------------------------------------- */

/* Send the master one message of kind (R, F, X) with text (cut to fit):
 * 0, or a negative errno. */
static int send_msg(char kind, const char *text, size_t tlen) {
  if (my_slot == NULL || pipe_wr < 0)
    return UV_ENOTCONN;
  char buf[MSG_MAX];
  if (tlen > MSG_MAX - sizeof(msg_t))
    tlen = MSG_MAX - sizeof(msg_t);
  msg_t m = {(uint32_t)(sizeof(msg_t) + tlen), my_index, my_gen, kind};
  memcpy(buf, &m, sizeof(m));
  memcpy(buf + sizeof(m), text, tlen);
  ssize_t r;
  do
    r = write(pipe_wr, buf, m.len);
  while (r < 0 && errno == EINTR);
  return r < 0 ? -errno : 0;
}


/* worker_notify(kind, text): tell the master "ready", "failed" (text: the
 * error) or "retire". true, or nil, err (no master). */
int ls__lua_worker_notify(lua_State *L) {
  const char *kind = luaL_checkstring(L, 1);
  size_t tlen;
  const char *text = luaL_optlstring(L, 2, "", &tlen);
  char k = strcmp(kind, "ready") == 0    ? 'R'
           : strcmp(kind, "failed") == 0 ? 'F'
           : strcmp(kind, "retire") == 0 ? 'X'
                                         : 0;
  luaL_argcheck(L, k != 0, 1, "ready, failed or retire");
  int err = send_msg(k, text, tlen);
  if (err)
    return ls__push_error(L, err);
  lua_pushboolean(L, 1);
  return 1;
}


/* worker_beat(): the heartbeat; the master kills a worker whose beat is
 * older than --timeout-worker-healthcheck. */
int ls__lua_worker_beat(lua_State *L) {
  LS__RT(L)->wslot->beat = uv_hrtime();
  return 0;
}


/* worker_running(method, path, route): what the loop runs now, for the
 * master's log if it must kill this worker for blocking its loop. */
int ls__lua_worker_running(lua_State *L) {
  ls_wslot_t *ws = LS__RT(L)->wslot;
  size_t ml = 0, pl = 0, rl = 0;
  const char *m = lua_tolstring(L, 1, &ml);
  const char *p = lua_tolstring(L, 2, &pl);
  const char *r = lua_tolstring(L, 3, &rl);
  char *out = ws->running;
  size_t cap = sizeof(ws->running) - 1, n = 0;
  if (m == NULL) {
    memcpy(out, "a task", 7);
    return 0;
  }
#define PUT(s, l)                                            \
  do {                                                       \
    size_t k_ = (l) < cap - n ? (l) : cap - n;               \
    memcpy(out + n, (s), k_);                                \
    n += k_;                                                 \
  } while (0)
  PUT(m, ml);
  PUT(" ", 1);
  PUT(p ? p : "-", p ? pl : 1);
  PUT(" (route ", 8);
  PUT(r ? r : "-", r ? rl : 1);
  PUT(")", 1);
#undef PUT
  out[n] = '\0';
  return 0;
}


/* worker_attach(): in a single process (no master): slot 0 of the region
 * is this process's (gauges, loop lag for the metrics). */
int ls__lua_worker_attach(lua_State *L) {
  ls_runtime_t *rt = ls__runtime(L);
  ls_shm_t *h = ls__shm();
  if (h == NULL)
    return luaL_error(L, "worker_attach: cannot map the shared memory");
  if (!rt->wslot_shared) {
    rt->wslot = ls__shm_slot(h, 0);
    rt->wslot->pid = getpid();
    rt->wslot->beat = uv_hrtime();
    rt->wslot_shared = 1;
  }
  return 0;
}


/* worker_slot(): this worker's slot index and start (nil outside one). */
int ls__lua_worker_slot(lua_State *L) {
  if (my_slot == NULL)
    return 0;
  lua_pushinteger(L, my_index);
  lua_pushinteger(L, my_gen);
  return 2;
}


/* ls__worker_retire: --max-requests reached: ask the master for a
 * replacement (once). */
void ls__worker_retire(void) {
  send_msg('X', "", 0);
}


/* getpid(): this process's id. */
int ls__lua_getpid(lua_State *L) {
  lua_pushinteger(L, getpid());
  return 1;
}


/* cpus(): the cores this process may run on (--workers 0). */
int ls__lua_cpus(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)uv_available_parallelism());
  return 1;
}
