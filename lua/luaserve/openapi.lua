-- luaserve.openapi: the OpenAPI 3.1 document of an app, generated from
-- its routes: paths (templates as {name}), methods, parameters with their
-- schemas, request bodies, responses (the 422 shape included), summaries,
-- tags, info from luaserve.app{ title=, version=, description= }.
-- WebSocket routes and routes with include_in_schema = false are left
-- out. luaserve.docs serves it at /openapi.json.

local schema = require "luaserve.schema"
local inputs = require "luaserve.inputs"

local pairs = pairs
local ipairs = ipairs
local type = type
local gsub = string.gsub
local lower = string.lower
local sort = table.sort

local M = {}

M.VERSION = "3.1.0"

-- FastAPI's shapes of a 422 answer, with luaserve's input and ctx.
local VALIDATION_ERROR = {
  title = "ValidationError",
  type = "object",
  required = { "loc", "msg", "type" },
  properties = {
    loc = { title = "Location", type = "array",
      items = { anyOf = { { type = "string" }, { type = "integer" } } } },
    msg = { title = "Message", type = "string" },
    type = { title = "Error Type", type = "string" },
    input = { title = "Input" },
    ctx = { title = "Context", type = "object" },
  },
}
local HTTP_VALIDATION_ERROR = {
  title = "HTTPValidationError",
  type = "object",
  properties = {
    detail = { title = "Detail", type = "array",
      items = { ["$ref"] = "#/components/schemas/ValidationError" } },
  },
}

local REASONS = {
  [200] = "Successful Response", [201] = "Created", [202] = "Accepted",
  [204] = "No Content", [301] = "Moved Permanently", [302] = "Found",
  [304] = "Not Modified", [400] = "Bad Request", [401] = "Unauthorized",
  [403] = "Forbidden", [404] = "Not Found", [409] = "Conflict",
  [415] = "Unsupported Media Type", [422] = "Validation Error",
  [429] = "Too Many Requests", [500] = "Internal Server Error",
  [503] = "Service Unavailable", [504] = "Gateway Timeout",
}


-- "/users/{id:int}" -> "/users/{id}"
local function openapi_path(template)
  return (gsub(template, "{([%a_][%w_]*):%a+}", "{%1}"))
end
M.path = openapi_path


-- "GET", "/users/{id:int}" -> "get_users_id"
local function operation_id(method, template)
  local id = lower(method) .. gsub(gsub(openapi_path(template), "[^%w]+", "_"), "_+$", "")
  return (gsub(id, "__+", "_"))
end


local function parameter(name, where, s, required, comp)
  local p = { name = name, ["in"] = where, required = required or nil,
    schema = schema.to_json(s, comp) }
  local r = schema.resolve(s)
  if r.description then p.description = r.description end
  if r.deprecated then p.deprecated = true end
  return p
end


-- The list of { name, schema, required } of a declaration.
local function declared(decl)
  if decl == nil then return {} end
  local fields = schema.is_schema(decl) and decl.fields or decl
  local req = schema.required(schema.is_schema(decl) and decl or { fields = decl })
  local list = {}
  for name, s in pairs(fields) do list[#list + 1] = { name, s, req[name] } end
  sort(list, function(a, b) return a[1] < b[1] end)
  return list
end


-- A declared form: one object schema of its fields, as
-- multipart/form-data when a field is a file, else urlencoded.
local function form_body(decl, comp)
  local props, required, files, encoding = {}, {}, false, nil
  for _, p in ipairs(declared(decl)) do
    local r = schema.resolve(p[2])
    local file = r.kind == "file" and r or (r.kind == "array" and r.items and
      schema.resolve(r.items).kind == "file" and schema.resolve(r.items))
    if file then
      files = true
      if file.content_types then   -- the types a file part may have
        encoding = encoding or {}
        encoding[p[1]] = { contentType = table.concat(file.content_types, ", ") }
      end
    end
    props[p[1]] = schema.to_json(p[2], comp)
    if p[3] then required[#required + 1] = p[1] end
  end
  local body = { type = "object", properties = props }
  if required[1] then body.required = required end
  local ctype = files and "multipart/form-data" or "application/x-www-form-urlencoded"
  return { required = required[1] ~= nil,
    content = { [ctype] = { schema = body, encoding = encoding } } }
end


local function operation(entry, comp)
  local route, method = entry.route, entry.method
  local opts = route.opts
  local op = {
    summary = opts.summary,
    description = opts.description,
    operationId = opts.operation_id or operation_id(method, route.path),
    deprecated = opts.deprecated or nil,
  }
  if type(opts.tags) == "table" and opts.tags[1] then op.tags = opts.tags end
  local params = {}
  -- path parameters: the template's, refined by opts.path
  local refined = {}
  for _, p in ipairs(declared(opts.path)) do refined[p[1]] = p[2] end
  local names, types = route.param_names or {}, route.param_types or {}
  for i, name in ipairs(names) do
    local s = refined[name] or schema[inputs.PATH_KIND[types[i]]]()
    params[#params + 1] = parameter(name, "path", s, true, comp)
  end
  for _, p in ipairs(declared(opts.query)) do
    params[#params + 1] = parameter(p[1], "query", p[2], p[3], comp)
  end
  for _, p in ipairs(declared(opts.headers)) do
    params[#params + 1] = parameter(inputs.header_name(p[1]), "header", p[2], p[3], comp)
  end
  if params[1] then op.parameters = params end
  if opts.body then
    op.requestBody = { required = not (opts.body.optional or opts.body.default ~= nil),
      content = { ["application/json"] = { schema = schema.to_json(opts.body, comp) } } }
  elseif opts.form then
    op.requestBody = form_body(opts.form, comp)
  end
  local responses = {}
  for status, r in pairs(route.responses or {}) do
    local out = { description = r.description or REASONS[status] or ("Status " .. status) }
    if r.schema then
      out.content = { ["application/json"] = { schema = schema.to_json(r.schema, comp) } }
    end
    responses[tostring(status)] = out
  end
  if next(responses) == nil then
    responses["200"] = { description = "Successful Response",
      content = { ["application/json"] = { schema = {} } } }
  end
  if (params[1] or opts.body or opts.form) and not responses["422"] then
    comp.schemas.ValidationError = VALIDATION_ERROR
    comp.schemas.HTTPValidationError = HTTP_VALIDATION_ERROR
    responses["422"] = { description = "Validation Error",
      content = { ["application/json"] = { schema =
        { ["$ref"] = "#/components/schemas/HTTPValidationError" } } } }
  end
  op.responses = responses
  return op
end


--- document(app): the OpenAPI document of app, as a Lua table (encode it
-- with luaserve.json). Raises when two different schemas share a name.
function M.document(app)
  local comp = { schemas = {}, owners = {} }
  local paths = {}
  for _, entry in ipairs(app.routes) do
    local route = entry.route
    if not route.websocket and route.opts.include_in_schema ~= false then
      local p = openapi_path(route.path)
      paths[p] = paths[p] or {}
      paths[p][lower(entry.method)] = operation(entry, comp)
    end
  end
  local doc = {
    openapi = M.VERSION,
    info = { title = app.title, version = app.version, description = app.description },
    paths = paths,
  }
  if next(comp.schemas) ~= nil then doc.components = { schemas = comp.schemas } end
  return doc
end

return M
