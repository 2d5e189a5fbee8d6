/* json.c: json.encode for luaserve.json, in one pass over the value into a
 * buffer kept between calls, integers through a hand-written itoa instead
 * of printf. Decoding stays with lua-cjson.
 *
 * The output is what lua-cjson 2.1.0 writes with cjson.new()'s settings
 * (luaserve used it before), except where luaserve always differed:
 * integers up to 2^63 in all their digits, "/" not escaped, and empty
 * tables marked with json.array_mt written as []. Tables are read raw
 * (no metamethod runs), so an encode never runs Lua code. Each Lua state
 * (the main one, every pool thread's) makes its own encoder; an encoder
 * is used by one thread only. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define JSON_BUF_MT "luaserve.json.buffer"
/* cjson's defaults, which luaserve kept: tables inside tables, and when
 * an array with holes is an error (its largest index above both). */
#define JSON_MAX_DEPTH 1000
#define JSON_SPARSE_RATIO 2
#define JSON_SPARSE_SAFE 10
/* The buffer's first size, and the most it keeps between calls: a larger
 * answer's buffer is freed once its string is made. */
#define JSON_BUF_FIRST 1024
#define JSON_BUF_KEEP (64 * 1024)
/* Integers whose magnitude is below this convert to int64_t exactly. */
#define JSON_INT_FAST 9007199254740992.0     /* 2^53 */
#define JSON_INT_MAX 9223372036854775808.0   /* 2^63 */

/* The buffer, a userdata (its __gc frees data). busy is set while an
 * encode writes into it or copies out of it. */
typedef struct {
  char *data;
  size_t len;
  size_t cap;
  int busy;
} json_buf_t;

/* A table being written, for the place named in an error: the stack index
 * of the current key of an object (0 in an array) or the array index.
 * Frames live on the C stack of the recursion. */
typedef struct json_path_s {
  const struct json_path_s *parent;
  int key;
  size_t index;
} json_path_t;

typedef struct {
  lua_State *L;
  json_buf_t *b;
  int depth;
} json_enc_t;

/* What follows a backslash for each byte, 'u' for \u00XX, 0 if the byte
 * goes out as is. As cjson: control characters and DEL, '"' and '\\'. */
static const char json_escape[256] = {
  'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'b', 't', 'n', 'u', 'f', 'r', 'u', 'u',
  'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u',
  0, 0, '"', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
  0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
  0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
  0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, '\\', 0, 0, 0,
  0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
  0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 'u',
  /* 128..255: UTF-8 (or any byte) as is */
};

static const char json_digits2[201] =
    "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
    "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
    "8081828384858687888990919293949596979899";


/* Give the buffer back: not busy, and freed if it grew past the keep size. */
static void buf_done(json_buf_t *b) {
  b->busy = 0;
  if (b->cap > JSON_BUF_KEEP) {
    free(b->data);
    b->data = NULL;
    b->cap = 0;
  }
}


static int buf_gc(lua_State *L) {
  json_buf_t *b = lua_touserdata(L, 1);
  free(b->data);
  b->data = NULL;
  b->cap = 0;
  return 0;
}


/* Push a new, empty buffer userdata. */
static json_buf_t *buf_new(lua_State *L) {
  json_buf_t *b = lua_newuserdata(L, sizeof(*b));
  memset(b, 0, sizeof(*b));
  if (luaL_newmetatable(L, JSON_BUF_MT)) {
    lua_pushcfunction(L, buf_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  return b;
}


/* Append the place of path (the keys from the top value down) to out,
 * "items[2].name" style; what does not fit in cap ends in "...". */
static void path_put(lua_State *L, const json_path_t *p, char *out,
                     size_t cap, size_t *n) {
  char part[80];
  size_t len;
  if (p == NULL)
    return;
  path_put(L, p->parent, out, cap, n);
  if (*n >= 3 && memcmp(out + *n - 3, "...", 3) == 0)
    return;   /* cut already */
  if (p->key == 0) {
    snprintf(part, sizeof(part), "[%zu]", p->index);
  } else if (lua_type(L, p->key) == LUA_TNUMBER) {
    snprintf(part, sizeof(part), "[%.14g]", lua_tonumber(L, p->key));
  } else {
    const char *k = lua_tolstring(L, p->key, &len);
    size_t i = 0;
    while (i < len && (k[i] == '_' || (k[i] >= 'a' && k[i] <= 'z') ||
                       (k[i] >= 'A' && k[i] <= 'Z') ||
                       (i > 0 && k[i] >= '0' && k[i] <= '9')))
      i++;
    if (len > 0 && i == len && len < 60) {
      snprintf(part, sizeof(part), "%s%s", *n ? "." : "", k);
    } else {
      /* ["any key"]: 40 bytes of it at most, control bytes as '?' (the
       * message goes to log lines) */
      char *q = part;
      *q++ = '[';
      *q++ = '"';
      for (i = 0; i < len && i < 40; i++)
        *q++ = (unsigned char)k[i] < 32 || k[i] == 127 ? '?' : k[i];
      memcpy(q, len > 40 ? "...\"]" : "\"]", len > 40 ? 6 : 3);
    }
  }
  len = strlen(part);
  if (*n + len + 4 > cap) {
    memcpy(out + *n, "...", 4);
    *n += 3;
    return;
  }
  memcpy(out + *n, part, len + 1);
  *n += len;
}


/* Raise "Cannot serialise TYPE: REASON" (cjson's words) and the place. */
static void enc_error(json_enc_t *e, const json_path_t *path,
                      const char *type, const char *reason) {
  char where[200];
  size_t n = 0;
  where[0] = '\0';
  path_put(e->L, path, where, sizeof(where), &n);
  buf_done(e->b);
  luaL_error(e->L, "Cannot serialise %s: %s%s%s%s", type, reason,
             n ? " (at " : "", where, n ? ")" : "");
}


/* Room for need more bytes; raises when memory runs out. */
static inline void reserve(json_enc_t *e, size_t need) {
  json_buf_t *b = e->b;
  if (b->cap - b->len >= need)
    return;
  if (need > SIZE_MAX / 2 - b->len) {
    buf_done(b);
    luaL_error(e->L, "json.encode: the text would be too large");
  }
  size_t cap = b->cap ? b->cap : JSON_BUF_FIRST;
  while (cap - b->len < need)
    cap *= 2;
  char *data = realloc(b->data, cap);
  if (data == NULL) {
    buf_done(b);
    luaL_error(e->L, "json.encode: not enough memory");
  }
  b->data = data;
  b->cap = cap;
}


static inline void put(json_enc_t *e, const char *s, size_t n) {
  reserve(e, n);
  memcpy(e->b->data + e->b->len, s, n);
  e->b->len += n;
}


static inline void put_char(json_enc_t *e, char c) {
  reserve(e, 1);
  e->b->data[e->b->len++] = c;
}


/* A string in quotes, escaped as cjson does except "/". */
static void put_string(json_enc_t *e, const char *s, size_t n) {
  static const char hex[] = "0123456789abcdef";
  json_buf_t *b = e->b;
  size_t i = 0;
  reserve(e, n + 2);
  char *out = b->data + b->len;
  *out++ = '"';
  while (i < n) {
    size_t run = i;
    while (run < n && !json_escape[(unsigned char)s[run]])
      run++;
    memcpy(out, s + i, run - i);
    out += run - i;
    i = run;
    if (i == n)
      break;
    /* An escape: up to 6 bytes for this one; the rest of the string
     * and the closing quote keep their room. */
    b->len = (size_t)(out - b->data);
    reserve(e, n - i + 6);
    out = b->data + b->len;
    unsigned char c = (unsigned char)s[i++];
    *out++ = '\\';
    if (json_escape[c] == 'u') {
      memcpy(out, "u00", 3);
      out[3] = hex[c >> 4];
      out[4] = hex[c & 15];
      out += 5;
    } else {
      *out++ = json_escape[c];
    }
  }
  *out++ = '"';
  b->len = (size_t)(out - b->data);
}


/* An unsigned integer's digits, two at a time from the end, in place. */
static void put_uint(json_enc_t *e, uint64_t u, int negative) {
  size_t digits = 1;
  for (uint64_t t = u;; t /= 10000, digits += 4) {
    if (t < 10)
      break;
    if (t < 100) {
      digits += 1;
      break;
    }
    if (t < 1000) {
      digits += 2;
      break;
    }
    if (t < 10000) {
      digits += 3;
      break;
    }
  }
  reserve(e, digits + 1);
  char *out = e->b->data + e->b->len;
  if (negative)
    *out++ = '-';
  e->b->len = (size_t)(out - e->b->data) + digits;
  char *p = out + digits;
  while (u > UINT32_MAX) {
    unsigned d = (unsigned)(u % 100) * 2;
    u /= 100;
    *--p = json_digits2[d + 1];
    *--p = json_digits2[d];
  }
  uint32_t v = (uint32_t)u;   /* the rest in 32-bit arithmetic: cheaper */
  while (v >= 100) {
    unsigned d = (v % 100) * 2;
    v /= 100;
    *--p = json_digits2[d + 1];
    *--p = json_digits2[d];
  }
  if (v >= 10) {
    *--p = json_digits2[v * 2 + 1];
    *--p = json_digits2[v * 2];
  } else {
    *--p = (char)('0' + v);
  }
}


/* A number: integers up to 2^63 with all their digits, others as cjson's
 * "%.14g"; NaN and infinities raise. */
static void put_number(json_enc_t *e, lua_Number x, const json_path_t *path) {
  if (x > -JSON_INT_FAST && x < JSON_INT_FAST) {
    int64_t i = (int64_t)x;
    if ((lua_Number)i == x) {
      if (i == 0 && signbit(x))
        put(e, "-0", 2);
      else
        put_uint(e, i < 0 ? (uint64_t)-i : (uint64_t)i, i < 0);
      return;
    }
  } else if (x >= -JSON_INT_MAX && x <= JSON_INT_MAX && floor(x) == x) {
    put_uint(e, (uint64_t)fabs(x), x < 0);
    return;
  }
  if (!isfinite(x))
    enc_error(e, path, "number", "must not be NaN or Inf");
  char tmp[40];
  int n = snprintf(tmp, sizeof(tmp), "%.14g", x);
  /* A locale set by the app may write the decimal point as ','. */
  for (int i = 0; i < n; i++)
    if (tmp[i] == ',')
      tmp[i] = '.';
  put(e, tmp, (size_t)n);
}


static void encode_value(json_enc_t *e, int idx, const json_path_t *path);


/* The length of the table at idx if it is an array (every key an integer
 * >= 1; 0 when empty), else -1. Leaves the stack as it was. */
static lua_Number array_length(json_enc_t *e, int idx,
                               const json_path_t *path) {
  lua_State *L = e->L;
  lua_Number max = 0, k;
  size_t items = 0;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    if (lua_type(L, -2) != LUA_TNUMBER || (k = lua_tonumber(L, -2)) < 1 ||
        floor(k) != k) {
      lua_pop(L, 2);
      return -1;
    }
    if (k > max)
      max = k;
    items++;
    lua_pop(L, 1);
  }
  if (max > (lua_Number)items * JSON_SPARSE_RATIO && max > JSON_SPARSE_SAFE)
    enc_error(e, path, "table", "excessively sparse array");
  return max;
}


/* The object at idx; its first key and value are on the stack. */
static void encode_object(json_enc_t *e, int idx, const json_path_t *path) {
  lua_State *L = e->L;
  json_path_t frame = {path, 0, 0};
  put_char(e, '{');
  do {
    int kt = lua_type(L, -2);
    if (frame.key)
      put_char(e, ',');
    frame.key = lua_gettop(L) - 1;
    if (kt == LUA_TSTRING) {
      size_t len;
      const char *k = lua_tolstring(L, -2, &len);
      put_string(e, k, len);
    } else if (kt == LUA_TNUMBER) {
      /* never lua_tolstring here: it would turn the key into a string
       * under lua_next */
      put_char(e, '"');
      put_number(e, lua_tonumber(L, -2), path);
      put_char(e, '"');
    } else {
      enc_error(e, path, lua_typename(L, kt),
                "table key must be a number or string");
    }
    put_char(e, ':');
    encode_value(e, frame.key + 1, &frame);
    lua_pop(L, 1);
  } while (lua_next(L, idx));
  put_char(e, '}');
}


/* The table at idx: an object or an array as array_length decides (a
 * string first key decides at once); an empty one is {} unless its
 * metatable is json.array_mt (upvalue 1). */
static void encode_table(json_enc_t *e, int idx, const json_path_t *path) {
  lua_State *L = e->L;
  if (++e->depth > JSON_MAX_DEPTH) {
    buf_done(e->b);
    luaL_error(L, "Cannot serialise, excessive nesting (%d)", e->depth);
  }
  if (!lua_checkstack(L, 4)) {
    buf_done(e->b);
    luaL_error(L, "json.encode: Lua stack overflow");
  }
  lua_pushnil(L);
  if (!lua_next(L, idx)) {
    int marked = lua_getmetatable(L, idx);
    if (marked) {
      marked = lua_rawequal(L, -1, lua_upvalueindex(1));
      lua_pop(L, 1);
    }
    put(e, marked ? "[]" : "{}", 2);
  } else if (lua_type(L, -2) == LUA_TSTRING) {
    encode_object(e, idx, path);
  } else {
    lua_pop(L, 2);
    lua_Number n = array_length(e, idx, path);
    if (n < 0) {
      lua_pushnil(L);
      lua_next(L, idx);
      encode_object(e, idx, path);
    } else {
      json_path_t frame = {path, 0, 0};
      size_t len = (size_t)n;
      put_char(e, '[');
      for (size_t i = 1; i <= len; i++) {
        if (i > 1)
          put_char(e, ',');
        frame.index = i;
        lua_rawgeti(L, idx, (int)i);
        encode_value(e, lua_gettop(L), &frame);
        lua_pop(L, 1);
      }
      put_char(e, ']');
    }
  }
  e->depth--;
}


/* The value at stack index idx (absolute); path: where it sits. */
static void encode_value(json_enc_t *e, int idx, const json_path_t *path) {
  lua_State *L = e->L;
  switch (lua_type(L, idx)) {
  case LUA_TSTRING: {
    size_t len;
    const char *s = lua_tolstring(L, idx, &len);
    put_string(e, s, len);
    return;
  }
  case LUA_TNUMBER:
    put_number(e, lua_tonumber(L, idx), path);
    return;
  case LUA_TTABLE:
    encode_table(e, idx, path);
    return;
  case LUA_TBOOLEAN:
    if (lua_toboolean(L, idx))
      put(e, "true", 4);
    else
      put(e, "false", 5);
    return;
  case LUA_TNIL:
    put(e, "null", 4);
    return;
  case LUA_TLIGHTUSERDATA:
    if (lua_touserdata(L, idx) == NULL) {   /* json.null (cjson.null) */
      put(e, "null", 4);
      return;
    }
    /* fall through */
  default:
    enc_error(e, path, luaL_typename(L, idx), "type not supported");
  }
}


/* encode(v): v as JSON text; raises on what JSON cannot hold. Upvalues:
 * json.array_mt, the buffer. */
static int json_encode(lua_State *L) {
  json_enc_t e = {L, lua_touserdata(L, lua_upvalueindex(2)), 0};
  lua_settop(L, 1);
  /* Busy: a finalizer encodes while this encode copies its text out
   * (lua_pushlstring may run the collector first). It gets a buffer of
   * its own. */
  if (e.b->busy)
    e.b = buf_new(L);
  e.b->busy = 1;
  e.b->len = 0;
  encode_value(&e, 1, NULL);
  lua_pushlstring(L, e.b->data, e.b->len);
  buf_done(e.b);
  return 1;
}


/* json_encoder(array_mt): a new encode function for this Lua state, with
 * a buffer of its own. */
int ls__lua_json_encoder(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  buf_new(L);
  lua_pushcclosure(L, json_encode, 2);
  return 1;
}
