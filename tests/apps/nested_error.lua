-- tests/apps/nested_error.lua: a route definition that raises while
-- loading (a bad path template), from inside the framework.
local luaserve = require "luaserve"
local app = luaserve.app()

app:get("no-leading-slash", function() return {} end)

return app
