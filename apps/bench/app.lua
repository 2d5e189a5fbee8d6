-- apps/bench: the benchmark contract (../shared/bench/README.md), the same
-- endpoints every peer serves.

local luaserve = require "luaserve"

local await, sleep = luaserve.await, luaserve.sleep

local app = luaserve.app()

-- Not part of the contract: what tests/bench/middleware.sh measures.
-- LUASERVE_BENCH_MIDDLEWARE=N adds N no-op middleware; LUASERVE_BENCH_GZIP=1
-- the GZip middleware (for /json-big, a 2 KB JSON answer).
for _ = 1, tonumber(os.getenv("LUASERVE_BENCH_MIDDLEWARE") or "0") do
  app:use(function(req, call_next) return call_next(req) end)
end
if os.getenv("LUASERVE_BENCH_GZIP") == "1" then
  app:use(require("luaserve.middleware").gzip())
end
local BIG = {}
for i = 1, 40 do BIG[i] = { id = i, name = "item " .. i, tags = { "a", "b" } } end
app:get("/json-big", function() return { items = BIG } end)

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

-- K concurrent upstream calls to $LUASERVE_UPSTREAM/json (a base URL),
-- else to this app's own /json.
local http = require "luaserve.http"
local UPSTREAM = (os.getenv("LUASERVE_UPSTREAM") or ""):gsub("/$", "")

app:get("/fanout", function(req)
  local n = tonumber(req.query.n) or 3
  if n < 1 or n > 100 or n % 1 ~= 0 then
    luaserve.raise(422, "n must be a whole number from 1 to 100")
  end
  local base = UPSTREAM
  if base == "" then
    base = "http://127.0.0.1:" .. ((req.headers.host or ""):match(":(%d+)$") or "80")
  end
  local calls = {}
  for i = 1, n do calls[i] = http.get(base .. "/json", { pool_size = 256 }) end
  local first, err = await(luaserve.gather(unpack(calls, 1, n)))
  if not first then return 502, { detail = "upstream failed: " .. err } end
  return { n = n, status = first.status }
end)

-- Naive recursive fib on the sync pool: in parallel on every core.
local function fib(n)
  if n < 2 then return n end
  return fib(n - 1) + fib(n - 2)
end

local JSON = { ["Content-Type"] = "application/json" }

app:get("/cpu", luaserve.sync(function(req)
  local n = tonumber(req.query.n) or 25
  return 200, ('{"n":%d,"fib":%d}'):format(n, fib(n)), JSON
end))

app:post("/echo", function(req)
  return 200, req.body, {
    ["Content-Type"] = req.headers["content-type"] or "application/octet-stream",
  }
end)

return app
