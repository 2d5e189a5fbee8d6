-- luaserve.cookies: the Cookie request header parsed (RFC 6265 5.4, as
-- browsers send it), Set-Cookie values made and checked (RFC 6265 4.1 and
-- the rules browsers enforce: SameSite=None needs Secure, the __Secure-
-- and __Host- prefixes, 4096 bytes), and signed values for sessions
-- (HMAC-SHA256 with the cookie's name and the time it was signed, keys
-- rotated by giving a list of secrets).
--
--   req.cookies.theme                                 -- parsed, percent-decoded
--   res:set_cookie("theme", "dark", { max_age = 3600, http_only = true })
--   return 200, body, { ["Set-Cookie"] = { cookies.serialize("a", "1"),
--                                          cookies.serialize("b", "2") } }
--   res:set_cookie("sid", user_id, { secret = SECRET, http_only = true })
--   local uid = req:signed_cookie("sid", SECRET, 86400)    -- nil if forged/old

local crypto = require "luaserve.crypto"

local find = string.find
local sub = string.sub
local byte = string.byte
local char = string.char
local format = string.format
local gsub = string.gsub
local match = string.match
local lower = string.lower
local tonumber = tonumber
local tostring = tostring
local type = type
local floor = math.floor
local concat = table.concat
local error = error
local pairs = pairs
local os_time = os.time
local os_date = os.date

local M = {}

-- Browsers drop a cookie whose name and value exceed this.
M.MAX_SIZE = 4096
-- A signing secret shorter than this is refused (crypto.token() makes one).
M.MIN_SECRET = 16


-- ---------------------------------------------------------------------------
-- Parsing

local function hex_char(h)
  return char(tonumber(h, 16))
end


--- decode(value): %XX sequences decoded (others left as they are).
function M.decode(value)
  if not find(value, "%", 1, true) then return value end
  return (gsub(value, "%%(%x%x)", hex_char))
end
local decode = M.decode


--- parse(header): { name = value } of a Cookie header: pairs split at
-- ';', blanks around names and values dropped, a value in double quotes
-- unquoted, values percent-decoded; the first of a repeated name wins (the
-- most specific path, as browsers order them); pairs without '=' or with an
-- empty name are skipped.
function M.parse(header)
  local out = {}
  if type(header) ~= "string" or header == "" then return out end
  local pos, len = 1, #header
  while pos <= len do
    local semi = find(header, ";", pos, true) or len + 1
    local eq = find(header, "=", pos, true)
    if eq and eq < semi then
      local name = match(sub(header, pos, eq - 1), "^%s*(.-)%s*$")
      local value = match(sub(header, eq + 1, semi - 1), "^%s*(.-)%s*$")
      if #value >= 2 and byte(value, 1) == 34 and byte(value, -1) == 34 then
        value = sub(value, 2, -2)
      end
      if name ~= "" and out[name] == nil then out[name] = decode(value) end
    end
    pos = semi + 1
  end
  return out
end


-- ---------------------------------------------------------------------------
-- Set-Cookie

-- A cookie name is an RFC 9110 token.
local function check_name(name, level)
  if type(name) ~= "string" or name == "" or
      find(name, "[^!#$%%&'*+%-.^_`|~%w]") then
    error(("cookie name %s is not valid: use letters, digits and !#$%%&'*+-.^_`|~")
      :format(type(name) == "string" and format("%q", name) or type(name)), level + 1)
  end
end


-- Values: every byte outside RFC 6265's cookie-octet (and '%', so that
-- decoding gives back what was set) percent-encoded.
local function encode(value)
  return (gsub(value, "[^!#$&'()*+%-./0-9:<=>?@A-Z%[%]^_`a-z{|}~]", function(c)
    return format("%%%02X", byte(c))
  end))
end
M.encode = encode


-- An attribute value: no control characters, no ';'.
local function check_attr(what, v, level)
  if type(v) ~= "string" then
    error(("cookie option %s: expected a string, got %s"):format(what, type(v)), level + 1)
  end
  if find(v, "[%c;]") then
    error(("cookie option %s: %q has a control character or ';'"):format(what, v),
      level + 1)
  end
  return v
end


local OPTIONS = { max_age = true, expires = true, path = true, domain = true,
  secure = true, http_only = true, same_site = true, partitioned = true,
  secret = true }
local ALIASES = { maxage = "max_age", ["max-age"] = "max_age",
  httponly = "http_only", samesite = "same_site" }
local SAME_SITE = { strict = "Strict", lax = "Lax", none = "None" }


--- http_date(t): an IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT").
function M.http_date(t)
  return os_date("!%a, %d %b %Y %H:%M:%S GMT", floor(t))
end


--- serialize(name, value, opts): a Set-Cookie header value. value: a
-- string or number (percent-encoded as needed). opts: max_age (seconds;
-- 0 deletes), expires (seconds since the epoch, or an HTTP date string),
-- path, domain, secure, http_only, same_site ("Strict", "Lax", "None"),
-- partitioned, secret (sign the value, see sign). Raises on a bad name,
-- value or option (nothing unsafe reaches the header).
function M.serialize(name, value, opts, level)
  level = (level or 1) + 1
  check_name(name, level)
  local tv = type(value)
  if tv == "number" then value = tostring(value)
  elseif tv ~= "string" then
    error(("cookie %s: the value must be a string or number, got %s"):format(name, tv),
      level)
  end
  opts = opts or {}
  if type(opts) ~= "table" then
    error(("cookie %s: options must be a table"):format(name), level)
  end
  for k in pairs(opts) do
    if not OPTIONS[k] then
      local hint = ALIASES[lower(tostring(k))]
      error(("cookie %s: unknown option '%s'%s (max_age, expires, path, domain, " ..
        "secure, http_only, same_site, partitioned, secret)"):format(name,
        tostring(k), hint and (" (did you mean " .. hint .. "?)") or ""), level)
    end
  end
  if opts.secret ~= nil then value = M.sign(name, value, opts.secret) end
  local parts = { name .. "=" .. encode(value) }
  if #parts[1] > M.MAX_SIZE then
    error(("cookie %s is %d bytes: browsers keep at most %d"):format(name,
      #parts[1], M.MAX_SIZE), level)
  end
  local max_age = opts.max_age
  if max_age ~= nil then
    if type(max_age) ~= "number" or max_age ~= max_age then
      error(("cookie %s: max_age must be a number of seconds"):format(name), level)
    end
    parts[#parts + 1] = "Max-Age=" .. format("%d", max_age > 0 and floor(max_age) or 0)
  end
  local expires = opts.expires
  if expires ~= nil then
    if type(expires) == "number" then
      expires = M.http_date(expires)
    else
      check_attr("expires", expires, level)
    end
    parts[#parts + 1] = "Expires=" .. expires
  end
  local path = opts.path
  if path ~= nil then
    check_attr("path", path, level)
    if byte(path, 1) ~= 47 then
      error(("cookie %s: path must start with '/'"):format(name), level)
    end
    parts[#parts + 1] = "Path=" .. path
  end
  local domain = opts.domain
  if domain ~= nil then
    check_attr("domain", domain, level)
    if not find(domain, "^%.?[%w][%w%-%.]*$") then
      error(("cookie %s: domain %q is not a host name"):format(name, domain), level)
    end
    parts[#parts + 1] = "Domain=" .. domain
  end
  if opts.secure then parts[#parts + 1] = "Secure" end
  if opts.http_only then parts[#parts + 1] = "HttpOnly" end
  local same_site = opts.same_site
  if same_site ~= nil then
    local canon = type(same_site) == "string" and SAME_SITE[lower(same_site)]
    if not canon then
      error(("cookie %s: same_site must be \"Strict\", \"Lax\" or \"None\""):format(name),
        level)
    end
    if canon == "None" and not opts.secure then
      error(("cookie %s: same_site \"None\" needs secure = true (browsers drop it " ..
        "otherwise)"):format(name), level)
    end
    parts[#parts + 1] = "SameSite=" .. canon
  end
  if opts.partitioned then
    if not opts.secure then
      error(("cookie %s: partitioned needs secure = true"):format(name), level)
    end
    parts[#parts + 1] = "Partitioned"
  end
  if sub(name, 1, 9) == "__Secure-" and not opts.secure then
    error(("cookie %s: a __Secure- cookie needs secure = true"):format(name), level)
  end
  if sub(name, 1, 7) == "__Host-" and (not opts.secure or opts.domain or opts.path ~= "/") then
    error(("cookie %s: a __Host- cookie needs secure = true, path = \"/\" and no " ..
      "domain"):format(name), level)
  end
  return concat(parts, "; ")
end


--- deletion(name, opts): a Set-Cookie value that makes browsers drop the
-- cookie (empty, Max-Age=0, Expires in 1970). Give the path and domain it
-- was set with: a cookie is only replaced by one with the same.
function M.deletion(name, opts)
  local o = {}
  for k, v in pairs(opts or {}) do o[k] = v end
  o.max_age, o.expires, o.secret = 0, 0, nil
  return M.serialize(name, "", o, 2)
end


-- ---------------------------------------------------------------------------
-- Signed values

local function check_secret(secret, level)
  if type(secret) ~= "string" or #secret < M.MIN_SECRET then
    error(("cookie secret must be a string of at least %d bytes (make one with " ..
      "luaserve.crypto.token())"):format(M.MIN_SECRET), level + 1)
  end
end


local function mac(secret, name, payload)
  return crypto.hmac_sha256(secret, name .. "=" .. payload, "base64url")
end


--- sign(name, value, secret, now): value.timestamp.mac, the MAC an
-- HMAC-SHA256 over the cookie's name, the value and the time (seconds),
-- keyed by secret (or by the first of a list of secrets). The value stays
-- readable: sign, do not store secrets in it.
function M.sign(name, value, secret, now)
  if type(secret) == "table" then secret = secret[1] end
  check_secret(secret, 2)
  value = tostring(value)
  local payload = value .. "." .. format("%d", floor(now or os_time()))
  return payload .. "." .. mac(secret, name, payload)
end


--- unsign(name, signed, secrets, max_age, now): the value, or nil, why
-- ("malformed", "bad signature", "expired"). secrets: one secret or a list
-- (every one is tried: rotate keys by putting the new one first).
-- max_age: seconds a signature stays valid (nil: no limit).
function M.unsign(name, signed, secrets, max_age, now)
  if type(signed) ~= "string" then return nil, "malformed" end
  local payload, sig = match(signed, "^(.*)%.([%w_%-]+)$")
  if not payload then return nil, "malformed" end
  local value, ts = match(payload, "^(.*)%.(%d+)$")
  if not value then return nil, "malformed" end
  local list = type(secrets) == "table" and secrets or { secrets }
  local ok = false
  for i = 1, #list do
    check_secret(list[i], 2)
    if crypto.equal(mac(list[i], name, payload), sig) then ok = true break end
  end
  if not ok then return nil, "bad signature" end
  if max_age then
    local age = (now or os_time()) - tonumber(ts)
    if age > max_age or age < -300 then return nil, "expired" end
  end
  return value
end


return M
