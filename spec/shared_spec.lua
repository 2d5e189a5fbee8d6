-- spec/shared_spec.lua: luaserve.shared, the dictionary every Lua state of
-- the process sees (core/shared.c): semantics, ttl, tables, the size
-- bound, and the pool threads seeing the same data.

local luaserve = require "luaserve"
local core = require "luaserve.core"
local json = require "luaserve.json"
local testing = require "luaserve.testing"

local await, sleep, gather = luaserve.await, luaserve.sleep, luaserve.gather
local shared = luaserve.shared


describe("luaserve.shared", function()
  before_each(function() shared.flush_all() end)

  describe("get and set", function()
    it("stores strings, numbers, booleans", function()
      assert.is_true(shared.set("s", "text"))
      assert.is_true(shared.set("n", 1.5))
      assert.is_true(shared.set("t", true))
      assert.is_true(shared.set("f", false))
      assert.equal("text", shared.get("s"))
      assert.equal(1.5, shared.get("n"))
      assert.is_true(shared.get("t"))
      assert.is_false(shared.get("f"))
    end)

    it("gives nil for a missing key", function()
      assert.is_nil(shared.get("missing"))
    end)

    it("replaces a value, also by one of another type", function()
      shared.set("k", "one")
      shared.set("k", 2)
      assert.equal(2, shared.get("k"))
      shared.set("k", { three = 3 })
      assert.same({ three = 3 }, shared.get("k"))
    end)

    it("deletes with set(key, nil) and delete(key)", function()
      shared.set("a", 1)
      shared.set("b", 2)
      assert.is_true(shared.set("a", nil))
      assert.is_true(shared.delete("b"))
      assert.is_true(shared.delete("never there"))
      assert.is_nil(shared.get("a"))
      assert.is_nil(shared.get("b"))
    end)

    it("stores tables as copies, nested and with shared sub-tables", function()
      local sub = { 1, 2 }
      local t = { name = "n", list = { 1, 2, { deep = true } }, a = sub, b = sub,
                  none = json.null, empty = json.array() }
      shared.set("t", t)
      t.name = "changed after the set"
      local got = shared.get("t")
      assert.equal("n", got.name)
      assert.same({ 1, 2, { deep = true } }, got.list)
      assert.is_true(rawequal(got.a, got.b))
      assert.equal(json.null, got.none)
      assert.equal(json.array_mt, getmetatable(got.empty))
      got.name = "changed the copy"
      assert.equal("n", shared.get("t").name)
      assert.is_false(rawequal(shared.get("t"), shared.get("t")))
    end)

    it("stores large values", function()
      local big = ("v"):rep(200 * 1024)
      shared.set("big", { big })
      assert.equal(big, shared.get("big")[1])
    end)

    it("refuses values that cannot be stored, naming where they are", function()
      local ok, err = pcall(shared.set, "k", { items = { 1, print } })
      assert.is_false(ok)
      assert.matches("value.items[2]: function cannot be stored in luaserve.shared",
        err, 1, true)
      ok, err = pcall(shared.set, "k", io.stdout)
      assert.matches("value: userdata cannot be stored", err, 1, true)
      local cyc = {}
      cyc.me = cyc
      ok, err = pcall(shared.set, "k", cyc)
      assert.matches("value.me: a table that contains itself", err, 1, true)
      assert.is_nil(shared.get("k"))
    end)

    it("raises on a key that is not a string", function()
      assert.has_error(function() shared.get({}) end)
      assert.has_error(function() shared.set(nil, 1) end)
    end)
  end)

  describe("add", function()
    it("stores only when the key is absent", function()
      assert.is_true(shared.add("k", "first"))
      local ok, err = shared.add("k", "second")
      assert.is_nil(ok)
      assert.equal("exists", err)
      assert.equal("first", shared.get("k"))
    end)
  end)

  describe("incr", function()
    it("adds to a number and returns the new value", function()
      shared.set("n", 10)
      assert.equal(15, shared.incr("n", 5))
      assert.equal(16, shared.incr("n"))
      assert.equal(14.5, shared.incr("n", -1.5))
    end)

    it("starts a missing key at init, or fails without one", function()
      assert.equal(1, shared.incr("c", 1, 0))
      assert.equal(2, shared.incr("c", 1, 0))
      local v, err = shared.incr("other", 1)
      assert.is_nil(v)
      assert.equal("not found", err)
    end)

    it("fails on a value that is not a number", function()
      shared.set("s", "text")
      local v, err = shared.incr("s", 1, 0)
      assert.is_nil(v)
      assert.equal("not a number", err)
    end)
  end)

  describe("keys, ttl, stats", function()
    it("lists the keys", function()
      shared.set("a", 1)
      shared.set("b", "2")
      shared.set("c", { 3 })
      local keys = shared.keys()
      table.sort(keys)
      assert.same({ "a", "b", "c" }, keys)
      assert.equal(2, #shared.keys(2))
    end)

    it("counts entries and bytes", function()
      local before = shared.stats()
      assert.equal(0, before.count)
      shared.set("a", ("x"):rep(1000))
      local after = shared.stats()
      assert.equal(1, after.count)
      assert.is_true(after.bytes > 1000)
      assert.is_true(after.capacity > 0)
    end)
  end)

  describe("expiry", function()
    it("forgets a key after its ttl", testing.async(function()
      shared.set("short", "v", 0.05)
      shared.set("long", "v", 60)
      shared.set("forever", "v")
      assert.equal("v", shared.get("short"))
      local left = shared.ttl("long")
      assert.is_true(left > 59 and left <= 60)
      assert.equal(0, shared.ttl("forever"))
      await(sleep(0.1))
      assert.is_nil(shared.get("short"))
      local v, err = shared.ttl("short")
      assert.is_nil(v)
      assert.equal("not found", err)
      assert.equal("v", shared.get("long"))
      local keys = shared.keys()
      table.sort(keys)
      assert.same({ "forever", "long" }, keys)
    end))

    it("lets add take an expired key, and incr restart it", testing.async(function()
      shared.set("lock", "old", 0.03)
      shared.set("count", 5, 0.03)
      await(sleep(0.06))
      assert.is_true(shared.add("lock", "new"))
      assert.equal("new", shared.get("lock"))
      assert.equal(1, shared.incr("count", 1, 0))
    end))

    it("gives incr's init an expiry (init_ttl)", testing.async(function()
      assert.equal(1, shared.incr("window", 1, 0, 0.03))
      await(sleep(0.06))
      assert.is_nil(shared.get("window"))
    end))

    it("refuses a negative ttl", function()
      assert.has_error(function() shared.set("k", 1, -1) end)
    end)
  end)

  describe("size bound", function()
    after_each(function()
      shared.flush_all()
      core.shared_configure(64 * 1024 * 1024)
    end)

    it("evicts the least recently used entries when full", function()
      core.shared_configure(16 * 1024)
      local chunk = ("x"):rep(1024)
      for i = 1, 5 do assert.is_true(shared.set("old" .. i, chunk)) end
      for i = 1, 100 do
        assert.is_true(shared.set("k" .. i, chunk))
        assert.equal(chunk, shared.get("old1"))   -- read: recently used
      end
      local st = shared.stats()
      assert.is_true(st.count >= 10 and st.count < 16, "kept " .. st.count)
      assert.is_true(st.bytes <= 16 * 1024)
      assert.is_true(st.evicted >= 100 + 5 - 16, "evicted " .. st.evicted)
      assert.equal(chunk, shared.get("old1"))   -- used all along: kept
      assert.is_nil(shared.get("old2"))         -- the least recently used went
      assert.is_nil(shared.get("k1"))
      assert.equal(chunk, shared.get("k100"))
      assert.is_true(shared.verify())
    end)

    it("safe_set and safe_add never evict: nil, \"shared dictionary full\"", function()
      core.shared_configure(16 * 1024)
      local chunk = ("x"):rep(1024)
      local stored, ok, err = 0, true, nil
      for i = 1, 100 do
        ok, err = shared.safe_set("k" .. i, chunk)
        if not ok then break end
        stored = stored + 1
      end
      assert.is_nil(ok)
      assert.equal("shared dictionary full", err)
      assert.is_true(stored >= 10 and stored < 16, "stored " .. stored)
      assert.equal(stored, shared.stats().count)   -- nothing was evicted
      ok, err = shared.safe_add("another", chunk)
      assert.is_nil(ok)
      assert.equal("shared dictionary full", err)
      ok, err = shared.safe_set("k1", chunk .. chunk)   -- the old value stays
      assert.is_nil(ok)
      assert.equal(chunk, shared.get("k1"))
      shared.delete("k2")
      assert.is_true(shared.safe_set("again", chunk))     -- room again
      assert.is_true(shared.verify())
    end)

    it("refuses a value bigger than the whole dictionary, evicting nothing", function()
      core.shared_configure(16 * 1024)
      shared.set("small", 1)
      local ok, err = shared.set("huge", ("x"):rep(20 * 1024))
      assert.is_nil(ok)
      assert.equal("shared dictionary full", err)
      assert.equal(1, shared.get("small"))
    end)

    it("keeps its structure through many sets and deletes of every size", function()
      core.shared_configure(64 * 1024)
      math.randomseed(9)
      local want = {}
      for i = 1, 5000 do
        local k = "k" .. math.random(1, 300)
        local r = math.random()
        if r < 0.2 then
          shared.delete(k)
          want[k] = nil
        elseif r < 0.3 then
          local before = shared.get(k)   -- nil also when it was evicted
          local v, err = shared.incr(k, 1, 0)
          if type(before) == "string" then
            assert.equal("not a number", err)
          else
            want[k] = (before or 0) + 1
            assert.equal(want[k], v)
          end
        else
          local v = ("v"):rep(math.random(0, 3000))
          assert.is_true(shared.safe_set(k, v) or shared.set(k, v))
          want[k] = v
        end
        if i % 500 == 0 then assert.is_true(shared.verify()) end
      end
      assert.is_true(shared.verify())
      -- what is there is what was written last (evicted keys are absent)
      for _, k in ipairs(shared.keys()) do assert.equal(want[k], shared.get(k)) end
    end)

    it("makes room by dropping expired entries", testing.async(function()
      core.shared_configure(8 * 1024)
      local evicted_before = shared.stats().evicted
      local chunk = ("x"):rep(1024)
      for i = 1, 5 do assert.is_true(shared.set("tmp" .. i, chunk, 0.03)) end
      await(sleep(0.06))
      for i = 1, 5 do assert.is_true(shared.safe_set("new" .. i, chunk)) end
      assert.equal(0, shared.stats().evicted - evicted_before)
    end))
  end)

  describe("across states", function()
    local client, fns
    setup(function()
      client = testing.client("spec/fixtures/sync_app.lua", { threads = 2 })
      fns = client.app.fns
    end)
    teardown(function() client:close() end)

    it("is the same dictionary in the pool threads", function()
      shared.set("from main", { n = 1 })
      assert.same({ n = 1 }, await(fns.shared_get("from main")))
    end)

    it("increments atomically from every thread", testing.async(function()
      shared.set("hits", 0)
      local fs = {}
      for i = 1, 4 do fs[i] = fns.shared_incr("hits", 2000) end
      for _ = 1, 2000 do shared.incr("hits", 1) end
      await(gather(unpack(fs)))
      assert.equal(10000, shared.get("hits"))
    end))
  end)
end)
