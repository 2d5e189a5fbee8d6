/* client.c: the HTTP client's response parser, llhttp in response mode fed
 * from Lua one chunk at a time (lua/luaserve/http.lua drives it). It
 * collects the status, the headers and the body up to a size limit, skips
 * 1xx interim responses, knows that a response to HEAD has no body, ends a
 * close-delimited body at the end of the stream (llhttp_finish), and pauses
 * at the end of the response so that bytes after it are seen. Parser
 * callbacks never raise: they copy spans off the chunk and note errors,
 * which execute() reports after llhttp_execute returns. A parser belongs to
 * one Lua state; any thread may use its own. */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define LS_RESP_MT "luaserve.response_parser"
#define RESP_MAX_HEADER_BYTES (64 * 1024)
#define RESP_MAX_HEADERS 256

typedef struct {
  llhttp_t parser;          /* parser.data = this struct */
  const char *err;          /* reason set by a callback (static), or NULL */
  size_t max_body;          /* body bytes allowed; over it: "too large" */
  size_t header_bytes;      /* status line + headers so far */
  unsigned nheaders;
  int is_head;              /* the request was HEAD: no body follows */
  int stream;               /* hand the body out as it comes (p:take) */
  int head_done;            /* stream mode: the final head is in */
  int last_was_value;       /* header callbacks: last span was a value */
  int complete;             /* the final response is in */
  int keep_alive;           /* the connection may carry another request */
  int status;
  ls_buf_t raw;             /* header name and value bytes */
  ls_buf_t hdrs;            /* ls_hdr_t spans into raw */
  ls_buf_t body;
} ls_resp_t;


static int fail(llhttp_t *p, const char *reason) {
  ls_resp_t *r = p->data;
  r->err = reason;
  return HPE_USER;
}


/* Forget what a previous (interim) response left. */
static void resp_clear(ls_resp_t *r) {
  r->header_bytes = 0;
  r->nheaders = 0;
  r->last_was_value = 0;
  r->status = 0;
  r->raw.len = r->hdrs.len = r->body.len = 0;
}


static int on_message_begin(llhttp_t *p) {
  resp_clear(p->data);
  return 0;
}


static int count_header_bytes(ls_resp_t *r, size_t n) {
  r->header_bytes += n;
  return r->header_bytes > RESP_MAX_HEADER_BYTES;
}


static int on_status(llhttp_t *p, const char *at, size_t n) {
  (void)at;
  return count_header_bytes(p->data, n) ? fail(p, "too large") : 0;
}


static int on_header_field(llhttp_t *p, const char *at, size_t n) {
  ls_resp_t *r = p->data;
  if (count_header_bytes(r, n))
    return fail(p, "too large");
  if (r->last_was_value || r->nheaders == 0) {
    if (r->nheaders >= RESP_MAX_HEADERS)
      return fail(p, "too large");
    if (ls__buf_reserve(&r->hdrs, sizeof(ls_hdr_t)))
      return fail(p, "out of memory");
    ls_hdr_t *h = (ls_hdr_t *)(r->hdrs.data + r->hdrs.len);
    r->hdrs.len += sizeof(ls_hdr_t);
    h->name_off = (uint32_t)r->raw.len;
    h->name_len = h->value_off = h->value_len = 0;
    r->nheaders++;
    r->last_was_value = 0;
  }
  ls_hdr_t *h = (ls_hdr_t *)(r->hdrs.data + r->hdrs.len) - 1;
  if (ls__buf_append(&r->raw, at, n))
    return fail(p, "out of memory");
  h->name_len += (uint32_t)n;
  return 0;
}


static int on_header_value(llhttp_t *p, const char *at, size_t n) {
  ls_resp_t *r = p->data;
  if (count_header_bytes(r, n))
    return fail(p, "too large");
  ls_hdr_t *h = (ls_hdr_t *)(r->hdrs.data + r->hdrs.len) - 1;
  if (!r->last_was_value) {
    h->value_off = (uint32_t)r->raw.len;
    r->last_was_value = 1;
  }
  if (ls__buf_append(&r->raw, at, n))
    return fail(p, "out of memory");
  h->value_len += (uint32_t)n;
  return 0;
}


/* Returning 1 tells llhttp that no body follows (a response to HEAD). */
static int on_headers_complete(llhttp_t *p) {
  ls_resp_t *r = p->data;
  r->status = p->status_code;
  if (p->status_code >= 100 && p->status_code < 200)
    return 0;
  if (r->is_head)
    return r->stream ? (r->head_done = 1, 1) : 1;
  if (r->stream) {   /* the caller takes the head now, the body as it comes */
    r->head_done = 1;
    return HPE_PAUSED;
  }
  if ((p->flags & F_CONTENT_LENGTH) && p->content_length > r->max_body)
    return fail(p, "too large");
  return 0;
}


static int on_body(llhttp_t *p, const char *at, size_t n) {
  ls_resp_t *r = p->data;
  if (!r->stream && r->body.len + n > r->max_body)
    return fail(p, "too large");
  if (ls__buf_append(&r->body, at, n))
    return fail(p, "out of memory");
  return 0;
}


/* An interim (1xx) response is dropped and parsing goes on; the final one
 * pauses the parser so execute() can tell how many bytes followed it. */
static int on_message_complete(llhttp_t *p) {
  ls_resp_t *r = p->data;
  if (p->status_code >= 100 && p->status_code < 200 && p->status_code != 101)
    return 0;
  r->complete = 1;
  r->keep_alive = llhttp_should_keep_alive(p);
  return HPE_PAUSED;
}


static const llhttp_settings_t resp_settings = {
  .on_message_begin = on_message_begin,
  .on_status = on_status,
  .on_header_field = on_header_field,
  .on_header_value = on_header_value,
  .on_headers_complete = on_headers_complete,
  .on_body = on_body,
  .on_message_complete = on_message_complete,
};


static ls_resp_t *check_resp(lua_State *L) {
  return luaL_checkudata(L, 1, LS_RESP_MT);
}


/* p:reset(is_head, max_body, stream): ready for the response to a new
 * request. With stream true, execute() stops once the head is in ("head")
 * and the body is taken in pieces (p:take()) instead of collected. */
static int resp_reset(lua_State *L) {
  ls_resp_t *r = check_resp(L);
  r->is_head = lua_toboolean(L, 2);
  r->stream = lua_toboolean(L, 4);
  r->head_done = 0;
  lua_Number max = luaL_optnumber(L, 3, 1024.0 * 1024 * 1024);
  r->max_body = max < 0 ? 0 : max >= (lua_Number)LS_BUF_MAX ? LS_BUF_MAX
                                                            : (size_t)max;
  llhttp_init(&r->parser, HTTP_RESPONSE, &resp_settings);
  r->parser.data = r;
  r->err = NULL;
  r->complete = r->keep_alive = 0;
  resp_clear(r);
  /* Keep small buffers for the next response; give big ones back. */
  if (r->body.cap > 64 * 1024)
    ls__buf_free(&r->body);
  return 0;
}


/* p:execute(data): true, extra (bytes after the response in data) once the
 * response is complete; false while more is needed; nil, err when the
 * response is bad ("bad response: <reason>") or over a limit ("too large"). */
static int resp_execute(lua_State *L) {
  ls_resp_t *r = check_resp(L);
  size_t len;
  const char *data = luaL_checklstring(L, 2, &len);
  if (r->complete) {
    lua_pushboolean(L, 1);
    lua_pushinteger(L, (lua_Integer)len);
    return 2;
  }
  llhttp_errno_t e = llhttp_execute(&r->parser, data, len);
  if (e == HPE_OK) {
    lua_pushboolean(L, 0);
    return 1;
  }
  if (e == HPE_PAUSED && r->stream && r->head_done && !r->complete) {
    /* Stream mode: the head is in; what follows it is the caller's to
     * feed again (execute) once it has taken the head. */
    const char *pos = llhttp_get_error_pos(&r->parser);
    llhttp_resume(&r->parser);
    lua_pushliteral(L, "head");
    lua_pushinteger(L, (lua_Integer)(pos ? pos - data : (ptrdiff_t)len));
    return 2;
  }
  if (e == HPE_PAUSED && r->complete) {
    const char *pos = llhttp_get_error_pos(&r->parser);
    size_t used = pos ? (size_t)(pos - data) : len;
    lua_pushboolean(L, 1);
    lua_pushinteger(L, (lua_Integer)(len - used));
    return 2;
  }
  lua_pushnil(L);
  if (r->err)   /* a callback's reason (from on_headers_complete llhttp
                   reports HPE_CB_HEADERS_COMPLETE, not HPE_USER) */
    lua_pushstring(L, r->err);
  else if (e == HPE_PAUSED_UPGRADE)
    lua_pushliteral(L, "bad response: unexpected protocol upgrade");
  else
    lua_pushfstring(L, "bad response: %s", llhttp_get_error_reason(&r->parser));
  return 2;
}


/* p:finish(): the peer closed the connection. true when that completes the
 * response (a body delimited by the close); else nil, "closed". */
static int resp_finish(lua_State *L) {
  ls_resp_t *r = check_resp(L);
  if (!r->complete && llhttp_get_errno(&r->parser) == HPE_OK) {
    llhttp_errno_t e = llhttp_finish(&r->parser);
    if (e != HPE_OK && r->err && !r->complete) {
      lua_pushnil(L);
      lua_pushstring(L, r->err);
      return 2;
    }
  }
  if (r->complete) {
    r->keep_alive = 0;
    lua_pushboolean(L, 1);
    return 1;
  }
  lua_pushnil(L);
  lua_pushliteral(L, "closed");
  return 2;
}


/* p:result(): status, headers (names lower-cased, repeated ones joined
 * with ", "), body, keep_alive. Only after the response is complete. */
static int resp_result(lua_State *L) {
  ls_resp_t *r = check_resp(L);
  if (!r->complete)
    return luaL_error(L, "response_parser: the response is not complete");
  lua_pushinteger(L, r->status);
  ls__http_push_headers(L, r->raw.data, (const ls_hdr_t *)r->hdrs.data,
                        r->nheaders);
  lua_pushlstring(L, r->body.data ? r->body.data : "", r->body.len);
  lua_pushboolean(L, r->keep_alive);
  return 4;
}


static int resp_gc(lua_State *L) {
  ls_resp_t *r = check_resp(L);
  ls__buf_free(&r->raw);
  ls__buf_free(&r->hdrs);
  ls__buf_free(&r->body);
  return 0;
}


/* response_parser(): a parser userdata; call :reset() before each
 * response. */
int ls__lua_response_parser(lua_State *L) {
  ls_resp_t *r = lua_newuserdata(L, sizeof(*r));
  memset(r, 0, sizeof(*r));
  luaL_getmetatable(L, LS_RESP_MT);
  lua_setmetatable(L, -2);
  llhttp_init(&r->parser, HTTP_RESPONSE, &resp_settings);
  r->parser.data = r;
  r->max_body = 1024 * 1024 * 1024;
  return 1;
}


/* p:head(): status, headers of a response whose head is in (stream mode). */
static int resp_head(lua_State *L) {
  ls_resp_t *r = check_resp(L);
  if (!r->head_done && !r->complete)
    return luaL_error(L, "response_parser: the head is not in yet");
  lua_pushinteger(L, r->status);
  ls__http_push_headers(L, r->raw.data, (const ls_hdr_t *)r->hdrs.data,
                        r->nheaders);
  return 2;
}


/* p:take(): the body bytes parsed since the last take (stream mode), and
 * whether the response is complete (then keep_alive as a third value). */
static int resp_take(lua_State *L) {
  ls_resp_t *r = check_resp(L);
  lua_pushlstring(L, r->body.data ? r->body.data : "", r->body.len);
  r->body.len = 0;
  lua_pushboolean(L, r->complete);
  lua_pushboolean(L, r->keep_alive);
  return 3;
}


static const luaL_Reg resp_methods[] = {
  {"head", resp_head},
  {"take", resp_take},
  {"reset", resp_reset},
  {"execute", resp_execute},
  {"finish", resp_finish},
  {"result", resp_result},
  {NULL, NULL},
};


void ls__client_open(lua_State *L) {
  ls__new_class(L, LS_RESP_MT, resp_methods, resp_gc);
}
