-- luaserve.middleware.request_id: every request gets an id: the client's
-- X-Request-ID when it is sane (1 to 200 visible ASCII characters), else a
-- new random one (32 hex digits). It is req.request_id for handlers, goes
-- back on the answer's X-Request-ID, and is in the access log line.
--
--   app:use(request_id{ header = "X-Request-ID", generate = fn })

local core = require "luaserve.core"

local random_hex = core.random_hex
local find = string.find
local lower = string.lower


return function(opts)
  opts = opts or {}
  local header = opts.header or "X-Request-ID"
  local key = lower(header)
  local generate = opts.generate or function() return random_hex(16) end

  return function(req, call_next)
    local id = req.headers[key]
    if id == nil or #id > 200 or find(id, "[^\33-\126]") then id = generate(req) end
    req.request_id = id
    local res = call_next(req)
    res:set_header(header, id)
    return res
  end
end
