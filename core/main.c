/* main.c: the luaserve program. Finds the framework's Lua files, creates the
 * loop and the main runtime, and hands the command line to luaserve.cli,
 * which parses it, loads the app and runs the loop. */
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

#ifndef LS_LUA_DIR
#define LS_LUA_DIR "/usr/local/share/luaserve/lua"
#endif


/* The framework's Lua directory: $LUASERVE_LUA_DIR, else lua/ beside the
 * binary or up to two folders above it (a source tree: ./luaserve, and
 * build/san/luaserve, the sanitizer build), else the installed
 * LS_LUA_DIR. */
static void find_lua_dir(char *out, size_t size) {
  const char *env = getenv("LUASERVE_LUA_DIR");
  if (env && *env) {
    snprintf(out, size, "%s", env);
    return;
  }
  char exe[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  if (n > 0) {
    exe[n] = '\0';
    for (int up = 0; up < 3; up++) {
      char *slash = strrchr(exe, '/');
      if (slash == NULL)
        break;
      *slash = '\0';   /* the folder holding the binary, then its parents */
      snprintf(out, size, "%s/lua/luaserve/init.lua", exe);
      if (access(out, R_OK) == 0) {
        snprintf(out, size, "%s/lua", exe);
        return;
      }
    }
  }
  snprintf(out, size, "%s", LS_LUA_DIR);
}


int main(int argc, char **argv) {
  char lua_dir[PATH_MAX + 32];
  uv_loop_t loop;
  signal(SIGPIPE, SIG_IGN);   /* a client that went away is an error code */
  find_lua_dir(lua_dir, sizeof(lua_dir));
  if (uv_loop_init(&loop) != 0) {
    fprintf(stderr, "luaserve: cannot create the event loop\n");
    return 1;
  }
  ls_runtime_t *rt = ls_runtime_new(&loop, lua_dir);
  if (rt == NULL) {
    fprintf(stderr, "luaserve: out of memory\n");
    return 1;
  }
  int status = ls_runtime_call_main(rt, "luaserve.cli", argc - 1, argv + 1);
  ls_runtime_free(rt);
  ls__log_flush();   /* access lines still buffered */
  return status;
}
