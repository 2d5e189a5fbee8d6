-- luaserve.middleware.trusted_hosts: answer 400 to a request whose Host
-- is not one of the app's (a guard against Host header attacks: links and
-- redirects built from req.headers.host). Names match exactly (any case,
-- port ignored); "*.example.com" matches every subdomain of example.com
-- (not example.com itself); "*" matches anything.
--
--   app:use(trusted_hosts{ "example.com", "*.example.com", "localhost" })

local hooks = require "luaserve.middleware.hooks"

local lower = string.lower
local match = string.match
local sub = string.sub
local type = type
local error = error


return function(hosts)
  if type(hosts) ~= "table" or #hosts == 0 then
    error("trusted_hosts: expected a list of host names", 2)
  end
  local exact, suffixes, any = {}, {}, false
  for i = 1, #hosts do
    local h = lower(hosts[i])
    if h == "*" then
      any = true
    elseif sub(h, 1, 2) == "*." then
      suffixes[#suffixes + 1] = sub(h, 2)   -- ".example.com"
    else
      exact[h] = true
    end
  end

  local function trusted(host)
    if host == nil then return false end
    host = lower(host)
    host = match(host, "^(%[[^%]]*%])") or match(host, "^([^:]*)")
    if exact[host] then return true end
    for i = 1, #suffixes do
      local s = suffixes[i]
      if #host > #s and sub(host, -#s) == s then return true end
    end
    return false
  end

  return hooks{ before = function(req)
    if any or trusted(req.headers.host) then return nil end
    return 400, { detail = "Invalid host header" }
  end }
end
