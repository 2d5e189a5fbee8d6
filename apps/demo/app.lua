-- apps/demo: luaserve's concurrency lessons as routes. See README.md here
-- for a curl line per route and what each one teaches.

local luaserve = require "luaserve"

local await, sleep, gather, wait_for = luaserve.await, luaserve.sleep,
  luaserve.gather, luaserve.wait_for
local hrtime = require("luaserve.core").hrtime

local app = luaserve.app()


local function ms_since(t0)
  return math.floor((hrtime() - t0) * 1000 + 0.5)
end


-- An async handler: awaiting yields to the loop, which serves others.
app:get("/async", function(req)
  await(sleep(0))
  return { style = "async" }
end)


-- Many of these in parallel finish together: a sleeping request costs the
-- loop nothing.
app:get("/slow", function(req)
  local ms = tonumber(req.query.ms) or 100
  if ms < 0 or ms > 60000 then luaserve.raise(422, "ms must be from 0 to 60000") end
  await(sleep(ms / 1000))
  return { slept_ms = ms }
end)


-- Three 100 ms waits one after another: about 300 ms.
app:get("/sequential", function(req)
  local t0 = hrtime()
  for _ = 1, 3 do await(sleep(0.1)) end
  return { waits = 3, elapsed_ms = ms_since(t0) }
end)


-- The same three waits gathered: about 100 ms, the longest, not the sum.
app:get("/concurrent", function(req)
  local t0 = hrtime()
  await(gather(sleep(0.1), sleep(0.1), sleep(0.1)))
  return { waits = 3, elapsed_ms = ms_since(t0) }
end)


-- wait_for bounds a wait: a 2 s wait given 0.2 s answers 504.
app:get("/timeout", function(req)
  local ok, err = await(wait_for(sleep(2), 0.2))
  if err == "timeout" then
    return 504, { detail = "the slow operation took longer than 0.2 s" }
  end
  return { done = true }
end)


-- A typed path parameter: /users/abc answers 422 naming the parameter.
app:get("/users/{id:int}", function(req)
  return { id = req.params.id, name = "user " .. req.params.id }
end)


-- JSON in, 201 out. Invalid JSON answers 400 with the reason.
local items, next_id = {}, 1
app:post("/items", function(req)
  local item = req:json()
  if type(item) ~= "table" or type(item.name) ~= "string" then
    luaserve.raise(422, "expected a JSON object with a string 'name'")
  end
  item.id = next_id
  next_id = next_id + 1
  items[item.id] = item
  return 201, item
end)


app:get("/items/{id:int}", function(req)
  local item = items[req.params.id]
  if not item then luaserve.raise(404, "no item " .. req.params.id) end
  return item
end)


-- An error in a handler: a clean 500 for the client, the traceback with
-- the route in the server's log, and the server keeps serving.
app:get("/boom", function(req)
  local t = nil
  return t.missing   -- attempt to index a nil value
end)


app:get("/", function(req)
  local routes = {}
  for _, r in ipairs(app.routes) do routes[#routes + 1] = r.method .. " " .. r.path end
  return { app = "luaserve demo", routes = routes }
end)

return app
