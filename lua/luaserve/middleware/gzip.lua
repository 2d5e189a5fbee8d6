-- luaserve.middleware.gzip: compress answers with gzip (zlib) for clients
-- that accept it. Only answers of a compressible type (text, JSON,
-- JavaScript, XML, SVG, ...) of at least minimum_size bytes, never one that
-- already has a Content-Encoding; streamed answers only when asked
-- (streams = true: each chunk is flushed as it is written). Every answer
-- it could compress says Vary: Accept-Encoding.
--
--   app:use(gzip{ minimum_size = 500, level = 6, streams = false })

local core = require "luaserve.core"
local hooks = require "luaserve.middleware.hooks"

local gzip = core.gzip
local deflater = core.deflater
local lower = string.lower
local find = string.find
local match = string.match
local gmatch = string.gmatch
local tonumber = tonumber

local COMPRESSIBLE = {
  "^text/", "^application/json", "^application/[%w.+-]*%+json",
  "^application/javascript", "^application/x%-javascript", "^application/xml",
  "^application/[%w.+-]*%+xml", "^image/svg%+xml", "^application/wasm",
  "^application/x%-ndjson", "^application/graphql",
}


local function compressible(ctype)
  if ctype == nil then return false end
  ctype = lower(ctype)
  for i = 1, #COMPRESSIBLE do
    if find(ctype, COMPRESSIBLE[i]) then return true end
  end
  return false
end


-- Does the Accept-Encoding header allow gzip (q above 0)?
local function accepts_gzip(value)
  if value == nil then return false end
  for part in gmatch(lower(value), "[^,]+") do
    local coding, q = match(part, "^%s*([%w*-]+)%s*;?%s*q?=?%s*([%d.]*)")
    if coding == "gzip" or coding == "*" then
      return q == "" or (tonumber(q) or 0) > 0
    end
  end
  return false
end


local function add_vary(res)
  local v = res:header("Vary")
  if v == nil or v == "" then
    res:set_header("Vary", "Accept-Encoding")
  elseif not find(lower(v), "accept-encoding", 1, true) and v ~= "*" then
    res:set_header("Vary", v .. ", Accept-Encoding")
  end
end


-- A stream function whose chunks are compressed.
local function gzip_stream(stream, level)
  return function(write)
    local d = deflater(level)
    local function zwrite(chunk)
      local out = d:push(chunk)
      if out == "" then return true end
      return write(out)
    end
    stream(zwrite)
    return write(d:finish())
  end
end


return function(opts)
  opts = opts or {}
  local minimum = opts.minimum_size or 500
  local level = opts.level or 6
  local streams = opts.streams == true

  return hooks{ after = function(req, res)
    local status = res.status
    if status < 200 or status == 204 or status == 304 then return res end
    local ctype = res.content_type or res:header("Content-Type")
    if not compressible(ctype) then return res end
    if res.stream and (not streams or type(res.stream) ~= "function") then
      return res   -- a file body (sendfile) is sent as it is
    end
    if not res.stream and #res.body < minimum then return res end
    add_vary(res)   -- the answer depends on Accept-Encoding from here on
    if res:header("Content-Encoding") then return res end
    if not accepts_gzip(req.headers["accept-encoding"]) then return res end
    if res.stream then
      res.stream = gzip_stream(res.stream, level)
    else
      res.body = gzip(res.body, level)
    end
    res:set_header("Content-Encoding", "gzip")
    return res
  end }
end
