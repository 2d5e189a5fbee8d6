/* luaserve.h: the core's public interface, what main.c and the C tests need. */
#ifndef LUASERVE_H
#define LUASERVE_H

#include <uv.h>
#include <lua.h>

#define LS_VERSION "0.1"

/* The core's own error codes, beside libuv's negative UV_E* codes.
 * XX(name, message); values count down from LS__ERRNO_BASE so they never
 * collide with errno values. */
#define LS_ERRNO_MAP(XX)                                                    \
  XX(EAPPLOAD, "the app could not be loaded")                               \
  XX(ELUA, "a Lua call failed")                                             \
  XX(ECOPY, "the value cannot be copied between Lua states")                \
  XX(EPOOLFULL, "pool full")                                                \
  XX(ESHAREDFULL, "shared dictionary full")                                \
  XX(ETLS, "tls error")

#define LS__ERRNO_BASE (-30000)

enum {
  LS__ERRNO_FIRST = LS__ERRNO_BASE,
#define XX(name, msg) LS_##name,
  LS_ERRNO_MAP(XX)
#undef XX
};

/* ls_strerror: a static message for a libuv or core error code. */
const char *ls_strerror(int err);

/* The runtime: one per Lua state that serves (the main state, each pool
 * thread's state). Owns its libuv loop reference and the Lua state. */
typedef struct ls_runtime_s ls_runtime_t;

/* ls_runtime_new: a Lua state on `loop` with package paths set from
 * `lua_dir`, the core module preloaded. Returns NULL on out of memory. */
ls_runtime_t *ls_runtime_new(uv_loop_t *loop, const char *lua_dir);

/* ls_runtime_state: the runtime's Lua state. */
lua_State *ls_runtime_state(ls_runtime_t *rt);

/* ls_runtime_free: close every handle the runtime owns, run the loop until
 * they are closed, close the Lua state. */
void ls_runtime_free(ls_runtime_t *rt);

/* ls_runtime_call_main: run `require(module).main(args...)` in protected mode
 * (argv after the program name as strings). Returns the integer it returns
 * (the process exit status); a Lua error is printed and gives 2. */
int ls_runtime_call_main(ls_runtime_t *rt, const char *module, int argc,
                         char **argv);

#endif /* LUASERVE_H */
