-- luaserve.middleware.request_id: every request gets an id: the client's
-- X-Request-ID when it is sane (1 to 200 visible ASCII characters), else a
-- new random one (32 hex digits). It is req.request_id for handlers, goes
-- back on the answer's X-Request-ID, and is in the access log line.
--
--   app:use(request_id{ header = "X-Request-ID", generate = fn })

local core = require "luaserve.core"
local hooks = require "luaserve.middleware.hooks"

local random_hex = core.random_hex
local find = string.find
local lower = string.lower


return function(opts)
  opts = opts or {}
  local header = opts.header or "X-Request-ID"
  local key = lower(header)
  local generate = opts.generate or function() return random_hex(16) end

  return hooks{
    before = function(req)
      local id = req.headers[key]
      if id == nil or #id > 200 or find(id, "[^\33-\126]") then id = generate(req) end
      req.request_id = id
    end,
    after = function(req, res)
      res:set_header(header, req.request_id)
    end,
  }
end
