-- spec/upstream_helper.lua: start tests/upstream.py, the scripted upstream
-- of the client specs (misbehaving HTTP paths, a listener that never
-- accepts, one that never reads, a small RESP server), and stop it by pid.
--
--   local up = dofile("spec/upstream_helper.lua").start()
--   up.http, up.blackhole, up.noread, up.resp   -- ports on 127.0.0.1
--   up.url("/chunked"), up.stats()              -- counters (blocking)
--   up.stop()

local json = require "luaserve.json"

local M = {}

local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "spec"
local script = here .. "/../tests/upstream.py"


function M.start()
  local f = assert(io.popen("exec python3 " .. script .. " --lifetime 300", "r"))
  local line = f:read("*l")
  assert(line, "tests/upstream.py did not start")
  local up = assert(json.decode(line))
  function up.url(path)
    return "http://127.0.0.1:" .. up.http .. path
  end
  -- The upstream's counters, fetched with the client itself.
  function up.stats()
    local http = require "luaserve.http"
    local await = require("luaserve.future").await
    local res = assert(await(http.get(up.url("/stats"),
      { keepalive = false })))
    return assert(res:json())
  end
  function up.stop()
    os.execute("kill " .. up.pid .. " 2>/dev/null")
    f:close()
  end
  return up
end


-- Poll fn() every 50 ms until it returns true or `seconds` pass; returns
-- its last result. Runs the loop meanwhile.
function M.eventually(fn, seconds)
  local future = require "luaserve.future"
  local core = require "luaserve.core"
  local deadline = core.hrtime() + (seconds or 5)
  while true do
    local v = fn()
    if v or core.hrtime() > deadline then return v end
    future.await(future.sleep(0.05))
  end
end

return M
