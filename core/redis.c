/* redis.c: the two pieces of hiredis that luaserve.redis uses over its own
 * sockets (luaserve.tcp): the reply reader (redisReaderCreate / Feed /
 * GetReply: the RESP parser the Redis project maintains) and the command
 * formatter (redisFormatCommandArgv). hiredis's own connections are not
 * used: the stream layer gives timeouts, pooling and TLS once for every
 * protocol. Any thread; a reader belongs to one Lua state. */
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "internal.h"

#define LS_REDIS_READER_MT "luaserve.redis.reader"
#define ARGS_INLINE 16

/* Registry key of the error metatable luaserve.redis gives (error replies
 * become tables with it, so a pipeline's array can hold them). */
static const char error_mt_key = 'e';

typedef struct {
  redisReader *r;           /* NULL once freed */
} reader_ud_t;


/* Push a reply: status and bulk strings as strings, integers as numbers,
 * nil replies as luaserve.null (the JSON null), arrays as tables, errors
 * as {message = ...} with the error metatable. */
static void push_reply(lua_State *L, const redisReply *rep, int depth) {
  switch (rep->type) {
  case REDIS_REPLY_STRING:
  case REDIS_REPLY_STATUS:
    lua_pushlstring(L, rep->str, rep->len);
    return;
  case REDIS_REPLY_INTEGER:
    lua_pushnumber(L, (lua_Number)rep->integer);
    return;
  case REDIS_REPLY_ERROR:
    lua_createtable(L, 0, 1);
    lua_pushlstring(L, rep->str, rep->len);
    lua_setfield(L, -2, "message");
    lua_pushlightuserdata(L, (void *)&error_mt_key);
    lua_rawget(L, LUA_REGISTRYINDEX);
    lua_setmetatable(L, -2);
    return;
  case REDIS_REPLY_ARRAY:
    lua_createtable(L, (int)rep->elements, 0);
    for (size_t i = 0; i < rep->elements; i++) {
      push_reply(L, rep->element[i], depth + 1);
      lua_rawseti(L, -2, (int)i + 1);
    }
    return;
  default:   /* REDIS_REPLY_NIL */
    lua_pushlightuserdata(L, NULL);   /* luaserve.null (cjson.null) */
  }
}


/* redis_reader([error_mt]): a reply reader; error_mt (given once per
 * state) is the metatable of error replies. */
int ls__lua_redis_reader(lua_State *L) {
  if (lua_istable(L, 1)) {
    lua_pushlightuserdata(L, (void *)&error_mt_key);
    lua_pushvalue(L, 1);
    lua_rawset(L, LUA_REGISTRYINDEX);
  }
  reader_ud_t *ud = lua_newuserdata(L, sizeof(*ud));
  ud->r = NULL;
  luaL_getmetatable(L, LS_REDIS_READER_MT);
  lua_setmetatable(L, -2);
  ud->r = redisReaderCreate();
  if (ud->r == NULL)
    return luaL_error(L, "redis: out of memory");
  return 1;
}


static redisReader *check_reader(lua_State *L) {
  reader_ud_t *ud = luaL_checkudata(L, 1, LS_REDIS_READER_MT);
  if (ud->r == NULL)
    luaL_error(L, "redis: the reader is freed");
  return ud->r;
}


/* reader:feed(bytes): true, or nil, err (a protocol error: the reader is
 * unusable from then on). */
static int reader_feed(lua_State *L) {
  redisReader *r = check_reader(L);
  size_t len;
  const char *data = luaL_checklstring(L, 2, &len);
  if (redisReaderFeed(r, data, len) != REDIS_OK) {
    lua_pushnil(L);
    lua_pushfstring(L, "bad reply: %s", r->errstr);
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}


/* reader:get(): true, reply when one is complete; false when more bytes
 * are needed; nil, err on a protocol error. */
static int reader_get(lua_State *L) {
  redisReader *r = check_reader(L);
  void *reply = NULL;
  if (redisReaderGetReply(r, &reply) != REDIS_OK) {
    lua_pushnil(L);
    lua_pushfstring(L, "bad reply: %s", r->errstr);
    return 2;
  }
  if (reply == NULL) {
    lua_pushboolean(L, 0);
    return 1;
  }
  lua_pushboolean(L, 1);
  push_reply(L, reply, 0);   /* hiredis nests at most 7 deep: no raise */
  freeReplyObject(reply);
  return 2;
}


/* reader:pending(): bytes fed and not yet parsed into replies. */
static int reader_pending(lua_State *L) {
  redisReader *r = check_reader(L);
  lua_pushinteger(L, (lua_Integer)(r->len - r->pos));
  return 1;
}


static int reader_gc(lua_State *L) {
  reader_ud_t *ud = luaL_checkudata(L, 1, LS_REDIS_READER_MT);
  if (ud->r) {
    redisReaderFree(ud->r);
    ud->r = NULL;
  }
  return 0;
}


/* redis_format(arg1, ...): the command in RESP, one bulk string per
 * argument (strings and numbers; numbers as Lua writes them). Raises on
 * any other type: a misuse. */
int ls__lua_redis_format(lua_State *L) {
  int argc = lua_gettop(L);
  if (argc < 1)
    return luaL_error(L, "redis: a command needs a name");
  const char *iargv[ARGS_INLINE], **argv = iargv;
  size_t ilen[ARGS_INLINE], *lens = ilen;
  for (int i = 1; i <= argc; i++) {
    int t = lua_type(L, i);
    if (t != LUA_TSTRING && t != LUA_TNUMBER)
      return luaL_argerror(L, i, lua_pushfstring(L,
          "redis: a command argument must be a string or a number, got %s",
          luaL_typename(L, i)));
  }
  if (argc > ARGS_INLINE) {
    argv = malloc(sizeof(*argv) * (size_t)argc);
    lens = malloc(sizeof(*lens) * (size_t)argc);
    if (argv == NULL || lens == NULL) {
      free(argv);
      free(lens);
      return luaL_error(L, "redis: out of memory");
    }
  }
  for (int i = 1; i <= argc; i++)   /* numbers become strings in place */
    argv[i - 1] = lua_tolstring(L, i, &lens[i - 1]);
  char *cmd = NULL;
  int n = redisFormatCommandArgv(&cmd, argc, argv, lens);
  if (argv != iargv) {
    free(argv);
    free(lens);
  }
  if (n < 0 || cmd == NULL)
    return luaL_error(L, "redis: out of memory");
  lua_pushlstring(L, cmd, (size_t)n);
  redisFreeCommand(cmd);
  return 1;
}


void ls__redis_open(lua_State *L) {
  static const luaL_Reg methods[] = {
    {"feed", reader_feed},
    {"get", reader_get},
    {"pending", reader_pending},
    {NULL, NULL},
  };
  ls__new_class(L, LS_REDIS_READER_MT, methods, reader_gc);
}
