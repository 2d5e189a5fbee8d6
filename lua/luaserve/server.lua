-- luaserve.server: serves an app on the core. The core calls dispatch()
-- once per parsed request, with a handle of the request (a number the core
-- checks: once the request is over it names nothing); each request runs as
-- a task (a coroutine) that walks one pipeline:
--
--   match the route (req.route, req.params; or a 404/405/422 to answer)
--   -> the app's middleware, outermost first, each around call_next
--   -> the endpoint: the route's body limit, its deadline (a 504 when the
--      handler is late: its task is cancelled with all it awaits), its
--      dependencies (req.deps), the handler or the pool hand-off of a sync
--      route, the router's 404/405/422
--   -> errors become answers through the app's exception handlers
--   -> the answer goes to the core (whole or streamed)
--   -> the dependencies' cleanups, the background tasks once the last
--      byte is written, the access log line.
--
-- When the client goes away the core calls abort() from the loop, which
-- cancels the request's task and everything it waits on.

local core = require "luaserve.core"
local errors = require "luaserve.errors"
local future = require "luaserve.future"
local request = require "luaserve.request"
local response = require "luaserve.response"
local log = require "luaserve.log"
local sync = require "luaserve.sync"
local websocket = require "luaserve.websocket"
local inputs = require "luaserve.inputs"
local is_hooks = require("luaserve.middleware.hooks").is_hooks

local start_request = future.start_request
-- The requests in Lua are kept by their connection's slot (handle %
-- SLOT_SPAN): a keep-alive connection's next request takes the same key,
-- where a new handle per request would add a key to the table's hash
-- part each time and make it rehash over and over (3 % of the CPU of a
-- /sleep request at 1,000 connections). Who holds a request compares it
-- with what its slot holds.
local SLOT_SPAN = core.SLOT_SPAN
local drain = future.drain
local on_error = future.on_error
local current = future.current
local spawn = future.spawn
local spawn_detached = future.spawn_detached
local wait_for = future.wait_for
local sleep = future.sleep
local on_cancel = future.on_cancel
local co_resume = future.coroutine_resume
local new_request = request.new
local slots = require "luaserve.request_slots"
local CONN, TASK, ROUTE, T0 = slots.CONN, slots.TASK, slots.ROUTE, slots.T0
local PEER, APP = slots.PEER, slots.APP
local find = string.find
local normalize = response.normalize
local to_object = response.object
local is_sync = sync.is_sync
local run_sync = sync.run_request
local from_error = response.from_error
local is_http_error = response.is_http_error
local new_http_error = errors.new
local HTTPError = errors.HTTPError
local respond = core.respond
local respond_start = core.respond_start
local write_chunk = core.write_chunk
local respond_end = core.respond_end
local respond_file = core.respond_file
local FileBody = response.FileBody
local new_future = future.new_internal
local await = future.await
local release = core.release
local cffi = require "luaserve.ffi"
local hrtime = cffi.hrtime
local respond_plain = cffi.respond
local peer = cffi.peer
local now = core.now
local xpcall = xpcall
local pcall = pcall
local type = type
local tostring = tostring
local getmetatable = getmetatable
local rawget = rawget
local tonumber = tonumber
local unpack = unpack

local M = {}

local JSON = response.JSON
local EMPTY_PARAMS = setmetatable({}, { __newindex = function()
  error("req.params is read-only here", 2) end })

local INTERNAL_ERROR = '{"detail":"Internal Server Error"}'
-- A streamed (multipart) body's default limit (--max-upload).
local MAX_UPLOAD = 100 * 1024 * 1024

-- Workers (luaserve.master): publish what runs, for the master's log when
-- it kills a worker whose loop is blocked. nil: not a worker.
local note_running = nil

-- Errors of tasks (spawned, cancelled) go through the server's log.
future.set_logger(log.error, log.warn)


-- The log line for a handler error: method, path, route and traceback.
local function log_handler_error(req, err, what)
  -- The traceback down to the handler; the framework's frames say nothing.
  err = tostring(err):gsub("\n[^\n]*luaserve/server%.lua:%d+:.*$", "")
    :gsub("\n%s*%[C%]: in function 'xpcall'.*$", "")
  log.error(("%s %s (route %s)%s: %s"):format(req.method, req.path,
    req.route or "-", what or "", err))
end


local strip_root   -- forward (defined with the workers' helpers)


-- ---------------------------------------------------------------------------
-- Errors into answers

-- The handler registered for err, if any: by its class (metatable), then
-- by its status (an HTTPError's, 500 for anything else).
local function find_handler(handlers, err)
  if type(err) == "table" then
    local h = handlers[getmetatable(err) or false]
    if h then return h end
    if getmetatable(err) == HTTPError then return handlers[err.status] end
  end
  return handlers[500]
end


--- answer_error(app, req, err): status, body, content type, headers,
-- stream, background for an error: the app's exception handler for it, or
-- the default (an HTTPError's status and detail; else a logged 500).
-- Errors that are not tables (bugs) are logged even when a handler
-- answers; a handler that raises is logged and answers 500.
local function answer_error(app, req, err)
  local handlers = app.handlers
  local h = next(handlers) ~= nil and find_handler(handlers, err)
  if type(err) ~= "table" then log_handler_error(req, err) end
  if h then
    local r = { xpcall(h, on_error, req, err) }
    if r[1] then
      local ok, status, body, ctype, headers, stream, bg = pcall(normalize,
        r[2], r[3], r[4])
      if ok then return status, body, ctype, headers, stream, bg end
      r[2] = status
    end
    log_handler_error(req, r[2], " exception handler")
    return 500, INTERNAL_ERROR, JSON
  end
  if is_http_error(err) then return from_error(err) end
  if type(err) == "table" then log_handler_error(req, tostring(err)) end
  return 500, INTERNAL_ERROR, JSON
end
M.answer_error = answer_error


-- ---------------------------------------------------------------------------
-- The endpoint: what middleware wraps

-- Dependencies: each fn(req) gives a value (and maybe a cleanup function);
-- in the order of their names, so that a failure leaves a known set.
local function resolve_deps(req, deps, names)
  local values = {}
  req.deps = values
  for i = 1, #names do
    local name = names[i]
    local value, cleanup = deps[name](req)
    values[name] = value
    if type(cleanup) == "function" then
      local list = rawget(req, "_cleanups")
      if list == nil then list = {} req._cleanups = list end
      list[#list + 1] = cleanup
    end
  end
end


-- The handler (after its dependencies): status, body, ctype, headers,
-- stream, background, websocket. Raises what it raises. A WebSocket
-- route's answer is the checked handshake's 101; its session follows it.
local function call_handler_checked(req, route)
  local validate = route.validate   -- declared inputs (luaserve.inputs)
  if validate then
    local problems = validate(req)
    if problems then error(new_http_error(422, problems), 0) end
  end
  local deps = route.opts.deps
  if deps then resolve_deps(req, deps, route.dep_names) end
  local handler = route.handler
  if route.websocket then
    local headers, session = websocket.handshake(req, route.opts)
    session.handler = handler
    return 101, "", nil, headers, nil, nil, session
  end
  if is_sync(handler) then return run_sync(handler, req) end   -- on the pool
  if route.responses and inputs.validate_responses then
    return normalize(inputs.check_response(req, route, handler(req)))
  end
  return normalize(handler(req))
end


-- The usual handler (no declared inputs, dependencies, WebSocket, pool
-- or checked responses) is called from a frame with two locals: the
-- frames between a request's runner and its handler are what a waiting
-- request keeps on its stack (see run_pipeline).
local function call_handler(req, route)
  if route.validate or route.opts.deps or route.websocket
    or (route.responses and inputs.validate_responses) or is_sync(route.handler) then
    return call_handler_checked(req, route)
  end
  return normalize(route.handler(req))
end


local function xcall_handler(req, route)
  return xpcall(call_handler, on_error, req, route)
end


local function timeout_error(req, seconds)
  log.warn(("%s %s (route %s): the handler did not answer within %g s; its " ..
    "work was cancelled"):format(req.method, req.path, req.route or "-", seconds))
  return new_http_error(504, "request timed out")
end


-- The handler bounded by a deadline: it runs as a task of its own, and
-- when it is late that task is cancelled (with what it awaits: sleeps,
-- upstream calls, queued sync jobs) and the request answers 504. Calls it
-- makes inherit what is left of the deadline (future.deadline()).
local function call_with_deadline(req, route, seconds)
  local task = req[TASK]
  -- The deadline's timer first, and the deadline read from its clock:
  -- calls bounded by the deadline end with it, not before it (on a tie
  -- the older timer, this one, fires first: the answer is the 504).
  local timer = future.sleep_internal(seconds)
  task._deadline = now() + seconds
  local t = spawn(xcall_handler, req, route)
  local f = t:future()
  local out = new_future(function() timer:cancel() t:cancel() end)
  f:on_done(function(g)
    if out._done then return end
    out:resolve(g:result())
    timer:cancel()   -- after: a cancelled timer is done, and would time out
  end)
  timer:on_done(function()
    if out._done then return end
    out:resolve(nil)
    t:cancel()   -- with everything it awaits
  end)
  local r = { await(out) }
  task._deadline = nil
  if r[1] == nil then error(timeout_error(req, seconds), 0) end
  if not r[1] then error(r[2], 0) end
  return unpack(r, 2, 8)
end


-- A streamed body's limits are the route's: max_upload bounds what is read
-- (413 at once when Content-Length says more), max_body what req.body
-- keeps in memory.
local function stream_limits(ctx, req, opts)
  local max_upload = opts.max_upload or ctx.max_upload
  req._max_upload = max_upload
  req._max_body = opts.max_body or ctx.max_body
  local length = tonumber(req.headers["content-length"])
  if length and length > max_upload then
    error(new_http_error(413, "request body too large"), 0)
  end
end


-- The innermost step: the router's answer, or the route's handler within
-- the route's body limit and deadline. Raises what the handler raises.
local function endpoint(ctx, req)
  local route = req[ROUTE]
  if not route then
    local m = req._nomatch
    error(new_http_error(m[1], m[2], m[3]), 0)
  end
  local opts = route.opts
  local body = rawget(req, "body")
  if body then
    if #body > (opts.max_body or ctx.max_body) then
      error(new_http_error(413, "request body too large"), 0)
    end
  else
    stream_limits(ctx, req, opts)   -- a streamed (multipart) body
  end
  local seconds = opts.timeout or ctx.timeout
  if seconds then return call_with_deadline(req, route, seconds) end
  return call_handler(req, route)
end


-- ---------------------------------------------------------------------------
-- Middleware

-- An error inside call_next becomes an answer there, so that the
-- middleware outside it see a response object like any other.
local function endpoint_object(ctx, req)
  local r = { xpcall(endpoint, on_error, ctx, req) }
  if r[1] then return to_object(r[2], r[3], r[4], r[5], r[6], r[7], r[8]) end
  return to_object(answer_error(ctx.app, req, r[2]))
end


-- A middleware's answer as a response object; i: its place in the chain.
local function as_object(i, a, b, c)
  if type(a) == "table" and getmetatable(a) == response.Response and a._normal then
    return a
  end
  if a == nil and b == nil then
    error(("middleware %d returned nothing: return the response of " ..
      "call_next(req), or your own"):format(i), 0)
  end
  return to_object(normalize(a, b, c))
end


-- The app's middleware first..last, all hooks (luaserve.middleware.hooks),
-- as one link of the chain: the befores in order until one answers, then
-- the link inside (unless one answered), then the afters of those whose
-- before ran, back to the first, each on what came out of the one inside
-- it. One frame for the whole run, which calls the link inside with two
-- locals below it.
local function hooks_link(mw, first, last, inner, outermost)
  return function(req)
    local res, ran = nil, last
    for i = first, last do
      local before = mw[i].before
      if before then
        local a, b, c = before(req)
        if a ~= nil or b ~= nil then
          res, ran = as_object(i, a, b, c), i - 1
          break
        end
      end
    end
    if res == nil then res = inner(req) end
    for i = ran, first, -1 do
      local after = mw[i].after
      if after then
        local a, b, c = after(req, res)
        if a ~= nil or b ~= nil then res = as_object(i, a, b, c) end
      end
    end
    if outermost then return normalize(res) end
    return res
  end
end


-- A middleware fn(req, call_next) as a link of the chain: it is called
-- with one local below it; its answer is checked (i: its place, for the
-- message).
local function nesting_link(fn, i, inner)
  local check
  if i == 1 then   -- the outermost gives status, body, ctype...
    check = function(a, b, c) return normalize(as_object(1, a, b, c)) end
  else
    check = function(a, b, c) return as_object(i, a, b, c) end
  end
  return function(req) return check(fn(req, inner)) end
end


-- The chain of call_next functions for the app's middleware, made once
-- (no closure per request), from the endpoint out: a link per nesting
-- middleware, one per run of hooks. The outermost link gives the
-- pipeline's status, body, ctype... (see run_pipeline).
local function build_chain(ctx)
  local mw = ctx.app.middleware
  local nxt = function(req) return endpoint_object(ctx, req) end
  local i = #mw
  while i >= 1 do
    if is_hooks(mw[i]) then
      local first = i
      while first > 1 and is_hooks(mw[first - 1]) do first = first - 1 end
      nxt = hooks_link(mw, first, i, nxt, first == 1)
      i = first - 1
    else
      nxt = nesting_link(mw[i], i, nxt)
      i = i - 1
    end
  end
  ctx.app._chain = nxt
  return nxt
end


-- Status, body, ctype, headers, stream, background: through the middleware
-- when the app has any, else straight from the endpoint.
-- What a waiting request keeps on its coroutine's stack is watched.
-- LuaJIT starts it at 40 usable slots, and a C function needs 20 free
-- ones above its caller: a handler already runs deeper than that, so the
-- stack doubles once, to about 100 slots. Past those it doubles again
-- (0.9 KB more per waiting request, kept by the runner coroutine when it
-- is reused), so the frames from the runner down to the handler are few
-- and call with few locals below them (each nesting middleware adds 5 to
-- 10, a run of hooks 5):
-- tail calls here and in endpoint, route_request's matching off the
-- stack, the usual handler called by a two-local call_handler.
local function run_pipeline(ctx, req)
  local app = ctx.app
  if #app.middleware == 0 then return endpoint(ctx, req) end
  return (app._chain or build_chain(ctx))(req)
end


-- ---------------------------------------------------------------------------
-- After the answer: cleanups, background tasks

local background_running = 0
local background_idle = nil   -- a future resolved when none is running


local function run_background(list)
  for i = 1, #list do
    local b = list[i]
    background_running = background_running + 1
    spawn_detached(function()
      local ok, err = xpcall(b[1], on_error, unpack(b, 2, b.n))
      if not ok then log.error("background task failed: " .. tostring(err)) end
      background_running = background_running - 1
      if background_running == 0 and background_idle then
        local f = background_idle
        background_idle = nil
        f:resolve(true)
      end
    end)
  end
end


--- background_done(): a future resolved once no background task runs.
function M.background_done()
  if background_running == 0 then return future.resolved(true) end
  background_idle = background_idle or new_future()
  return background_idle
end


-- The dependencies' cleanups, in reverse order, in a task of their own
-- (they may await; the request's task may be cancelled already).
local function cleanups_task(req, list)
  for i = #list, 1, -1 do
    local ok, err = xpcall(list[i], on_error)
    if not ok then log_handler_error(req, err, " dependency cleanup") end
  end
end

-- (No closure here: run on every request, it stays compilable.)
local function run_cleanups(req)
  local list = rawget(req, "_cleanups")
  if not list then return end
  req._cleanups = nil
  spawn_detached(cleanups_task, req, list)
end


-- What runs once the answer is written: background tasks (from
-- req:after_response and Response{background=}).
local function after_written(req, bg)
  local list = rawget(req, "_background")
  if bg then
    list = list or {}
    list[#list + 1] = { bg, n = 1 }
  end
  if list then run_background(list) end
end


-- ---------------------------------------------------------------------------
-- Answering

-- A streamed response: the head, then what stream(write) writes, then the
-- last chunk. The request stays abortable (in requests) until the end.
-- Returns the body bytes written and, when asked for and the end is not
-- written yet, a future resolved once it is.
local function send_stream(requests, req, status, ctype, headers, stream,
                           want_written)
  local conn = req[CONN]
  local ok, started = pcall(respond_start, conn, status, ctype, headers)
  if not ok then   -- a bad header table: nothing was sent yet
    log_handler_error(req, started)
    requests[conn % SLOT_SPAN] = nil
    respond(conn, 500, INTERNAL_ERROR, JSON)
    return 0
  end
  if not started then   -- nil, "closed": the client is gone already
    if requests[conn % SLOT_SPAN] == req then
      requests[conn % SLOT_SPAN] = nil
      release(conn)
    end
    return 0
  end
  local nbytes = 0
  local function write(data)
    if type(data) ~= "string" then
      error("write: expected a string, got " .. type(data), 2)
    end
    if requests[conn % SLOT_SPAN] ~= req then return nil, "closed" end
    local f = new_future()
    local done = write_chunk(conn, data, f)
    -- Whatever cut the connection (a reset, a send timeout): "closed".
    if done == nil then return nil, "closed" end
    nbytes = nbytes + #data
    if done then return true end
    if await(f) then return true end   -- the socket was full: it drained
    return nil, "closed"
  end
  local sok, serr = xpcall(stream, on_error, write, req)
  if requests[conn % SLOT_SPAN] ~= req then return nbytes end   -- aborted meanwhile
  requests[conn % SLOT_SPAN] = nil
  if not sok then
    -- The head is out: a 500 is no longer possible. Close without the last
    -- chunk, so the client sees a cut body, not a whole one.
    log_handler_error(req, serr)
  end
  local written = want_written and new_future() or nil
  local _, later = respond_end(conn, not sok, written)
  return nbytes, later and written or nil
end


-- A file body (luaserve.static): the head, then the file sent by the
-- core (sendfile off the loop; chunks over TLS). The request stays
-- abortable until the last byte; nothing pipelined is answered before.
-- Returns the body bytes sent.
local function send_file(requests, req, status, ctype, headers, body)
  local conn = req[CONN]
  local f = new_future()
  local ok, r = pcall(respond_file, conn, status, ctype, headers, body.file,
    body.offset, body.length, f)
  if not ok then   -- a bad header table: nothing was sent yet
    body.file:close()   -- still the file's (not handed to the send)
    log_handler_error(req, r)
    requests[conn % SLOT_SPAN] = nil
    respond(conn, 500, INTERNAL_ERROR, JSON)
    return 0
  end
  if r ~= false then   -- done now (HEAD, empty), or the client is gone
    if requests[conn % SLOT_SPAN] == req then requests[conn % SLOT_SPAN] = nil end
    return (r and req.method ~= "HEAD") and body.length or 0
  end
  local done = await(f)   -- the client leaving cancels this task instead
  if requests[conn % SLOT_SPAN] == req then requests[conn % SLOT_SPAN] = nil end
  return done and body.length or 0
end


-- A WebSocket session after its handshake was answered 101: the route's
-- handler(ws, req) in the request's task; the connection closes with 1000
-- when it returns, 1011 (and a log line naming the route) when it raises.
-- The client vanishing cancels the task like any request's.
local function run_session(requests, req, session, headers)
  local conn = req[CONN]
  local ud = core.ws_accept(conn, headers, session.core)
  if ud then
    local ws = websocket._wrap(ud, session.subprotocol)
    local ok, err = xpcall(session.handler, on_error, ws, req)
    if ok then
      await(ws:close(1000))
    else
      log_handler_error(req, err, " websocket")
      await(ws:close(1011, "server error"))
    end
  end
  if requests[conn % SLOT_SPAN] == req then
    requests[conn % SLOT_SPAN] = nil
    release(conn)
  end
end


-- Send a whole answer; returns the status and the body sent and, when the
-- answer is not written yet, a future resolved once it is.
local function send_whole(req, status, body, ctype, headers, want_written)
  local conn = req[CONN]
  -- The usual answer (no header table, nobody waiting for it to be
  -- written) through the FFI: the trace goes on through the call.
  if headers == nil and not want_written and type(status) == "number" and
      respond_plain(conn, status, body, ctype) ~= nil then
    return status, body, nil
  end
  local written = want_written and new_future() or nil
  local sent, err, later = pcall(respond, conn, status, body, ctype, headers,
    written)
  if not sent then   -- a bad header table or content type: still answer
    log_handler_error(req, err)
    respond(conn, 500, INTERNAL_ERROR, JSON)
    return 500, INTERNAL_ERROR, nil
  end
  return status, body, later and written or nil
end


-- The closures a request may need, made apart: a function that makes one
-- is not compiled (its locals are closed over), and the request's own
-- function runs on every request.
local function on_cancel_cleanups(req)
  on_cancel(function() run_cleanups(req) end)
end

local function after_written_later(written, req, bg)
  written:on_done(function() after_written(req, bg) end)
end


-- Match the request's route and note it on the request. A function of its
-- own: what it holds is not on the stack of a request that waits.
local function route_request(app, req, access_log)
  req[TASK] = current()
  req[APP] = app
  -- The access line names the client: read its address while the
  -- request holds its connection ("" if unknown; req.client falls back
  -- on it once the request is over). Through the FFI: a classic call here
  -- would end the request's trace.
  if access_log then req[PEER] = peer(req[CONN]) or "" end
  local route, params, detail, extra, near = app:match(req.method, req.path)
  if route then
    req[ROUTE] = route
    req.params = params or EMPTY_PARAMS
    req.route = route.path
  else
    req.params = EMPTY_PARAMS
    req._nomatch = { params, detail, extra }   -- (a 9th key: the table grows, on this path only)
    if near then req.route = near.path end   -- a 422: its parameter did not convert
  end
  if note_running then note_running(req.method, req.path, req.route or "-") end
  if route and route.opts.deps then   -- cleanups run even if the client leaves
    on_cancel_cleanups(req)
  end
end


--- Build the functions each request's task runs: handle (match, the
-- pipeline, respond, after-response work, log), and failed, which runs in
-- its place when it raises (the task's function is not a protected call:
-- see future.lua's runners): the error becomes an answer (500, or what
-- the exception handlers say), or a log line naming the route once the
-- request was answered.
local function make_handler(app, opts)
  local requests = opts.requests
  local access_log = opts.access_log ~= false
  local metrics = opts.metrics and require("luaserve.metrics").observe
  local ctx = {
    app = app,
    max_body = opts.max_body or 1024 * 1024,
    max_upload = opts.max_upload or MAX_UPLOAD,
    timeout = opts.timeout_request,
  }

  -- Send the answer, then what comes after it.
  local function answer(req, status, body, ctype, headers, stream, bg, ws)
    local conn = req[CONN]
    if requests[conn % SLOT_SPAN] ~= req then return end   -- aborted meanwhile
    local nbytes, written
    local want_written = bg or rawget(req, "_background")
    if ws and status == 101 then
      run_session(requests, req, ws, headers)
      nbytes = 0
    elseif stream and getmetatable(stream) == FileBody then
      nbytes = send_file(requests, req, status, ctype, headers, stream)
    elseif stream then
      nbytes, written = send_stream(requests, req, status, ctype, headers,
        stream, want_written)
    else
      requests[conn % SLOT_SPAN] = nil
      status, body, written = send_whole(req, status, body, ctype, headers,
        want_written)
      nbytes = #body
    end
    run_cleanups(req)
    if written then
      after_written_later(written, req, bg)
    elseif want_written then
      after_written(req, bg)
    end
    if access_log or metrics then
      local seconds = hrtime() - req[T0]
      if access_log then log.access(req, status, nbytes, seconds) end
      if metrics then metrics(req, status, seconds) end
    end
  end

  local function handle(req)
    route_request(app, req, access_log)
    answer(req, run_pipeline(ctx, req))
  end

  local function failed(req, err)
    if requests[req[CONN] % SLOT_SPAN] ~= req then   -- answered already
      log_handler_error(req, err, " after its answer")
      return
    end
    answer(req, answer_error(app, req, err))
  end

  return handle, failed
end


--- gc_headroom(bytes): pace the Lua collector for serving. After each
-- collection the heap may grow by twice what is live or by `bytes`,
-- whichever is more, before the next one starts; 0 keeps LuaJIT's own
-- pacing (the heap doubles). A server's live heap is mostly its code and
-- modules, and its garbage is short-lived requests: collecting at every
-- doubling of a small heap marks the same code over and over (with 16 MB,
-- a json request costs 13 % less user CPU). A big heap is mostly requests
-- that wait (10,000 make about 35 MB), and each collection marks every
-- waiting coroutine in one atomic step: letting it triple instead of
-- double halves that work.
local gc_headroom_kb = 0
local gc_watched = false   -- a sentinel waits for the next collection

local function pace_gc()
  local pause = 200
  if gc_headroom_kb > 0 then
    local live = math.max(collectgarbage("count"), 1)
    pause = 100 + math.max(200, math.min(math.floor(gc_headroom_kb / live * 100), 1e8))
  end
  collectgarbage("setpause", pause)
end

-- A finalizer runs once per collection: it paces the next one from what
-- the collection left, and waits for the one after.
local function watch_gc()
  gc_watched = true
  getmetatable(newproxy(true)).__gc = function()
    gc_watched = false
    pace_gc()
    if gc_headroom_kb > 0 then watch_gc() end
  end
end

function M.gc_headroom(bytes)
  gc_headroom_kb = bytes / 1024
  pace_gc()
  if gc_headroom_kb > 0 and not gc_watched then watch_gc() end
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
    local req = future.request_of(task)
    local who = "a task"
    if type(req) == "table" and req.method and req.path then
      who = ("%s %s (route %s)"):format(req.method, req.path, req.route or "-")
    end
    log.warn(("the loop was blocked for %.0f ms by %s: await waits, and run " ..
      "blocking or CPU-heavy code with sync()"):format(held * 1000, who))
  end)
end


-- The numeric address to listen on: host itself (IPv4 or IPv6), or the
-- first address a name (localhost) has, looked up now (startup: the
-- look-up blocks). nil, err when the name has none.
local function listen_address(host)
  if host:match("^[%d.]+$") or host:find(":", 1, true) then return host end
  local list, err = core.resolve_sync(host)
  if not list or not list[1] then
    return nil, ("cannot resolve host '%s': %s"):format(host, tostring(err or "no address"))
  end
  if list[1] ~= host then
    log.debug(("host %s is %s"):format(host, table.concat(list, ", ")))
  end
  return list[1]
end
M.listen_address = listen_address


-- ---------------------------------------------------------------------------
-- Workers, proxies (luaserve.master, luaserve.proxy)

--- strip_root(req, root): --root-path: a path under the prefix is routed
-- without it (req.root_path keeps the prefix); one outside it (a proxy
-- that strips the prefix itself) is routed as it is.
function strip_root(req, root)
  local path = req.path
  if path:sub(1, #root) == root then
    local rest = path:sub(#root + 1)
    if rest == "" or rest:byte(1) == 47 then
      req.path = rest == "" and "/" or rest
    end
  end
  req.root_path = root
end


--- publish_running(on): in a worker, keep what the loop runs in shared
-- memory: the request of each task resumed, its route once matched.
function M.publish_running(on)
  if not on then
    note_running = nil
    future.set_step_hook(nil)
    return
  end
  local note = core.worker_running
  note_running = note
  local published, published_req = nil, nil
  future.set_step_hook(function(task)
    local root = task._root or task
    local req = future.request_of(root)
    -- (a finished request's task object may serve the next request)
    if root == published and req == published_req then return end
    published, published_req = root, req
    if type(req) == "table" and req.method then
      -- a new request's route is not matched yet: the handler notes it
      if req.route ~= false then note(req.method, req.path, req.route or "-") end
    else
      note(nil)
    end
  end)
end


--- heartbeat(seconds): a worker tells its master it is alive that often
-- (a blocked loop cannot).
function M.heartbeat(seconds)
  core.worker_beat()
  spawn_detached(function()
    while true do
      await(sleep(seconds))
      core.worker_beat()
    end
  end)
end


--- serve(app, opts): listen and serve app; returns the server (with
-- :address(), :start() and :close()), or nil, err.
-- opts: host, port, tls (a context from tls_context: the listener speaks
-- TLS only), access_log, max_body, max_header_bytes, max_headers,
-- header_timeout_ms, keepalive_timeout_ms, send_timeout_ms,
-- timeout_request (seconds a handler may take; a route's timeout option
-- wins), limit_concurrency, backlog, paused (bound but not accepting until
-- server:start(): the app's startup hooks run in between), max_upload (a
-- multipart body's limit, 100 MB; routes may set their own),
-- stream_multipart (default true: multipart/form-data bodies reach the
-- handler as a stream; false: read whole under max_body like any other),
-- docs (false: no /openapi.json and /docs), validate_responses (check
-- answers against their declared schemas: a mismatch is a logged 500).
function M.serve(app, opts)
  opts = opts or {}
  -- issue 12: /openapi.json and /docs (after the app's routes: its own win)
  if opts.docs ~= false then require("luaserve.docs").mount(app) end
  if opts.validate_responses ~= nil then inputs.validate_responses = opts.validate_responses end
  local requests = {}   -- slot of conn -> the request being handled
  local handle, failed = make_handler(app, {
    requests = requests,
    access_log = opts.access_log,
    metrics = opts.metrics,
    max_body = opts.max_body,
    max_upload = opts.max_upload,
    timeout_request = opts.timeout_request,
  })
  local body_max = opts.max_body or 1024 * 1024
  local upload_max = opts.max_upload or MAX_UPLOAD

  local timed = opts.access_log ~= false or opts.metrics
  local scheme = opts.tls and "https" or "http"
  local proxy = opts.proxy and require("luaserve.proxy").new(opts.proxy)
  local root = opts.root_path
  local function dispatch(conn, method, target, headers, body, plen, escaped)
    local req
    if body then
      req = new_request(conn, method, target, headers, body, scheme, plen, escaped)
    else   -- streamed (false): read as the handler asks (body.lua)
      req = new_request(conn, method, target, headers, nil, scheme, plen, escaped)
      req._max_body, req._max_upload = body_max, upload_max
    end
    if timed then req[T0] = hrtime() end
    -- Behind a balancer: only a request that carries forwarding headers
    -- pays for them.
    if proxy and find(headers, "forwarded", 1, true) then
      proxy(req)
    end
    if root then strip_root(req, root) end
    requests[conn % SLOT_SPAN] = req
    start_request(handle, failed, req)
    drain()
  end

  local metrics = opts.metrics and require("luaserve.metrics").observe
  local function abort(conn)
    local req = requests[conn % SLOT_SPAN]
    if req == nil or req[CONN] ~= conn then return end
    requests[conn % SLOT_SPAN] = nil
    local task = req[TASK]
    if task then task:cancel() end
    if opts.access_log ~= false then
      log.access(req, 499, 0, hrtime() - req[T0])
    end
    if metrics then metrics(req, 499, hrtime() - req[T0]) end
    release(conn)
    drain()
  end

  local max_body = opts.max_body or 1024 * 1024
  if app.max_body > max_body then max_body = app.max_body end
  local max_upload = upload_max
  if (app.max_upload or 0) > max_upload then max_upload = app.max_upload end
  local host, herr = listen_address(opts.host or "127.0.0.1")
  if not host then return nil, herr end
  return core.listen({
    fd = opts.fd,
    host = host,
    port = opts.port or 8080,
    dispatch = dispatch,
    abort = abort,
    tls = opts.tls,
    paused = opts.paused,
    max_body = max_body,
    max_upload = max_upload,
    stream_multipart = opts.stream_multipart == false and 0 or 1,
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


-- ---------------------------------------------------------------------------
-- Startup and shutdown

-- Run fn(...) as a task to its end, the loop running meanwhile (startup
-- and shutdown happen outside any request). true, or false, err.
local function run_hook(fn, ...)
  local r = { await(spawn(function(...)
    return xpcall(fn, on_error, ...)
  end, ...)) }
  if r[1] then return true end
  return false, r[2] == nil and "cancelled" or r[2]
end


--- startup(app): the app's startup hooks, then the first halves of its
-- lifespans. true, or nil, err (the hook's error with its traceback);
-- what started is shut down again before the error returns.
function M.startup(app)
  if #app.startup == 0 and #app.lifespans == 0 then return true end
  local blocking = future.allow_blocking(true)
  for i = 1, #app.startup do
    local ok, err = run_hook(app.startup[i], app)
    if not ok then
      future.allow_blocking(blocking)
      return nil, "startup hook failed: " .. tostring(err)
    end
  end
  local running = {}
  app._running = running
  for i = 1, #app.lifespans do
    local co = coroutine.create(app.lifespans[i])
    local ok, err = run_hook(function()
      local rok, rerr = co_resume(co, app)   -- awaits pass through
      if not rok then error(rerr, 0) end
    end)
    if not ok then
      M.shutdown(app, 5)
      future.allow_blocking(blocking)
      return nil, "lifespan failed at startup: " .. tostring(err)
    end
    if coroutine.status(co) == "suspended" then running[#running + 1] = co end
  end
  future.allow_blocking(blocking)
  return true
end


--- shutdown(app, seconds): the app's shutdown hooks (in the order added),
-- then the second halves of its lifespans (in reverse), each bounded by
-- seconds; errors and timeouts are logged.
function M.shutdown(app, seconds)
  if #app.shutdown == 0 and not app._running then return end
  local blocking = future.allow_blocking(true)
  local function bounded(what, fn, ...)
    local t = spawn(function(...) return xpcall(fn, on_error, ...) end, ...)
    local ok, err = await(wait_for(t, seconds))
    if ok == nil then
      log.error(("%s: did not finish within %g s"):format(what, seconds))
    elseif not ok then
      log.error(("%s failed: %s"):format(what, tostring(err)))
    end
  end
  for i = 1, #app.shutdown do bounded("shutdown hook", app.shutdown[i], app) end
  local running = app._running or {}
  app._running = nil
  for i = #running, 1, -1 do
    local co = running[i]
    bounded("lifespan shutdown", function()
      local ok, err = co_resume(co)
      if not ok then error(err, 0) end
    end)
  end
  future.allow_blocking(blocking)
end

return M
