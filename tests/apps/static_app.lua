-- tests/apps/static_app.lua: static files for tests/test_static.py. The
-- folder is $LUASERVE_TEST_STATIC (the test makes it).
local luaserve = require "luaserve"
local app = luaserve.app()
local dir = assert(os.getenv("LUASERVE_TEST_STATIC"), "LUASERVE_TEST_STATIC")
app:static("/static", dir, { cache_control = "public, max-age=60" })
app:static("/plain", dir, { index = false })
-- folder listings (tests/test_static.py Listings): where a folder has no
-- index.html, and with no index at all
app:static("/listed", dir, { listing = true })
app:static("/listed-all", dir, { listing = true, index = false, cache = false })
-- the open-file cache (tests/test_static.py StaticCache): held for an
-- hour, checked after 0.3 s, a bound of two 1 KB files, none
app:static("/held", dir, { cache = { valid = 3600 } })
app:static("/fresh", dir, { cache = { valid = 0.3 } })
app:static("/tiny", dir, { cache = { valid = 3600, max_bytes = 3100, max_file = 2000 } })
app:static("/nocache", dir, { cache = false })
app:get("/pick/{name}", function(req)
  return luaserve.FileResponse(dir .. "/" .. req.params.name, { filename = "picked.bin" })
end)
-- A header that cannot be sent (CR LF in its value): a 500, the file closed.
app:get("/pick-bad/{name}", function(req)
  return luaserve.FileResponse(dir .. "/" .. req.params.name,
    { headers = { ["X-Bad"] = "a\r\nInjected: yes" } })
end)
app:get("/hello", function() return "hello" end)
return app
