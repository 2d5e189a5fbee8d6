/* compress.c: gzip for Lua on zlib (the GZip middleware): a whole body at
 * once, or a stream chunk by chunk with a flush after each chunk so that a
 * streamed answer (server-sent events, a long download) reaches the client
 * as it is written. zlib runs on the calling thread; a deflater belongs to
 * one Lua state. */
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "internal.h"

#define LS_DEFLATER_MT "luaserve.deflater"
#define GZIP_WINDOW (15 + 16)   /* zlib's windowBits for a gzip wrapper */

typedef struct {
  z_stream z;
  int open;                 /* deflateInit ran, deflateEnd not yet */
  int finished;
} deflater_t;


/* Run deflate over in with flush mode `flush`, appending to a Lua buffer.
 * Returns 0 or a zlib error. */
static int deflate_into(z_stream *z, const char *in, size_t len, int flush,
                        luaL_Buffer *b) {
  z->next_in = (Bytef *)in;
  z->avail_in = (uInt)len;
  do {
    char *out = luaL_prepbuffer(b);
    z->next_out = (Bytef *)out;
    z->avail_out = LUAL_BUFFERSIZE;
    int r = deflate(z, flush);
    if (r == Z_STREAM_ERROR)
      return r;
    luaL_addsize(b, LUAL_BUFFERSIZE - z->avail_out);
    if (r == Z_STREAM_END)
      break;
  } while (z->avail_out == 0 || z->avail_in > 0);
  return 0;
}


static int check_level(lua_State *L, int idx) {
  int level = (int)luaL_optinteger(L, idx, Z_DEFAULT_COMPRESSION);
  if (level < -1 || level > 9)
    return luaL_argerror(L, idx, "level must be from 1 to 9 (or -1)");
  return level;
}


/* One deflate stream per runtime for whole bodies, reset between uses:
 * deflateInit allocates and clears some 256 KB, which would cost more than
 * compressing a small answer. Freed with the runtime. */
typedef struct {
  z_stream z;
  int level;
} whole_t;


void ls__compress_free(ls_runtime_t *rt) {
  whole_t *w = rt->gzip;
  if (w == NULL)
    return;
  deflateEnd(&w->z);
  free(w);
  rt->gzip = NULL;
}


/* gzip(data[, level]): data compressed into one gzip member. */
int ls__lua_gzip(lua_State *L) {
  ls_runtime_t *rt = LS__RT(L);
  size_t len;
  const char *data = luaL_checklstring(L, 1, &len);
  int level = check_level(L, 2);
  whole_t *w = rt->gzip;
  if (w && w->level != level)
    ls__compress_free(rt);
  if (rt->gzip == NULL) {
    w = calloc(1, sizeof(*w));
    if (w == NULL || deflateInit2(&w->z, level, Z_DEFLATED, GZIP_WINDOW, 8,
                                  Z_DEFAULT_STRATEGY) != Z_OK) {
      free(w);
      return luaL_error(L, "gzip: out of memory");
    }
    w->level = level;
    rt->gzip = w;
  } else {
    deflateReset(&w->z);
  }
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  int r = deflate_into(&w->z, data, len, Z_FINISH, &b);
  if (r != 0)
    return luaL_error(L, "gzip: deflate failed (%d)", r);
  luaL_pushresult(&b);
  return 1;
}


static deflater_t *check_deflater(lua_State *L) {
  deflater_t *d = luaL_checkudata(L, 1, LS_DEFLATER_MT);
  if (!d->open)
    luaL_error(L, "deflater: already finished");
  return d;
}


/* d:push(data): the compressed bytes for data so far, flushed (the client
 * can decode all of it now). */
static int deflater_push(lua_State *L) {
  deflater_t *d = check_deflater(L);
  size_t len;
  const char *data = luaL_checklstring(L, 2, &len);
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  if (deflate_into(&d->z, data, len, Z_SYNC_FLUSH, &b) != 0)
    return luaL_error(L, "deflater: deflate failed");
  luaL_pushresult(&b);
  return 1;
}


/* d:finish(): the last bytes (the gzip trailer). */
static int deflater_finish(lua_State *L) {
  deflater_t *d = check_deflater(L);
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  int r = deflate_into(&d->z, "", 0, Z_FINISH, &b);
  deflateEnd(&d->z);
  d->open = 0;
  if (r != 0)
    return luaL_error(L, "deflater: deflate failed");
  luaL_pushresult(&b);
  return 1;
}


static int deflater_gc(lua_State *L) {
  deflater_t *d = luaL_checkudata(L, 1, LS_DEFLATER_MT);
  if (d->open)
    deflateEnd(&d->z);
  d->open = 0;
  return 0;
}


/* deflater([level]): a gzip stream compressor. */
int ls__lua_deflater(lua_State *L) {
  int level = check_level(L, 1);
  deflater_t *d = lua_newuserdata(L, sizeof(*d));
  memset(d, 0, sizeof(*d));
  luaL_getmetatable(L, LS_DEFLATER_MT);
  lua_setmetatable(L, -2);
  if (deflateInit2(&d->z, level, Z_DEFLATED, GZIP_WINDOW, 8,
                   Z_DEFAULT_STRATEGY) != Z_OK)
    return luaL_error(L, "deflater: out of memory");
  d->open = 1;
  return 1;
}


/* gunzip(data[, max]): the data of a gzip stream, or nil, err ("too
 * large" past max bytes, default 64 MiB; "bad gzip data"). */
int ls__lua_gunzip(lua_State *L) {
  size_t len;
  const char *data = luaL_checklstring(L, 1, &len);
  lua_Number max = luaL_optnumber(L, 2, 64.0 * 1024 * 1024);
  z_stream z;
  memset(&z, 0, sizeof(z));
  if (inflateInit2(&z, GZIP_WINDOW) != Z_OK)
    return luaL_error(L, "gunzip: out of memory");
  z.next_in = (Bytef *)data;
  z.avail_in = (uInt)len;
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  size_t total = 0;
  int r;
  do {
    char *out = luaL_prepbuffer(&b);
    z.next_out = (Bytef *)out;
    z.avail_out = LUAL_BUFFERSIZE;
    r = inflate(&z, Z_NO_FLUSH);
    size_t n = LUAL_BUFFERSIZE - z.avail_out;
    luaL_addsize(&b, n);
    total += n;
    if ((lua_Number)total > max) {
      inflateEnd(&z);
      lua_pushnil(L);
      lua_pushliteral(L, "too large");
      return 2;
    }
  } while (r == Z_OK);
  inflateEnd(&z);
  if (r != Z_STREAM_END) {
    lua_pushnil(L);
    lua_pushliteral(L, "bad gzip data");
    return 2;
  }
  luaL_pushresult(&b);
  return 1;
}


void ls__compress_open(lua_State *L) {
  static const luaL_Reg methods[] = {
    {"push", deflater_push},
    {"finish", deflater_finish},
    {NULL, NULL},
  };
  ls__new_class(L, LS_DEFLATER_MT, methods, deflater_gc);
}
