-- tests/apps/load_error.lua: raises while loading, at line 6 (see
-- tests/test_cli.py).
local luaserve = require "luaserve"
local app = luaserve.app()
local config = nil
local port = config.port

return app
