-- tests/bench/static_app.lua: the app of tests/bench/static.sh: the folder
-- $LUASERVE_BENCH_STATIC served at /static (app:static), with its
-- open-file cache unless LUASERVE_BENCH_NOCACHE is set.
local luaserve = require "luaserve"
local app = luaserve.app()
app:static("/static", assert(os.getenv("LUASERVE_BENCH_STATIC"), "LUASERVE_BENCH_STATIC"),
  { cache = os.getenv("LUASERVE_BENCH_NOCACHE") == nil })
return app
