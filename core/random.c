/* random.c: random identifiers for Lua (request ids) and WebSocket masks:
 * xoshiro256** per
 * thread, seeded from the kernel (getrandom) on first use, so ids differ
 * between processes and threads. Not for secrets. */
#include <stdint.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

static __thread uint64_t state[4];
static __thread int seeded;


static uint64_t rotl(uint64_t x, int k) {
  return (x << k) | (x >> (64 - k));
}


static uint64_t next64(void) {
  if (!seeded) {
    if (getrandom(state, sizeof(state), 0) != (ssize_t)sizeof(state)) {
      state[0] = (uint64_t)time(NULL);   /* no kernel entropy: still unique */
      state[1] = (uint64_t)getpid();
      state[2] = (uint64_t)(uintptr_t)&seeded;
      state[3] = 0x9e3779b97f4a7c15ULL;
    }
    seeded = 1;
  }
  uint64_t result = rotl(state[1] * 5, 7) * 9;
  uint64_t t = state[1] << 17;
  state[2] ^= state[0];
  state[3] ^= state[1];
  state[1] ^= state[2];
  state[0] ^= state[3];
  state[2] ^= t;
  state[3] = rotl(state[3], 45);
  return result;
}


void ls__random_bytes(void *buf, size_t len) {
  unsigned char *p = buf;
  while (len > 0) {
    uint64_t v = next64();
    size_t n = len < 8 ? len : 8;
    memcpy(p, &v, n);
    p += n;
    len -= n;
  }
}


/* random_hex(n): 2n random hex digits (n from 1 to 64, default 16). */
int ls__lua_random_hex(lua_State *L) {
  static const char digits[] = "0123456789abcdef";
  int n = (int)luaL_optinteger(L, 1, 16);
  char out[128];
  if (n < 1 || n > 64)
    return luaL_argerror(L, 1, "from 1 to 64 bytes");
  for (int i = 0; i < n; i += 8) {
    uint64_t v = next64();
    for (int k = 0; k < 8 && i + k < n; k++, v >>= 8) {
      out[2 * (i + k)] = digits[(v >> 4) & 15];
      out[2 * (i + k) + 1] = digits[v & 15];
    }
  }
  lua_pushlstring(L, out, (size_t)(2 * n));
  return 1;
}
