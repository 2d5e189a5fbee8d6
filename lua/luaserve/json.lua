-- luaserve.json: JSON through lua-cjson, with a null and empty arrays that
-- round-trip. cjson alone decodes `[]` and `{}` to the same empty table and
-- encodes it as `{}`; here `[]` decodes to a table marked as an array
-- (json.array_mt) and such a table encodes as `[]`.

local cjson = require "cjson"

local encode = cjson.new().encode   -- its own settings, not the global's
local decode_instance = cjson.new()
local decode = decode_instance.decode
local find = string.find
local getmetatable = getmetatable
local setmetatable = setmetatable
local next = next
local pairs = pairs
local type = type

local M = {}

--- The JSON null: decodes from `null`, encodes as `null`.
M.null = cjson.null

--- The metatable of tables that are JSON arrays even when empty.
M.array_mt = { __name = "luaserve.json.array" }

--- Mark t (default: a new table) as a JSON array.
function M.array(t)
  return setmetatable(t or {}, M.array_mt)
end

--- An empty array constant (do not add to it; use json.array() for that).
M.empty_array = M.array({})

local EMPTY_ARRAY = "\0luaserve-empty-array\0"
local EMPTY_ARRAY_JSON = '"\\u0000luaserve-empty-array\\u0000"'


-- Does v hold an empty table marked as an array? (depth-first, cheap)
local function has_empty_array(v, depth)
  if depth > 100 then return false end
  if getmetatable(v) == M.array_mt and next(v) == nil then return true end
  for _, x in pairs(v) do
    if type(x) == "table" and has_empty_array(x, depth + 1) then return true end
  end
  return false
end


-- A copy of v with each marked empty array replaced by the placeholder.
local function with_placeholders(v, depth)
  if getmetatable(v) == M.array_mt and next(v) == nil then return EMPTY_ARRAY end
  if depth > 100 then return v end
  local out = {}
  for k, x in pairs(v) do
    out[k] = type(x) == "table" and with_placeholders(x, depth + 1) or x
  end
  return out
end


--- encode(v): a JSON string, or raises on what JSON cannot hold
-- (functions, userdata, cycles, sparse arrays).
function M.encode(v)
  if type(v) == "table" and has_empty_array(v, 0) then
    local s = encode(with_placeholders(v, 0))
    return (s:gsub(EMPTY_ARRAY_JSON, "[]"))
  end
  return encode(v)
end


-- Mark the tables decoded from `[]`: they were written as the placeholder.
local function mark_arrays(v)
  for k, x in pairs(v) do
    if x == EMPTY_ARRAY then
      v[k] = M.array({})
    elseif type(x) == "table" then
      mark_arrays(x)
    end
  end
end


-- Replace each `[` `]` pair with nothing but white space between, outside
-- strings, by the placeholder string.
local function placeholders_in(s)
  local out, i, n, last = {}, 1, #s, 1
  while i <= n do
    local c = s:byte(i)
    if c == 34 then   -- a string: skip it, escapes included
      i = i + 1
      while i <= n do
        local d = s:byte(i)
        if d == 92 then i = i + 2
        elseif d == 34 then break
        else i = i + 1 end
      end
      i = i + 1
    elseif c == 91 then
      local j = find(s, "^%s*%]", i + 1)
      if j then
        local _, e = find(s, "^%s*%]", i + 1)
        out[#out + 1] = s:sub(last, i - 1)
        out[#out + 1] = EMPTY_ARRAY_JSON
        last = e + 1
        i = e + 1
      else
        i = i + 1
      end
    else
      i = i + 1
    end
  end
  out[#out + 1] = s:sub(last)
  return table.concat(out)
end


--- decode(s): the value, or nil, err for text that is not JSON.
function M.decode(s)
  if type(s) ~= "string" then
    error("json.decode: expected a string, got " .. type(s), 2)
  end
  local placeholders = find(s, "[", 1, true) and find(s, "%[%s*%]")
  if placeholders then s = placeholders_in(s) end
  local ok, v = pcall(decode, s)
  if not ok then
    return nil, (tostring(v):gsub("^.-:%d+: ", ""))
  end
  if placeholders then
    if v == EMPTY_ARRAY then return M.array({}) end
    if type(v) == "table" then mark_arrays(v) end
  end
  return v
end

return M
