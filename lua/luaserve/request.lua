-- luaserve.request: the request object a handler gets. Fields: method, path,
-- target (path and query as sent), headers (case-insensitive), body,
-- params (typed path parameters), route (the matched template), scheme
-- ("http" or "https"); lazily: headers (the table is made on first read),
-- query (percent-decoded, first value of each key), query_string,
-- client {host, port}, tls ({version, cipher, alpn, peer_subject,
-- peer_verified} over TLS, false over plain TCP).
--
-- client and tls come from the connection, which Lua knows by a checked
-- handle: read after the request has finished (in a detached task), they
-- raise a clear error instead of reading a connection that is gone; with
-- the access log on, client then has the host the log line named.

local core = require "luaserve.core"
local errors = require "luaserve.errors"
local json = require "luaserve.json"
local peer = require("luaserve.ffi").peer
local slots = require "luaserve.request_slots"
local CONN, HRAW, PEER = slots.CONN, slots.HRAW, slots.PEER
local SCHEME, APP = slots.SCHEME, slots.APP

local setmetatable = setmetatable
local rawget = rawget
local lower = string.lower
local find = string.find
local byte = string.byte
local sub = string.sub
local gsub = string.gsub
local char = string.char
local tonumber = tonumber

local M = {}

local Request = {}
Request.__name = "luaserve.Request"


local headers_mt = {
  __index = function(t, k)
    if type(k) == "string" then return rawget(t, lower(k)) end
  end,
  __name = "luaserve.Headers",
}
M.headers_mt = headers_mt


local function hex_char(h)
  return char(tonumber(h, 16))
end


local function unescape(s)
  s = gsub(s, "+", " ")
  return (gsub(s, "%%(%x%x)", hex_char))
end
M.unescape = unescape


--- parse_query(qs, all): { key = first value }; with all true,
-- { key = { every value, in order } }. Pairs are separated by & or ;.
function M.parse_query(qs, all)
  local out = {}
  if qs == nil or qs == "" then return out end
  -- Plain finds only: a pattern find is not compiled (the trace stops at
  -- it and resumes after, stitched, on every pair).
  local escaped = find(qs, "%", 1, true) or find(qs, "+", 1, true)
  local semi = find(qs, ";", 1, true)   -- ";" separates too (rare)
  local pos, n = 1, #qs
  while pos <= n do
    local stop = find(qs, "&", pos, true)
    if semi then
      local sc = find(qs, ";", pos, true)
      if sc and (stop == nil or sc < stop) then stop = sc end
    end
    local last = (stop or n + 1) - 1
    if last >= pos then
      local eq = find(qs, "=", pos, true)
      local k, v
      if eq and eq <= last then
        k, v = sub(qs, pos, eq - 1), sub(qs, eq + 1, last)
      else
        k, v = sub(qs, pos, last), ""
      end
      if escaped then k, v = unescape(k), unescape(v) end
      if all then
        local list = out[k]
        if list == nil then out[k] = { v } else list[#list + 1] = v end
      elseif out[k] == nil then
        out[k] = v
      end
    end
    if stop == nil then break end
    pos = stop + 1
  end
  return out
end
local parse_query = M.parse_query


local lazy = {}

function lazy.query(req)
  local q = parse_query(req.query_string)
  req.query = q
  return q
end


--- req.query_string: what follows "?" in the target, or nil. Read from
-- the target each time (kept off the request table: see new()).
function lazy.query_string(req)
  local target = rawget(req, "target")
  local q = target and find(target, "?", 1, true)
  if q then return sub(target, q + 1) end
end


--- req.headers: the table, made on first read. The core hands a request
-- its headers packed in one string ("name\0value\0...", names lower-cased):
-- a request that never reads them costs no table and no string per field.
local unpack_headers = core.unpack_headers

function lazy.headers(req)
  local raw = rawget(req, HRAW)
  local h
  if type(raw) == "string" then h = unpack_headers(raw) else h = raw or {} end
  setmetatable(h, headers_mt)
  req.headers = h
  return h
end

local FINISHED = "the request has finished: read req.%s while it runs " ..
  "(before a detached task needs it, keep it in a local)"


-- What the core knows of the request's connection: fn(handle)'s values;
-- nothing in a pool state (no connection there).
local function from_conn(req, fn, field)
  local conn = rawget(req, CONN)
  if not conn then return end
  local a, b = fn(conn)
  if a == nil and b == "closed" then error(FINISHED:format(field), 3) end
  return a, b
end


-- Once the request is over, the address the access line read (no port),
-- if it read one.
function lazy.client(req)
  local conn = rawget(req, CONN)
  local c = {}
  if conn then
    local host, port = peer(conn)
    if host == nil and port == "closed" then
      local seen = rawget(req, PEER)
      if not seen then error(FINISHED:format("client"), 2) end
      if seen ~= "" then c.host = seen end
    else
      c.host, c.port = host, port
    end
  end
  req.client = c
  return c
end


--- req.scheme and req.app: kept in the request's array part (see
-- luaserve.request_slots), read through here; a value set on the request
-- (req.scheme = "https" behind a proxy) is read before this.
function lazy.scheme(req)
  return rawget(req, SCHEME)
end

function lazy.app(req)
  return rawget(req, APP)
end


function lazy.tls(req)
  local info = from_conn(req, core.tls_info, "tls") or false
  req.tls = info
  return info
end


-- ---------------------------------------------------------------------------
-- Cookies, forms and streamed bodies (luaserve.cookies, luaserve.form,
-- luaserve.body): a multipart/form-data request reaches the handler before
-- its body, which these read as they are called (the task waits for the
-- client); any other body is whole in req.body.

local cookies = require "luaserve.cookies"
local form = require "luaserve.form"
local body_stream = require "luaserve.body"


--- req.cookies: { name = value } of the Cookie header (percent-decoded).
function lazy.cookies(req)
  local c = cookies.parse(req.headers.cookie)
  req.cookies = c
  return c
end


--- req.body of a streamed request: read whole on first use, within the
-- route's max_body (413 beyond).
function lazy.body(req)
  if rawget(req, CONN) == nil then return nil end
  local body = body_stream.read_all(req, rawget(req, "_max_body"))
  return body   -- not a tail call: read_all's errors name the handler's line
end


--- req:signed_cookie(name, secret, max_age): the value of a cookie set
-- with set_cookie(..., { secret = }), or nil, why ("missing", "malformed",
-- "bad signature", "expired"). secret: one or a list (key rotation).
function Request:signed_cookie(name, secret, max_age)
  local v = self.cookies[name]
  if v == nil then return nil, "missing" end
  return cookies.unsign(name, v, secret, max_age)
end


--- req:form(): name -> first value of an urlencoded or multipart form body
-- (uploads for files); 415 for another content type, 400 if malformed.
function Request:form()
  return form.form(self)
end


--- req:form_all(name): every value of a form field, in order.
function Request:form_all(name)
  return form.form_all(self, name)
end


--- req:multipart(opts): the multipart body read as it streams: form.fields,
-- form.files (uploads in temp files), form.list, form:all(name).
function Request:multipart(opts)
  return form.multipart(self, opts)
end


--- req:parts(opts): an iterator over a multipart body's parts as they
-- stream in: part:read(), part:text().
function Request:parts(opts)
  return form.parts(self, opts)
end


--- req:chunks(): an iterator over the body's pieces as they come.
function Request:chunks()
  return body_stream.chunks(self)
end


Request.__index = function(req, k)
  local m = Request[k]
  if m ~= nil then return m end
  local f = lazy[k]
  if f then return f(req) end
end


--- req:query_all(key): every value of a repeated query key, in order.
function Request:query_all(key)
  local all = rawget(self, "_query_all")
  if all == nil then
    all = parse_query(self.query_string, true)
    self._query_all = all
  end
  return all[key] or {}
end


--- req:json(): the body decoded as JSON. Invalid JSON raises
-- HTTPError(400) naming the problem, so the client gets a clear 400.
function Request:json()
  local cached = rawget(self, "_json")
  if cached ~= nil then return cached end
  local body = self.body
  if body == nil or body == "" then
    error(errors.new(400, "request body is empty, expected JSON"), 2)
  end
  local v, err = json.decode(body)
  if v == nil and err then
    error(errors.new(400, "invalid JSON body: " .. err), 2)
  end
  self._json = v
  return v
end


--- new(conn, method, target, headers, body, scheme, plen, escaped): a
-- request. headers: the core's packed string, or a table (taken over;
-- names lower-case). conn is the core's handle of the request (nil in a
-- pool state). plen, escaped: from the core, the path's length in target
-- and whether the path holds a %-escape (else found here).
function M.new(conn, method, target, headers, body, scheme, plen, escaped)
  local path = target
  if plen == nil then   -- not from the core, which says where the path ends
    local q = find(target, "?", 1, true)
    if q then path = sub(target, 1, q - 1) end
    escaped = find(path, "%", 1, true) ~= nil
  elseif plen < #target then
    path = sub(target, 1, plen)
  end
  if byte(path, 1) ~= 47 then   -- not "/"
    -- absolute-form (RFC 9112 3.2.2, "GET http://host/x"): the path is what
    -- follows the authority; "*" (OPTIONS) and the rest stay as they are
    local rest = path:match("^[%a][%w+.-]*://[^/]*(.*)$")
    if rest then path = rest ~= "" and rest or "/" end
  end
  if escaped then path = gsub(path, "%%(%x%x)", hex_char) end
  -- Made, then returned: a tail call out of a root trace is not compiled
  -- ("leaving loop in root trace"). The framework's fields first, in the
  -- array part (luaserve.request_slots: CONN, HRAW, TASK, ROUTE, T0,
  -- PEER, SCHEME, APP); then the six keys handlers read, made at
  -- once so the table is not grown (rehashed) key by key: they and the
  -- lazy req.headers and req.query fill its 8 hash slots.
  local req = setmetatable({
    conn, headers, false, false, 0, false, scheme or "http", false,
    method = method,
    path = path,
    target = target,
    body = body,
    route = false,
    params = false,
  }, Request)
  return req
end


--- req:after_response(fn, ...): run fn(...) once the response is written:
-- a detached task, not cancelled when the client leaves, logged if it
-- raises, awaited by graceful shutdown (up to its timeout). Unlike
-- spawn_detached, which starts at once, it waits for the answer to reach
-- the client. From async code (handlers, middleware).
function Request:after_response(fn, ...)
  if type(fn) ~= "function" then
    error("after_response: expected a function, got " .. type(fn), 2)
  end
  local list = rawget(self, "_background")
  if list == nil then list = {} self._background = list end
  list[#list + 1] = { fn, n = select("#", ...) + 1, ... }
  return self
end

M.Request = Request

return M
