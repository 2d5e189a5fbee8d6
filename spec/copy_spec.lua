-- spec/copy_spec.lua: what crosses between Lua states and how (core/copy.c).
-- core.copy(...) copies values the way they cross into a pool thread
-- (encode, decode); the sync functions of the fixture app carry them
-- across for real.

local luaserve = require "luaserve"
local core = require "luaserve.core"
local errors = require "luaserve.errors"
local json = require "luaserve.json"
local testing = require "luaserve.testing"

local await = luaserve.await
local copy = core.copy


describe("copying values between states", function()
  describe("core.copy", function()
    it("copies scalars as they are", function()
      local s = ("\0binary\255"):rep(3)
      local n, a, b, c, d, e, f = copy(nil, true, false, 42, -1.5, "", s)
      assert.is_nil(n)
      assert.is_true(a)
      assert.is_false(b)
      assert.equal(42, c)
      assert.equal(-1.5, d)
      assert.equal("", e)
      assert.equal(s, f)
    end)

    it("keeps the number of values, trailing nils included", function()
      assert.equal(3, select("#", copy(1, nil, nil)))
      assert.equal(0, select("#", copy()))
    end)

    it("keeps special numbers", function()
      local inf, ninf, nan, nz, big = copy(math.huge, -math.huge, 0 / 0, -0.0, 2 ^ 53)
      assert.equal(math.huge, inf)
      assert.equal(-math.huge, ninf)
      assert.is_true(nan ~= nan)
      assert.equal(-math.huge, 1 / nz)
      assert.equal(2 ^ 53, big)
    end)

    it("copies nested tables into new tables", function()
      local t = { 1, 2, { x = { y = "deep" } }, name = "n", [1.5] = "f", [true] = "b" }
      local c = copy(t)
      assert.same(t, c)
      assert.is_false(rawequal(t, c))
      assert.is_false(rawequal(t[3], c[3]))
    end)

    it("copies a large string and a large table", function()
      local big = ("x"):rep(1024 * 1024)
      local list = {}
      for i = 1, 10000 do list[i] = i end
      local s, l = copy(big, list)
      assert.equal(big, s)
      assert.same(list, l)
    end)

    it("keeps the JSON null and empty JSON arrays", function()
      local v = copy({ a = json.null, list = json.array() })
      assert.equal(json.null, v.a)
      assert.equal(json.array_mt, getmetatable(v.list))
      assert.equal('{"list":[]}', json.encode({ list = v.list }))
    end)

    it("keeps HTTPError objects, drops other metatables", function()
      local e = copy(errors.new(404, "nope"))
      assert.is_true(errors.is_http_error(e))
      assert.equal(404, e.status)
      local plain = copy(setmetatable({ x = 1 }, { __index = function() return 7 end }))
      assert.is_nil(getmetatable(plain))
      assert.same({ x = 1 }, plain)
    end)

    it("keeps a table reached twice as one table", function()
      local shared = { "s" }
      local t = { a = shared, b = { c = shared } }
      local c = copy(t)
      assert.is_true(rawequal(c.a, c.b.c))
      local x, y = copy(shared, shared)
      assert.is_true(rawequal(x, y))
    end)

    local function refused(pattern, ...)
      local ok, err = pcall(copy, ...)
      assert.is_false(ok)
      assert.matches(pattern, err, 1, true)
    end

    it("refuses functions, naming where they are", function()
      refused("argument 2.items[3]: function cannot be copied",
        1, { items = { 1, 2, print } })
      refused("argument 1: function cannot be copied", print)
    end)

    it("refuses userdata, threads and light userdata other than null", function()
      refused("argument 1.f: userdata cannot be copied", { f = io.stdout })
      refused("argument 1[1]: thread cannot be copied", { coroutine.create(print) })
    end)

    it("names keys that are not identifiers", function()
      refused('argument 1["a b"][2.5][true]: function cannot be copied',
        { ["a b"] = { [2.5] = { [true] = print } } })
    end)

    it("refuses keys that cannot cross", function()
      refused("argument 1.t: a table key of type table cannot be copied",
        { t = { [{}] = 1 } })
      refused("argument 1: a table key of type function cannot be copied",
        { [print] = 1 })
    end)

    it("refuses cycles", function()
      local t = { a = {} }
      t.a.back = t
      refused("argument 1.a.back: a table that contains itself (a cycle) cannot be copied", t)
    end)

    it("refuses tables nested too deep", function()
      local t = {}
      local cur = t
      for _ = 1, 150 do cur.n = {} cur = cur.n end
      refused("nested more than 100 deep", t)
    end)
  end)

  describe("through a sync function", function()
    local client, fns
    setup(function()
      client = testing.client("spec/fixtures/sync_app.lua", { threads = 2 })
      fns = client.app.fns
    end)
    teardown(function() client:close() end)

    it("carries every copyable type there and back", function()
      local arr = json.array()
      local shared = { k = "v" }
      local args = { nil, true, false, 0, -2.25, "s\0t", json.null,
        { list = { 1, 2, 3 }, map = { a = { b = { c = "deep" } } } }, arr,
        errors.new(409, "conflict"), { x = shared, y = shared } }
      local n = 11
      local back = { n = n, await(fns.echo(unpack(args, 1, n))) }
      for i = 1, n do
        if type(args[i]) == "table" then
          assert.same(args[i], back[i], "argument " .. i)
        else
          assert.equal(args[i], back[i], "argument " .. i)
        end
      end
      assert.equal(json.array_mt, getmetatable(back[9]))
      assert.is_true(errors.is_http_error(back[10]))
      assert.is_true(rawequal(back[11].x, back[11].y))
    end)

    it("arrives as the same types in the pool", function()
      local n, types = await(fns.types(nil, 1, "s", true, {}, json.null))
      assert.equal(6, n)
      assert.same({ "nil", "number", "string", "boolean", "table", "userdata" },
        { types[1] or "nil", types[2], types[3], types[4], types[5], types[6] })
    end)

    it("keeps shared sub-tables shared in the pool state", function()
      local sub = {}
      assert.is_true(await(fns.shared_sub({ x = sub, y = sub })))
      assert.is_true((await(fns.same(sub, sub))))
    end)

    it("refuses an argument that cannot cross, naming its path", function()
      local ok, err = pcall(fns.echo, 1, { items = { 1, 2, print } })
      assert.is_false(ok)
      assert.matches("argument 2.items[3]: function cannot cross into a sync function",
        err, 1, true)
      ok, err = pcall(fns.echo, coroutine.create(print))
      assert.matches("argument 1: thread cannot cross into a sync function", err, 1, true)
      local t = {}
      t.self = t
      ok, err = pcall(fns.echo, t)
      assert.matches("argument 1.self: a table that contains itself", err, 1, true)
      ok, err = pcall(fns.echo, io.stderr)
      assert.matches("argument 1: userdata cannot cross", err, 1, true)
    end)

    it("names the caller's line when it refuses", function()
      local ok, err = pcall(fns.echo, print)
      assert.is_false(ok)
      assert.matches("copy_spec.lua:%d+: argument 1", err)
    end)

    it("gives nil, err for a result that cannot cross", function()
      local v, err = await(fns.bad_result())
      assert.is_nil(v)
      assert.equal("result 1.f: function cannot cross out of a sync function", err)
    end)
  end)
end)
