-- spec/lifecycle_spec.lua: the app's lifecycle around its routes: startup
-- and shutdown hooks and lifespans, exception handlers, request deadlines,
-- background tasks after the response, and per-route dependencies.

local luaserve = require "luaserve"
local testing = require "luaserve.testing"
local http = require "luaserve.http"
local core = require "luaserve.core"

local await, sleep, spawn = luaserve.await, luaserve.sleep, luaserve.spawn
local hrtime = core.hrtime

local logged = testing.logged

-- Run the loop until fn() is true (5 s at most).
local function eventually(fn)
  local deadline = hrtime() + 5
  while not fn() and hrtime() < deadline do await(sleep(0.01)) end
  return fn()
end


describe("startup and shutdown", function()
  it("startup hooks run before the first request, may await, and set app.state", function()
    local events = {}
    local app = luaserve.app()
    app:on_startup(function(a)
      await(sleep(0.01))
      events[#events + 1] = "startup 1"
      a.state.db = "pool"
    end)
    app:on_startup(function() events[#events + 1] = "startup 2" end)
    app:on_shutdown(function(a)
      await(sleep(0.01))
      events[#events + 1] = "shutdown " .. a.state.db
    end)
    app:get("/", function(req)
      events[#events + 1] = "request"
      return { db = req.app.state.db }
    end)
    local c = testing.client(app)
    assert.same({ "startup 1", "startup 2" }, events)
    assert.same({ db = "pool" }, c:get("/"):json())
    c:close()
    assert.same({ "startup 1", "startup 2", "request", "shutdown pool" }, events)
  end)

  it("a lifespan runs to its yield at startup and on from there at shutdown", function()
    local events = {}
    local app = luaserve.app()
    app:lifespan(function(a)
      a.state.conn = "open"
      events[#events + 1] = "open"
      coroutine.yield()
      await(sleep(0.01))
      events[#events + 1] = "close"
    end)
    app:on_shutdown(function() events[#events + 1] = "on_shutdown" end)
    app:get("/", function(req) return req.app.state.conn end)
    local c = testing.client(app)
    assert.equal("open", c:get("/").body)
    c:close()
    assert.same({ "open", "on_shutdown", "close" }, events)
  end)

  it("a failing startup hook stops the start with its error", function()
    local app = luaserve.app()
    app:on_startup(function() error("database unreachable") end)
    local ok, err = pcall(testing.client, app)
    assert.is_false(ok)
    assert.matches("startup hook failed: .*database unreachable", err)
  end)

  it("a failing shutdown hook is logged; the others still run", function()
    local ran = false
    local app = luaserve.app()
    app:on_shutdown(function() error("cannot flush") end)
    app:on_shutdown(function() ran = true end)
    local c = testing.client(app)
    local out = logged(function() c:close() end)
    assert.is_true(ran)
    assert.matches("shutdown hook failed: .*cannot flush", out)
  end)
end)


describe("exception handlers", function()
  local NotFound = {}
  NotFound.__index = NotFound
  local app = luaserve.app()
  app:exception_handler(NotFound, function(req, err)
    return 404, { detail = err.what .. " not found", path = req.path }
  end)
  app:exception_handler(404, function(req, err)
    return 404, "<h1>nothing at " .. req.path .. "</h1>", { ["Content-Type"] = "text/html" }
  end)
  app:exception_handler(422, function(req, err)
    return 400, { problems = err.detail }
  end)
  app:exception_handler(500, function(req, err)
    return 500, { detail = "sorry", route = req.route }
  end)
  app:get("/notes/{id:int}", function(req)
    error(setmetatable({ what = "note " .. req.params.id }, NotFound))
  end)
  app:get("/raise", function() luaserve.raise(404, "no such thing") end)
  app:get("/bug", function() local t = nil return t.x end)
  app:get("/conflict", function() luaserve.raise(409, "taken") end)

  local client
  setup(function() client = testing.client(app) end)
  teardown(function() client:close() end)

  it("map a domain error class to an answer", function()
    local res = client:get("/notes/7")
    assert.equal(404, res.status)
    assert.same({ detail = "note 7 not found", path = "/notes/7" }, res:json())
  end)

  it("answer for a status: the router's 404, HTTPErrors, and the 422 of a parameter", function()
    local res = client:get("/nowhere")
    assert.equal(404, res.status)
    assert.equal("<h1>nothing at /nowhere</h1>", res.body)
    assert.equal("text/html", res.headers["content-type"])
    res = client:get("/raise")
    assert.equal("<h1>nothing at /raise</h1>", res.body)
    res = client:get("/notes/abc")
    assert.equal(400, res.status)
    assert.equal("int_parsing", res:json().problems[1].type)
  end)

  it("a bug goes to the 500 handler and is still logged with its route", function()
    local res
    local out = logged(function() res = client:get("/bug") end)
    assert.equal(500, res.status)
    assert.same({ detail = "sorry", route = "/bug" }, res:json())
    assert.matches("GET /bug %(route /bug%): .*attempt to index", out)
  end)

  it("an HTTPError without a handler for its status keeps the default", function()
    local res = client:get("/conflict")
    assert.equal(409, res.status)
    assert.same({ detail = "taken" }, res:json())
  end)

  it("luaserve.HTTPError catches every HTTPError; a handler that raises gives a logged 500", function()
    local a = luaserve.app()
    a:exception_handler(luaserve.HTTPError, function(req, err)
      return err.status, { error = err.detail }
    end)
    a:exception_handler(500, function() error("the handler itself fails") end)
    a:get("/x", function() luaserve.raise(403, "no") end)
    a:get("/bug", function() error("bug") end)
    local c = testing.client(a)
    local res = c:get("/x")
    assert.equal(403, res.status)
    assert.same({ error = "no" }, res:json())
    local out = logged(function() res = c:get("/bug") end)
    c:close()
    assert.equal(500, res.status)
    assert.same({ detail = "Internal Server Error" }, res:json())
    assert.matches("exception handler: .*the handler itself fails", out)
  end)
end)


describe("request deadlines", function()
  local state = {}
  local app = luaserve.app()
  app:get("/slow", function(req)
    luaserve.on_cancel(function() state.cancelled = true end)
    await(sleep(tonumber(req.query.s) or 0.6))
    state.finished = true
    return "done"
  end, { timeout = 0.2 })
  app:get("/fast", function() return "quick" end, { timeout = 0.2 })
  app:get("/global", function() await(sleep(2)) return "late" end)
  app:get("/left", function(req)
    await(sleep(0.1))
    return { left = luaserve.time_left() }
  end, { timeout = 2 })
  app:get("/none", function(req) return { left = luaserve.time_left() or "none" } end)

  local client
  setup(function() client = testing.client(app, { timeout_request = 0.3 }) end)
  teardown(function() client:close() end)

  it("answer 504 at the route's deadline and cancel what the handler awaits", function()
    state = {}
    local t0 = hrtime()
    local res
    local out = logged(function() res = client:get("/slow") end)
    local took = hrtime() - t0
    assert.equal(504, res.status)
    assert.same({ detail = "request timed out" }, res:json())
    assert.is_true(took >= 0.15 and took < 1.5, took)
    assert.is_true(state.cancelled)
    assert.matches("GET /slow %(route /slow%): the handler did not answer within 0.2 s", out)
    await(sleep(0.7))   -- past the handler's own sleep: it never went on
    assert.is_nil(state.finished)
  end)

  it("leave a handler that answers in time alone", function()
    assert.equal("quick", client:get("/fast").body)
    assert.equal("done", client:get("/slow?s=0.01").body)
  end)

  it("apply the server's --timeout-request to routes without their own", function()
    local t0 = hrtime()
    local res = client:get("/global")
    assert.equal(504, res.status)
    assert.is_true(hrtime() - t0 < 1.5)
  end)

  it("luaserve.time_left() gives what is left of the deadline (upstream calls use it)", function()
    local left = client:get("/left"):json().left
    assert.is_true(left > 1.5 and left < 1.95, left)
    local c = testing.client(app)   -- no server-wide timeout
    assert.same({ left = "none" }, c:get("/none"):json())
    c:close()
  end)
end)


describe("background tasks", function()
  local events = {}
  local app = luaserve.app()
  app:post("/signup", function(req)
    req:after_response(function(name)
      await(sleep(0.05))
      events[#events + 1] = "welcome " .. name
    end, "ann")
    events[#events + 1] = "answered"
    return 202, { ok = true }
  end)
  app:get("/response", function()
    return luaserve.Response{ status = 200, body = "ok",
      background = function() events[#events + 1] = "from Response" end }
  end)
  app:get("/fails", function(req)
    req:after_response(function() error("mail server down") end)
    return "ok"
  end)
  app:get("/big", function(req)
    req:after_response(function() events[#events + 1] = "after big" end)
    return string.rep("x", 4 * 1024 * 1024)
  end)

  local client
  setup(function() client = testing.client(app) end)
  teardown(function() client:close() end)
  before_each(function() events = {} end)

  it("run after the response, with their arguments", function()
    local res = client:post("/signup")
    assert.equal(202, res.status)
    assert.same({ "answered" }, events)   -- not yet: the answer came first
    assert.is_true(eventually(function() return #events == 2 end))
    assert.same({ "answered", "welcome ann" }, events)
  end)

  it("Response{background = fn} works too", function()
    assert.equal("ok", client:get("/response").body)
    assert.is_true(eventually(function() return events[1] == "from Response" end))
  end)

  it("a failing one is logged", function()
    local out = logged(function()
      client:get("/fails")
      await(sleep(0.1))
    end)
    assert.matches("background task failed: .*mail server down", out)
  end)

  it("waits for a big answer to be written, and is not cancelled when the client leaves", testing.async(function()
    local tcp = require "luaserve.tcp"
    local sock = assert(await(tcp.connect(client.host, client.port)))
    assert(await(sock:send("GET /big HTTP/1.1\r\nHost: x\r\n\r\n")))
    assert(await(sock:receive(1000)))   -- the head is out; most is queued
    await(sleep(0.05))
    assert.same({}, events)             -- the answer is not written yet
    sock:close()                        -- the client leaves
    assert.is_true(eventually(function() return events[1] == "after big" end))
  end))
end)


describe("dependencies", function()
  local log_ = {}
  local function get_db(req)
    await(sleep(0.001))
    log_[#log_ + 1] = "open"
    return { name = "db" }, function()
      await(sleep(0.001))
      log_[#log_ + 1] = "close"
    end
  end
  local function get_user(req)
    local token = req.headers.authorization
    if not token then luaserve.raise(401, "no token") end
    return token:match("Bearer (.*)")
  end
  local app = luaserve.app()
  app:get("/me", function(req)
    return { db = req.deps.db.name, user = req.deps.user }
  end, { deps = { db = get_db, user = get_user } })
  app:get("/fails", function(req) error("handler bug") end, { deps = { db = get_db } })
  app:get("/slow", function(req) await(sleep(5)) end, { deps = { db = get_db } })

  local client
  setup(function() client = testing.client(app) end)
  teardown(function() client:close() end)
  before_each(function() log_ = {} end)

  it("are resolved before the handler and cleaned up after the response", function()
    local res = client:get("/me", { headers = { Authorization = "Bearer ann" } })
    assert.same({ db = "db", user = "ann" }, res:json())
    assert.is_true(eventually(function() return #log_ == 2 end))
    assert.same({ "open", "close" }, log_)
  end)

  it("a dependency's HTTPError answers; what was opened is still cleaned up", function()
    local res = client:get("/me")
    assert.equal(401, res.status)
    assert.is_true(eventually(function() return #log_ == 2 end))
    assert.same({ "open", "close" }, log_)
  end)

  it("are cleaned up when the handler raises", function()
    logged(function() assert.equal(500, client:get("/fails").status) end)
    assert.is_true(eventually(function() return #log_ == 2 end))
  end)

  it("are cleaned up when the client leaves", testing.async(function()
    local tcp = require "luaserve.tcp"
    local sock = assert(await(tcp.connect(client.host, client.port)))
    assert(await(sock:send("GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")))
    assert.is_true(eventually(function() return log_[1] == "open" end))
    sock:close()
    assert.is_true(eventually(function() return log_[2] == "close" end))
  end))
end)
