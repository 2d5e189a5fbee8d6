-- luaserve.json: JSON through lua-cjson, with a null and empty arrays that
-- round-trip. cjson alone decodes `[]` and `{}` to the same empty table and
-- encodes it as `{}`; here `[]` decodes to a table marked as an array
-- (json.array_mt) and such a table encodes as `[]`. Integers are written
-- with all their digits (cjson keeps 14 significant ones: 1e14 and above
-- would come out as 1.2345678901235e+15).

local cjson = require "cjson"

local encode = cjson.new().encode   -- its own settings, not the global's
local decode_instance = cjson.new()
local decode = decode_instance.decode
local find = string.find
local gsub = string.gsub
local format = string.format
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
local EMPTY_ARRAY_PATTERN = EMPTY_ARRAY_JSON:gsub("%p", "%%%0")   -- for gsub
local BIG_INT = "\0luaserve-int:"          -- .. digits .. "\0"
local BIG_INT_PATTERN = '"\\u0000luaserve%-int:(%-?%d+)\\u0000"'


-- An integer that cjson would write with too few digits.
local function big_int(x)
  return (x >= 1e14 or x <= -1e14) and x <= 2 ^ 63 and x >= -2 ^ 63 and x % 1 == 0
end


-- Does v hold an empty table marked as an array, or a big integer?
-- (depth-first; each table looked at once, so shared tables and cycles
-- cost nothing more)
local function needs_placeholders(v, seen)
  if getmetatable(v) == M.array_mt and next(v) == nil then return true end
  for _, x in pairs(v) do
    local t = type(x)
    if t == "table" then
      -- made only once tables nest: a flat table allocates nothing here
      seen = seen or {}
      seen[v] = true
      if not seen[x] and needs_placeholders(x, seen) then return true end
    elseif t == "number" and big_int(x) then
      return true
    end
  end
  return false
end


-- A copy of v with each marked empty array and each big integer replaced
-- by a placeholder string. A table inside itself (on_path) is left as is:
-- cjson then raises on it.
local function with_placeholders(v, on_path)
  if getmetatable(v) == M.array_mt and next(v) == nil then return EMPTY_ARRAY end
  if on_path[v] then return v end
  on_path[v] = true
  local out = {}
  for k, x in pairs(v) do
    local t = type(x)
    if t == "table" then
      x = with_placeholders(x, on_path)
    elseif t == "number" and big_int(x) then
      x = BIG_INT .. format("%.0f", x) .. "\0"
    end
    out[k] = x
  end
  on_path[v] = nil
  return out
end


-- cjson 2.1.0 writes "/" as "\/": valid, but noisy ("\/users\/{id}") and
-- unlike every other server. cjson writes "\/" only for a "/" (a backslash
-- is "\\"), so turning each "\/" back into "/" is exact.
local function unescape_slashes(s)
  if find(s, "\\/", 1, true) then return (gsub(s, "\\/", "/")) end
  return s
end


--- encode(v): a JSON string, or raises on what JSON cannot hold
-- (functions, userdata, cycles, sparse arrays, NaN and infinities).
function M.encode(v)
  local t = type(v)
  if t == "table" and needs_placeholders(v) then
    local s = encode(with_placeholders(v, {}))
    s = gsub(s, EMPTY_ARRAY_PATTERN, "[]")
    return unescape_slashes((gsub(s, BIG_INT_PATTERN, "%1")))
  elseif t == "number" and big_int(v) then
    return format("%.0f", v)
  end
  return unescape_slashes(encode(v))
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
