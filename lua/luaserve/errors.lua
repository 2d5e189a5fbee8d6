-- luaserve.errors: HTTPError, the error a handler raises to answer with a
-- status and a JSON {"detail": ...}.

local setmetatable = setmetatable
local type = type
local error = error

local M = {}

local HTTPError = {}
HTTPError.__index = HTTPError
HTTPError.__name = "luaserve.HTTPError"
M.HTTPError = HTTPError


function HTTPError.__tostring(e)
  local d = e.detail
  return ("HTTPError %d: %s"):format(e.status,
    type(d) == "string" and d or "(detail)")
end


--- HTTPError(status, detail, headers): an error object; raise it with
-- error(), or call luaserve.raise(status, detail).
function M.new(status, detail, headers)
  if type(status) ~= "number" or status < 100 or status > 599 then
    error("HTTPError: status must be a number from 100 to 599", 2)
  end
  return setmetatable({ status = status, detail = detail, headers = headers },
    HTTPError)
end


function M.is_http_error(v)
  return type(v) == "table" and getmetatable(v) == HTTPError
end


--- check_string(v, what, level): raise "<what>: expected a string, got
-- <type>" when v is not a string, naming the line that called the API
-- function doing the check (level 1, the default; 2 for its caller...).
function M.check_string(v, what, level)
  if type(v) ~= "string" then
    error(what .. ": expected a string, got " .. type(v), (level or 1) + 2)
  end
end

return M
