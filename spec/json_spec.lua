-- spec/json_spec.lua: luaserve.json (lua-cjson with a null and empty arrays
-- that round-trip), alone and through a handler.

local luaserve = require "luaserve"
local testing = require "luaserve.testing"
local json = require "luaserve.json"
local log = require "luaserve.log"

local encode, decode = json.encode, json.decode


describe("luaserve.json", function()

  describe("encode", function()
    it("writes integers without a fraction", function()
      assert.equal("1", encode(1))
      assert.equal("-3", encode(-3))
      assert.equal("0", encode(0))
      assert.equal("[1,2,3]", encode({ 1, 2, 3 }))
      assert.equal('{"n":1000000}', encode({ n = 1000000 }))
      assert.equal("1.5", encode(1.5))
    end)

    it("writes large integers with all their digits", function()
      assert.equal("1234567890123456", encode(1234567890123456))
      assert.equal("-100000000000000", encode(-1e14))
      assert.equal("[9007199254740992,99999999999999]", encode({ 2 ^ 53, 99999999999999 }))
      assert.equal('{"id":1234567890123456,"x":[]}',
        encode({ id = 1234567890123456, x = json.array() }):gsub(
          '^{"x":%[%],"id":1234567890123456}$', '{"id":1234567890123456,"x":[]}'))
      local id = 1700000000000123
      assert.equal(id, decode(encode({ id = id })).id)
    end)

    it("raises on NaN and infinities", function()
      assert.has_error(function() encode({ 0 / 0 }) end)
      assert.has_error(function() encode(math.huge) end)
    end)

    it("writes strings with escapes and unicode", function()
      assert.equal('"a\\"b\\\\c\\nd\\te"', encode('a"b\\c\nd\te'))
      assert.equal('"\\u0001"', encode("\1"))
      assert.equal('"/users/{id}"', encode("/users/{id}"))   -- "/" as is
      assert.equal('["a\\\\/b"]', encode({ "a\\/b" }))     -- a backslash, then "/"
      -- UTF-8 text goes through as is
      assert.equal('"Jörg ✓ 日本"', encode("Jörg ✓ 日本"))
    end)

    it("writes null, booleans and nested values", function()
      assert.equal("null", encode(json.null))
      assert.equal("[1,null,3]", encode({ 1, json.null, 3 }))
      assert.equal('{"b":{"c":[[1],[2,[3]]]}}',
        encode({ b = { c = { { 1 }, { 2, { 3 } } } } }))
      assert.equal('[[true,false],{"a":[null]}]',
        encode({ { true, false }, { a = { json.null } } }))
    end)

    it("writes an empty plain table as {} and a marked one as []", function()
      assert.equal("{}", encode({}))
      assert.equal("[]", encode(json.array()))
      assert.equal("[]", encode(json.empty_array))
      assert.equal('{"a":[]}', encode({ a = json.array() }))
      assert.equal('{"a":{}}', encode({ a = {} }))
      assert.equal("[[],[[]],{}]",
        encode({ json.array(), { json.empty_array }, {} }))
    end)

    it("writes a marked array with items as an array", function()
      local a = json.array()
      a[1], a[2] = "x", "y"
      assert.equal('["x","y"]', encode(a))
      assert.equal('[1,2]', encode(json.array({ 1, 2 })))
    end)

    it("leaves strings that look like brackets alone", function()
      assert.equal('{"s":"[]"}', encode({ s = "[]" }))
      assert.equal('["{}"]', encode({ "{}" }))
      assert.equal('["[]",[]]', encode({ "[]", json.array() }))
      assert.equal('["a[]b",{"k":"[ ]"},[]]',
        encode({ "a[]b", { k = "[ ]" }, json.array() }))
    end)

    it("raises on what JSON cannot hold", function()
      assert.has_error(function() encode({ f = function() end }) end)
      assert.has_error(function() encode({ co = coroutine.create(print) }) end)
      assert.has_error(function() encode({ [1] = 1, [1000] = 2 }) end)   -- sparse
    end)

    it("raises on a cycle instead of hanging", function()
      local t = {}
      t.a, t.b, t.c = t, t, t
      local ok = pcall(encode, t)
      assert.is_false(ok)
      local u = { e = json.array() }
      u.a, u.b, u.c = u, u, u
      assert.is_false((pcall(encode, u)))
    end)

    it("does not change the value it encodes", function()
      local v = { a = json.array(), b = { json.array() } }
      encode(v)
      assert.equal(json.array_mt, getmetatable(v.a))
      assert.equal(json.array_mt, getmetatable(v.b[1]))
      assert.is_nil(next(v.a))
    end)

    it("encodes a table shared in two places (not a cycle)", function()
      local shared = { json.array() }
      assert.equal('[[[]],[[]]]', encode({ shared, shared }))
    end)
  end)

  describe("decode", function()
    it("reads numbers, strings, booleans, null", function()
      assert.equal(1, decode("1"))
      assert.equal(-2.5, decode("-2.5"))
      assert.equal(1e3, decode("1e3"))
      assert.equal("a\"b\n", decode('"a\\"b\\n"'))
      assert.equal("é✓", decode('"\\u00e9\\u2713"'))
      assert.equal("😀", decode('"\\ud83d\\ude00"'))   -- a surrogate pair
      assert.is_true(decode("true"))
      assert.is_false(decode("false"))
      assert.equal(json.null, decode("null"))
    end)

    it("keeps null in arrays", function()
      local v = decode("[1,null,3]")
      assert.equal(3, #v)
      assert.equal(json.null, v[2])
      assert.equal("[1,null,3]", encode(v))
    end)

    it("reads nested values", function()
      assert.same({ a = { 1, { b = { "c" } } }, d = { e = {} } },
        decode('{"a":[1,{"b":["c"]}],"d":{"e":{}}}'))
    end)

    it("marks [] as an array, at the top and nested", function()
      local v = decode("[]")
      assert.equal(json.array_mt, getmetatable(v))
      local w = decode('{"a":[],"b":{},"c":[[], [ ]],"d":{"e":[]}}')
      assert.equal(json.array_mt, getmetatable(w.a))
      assert.is_nil(getmetatable(w.b))
      assert.equal(json.array_mt, getmetatable(w.c[1]))
      assert.equal(json.array_mt, getmetatable(w.c[2]))
      assert.equal(json.array_mt, getmetatable(w.d.e))
    end)

    it("round-trips [] and {} in any nesting", function()
      for _, s in ipairs({
        "[]", "{}", '{"a":[]}', '{"a":{}}', "[[]]", "[{}]", "[[],{},[[]]]",
        '{"a":{"b":[]}}', '[{"c":[{}]}]', '[1,[],"x",null]',
      }) do
        assert.equal(s, encode(decode(s)))
      end
    end)

    it("leaves '[]' inside strings untouched", function()
      assert.same({ s = "[]", t = "a[ ]b", u = '"[]"' },
        decode('{"s":"[]","t":"a[ ]b","u":"\\"[]\\""}'))
      local v = decode('["[]",[]]')
      assert.equal("[]", v[1])
      assert.equal(json.array_mt, getmetatable(v[2]))
    end)

    it("gives nil, err for text that is not JSON", function()
      for _, s in ipairs({ "", "{", "[1,", "{'a':1}", "nope", '{"a":}', "[] x" }) do
        local v, err = decode(s)
        assert.is_nil(v, s)
        assert.is_string(err, s)
        assert.not_matches("^.-%.lua:%d+:", err)   -- no Lua position in it
      end
    end)

    it("raises when given something other than a string", function()
      assert.has_error(function() decode(nil) end,
        "json.decode: expected a string, got nil")
      assert.has_error(function() decode({}) end)
    end)
  end)

  describe("through a handler", function()
    local app = luaserve.app()
    app:get("/empty", function()
      return { items = json.array(), meta = {}, also = json.empty_array }
    end)
    app:post("/echo", function(req) return req:json() end)
    app:get("/numbers", function()
      return { int = 42, neg = -7, zero = 0, float = 0.25, list = { 1, 2, 3 } }
    end)
    app:get("/null", function() return { a = luaserve.null, b = { 1, luaserve.null } } end)
    app:get("/function", function() return { f = function() end } end)
    app:get("/ok", function() return { ok = true } end)

    local client
    setup(function() client = testing.client(app) end)
    teardown(function() client:close() end)

    it("sends empty arrays as [] and empty objects as {}", function()
      local res = client:get("/empty")
      assert.equal(200, res.status)
      assert.matches('"items":%[%]', res.body)
      assert.matches('"also":%[%]', res.body)
      assert.matches('"meta":{}', res.body)
    end)

    it("echoes JSON with [] and {} kept apart, nested", function()
      local body = '{"a":[],"b":{},"c":[[],{}],"s":"[]"}'
      local res = client:post("/echo", { body = body,
        headers = { ["Content-Type"] = "application/json" } })
      assert.equal(200, res.status)
      local v = res:json()
      assert.equal(json.array_mt, getmetatable(v.a))
      assert.is_nil(getmetatable(v.b))
      assert.equal("[]", v.s)
      assert.matches('"a":%[%]', res.body)
      assert.matches('"b":{}', res.body)
      assert.matches('"c":%[%[%],{}%]', res.body)
      assert.matches('"s":"%[%]"', res.body)
    end)

    it("echoes unicode and escapes unchanged", function()
      local res = client:post("/echo", { json = { name = "Jörg ✓", q = 'say "hi"\n' } })
      assert.equal(200, res.status)
      assert.same({ name = "Jörg ✓", q = 'say "hi"\n' }, res:json())
    end)

    it("sends integers as integers", function()
      local res = client:get("/numbers")
      assert.matches('"int":42[,}]', res.body)
      assert.matches('"neg":%-7[,}]', res.body)
      assert.matches('"zero":0[,}]', res.body)
      assert.matches('"list":%[1,2,3%]', res.body)
      assert.not_matches("%d%.0[,}%]]", res.body)
      assert.equal(0.25, res:json().float)
    end)

    it("sends null, also inside arrays", function()
      local res = client:get("/null")
      assert.matches('"a":null', res.body)
      assert.matches('"b":%[1,null%]', res.body)
    end)

    it("answers 500 when the result cannot be encoded, and keeps serving", function()
      local lines = {}
      local prev = log.set_output({ write = function(_, ...)
        lines[#lines + 1] = table.concat({ ... })
      end })
      local res = client:get("/function")
      log.set_output(prev)
      assert.matches("route /function.*Cannot serialise function", table.concat(lines))
      assert.equal(500, res.status)
      assert.same({ detail = "Internal Server Error" }, res:json())
      assert.equal(200, client:get("/ok").status)
    end)
  end)
end)
