-- luaserve.websocket: WebSocket connections, the server's and the client's,
-- with one API. Framing, control frames, UTF-8 and size checks are the C
-- core's (core/ws.c on wslay); this module makes futures of it, validates
-- and answers the opening handshake on the server, and makes it as a
-- client.
--
--   app:websocket("/ws/echo", function(ws, req)
--     for msg, kind in ws:messages() do   -- ends when the peer closes
--       await(ws:send(msg, kind))         -- waits while the client is slow
--     end
--   end, { subprotocols = { "chat" }, max_message = 64 * 1024 })
--
--   local ws = assert(await(websocket.connect("wss://example.com/feed")))
--   await(ws:send("hello"))
--   local msg, kind = await(ws:receive())  -- or nil, "close 1000", 1000, reason
--
-- receive() gives msg, kind ("text" or "binary"), or once the connection
-- is closing or closed nil, "close <code>", code, reason. send(data, kind)
-- gives true once the message is queued and the socket keeps up (it waits
-- while much is queued: back-pressure), nil, "closed" after the close.
-- close(code, reason) starts the close handshake and gives the close code
-- once the connection is closed. Codes: 1000 normal, 1001 going away
-- (shutdown), 1002 protocol error, 1006 the peer vanished, 1007 invalid
-- UTF-8, 1009 message too big, 1011 server error.

local core = require "luaserve.core"
local future = require "luaserve.future"
local errors = require "luaserve.errors"
local tcp = require "luaserve.tcp"
local request_mod = require "luaserve.request"

local new_future = future.new
local new_internal = future.new_internal
local resolved = future.resolved
local await = future.await
local spawn = future.spawn
local lower = string.lower
local find = string.find
local gmatch = string.gmatch
local match = string.match
local format = string.format
local concat = table.concat
local type = type
local tostring = tostring
local tonumber = tonumber
local setmetatable = setmetatable
local error = error

local M = {}

M.DEFAULTS = {
  max_message = 1024 * 1024,   -- bytes; a bigger message is closed with 1009
  ping_interval = 20,          -- s of silence before a ping (0: never)
  ping_timeout = 20,           -- s a ping may go unanswered (then 1011)
  close_timeout = 5,           -- s the close handshake may take
  deflate = true,              -- accept (or offer) permessage-deflate
}

local WebSocket = {}
WebSocket.__index = WebSocket
WebSocket.__name = "luaserve.WebSocket"
M.WebSocket = WebSocket


function WebSocket.__tostring(ws)
  return format("luaserve.WebSocket (%s)", (ws._ud:state()))
end


-- An object C resolves: calls fn(...) once.
local function target(fn)
  return { _done = false, resolve = function(self, ...)
    self._done = true
    fn(...)
  end }
end


local function wrap(ud, subprotocol, extra)
  local ws = setmetatable({ _ud = ud, subprotocol = subprotocol }, WebSocket)
  if extra then for k, v in pairs(extra) do ws[k] = v end end
  return ws
end
M._wrap = wrap


local function stop_receive(f)
  f._ud:cancel_receive()
end


-- A waiting receive: a future (made by make) that C resolves with msg,
-- kind or nil, "close <code>", code, reason.
local function waiting_receive(ud, make)
  local f = make(stop_receive)
  f._ud = ud
  ud:receive(f)
  return f
end


--- ws:receive(): a future of msg, kind, or of nil, "close <code>", code,
-- reason once the connection is closing or closed.
function WebSocket:receive()
  local ud = self._ud
  local a, b, c, d = ud:receive()
  if a == true then return waiting_receive(ud, new_future) end
  return resolved(a, b, c, d)
end


--- ws:messages(): an iterator of msg, kind that awaits each; it ends when
-- the connection closes (ws.close_code says how).
function WebSocket:messages()
  local ud = self._ud
  return function()
    local msg, kind, code = ud:receive()   -- no future while messages wait
    if msg == true then
      msg, kind, code = await(waiting_receive(ud, new_internal))
    end
    if msg == nil then
      self.close_code = code
      return nil
    end
    return msg, kind
  end
end


local SENT = resolved(true)               -- shared: done futures never change
local CLOSED = resolved(nil, "closed")

--- ws:send(data[, "binary"]): a future of true once queued while the
-- socket keeps up (back-pressure: while much is queued, the future waits
-- until the socket has taken it), or of nil, "closed". A text message
-- must be valid UTF-8 (raises otherwise: send it as binary). Not awaiting
-- it is fine (a broadcast): it is never reported as unawaited.
function WebSocket:send(data, kind)
  if type(data) ~= "string" then
    error("websocket: send expects a string, got " .. type(data), 2)
  end
  if kind ~= nil and kind ~= "text" and kind ~= "binary" then
    error("websocket: kind must be \"text\" or \"binary\"", 2)
  end
  local ok = self._ud:send(data, kind == "binary")
  if ok then return SENT end
  if ok == nil then return CLOSED end
  -- Much is queued: every sender waits for the same drain.
  local d = self._drain
  if d and not d._done then return d end
  d = new_internal()
  local r = self._ud:wait_drain(d)
  if r == false then
    self._drain = d
    return d
  end
  return r and SENT or CLOSED
end


--- ws:ping(data): send a ping (the pong is answered for you). true, or
-- nil, "closed".
function WebSocket:ping(data)
  return self._ud:ping(data)
end


--- ws:close(code, reason): start the close handshake (default 1000); a
-- future of the close code once the connection is closed.
function WebSocket:close(code, reason)
  local f = new_internal()   -- awaiting the close is optional
  local r = self._ud:close(code or 1000, reason, target(function(c)
    if not f._done then f:resolve(c) end
  end))
  if r ~= true then f:resolve(r) end
  return f
end


--- ws:state(): "open", "closing" or "closed", and the close code.
function WebSocket:state()
  return self._ud:state()
end


-- ---------------------------------------------------------------------------
-- Server side: the opening handshake

-- The values of a comma-separated header, lower-cased, trimmed.
local function tokens(value)
  local out = {}
  for t in gmatch(value or "", "[^,]+") do
    t = match(t, "^%s*(.-)%s*$")
    if t ~= "" then out[#out + 1] = t end
  end
  return out
end


local function has_token(value, want)
  for _, t in ipairs(tokens(value)) do
    if lower(t) == want then return true end
  end
  return false
end


-- A permessage-deflate offer we can take: the window we compress with
-- (server_max_window_bits, 9..15) and the response header; nil if none.
local function accept_deflate(value)
  for _, offer in ipairs(tokens(value)) do
    local name, params = match(offer, "^([^;%s]+)%s*(.*)$")
    if name and lower(name) == "permessage-deflate" then
      local ok, bits = true, 15
      for p in gmatch(params, ";%s*([^;]+)") do
        local k, v = match(p, "^([%w_]+)%s*=?%s*\"?([^\"]*)\"?%s*$")
        k = k and lower(k)
        if k == "server_max_window_bits" then
          bits = tonumber(v)
          if not bits or bits < 9 or bits > 15 then ok = false end
        elseif k ~= "client_max_window_bits" and k ~= "server_no_context_takeover"
            and k ~= "client_no_context_takeover" then
          ok = false   -- a parameter we do not know: not this offer
        end
      end
      if ok then
        local h = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        if bits < 15 then h = h .. "; server_max_window_bits=" .. bits end
        return bits, h
      end
    end
  end
end


local function refuse(status, detail, headers)
  error(errors.new(status, detail, headers), 0)
end


--- handshake(req, opts): the checked upgrade of req: headers of the 101
-- answer and what the session needs (subprotocol, the options for the
-- core); raises HTTPError 426 (not an upgrade) or 400 (a bad key or
-- version).
function M.handshake(req, opts)
  local h = req.headers
  if not has_token(h.upgrade, "websocket") or not has_token(h.connection, "upgrade") then
    refuse(426, "this route takes WebSocket connections (Upgrade: websocket)",
      { Upgrade = "websocket", Connection = "Upgrade" })
  end
  if h["sec-websocket-version"] ~= "13" then
    refuse(400, "unsupported Sec-WebSocket-Version (13 is)",
      { ["Sec-WebSocket-Version"] = "13" })
  end
  local key = h["sec-websocket-key"]
  if type(key) ~= "string" or not match(key, "^[%w+/]+=*$") or #key ~= 24 then
    refuse(400, "bad Sec-WebSocket-Key")
  end
  local out = {
    Upgrade = "websocket",
    Connection = "Upgrade",
    ["Sec-WebSocket-Accept"] = core.ws_accept_key(key),
  }
  local subprotocol
  if opts.subprotocols then
    local offered = {}
    for _, p in ipairs(tokens(h["sec-websocket-protocol"])) do offered[p] = true end
    for _, p in ipairs(opts.subprotocols) do
      if offered[p] then subprotocol = p break end
    end
    if subprotocol then out["Sec-WebSocket-Protocol"] = subprotocol end
  end
  local copts = {}
  for k, v in pairs(M.DEFAULTS) do copts[k] = v end
  for k, v in pairs(opts) do copts[k] = v end
  local deflate = copts.deflate
  copts.deflate = nil
  if deflate ~= false then
    local bits, header = accept_deflate(h["sec-websocket-extensions"])
    if bits then
      copts.deflate = bits
      out["Sec-WebSocket-Extensions"] = header
    end
  end
  return out, { subprotocol = subprotocol, core = copts }
end


-- ---------------------------------------------------------------------------
-- Client side

local function parse_ws_url(url)
  local scheme, rest = match(url, "^(wss?)://(.*)$")
  if not scheme then return nil, "bad url: " .. tostring(url) end
  local authority, target_ = match(rest, "^([^/?#]*)(.*)$")
  if target_ == "" then target_ = "/" end
  target_ = target_:gsub("#.*$", "")
  local host, port
  if authority:sub(1, 1) == "[" then
    host, port = match(authority, "^%[([%x:.]+)%]:?(%d*)$")
  else
    host, port = match(authority, "^([^:]+):?(%d*)$")
  end
  if not host then return nil, "bad url: " .. url end
  local default = scheme == "wss" and 443 or 80
  port = port ~= "" and tonumber(port) or default
  local hosthdr = find(host, ":", 1, true) and "[" .. host .. "]" or host
  if port ~= default then hosthdr = hosthdr .. ":" .. port end
  return { scheme = scheme, host = host, port = port, target = target_, authority = hosthdr }
end


-- Read the handshake's answer: status, headers (case-insensitive).
local function read_head(sock)
  local head, err = await(sock:receive_until("\r\n\r\n"))
  if not head then return nil, err end
  if #head > 16384 then return nil, "handshake failed: answer head too large" end
  local status = tonumber(match(head, "^HTTP/1%.%d (%d%d%d)"))
  if not status then return nil, "handshake failed: not an HTTP answer" end
  local headers = setmetatable({}, request_mod.headers_mt)
  for k, v in gmatch(head, "\r\n([^:\r\n]+):%s*([^\r\n]*)") do
    k = lower(k)
    headers[k] = headers[k] and headers[k] .. ", " .. v or v
  end
  return status, headers
end


local function connect(url, opts)
  local u, err = parse_ws_url(url)
  if not u then return nil, err end
  local o = {}
  for k, v in pairs(M.DEFAULTS) do o[k] = v end
  for k, v in pairs(opts) do o[k] = v end
  for k, v in pairs(o.headers or {}) do
    if find(tostring(k) .. tostring(v), "[\r\n]") then
      error("websocket.connect: bad header " .. tostring(k), 0)
    end
  end
  local timeout = o.timeout or 10
  local sock
  sock, err = await(tcp.connect(u.host, u.port, { timeout = timeout,
    read_timeout = timeout, reuse = false }))
  if not sock then return nil, err end
  local ok
  if u.scheme == "wss" then
    ok, err = await(sock:sslhandshake({ server_name = o.server_name or u.host,
      verify = o.verify, ca_file = o.ca_file, cert_file = o.cert_file,
      key_file = o.key_file, timeout = timeout }))
    if not ok then sock:close() return nil, err end
  end
  local key = core.base64((core.random_hex(16):gsub("..", function(h)
    return string.char(tonumber(h, 16)) end)))   -- 16 random bytes
  local lines = { "GET " .. u.target .. " HTTP/1.1", "Host: " .. u.authority,
    "Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Key: " .. key,
    "Sec-WebSocket-Version: 13" }
  if o.subprotocols then
    lines[#lines + 1] = "Sec-WebSocket-Protocol: " .. concat(o.subprotocols, ", ")
  end
  if o.deflate ~= false then
    lines[#lines + 1] = "Sec-WebSocket-Extensions: permessage-deflate; " ..
      "client_no_context_takeover; server_no_context_takeover"
  end
  for k, v in pairs(o.headers or {}) do
    lines[#lines + 1] = tostring(k) .. ": " .. tostring(v)   -- checked before connecting
  end
  ok, err = await(sock:send(concat(lines, "\r\n") .. "\r\n\r\n"))
  if not ok then sock:close() return nil, err end
  local status, headers = read_head(sock)
  if not status then sock:close() return nil, headers end
  if status ~= 101 then
    sock:close()
    return nil, "handshake failed: status " .. status
  end
  if headers["sec-websocket-accept"] ~= core.ws_accept_key(key) then
    sock:close()
    return nil, "handshake failed: bad Sec-WebSocket-Accept"
  end
  local subprotocol = headers["sec-websocket-protocol"]
  local copts = { max_message = o.max_message, ping_interval = o.ping_interval,
    ping_timeout = o.ping_timeout, close_timeout = o.close_timeout }
  local ext = headers["sec-websocket-extensions"]
  if ext then
    local bits = accept_deflate(ext)
    if not bits or o.deflate == false then
      sock:close()
      return nil, "handshake failed: an extension that was not offered"
    end
    copts.deflate = 15   -- we compress with the full window (no takeover)
  end
  local early = sock._buf
  sock._buf = ""
  local ud
  ud, err = sock._s:ws_attach(early, copts)
  if not ud then sock:close() return nil, err end
  -- The socket's userdata stays alive as long as the WebSocket (it owns
  -- the transport); the Lua socket object is done with.
  return wrap(ud, subprotocol, { _tcp = sock._s, url = url })
end


--- connect(url, opts): a future of a WebSocket (ws:// or wss://), or of
-- nil, err. opts: headers, subprotocols (a list), timeout (connect,
-- handshake; seconds), max_message, ping_interval, ping_timeout,
-- close_timeout, deflate (offer permessage-deflate, default true), and
-- for wss the HTTP client's verify, ca_file, cert_file, key_file,
-- server_name. Usable from sync functions too.
function M.connect(url, opts)
  if type(url) ~= "string" then error("websocket.connect: url must be a string", 2) end
  opts = opts or {}
  if type(opts) ~= "table" then error("websocket.connect: opts must be a table", 2) end
  return spawn(connect, url, opts):future()
end

return M
