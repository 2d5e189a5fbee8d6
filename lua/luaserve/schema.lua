-- luaserve.schema: declared shapes of data, compiled once into Lua code
-- that checks and converts a value, and written out as JSON Schema for
-- OpenAPI.
--
--   local schema = require "luaserve.schema"
--   local Item = schema.object{ name = "Item", fields = {
--     name  = schema.string{ min_length = 1 },
--     price = schema.number{ exclusive_min = 0 },
--     tags  = schema.array{ items = schema.string(), unique = true, default = {} },
--   } }
--   local check = schema.compile(Item)      -- once, at route registration
--   local value, errors = check(decoded_json, { "body" })
--
-- A check gives the value converted (defaults applied, in place for
-- tables), or nil and the list of every problem in FastAPI's shape:
-- { type = "string_too_short", loc = { "body", "name" }, msg = "String
-- should have at least 1 character", input = "", ctx = { min_length = 1 } }.
--
-- compile() writes Lua source for the schema (one function, nested
-- objects and arrays inlined, recursive references as functions) and
-- load()s it: nothing is interpreted per value. Values from JSON are taken
-- as they are typed (a string is not an integer); values from a query
-- string, a header or a path ("string" mode) are parsed: "42" is an
-- integer there, "true"/"1"/"yes"/"on" a boolean.

local json = require "luaserve.json"

local type = type
local pairs = pairs
local ipairs = ipairs
local tostring = tostring
local tonumber = tonumber
local setmetatable = setmetatable
local getmetatable = getmetatable
local error = error
local concat = table.concat
local sort = table.sort
local format = string.format
local find = string.find
local match = string.match
local gsub = string.gsub
local byte = string.byte
local lower = string.lower
local floor = math.floor
local huge = math.huge

local null = json.null
local array_mt = json.array_mt

local M = {}

local Schema = {}
Schema.__index = Schema
Schema.__name = "luaserve.schema"
M.Schema = Schema


function Schema.__tostring(s)
  return "luaserve.schema " .. (s.name or s.kind)
end


function M.is_schema(v)
  return getmetatable(v) == Schema
end
local is_schema = M.is_schema


-- ---------------------------------------------------------------------------
-- The vocabulary

local COMMON = { name = true, title = true, description = true, default = true,
  optional = true, nullable = true, deprecated = true, example = true,
  examples = true }

local OPTIONS = {
  string = { min_length = "count", max_length = "count", pattern = "pattern",
    enum = "list", format = "format" },
  integer = { min = "number", max = "number", exclusive_min = "number",
    exclusive_max = "number", multiple_of = "positive", enum = "list" },
  number = { min = "number", max = "number", exclusive_min = "number",
    exclusive_max = "number", multiple_of = "positive", enum = "list" },
  boolean = {},
  any = {},
  array = { items = "schema", min_items = "count", max_items = "count",
    unique = "boolean" },
  object = { fields = "fields", required = "list", additional = "additional" },
  one_of = {},
  file = { max_size = "count", content_types = "list" },
}

local FORMATS = {}   -- name -> function(s) -> true when s is well-formed
M.FORMATS = FORMATS

local named = {}     -- name -> the latest schema defined with that name


local function deep_copy(v)
  if type(v) ~= "table" then return v end
  local out = {}
  for k, x in pairs(v) do out[k] = deep_copy(x) end
  return setmetatable(out, getmetatable(v))
end


local function bad(kind, msg, ...)
  error(format("schema.%s: " .. msg, kind, ...), 4)
end


-- Check opts against what kind takes; returns the node.
local function node(kind, opts)
  opts = opts or {}
  if type(opts) ~= "table" or is_schema(opts) then
    error(format("schema.%s: expected a table of options", kind), 3)
  end
  local allowed = OPTIONS[kind]
  local s = { kind = kind }
  for k, v in pairs(opts) do
    local want = allowed[k]
    if COMMON[k] then
      s[k] = v
    elseif not want then
      bad(kind, "unknown option '%s'", tostring(k))
    elseif want == "count" then
      if type(v) ~= "number" or v < 0 or v % 1 ~= 0 then
        bad(kind, "%s must be a whole number >= 0", k)
      end
    elseif want == "number" then
      if type(v) ~= "number" or v ~= v then bad(kind, "%s must be a number", k) end
    elseif want == "positive" then
      if type(v) ~= "number" or not (v > 0) then bad(kind, "%s must be a number > 0", k) end
    elseif want == "pattern" then
      if type(v) ~= "string" or not pcall(find, "", v) then
        bad(kind, "pattern must be a valid Lua pattern, got %s", tostring(v))
      end
    elseif want == "list" then
      if type(v) ~= "table" or v[1] == nil then bad(kind, "%s must be a non-empty list", k) end
    elseif want == "format" then
      if not FORMATS[v] then
        local names = {}
        for n in pairs(FORMATS) do names[#names + 1] = n end
        sort(names)
        bad(kind, "unknown format '%s' (%s)", tostring(v), concat(names, ", "))
      end
    elseif want == "schema" then
      if not is_schema(v) then bad(kind, "%s must be a schema", k) end
    elseif want == "boolean" then
      if type(v) ~= "boolean" then bad(kind, "%s must be true or false", k) end
    elseif want == "fields" then
      if type(v) ~= "table" then bad(kind, "fields must be a table {name = schema}") end
      for fname, f in pairs(v) do
        if type(fname) ~= "string" or not is_schema(f) then
          bad(kind, "field %s must be a schema (schema.string{...}, ...)", tostring(fname))
        end
      end
    elseif want == "additional" then
      if type(v) ~= "boolean" and not is_schema(v) then
        bad(kind, "additional must be true, false or a schema")
      end
    end
    if want then s[k] = v end
  end
  if s.name ~= nil then
    if type(s.name) ~= "string" or not find(s.name, "^[%w_.%-]+$") then
      bad(kind, "name must be a word ([A-Za-z0-9_.-]), got %s", tostring(s.name))
    end
    named[s.name] = s
  end
  if kind == "array" and type(s.default) == "table" then
    s.default = setmetatable(deep_copy(s.default), array_mt)   -- [] in JSON
  end
  if s.enum then
    local want = kind == "string" and "string" or "number"
    for _, e in ipairs(s.enum) do
      if type(e) ~= want then bad(kind, "enum values must be %ss", want) end
    end
  end
  if kind == "object" then
    s.fields = s.fields or {}
    for _, r in ipairs(s.required or {}) do
      if not s.fields[r] then bad(kind, "required field '%s' is not in fields", tostring(r)) end
    end
  end
  return setmetatable(s, Schema)
end


--- string{min_length=, max_length=, pattern= (a Lua pattern), enum=,
-- format= ("email", "uuid", "date", "date-time", "time", "uri", "ipv4")}.
-- Lengths count UTF-8 characters.
function M.string(opts) return node("string", opts) end
--- integer{min=, max=, exclusive_min=, exclusive_max=, multiple_of=, enum=}
function M.integer(opts) return node("integer", opts) end
--- number{...}: the same options as integer.
function M.number(opts) return node("number", opts) end
function M.boolean(opts) return node("boolean", opts) end
--- any{}: any value (JSON: anything).
function M.any(opts) return node("any", opts) end
--- array{items = schema, min_items=, max_items=, unique=}
function M.array(opts) return node("array", opts) end
--- file{max_size= (bytes), content_types= {"image/png", ...}}: an
-- uploaded file of a multipart/form-data body (a form = {...}
-- declaration: req.valid.form.<name> is its luaserve.Upload). OpenAPI
-- shows it as {type = "string", format = "binary"}.
function M.file(opts) return node("file", opts) end
--- object{fields = {name = schema}, required = {names}, additional =
-- false | true | schema}. Without `required`, every field without a
-- default and without optional = true is required. additional defaults
-- to true (other keys are kept as they are).
function M.object(opts) return node("object", opts) end


--- one_of{A, B, ..., description=...}: exactly one of the schemas must
-- match (JSON Schema oneOf); the value is converted by the one that did.
function M.one_of(opts)
  if type(opts) ~= "table" or is_schema(opts) or not is_schema(opts[1]) then
    error("schema.one_of: expected a list of schemas {A, B, ...}", 2)
  end
  local list, rest = {}, {}
  for k, v in pairs(opts) do
    if type(k) == "number" then
      if not is_schema(v) then error("schema.one_of: item " .. k .. " is not a schema", 2) end
      list[k] = v
    else
      rest[k] = v
    end
  end
  local s = node("one_of", rest)
  s.of = list
  return s
end


--- ref(name): the schema defined with that name (for recursive shapes:
-- a field of Node that is a Node). Resolved when compiled.
function M.ref(name)
  if type(name) ~= "string" then error("schema.ref: expected a name", 2) end
  return setmetatable({ kind = "ref", ref = name }, Schema)
end


--- nullable(s): s, or JSON null (nil in Lua terms: luaserve.null).
function M.nullable(s)
  if not is_schema(s) then error("schema.nullable: expected a schema", 2) end
  return setmetatable({ kind = "wrap", of = s, nullable = true }, Schema)
end


local function resolve(s)
  if s.kind ~= "ref" then return s end
  local target = named[s.ref]
  if not target then error(("schema.ref: no schema is named '%s'"):format(s.ref), 0) end
  return target
end
M.resolve = resolve


-- ---------------------------------------------------------------------------
-- Formats

local function leap(y) return y % 4 == 0 and (y % 100 ~= 0 or y % 400 == 0) end
local DAYS = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 }

local function valid_date(y, m, d)
  y, m, d = tonumber(y), tonumber(m), tonumber(d)
  if m < 1 or m > 12 or d < 1 then return false end
  local dim = DAYS[m] + ((m == 2 and leap(y)) and 1 or 0)
  return d <= dim
end

local function valid_time(s)
  local h, mi, sec, rest = match(s, "^(%d%d):(%d%d):(%d%d)(.*)$")
  if not h or tonumber(h) > 23 or tonumber(mi) > 59 or tonumber(sec) > 60 then
    return false
  end
  rest = gsub(rest, "^%.%d+", "")
  if rest == "" or rest == "Z" or rest == "z" then return true, rest end
  local oh, om = match(rest, "^[+-](%d%d):(%d%d)$")
  return oh ~= nil and tonumber(oh) <= 23 and tonumber(om) <= 59, rest
end

FORMATS["date"] = function(s)
  local y, m, d = match(s, "^(%d%d%d%d)%-(%d%d)%-(%d%d)$")
  return y ~= nil and valid_date(y, m, d)
end

FORMATS["date-time"] = function(s)   -- RFC 3339: the offset is required
  local y, m, d, t = match(s, "^(%d%d%d%d)%-(%d%d)%-(%d%d)[Tt ](.+)$")
  if not y or not valid_date(y, m, d) then return false end
  local ok, offset = valid_time(t)
  return ok and offset ~= ""
end

FORMATS["time"] = function(s) return (valid_time(s)) end

FORMATS["email"] = function(s)
  local user, domain = match(s, "^([^@%s]+)@([^@%s]+)$")
  if not user or #s > 254 or #user > 64 then return false end
  if find(user, "^%.") or find(user, "%.$") or find(user, "%.%.") or
     find(user, "[^%w.!#$%%&'*+/=?^_`{|}~-]") then
    return false
  end
  if not find(domain, "%.") then return false end
  for label in (domain .. "."):gmatch("([^.]*)%.") do
    if label == "" or #label > 63 or find(label, "[^%w-]") or
       find(label, "^%-") or find(label, "%-$") then
      return false
    end
  end
  return true
end

FORMATS["uuid"] = function(s)
  return find(s, "^%x%x%x%x%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$") ~= nil
end

FORMATS["uri"] = function(s)
  return find(s, "^%a[%w+.%-]*:[^%s]+$") ~= nil
end

FORMATS["ipv4"] = function(s)
  local a, b, c, d = match(s, "^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
  if not a then return false end
  for _, o in ipairs({ a, b, c, d }) do
    if #o > 3 or tonumber(o) > 255 or (#o > 1 and byte(o) == 48) then return false end
  end
  return true
end

-- What each format's failure says (pydantic's types and messages).
local FORMAT_ERRORS = {
  ["email"] = { "value_error", "value is not a valid email address" },
  ["uuid"] = { "uuid_parsing", "Input should be a valid UUID" },
  ["date"] = { "date_parsing", "Input should be a valid date in the format YYYY-MM-DD" },
  ["date-time"] = { "datetime_parsing", "Input should be a valid datetime (RFC 3339, with an offset)" },
  ["time"] = { "time_parsing", "Input should be in a valid time format (HH:MM:SS)" },
  ["uri"] = { "url_parsing", "Input should be a valid URL" },
  ["ipv4"] = { "ip_v4_address", "Input is not a valid IPv4 address" },
}


-- ---------------------------------------------------------------------------
-- Helpers the compiled code calls (only on the way to an error, or for
-- what is rare: non-ASCII lengths, uniqueness, copies of defaults)

-- loc: a new list, prefix's items then the rest.
local function L(prefix, ...)
  local loc = {}
  for i = 1, #prefix do loc[i] = prefix[i] end
  local n = #prefix
  for i = 1, select("#", ...) do loc[n + i] = (select(i, ...)) end
  return loc
end


local function E(errs, typ, msg, loc, input, ctx)
  if input == nil then
    input = null
  elseif type(input) == "number" and (input ~= input or input == huge or input == -huge) then
    input = tostring(input)   -- JSON has no NaN or infinity: the answer must encode
  end
  errs[#errs + 1] = { type = typ, loc = loc, msg = msg, input = input, ctx = ctx }
end


-- UTF-8 characters in s (continuation bytes do not count).
local function ulen(s)
  local n = 0
  for i = 1, #s do
    local c = byte(s, i)
    if c < 128 or c >= 192 then n = n + 1 end
  end
  return n
end


-- A key that is equal for equal JSON values (for unique).
local function ukey(v)
  local t = type(v)
  if t == "string" then return "s" .. v end
  if t == "number" then return "n" .. format("%.17g", v) end
  if t ~= "table" then return t .. tostring(v) end
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = tostring(k) end
  sort(keys)
  local parts = {}
  for i, k in ipairs(keys) do
    local x = v[k]
    if x == nil then x = v[tonumber(k)] end
    parts[i] = k .. "=" .. ukey(x)
  end
  return "{" .. concat(parts, ",") .. "}"
end


local function is_list(v)
  return v[1] ~= nil or getmetatable(v) == array_mt
end


-- A number as pydantic writes it in a message: 1, 0.5, 1e+20.
local function num(n)
  if n % 1 == 0 and n > -1e15 and n < 1e15 then return format("%d", n) end
  return format("%.15g", n)
end
M.num = num


local function quote_list(list)
  local q = {}
  for i, v in ipairs(list) do
    q[i] = type(v) == "string" and "'" .. v .. "'" or num(v)
  end
  if #q == 1 then return q[1] end
  return concat(q, ", ", 1, #q - 1) .. " or " .. q[#q]
end


local function plural(n, one, many)
  return num(n) .. " " .. (n == 1 and one or many)
end


local BOOLS = { ["true"] = true, ["1"] = true, yes = true, on = true, t = true,
  y = true, ["false"] = false, ["0"] = false, no = false, off = false,
  f = false, n = false }


-- ---------------------------------------------------------------------------
-- The code generator

-- A generator: its output lines, constants (K[i]), the names of the
-- variables in use, the named schemas being generated (recursion).
local Gen = {}
Gen.__index = Gen


local function new_gen(opts)
  return setmetatable({ out = {}, consts = {}, nconst = 0, nvar = 0,
    fns = {}, fn_code = {}, nfn = 0, stack = {},
    defaults = not (opts and opts.defaults == false) }, Gen)
end


function Gen:emit(s) self.out[#self.out + 1] = s end


-- A constant: K[i] in the generated code.
function Gen:k(v)
  if v == nil then return "nil" end
  local t = type(v)
  if t == "number" and v == v and v ~= huge and v ~= -huge then return format("%.17g", v) end
  if t == "boolean" then return tostring(v) end
  if t == "string" and #v < 80 then return (format("%q", v):gsub("\\\n", "\\n")) end
  self.nconst = self.nconst + 1
  self.consts[self.nconst] = v
  return "K[" .. self.nconst .. "]"
end


function Gen:var()
  self.nvar = self.nvar + 1
  return "v" .. self.nvar
end


-- The code of a loc: L(P, <path items>)
local function loc_code(path)
  if #path == 0 then return "L(P)" end
  return "L(P, " .. concat(path, ", ") .. ")"
end


local function push(path, item)
  local p = {}
  for i = 1, #path do p[i] = path[i] end
  p[#p + 1] = item
  return p
end


-- E(errs, type, msg, loc, input[, ctx])
function Gen:err(path, x, typ, msg, ctx, dyn_msg)
  local m = dyn_msg or self:k(msg)
  self:emit(format("E(errs, %q, %s, %s, %s%s)", typ, m, loc_code(path), x,
    ctx and (", " .. self:k(ctx)) or ""))
end


-- Emit code that checks the value in variable x (at path) and leaves it
-- converted in x. mode: "json" or "string". Each node's code sits in a
-- repeat ... until true block: a failed check breaks out of it.
function Gen:node(s, x, path, mode)
  if s.kind == "ref" then s = resolve(s) end
  if not s.name then return self:node_body(s, x, path, mode) end
  -- A named schema is inlined, except inside itself (recursion): there it
  -- is a call to its function.
  if self.stack[s] then return self:call_named(s, x, path, mode) end
  self.stack[s] = true
  self:node_body(s, x, path, mode)
  self.stack[s] = nil
end


-- A call to the function of a recursive named schema (made once per
-- generator and mode).
function Gen:call_named(s, x, path, mode)
  local key = s.name .. ":" .. mode
  local fname = self.fns[key]
  if not fname then
    self.nfn = self.nfn + 1
    fname = "F" .. self.nfn
    self.fns[key] = fname
    self:function_of(fname, s, mode, { [s] = true }, true)
  end
  self:emit(format("%s = %s(%s, errs, %s)", x, fname, x, loc_code(path)))
end


-- Generate `fname = function(x, errs, P) ... return x end` for s, apart
-- from the code being written.
function Gen:function_of(fname, s, mode, stack, body_only)
  local saved_out, saved_stack = self.out, self.stack
  self.out, self.stack = {}, stack
  self:emit(fname .. " = function(x, errs, P)")
  if body_only then self:node_body(s, "x", {}, mode) else self:node(s, "x", {}, mode) end
  self:emit("return x")
  self:emit("end")
  self.fn_code[#self.fn_code + 1] = concat(self.out, "\n")
  self.out, self.stack = saved_out, saved_stack
end


function Gen:node_body(s, x, path, mode)
  local kind = s.kind
  self:emit("repeat")
  if s.nullable then
    self:emit(format("if %s == null then break end", x))
  end
  if kind == "wrap" then
    self:node(s.of, x, path, mode)
  elseif kind == "string" then
    self:string(s, x, path, mode)
  elseif kind == "integer" or kind == "number" then
    self:number(s, x, path, mode)
  elseif kind == "boolean" then
    self:boolean(s, x, path, mode)
  elseif kind == "array" then
    self:array(s, x, path, mode)
  elseif kind == "object" then
    self:object(s, x, path, mode)
  elseif kind == "one_of" then
    self:one_of(s, x, path, mode)
  elseif kind == "file" then
    self:file(s, x, path)
  end
  self:emit("until true")
end


-- One of enum's values (x), or an error naming them (input: what it shows).
function Gen:enum(s, x, path, input)
  local set = {}
  for _, v in ipairs(s.enum) do set[v] = true end
  local expected = quote_list(s.enum)
  self:emit(format("if not %s[%s] then", self:k(set), x))
  self:err(path, input, "enum", "Input should be " .. expected, { expected = expected })
  self:emit("end")
end


function Gen:string(s, x, path, mode)
  if mode == "string" then
    self:emit(format("if type(%s) == 'number' then %s = tostring(%s) end", x, x, x))
  end
  self:emit(format("if type(%s) ~= 'string' then", x))
  self:err(path, x, "string_type", "Input should be a valid string")
  self:emit("break end")
  if s.min_length or s.max_length then
    self:emit(format("local n = #%s if find(%s, '[\\128-\\255]') then n = ulen(%s) end", x, x, x))
    if s.min_length then
      self:emit(format("if n < %d then", s.min_length))
      self:err(path, x, "string_too_short", "String should have at least " ..
        plural(s.min_length, "character", "characters"), { min_length = s.min_length })
      self:emit("end")
    end
    if s.max_length then
      self:emit(format("if n > %d then", s.max_length))
      self:err(path, x, "string_too_long", "String should have at most " ..
        plural(s.max_length, "character", "characters"), { max_length = s.max_length })
      self:emit("end")
    end
  end
  if s.pattern then
    self:emit(format("if not find(%s, %s) then", x, self:k(s.pattern)))
    self:err(path, x, "string_pattern_mismatch", "String should match pattern '" ..
      s.pattern .. "'", { pattern = s.pattern })
    self:emit("end")
  end
  if s.enum then self:enum(s, x, path, x) end
  if s.format then
    local fe = FORMAT_ERRORS[s.format] or { "value_error", "Input should be a valid " .. s.format }
    self:emit(format("if not FORMATS[%q](%s) then", s.format, x))
    self:err(path, x, fe[1], fe[2])
    self:emit("end")
  end
end


function Gen:number(s, x, path, mode)
  local int = s.kind == "integer"
  local input = x
  if mode == "string" then   -- errors show the text as it came
    input = self:var()
    self:emit(format("local %s = %s", input, x))
    self:emit(format("if type(%s) == 'string' then", x))
    self:emit(format("local n = find(%s, %s) and tonumber(%s)", x,
      int and "'^%s*[-+]?%d+%s*$'" or "'^%s*[-+]?%d*%.?%d*[eE]?[-+]?%d*%s*$'", x))
    self:emit("if n == nil then")
    if int then
      self:err(path, x, "int_parsing", "Input should be a valid integer, unable to parse string as an integer")
    else
      self:err(path, x, "float_parsing", "Input should be a valid number, unable to parse string as a number")
    end
    self:emit("break end")
    self:emit(format("%s = n", x))
    self:emit("end")
  end
  self:emit(format("if type(%s) ~= 'number' then", x))
  if int then
    self:err(path, input, "int_type", "Input should be a valid integer")
  else
    self:err(path, input, "float_type", "Input should be a valid number")
  end
  self:emit("break end")
  self:emit(format("if %s ~= %s or %s == huge or %s == -huge then", x, x, x, x))
  self:err(path, input, "finite_number", "Input should be a finite number")
  self:emit("break end")
  if int then
    self:emit(format("if %s %% 1 ~= 0 then", x))
    self:err(path, input, "int_from_float", "Input should be a valid integer, got a number with a fractional part")
    self:emit("break end")
  end
  local checks = {
    { "exclusive_min", "<=", "greater_than", "Input should be greater than ", "gt" },
    { "min", "<", "greater_than_equal", "Input should be greater than or equal to ", "ge" },
    { "exclusive_max", ">=", "less_than", "Input should be less than ", "lt" },
    { "max", ">", "less_than_equal", "Input should be less than or equal to ", "le" },
  }
  for _, c in ipairs(checks) do
    local bound = s[c[1]]
    if bound then
      self:emit(format("if %s %s %s then", x, c[2], self:k(bound)))
      self:err(path, input, c[3], c[4] .. num(bound), { [c[5]] = bound })
      self:emit("end")
    end
  end
  if s.multiple_of then
    local m = self:k(s.multiple_of)
    self:emit(format("do local r = %s %% %s if r > 1e-9 * %s and %s - r > 1e-9 * %s then",
      x, m, m, m, m))
    self:err(path, input, "multiple_of", "Input should be a multiple of " .. num(s.multiple_of),
      { multiple_of = s.multiple_of })
    self:emit("end end")
  end
  if s.enum then self:enum(s, x, path, input) end
end


-- An upload (luaserve.form's Upload: the form module is looked up when a
-- check runs, so that a schema does not load it).
local function is_upload(x)
  local mt = getmetatable(x)
  return mt ~= nil and mt == require("luaserve.form").Upload
end


function Gen:file(s, x, path)
  self:emit(format("if not %s(%s) then", self:k(is_upload), x))
  self:err(path, x, "file_type", "Input should be a file (a multipart/form-data upload)")
  self:emit("break end")
  if s.max_size then
    self:emit(format("if %s.size > %s then", x, self:k(s.max_size)))
    self:err(path, x .. ".filename", "file_too_large",
      format("File should be at most %d bytes", s.max_size), { max_size = s.max_size })
    self:emit("break end")
  end
  if s.content_types then
    local set = {}
    for _, t in ipairs(s.content_types) do set[lower(t)] = true end
    local expected = quote_list(s.content_types)
    self:emit(format("if not %s[lower((%s.content_type or ''):match('^%%s*([^;%%s]*)'))] then",
      self:k(set), x))
    self:err(path, x .. ".content_type", "file_type_not_allowed",
      "File should be of type " .. expected, { expected = expected })
    self:emit("break end")
  end
end


function Gen:boolean(s, x, path, mode)
  if mode == "string" then
    self:emit(format("if type(%s) == 'string' then", x))
    self:emit(format("local b = BOOLS[lower(%s)]", x))
    self:emit("if b == nil then")
    self:err(path, x, "bool_parsing", "Input should be a valid boolean, unable to interpret input")
    self:emit("break end")
    self:emit(format("%s = b", x))
    self:emit("end")
  end
  self:emit(format("if type(%s) ~= 'boolean' then", x))
  self:err(path, x, "bool_type", "Input should be a valid boolean")
  self:emit("break end")
end


function Gen:array(s, x, path, mode)
  self:emit(format("if type(%s) ~= 'table' or not is_list(%s) then", x, x))
  self:err(path, x, "list_type", "Input should be a valid list")
  self:emit("break end")
  self:emit(format("local n = #%s", x))
  if s.min_items then
    self:emit(format("if n < %d then", s.min_items))
    self:err(path, x, "too_short", nil, { field_type = "List", min_length = s.min_items },
      format("format(%q, n)", "List should have at least " ..
        plural(s.min_items, "item", "items") .. " after validation, not %d"))
    self:emit("end")
  end
  if s.max_items then
    self:emit(format("if n > %d then", s.max_items))
    self:err(path, x, "too_long", nil, { field_type = "List", max_length = s.max_items },
      format("format(%q, n)", "List should have at most " ..
        plural(s.max_items, "item", "items") .. " after validation, not %d"))
    self:emit("end")
  end
  if s.items and s.items.kind ~= "any" then
    local i, y = self:var(), self:var()
    self:emit(format("for %s = 1, n do", i))
    self:emit(format("local %s = %s[%s]", y, x, i))
    self:node(s.items, y, push(path, i .. " - 1"), mode)   -- locs count from 0
    self:emit(format("%s[%s] = %s", x, i, y))
    self:emit("end")
  end
  if s.unique then
    local i = self:var()
    self:emit("local seen = {}")
    self:emit(format("for %s = 1, n do", i))
    self:emit(format("local key = ukey(%s[%s])", x, i))
    self:emit("if seen[key] then")
    self:err(push(path, i .. " - 1"), x .. "[" .. i .. "]", "unique_items", nil, nil,
      format("format('List should have unique items: item %%d repeats item %%d', %s - 1, seen[key] - 1)", i))
    self:emit(format("else seen[key] = %s end", i))
    self:emit("end")
  end
end


-- The names of fields in a stable order (Lua tables have none).
local function field_names(s)
  local names = {}
  for k in pairs(s.fields) do names[#names + 1] = k end
  sort(names)
  return names
end
M.field_names = field_names


--- required(s): the set of required field names of object s.
function M.required(s)
  local req = {}
  if s.required then
    for _, r in ipairs(s.required) do req[r] = true end
  else
    for k, f in pairs(s.fields) do
      if f.default == nil and not f.optional then req[k] = true end
    end
  end
  return req
end


function Gen:object(s, x, path, mode)
  if mode == "string" then error("schema: an object cannot come from a string", 0) end
  self:emit(format("if type(%s) ~= 'table' or is_list(%s) then", x, x))
  if s.name then
    self:err(path, x, "model_type", "Input should be a valid dictionary or object to extract fields from (" .. s.name .. ")")
  else
    self:err(path, x, "dict_type", "Input should be a valid dictionary")
  end
  self:emit("break end")
  local req = M.required(s)
  local names = field_names(s)
  for _, name in ipairs(names) do
    local f = s.fields[name]
    local key = self:k(name)
    local y = self:var()
    self:emit(format("do local %s = %s[%s]", y, x, key))
    self:emit(format("if %s == nil then", y))
    if req[name] then
      self:err(push(path, key), x, "missing", "Field required")
    elseif f.default ~= nil and self.defaults then
      local d = f.default
      if type(d) == "table" then
        self:emit(format("%s[%s] = copy(%s)", x, key, self:k(d)))
      else
        self:emit(format("%s[%s] = %s", x, key, self:k(d)))
      end
    end
    self:emit("else")
    self:node(f, y, push(path, key), mode)
    self:emit(format("%s[%s] = %s", x, key, y))
    self:emit("end end")
  end
  local add = s.additional
  if add == false or is_schema(add) then
    local known = {}
    for _, name in ipairs(names) do known[name] = true end
    local k, y = self:var(), self:var()
    self:emit(format("for %s, %s in pairs(%s) do", k, y, x))
    self:emit(format("if not %s[%s] then", self:k(known), k))
    if add == false then
      self:err(push(path, k), y, "extra_forbidden", "Extra inputs are not permitted")
    else
      self:node(add, y, push(path, k), mode)
      self:emit(format("%s[%s] = %s", x, k, y))
    end
    self:emit("end end")
  end
end


-- A label for a branch of one_of in locs: its name, else its kind.
local function label(s)
  s = s.kind == "ref" and resolve(s) or s
  if s.kind == "wrap" then return label(s.of) end
  return s.name or s.kind
end


function Gen:one_of(s, x, path, mode)
  -- Each branch checks a copy (a failing branch must not leave defaults
  -- behind) into its own error list; errors carry the branch's label.
  local fnames, labels, seen = {}, {}, {}
  for i, b in ipairs(s.of) do
    local l = label(b)
    if seen[l] then l = l .. "[" .. i .. "]" end
    seen[l] = true
    labels[i] = l
    self.nfn = self.nfn + 1
    fnames[i] = "F" .. self.nfn
    local stack = {}
    for k, v in pairs(self.stack) do stack[k] = v end
    self:function_of(fnames[i], b, mode, stack)
  end
  self:emit("local matched, value, failed = 0, nil, {}")
  for i, fname in ipairs(fnames) do
    self:emit(format("do local e = {} local v = %s(copy(%s), e, %s)", fname, x,
      loc_code(push(path, self:k(labels[i])))))
    self:emit("if #e == 0 then matched = matched + 1 if matched == 1 then value = v end")
    self:emit("else failed[#failed + 1] = e end end")
  end
  self:emit("if matched == 0 then")
  self:emit("for i = 1, #failed do local e = failed[i] for j = 1, #e do errs[#errs + 1] = e[j] end end")
  self:emit("break end")
  self:emit("if matched > 1 then")
  self:err(path, x, "one_of_many", nil, nil,
    format("format(%q, matched)", "Input should match exactly one of " ..
      quote_list(labels):gsub("'", "") .. ", it matches %d"))
  self:emit("break end")
  self:emit(format("%s = value", x))
end


local PRELUDE = [[
local K, L, E, ulen, copy, ukey, is_list, FORMATS, BOOLS, null = ...
local type, tostring, tonumber, pairs, find, lower, format, huge =
  type, tostring, tonumber, pairs, string.find, string.lower, string.format, math.huge
]]


-- Load generated code; returns the function the chunk returns.
local function load_code(gen, body, chunkname)
  local fdecl = {}
  for i = 1, gen.nfn do fdecl[i] = "F" .. i end
  local src = PRELUDE ..
    (#fdecl > 0 and ("local " .. concat(fdecl, ", ") .. "\n") or "") ..
    concat(gen.fn_code, "\n") .. "\n" .. body
  local chunk, err = loadstring(src, "=" .. chunkname)
  if not chunk then
    error("schema: generated code does not load (a bug): " .. err .. "\n" .. src, 0)
  end
  return chunk(gen.consts, L, E, ulen, deep_copy, ukey, is_list, FORMATS, BOOLS, null), src
end


--- compile(s, opts): a function check(value, loc_prefix) that gives the
-- value converted, or nil, errors. opts.mode: "json" (default) or
-- "string" (a value from a query, header or path); opts.defaults = false:
-- check only (responses: nothing is filled in).
function M.compile(s, opts)
  if not is_schema(s) then error("schema.compile: expected a schema", 2) end
  opts = opts or {}
  local gen = new_gen(opts)
  local mode = opts.mode or "json"
  gen:node(s, "x", {}, mode)
  local body = "return function(x, P)\nlocal errs = {}\n" .. concat(gen.out, "\n") ..
    "\nif errs[1] then return nil, errs end\nreturn x\nend"
  local fn, src = load_code(gen, body, "schema " .. (s.name or s.kind))
  return fn, src
end


--- Gen for luaserve.inputs: a generator (gen:node(s, var, path, mode),
-- gen:emit, gen:k, gen:err) and load(gen, body, chunkname).
M.new_gen = new_gen
M.load_code = load_code
M.E = E
M.L = L


-- ---------------------------------------------------------------------------
-- JSON Schema (OpenAPI 3.1 is JSON Schema 2020-12)

-- A Lua pattern as an ECMA regex where one exists (nil otherwise: %b and
-- %f have none).
local CLASSES = { a = "A-Za-z", d = "0-9", l = "a-z", s = " \\t\\n\\r\\f\\v",
  u = "A-Z", w = "A-Za-z0-9", x = "0-9A-Fa-f", p = "!-/:-@\\[-`{-~",
  c = "\\x00-\\x1f" }
local REGEX_SPECIAL = "[\\^$.|?*+()%[%]{}/]"

function M.pattern_to_regex(p)
  local out, i, n, in_set = {}, 1, #p, false
  while i <= n do
    local c = p:sub(i, i)
    if c == "%" then
      local d = p:sub(i + 1, i + 1)
      if d == "b" or d == "f" then return nil end
      local lower_d = d:lower()
      local cls = CLASSES[lower_d]
      if cls then
        if in_set then
          if d ~= lower_d then return nil end   -- a negated class in a set
          out[#out + 1] = cls
        elseif d == lower_d then
          out[#out + 1] = "[" .. cls .. "]"
        else
          out[#out + 1] = "[^" .. cls .. "]"
        end
      elseif d:match(REGEX_SPECIAL) or d == "-" and in_set then
        out[#out + 1] = "\\" .. d
      else
        out[#out + 1] = d
      end
      i = i + 2
    elseif in_set then
      if c == "]" then in_set = false end
      out[#out + 1] = (c == "\\" or c == "[") and "\\" .. c or c
      i = i + 1
    elseif c == "[" then
      in_set = true
      out[#out + 1] = "["
      if p:sub(i + 1, i + 1) == "^" then out[#out + 1] = "^" i = i + 1 end
      if p:sub(i + 1, i + 1) == "]" then out[#out + 1] = "\\]" i = i + 1 end
      i = i + 1
    elseif c == "-" then
      out[#out + 1] = "*?"
      i = i + 1
    elseif c == "^" and i == 1 then
      out[#out + 1] = "^"
      i = i + 1
    elseif c == "$" and i == n then
      out[#out + 1] = "$"
      i = i + 1
    elseif c == "." or c == "*" or c == "+" or c == "?" or c == "(" or c == ")" then
      out[#out + 1] = c
      i = i + 1
    elseif c:match(REGEX_SPECIAL) then
      out[#out + 1] = "\\" .. c
      i = i + 1
    else
      out[#out + 1] = c
      i = i + 1
    end
  end
  return concat(out)
end


local JSON_TYPE = { string = "string", integer = "integer", number = "number",
  boolean = "boolean", array = "array", object = "object" }


--- to_json(s, components): s as a JSON Schema table. components, when
-- given, is { schemas = {}, owners = {} }: a named schema is written once
-- into components.schemas[name] and referred to with $ref (two different
-- schemas with one name raise). Without it named schemas are inline.
function M.to_json(s, components)
  local function conv(x, top)
    if x.kind == "ref" then x = resolve(x) end
    if x.name and components and not top then
      local owner = components.owners[x.name]
      if owner == nil then
        components.owners[x.name] = x
        components.schemas[x.name] = conv(x, true)
      elseif owner ~= x then
        error(("openapi: two different schemas are named '%s'"):format(x.name), 0)
      end
      return { ["$ref"] = "#/components/schemas/" .. x.name }
    end
    local j = {}
    if x.kind == "wrap" then
      j.anyOf = { conv(x.of), { type = "null" } }
    elseif x.kind == "one_of" then
      local list = {}
      for i, b in ipairs(x.of) do list[i] = conv(b) end
      j.oneOf = list
      if x.nullable then j.oneOf[#list + 1] = { type = "null" } end
    elseif x.kind == "file" then
      j.type, j.format = "string", "binary"
    elseif x.kind ~= "any" then
      local t = JSON_TYPE[x.kind]
      j.type = x.nullable and { t, "null" } or t
    end
    j.title = x.title or x.name
    j.description = x.description
    j.deprecated = x.deprecated or nil
    if x.default ~= nil then j.default = x.default end
    if x.example ~= nil then j.examples = { x.example } end
    if x.examples ~= nil then j.examples = x.examples end
    if x.kind == "string" then
      j.minLength, j.maxLength = x.min_length, x.max_length
      if x.pattern then j.pattern = M.pattern_to_regex(x.pattern) end
      j.enum, j.format = x.enum, x.format
    elseif x.kind == "integer" or x.kind == "number" then
      j.minimum, j.maximum = x.min, x.max
      j.exclusiveMinimum, j.exclusiveMaximum = x.exclusive_min, x.exclusive_max
      j.multipleOf, j.enum = x.multiple_of, x.enum
    elseif x.kind == "array" then
      if x.items then j.items = conv(x.items) end
      j.minItems, j.maxItems = x.min_items, x.max_items
      j.uniqueItems = x.unique or nil
    elseif x.kind == "object" then
      local props = {}
      for _, name in ipairs(field_names(x)) do props[name] = conv(x.fields[name]) end
      j.properties = props
      local req = {}
      local rset = M.required(x)
      for _, name in ipairs(field_names(x)) do
        if rset[name] then req[#req + 1] = name end
      end
      if #req > 0 then j.required = req end
      if x.additional == false then
        j.additionalProperties = false
      elseif is_schema(x.additional) then
        j.additionalProperties = conv(x.additional)
      end
    end
    return j
  end
  return conv(s, false)
end

return M
