-- spec/response_spec.lua: luaserve.response, what a handler's return
-- values become: tables, strings, status + body + headers, nil, Response.

local luaserve = require "luaserve"
local testing = require "luaserve.testing"
local response = require "luaserve.response"
local tcp = require "luaserve.tcp"
local log = require "luaserve.log"

local await = luaserve.await


describe("luaserve.response", function()
  local app = luaserve.app()
  app:get("/table", function() return { hello = "world" } end)
  app:get("/string", function() return "plain text" end)
  app:get("/nil", function() end)
  app:get("/status", function() return 201 end)
  app:get("/status-table", function() return 201, { id = 1 } end)
  app:get("/status-string", function() return 404, "not here" end)
  app:get("/status-headers", function()
    return 202, { ok = true }, { ["X-One"] = "1", ["X-Num"] = 2 }
  end)
  app:get("/own-ctype", function()
    return 200, "<b>hi</b>", { ["content-type"] = "text/html" }
  end)
  app:get("/number-body", function() return 200, 42 end)
  app:get("/list-header", function()
    return 200, "ok", { ["Set-Cookie"] = { "a=1", "b=2" } }
  end)
  app:get("/response", function()
    return luaserve.Response { status = 418, body = { teapot = true },
      headers = { ["X-Tea"] = "earl grey" } }
  end)
  app:get("/response-default", function()
    return luaserve.Response { body = "just a body" }
  end)
  app:get("/response-ctype", function()
    return luaserve.Response { status = 200, body = "a,b\n1,2\n",
      content_type = "text/csv" }
  end)
  app:get("/response-header-ctype", function()
    return luaserve.Response { body = "x", content_type = "text/csv",
      headers = { ["Content-Type"] = "text/x-mine" } }
  end)
  app:get("/response-empty", function()
    return luaserve.Response { status = 202 }
  end)
  app:get("/content-length", function()
    return 200, "four", { ["Content-Length"] = "999" }
  end)
  app:get("/204-body", function() return 204, { ignored = true } end)
  app:get("/304-body", function() return 304, "ignored" end)
  app:get("/response-204-body", function()
    return luaserve.Response { status = 204, body = "ignored" }
  end)
  app:get("/after", function() return "after" end)
  -- what cannot be sent
  app:get("/bad-function", function() return function() end end)
  app:get("/bad-boolean", function() return true end)
  app:get("/bad-body", function() return 200, coroutine.create(print) end)
  app:get("/bad-header-value", function() return 200, "x", { ["X-B"] = true } end)
  app:get("/bad-header-crlf", function()
    return 200, "x", { ["X-Evil"] = "a\r\nSet-Cookie: pwned=1" }
  end)
  app:get("/bad-ctype-crlf", function()
    return luaserve.Response{ body = "x", content_type = "text/plain\r\nX-Evil: 1" }
  end)
  app:get("/bad-ctype-crlf-stream", function()
    return luaserve.Response{ content_type = "text/plain\r\nX-Evil: 1",
      stream = function(write) write("x") end }
  end)
  app:get("/bad-status", function() return 1000, "x" end)
  app:get("/nil-err", function()
    return await(luaserve.resolved(nil, "upstream refused"))
  end)

  local client
  setup(function() client = testing.client(app) end)
  teardown(function() client:close() end)

  local function ctype(res) return res.headers["content-type"] end

  describe("a table", function()
    it("is 200 JSON", function()
      local res = client:get("/table")
      assert.equal(200, res.status)
      assert.equal("application/json", ctype(res))
      assert.equal('{"hello":"world"}', res.body)
      assert.equal(tostring(#res.body), res.headers["content-length"])
    end)
  end)

  describe("a string", function()
    it("is 200 text/plain", function()
      local res = client:get("/string")
      assert.equal(200, res.status)
      assert.equal("text/plain; charset=utf-8", ctype(res))
      assert.equal("plain text", res.body)
    end)
  end)

  describe("nil", function()
    it("is 204 with no body", function()
      local res = client:get("/nil")
      assert.equal(204, res.status)
      assert.equal("", res.body)
      assert.is_nil(ctype(res))
      assert.is_nil(res.headers["content-length"])
    end)
  end)

  describe("status, body, headers", function()
    it("a status alone has no body", function()
      local res = client:get("/status")
      assert.equal(201, res.status)
      assert.equal("", res.body)
    end)

    it("a status with a table or a string", function()
      local t = client:get("/status-table")
      assert.equal(201, t.status)
      assert.same({ id = 1 }, t:json())
      assert.equal("application/json", ctype(t))
      local s = client:get("/status-string")
      assert.equal(404, s.status)
      assert.equal("not here", s.body)
      assert.equal("text/plain; charset=utf-8", ctype(s))
    end)

    it("adds the headers", function()
      local res = client:get("/status-headers")
      assert.equal(202, res.status)
      assert.equal("1", res.headers["x-one"])
      assert.equal("2", res.headers["x-num"])
      assert.same({ ok = true }, res:json())
    end)

    it("a Content-Type among the headers wins, once", function()
      local res = client:get("/own-ctype")
      assert.equal("text/html", ctype(res))
      assert.equal("<b>hi</b>", res.body)
    end)

    it("a list of values sends the header once per value", function()
      local res = client:get("/list-header")
      assert.equal("a=1, b=2", res.headers["set-cookie"])
    end)

    it("a number body is JSON", function()
      local res = client:get("/number-body")
      assert.equal("42", res.body)
      assert.equal("application/json", ctype(res))
    end)

    it("Content-Length is always computed from the body", function()
      local res = client:get("/content-length")
      assert.equal("4", res.headers["content-length"])
      assert.equal("four", res.body)
    end)
  end)

  describe("luaserve.Response", function()
    it("takes status, body and headers", function()
      local res = client:get("/response")
      assert.equal(418, res.status)
      assert.same({ teapot = true }, res:json())
      assert.equal("application/json", ctype(res))
      assert.equal("earl grey", res.headers["x-tea"])
    end)

    it("defaults to 200", function()
      local res = client:get("/response-default")
      assert.equal(200, res.status)
      assert.equal("just a body", res.body)
      assert.equal("text/plain; charset=utf-8", ctype(res))
    end)

    it("takes content_type; a Content-Type header wins over it", function()
      assert.equal("text/csv", ctype(client:get("/response-ctype")))
      assert.equal("text/x-mine", ctype(client:get("/response-header-ctype")))
    end)

    it("without a body sends none", function()
      local res = client:get("/response-empty")
      assert.equal(202, res.status)
      assert.equal("", res.body)
      assert.equal("0", res.headers["content-length"])
    end)

    it("raises when not given a table", function()
      assert.has_error(function() luaserve.Response("x") end,
        "Response: expected a table")
    end)
  end)

  describe("204 and 304", function()
    -- Over one keep-alive connection: a body after a 204 or 304 would be
    -- read as the start of the next response.
    it("never carry a body, so the next response on the connection is intact",
      testing.async(function()
        local sock = assert(await(tcp.connect(client.host, client.port)))
        local req = "GET %s HTTP/1.1\r\nHost: x\r\n%s\r\n"
        assert(await(sock:send(req:format("/204-body", "") ..
          req:format("/304-body", "") .. req:format("/response-204-body", "") ..
          req:format("/after", "Connection: close\r\n"))))
        local all = await(sock:receive("*a"))
        sock:close()
        local statuses = {}
        for line in all:gmatch("HTTP/1%.1 (%d+)") do statuses[#statuses + 1] = line end
        assert.same({ "204", "304", "204", "200" }, statuses)
        assert.not_matches("ignored", all)
        assert.matches("\r\n\r\nafter$", all)
      end))
  end)

  describe("what cannot be sent", function()
    it("answers 500, logged with the route, and the server keeps serving", function()
      local lines = {}
      local prev = log.set_output({ write = function(_, ...)
        lines[#lines + 1] = table.concat({ ... })
      end })
      finally(function() log.set_output(prev) end)
      for _, path in ipairs({ "/bad-function", "/bad-boolean", "/bad-body",
          "/bad-header-value", "/bad-header-crlf", "/bad-ctype-crlf",
          "/bad-ctype-crlf-stream", "/bad-status", "/nil-err" }) do
        local res = client:get(path)
        assert.equal(500, res.status, path)
        assert.same({ detail = "Internal Server Error" }, res:json())
        assert.is_nil(res.headers["x-evil"])
        assert.is_nil(res.headers["set-cookie"])
        assert.equal(200, client:get("/table").status)
        assert.matches("ERROR GET " .. path:gsub("%-", "%%-") .. " %(route ",
          table.concat(lines))
      end
      assert.matches("returned nil, upstream refused", table.concat(lines))
    end)
  end)

  describe("normalize", function()
    it("turns return values into status, body, content type, headers", function()
      assert.same({ 200, '{"a":1}', response.JSON }, { response.normalize({ a = 1 }) })
      assert.same({ 200, "x", response.TEXT }, { response.normalize("x") })
      assert.same({ 204, "" }, { response.normalize(nil) })
      local h = { ["X"] = "y" }
      local s, b, c, hh = response.normalize(400, "no", h)
      assert.same({ 400, "no", response.TEXT }, { s, b, c })
      assert.equal(h, hh)
    end)

    it("sends headers that are only the content type as the content type", function()
      local s, b, c, h = response.normalize(200, "<b>", { ["Content-Type"] = "text/html" })
      assert.same({ 200, "<b>", "text/html" }, { s, b, c })
      assert.is_nil(h)
      s, b, c, h = response.normalize(201, "x", { ["content-type"] = "text/csv" })
      assert.same({ 201, "x", "text/csv" }, { s, b, c })
      assert.is_nil(h)
      local two = { ["Content-Type"] = "text/html", ["X-A"] = "1" }
      s, b, c, h = response.normalize(200, "<b>", two)
      assert.is_nil(c)            -- the table carries it
      assert.equal(two, h)
      local list = { ["Content-Type"] = { "text/html" } }
      s, b, c, h = response.normalize(200, "<b>", list)
      assert.is_nil(c)            -- not a plain string: the table says it
      assert.equal(list, h)
    end)

    it("raises on a type it cannot send", function()
      assert.has_error(function() response.normalize(function() end) end)
      assert.has_error(function() response.normalize(true) end)
      assert.has_error(function() response.normalize(200, function() end) end)
      assert.has_error(function() response.normalize(nil, "failed") end,
        "a handler returned nil, failed (a failure?)")
    end)
  end)
end)
