-- luaserve.schema: every keyword with a value that passes and one that
-- fails (the exact type, loc, msg and ctx), defaults, nested objects and
-- arrays, several problems at once, values from strings, JSON Schema out.

local schema = require "luaserve.schema"
local json = require "luaserve.json"

local null = json.null


-- check(s, value[, opts]) -> value, or nil and the problems
local function check(s, v, opts)
  return schema.compile(s, opts)(v, { "body" })
end


-- The one problem of a failing value.
local function problem(s, v, opts)
  local out, errs = check(s, v, opts)
  assert.is_nil(out)
  assert.equal(1, #errs)
  return errs[1]
end


describe("luaserve.schema", function()
  describe("string", function()
    it("takes strings and refuses the rest", function()
      assert.equal("x", check(schema.string(), "x"))
      local e = problem(schema.string(), 5)
      assert.same({ type = "string_type", loc = { "body" }, msg = "Input should be a valid string",
        input = 5 }, e)
      assert.equal("string_type", problem(schema.string(), null).type)
      assert.equal("string_type", problem(schema.string(), {}).type)
    end)

    it("min_length and max_length count characters, not bytes", function()
      local s = schema.string{ min_length = 2, max_length = 3 }
      assert.equal("ab", check(s, "ab"))
      assert.equal("äöü", check(s, "äöü"))   -- 6 bytes, 3 characters
      assert.same({ type = "string_too_short", loc = { "body" },
        msg = "String should have at least 2 characters", input = "a",
        ctx = { min_length = 2 } }, problem(s, "a"))
      assert.same({ type = "string_too_long", loc = { "body" },
        msg = "String should have at most 3 characters", input = "abcd",
        ctx = { max_length = 3 } }, problem(s, "abcd"))
      assert.equal("String should have at least 1 character",
        problem(schema.string{ min_length = 1 }, "").msg)
    end)

    it("pattern (a Lua pattern)", function()
      local s = schema.string{ pattern = "^%u%l+$" }
      assert.equal("Ann", check(s, "Ann"))
      assert.same({ type = "string_pattern_mismatch", loc = { "body" },
        msg = "String should match pattern '^%u%l+$'", input = "ann",
        ctx = { pattern = "^%u%l+$" } }, problem(s, "ann"))
      assert.has_error(function() schema.string{ pattern = "[" } end)
    end)

    it("enum", function()
      local s = schema.string{ enum = { "red", "green", "blue" } }
      assert.equal("red", check(s, "red"))
      assert.same({ type = "enum", loc = { "body" }, msg = "Input should be 'red', 'green' or 'blue'",
        input = "pink", ctx = { expected = "'red', 'green' or 'blue'" } }, problem(s, "pink"))
    end)

    local formats = {
      email = { good = { "ann@example.com", "a.b+c@sub.example.org" },
        bad = { "ann", "ann@", "@example.com", "a..b@example.com", "ann@example", "a b@example.com" },
        type = "value_error" },
      uuid = { good = { "123e4567-e89b-12d3-a456-426614174000" },
        bad = { "123e4567e89b12d3a456426614174000", "123e4567-e89b-12d3-a456-42661417400g" },
        type = "uuid_parsing" },
      date = { good = { "2024-02-29", "1999-12-31" }, bad = { "2023-02-29", "2024-13-01", "24-01-01" },
        type = "date_parsing" },
      ["date-time"] = { good = { "2024-02-29T12:34:56Z", "2024-02-29T12:34:56.123+02:00" },
        bad = { "2024-02-29T12:34:56", "2024-02-29", "2024-02-29T25:00:00Z" },
        type = "datetime_parsing" },
      time = { good = { "12:34:56", "23:59:59.5Z" }, bad = { "24:00:00", "12:34" },
        type = "time_parsing" },
      uri = { good = { "https://example.com/x?y=1", "mailto:ann@example.com" },
        bad = { "example.com", "http://a b" }, type = "url_parsing" },
      ipv4 = { good = { "127.0.0.1", "255.255.255.255" }, bad = { "256.1.1.1", "1.2.3", "01.2.3.4" },
        type = "ip_v4_address" },
    }
    for name, f in pairs(formats) do
      it("format " .. name, function()
        local s = schema.string{ format = name }
        for _, v in ipairs(f.good) do assert.equal(v, check(s, v)) end
        for _, v in ipairs(f.bad) do
          local e = problem(s, v)
          assert.equal(f.type, e.type, v)
          assert.equal(v, e.input)
        end
      end)
    end

    it("refuses unknown formats and options when defined", function()
      assert.has_error(function() schema.string{ format = "colour" } end)
      assert.has_error(function() schema.string{ minLength = 1 } end,
        "schema.string: unknown option 'minLength'")
    end)
  end)

  describe("integer and number", function()
    it("integer takes whole numbers only", function()
      assert.equal(3, check(schema.integer(), 3))
      assert.equal(3, check(schema.integer(), 3.0))
      assert.same({ type = "int_from_float", loc = { "body" },
        msg = "Input should be a valid integer, got a number with a fractional part",
        input = 1.5 }, problem(schema.integer(), 1.5))
      assert.same({ type = "int_type", loc = { "body" }, msg = "Input should be a valid integer",
        input = "3" }, problem(schema.integer(), "3"))   -- JSON: a string is not a number
      assert.equal("int_type", problem(schema.integer(), true).type)
    end)

    it("number takes any finite number", function()
      assert.equal(1.5, check(schema.number(), 1.5))
      assert.same({ type = "float_type", loc = { "body" }, msg = "Input should be a valid number",
        input = "x" }, problem(schema.number(), "x"))
      local e = problem(schema.number(), math.huge)
      assert.equal("finite_number", e.type)
      assert.equal("inf", e.input)   -- as text: the 422 answer must encode
    end)

    it("min, max, exclusive bounds, multiple_of", function()
      local cases = {
        { { min = 1 }, 1, 0, "greater_than_equal", "Input should be greater than or equal to 1", { ge = 1 } },
        { { max = 10 }, 10, 11, "less_than_equal", "Input should be less than or equal to 10", { le = 10 } },
        { { exclusive_min = 0 }, 0.5, 0, "greater_than", "Input should be greater than 0", { gt = 0 } },
        { { exclusive_max = 5 }, 4.9, 5, "less_than", "Input should be less than 5", { lt = 5 } },
        { { multiple_of = 0.5 }, 2.5, 2.2, "multiple_of", "Input should be a multiple of 0.5", { multiple_of = 0.5 } },
      }
      for _, c in ipairs(cases) do
        local s = schema.number(c[1])
        assert.equal(c[2], check(s, c[2]))
        assert.same({ type = c[4], loc = { "body" }, msg = c[5], input = c[3], ctx = c[6] },
          problem(s, c[3]))
      end
      assert.equal(15, check(schema.integer{ multiple_of = 5 }, 15))
      assert.equal("multiple_of", problem(schema.integer{ multiple_of = 5 }, 16).type)
    end)

    it("enum of numbers", function()
      local s = schema.integer{ enum = { 1, 2, 3 } }
      assert.equal(2, check(s, 2))
      assert.equal("Input should be 1, 2 or 3", problem(s, 4).msg)
    end)
  end)

  describe("boolean", function()
    it("takes true and false only (from JSON)", function()
      assert.equal(false, check(schema.boolean(), false))
      assert.same({ type = "bool_type", loc = { "body" }, msg = "Input should be a valid boolean",
        input = "true" }, problem(schema.boolean(), "true"))
    end)
  end)

  describe("values from strings (query, headers, path)", function()
    local function from_string(s, v) return schema.compile(s, { mode = "string" })(v, { "query", "x" }) end

    it("parses integers, numbers and booleans", function()
      assert.equal(42, from_string(schema.integer(), "42"))
      assert.equal(-7, from_string(schema.integer(), " -7 "))
      assert.equal(2.5, from_string(schema.number(), "2.5"))
      assert.equal(1e3, from_string(schema.number(), "1e3"))
      for _, t in ipairs({ "true", "1", "yes", "on", "TRUE" }) do
        assert.equal(true, from_string(schema.boolean(), t), t)
      end
      for _, f in ipairs({ "false", "0", "no", "off" }) do
        assert.equal(false, from_string(schema.boolean(), f), f)
      end
    end)

    it("names what did not parse, with the text as input", function()
      local _, e = from_string(schema.integer(), "abc")
      assert.same({ { type = "int_parsing", loc = { "query", "x" },
        msg = "Input should be a valid integer, unable to parse string as an integer",
        input = "abc" } }, e)
      for _, bad in ipairs({ "1.5", "0x10", "", "1e3" }) do
        assert.is_nil((from_string(schema.integer(), bad)), bad)
      end
      _, e = from_string(schema.number(), "nope")
      assert.equal("float_parsing", e[1].type)
      _, e = from_string(schema.boolean(), "maybe")
      assert.same({ type = "bool_parsing", loc = { "query", "x" },
        msg = "Input should be a valid boolean, unable to interpret input", input = "maybe" }, e[1])
      _, e = from_string(schema.integer{ max = 100 }, "500")
      assert.same({ type = "less_than_equal", loc = { "query", "x" },
        msg = "Input should be less than or equal to 100", input = "500", ctx = { le = 100 } }, e[1])
    end)
  end)

  describe("array", function()
    it("items, min_items, max_items, unique", function()
      local s = schema.array{ items = schema.integer(), min_items = 1, max_items = 3, unique = true }
      assert.same({ 1, 2 }, check(s, { 1, 2 }))
      assert.same({ type = "list_type", loc = { "body" }, msg = "Input should be a valid list",
        input = "x" }, problem(s, "x"))
      assert.equal("list_type", problem(s, { a = 1 }).type)   -- an object is not a list
      assert.same({ type = "too_short", loc = { "body" },
        msg = "List should have at least 1 item after validation, not 0",
        input = json.array(), ctx = { field_type = "List", min_length = 1 } }, problem(s, json.array()))
      assert.same({ type = "too_long", loc = { "body" },
        msg = "List should have at most 3 items after validation, not 4",
        input = { 1, 2, 3, 4 }, ctx = { field_type = "List", max_length = 3 } }, problem(s, { 1, 2, 3, 4 }))
      assert.same({ type = "unique_items", loc = { "body", 2 },
        msg = "List should have unique items: item 2 repeats item 0", input = 1 }, problem(s, { 1, 2, 1 }))
      -- items: the index in loc counts from 0, like pydantic's
      assert.same({ type = "int_type", loc = { "body", 1 }, msg = "Input should be a valid integer",
        input = "b" }, problem(s, { 1, "b" }))
    end)

    it("unique compares tables by value", function()
      local s = schema.array{ unique = true }
      assert.is_nil((check(s, json.decode('[{"a":1,"b":[2]},{"b":[2],"a":1}]'))))
      assert.truthy(check(s, json.decode('[{"a":1},{"a":2}]')))
    end)
  end)

  describe("object", function()
    local Item = schema.object{ fields = {
      name = schema.string{ min_length = 1 },
      price = schema.number{ exclusive_min = 0 },
      tags = schema.array{ items = schema.string(), unique = true, default = {} },
      note = schema.string{ optional = true },
      size = schema.string{ enum = { "s", "m" }, default = "m" },
    } }

    it("required fields, defaults, optional fields", function()
      local v = check(Item, json.decode('{"name":"pen","price":2}'))
      assert.equal("pen", v.name)
      assert.equal("m", v.size)
      assert.equal(json.array_mt, getmetatable(v.tags))   -- [] in JSON
      assert.equal('[]', json.encode(v.tags))
      assert.is_nil(v.note)
      local a = check(Item, json.decode('{"name":"a","price":1}'))
      local b = check(Item, json.decode('{"name":"b","price":1}'))
      a.tags[1] = "x"
      assert.is_nil(b.tags[1])   -- each value its own copy of a default
    end)

    it("lists every problem, not just the first", function()
      local input = json.decode('{"name":"","tags":["a",3,"a"],"size":"xl"}')
      local out, errs = check(Item, input)
      assert.is_nil(out)
      local got = {}
      for i, e in ipairs(errs) do got[i] = { e.type, table.concat(e.loc, "."), e.msg } end
      assert.same({
        { "string_too_short", "body.name", "String should have at least 1 character" },
        { "missing", "body.price", "Field required" },
        { "enum", "body.size", "Input should be 's' or 'm'" },
        { "string_type", "body.tags.1", "Input should be a valid string" },
        { "unique_items", "body.tags.2", "List should have unique items: item 2 repeats item 0" },
      }, got)
      assert.equal(input, errs[2].input)   -- a missing field: its object, as pydantic does
    end)

    it("additional fields: kept, forbidden, or checked", function()
      assert.equal(1, check(schema.object{ fields = {} }, { x = 1 }).x)
      local closed = schema.object{ fields = { a = schema.integer() }, additional = false }
      assert.same({ type = "extra_forbidden", loc = { "body", "x" }, msg = "Extra inputs are not permitted",
        input = 1 }, problem(closed, { a = 1, x = 1 }))
      local typed = schema.object{ fields = {}, additional = schema.integer() }
      assert.truthy(check(typed, { x = 1, y = 2 }))
      assert.same({ "body", "y" }, problem(typed, { x = 1, y = "no" }).loc)
    end)

    it("an explicit required list", function()
      local s = schema.object{ fields = { a = schema.integer(), b = schema.integer() }, required = { "b" } }
      assert.truthy(check(s, { b = 1 }))
      assert.same({ "body", "b" }, problem(s, { a = 1 }).loc)
      assert.has_error(function() schema.object{ fields = {}, required = { "zz" } } end)
    end)

    it("refuses lists and scalars", function()
      assert.same({ type = "dict_type", loc = { "body" }, msg = "Input should be a valid dictionary",
        input = 1 }, problem(schema.object{ fields = {} }, 1))
      assert.equal("dict_type", problem(schema.object{ fields = {} }, { 1, 2 }).type)
      local named = schema.object{ name = "SpecThing", fields = {} }
      assert.equal("model_type", problem(named, "x").type)
    end)

    it("nested objects and arrays name the whole path", function()
      local Order = schema.object{ fields = {
        lines = schema.array{ items = schema.object{ fields = {
          sku = schema.string{ pattern = "^%u+%-%d+$" },
          qty = schema.integer{ min = 1 },
        } } },
        customer = schema.object{ fields = { email = schema.string{ format = "email" } } },
      } }
      local _, errs = check(Order, json.decode(
        '{"lines":[{"sku":"AB-1","qty":1},{"sku":"x","qty":0}],"customer":{"email":"nope"}}'))
      assert.same({ "body", "customer", "email" }, errs[1].loc)
      assert.same({ "body", "lines", 1, "qty" }, errs[2].loc)
      assert.same({ "body", "lines", 1, "sku" }, errs[3].loc)
      assert.equal(3, #errs)
    end)
  end)

  describe("nullable, one_of, named schemas and references", function()
    it("nullable takes JSON null", function()
      assert.equal(null, check(schema.integer{ nullable = true }, null))
      assert.equal(null, check(schema.nullable(schema.string()), null))
      assert.equal("int_type", problem(schema.integer(), null).type)
    end)

    it("one_of: exactly one must match", function()
      local s = schema.one_of{ schema.integer(), schema.string{ min_length = 2 } }
      assert.equal(5, check(s, 5))
      assert.equal("ab", check(s, "ab"))
      local _, errs = check(s, "a")
      assert.same({ "body", "integer" }, errs[1].loc)
      assert.same({ "body", "string" }, errs[2].loc)
      local both = schema.one_of{ schema.number(), schema.integer() }
      local e = problem(both, 3)
      assert.equal("one_of_many", e.type)
      assert.equal("Input should match exactly one of number or integer, it matches 2", e.msg)
    end)

    it("a recursive named schema through schema.ref", function()
      local Node = schema.object{ name = "SpecNode", fields = {
        value = schema.integer(),
        children = schema.array{ items = schema.ref("SpecNode"), default = {} },
      } }
      local v = check(Node, json.decode('{"value":1,"children":[{"value":2,"children":[{"value":3}]}]}'))
      assert.equal(3, v.children[1].children[1].value)
      assert.equal(json.array_mt, getmetatable(v.children[1].children[1].children))
      local _, errs = check(Node, json.decode('{"value":1,"children":[{"value":2,"children":[{"value":"x"}]}]}'))
      assert.same({ "body", "children", 0, "children", 0, "value" }, errs[1].loc)
      assert.has_error(function() schema.compile(schema.ref("NoSuchSchema")) end,
        "schema.ref: no schema is named 'NoSuchSchema'")
    end)
  end)

  describe("checks only (responses)", function()
    it("fills in nothing", function()
      local s = schema.object{ fields = { a = schema.integer{ default = 1 } } }
      local v = check(s, {}, { defaults = false })
      assert.is_nil(v.a)
    end)
  end)

  describe("JSON Schema", function()
    it("writes each keyword as JSON Schema 2020-12", function()
      local Pet = schema.object{ name = "SpecPet", fields = { name = schema.string() } }
      local s = schema.object{ description = "an order", fields = {
        s = schema.string{ min_length = 1, max_length = 5, pattern = "^%d+%.%a$", enum = { "1.a" }, format = "uuid" },
        i = schema.integer{ min = 1, max = 9, exclusive_min = 0, exclusive_max = 10, multiple_of = 1 },
        n = schema.number{ nullable = true, default = 1.5 },
        b = schema.boolean{ deprecated = true },
        a = schema.array{ items = schema.string(), min_items = 1, max_items = 2, unique = true },
        o = schema.one_of{ schema.integer(), Pet },
        p = schema.nullable(Pet),
        x = schema.any(),
      }, required = { "s" }, additional = false }
      local comp = { schemas = {}, owners = {} }
      assert.same({
        type = "object", description = "an order", additionalProperties = false, required = { "s" },
        properties = {
          s = { type = "string", minLength = 1, maxLength = 5, pattern = "^[0-9]+\\.[A-Za-z]$",
            enum = { "1.a" }, format = "uuid" },
          i = { type = "integer", minimum = 1, maximum = 9, exclusiveMinimum = 0, exclusiveMaximum = 10,
            multipleOf = 1 },
          n = { type = { "number", "null" }, default = 1.5 },
          b = { type = "boolean", deprecated = true },
          a = { type = "array", items = { type = "string" }, minItems = 1, maxItems = 2, uniqueItems = true },
          o = { oneOf = { { type = "integer" }, { ["$ref"] = "#/components/schemas/SpecPet" } } },
          p = { anyOf = { { ["$ref"] = "#/components/schemas/SpecPet" }, { type = "null" } } },
          x = {},
        },
      }, schema.to_json(s, comp))
      assert.same({ SpecPet = { type = "object", title = "SpecPet", required = { "name" },
        properties = { name = { type = "string" } } } }, comp.schemas)
    end)

    it("translates Lua patterns to ECMA regexes", function()
      assert.equal("^[0-9]+-[A-Za-z]*$", schema.pattern_to_regex("^%d+%-%a*$"))
      assert.equal("^a.*?b$", schema.pattern_to_regex("^a.-b$"))
      assert.equal("[^ \\t\\n\\r\\f\\v]", schema.pattern_to_regex("%S"))
      assert.is_nil(schema.pattern_to_regex("%b()"))
    end)
  end)
end)
