-- luaserve.inputs: routes that declare what they take, through the real
-- core: req.valid, defaults, the 422 list with every problem (path, query,
-- headers, body, in that order), 415, typed path parameters in the same
-- shape, sync routes, --validate-responses, and declarations that are
-- wrong at registration.

local luaserve = require "luaserve"
local schema = require "luaserve.schema"
local inputs = require "luaserve.inputs"
local testing = require "luaserve.testing"
local json = require "luaserve.json"

local Item = schema.object{ name = "InputsItem", fields = {
  name = schema.string{ min_length = 1 },
  price = schema.number{ exclusive_min = 0 },
  tags = schema.array{ items = schema.string(), unique = true, default = {} },
}, additional = false }

local app = luaserve.app()
app:post("/items/{id:int}", {
  path = { id = schema.integer{ min = 1 } },
  query = { limit = schema.integer{ min = 1, max = 100, default = 10 },
    flag = schema.boolean{ optional = true }, ids = schema.array{ items = schema.integer(), optional = true } },
  headers = { x_token = schema.string{ min_length = 3 } },
  body = Item,
}, function(req)
  return 201, { valid = req.valid, id_param = req.params.id }
end)
app:get("/plain/{id:int}", function(req) return { id = req.params.id } end)
app:get("/uuid/{key}", { path = { key = schema.string{ format = "uuid" } } },
  function(req) return { key = req.valid.path.key } end)
app:post("/optional", { body = schema.object{ fields = { n = schema.integer{ default = 1 } }, optional = true } },
  function(req) return { body = req.valid.body or "none" } end)
app:get("/answer/{n:int}", { response = { [200] = schema.object{ fields = { n = schema.integer{ max = 5 } } } } },
  function(req) return { n = req.params.n } end)
-- handler first, options after: the older order still works
app:get("/old", function(req) return req.valid.query end, { query = { q = schema.string{ default = "x" } } })

local client
setup(function() client = testing.client(app) end)
teardown(function() client:close() end)

local function post(target, body, headers)
  local h = { ["X-Token"] = "abcd", ["Content-Type"] = "application/json" }
  for k, v in pairs(headers or {}) do h[k] = v end
  return client:post(target, { body = body, headers = h })
end


describe("declared inputs", function()
  it("give the handler converted values with defaults", function()
    local res = post("/items/3?flag=yes&ids=1&ids=2", '{"name":"pen","price":2.5}')
    assert.equal(201, res.status)
    local v = res:json()
    assert.same({ path = { id = 3 }, query = { limit = 10, flag = true, ids = { 1, 2 } },
      headers = { x_token = "abcd" }, body = { name = "pen", price = 2.5, tags = {} } }, v.valid)
    assert.equal(3, v.id_param)
    assert.matches('"tags":%[%]', res.body)   -- an empty list stays a list
  end)

  it("answer 422 listing every problem in FastAPI's shape", function()
    local res = post("/items/0?limit=abc&flag=maybe", '{"name":"","price":-1,"tags":["a","a"],"x":1}',
      { ["X-Token"] = "ab" })
    assert.equal(422, res.status)
    assert.matches("^application/json", res.headers["content-type"])
    local got = {}
    for i, e in ipairs(res:json().detail) do
      got[i] = { e.type, table.concat(e.loc, "."), e.input }
    end
    assert.same({
      { "greater_than_equal", "path.id", 0 },
      { "bool_parsing", "query.flag", "maybe" },
      { "int_parsing", "query.limit", "abc" },
      { "string_too_short", "header.x-token", "ab" },
      { "string_too_short", "body.name", "" },
      { "greater_than", "body.price", -1 },
      { "unique_items", "body.tags.1", "a" },
      { "extra_forbidden", "body.x", 1 },
    }, got)
    local first = res:json().detail[1]
    assert.same({ type = "greater_than_equal", loc = { "path", "id" },
      msg = "Input should be greater than or equal to 1", input = 0, ctx = { ge = 1 } }, first)
  end)

  it("a missing body, header or query value is 'missing' with a null input", function()
    local res = client:post("/items/1")
    assert.equal(422, res.status)
    assert.same({
      { type = "missing", loc = { "header", "x-token" }, msg = "Field required", input = json.null },
      { type = "missing", loc = { "body" }, msg = "Field required", input = json.null },
    }, res:json().detail)
  end)

  it("bad JSON is json_invalid; another Content-Type is 415", function()
    local res = post("/items/1", '{"name":')
    assert.equal(422, res.status)
    local e = res:json().detail[1]
    assert.equal("json_invalid", e.type)
    assert.same({ "body" }, e.loc)
    assert.equal("JSON decode error", e.msg)
    assert.is_string(e.ctx.error)
    res = post("/items/1", "name=pen", { ["Content-Type"] = "application/x-www-form-urlencoded" })
    assert.equal(415, res.status)
    assert.equal("Content-Type must be application/json, got application/x-www-form-urlencoded",
      res:json().detail)
    -- application/*+json and a charset are JSON too
    assert.equal(201, post("/items/1", '{"name":"a","price":1}',
      { ["Content-Type"] = "application/merge-patch+json; charset=utf-8" }).status)
  end)

  it("a body that is not an object is named as such", function()
    local res = post("/items/1", '[1,2]')
    assert.same({ type = "model_type", loc = { "body" }, input = { 1, 2 },
      msg = "Input should be a valid dictionary or object to extract fields from (InputsItem)" },
      res:json().detail[1])
  end)

  it("typed path parameters without a schema answer in the same shape", function()
    local res = client:get("/plain/abc")
    assert.equal(422, res.status)
    assert.same({ { type = "int_parsing", loc = { "path", "id" },
      msg = "Input should be a valid integer, unable to parse string as an integer", input = "abc" } },
      res:json().detail)
    res = client:get("/uuid/not-a-uuid")
    assert.same({ type = "uuid_parsing", loc = { "path", "key" }, msg = "Input should be a valid UUID",
      input = "not-a-uuid" }, res:json().detail[1])
    assert.equal(200, client:get("/uuid/123e4567-e89b-12d3-a456-426614174000").status)
  end)

  it("an optional body may be left out", function()
    assert.same({ body = "none" }, client:post("/optional"):json())
    assert.same({ body = { n = 1 } }, client:post("/optional", { json = {} }):json())
  end)

  it("the options may come after the handler", function()
    assert.same({ q = "x" }, client:get("/old"):json())
  end)

  it("--validate-responses: an answer that does not match its schema is a logged 500", function()
    assert.equal(200, client:get("/answer/9").status)   -- off: not checked
    inputs.validate_responses = true
    local res, good
    local ok, out = pcall(testing.logged, function()
      res = client:get("/answer/9")
      good = client:get("/answer/3")
    end)
    inputs.validate_responses = false
    assert(ok, out)
    assert.equal(500, res.status)
    assert.equal(200, good.status)
    assert.matches("does not match its declared schema for status 200", out)
    assert.matches("response%.n: Input should be less than or equal to 5", out)
  end)
end)


describe("declared forms", function()
  local B = "----luaserveInputsBoundary"
  local MP = "multipart/form-data; boundary=" .. B
  local files = dofile((debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "spec")
    .. "/files_helper.lua")
  local function multipart(parts) return files.multipart(parts, B) end

  local fapp = luaserve.app()
  fapp:post("/profile", { form = {
    name = schema.string{ min_length = 1 },
    age = schema.integer{ min = 0 },
    tags = schema.array{ items = schema.string(), optional = true },
    newsletter = schema.boolean{ default = false },
    photo = schema.file{ optional = true, max_size = 10, content_types = { "image/png" } },
  } }, function(req)
    local v = req.valid.form
    local photo = v.photo
    local text
    if photo then
      local f = luaserve.await(photo:open())
      text = luaserve.await(f:read(1024))
      luaserve.await(f:close())
    end
    return { name = v.name, age = v.age, tags = v.tags, newsletter = v.newsletter,
      photo = photo and { filename = photo.filename, size = photo.size, text = text } }
  end)
  fapp:post("/optional-form", { form = { q = schema.string{ default = "none" } } },
    function(req) return req.valid.form end)
  local fc
  setup(function() fc = testing.client(fapp) end)
  teardown(function() fc:close() end)
  local URLENC = { ["Content-Type"] = "application/x-www-form-urlencoded" }

  it("convert urlencoded fields like query values", function()
    local res = fc:post("/profile", { body = "name=Ann%20B&age=42&tags=a&tags=b&newsletter=on",
      headers = URLENC })
    assert.equal(200, res.status)
    assert.same({ name = "Ann B", age = 42, tags = { "a", "b" }, newsletter = true }, res:json())
  end)

  it("give a multipart file field as its upload", function()
    local res = fc:post("/profile", { headers = { ["Content-Type"] = MP }, body = multipart{
      { name = "name", value = "Bo" }, { name = "age", value = "7" },
      { name = "photo", filename = "p.png", type = "image/png", value = "PNGDATA" } } })
    assert.equal(200, res.status)
    assert.same({ name = "Bo", age = 7, newsletter = false,
      photo = { filename = "p.png", size = 7, text = "PNGDATA" } }, res:json())
  end)

  it("answer 422 at body.<field> for every problem", function()
    local res = fc:post("/profile", { body = "age=-1&age=x", headers = URLENC })
    assert.equal(422, res.status)
    local d = res:json().detail
    assert.same({ "body", "age" }, d[1].loc)
    assert.equal("greater_than_equal", d[1].type)
    assert.same({ "body", "name" }, d[2].loc)
    assert.equal("missing", d[2].type)
    -- a file field sent as text, a file too big, a file of another type
    for _, case in ipairs{
      { { name = "photo", value = "not a file" }, "file_type" },
      { { name = "photo", filename = "big.png", type = "image/png", value = "0123456789AB" },
        "file_too_large" },
      { { name = "photo", filename = "p.gif", type = "image/gif", value = "GIF" },
        "file_type_not_allowed" },
    } do
      res = fc:post("/profile", { headers = { ["Content-Type"] = MP }, body = multipart{
        { name = "name", value = "Bo" }, { name = "age", value = "7" }, case[1] } })
      assert.equal(422, res.status)
      assert.equal(case[2], res:json().detail[1].type)
      assert.same({ "body", "photo" }, res:json().detail[1].loc)
    end
  end)

  it("a JSON body is 415; no body at all is an empty form", function()
    local res = fc:post("/profile", { body = '{"name":"x"}',
      headers = { ["Content-Type"] = "application/json" } })
    assert.equal(415, res.status)
    res = fc:post("/optional-form", { body = "" })
    assert.equal(200, res.status)
    assert.same({ q = "none" }, res:json())
    res = fc:post("/profile", { body = "" })
    assert.equal(422, res.status)
    assert.equal(2, #res:json().detail)   -- name and age missing
  end)

  it("are documented as the request body's fields", function()
    local doc = require("luaserve.openapi").document(fapp)
    local rb = doc.paths["/profile"].post.requestBody
    assert.is_true(rb.required)
    local s = rb.content["multipart/form-data"].schema   -- it has a file
    assert.same({ photo = { contentType = "image/png" } }, rb.content["multipart/form-data"].encoding)
    assert.same({ "age", "name" }, s.required)
    assert.same({ type = "string", format = "binary" },
      { type = s.properties.photo.type, format = s.properties.photo.format })
    assert.equal("integer", s.properties.age.type)
    local opt = doc.paths["/optional-form"].post.requestBody
    assert.is_false(opt.required)
    assert.truthy(opt.content["application/x-www-form-urlencoded"])
    assert.truthy(doc.paths["/profile"].post.responses["422"])
  end)
end)


describe("declarations", function()
  it("are checked when the route is added", function()
    local a = luaserve.app()
    assert.has_error(function() a:get("/x", { body = "Item" }, function() end) end,
      "route GET /x: body must be a schema")
    assert.has_error(function() a:get("/x/{id}", { path = { nope = schema.integer() } }, function() end) end,
      "route GET /x/{id}: path.nope is not a parameter of the path")
    assert.has_error(function() a:get("/y", { query = { o = schema.object{ fields = {} } } }, function() end) end,
      "route GET /y: query.o: objects cannot come from a query")
    assert.has_error(function() a:get("/z", { response = { ok = schema.integer() } }, function() end) end)
    assert.has_error(function() a:post("/f", { body = schema.object{ fields = {} },
      form = { a = schema.string() } }, function() end) end,
      "route POST /f: a route declares a body or a form, not both")
    assert.has_error(function() a:get("/q", { query = { f = schema.file() } }, function() end) end,
      "route GET /q: query.f: files come only in a form (form = {...})")
  end)

  it("cost nothing on routes that declare none", function()
    local a = luaserve.app()
    local r = a:get("/free", function() end)
    assert.is_nil(r.validate)
  end)
end)


describe("sync routes", function()
  it("get req.valid, checked on the loop", function()
    local c = testing.client("spec/fixtures/inputs_sync_app.lua")
    local res = c:get("/sync/sum?a=2&b=3")
    assert.equal(200, res.status)
    assert.same({ sum = 5, pool = true }, res:json())
    res = c:get("/sync/sum?a=x")
    assert.equal(422, res.status)
    assert.equal("int_parsing", res:json().detail[1].type)
    -- a declared multipart form: its fields and its file reach the pool
    local files = dofile((debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "spec")
      .. "/files_helper.lua")
    local B = "----luaserveSyncForm"
    res = c:post("/sync/profile", { headers = { ["Content-Type"] = "multipart/form-data; boundary=" .. B },
      body = files.multipart({ { name = "name", value = "Cy" },
        { name = "photo", filename = "c.bin", value = "pool bytes" } }, B) })
    assert.equal(200, res.status)
    assert.same({ name = "Cy", filename = "c.bin", content = "pool bytes", pool = true }, res:json())
    c:close()
  end)
end)
