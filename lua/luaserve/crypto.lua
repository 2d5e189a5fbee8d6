-- luaserve.crypto: SHA-256, HMAC-SHA256, secure random tokens and a
-- constant-time comparison, from OpenSSL's libcrypto. Plain functions of
-- their arguments: they work in async handlers and in sync functions (pool
-- threads) alike, and never wait.
--
--   local crypto = require "luaserve.crypto"
--   crypto.sha256("abc", "hex")                  -- "ba7816bf..."
--   crypto.hmac_sha256(secret, msg, "base64url")
--   local d = crypto.sha256_stream()             -- fed piece by piece
--   d:update(chunk) ... d:digest("hex")
--   crypto.token()                               -- 32 random bytes, base64url
--   crypto.equal(a, b)                           -- constant time

local core = require "luaserve.core"
local errors = require "luaserve.errors"

local check_string = errors.check_string
local sha256 = core.sha256
local hmac_sha256 = core.hmac_sha256
local sha256_new = core.sha256_new
local to_hex = core.to_hex
local base64 = core.base64
local gsub = string.gsub
local type = type
local error = error

local M = {}

local URL_SAFE = { ["+"] = "-", ["/"] = "_", ["="] = "" }


--- base64url(data): URL- and cookie-safe base64 without padding (RFC 4648 5).
function M.base64url(data)
  return (gsub(base64(data), "[+/=]", URL_SAFE))
end
local base64url = M.base64url


-- raw bytes -> the encoding asked for (nil or "raw": as they are).
local function encode(raw, enc)
  if enc == nil or enc == "raw" then return raw end
  if enc == "hex" then return to_hex(raw) end
  if enc == "base64url" then return base64url(raw) end
  if enc == "base64" then return base64(raw) end
  error("unknown encoding '" .. tostring(enc) ..
    "' (hex, base64, base64url or raw)", 3)
end




--- sha256(data, enc): the SHA-256 digest of data: 32 raw bytes, or "hex",
-- "base64", "base64url".
function M.sha256(data, enc)
  check_string(data, "sha256")
  return encode(sha256(data), enc)
end


--- hmac_sha256(key, data, enc): the HMAC-SHA256 of data under key.
function M.hmac_sha256(key, data, enc)
  check_string(key, "hmac_sha256: key")
  check_string(data, "hmac_sha256: data")
  return encode(hmac_sha256(key, data), enc)
end


local Stream = {}
Stream.__index = Stream
Stream.__name = "luaserve.crypto.Sha256"


--- sha256_stream(): a digest fed piece by piece (a large file in chunks):
-- d:update(data) returns d; d:digest(enc) finishes it.
function M.sha256_stream()
  return setmetatable({ _d = sha256_new(), size = 0 }, Stream)
end


function Stream:update(data)
  check_string(data, "sha256 update")
  self._d:update(data)
  self.size = self.size + #data
  return self
end


function Stream:digest(enc)
  return encode(self._d:digest(), enc)
end


--- random_bytes(n): n bytes from OpenSSL's CSPRNG.
M.random_bytes = core.random_bytes


--- token(n): n random bytes (default 32) as base64url: session ids,
-- secrets, CSRF tokens.
function M.token(n)
  return base64url(core.random_bytes(n or 32))
end


--- equal(a, b): a == b, compared in time that does not depend on where
-- they differ (MACs, tokens).
function M.equal(a, b)
  if type(a) ~= "string" or type(b) ~= "string" then return false end
  return core.const_equal(a, b)
end


M.to_hex = to_hex

return M
