-- apps/demo: luaserve's concurrency lessons as routes. See README.md here
-- for a curl line per route and what each one teaches.

local luaserve = require "luaserve"

local await, sleep, gather, wait_for = luaserve.await, luaserve.sleep,
  luaserve.gather, luaserve.wait_for
local hrtime = require("luaserve.core").hrtime
local schema = require "luaserve.schema"
-- This file's folder (FileResponse paths are from the working folder).
local DEMO_DIR = debug.getinfo(1, "S").source:sub(2):match("^(.*)/[^/]*$") or "."

local app = luaserve.app{
  title = "luaserve demo",
  version = luaserve.VERSION,
  description = "Every feature of luaserve as a route: concurrency, the thread pool, " ..
    "the HTTP client, the request lifecycle, WebSockets and SSE, databases, declared " ..
    "inputs. `make run` serves it; apps/demo/README.md has a curl line per route.",
}

-- Schemas the routes below share (luaserve.schema; see /docs).
local Ms = function(default, max)
  return schema.integer{ min = 0, max = max, default = default,
    description = "milliseconds" }
end
local Detail = schema.object{ name = "Detail", fields = {
  detail = schema.any{ description = "what went wrong" } } }


-- ---- The app's lifecycle (see the README's sections on each) -------------

local mw = require "luaserve.middleware"
local log = require "luaserve.log"

-- Around every request, outermost first: a request id (kept from the
-- client's X-Request-ID, else made; in the access log line), CORS for a
-- front end on another origin, gzip for big text answers.
app:use(mw.request_id())
app:use(mw.cors{ origins = { "http://localhost:3000", "http://127.0.0.1:3000" },
  credentials = true, expose_headers = { "X-Request-ID" } })
app:use(mw.gzip{ minimum_size = 500 })

-- Startup: runs (and may await) before the first connection is accepted;
-- what it sets up is app.state, reachable from handlers as req.app.state.
app:on_startup(function(a)
  await(sleep(0))   -- e.g. await(db.connect(...))
  a.state.started_at = os.date("!%Y-%m-%dT%H:%M:%SZ")
end)
app:on_shutdown(function()
  log.info("demo: shutdown hook ran (close pools here)")
end)

-- A domain error of a data layer, mapped to a 404 by an exception handler.
local NotFound = {}
NotFound.__index = NotFound
app:exception_handler(NotFound, function(req, err)
  return 404, { detail = err.what .. " not found" }
end)


local function ms_since(t0)
  return math.floor((hrtime() - t0) * 1000 + 0.5)
end


-- An async handler: awaiting yields to the loop, which serves others.
app:get("/async", { summary = "An async handler", tags = { "concurrency" },
  description = "`await(sleep(0))` yields to the loop and comes straight back." },
function(req)
  await(sleep(0))
  return { style = "async" }
end)


-- Many of these in parallel finish together: a sleeping request costs the
-- loop nothing.
app:get("/slow", { summary = "Sleep without blocking", tags = { "concurrency" },
  description = "Many of these in parallel finish together: a sleeping request costs the loop nothing.",
  query = { ms = Ms(100, 60000) } },
function(req)
  local ms = req.valid.query.ms
  await(sleep(ms / 1000))
  return { slept_ms = ms }
end)


-- Three 100 ms waits one after another: about 300 ms.
app:get("/sequential", { summary = "Three waits one after another", tags = { "concurrency" } },
function(req)
  local t0 = hrtime()
  for _ = 1, 3 do await(sleep(0.1)) end
  return { waits = 3, elapsed_ms = ms_since(t0) }
end)


-- The same three waits gathered: about 100 ms, the longest, not the sum.
app:get("/concurrent", { summary = "Three waits gathered", tags = { "concurrency" },
  description = "About 100 ms: the longest wait, not the sum." },
function(req)
  local t0 = hrtime()
  await(gather(sleep(0.1), sleep(0.1), sleep(0.1)))
  return { waits = 3, elapsed_ms = ms_since(t0) }
end)


-- wait_for bounds a wait: a 2 s wait given 0.2 s answers 504.
app:get("/timeout", { summary = "wait_for bounds a wait", tags = { "concurrency" },
  response = { [200] = schema.object{ fields = { done = schema.boolean() } }, [504] = Detail } },
function(req)
  local ok, err = await(wait_for(sleep(2), 0.2))
  if err == "timeout" then
    return 504, { detail = "the slow operation took longer than 0.2 s" }
  end
  return { done = true }
end)


-- A typed path parameter: /users/abc answers 422 naming the parameter.
local User = schema.object{ name = "User", fields = {
  id = schema.integer{ min = 1 }, name = schema.string() } }
app:get("/users/{id:int}", { summary = "A user by id", tags = { "inputs" },
  description = "A typed path parameter refined by a schema: `abc` or `0` answer 422 naming it.",
  path = { id = schema.integer{ min = 1, description = "the user's id" } },
  response = User },
function(req)
  return { id = req.params.id, name = "user " .. req.params.id }
end)


-- A declared JSON body: name required, price > 0, tags unique strings.
-- Anything else answers 422 listing every problem; a body that is not
-- JSON, 422 json_invalid; another Content-Type, 415.
local Item = schema.object{ name = "Item", fields = {
  name = schema.string{ min_length = 1, max_length = 100, description = "what it is" },
  price = schema.number{ exclusive_min = 0, description = "in euros, more than 0" },
  tags = schema.array{ items = schema.string{ min_length = 1 }, unique = true, default = {},
    description = "labels, each once" },
}, additional = false }
local StoredItem = schema.object{ name = "StoredItem", fields = {
  id = schema.integer(), name = schema.string(), price = schema.number(),
  tags = schema.array{ items = schema.string() } } }
local items, next_id = {}, 1
app:post("/items", { summary = "Add an item", tags = { "inputs" }, body = Item,
  response = { [201] = StoredItem } },
function(req)
  local item = req.valid.body
  item.id = next_id
  next_id = next_id + 1
  items[item.id] = item
  return 201, item
end)


app:get("/items/{id:int}", { summary = "An item by id", tags = { "inputs" },
  response = { [200] = StoredItem, [404] = Detail } },
function(req)
  local item = items[req.params.id]
  if not item then luaserve.raise(404, "no item " .. req.params.id) end
  return item
end)


-- An error in a handler: a clean 500 for the client, the traceback with
-- the route in the server's log, and the server keeps serving.
app:get("/boom", { summary = "A bug: a clean 500", tags = { "errors" } },
function(req)
  local t = nil
  return t.missing   -- attempt to index a nil value
end)


-- ---- Waiting on another service: the HTTP client (luaserve.http) ------

local http = require "luaserve.http"

-- The upstream of /external, /fanout and /throttled: $LUASERVE_UPSTREAM (a
-- full URL), else this demo's own /slow?ms=100 (on the port the request
-- came in on).
local UPSTREAM = os.getenv("LUASERVE_UPSTREAM")

local function own_url(req, path)
  local port = (req.headers.host or ""):match(":(%d+)$") or "80"
  return "http://127.0.0.1:" .. port .. path
end

local function upstream_url(req)
  if UPSTREAM and UPSTREAM ~= "" then return UPSTREAM end
  return own_url(req, "/slow?ms=100")
end


-- One upstream call: while it waits, the loop serves other requests.
app:get("/external", { summary = "One upstream call", tags = { "http client" } },
function(req)
  local url = upstream_url(req)
  local t0 = hrtime()
  local res, err = await(http.get(url))
  if not res then
    return 502, { detail = "upstream failed: " .. err, upstream = url }
  end
  return { upstream = url, status = res.status, elapsed_ms = ms_since(t0),
    body = res:json() or res.body }
end)


-- Three upstream calls gathered take the longest wait, not the sum of the
-- waits; the same three one after another take the sum.
app:get("/fanout", { summary = "Three upstream calls, gathered then one by one",
  tags = { "http client" } },
function(req)
  local url = upstream_url(req)
  local t0 = hrtime()
  local a, err = await(gather(http.get(url), http.get(url), http.get(url)))
  if not a then return 502, { detail = "upstream failed: " .. err } end
  local gathered_ms = ms_since(t0)
  t0 = hrtime()
  for _ = 1, 3 do
    local res, serr = await(http.get(url))
    if not res then return 502, { detail = "upstream failed: " .. serr } end
  end
  return { upstream = url, calls = 3, gathered_ms = gathered_ms,
    sequential_ms = ms_since(t0) }
end)


-- A Semaphore shared by every request bounds the calls in flight to the
-- upstream (protect a service that can take only so much): six calls, two
-- at a time, take three rounds.
local UPSTREAM_LIMIT = 2
local upstream_slots = luaserve.Semaphore(UPSTREAM_LIMIT)
local in_flight, most_in_flight = 0, 0

app:get("/throttled", { summary = "A Semaphore bounds calls in flight",
  tags = { "http client" } },
function(req)
  local url = upstream_url(req)
  local t0 = hrtime()
  local calls = {}
  for i = 1, 6 do
    calls[i] = luaserve.spawn(function()
      return upstream_slots:run(function()
        in_flight = in_flight + 1
        if in_flight > most_in_flight then most_in_flight = in_flight end
        local res, err = await(http.get(url))
        in_flight = in_flight - 1
        return res and res.status, err
      end)
    end)
  end
  local s1, err = await(gather(unpack(calls)))
  if not s1 then return 502, { detail = "upstream failed: " .. err } end
  return { calls = #calls, limit = UPSTREAM_LIMIT,
    most_in_flight = most_in_flight, elapsed_ms = ms_since(t0) }
end)


-- wait_for bounds an upstream call: a 2 s upstream given 0.2 s answers 504,
-- and the call is aborted (its connection closed, not pooled).
app:get("/upstream-timeout", { summary = "wait_for around an upstream call",
  tags = { "http client" } },
function(req)
  local res, err = await(wait_for(http.get(own_url(req, "/slow?ms=2000")), 0.2))
  if err == "timeout" then
    return 504, { detail = "the upstream took longer than 0.2 s" }
  end
  if not res then return 502, { detail = "upstream failed: " .. err } end
  return { status = res.status }
end)


-- ---------------------------------------------------------------------------
-- Sync functions: run on the thread pool, each pool thread with its own Lua
-- state holding this app, in parallel on every core. The loop stays free.

local sync, shared = luaserve.sync, luaserve.shared
local is_pool_state = require("luaserve.core").is_pool_state
local bit = require "bit"
local bxor, band, rshift, lshift = bit.bxor, bit.band, bit.rshift, bit.lshift


local function ms_param(req)
  return req.valid.query.ms
end


-- Naive recursive Fibonacci: CPU work with nothing to wait for.
local function fib(n)
  if n < 2 then return n end
  return fib(n - 1) + fib(n - 2)
end


-- Busy for ms milliseconds: a stand-in for any call that holds its thread
-- (a blocking driver, os.execute, a long computation).
local function block_for(ms)
  local t0 = hrtime()
  while (hrtime() - t0) * 1000 < ms do end
end


-- A deterministic CPU job of about 200 ms: a 21x21 "QR-like" matrix drawn
-- from the text by many rounds of xorshift (a stand-in for a real QR
-- encoder, which is just as CPU-bound).
local QR_SIZE, QR_ROUNDS = 21, 270000
local function render_qr(text)
  local x = 2166136261
  for i = 1, #text do x = bxor(x * 33, text:byte(i)) end
  local rows = {}
  for r = 1, QR_SIZE do
    local row = {}
    for c = 1, QR_SIZE do
      for _ = 1, QR_ROUNDS do
        x = bxor(x, lshift(x, 13))
        x = bxor(x, rshift(x, 17))
        x = bxor(x, lshift(x, 5))
      end
      row[c] = band(x, 1) == 1 and "#" or " "
    end
    rows[r] = table.concat(row)
  end
  return { text = text, size = QR_SIZE, rows = rows }
end
local render_qr_on_pool = sync(render_qr)   -- marked at module level


-- A sync handler: the whole request runs on a pool thread.
app:get("/sync", { summary = "A sync handler: the request on a pool thread", tags = { "pool" } },
sync(function(req)
  return { style = "sync", pool_thread = is_pool_state() }
end))


-- CPU work on the pool: two of these run at once on two cores, and the
-- loop keeps answering everything else meanwhile.
app:get("/cpu", { summary = "fib(n) on the pool", tags = { "pool" },
  query = { n = schema.integer{ min = 0, max = 40, default = 25 } } },
sync(function(req)
  local n = req.valid.query.n
  return { n = n, fib = fib(n) }
end))


-- The seeds' exercise: a 200 ms CPU job, correctly marked sync.
app:get("/qr", { summary = "A 200 ms CPU job, marked sync", tags = { "pool" },
  query = { text = schema.string{ max_length = 200, default = "luaserve" } } },
sync(function(req)
  return render_qr(req.valid.query.text)
end))


-- DON'T: a blocking call in an async handler freezes the loop, so every
-- other request waits until it is over (try /async meanwhile).
app:get("/blocking-async", { summary = "DON'T: a blocking call on the loop", tags = { "pool" },
  query = { ms = Ms(500, 10000) } },
function(req)
  local ms = ms_param(req)
  block_for(ms)
  return { blocked_ms = ms, where = "the event loop: everyone waited" }
end)


-- DO: the same blocking call in a sync handler holds one pool thread; the
-- loop serves other requests meanwhile.
app:get("/blocking-sync", { summary = "DO: the same call on a pool thread", tags = { "pool" },
  query = { ms = Ms(500, 10000) } },
sync(function(req)
  local ms = ms_param(req)
  block_for(ms)
  return { blocked_ms = ms, where = "a pool thread: the loop stayed free" }
end))


-- An async handler that offloads one step: await a sync function's future.
app:get("/offload", { summary = "Await one step on the pool", tags = { "pool" },
  query = { text = schema.string{ max_length = 200, default = "luaserve" } } },
function(req)
  local t0 = hrtime()
  local qr, err = await(render_qr_on_pool(req.valid.query.text))
  if not qr then luaserve.raise(503, err) end
  return { text = qr.text, rows = qr.rows, elapsed_ms = ms_since(t0) }
end)


-- One counter for every state and thread: luaserve.shared.
app:get("/counter", { summary = "One counter for every state: luaserve.shared", tags = { "pool" },
  response = schema.object{ fields = { count = schema.integer() } } },
function(req)
  return { count = shared.incr("demo:counter", 1, 0) }
end)


-- ---- The lifecycle as routes ---------------------------------------------

-- A route deadline: above 1 s the client gets 504 and the handler's wait is
-- cancelled (its sleep stopped, as an upstream call would be).
app:get("/deadline", { summary = "A route deadline: 504 after 1 s", tags = { "lifecycle" },
  query = { ms = Ms(500, 60000) }, timeout = 1 },
function(req)
  local ms = ms_param(req)
  await(sleep(ms / 1000))
  return { slept_ms = ms, time_left_s = luaserve.time_left() }
end)

-- A background task: the answer goes out at once; the "welcome email" is
-- logged after the response was written.
app:post("/signup", { summary = "202 now, a background task after", tags = { "lifecycle" },
  body = schema.object{ fields = { name = schema.string{ min_length = 1, default = "friend" } },
    default = {} } },
function(req)
  local name = req.valid.body.name or "friend"
  req:after_response(function(who)
    await(sleep(0.2))   -- sending it takes a while
    log.info("demo: welcome email sent to " .. who)
  end, name)
  return 202, { accepted = true, name = name }
end)

-- The domain error above: /books/7 raises NotFound from a "data layer".
local function find_book(id)
  error(setmetatable({ what = "book " .. id }, NotFound))
end
app:get("/books/{id:int}", { summary = "A domain error mapped to 404", tags = { "errors" },
  response = { [404] = Detail } },
function(req)
  return find_book(req.params.id)
end)

-- Dependencies: resolved before the handler, cleaned up after the answer.
local function get_clock(req)
  local opened = hrtime()
  return { opened = opened }, function()
    log.debug(("demo: clock dependency held %.1f ms"):format((hrtime() - opened) * 1000))
  end
end
app:get("/state", { summary = "Startup state, request id, a dependency", tags = { "lifecycle" },
  deps = { clock = get_clock } },
function(req)
  return { started_at = req.app.state.started_at, request_id = req.request_id,
    clock_ms = math.floor((hrtime() - req.deps.clock.opened) * 1000) }
end)


-- ---- Long-lived connections: WebSockets, Server-Sent Events, streams -----

-- Echo: every message back as it came (text or binary).
app:websocket("/ws/echo", function(ws)
  for msg, kind in ws:messages() do
    await(ws:send(msg, kind))
  end
end)

-- A chat room: every message goes to everyone in the room, the sender
-- included; joins and leaves are announced. One Lua table per room: the
-- members are this process's connections.
local rooms = {}

local function broadcast(room, text)
  for member in pairs(room) do
    member:send(text)   -- not awaited: one slow member must not hold the rest
  end
end

app:websocket("/ws/chat/{room}", function(ws, req)
  local name = req.params.room
  local room = rooms[name] or {}
  rooms[name] = room
  local who = req.query.name or ("guest-" .. require("luaserve.core").random_hex(2))
  room[ws] = true
  broadcast(room, ("* %s joined #%s"):format(who, name))
  for msg in ws:messages() do
    broadcast(room, who .. ": " .. msg)
  end
  room[ws] = nil
  if next(room) == nil then rooms[name] = nil end
  broadcast(room, ("* %s left #%s"):format(who, name))
end)

-- Server-Sent Events: a counter every second, with ids; a client that
-- reconnects with Last-Event-ID goes on from there.
app:get("/events", { summary = "Server-Sent Events: a counter", tags = { "streams" },
  query = { count = schema.integer{ min = 0, optional = true },
    every = schema.number{ exclusive_min = 0, max = 60, default = 1 } },
  headers = { last_event_id = schema.integer{ min = 0, optional = true,
    description = "resume after this event" } } },
function(req)
  local last = req.valid.headers.last_event_id or 0
  local count = req.valid.query.count
  return luaserve.sse(function(send)
    local i = last
    while not count or i < last + count do
      i = i + 1
      if not send{ id = i, event = "tick", data = { n = i, at = os.time() } } then return end
      await(sleep(req.valid.query.every))
    end
  end)
end)

-- A proxy that streams: the upstream's body goes through piece by piece,
-- never whole in memory (http.get with stream = true, res:chunks()).
app:get("/proxy-stream", { summary = "Stream an upstream body through", tags = { "streams" },
  query = { url = schema.string{ format = "uri", optional = true } } },
function(req)
  local url = req.query.url or own_url(req, "/events?count=3&every=0.2")
  local res, err = await(http.get(url, { stream = true }))
  if not res then return 502, { detail = "upstream failed: " .. err } end
  return luaserve.Response{ status = res.status,
    content_type = res.headers["content-type"] or "application/octet-stream",
    stream = function(write)
      for chunk in res:chunks() do
        if not write(chunk) then res:close() return end
      end
    end }
end)

-- PostgreSQL and Redis: a notes API, a rate limit, /db/slow (notes.lua).
require("notes")(app)

-- Cookies, forms and uploads: /login, /me, /logout, /upload (forms.lua).
require("forms")(app)


-- ---- Declared inputs, /docs, static files (issue 12) ---------------------
-- POST /items and GET /users/{id} above declare their inputs; /docs is
-- Swagger UI on /openapi.json (luaserve.docs). Static files: the page in
-- public/ (it calls /concurrent and joins the chat), and a file a handler
-- picks with FileResponse.

app:static("/static", "public", { max_age = 60 })

app:get("/download/readme", { summary = "A file a handler picks: FileResponse",
  tags = { "static" }, description = "The demo's README, sent as an attachment." },
function(req)
  return luaserve.FileResponse(DEMO_DIR .. "/README.md", { filename = "demo-README.md",
    content_type = "text/markdown; charset=utf-8" })
end)

-- ---- end of issue 12's block ----------------------------------------------


app:get("/", { summary = "Every route of the demo", tags = { "demo" } }, function(req)
  local routes = {}
  for _, r in ipairs(app.routes) do routes[#routes + 1] = r.method .. " " .. r.path end
  return { app = "luaserve demo", routes = routes }
end)


-- ---- Workers and balancers (--workers, proxy headers) ---------------------
-- Which process answered, and who the client is: behind a trusted proxy
-- (--forwarded-allow-ips) the address and scheme come from its
-- X-Forwarded-For / X-Forwarded-Proto / Forwarded headers. /counter
-- (above) counts across every worker: luaserve.shared lives in memory the
-- master shares with all of them.
app:get("/whoami", { summary = "Which worker answered, and the client it saw",
  description = "Behind a trusted proxy the client address and scheme come " ..
    "from X-Forwarded-For / X-Forwarded-Proto / Forwarded.",
  tags = { "workers" },
  response = schema.object{ fields = { client = schema.string(), port = schema.integer(),
    scheme = schema.string{ enum = { "http", "https" } }, pid = schema.integer(),
    worker = schema.integer{ optional = true }, root_path = schema.string() } } },
function(req)
  local core = require "luaserve.core"
  return { client = req.client.host, port = req.client.port, scheme = req.scheme,
           pid = core.getpid(), worker = core.worker_slot(),
           root_path = req.root_path or "" }
end)

return app
