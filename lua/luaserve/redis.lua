-- luaserve.redis: a Redis client on luaserve.tcp (its timeouts, its
-- keep-alive pool, its TLS) with hiredis's reply parser and command
-- formatter (core/redis.c). Every call returns a future; await gives the
-- reply or nil, err.
--
--   local redis = require "luaserve.redis"
--   local r = redis.pool{ url = "redis://:secret@127.0.0.1:6379/0", max = 16 }
--   await(r:set("k", "v", { ex = 10 }))            -- "OK"
--   local v, err = await(r:get("k"))                -- "v" (redis.null if none)
--   local n = await(r:call("INCRBY", "hits", 5))    -- any command
--   local a = await(r:pipeline(function(p) p:incr("a") p:get("b") end))
--   for msg in r:subscribe("news") do print(msg.channel, msg.payload) end
--
-- Replies: status and bulk strings as strings, integers as numbers, nil as
-- redis.null (luaserve.null), arrays as tables. An error reply gives
-- nil, "<its message>" ("WRONGTYPE Operation against ..."); inside a
-- pipeline's array it is a redis.Error table ({message = ...}, tostring
-- gives the message). Connection failures are tcp's: "timeout",
-- "connection refused", "closed", "tls: <reason>"; a full pool gives
-- "pool timeout".
--
-- The URL gives the server and what each new connection sends first, in
-- the same round trip as the first command: AUTH (redis://:pass@ or
-- redis://user:pass@) and SELECT (the /db number). rediss:// speaks TLS
-- (verified against the system CAs, or opts.tls.ca_file).
--
-- Connections are luaserve.tcp's pooled sockets (per Lua state, keyed by
-- the URL); at most `max` are in use at once. A call whose task is
-- cancelled closes its connection; one that fails on a pooled connection
-- before any byte of the answer came (the server had closed it) is
-- retried once on a new one.

local core = require "luaserve.core"
local dbpool = require "luaserve.dbpool"
local future = require "luaserve.future"
local json = require "luaserve.json"
local tcp = require "luaserve.tcp"

local resolved = future.resolved
local await = future.await
local spawn = future.spawn
local on_cancel = future.on_cancel
local Semaphore = future.Semaphore
local format_command = core.redis_format
local new_reader = core.redis_reader
local setmetatable = setmetatable
local getmetatable = getmetatable
local select = select
local type = type
local tonumber = tonumber
local tostring = tostring
local error = error
local concat = table.concat
local upper = string.upper
local match = string.match
local gsub = string.gsub
local char = string.char

local M = {}

--- A nil reply: luaserve.null.
M.null = json.null

M.DEFAULTS = {
  max = 16,               -- connections in use at most
  acquire_timeout = 5,    -- s waiting for one; then "pool timeout"
  connect_timeout = 10,   -- s, DNS, TCP and TLS
  timeout = 30,           -- s each send and each wait for the answer
  keepalive_timeout = 60, -- s a pooled connection stays idle
}


-- ---------------------------------------------------------------------------
-- Error replies

local Error = {}
Error.__index = Error
Error.__name = "luaserve.redis.Error"


function Error.__tostring(e)
  return e.message
end

M.Error = Error


--- is_error(v): v is an error reply (in a pipeline's array).
function M.is_error(v)
  return getmetatable(v) == Error
end

new_reader(Error)   -- tells C the metatable of error replies

local readers, nreaders = {}, 0   -- idle readers, reused


local function take_reader()
  if nreaders > 0 then
    local r = readers[nreaders]
    readers[nreaders] = nil
    nreaders = nreaders - 1
    return r
  end
  return new_reader()
end


local function give_reader(r)
  if nreaders < 64 and r:pending() == 0 then
    nreaders = nreaders + 1
    readers[nreaders] = r
  end
end


-- Read n replies off sock into out (from index i0): true, or nil, err,
-- got (whether any byte came).
local function read_replies(sock, reader, out, i0, n)
  local got = false
  for i = i0, i0 + n - 1 do
    while true do
      local ok, v = reader:get()
      if ok then out[i] = v break end
      if ok == nil then return nil, v, true end
      local chunk, err = await(sock:receive())
      if not chunk then return nil, err, got end
      got = true
      local fed, ferr = reader:feed(chunk)
      if not fed then return nil, ferr, true end
    end
  end
  return true
end


-- ---------------------------------------------------------------------------
-- URLs

local function unescape(s)
  return (gsub(s, "%%(%x%x)", function(h) return char(tonumber(h, 16)) end))
end


--- parse_url(url): { tls, host, port, user, password, db }, or nil, err.
function M.parse_url(url)
  local scheme, rest = match(url, "^(rediss?)://(.*)$")
  if not scheme then return nil, "bad url: " .. url end
  local auth, hostport, db = match(rest, "^([^@/]*)@([^/?]*)/?([^?]*)")
  if not auth then
    hostport, db = match(rest, "^([^/?]*)/?([^?]*)")
  end
  local host, port
  if match(hostport, "^%[") then
    host, port = match(hostport, "^%[([%x:.]+)%]:?(%d*)$")
  else
    host, port = match(hostport, "^([^:]*):?(%d*)$")
  end
  if not host or host == "" then return nil, "bad url: " .. url end
  local user, password
  if auth and auth ~= "" then
    user, password = match(auth, "^([^:]*):(.*)$")
    if not user then password = auth user = "" end
    user, password = unescape(user), unescape(password)
    if user == "" then user = nil end
  end
  if db ~= "" and not match(db, "^%d+$") then return nil, "bad url: bad database " .. db end
  return { tls = scheme == "rediss", host = host, port = tonumber(port) or 6379,
    user = user, password = password, db = tonumber(db) or 0 }
end


-- ---------------------------------------------------------------------------
-- The pool and one exchange

local Client = {}
Client.__index = Client
Client.__name = "luaserve.redis.Pool"


function Client.__tostring(c)
  return ("luaserve.redis.Pool (%s:%d, %d in use)"):format(c.host, c.port,
    c.sem.size - c.sem.free)
end


--- pool{url=, max=, acquire_timeout=, connect_timeout=, timeout=,
-- keepalive_timeout=, tls = {verify=, ca_file=, server_name=}}.
-- Nothing connects before the first command.
function M.pool(opts)
  if type(opts) ~= "table" then error("redis.pool: expected a table of options", 2) end
  if type(opts.url) ~= "string" then error("redis.pool: url must be a string", 2) end
  local u, err = M.parse_url(opts.url)
  if not u then error("redis.pool: " .. err, 2) end
  local c = setmetatable(u, Client)
  for k, v in pairs(M.DEFAULTS) do c[k] = opts[k] == nil and v or opts[k] end
  if type(c.max) ~= "number" or c.max < 1 then error("redis.pool: max must be >= 1", 2) end
  c.sem = Semaphore(c.max)
  local hello = {}
  if u.password then
    hello[#hello + 1] = u.user and format_command("AUTH", u.user, u.password) or
      format_command("AUTH", u.password)
  end
  if u.db ~= 0 then hello[#hello + 1] = format_command("SELECT", u.db) end
  c.hello, c.nhello = concat(hello), #hello
  c.key = (u.tls and "rediss://" or "redis://") .. u.host .. ":" .. u.port ..
    "/" .. u.db .. "|" .. tostring(u.user) .. "|" .. tostring(u.password)
  if u.tls then
    local t = opts.tls or {}
    c.tls = { verify = t.verify ~= false, ca_file = t.ca_file,
      cert_file = t.cert_file, key_file = t.key_file,
      server_name = t.server_name or u.host }
    local ctx, key = tcp.client_context(c.tls)
    if not ctx then error("redis.pool: " .. key, 2) end
    c.key = c.key .. "|" .. key .. "|" .. c.tls.server_name
  end
  return c
end


-- A connected, authenticated socket: sock, extra (replies of AUTH/SELECT
-- to read before the answer), or nil, err. reuse = false: a new one.
local function connect(c, reuse, read_timeout)
  local sock, err = await(tcp.connect(c.host, c.port, {
    timeout = c.connect_timeout, send_timeout = c.timeout,
    read_timeout = read_timeout or c.timeout, pool = c.key, reuse = reuse }))
  if not sock then return nil, err end
  if sock:getreusedtimes() > 0 then return sock, 0 end
  if c.tls then
    local ok, terr = await(sock:sslhandshake(c.tls))
    if not ok then return nil, terr end
  end
  return sock, c.nhello
end


-- Check the AUTH/SELECT replies at the start of out: nil, or the error.
local function hello_failed(out, n)
  for i = 1, n do
    if getmetatable(out[i]) == Error then return out[i].message end
  end
end


-- The task of a call or a pipeline: send payload (n formatted commands)
-- and read n replies, on a pooled connection. The replies, or nil, err.
local function exchange(c, payload, n)
  local st = {}
  local remove = on_cancel(function()
    local s = st.sock
    st.sock = nil
    if s then s:close() end
  end)
  local ok, err = dbpool.acquire(c.sem, c.acquire_timeout)
  if not ok then
    if remove then remove() end
    return nil, err
  end
  local out
  for try = 1, 2 do
    local sock, extra = connect(c, try == 1)
    if not sock then
      ok, err = nil, extra
      break
    end
    st.sock = sock
    out = {}
    local reader = take_reader()
    local sent, serr = await(sock:send(extra > 0 and c.hello .. payload or payload))
    local got
    if sent then
      ok, err, got = read_replies(sock, reader, out, 1, extra + n)
    else
      ok, err, got = nil, serr, false
    end
    st.sock = nil
    if ok and reader:pending() == 0 then
      give_reader(reader)
      local herr = hello_failed(out, extra)
      if herr then
        sock:close()
        ok, err = nil, herr
      else
        sock:setkeepalive(c.keepalive_timeout, c.max)
        if extra > 0 then out = { unpack(out, extra + 1, extra + n) } end
      end
      break
    end
    sock:close()
    if ok then   -- every reply read, and more bytes behind them: never resend
      ok, err = nil, "unexpected data after the replies"
      break
    end
    if got or sock:getreusedtimes() == 0 or err == "timeout" then break end
  end
  c.sem:release()
  if remove then remove() end
  if not ok then return nil, err end
  return out
end


-- ---------------------------------------------------------------------------
-- Commands: call and the sugar, shared by the pool (each a future) and
-- pipelines (each collected).

local Commands = {}


local function one_reply(c, payload, shape)
  local out, err = exchange(c, payload, 1)
  if not out then return nil, err end
  local v = out[1]
  if getmetatable(v) == Error then return nil, v.message end
  if shape then return shape(v) end
  return v
end


--- r:call(name, arg...): a future of the reply, or of nil, err.
function Client:call(...)
  return self:_command(nil, format_command(...))
end


function Client:_command(shape, payload)
  return spawn(one_reply, self, payload, shape):future()
end


-- A flat array of field, value pairs as a table.
local function as_map(v)
  if type(v) ~= "table" then return v end
  local m = {}
  for i = 1, #v, 2 do m[v[i]] = v[i + 1] end
  return m
end


-- Commands with nothing special: name -> method.
for _, name in ipairs({ "get", "incr", "decr", "incrby", "decrby", "del",
    "exists", "expire", "pexpire", "ttl", "pttl", "persist", "hget", "hset",
    "hdel", "hincrby", "hmget", "hexists", "lpush", "rpush", "lpop", "rpop",
    "llen", "lrange", "ltrim", "sadd", "srem", "smembers", "sismember",
    "scard", "zadd", "zrange", "zrem", "zscore", "zincrby", "mget", "mset",
    "publish", "ping", "type", "append", "strlen", "getset", "setnx",
    "flushdb", "dbsize", "keys", "rename" }) do
  local cmd = upper(name)
  Commands[name] = function(self, ...)
    return self:_command(nil, format_command(cmd, ...))
  end
end


--- r:set(key, value[, {ex=, px=, nx=, xx=, keepttl=, get=}]): "OK" (or
-- redis.null when nx/xx stopped it).
function Commands:set(key, value, opts)
  if opts == nil then return self:_command(nil, format_command("SET", key, value)) end
  local args = { "SET", key, value }
  if opts.ex then args[#args + 1] = "EX" args[#args + 1] = opts.ex end
  if opts.px then args[#args + 1] = "PX" args[#args + 1] = opts.px end
  if opts.nx then args[#args + 1] = "NX" end
  if opts.xx then args[#args + 1] = "XX" end
  if opts.keepttl then args[#args + 1] = "KEEPTTL" end
  if opts.get then args[#args + 1] = "GET" end
  return self:_command(nil, format_command(unpack(args)))
end


--- r:hgetall(key): the hash as a table {field = value}.
function Commands:hgetall(key)
  return self:_command(as_map, format_command("HGETALL", key))
end

for k, v in pairs(Commands) do Client[k] = v end


-- A pipeline: commands collected, sent together, answered together.
local Pipeline = {}
Pipeline.__index = Pipeline
Pipeline.__name = "luaserve.redis.Pipeline"
for k, v in pairs(Commands) do Pipeline[k] = v end


function Pipeline:_command(shape, payload)
  local n = #self._payload + 1
  self._payload[n] = payload
  self._shape[n] = shape or false
  return self
end


function Pipeline:call(...)
  return self:_command(nil, format_command(...))
end


local function run_pipeline(c, p)
  local n = #p._payload
  local out, err = exchange(c, concat(p._payload), n)
  if not out then return nil, err end
  for i = 1, n do
    local shape = p._shape[i]
    if shape and getmetatable(out[i]) ~= Error then out[i] = shape(out[i]) end
  end
  return out
end


--- r:pipeline(function(p) p:incr("a") p:get("b") end): the commands sent
-- in one write and answered in one round trip: a future of the array of
-- replies (an error reply is a redis.Error in its place), or of nil, err.
-- Not a transaction (wrap them in p:call("MULTI") ... p:call("EXEC")).
function Client:pipeline(fn)
  if type(fn) ~= "function" then error("redis: pipeline expects a function", 2) end
  local p = setmetatable({ _payload = {}, _shape = {} }, Pipeline)
  fn(p)
  if #p._payload == 0 then return resolved({}) end
  return spawn(run_pipeline, self, p):future()
end


-- ---------------------------------------------------------------------------
-- Pub/sub: an iterator on a connection of its own

local Subscription = {}
Subscription.__index = Subscription
Subscription.__name = "luaserve.redis.Subscription"


--- sub:close(): unsubscribe (the connection is closed).
function Subscription:close()
  if self.closed then return end
  self.closed = true
  local sock = self.sock
  self.sock = nil
  if sock then sock:close() end
  dbpool.untie(self)
end


function Subscription:_start()
  local sock, extra = connect(self.client, false, 0)
  if not sock then return nil, extra end
  self.sock = sock
  if self.closed then sock:close() return nil, "closed" end
  local args = { self.kind }
  for i = 1, #self.channels do args[i + 1] = self.channels[i] end
  local payload = format_command(unpack(args))
  local ok, err = await(sock:send(extra > 0 and self.client.hello .. payload or payload))
  if not ok then return nil, err end
  local out = {}
  self.reader = new_reader()
  ok, err = read_replies(sock, self.reader, out, 1, extra)
  if not ok then return nil, err end
  local herr = hello_failed(out, extra)
  if herr then return nil, herr end
  dbpool.tie(self)   -- it ends with the task (request) iterating it
  return true
end


--- sub:next(): the next message, awaited: {kind = "message", channel,
-- payload} or {kind = "pmessage", pattern, channel, payload}; nil once
-- closed or failed (sub.err says why).
function Subscription:next()
  while not self.closed do
    if not self.sock then
      local ok, err = self:_start()
      if not ok then
        self.err = err
        self:close()
        return nil
      end
    end
    local out = {}
    -- cancelled while it waits: the subscription closes
    local ok, err = dbpool.wait(self, read_replies, self.sock, self.reader, out, 1, 1)
    if not ok then
      self.err = err
      self:close()
      return nil
    end
    local m = out[1]
    if type(m) == "table" then
      if m[1] == "message" then
        return { kind = "message", channel = m[2], payload = m[3] }
      elseif m[1] == "pmessage" then
        return { kind = "pmessage", pattern = m[2], channel = m[3], payload = m[4] }
      elseif getmetatable(m) == Error then
        self.err = m.message
        self:close()
        return nil
      end
    end
    -- subscribe / psubscribe confirmations: go on
  end
  return nil
end

Subscription.__call = Subscription.next


local function subscription(c, kind, ...)
  local n = select("#", ...)
  if n == 0 then error("redis: " .. kind:lower() .. " expects channels", 3) end
  local channels = { ... }
  for i = 1, n do
    if type(channels[i]) ~= "string" then
      error("redis: a channel must be a string", 3)
    end
  end
  return setmetatable({ client = c, kind = kind, channels = channels }, Subscription)
end


--- r:subscribe(channel...), r:psubscribe(pattern...): an iterator of the
-- messages, on a connection of its own (opened at the first step, outside
-- the pool's max): `for msg in r:subscribe("news") do ... end`. Each step
-- awaits. It unsubscribes (closes the connection) when closed
-- (sub:close()), when the task (request) that iterates it ends, or when
-- it is garbage-collected.
function Client:subscribe(...)
  return subscription(self, "SUBSCRIBE", ...)
end


function Client:psubscribe(...)
  return subscription(self, "PSUBSCRIBE", ...)
end


M.Client = Client

return M
