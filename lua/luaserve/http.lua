-- luaserve.http: an HTTP/1.1 client on the loop. Every call returns a
-- future (a task, so gather, wait_for and Semaphore compose with it);
-- await gives a response, or nil, err.
--
--   local res, err = await(http.get("http://127.0.0.1:9000/json"))
--   if not res then return 502, { detail = err } end
--   res.status, res.headers["Content-Type"], res.body, res:json()
--
-- err is short and machine-readable: "timeout", "connection refused",
-- "dns: <reason>", "closed" (the peer closed or reset the connection
-- before the response was complete), "too large" (over max_body or the
-- header limit), "bad response: <reason>", "bad url: <url>", "tls:
-- <reason>" ("tls: certificate verify failed: <why>", "tls: hostname
-- mismatch", "tls: handshake timeout"), "cancelled".
--
-- https:// verifies the server against the system CA store (Debian's
-- ca-certificates) with SNI and a check of the name (an IP literal is
-- checked as an IP); verify = false turns that off, ca_file trusts a CA of
-- your own, cert_file + key_file present a client certificate, and
-- server_name checks another name than the URL's host. A redirect to
-- another host, or from https to http, drops Authorization, Cookie and
-- Proxy-Authorization.
--
-- Timeouts (seconds, see M.DEFAULTS): connect_timeout (DNS and connect),
-- send_timeout and read_timeout (each send, each wait for bytes), and
-- timeout: the deadline of the whole call, redirects and the retry
-- included; a call made by a request that has a deadline (--timeout-request
-- or a route's timeout) ends by then at the latest. Connections are kept
-- alive in a pool per host and port (the
-- luaserve.tcp pool: keepalive_timeout seconds idle, at most pool_size idle
-- connections per host and port); one goes back only after a complete
-- response that allows it. A request that fails on a pooled connection
-- before any byte of the response came back (the peer had closed it) is
-- retried once on a new connection when its method is idempotent.
-- Cancelling the future (wait_for expiring, gather failing, the request's
-- client going away) closes the connection; it never returns to the pool.
--
-- Everything here runs in whichever Lua state calls it, on that state's
-- loop (the main state, or a pool thread's own).

local core = require "luaserve.core"
local future = require "luaserve.future"
local dbpool = require "luaserve.dbpool"   -- tie: a stream ends with its task
local json = require "luaserve.json"
local request_mod = require "luaserve.request"
local tcp = require "luaserve.tcp"

local await = future.await
local resolved = future.resolved
local spawn = future.spawn
local on_cancel = future.on_cancel
local now = core.now
local new_parser = core.response_parser
local headers_mt = request_mod.headers_mt
local setmetatable = setmetatable
local concat = table.concat
local lower = string.lower
local upper = string.upper
local find = string.find
local sub = string.sub
local match = string.match
local gsub = string.gsub
local format = string.format
local byte = string.byte
local type = type
local pairs = pairs
local tostring = tostring
local tonumber = tonumber
local error = error

local tie, untie = dbpool.tie, dbpool.untie
local M = {}

--- Defaults of every option; change a field to change it for the state.
M.DEFAULTS = {
  connect_timeout = 10,        -- s, DNS included
  send_timeout = 30,           -- s, each send
  read_timeout = 30,           -- s, each wait for bytes
  timeout = 60,                -- s, the whole call
  max_body = 10 * 1024 * 1024, -- bytes of response body; over it: "too large"
  keepalive = true,            -- reuse connections
  keepalive_timeout = 30,      -- s a pooled connection may stay idle
  pool_size = 64,              -- idle connections kept per host and port
  follow_redirects = 0,        -- redirects to follow (0: none)
  verify = true,               -- https: check the server's certificate
  ca_file = nil,               -- https: trust these CAs instead of the system's
  cert_file = nil,             -- https: a client certificate (PEM) ...
  key_file = nil,              -- ... and its key
  server_name = nil,           -- https: the name to send and check (default: the host)
}

M.USER_AGENT = "luaserve/" .. core.version

local IDEMPOTENT = { GET = true, HEAD = true, OPTIONS = true, PUT = true,
  DELETE = true, TRACE = true }
local REDIRECT = { [301] = true, [302] = true, [303] = true, [307] = true,
  [308] = true }


-- ---------------------------------------------------------------------------
-- Responses

local Response = {}
Response.__index = Response
Response.__name = "luaserve.http.Response"


function Response.__tostring(r)
  return format("luaserve.http.Response (%d, %d bytes)", r.status, #r.body)
end


--- res:json(): the body decoded, or nil, err when it is not JSON.
function Response:json()
  local v, err = json.decode(self.body)
  if v == nil and err then return nil, "bad json: " .. tostring(err) end
  return v
end

M.Response = Response


-- ---------------------------------------------------------------------------
-- URLs

--- parse_url(url): { scheme, host (no brackets), port, authority (for the
-- Host header), target (path and query) }, or nil, err.
function M.parse_url(url)
  local scheme, rest = match(url, "^(%a[%w+.-]*)://(.*)$")
  if not scheme then return nil, "bad url: " .. url end
  scheme = lower(scheme)
  if scheme ~= "http" and scheme ~= "https" then
    return nil, "bad url: unsupported scheme " .. scheme
  end
  local authority, target = match(rest, "^([^/?#]*)(.*)$")
  target = gsub(target, "#.*$", "")
  if find(target, "[%s%c]") then return nil, "bad url: " .. url end
  if target == "" then target = "/"
  elseif byte(target, 1) == 63 then target = "/" .. target end   -- "?"
  if find(authority, "@", 1, true) then
    return nil, "bad url: credentials in the url are not supported"
  end
  local host, port
  if byte(authority, 1) == 91 then   -- "[v6]" or "[v6]:port"
    host, port = match(authority, "^%[([%x:.]+)%]:?(%d*)$")
  else
    host, port = match(authority, "^([^:]+):?(%d*)$")
  end
  if not host then return nil, "bad url: " .. url end
  local default_port = scheme == "https" and 443 or 80
  port = port ~= "" and tonumber(port) or default_port
  if port < 1 or port > 65535 then return nil, "bad url: port out of range" end
  local hosthdr = find(host, ":", 1, true) and "[" .. host .. "]" or host
  if port ~= default_port then hosthdr = hosthdr .. ":" .. port end
  return { scheme = scheme, host = host, port = port, authority = hosthdr,
    target = target }
end
local parse_url = M.parse_url


-- The absolute URL a Location header names, relative to base (parsed).
local function resolve_location(base, loc)
  if match(loc, "^%a[%w+.-]*://") then return loc end
  local origin = base.scheme .. "://" .. base.authority
  if sub(loc, 1, 2) == "//" then return base.scheme .. ":" .. loc end
  if byte(loc, 1) == 47 then return origin .. loc end   -- "/"
  local dir = match(base.target, "^([^?]*/)") or "/"
  return origin .. dir .. loc
end


local function escape(s)
  return (gsub(tostring(s), "[^%w%-%._~]", function(c)
    return format("%%%02X", byte(c))
  end))
end


local function encode_query(q)
  local keys = {}
  for k in pairs(q) do keys[#keys + 1] = tostring(k) end
  table.sort(keys)
  local out = {}
  for _, k in ipairs(keys) do
    local v = q[k]
    if type(v) == "table" then
      for _, x in ipairs(v) do out[#out + 1] = escape(k) .. "=" .. escape(x) end
    else
      out[#out + 1] = escape(k) .. "=" .. escape(v)
    end
  end
  return concat(out, "&")
end


-- ---------------------------------------------------------------------------
-- Reading a response

local parsers, nparsers = {}, 0   -- idle parsers, reused


local function take_parser()
  if nparsers > 0 then
    local p = parsers[nparsers]
    parsers[nparsers] = nil
    nparsers = nparsers - 1
    return p
  end
  return new_parser()
end


local function give_parser(p)
  if nparsers < 64 then
    nparsers = nparsers + 1
    parsers[nparsers] = p
  end
end


local function remaining(deadline)
  if deadline == nil then return nil end
  return deadline - now()
end


-- The read timeout of the next wait: the socket's, capped by the deadline.
local function cap(t, deadline)
  local left = remaining(deadline)
  if left == nil then return t end
  if left <= 0 then return nil end
  if t == nil or t <= 0 or left < t then return left end
  return t
end


--- read_response(sock, opts): read one response off sock. opts: head (the
-- request was HEAD), max_body, deadline (loop time, see core.now), each
-- optional. Returns status, headers (case-insensitive), body, reusable
-- (the connection may carry another request) — or nil, err, got_bytes.
-- The socket is left open either way; the caller closes or pools it.
function M.read_response(sock, opts)
  opts = opts or {}
  local p = take_parser()
  p:reset(opts.head, opts.max_body or M.DEFAULTS.max_body)
  local read_timeout = sock.read_timeout
  local deadline = opts.deadline
  local got = false
  local ok, extra
  while true do
    local t = cap(read_timeout, deadline)
    if t == nil then give_parser(p) return nil, "timeout", got end
    sock.read_timeout = t
    local chunk, err = await(sock:receive())
    sock.read_timeout = read_timeout
    if chunk == nil then
      if err == "closed" and got then
        local fok, ferr = p:finish()
        if fok then ok, extra = true, 0 break end
        err = ferr
      elseif err ~= "timeout" and err ~= "cancelled" and
          sub(err, 1, 4) ~= "tls:" then
        err = "closed"   -- reset, broken pipe: the peer is gone
      end
      give_parser(p)
      return nil, err, got
    end
    got = true
    ok, extra = p:execute(chunk)
    if ok == nil then give_parser(p) return nil, extra, got end
    if ok then break end
  end
  local status, headers, body, keep = p:result()
  give_parser(p)
  return status, setmetatable(headers, headers_mt), body, keep and extra == 0
end
local read_response = M.read_response


-- An option of a call, or its default.
local function opt(o, k)
  local v = o[k]
  if v == nil then v = M.DEFAULTS[k] end
  return v
end


-- ---------------------------------------------------------------------------
-- Streamed responses (opts.stream): the head at once, the body on demand

local StreamResponse = {}
StreamResponse.__index = StreamResponse
StreamResponse.__name = "luaserve.http.StreamResponse"
M.StreamResponse = StreamResponse


function StreamResponse.__tostring(r)
  return format("luaserve.http.StreamResponse (%d, %s)", r.status,
    r._done and "read" or "reading")
end


-- The body is over (or abandoned): the connection goes back to the pool
-- when it may, else it is closed; the parser goes back too.
local function stream_finish(r, keep)
  if r._done then return end
  r._done = true
  untie(r)
  local sock = r._sock
  r._sock = nil
  if keep and opt(r._o, "keepalive") ~= false then
    sock:setkeepalive(opt(r._o, "keepalive_timeout"), opt(r._o, "pool_size"))
  else
    sock:close()
  end
  give_parser(r._p)
  r._p = nil
end


-- The next piece of the body; nil at its end; nil, err on failure.
local function stream_read(r)
  local sock, p = r._sock, r._p
  local remove = on_cancel(function() stream_finish(r, false) end)
  local result, err
  while true do
    local data = r._left
    r._left = nil
    if data == nil then
      local e
      data, e = await(sock:receive())
      if data == nil then
        if e == "closed" then
          if p:finish() then   -- a body the close ends
            local body = p:take()
            stream_finish(r, false)
            result = body ~= "" and body or nil
            break
          end
        end
        stream_finish(r, false)
        err = (e == "timeout" or sub(e, 1, 4) == "tls:") and e or "closed"
        break
      end
    end
    local ok, extra = p:execute(data)
    if ok == nil then
      stream_finish(r, false)
      err = extra
      break
    end
    local body, complete, keep = p:take()
    if complete then stream_finish(r, keep and extra == 0) end
    if body ~= "" then result = body break end
    if complete then break end
  end
  if remove then remove() end
  if err then return nil, err end
  return result
end


--- res:read(): a future of the next piece of the body as it arrives, of
-- nil at its end, or of nil, err. Nothing more is read from the socket
-- until it is called (back-pressure).
function StreamResponse:read()
  if self._done and self._left == nil then return resolved(nil) end
  if self._reading then error("http: a read of this response is already waiting", 2) end
  self._reading = true
  local f = spawn(function()
    local chunk, err = stream_read(self)
    self._reading = false
    return chunk, err
  end):future()
  return f
end


--- res:chunks(): an iterator over the body's pieces (each step awaits);
-- it ends at the end of the body; res.error says why it ended early.
function StreamResponse:chunks()
  return function()
    local chunk, err = await(self:read())
    if chunk == nil then self.error = err return nil end
    return chunk
  end
end


--- res:close(): stop reading; the connection is closed.
function StreamResponse:close()
  if not self._done then stream_finish(self, false) end
end


-- Read a response's head in stream mode: a StreamResponse, or nil, err,
-- got_bytes.
local function read_stream_head(sock, method, deadline, o)
  local p = take_parser()
  p:reset(method == "HEAD", nil, true)
  local read_timeout = sock.read_timeout
  local got = false
  while true do
    local t = cap(read_timeout, deadline)
    if t == nil then give_parser(p) return nil, "timeout", got end
    sock.read_timeout = t
    local chunk, err = await(sock:receive())
    sock.read_timeout = read_timeout
    if chunk == nil then
      give_parser(p)
      if err ~= "timeout" and err ~= "cancelled" and sub(err, 1, 4) ~= "tls:" then
        err = "closed"
      end
      return nil, err, got
    end
    got = true
    local state, n = p:execute(chunk)
    if state == nil then give_parser(p) return nil, n, got end
    if state == "head" or state == true then
      local status, headers = p:head()
      local r = setmetatable({ status = status, headers = setmetatable(headers,
        headers_mt), _sock = sock, _p = p, _o = o, _done = false }, StreamResponse)
      if state == "head" then
        r._left = sub(chunk, n + 1)
        -- A request that ends without reading it to its end (or closing
        -- it) closes it then: the connection is never left open.
        tie(r)
      else   -- complete already (a HEAD's answer): n bytes came after it
        local _, _, keep = p:take()
        stream_finish(r, keep and n == 0)
      end
      return r
    end
  end
end


-- ---------------------------------------------------------------------------
-- Requests

-- Raise (at the caller's level) on a header that would break the request.
local function check_headers(h, level)
  if h == nil then return end
  if type(h) ~= "table" then error("http: headers must be a table", level + 1) end
  for k, v in pairs(h) do
    k = tostring(k)
    if k == "" or find(k, "[%c%s:]") then
      error(format("http: bad header name %q", k), level + 1)
    end
    local vs = type(v) == "table" and v or { v }
    for _, x in ipairs(vs) do
      if find(tostring(x), "[\r\n]") then
        error(format("http: bad value of header %q", k), level + 1)
      end
    end
  end
end


-- The request's bytes: request line, headers, body.
local function build(method, u, o, body)
  local head = { method, " ", u.target, " HTTP/1.1\r\n" }
  local n = #head
  local has = {}
  local hdrs = o.headers
  if hdrs then
    for k, v in pairs(hdrs) do
      k = tostring(k)
      has[lower(k)] = true
      if type(v) == "table" then
        for _, x in ipairs(v) do
          x = tostring(x)
          head[n + 1], head[n + 2], head[n + 3], head[n + 4] = k, ": ", x, "\r\n"
          n = n + 4
        end
      else
        v = tostring(v)
        head[n + 1], head[n + 2], head[n + 3], head[n + 4] = k, ": ", v, "\r\n"
        n = n + 4
      end
    end
  end
  local function add(k, v)
    head[n + 1], head[n + 2], head[n + 3], head[n + 4] = k, ": ", v, "\r\n"
    n = n + 4
  end
  if not has.host then add("Host", u.authority) end
  if not has["user-agent"] then add("User-Agent", M.USER_AGENT) end
  if body ~= nil then
    if not has["content-length"] and not has["transfer-encoding"] then
      add("Content-Length", tostring(#body))
    end
  elseif method == "POST" or method == "PUT" or method == "PATCH" then
    if not has["content-length"] then add("Content-Length", "0") end
  end
  if opt(o, "keepalive") == false and not has.connection then
    add("Connection", "close")
  end
  head[n + 1] = "\r\n"
  if body ~= nil and body ~= "" then head[n + 2] = body end
  return concat(head)
end


-- A failure on a pooled connection before any response byte: the peer had
-- closed it while it was idle.
local function stale(err, got)
  return not got and (err == "closed" or err == "connection reset by peer" or
    err == "broken pipe")
end


local function short_error(err)
  if err == "connection reset by peer" or err == "broken pipe" or
      err == "end of file" then
    return "closed"
  end
  return err
end


-- TLS settings of a call: the client context's options and the pool key
-- part that keeps connections with other settings apart.
local function tls_options(u, o)
  local t = {
    verify = opt(o, "verify") ~= false,
    ca_file = opt(o, "ca_file"),
    cert_file = opt(o, "cert_file"),
    key_file = opt(o, "key_file"),
    server_name = opt(o, "server_name") or u.host,
    alpn = "http/1.1",
  }
  local ctx, key = tcp.client_context(t)
  if not ctx then return nil, key end
  return t, key .. "|" .. t.server_name
end


-- One try on one connection: a response, or nil, err, retryable.
local function attempt(st, u, raw, method, o, deadline, fresh)
  local left = remaining(deadline)
  if left and left <= 0 then return nil, "timeout" end
  local tls, pool = nil, "http://" .. u.host .. ":" .. u.port
  if u.scheme == "https" then
    local tkey
    tls, tkey = tls_options(u, o)
    if not tls then return nil, tkey end
    pool = "https://" .. u.host .. ":" .. u.port .. "|" .. tkey
  end
  local sock, err = await(tcp.connect(u.host, u.port, {
    timeout = cap(opt(o, "connect_timeout"), deadline),
    read_timeout = opt(o, "read_timeout"),
    pool = pool,
    reuse = not fresh and opt(o, "keepalive") ~= false,
  }))
  if not sock then return nil, short_error(err) end
  st.sock = sock
  local reused = sock:getreusedtimes() > 0
  if tls and not reused then
    tls.timeout = cap(opt(o, "connect_timeout"), deadline)
    local ok, terr = await(sock:sslhandshake(tls))
    if not ok then
      sock:close()
      st.sock = nil
      return nil, terr
    end
  end
  sock:settimeouts(nil, cap(opt(o, "send_timeout"), deadline))
  local ok, serr = await(sock:send(raw))
  if not ok then
    sock:close()
    st.sock = nil
    return nil, short_error(serr), reused and stale(serr, false)
  end
  if o.stream then
    local res, rerr, got = read_stream_head(sock, method, deadline, o)
    if not res then
      sock:close()
      st.sock = nil
      return nil, rerr, reused and stale(rerr, got)
    end
    st.sock = nil
    return res
  end
  local status, headers, body, keep = read_response(sock, {
    head = method == "HEAD",
    max_body = opt(o, "max_body"),
    deadline = deadline,
  })
  if status == nil then
    sock:close()
    st.sock = nil
    return nil, headers, reused and stale(headers, body)
  end
  st.sock = nil
  if keep and opt(o, "keepalive") ~= false then
    sock:setkeepalive(opt(o, "keepalive_timeout"), opt(o, "pool_size"))
  else
    sock:close()
  end
  return setmetatable({ status = status, headers = headers, body = body },
    Response)
end


-- Headers that carry credentials: never sent on to another host.
local CREDENTIALS = { authorization = true, cookie = true,
  ["proxy-authorization"] = true }


local function without_credentials(h)
  if h == nil then return nil end
  local out = {}
  for k, v in pairs(h) do
    if not CREDENTIALS[lower(tostring(k))] then out[k] = v end
  end
  return out
end


-- The body of a request's task: tries, the retry, redirects.
local function run(method, url, o, body, request_deadline)
  local timeout = opt(o, "timeout")
  local deadline = timeout and timeout > 0 and now() + timeout or nil
  -- A call made by a request with a deadline ends by then at the latest.
  if request_deadline and (deadline == nil or request_deadline < deadline) then
    deadline = request_deadline
  end
  local st = {}
  local remove = on_cancel(function()
    local s = st.sock
    st.sock = nil
    if s then s:close() end
  end)
  local redirects = opt(o, "follow_redirects") or 0
  local res, err
  while true do
    local u
    u, err = parse_url(url)
    if not u then break end
    if o.query then
      u.target = u.target .. (find(u.target, "?", 1, true) and "&" or "?") ..
        encode_query(o.query)
    end
    local raw = build(method, u, o, body)
    local retry
    res, err, retry = attempt(st, u, raw, method, o, deadline, false)
    if not res and retry and IDEMPOTENT[method] then
      res, err = attempt(st, u, raw, method, o, deadline, true)
    end
    if not res or redirects <= 0 or not REDIRECT[res.status] then break end
    local loc = res.headers.location
    if not loc then break end
    if res.close then res:close() end   -- a streamed redirect's body: dropped
    redirects = redirects - 1
    url = resolve_location(u, loc)
    if res.status == 303 or ((res.status == 301 or res.status == 302) and
        method ~= "GET" and method ~= "HEAD") then
      method, body = "GET", nil
    end
    local over = { query = false }
    local nu = parse_url(url)
    if nu and (nu.host ~= u.host or nu.port ~= u.port or
        (u.scheme == "https" and nu.scheme ~= "https")) then
      over.headers = without_credentials(o.headers)
    end
    o = setmetatable(over, { __index = o })
  end
  if remove then remove() end
  if res then
    res.url = url
    return res
  end
  return nil, err
end


--- request{method=, url=, headers=, body=, json=, query=, timeout=, ...}:
-- a future of a response, or of nil, err. Options (defaults in
-- M.DEFAULTS): headers ({name = value or {values}}), body (a string),
-- json (a value sent as JSON), query (a table appended to the url),
-- timeout, connect_timeout, send_timeout, read_timeout, max_body,
-- keepalive, keepalive_timeout, pool_size, follow_redirects.
function M.request(o)
  if type(o) ~= "table" then error("http.request: expected a table of options", 2) end
  local url = o.url
  if type(url) ~= "string" then error("http.request: url must be a string", 2) end
  local method = upper(o.method or "GET")
  if not match(method, "^[%u%-_]+$") then
    error("http.request: bad method " .. tostring(o.method), 2)
  end
  check_headers(o.headers, 2)
  local body = o.body
  if o.json ~= nil then
    if body ~= nil then error("http.request: give body or json, not both", 2) end
    body = json.encode(o.json)
    local h = {}
    for k, v in pairs(o.headers or {}) do h[k] = v end
    local has_ct = false
    for k in pairs(h) do if lower(tostring(k)) == "content-type" then has_ct = true end end
    if not has_ct then h["Content-Type"] = "application/json" end
    o = setmetatable({ headers = h }, { __index = o })
  elseif body ~= nil and type(body) ~= "string" then
    error("http.request: body must be a string (or use json)", 2)
  end
  local _, err = parse_url(url)
  if err then return resolved(nil, err) end
  return spawn(run, method, url, o, body, future.deadline()):future()
end
local request = M.request


local function with(o, method, url, body_or_table)
  local r = {}
  if o then
    if type(o) ~= "table" then error("http: opts must be a table", 3) end
    for k, v in pairs(o) do r[k] = v end
  end
  r.method, r.url = method, url
  if type(body_or_table) == "table" then
    r.json, r.body = body_or_table, nil
  elseif body_or_table ~= nil then
    r.body = body_or_table
  end
  return r
end


--- get(url, opts), head(url, opts), delete(url, opts), options(url, opts).
function M.get(url, opts) return request(with(opts, "GET", url)) end
function M.head(url, opts) return request(with(opts, "HEAD", url)) end
function M.delete(url, opts) return request(with(opts, "DELETE", url)) end
function M.options(url, opts) return request(with(opts, "OPTIONS", url)) end


--- post(url, body_or_table, opts), put(...), patch(...): a string body is
-- sent as is, a table as JSON.
function M.post(url, body, opts) return request(with(opts, "POST", url, body)) end
function M.put(url, body, opts) return request(with(opts, "PUT", url, body)) end
function M.patch(url, body, opts) return request(with(opts, "PATCH", url, body)) end

return M
