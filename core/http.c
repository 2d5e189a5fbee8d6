/* http.c: the llhttp glue (request assembly, limits) and the formatting of
 * response heads. Parser callbacks never raise and never free: they copy
 * spans off the read buffer into the connection and note errors in
 * c->error_status, which server.c answers after llhttp_execute returns. */
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <strings.h>

#include "internal.h"

static const char continue_100[] = "HTTP/1.1 100 Continue\r\n\r\n";


/* Fail the request with `status`; the reason shows in the 4xx body. */
static int fail(llhttp_t *p, int status, const char *reason) {
  ls_conn_t *c = p->data;
  c->error_status = status;
  c->error_reason = reason;
  llhttp_set_error_reason(p, reason);
  return HPE_USER;
}


static int count_header_bytes(llhttp_t *p, size_t n) {
  ls_conn_t *c = p->data;
  c->header_bytes += n;
  if (c->header_bytes > c->server->lim.max_header_bytes)
    return fail(p, 431, "request header fields too large");
  return 0;
}


static int on_message_begin(llhttp_t *p) {
  ls__http_reset(p->data);
  return 0;
}


static int on_url(llhttp_t *p, const char *at, size_t n) {
  ls_conn_t *c = p->data;
  if (count_header_bytes(p, n))
    return fail(p, 414, "URI too long");
  if (ls__buf_append(&c->req, at, n))
    return fail(p, 503, "out of memory");
  c->url_len += (uint32_t)n;
  return 0;
}


static int on_header_field(llhttp_t *p, const char *at, size_t n) {
  ls_conn_t *c = p->data;
  if (count_header_bytes(p, n))
    return HPE_USER;
  if (c->last_was_value || c->nheaders == 0) {
    if (c->nheaders >= c->server->lim.max_headers)
      return fail(p, 431, "too many header fields");
    if (ls__buf_reserve(&c->hdrs, sizeof(ls_hdr_t)))
      return fail(p, 503, "out of memory");
    ls_hdr_t *h = (ls_hdr_t *)(c->hdrs.data + c->hdrs.len);
    c->hdrs.len += sizeof(ls_hdr_t);
    h->name_off = (uint32_t)c->req.len;
    h->name_len = h->value_off = h->value_len = 0;
    c->nheaders++;
    c->last_was_value = 0;
  }
  ls_hdr_t *h = (ls_hdr_t *)(c->hdrs.data + c->hdrs.len) - 1;
  if (ls__buf_append(&c->req, at, n))
    return fail(p, 503, "out of memory");
  h->name_len += (uint32_t)n;
  return 0;
}


/* End a name or value of the packed headers. */
static int append_nul(llhttp_t *p, ls_conn_t *c) {
  if (c->req.len < c->req.cap) {
    c->req.data[c->req.len++] = '\0';
    return 0;
  }
  if (ls__buf_append(&c->req, "", 1))
    return fail(p, 503, "out of memory");
  return 0;
}


/* llhttp 8.1 takes ": value" (an empty name); a field name is a token.
 * RFC 9112 3.2: more than one Host is a 400. */
static int on_header_field_complete(llhttp_t *p) {
  ls_conn_t *c = p->data;
  if (c->nheaders == 0)
    return fail(p, 400, "empty header field name");
  ls_hdr_t *h = (ls_hdr_t *)(c->hdrs.data + c->hdrs.len) - 1;
  if (h->name_len == 0)
    return fail(p, 400, "empty header field name");
  /* The packed form Lua gets (ls__http_push_request): the name lower-cased
   * in place, a NUL after it. llhttp 8.1 takes "Name : value" except for
   * its own framing headers; RFC 9112 5.1 requires a 400 (the name would
   * reach Lua as "name "). */
  char *name = c->req.data + h->name_off;
  for (uint32_t k = 0; k < h->name_len; k++) {
    char ch = name[k];
    if (ch >= 'A' && ch <= 'Z')
      name[k] = (char)(ch + 32);
    else if (ch == ' ' || ch == '\t')
      return fail(p, 400, "whitespace in a header field name");
  }
  if (h->name_len == 4 && memcmp(name, "host", 4) == 0 && c->host_seen++ > 0)
    return fail(p, 400, "more than one Host header");
  return append_nul(p, c);
}


static int on_header_value(llhttp_t *p, const char *at, size_t n) {
  ls_conn_t *c = p->data;
  if (count_header_bytes(p, n))
    return HPE_USER;
  ls_hdr_t *h = (ls_hdr_t *)(c->hdrs.data + c->hdrs.len) - 1;
  if (!c->last_was_value) {
    h->value_off = (uint32_t)c->req.len;
    c->last_was_value = 1;
  }
  if (ls__buf_append(&c->req, at, n))
    return fail(p, 503, "out of memory");
  h->value_len += (uint32_t)n;
  return 0;
}


/* A value ends: trailing blanks cut (llhttp drops the leading ones), a
 * NUL after it. An empty value had no span: it starts here. */
static int on_header_value_complete(llhttp_t *p) {
  ls_conn_t *c = p->data;
  if (c->nheaders == 0)
    return 0;
  ls_hdr_t *h = (ls_hdr_t *)(c->hdrs.data + c->hdrs.len) - 1;
  if (!c->last_was_value) {
    h->value_off = (uint32_t)c->req.len;
    c->last_was_value = 1;
  }
  while (h->value_len > 0 && (c->req.data[c->req.len - 1] == ' ' ||
                              c->req.data[c->req.len - 1] == '\t')) {
    h->value_len--;
    c->req.len--;
  }
  return append_nul(p, c);
}


/* Does the request carry `Expect: 100-continue`? */
static int wants_continue(ls_conn_t *c) {
  ls_hdr_t *h = (ls_hdr_t *)c->hdrs.data;
  for (unsigned i = 0; i < c->nheaders; i++, h++) {
    if (h->name_len == 6 &&
        strncasecmp(c->req.data + h->name_off, "expect", 6) == 0)
      return h->value_len == 12 &&
             strncasecmp(c->req.data + h->value_off, "100-continue", 12) == 0;
  }
  return 0;
}


/* Is the request's body multipart/form-data (streamed: body.c)? Every
 * request with a body asks: the first letters decide before any compare. */
static int is_multipart(ls_conn_t *c) {
  static const char mp[] = "multipart/form-data";
  const size_t mplen = sizeof(mp) - 1;
  ls_hdr_t *h = (ls_hdr_t *)c->hdrs.data;
  for (unsigned i = 0; i < c->nheaders; i++, h++) {
    const char *name = c->req.data + h->name_off;
    if (h->name_len != 12 || (name[0] | 0x20) != 'c' ||
        (name[8] | 0x20) != 't' || strncasecmp(name, "content-type", 12) != 0)
      continue;
    const char *v = c->req.data + h->value_off;
    size_t n = h->value_len;
    while (n && (*v == ' ' || *v == '\t')) v++, n--;
    return n >= mplen && (v[0] | 0x20) == 'm' &&
           strncasecmp(v, mp, mplen) == 0 &&
           (n == mplen || v[mplen] == ';' || v[mplen] == ' ' || v[mplen] == '\t');
  }
  return 0;
}


static int on_headers_complete(llhttp_t *p) {
  ls_conn_t *c = p->data;
  /* HTTP/0.9 and 2.0 request lines: bad input for this port, a 4xx (a 505
   * would read as the server's fault). */
  if (p->http_major != 1)
    return fail(p, 400, "HTTP version not supported");
  if (p->http_minor >= 1 && !c->host_seen)   /* RFC 9112 3.2 */
    return fail(p, 400, "missing Host header");
  int has_body = (p->flags & F_CHUNKED) || p->content_length > 0;
  /* A multipart body is streamed: the request goes to Lua now, its body
   * as Lua asks for it (body.c), under max_upload instead of max_body. */
  int streamed = has_body && c->server->lim.stream_multipart &&
                 !p->upgrade && is_multipart(c);
  uint64_t limit = streamed ? c->server->lim.max_upload
                            : c->server->lim.max_body;
  if ((p->flags & F_CONTENT_LENGTH) && p->content_length > limit)
    return fail(p, 413, "request body too large");
  c->keepalive = llhttp_should_keep_alive(p) != 0;
  c->in_body = has_body != 0;
  int expect = has_body && p->http_minor >= 1 && wants_continue(c);
  if (streamed) {   /* 100 Continue when Lua first reads the body */
    c->want_continue = expect;
    c->body_total = 0;
    c->body_stream = LS_BODY_DISPATCH;
    return HPE_PAUSED;
  }
  if (expect)
    ls__http_continue(c);
  return 0;
}


/* Send 100 Continue: at headers-complete, or (a streamed request) when
 * Lua first reads the body (body.c). */
void ls__http_continue(ls_conn_t *c) {
  uv_buf_t b = uv_buf_init((char *)continue_100, sizeof(continue_100) - 1);
  ls__conn_write(c, &b, 1);
}


static int on_body(llhttp_t *p, const char *at, size_t n) {
  ls_conn_t *c = p->data;
  if (c->body_stream) {   /* streamed: bounded by max_upload, Lua drains it */
    c->body_total += n;
    if (c->body_total > c->server->lim.max_upload)
      return fail(p, 413, "request body too large");
    if (ls__buf_append(&c->body, at, n))
      return fail(p, 503, "out of memory");
    return 0;
  }
  if (c->body.len + n > c->server->lim.max_body)
    return fail(p, 413, "request body too large");
  if (ls__buf_append(&c->body, at, n))
    return fail(p, 503, "out of memory");
  return 0;
}


static int on_message_complete(llhttp_t *p) {
  ls_conn_t *c = p->data;
  c->in_body = 0;
  /* Upgrade and CONNECT: no protocol switch here; the request is answered
   * as a plain one and the connection closes (llhttp parses no further). */
  c->keepalive = c->keepalive && llhttp_should_keep_alive(p) != 0 && !p->upgrade;
  return HPE_PAUSED;   /* one request at a time: server.c dispatches it */
}


const llhttp_settings_t ls__http_settings = {
  .on_message_begin = on_message_begin,
  .on_url = on_url,
  .on_header_field = on_header_field,
  .on_header_field_complete = on_header_field_complete,
  .on_header_value = on_header_value,
  .on_header_value_complete = on_header_value_complete,
  .on_headers_complete = on_headers_complete,
  .on_body = on_body,
  .on_message_complete = on_message_complete,
};


void ls__http_reset(ls_conn_t *c) {
  c->nheaders = 0;
  c->url_len = 0;
  c->header_bytes = 0;
  c->error_status = 0;
  c->error_reason = NULL;
  c->host_seen = 0;
  c->last_was_value = 0;
  c->req.len = 0;
  c->hdrs.len = 0;
  c->body.len = 0;
  /* Keep small buffers for the next request; give big ones back. */
  if (c->req.cap > 4096) ls__buf_free(&c->req);
  if (c->hdrs.cap > 4096) ls__buf_free(&c->hdrs);
  if (c->body.cap > 4096) ls__buf_free(&c->body);
}


/* Push a table of the n headers h (spans of base): names lower-cased,
 * trailing blanks cut from values, repeated headers joined with ", "
 * (RFC 9110 5.3). Requests and upstream responses both come here. */
/* Whether header i's name came before it (names compared without case;
 * mostly by length alone): only a repeated one is looked up in the table. */
static int repeated(const char *base, const ls_hdr_t *all, unsigned i) {
  const ls_hdr_t *h = &all[i];
  for (unsigned j = 0; j < i; j++)
    if (all[j].name_len == h->name_len &&
        strncasecmp(base + all[j].name_off, base + h->name_off,
                    h->name_len) == 0)
      return 1;
  return 0;
}

void ls__http_push_headers(lua_State *L, const char *base, const ls_hdr_t *all,
                           unsigned n) {
  char name[256];
  lua_createtable(L, 0, (int)n);
  for (unsigned i = 0; i < n; i++) {
    const ls_hdr_t *h = &all[i];
    const char *src = base + h->name_off;
    if (h->name_len < sizeof(name)) {
      for (size_t k = 0; k < h->name_len; k++) {
        char ch = src[k];
        name[k] = (ch >= 'A' && ch <= 'Z') ? (char)(ch + 32) : ch;
      }
      lua_pushlstring(L, name, h->name_len);
    } else {   /* a very long name: lower-case it through a Lua buffer */
      luaL_Buffer b;
      luaL_buffinit(L, &b);
      for (size_t k = 0; k < h->name_len; k++) {
        char ch = src[k];
        luaL_addchar(&b, (ch >= 'A' && ch <= 'Z') ? (char)(ch + 32) : ch);
      }
      luaL_pushresult(&b);
    }
    const char *v = base + h->value_off;
    size_t vlen = h->value_len;
    while (vlen > 0 && (v[vlen - 1] == ' ' || v[vlen - 1] == '\t'))
      vlen--;
    if (!repeated(base, all, i)) {
      lua_pushlstring(L, v, vlen);
    } else {
      lua_pushvalue(L, -1);
      lua_rawget(L, -3);
      lua_pushliteral(L, ", ");
      lua_pushlstring(L, v, vlen);
      lua_concat(L, 3);
    }
    lua_rawset(L, -3);
  }
}


/* Push a table of the headers packed as "name\0value\0..." (names
 * lower-cased): repeated names joined with ", " (RFC 9110 5.3). */
void ls__http_push_packed(lua_State *L, const char *s, size_t len) {
  const char *end = s + len;
  int n = 0;
  for (const char *q = s; (q = memchr(q, 0, (size_t)(end - q))) != NULL; q++)
    n++;
  lua_createtable(L, 0, n / 2);
  while (s < end) {
    const char *nz = memchr(s, 0, (size_t)(end - s));
    if (nz == NULL) break;
    const char *v = nz + 1;
    const char *vz = v < end ? memchr(v, 0, (size_t)(end - v)) : NULL;
    if (vz == NULL) break;
    lua_pushlstring(L, s, (size_t)(nz - s));
    lua_pushvalue(L, -1);
    lua_rawget(L, -3);
    if (lua_isnil(L, -1)) {
      lua_pop(L, 1);
      lua_pushlstring(L, v, (size_t)(vz - v));
    } else {
      lua_pushliteral(L, ", ");
      lua_pushlstring(L, v, (size_t)(vz - v));
      lua_concat(L, 3);
    }
    lua_rawset(L, -3);
    s = vz + 1;
  }
}


/* core.unpack_headers(packed): the table of a request's packed headers. */
int ls__lua_unpack_headers(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  ls__http_push_packed(L, s, len);
  return 1;
}


/* Push method, target, headers, body. The headers are the packed string
 * the parser callbacks built after the target ("name\0value\0...", names
 * lower-cased, values trimmed): Lua makes its table only if the request
 * reads req.headers (core.unpack_headers). */
int ls__http_push_request(lua_State *L, ls_conn_t *c) {
  ls_runtime_t *rt = c->server->rt;
  unsigned m = c->parser.method;
  /* Method strings are made once and kept in the registry. */
  if (m < sizeof(rt->method_refs) / sizeof(rt->method_refs[0])) {
    if (rt->method_refs[m] == 0) {
      lua_pushstring(L, llhttp_method_name((llhttp_method_t)m));
      rt->method_refs[m] = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    lua_rawgeti(L, LUA_REGISTRYINDEX, rt->method_refs[m]);
  } else {
    lua_pushstring(L, llhttp_method_name((llhttp_method_t)m));
  }
  const char *url = c->req.data ? c->req.data : "";
  lua_pushlstring(L, url, c->url_len);
  if (c->req.len > c->url_len)
    lua_pushlstring(L, c->req.data + c->url_len, c->req.len - c->url_len);
  else
    lua_pushliteral(L, "");
  if (c->body_stream)   /* streamed: Lua reads it with body_read */
    lua_pushboolean(L, 0);
  else
    lua_pushlstring(L, c->body.data ? c->body.data : "", c->body.len);
  /* Where the path ends ('?' or the end), and whether it holds a %-escape:
   * Lua then searches the target for neither. */
  const char *q = memchr(url, '?', c->url_len);
  size_t plen = q ? (size_t)(q - url) : c->url_len;
  lua_pushinteger(L, (lua_Integer)plen);
  lua_pushboolean(L, memchr(url, '%', plen) != NULL);
  return 6;
}


const char *ls__http_reason(int status) {
  switch (status) {
  case 100: return "Continue";
  case 101: return "Switching Protocols";
  case 200: return "OK";
  case 201: return "Created";
  case 202: return "Accepted";
  case 204: return "No Content";
  case 206: return "Partial Content";
  case 301: return "Moved Permanently";
  case 302: return "Found";
  case 303: return "See Other";
  case 304: return "Not Modified";
  case 307: return "Temporary Redirect";
  case 308: return "Permanent Redirect";
  case 400: return "Bad Request";
  case 401: return "Unauthorized";
  case 403: return "Forbidden";
  case 404: return "Not Found";
  case 405: return "Method Not Allowed";
  case 408: return "Request Timeout";
  case 409: return "Conflict";
  case 410: return "Gone";
  case 411: return "Length Required";
  case 413: return "Content Too Large";
  case 414: return "URI Too Long";
  case 415: return "Unsupported Media Type";
  case 422: return "Unprocessable Content";
  case 429: return "Too Many Requests";
  case 431: return "Request Header Fields Too Large";
  case 500: return "Internal Server Error";
  case 501: return "Not Implemented";
  case 502: return "Bad Gateway";
  case 503: return "Service Unavailable";
  case 504: return "Gateway Timeout";
  case 505: return "HTTP Version Not Supported";
  default: return "Unknown";
  }
}


/* The Date header value, formatted once a second (loop thread only). */
static const char *http_date(size_t *len) {
  static char buf[40];
  static size_t buf_len;
  static time_t last;
  time_t now = time(NULL);
  if (now != last) {
    struct tm tm;
    gmtime_r(&now, &tm);
    buf_len = strftime(buf, sizeof(buf), "%a, %d %b %Y %H:%M:%S GMT", &tm);
    last = now;
  }
  *len = buf_len;
  return buf;
}


#define APPEND(p, n)                                                        \
  do {                                                                      \
    if (ls__buf_append(&c->out, (p), (n))) return UV_ENOMEM;               \
  } while (0)
#define APPEND_LIT(s) APPEND(s, sizeof(s) - 1)

/* Append one `name: value` line, refusing CR and LF (header injection). */
static int append_header(lua_State *L, ls_conn_t *c, const char *name,
                         size_t nlen, int vidx) {
  size_t vlen;
  const char *v = lua_tolstring(L, vidx, &vlen);
  if (v == NULL)
    return luaL_error(L, "header '%s': value must be a string or number",
                      name);
  for (size_t i = 0; i < nlen; i++)
    if (name[i] == '\r' || name[i] == '\n' || name[i] == ':' || name[i] == 0)
      return luaL_error(L, "header '%s': CR, LF or ':' not allowed", name);
  for (size_t i = 0; i < vlen; i++)
    if (v[i] == '\r' || v[i] == '\n')
      return luaL_error(L, "header '%s': CR, LF or ':' not allowed", name);
  /* one reservation for the line */
  if (ls__buf_reserve(&c->out, nlen + vlen + 4))
    return UV_ENOMEM;
  char *p = c->out.data + c->out.len;
  memcpy(p, name, nlen);
  p += nlen;
  *p++ = ':';
  *p++ = ' ';
  memcpy(p, v, vlen);
  p += vlen;
  *p++ = '\r';
  *p++ = '\n';
  c->out.len = (size_t)(p - c->out.data);
  return 0;
}


/* Write the decimal digits of v at p; returns the end. */
#define PUT_LIT(p, s) (memcpy((p), (s), sizeof(s) - 1), (p) + sizeof(s) - 1)

/* The hot path: the fixed part of the head is written straight into one
 * reservation, no printf. */
int ls__http_format_head(lua_State *L, ls_conn_t *c, int status,
                         const char *ctype, size_t ctype_len, size_t body_len,
                         int headers) {
  /* The content type goes in as it is: it may not end the line. */
  for (size_t k = 0; ctype && k < ctype_len; k++) {
    if (ctype[k] == '\r' || ctype[k] == '\n') {
      if (L == NULL)
        return UV_EINVAL;
      return luaL_error(L, "content type: CR or LF not allowed");
    }
  }
  size_t dlen;
  const char *date = http_date(&dlen);
  const char *reason = ls__http_reason(status);
  size_t rlen = strlen(reason);
  if (c->body_stream && c->body_stream != LS_BODY_END)
    c->keepalive = 0;   /* answered before the body was read: close after */
  c->out.len = 0;
  if (ls__buf_reserve(&c->out, 192 + rlen + dlen + ctype_len))
    return UV_ENOMEM;
  char *p = c->out.data;
  p = PUT_LIT(p, "HTTP/1.1 ");
  if (status >= 100 && status <= 999) {   /* always, from Lua's checks */
    *p++ = (char)('0' + status / 100);
    *p++ = (char)('0' + status / 10 % 10);
    *p++ = (char)('0' + status % 10);
  } else {
    p = ls__put_uint(p, (uint64_t)status);
  }
  *p++ = ' ';
  memcpy(p, reason, rlen);
  p += rlen;
  p = PUT_LIT(p, "\r\nServer: luaserve\r\nDate: ");
  memcpy(p, date, dlen);
  p += dlen;
  p = PUT_LIT(p, "\r\n");
  if (ctype) {
    p = PUT_LIT(p, "Content-Type: ");
    memcpy(p, ctype, ctype_len);
    p += ctype_len;
    p = PUT_LIT(p, "\r\n");
  }
  if (body_len == LS__STREAMED) {
    if (c->keepalive || c->parser.http_minor > 0)
      p = PUT_LIT(p, "Transfer-Encoding: chunked\r\n");
  } else if (status >= 200 && status != 204 && status != 304) {
    p = PUT_LIT(p, "Content-Length: ");
    p = ls__put_uint(p, body_len);
    p = PUT_LIT(p, "\r\n");
  }
  if (status == 101) {
    /* Switching protocols: the headers say Connection: Upgrade */
  } else if (!c->keepalive || c->server->draining) {
    p = PUT_LIT(p, "Connection: close\r\n");
  } else if (c->parser.http_minor == 0) {
    p = PUT_LIT(p, "Connection: keep-alive\r\n");
  }
  c->out.len = (size_t)(p - c->out.data);
  if (headers) {
    lua_pushnil(L);
    while (lua_next(L, headers)) {
      size_t nlen;
      const char *name = lua_tolstring(L, -2, &nlen);
      if (lua_type(L, -2) != LUA_TSTRING)
        return luaL_error(L, "header names must be strings");
      if ((nlen == 14 && strcasecmp(name, "content-length") == 0) ||
          (nlen == 17 && strcasecmp(name, "transfer-encoding") == 0)) {
        /* computed from the body */
      } else if (lua_istable(L, -1)) {
        for (int i = 1;; i++) {
          lua_rawgeti(L, -1, i);
          if (lua_isnil(L, -1)) {
            lua_pop(L, 1);
            break;
          }
          if (append_header(L, c, name, nlen, -1))
            return UV_ENOMEM;
          lua_pop(L, 1);
        }
      } else if (append_header(L, c, name, nlen, -1)) {
        return UV_ENOMEM;
      }
      lua_pop(L, 1);
    }
  }
  APPEND_LIT("\r\n");
  return 0;
}


/* Answer a request that never reached Lua (bad input, limits, overload),
 * then close: after a parse error the stream position is unknown. */
void ls__http_error_response(ls_conn_t *c, int status, const char *detail) {
  char body[256], head[256];
  if (detail == NULL)
    detail = ls__http_reason(status);
  size_t k = 0;
  k += (size_t)snprintf(body, sizeof(body), "{\"detail\":\"");
  for (const char *s = detail; *s && k < sizeof(body) - 4; s++)
    if (*s != '"' && *s != '\\' && (unsigned char)*s >= 0x20)
      body[k++] = *s;
  body[k++] = '"';
  body[k++] = '}';
  size_t dlen;
  const char *date = http_date(&dlen);
  int hn = snprintf(head, sizeof(head),
                    "HTTP/1.1 %d %s\r\nServer: luaserve\r\nDate: %.*s\r\n"
                    "Content-Type: application/json\r\n"
                    "Content-Length: %zu\r\nConnection: close\r\n%s\r\n",
                    status, ls__http_reason(status), (int)dlen, date, k,
                    status == 503 ? "Retry-After: 1\r\n" : "");
  uv_buf_t bufs[2] = {uv_buf_init(head, (unsigned)hn),
                      uv_buf_init(body, (unsigned)k)};
  c->keepalive = 0;
  if (ls__conn_write(c, bufs, 2) != 0)
    ls__conn_close(c);
  else
    ls__conn_linger(c);   /* nothing more is parsed on this connection */
}
