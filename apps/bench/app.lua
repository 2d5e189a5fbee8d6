-- apps/bench: the benchmark contract (../shared/bench/README.md), the same
-- endpoints every peer serves.

local luaserve = require "luaserve"

local await, sleep = luaserve.await, luaserve.sleep

local app = luaserve.app()

-- Not part of the contract: what tests/bench/middleware.sh measures.
-- LUASERVE_BENCH_MIDDLEWARE=N adds N no-op middleware, =builtin the four
-- that ship (request id, CORS, GZip, trusted hosts); LUASERVE_BENCH_GZIP=1
-- the GZip middleware (for /json-big, a 2 KB JSON answer).
local BENCH_MW = os.getenv("LUASERVE_BENCH_MIDDLEWARE") or "0"
if BENCH_MW == "builtin" then
  local mw = require "luaserve.middleware"
  app:use(mw.request_id())
  app:use(mw.cors{ origins = { "https://example.com" } })
  app:use(mw.gzip())
  app:use(mw.trusted_hosts{ "*" })
end
for _ = 1, tonumber(BENCH_MW) or 0 do
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

-- The TechEmpower database tests (../shared/bench/README.md) on the world
-- (10,000 rows) and fortune tables that ../shared/bench/db/ creates, with
-- the database from $LUASERVE_PG. Several queries of one request go in one
-- libpq pipeline (one round trip); the updates in one statement.
local pg = require "luaserve.pg"

local PG_URL = os.getenv("LUASERVE_PG") or ""
local db = PG_URL ~= "" and pg.pool{ url = PG_URL,
  max = tonumber(os.getenv("LUASERVE_PG_POOL")) or 16 } or nil
local random, floor = math.random, math.floor
local concat, sort, format = table.concat, table.sort, string.format
local READ = "SELECT id, randomnumber FROM world WHERE id = $1"
local WRITE = "UPDATE world SET randomnumber = v.r FROM " ..
  "(SELECT unnest($1::int[]) AS id, unnest($2::int[]) AS r) AS v WHERE world.id = v.id"
local HTML = { ["Content-Type"] = "text/html; charset=utf-8" }


local function database()
  if not db then luaserve.raise(503, "no database: set LUASERVE_PG") end
  return db
end


-- ?queries=N: 1..500; what is not a number gives 1.
local function count(q)
  local n = tonumber(q)
  if not n then return 1 end
  n = floor(n)
  if n < 1 then return 1 end
  if n > 500 then return 500 end
  return n
end


-- n distinct random ids, sorted (updates then lock rows in one order).
local function ids(n)
  local seen, out = {}, {}
  while #out < n do
    local id = random(1, 10000)
    if not seen[id] then seen[id] = true out[#out + 1] = id end
  end
  sort(out)
  return out
end


local function world_json(id, n)
  return format('{"id":%d,"randomNumber":%d}', id, n)
end


app:get("/db", function()
  local rows, err = await(database():query(READ, random(1, 10000)))
  if not rows then return 503, { detail = tostring(err) } end
  local r = rows[1]
  return 200, world_json(r.id, r.randomnumber), JSON
end)


app:get("/queries", function(req)
  local want = ids(count(req.query.queries))
  local out, err = await(database():pipeline(function(p)
    for i = 1, #want do p:query(READ, want[i]) end
  end))
  if not out then return 503, { detail = tostring(err) } end
  local parts = {}
  for i = 1, #out do
    local r = out[i][1]
    parts[i] = world_json(r.id, r.randomnumber)
  end
  return 200, "[" .. concat(parts, ",") .. "]", JSON
end)


local ESCAPE = { ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;",
  ['"'] = "&quot;", ["'"] = "&#x27;" }


local function by_message(a, b)
  return a.message < b.message
end


app:get("/fortunes", function()
  local rows, err = await(database():query("SELECT id, message FROM fortune"))
  if not rows then return 503, { detail = tostring(err) } end
  local list = {}
  for i = 1, #rows do list[i] = rows[i] end
  list[#list + 1] = { id = 0, message = "Additional fortune added at request time." }
  sort(list, by_message)
  local out = { "<!DOCTYPE html><html><head><title>Fortunes</title></head><body>" ..
    "<table><tr><th>id</th><th>message</th></tr>" }
  for i = 1, #list do
    out[i + 1] = format("<tr><td>%d</td><td>%s</td></tr>", list[i].id,
      (list[i].message:gsub("[&<>\"']", ESCAPE)))
  end
  out[#out + 1] = "</table></body></html>"
  return 200, concat(out), HTML
end)


app:get("/updates", function(req)
  local want = ids(count(req.query.queries))
  local numbers = {}
  for i = 1, #want do numbers[i] = random(1, 10000) end
  -- each row read, then all updated: one pipeline, one round trip
  local out, err = await(database():pipeline(function(p)
    for i = 1, #want do p:query(READ, want[i]) end
    p:query(WRITE, pg.array(want), pg.array(numbers))
  end))
  if not out then return 503, { detail = tostring(err) } end
  local parts = {}
  for i = 1, #want do
    parts[i] = world_json(out[i][1].id, numbers[i])
  end
  return 200, "[" .. concat(parts, ",") .. "]", JSON
end)


-- Not part of the HTTP contract: the WebSocket routes tests/bench/ws.sh
-- measures beside Node's ws and uvicorn (tests/bench/ws/ serves the same
-- two). /ws/echo sends every message back; in /ws/room/{name} every message
-- a member sends goes to every member, the sender included (no join or
-- leave notices: 2,000 joins would be 2 million messages).
app:websocket("/ws/echo", function(ws)
  for msg, kind in ws:messages() do
    await(ws:send(msg, kind))
  end
end)

local rooms = {}

app:websocket("/ws/room/{name}", function(ws, req)
  local name = req.params.name
  local room = rooms[name] or {}
  rooms[name] = room
  room[ws] = true
  for msg, kind in ws:messages() do
    for member in pairs(room) do
      member:send(msg, kind)   -- not awaited: a slow member holds no one up
    end
  end
  room[ws] = nil
  if next(room) == nil then rooms[name] = nil end
end)

return app
