-- luaserve.response: what a handler returns, turned into status, body,
-- content type and headers.
--   a table                 -> 200, JSON
--   a string                -> 200, text/plain
--   nil                     -> 204, no body (nil, err is an error: 500)
--   status, body[, headers] -> that status; body as above
--   luaserve.Response{...}  -> as given

local json = require "luaserve.json"
local errors = require "luaserve.errors"
local future = require "luaserve.future"

local Future, Task = future.Future, future.Task

local type = type
local getmetatable = getmetatable
local setmetatable = setmetatable
local tostring = tostring
-- How many keys a table has: luajit2's table.nkeys (compiled: no next()
-- calls in the trace), else counted.
local ok_nkeys, nkeys = pcall(require, "table.nkeys")
if not ok_nkeys then
  nkeys = function(t)
    local n = 0
    for _ in pairs(t) do n = n + 1 end
    return n
  end
end

local M = {}

local JSON = "application/json"
local TEXT = "text/plain; charset=utf-8"
M.JSON, M.TEXT = JSON, TEXT

local Response = {}
Response.__index = Response
Response.__name = "luaserve.Response"
M.Response = Response

--- The metatable of a file body (luaserve.static): a Response's stream
-- that the server sends with sendfile: { file =, offset =, length = }.
local FileBody = { __name = "luaserve.FileBody" }
M.FileBody = FileBody


--- Response{status = 200, body = string|table, headers = {}, content_type = }
-- or Response{stream = function(write) ... end, ...}: a streamed body.
-- write(chunk) sends one chunk and gives true, or nil, "closed" once the
-- client is gone; it yields while the client is slower than the stream
-- (back-pressure), so a stream never piles up in memory.
-- background = fn: run fn() after the response is written (see
-- req:after_response).
function M.new(t)
  if type(t) ~= "table" then error("Response: expected a table", 2) end
  return setmetatable(t, Response)
end


local lower = string.lower


--- res:header(name): the value of a header, any case; nil if absent.
function Response:header(name)
  local h = self.headers
  if h == nil then return nil end
  local v = h[name]
  if v ~= nil then return v end
  name = lower(name)
  for k, x in pairs(h) do
    if lower(k) == name then return x end
  end
end


--- res:set_header(name, value): set a header, replacing it in any case (a
-- nil value removes it). Returns res.
function Response:set_header(name, value)
  local h = self.headers
  if h == nil then h = {} self.headers = h end
  local l = lower(name)
  for k in pairs(h) do
    if k ~= name and lower(k) == l then h[k] = nil end
  end
  h[name] = value
  if l == "content-type" then self.content_type = nil end
  return self
end


-- ---------------------------------------------------------------------------
-- Cookies (luaserve.cookies)

local cookies = require "luaserve.cookies"


-- Add a Set-Cookie line. The headers table is copied the first time: a
-- table shared between responses (a module-level constant) must not
-- collect every request's cookies. Later cookies go into that copy.
local function add_set_cookie(res, line)
  local h = res.headers
  if h ~= nil and h == rawget(res, "_own_headers") then
    for k, v in pairs(h) do
      if type(k) == "string" and lower(k) == "set-cookie" then
        if type(v) == "table" then v[#v + 1] = line else h[k] = { v, line } end
        return
      end
    end
    h["Set-Cookie"] = { line }
    return
  end
  local own = {}
  local key = "Set-Cookie"
  if h ~= nil then
    for k, v in pairs(h) do
      own[k] = v
      if type(k) == "string" and lower(k) == "set-cookie" then key = k end
    end
  end
  local v = own[key]
  if v == nil then
    own[key] = { line }
  elseif type(v) == "table" then
    local list = {}
    for i = 1, #v do list[i] = v[i] end
    list[#list + 1] = line
    own[key] = list
  else
    own[key] = { v, line }
  end
  res.headers = own
  res._own_headers = own
end


--- res:set_cookie(name, value, opts): add a Set-Cookie header (several
-- cookies give several lines). opts: max_age, expires, path, domain,
-- secure, http_only, same_site, partitioned, secret (sign the value: read
-- it back with req:signed_cookie). A bad name, value or option raises.
-- Returns res.
function Response:set_cookie(name, value, opts)
  add_set_cookie(self, cookies.serialize(name, value, opts, 2))
  return self
end


--- res:delete_cookie(name, opts): tell the browser to drop the cookie
-- (give the path and domain it was set with). Returns res.
function Response:delete_cookie(name, opts)
  add_set_cookie(self, cookies.deletion(name, opts))
  return self
end


--- object(status, body, ctype, headers, stream, background): the response
-- as an object (what call_next gives a middleware): body a string,
-- headers a table.
function M.object(status, body, ctype, headers, stream, background, websocket)
  return setmetatable({ status = status, body = body, content_type = ctype,
    headers = headers or {}, stream = stream, background = background,
    websocket = websocket, _normal = true }, Response)
end


-- A content type among the headers (any case), if the handler set one.
local function header_ctype(headers)
  if headers == nil then return nil end
  return headers["Content-Type"] or headers["content-type"]
end


-- body -> string, content type
local function encode_body(body, headers)
  local t = type(body)
  if t == "string" then return body, TEXT end
  if t == "table" then return json.encode(body), JSON end
  if body == nil then return "", nil end
  if t == "number" or t == "boolean" then return json.encode(body), JSON end
  error("cannot send a " .. t .. " as a response body", 0)
end


-- Statuses that never carry a body (RFC 9110 6.4.1): one sent anyway would
-- be read as the start of the next response on a keep-alive connection.
local function bodyless(status)
  return type(status) == "number" and (status < 200 or status == 204 or status == 304)
end


--- normalize(a, b, c): status, body, content_type (nil if the headers carry
-- one), headers, stream (a streamed Response's function), background (a
-- Response's), websocket (a handshake's session), from a handler's return
-- values. A response object a
-- middleware changed (res.body a string, res.content_type) goes through
-- as it is.
function M.normalize(a, b, c)
  local ta = type(a)
  if ta == "string" then return 200, a, TEXT, nil end
  if ta == "table" then
    local mt = getmetatable(a)
    if mt == Future or mt == Task then
      error("the handler returned a " .. (mt == Future and "future" or "task") ..
        " instead of its result: did you forget await? (return await(f))", 0)
    end
    if mt == Response then
      local stream = a.stream
      if stream ~= nil then
        if type(stream) ~= "function" and getmetatable(stream) ~= FileBody then
          error("Response: stream must be a function(write)", 0)
        end
        local headers = a.headers
        local ctype = a.content_type or (not a._normal and TEXT or nil)
        if header_ctype(headers) then ctype = nil end
        return a.status or 200, "", ctype, headers, stream, a.background
      end
      if a.websocket then   -- a handshake's 101: the session follows
        return 101, "", nil, a.headers, nil, nil, a.websocket
      end
      local body, ctype = encode_body(a.body)
      local headers = a.headers
      if a.content_type or a._normal then ctype = a.content_type end
      if header_ctype(headers) then ctype = nil end
      if bodyless(a.status) then body = "" end
      return a.status or 200, body, ctype, headers, nil, a.background
    end
    return 200, json.encode(a), JSON, nil
  end
  if ta == "number" then
    local body, ctype = encode_body(b)
    local hct = header_ctype(c)
    if hct ~= nil then
      ctype = nil
      -- Headers that are only the content type travel as it: the answer
      -- then has no header table (the core's fast path, luaserve.ffi).
      if type(hct) == "string" and nkeys(c) == 1 then
        ctype, c = hct, nil
      end
    end
    if bodyless(a) then body = "" end
    return a, body, ctype, c
  end
  if a == nil then
    -- `return await(f)` with f failed gives nil, err: a failure, not a 204.
    if b ~= nil then
      error("a handler returned nil, " .. tostring(b) .. " (a failure?)", 0)
    end
    return 204, "", nil, nil
  end
  error("a handler returned a " .. ta .. ": return a table, a string, " ..
    "status, body or a Response", 0)
end


--- from_error(err): status, body, content_type, headers for an HTTPError.
function M.from_error(e)
  local body = json.encode({ detail = e.detail == nil and json.null or e.detail })
  return e.status, body, JSON, e.headers
end

M.is_http_error = errors.is_http_error

return M
