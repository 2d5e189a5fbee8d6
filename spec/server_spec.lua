-- spec/server_spec.lua: luaserve.server, a request's life end to end:
-- HTTPError, other errors (500, logged with the route, the server keeps
-- serving), body limits, concurrency, a request's tasks, a client that
-- goes away, handlers that use coroutines.

local luaserve = require "luaserve"
local testing = require "luaserve.testing"
local log = require "luaserve.log"
local tcp = require "luaserve.tcp"
local errors = require "luaserve.errors"

local await, sleep, spawn = luaserve.await, luaserve.sleep, luaserve.spawn
local hrtime = require("luaserve.core").hrtime


-- Send log lines to a list while fn runs; returns them joined.
local function capture_log(fn)
  local lines = {}
  local prev = log.set_output({ write = function(_, ...)
    lines[#lines + 1] = table.concat({ ... })
  end })
  local ok, err = pcall(fn)
  log.set_output(prev)
  if not ok then error(err, 0) end
  return table.concat(lines)
end

-- Wait (bounded) until check() is true.
local function eventually(check, seconds)
  local deadline = hrtime() + (seconds or 2)
  while not check() and hrtime() < deadline do await(sleep(0.01)) end
  return check()
end


describe("luaserve.server", function()
  local state = {}
  local app = luaserve.app()

  local function deep_raise() luaserve.raise(403, "deep down") end

  app:get("/http-error", function() error(luaserve.HTTPError(404, "no such thing")) end)
  app:get("/http-error-headers", function()
    error(luaserve.HTTPError(401, "who are you", { ["WWW-Authenticate"] = "Bearer" }))
  end)
  app:get("/http-error-nested", function()
    local function a() deep_raise() end
    a()
  end)
  app:get("/http-error-table", function()
    luaserve.raise(409, { reason = "taken", fields = { "name" } })
  end)
  app:get("/http-error-nil", function() luaserve.raise(418) end)
  app:get("/http-error-after-await", function()
    await(sleep(0.01))
    luaserve.raise(503, "later", { ["Retry-After"] = "3" })
  end)
  app:get("/http-error-in-task", function()
    local _, err = await(spawn(function() luaserve.raise(402, "pay") end))
    error(err)   -- the task gave the HTTPError back: raise it on
  end)
  app:get("/http-error-in-pcall", function()
    local ok, e = pcall(luaserve.raise, 400, "caught")
    return { caught = not ok, status = e.status }
  end)
  app:get("/http-error-in-wrap", function()
    coroutine.wrap(function()
      await(sleep(0))
      luaserve.raise(451, "wrapped")
    end)()
  end)
  app:get("/boom", function() error("boom goes the handler") end)
  app:get("/boom-after-await", function()
    await(sleep(0.01))
    local t = nil
    return t.field   -- a runtime error
  end)
  app:get("/boom-table", function() error({ not_an = "HTTPError" }) end)
  app:get("/boom-nil", function() error() end)
  app:get("/ok", function() return { ok = true } end)
  app:post("/small", function(req) return { len = #req.body } end, { max_body = 16 })
  app:get("/slow", function()
    await(sleep(0.2))
    return "slow"
  end)
  app:get("/fast", function() return "fast" end)
  app:get("/spawns", function()
    state.cancelled, state.after, state.detached_after = false, false, false
    spawn(function()
      luaserve.on_cancel(function() state.cancelled = true end)
      await(sleep(0.1))
      state.after = true
    end)
    luaserve.spawn_detached(function()
      await(sleep(0.1))
      state.detached_after = true
    end)
    return "spawned"
  end)
  app:get("/hang", function()
    state.hang_cancelled, state.hang_after = false, false
    state.hang_started = true
    luaserve.on_cancel(function() state.hang_cancelled = true end)
    await(sleep(5))
    state.hang_after = true
    return "never"
  end)
  app:get("/wrap", function()
    local gen = coroutine.wrap(function()
      for i = 1, 3 do
        await(sleep(0.005))
        coroutine.yield(i)
      end
    end)
    local out = {}
    for _ = 1, 3 do out[#out + 1] = gen() end
    local co = coroutine.create(function(x)
      await(sleep(0.005))
      return x * 2
    end)
    local ok, v = coroutine.resume(co, 21)
    return { gen = out, resumed = { ok, v } }
  end)

  local client
  setup(function() client = testing.client(app) end)
  teardown(function() client:close() end)

  describe("HTTPError", function()
    it("answers its status and {\"detail\": ...}", function()
      local res = client:get("/http-error")
      assert.equal(404, res.status)
      assert.equal("application/json", res.headers["content-type"])
      assert.same({ detail = "no such thing" }, res:json())
    end)

    it("sends its headers", function()
      local res = client:get("/http-error-headers")
      assert.equal(401, res.status)
      assert.equal("Bearer", res.headers["www-authenticate"])
      assert.same({ detail = "who are you" }, res:json())
    end)

    it("works from a nested function, through luaserve.raise", function()
      local res = client:get("/http-error-nested")
      assert.equal(403, res.status)
      assert.same({ detail = "deep down" }, res:json())
    end)

    it("takes any JSON value as detail, and none as null", function()
      local res = client:get("/http-error-table")
      assert.equal(409, res.status)
      assert.same({ detail = { reason = "taken", fields = { "name" } } }, res:json())
      local n = client:get("/http-error-nil")
      assert.equal(418, n.status)
      assert.equal('{"detail":null}', n.body)
    end)

    it("works after an await, from a task, through coroutine.wrap", function()
      local res = client:get("/http-error-after-await")
      assert.equal(503, res.status)
      assert.equal("3", res.headers["retry-after"])
      assert.equal(402, client:get("/http-error-in-task").status)
      local w = client:get("/http-error-in-wrap")
      assert.equal(451, w.status)
      assert.same({ detail = "wrapped" }, w:json())
    end)

    it("can be caught by the handler like any error", function()
      assert.same({ caught = true, status = 400 }, client:get("/http-error-in-pcall"):json())
    end)

    it("is not logged as an error", function()
      local out = capture_log(function() client:get("/http-error") end)
      assert.not_matches("error", out)
    end)

    it("checks its status", function()
      assert.has_error(function() luaserve.HTTPError(42, "x") end,
        "HTTPError: status must be a number from 100 to 599")
      assert.has_error(function() luaserve.HTTPError("404") end)
      assert.equal("HTTPError 404: gone", tostring(luaserve.HTTPError(404, "gone")))
      assert.is_true(errors.is_http_error(luaserve.HTTPError(500)))
      assert.is_false(errors.is_http_error({ status = 500 }))
    end)
  end)

  describe("any other error", function()
    it("answers 500 {\"detail\":\"Internal Server Error\"} and keeps serving", function()
      capture_log(function()
        for _, path in ipairs({ "/boom", "/boom-after-await", "/boom-table", "/boom-nil" }) do
          local res = client:get(path)
          assert.equal(500, res.status, path)
          assert.equal("application/json", res.headers["content-type"])
          assert.same({ detail = "Internal Server Error" }, res:json())
          assert.not_matches("boom", res.body)
          assert.same({ ok = true }, client:get("/ok"):json())
        end
      end)
    end)

    it("is logged with the method, path, route and a traceback", function()
      local out = capture_log(function() client:get("/boom?x=1") end)
      assert.matches("ERROR GET /boom %(route /boom%)", out)
      assert.matches("boom goes the handler", out)
      assert.matches("stack traceback", out)
      assert.matches("server_spec%.lua:%d+", out)   -- the handler's line
      out = capture_log(function() client:get("/boom-after-await") end)
      assert.matches("route /boom%-after%-await", out)
      assert.matches("attempt to index", out)
      -- the frame that raised keeps its line (the coroutine the error ended
      -- has lost it: it comes from the message)
      assert.matches("stack traceback:\n%s*[^\n]*server_spec%.lua:%d+: in ", out)
    end)

    it("survives many failing requests in a row", function()
      capture_log(function()
        for _ = 1, 50 do assert.equal(500, client:get("/boom").status) end
      end)
      assert.equal(200, client:get("/ok").status)
    end)
  end)

  describe("body limits", function()
    it("answers 413 beyond a route's max_body", function()
      assert.same({ len = 16 }, client:post("/small", { body = ("x"):rep(16) }):json())
      local res = client:post("/small", { body = ("x"):rep(17) })
      assert.equal(413, res.status)
      assert.matches("too large", res:json().detail)
    end)
  end)

  describe("concurrency", function()
    it("a slow handler does not hold up a fast one", testing.async(function()
      local order = {}
      local slow = spawn(function()
        local r = client:get("/slow")
        order[#order + 1] = r.body
      end)
      local fast = spawn(function()
        local r = client:get("/fast")
        order[#order + 1] = r.body
      end)
      await(luaserve.gather(slow, fast))
      assert.same({ "fast", "slow" }, order)
    end))
  end)

  describe("a request's tasks", function()
    it("are cancelled when the request finishes, unless detached", testing.async(function()
      assert.equal("spawned", client:get("/spawns").body)
      assert.is_true(eventually(function() return state.cancelled end))
      assert.is_true(eventually(function() return state.detached_after end))
      await(sleep(0.05))
      assert.is_false(state.after)
    end))
  end)

  describe("a client that goes away", function()
    it("cancels its request: on_cancel runs, the code after await does not",
      testing.async(function()
        state.hang_started = false
        local sock = assert(await(tcp.connect(client.host, client.port)))
        assert(await(sock:send("GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")))
        assert.is_true(eventually(function() return state.hang_started end))
        sock:close()
        assert.is_true(eventually(function() return state.hang_cancelled end))
        assert.is_false(state.hang_after)
        assert.same({ ok = true }, client:get("/ok"):json())
      end))
  end)

  describe("user coroutines in a handler", function()
    it("coroutine.wrap and coroutine.resume around awaits work", function()
      local res = client:get("/wrap")
      assert.equal(200, res.status)
      assert.same({ gen = { 1, 2, 3 }, resumed = { true, 42 } }, res:json())
    end)
  end)

  describe("watch_blocking", function()
    local server = require "luaserve.server"
    local blocking = luaserve.app()
    blocking:get("/spin", function()
      local stop = hrtime() + 0.15   -- CPU work on the loop: everyone waits
      while hrtime() < stop do end
      return "done"
    end)
    blocking:get("/waits", function()
      await(sleep(0.15))   -- a wait: the loop is free
      return "done"
    end)
    local c
    setup(function()
      c = testing.client(blocking)
      server.watch_blocking(0.08)
    end)
    teardown(function()
      server.watch_blocking(0)
      c:close()
    end)

    it("names the route that held the loop", function()
      local text = capture_log(function() assert.equal(200, c:get("/spin").status) end)
      local ms = tonumber(text:match("blocked for (%d+) ms by GET /spin %(route /spin%)"))
      assert.is_number(ms, text)
      assert.is_true(ms >= 100, text)
    end)

    it("says nothing of a handler that only waits", function()
      local text = capture_log(function() assert.equal(200, c:get("/waits").status) end)
      assert.is_nil(text:find("blocked", 1, true), text)
    end)

    it("is off at 0", function()
      server.watch_blocking(0)
      local text = capture_log(function() c:get("/spin") end)
      server.watch_blocking(0.08)
      assert.is_nil(text:find("blocked", 1, true), text)
    end)
  end)

  describe("serve", function()
    it("gives nil, err when the port is taken", function()
      local srv, err = require("luaserve.server").serve(luaserve.app(),
        { host = "127.0.0.1", port = client.port, access_log = false })
      if srv then srv:close() end
      assert.is_nil(srv)
      assert.equal("address already in use", err)
    end)
  end)

  describe("gc_headroom", function()
    local server = require "luaserve.server"
    local function pause()
      local p = collectgarbage("setpause", 200)
      collectgarbage("setpause", p)
      return p
    end
    local function live_kb() collectgarbage() return collectgarbage("count") end
    after_each(function() server.gc_headroom(0) end)

    it("lets a small heap gather the headroom in garbage, a big one triple", function()
      local kb = live_kb()
      server.gc_headroom(kb * 4 * 1024)   -- four times what is live
      assert.is_true(pause() >= 450 and pause() <= 550, tostring(pause()))
      -- The live heap grows past the headroom: it may triple (LuaJIT's
      -- default doubles).
      local big = {}
      for i = 1, math.floor(kb * 5) do big[i] = string.rep("x", 1000) .. i end
      collectgarbage()   -- the sentinel's finalizer paces from what is live
      assert.equal(300, pause())
      big = nil
      collectgarbage()
      assert.is_true(pause() >= 450, tostring(pause()))
    end)

    it("is LuaJIT's own pacing with 0", function()
      server.gc_headroom(live_kb() * 2 * 1024)
      assert.is_true(pause() > 250, tostring(pause()))
      server.gc_headroom(0)
      assert.equal(200, pause())
      collectgarbage()
      assert.equal(200, pause())
    end)
  end)
end)
