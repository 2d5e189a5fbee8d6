-- tests/apps/syntax_error.lua: does not compile (tests/test_cli.py expects
-- the message to name this file and line 6).
local luaserve = require "luaserve"
local app = luaserve.app()

app:get("/", function(req)
  return { ok = true
end)

return app
