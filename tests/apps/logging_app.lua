-- tests/apps/logging_app.lua: log lines from everywhere (tests/test_usability.py).
local luaserve = require "luaserve"
local log = require "luaserve.log"

local app = luaserve.app()

-- A sync function logs from its pool thread.
local crunch = luaserve.sync(function(n)
  log.info("crunching %d in a pool thread", n)
  return n * 2
end)

app:get("/handler", function(req)
  log.warn("from a handler", { user = "ana", tries = 3 })
  return "ok"
end)

app:get("/pool", function(req)
  return { doubled = (luaserve.await(crunch(21))) }
end)

app:get("/background", function(req)
  req:after_response(function()
    log.info("from a background task")
  end)
  return "later"
end)

-- Writes until the client is gone; /last says what write() returned.
local last = "none"
app:get("/stream", function(req)
  return luaserve.Response{ stream = function(write)
    local chunk = string.rep("x", 65536)
    for i = 1, 100000 do
      local ok, err = write(chunk)
      if not ok then last = tostring(ok) .. " " .. tostring(err) return end
    end
    last = "finished"
  end }
end)
app:get("/last", function() return last end)

return app
