-- luaserve.server: serves an app on the core. The core calls dispatch()
-- once per parsed request; each request runs as a task (a coroutine) that
-- matches the route, runs the handler, turns its result into a response and
-- hands it back to the core. When the client goes away the core calls
-- abort(), which cancels the request's task and everything it waits on.

local core = require "luaserve.core"
local future = require "luaserve.future"
local request = require "luaserve.request"
local response = require "luaserve.response"
local json = require "luaserve.json"
local log = require "luaserve.log"

local start = future.start
local drain = future.drain
local on_error = future.on_error
local current = future.current
local new_request = request.new
local normalize = response.normalize
local from_error = response.from_error
local is_http_error = response.is_http_error
local respond = core.respond
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


-- The log line for a handler error: method, path, route and traceback.
local function log_handler_error(req, route, err)
  -- The traceback down to the handler; the framework's frames say nothing.
  err = tostring(err):gsub("\n%s*%[C%]: in function 'xpcall'.*$", "")
  log.error(("%s %s (route %s): %s"):format(req.method, req.path,
    route and route.path or "-", tostring(err)))
end


--- Build the handler of one app: handle(req) runs in the request's task.
local function make_handler(app, opts)
  local requests = opts.requests
  local access_log = opts.access_log ~= false
  local max_body_default = opts.max_body or 1024 * 1024

  -- One request, start to finish. Runs in its task.
  local function handle(req)
    local conn = req._conn
    local route, params, detail, extra = app:match(req.method, req.path)
    local status, body, ctype, headers
    if route == nil then
      status, body, ctype, headers = params,
        json.encode({ detail = detail }), JSON, extra
    else
      req.params = params or EMPTY_PARAMS
      req.route = route.path
      local limit = route.opts.max_body or max_body_default
      if #req.body > limit then
        status, body, ctype = 413, '{"detail":"request body too large"}', JSON
      else
        local ok, a, b, c = xpcall(route.handler, on_error, req)
        if ok then
          ok, a, b, c, headers = pcall(normalize, a, b, c)
          if ok then
            status, body, ctype = a, b, c
          else
            log_handler_error(req, route, a)
            status, body, ctype, headers = 500, INTERNAL_ERROR, JSON, nil
          end
        elseif is_http_error(a) then
          status, body, ctype, headers = from_error(a)
        else
          log_handler_error(req, route, a)
          status, body, ctype, headers = 500, INTERNAL_ERROR, JSON, nil
        end
      end
    end
    if requests[conn] ~= req then return end   -- aborted meanwhile
    requests[conn] = nil
    local ok, err = pcall(respond, conn, status, body, ctype, headers,
      req._close)
    if not ok then   -- a bad header table: still answer
      log_handler_error(req, route, err)
      respond(conn, 500, INTERNAL_ERROR, JSON)
    end
    if access_log then
      log.access(req, status, #body, hrtime() - req._t0)
    end
  end

  -- The task's function: handle(req), and a 500 should the framework
  -- itself fail, so that no request is ever left without an answer.
  return function(req)
    req._task = current()
    local ok, err = xpcall(handle, on_error, req)
    if not ok then
      log.error("internal error on " .. req.method .. " " .. req.path .. ": " ..
        tostring(err))
      local conn = req._conn
      if requests[conn] == req then
        requests[conn] = nil
        pcall(respond, conn, 500, INTERNAL_ERROR, JSON, nil, true)
      end
    end
  end
end


--- serve(app, opts): listen and serve app; returns the server (with
-- :address() and :close()), or nil, err.
-- opts: host, port, access_log, max_body, max_header_bytes, max_headers,
-- header_timeout_ms, keepalive_timeout_ms, limit_concurrency, backlog.
function M.serve(app, opts)
  opts = opts or {}
  local requests = {}   -- conn -> the request being handled
  local handle = make_handler(app, {
    requests = requests,
    access_log = opts.access_log,
    max_body = opts.max_body,
  })

  local function dispatch(conn, method, target, headers, body)
    local req = new_request(conn, method, target, headers, body)
    req._t0 = hrtime()
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
    release(conn)
    if opts.access_log ~= false then
      log.access(req, 499, 0, hrtime() - req._t0)
    end
    drain()
  end

  local max_body = opts.max_body or 1024 * 1024
  if app.max_body > max_body then max_body = app.max_body end
  return core.listen({
    host = opts.host or "127.0.0.1",
    port = opts.port or 8080,
    dispatch = dispatch,
    abort = abort,
    max_body = max_body,
    max_header_bytes = opts.max_header_bytes,
    max_headers = opts.max_headers,
    header_timeout_ms = opts.header_timeout_ms,
    keepalive_timeout_ms = opts.keepalive_timeout_ms,
    limit_concurrency = opts.limit_concurrency,
    backlog = opts.backlog,
  })
end

return M
