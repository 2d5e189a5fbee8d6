-- tests/bench/client_seq.lua URL [N] [ROUNDS]: the HTTP client alone. N
-- sequential keep-alive GETs of URL (default 1,000), ROUNDS times (default
-- 5) after a warm-up; prints one line per round: "N seconds requests/s".
-- Run with `luaserve lua tests/bench/client_seq.lua URL`.
local luaserve = require "luaserve"
local http = require "luaserve.http"
local core = require "luaserve.core"

local await, hrtime = luaserve.await, core.hrtime
local url = assert(arg[1], "usage: client_seq.lua URL [N] [ROUNDS]")
local n = tonumber(arg[2]) or 1000
local rounds = tonumber(arg[3]) or 5

local function run(count)
  for _ = 1, count do
    local res, err = await(http.get(url))
    if not res or res.status ~= 200 then
      error("request failed: " .. tostring(err or res.status))
    end
  end
end

run(200)   -- warm-up: JIT, the pooled connection
for _ = 1, rounds do
  local t0 = hrtime()
  run(n)
  local dt = hrtime() - t0
  print(("%d %.6f %.0f"):format(n, dt, n / dt))
end
