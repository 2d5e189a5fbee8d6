-- luaserve.inputs: what a route declares it takes (path, query, headers,
-- body) and gives (responses), compiled once at registration into one
-- function that checks and converts a request's inputs.
--
--   app:post("/items", { body = Item,
--     query = { limit = schema.integer{ min = 1, max = 100, default = 10 } },
--     headers = { x_token = schema.string{ optional = true } },
--     response = { [201] = Item } }, handler)
--   app:post("/profile", { form = { name = schema.string{ min_length = 1 },
--     age = schema.integer{ min = 0 }, photo = schema.file{ optional = true } } }, handler)
--
-- The handler finds the converted values in req.valid.path, .query,
-- .headers and .body, or .form (a urlencoded or multipart/form-data body's
-- fields, converted like query values; a schema.file field is its
-- luaserve.Upload) (defaults applied; req.params holds the converted
-- path parameters too). Any problem answers 422 {"detail": [...]} listing
-- every problem in FastAPI's shape; a body whose Content-Type is not JSON
-- answers 415. A route that declares nothing gets no validator and pays
-- nothing per request.

local schema = require "luaserve.schema"
local json = require "luaserve.json"
local errors = require "luaserve.errors"
local log = require "luaserve.log"

local type = type
local pairs = pairs
local ipairs = ipairs
local format = string.format
local find = string.find
local lower = string.lower
local concat = table.concat
local sort = table.sort
local is_schema = schema.is_schema

local M = {}

-- --validate-responses: check handlers' answers against their declared
-- response schemas (development).
M.validate_responses = false

-- The kinds a path template's types give a parameter without a schema.
local PATH_KIND = { int = "integer", number = "number", str = "string", path = "string" }
M.PATH_KIND = PATH_KIND


-- A declaration of named inputs: { name = schema } or schema.object{...}
-- (its fields). Returns a list of { name, schema, required } sorted by
-- name, or raises naming the route.
local function params_of(where, decl, what)
  if decl == nil then return nil end
  local fields, req
  if is_schema(decl) then
    if decl.kind ~= "object" then
      error(format("%s: %s must be a table {name = schema} or schema.object{}", where, what), 0)
    end
    fields, req = decl.fields, schema.required(decl)
  elseif type(decl) == "table" then
    fields = decl
    for name, s in pairs(decl) do
      if type(name) ~= "string" or not is_schema(s) then
        error(format("%s: %s.%s must be a schema (schema.string{}, ...)", where, what,
          tostring(name)), 0)
      end
    end
    req = schema.required({ fields = decl })
  else
    error(format("%s: %s must be a table {name = schema}", where, what), 0)
  end
  local list = {}
  for name, s in pairs(fields) do
    local kind = schema.resolve(s).kind
    local items = kind == "array" and schema.resolve(s).items
    local item_kind = items and schema.resolve(items).kind
    if kind == "object" or item_kind == "object" then
      error(format("%s: %s.%s: objects cannot come from a %s", where, what, name, what), 0)
    end
    if (kind == "file" or item_kind == "file") and what ~= "form" then
      error(format("%s: %s.%s: files come only in a form (form = {...})", where, what, name), 0)
    end
    list[#list + 1] = { name = name, schema = s, required = req[name] }
  end
  sort(list, function(a, b) return a.name < b.name end)
  return list
end


-- The header a declared name reads: x_token -> x-token (FastAPI's rule),
-- lower-cased.
local function header_name(name)
  return lower((name:gsub("_", "-")))
end
M.header_name = header_name


-- The responses a route declares: a schema (for 200) or {[status] =
-- schema | {schema=, description=}}. Returns {status = {schema=,
-- description=}} or nil.
local function responses_of(where, decl)
  if decl == nil then return nil end
  if is_schema(decl) then return { [200] = { schema = decl } } end
  if type(decl) ~= "table" then
    error(where .. ": response must be a schema or {[status] = schema}", 0)
  end
  local out = {}
  for status, r in pairs(decl) do
    if type(status) ~= "number" or status < 100 or status > 599 then
      error(format("%s: response keys must be statuses (100-599), got %s", where,
        tostring(status)), 0)
    end
    if is_schema(r) then
      out[status] = { schema = r }
    elseif type(r) == "table" and (r.schema == nil or is_schema(r.schema)) then
      out[status] = { schema = r.schema, description = r.description }
    else
      error(format("%s: response[%d] must be a schema or {schema=, description=}", where, status), 0)
    end
  end
  return out
end


--- JSON content types: application/json, application/*+json.
local function is_json(ctype)
  local base = lower(ctype):match("^%s*([^;%s]+)")
  return base == "application/json" or (base ~= nil and find(base, "^application/[^/]+%+json$") ~= nil)
end
M.is_json = is_json


local function unsupported(ctype)
  error(errors.new(415, ("Content-Type must be application/json, got %s"):format(ctype)), 0)
end


-- Emit the code of one named input at x (missing: the default or a
-- "missing" error; the input is null like FastAPI's).
local function emit_param(gen, p, mode, out)
  local key = gen:k(p.name)
  gen:emit("if x == nil then")
  local d = p.schema.default
  if p.required then
    gen:emit(format("E(errs, 'missing', 'Field required', L(P, %s), nil)", key))
  elseif d ~= nil then
    gen:emit(format("%s[%s] = copy(%s)", out, key, gen:k(d)))
  end
  gen:emit("else")
  gen:node(p.schema, "x", { key }, mode)
  gen:emit(format("%s[%s] = x", out, key))
  gen:emit("end")
end


-- Emit the named inputs of list (query values, form fields) into out:
-- each read from the table variable one, or for an array every value,
-- through all_fmt (a format taking the name).
local function emit_named(gen, list, one, all_fmt, out)
  for _, p in ipairs(list) do
    if schema.resolve(p.schema).kind == "array" then
      gen:emit(format("do local x = " .. all_fmt .. " if x[1] == nil then x = nil end",
        gen:k(p.name)))
    else
      gen:emit(format("do local x = %s[%s]", one, gen:k(p.name)))
    end
    emit_param(gen, p, "string", out)
    gen:emit("end")
  end
end


--- compile(route, names, types): the validator of a route's declared
-- inputs, validate(req) -> nil (req.valid set) or the list of problems;
-- nil when it declares none. Raises on a bad declaration (naming the
-- route). names/types: the path template's parameters.
function M.compile(method, path, opts, names, types)
  local where = "route " .. method .. " " .. path
  local path_decl = params_of(where, opts.path, "path")
  local query = params_of(where, opts.query, "query")
  local headers = params_of(where, opts.headers, "headers")
  local body = opts.body
  if body ~= nil and not is_schema(body) then
    error(where .. ": body must be a schema", 0)
  end
  local form = params_of(where, opts.form, "form")
  if form and body then
    error(where .. ": a route declares a body or a form, not both", 0)
  end
  local known = {}
  for i, n in ipairs(names or {}) do known[n] = types[i] end
  for _, p in ipairs(path_decl or {}) do
    if not known[p.name] then
      error(format("%s: path.%s is not a parameter of the path", where, p.name), 0)
    end
    p.required = true
  end
  if not (path_decl or query or headers or body or form) then return nil end

  local gen = schema.new_gen()
  gen:emit("return function(req)")
  gen:emit("local errs, P = {}, nil")
  gen:emit("local valid = {}")
  if path_decl then
    gen:emit(format("P = %s", gen:k({ "path" })))
    gen:emit("local params = req.params")
    for _, p in ipairs(path_decl) do
      gen:emit(format("do local x = params[%s]", gen:k(p.name)))
      emit_param(gen, p, "string", "params")
      gen:emit("end")
    end
    gen:emit("valid.path = params")
  end
  if query then
    gen:emit(format("P = %s", gen:k({ "query" })))
    gen:emit("local q, vq = req.query, {}")
    emit_named(gen, query, "q", "req:query_all(%s)", "vq")
    gen:emit("valid.query = vq")
  end
  if headers then
    gen:emit(format("P = %s", gen:k({ "header" })))
    gen:emit("local h, vh = req.headers, {}")
    for _, p in ipairs(headers) do
      local hname = header_name(p.name)
      local loc_p = { name = hname, schema = p.schema, required = p.required }
      gen:emit(format("do local x = h[%s]", gen:k(hname)))
      if schema.resolve(p.schema).kind == "array" then
        gen:emit("if x ~= nil then local list = {} for v in (x .. ','):gmatch('%s*([^,]-)%s*,') do list[#list + 1] = v end x = list end")
      end
      -- errors name the header as sent (x-token); valid.headers the
      -- declared name (x_token)
      gen:emit("local vh1 = {}")
      emit_param(gen, loc_p, "string", "vh1")
      gen:emit(format("vh[%s] = vh1[%s]", gen:k(p.name), gen:k(hname)))
      gen:emit("end")
    end
    gen:emit("valid.headers = vh")
  end
  if body then
    gen:emit(format("P = %s", gen:k({ "body" })))
    gen:emit("local raw = req.body")
    gen:emit("if raw == '' then")
    if body.default ~= nil then
      gen:emit(format("valid.body = copy(%s)", gen:k(body.default)))
    elseif not body.optional then
      gen:emit("E(errs, 'missing', 'Field required', L(P), nil)")
    end
    gen:emit("else")
    gen:emit("local ct = req.headers['content-type']")
    gen:emit("if ct and not is_json(ct) then unsupported(ct) end")
    gen:emit("local x, jerr = decode(raw)")
    gen:emit("if x == nil and jerr then")
    gen:emit("E(errs, 'json_invalid', 'JSON decode error', L(P), nil, { error = jerr })")
    gen:emit("else")
    gen:node(body, "x", {}, "json")
    gen:emit("valid.body = x")
    gen:emit("end end")
  end
  if form then
    -- FastAPI's locations: ["body", name]. No body and no content type:
    -- an empty form (its fields missing); another content type: 415.
    gen:emit(format("P = %s", gen:k({ "body" })))
    gen:emit("local f, vf = EMPTY, {}")
    gen:emit("if req.headers['content-type'] ~= nil or req.body ~= '' then f = req:form() end")
    emit_named(gen, form, "f", "(f == EMPTY and {} or req:form_all(%s))", "vf")
    gen:emit("valid.form = vf")
  end
  gen:emit("if errs[1] then return errs end")
  gen:emit("req.valid = valid")
  gen:emit("end")
  -- The route's own helpers ride in as constants.
  local extra = gen:k({ is_json = is_json, unsupported = unsupported, decode = json.decode,
    EMPTY = {} })
  local head = format("local X = %s\nlocal is_json, unsupported, decode, EMPTY = " ..
    "X.is_json, X.unsupported, X.decode, X.EMPTY\n", extra)
  return (schema.load_code(gen, head .. table.concat(gen.out, "\n"), where))
end


--- declare(route, names, types): compile the route's declarations into
-- route.validate (inputs) and route.responses (for OpenAPI and
-- --validate-responses). Raises on a bad declaration.
function M.declare(route, method, names, types)
  local opts = route.opts
  route.validate = route.validate or M.compile(method, route.path, opts, names, types)
  route.responses = responses_of("route " .. method .. " " .. route.path, opts.response)
end


-- ---------------------------------------------------------------------------
-- Responses (--validate-responses)

local checkers = setmetatable({}, { __mode = "k" })   -- schema -> check


-- The status and the table body a handler's return values give (nil
-- when there is nothing to check: strings, streams, bodies without a
-- table).
local function returned(a, b)
  if type(a) == "number" then return a, b end
  if type(a) == "table" then
    local mt = getmetatable(a)
    if mt and mt.__name == "luaserve.Response" then
      if a.stream then return nil end
      return a.status or 200, a.body
    end
    return 200, a
  end
  return nil
end


--- check_response(req, route, a, b, c): a, b, c when they match the
-- declared response schema of their status; else logs the problems with
-- the route and raises (a 500). Only with --validate-responses.
function M.check_response(req, route, a, b, c)
  local status, body = returned(a, b)
  local r = status and route.responses[status]
  if r and r.schema and body ~= nil then
    local check = checkers[r.schema]
    if not check then
      check = schema.compile(r.schema, { defaults = false })
      checkers[r.schema] = check
    end
    -- a copy: the check must not change what the handler returns
    local v, errs = check(json.decode(json.encode(body)), { "response" })
    if v == nil then
      local lines = {}
      for i, e in ipairs(errs) do
        lines[i] = ("  %s: %s (%s)"):format(concat(e.loc, "."), e.msg, e.type)
      end
      log.error(("%s %s (route %s): the response does not match its declared " ..
        "schema for status %d:\n%s"):format(req.method, req.path, route.path, status,
        concat(lines, "\n")))
      error(errors.new(500, "Internal Server Error"), 0)
    end
  end
  return a, b, c
end

return M
