-- luaserve.log: the log. Every line has a time and a level, as text
--
--   2026-12-01T05:40:12.345Z INFO  127.0.0.1 - "GET /hello" 200 13 0.12ms
--   2026-12-01T05:40:12.350Z ERROR GET /boom (route /boom): app.lua:9: boom
--
-- or, with set_format("json") (--log-format json), one JSON object per
-- line: {"time":..,"level":..,"message":..} and the line's fields (access
-- lines: type "access", method, path, target (as sent, with the query),
-- route, status, bytes, duration_ms, client, request_id).
--
--   log.info("user %s logged in", name)          -- string.format
--   log.warn("slow upstream", { ms = 812 })      -- fields: " ms=812" / "ms":812
--
-- Works the same in handlers, background tasks and sync functions (pool
-- threads): the core writes every line under one lock. Access lines are
-- buffered and written every 100 ms (or at 32 KB), so logging costs no
-- system call per request; any other line writes them first, so the log
-- keeps the order in which things happened.

local core = require "luaserve.core"
local PEER = require("luaserve.request_slots").PEER

local format = string.format
local concat = table.concat
local select = select
local type = type
local tostring = tostring

local c_log = core.log
local c_access = core.log_access
local ffi_access = require("luaserve.ffi").log_access   -- the same, compiled in line
local c_flush = core.log_flush

local M = {}

local LEVELS = { debug = 1, info = 2, warn = 3, error = 4 }
M.LEVELS = LEVELS
-- The level is the process's (pool states start with the main state's).
local threshold = select(2, core.log_config())

local output = nil          -- set_output's, or nil: stderr through the core
local buf, nbuf = {}, 0     -- access lines for output, until flushed
local flush_timer = nil


--- set_level(name): "debug", "info", "warn" or "error", for the whole
-- process (the core's own lines too).
function M.set_level(name)
  local l = LEVELS[name]
  if not l then
    error("log level must be debug, info, warn or error, got " .. tostring(name), 2)
  end
  threshold = l
  core.log_config({ level = l })
end


--- level(): the level's name now.
function M.level()
  for name, l in pairs(LEVELS) do
    if l == threshold then return name end
  end
end


--- set_format(f): "text" (the default) or "json", for the whole process.
function M.set_format(f)
  if f ~= "text" and f ~= "json" then
    error("log format must be text or json, got " .. tostring(f), 2)
  end
  core.log_config({ format = f })
end


--- flush(): write the buffered access lines now.
function M.flush()
  if flush_timer then flush_timer:stop() flush_timer = nil end
  if output then
    if nbuf == 0 then return end
    output:write(concat(buf, "", 1, nbuf))
    for i = 1, nbuf do buf[i] = nil end
    nbuf = 0
  else
    c_flush()
  end
end
local flush = M.flush


--- set_output(f): write the lines to f (anything with :write, e.g. a
-- file, or a table that collects them in a spec) instead of stderr; nil:
-- back to stderr. Returns the previous output (nil for stderr).
function M.set_output(f)
  flush()
  local prev = output
  output = f
  return prev
end


-- A line at level l: msg, msg with format arguments, or msg and a table
-- of fields.
local function line(l, msg, ...)
  if l < threshold then return end
  local fields
  local n = select("#", ...)
  if n > 0 then
    local a = ...
    if n == 1 and type(a) == "table" then fields = a else msg = format(msg, ...) end
  end
  if type(msg) ~= "string" then msg = tostring(msg) end
  if output then
    flush()
    output:write(c_log(l, msg, fields, true))
  else
    c_log(l, msg, fields)
  end
end

function M.debug(msg, ...) line(1, msg, ...) end
function M.info(msg, ...) line(2, msg, ...) end
function M.warn(msg, ...) line(3, msg, ...) end
function M.error(msg, ...) line(4, msg, ...) end


-- The flush timer resolves its target like any future: a table with a
-- resolve method is enough.
local flusher = { _done = false, resolve = function(self) flush_timer = nil flush() end }


-- The client's address for the access line: the proxy's req.client (or
-- the app's), else what the server read when the request started.
local function client_host(req)
  local client = rawget(req, "client")
  if client then return client.host end
  local peer = rawget(req, PEER)
  if peer then return peer ~= "" and peer or nil end
  return req.client.host
end


--- access(req, status, bytes, seconds): one access line (at info level).
function M.access(req, status, nbytes, seconds)
  if threshold > 2 then return end
  local host = client_host(req)
  local route = req.route
  if output then
    nbuf = nbuf + 1
    buf[nbuf] = c_access(host, req.method, req.target, req.path,
      route or nil, status, nbytes, seconds, rawget(req, "request_id"), true)
    if nbuf >= 256 then flush() return end
    if flush_timer == nil then flush_timer = core.timer(100, flusher) end
    return
  end
  local rid = rawget(req, "request_id")
  local first
  if (host == nil or type(host) == "string") and (rid == nil or type(rid) == "string")
      and (not route or type(route) == "string") then
    first = ffi_access(host, req.method, req.target, req.path, route or nil,
      status, nbytes, seconds, rid)   -- nil: it failed, the classic one says why
  end
  if first == nil then
    first = c_access(host, req.method, req.target, req.path, route or nil,
      status, nbytes, seconds, rid)
  end
  if first and flush_timer == nil then
    flush_timer = core.timer(100, flusher)
  end
end

return M
