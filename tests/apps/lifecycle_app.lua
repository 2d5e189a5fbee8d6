-- tests/apps/lifecycle_app.lua: the lifecycle against the real binary
-- (tests/test_lifecycle.py): middleware on every kind of answer, request
-- deadlines over an upstream call and the sync pool, startup and shutdown
-- hooks, background tasks at shutdown. LIFECYCLE_FAIL_STARTUP=1 makes the
-- startup hook fail; LIFECYCLE_UPSTREAM is the upstream's base URL.

local luaserve = require "luaserve"
local http = require "luaserve.http"
local log = require "luaserve.log"

local await, sleep, sync, shared = luaserve.await, luaserve.sleep, luaserve.sync,
  luaserve.shared

local app = luaserve.app()

app:on_startup(function(a)
  await(sleep(0.05))
  if os.getenv("LIFECYCLE_FAIL_STARTUP") == "1" then
    error("cannot reach the database")
  end
  a.state.started = true
  log.info("startup hook ran")
end)

app:on_shutdown(function()
  await(sleep(0.05))
  log.info("shutdown hook ran")
end)

-- Two middleware: each adds itself to X-Trace, outermost first.
app:use(function(req, call_next)
  local res = call_next(req)
  res:set_header("X-Trace", "outer," .. (res:header("X-Trace") or ""))
  return res
end)
app:use(function(req, call_next)
  local res = call_next(req)
  res:set_header("X-Trace", "inner")
  res:set_header("X-Route", tostring(req.route))
  return res
end)

app:get("/ok", function(req) return { started = req.app.state.started } end)
app:get("/boom", function() error("handler bug") end)

-- An upstream call that never answers, bounded by the route's deadline.
app:get("/upstream", function(req)
  local res, err = await(http.get((os.getenv("LIFECYCLE_UPSTREAM") or "") ..
    "/stall-headers", { timeout = 30 }))
  return { err = err }
end, { timeout = 0.5 })

-- A sync route slower than its deadline: the running job cannot be
-- interrupted, its result is dropped; a queued one never runs.
local slow = sync(function(req)
  shared.incr("lifecycle:started", 1, 0)
  local t0 = os.clock()
  while os.clock() - t0 < 1.0 do end
  shared.incr("lifecycle:finished", 1, 0)
  return { done = true }
end)
app:get("/sync-slow", slow, { timeout = 0.3 })

app:get("/counts", function()
  return { started = shared.get("lifecycle:started") or 0,
    finished = shared.get("lifecycle:finished") or 0,
    pool = luaserve.pool.stats() }
end)

-- A background task the graceful shutdown waits for.
app:post("/signup", function(req)
  req:after_response(function()
    await(sleep(0.5))
    log.info("welcome mail sent")
  end)
  return 202, { accepted = true }
end)

return app
