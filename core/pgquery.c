/* pgquery.c: the commands of a PostgreSQL connection (pg.c): parameters
 * bound with PQsendQueryParams / PQsendQueryPrepared (never put into the
 * SQL text), a statement prepared and run in one round trip, several
 * commands in one libpq pipeline; then the results collected as they come
 * and handed to Lua at once when the last one is in. Loop thread of the
 * runtime only. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "internal.h"

#define PARAMS_INLINE 16

/* Store one result of the command in flight: a failed prepare's error
 * waits for its exec; an exec's rows or error go into the results. */
static void store_result(ls_pg_t *p, PGresult *r, char kind) {
  lua_State *L = p->rt->L;
  ExecStatusType st = PQresultStatus(r);
  int ok = st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK ||
           st == PGRES_EMPTY_QUERY;
  if (kind == LS_PG_PREPARE) {
    if (!ok && p->perr_ref == LUA_NOREF) {
      ls__pg_push_error(L, r, PQerrorMessage(p->conn));
      p->perr_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    return;
  }
  lua_rawgeti(L, LUA_REGISTRYINDEX, p->results_ref);
  if (ok) {
    ls__pg_push_rows(L, r);
  } else {
    p->single = p->single ? 2 : 0;   /* 2: a single command that failed */
    if (p->perr_ref != LUA_NOREF) {
      lua_rawgeti(L, LUA_REGISTRYINDEX, p->perr_ref);
      ls__pg_unref(p, &p->perr_ref);
    } else if (st == PGRES_PIPELINE_ABORTED) {
      ls__pg_push_error(L, NULL, "aborted: an earlier command of the "
                                 "pipeline failed");
    } else {
      ls__pg_push_error(L, r, PQerrorMessage(p->conn));
      if (st == PGRES_COPY_IN || st == PGRES_COPY_OUT || st == PGRES_COPY_BOTH)
        p->broken = 1;   /* COPY is not spoken here: the connection goes */
    }
  }
  lua_rawseti(L, -2, ++p->nexec);
  lua_pop(L, 1);
}


/* Every result is in: the connection is idle again (or closed when it
 * broke), and the target gets rows, nil + err (one command) or the
 * array of results. Touches nothing after resolving. */
static void finish_command(ls_pg_t *p) {
  lua_State *L = p->rt->L;
  int op = p->op_ref, results = p->results_ref, single = p->single;
  p->op_ref = p->results_ref = LUA_NOREF;
  ls__pg_deadline(p, 0);
  ls__pg_free_kinds(p);
  ls__pg_unref(p, &p->perr_ref);
  p->phase = LS_PG_READY;
  if (p->broken || PQstatus(p->conn) != CONNECTION_OK ||
      ls__pg_watch(p, UV_READABLE, p->wait_ref != LUA_NOREF) != 0)
    ls__pg_close(p, NULL);
  if (p->rt->closing)
    return;
  lua_rawgeti(L, LUA_REGISTRYINDEX, results);
  luaL_unref(L, LUA_REGISTRYINDEX, results);
  int n = 1;
  if (single) {
    lua_rawgeti(L, -1, 1);
    lua_remove(L, -2);
    if (single == 2) {
      lua_pushnil(L);
      lua_insert(L, -2);
      n = 2;
    }
  }
  ls__pg_resolve(p, &op, n);
}


/* Take the results that are in; finish when all are. */
void ls__pg_collect(ls_pg_t *p) {
  int nulls = 0;
  while (p->phase == LS_PG_BUSY && !PQisBusy(p->conn)) {
    PGresult *r = PQgetResult(p->conn);
    if (r == NULL) {
      if (!p->pipeline) {
        finish_command(p);
        return;
      }
      if (++nulls > 1)   /* between two commands of a pipeline */
        return;
      continue;
    }
    nulls = 0;
    if (PQresultStatus(r) == PGRES_PIPELINE_SYNC) {
      PQclear(r);
      PQexitPipelineMode(p->conn);
      finish_command(p);
      return;
    }
    if (p->kpos < p->nkinds)
      store_result(p, r, p->kinds[p->kpos++]);
    PQclear(r);
  }
}



/* Send one command; its parameters are args[1..nargs] (nil or
 * luaserve.null: NULL; booleans, numbers, strings as text). Prepares
 * `name` first when prepare is set. 1 sent, 0 libpq refused. */
static int send_one(ls_pg_t *p, lua_State *L, const char *sql,
                    const char *name, int prepare, int args, int nargs) {
  const char *ivals[PARAMS_INLINE], **vals = ivals;
  char inum[PARAMS_INLINE][32], (*num)[32] = inum;
  if (nargs > PARAMS_INLINE) {
    vals = malloc(sizeof(*vals) * (size_t)nargs);
    num = malloc(sizeof(*num) * (size_t)nargs);
    if (vals == NULL || num == NULL) {
      free(vals);
      free(num);
      return 0;
    }
  }
  for (int i = 0; i < nargs; i++) {
    lua_rawgeti(L, args, i + 1);
    switch (lua_type(L, -1)) {
    case LUA_TSTRING:   /* the table holds it: the pointer stays valid */
      vals[i] = lua_tostring(L, -1);
      break;
    case LUA_TNUMBER: {
      double d = lua_tonumber(L, -1);
      if (d == floor(d) && fabs(d) < 9e18)
        snprintf(num[i], sizeof(num[i]), "%lld", (long long)d);
      else
        snprintf(num[i], sizeof(num[i]), "%.17g", d);
      vals[i] = num[i];
      break;
    }
    case LUA_TBOOLEAN:
      vals[i] = lua_toboolean(L, -1) ? "t" : "f";
      break;
    default:   /* nil, luaserve.null (pg.lua encodes everything else) */
      vals[i] = NULL;
    }
    lua_pop(L, 1);
  }
  int ok;
  if (prepare)
    ok = PQsendPrepare(p->conn, name, sql, 0, NULL) &&
         PQsendQueryPrepared(p->conn, name, nargs, vals, NULL, NULL, 0);
  else if (name)
    ok = PQsendQueryPrepared(p->conn, name, nargs, vals, NULL, NULL, 0);
  else
    ok = PQsendQueryParams(p->conn, sql, nargs, NULL, vals, NULL, NULL, 0);
  if (vals != ivals) {
    free(vals);
    free(num);
  }
  if (ok) {
    if (prepare)
      p->kinds[p->nkinds++] = LS_PG_PREPARE;
    p->kinds[p->nkinds++] = LS_PG_EXEC;
  }
  return ok;
}


/* Send the command(s) at stack index first.. (each: sql, name, prepare,
 * args, nargs; a batch: `list` of such arrays), then wait for the
 * results. Returns the number of values pushed for Lua. */
static int send_commands(lua_State *L, ls_pg_t *p, int ncmds, int list,
                         int first) {
  int target = 2;
  double timeout_ms = luaL_optnumber(L, 3, 0);
  /* A batch always pipelines (even of one: it may prepare and then run);
   * a lone command only when it prepares. */
  int pipeline = list != 0 || ncmds > 1 || lua_toboolean(L, first + 2);
  size_t cap = (size_t)ncmds * 2;
  p->kinds = cap <= sizeof(p->kinds_inline) ? p->kinds_inline : malloc(cap);
  if (p->kinds == NULL)
    return ls__push_error(L, UV_ENOMEM);
  p->nkinds = p->kpos = 0;
  p->broken = 1;   /* until everything is sent (a raise leaves it so) */
  int ok = !pipeline || PQenterPipelineMode(p->conn);
  for (int i = 1; ok && i <= ncmds; i++) {
    if (list) {
      lua_rawgeti(L, list, i);
      luaL_checktype(L, -1, LUA_TTABLE);
      int c = lua_gettop(L);
      for (int k = 1; k <= 5; k++)
        lua_rawgeti(L, c, k);
      first = c + 1;
    }
    luaL_checktype(L, first + 3, LUA_TTABLE);
    ok = send_one(p, L, luaL_checkstring(L, first),
                  lua_tostring(L, first + 1), lua_toboolean(L, first + 2),
                  first + 3, (int)luaL_checkinteger(L, first + 4));
    if (list)
      lua_pop(L, 6);
  }
  if (ok && pipeline)
    ok = PQpipelineSync(p->conn);
  int flushed = ok ? PQflush(p->conn) : -1;
  if (flushed < 0 ||
      ls__pg_watch(p, flushed ? UV_READABLE | UV_WRITABLE : UV_READABLE, 1)) {
    char msg[256];
    lua_pushnil(L);
    lua_pushstring(L, ls__pg_conn_error(p, msg, sizeof(msg)));
    ls__pg_close(p, NULL);
    return 2;
  }
  p->broken = 0;
  p->pipeline = pipeline;
  p->single = list == 0;
  p->nexec = 0;
  p->phase = LS_PG_BUSY;
  lua_createtable(L, ncmds, 0);
  p->results_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_pushvalue(L, target);
  p->op_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  ls__pg_deadline(p, timeout_ms);
  lua_pushboolean(L, 1);
  return 1;
}


/* conn:query(target, timeout_ms, sql, name, prepare, args, nargs): send
 * one command; target gets its rows or nil, err. `name`: a prepared
 * statement (prepared first from sql when prepare is set), nil: unnamed.
 * Returns true, or nil, err at once (the connection is closed then). */
int ls__pg_query(lua_State *L) {
  ls_pg_t *p = ls__pg_check(L);
  luaL_checkany(L, 2);
  if (!ls__pg_ready(L, p))
    return ls__push_error(L, UV_EOF);
  return send_commands(L, p, 1, 0, 4);
}


/* conn:batch(target, timeout_ms, list): the commands of list ({sql, name,
 * prepare, args, nargs} each) in one pipeline; target gets an array of
 * results (rows, or an error table each). */
int ls__pg_batch(lua_State *L) {
  ls_pg_t *p = ls__pg_check(L);
  luaL_checkany(L, 2);
  luaL_checktype(L, 4, LUA_TTABLE);
  int n = (int)lua_objlen(L, 4);
  if (n < 1)
    return luaL_argerror(L, 4, "no commands");
  if (!ls__pg_ready(L, p))
    return ls__push_error(L, UV_EOF);
  return send_commands(L, p, n, 4, 0);
}


