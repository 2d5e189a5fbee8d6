-- apps/bench: the benchmark contract (../shared/bench/README.md), the same
-- endpoints every peer serves.

local luaserve = require "luaserve"

local await, sleep = luaserve.await, luaserve.sleep

local app = luaserve.app()

local TEXT = { ["Content-Type"] = "text/plain" }

app:get("/plaintext", function()
  return 200, "Hello, World!", TEXT
end)

app:get("/json", function()
  return { message = "Hello, World!" }
end)

app:get("/sleep", function(req)
  local ms = tonumber(req.query.ms) or 0
  await(sleep(ms / 1000))
  return { slept_ms = ms }
end)

app:post("/echo", function(req)
  return 200, req.body, {
    ["Content-Type"] = req.headers["content-type"] or "application/octet-stream",
  }
end)

return app
