-- spec/testing_spec.lua: luaserve.testing, the test client (real sockets,
-- the real core, the one loop) and async test bodies.

local luaserve = require "luaserve"
local testing = require "luaserve.testing"

local await, sleep, spawn, gather = luaserve.await, luaserve.sleep,
  luaserve.spawn, luaserve.gather
local hrtime = require("luaserve.core").hrtime


describe("luaserve.testing", function()
  local app = luaserve.app()
  app:route({ "GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS" }, "/echo", function(req)
    return {
      method = req.method,
      body = req.body,
      ctype = req.headers["content-type"] or luaserve.null,
      token = req.headers["x-token"] or luaserve.null,
    }
  end)
  app:get("/sleep", function(req)
    await(sleep(tonumber(req.query.ms) / 1000))
    return { slept = tonumber(req.query.ms) }
  end)
  app:get("/text", function() return "not json {" end)
  app:get("/headers", function() return 200, "h", { ["X-Mixed-Case"] = "yes" } end)

  local client
  setup(function() client = testing.client(app) end)
  teardown(function() client:close() end)

  describe("client(app)", function()
    it("serves the app on a free loopback port", function()
      assert.equal("127.0.0.1", client.host)
      assert.is_number(client.port)
      assert.is_true(client.port > 0)
    end)

    it("has a method for each HTTP method", function()
      for _, m in ipairs({ "get", "post", "put", "patch", "delete", "options" }) do
        local res = client[m](client, "/echo")
        assert.equal(200, res.status, m)
        assert.equal(m:upper(), res:json().method)
      end
      local head = client:head("/echo")
      assert.equal(200, head.status)
      assert.equal("", head.body)
      assert.equal("DELETE", client:request("DELETE", "/echo"):json().method)
    end)

    it("sends a body, headers, and JSON", function()
      local res = client:post("/echo", { body = "raw", headers = { ["X-Token"] = "t1" } })
      assert.same({ method = "POST", body = "raw", ctype = luaserve.null, token = "t1" },
        res:json())
      local j = client:put("/echo", { json = { a = { 1, 2 } } })
      local v = j:json()
      assert.equal("application/json", v.ctype)
      assert.same({ a = { 1, 2 } }, require("luaserve.json").decode(v.body))
    end)

    it("gives the response headers case-insensitively", function()
      local res = client:get("/headers")
      assert.equal("yes", res.headers["x-mixed-case"])
      assert.equal("yes", res.headers["X-Mixed-Case"])
      assert.equal("1", res.headers["Content-Length"])
    end)

    it("res:json() raises on a body that is not JSON", function()
      local res = client:get("/text")
      assert.has_error(function() res:json() end)
      local ok, err = pcall(res.json, res)
      assert.is_false(ok)
      assert.matches("response body is not JSON", err)
    end)

    it("gives nil, 'timeout' when the answer is too slow", function()
      local t0 = hrtime()
      local res, err = client:get("/sleep?ms=2000", { timeout = 0.1 })
      assert.is_nil(res)
      assert.equal("timeout", err)
      assert.is_true(hrtime() - t0 < 1.5)
    end)

    it("serves several apps side by side", function()
      local other = luaserve.app()
      other:get("/echo", function() return "other" end)
      local c2 = testing.client(other)
      assert.are_not.equal(client.port, c2.port)
      assert.equal("other", c2:get("/echo").body)
      assert.equal("GET", client:get("/echo"):json().method)
      c2:close()
    end)

    it("close() stops the server", function()
      local a2 = luaserve.app()
      a2:get("/", function() return "up" end)
      local c2 = testing.client(a2)
      assert.equal("up", c2:get("/").body)
      c2:close()
      local res, err = c2:get("/", { timeout = 2 })
      assert.is_nil(res)
      assert.is_string(err)
    end)

    it("passes server options on (max_body)", function()
      local a2 = luaserve.app()
      a2:post("/", function(req) return { n = #req.body } end)
      local c2 = testing.client(a2, { max_body = 10 })
      assert.same({ n = 10 }, c2:post("/", { body = ("x"):rep(10) }):json())
      assert.equal(413, c2:post("/", { body = ("x"):rep(11) }).status)
      c2:close()
    end)
  end)

  describe("async test bodies", function()
    it("can await", testing.async(function()
      await(sleep(0.01))
      local res = client:get("/sleep?ms=10")
      assert.same({ slept = 10 }, res:json())
    end))

    it("overlap concurrent requests: ten 200 ms requests take well under 2 s",
      testing.async(function()
        local t0 = hrtime()
        local tasks = {}
        for i = 1, 10 do tasks[i] = spawn(client.get, client, "/sleep?ms=200") end
        local results = { await(gather(unpack(tasks))) }
        local elapsed = hrtime() - t0
        assert.equal(10, #results)
        for i = 1, 10 do
          assert.equal(200, results[i].status)
          assert.same({ slept = 200 }, results[i]:json())
        end
        assert.is_true(elapsed >= 0.18, elapsed)
        assert.is_true(elapsed < 1.2, elapsed)   -- one after another: 2 s
      end))

    it("get their arguments", function()
      local f = testing.async(function(a, b) return a + b end)
      assert.equal(5, f(2, 3))
    end)
  end)

  describe("run", function()
    it("runs fn as a task and returns its values", function()
      assert.same({ 1, nil, 3 }, { testing.run(function()
        await(sleep(0.001))
        return 1, nil, 3
      end) })
    end)

    it("raises fn's error, also after an await", function()
      assert.has_error(function()
        testing.run(function() error("plain", 0) end)
      end, "plain")
      assert.has_error(function()
        testing.run(function() await(sleep(0.001)) error("late", 0) end)
      end, "late")
    end)

    it("raises a failed assertion, so the test fails", function()
      local ok, err = pcall(testing.run, function()
        await(sleep(0.001))
        assert.equal(1, 2)
      end)
      assert.is_false(ok)
      assert.matches("Expected objects to be equal", tostring(err))
    end)

    it("cancels the tasks the body spawned when it ends", function()
      local after = false
      testing.run(function()
        spawn(function() await(sleep(0.05)) after = true end)
      end)
      await(sleep(0.1))
      assert.is_false(after)
    end)
  end)
end)
