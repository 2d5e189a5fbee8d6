-- luaserve.openapi: the document of a small app, compared key by key;
-- /openapi.json, /docs and /redoc through the real core; docs = false.

local luaserve = require "luaserve"
local schema = require "luaserve.schema"
local openapi = require "luaserve.openapi"
local testing = require "luaserve.testing"

local Pet = schema.object{ name = "OpenapiPet", description = "a pet", fields = {
  name = schema.string{ min_length = 1 },
  age = schema.integer{ min = 0, optional = true },
} }


local function small_app(opts)
  local app = luaserve.app(opts or { title = "Pets", version = "1.2.3", description = "A pet shop" })
  app:get("/pets/{id:int}", { summary = "A pet", tags = { "pets" }, response = Pet },
    function(req) return { name = "rex" } end)
  app:post("/pets", { summary = "Add a pet", description = "Adds one.", tags = { "pets" },
    body = Pet, query = { dry_run = schema.boolean{ default = false, description = "check only" } },
    headers = { x_request_id = schema.string{ optional = true } },
    response = { [201] = { schema = Pet, description = "Added" }, [409] = { description = "Taken" } },
    deprecated = true }, function(req) return 201, req.valid.body end)
  app:get("/health", function() return "ok" end)
  app:get("/hidden", { include_in_schema = false }, function() return "" end)
  app:websocket("/ws", function() end)
  return app
end


describe("luaserve.openapi", function()
  it("describes a small app", function()
    local doc = openapi.document(small_app())
    assert.equal("3.1.0", doc.openapi)
    assert.same({ title = "Pets", version = "1.2.3", description = "A pet shop" }, doc.info)
    local paths = {}
    for p in pairs(doc.paths) do paths[#paths + 1] = p end
    table.sort(paths)
    assert.same({ "/health", "/pets", "/pets/{id}" }, paths)   -- no hidden, no WebSocket
    local VALIDATION = { description = "Validation Error", content = { ["application/json"] = {
      schema = { ["$ref"] = "#/components/schemas/HTTPValidationError" } } } }
    local PET = { ["$ref"] = "#/components/schemas/OpenapiPet" }
    assert.same({ get = {
      summary = "A pet", tags = { "pets" }, operationId = "get_pets_id",
      parameters = { { name = "id", ["in"] = "path", required = true, schema = { type = "integer" } } },
      responses = {
        ["200"] = { description = "Successful Response", content = { ["application/json"] = { schema = PET } } },
        ["422"] = VALIDATION,
      },
    } }, doc.paths["/pets/{id}"])
    assert.same({ post = {
      summary = "Add a pet", description = "Adds one.", tags = { "pets" }, operationId = "post_pets",
      deprecated = true,
      parameters = {
        { name = "dry_run", ["in"] = "query", description = "check only",
          schema = { type = "boolean", default = false, description = "check only" } },
        { name = "x-request-id", ["in"] = "header", schema = { type = "string" } },
      },
      requestBody = { required = true, content = { ["application/json"] = { schema = PET } } },
      responses = {
        ["201"] = { description = "Added", content = { ["application/json"] = { schema = PET } } },
        ["409"] = { description = "Taken" },
        ["422"] = VALIDATION,
      },
    } }, doc.paths["/pets"])
    assert.same({ get = { operationId = "get_health", responses = { ["200"] = {
      description = "Successful Response", content = { ["application/json"] = { schema = {} } } } } } },
      doc.paths["/health"])
    assert.same({ "HTTPValidationError", "OpenapiPet", "ValidationError" }, (function()
      local names = {}
      for n in pairs(doc.components.schemas) do names[#names + 1] = n end
      table.sort(names)
      return names
    end)())
    assert.same({ type = "object", title = "OpenapiPet", description = "a pet", required = { "name" },
      properties = { name = { type = "string", minLength = 1 }, age = { type = "integer", minimum = 0 } } },
      doc.components.schemas.OpenapiPet)
    assert.same({ "loc", "msg", "type" }, doc.components.schemas.ValidationError.required)
  end)

  it("refuses two different schemas with one name", function()
    local app = luaserve.app()
    app:post("/a", { body = schema.object{ name = "OpenapiTwice", fields = {} } }, function() end)
    app:post("/b", { body = schema.object{ name = "OpenapiTwice", fields = { x = schema.integer() } } },
      function() end)
    assert.has_error(function() openapi.document(app) end,
      "openapi: two different schemas are named 'OpenapiTwice'")
  end)

  it("is served at /openapi.json, with /docs beside it", function()
    local client = testing.client(small_app())
    local res = client:get("/openapi.json")
    assert.equal(200, res.status)
    assert.equal("application/json", res.headers["content-type"])
    assert.equal("Pets", res:json().info.title)
    assert.is_nil(res:json().paths["/openapi.json"])
    local docs = client:get("/docs")
    assert.equal(200, docs.status)
    assert.matches("^text/html", docs.headers["content-type"])
    assert.matches('url: "/openapi.json"', docs.body, 1, true)
    assert.matches("<title>Pets %- Swagger UI</title>", docs.body)
    local js = client:get("/docs/assets/swagger-ui-bundle.js")
    assert.equal(200, js.status)
    assert.truthy(#js.body > 100000)
    assert.equal(404, client:get("/docs/assets/../../README.md").status)
    assert.equal(404, client:get("/docs/assets/package.json").status)   -- only its own files
    assert.is_nil(res:json().paths["/redoc"])
    client:close()
  end)

  it("serves ReDoc at /redoc, its bundle from luaserve, no image from elsewhere", function()
    local client = testing.client(small_app())
    local page = client:get("/redoc")
    assert.equal(200, page.status)
    assert.matches("^text/html", page.headers["content-type"])
    assert.matches('<redoc spec-url="/openapi.json"></redoc>', page.body, 1, true)
    assert.matches('<script src="/redoc/assets/redoc.standalone.js"></script>', page.body, 1, true)
    assert.matches("<title>Pets %- ReDoc</title>", page.body)
    assert.equal("img-src 'self' data:", page.headers["content-security-policy"])
    local js = client:get("/redoc/assets/redoc.standalone.js")
    assert.equal(200, js.status)
    assert.matches("javascript", js.headers["content-type"])
    assert.truthy(#js.body > 100000)
    assert.equal(404, client:get("/redoc/assets/LICENSE").status)   -- the bundle only
    assert.equal(404, client:get("/redoc/assets/..%2fLICENSE").status)
    client:close()
  end)

  it("docs = false leaves all three out; an app's own /docs or /redoc wins", function()
    local client = testing.client(small_app({ docs = false }))
    assert.equal(404, client:get("/openapi.json").status)
    assert.equal(404, client:get("/docs").status)
    assert.equal(404, client:get("/redoc").status)
    client:close()
    local app = luaserve.app()
    app:get("/docs", function() return "mine" end)
    app:get("/redoc", function() return "my redoc" end)
    client = testing.client(app)
    assert.equal("mine", client:get("/docs").body)
    assert.equal("my redoc", client:get("/redoc").body)
    assert.equal(404, client:get("/redoc/assets/redoc.standalone.js").status)
    assert.equal(200, client:get("/openapi.json").status)
    client:close()
  end)
end)
