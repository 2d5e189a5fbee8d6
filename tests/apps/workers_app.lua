-- tests/apps/workers_app.lua: what tests/test_workers.py runs under
-- --workers N: which process answered, a shared counter, waits, a loop
-- that blocks, and a worker that keeps the shared dictionary's lock busy.
local luaserve = require "luaserve"
local core = require "luaserve.core"

local await, sleep, shared = luaserve.await, luaserve.sleep, luaserve.shared
local app = luaserve.app()

-- The version the app was loaded with (a reload loads the file again).
local VERSION = os.getenv("WORKERS_APP_VERSION") or "1"

app:get("/whoami", function(req)
  return { pid = core.getpid(), version = VERSION, client = req.client.host,
           scheme = req.scheme, path = req.path, root_path = req.root_path or "" }
end)

app:get("/counter", function()
  return { count = shared.incr("test:counter", 1, 0) }
end)

app:get("/sleep", function(req)
  await(sleep((tonumber(req.query.ms) or 100) / 1000))
  return { pid = core.getpid() }
end)

-- On the pool: holds a pool thread for ms (the pool's gauges).
app:get("/sync-busy", luaserve.sync(function(req)
  local t = os.clock()
  local s = (tonumber(req.query.ms) or 100) / 1000
  while os.clock() - t < s do end
  return { done = true }
end))

-- Holds the loop (a bug the healthcheck catches): never yields.
app:get("/block", function()
  local t = os.time()
  while os.time() - t < 3600 do end
  return "unreachable"
end)

-- Takes the dictionary's lock as often as it can, with a large value (a
-- long copy under the lock), until the worker is killed.
app:get("/hammer", function(req)
  shared.set("hammer:pid:" .. (req.query.id or ""), core.getpid())
  local big = ("x"):rep(4 * 1024 * 1024)
  for i = 1, 1e9 do shared.set("hammer:" .. (i % 4), big) end
end)

app:get("/shared", function(req)
  local ok, why = shared.verify()
  return { verify = ok or why, value = shared.get(req.query.key or "-"),
           stats = shared.stats() }
end)

app:post("/shared", function(req)
  local t = req:json()
  return { ok = shared.set(t.key, t.value) }
end)

return app
