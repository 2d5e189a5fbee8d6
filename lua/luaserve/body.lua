-- luaserve.body: a request's body as a stream. A multipart/form-data
-- request reaches its handler before its body (the core streams it, see
-- core/body.c); these functions take the body from the core piece by piece
-- as they are called: the task waits while the client is slower, and the
-- client is held back (TCP) while the handler is slower. Any other
-- request's body is whole in req.body already, and comes out of these in
-- one piece. Failures raise an HTTPError for the client: 413 (larger than
-- the route's max_upload), 400 (malformed chunked encoding), 408 (the
-- client paused longer than --timeout-header).

local core = require "luaserve.core"
local errors = require "luaserve.errors"
local future = require "luaserve.future"
local CONN = require("luaserve.request_slots").CONN

local body_read = core.body_read
local new_future = future.new_internal   -- the body_read target: ours alone
local await = future.await
local rawget = rawget
local rawset = rawset
local concat = table.concat
local error = error

local M = {}


--- streamed(req): true while the body still comes from the client (not
-- read whole into req.body).
function M.streamed(req)
  return rawget(req, "body") == nil and rawget(req, CONN) ~= nil
end


local function too_large(limit)
  return errors.new(413, ("request body larger than %d bytes"):format(limit))
end


--- read(req): the next piece of the body, or nil at its end. Waits (the
-- task yields) for the client; raises an HTTPError on failure.
function M.read(req)
  local st = rawget(req, "_body")
  if st == nil then
    st = { received = 0, done = false }
    req._body = st
  end
  if st.done then return nil end
  local whole = rawget(req, "body")
  if whole ~= nil then   -- read already, or never streamed: one piece
    st.done = true
    if whole == "" then return nil end
    st.received = #whole
    return whole
  end
  local conn = rawget(req, CONN)
  if conn == nil then st.done = true return nil end
  local f = new_future()
  local data, err, status = body_read(conn, f)
  if data == false then data, err, status = await(f) end
  if data == nil then
    if err then
      st.done = true
      error(errors.new(status or 400, err == "closed" and
        "the client closed the connection" or err), 0)
    end
    st.done = true
    return nil
  end
  local n = st.received + #data
  st.received = n
  -- Big pieces come fast: help the collector keep pace with them, so the
  -- garbage of a large upload does not pile up before a cycle ends.
  collectgarbage("step", #data / 512)
  local limit = rawget(req, "_max_upload")
  if limit and n > limit then
    st.done = true
    error(too_large(limit), 0)
  end
  return data
end
local read = M.read


--- chunks(req): an iterator over the pieces of the body.
function M.chunks(req)
  if rawget(req, "body") ~= nil then req._body = nil end   -- in memory: again
  return function() return read(req) end
end


--- read_all(req, limit): the whole (rest of the) body as a string, at most
-- limit bytes (413 beyond); kept as req.body.
function M.read_all(req, limit)
  local st = rawget(req, "_body")
  if st and st.received > 0 and rawget(req, "body") == nil then
    error("req.body: the body was read as a stream already (req:multipart(), " ..
      "req:parts() or req:chunks() took it); read it one way only", 3)
  end
  local parts, n = {}, 0
  while true do
    local data = read(req)
    if data == nil then break end
    n = n + #data
    if limit and n > limit then error(too_large(limit), 0) end
    parts[#parts + 1] = data
  end
  local body = concat(parts)
  rawset(req, "body", body)
  return body
end


return M
