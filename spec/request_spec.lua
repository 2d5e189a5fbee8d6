-- spec/request_spec.lua: luaserve.request, the request a handler gets:
-- method, path, query, params, headers, body, json(), client.

local luaserve = require "luaserve"
local testing = require "luaserve.testing"
local request = require "luaserve.request"
local json = require "luaserve.json"


describe("luaserve.request", function()
  local seen   -- the last request a handler saw, copied to plain values
  local app = luaserve.app()

  app:route({ "GET", "POST", "PUT", "DELETE" }, "/echo", function(req)
    seen = {
      method = req.method,
      path = req.path,
      target = req.target,
      query = req.query,
      body = req.body,
    }
    return { method = req.method, path = req.path, query = req.query }
  end)
  app:get("/all", function(req)
    return { a = req:query_all("a"), none = req:query_all("none") }
  end)
  app:get("/headers", function(req)
    return {
      mixed = req.headers["X-Custom-Thing"],
      lower = req.headers["x-custom-thing"],
      upper = req.headers["X-CUSTOM-THING"],
      host = req.headers.host,
      missing = req.headers["X-Missing"] or json.null,
      repeated = req.headers["x-repeated"],
    }
  end)
  app:post("/body", function(req)
    return { len = #req.body, body = req.body }
  end)
  app:post("/json", function(req)
    local v = req:json()
    local again = req:json()
    return { got = v, same = v == again, kind = type(v) }
  end)
  app:get("/client", function(req)
    return { host = req.client.host, port = req.client.port }
  end)
  app:get("/users/{id:int}/{name}", function(req)
    return { id = req.params.id, name = req.params.name }
  end)
  app:get("/static", function(req)
    local ok = pcall(function() req.params.x = 1 end)
    local n = 0
    for _ in pairs(req.params) do n = n + 1 end
    return { writable = ok, count = n }
  end)

  local client
  setup(function() client = testing.client(app) end)
  teardown(function() client:close() end)

  describe("method, path and target", function()
    it("are the request's", function()
      local res = client:put("/echo?x=1")
      assert.equal(200, res.status)
      assert.equal("PUT", seen.method)
      assert.equal("/echo", seen.path)
      assert.equal("/echo?x=1", seen.target)
    end)

    it("an absolute-form target gives the path after the authority", function()
      local res = client:get("http://example.test:8080/echo?x=2")
      assert.equal(200, res.status)
      assert.equal("/echo", seen.path)
      assert.equal("2", seen.query.x)
      assert.equal("http://example.test:8080/echo?x=2", seen.target)
    end)

    it("the path is percent-decoded, the query is not part of it", function()
      client:get("/ech%6F?q=%2F")
      assert.equal("/echo", seen.path)
      assert.equal("/", seen.query.q)
    end)
  end)

  describe("query", function()
    it("is empty without a query string", function()
      client:get("/echo")
      assert.same({}, seen.query)
      client:get("/echo?")
      assert.same({}, seen.query)
    end)

    it("is percent-decoded, with + as a space, keys too", function()
      client:get("/echo?name=J%C3%B6rg+B%C3%A4r&a%20b=c%26d&plus=%2B&eq=a%3Db")
      assert.same({ name = "Jörg Bär", ["a b"] = "c&d", plus = "+", eq = "a=b" },
        seen.query)
    end)

    it("gives a key without a value as an empty string", function()
      client:get("/echo?flag&empty=&x=1")
      assert.same({ flag = "", empty = "", x = "1" }, seen.query)
    end)

    it("keeps the first value of a repeated key; query_all has them all", function()
      client:get("/echo?a=1&a=2&b=x&a=3")
      assert.equal("1", seen.query.a)
      assert.equal("x", seen.query.b)
      local res = client:get("/all?a=1&a=two+words&b=x&a=%33")
      assert.same({ a = { "1", "two words", "3" }, none = {} }, res:json())
    end)

    it("query_all of an absent key is an empty list", function()
      local res = client:get("/all")
      assert.same({ a = {}, none = {} }, res:json())
    end)

    it("leaves a malformed escape as it is", function()
      client:get("/echo?a=100%&b=%zz")
      assert.same({ a = "100%", b = "%zz" }, seen.query)
    end)
  end)

  describe("params", function()
    it("holds the typed path parameters", function()
      local res = client:get("/users/7/ann")
      assert.same({ id = 7, name = "ann" }, res:json())
    end)

    it("is an empty, read-only table on a static route", function()
      assert.same({ writable = false, count = 0 }, client:get("/static"):json())
    end)
  end)

  describe("headers", function()
    it("are case-insensitive", function()
      local res = client:get("/headers", { headers = { ["X-Custom-Thing"] = "v1" } })
      local h = res:json()
      assert.equal("v1", h.mixed)
      assert.equal("v1", h.lower)
      assert.equal("v1", h.upper)
      assert.equal(json.null, h.missing)
      assert.matches("^127%.0%.0%.1:%d+$", h.host)
    end)

    it("joins a repeated header with ', '", function()
      local res = client:get("/headers", { headers = {
        ["X-Repeated"] = "one", ["x-repeated"] = "two" } })
      local r = res:json().repeated
      assert.is_true(r == "one, two" or r == "two, one", r)
    end)
  end)

  describe("body", function()
    it("is the request body as a string", function()
      local res = client:post("/body", { body = "hello\0world" })
      assert.same({ len = 11, body = "hello\0world" }, res:json())
    end)

    it("is an empty string without one", function()
      assert.same({ len = 0, body = "" }, client:post("/body"):json())
    end)

    it("may be large", function()
      local big = ("0123456789"):rep(50000)
      local res = client:post("/body", { body = big })
      assert.equal(200, res.status)
      assert.equal(#big, res:json().len)
    end)
  end)

  describe("json()", function()
    it("decodes the body (and caches it)", function()
      local res = client:post("/json", { json = { a = 1, b = { "x" } } })
      assert.equal(200, res.status)
      assert.same({ got = { a = 1, b = { "x" } }, same = true, kind = "table" },
        res:json())
    end)

    it("decodes scalars, false and null", function()
      assert.same({ got = 5, same = true, kind = "number" },
        client:post("/json", { body = "5" }):json())
      assert.same({ got = false, same = true, kind = "boolean" },
        client:post("/json", { body = "false" }):json())
      local n = client:post("/json", { body = "null" }):json()
      assert.equal(json.null, n.got)
    end)

    it("answers 400 naming the problem for invalid JSON", function()
      local res = client:post("/json", { body = '{"a":' })
      assert.equal(400, res.status)
      local detail = res:json().detail
      assert.matches("^invalid JSON body: ", detail)
      assert.not_matches("%.lua:%d+", detail)
      assert.matches("^invalid JSON body", client:post("/json", { body = "nope" }):json().detail)
    end)

    it("answers 400 for an empty body", function()
      local res = client:post("/json")
      assert.equal(400, res.status)
      assert.matches("empty", res:json().detail)
    end)
  end)

  describe("headers from the core", function()
    -- The core hands them packed ("name\0value\0...", names lower-cased):
    -- the table is made when the request first reads req.headers.
    local packed = "host\0b\0x-empty\0\0x-r\0one\0content-type\0text/plain\0x-r\0two\0"

    it("are made on first read, every field in pairs()", function()
      local req = request.new(nil, "GET", "/a?x=1", packed, "")
      assert.is_nil(rawget(req, "headers"))
      local h = req.headers
      assert.equal(h, rawget(req, "headers"))
      assert.equal(h, req.headers)
      local seen = {}
      for k, v in pairs(h) do seen[k] = v end
      assert.same({ host = "b", ["x-empty"] = "", ["x-r"] = "one, two",
        ["content-type"] = "text/plain" }, seen)
      assert.equal("text/plain", h["Content-Type"])
    end)

    it("may be none", function()
      local req = request.new(nil, "GET", "/a", "", "")
      assert.same({}, req.headers)
      assert.is_nil(req.headers.host)
    end)

    it("may still come as a table (a pool state's request)", function()
      local req = request.new(nil, "GET", "/a", { ["x-a"] = "1" }, "")
      assert.equal("1", req.headers["X-A"])
    end)

    it("unpack_headers makes the same table", function()
      local core = require "luaserve.core"
      assert.same({ host = "b", ["x-empty"] = "", ["x-r"] = "one, two",
        ["content-type"] = "text/plain" }, core.unpack_headers(packed))
      assert.same({}, core.unpack_headers(""))
    end)
  end)

  describe("query_string", function()
    it("is what follows ? in the target, or nil", function()
      assert.equal("x=1&y", request.new(nil, "GET", "/a?x=1&y", "", "").query_string)
      assert.equal("", request.new(nil, "GET", "/a?", "", "").query_string)
      assert.is_nil(request.new(nil, "GET", "/a", "", "").query_string)
      local req = request.new(nil, "GET", "/a?k=v&k=w", "", "")
      assert.same({ k = "v" }, req.query)
      assert.same({ "v", "w" }, req:query_all("k"))
    end)
  end)

  describe("client", function()
    it("gives the client's address and port", function()
      local c = client:get("/client"):json()
      assert.equal("127.0.0.1", c.host)
      assert.is_number(c.port)
      assert.is_true(c.port > 0)
    end)
  end)

  describe("parse_query", function()
    it("splits on & and ;", function()
      assert.same({ a = "1", b = "2" }, request.parse_query("a=1;b=2&a=3"))
      assert.same({ a = { "1", "3" }, b = { "2" } },
        request.parse_query("a=1;b=2&a=3", true))
    end)

    it("skips empty pairs", function()
      local first = request.parse_query("&&a=1&&")
      assert.same({ a = "1" }, first)
    end)

    it("decodes keys and values, keeps what has no = and the first =", function()
      assert.same({ ["a b"] = "x/y", c = "", d = "1=2", [""] = "e" },
        request.parse_query("a+b=x%2Fy&c&d=1=2&=e"))
      assert.same({ a = "100%" }, request.parse_query("a=100%"))   -- a stray % stays
      assert.same({ k = "v" }, request.parse_query("k=v"))
      assert.same({}, request.parse_query(""))
      assert.same({}, request.parse_query(nil))
    end)
  end)
end)
