-- luaserve.json: JSON with a null and empty arrays that round-trip.
-- Encoding is the core's (core/json.c: one pass, integers with all their
-- digits, "/" as is); decoding is lua-cjson's. cjson alone decodes `[]` and
-- `{}` to the same empty table; here `[]` decodes to a table marked as an
-- array (json.array_mt) and such a table encodes as `[]`.

local cjson = require "cjson"
local core = require "luaserve.core"

local decode = cjson.new().decode   -- its own settings, not the global's
local find = string.find
local setmetatable = setmetatable
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

--- encode(v): a JSON string, or raises on what JSON cannot hold
-- (functions, userdata, cycles, sparse arrays, NaN and infinities), naming
-- where it sits. Each Lua state has its own encoder (and its buffer).
M.encode = core.json_encoder(M.array_mt)

-- decode marks `[]` by reading it as this string first.
local EMPTY_ARRAY = "\0luaserve-empty-array\0"
local EMPTY_ARRAY_JSON = '"\\u0000luaserve-empty-array\\u0000"'


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
