-- luaserve.server: serves an app on the core. The core calls dispatch()
-- once per parsed request, with a handle of the request (a number the core
-- checks: once the request is over it names nothing); each request runs as
-- a task (a coroutine) that matches the route, runs the handler, turns its
-- result into a response and hands it back to the core. When the client
-- goes away the core calls abort() from the loop, which cancels the
-- request's task and everything it waits on.

local core = require "luaserve.core"
local future = require "luaserve.future"
local request = require "luaserve.request"
local response = require "luaserve.response"
local json = require "luaserve.json"
local log = require "luaserve.log"
local sync = require "luaserve.sync"

local start = future.start
local drain = future.drain
local on_error = future.on_error
local current = future.current
local new_request = request.new
local normalize = response.normalize
local is_sync = sync.is_sync
local run_sync = sync.run_request
local from_error = response.from_error
local is_http_error = response.is_http_error
local respond = core.respond
local respond_start = core.respond_start
local write_chunk = core.write_chunk
local respond_end = core.respond_end
local new_future = future.new
local await = future.await
local release = core.release
local hrtime = core.hrtime
local xpcall = xpcall
local pcall = pcall
local type = type
local tostring = tostring

local M = {}

local JSON = response.JSON
local EMPTY_PARAMS = setmetatable({}, { __newindex = function()
  error("req.params is read-only here", 2) end })

local INTERNAL_ERROR = '{"detail":"Internal Server Error"}'

-- Errors of tasks (spawned, cancelled) go through the server's log.
future.set_logger(log.error)


-- The log line for a handler error: method, path, route and traceback.
local function log_handler_error(req, route, err)
  -- The traceback down to the handler; the framework's frames say nothing.
  err = tostring(err):gsub("\n%s*%[C%]: in function 'xpcall'.*$", "")
  log.error(("%s %s (route %s): %s"):format(req.method, req.path,
    route and route.path or "-", tostring(err)))
end


-- Match the route and run its handler: status, body, content type,
-- headers. Raises what the handler raises (HTTPError included).
local function run_route(app, req, max_body_default)
  local route, params, detail, extra = app:match(req.method, req.path)
  if route == nil then
    return params, json.encode({ detail = detail }), JSON, extra
  end
  req._route = route
  req.params = params or EMPTY_PARAMS
  req.route = route.path
  if #req.body > (route.opts.max_body or max_body_default) then
    return 413, '{"detail":"request body too large"}', JSON
  end
  local handler = route.handler
  if is_sync(handler) then return run_sync(handler, req) end   -- on the pool
  return normalize(handler(req))
end


-- A streamed response: the head, then what stream(write) writes, then the
-- last chunk. The request stays abortable (in requests) until the end.
-- Returns the body bytes written.
local function send_stream(requests, req, status, ctype, headers, stream)
  local conn = req._conn
  local ok, started = pcall(respond_start, conn, status, ctype, headers)
  if not ok then   -- a bad header table: nothing was sent yet
    log_handler_error(req, req._route, started)
    requests[conn] = nil
    respond(conn, 500, INTERNAL_ERROR, JSON)
    return 0
  end
  if not started then   -- nil, "closed": the client is gone already
    if requests[conn] == req then
      requests[conn] = nil
      release(conn)
    end
    return 0
  end
  local nbytes = 0
  local function write(data)
    if type(data) ~= "string" then
      error("write: expected a string, got " .. type(data), 2)
    end
    if requests[conn] ~= req then return nil, "closed" end
    local f = new_future()
    local done, werr = write_chunk(conn, data, f)
    if done == nil then return nil, werr end
    nbytes = nbytes + #data
    if done then return true end
    return await(f)   -- the socket is full: wait until it drains
  end
  local sok, serr = xpcall(stream, on_error, write)
  if requests[conn] ~= req then return nbytes end   -- aborted meanwhile
  requests[conn] = nil
  if not sok then
    -- The head is out: a 500 is no longer possible. Close without the last
    -- chunk, so the client sees a cut body, not a whole one.
    log_handler_error(req, req._route, serr)
  end
  respond_end(conn, not sok)
  return nbytes
end


--- Build the function each request's task runs: match, handle, respond,
-- log. It never raises: any error becomes a 500 (HTTPError its status).
local function make_handler(app, opts)
  local requests = opts.requests
  local access_log = opts.access_log ~= false
  local max_body_default = opts.max_body or 1024 * 1024

  return function(req)
    local conn = req._conn
    req._task = current()
    -- The access line names the client: read it while the request holds
    -- its connection.
    if access_log then local _ = req.client end
    local ok, status, body, ctype, headers, stream = xpcall(run_route,
      on_error, app, req, max_body_default)
    if not ok then
      if is_http_error(status) then
        status, body, ctype, headers = from_error(status)
      else
        log_handler_error(req, req._route, status)
        status, body, ctype, headers = 500, INTERNAL_ERROR, JSON, nil
      end
    end
    if requests[conn] ~= req then return end   -- aborted meanwhile
    if stream then
      local nbytes = send_stream(requests, req, status, ctype, headers, stream)
      if access_log then log.access(req, status, nbytes, hrtime() - req._t0) end
      return
    end
    requests[conn] = nil
    local sent, err = pcall(respond, conn, status, body, ctype, headers,
      req._close)
    if not sent then   -- a bad header table: still answer
      log_handler_error(req, req._route, err)
      status, body = 500, INTERNAL_ERROR
      respond(conn, status, body, JSON)
    end
    if access_log then
      log.access(req, status, #body, hrtime() - req._t0)
    end
  end
end


--- watch_blocking(seconds): log a warning naming the route whenever one
-- entry from the loop into Lua (a request's handler starting, or resuming
-- after a wait) held the loop at least that long: every other request
-- waited meanwhile. 0 turns it off. The culprit is the task resumed last.
function M.watch_blocking(seconds)
  if not seconds or seconds <= 0 then
    core.watch_blocking(0)
    return
  end
  core.watch_blocking(seconds, function(held)
    local task = future.last_task()
    local root = task and (task._root or task)
    local req = root and root._a1
    local who = "a task"
    if type(req) == "table" and req.method and req.path then
      who = ("%s %s (route %s)"):format(req.method, req.path, req.route or "-")
    end
    log.warn(("the loop was blocked for %.0f ms by %s: await waits, and run " ..
      "blocking or CPU-heavy code with sync()"):format(held * 1000, who))
  end)
end


--- serve(app, opts): listen and serve app; returns the server (with
-- :address() and :close()), or nil, err.
-- opts: host, port, tls (a context from tls_context: the listener speaks
-- TLS only), access_log, max_body, max_header_bytes, max_headers,
-- header_timeout_ms, keepalive_timeout_ms, send_timeout_ms,
-- limit_concurrency, backlog.
function M.serve(app, opts)
  opts = opts or {}
  local requests = {}   -- conn -> the request being handled
  local handle = make_handler(app, {
    requests = requests,
    access_log = opts.access_log,
    max_body = opts.max_body,
  })

  local timed = opts.access_log ~= false
  local scheme = opts.tls and "https" or "http"
  local function dispatch(conn, method, target, headers, body)
    local req = new_request(conn, method, target, headers, body, scheme)
    if timed then req._t0 = hrtime() end
    requests[conn] = req
    start(handle, false, req)
    drain()
  end

  local function abort(conn)
    local req = requests[conn]
    if req == nil then return end
    requests[conn] = nil
    local task = req._task
    if task then task:cancel() end
    if opts.access_log ~= false then
      log.access(req, 499, 0, hrtime() - req._t0)
    end
    release(conn)
    drain()
  end

  local max_body = opts.max_body or 1024 * 1024
  if app.max_body > max_body then max_body = app.max_body end
  return core.listen({
    host = opts.host or "127.0.0.1",
    port = opts.port or 8080,
    dispatch = dispatch,
    abort = abort,
    tls = opts.tls,
    max_body = max_body,
    max_header_bytes = opts.max_header_bytes,
    max_headers = opts.max_headers,
    header_timeout_ms = opts.header_timeout_ms,
    keepalive_timeout_ms = opts.keepalive_timeout_ms,
    send_timeout_ms = opts.send_timeout_ms,
    limit_concurrency = opts.limit_concurrency,
    backlog = opts.backlog,
  })
end


--- tls_context(opts): a server TLS context, or nil, err, which (the option
-- whose file failed: "cert", "key" or "ca"). opts: cert (PEM chain), key
-- (PEM; default: cert), password (of the key), ca (PEM: CAs of client
-- certificates), verify ("none", "optional" or "required").
M.tls_context = core.tls_server_context

return M
