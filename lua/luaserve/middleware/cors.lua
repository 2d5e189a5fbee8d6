-- luaserve.middleware.cors: Cross-Origin Resource Sharing. A preflight
-- (OPTIONS with Access-Control-Request-Method) is answered here, without
-- the route; other requests from an allowed origin get the
-- Access-Control-* headers on their answer, whatever its status.
--
--   app:use(cors{
--     origins = { "https://app.example.com" },   -- or "*" (any origin)
--     methods = { "GET", "POST" },               -- default: every method; "*" too
--     headers = { "Authorization" },             -- beyond the CORS-safelisted ones; "*"
--     credentials = false,                       -- Access-Control-Allow-Credentials
--     expose_headers = { "X-Request-ID" },
--     max_age = 600,                             -- seconds a preflight is cached
--   })
--
-- With credentials, "*" is answered with the request's own origin (the
-- Fetch standard refuses "*" with credentials), and Vary: Origin is added
-- whenever the answer depends on the origin.

local hooks = require "luaserve.middleware.hooks"

local concat = table.concat
local lower = string.lower
local upper = string.upper
local gmatch = string.gmatch
local type = type
local error = error

local ALL_METHODS = { "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS" }
-- Request headers a browser sends without asking (CORS-safelisted).
local SAFE_HEADERS = { "accept", "accept-language", "content-language", "content-type" }


local function set_of(list, fold)
  local s = {}
  for i = 1, #list do s[fold(list[i])] = true end
  return s
end


local function list_opt(v, default, name)
  if v == nil then return default end
  if v == "*" then return "*" end
  if type(v) ~= "table" then
    error("cors: " .. name .. " must be a list or \"*\"", 3)
  end
  return v
end


-- Add value to a comma-separated header, once.
local function add_vary(res, value)
  local v = res:header("Vary")
  if v == nil or v == "" then
    res:set_header("Vary", value)
  elseif not lower(v):find(lower(value), 1, true) and v ~= "*" then
    res:set_header("Vary", v .. ", " .. value)
  end
end


return function(opts)
  opts = opts or {}
  local origins = list_opt(opts.origins, {}, "origins")
  local methods = list_opt(opts.methods, ALL_METHODS, "methods")
  local headers = list_opt(opts.headers, {}, "headers")
  local expose = list_opt(opts.expose_headers, {}, "expose_headers")
  local credentials = opts.credentials == true
  local max_age = tostring(opts.max_age or 600)
  local any_origin = origins == "*"
  local origin_ok = any_origin or set_of(origins, function(o) return o end)
  local method_ok = methods == "*" or set_of(methods, upper)
  local header_ok = headers == "*" or set_of(headers, lower)
  for i = 1, #SAFE_HEADERS do
    if header_ok ~= "*" then header_ok[SAFE_HEADERS[i]] = true end
  end
  local methods_value = methods == "*" and concat(ALL_METHODS, ", ") or concat(methods, ", ")
  local expose_value = expose ~= "*" and #expose > 0 and concat(expose, ", ") or
    (expose == "*" and "*" or nil)

  local function allowed(origin)
    return any_origin or origin_ok[origin] == true
  end

  -- The Access-Control-Allow-Origin value for an allowed origin.
  local function allow_origin(origin)
    if any_origin and not credentials then return "*" end
    return origin
  end

  local function preflight(req, origin)
    local method = req.headers["access-control-request-method"]
    local asked = req.headers["access-control-request-headers"]
    local problems = {}
    if not allowed(origin) then problems[#problems + 1] = "origin" end
    if method_ok ~= "*" and not method_ok[upper(method)] then
      problems[#problems + 1] = "method"
    end
    if asked and header_ok ~= "*" then
      for h in gmatch(asked, "[^,%s]+") do
        if not header_ok[lower(h)] then problems[#problems + 1] = "headers" break end
      end
    end
    local h = { Vary = "Origin" }
    if #problems > 0 then
      return 400, "Disallowed CORS " .. concat(problems, ", "), h
    end
    h["Access-Control-Allow-Origin"] = allow_origin(origin)
    h["Access-Control-Allow-Methods"] = methods_value
    h["Access-Control-Max-Age"] = max_age
    if asked then
      h["Access-Control-Allow-Headers"] = asked   -- every one was checked
    end
    if credentials then h["Access-Control-Allow-Credentials"] = "true" end
    return 200, "OK", h
  end

  -- Unless every origin gets "*", the answer depends on Origin (allowed,
  -- refused or absent): a shared cache must know, whatever this one was.
  local varies = not (any_origin and not credentials)

  return hooks{
    before = function(req)
      local origin = req.headers.origin
      if req.method == "OPTIONS" and origin and req.headers["access-control-request-method"] then
        return preflight(req, origin)
      end
    end,
    after = function(req, res)
      local origin = req.headers.origin
      if origin and allowed(origin) then
        res:set_header("Access-Control-Allow-Origin", allow_origin(origin))
        if credentials then res:set_header("Access-Control-Allow-Credentials", "true") end
        if expose_value then res:set_header("Access-Control-Expose-Headers", expose_value) end
      end
      if varies then add_vary(res, "Origin") end
    end,
  }
end
