-- spec/middleware_spec.lua: app:use and the request pipeline around every
-- answer (routes, sync routes, 404/405/422/500), and the middleware that
-- ships: CORS, GZip, request id, trusted hosts.

local luaserve = require "luaserve"
local testing = require "luaserve.testing"
local mw = require "luaserve.middleware"
local core = require "luaserve.core"

local await, sleep = luaserve.await, luaserve.sleep

local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "spec"

local logged = testing.logged


describe("middleware", function()
  local trace = {}
  local app = luaserve.app()
  app:use(function(req, call_next)
    trace[#trace + 1] = "outer in " .. tostring(req.route)
    local res = call_next(req)
    trace[#trace + 1] = "outer out " .. res.status
    res:set_header("X-Outer", "1")
    return res
  end)
  app:use(function(req, call_next)
    trace[#trace + 1] = "inner in"
    if req.headers["x-short"] then return 418, { short = true } end
    if req.headers["x-fail"] then error("middleware bug") end
    if req.headers["x-forget"] then call_next(req) return end
    await(sleep(0.001))   -- middleware may await
    local res = call_next(req)
    trace[#trace + 1] = "inner out"
    if req.headers["x-replace"] then return "replaced" end
    if res.status == 200 and req.path == "/text" then
      res.body = res.body .. "!"
      res.status = 201
    end
    return res
  end)
  app:get("/text", function() return "hello" end)
  app:get("/users/{id:int}", function(req) return { id = req.params.id } end)
  app:get("/boom", function() error("handler bug") end)
  app:get("/teapot", function() luaserve.raise(409, "conflict") end)

  local client
  setup(function() client = testing.client(app) end)
  teardown(function() client:close() end)
  before_each(function() trace = {} end)

  it("run in the order added around the handler, and may change the answer", function()
    local res = client:get("/text")
    assert.equal(201, res.status)
    assert.equal("hello!", res.body)
    assert.equal("1", res.headers["x-outer"])
    assert.same({ "outer in /text", "inner in", "inner out", "outer out 201" }, trace)
  end)

  it("see 404, 405 and 422 answers, with req.route nil when nothing matched", function()
    local res = client:get("/nowhere")
    assert.equal(404, res.status)
    assert.equal("1", res.headers["x-outer"])
    assert.equal("outer in false", trace[1])
    res = client:post("/text")
    assert.equal(405, res.status)
    assert.equal("GET, HEAD", res.headers.allow)
    assert.equal("1", res.headers["x-outer"])
    res = client:get("/users/abc")
    assert.equal(422, res.status)
    assert.equal("1", res.headers["x-outer"])
    assert.equal("outer in /users/{id:int}", trace[#trace - 3])
  end)

  it("see a handler's error as its answer: 500, or the HTTPError's status", function()
    local out = logged(function()
      local res = client:get("/boom")
      assert.equal(500, res.status)
      assert.equal("1", res.headers["x-outer"])
      assert.equal("outer out 500", trace[#trace])
      res = client:get("/teapot")
      assert.equal(409, res.status)
      assert.same({ detail = "conflict" }, res:json())
    end)
    assert.matches("GET /boom %(route /boom%).*handler bug", out)
  end)

  it("may answer without calling the handler, or replace the answer", function()
    local res = client:get("/text", { headers = { ["X-Short"] = "1" } })
    assert.equal(418, res.status)
    assert.same({ short = true }, res:json())
    assert.equal("1", res.headers["x-outer"])
    res = client:get("/text", { headers = { ["X-Replace"] = "1" } })
    assert.equal(200, res.status)
    assert.equal("replaced", res.body)
  end)

  it("an error in a middleware is a logged 500; one that returns nothing says so", function()
    local out = logged(function()
      local res = client:get("/text", { headers = { ["X-Fail"] = "1" } })
      assert.equal(500, res.status)
      res = client:get("/text", { headers = { ["X-Forget"] = "1" } })
      assert.equal(500, res.status)
    end)
    assert.matches("middleware bug", out)
    assert.matches("middleware 2 returned nothing", out)
  end)

  it("wrap sync routes: the pool hand-off runs inside them", function()
    local c = testing.client(here .. "/fixtures/mw_sync_app.lua")
    local res = c:get("/sync")
    c:close()
    assert.equal(200, res.status)
    assert.equal("yes", res.headers["x-wrapped"])
    assert.same({ pool = true, route_seen = "/sync" }, res:json())
  end)
end)


describe("middleware.cors", function()
  local app = luaserve.app()
  app:use(mw.cors{ origins = { "https://app.test" }, headers = { "Authorization" },
    expose_headers = { "X-Total" }, credentials = true, max_age = 60 })
  app:get("/data", function() return { ok = true } end)
  app:post("/data", function() return 201, { created = true } end)
  local open = luaserve.app()
  open:use(mw.cors{ origins = "*" })
  open:get("/data", function() return { ok = true } end)

  local client, oclient
  setup(function() client = testing.client(app) oclient = testing.client(open) end)
  teardown(function() client:close() oclient:close() end)

  it("answers an allowed preflight itself", function()
    local res = client:options("/data", { headers = { Origin = "https://app.test",
      ["Access-Control-Request-Method"] = "POST",
      ["Access-Control-Request-Headers"] = "Content-Type, Authorization" } })
    assert.equal(200, res.status)
    assert.equal("https://app.test", res.headers["access-control-allow-origin"])
    assert.matches("POST", res.headers["access-control-allow-methods"])
    assert.equal("Content-Type, Authorization", res.headers["access-control-allow-headers"])
    assert.equal("true", res.headers["access-control-allow-credentials"])
    assert.equal("60", res.headers["access-control-max-age"])
  end)

  it("refuses a preflight from another origin or with other headers", function()
    local res = client:options("/data", { headers = { Origin = "https://evil.test",
      ["Access-Control-Request-Method"] = "GET" } })
    assert.equal(400, res.status)
    assert.matches("origin", res.body)
    assert.is_nil(res.headers["access-control-allow-origin"])
    res = client:options("/data", { headers = { Origin = "https://app.test",
      ["Access-Control-Request-Method"] = "GET", ["Access-Control-Request-Headers"] = "X-Secret" } })
    assert.equal(400, res.status)
    assert.matches("headers", res.body)
  end)

  it("puts the headers on answers to allowed origins only", function()
    local res = client:post("/data", { headers = { Origin = "https://app.test" } })
    assert.equal(201, res.status)
    assert.equal("https://app.test", res.headers["access-control-allow-origin"])
    assert.equal("X-Total", res.headers["access-control-expose-headers"])
    assert.equal("Origin", res.headers.vary)
    res = client:get("/data", { headers = { Origin = "https://evil.test" } })
    assert.equal(200, res.status)
    assert.is_nil(res.headers["access-control-allow-origin"])
    assert.equal("Origin", res.headers.vary)   -- a cache must not give it to app.test
    res = client:get("/data")   -- no Origin: not a CORS request
    assert.is_nil(res.headers["access-control-allow-origin"])
    assert.equal("Origin", res.headers.vary)
  end)

  it("answers '*' for any origin without credentials", function()
    local res = oclient:get("/data", { headers = { Origin = "https://anyone.test" } })
    assert.equal("*", res.headers["access-control-allow-origin"])
    assert.is_nil(res.headers.vary)
  end)
end)


describe("middleware.gzip", function()
  local big = string.rep("luaserve compresses this line well. ", 100)
  local app = luaserve.app()
  app:use(mw.gzip{ minimum_size = 500 })
  app:get("/big", function() return big end)
  app:get("/small", function() return "tiny" end)
  app:get("/png", function() return 200, big, { ["Content-Type"] = "image/png" } end)
  app:get("/encoded", function() return 200, big, { ["Content-Encoding"] = "br" } end)
  app:get("/stream", function()
    return luaserve.Response{ stream = function(write) write(big) write(big) end }
  end)
  local sapp = luaserve.app()
  sapp:use(mw.gzip{ minimum_size = 10, streams = true })
  sapp:get("/stream", function()
    return luaserve.Response{ content_type = "text/event-stream", stream = function(write)
      write("data: one\n\n") await(sleep(0.01)) write("data: two\n\n")
    end }
  end)

  local client, sclient
  setup(function() client = testing.client(app) sclient = testing.client(sapp) end)
  teardown(function() client:close() sclient:close() end)
  local GZ = { ["Accept-Encoding"] = "gzip, deflate" }

  it("compresses a big compressible answer for a client that accepts gzip", function()
    local res = client:get("/big", { headers = GZ })
    assert.equal("gzip", res.headers["content-encoding"])
    assert.equal("Accept-Encoding", res.headers.vary)
    assert.is_true(#res.body < #big / 10)
    assert.equal(big, core.gunzip(res.body))
    assert.equal(tostring(#res.body), res.headers["content-length"])
  end)

  it("leaves alone clients without gzip, small answers, other types, encoded ones", function()
    local res = client:get("/big")
    assert.is_nil(res.headers["content-encoding"])
    assert.equal("Accept-Encoding", res.headers.vary)
    assert.equal(big, res.body)
    res = client:get("/big", { headers = { ["Accept-Encoding"] = "gzip;q=0, identity" } })
    assert.is_nil(res.headers["content-encoding"])
    res = client:get("/small", { headers = GZ })
    assert.is_nil(res.headers["content-encoding"])
    assert.equal("tiny", res.body)
    res = client:get("/png", { headers = GZ })
    assert.is_nil(res.headers["content-encoding"])
    res = client:get("/encoded", { headers = GZ })
    assert.equal("br", res.headers["content-encoding"])
    assert.equal(big, res.body)
  end)

  it("never compresses a stream unless asked, then chunk by chunk", function()
    local res = client:get("/stream", { headers = GZ })
    assert.is_nil(res.headers["content-encoding"])
    assert.equal(big .. big, res.body)
    res = sclient:get("/stream", { headers = GZ })
    assert.equal("gzip", res.headers["content-encoding"])
    assert.equal("chunked", res.headers["transfer-encoding"])
    assert.equal("data: one\n\ndata: two\n\n", core.gunzip(res.body))
  end)
end)


describe("middleware.request_id", function()
  local app = luaserve.app()
  app:use(mw.request_id())
  app:get("/id", function(req) return { id = req.request_id } end)
  local client
  setup(function() client = testing.client(app, { access_log = true }) end)
  teardown(function() client:close() end)

  it("keeps the client's id, on the request, the answer and the access line", function()
    local res
    local out = logged(function()
      res = client:get("/id", { headers = { ["X-Request-ID"] = "abc-123" } })
    end)
    assert.equal("abc-123", res.headers["x-request-id"])
    assert.same({ id = "abc-123" }, res:json())
    assert.matches('127%.0%.0%.1 %- "GET /id" 200 %d+ [%d.]+ms id=abc%-123', out)
  end)

  it("makes one when there is none, or when the client's is not sane", function()
    local a = client:get("/id").headers["x-request-id"]
    local b = client:get("/id").headers["x-request-id"]
    assert.matches("^%x+$", a)
    assert.equal(32, #a)
    assert.not_equal(a, b)
    local res = client:get("/id", { headers = { ["X-Request-ID"] = string.rep("x", 300) } })
    assert.equal(32, #res.headers["x-request-id"])
  end)
end)


describe("middleware.trusted_hosts", function()
  local app = luaserve.app()
  app:use(mw.trusted_hosts{ "example.com", "*.example.org" })
  app:get("/", function() return "ok" end)
  local client
  setup(function() client = testing.client(app) end)
  teardown(function() client:close() end)

  local function host(h) return client:get("/", { headers = { Host = h } }) end

  it("lets the app's hosts in, port or not, any case", function()
    assert.equal(200, host("example.com").status)
    assert.equal(200, host("EXAMPLE.com:8080").status)
    assert.equal(200, host("api.example.org").status)
  end)

  it("answers 400 to any other host", function()
    local res = host("evil.test")
    assert.equal(400, res.status)
    assert.same({ detail = "Invalid host header" }, res:json())
    assert.equal(400, host("example.org").status)        -- the wildcard is for subdomains
    assert.equal(400, host("notexample.com").status)
  end)
end)


describe("middleware.hooks", function()
  local trace = {}
  local app = luaserve.app()
  local function note(s) trace[#trace + 1] = s end
  app:use(mw.hooks{
    before = function(req) note("a before") end,
    after = function(req, res) note("a after " .. res.status) res:set_header("X-A", "1") end,
  })
  app:use{   -- a plain table is taken as hooks
    before = function(req)
      note("b before")
      if req.headers["x-stop"] then return 403, { stopped = true } end
    end,
    after = function(req, res)
      note("b after")
      if req.headers["x-swap"] then return "swapped" end
    end,
  }
  app:use(function(req, call_next)   -- a nesting one between runs of hooks
    note("n in")
    local res = call_next(req)
    note("n out")
    return res
  end)
  app:use(mw.hooks{ after = function(req, res) note("c after") end })
  app:get("/", function() note("handler") return "ok" end)
  app:get("/wait", function() await(sleep(0.001)) note("handler") return "ok" end)
  app:get("/boom", function() error("handler bug") end)
  local client
  setup(function() client = testing.client(app) end)
  teardown(function() client:close() end)
  before_each(function() trace = {} end)

  it("run befores in order and afters back, around nesting middleware", function()
    local res = client:get("/wait")
    assert.equal(200, res.status)
    assert.equal("ok", res.body)
    assert.equal("1", res.headers["x-a"])
    assert.same({ "a before", "b before", "n in", "handler", "c after", "n out", "b after",
      "a after 200" }, trace)
  end)

  it("an answer from before skips the rest and its own after; the outer afters see it", function()
    local res = client:get("/", { headers = { ["X-Stop"] = "1" } })
    assert.equal(403, res.status)
    assert.same({ stopped = true }, res:json())
    assert.equal("1", res.headers["x-a"])
    assert.same({ "a before", "b before", "a after 403" }, trace)
  end)

  it("after may return another answer, or nothing to keep the one it got", function()
    local res = client:get("/", { headers = { ["X-Swap"] = "1" } })
    assert.equal(200, res.status)
    assert.equal("swapped", res.body)
    assert.equal("1", res.headers["x-a"])   -- set by the outer after on the new answer
  end)

  it("see a handler's error as its answer", function()
    local res
    logged(function() res = client:get("/boom") end)
    assert.equal(500, res.status)
    assert.equal("1", res.headers["x-a"])
    assert.same({ "a before", "b before", "n in", "c after", "n out", "b after",
      "a after 500" }, trace)
  end)

  it("can be called as a middleware, hooks(req, call_next)", function()
    local app2 = luaserve.app()
    local id = mw.request_id()
    app2:use(function(req, call_next)
      if req.path == "/plain" then return call_next(req) end
      return id(req, call_next)
    end)
    app2:get("/plain", function() return "p" end)
    app2:get("/tagged", function(req) return req.request_id end)
    local c = testing.client(app2)
    local tagged = c:get("/tagged")
    assert.equal(32, #tagged.headers["x-request-id"])
    assert.equal(tagged.headers["x-request-id"], tagged.body)
    assert.is_nil(c:get("/plain").headers["x-request-id"])
    c:close()
  end)

  it("are checked when made", function()
    assert.has_error(function() mw.hooks{} end, "hooks: give before, after or both")
    assert.has_error(function() mw.hooks{ before = 1 } end, "hooks: before must be a function")
    assert.has_error(function() luaserve.app():use{ after = "x" } end,
      "hooks: after must be a function")
    assert.has_error(function() luaserve.app():use(42) end,
      "app:use: expected a function, got number")
  end)
end)
