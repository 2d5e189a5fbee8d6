-- tests/bench/validation_app.lua: the app of tests/bench/validation.sh: the
-- same POST with a declared body (decoded and validated) and without one
-- (decoded by the handler), and a plain GET for the no-schema hot path.
local luaserve = require "luaserve"
local schema = require "luaserve.schema"
local app = luaserve.app()
local Item = schema.object{ name = "Item", fields = {
  name = schema.string{ min_length = 1, max_length = 100 },
  price = schema.number{ exclusive_min = 0 },
  tags = schema.array{ items = schema.string{ min_length = 1 }, unique = true, default = {} },
  note = schema.string{ optional = true },
}, additional = false }
app:post("/validated", { body = Item }, function(req) return { ok = true } end)
app:post("/decoded", function(req)
  local _ = req:json()
  return { ok = true }
end)
app:get("/plaintext", function() return "Hello, World!" end)
return app
