/* proc.c: processes, signals and file watching for Lua (the --reload
 * supervisor): spawn a child process and hear of its exit, send it a
 * signal, watch directories for changes (uv_fs_event), list a directory,
 * and call a Lua function on a signal. Each handle is allocated apart from
 * its Lua userdata and lives until its close callback; the Lua callback is
 * anchored by a registry reference released on one path (close). Loop
 * thread of the main runtime. */
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define LS_PROC_MT "luaserve.process"
#define LS_WATCH_MT "luaserve.watcher"
#define LS_SIGNAL_MT "luaserve.signal"

/* One handle of any kind with its Lua callback. */
typedef struct {
  union {
    uv_handle_t handle;
    uv_process_t proc;
    uv_fs_event_t event;
    uv_signal_t sig;
  } u;
  ls_runtime_t *rt;
  int fn_ref;               /* the Lua callback, LUA_NOREF once released */
  int closed;
  int exited;               /* a process: it has exited */
  struct handle_ud_s *ud;   /* the Lua side, NULL once collected */
} ls_phandle_t;

typedef struct handle_ud_s {
  ls_phandle_t *h;          /* NULL once closed */
} handle_ud_t;


static void handle_on_close(uv_handle_t *h) {
  free(h->data);
}


/* Release the callback, detach from Lua, close: once. */
static void handle_close(ls_phandle_t *p) {
  if (p->closed)
    return;
  p->closed = 1;
  if (p->fn_ref != LUA_NOREF && !p->rt->closing)
    luaL_unref(p->rt->L, LUA_REGISTRYINDEX, p->fn_ref);
  p->fn_ref = LUA_NOREF;
  if (p->ud)
    p->ud->h = NULL;
  p->ud = NULL;
  uv_close(&p->u.handle, handle_on_close);
}


/* A new handle record and its userdata (on the stack); fn at fn_idx. */
static ls_phandle_t *handle_new(lua_State *L, const char *mt, int fn_idx) {
  luaL_checktype(L, fn_idx, LUA_TFUNCTION);
  ls_phandle_t *p = calloc(1, sizeof(*p));
  if (p == NULL) {
    luaL_error(L, "out of memory");
    return NULL;
  }
  p->rt = LS__RT(L);
  p->u.handle.data = p;
  handle_ud_t *ud = lua_newuserdata(L, sizeof(*ud));
  ud->h = p;
  p->ud = ud;
  luaL_getmetatable(L, mt);
  lua_setmetatable(L, -2);
  lua_pushvalue(L, fn_idx);
  p->fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  return p;
}


/* Call the handle's Lua callback with the nargs values on the stack. */
static void handle_call(ls_phandle_t *p, int nargs, const char *what) {
  ls_runtime_t *rt = p->rt;
  if (rt->closing || p->fn_ref == LUA_NOREF) {
    lua_pop(rt->L, nargs);
    return;
  }
  lua_rawgeti(rt->L, LUA_REGISTRYINDEX, p->fn_ref);
  lua_insert(rt->L, -1 - nargs);
  ls__pcall_entry(rt, nargs, what);
}


static int handle_gc(lua_State *L) {
  handle_ud_t *ud = lua_touserdata(L, 1);
  ls_phandle_t *p = ud->h;
  if (p == NULL)
    return 0;
  p->ud = NULL;
  ud->h = NULL;
  /* A process keeps running (and its handle open) until it exits. */
  if (p->u.handle.type != UV_PROCESS || p->exited)
    handle_close(p);
  return 0;
}


static int handle_close_lua(lua_State *L) {
  handle_ud_t *ud = lua_touserdata(L, 1);
  if (ud->h)
    handle_close(ud->h);
  return 0;
}


/* ---- processes ---------------------------------------------------------- */

static void proc_on_exit(uv_process_t *proc, int64_t status, int signum) {
  ls_phandle_t *p = proc->data;
  p->exited = 1;
  lua_pushinteger(p->rt->L, (lua_Integer)status);
  lua_pushinteger(p->rt->L, signum);
  handle_call(p, 2, "process exit");
  handle_close(p);
}


extern char **environ;


/* The environment with the overrides of the table at idx ({NAME =
 * value}) in place: a malloc'd array of pointers into environ and into
 * Lua strings, which a table pushed on the stack keeps alive (leave it
 * there until the spawn); NULL on out of memory. */
static char **make_env(lua_State *L, int idx) {
  size_t n = 0, extra = 0;
  while (environ[n])
    n++;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    extra++;
    lua_pop(L, 1);
  }
  char **env = calloc(n + extra + 1, sizeof(char *));
  if (env == NULL)
    return NULL;
  size_t k = 0;
  for (size_t i = 0; i < n; i++) {
    const char *eq = strchr(environ[i], '=');
    size_t nlen = eq ? (size_t)(eq - environ[i]) : strlen(environ[i]);
    lua_pushlstring(L, environ[i], nlen);
    lua_rawget(L, idx);
    int overridden = !lua_isnil(L, -1);
    lua_pop(L, 1);
    if (!overridden)
      env[k++] = environ[i];
  }
  lua_createtable(L, (int)extra, 0);   /* anchors the "NAME=value" strings */
  int anchor = lua_gettop(L);
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pushvalue(L, -2);
    lua_pushliteral(L, "=");
    lua_pushvalue(L, -3);
    lua_concat(L, 3);
    env[k++] = (char *)lua_tostring(L, -1);
    lua_rawseti(L, anchor, (int)k);
    lua_pop(L, 1);
  }
  return env;
}


/* spawn(file, args, on_exit[, env]): run file with args (a list of
 * strings, argv[1..]), sharing this process's stdin, stdout and stderr and
 * its environment (env: {NAME = value} overrides); on_exit(status, signal)
 * when it ends. A process userdata (:pid(), :kill(signal)), or nil, err. */
int ls__lua_spawn(lua_State *L) {
  const char *file = luaL_checkstring(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  luaL_checktype(L, 3, LUA_TFUNCTION);   /* before anything is malloc'd */
  if (!lua_isnoneornil(L, 4)) {   /* env: names and values are strings */
    luaL_checktype(L, 4, LUA_TTABLE);
    lua_pushnil(L);
    while (lua_next(L, 4)) {
      if (lua_type(L, -2) != LUA_TSTRING || !lua_isstring(L, -1))
        return luaL_argerror(L, 4, "names and values must be strings");
      lua_pop(L, 1);
    }
  }
  int n = (int)lua_objlen(L, 2);
  char **argv = calloc((size_t)n + 2, sizeof(char *));
  if (argv == NULL)
    return luaL_error(L, "spawn: out of memory");
  argv[0] = (char *)file;
  for (int i = 1; i <= n; i++) {
    lua_rawgeti(L, 2, i);
    argv[i] = (char *)lua_tostring(L, -1);   /* kept alive by the table */
    lua_pop(L, 1);
    if (argv[i] == NULL) {
      free(argv);
      return luaL_argerror(L, 2, "arguments must be strings");
    }
  }
  ls_phandle_t *p = handle_new(L, LS_PROC_MT, 3);
  int ud = lua_gettop(L);
  uv_stdio_container_t stdio[3];
  for (int i = 0; i < 3; i++) {
    stdio[i].flags = UV_INHERIT_FD;
    stdio[i].data.fd = i;
  }
  uv_process_options_t o;
  memset(&o, 0, sizeof(o));
  o.file = file;
  o.args = argv;
  o.exit_cb = proc_on_exit;
  o.stdio_count = 3;
  o.stdio = stdio;
  char **env = NULL;
  if (lua_istable(L, 4) && (env = make_env(L, 4)) != NULL)
    o.env = env;
  int err = uv_spawn(p->rt->loop, &p->u.proc, &o);
  free(env);
  free(argv);
  if (err) {
    p->exited = 1;
    handle_close(p);
    return ls__push_error(L, err);
  }
  lua_pushvalue(L, ud);
  return 1;
}


static int proc_pid(lua_State *L) {
  handle_ud_t *ud = luaL_checkudata(L, 1, LS_PROC_MT);
  if (ud->h == NULL || ud->h->exited)
    return 0;
  lua_pushinteger(L, ud->h->u.proc.pid);
  return 1;
}


/* p:kill(signal): send a signal (default SIGTERM); true, or nil, err. */
static int proc_kill(lua_State *L) {
  handle_ud_t *ud = luaL_checkudata(L, 1, LS_PROC_MT);
  int signum = (int)luaL_optinteger(L, 2, SIGTERM);
  if (ud->h == NULL || ud->h->exited)
    return ls__push_error(L, UV_ESRCH);
  int err = uv_process_kill(&ud->h->u.proc, signum);
  if (err)
    return ls__push_error(L, err);
  lua_pushboolean(L, 1);
  return 1;
}


/* ---- watching ----------------------------------------------------------- */

static void watch_on_event(uv_fs_event_t *h, const char *filename, int events,
                           int status) {
  ls_phandle_t *p = h->data;
  if (status < 0)
    return;
  lua_pushstring(p->rt->L, filename ? filename : "");
  lua_pushboolean(p->rt->L, (events & UV_RENAME) != 0);
  handle_call(p, 2, "watch");
}


/* watch(path, on_change): on_change(name, renamed) when something in the
 * directory (or the file) path changes. A watcher (:close()), or nil,
 * err. */
int ls__lua_watch(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  ls_phandle_t *p = handle_new(L, LS_WATCH_MT, 2);
  uv_fs_event_init(p->rt->loop, &p->u.event);   /* cannot fail on Linux */
  int err = uv_fs_event_start(&p->u.event, watch_on_event, path, 0);
  if (err) {
    handle_close(p);
    return ls__push_error(L, err);
  }
  return 1;
}


/* scandir(path): a list of {name = , dir = true|false} (synchronous: for
 * the supervisor, which serves no request), or nil, err. */
int ls__lua_scandir(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  uv_fs_t req;
  int n = uv_fs_scandir(NULL, &req, path, 0, NULL);
  if (n < 0) {
    uv_fs_req_cleanup(&req);
    return ls__push_error(L, n);
  }
  lua_createtable(L, n, 0);
  uv_dirent_t ent;
  int i = 0;
  while (uv_fs_scandir_next(&req, &ent) != UV_EOF) {
    lua_createtable(L, 0, 2);
    lua_pushstring(L, ent.name);
    lua_setfield(L, -2, "name");
    lua_pushboolean(L, ent.type == UV_DIRENT_DIR);
    lua_setfield(L, -2, "dir");
    lua_rawseti(L, -2, ++i);
  }
  uv_fs_req_cleanup(&req);
  return 1;
}


/* exepath(): the path of this program (to run it again). */
int ls__lua_exepath(lua_State *L) {
  char buf[4096];
  size_t size = sizeof(buf);
  int err = uv_exepath(buf, &size);
  if (err)
    return ls__push_error(L, err);
  lua_pushlstring(L, buf, size);
  return 1;
}


/* ---- signals ------------------------------------------------------------ */

static void signal_on(uv_signal_t *h, int signum) {
  ls_phandle_t *p = h->data;
  lua_pushinteger(p->rt->L, signum);
  handle_call(p, 1, "signal");
}


/* on_signal(signum, fn): fn(signum) on each such signal, until :close().
 * Does not keep the loop alive. */
int ls__lua_on_signal(lua_State *L) {
  int signum = (int)luaL_checkinteger(L, 1);
  ls_phandle_t *p = handle_new(L, LS_SIGNAL_MT, 2);
  uv_signal_init(p->rt->loop, &p->u.sig);
  int err = uv_signal_start(&p->u.sig, signal_on, signum);
  if (err) {
    handle_close(p);
    return ls__push_error(L, err);
  }
  uv_unref(&p->u.handle);
  return 1;
}


/* The signal numbers Lua may name: core.signals.TERM and so on. */
static void push_signals(lua_State *L) {
  static const struct { const char *name; int num; } sigs[] = {
    {"HUP", SIGHUP}, {"INT", SIGINT}, {"QUIT", SIGQUIT}, {"KILL", SIGKILL},
    {"USR1", SIGUSR1}, {"USR2", SIGUSR2}, {"TERM", SIGTERM},
    {"TTIN", SIGTTIN}, {"TTOU", SIGTTOU}, {"CHLD", SIGCHLD},
  };
  lua_createtable(L, 0, (int)(sizeof(sigs) / sizeof(sigs[0])));
  for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++) {
    lua_pushinteger(L, sigs[i].num);
    lua_setfield(L, -2, sigs[i].name);
  }
}


/* Metatables, and core.signals on the module table at the stack top. */
void ls__proc_open(lua_State *L) {
  push_signals(L);
  lua_setfield(L, -2, "signals");
  static const luaL_Reg proc_methods[] = {
    {"pid", proc_pid},
    {"kill", proc_kill},
    {NULL, NULL},
  };
  static const luaL_Reg close_methods[] = {
    {"close", handle_close_lua},
    {NULL, NULL},
  };
  ls__new_class(L, LS_PROC_MT, proc_methods, handle_gc);
  ls__new_class(L, LS_WATCH_MT, close_methods, handle_gc);
  ls__new_class(L, LS_SIGNAL_MT, close_methods, handle_gc);
}
