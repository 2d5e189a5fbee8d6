/* log.c: the log. Every line has a time and a level: as text,
 *
 *   2026-12-01T05:40:12.345Z INFO  127.0.0.1 - "GET /hello" 200 13 0.12ms
 *
 * or, with format "json", one JSON object per line (time, level, message
 * and the line's fields). Lines from the loop, the pool threads and the
 * core's own messages all go through here, under one lock: access lines
 * are buffered (written every 100 ms by luaserve.log's timer, or at
 * 32 KB) and any other line first writes what is buffered, so stderr shows
 * the lines in the order they happened. */

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

#define LOG_BUFFERED_MAX (32 * 1024)

static uv_once_t log_once = UV_ONCE_INIT;
static uv_mutex_t log_lock;
static ls_buf_t log_pending;        /* buffered access lines */
static int log_json;                /* 1: one JSON object per line */
static int log_min_level = 2;       /* 1 debug .. 4 error */

static const char *const level_text[] = {"", "DEBUG", "INFO ", "WARN ", "ERROR"};
static const char *const level_json[] = {"", "debug", "info", "warn", "error"};


static void log_init(void) {
  if (uv_mutex_init(&log_lock))
    abort();
}


/* Write all n bytes of each piece to stderr (a full pipe blocks, as any
 * write to stderr does). */
static void write_all(struct iovec *iov, int n) {
  while (n > 0) {
    ssize_t w = writev(STDERR_FILENO, iov, n);
    if (w < 0) {
      if (errno == EINTR)
        continue;
      return;   /* stderr is gone: nothing to tell it to */
    }
    while (n > 0 && (size_t)w >= iov->iov_len) {
      w -= (ssize_t)iov->iov_len;
      iov++;
      n--;
    }
    if (n > 0) {
      iov->iov_base = (char *)iov->iov_base + w;
      iov->iov_len -= (size_t)w;
    }
  }
}


/* Under the lock: the buffered lines, then line (may be NULL). */
static void emit_locked(const char *line, size_t len) {
  struct iovec iov[2];
  int n = 0;
  if (log_pending.len) {
    iov[n].iov_base = log_pending.data;
    iov[n++].iov_len = log_pending.len;
  }
  if (line && len) {
    iov[n].iov_base = (void *)line;
    iov[n++].iov_len = len;
  }
  if (n)
    write_all(iov, n);
  log_pending.len = 0;
  if (log_pending.cap > 4 * LOG_BUFFERED_MAX)
    ls__buf_free(&log_pending);
}


/* Write a whole line now (after what is buffered). */
static void emit(const char *line, size_t len) {
  uv_once(&log_once, log_init);
  uv_mutex_lock(&log_lock);
  emit_locked(line, len);
  uv_mutex_unlock(&log_lock);
}


/* Buffer a line; returns 1 when the buffer was empty before (the caller
 * arms the flush timer). Written at once past LOG_BUFFERED_MAX. */
static int emit_buffered(const char *line, size_t len) {
  uv_once(&log_once, log_init);
  uv_mutex_lock(&log_lock);
  int was_empty = log_pending.len == 0;
  if (ls__buf_append(&log_pending, line, len)) {
    emit_locked(line, len);   /* no memory: write it now */
  } else if (log_pending.len >= LOG_BUFFERED_MAX) {
    emit_locked(NULL, 0);
  }
  uv_mutex_unlock(&log_lock);
  return was_empty;
}


void ls__log_flush(void) {
  emit(NULL, 0);
}


/* "2026-12-01T05:40:12.345Z" (24 bytes) at out. The part up to the
 * seconds is made once a second per thread. */
static void format_time(char *out) {
  static __thread int64_t cached_sec = -1;
  static __thread char prefix[32];
  uv_timeval64_t tv;
  if (uv_gettimeofday(&tv) != 0) {
    tv.tv_sec = (int64_t)time(NULL);
    tv.tv_usec = 0;
  }
  if (tv.tv_sec != cached_sec) {
    time_t t = (time_t)tv.tv_sec;
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(prefix, sizeof(prefix), "%Y-%m-%dT%H:%M:%S", &tm);
    cached_sec = tv.tv_sec;
  }
  memcpy(out, prefix, 19);
  int ms = (int)(tv.tv_usec / 1000);
  out[19] = '.';
  out[20] = (char)('0' + ms / 100);
  out[21] = (char)('0' + ms / 10 % 10);
  out[22] = (char)('0' + ms % 10);
  out[23] = 'Z';
}


/* The length of the valid UTF-8 sequence at s (at most n bytes), or 0. */
static size_t utf8_len(const unsigned char *s, size_t n) {
  unsigned c = s[0];
  size_t len;
  unsigned min;
  if (c < 0x80)
    return 1;
  if (c >= 0xc2 && c <= 0xdf) {
    len = 2;
    min = 0x80;
  } else if (c >= 0xe0 && c <= 0xef) {
    len = 3;
    min = 0x800;
  } else if (c >= 0xf0 && c <= 0xf4) {
    len = 4;
    min = 0x10000;
  } else {
    return 0;
  }
  if (len > n)
    return 0;
  unsigned cp = c & (0x3f >> (len - 1));
  for (size_t i = 1; i < len; i++) {
    if ((s[i] & 0xc0) != 0x80)
      return 0;
    cp = (cp << 6) | (s[i] & 0x3f);
  }
  if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
    return 0;
  return len;
}


#define PUT(b, s, n)                                                        \
  do {                                                                      \
    if (ls__buf_append((b), (s), (n)))                                      \
      return UV_ENOMEM;                                                     \
  } while (0)
#define PUT_LIT(b, s) PUT((b), (s), sizeof(s) - 1)

/* s as a JSON string (quoted); bytes that are not UTF-8 become U+FFFD. */
static int put_json_string(ls_buf_t *b, const char *s, size_t n) {
  static const char hex[] = "0123456789abcdef";
  PUT_LIT(b, "\"");
  size_t i = 0;
  while (i < n) {
    size_t run = i;
    while (run < n) {
      unsigned char c = (unsigned char)s[run];
      if (c < 0x20 || c == '"' || c == '\\' || c >= 0x80)
        break;
      run++;
    }
    PUT(b, s + i, run - i);
    i = run;
    if (i == n)
      break;
    unsigned char c = (unsigned char)s[i];
    if (c >= 0x80) {
      size_t len = utf8_len((const unsigned char *)s + i, n - i);
      if (len) {
        PUT(b, s + i, len);
        i += len;
      } else {
        PUT_LIT(b, "\\ufffd");
        i++;
      }
      continue;
    }
    i++;
    switch (c) {
    case '"': PUT_LIT(b, "\\\""); break;
    case '\\': PUT_LIT(b, "\\\\"); break;
    case '\n': PUT_LIT(b, "\\n"); break;
    case '\r': PUT_LIT(b, "\\r"); break;
    case '\t': PUT_LIT(b, "\\t"); break;
    default: {
      char u[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
      PUT(b, u, 6);
    }
    }
  }
  PUT_LIT(b, "\"");
  return 0;
}


/* The start of a line: time and level (text), or {"time":..,"level":..
 * (JSON: the caller adds the fields and the closing brace). */
static int put_head(ls_buf_t *b, int level) {
  char t[24];
  format_time(t);
  if (log_json) {
    PUT_LIT(b, "{\"time\":\"");
    PUT(b, t, 24);
    PUT_LIT(b, "\",\"level\":\"");
    PUT(b, level_json[level], strlen(level_json[level]));
    PUT_LIT(b, "\"");
  } else {
    PUT(b, t, 24);
    PUT_LIT(b, " ");
    PUT(b, level_text[level], 5);
    PUT_LIT(b, " ");
  }
  return 0;
}


/* ,"name": (JSON only) */
static int put_key(ls_buf_t *b, const char *name, size_t n) {
  PUT_LIT(b, ",");
  if (put_json_string(b, name, n))
    return UV_ENOMEM;
  PUT_LIT(b, ":");
  return 0;
}


/* A whole line for a message (JSON: {"time","level","message"}). */
static int format_message(ls_buf_t *b, int level, const char *msg, size_t n) {
  if (put_head(b, level))
    return UV_ENOMEM;
  if (log_json) {
    if (put_key(b, "message", 7) || put_json_string(b, msg, n))
      return UV_ENOMEM;
  } else {
    PUT(b, msg, n);
  }
  return 0;
}


static int level_of(const char *name) {
  for (int i = 1; i <= 4; i++)
    if (strcmp(name, level_json[i]) == 0)
      return i;
  return 4;
}


void ls__log(const char *level, const char *fmt, ...) {
  char msg[4096];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  if (n < 0)
    return;
  if ((size_t)n >= sizeof(msg))
    n = sizeof(msg) - 1;
  ls_buf_t b = {0};
  if (format_message(&b, level_of(level), msg, (size_t)n) == 0 &&
      ls__buf_append(&b, log_json ? "}\n" : "\n", log_json ? 2 : 1) == 0)
    emit(b.data, b.len);
  ls__buf_free(&b);
}


/* ---- Lua ---------------------------------------------------------------- */

/* A field's value: JSON (a string, number, boolean; anything else as its
 * tostring) or text (strings with a space or quote are quoted). */
static int put_value(lua_State *L, ls_buf_t *b, int idx) {
  int t = lua_type(L, idx);
  if (t == LUA_TNUMBER) {
    char num[64];
    lua_Number v = lua_tonumber(L, idx);
    int k;
    if (!isfinite(v))
      k = log_json ? snprintf(num, sizeof(num), "null")
                   : snprintf(num, sizeof(num), "%g", v);
    else if (v > -1e15 && v < 1e15 && v == (lua_Number)(long long)v)
      k = snprintf(num, sizeof(num), "%lld", (long long)v);
    else
      k = snprintf(num, sizeof(num), "%.17g", v);
    PUT(b, num, (size_t)k);
    return 0;
  }
  if (t == LUA_TBOOLEAN) {
    if (lua_toboolean(L, idx))
      PUT_LIT(b, "true");
    else
      PUT_LIT(b, "false");
    return 0;
  }
  lua_getglobal(L, "tostring");
  lua_pushvalue(L, idx);
  lua_call(L, 1, 1);
  size_t n;
  const char *s = lua_tolstring(L, -1, &n);
  if (s == NULL)
    s = "?", n = 1;
  int rc = 0;
  if (log_json || memchr(s, ' ', n) || memchr(s, '"', n) || memchr(s, '=', n) ||
      n == 0)
    rc = put_json_string(b, s, n);
  else if (ls__buf_append(b, s, n))
    rc = UV_ENOMEM;
  lua_pop(L, 1);
  return rc;
}


/* The fields of the table at idx: JSON ,"k":v or text " k=v". */
static int put_fields(lua_State *L, ls_buf_t *b, int idx) {
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    if (lua_type(L, -2) == LUA_TSTRING) {
      size_t kn;
      const char *k = lua_tolstring(L, -2, &kn);
      int rc;
      if (log_json) {
        rc = put_key(b, k, kn);
      } else {
        rc = ls__buf_append(b, " ", 1) || ls__buf_append(b, k, kn) ||
             ls__buf_append(b, "=", 1);
      }
      if (rc || put_value(L, b, lua_gettop(L))) {
        lua_pop(L, 2);
        return UV_ENOMEM;
      }
    }
    lua_pop(L, 1);
  }
  return 0;
}


static int finish_line(lua_State *L, ls_buf_t *b, int capture) {
  if (ls__buf_append(b, log_json ? "}\n" : "\n", log_json ? 2 : 1)) {
    ls__buf_free(b);
    return luaL_error(L, "log: out of memory");
  }
  if (capture) {
    lua_pushlstring(L, b->data, b->len);
    ls__buf_free(b);
    return 1;
  }
  emit(b->data, b->len);
  ls__buf_free(b);
  return 0;
}


/* log(level, msg[, fields[, capture]]): write a line now (after the
 * buffered ones); with capture, return it instead. level 1..4. */
int ls__lua_log(lua_State *L) {
  int level = (int)luaL_checkinteger(L, 1);
  if (level < 1 || level > 4)
    return luaL_argerror(L, 1, "level must be 1 (debug) to 4 (error)");
  size_t n;
  const char *msg = luaL_checklstring(L, 2, &n);
  int has_fields = lua_istable(L, 3);
  int capture = lua_toboolean(L, 4);
  ls_buf_t b = {0};
  if (format_message(&b, level, msg, n) ||
      (has_fields && put_fields(L, &b, 3))) {
    ls__buf_free(&b);
    return luaL_error(L, "log: out of memory");
  }
  return finish_line(L, &b, capture);
}


/* One access line's fields. */
typedef struct {
  const char *client, *method, *target, *path, *route, *rid;
  size_t cn, mn, tn, pn, rn, idn;
  int status;
  double bytes, ms;
} access_t;


/* Format an access line into b (emptied first): 0, or UV_ENOMEM. */
static int format_access(ls_buf_t *b, const access_t *a) {
  const char *method = a->method, *target = a->target;
  size_t mn = a->mn, tn = a->tn;
  int status = a->status;
  double ms = a->ms;
  char num[96];
  b->len = 0;
  int rc = put_head(b, 2);
  if (log_json) {
    int k;
    rc = rc || put_key(b, "message", 7) || ls__buf_append(b, "\"", 1) ||
         ls__buf_append(b, method, mn) || ls__buf_append(b, " ", 1);
    /* the message: METHOD target status, the target escaped */
    if (!rc) {
      ls_buf_t t = {0};
      rc = put_json_string(&t, target, tn);
      if (!rc)
        rc = ls__buf_append(b, t.data + 1, t.len - 2);
      ls__buf_free(&t);
    }
    k = snprintf(num, sizeof(num), " %d\"", status);
    rc = rc || ls__buf_append(b, num, (size_t)k) ||
         put_key(b, "type", 4) || ls__buf_append(b, "\"access\"", 8) ||
         put_key(b, "method", 6) || put_json_string(b, method, mn) ||
         put_key(b, "path", 4) || put_json_string(b, a->path, a->pn) ||
         put_key(b, "target", 6) || put_json_string(b, target, tn) ||
         put_key(b, "route", 5) ||
         (a->route ? put_json_string(b, a->route, a->rn) : ls__buf_append(b, "null", 4));
    k = snprintf(num, sizeof(num), ",\"status\":%d,\"bytes\":%.0f,\"duration_ms\":%.3f",
                 status, a->bytes, ms);
    rc = rc || ls__buf_append(b, num, (size_t)k) ||
         put_key(b, "client", 6) || put_json_string(b, a->client, a->cn);
    if (a->rid)
      rc = rc || put_key(b, "request_id", 10) || put_json_string(b, a->rid, a->idn);
    return rc || ls__buf_append(b, "}\n", 2);
  }
  /* Text, a line per request: one reservation, then written in place (a
   * target byte takes at most four, as \xNN). */
  if (rc || ls__buf_reserve(b, a->cn + mn + 4 * tn + a->idn + 96))
    return UV_ENOMEM;
  static const char hex[] = "0123456789abcdef";
  char *p = b->data + b->len;
  memcpy(p, a->client, a->cn);
  p += a->cn;
  memcpy(p, " - \"", 4);
  p += 4;
  memcpy(p, method, mn);
  p += mn;
  *p++ = ' ';
  /* the target as sent, with control bytes (and ") shown as \xNN */
  for (size_t i = 0; i < tn; i++) {
    unsigned char c = (unsigned char)target[i];
    if (c >= 0x20 && c != 0x7f && c != '"') {
      *p++ = (char)c;
    } else {
      *p++ = '\\';
      *p++ = 'x';
      *p++ = hex[c >> 4];
      *p++ = hex[c & 15];
    }
  }
  /* "\" status bytes ms.hhms" */
  uint64_t h = ms > 0 ? (uint64_t)(ms * 100.0 + 0.5) : 0;
  *p++ = '"';
  *p++ = ' ';
  p = ls__put_uint(p, status > 0 ? (uint64_t)status : 0);
  *p++ = ' ';
  p = ls__put_uint(p, a->bytes > 0 ? (uint64_t)a->bytes : 0);
  *p++ = ' ';
  p = ls__put_uint(p, h / 100);
  *p++ = '.';
  *p++ = (char)('0' + h / 10 % 10);
  *p++ = (char)('0' + h % 10);
  *p++ = 'm';
  *p++ = 's';
  if (a->rid) {
    memcpy(p, " id=", 4);
    p += 4;
    memcpy(p, a->rid, a->idn);
    p += a->idn;
  }
  *p++ = '\n';
  b->len = (size_t)(p - b->data);
  return 0;
}


/* One buffer per thread, kept between lines (an access line per request:
 * no malloc and free each time); a big one is let go. */
static __thread ls_buf_t scratch;

/* Format a into the scratch buffer: the buffer, or NULL (out of memory).
 * A line too big to keep (over 64 KB) is let go at the next call. */
static ls_buf_t *access_line(const access_t *a) {
  static __thread ls_buf_t big;
  ls__buf_free(&big);
  int rc = format_access(&scratch, a);
  if (scratch.cap > 64 * 1024) {
    big = scratch;
    memset(&scratch, 0, sizeof(scratch));
    if (rc)
      ls__buf_free(&big);
    return rc ? NULL : &big;
  }
  return rc ? NULL : &scratch;
}


/* log_access(client, method, target, path, route, status, bytes, seconds,
 * request_id[, capture]): an access line (info), buffered; returns true
 * when the buffer was empty (arm the flush timer). With capture: the
 * line instead. */
int ls__lua_log_access(lua_State *L) {
  access_t a;
  a.client = luaL_optlstring(L, 1, "-", &a.cn);
  a.method = luaL_checklstring(L, 2, &a.mn);
  a.target = luaL_checklstring(L, 3, &a.tn);
  a.path = luaL_checklstring(L, 4, &a.pn);
  a.rn = a.idn = 0;
  a.route = lua_isstring(L, 5) ? lua_tolstring(L, 5, &a.rn) : NULL;
  a.status = (int)luaL_checkinteger(L, 6);
  a.bytes = luaL_checknumber(L, 7);
  a.ms = luaL_checknumber(L, 8) * 1000.0;
  a.rid = lua_isstring(L, 9) ? lua_tolstring(L, 9, &a.idn) : NULL;
  int capture = lua_toboolean(L, 10);
  ls_buf_t *b = access_line(&a);
  if (b == NULL)
    return luaL_error(L, "log: out of memory");
  if (capture)
    lua_pushlstring(L, b->data, b->len);
  else
    lua_pushboolean(L, emit_buffered(b->data, b->len));
  return 1;
}


/* The same for LuaJIT's FFI (luaserve.ffi), never capturing: 1 when the
 * line is the first waiting, 0 when not, -1 out of memory (the classic
 * function then raises). Touches no Lua state. */
int ls_ffi_log_access(const char *client, size_t cn, const char *method,
                      size_t mn, const char *target, size_t tn,
                      const char *path, size_t pn, const char *route,
                      size_t rn, int status, double bytes, double seconds,
                      const char *rid, size_t idn);
int ls_ffi_log_access(const char *client, size_t cn, const char *method,
                      size_t mn, const char *target, size_t tn,
                      const char *path, size_t pn, const char *route,
                      size_t rn, int status, double bytes, double seconds,
                      const char *rid, size_t idn) {
  access_t a = {client ? client : "-", method, target, path, route, rid,
                client ? cn : 1, mn, tn, pn, rn, idn, status, bytes,
                seconds * 1000.0};
  ls_buf_t *b = access_line(&a);
  if (b == NULL)
    return -1;
  return emit_buffered(b->data, b->len);
}


/* log_flush(): write the buffered lines now. */
int ls__lua_log_flush(lua_State *L) {
  (void)L;
  ls__log_flush();
  return 0;
}


/* log_config{format = "text"|"json", level = 1..4}: for the whole
 * process (every state and thread); either may be left out. Returns the
 * format and level now. */
int ls__lua_log_config(lua_State *L) {
  if (lua_istable(L, 1)) {
    lua_getfield(L, 1, "format");
    if (!lua_isnil(L, -1)) {
      const char *f = luaL_checkstring(L, -1);
      if (strcmp(f, "json") == 0)
        log_json = 1;
      else if (strcmp(f, "text") == 0)
        log_json = 0;
      else
        return luaL_error(L, "log format must be text or json, got %s", f);
    }
    lua_getfield(L, 1, "level");
    if (!lua_isnil(L, -1)) {
      int l = (int)luaL_checkinteger(L, -1);
      if (l < 1 || l > 4)
        return luaL_error(L, "log level must be 1 to 4");
      log_min_level = l;
    }
    lua_pop(L, 2);
  }
  lua_pushstring(L, log_json ? "json" : "text");
  lua_pushinteger(L, log_min_level);
  return 2;
}


int ls__log_level(void) {
  return log_min_level;
}
