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
local http = require "luaserve.http"
local json = require "luaserve.json"
local server = require "luaserve.server"
local tcp = require "luaserve.tcp"

local await = future.await

local MAX_BODY = 1024 * 1024 * 1024   -- the test client takes any body

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
-- app is an app object, or the path of an app (a .lua file or a folder
-- holding app.lua): then it is loaded as `luaserve APP` loads it and, if
-- it marks functions sync, a pool is started whose threads load the same
-- file (one pool at a time: a new one replaces the last; client:close()
-- stops it). client.app is the app.
-- opts are server options (max_body, limit_concurrency, ...) and the
-- pool's: threads (default 2), pool_queue (default 64). opts.tls serves
-- HTTPS: a context (server.tls_context) or its options ({cert=, key=,
-- ...}); the client's own requests then go over TLS too (not verified:
-- the point is the app), and client:url(path) gives the https URL.
function M.client(app, opts)
  opts = opts or {}
  local o = {}
  for k, v in pairs(opts) do o[k] = v end
  if type(o.tls) == "table" then
    local ctx, err = server.tls_context(o.tls)
    if not ctx then error("testing.client: tls: " .. tostring(err), 2) end
    o.tls = ctx
  end
  local threads, queue = o.threads or 2, o.pool_queue or 64
  o.threads, o.pool_queue = nil, nil
  local pooled = false
  if type(app) == "string" then
    local path = app
    local err
    app, err = require("luaserve.cli").load_app(path)
    if not app then error("testing.client: cannot load app: " .. err, 2) end
    require("luaserve.core").pool_stop()
    pooled, err = require("luaserve.sync").start_pool(app, path,
      { threads = threads, queue = queue })
    if pooled == nil then
      error("testing.client: cannot start the sync pool: " .. err, 2)
    end
  end
  o.host, o.port = "127.0.0.1", 0
  if o.access_log == nil then o.access_log = false end
  local function fail(msg)   -- what was started is stopped first
    if pooled then require("luaserve.core").pool_stop() end
    error("testing.client: " .. msg, 3)
  end
  local srv, err = server.serve(app, o)
  if not srv then fail("cannot listen: " .. tostring(err)) end
  local ok, serr = server.startup(app)   -- the app's startup hooks, first
  if not ok then
    srv:close()
    fail(tostring(serr))
  end
  local host, port = srv:address()
  return setmetatable({ server = srv, host = host, port = port, app = app,
    scheme = o.tls and "https" or "http", _pooled = pooled }, Client)
end


--- client:url(path): the URL of path on this client's server.
function Client:url(path)
  return ("%s://%s:%d%s"):format(self.scheme, self.host, self.port, path or "/")
end


-- Read one response off sock with the HTTP client's llhttp parser:
-- Content-Length, chunked or close-delimited bodies; 1xx skipped.
local function read_response(sock, method)
  local status, headers, body = http.read_response(sock, {
    head = method == "HEAD", max_body = MAX_BODY })
  if not status then return nil, headers end
  return setmetatable({ status = status, headers = headers, body = body },
    Response)
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
    { timeout = opts.timeout or 30, read_timeout = opts.timeout or 30,
      reuse = false }))
  if not sock then return nil, err end
  if self.scheme == "https" then
    local ok, terr = await(sock:sslhandshake({ verify = false }))
    if not ok then return nil, terr end
  end
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


--- client:websocket(path, opts): a WebSocket to path on this client's
-- server (luaserve.websocket.connect; wss without verification when the
-- server is HTTPS), or nil, err. Awaits inside a task; outside one it runs
-- the loop until connected.
function Client:websocket(path, opts)
  local o = {}
  for k, v in pairs(opts or {}) do o[k] = v end
  if self.scheme == "https" and o.verify == nil then o.verify = false end
  local url = ("%s://%s:%d%s"):format(self.scheme == "https" and "wss" or "ws",
    self.host, self.port, path)
  return await(require("luaserve.websocket").connect(url, o))
end


--- client:close(): stop the server, then run the app's shutdown hooks.
function Client:close()
  self.server:close()
  server.shutdown(self.app, 10)
  if self._pooled then
    self._pooled = false
    require("luaserve.core").pool_stop()
  end
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


--- logged(fn): run fn with the log's lines collected instead of written;
-- returns them as one string (fn's errors pass through, the log restored).
function M.logged(fn)
  local log = require "luaserve.log"
  local lines = {}
  local prev = log.set_output({ write = function(_, ...)
    lines[#lines + 1] = table.concat({ ... })
  end })
  local ok, err = pcall(fn)
  log.flush()
  log.set_output(prev)
  if not ok then error(err, 0) end
  return table.concat(lines)
end


--- async(fn): a test body that runs as a task (it may await).
function M.async(fn)
  return function(...) return M.run(fn, ...) end
end

return M
