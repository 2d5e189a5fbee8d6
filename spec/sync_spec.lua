-- spec/sync_spec.lua: luaserve.sync, functions and handlers that run on the
-- thread pool, each pool thread with its own Lua state holding the app
-- (spec/fixtures/sync_app.lua, loaded there as in the main state).

local luaserve = require "luaserve"
local core = require "luaserve.core"
local errors = require "luaserve.errors"
local tcp = require "luaserve.tcp"
local testing = require "luaserve.testing"

local await, sleep, spawn, gather = luaserve.await, luaserve.sleep,
  luaserve.spawn, luaserve.gather
local shared = luaserve.shared
local hrtime = core.hrtime

local FIXTURE = "spec/fixtures/sync_app.lua"


-- Wait (running the loop) until pred() is true or `seconds` pass.
local function wait_until(pred, seconds)
  local deadline = hrtime() + seconds
  while not pred() and hrtime() < deadline do await(sleep(0.01)) end
  return pred()
end


describe("luaserve.sync", function()
  describe("marking", function()
    it("raises when called inside a request or task", testing.async(function()
      local ok, err = pcall(function() local s = luaserve.sync(function() end) return s end)
      assert.is_false(ok)
      assert.matches("sync%(%) called outside module load", err)
      assert.matches("sync_spec.lua:%d+:", err)
    end))

    it("outside any load and task (an app built in a spec) runs calls here", function()
      local double = luaserve.sync(function(x) return x * 2, core.is_pool_state() end)
      assert.same({ 42, false }, { await(double(21)) })
      local app = luaserve.app()
      app:get("/half/{n:int}", luaserve.sync(function(req)
        return { half = req.params.n / 2 }
      end))
      app:get("/twice/{n:int}", function(req) return { twice = (await(double(req.params.n))) } end)
      local c = testing.client(app)
      assert.same({ half = 4 }, c:get("/half/8"):json())
      assert.same({ twice = 16 }, c:get("/twice/8"):json())
      c:close()
    end)

    it("raises on a value that is not a function", function()
      local ok, err = pcall(luaserve.sync, 42)
      assert.is_false(ok)
      assert.matches("expected a function, got number", err, 1, true)
    end)

    it("refuses to start a pool whose threads do not mark the same functions", function()
      local ok, err = pcall(testing.client, "spec/fixtures/sync_mismatch_app.lua")
      assert.is_false(ok)
      assert.matches("cannot start the sync pool", err, 1, true)
      assert.matches("sync_mismatch_app.lua:%d+ was not marked when the app loaded in a pool thread", err)
      assert.equal(0, luaserve.pool.stats().threads)
    end)

    it("raises when a sync function is called and no pool runs", function()
      local app = require("luaserve.cli").load_app(FIXTURE)
      core.pool_stop()
      local ok, err = pcall(app.fns.echo, 1)
      assert.is_false(ok)
      assert.matches("no pool is running", err, 1, true)
    end)
  end)

  describe("with a pool of two threads", function()
    local client, fns
    setup(function()
      client = testing.client(FIXTURE, { threads = 2, pool_queue = 16 })
      fns = client.app.fns
    end)
    teardown(function() client:close() end)

    describe("called from async code", function()
      it("returns a future of the function's results", function()
        local f = fns.echo(1, "two", { three = 3 })
        assert.is_true(luaserve.is_future(f))
        local a, b, c = await(f)
        assert.equal(1, a)
        assert.equal("two", b)
        assert.same({ three = 3 }, c)
      end)

      it("runs in a pool state with its own copy of module-level values", function()
        local r = await(fns.where())
        assert.is_true(r.pool)
        assert.equal("hello from module level", r.greeting)
        assert.is_false(core.is_pool_state())
      end)

      it("works from a request's handler (offload)", function()
        local res = client:get("/offload?n=7")
        assert.equal(200, res.status)
        assert.same({ pool_said = 7 }, res:json())
      end)

      it("gives nil, err when the function raises, and the state stays usable", function()
        for i = 1, 6 do
          local v, err = await(fns.boom("failure " .. i))
          assert.is_nil(v)
          assert.matches("sync_app.lua:%d+: failure " .. i .. "$", err)
        end
        assert.equal("still here", await(fns.echo("still here")))
      end)

      it("gives an HTTPError raised in the pool back as an HTTPError", function()
        local v, err = await(fns.http_error())
        assert.is_nil(v)
        assert.is_true(errors.is_http_error(err))
        assert.equal(418, err.status)
        assert.equal("short and stout", err.detail)
      end)

      it("awaits inside a sync function on the thread's own loop", function()
        local elapsed, in_pool = await(fns.nap(0.05))
        assert.is_true(in_pool)
        assert.is_true(elapsed >= 0.045, "slept " .. elapsed)
        assert.is_true(elapsed < 2, "slept " .. elapsed)
      end)

      it("sleeps the right time after the thread sat idle", function()
        await(sleep(0.15))   -- the pool threads' loops were idle meanwhile
        local elapsed = await(fns.nap(0.1))
        assert.is_true(elapsed >= 0.095, "slept " .. elapsed)
      end)

      it("runs a sync function called inside a pool thread right there", function()
        local r, err, in_pool = await(fns.nested("x"))
        assert.equal("x", r)
        assert.is_nil(err)
        assert.is_true(in_pool)
      end)

      it("finds functions marked at the same line by their order", function()
        assert.equal(6, await(fns.add1(5)))
        assert.equal(15, await(fns.add10(5)))
        assert.matches("sync_app.lua:%d+#2$", fns.add10.key)
      end)

      it("raises when sync() is called inside a pool thread's call", function()
        local ok, err = await(fns.late_mark())
        assert.is_false(ok)
        assert.matches("called outside module load", err, 1, true)
      end)

      it("runs calls concurrently, on both threads", testing.async(function()
        local fs = {}
        for i = 1, 4 do fs[i] = fns.spin(30, i) end
        local r = { await(gather(unpack(fs))) }
        assert.same({ 1, 2, 3, 4 }, r)
      end))

      it("cancels a call that nobody waits for any more", testing.async(function()
        local t = spawn(function() return await(fns.spin(50, "x")) end)
        t:cancel()
        assert.equal("y", await(fns.echo("y")))
      end))
    end)

    describe("as a route handler", function()
      it("runs the whole request in the pool with the request's fields", function()
        local res = client:get("/sync?x=42", { headers = { ["X-Test-Agent"] = "spec" } })
        assert.equal(200, res.status)
        assert.same({ pool = true, method = "GET", path = "/sync", route = "/sync",
          x = "42", agent = "spec" }, res:json())
      end)

      it("gives req:json() and typed params", function()
        local res = client:post("/sync/json", { json = { a = { 1, 2 } } })
        assert.equal(201, res.status)
        assert.same({ got = { a = { 1, 2 } }, ctype = "application/json" }, res:json())
        res = client:get("/sync/items/12")
        assert.same({ id = 12, kind = "number" }, res:json())
        assert.equal(422, client:get("/sync/items/abc").status)
      end)

      it("answers a bad JSON body with 400", function()
        local res = client:post("/sync/json", { body = "{nope",
          headers = { ["Content-Type"] = "application/json" } })
        assert.equal(400, res.status)
      end)

      it("turns return values into responses as async handlers do", function()
        local res = client:get("/sync/text")
        assert.equal(200, res.status)
        assert.equal("plain text", res.body)
        assert.matches("^text/plain", res.headers["content-type"])
        res = client:get("/sync/headers")
        assert.equal(202, res.status)
        assert.equal("text/x-custom", res.headers["content-type"])
        assert.equal("1", res.headers["x-one"])
        assert.equal("custom", res.body)
        res = client:get("/sync/empty")
        assert.equal(204, res.status)
        assert.is_nil(res.headers["content-type"])
      end)

      it("answers 500 when the handler raises, and keeps serving", function()
        local res = client:get("/sync/boom")
        assert.equal(500, res.status)
        assert.same({ detail = "Internal Server Error" }, res:json())
        assert.equal(200, client:get("/sync").status)
      end)

      it("answers an HTTPError's status", function()
        local res = client:get("/sync/teapot")
        assert.equal(418, res.status)
        assert.same({ detail = "I'm a teapot" }, res:json())
      end)

      it("answers 500 when its result cannot cross", function()
        assert.equal(500, client:get("/sync/bad-result").status)
      end)

      it("awaits inside a sync handler", function()
        local res = client:get("/sync/nap?s=0.02")
        assert.same({ napped = true }, res:json())
      end)

      it("serves async routes while sync handlers run", testing.async(function()
        local slow = spawn(client.get, client, "/sync/spin?ms=300")
        await(sleep(0.05))
        local t0 = hrtime()
        local res = client:get("/async")
        local took = hrtime() - t0
        assert.equal(200, res.status)
        assert.is_true(took < 0.25, "an async request took " .. took .. " s")
        assert.equal(200, await(slow).status)
      end))
    end)

    describe("luaserve.pool.stats()", function()
      it("counts threads, busy, queued and completed jobs", function()
        local before = luaserve.pool.stats()
        assert.equal(2, before.threads)
        assert.equal(16, before.queue_max)
        await(fns.echo(1))
        local after = luaserve.pool.stats()
        assert.equal(before.completed + 1, after.completed)
        assert.equal(0, after.busy)
        assert.equal(0, after.queued)
      end)

      it("is readable from a pool thread", function()
        local s = await(fns.stats())
        assert.equal(2, s.threads)
        assert.is_true(s.busy >= 1)
      end)
    end)
  end)

  describe("with a full pool (one thread, a queue of one)", function()
    local client, fns
    setup(function()
      client = testing.client(FIXTURE, { threads = 1, pool_queue = 1 })
      fns = client.app.fns
    end)
    teardown(function() client:close() end)

    it("gives nil, \"pool full\" to a call that does not fit", testing.async(function()
      local running = fns.spin(200, "a")        -- taken by the thread
      await(sleep(0.05))
      local queued = fns.spin(10, "b")          -- waits in the queue
      local v, err = await(fns.echo("c"))       -- no room
      assert.is_nil(v)
      assert.equal("pool full", err)
      assert.equal("a", await(running))
      assert.equal("b", await(queued))
      assert.is_true(luaserve.pool.stats().rejected >= 1)
      assert.equal("d", await(fns.echo("d")))   -- room again
    end))

    it("answers a sync request that does not fit with 503 and Retry-After", testing.async(function()
      local running = fns.spin(300, "a")
      await(sleep(0.05))
      local queued = fns.spin(10, "b")
      local res = client:get("/sync")
      assert.equal(503, res.status)
      assert.equal("1", res.headers["retry-after"])
      assert.same({ detail = "pool full" }, res:json())
      await(gather(running, queued))
      assert.equal(200, client:get("/sync").status)
    end))

    -- Send a request on a raw socket and hang up right away.
    local function send_and_hang_up(path)
      local sock = assert(await(tcp.connect(client.host, client.port)))
      assert(await(sock:send("GET " .. path .. " HTTP/1.1\r\nHost: t\r\n\r\n")))
      await(sleep(0.05))   -- the server has it, in the queue or running
      sock:close()
    end

    it("drops a queued job whose client went away before it starts", testing.async(function()
      shared.delete("ran:dropped")
      local running = fns.spin(300, "a")
      await(sleep(0.05))
      send_and_hang_up("/sync/spin?ms=10&tag=dropped")
      assert.is_true(wait_until(function()
        return luaserve.pool.stats().queued == 0
      end, 5))
      assert.equal("a", await(running))
      await(sleep(0.1))
      assert.is_nil(shared.get("ran:dropped"))
    end))

    it("finishes a running job whose client went away, and drops its result", testing.async(function()
      shared.delete("ran:running")
      local before = luaserve.pool.stats().completed
      send_and_hang_up("/sync/spin?ms=150&tag=running")
      assert.is_true(shared.get("ran:running"))
      assert.is_true(wait_until(function()
        return luaserve.pool.stats().completed == before + 1
      end, 5))
      assert.equal("next", await(fns.echo("next")))
    end))
  end)
end)
