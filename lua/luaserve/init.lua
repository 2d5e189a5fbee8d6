-- luaserve: the public API.
--
--   local luaserve = require "luaserve"
--   local app = luaserve.app()
--   app:get("/hello", function(req) return { hello = "world" } end)
--   return app

local app = require "luaserve.app"
local errors = require "luaserve.errors"
local future = require "luaserve.future"
local json = require "luaserve.json"
local response = require "luaserve.response"

local M = {}

M.VERSION = require("luaserve.core").version

M.app = app.new

-- futures and the toolkit
M.await = future.await
M.sleep = future.sleep
M.spawn = future.spawn
M.spawn_detached = future.spawn_detached
M.gather = future.gather
M.GatherError = future.GatherError
M.wait_for = future.wait_for
M.Semaphore = future.Semaphore
M.Future = future.new
M.resolved = future.resolved
M.is_future = future.is_future
M.on_cancel = future.on_cancel

--- time_left(): seconds left before the running request's deadline
-- (--timeout-request or its route's timeout), or nil when it has none.
-- The HTTP client bounds its calls by it; give it to other waits too.
function M.time_left()
  local d = future.deadline()
  if d == nil then return nil end
  local left = d - require("luaserve.core").now()
  return left > 0 and left or 0
end

-- the thread pool and what every state shares
local sync = require "luaserve.sync"
M.sync = sync.sync
M.shared = require "luaserve.shared"
M.pool = { stats = require("luaserve.core").pool_stats }

-- responses and errors
M.HTTPError = errors.new
M.Response = response.new
M.sse = require("luaserve.sse").response
M.FileResponse = require("luaserve.static").FileResponse
M.null = json.null
M.json = json

-- cookies, crypto, files (issue 14)
M.cookies = require "luaserve.cookies"
M.crypto = require "luaserve.crypto"
M.fs = require "luaserve.fs"

--- cookie(name, value, opts): a Set-Cookie header value, for the
-- `return status, body, headers` form: { ["Set-Cookie"] = { c1, c2 } }.
function M.cookie(name, value, opts)
  return M.cookies.serialize(name, value, opts, 2)
end

-- the log (luaserve.log.info(...), in handlers, tasks and sync functions)
M.log = require "luaserve.log"

--- raise(status, detail, headers): error(HTTPError(status, detail, headers)).
function M.raise(status, detail, headers)
  error(errors.new(status, detail, headers), 2)
end

-- User coroutines that await pass the framework's yields through.
coroutine.resume = future.coroutine_resume
coroutine.wrap = future.coroutine_wrap

return M
