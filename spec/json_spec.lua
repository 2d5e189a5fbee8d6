-- spec/json_spec.lua: luaserve.json (lua-cjson with a null and empty arrays
-- that round-trip), alone and through a handler.

local luaserve = require "luaserve"
local testing = require "luaserve.testing"
local json = require "luaserve.json"
local log = require "luaserve.log"

local encode, decode = json.encode, json.decode


-- The message of the error f(...) raises, without the Lua position.
local function err_of(f, ...)
  local ok, e = pcall(f, ...)
  assert.is_false(ok)
  return (tostring(e):gsub("^.-:%d+: ", ""))
end


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

  -- Each case below was checked against the encoder luaserve had before
  -- (lua-cjson 2.1.0 plus placeholders in Lua) and must stay as it is.
  describe("encode, pinned to lua-cjson's output", function()
    it("writes a table with keys 1..n as an array, holes as null", function()
      assert.equal("[1,null,3]", encode({ [1] = 1, [3] = 3 }))
      assert.equal("[null,null,null,null,1]", encode({ [5] = 1 }))
      assert.equal("[" .. ("null,"):rep(9) .. "1]", encode({ [10] = 1 }))
      assert.equal("[1,2,3]", encode({ [1] = 1, [2] = 2, [3.0] = 3 }))
    end)

    it("raises on an excessively sparse array (above 10 and twice the items)", function()
      assert.equal("Cannot serialise table: excessively sparse array",
        err_of(encode, { [11] = 1 }))
      assert.equal("Cannot serialise table: excessively sparse array",
        err_of(encode, { [1] = 1, [1000] = 2 }))
      local t = {}
      for i = 1, 10 do t[i] = i end
      t[20] = 20   -- 20 <= 2 * 11: still an array
      assert.equal("[1,2,3,4,5,6,7,8,9,10" .. (",null"):rep(9) .. ",20]", encode(t))
    end)

    it("writes a table with other keys as an object, number keys as strings", function()
      assert.same({ ["1"] = 1, ["2"] = 2, a = 3 }, decode(encode({ 1, 2, a = 3 })))
      assert.equal('{"0":1}', encode({ [0] = 1 }))
      assert.equal('{"-1":1}', encode({ [-1] = 1 }))
      assert.equal('{"1.5":1}', encode({ [1.5] = 1 }))
      assert.same({ ["1"] = 1, ["2.5"] = 2 }, decode(encode({ [1] = 1, [2.5] = 2 })))
    end)

    it("raises on keys that are not strings or numbers", function()
      assert.equal("Cannot serialise boolean: table key must be a number or string",
        err_of(encode, { [true] = 1 }))
      assert.equal("Cannot serialise table: table key must be a number or string",
        err_of(encode, { [{}] = 1 }))
    end)

    it("writes numbers as cjson's %.14g, integers in all digits", function()
      assert.equal("-0", encode(-0.0))
      assert.equal("[-0]", encode({ -0.0 }))
      assert.equal("0.1", encode(0.1))
      assert.equal("0.33333333333333", encode(1 / 3))
      assert.equal("1e+300", encode(1e300))
      assert.equal("1e-300", encode(1e-300))
      assert.equal("4.9406564584125e-324", encode(5e-324))
      assert.equal("[0.5,-1.25,1e-07,123456.789]", encode({ 0.5, -1.25, 1e-7, 123456.789 }))
      assert.equal("123456789012.5", encode(123456789012.5))
      assert.equal("1e+15", encode(1e15 + 0.5))      -- not an integer: 14 digits
      assert.equal("99999999999999", encode(1e14 - 1))
      assert.equal("9007199254740994", encode(2 ^ 53 + 2))
      assert.equal("9223372036854775808", encode(2 ^ 63))
      assert.equal("-9223372036854775808", encode(-2 ^ 63))
      assert.equal("1.844674407371e+19", encode(2 ^ 64))   -- past 2^63
      assert.equal("1e+21", encode(1e21))
      assert.equal("-2147483648", encode(-2 ^ 31))
      assert.equal("[10,99,100,12345678,-100000000000000]",
        encode({ 10, 99, 100, 12345678, -1e14 }))
    end)

    it("raises on NaN and infinities, with cjson's message", function()
      for _, x in ipairs({ 0 / 0, math.huge, -math.huge }) do
        assert.equal("Cannot serialise number: must not be NaN or Inf", err_of(encode, x))
      end
      assert.matches("^Cannot serialise number: must not be NaN or Inf",
        err_of(encode, { a = { -math.huge } }))
    end)

    it("escapes control characters, DEL, quote and backslash, and nothing else", function()
      local s = {}
      for i = 0, 31 do s[#s + 1] = string.char(i) end
      s[#s + 1] = "\127\"\\/ ~"
      assert.equal('"\\u0000\\u0001\\u0002\\u0003\\u0004\\u0005\\u0006\\u0007\\b\\t\\n'
        .. '\\u000b\\f\\r\\u000e\\u000f\\u0010\\u0011\\u0012\\u0013\\u0014\\u0015\\u0016'
        .. '\\u0017\\u0018\\u0019\\u001a\\u001b\\u001c\\u001d\\u001e\\u001f\\u007f'
        .. '\\"\\\\/ ~"', encode(table.concat(s)))
      assert.equal('"a\\u0000b"', encode("a\0b"))
      assert.equal('{"a\\"/\\n":1}', encode({ ["a\"/\n"] = 1 }))
      assert.equal('""', encode(""))
    end)

    it("passes bytes that are not UTF-8 through unchanged", function()
      assert.equal('"\255\254\192\128"', encode("\255\254\192\128"))
      local all = {}
      for i = 128, 255 do all[#all + 1] = string.char(i) end
      all = table.concat(all)
      assert.equal('"' .. all .. '"', encode(all))
    end)

    it("writes nil and no value as null", function()
      assert.equal("null", encode(nil))
      assert.equal("null", encode())
      assert.equal("true", encode(true))
      assert.equal('{"1":null,"a":null}',
        encode({ json.null, a = json.null }):gsub('^{"a":null,"1":null}$', '{"1":null,"a":null}'))
    end)

    it("raises on functions, threads and userdata, with cjson's message", function()
      assert.equal("Cannot serialise function: type not supported", err_of(encode, print))
      assert.equal("Cannot serialise thread: type not supported",
        err_of(encode, coroutine.create(print)))
      assert.equal("Cannot serialise userdata: type not supported", err_of(encode, io.stdout))
      assert.matches("^Cannot serialise function: type not supported",
        err_of(encode, { f = print }))
    end)

    it("nests 1000 tables deep and raises at 1001, as on a cycle", function()
      local function nest(n)
        local t = {}
        local c = t
        for _ = 2, n do c[1] = {} c = c[1] end
        return t
      end
      assert.equal(("["):rep(999) .. "{}" .. ("]"):rep(999), encode(nest(1000)))
      assert.equal("Cannot serialise, excessive nesting (1001)", err_of(encode, nest(1001)))
      local t = {}
      t[1] = t
      assert.equal("Cannot serialise, excessive nesting (1001)", err_of(encode, t))
      local u = {}
      u.x = { y = u }
      assert.equal("Cannot serialise, excessive nesting (1001)", err_of(encode, u))
    end)

    it("ignores metatables but json.array_mt on an empty table", function()
      assert.equal('{"a":1}', encode(json.array({ a = 1 })))
      assert.equal("[1,null,2]", encode(json.array({ [1] = 1, [3] = 2 })))
      assert.equal("[1,2]", encode(setmetatable({ 1, 2 }, { __index = function() return 5 end })))
      assert.equal("{}", encode(setmetatable({}, { __len = function() return 5 end })))
      assert.equal('{"k":1}', encode(setmetatable({ k = 1 }, {
        __pairs = function() error("not called") end,
        __index = function() error("not called") end })))
    end)

    it("round-trips what it writes through decode", function()
      for _, v in ipairs({
        { a = 1, b = { 1, 2, { c = "x\ny" } }, d = json.null, e = false },
        { 1.5, -0.25, 1e-7, 2 ^ 53, -(2 ^ 53), 123456789 },
        { s = "Jörg ✓ \0 \127 \"q\" \\ /" },
      }) do
        assert.same(v, decode(encode(v)))
      end
    end)
  end)

  describe("encode, beyond lua-cjson", function()
    it("names where the value it cannot write sits", function()
      assert.equal("Cannot serialise function: type not supported (at items[2].f)",
        err_of(encode, { items = { 1, { f = print } } }))
      assert.equal('Cannot serialise number: must not be NaN or Inf (at ["a b"][1])',
        err_of(encode, { ["a b"] = { 0 / 0 } }))
      assert.equal('Cannot serialise function: type not supported (at ["a"?b"][2.5])',
        err_of(encode, { ['a"\nb'] = { [2.5] = print } }))
      assert.equal("Cannot serialise boolean: table key must be a number or string (at x)",
        err_of(encode, { x = { [true] = 1 } }))
      assert.equal("Cannot serialise table: excessively sparse array (at [7])",
        err_of(encode, { [7] = { [100] = 1 }, [1] = 1, [2] = 2, [3] = 3, [4] = 4 }))
      local long = ("k"):rep(100)
      local v = { [long] = {} }
      local c = v[long]
      for _ = 1, 5 do c[long] = {} c = c[long] end
      c.f = print
      local e = err_of(encode, v)
      assert.matches("^Cannot serialise function: type not supported %(at .*%.%.%.%)$", e)
      assert.is_true(#e < 300)
    end)

    it("writes integer keys with all their digits too", function()
      assert.equal('{"9007199254740992":1}', encode({ [2 ^ 53] = 1, a = 1 }):gsub(',?"a":1,?', ""))
      assert.equal('{"100000000000000":1}', encode({ [1e14] = 1, a = 1 }):gsub(',?"a":1,?', ""))
      assert.equal('{"-2147483649":1}', encode({ [-2 ^ 31 - 1] = 1 }))
    end)

    it("raises on a huge integer key as on any sparse array", function()
      -- lua-cjson 2.1.0 kept an int there: {[1]=1,[2^40]=2} came out as [1]
      for _, t in ipairs({ { [2 ^ 31] = 1 }, { [1] = 1, [2 ^ 40] = 2 }, { [1] = 1, [math.huge] = 2 } }) do
        assert.equal("Cannot serialise table: excessively sparse array", err_of(encode, t))
      end
      assert.equal("Cannot serialise number: must not be NaN or Inf",
        err_of(encode, { [-math.huge] = 1 }))
    end)

    it("counts a marked empty array in the nesting depth", function()
      local t = {}
      local c = t
      for _ = 2, 1000 do c[1] = {} c = c[1] end
      c[1] = json.array()
      assert.equal("Cannot serialise, excessive nesting (1001)", err_of(encode, t))
    end)

    it("writes large answers and keeps working after an error", function()
      local big = {}
      for i = 1, 20000 do big[i] = { id = i, name = ("n"):rep(i % 50), tags = json.array() } end
      local s = encode(big)
      assert.is_true(#s > 64 * 1024)
      assert.same(big[12345], decode(s)[12345])
      assert.has_error(function() encode({ big, print }) end)
      assert.equal('{"ok":true}', encode({ ok = true }))
      assert.equal(s, encode(big))
    end)

    it("encodes inside a finalizer that runs during an encode", function()
      local got = {}
      for i = 1, 200 do
        local p = newproxy(true)   -- LuaJIT runs __gc on userdata only
        getmetatable(p).__gc = function() got[#got + 1] = encode({ i = i, s = ("x"):rep(100) }) end
        encode({ n = i, t = ("y"):rep(3000) })
      end
      collectgarbage()
      collectgarbage()
      assert.is_true(#got > 0)
      for _, s in ipairs(got) do assert.matches('^{"[is]".*}$', s) end
    end)

    it("matches lua-cjson on random values (bounded fuzz)", function()
      local cj = require("cjson").new()
      local random = math.random
      math.randomseed(13)
      local function rstring()
        local b = {}
        for i = 1, random(0, 8) do b[i] = string.char(random(0, 255)) end
        return table.concat(b)
      end
      local function rnumber()
        local r = random(1, 5)
        if r == 1 then return random(-1000, 1000)
        elseif r == 2 then return random(-1e6, 1e6) * 1e6 + random(0, 999)   -- < 1e14
        elseif r == 3 then return random(-800, 800) / 8
        elseif r == 4 then   -- integers from 1e14 on: cjson loses digits there
          local x = (random() - 0.5) * 10 ^ random(-300, 300)
          return (x % 1 == 0 and math.abs(x) >= 1e14) and 0.5 or x
        else return random() end
      end
      local function rvalue(depth)
        local r = random(1, depth > 3 and 5 or 8)
        if r == 1 then return rstring()
        elseif r == 2 then return rnumber()
        elseif r == 3 then return random(2) == 1
        elseif r == 4 then return json.null
        elseif r == 5 then return random(3) == 1 and print or rstring()
        elseif r == 6 then   -- an array, sometimes with holes
          local t = {}
          for i = 1, random(0, 6) do if random(6) > 1 then t[i] = rvalue(depth + 1) end end
          if random(10) == 1 then t[random(1, 30)] = 1 end
          return t
        else                 -- an object, sometimes with number keys
          local t = {}
          for _ = 1, random(0, 6) do
            local k = random(4) == 1 and rnumber() or rstring()
            -- (integer keys past 2^31 overflowed cjson's int: not compared)
            if type(k) == "string" or k % 1 ~= 0 or k < 2 ^ 31 then t[k] = rvalue(depth + 1) end
          end
          return t
        end
      end
      local function plain(s) return (tostring(s):gsub("^.-:%d+: ", ""):gsub(" %(at .*%)$", "")) end
      local same, errors = 0, 0
      for _ = 1, 3000 do
        local v = rvalue(0)
        local ok1, a = pcall(cj.encode, v)
        local ok2, b = pcall(encode, v)
        assert.equal(ok1, ok2, tostring(a) .. " / " .. tostring(b))
        if ok1 then
          assert.equal((a:gsub("\\/", "/")), b)
          same = same + 1
        else
          assert.equal(plain(a), plain(b))
          errors = errors + 1
        end
      end
      assert.is_true(same > 1000 and errors > 100)
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


describe("luaserve.json in sync functions", function()
  local client
  setup(function()
    client = testing.client("spec/fixtures/json_sync_app.lua", { threads = 2 })
  end)
  teardown(function() client:close() end)

  it("encodes in a pool thread as on the loop", testing.async(function()
    local s = luaserve.await(client.app.fns.encode({ 1, json.array(), json.null }))
    assert.same({ id = 2 ^ 60, items = json.array(), path = "/a/b", v = { 1, json.array(), json.null } },
      decode(s))
    assert.matches('"id":1152921504606846976', s)
    assert.matches('"items":%[%]', s)
    assert.matches('"path":"/a/b"', s)
    assert.matches('"v":%[1,%[%],null%]', s)
  end))

  it("keeps each thread's buffer its own", testing.async(function()
    local a = client.app.fns.encode_many(300, 7)
    local b = client.app.fns.encode_many(300, 11)
    local la, sa = luaserve.await(a)
    local lb, sb = luaserve.await(b)
    assert.is_true(la > 64 * 1024 and lb > la)
    assert.equal('{"seed":7}', sa)
    assert.equal('{"seed":11}', sb)
  end))

  it("nests 1000 tables deep in a pool thread", testing.async(function()
    -- 500 arrays "[" .. "]", 499 objects '{"k":' .. "}", the innermost "{}"
    assert.equal(500 * 2 + 499 * 6 + 2, luaserve.await(client.app.fns.nest(1000)))
    assert.matches("excessive nesting %(1001%)$", luaserve.await(client.app.fns.nest(1001)))
  end))

  it("raises in a pool thread with the path", testing.async(function()
    local ok, err = luaserve.await(client.app.fns.encode_error())
    assert.is_false(ok)
    assert.matches("Cannot serialise function: type not supported %(at a%[1%]%)", err)
  end))
end)
