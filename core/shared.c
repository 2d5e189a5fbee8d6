/* shared.c: luaserve.shared for Lua: one dictionary that every Lua state
 * of every worker process sees (the main state and each pool thread's),
 * kept in the shared-memory region (shmdict.c). Keys are strings; values
 * are copies in copy.c's format (numbers are kept as numbers, for incr).
 * Every operation prepares what it stores before taking the lock and
 * copies what it reads out under it, so no Lua call and nothing that can
 * raise happens while the lock is held (a Lua allocation can run a
 * finalizer that uses the dictionary again; an error would leave the lock
 * held).
 *
 * Size: --shared-size bounds the bytes of entries (their headers, keys and
 * values). A set that does not fit makes room: expired entries first, then
 * the least recently used ones (reads count as use); safe_set and safe_add
 * never evict a live entry and answer "shared dictionary full" instead.
 * Expiry uses uv_hrtime (CLOCK_MONOTONIC: one clock for every process). */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define LS__SHARED_MAX_KEY 65535
#define SMALL_VALUE 512   /* values up to this are decoded from the C stack */

static const ls_copy_ctx_t value_ctx = {
  "value", 0, "cannot be stored in luaserve.shared"
};


/* The dictionary (making the region on first use); raises on failure. */
static ls_dict_t *check_dict(lua_State *L) {
  ls_runtime_t *rt = ls__runtime(L);
  if (rt->shared)
    return rt->shared;
  ls_shm_t *h = ls__shm();
  if (h == NULL)
    luaL_error(L, "luaserve.shared: cannot map the shared memory");
  rt->shared = ls__shm_dict(h);
  return rt->shared;
}


void ls__shared_release(ls_runtime_t *rt) {
  rt->shared = NULL;   /* the region lives as long as the process */
}


static void lock(ls_dict_t *d) {
  ls__dict_lock(d);   /* a dead owner's lock comes back repaired */
}


static uint64_t expiry(lua_State *L, int idx, uint64_t now) {
  double ttl = luaL_optnumber(L, idx, 0);
  if (ttl < 0 || ttl != ttl)
    luaL_argerror(L, idx, "ttl must be a number of seconds >= 0");
  if (ttl == 0)
    return 0;
  return now + (uint64_t)(ttl * 1e9) + 1;
}


/* A value to store, prepared outside the lock. */
typedef struct {
  ls_dict_value_t v;
  ls_buf_t buf;
} value_t;


/* Encode the value at idx; raises (nothing allocated) if it cannot be
 * stored. */
static void prepare_value(lua_State *L, int idx, value_t *v) {
  memset(v, 0, sizeof(*v));
  if (lua_type(L, idx) == LUA_TNUMBER) {
    v->v.is_num = 1;
    v->v.num = lua_tonumber(L, idx);
    return;
  }
  char err[512];
  int r = ls__copy_encode(L, idx, 1, &v->buf, &value_ctx, err, sizeof(err));
  if (r) {
    ls__buf_free(&v->buf);
    lua_pushstring(L, err);
    lua_error(L);
  }
  v->v.data = v->buf.data;
  v->v.len = v->buf.len;
}


static const char *check_key(lua_State *L, size_t *n, uint32_t *h) {
  const char *k = luaL_checklstring(L, 1, n);
  if (*n > LS__SHARED_MAX_KEY)
    luaL_argerror(L, 1, "key longer than 65535 bytes");
  *h = ls__dict_hash(k, *n);
  return k;
}


/* set/add/safe_set/safe_add: flags LS_DICT_ADD, LS_DICT_NO_EVICT. */
static int store(lua_State *L, int flags) {
  size_t n;
  uint32_t h;
  const char *k = check_key(L, &n, &h);
  ls_dict_t *d = check_dict(L);
  uint64_t now = uv_hrtime();
  uint64_t exp = expiry(L, 3, now);
  if (lua_isnoneornil(L, 2) && !(flags & LS_DICT_ADD)) {   /* set(k, nil) */
    lock(d);
    ls__dict_delete(d, k, n, h);
    ls__dict_unlock(d);
    lua_pushboolean(L, 1);
    return 1;
  }
  if (lua_isnoneornil(L, 2))
    return luaL_argerror(L, 2, "add: the value must not be nil");
  value_t v;
  prepare_value(L, 2, &v);
  lock(d);
  int r = ls__dict_store(d, k, n, h, &v.v, exp, now, flags);
  ls__dict_unlock(d);
  ls__buf_free(&v.buf);
  if (r == UV_EEXIST) {
    lua_pushnil(L);
    lua_pushliteral(L, "exists");
    return 2;
  }
  if (r)
    return ls__push_error(L, r);
  lua_pushboolean(L, 1);
  return 1;
}


/* shared_set(key, value, ttl): true; to make room, expired entries and
 * then the least recently used ones are evicted (nil, "shared dictionary
 * full" only for a value bigger than the whole dictionary). A nil value
 * deletes. ttl in seconds; 0 or nil: no expiry. */
int ls__lua_shared_set(lua_State *L) {
  return store(L, 0);
}


/* shared_add(key, value, ttl): like set, but nil, "exists" if present. */
int ls__lua_shared_add(lua_State *L) {
  return store(L, LS_DICT_ADD);
}


/* shared_safe_set(key, value, ttl): like set, but evicts no live entry:
 * nil, "shared dictionary full" when it does not fit. */
int ls__lua_shared_safe_set(lua_State *L) {
  return store(L, LS_DICT_NO_EVICT);
}


/* shared_safe_add(key, value, ttl): add without evicting. */
int ls__lua_shared_safe_add(lua_State *L) {
  return store(L, LS_DICT_ADD | LS_DICT_NO_EVICT);
}


/* shared_get(key): a copy of the value, or nil. */
int ls__lua_shared_get(lua_State *L) {
  size_t n;
  uint32_t h;
  const char *k = check_key(L, &n, &h);
  ls_dict_t *d = check_dict(L);
  char small[SMALL_VALUE];
  char *copy = NULL;
  ls_dict_value_t v;
  int found = 0;
  lock(d);
  void *e = ls__dict_find(d, k, n, h, uv_hrtime(), 1);
  if (e) {
    found = 1;
    ls__dict_entry(e, &v, NULL);
    if (!v.is_num) {
      /* Copy out under the lock, decode after it: decoding allocates,
       * and an allocation can run a finalizer that uses the dictionary. */
      copy = v.len <= sizeof(small) ? small : malloc(v.len);
      if (copy)
        memcpy(copy, v.data, v.len);
    }
  }
  ls__dict_unlock(d);
  if (!found) {
    lua_pushnil(L);
    return 1;
  }
  if (v.is_num) {
    lua_pushnumber(L, v.num);
    return 1;
  }
  if (copy == NULL)
    return luaL_error(L, "luaserve.shared: out of memory");
  const char *src = copy;
  if (copy != small) {   /* move it into memory Lua collects */
    char *ud = lua_newuserdata(L, v.len);
    memcpy(ud, copy, v.len);
    free(copy);
    src = ud;
  }
  int m;
  if (ls__copy_decode(L, src, v.len, &m) != 0 || m != 1)
    return luaL_error(L, "luaserve.shared: a stored value is malformed");
  return 1;
}


/* shared_incr(key, by, init, init_ttl): the new number, atomically across
 * every thread and process. A missing key starts at init (nil, "not found"
 * without one); a value that is not a number gives nil, "not a number". */
int ls__lua_shared_incr(lua_State *L) {
  size_t n;
  uint32_t h;
  const char *k = check_key(L, &n, &h);
  double by = luaL_optnumber(L, 2, 1);
  int has_init = !lua_isnoneornil(L, 3);
  double init = has_init ? luaL_checknumber(L, 3) : 0;
  ls_dict_t *d = check_dict(L);
  uint64_t now = uv_hrtime();
  uint64_t exp = expiry(L, 4, now);
  const char *fail = NULL;
  double result = 0;
  int r = 0;
  lock(d);
  void *e = ls__dict_find(d, k, n, h, now, 1);
  if (e) {
    ls_dict_value_t v;
    ls__dict_entry(e, &v, NULL);
    if (!v.is_num) {
      fail = "not a number";
    } else {
      ls__dict_add_num(e, by);
      result = v.num + by;
    }
  } else if (!has_init) {
    fail = "not found";
  } else {
    ls_dict_value_t v = {1, init + by, NULL, 0};
    result = v.num;
    r = ls__dict_store(d, k, n, h, &v, exp, now, 0);
  }
  ls__dict_unlock(d);
  if (r)
    return ls__push_error(L, r);
  if (fail) {
    lua_pushnil(L);
    lua_pushstring(L, fail);
    return 2;
  }
  lua_pushnumber(L, result);
  return 1;
}


/* shared_delete(key): true. */
int ls__lua_shared_delete(lua_State *L) {
  lua_settop(L, 1);
  lua_pushnil(L);
  return store(L, 0);
}


/* shared_ttl(key): seconds left (0: no expiry), or nil, "not found". */
int ls__lua_shared_ttl(lua_State *L) {
  size_t n;
  uint32_t h;
  const char *k = check_key(L, &n, &h);
  ls_dict_t *d = check_dict(L);
  uint64_t now = uv_hrtime(), expires = 0;
  int found = 0;
  lock(d);
  void *e = ls__dict_find(d, k, n, h, now, 0);
  if (e) {
    ls_dict_value_t v;
    found = 1;
    ls__dict_entry(e, &v, &expires);
  }
  ls__dict_unlock(d);
  if (!found) {
    lua_pushnil(L);
    lua_pushliteral(L, "not found");
    return 2;
  }
  lua_pushnumber(L, expires ? (double)(expires - now) / 1e9 : 0);
  return 1;
}


typedef struct {
  ls_buf_t names;           /* u32 length + bytes, one by one */
  size_t count, max;
  int oom;
} keys_t;


static int add_key(void *arg, const char *k, size_t n) {
  keys_t *ks = arg;
  uint32_t kl = (uint32_t)n;
  if (ls__buf_append(&ks->names, (const char *)&kl, 4) ||
      ls__buf_append(&ks->names, k, n)) {
    ks->oom = 1;
    return 1;
  }
  return ++ks->count == ks->max;
}


/* shared_keys(max): a list of the live keys (at most max; 0 or nil: all),
 * most recently used first. */
int ls__lua_shared_keys(lua_State *L) {
  keys_t ks = {{NULL, 0, 0}, 0, (size_t)luaL_optinteger(L, 1, 0), 0};
  ls_dict_t *d = check_dict(L);
  lock(d);
  ls__dict_each(d, uv_hrtime(), add_key, &ks);
  ls__dict_unlock(d);
  if (ks.oom) {
    ls__buf_free(&ks.names);
    return luaL_error(L, "luaserve.shared: out of memory");
  }
  /* Pushing allocates and may raise: move the names into a userdata. */
  char *p = ks.names.len ? lua_newuserdata(L, ks.names.len) : NULL;
  if (p)
    memcpy(p, ks.names.data, ks.names.len);
  size_t len = ks.names.len;
  ls__buf_free(&ks.names);
  lua_createtable(L, (int)ks.count, 0);
  size_t off = 0;
  for (size_t i = 1; off < len; i++) {
    uint32_t kl;
    memcpy(&kl, p + off, 4);
    lua_pushlstring(L, p + off + 4, kl);
    lua_rawseti(L, -2, (int)i);
    off += 4 + kl;
  }
  return 1;
}


/* shared_flush_all(): delete every key. */
int ls__lua_shared_flush_all(lua_State *L) {
  ls_dict_t *d = check_dict(L);
  lock(d);
  ls__dict_flush(d);
  ls__dict_unlock(d);
  return 0;
}


/* shared_stats(): { count, bytes, capacity, evicted, repairs } (bytes
 * counted as for the capacity: entry headers, keys and values). */
int ls__lua_shared_stats(lua_State *L) {
  ls_dict_t *d = check_dict(L);
  ls_dict_stats_t st;
  lock(d);
  ls__dict_sweep(d, uv_hrtime());
  ls__dict_stats(d, &st);
  ls__dict_unlock(d);
  lua_createtable(L, 0, 5);
  lua_pushnumber(L, (double)st.count);
  lua_setfield(L, -2, "count");
  lua_pushnumber(L, (double)st.bytes);
  lua_setfield(L, -2, "bytes");
  lua_pushnumber(L, (double)st.capacity);
  lua_setfield(L, -2, "capacity");
  lua_pushnumber(L, (double)st.evicted);
  lua_setfield(L, -2, "evicted");
  lua_pushnumber(L, (double)st.repairs);
  lua_setfield(L, -2, "repairs");
  return 1;
}


/* shared_verify(): true, or nil and what is wrong with the structure
 * (for specs: every link, size and count checked). */
int ls__lua_shared_verify(lua_State *L) {
  ls_dict_t *d = check_dict(L);
  char buf[256];
  lock(d);
  const char *why = ls__dict_verify(d, buf, sizeof(buf));
  ls__dict_unlock(d);
  if (why) {
    lua_pushnil(L);
    lua_pushstring(L, why);
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}


/* shared_configure(capacity): the size bound in bytes (from --shared-size).
 * Before the region is made it sets the dictionary's size; after, it
 * changes the bound, up to the size it was made with. */
int ls__lua_shared_configure(lua_State *L) {
  double cap = luaL_checknumber(L, 1);
  luaL_argcheck(L, cap >= 1024, 1, "capacity must be at least 1024 bytes");
  if (ls__shm_set_default_dict((size_t)cap)) {
    ls_dict_t *d = check_dict(L);
    lock(d);
    ls__dict_set_capacity(d, (uint64_t)cap);
    ls__dict_unlock(d);
  }
  return 0;
}
