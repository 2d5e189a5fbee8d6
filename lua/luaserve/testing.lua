-- luaserve.testing: drive an app through the real core from busted specs.
--
--   local testing = require "luaserve.testing"
--   local client = testing.client(app)        -- serves app on 127.0.0.1:<free>
--   local res = client:get("/users/1")        -- res.status, res.headers, res.body
--   assert.same({ id = 1 }, res:json())
--
--   it("overlaps", testing.async(function()     -- a test body that awaits
--     local a, b = await(gather(spawn(client.get, client, "/slow"), ...))
--   end))
--
-- The server and the client share the process and the one loop: a request
-- made outside a task runs the loop until its response is in.

local future = require "luaserve.future"
local json = require "luaserve.json"
local request = require "luaserve.request"
local server = require "luaserve.server"
local tcp = require "luaserve.tcp"

local await = future.await

local M = {}

future.allow_blocking(true)

local Client = {}
Client.__index = Client
Client.__name = "luaserve.testing.Client"

local Response = {}
Response.__index = Response
Response.__name = "luaserve.testing.Response"


--- res:json(): the body decoded; raises if it is not JSON.
function Response:json()
  local v, err = json.decode(self.body)
  if v == nil and err then error("response body is not JSON: " .. err, 2) end
  return v
end


--- client(app, opts): serve app on a free loopback port for this client.
-- opts are server options (max_body, limit_concurrency, ...).
function M.client(app, opts)
  opts = opts or {}
  local o = {}
  for k, v in pairs(opts) do o[k] = v end
  o.host, o.port = "127.0.0.1", 0
  if o.access_log == nil then o.access_log = false end
  local srv, err = server.serve(app, o)
  if not srv then error("testing.client: cannot listen: " .. tostring(err), 2) end
  local host, port = srv:address()
  return setmetatable({ server = srv, host = host, port = port }, Client)
end


-- Read one response off sock: status, headers, body (Content-Length,
-- chunked, or up to the close).
local function read_response(sock, method)
  local line, err = await(sock:receive("*l"))
  if not line then return nil, err end
  local status = tonumber(line:match("^HTTP/1%.%d (%d%d%d)"))
  if not status then return nil, "bad status line: " .. line end
  local headers = setmetatable({}, request.headers_mt)
  while true do
    local h, herr = await(sock:receive("*l"))
    if not h then return nil, herr end
    if h == "" then break end
    local name, value = h:match("^([^:]+):%s*(.-)%s*$")
    if name then
      name = name:lower()
      headers[name] = headers[name] and headers[name] .. ", " .. value or value
    end
  end
  if status == 100 then return read_response(sock, method) end
  local body = ""
  if method == "HEAD" or status == 204 or status == 304 then
    body = ""
  elseif headers["transfer-encoding"] == "chunked" then
    local parts = {}
    while true do
      local size_line = await(sock:receive("*l"))
      local size = size_line and tonumber(size_line:match("^%x+"), 16)
      if not size then return nil, "bad chunk" end
      if size == 0 then await(sock:receive("*l")) break end
      parts[#parts + 1] = await(sock:receive(size))
      await(sock:receive("*l"))
    end
    body = table.concat(parts)
  elseif headers["content-length"] then
    body, err = await(sock:receive(tonumber(headers["content-length"])))
    if not body then return nil, err end
  else
    body = await(sock:receive("*a")) or ""
  end
  return setmetatable({ status = status, headers = headers, body = body }, Response)
end


-- One request on a new connection (each request its own: simple and
-- independent; keep-alive is tested over raw sockets in tests/).
local function do_request(self, method, path, opts)
  opts = opts or {}
  local body = opts.body
  local headers = { ["Host"] = self.host .. ":" .. self.port }
  if opts.json ~= nil then
    body = json.encode(opts.json)
    headers["Content-Type"] = "application/json"
  end
  for k, v in pairs(opts.headers or {}) do headers[k] = v end
  local lines = { method .. " " .. path .. " HTTP/1.1" }
  for k, v in pairs(headers) do lines[#lines + 1] = k .. ": " .. v end
  if body then lines[#lines + 1] = "Content-Length: " .. #body end
  lines[#lines + 1] = "Connection: close"
  local raw = table.concat(lines, "\r\n") .. "\r\n\r\n" .. (body or "")
  local sock, err = await(tcp.connect(self.host, self.port,
    { timeout = opts.timeout or 30, read_timeout = opts.timeout or 30 }))
  if not sock then return nil, err end
  local ok, serr = await(sock:send(raw))
  if not ok then sock:close() return nil, serr end
  local res, rerr = read_response(sock, method)
  sock:close()
  return res, rerr
end


--- client:request(method, path, opts): a response, or nil, err. opts:
-- headers, body (a string), json (a value sent as JSON), timeout (s).
-- Inside a task it awaits; outside one it runs the loop until done.
function Client:request(method, path, opts)
  if future.current() then return do_request(self, method, path, opts) end
  local task = future.spawn(do_request, self, method, path, opts)
  return await(task)
end


for _, m in ipairs({ "get", "post", "put", "patch", "delete", "head", "options" }) do
  Client[m] = function(self, path, opts)
    return self:request(m:upper(), path, opts)
  end
end


--- client:close(): stop the server.
function Client:close()
  self.server:close()
end


--- run(fn, ...): run fn(...) as a task, running the loop until it ends;
-- its error (an assertion failure too) is raised here.
function M.run(fn, ...)
  local err
  local task = future.spawn(function(...)
    local r = { xpcall(fn, function(e)
      err = e
      return e
    end, ...) }
    return unpack(r, 2, table.maxn(r))
  end, ...)
  local r = { await(task) }
  if err ~= nil then error(err, 0) end
  return unpack(r, 1, table.maxn(r))
end


--- async(fn): a test body that runs as a task (it may await).
function M.async(fn)
  return function(...) return M.run(fn, ...) end
end

return M
