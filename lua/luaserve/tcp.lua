-- luaserve.tcp: client TCP sockets on the loop. Every operation returns a
-- future; await gives the value or nil, err ("timeout", "closed",
-- "connection refused", "dns: ...").
--
--   local sock, err = await(tcp.connect("127.0.0.1", 6379, { timeout = 2 }))
--   await(sock:send("PING\r\n"))
--   local line, err = await(sock:receive("*l"))
--   sock:close()
--
-- Timeouts (seconds): connect, send, read; set with opts or
-- sock:settimeouts(connect, send, read). A read timeout leaves the socket
-- open (the read is abandoned); a connect or send timeout closes it.

local core = require "luaserve.core"
local future = require "luaserve.future"

local new_future = future.new
local resolved = future.resolved
local setmetatable = setmetatable
local find = string.find
local sub = string.sub
local concat = table.concat
local type = type

local M = {}

M.DEFAULT_TIMEOUTS = { connect = 10, send = 60, read = 60 }

local Socket = {}
Socket.__index = Socket
Socket.__name = "luaserve.tcp.Socket"


function Socket.__tostring(s)
  return "luaserve.tcp.Socket (" .. (s._closed and "closed" or "open") .. ")"
end


-- An object C can resolve: calls fn(...) once.
local function target(fn)
  return { _done = false, resolve = function(self, ...)
    self._done = true
    fn(...)
  end }
end


-- Arm a timeout on future f: after `seconds`, on_timeout() and f fails
-- with "timeout". Returns nothing; the timer stops when f resolves.
local function with_timeout(f, seconds, on_timeout)
  if not seconds or seconds <= 0 or f._done then return end
  local t = future.sleep(seconds)
  t:on_done(function()
    if f._done then return end
    on_timeout()
    if not f._done then f:resolve(nil, "timeout") end
  end)
  f:on_done(function() t:cancel() end)
end


--- connect(host, port, opts): a future of a socket. opts.timeout (connect),
-- opts.send_timeout, opts.read_timeout, in seconds.
function M.connect(host, port, opts)
  if type(host) ~= "string" then error("tcp.connect: host must be a string", 2) end
  port = tonumber(port)
  if not port or port < 1 or port > 65535 or port % 1 ~= 0 then
    error("tcp.connect: port must be a number from 1 to 65535", 2)
  end
  opts = opts or {}
  local sock = setmetatable({
    _buf = "",
    _closed = false,
    host = host,
    port = port,
    connect_timeout = opts.timeout or opts.connect_timeout or M.DEFAULT_TIMEOUTS.connect,
    send_timeout = opts.send_timeout or M.DEFAULT_TIMEOUTS.send,
    read_timeout = opts.read_timeout or M.DEFAULT_TIMEOUTS.read,
  }, Socket)
  local f = new_future(function() sock:close() end)
  sock._s = core.tcp_connect(host, port, target(function(ok, err)
    if f._done then return end
    if ok then
      f:resolve(sock)
    else
      sock:close()
      f:resolve(nil, err)
    end
  end))
  with_timeout(f, sock.connect_timeout, function() sock:close() end)
  return f
end


--- sock:settimeouts(connect, send, read): seconds (nil keeps the value).
function Socket:settimeouts(connect, send, read)
  self.connect_timeout = connect or self.connect_timeout
  self.send_timeout = send or self.send_timeout
  self.read_timeout = read or self.read_timeout
end


--- sock:send(data): a future of true, or nil, err.
function Socket:send(data)
  if type(data) == "table" then data = concat(data) end
  if type(data) ~= "string" then error("send: data must be a string", 2) end
  if self._closed then return resolved(nil, "closed") end
  local f = new_future(function() self:close() end)
  local done, err = self._s:write(data, target(function(ok, e)
    if not f._done then f:resolve(ok, e) end
  end))
  if done then return resolved(true) end
  if done == nil then return resolved(nil, err) end
  with_timeout(f, self.send_timeout, function() self:close() end)
  return f
end


-- Read chunks into the buffer until check(self) gives a value (or the
-- stream ends: at_eof(self) gives the final answer).
local function fill(self, f, check, at_eof)
  local v = check(self)
  if v ~= nil then f:resolve(v) return end
  if self._closed then f:resolve(nil, "closed") return end
  local ok, err = self._s:read(target(function(chunk, e)
    if f._done then return end
    if chunk then
      self._buf = self._buf .. chunk
      fill(self, f, check, at_eof)
    elseif e == "closed" and at_eof then
      f:resolve(at_eof(self))
    else
      f:resolve(nil, e)
    end
  end))
  if not ok then
    if err == "closed" and at_eof then f:resolve(at_eof(self)) else f:resolve(nil, err) end
  end
end


local function take(self, n)
  local buf = self._buf
  self._buf = sub(buf, n + 1)
  return sub(buf, 1, n)
end


local function check_line(self)
  local i = find(self._buf, "\n", 1, true)
  if i == nil then return nil end
  local line = take(self, i)
  return (line:gsub("\r?\n$", ""))
end


local function take_all(self)
  local buf = self._buf
  self._buf = ""
  return buf
end


--- sock:receive(what): a future of data. what: a byte count, "*l" (a
-- line, without its end), "*a" (everything until the peer closes), or
-- nothing (whatever arrives next).
function Socket:receive(what)
  local check, at_eof
  if what == nil then
    check = function(s) if #s._buf > 0 then return take_all(s) end end
  elseif type(what) == "number" then
    if what < 0 or what % 1 ~= 0 then error("receive: bad byte count", 2) end
    check = function(s) if #s._buf >= what then return take(s, what) end end
  elseif what == "*l" or what == "l" then
    check = check_line
  elseif what == "*a" or what == "a" then
    check = function() return nil end
    at_eof = take_all
  else
    error("receive: expected a byte count, '*l' or '*a'", 2)
  end
  return self:_receive(check, at_eof)
end


--- sock:receive_until(delim): a future of the data before delim (delim is
-- consumed, not returned).
function Socket:receive_until(delim)
  if type(delim) ~= "string" or delim == "" then
    error("receive_until: delim must be a non-empty string", 2)
  end
  return self:_receive(function(s)
    local i = find(s._buf, delim, 1, true)
    if i then
      local v = take(s, i - 1)
      take(s, #delim)
      return v
    end
  end)
end


function Socket:_receive(check, at_eof)
  local f = new_future(function() if self._s then self._s:cancel_read() end end)
  fill(self, f, check, at_eof)
  with_timeout(f, self.read_timeout, function() self._s:cancel_read() end)
  return f
end


--- sock:close(): close now; pending operations fail with "closed".
function Socket:close()
  if self._closed then return end
  self._closed = true
  if self._s then self._s:close() end
end


function Socket:closed()
  return self._closed
end

M.Socket = Socket

return M
