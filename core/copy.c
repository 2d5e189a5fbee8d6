/* copy.c: values that cross between Lua states, by copy, through a flat
 * malloc'd buffer in a small binary format (no JSON round trip).
 *
 * Two states owned by two threads can never be touched at the same time, so
 * a value does not go from one state straight into the other: the sending
 * thread encodes it into a buffer that belongs to neither state, the
 * receiving thread decodes it. The shared dictionary keeps values in the
 * same format, so it holds no Lua state at all.
 *
 * What crosses: nil, booleans, numbers, strings, the JSON null (cjson.null,
 * a NULL light userdata) and tables of those with string, number or boolean
 * keys, nested up to LS__COPY_MAX_DEPTH. A table reached twice is copied
 * once and stays shared in the copy; a table that contains itself (a cycle)
 * is refused. Metatables do not cross, except the few registered with
 * copy_register (JSON arrays, HTTPError): those are looked up by code in the
 * receiving state. Functions, userdata, threads and other light userdata
 * are refused with a message naming where the value sits:
 * "argument 2.items[3]: function cannot cross into a sync function".
 *
 * Format: u32 value count, u8 flags, then each value: a tag byte and its
 * payload. Tables are 'T', u8 metatable code, u32 array length hint, u32
 * entry count, then count (key, value) pairs; 'r' u32 refers to the n-th
 * table of the buffer (1-based, in the order they start). Numbers are the
 * 8 bytes of a double, in the machine's byte order: buffers never leave
 * the process. */
#include <stdio.h>
#include <string.h>

#include "internal.h"

#define LS__COPY_MAX_DEPTH 100

enum {
  TAG_NIL = 'n', TAG_FALSE = 'f', TAG_TRUE = 't', TAG_NUM = 'd',
  TAG_STR = 's', TAG_NULL = 'z', TAG_TABLE = 'T', TAG_REF = 'r'
};

#define FLAG_REFS 1          /* the buffer has 'r' tags */
#define HEADER_LEN 5

static const char mt_key = 'm';   /* registry: { [mt] = code, [code] = mt } */

/* One step of the way from a root value to the value being encoded. */
typedef struct path_s {
  const struct path_s *up;  /* NULL at a root */
  int key;                  /* stack index of the key; 0 at a root */
  int pos;                  /* at a root: the value's position (1-based) */
} path_t;

typedef struct {
  lua_State *L;
  ls_buf_t *out;
  const ls_copy_ctx_t *ctx;
  int seen;                 /* stack index: table -> id (negative while open) */
  int mts;                  /* stack index of the metatable registry */
  uint32_t next_id;
  int has_refs;
  char *err;
  size_t errlen;
} enc_t;


/* ---- encoding ----------------------------------------------------------- */

static int put(enc_t *e, const void *p, size_t n) {
  return ls__buf_append(e->out, p, n);
}


static int put_byte(enc_t *e, int b) {
  char c = (char)b;
  return put(e, &c, 1);
}


static int put_u32(enc_t *e, uint32_t v) {
  return put(e, &v, 4);
}


/* Append the path of p to s (at most size bytes, NUL-terminated). */
static void format_path(enc_t *e, const path_t *p, char *s, size_t size) {
  const path_t *chain[LS__COPY_MAX_DEPTH + 2];
  int n = 0;
  for (; p && n < (int)(sizeof(chain) / sizeof(chain[0])); p = p->up)
    chain[n++] = p;
  size_t len = 0;
#define ADD(...) do {                                                     \
    if (len < size) {                                                     \
      int k_ = snprintf(s + len, size - len, __VA_ARGS__);                \
      if (k_ > 0) len += (size_t)k_;                                      \
    }                                                                     \
  } while (0)
  for (int i = n - 1; i >= 0; i--) {
    const path_t *q = chain[i];
    if (q->key == 0) {
      if (e->ctx->numbered)
        ADD("%s %d", e->ctx->root, q->pos);
      else
        ADD("%s", e->ctx->root);
      continue;
    }
    lua_State *L = e->L;
    int t = lua_type(L, q->key);
    if (t == LUA_TSTRING) {
      size_t kl;
      const char *k = lua_tolstring(L, q->key, &kl);
      int ident = kl > 0 && kl < 64 && !(k[0] >= '0' && k[0] <= '9');
      for (size_t j = 0; ident && j < kl; j++)
        ident = (k[j] == '_' || (k[j] >= 'a' && k[j] <= 'z') ||
                 (k[j] >= 'A' && k[j] <= 'Z') || (k[j] >= '0' && k[j] <= '9'));
      if (ident)
        ADD(".%s", k);
      else
        ADD("[\"%.40s%s\"]", k, kl > 40 ? "..." : "");
    } else if (t == LUA_TNUMBER) {
      ADD("[%.14g]", lua_tonumber(L, q->key));
    } else if (t == LUA_TBOOLEAN) {
      ADD("[%s]", lua_toboolean(L, q->key) ? "true" : "false");
    } else {
      ADD("[?]");
    }
  }
#undef ADD
  if (len >= size && size > 4)
    memcpy(s + size - 4, "...", 4);
}


/* Note the error "<path>: <what> <verb>"; returns LS_ECOPY. */
static int fail(enc_t *e, const path_t *p, const char *what) {
  if (e->err && e->errlen > 0) {
    char path[400];
    path[0] = '\0';
    format_path(e, p, path, sizeof(path));
    snprintf(e->err, e->errlen, "%s: %s %s", path, what, e->ctx->verb);
  }
  return LS_ECOPY;
}


static int enc_value(enc_t *e, int idx, const path_t *p, int depth);


static int enc_table(enc_t *e, int idx, const path_t *p, int depth) {
  lua_State *L = e->L;
  if (depth >= LS__COPY_MAX_DEPTH)
    return fail(e, p, "a table nested more than 100 deep");
  if (!lua_checkstack(L, 6))
    return fail(e, p, "a table nested too deep for the stack");
  if (e->seen == 0) {
    /* The first table: nothing of ours is above the values yet, so these
     * two can sit at fixed stack slots until the end. */
    lua_newtable(L);
    e->seen = lua_gettop(L);
    lua_pushlightuserdata(L, (void *)&mt_key);
    lua_rawget(L, LUA_REGISTRYINDEX);
    e->mts = lua_gettop(L);
  }
  lua_pushvalue(L, idx);
  lua_rawget(L, e->seen);
  if (!lua_isnil(L, -1)) {
    double id = lua_tonumber(L, -1);
    lua_pop(L, 1);
    if (id < 0)
      return fail(e, p, "a table that contains itself (a cycle)");
    e->has_refs = 1;
    if (put_byte(e, TAG_REF) || put_u32(e, (uint32_t)id))
      return UV_ENOMEM;
    return 0;
  }
  lua_pop(L, 1);
  uint32_t id = ++e->next_id;
  lua_pushvalue(L, idx);
  lua_pushnumber(L, -(double)id);
  lua_rawset(L, e->seen);

  int code = 0;
  if (lua_getmetatable(L, idx)) {
    if (lua_istable(L, e->mts)) {
      lua_rawget(L, e->mts);
      code = (int)lua_tointeger(L, -1);
    }
    lua_pop(L, 1);
  }
  if (put_byte(e, TAG_TABLE) || put_byte(e, code) ||
      put_u32(e, (uint32_t)lua_objlen(L, idx)) || put_u32(e, 0))
    return UV_ENOMEM;
  size_t count_at = e->out->len - 4;
  uint32_t count = 0;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    int k = lua_gettop(L) - 1;
    path_t kp = {p, k, 0};
    int kt = lua_type(L, k);
    if (kt != LUA_TSTRING && kt != LUA_TNUMBER && kt != LUA_TBOOLEAN) {
      char what[64];
      snprintf(what, sizeof(what), "a table key of type %s",
               lua_typename(L, kt));
      return fail(e, p, what);
    }
    int r = enc_value(e, k, p, depth + 1);
    if (r == 0)
      r = enc_value(e, k + 1, &kp, depth + 1);
    if (r)
      return r;
    lua_pop(L, 1);
    count++;
  }
  memcpy(e->out->data + count_at, &count, 4);
  lua_pushvalue(L, idx);
  lua_pushnumber(L, (double)id);
  lua_rawset(L, e->seen);
  return 0;
}


static int enc_value(enc_t *e, int idx, const path_t *p, int depth) {
  lua_State *L = e->L;
  switch (lua_type(L, idx)) {
  case LUA_TNIL:
    return put_byte(e, TAG_NIL);
  case LUA_TBOOLEAN:
    return put_byte(e, lua_toboolean(L, idx) ? TAG_TRUE : TAG_FALSE);
  case LUA_TNUMBER: {
    double d = lua_tonumber(L, idx);
    if (put_byte(e, TAG_NUM))
      return UV_ENOMEM;
    return put(e, &d, sizeof(d));
  }
  case LUA_TSTRING: {
    size_t n;
    const char *s = lua_tolstring(L, idx, &n);
    if (n > UINT32_MAX)
      return fail(e, p, "a string over 4 GB");
    if (put_byte(e, TAG_STR) || put_u32(e, (uint32_t)n))
      return UV_ENOMEM;
    return put(e, s, n);
  }
  case LUA_TLIGHTUSERDATA:
    if (lua_touserdata(L, idx) == NULL)   /* cjson.null, luaserve.null */
      return put_byte(e, TAG_NULL);
    return fail(e, p, "light userdata");
  case LUA_TTABLE:
    return enc_table(e, idx, p, depth);
  default:
    return fail(e, p, lua_typename(L, lua_type(L, idx)));
  }
}


int ls__copy_encode(lua_State *L, int first, int n, ls_buf_t *out,
                    const ls_copy_ctx_t *ctx, char *err, size_t errlen) {
  int base = lua_gettop(L);
  size_t start = out->len;
  enc_t e = {L, out, ctx, 0, 0, 0, 0, err, errlen};
  uint32_t count = (uint32_t)n;
  char flags = 0;
  int r = 0;
  if (first < 0)
    first = base + first + 1;
  if (put(&e, &count, 4) || put(&e, &flags, 1))
    r = UV_ENOMEM;
  for (int i = 0; i < n && r == 0; i++) {
    path_t root = {NULL, 0, i + 1};
    r = enc_value(&e, first + i, &root, 0);
  }
  lua_settop(L, base);
  if (r) {
    if (r == UV_ENOMEM && err && errlen)
      snprintf(err, errlen, "out of memory");
    out->len = start;
    return r;
  }
  if (e.has_refs)
    out->data[start + 4] = FLAG_REFS;
  return 0;
}


/* ---- decoding ----------------------------------------------------------- */

typedef struct {
  lua_State *L;
  const unsigned char *p, *end;
  int refs;                 /* stack index: id -> table, or 0 */
  int mts;                  /* stack index of the metatable registry, or 0 */
  uint32_t next_id;
} dec_t;


static int get_u32(dec_t *d, uint32_t *v) {
  if (d->end - d->p < 4)
    return LS_ECOPY;
  memcpy(v, d->p, 4);
  d->p += 4;
  return 0;
}


static int dec_value(dec_t *d, int depth) {
  lua_State *L = d->L;
  if (d->p >= d->end || depth > LS__COPY_MAX_DEPTH || !lua_checkstack(L, 4))
    return LS_ECOPY;
  int tag = *d->p++;
  switch (tag) {
  case TAG_NIL: lua_pushnil(L); return 0;
  case TAG_FALSE: lua_pushboolean(L, 0); return 0;
  case TAG_TRUE: lua_pushboolean(L, 1); return 0;
  case TAG_NULL: lua_pushlightuserdata(L, NULL); return 0;
  case TAG_NUM: {
    double v;
    if (d->end - d->p < (ptrdiff_t)sizeof(v))
      return LS_ECOPY;
    memcpy(&v, d->p, sizeof(v));
    d->p += sizeof(v);
    lua_pushnumber(L, v);
    return 0;
  }
  case TAG_STR: {
    uint32_t n;
    if (get_u32(d, &n) || (size_t)(d->end - d->p) < n)
      return LS_ECOPY;
    lua_pushlstring(L, (const char *)d->p, n);
    d->p += n;
    return 0;
  }
  case TAG_REF: {
    uint32_t id;
    if (get_u32(d, &id) || d->refs == 0 || id == 0 || id > d->next_id)
      return LS_ECOPY;
    lua_rawgeti(L, d->refs, (int)id);
    return 0;
  }
  case TAG_TABLE: {
    uint32_t narr, count;
    if (d->p >= d->end)
      return LS_ECOPY;
    int code = *d->p++;
    if (get_u32(d, &narr) || get_u32(d, &count))
      return LS_ECOPY;
    if ((size_t)(d->end - d->p) < (size_t)count * 2)   /* 2 tags a pair */
      return LS_ECOPY;
    if (narr > count)
      narr = count;
    lua_createtable(L, (int)narr, (int)(count - narr));
    uint32_t id = ++d->next_id;
    if (d->refs) {
      lua_pushvalue(L, -1);
      lua_rawseti(L, d->refs, (int)id);
    }
    for (uint32_t i = 0; i < count; i++) {
      if (dec_value(d, depth + 1) || dec_value(d, depth + 1))
        return LS_ECOPY;
      if (lua_isnil(L, -2))
        return LS_ECOPY;
      lua_rawset(L, -3);
    }
    if (code != 0 && d->mts) {
      lua_rawgeti(L, d->mts, code);
      if (lua_istable(L, -1))
        lua_setmetatable(L, -2);
      else
        lua_pop(L, 1);
    }
    return 0;
  }
  default:
    return LS_ECOPY;
  }
}


int ls__copy_decode(lua_State *L, const char *data, size_t len, int *n) {
  int base = lua_gettop(L);
  uint32_t count;
  *n = 0;
  if (len < HEADER_LEN)
    return LS_ECOPY;
  memcpy(&count, data, 4);
  if (count > len || !lua_checkstack(L, (int)count + 4))
    return LS_ECOPY;
  dec_t d = {L, (const unsigned char *)data + HEADER_LEN,
             (const unsigned char *)data + len, 0, 0, 0};
  /* Helper tables sit below the values and are removed at the end. */
  int helpers = 0;
  lua_pushlightuserdata(L, (void *)&mt_key);
  lua_rawget(L, LUA_REGISTRYINDEX);
  if (lua_istable(L, -1)) {
    d.mts = lua_gettop(L);
    helpers++;
  } else {
    lua_pop(L, 1);
  }
  if (data[4] & FLAG_REFS) {
    lua_newtable(L);
    d.refs = lua_gettop(L);
    helpers++;
  }
  for (uint32_t i = 0; i < count; i++) {
    if (dec_value(&d, 0)) {
      lua_settop(L, base);
      return LS_ECOPY;
    }
  }
  if (d.p != d.end) {
    lua_settop(L, base);
    return LS_ECOPY;
  }
  for (int i = 0; i < helpers; i++)
    lua_remove(L, base + 1);
  *n = (int)count;
  return 0;
}


/* ---- Lua-facing --------------------------------------------------------- */

/* copy_register(code, mt): tables with metatable mt keep it when they cross
 * (looked up by code, 1..255, in the receiving state). */
int ls__lua_copy_register(lua_State *L) {
  int code = (int)luaL_checkinteger(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  luaL_argcheck(L, code >= 1 && code <= 255, 1, "code must be 1 to 255");
  lua_pushlightuserdata(L, (void *)&mt_key);
  lua_rawget(L, LUA_REGISTRYINDEX);
  if (!lua_istable(L, -1)) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushlightuserdata(L, (void *)&mt_key);
    lua_pushvalue(L, -2);
    lua_rawset(L, LUA_REGISTRYINDEX);
  }
  lua_pushvalue(L, 2);
  lua_pushinteger(L, code);
  lua_rawset(L, -3);
  lua_pushvalue(L, 2);
  lua_rawseti(L, -2, code);
  return 0;
}


/* copy(...): copies of the values, made the way they cross between states
 * (encode, then decode in this state); raises naming a value that cannot. */
int ls__lua_copy(lua_State *L) {
  static const ls_copy_ctx_t ctx = {"argument", 1, "cannot be copied"};
  ls_buf_t b = {NULL, 0, 0};
  char err[512];
  int n = lua_gettop(L), m;
  int r = ls__copy_encode(L, 1, n, &b, &ctx, err, sizeof(err));
  if (r) {
    ls__buf_free(&b);
    lua_pushstring(L, err);
    return lua_error(L);
  }
  /* Keep the bytes in a userdata: a raise while decoding leaks nothing. */
  char *copy = lua_newuserdata(L, b.len);
  memcpy(copy, b.data, b.len);
  size_t len = b.len;
  ls__buf_free(&b);
  int top = lua_gettop(L);
  if (ls__copy_decode(L, copy, len, &m) != 0)
    return luaL_error(L, "copy: malformed buffer");
  return lua_gettop(L) - top;
}
