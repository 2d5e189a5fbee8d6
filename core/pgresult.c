/* pgresult.c: PostgreSQL results as Lua values. A command's result becomes
 * a rows table (an array of rows keyed by column name, with `affected`,
 * `command`, `columns` and `types`), a failure an error table
 * {code = SQLSTATE, message, severity, detail, hint, position, ...} with
 * the error metatable luaserve.pg registered; values are decoded from
 * libpq's text format by type: numbers, booleans, strings, bytea, arrays
 * (nested tables), SQL NULL as luaserve.null. JSON columns stay text here
 * and are decoded in Lua, with the project's JSON module (no Lua calls
 * from C). Runs on the loop thread of the runtime whose state L is. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "internal.h"

/* Registry keys of what luaserve.pg gives once (ls__lua_pg_init). */
static const char null_key = 'n';
static const char error_mt_key = 'e';

/* Type OIDs (pg_type.dat): the ones decoded to something else than a
 * string, and the names rows.types gives. */
enum {
  OID_BOOL = 16, OID_BYTEA = 17, OID_CHAR = 18, OID_NAME = 19, OID_INT8 = 20,
  OID_INT2 = 21, OID_INT4 = 23, OID_TEXT = 25, OID_OID = 26, OID_JSON = 114,
  OID_FLOAT4 = 700, OID_FLOAT8 = 701, OID_BPCHAR = 1042, OID_VARCHAR = 1043,
  OID_DATE = 1082, OID_TIME = 1083, OID_TIMESTAMP = 1114,
  OID_TIMESTAMPTZ = 1184, OID_INTERVAL = 1186, OID_TIMETZ = 1266,
  OID_NUMERIC = 1700, OID_UUID = 2950, OID_JSONB = 3802,
  OID_BOOL_A = 1000, OID_BYTEA_A = 1001, OID_CHAR_A = 1002, OID_NAME_A = 1003,
  OID_INT2_A = 1005, OID_INT4_A = 1007, OID_TEXT_A = 1009, OID_BPCHAR_A = 1014,
  OID_VARCHAR_A = 1015, OID_INT8_A = 1016, OID_FLOAT4_A = 1021,
  OID_FLOAT8_A = 1022, OID_OID_A = 1028, OID_TIMESTAMP_A = 1115,
  OID_DATE_A = 1182, OID_TIME_A = 1183, OID_TIMESTAMPTZ_A = 1185,
  OID_INTERVAL_A = 1187, OID_NUMERIC_A = 1231, OID_TIMETZ_A = 1270,
  OID_UUID_A = 2951, OID_JSON_A = 199, OID_JSONB_A = 3807,
};

/* How a value of a type is decoded. */
enum { DEC_TEXT, DEC_BOOL, DEC_INT, DEC_INT8, DEC_FLOAT, DEC_BYTEA, DEC_JSON };

typedef struct {
  unsigned oid;
  const char *name;
  int dec;
  unsigned elem;            /* for arrays: the element type; 0: not one */
} pg_type_t;

static const pg_type_t types[] = {
  {OID_BOOL, "bool", DEC_BOOL, 0}, {OID_BYTEA, "bytea", DEC_BYTEA, 0},
  {OID_CHAR, "char", DEC_TEXT, 0}, {OID_NAME, "name", DEC_TEXT, 0},
  {OID_INT8, "int8", DEC_INT8, 0}, {OID_INT2, "int2", DEC_INT, 0},
  {OID_INT4, "int4", DEC_INT, 0}, {OID_TEXT, "text", DEC_TEXT, 0},
  {OID_OID, "oid", DEC_INT, 0}, {OID_JSON, "json", DEC_JSON, 0},
  {OID_FLOAT4, "float4", DEC_FLOAT, 0}, {OID_FLOAT8, "float8", DEC_FLOAT, 0},
  {OID_BPCHAR, "bpchar", DEC_TEXT, 0}, {OID_VARCHAR, "varchar", DEC_TEXT, 0},
  {OID_DATE, "date", DEC_TEXT, 0}, {OID_TIME, "time", DEC_TEXT, 0},
  {OID_TIMESTAMP, "timestamp", DEC_TEXT, 0},
  {OID_TIMESTAMPTZ, "timestamptz", DEC_TEXT, 0},
  {OID_INTERVAL, "interval", DEC_TEXT, 0}, {OID_TIMETZ, "timetz", DEC_TEXT, 0},
  {OID_NUMERIC, "numeric", DEC_TEXT, 0}, {OID_UUID, "uuid", DEC_TEXT, 0},
  {OID_JSONB, "jsonb", DEC_JSON, 0},
  {OID_BOOL_A, "_bool", DEC_BOOL, OID_BOOL},
  {OID_BYTEA_A, "_bytea", DEC_BYTEA, OID_BYTEA},
  {OID_CHAR_A, "_char", DEC_TEXT, OID_CHAR},
  {OID_NAME_A, "_name", DEC_TEXT, OID_NAME},
  {OID_INT2_A, "_int2", DEC_INT, OID_INT2},
  {OID_INT4_A, "_int4", DEC_INT, OID_INT4},
  {OID_TEXT_A, "_text", DEC_TEXT, OID_TEXT},
  {OID_BPCHAR_A, "_bpchar", DEC_TEXT, OID_BPCHAR},
  {OID_VARCHAR_A, "_varchar", DEC_TEXT, OID_VARCHAR},
  {OID_INT8_A, "_int8", DEC_INT8, OID_INT8},
  {OID_FLOAT4_A, "_float4", DEC_FLOAT, OID_FLOAT4},
  {OID_FLOAT8_A, "_float8", DEC_FLOAT, OID_FLOAT8},
  {OID_OID_A, "_oid", DEC_INT, OID_OID},
  {OID_TIMESTAMP_A, "_timestamp", DEC_TEXT, OID_TIMESTAMP},
  {OID_DATE_A, "_date", DEC_TEXT, OID_DATE},
  {OID_TIME_A, "_time", DEC_TEXT, OID_TIME},
  {OID_TIMESTAMPTZ_A, "_timestamptz", DEC_TEXT, OID_TIMESTAMPTZ},
  {OID_INTERVAL_A, "_interval", DEC_TEXT, OID_INTERVAL},
  {OID_NUMERIC_A, "_numeric", DEC_TEXT, OID_NUMERIC},
  {OID_TIMETZ_A, "_timetz", DEC_TEXT, OID_TIMETZ},
  {OID_UUID_A, "_uuid", DEC_TEXT, OID_UUID},
  {OID_JSON_A, "_json", DEC_JSON, OID_JSON},
  {OID_JSONB_A, "_jsonb", DEC_JSON, OID_JSONB},
};

static const pg_type_t unknown_type = {0, NULL, DEC_TEXT, 0};


static const pg_type_t *find_type(unsigned oid) {
  for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++)
    if (types[i].oid == oid)
      return &types[i];
  return &unknown_type;
}


/* Integers beyond 2^53 lose digits as Lua numbers: they stay strings. */
#define EXACT_MAX 9007199254740992LL


static void push_null(lua_State *L) {
  lua_pushlightuserdata(L, (void *)&null_key);
  lua_rawget(L, LUA_REGISTRYINDEX);
}


/* Push one scalar value, len bytes of text (NUL-terminated at len). */
static void push_scalar(lua_State *L, int dec, const char *s, size_t len) {
  char *end;
  switch (dec) {
  case DEC_BOOL:
    lua_pushboolean(L, s[0] == 't');
    return;
  case DEC_INT:
    lua_pushnumber(L, (lua_Number)strtol(s, NULL, 10));
    return;
  case DEC_INT8: {
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno == 0 && v <= EXACT_MAX && v >= -EXACT_MAX)
      lua_pushnumber(L, (lua_Number)v);
    else
      lua_pushlstring(L, s, len);
    return;
  }
  case DEC_FLOAT:
    lua_pushnumber(L, strtod(s, NULL));   /* NaN, Infinity, -Infinity too */
    return;
  case DEC_BYTEA: {
    size_t n;
    unsigned char *b = PQunescapeBytea((const unsigned char *)s, &n);
    if (b == NULL) {
      lua_pushlstring(L, s, len);
      return;
    }
    lua_pushlstring(L, (const char *)b, n);
    PQfreemem(b);
    return;
  }
  default:
    lua_pushlstring(L, s, len);
  }
}


/* ---- arrays ---------------------------------------------------------------
 * The text form: {1,2,NULL}, {"a b","x\"y"}, nested {{1,2},{3,4}},
 * possibly with dimensions first ([0:1]={1,2}). Elements are decoded
 * like scalars of the element type (json elements stay text). */

typedef struct {
  const char *p, *end;
  char *tmp;                /* scratch for one unquoted element */
  size_t tmp_cap;
} arr_t;


static int arr_element(lua_State *L, arr_t *a, int dec) {
  const char *p = a->p;
  size_t n = 0;
  int quoted = *p == '"';
  if (quoted)
    p++;
  /* copy the element into tmp, unescaping */
  while (p < a->end) {
    char c = *p;
    if (quoted) {
      if (c == '"') { p++; break; }
      if (c == '\\' && p + 1 < a->end) c = *++p;
    } else if (c == ',' || c == '}') {
      break;
    }
    if (n + 1 >= a->tmp_cap) {
      size_t cap = a->tmp_cap ? a->tmp_cap * 2 : 64;
      char *t = realloc(a->tmp, cap);
      if (t == NULL)
        return -1;
      a->tmp = t;
      a->tmp_cap = cap;
    }
    a->tmp[n++] = c;
    p++;
  }
  a->p = p;
  if (a->tmp == NULL && n == 0) {   /* an empty unquoted element: "" */
    lua_pushliteral(L, "");
    return 0;
  }
  a->tmp[n] = '\0';
  if (!quoted && n == 4 && strncmp(a->tmp, "NULL", 4) == 0)
    push_null(L);
  else
    push_scalar(L, dec == DEC_JSON ? DEC_TEXT : dec, a->tmp, n);
  return 0;
}


/* Parse one {...} level at a->p into a table on the stack. */
static int arr_level(lua_State *L, arr_t *a, int dec, int depth) {
  if (depth > 32 || a->p >= a->end || *a->p != '{')
    return -1;
  a->p++;
  lua_newtable(L);
  int i = 0;
  if (a->p < a->end && *a->p == '}') {
    a->p++;
    return 0;
  }
  while (a->p < a->end) {
    int r = *a->p == '{' ? arr_level(L, a, dec, depth + 1)
                         : arr_element(L, a, dec);
    if (r < 0)
      return -1;
    lua_rawseti(L, -2, ++i);
    if (a->p >= a->end)
      return -1;
    if (*a->p == ',') {
      a->p++;
      continue;
    }
    if (*a->p == '}') {
      a->p++;
      return 0;
    }
    return -1;
  }
  return -1;
}


/* Push an array value as a table; the text itself if it does not parse. */
static void push_array(lua_State *L, int dec, const char *s, size_t len) {
  arr_t a = {s, s + len, NULL, 0};
  if (*s == '[') {   /* explicit dimensions: skip to the '=' */
    const char *eq = memchr(s, '=', len);
    if (eq)
      a.p = eq + 1;
  }
  int top = lua_gettop(L);
  if (arr_level(L, &a, dec, 0) < 0) {
    lua_settop(L, top);
    lua_pushlstring(L, s, len);
  }
  free(a.tmp);
}


/* ---- results ------------------------------------------------------------- */

/* Push an error table for a failed result (r may be NULL: the
 * connection's message). Fields: code, message, severity, detail, hint,
 * position, where, schema, table, column, constraint. */
void ls__pg_push_error(lua_State *L, const PGresult *r, const char *fallback) {
  static const struct { int field; const char *name; } fields[] = {
    {PG_DIAG_SQLSTATE, "code"}, {PG_DIAG_MESSAGE_PRIMARY, "message"},
    {PG_DIAG_SEVERITY_NONLOCALIZED, "severity"},
    {PG_DIAG_MESSAGE_DETAIL, "detail"}, {PG_DIAG_MESSAGE_HINT, "hint"},
    {PG_DIAG_STATEMENT_POSITION, "position"}, {PG_DIAG_CONTEXT, "where"},
    {PG_DIAG_SCHEMA_NAME, "schema"}, {PG_DIAG_TABLE_NAME, "table"},
    {PG_DIAG_COLUMN_NAME, "column"},
    {PG_DIAG_CONSTRAINT_NAME, "constraint"},
  };
  lua_createtable(L, 0, 4);
  for (size_t i = 0; r && i < sizeof(fields) / sizeof(fields[0]); i++) {
    const char *v = PQresultErrorField(r, fields[i].field);
    if (v) {
      lua_pushstring(L, v);
      lua_setfield(L, -2, fields[i].name);
    }
  }
  lua_getfield(L, -1, "message");
  int has_message = !lua_isnil(L, -1);
  lua_pop(L, 1);
  if (!has_message) {
    const char *m = r ? PQresultErrorMessage(r) : NULL;
    if (m == NULL || *m == '\0')
      m = fallback && *fallback ? fallback : "unknown error";
    size_t n = strcspn(m, "\n");   /* the first line */
    lua_pushlstring(L, m, n);
    lua_setfield(L, -2, "message");
  }
  lua_pushlightuserdata(L, (void *)&error_mt_key);
  lua_rawget(L, LUA_REGISTRYINDEX);
  lua_setmetatable(L, -2);
}


/* Push the rows of a PGRES_TUPLES_OK or PGRES_COMMAND_OK result. */
void ls__pg_push_rows(lua_State *L, const PGresult *r) {
  int nrows = PQntuples(r), ncols = PQnfields(r);
  const pg_type_t *ct[64], **colt = ct;
  luaL_checkstack(L, ncols + 8, "pg: too many columns");
  if (ncols > 64) {
    colt = malloc(sizeof(*colt) * (size_t)ncols);
    if (colt == NULL) {
      luaL_error(L, "pg: out of memory");
      return;
    }
  }
  /* rows: an array (it encodes as a JSON array); what describes it is in
   * its metatable, which is its own __index: rows.affected, rows.command,
   * rows.columns, rows.types. */
  lua_createtable(L, nrows, 0);
  int rows = lua_gettop(L);
  lua_createtable(L, 0, 6);
  int meta = rows + 1;
  lua_pushvalue(L, meta);
  lua_setfield(L, meta, "__index");
  const char *tuples = PQcmdTuples((PGresult *)r);
  lua_pushnumber(L, *tuples ? strtod(tuples, NULL) : 0);
  lua_setfield(L, meta, "affected");
  lua_pushstring(L, PQcmdStatus((PGresult *)r));
  lua_setfield(L, meta, "command");
  lua_createtable(L, ncols, 0);   /* columns: rows + 2 */
  lua_createtable(L, ncols, 0);   /* types: rows + 3 */
  int has_json = 0;
  for (int c = 0; c < ncols; c++) {
    const pg_type_t *t = find_type(PQftype(r, c));
    colt[c] = t;
    if (t->dec == DEC_JSON)
      has_json = 1;
    lua_pushstring(L, PQfname(r, c));
    lua_rawseti(L, rows + 2, c + 1);
    if (t->name)
      lua_pushstring(L, t->name);
    else
      lua_pushinteger(L, (lua_Integer)PQftype(r, c));
    lua_rawseti(L, rows + 3, c + 1);
  }
  lua_setfield(L, meta, "types");
  lua_pushvalue(L, rows + 2);
  lua_setfield(L, meta, "columns");
  if (has_json) {   /* Lua decodes these columns */
    lua_pushboolean(L, 1);
    lua_setfield(L, meta, "_json");
  }
  lua_pushvalue(L, meta);
  lua_setmetatable(L, rows);
  /* stack: rows, meta, columns; the names go on top for the rows */
  for (int c = 0; c < ncols; c++)
    lua_rawgeti(L, rows + 2, c + 1);
  int names = rows + 3;   /* the first of the name strings */
  for (int i = 0; i < nrows; i++) {
    lua_createtable(L, 0, ncols);
    for (int c = 0; c < ncols; c++) {
      lua_pushvalue(L, names + c);
      if (PQgetisnull(r, i, c)) {
        push_null(L);
      } else {
        const char *v = PQgetvalue(r, i, c);
        size_t len = (size_t)PQgetlength(r, i, c);
        const pg_type_t *t = colt[c];
        if (t->elem)
          push_array(L, t->dec, v, len);
        else
          push_scalar(L, t->dec == DEC_JSON ? DEC_TEXT : t->dec, v, len);
      }
      lua_rawset(L, -3);
    }
    lua_rawseti(L, rows, i + 1);
  }
  lua_settop(L, rows);
  if (colt != ct)
    free(colt);
}


/* pg_init(null, error_mt): what results use for SQL NULL and errors. */
int ls__lua_pg_init(lua_State *L) {
  luaL_checkany(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_pushlightuserdata(L, (void *)&null_key);
  lua_pushvalue(L, 1);
  lua_rawset(L, LUA_REGISTRYINDEX);
  lua_pushlightuserdata(L, (void *)&error_mt_key);
  lua_pushvalue(L, 2);
  lua_rawset(L, LUA_REGISTRYINDEX);
  return 0;
}
