-- spec/mistakes_spec.lua: the common async mistakes are named where they
-- happen, with the message a user sees (issue 14).

local luaserve = require "luaserve"
local testing = require "luaserve.testing"

local await, sleep = luaserve.await, luaserve.sleep
local hrtime = require("luaserve.core").hrtime


-- The line of this file that carries "MARK:<name>".
local function line_of(name)
  local n = 0
  for l in io.lines("spec/mistakes_spec.lua") do
    n = n + 1
    if l:find("MARK:" .. name, 1, true) and not l:find("line_of", 1, true) then return n end
  end
end


local logged = testing.logged


describe("a forgotten await", function()
  local app = luaserve.app()
  app:get("/field", function()
    local res = sleep(0)          -- a future, not its result
    return { status = res.status } -- MARK:field
  end)
  app:get("/returns-future", function()
    return sleep(0)
  end)
  app:get("/returns-task", function()
    return luaserve.spawn(function() return { ok = true } end)
  end)
  app:get("/not-awaited", function()
    sleep(0.05)                   -- MARK:not-awaited
    return "done"
  end)
  app:get("/awaited", function()
    local f = sleep(0.01)
    await(sleep(0.01))
    await(f)                      -- awaited late: fine
    local a, b = await(luaserve.gather(sleep(0), sleep(0)))
    return "fine"
  end)
  app:get("/yield", function()
    coroutine.yield()             -- MARK:yield
    return "never"
  end)
  app:get("/generator", function()
    local gen = coroutine.wrap(function()
      for i = 1, 3 do coroutine.yield(i) end
    end)
    return { gen(), gen(), gen() }   -- a coroutine of its own: fine
  end)
  local client
  setup(function() client = testing.client(app) end)
  teardown(function() client:close() end)

  it("reading a field of a future raises at that line", function()
    local res
    local out = logged(function() res = client:get("/field") end)
    assert.equal(500, res.status)
    assert.matches("ERROR GET /field %(route /field%): spec/mistakes_spec.lua:" .. line_of("field") .. ": " ..
      "attempt to read 'status' of a future: did you forget await%?", out)
  end)

  it("methods of a future still work", function()
    local f = sleep(0)
    assert.is_false(f:done())
    await(f)
    assert.is_true(f:done())
    assert.equal("luaserve.Future (done)", tostring(f))
  end)

  it("a handler that returns a future or a task is a 500 that says so", function()
    for _, path in ipairs({ "/returns-future", "/returns-task" }) do
      local res
      local out = logged(function() res = client:get(path) end)
      assert.equal(500, res.status)
      assert.matches("ERROR GET " .. path:gsub("%-", "%%-") .. " %(route [^)]+%): the handler " ..
        "returned a [a-z]+ instead of its result: did you forget await%? %(return await%(f%)%)",
        out)
    end
  end)

  it("a future never awaited is reported once per call site, with its line", function()
    local out = logged(function()
      for _ = 1, 3 do assert.equal(200, client:get("/not-awaited").status) end
    end)
    local _, count = out:gsub("was never awaited", "")
    assert.equal(1, count, out)
    assert.matches("WARN  a future created at spec/mistakes_spec.lua:" .. line_of("not-awaited") .. " was never " ..
      "awaited %(request GET /not%-awaited, route /not%-awaited; it was still pending " ..
      "when its task ended%): did you forget await%?", out)
  end)

  it("futures awaited late, gathered or awaited at once are not reported", function()
    local out = logged(function()
      assert.equal("fine", client:get("/awaited").body)
    end)
    assert.not_matches("never awaited", out)
  end)

  it("a bare coroutine.yield() answers 500 at once, saying why", function()
    local res, took
    local out = logged(function()
      local t0 = hrtime()
      res = client:get("/yield")
      took = hrtime() - t0
    end)
    assert.equal(500, res.status)
    assert.is_true(took < 5)   -- not left hanging until a timeout
    assert.matches("ERROR GET /yield %(route /yield%): spec/mistakes_spec.lua:" .. line_of("yield") .. ": " ..
      "coroutine.yield%(%) called in a task outside a coroutine of its own: to " ..
      "wait, use luaserve.await%(future%)", out)
  end)

  it("coroutines of the handler's own still yield", function()
    assert.same({ 1, 2, 3 }, client:get("/generator"):json())
  end)

  it("is sampled after a route's first 64 requests, unless asked for all", function()
    local future = require "luaserve.future"
    local app2 = luaserve.app()
    app2:get("/rare", function(req)
      if req.query.rare then sleep(0.01) return "rare" end   -- the forgotten await
      await(sleep(0))
      return "ok"
    end)
    local c2 = testing.client(app2)
    local out = logged(function()
      for _ = 1, 70 do assert.equal("ok", c2:get("/rare").body) end
      assert.equal("rare", c2:get("/rare?rare=1").body)   -- request 71: not followed
    end)
    assert.not_matches("never awaited", out)
    out = logged(function()
      for _ = 72, 79 do assert.equal("ok", c2:get("/rare").body) end
      assert.equal("rare", c2:get("/rare?rare=1").body)   -- request 80: followed
    end)
    assert.matches("never awaited %(request GET /rare", out)
    local was = future.check_unawaited("all")
    local app3 = luaserve.app()
    app3:get("/rare", function(req)
      if req.query.rare then sleep(0.01) return "rare" end
      await(sleep(0))
      return "ok"
    end)
    local c3 = testing.client(app3)
    out = logged(function()
      for _ = 1, 70 do assert.equal("ok", c3:get("/rare").body) end
      assert.equal("rare", c3:get("/rare?rare=1").body)
    end)
    future.check_unawaited(was)
    c2:close()
    c3:close()
    assert.matches("never awaited %(request GET /rare", out)
  end)

  it("can be turned off", function()
    local future = require "luaserve.future"
    local was = future.check_unawaited(false)
    local out = logged(function()
      local app2 = luaserve.app()
      app2:get("/x", function() sleep(0.01) return "x" end)
      local c2 = testing.client(app2)
      assert.equal("x", c2:get("/x").body)
      c2:close()
    end)
    future.check_unawaited(was)
    assert.not_matches("never awaited", out)
  end)
end)


describe("a route template in another framework's syntax", function()
  local app = luaserve.app()

  local function refused(path)
    local ok, err = pcall(app.get, app, path, function() end)
    assert.is_false(ok)
    return err
  end

  it("is refused with the luaserve form (Express)", function()
    assert.matches("route /users/:id: path parameters are written {name} in luaserve " ..
      "%(typed: {name:int}%); did you mean /users/{id}%?", refused("/users/:id"))
    assert.matches("did you mean /a/{x}/b/{y}%?", refused("/a/:x/b/:y"))
  end)

  it("is refused with the luaserve form (Flask)", function()
    assert.matches("did you mean /users/{id}%?", refused("/users/<id>"))
    assert.matches("did you mean /users/{id:int}/files/{rest:path}%?",
      refused("/users/<int:id>/files/<path:rest>"))
    assert.matches("did you mean /p/{v:number}%?", refused("/p/<float:v>"))
  end)

  it("names the line that registered it", function()
    local ok, err = pcall(function() app:post("/x/:y", function() end) end)
    assert.is_false(ok)
    assert.matches("^spec/mistakes_spec.lua:%d+: route /x/:y", err)
    ok, err = pcall(function() app:websocket("/ws/:room", function() end) end)
    assert.matches("^spec/mistakes_spec.lua:%d+: route /ws/:room", err)
  end)

  it("leaves a colon that is not a parameter alone", function()
    assert.has_no.errors(function()
      app:get("/time/12:30", function() end)
      app:get("/files/{name}:download", function() end)
    end)
  end)
end)
