-- spec/future_spec.lua: luaserve.future: futures, await, tasks and the
-- toolkit (sleep, spawn, gather, wait_for, Semaphore, cancellation), and
-- awaits through user coroutines. Specs run with blocking await allowed at
-- top level (luaserve.testing turns it on): outside a task, await runs the
-- loop until the future is done.

local luaserve = require "luaserve"
local future = require "luaserve.future"
local testing = require "luaserve.testing"
local core = require "luaserve.core"
local log = require "luaserve.log"

local await, sleep, spawn = luaserve.await, luaserve.sleep, luaserve.spawn
local gather, wait_for = luaserve.gather, luaserve.wait_for
local Semaphore = luaserve.Semaphore
local hrtime = core.hrtime

-- Seconds fn takes.
local function timed(fn, ...)
  local t0 = hrtime()
  fn(...)
  return hrtime() - t0
end

-- A test body whose log lines (the expected "task failed" ones) go to
-- `logged` instead of stderr.
local logged = {}
local function quietly(fn)
  return function(...)
    logged = {}
    local prev = log.set_output({ write = function(_, ...)
      logged[#logged + 1] = table.concat({ ... })
    end })
    local ok, err = pcall(fn, ...)
    log.set_output(prev)
    if not ok then error(err, 0) end
  end
end

-- Run a Lua script in a fresh luaserve process (bounded by `timeout`);
-- returns its stdout and whether it exited 0.
local LUASERVE = os.getenv("LUASERVE") or "./luaserve"
local function run_script(src)
  local path = os.tmpname()
  local f = assert(io.open(path, "w"))
  f:write(src)
  f:close()
  local p = assert(io.popen("timeout 10 " .. LUASERVE .. " lua " .. path .. " 2>&1"))
  local out = p:read("*a")
  local ok = p:close()
  os.remove(path)
  return out, ok
end


describe("luaserve.future", function()

  describe("a future", function()
    it("is resolved once with any values, nils included", function()
      local f = future.new()
      assert.is_false(f:done())
      assert.matches("pending", tostring(f))
      f:resolve(1, nil, "three", nil)
      assert.is_true(f:done())
      assert.matches("done", tostring(f))
      assert.equal(4, select("#", f:result()))
      assert.same({ 1, nil, "three" }, { f:result() })
      assert.has_error(function() f:resolve(2) end, "future resolved twice")
    end)

    it("fail(err) resolves with nil, err", function()
      local f = future.new()
      f:fail("nope")
      assert.same({ nil, "nope" }, { await(f) })
    end)

    it("result() of a pending future raises", function()
      assert.has_error(function() future.new():result() end,
        "future is still pending")
    end)

    it("calls on_done callbacks when resolved, or at once if it is", function()
      local f, got = future.new(), {}
      f:on_done(function(g) got[#got + 1] = { "a", g:result() } end)
      f:on_done(function(g) got[#got + 1] = { "b", g:result() } end)
      assert.same({}, got)
      f:resolve(7)
      assert.same({ { "a", 7 }, { "b", 7 } }, got)
      f:on_done(function(g) got[#got + 1] = { "c", g:result() } end)
      assert.same({ "c", 7 }, got[3])
    end)

    it("cancel() stops what is behind it and resolves with nil, 'cancelled'", function()
      local stopped = 0
      local f = future.new(function() stopped = stopped + 1 end)
      assert.is_true(f:cancel())
      assert.equal(1, stopped)
      assert.same({ nil, "cancelled" }, { await(f) })
      assert.is_false(f:cancel())
      assert.equal(1, stopped)
      f:resolve("too late")   -- ignored after cancellation
      assert.same({ nil, "cancelled" }, { f:result() })
    end)

    it("cancel() of a resolved future does nothing", function()
      local f = luaserve.resolved(1)
      assert.is_false(f:cancel())
      assert.equal(1, await(f))
    end)

    it("resolved(...) keeps every value", function()
      local f = luaserve.resolved(nil, "x", nil)
      assert.equal(3, select("#", await(f)))
      assert.equal(0, select("#", await(luaserve.resolved())))
      assert.is_true(luaserve.is_future(f))
      assert.is_false(luaserve.is_future({}))
    end)
  end)

  describe("await", function()
    it("gives the future's values", function()
      assert.same({ 1, 2 }, { await(luaserve.resolved(1, 2)) })
    end)

    it("raises on what is not a future", function()
      assert.has_error(function() await(42) end, "await: expected a future, got number")
      assert.has_error(function() await({}) end, "await: expected a future, got table")
      assert.has_error(function() await() end, "await: expected a future, got nil")
    end)

    it("on a resolved future returns without yielding", testing.async(function()
      local woke = false
      local g = future.new()
      spawn(function() await(g) woke = true end)
      g:resolve()           -- the waiter is now ready, to run at the next yield
      assert.equal(5, await(luaserve.resolved(5)))
      assert.is_false(woke) -- so no yield happened
      await(sleep(0))
      assert.is_true(woke)
    end))

    it("in a task yields until the future is resolved", testing.async(function()
      local f = future.new()
      local got
      spawn(function() got = { await(f) } end)
      assert.is_nil(got)
      f:resolve("a", "b")
      await(sleep(0))
      assert.same({ "a", "b" }, got)
    end))

    it("outside a task runs the loop, when blocking is allowed", function()
      local d = timed(function() await(sleep(0.05)) end)
      assert.is_true(d >= 0.03 and d < 2, d)
    end)

    it("outside a task raises when blocking is not allowed", function()
      future.allow_blocking(false)
      local ok, err = pcall(await, sleep(0.001))
      future.allow_blocking(true)
      assert.is_false(ok)
      assert.matches("await: called outside a request or task", err)
    end)

    it("reports a deadlock instead of hanging", function()
      local out, ok = run_script([[
        local future = require "luaserve.future"
        future.allow_blocking(true)
        local ok, err = pcall(future.await, future.new())
        print(ok, err)
      ]])
      assert.is_true(ok, out)
      assert.matches("false.*deadlock", out)
    end)
  end)

  describe("sleep", function()
    it("waits about that long", function()
      local d = timed(function() await(sleep(0.1)) end)
      assert.is_true(d >= 0.08 and d < 2, d)
    end)

    -- 300 sleeps of 0..30 ms started in one loop iteration (one ms, so a
    -- deadline is the start time + the duration), those `cancelled(i)`
    -- picks cancelled: the others wake in deadline order, equal ones in
    -- start order; the cancelled never wake.
    local function check_wake_order(cancelled)
      local woke, fs = {}, {}
      math.randomseed(7)
      local ms = {}
      for i = 1, 300 do
        ms[i] = math.random(0, 30)
        local f = sleep(ms[i] / 1000)
        fs[i] = f
        f:on_done(function(g)
          if select("#", g:result()) == 0 then woke[#woke + 1] = i end
        end)
      end
      for i = 1, 300 do if cancelled(i) then fs[i]:cancel() end end
      await(sleep(0.1))
      local want = {}
      for i = 1, 300 do if not cancelled(i) then want[#want + 1] = i end end
      table.sort(want, function(a, b)
        if ms[a] ~= ms[b] then return ms[a] < ms[b] end
        return a < b
      end)
      -- the loop clock may tick between starts: allow a sleep started a
      -- millisecond later to share a deadline with a shorter one; the
      -- order must still never put a longer sleep before a shorter one
      -- started earlier
      assert.equal(#want, #woke)
      for k = 2, #woke do
        local a, b = woke[k - 1], woke[k]
        assert.is_true(ms[a] <= ms[b] + 1, ("%d (%d ms) woke before %d (%d ms)")
          :format(a, ms[a], b, ms[b]))
        if ms[a] == ms[b] then assert.is_true(a < b) end
      end
      for i = 1, 300 do
        if cancelled(i) then assert.same({ nil, "cancelled" }, { fs[i]:result() }) end
      end
    end

    it("wakes sleepers in deadline order, equal ones in start order, cancelled never", function()
      check_wake_order(function(i) return i % 7 == 0 end)   -- left in the heap
    end)

    it("keeps that order when most sleeps are cancelled (the heap is remade)", function()
      check_wake_order(function(i) return i % 3 ~= 0 end)   -- 200 of 300
    end)

    it("sleeps again after every sleep was cancelled", function()
      local fs = {}
      for i = 1, 100 do fs[i] = sleep(i / 1000) end
      for i = 100, 1, -1 do fs[i]:cancel() end
      local d = timed(function() await(sleep(0.05)) end)
      assert.is_true(d >= 0.04 and d < 2, d)
      for i = 1, 100 do assert.same({ nil, "cancelled" }, { fs[i]:result() }) end
    end)

    it("counts from the call, even after the loop's clock went stale", function()
      local spin_until = hrtime() + 0.2   -- CPU work, no loop turn
      while hrtime() < spin_until do end
      local d = timed(function() await(sleep(0.1)) end)
      assert.is_true(d >= 0.08, d)
    end)

    it("has millisecond resolution", testing.async(function()
      local order = {}
      local function after(ms)
        return spawn(function() await(sleep(ms / 1000)) order[#order + 1] = ms end)
      end
      local d = timed(function() await(gather(after(60), after(5), after(30))) end)
      assert.same({ 5, 30, 60 }, order)
      assert.is_true(d < 1, d)   -- not rounded up to seconds
      d = timed(function() await(sleep(0.002)) end)
      assert.is_true(d < 0.5, d)
    end))

    it("of zero or less resolves on the next loop turn", function()
      local d = timed(function()
        await(sleep(0))
        await(sleep(-1))
      end)
      assert.is_true(d < 0.5, d)
    end)

    it("raises on what is not a number", function()
      assert.has_error(function() sleep("1") end, "sleep: seconds must be a number")
      assert.has_error(function() sleep(0 / 0) end, "sleep: seconds must be a number")
      assert.has_error(function() sleep() end, "sleep: seconds must be a number")
    end)
  end)

  describe("spawn", function()
    it("runs fn(...) at once, until its first wait", function()
      local ran = false
      local t = spawn(function() ran = true await(sleep(0.01)) end)
      assert.is_true(ran)
      assert.is_false(t:done())
      await(t)
      assert.is_true(t:done())
    end)

    it("passes the arguments, nils included", function()
      local t = spawn(function(...) return select("#", ...), ... end, nil, 2, nil)
      assert.same({ 3, nil, 2 }, { await(t) })
    end)

    it("await gives the task's results", function()
      local t = spawn(function()
        await(sleep(0.01))
        return "a", nil, "c"
      end)
      local r = { await(t) }
      assert.same({ "a", nil, "c" }, r)
      -- awaiting again gives the same
      assert.same({ "a", nil, "c" }, { await(t) })
      assert.same({ "a", nil, "c" }, { await(t:future()) })
    end)

    it("an error in the task gives nil, err, and is logged", quietly(function()
      local t = spawn(function()
        await(sleep(0.01))
        error("boom")
      end)
      local v, err = await(t)
      assert.is_nil(v)
      assert.matches("boom", err)
      assert.not_matches("\n", err)   -- the message, not the traceback
      local v2, err2 = await(spawn(function() error("at once") end))
      assert.is_nil(v2)
      assert.matches("at once", err2)
      local out = table.concat(logged)
      assert.matches("ERROR task failed: [^\n]*boom", out)
      assert.matches("stack traceback", out)
    end))

    it("goes on after many tasks that raised, each ending its runner", quietly(function()
      for i = 1, 300 do
        local _, err = await(spawn(function()
          if i % 2 == 0 then await(sleep(0)) end
          error("n" .. i)
        end))
        assert.matches("n" .. i .. "$", err)
      end
      assert.equal(42, await(spawn(function() await(sleep(0)) return 42 end)))
    end))

    it("an error object is given as it is", function()
      local e = luaserve.HTTPError(409, "conflict")
      local _, err = await(spawn(function() error(e) end))
      assert.equal(e, err)
    end)

    it("raises on what is not a function", function()
      assert.has_error(function() spawn(42) end, "spawn: expected a function")
      assert.has_error(function() luaserve.spawn_detached() end,
        "spawn_detached: expected a function")
    end)

    it("runs tasks concurrently", function()
      local d = timed(function()
        local ts = {}
        for i = 1, 5 do ts[i] = spawn(function() await(sleep(0.2)) return i end) end
        for i = 1, 5 do assert.equal(i, await(ts[i])) end
      end)
      assert.is_true(d < 0.8, d)   -- one after another would be 1 s
    end)
  end)

  describe("gather", function()
    it("gives the first value of each, in order", function()
      local r = { await(gather(
        spawn(function() await(sleep(0.06)) return "slow" end),
        spawn(function() await(sleep(0.01)) return "fast", "ignored" end),
        luaserve.resolved(3)
      )) }
      assert.same({ "slow", "fast", 3 }, r)
    end)

    it("runs them concurrently", function()
      local d = timed(function()
        local fs = {}
        for i = 1, 5 do fs[i] = sleep(0.2) end
        await(gather(unpack(fs)))
      end)
      assert.is_true(d < 0.8, d)
    end)

    it("keeps the count when values are nil", function()
      assert.equal(3, select("#", await(gather(sleep(0), luaserve.resolved(),
        luaserve.resolved(nil)))))
    end)

    it("of zero futures resolves at once with nothing", function()
      local f = gather()
      assert.is_true(f:done())
      assert.equal(0, select("#", await(f)))
    end)

    it("raises the first failure at the await and cancels the others", function()
      local finished, cancelled = {}, {}
      local function slow(name)
        return spawn(function()
          luaserve.on_cancel(function() cancelled[name] = true end)
          await(sleep(0.3))
          finished[name] = true
          return name
        end)
      end
      local a, b = slow("a"), slow("b")
      local failing = spawn(function() await(sleep(0.02)) return nil, "it broke" end)
      local d = timed(function()
        local ok, err = pcall(await, gather(a, failing, b))
        assert.is_false(ok)
        assert.equal(luaserve.GatherError, getmetatable(err))
        assert.equal(2, err.index)
        assert.equal("it broke", err.error)
        assert.equal("gather: future 2 failed: it broke", tostring(err))
      end)
      assert.is_true(d < 0.25, d)   -- did not wait for the slow ones
      assert.same({ nil, "cancelled" }, { await(a) })
      assert.same({ a = true, b = true }, cancelled)
      await(sleep(0.4))
      assert.same({}, finished)
    end)

    it("raises a task's error as a failure", quietly(function()
      local ok, err = pcall(await, gather(luaserve.resolved(1),
        spawn(function() error("bad") end)))
      assert.is_false(ok)
      assert.matches("^gather: future 2 failed: spec/future_spec.lua:%d+: bad$", tostring(err))
    end))

    it("passes an HTTPError raised by a task as it is", quietly(function()
      local ok, err = pcall(await, gather(spawn(function()
        luaserve.raise(404, "no such item") end), sleep(0)))
      assert.is_false(ok)
      assert.equal(404, err.status)
      assert.equal("no such item", err.detail)
    end))

    it("tells nil values from a failure: a, b = await(gather(fa, fb))", function()
      local a, b = await(gather(luaserve.resolved(nil), luaserve.resolved(false)))
      assert.is_nil(a)
      assert.is_false(b)
      -- a failure is never mistaken for values: it raises where awaited
      local f = gather(luaserve.resolved(1), luaserve.resolved(nil, "gone"))
      local ok, err = pcall(function() local x, y = await(f) return x, y end)
      assert.is_false(ok)
      assert.equal("gone", err.error)
      -- and f:result() raises the same
      assert.has_error(function() f:result() end)
    end)

    it("inside wait_for: the failure still raises", function()
      local ok, err = pcall(await, luaserve.wait_for(gather(
        luaserve.resolved(nil, "nope")), 1))
      assert.is_false(ok)
      assert.equal("nope", err.error)
    end)

    it("raises on what is not a future", function()
      assert.has_error(function() gather(sleep(0), 5) end,
        "gather: argument 2 is not a future (number)")
    end)
  end)

  describe("wait_for", function()
    it("gives the values when in time", function()
      local t = spawn(function() await(sleep(0.02)) return 1, nil, 3 end)
      local r = { await(wait_for(t, 2)) }
      assert.same({ 1, nil, 3 }, r)
      assert.same({ 7 }, { await(wait_for(luaserve.resolved(7), 1)) })
      assert.same({ nil, "its own error" },
        { await(wait_for(spawn(function() return nil, "its own error" end), 1)) })
    end)

    it("does not time out later once done", function()
      local f = wait_for(sleep(0.01), 0.05)
      await(f)
      await(sleep(0.1))
      assert.same({}, { f:result() })
    end)

    it("gives nil, 'timeout' and cancels the inner future", function()
      local after, cancelled = false, false
      local t = spawn(function()
        luaserve.on_cancel(function() cancelled = true end)
        await(sleep(5))
        after = true
      end)
      local d = timed(function()
        assert.same({ nil, "timeout" }, { await(wait_for(t, 0.05)) })
      end)
      assert.is_true(d >= 0.03 and d < 1, d)
      assert.is_true(cancelled)
      assert.same({ nil, "cancelled" }, { await(t) })
      await(sleep(0.05))
      assert.is_false(after)
    end)

    it("cancelled itself, cancels the inner future", function()
      local inner = sleep(5)
      local f = wait_for(inner, 10)
      f:cancel()
      assert.is_true(inner:done())
      assert.same({ nil, "cancelled" }, { await(inner) })
    end)

    it("raises on bad arguments", function()
      assert.has_error(function() wait_for(1, 1) end,
        "wait_for: argument 1 is not a future (number)")
      assert.has_error(function() wait_for(sleep(0), "1") end,
        "wait_for: seconds must be a number")
    end)
  end)

  describe("Semaphore", function()
    it("bounds concurrency: 10 tasks, 2 at once", function()
      local sem = Semaphore(2)
      local now, max, done = 0, 0, 0
      local ts = {}
      for i = 1, 10 do
        ts[i] = spawn(function()
          await(sem:acquire())
          now = now + 1
          if now > max then max = now end
          await(sleep(0.01))
          now = now - 1
          sem:release()
          done = done + 1
        end)
      end
      await(gather(unpack(ts)))
      assert.equal(10, done)
      assert.equal(2, max)
      assert.equal(2, sem.free)
    end)

    it("run(fn, ...) holds a permit around fn, and returns its values", function()
      local sem = Semaphore(3)
      local now, max = 0, 0
      local ts = {}
      for i = 1, 9 do
        ts[i] = spawn(function()
          return sem:run(function(x)
            now = now + 1
            if now > max then max = now end
            await(sleep(0.01))
            now = now - 1
            return x * 2, "second"
          end, i)
        end)
      end
      local r = { await(gather(unpack(ts))) }
      assert.same({ 2, 4, 6, 8, 10, 12, 14, 16, 18 }, r)
      assert.equal(3, max)
      assert.equal(3, sem.free)
      assert.same({ 10, "second" }, { await(spawn(sem.run, sem,
        function() return 10, "second" end)) })
    end)

    it("run releases when fn raises, and raises on", quietly(function()
      local sem = Semaphore(1)
      local _, err = await(spawn(function()
        return sem:run(function() await(sleep(0)) error("inside") end)
      end))
      assert.matches("inside", err)
      assert.equal(1, sem.free)
    end))

    it("a cancelled waiter leaves the queue and takes no permit", function()
      await(sleep(0))   -- a fresh loop clock for the holder's sleep
      local sem = Semaphore(1)
      local holder = spawn(function()
        await(sem:acquire())
        await(sleep(0.2))
        sem:release()
      end)
      local got = false
      local waiter = spawn(function()
        await(sem:acquire())
        got = true
        sem:release()
      end)
      assert.equal(1, #sem._queue)
      waiter:cancel()
      assert.equal(0, #sem._queue)
      assert.equal(0, sem.free)         -- the holder still holds it
      -- a third task must still wait for the holder
      local third_at
      local t0 = hrtime()
      local third = spawn(function()
        await(sem:acquire())
        third_at = hrtime() - t0
        sem:release()
      end)
      assert.is_nil(third_at)
      await(gather(holder, third))
      assert.is_true(third_at >= 0.1, third_at)
      assert.is_false(got)
      assert.equal(1, sem.free)
    end)

    it("a task cancelled while it holds a permit gives it back", function()
      local sem = Semaphore(1)
      local holder = spawn(function()
        await(sem:acquire())
        await(sleep(5))
        sem:release()
      end)
      local next_got = false
      local waiter = spawn(function()
        await(sem:acquire())
        next_got = true
        sem:release()
      end)
      assert.equal(0, sem.free)
      holder:cancel()
      await(waiter)
      assert.is_true(next_got)
      assert.equal(1, sem.free)
      -- and with nobody waiting, the permit is free again
      local h2 = spawn(function() await(sem:acquire()) await(sleep(5)) end)
      assert.equal(0, sem.free)
      h2:cancel()
      assert.equal(1, sem.free)
    end)

    it("a task that acquired and released, then is cancelled, gives nothing back", function()
      local sem = Semaphore(1)
      local t = spawn(function()
        await(sem:acquire())
        sem:release()
        await(sleep(5))
      end)
      assert.equal(1, sem.free)
      t:cancel()
      assert.equal(1, sem.free)
    end)

    it("raises when released more than acquired", function()
      local sem = Semaphore(2)
      assert.has_error(function() sem:release() end,
        "Semaphore: released more than acquired")
      await(sem:acquire())
      sem:release()
      assert.has_error(function() sem:release() end)
      assert.equal(2, sem.free)
    end)

    it("raises on a bad size", function()
      assert.has_error(function() Semaphore(0) end, "Semaphore: n must be a number >= 1")
      assert.has_error(function() Semaphore("2") end)
    end)

    it("serves waiters first come, first served", testing.async(function()
      local sem = Semaphore(1)
      await(sem:acquire())
      local order = {}
      local ts = {}
      for i = 1, 4 do
        ts[i] = spawn(function() await(sem:acquire()) order[#order + 1] = i sem:release() end)
      end
      sem:release()
      await(gather(unpack(ts)))
      assert.same({ 1, 2, 3, 4 }, order)
    end))
  end)

  describe("cancellation", function()
    it("task:cancel() stops the task: code after its await never runs", function()
      local after, cleanup = false, false
      local t = spawn(function()
        luaserve.on_cancel(function() cleanup = true end)
        await(sleep(0.05))
        after = true
      end)
      assert.is_true(t:cancel())
      assert.is_false(t:cancel())
      assert.is_true(cleanup)
      assert.same({ nil, "cancelled" }, { await(t) })
      await(sleep(0.1))
      assert.is_false(after)
    end)

    it("cancels what the task awaits", function()
      local s = sleep(5)
      local t = spawn(function() await(s) end)
      t:cancel()
      assert.is_true(s:done())
      assert.same({ nil, "cancelled" }, { await(s) })
    end)

    it("leaves a future alone that another task still awaits", function()
      local f = future.new()
      local t1 = spawn(function() return await(f) end)
      local t2 = spawn(function() return await(f) end)
      t1:cancel()
      assert.is_false(f:done())
      f:resolve("ok")
      assert.equal("ok", await(t2))
    end)

    it("stops the timer of a cancelled sleep (the loop has nothing left)", function()
      local out, ok = run_script([[
        local luaserve = require "luaserve"
        local core = require "luaserve.core"
        local t = luaserve.spawn(function() luaserve.await(luaserve.sleep(30)) end)
        local t0 = core.hrtime()
        t:cancel()
        core.run()            -- returns once no handle is active
        print(("ran %.3f"):format(core.hrtime() - t0))
      ]])
      assert.is_true(ok, out)
      local d = tonumber(out:match("ran ([%d.]+)"))
      assert.is_number(d, out)
      assert.is_true(d < 5, out)
    end)

    it("cancel of a finished task does nothing", function()
      local t = spawn(function() return 1 end)
      assert.is_false(t:cancel())
      assert.equal(1, await(t))
    end)

    it("cancels a task's tasks with it", function()
      local child_after, child_cleanup = false, false
      local parent = spawn(function()
        spawn(function()
          luaserve.on_cancel(function() child_cleanup = true end)
          await(sleep(0.05))
          child_after = true
        end)
        await(sleep(5))
      end)
      parent:cancel()
      assert.is_true(child_cleanup)
      await(sleep(0.1))
      assert.is_false(child_after)
    end)

    it("cancels the tasks a task spawned when it ends, unless detached", function()
      local plain, detached, detached2 = false, false, false
      local parent = spawn(function()
        spawn(function() await(sleep(0.03)) plain = true end)
        luaserve.spawn_detached(function() await(sleep(0.03)) detached = true end)
        spawn(function() await(sleep(0.03)) detached2 = true end):detach()
        await(sleep(0.001))
        return "parent done"
      end)
      assert.equal("parent done", await(parent))
      await(sleep(0.15))
      assert.is_false(plain)
      assert.is_true(detached)
      assert.is_true(detached2)
    end)

    it("on_cancel returns a function that removes the callback", function()
      local called = false
      local t = spawn(function()
        local remove = luaserve.on_cancel(function() called = true end)
        remove()
        await(sleep(5))
      end)
      t:cancel()
      assert.is_false(called)
    end)

    it("on_cancel outside a task returns nil", function()
      assert.is_nil(luaserve.on_cancel(function() end))
    end)
  end)

  describe("runners", function()
    it("a wave of a thousand tasks runs in the coroutines of the wave before", function()
      -- Idle runners are kept for the next wave (up to 4,096): a server's
      -- sleeps end in batches of hundreds, and a coroutine made anew
      -- grows its stack again.
      local function wave()
        local seen, tasks = {}, {}
        for i = 1, 1000 do
          tasks[i] = spawn(function()
            seen[coroutine.running()] = true
            await(sleep(0.01))
          end)
        end
        for i = 1, 1000 do await(tasks[i]) end
        return seen
      end
      local first = wave()
      local again = 0
      for co in pairs(wave()) do
        if first[co] then again = again + 1 end
      end
      assert.equal(1000, again)
    end)
  end)

  describe("a request's task", function()
    local TASK = require("luaserve.request_slots").TASK
    -- start_request(fn, on_fail, req): what the server runs per request.
    -- A task that ends in its first step, leaving nothing behind, is the
    -- next request's task (one table less per answer).
    local function task_of(fn)
      local req, seen = {}, nil
      future.start_request(function(r)
        seen = future.current()
        r[TASK] = seen
        if fn then fn(r) end
      end, nil, req)
      return seen, req
    end

    it("is reused when it ended in its first step; its request forgets it", function()
      local t1, r1 = task_of()
      local t2, r2 = task_of()
      assert.equal(t1, t2)
      assert.is_false(r1[TASK])
      assert.is_false(r2[TASK])
      assert.is_true(t2:done())
    end)

    it("is not reused when it waited", function()
      local t1 = task_of(function() await(sleep(0)) end)
      await(sleep(0.02))   -- the first one ends
      local t2 = task_of()
      assert.are_not.equal(t1, t2)
    end)

    it("is not reused when it left cleanups, a future or a semaphore hold", quietly(function()
      local t1 = task_of(function() luaserve.on_cancel(function() end) end)
      assert.are_not.equal(t1, task_of())
      local t2 = task_of(function(r) r[TASK]:future() end)
      assert.are_not.equal(t2, task_of())
      local sem = Semaphore(1)
      local t3 = task_of(function() sem:acquire() end)   -- never released
      assert.are_not.equal(t3, task_of())
    end))

    it("is not reused when it raised (its failure handler ran in it)", quietly(function()
      local req, seen = {}, nil
      local failed_with
      future.start_request(function() seen = future.current() error("boom") end,
        function(_, err) failed_with = err end, req)
      assert.matches("boom", tostring(failed_with))
      assert.are_not.equal(seen, task_of())
    end))

    it("a cancelled child of the old request leaves the new one's children alone", function()
      local old_child
      local t1 = task_of(function() old_child = spawn(function() await(sleep(10)) end) end)
      assert.is_true(old_child:done())   -- cancelled with its request
      local new_child, kept
      local t2 = task_of(function(r)
        new_child = spawn(function() await(sleep(0.01)) return "new" end)
        old_child:detach()
        old_child:cancel()
        kept = rawget(r[TASK], "_children")[new_child]
      end)
      assert.equal(t1, t2)
      assert.is_true(kept)   -- the reused task still had its own child
      assert.is_true(new_child:done())   -- cancelled when its request ended
    end)
  end)

  describe("the scheduler stays healthy", function()
    -- Each in a fresh process: a broken scheduler would break every spec
    -- after it.
    it("after a task cancels itself and runs on", function()
      local out, ok = run_script([[
        local luaserve = require "luaserve"
        local await, sleep, spawn = luaserve.await, luaserve.sleep, luaserve.spawn
        local t
        t = spawn(function()
          await(sleep(0))
          t:cancel()          -- itself, while it runs
          return "ran on"
        end)
        await(sleep(0.02))
        local n = 0
        for i = 1, 5000 do    -- more than the idle runners kept
          n = n + await(spawn(function() await(sleep(0)) return 1 end))
        end
        print("tasks " .. n)
      ]])
      assert.is_true(ok, out)
      assert.matches("tasks 5000", out)
    end)

    it("when a resolve callback raises: logged, and the other waiters wake", function()
      local out, ok = run_script([[
        local luaserve = require "luaserve"
        local future = require "luaserve.future"
        local f = future.new()
        f:on_done(function() error("callback boom") end)
        local t = luaserve.spawn(function() return luaserve.await(f) end)
        f:resolve("value")
        print("waiter got " .. tostring(luaserve.await(t)))
      ]])
      assert.is_true(ok, out)
      assert.matches("callback boom", out)
      assert.matches("waiter got value", out)
    end)

    it("when the log hook raises inside the drain", function()
      local out, ok = run_script([[
        local luaserve = require "luaserve"
        local future = require "luaserve.future"
        local await, sleep, spawn = luaserve.await, luaserve.sleep, luaserve.spawn
        future.set_logger(function() error("log hook broken") end)
        spawn(function() await(sleep(0)) error("task fails") end)
        await(sleep(0.02))
        print(await(spawn(function() await(sleep(0.01)) return "still resuming" end)))
      ]])
      assert.is_true(ok, out)
      assert.matches("still resuming", out)
    end)
  end)

  describe("user coroutines", function()
    it("coroutine.wrap around code that awaits works", testing.async(function()
      local gen = coroutine.wrap(function(n)
        for i = 1, n do
          await(sleep(0.005))
          coroutine.yield(i)
        end
        return "end"
      end)
      local got = { gen(3), gen(), gen(), gen() }
      assert.same({ 1, 2, 3, "end" }, got)
    end))

    it("coroutine.resume passes awaits through and gives true, values", testing.async(function()
      local co = coroutine.create(function(a)
        local b = coroutine.yield(a + 1)
        await(sleep(0.005))
        return b * 10
      end)
      assert.same({ true, 2 }, { coroutine.resume(co, 1) })
      assert.same({ true, 50 }, { coroutine.resume(co, 5) })
      assert.equal("dead", coroutine.status(co))
      assert.same({ false, "cannot resume dead coroutine" }, { coroutine.resume(co) })
    end))

    it("an error in a wrapped coroutine reaches the caller", testing.async(function()
      local f = coroutine.wrap(function()
        await(sleep(0))
        error("wrapped failure", 0)
      end)
      local ok, err = pcall(f)
      assert.is_false(ok)
      assert.equal("wrapped failure", err)
    end))

    it("nests", testing.async(function()
      local outer = coroutine.wrap(function()
        local inner = coroutine.wrap(function()
          await(sleep(0.005))
          coroutine.yield("inner")
        end)
        coroutine.yield(inner())
        await(sleep(0.005))
        coroutine.yield("outer")
      end)
      assert.same({ "inner", "outer" }, { outer(), outer() })
    end))
  end)
end)
