-- luaserve.sse: Server-Sent Events (text/event-stream) on a streamed
-- response.
--
--   app:get("/events", function(req)
--     local last = tonumber(req.headers["last-event-id"]) or 0   -- resumption
--     return luaserve.sse(function(send, req)
--       for i = last + 1, math.huge do
--         if not send{ id = i, event = "tick", data = { n = i } } then return end
--         await(sleep(1))
--       end
--     end, { ping = 15 })
--   end)
--
-- send{ data = string or table, event = , id = , retry = ms, comment = }
-- writes one event (a table is sent as JSON; a multi-line string becomes
-- one data: line per line) and gives true, or nil, "closed" once the
-- client is gone. A comment line (": ping") goes out every `ping` seconds
-- (default 15; 0: none) so that proxies and clients keep the stream open.
-- The function runs in the request's task: it is cancelled when the
-- client leaves. The answer says Cache-Control: no-cache and
-- X-Accel-Buffering: no (nginx passes events on at once).

local future = require "luaserve.future"
local json = require "luaserve.json"
local response = require "luaserve.response"

local await, sleep, spawn = future.await, future.sleep, future.spawn
local concat = table.concat
local gsub = string.gsub
local gmatch = string.gmatch
local find = string.find
local type = type
local tostring = tostring
local error = error

local M = {}


-- One field's lines: "name: value\n" for each line of value.
local function field(out, name, value)
  value = gsub(value, "\r\n?", "\n")
  for line in gmatch(value .. "\n", "([^\n]*)\n") do
    out[#out + 1] = name .. ": " .. line .. "\n"
  end
end


--- encode(event): the wire text of one event (see send).
function M.encode(e)
  if type(e) ~= "table" then e = { data = e } end
  local out = {}
  if e.comment then field(out, "", tostring(e.comment)) end
  if e.event then
    local ev = tostring(e.event)
    if find(ev, "[\r\n]") then error("sse: an event name is one line", 3) end
    out[#out + 1] = "event: " .. ev .. "\n"
  end
  if e.id ~= nil then
    local id = tostring(e.id)
    if find(id, "[\r\n%z]") then error("sse: an id is one line without NUL", 3) end
    out[#out + 1] = "id: " .. id .. "\n"
  end
  if e.retry then out[#out + 1] = "retry: " .. math.floor(e.retry) .. "\n" end
  local data = e.data
  if type(data) == "table" then data = json.encode(data) end
  if data ~= nil then field(out, "data", tostring(data)) end
  out[#out + 1] = "\n"
  return concat(out)
end
local encode = M.encode


--- sse(fn, opts): a streamed response running fn(send, req). opts: ping
-- (seconds, default 15), headers (more response headers), status.
function M.response(fn, opts)
  if type(fn) ~= "function" then error("sse: expected a function(send, req)", 2) end
  opts = opts or {}
  local ping = opts.ping == nil and 15 or opts.ping
  local headers = { ["Cache-Control"] = "no-cache", ["X-Accel-Buffering"] = "no" }
  for k, v in pairs(opts.headers or {}) do headers[k] = v end
  return response.new{
    status = opts.status or 200,
    content_type = "text/event-stream; charset=utf-8",
    headers = headers,
    stream = function(write, req)
      -- One writer at a time: events and pings never interleave.
      local lock = future.Semaphore(1)
      local closed = false
      local function send(e)
        if closed then return nil, "closed" end
        local text = encode(e)
        local ok, err = lock:run(write, text)
        if not ok then closed = true end
        return ok, err
      end
      local pinger
      if ping > 0 then
        pinger = spawn(function()
          while not closed do
            await(sleep(ping))
            if closed or not send{ comment = "ping" } then return end
          end
        end)
      end
      local ok, err = xpcall(fn, future.on_error, send, req)   -- the stack of where it failed
      closed = true
      if pinger then pinger:cancel() end
      if not ok then error(err, 0) end
    end,
  }
end

setmetatable(M, { __call = function(_, fn, opts) return M.response(fn, opts) end })

return M
