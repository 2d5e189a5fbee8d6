-- luaserve.tcp: client TCP sockets on the loop, and their keep-alive pool.
-- Every operation returns a future; await gives the value or nil, err
-- ("timeout", "closed", "connection refused", "dns: ...").
--
--   local sock, err = await(tcp.connect("127.0.0.1", 6379, { timeout = 2 }))
--   await(sock:send("PING\r\n"))
--   local line, err = await(sock:receive("*l"))
--   sock:setkeepalive(60, 10)   -- back to the pool; or sock:close()
--
-- Timeouts (seconds): connect (DNS included), send, read; given in opts or
-- with sock:settimeouts(connect, send, read). A read timeout leaves the
-- socket open (the read is abandoned); a send timeout closes it, as does the
-- end of the stream or any other error.
--
-- The pool: sock:setkeepalive(idle, size) hands the connection to a pool of
-- this Lua state, keyed by host:port (or opts.pool); the socket object is
-- closed for its caller. tcp.connect takes the most recently pooled
-- connection to that key before it opens a new one. A pooled connection is
-- closed when it has been idle `idle` seconds, when the peer closes it or
-- sends anything, or when the pool is over `size` (the oldest goes).
--
-- TLS: sock:sslhandshake(opts) turns a connected socket into a TLS one
-- (OpenResty's cosocket name); everything after goes through TLS. A pooled
-- connection keeps its TLS session: sslhandshake on it returns at once
-- (give TLS connections a pool key that names their TLS settings).

local core = require "luaserve.core"
local future = require "luaserve.future"

local new_future = future.new
local resolved = future.resolved
local tcp_connect = core.tcp_connect
local tls_client_context = core.tls_client_context
local setmetatable = setmetatable
local find = string.find
local sub = string.sub
local concat = table.concat
local type = type
local tonumber = tonumber
local error = error

local M = {}

M.DEFAULT_TIMEOUTS = { connect = 10, send = 60, read = 60 }
M.DEFAULT_KEEPALIVE = { idle = 60, pool_size = 30 }

local Socket = {}
Socket.__index = Socket
Socket.__name = "luaserve.tcp.Socket"


function Socket.__tostring(s)
  return ("luaserve.tcp.Socket (%s:%s, %s)"):format(s.host, s.port,
    s._closed and "closed" or "open")
end


-- An object C can resolve: calls fn(...) once.
local function target(fn)
  return { _done = false, resolve = function(self, ...)
    self._done = true
    fn(...)
  end }
end


local function ms(seconds)
  if seconds and seconds > 0 then return seconds * 1000 end
  return 0
end


-- ---------------------------------------------------------------------------
-- The pool: key -> list of idle entries { s = C socket, reused = n,
-- host, port }, the most recently pooled last.

local pools = {}


local function pool_remove(list, entry)
  for i = #list, 1, -1 do
    if list[i] == entry then table.remove(list, i) return end
  end
end


-- The most recent live idle connection for key, taken out of the pool.
local function checkout(key)
  local list = pools[key]
  if list == nil then return nil end
  while true do
    local n = #list
    if n == 0 then return nil end
    local e = list[n]
    list[n] = nil
    if e.s:clear_idle() then return e end
  end
end


--- pool_stats(): { [key] = idle connections } of this Lua state.
function M.pool_stats()
  local out = {}
  for k, list in pairs(pools) do
    if #list > 0 then out[k] = #list end
  end
  return out
end


--- close_pools(): close every idle pooled connection of this Lua state.
function M.close_pools()
  for k, list in pairs(pools) do
    pools[k] = nil
    for i = 1, #list do list[i].s:close() end
  end
end


-- ---------------------------------------------------------------------------
-- Connecting

local function new_socket(host, port, key, opts)
  return setmetatable({
    _buf = "",
    _closed = false,
    _reused = 0,
    _pool = key,
    host = host,
    port = port,
    connect_timeout = opts.timeout or opts.connect_timeout or M.DEFAULT_TIMEOUTS.connect,
    send_timeout = opts.send_timeout or M.DEFAULT_TIMEOUTS.send,
    read_timeout = opts.read_timeout or M.DEFAULT_TIMEOUTS.read,
  }, Socket)
end


local function cancel_connect(f)
  f._sock:close()
end


--- connect(host, port, opts): a future of a socket, or of nil, err.
-- host: a name (looked up asynchronously), an IPv4 or IPv6 address, or
-- "[v6]". opts: timeout (connect, seconds, DNS included), send_timeout,
-- read_timeout, pool (the pool's key, default "host:port"), reuse (false:
-- always a new connection).
function M.connect(host, port, opts)
  if type(host) ~= "string" then error("tcp.connect: host must be a string", 2) end
  port = tonumber(port)
  if not port or port < 1 or port > 65535 or port % 1 ~= 0 then
    error("tcp.connect: port must be a number from 1 to 65535", 2)
  end
  opts = opts or {}
  local key = opts.pool or (host .. ":" .. port)
  local sock = new_socket(host, port, key, opts)
  if opts.reuse ~= false then
    local e = checkout(key)
    if e then
      sock._s = e.s
      sock._reused = e.reused + 1
      return resolved(sock)
    end
  end
  local f = new_future(cancel_connect)
  f._sock = sock
  local s, err = tcp_connect(host, port, target(function(ok, cerr)
    if f._done then return end
    if ok then
      f:resolve(sock)
    else
      sock:close()
      f:resolve(nil, cerr)
    end
  end), ms(sock.connect_timeout))
  if s == nil then
    sock._closed = true
    return resolved(nil, err)
  end
  sock._s = s
  return f
end


--- sock:settimeouts(connect, send, read): seconds (nil keeps the value; 0
-- means no limit).
function Socket:settimeouts(connect, send, read)
  self.connect_timeout = connect or self.connect_timeout
  self.send_timeout = send or self.send_timeout
  self.read_timeout = read or self.read_timeout
  return true
end


--- sock:getreusedtimes(): how many times this connection came out of the
-- pool (0 for a new one).
function Socket:getreusedtimes()
  return self._reused
end


--- sock:setkeepalive(idle, size): put the connection into the pool (idle
-- seconds before it is closed, default 60, 0 for no limit; at most size
-- idle connections per key, default 30). The socket object is closed for
-- its caller. true, or nil, err ("closed"; "unread data" when bytes were
-- left unread: the connection is closed instead).
function Socket:setkeepalive(idle, size)
  idle = idle or M.DEFAULT_KEEPALIVE.idle
  size = size or M.DEFAULT_KEEPALIVE.pool_size
  if type(idle) ~= "number" or idle < 0 then
    error("setkeepalive: idle must be a number of seconds >= 0", 2)
  end
  if type(size) ~= "number" or size < 1 then
    error("setkeepalive: size must be a number >= 1", 2)
  end
  if self._closed then return nil, "closed" end
  if self._buf ~= "" or self._reading then
    self:close()
    return nil, "unread data"
  end
  local s = self._s
  local key = self._pool
  local list = pools[key]
  if list == nil then list = {} pools[key] = list end
  local entry = { s = s, reused = self._reused }
  local ok, err = s:set_idle(ms(idle), target(function()
    pool_remove(list, entry)
    s:close()
  end))
  self._s = nil
  self._closed = true
  if not ok then
    s:close()
    return nil, err
  end
  list[#list + 1] = entry
  while #list > size do
    local old = table.remove(list, 1)
    old.s:close()
  end
  return true
end


-- ---------------------------------------------------------------------------
-- Sending

local SENT = resolved(true)


local function cancel_close(f)
  f._sock:close()
end


-- The one target C resolves when the queued writes are written (or fail):
-- it wakes every send that waits on them.
local function drain_target(self)
  local t = self._drain
  if t then return t end
  t = { _done = false, resolve = function(_, ok, err)
    local waiting = self._drain_waiting
    self._drain_waiting = {}
    if not ok then self:close() end
    for i = 1, #waiting do
      local f = waiting[i]
      if not f._done then f:resolve(ok, err) end
    end
  end }
  self._drain = t
  self._drain_waiting = {}
  return t
end


--- sock:send(data): a future of true, or nil, err ("timeout" when the
-- peer took nothing for send_timeout seconds: the socket is closed then).
-- data: a string or a list of strings.
function Socket:send(data)
  if type(data) == "table" then data = concat(data) end
  if type(data) ~= "string" then error("send: data must be a string", 2) end
  if self._closed then return resolved(nil, "closed") end
  local target = drain_target(self)
  local done, err = self._s:write(data, target, ms(self.send_timeout))
  if done then return SENT end
  if done == nil then
    self:close()
    return resolved(nil, err)
  end
  local f = new_future(cancel_close)   -- queued behind a full socket
  f._sock = self
  local waiting = self._drain_waiting
  waiting[#waiting + 1] = f
  return f
end


-- ---------------------------------------------------------------------------
-- TLS

local contexts = {}   -- settings -> client context, per Lua state


--- client_context(opts): the TLS client context for these settings (made
-- once per Lua state), or nil, err. opts: verify (default true), ca_file,
-- cert_file, key_file, password (of the key), alpn (e.g. "http/1.1").
function M.client_context(opts)
  local verify = opts.verify ~= false
  local key = (verify and "v" or "n") .. "|" .. tostring(opts.ca_file or "") ..
    "|" .. tostring(opts.cert_file or "") .. "|" .. tostring(opts.key_file or "") ..
    "|" .. tostring(opts.alpn or "")
  local ctx = contexts[key]
  if ctx then return ctx, key end
  local c, err, what = tls_client_context({ verify = verify, ca_file = opts.ca_file,
    cert_file = opts.cert_file, key_file = opts.key_file, password = opts.password,
    alpn = opts.alpn })
  if not c then return nil, "tls: " .. (what or "") .. " " .. tostring(err) end
  contexts[key] = c
  return c, key
end


--- sock:sslhandshake(opts): a future of true once the TLS handshake is
-- done, or of nil, err ("tls: certificate verify failed: <why>", "tls:
-- hostname mismatch", "tls: handshake timeout", "tls: <reason>"; the
-- socket is closed then). opts: server_name (SNI and the name the
-- certificate must carry; default the host given to connect), verify
-- (default true: against the system CA store, or ca_file), ca_file,
-- cert_file + key_file (a client certificate), password, alpn, timeout
-- (seconds, default the connect timeout). A connection that came out of
-- the pool with TLS on returns true at once.
function Socket:sslhandshake(opts)
  opts = opts or {}
  if type(opts) ~= "table" then error("sslhandshake: opts must be a table", 2) end
  if self._closed then return resolved(nil, "closed") end
  if self._s:tls_info() then return resolved(true) end   -- pooled, TLS on
  local ctx, err = M.client_context(opts)
  if not ctx then
    self:close()
    return resolved(nil, err)
  end
  local name = opts.server_name or self.host
  if name and name:sub(1, 1) == "[" then name = name:sub(2, -2) end
  local f = new_future(cancel_close)
  f._sock = self
  local ok, serr = self._s:tls(ctx, name, opts.verify ~= false, target(function(hok, herr)
    if f._done then return end
    if not hok then self:close() end
    f:resolve(hok, herr)
  end), ms(opts.timeout or self.connect_timeout))
  if not ok then
    self:close()
    return resolved(nil, serr)
  end
  return f
end


--- sock:tls_info(): {version, cipher, alpn, peer_subject, peer_verified}
-- of an established TLS connection, else nil.
function Socket:tls_info()
  if self._closed then return nil end
  return self._s:tls_info()
end


-- ---------------------------------------------------------------------------
-- Receiving. self._buf holds bytes read but not yet returned. A pending
-- receive collects new chunks in a list (no quadratic concatenation) and
-- hands what it does not return back to self._buf.

local function cancel_read(f)
  local self = f._sock
  local parts = f._parts
  if parts then self._buf = concat(parts) end
  self._reading = false
  if self._s then self._s:cancel_read() end
end


-- Arm one read; on_chunk(f, chunk) or on_chunk(f, nil, err) follows. The
-- end of the stream and errors other than "timeout" close the socket.
local function read_more(self, f, on_chunk)
  self._reading = true
  local ok, err = self._s:read(target(function(chunk, e)
    self._reading = false
    if f._done then return end
    if chunk == nil and e ~= "timeout" then self:close() end
    on_chunk(f, chunk, e)
  end), ms(self.read_timeout))
  if not ok then
    self._reading = false
    self:close()
    on_chunk(f, nil, err)
  end
end


-- Fail f with err; the bytes collected so far are its third value.
local function fail_partial(f, err)
  local parts = f._parts
  f._parts = nil
  f._sock._buf = ""
  f:resolve(nil, err, parts and concat(parts) or "")
end


local function new_read(self)
  local f = new_future(cancel_read)
  f._sock = self
  f._parts = { self._buf }
  f._have = #self._buf
  self._buf = ""
  return f
end


-- receive(n): exactly n bytes.
local function on_count(f, chunk, err)
  if chunk == nil then return fail_partial(f, err) end
  local parts = f._parts
  parts[#parts + 1] = chunk
  f._have = f._have + #chunk
  if f._have >= f._n then
    local all = concat(parts)
    f._parts = nil
    f._sock._buf = sub(all, f._n + 1)
    f:resolve(sub(all, 1, f._n))
  else
    read_more(f._sock, f, on_count)
  end
end


-- receive("*a"): everything until the peer closes.
local function on_all(f, chunk, err)
  if chunk == nil then
    if err == "closed" then
      local all = concat(f._parts)
      f._parts = nil
      f:resolve(all)
      return
    end
    return fail_partial(f, err)
  end
  local parts = f._parts
  parts[#parts + 1] = chunk
  read_more(f._sock, f, on_all)
end


-- receive("*l") and receive_until(delim): the bytes before delim. Only the
-- new chunk and the few bytes before it are searched each time.
local function on_delim(f, chunk, err)
  if chunk == nil then return fail_partial(f, err) end
  local parts, delim = f._parts, f._delim
  local dl = #delim
  local prev = parts[#parts]
  local probe = dl > 1 and sub(prev, -(dl - 1)) .. chunk or chunk
  parts[#parts + 1] = chunk
  local before = f._have
  f._have = before + #chunk
  if find(probe, delim, 1, true) == nil then
    return read_more(f._sock, f, on_delim)
  end
  local all = concat(parts)
  f._parts = nil
  local start = before - dl + 2
  local i = find(all, delim, start > 1 and start or 1, true)
  local self = f._sock
  self._buf = sub(all, i + dl)
  local v = sub(all, 1, i - 1)
  if f._line and sub(v, -1) == "\r" then v = sub(v, 1, -2) end
  f:resolve(v)
end


-- receive(): whatever arrives next.
local function on_any(f, chunk, err)
  if chunk == nil then return fail_partial(f, err) end
  f._parts = nil
  f:resolve(chunk)
end


local function check_open(self)
  if self._closed then return resolved(nil, "closed", "") end
  if self._reading then
    error("receive: a receive is already pending on this socket", 3)
  end
end


--- sock:receive(what): a future of data, or of nil, err, partial (the
-- bytes received before the failure). what: a byte count, "*l" (a line,
-- without its "\n" or "\r\n"), "*a" (everything until the peer closes), or
-- nothing (whatever arrives next).
function Socket:receive(what)
  local buf = self._buf
  if what == nil then
    if buf ~= "" then
      self._buf = ""
      return resolved(buf)
    end
    local closed = check_open(self)
    if closed then return closed end
    local f = new_read(self)
    read_more(self, f, on_any)
    return f
  elseif type(what) == "number" then
    if what < 0 or what % 1 ~= 0 then error("receive: bad byte count", 2) end
    if #buf >= what then
      self._buf = sub(buf, what + 1)
      return resolved(sub(buf, 1, what))
    end
    local closed = check_open(self)
    if closed then return closed end
    local f = new_read(self)
    f._n = what
    read_more(self, f, on_count)
    return f
  elseif what == "*l" or what == "l" then
    return self:_until("\n", true)
  elseif what == "*a" or what == "a" then
    if self._closed then
      self._buf = ""
      return resolved(buf)
    end
    check_open(self)
    local f = new_read(self)
    read_more(self, f, on_all)
    return f
  end
  error("receive: expected a byte count, '*l' or '*a'", 2)
end


--- sock:receive_until(delim): a future of the data before delim (delim is
-- consumed, not returned); nil, err, partial on failure.
function Socket:receive_until(delim)
  if type(delim) ~= "string" or delim == "" then
    error("receive_until: delim must be a non-empty string", 2)
  end
  return self:_until(delim, false)
end


function Socket:_until(delim, line)
  local buf = self._buf
  local i = find(buf, delim, 1, true)
  if i then
    self._buf = sub(buf, i + #delim)
    local v = sub(buf, 1, i - 1)
    if line and sub(v, -1) == "\r" then v = sub(v, 1, -2) end
    return resolved(v)
  end
  local closed = check_open(self)
  if closed then return closed end
  local f = new_read(self)
  f._delim = delim
  f._line = line
  read_more(self, f, on_delim)
  return f
end


--- sock:close(): close now; pending operations fail with "closed".
-- true, or nil, "closed" when it was closed already.
function Socket:close()
  if self._closed then return nil, "closed" end
  self._closed = true
  local s = self._s
  if s then s:close() end
  return true
end


--- sock:closed(): true once closed (or handed to the pool).
function Socket:closed()
  return self._closed
end


--- sock:peer(): address and port of the other end, or nil.
function Socket:peer()
  if self._closed then return nil end
  return self._s:peer()
end


--- sock:local_port(): the local port of the connection, or nil.
function Socket:local_port()
  if self._closed then return nil end
  return self._s:local_port()
end


M.Socket = Socket

return M
