/* shared.c: luaserve.shared, one dictionary for the whole process that
 * every Lua state sees (the main state and each pool thread's). Keys are
 * strings; values are copies in copy.c's format (numbers are kept as
 * numbers, for incr), so the dictionary holds no Lua state and any thread
 * may use it. One mutex guards it: every operation holds it only for a
 * hash look-up and a memcpy, never while calling into Lua (a Lua
 * allocation can run a finalizer that uses the dictionary again).
 *
 * Size: the bytes of keys, values and entry headers are counted against a
 * capacity (shared_configure, --shared-size). A write that does not fit,
 * after expired entries are swept, fails with "shared dictionary full":
 * nothing is evicted behind the user's back. Expiry uses uv_hrtime; expired
 * entries are dropped when met and when space is needed. */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define LS__SHARED_DEFAULT_CAPACITY (64u * 1024 * 1024)
#define LS__SHARED_MAX_KEY 65535
#define SMALL_VALUE 512   /* values up to this are decoded from the C stack */

typedef struct entry_s {
  struct entry_s *next;     /* the bucket's chain */
  uint64_t expires;         /* uv_hrtime() ns; 0: never */
  uint32_t hash;
  uint32_t klen;
  int is_num;               /* a number, kept in num; else the value in val */
  double num;
  char *val;                /* copy format, malloc'd */
  size_t vlen;
  char key[];
} entry_t;

typedef struct {
  uv_mutex_t lock;          /* every field below */
  entry_t **buckets;
  size_t nbuckets;          /* a power of two */
  size_t count;
  size_t bytes;             /* counted against capacity */
  size_t capacity;
} dict_t;

/* The process's dictionary, created on first use, freed when the last
 * runtime that used it is freed. dict_mutex guards the pointer and refs. */
static dict_t *dict;
static int dict_refs;
static size_t dict_capacity = LS__SHARED_DEFAULT_CAPACITY;
static uv_mutex_t dict_mutex;
static uv_once_t dict_once = UV_ONCE_INIT;

static const ls_copy_ctx_t value_ctx = {
  "value", 0, "cannot be stored in luaserve.shared"
};


static void dict_mutex_init(void) {
  uv_mutex_init(&dict_mutex);
}


static size_t entry_size(const entry_t *e) {
  return sizeof(*e) + e->klen + e->vlen;
}


static void entry_free(entry_t *e) {
  free(e->val);
  free(e);
}


/* The dictionary for this runtime (creating it); NULL on out of memory.
 * Loop thread of rt. */
static dict_t *get_dict(lua_State *L) {
  ls_runtime_t *rt = ls__runtime(L);
  if (rt->shared)
    return rt->shared;
  uv_once(&dict_once, dict_mutex_init);
  uv_mutex_lock(&dict_mutex);
  if (dict == NULL) {
    dict_t *d = calloc(1, sizeof(*d));
    if (d)
      d->buckets = calloc(64, sizeof(entry_t *));
    if (d == NULL || d->buckets == NULL || uv_mutex_init(&d->lock) != 0) {
      if (d)
        free(d->buckets);
      free(d);
      uv_mutex_unlock(&dict_mutex);
      return NULL;
    }
    d->nbuckets = 64;
    d->capacity = dict_capacity;
    dict = d;
  }
  dict_refs++;
  rt->shared = dict;
  uv_mutex_unlock(&dict_mutex);
  return rt->shared;
}


void ls__shared_release(ls_runtime_t *rt) {
  if (rt->shared == NULL)
    return;
  rt->shared = NULL;
  uv_mutex_lock(&dict_mutex);
  if (--dict_refs == 0) {
    dict_t *d = dict;
    dict = NULL;
    for (size_t i = 0; i < d->nbuckets; i++) {
      entry_t *e = d->buckets[i], *next;
      for (; e; e = next) {
        next = e->next;
        entry_free(e);
      }
    }
    free(d->buckets);
    uv_mutex_destroy(&d->lock);
    free(d);
  }
  uv_mutex_unlock(&dict_mutex);
}


static uint32_t hash_key(const char *k, size_t n) {
  uint32_t h = 2166136261u;   /* FNV-1a */
  for (size_t i = 0; i < n; i++) {
    h ^= (unsigned char)k[i];
    h *= 16777619u;
  }
  return h;
}


static int expired(const entry_t *e, uint64_t now) {
  return e->expires != 0 && e->expires <= now;
}


/* Unlink *pp (lock held). */
static void unlink_entry(dict_t *d, entry_t **pp) {
  entry_t *e = *pp;
  *pp = e->next;
  d->count--;
  d->bytes -= entry_size(e);
  entry_free(e);
}


/* The link that points at key's entry (live or expired), or at the end of
 * its chain. Lock held. */
static entry_t **find(dict_t *d, const char *k, size_t n, uint32_t h) {
  entry_t **pp = &d->buckets[h & (d->nbuckets - 1)];
  for (; *pp; pp = &(*pp)->next)
    if ((*pp)->hash == h && (*pp)->klen == n && memcmp((*pp)->key, k, n) == 0)
      return pp;
  return pp;
}


/* key's live entry or NULL; an expired one is dropped. Lock held. */
static entry_t *find_live(dict_t *d, const char *k, size_t n, uint32_t h,
                          uint64_t now, entry_t ***where) {
  entry_t **pp = find(d, k, n, h);
  if (*pp && expired(*pp, now))
    unlink_entry(d, pp);
  if (where)
    *where = pp;
  return *pp;
}


/* Drop every expired entry (lock held). */
static void sweep(dict_t *d, uint64_t now) {
  for (size_t i = 0; i < d->nbuckets; i++) {
    entry_t **pp = &d->buckets[i];
    while (*pp) {
      if (expired(*pp, now))
        unlink_entry(d, pp);
      else
        pp = &(*pp)->next;
    }
  }
}


/* Double the buckets when the chains grow long (lock held; on out of
 * memory the table just stays as it is). */
static void maybe_grow(dict_t *d) {
  if (d->count < d->nbuckets)
    return;
  size_t n = d->nbuckets * 2;
  entry_t **b = calloc(n, sizeof(entry_t *));
  if (b == NULL)
    return;
  for (size_t i = 0; i < d->nbuckets; i++) {
    entry_t *e = d->buckets[i], *next;
    for (; e; e = next) {
      next = e->next;
      e->next = b[e->hash & (n - 1)];
      b[e->hash & (n - 1)] = e;
    }
  }
  free(d->buckets);
  d->buckets = b;
  d->nbuckets = n;
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
  int is_num;
  double num;
  ls_buf_t buf;
} value_t;


/* Encode the value at idx; raises (nothing allocated) if it cannot be
 * stored. */
static void prepare_value(lua_State *L, int idx, value_t *v) {
  memset(v, 0, sizeof(*v));
  if (lua_type(L, idx) == LUA_TNUMBER) {
    v->is_num = 1;
    v->num = lua_tonumber(L, idx);
    return;
  }
  char err[512];
  int r = ls__copy_encode(L, idx, 1, &v->buf, &value_ctx, err, sizeof(err));
  if (r) {
    ls__buf_free(&v->buf);
    lua_pushstring(L, err);
    lua_error(L);
  }
  if (v->buf.cap > v->buf.len + 64) {   /* do not keep the slack */
    char *p = realloc(v->buf.data, v->buf.len);
    if (p) {
      v->buf.data = p;
      v->buf.cap = v->buf.len;
    }
  }
}


/* Put key = v (taking v's buffer) where pp points, replacing what is
 * there. Returns 0 or LS_ESHAREDFULL / UV_ENOMEM. Lock held. */
static int store(dict_t *d, entry_t **pp, const char *k, size_t n,
                 uint32_t h, value_t *v, uint64_t expires, uint64_t now) {
  size_t need = sizeof(entry_t) + n + (v->is_num ? 0 : v->buf.len);
  size_t old = *pp ? entry_size(*pp) : 0;
  if (need > old && d->bytes + (need - old) > d->capacity) {
    sweep(d, now);
    pp = find(d, k, n, h);   /* the sweep may have freed *pp */
    old = *pp ? entry_size(*pp) : 0;
    if (need > old && d->bytes + (need - old) > d->capacity)
      return LS_ESHAREDFULL;
  }
  entry_t *e = malloc(sizeof(*e) + n);
  if (e == NULL)
    return UV_ENOMEM;
  memcpy(e->key, k, n);
  e->klen = (uint32_t)n;
  e->hash = h;
  e->expires = expires;
  e->is_num = v->is_num;
  e->num = v->num;
  e->val = v->is_num ? NULL : v->buf.data;
  e->vlen = v->is_num ? 0 : v->buf.len;
  v->buf.data = NULL;
  v->buf.len = v->buf.cap = 0;
  if (*pp) {
    e->next = (*pp)->next;
    d->bytes -= entry_size(*pp);
    entry_free(*pp);
    *pp = e;
  } else {
    e->next = NULL;
    *pp = e;
    d->count++;
  }
  d->bytes += entry_size(e);
  maybe_grow(d);
  return 0;
}


static const char *check_key(lua_State *L, size_t *n, uint32_t *h) {
  const char *k = luaL_checklstring(L, 1, n);
  if (*n > LS__SHARED_MAX_KEY)
    luaL_argerror(L, 1, "key longer than 65535 bytes");
  *h = hash_key(k, *n);
  return k;
}


static dict_t *check_dict(lua_State *L) {
  dict_t *d = get_dict(L);
  if (d == NULL)
    luaL_error(L, "luaserve.shared: out of memory");
  return d;
}


/* set/add: 1 set, 2 add (only if absent). */
static int set_or_add(lua_State *L, int add) {
  size_t n;
  uint32_t h;
  const char *k = check_key(L, &n, &h);
  dict_t *d = check_dict(L);
  uint64_t now = uv_hrtime();
  uint64_t exp = expiry(L, 3, now);
  if (lua_isnoneornil(L, 2) && !add) {   /* set(key, nil): delete */
    uv_mutex_lock(&d->lock);
    entry_t **pp = find(d, k, n, h);
    if (*pp)
      unlink_entry(d, pp);
    uv_mutex_unlock(&d->lock);
    lua_pushboolean(L, 1);
    return 1;
  }
  if (lua_isnoneornil(L, 2))
    return luaL_argerror(L, 2, "add: the value must not be nil");
  value_t v;
  prepare_value(L, 2, &v);
  uv_mutex_lock(&d->lock);
  entry_t **pp;
  int r = 0;
  if (find_live(d, k, n, h, now, &pp) && add)
    r = UV_EEXIST;
  else
    r = store(d, pp, k, n, h, &v, exp, now);
  uv_mutex_unlock(&d->lock);
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


/* shared_set(key, value, ttl): true, or nil, "shared dictionary full".
 * A nil value deletes. ttl in seconds; 0 or nil: no expiry. */
int ls__lua_shared_set(lua_State *L) {
  return set_or_add(L, 0);
}


/* shared_add(key, value, ttl): like set, but nil, "exists" if present. */
int ls__lua_shared_add(lua_State *L) {
  return set_or_add(L, 1);
}


/* shared_get(key): a copy of the value, or nil. */
int ls__lua_shared_get(lua_State *L) {
  size_t n;
  uint32_t h;
  const char *k = check_key(L, &n, &h);
  dict_t *d = check_dict(L);
  char small[SMALL_VALUE];
  char *copy = NULL;
  size_t vlen = 0;
  int found = 0, is_num = 0;
  double num = 0;
  uv_mutex_lock(&d->lock);
  entry_t *e = find_live(d, k, n, h, uv_hrtime(), NULL);
  if (e) {
    found = 1;
    is_num = e->is_num;
    num = e->num;
    vlen = e->vlen;
    if (!is_num) {
      /* Copy out under the lock, decode after it: decoding allocates,
       * and an allocation can run a finalizer that uses the dictionary. */
      copy = vlen <= sizeof(small) ? small : malloc(vlen);
      if (copy)
        memcpy(copy, e->val, vlen);
    }
  }
  uv_mutex_unlock(&d->lock);
  if (!found) {
    lua_pushnil(L);
    return 1;
  }
  if (is_num) {
    lua_pushnumber(L, num);
    return 1;
  }
  if (copy == NULL)
    return luaL_error(L, "luaserve.shared: out of memory");
  const char *src = copy;
  if (copy != small) {   /* move it into memory Lua collects */
    char *ud = lua_newuserdata(L, vlen);
    memcpy(ud, copy, vlen);
    free(copy);
    src = ud;
  }
  int m;
  if (ls__copy_decode(L, src, vlen, &m) != 0 || m != 1)
    return luaL_error(L, "luaserve.shared: a stored value is malformed");
  return 1;
}


/* shared_incr(key, by, init, init_ttl): the new number. A missing key
 * starts at init (nil, "not found" without one); a value that is not a
 * number gives nil, "not a number". */
int ls__lua_shared_incr(lua_State *L) {
  size_t n;
  uint32_t h;
  const char *k = check_key(L, &n, &h);
  double by = luaL_optnumber(L, 2, 1);
  int has_init = !lua_isnoneornil(L, 3);
  double init = has_init ? luaL_checknumber(L, 3) : 0;
  dict_t *d = check_dict(L);
  uint64_t now = uv_hrtime();
  uint64_t exp = expiry(L, 4, now);
  const char *fail = NULL;
  double result = 0;
  int r = 0;
  uv_mutex_lock(&d->lock);
  entry_t **pp;
  entry_t *e = find_live(d, k, n, h, now, &pp);
  if (e && !e->is_num) {
    fail = "not a number";
  } else if (e) {
    e->num += by;
    result = e->num;
  } else if (!has_init) {
    fail = "not found";
  } else {
    value_t v = {1, init + by, {NULL, 0, 0}};
    result = v.num;
    r = store(d, pp, k, n, h, &v, exp, now);
  }
  uv_mutex_unlock(&d->lock);
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
  return set_or_add(L, 0);
}


/* shared_ttl(key): seconds left (0: no expiry), or nil, "not found". */
int ls__lua_shared_ttl(lua_State *L) {
  size_t n;
  uint32_t h;
  const char *k = check_key(L, &n, &h);
  dict_t *d = check_dict(L);
  uint64_t now = uv_hrtime();
  int found = 0;
  double left = 0;
  uv_mutex_lock(&d->lock);
  entry_t *e = find_live(d, k, n, h, now, NULL);
  if (e) {
    found = 1;
    left = e->expires ? (double)(e->expires - now) / 1e9 : 0;
  }
  uv_mutex_unlock(&d->lock);
  if (!found) {
    lua_pushnil(L);
    lua_pushliteral(L, "not found");
    return 2;
  }
  lua_pushnumber(L, left);
  return 1;
}


/* shared_keys(max): a list of the live keys (at most max; 0 or nil: all),
 * in no particular order. */
int ls__lua_shared_keys(lua_State *L) {
  size_t max = (size_t)luaL_optinteger(L, 1, 0);
  dict_t *d = check_dict(L);
  ls_buf_t names = {NULL, 0, 0};   /* u32 length + bytes, one by one */
  size_t count = 0;
  int oom = 0;
  uint64_t now = uv_hrtime();
  uv_mutex_lock(&d->lock);
  for (size_t i = 0; i < d->nbuckets && !oom; i++) {
    for (entry_t *e = d->buckets[i]; e && !oom; e = e->next) {
      if (expired(e, now) || (max && count >= max))
        continue;
      uint32_t kl = e->klen;
      oom = ls__buf_append(&names, (const char *)&kl, 4) ||
            ls__buf_append(&names, e->key, kl);
      count++;
    }
  }
  uv_mutex_unlock(&d->lock);
  if (oom) {
    ls__buf_free(&names);
    return luaL_error(L, "luaserve.shared: out of memory");
  }
  /* Pushing allocates and may raise: move the names into a userdata. */
  char *p = names.len ? lua_newuserdata(L, names.len) : NULL;
  if (p)
    memcpy(p, names.data, names.len);
  size_t len = names.len;
  ls__buf_free(&names);
  lua_createtable(L, (int)count, 0);
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
  dict_t *d = check_dict(L);
  uv_mutex_lock(&d->lock);
  for (size_t i = 0; i < d->nbuckets; i++)
    while (d->buckets[i])
      unlink_entry(d, &d->buckets[i]);
  uv_mutex_unlock(&d->lock);
  return 0;
}


/* shared_stats(): { count, bytes, capacity } (bytes counted as for the
 * capacity: keys, values and a fixed header per entry). */
int ls__lua_shared_stats(lua_State *L) {
  dict_t *d = check_dict(L);
  uv_mutex_lock(&d->lock);
  sweep(d, uv_hrtime());
  double count = (double)d->count, bytes = (double)d->bytes;
  double cap = (double)d->capacity;
  uv_mutex_unlock(&d->lock);
  lua_createtable(L, 0, 3);
  lua_pushnumber(L, count);
  lua_setfield(L, -2, "count");
  lua_pushnumber(L, bytes);
  lua_setfield(L, -2, "bytes");
  lua_pushnumber(L, cap);
  lua_setfield(L, -2, "capacity");
  return 1;
}


/* shared_configure(capacity): the size bound in bytes (from --shared-size);
 * applies now if the dictionary exists, else when it is created. */
int ls__lua_shared_configure(lua_State *L) {
  double cap = luaL_checknumber(L, 1);
  luaL_argcheck(L, cap >= 1024, 1, "capacity must be at least 1024 bytes");
  uv_once(&dict_once, dict_mutex_init);
  uv_mutex_lock(&dict_mutex);
  dict_capacity = (size_t)cap;
  if (dict) {
    uv_mutex_lock(&dict->lock);
    dict->capacity = dict_capacity;
    uv_mutex_unlock(&dict->lock);
  }
  uv_mutex_unlock(&dict_mutex);
  return 0;
}
