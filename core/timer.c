/* timer.c: one-shot timers that resolve a Lua target, the loop clock, and
 * running the loop from Lua. Loop thread of the runtime only. */
#include <stdlib.h>

#include "internal.h"

#define LS_TIMER_MT "luaserve.timer"

/* The C side of a timer: lives until its close callback. */
typedef struct {
  uv_timer_t handle;
  ls_runtime_t *rt;
  int target_ref;           /* resolved with no values when the timer fires */
  struct timer_ud_s *ud;    /* the Lua side, NULL once detached */
} ls_timer_t;

typedef struct timer_ud_s {
  ls_timer_t *t;            /* NULL once fired or stopped */
} timer_ud_t;


static void timer_on_close(uv_handle_t *h) {
  free(h->data);
}


/* Detach from Lua, release the target and close: the one cleanup path of a
 * timer, for firing, stop() and garbage collection alike. */
static void timer_cleanup(ls_timer_t *t, int release_target) {
  if (t->ud)
    t->ud->t = NULL;
  t->ud = NULL;
  if (release_target && !t->rt->closing)
    luaL_unref(t->rt->L, LUA_REGISTRYINDEX, t->target_ref);
  uv_close((uv_handle_t *)&t->handle, timer_on_close);
}


static void timer_on_fire(uv_timer_t *h) {
  ls_timer_t *t = h->data;
  ls_runtime_t *rt = t->rt;
  int ref = t->target_ref;
  timer_cleanup(t, 0);
  ls__resolve(rt, ref, 0);   /* releases ref */
}


/* timer(ms, target): a timer userdata; when ms have passed, resolve(target)
 * is called. timer:stop() cancels it (target never resolved). */
int ls__lua_timer(lua_State *L) {
  ls_runtime_t *rt = ls__runtime(L);
  double ms = luaL_checknumber(L, 1);
  luaL_checkany(L, 2);
  if (ms < 0)
    ms = 0;
  ls_timer_t *t = malloc(sizeof(*t));
  if (t == NULL)
    return luaL_error(L, "timer: out of memory");
  timer_ud_t *ud = lua_newuserdata(L, sizeof(*ud));
  luaL_getmetatable(L, LS_TIMER_MT);
  lua_setmetatable(L, -2);
  uv_timer_init(rt->loop, &t->handle);
  t->handle.data = t;
  t->rt = rt;
  t->ud = ud;
  ud->t = t;
  lua_pushvalue(L, 2);
  t->target_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  /* Count from now, not from the loop's cached time: a handler that
   * computed for a while before sleeping must still sleep the full time. */
  uv_update_time(rt->loop);
  uv_timer_start(&t->handle, timer_on_fire, (uint64_t)(ms + 0.5), 0);
  return 1;
}


static int timer_stop(lua_State *L) {
  timer_ud_t *ud = luaL_checkudata(L, 1, LS_TIMER_MT);
  if (ud->t)
    timer_cleanup(ud->t, 1);
  return 0;
}


/* ---- sleep(): one timer for every sleep ----------------------------------
 *
 * luaserve.future keeps the sleeping futures in a heap ordered by deadline
 * (loop milliseconds) and arms this one timer for the earliest: a sleep
 * costs no handle, no allocation in C and no registry reference. */

static void sleep_on_fire(uv_timer_t *h) {
  ls_runtime_t *rt = h->data;
  if (rt->closing || rt->sleep_ref == 0)
    return;
  lua_rawgeti(rt->L, LUA_REGISTRYINDEX, rt->sleep_ref);
  lua_pushnumber(rt->L, (double)uv_now(rt->loop));
  ls__pcall_entry(rt, 1, "sleep");
}


/* sleep_init(fire): fire(now_ms) is called when the armed time comes. */
int ls__lua_sleep_init(lua_State *L) {
  ls_runtime_t *rt = LS__RT(L);
  luaL_checktype(L, 1, LUA_TFUNCTION);
  if (rt->sleep_ref)
    luaL_unref(L, LUA_REGISTRYINDEX, rt->sleep_ref);
  lua_pushvalue(L, 1);
  rt->sleep_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  return 0;
}


/* sleep_arm(at_ms): fire at that loop time (at once if it has passed);
 * nil: not at all (nothing sleeps: the loop need not stay up for it). */
int ls__lua_sleep_arm(lua_State *L) {
  ls_runtime_t *rt = LS__RT(L);
  if (lua_isnoneornil(L, 1)) {
    uv_timer_stop(&rt->sleep_timer);
    return 0;
  }
  double wait = luaL_checknumber(L, 1) - (double)uv_now(rt->loop);
  if (!(wait < 1e15))   /* math.huge, NaN: as good as never */
    wait = 1e15;
  uv_timer_start(&rt->sleep_timer, sleep_on_fire,
                 wait > 0 ? (uint64_t)wait : 0, 0);
  return 0;
}


/* now_ms(): the loop's clock in milliseconds, read now (a sleep counts
 * from the moment it starts, not from the loop iteration's start). */
int ls__lua_now_ms(lua_State *L) {
  uv_loop_t *loop = LS__RT(L)->loop;
  uv_update_time(loop);
  lua_pushnumber(L, (double)uv_now(loop));
  return 1;
}


/* now([fresh]): the loop's time in seconds (cached at the start of the
 * loop iteration; with fresh true, read from the clock now, as timers
 * started now count from). */
int ls__lua_now(lua_State *L) {
  uv_loop_t *loop = LS__RT(L)->loop;
  if (lua_toboolean(L, 1))
    uv_update_time(loop);
  lua_pushnumber(L, (double)uv_now(loop) / 1000.0);
  return 1;
}


int ls__lua_hrtime(lua_State *L) {
  lua_pushnumber(L, (double)uv_hrtime() / 1e9);
  return 1;
}


/* run(): run the loop until stop() or nothing is left to do. */
int ls__lua_run(lua_State *L) {
  uv_run(ls__runtime(L)->loop, UV_RUN_DEFAULT);
  return 0;
}


/* run_once(): one loop iteration; it waits for something to happen, and
 * returns once Lua has run (false when nothing is left to wait for). */
int ls__lua_run_once(lua_State *L) {
  ls_runtime_t *rt = ls__runtime(L);
  int was = rt->in_run_once;
  rt->in_run_once = 1;
  int alive = uv_run(rt->loop, UV_RUN_ONCE) != 0;
  rt->in_run_once = was;
  lua_pushboolean(L, alive);
  return 1;
}


int ls__lua_stop(lua_State *L) {
  uv_stop(ls__runtime(L)->loop);
  return 0;
}


void ls__timer_open(lua_State *L) {
  static const luaL_Reg methods[] = {{"stop", timer_stop}, {NULL, NULL}};
  ls__new_class(L, LS_TIMER_MT, methods, timer_stop);
}
