-- luaserve.sync: functions that run on the thread pool, in parallel, each
-- pool thread with its own Lua state holding its own copy of the app.
--
--   local resize = sync(function(img, w) ... end)       -- at module level
--   app:get("/cpu", sync(function(req) ... end))         -- a whole handler
--   local out, err = await(resize(req.body, 128))        -- from async code
--
-- sync(fn) may only be called while an app loads (module level of the app
-- or of a module it requires during the load): every pool thread loads the
-- app the same way, so the same sync() calls happen there and the pool
-- finds the function by its identity, the place fn is defined:
-- "<source file>:<line>" (plus "#n" for the n-th function marked at the
-- same line during one load). A function marked later, inside a request,
-- would not exist in the pool states: that raises.
--
-- Called from async code, a sync function returns a future of its results
-- (nil, err when it raised; the error is logged with its traceback there).
-- Registered as a route handler, the whole request runs on the pool. Called
-- inside a pool thread (from another sync function), it runs right there.
-- Arguments and results are copied (core copy: see core/copy.c for what
-- may cross).

local core = require "luaserve.core"
local errors = require "luaserve.errors"
local future = require "luaserve.future"
local json = require "luaserve.json"
local log = require "luaserve.log"

local pool_submit = core.pool_submit
local pool_cancel = core.pool_cancel
local new_future = future.new
local resolved = future.resolved
local await = future.await
local on_error = future.on_error
local getmetatable = getmetatable
local setmetatable = setmetatable
local select = select
local tostring = tostring
local type = type
local error = error
local xpcall = xpcall
local pcall = pcall
local unpack = unpack

local M = {}

local CALL, REQUEST = 1, 2

-- Tables with these metatables keep them when they cross between states.
core.copy_register(1, json.array_mt)
core.copy_register(2, errors.HTTPError)

local pool_state = core.is_pool_state()

local Sync = {}
Sync.__index = Sync
Sync.__name = "luaserve.sync"
M.Sync = Sync


function Sync.__tostring(s)
  return "luaserve.sync (" .. s.key .. ")"
end


local by_key = {}      -- key -> sync object marked in this state
local loading = nil    -- while an app loads: { list = {}, count = {} }
local loaded = setmetatable({}, { __mode = "k" })   -- app -> its list


function M.is_sync(v)
  return getmetatable(v) == Sync
end
local is_sync = M.is_sync


-- "<file>:<line>" of a Lua function (the source as loaded, so that every
-- state that loads the same files gives the same string).
local function where(fn)
  local info = debug.getinfo(fn, "S")
  local src = info.source
  if src:sub(1, 1) == "@" then src = src:sub(2) else src = info.short_src end
  return src .. ":" .. info.linedefined
end


--- sync(fn): fn, marked to run on the pool (see the top of this file).
function M.sync(fn)
  if is_sync(fn) then return fn end
  if type(fn) ~= "function" then
    error("sync: expected a function, got " .. type(fn), 2)
  end
  if loading == nil then
    if future.current() ~= nil or pool_state then
      error("sync() called outside module load (in a request, a task or a " ..
        "pool thread's call): mark functions sync at module level of the " ..
        "app (or of a module it requires while it loads); a pool thread " ..
        "could not find a function marked later", 2)
    end
    -- Outside any app load and any request: an app built in a spec (or a
    -- script). No pool thread will ever load it, so it runs here, in this
    -- state, when called (see testing.client).
    return setmetatable({ fn = fn, key = where(fn), here = true }, Sync)
  end
  local w = where(fn)
  local n = (loading.count[w] or 0) + 1
  loading.count[w] = n
  local key = n == 1 and w or w .. "#" .. n
  local obj = setmetatable({ fn = fn, key = key }, Sync)
  local list = loading.list
  list[#list + 1] = obj
  by_key[key] = obj
  return obj
end


--- begin_load() / end_load(app): the window in which sync() may be called;
-- cli.load_app opens it around running the app's file. end_load records
-- the functions marked for `app` (see functions()).
function M.begin_load()
  local outer = loading
  loading = { list = {}, count = {}, outer = outer }
end


function M.end_load(app)
  local l = loading
  if l == nil then return {} end
  loading = l.outer
  if app ~= nil then loaded[app] = l.list end
  return l.list
end


--- functions(app): the sync objects marked while app loaded, in order.
function M.functions(app)
  return loaded[app] or {}
end


--- start_pool(app, path, opts): start the pool if app (loaded from path by
-- cli.load_app) marked any function sync; each pool thread loads path the
-- same way. opts: threads (0: one per core), queue, nice, log_level. true, false
-- (nothing marked: no pool), or nil, err.
function M.start_pool(app, path, opts)
  local list = loaded[app] or {}
  if #list == 0 then return false end
  local keys = {}
  for i = 1, #list do keys[i] = list[i].key end
  return core.pool_start({
    threads = opts.threads,
    queue = opts.queue,
    nice = opts.nice,
    init = {
      app = path,
      path = package.path,
      cpath = package.cpath,
      log_level = opts.log_level,
      keys = keys,
    },
  })
end


-- ---------------------------------------------------------------------------
-- The main state: submitting jobs

local function cancel_job(f)
  local job = f._job
  if job then
    f._job = nil
    pool_cancel(job)
  end
end


local INTERNAL_ERROR = '{"detail":"Internal Server Error"}'
local JSON = "application/json"


-- The traceback down to the sync function; the framework's frames below
-- it say nothing.
local function trim(err)
  return (tostring(err):gsub("\n%s*%[C%]: in function 'xpcall'.*$", ""))
end


local function log_request_error(req, err)
  log.error(("%s %s (route %s, sync): %s"):format(req.method, req.path,
    req.route or "-", trim(err)))
end


local function pack(...)
  return { n = select("#", ...), ... }
end


-- Raise msg at the line of whoever called the sync function (the first
-- Lua frame above call(): pcall(fn, ...) puts a C frame in between).
local function caller_error(msg)
  for level = 3, 8 do
    local info = debug.getinfo(level, "Sl")
    if info == nil then break end
    if info.what ~= "C" then
      error(("%s:%d: %s"):format(info.short_src, info.currentline, msg), 0)
    end
  end
  error(msg, 0)
end


-- Queue a call of obj with the values; a future of its results.
local function call(obj, ...)
  if pool_state or obj.here then   -- inside a pool thread: run it here
    local r = pack(xpcall(obj.fn, on_error, ...))
    if r[1] then return resolved(unpack(r, 2, r.n)) end
    local err = r[2]
    if type(err) ~= "table" then
      log.error(("sync function %s failed: %s"):format(obj.key, tostring(err)))
      err = tostring(err):match("^[^\n]*")
    end
    return resolved(nil, err)
  end
  local f = new_future(cancel_job)
  local job, err, misuse = pool_submit(CALL, obj.key, f, ...)
  if job == nil then
    if misuse then   -- an argument that cannot cross: the caller's line
      future.quiet(f)
      caller_error(err)
    end
    f:resolve(nil, err)   -- "pool full"
    return f
  end
  f._job = job
  return f
end


function Sync.__call(obj, ...)
  return call(obj, ...)
end


-- The body for the pool: whole, unless a declared form read it as a
-- stream already (its fields are in valid.form): then "".
local function whole_body(req)
  local st = rawget(req, "_body")
  if rawget(req, "body") == nil and st and st.received > 0 then return "" end
  return req.body
end


-- valid with a declared form's uploads as plain tables (an Upload holds
-- its open file, which cannot cross): name, filename, content_type,
-- headers, size and path (the temp file, removed when the request ends).
local function crossing_valid(valid)
  local form = valid and valid.form
  if not form then return valid end
  local Upload = require("luaserve.form").Upload
  local function plain(u)
    if getmetatable(u) ~= Upload then return u end
    return { name = u.name, filename = u.filename, content_type = u.content_type,
      headers = u.headers, size = u.size, path = u.path }
  end
  local out = {}
  for k, v in pairs(form) do
    if type(v) == "table" and getmetatable(v) ~= Upload then   -- a list of values
      local list = {}
      for i = 1, #v do list[i] = plain(v[i]) end
      out[k] = list
    else
      out[k] = plain(v)
    end
  end
  local copy = {}
  for k, v in pairs(valid) do copy[k] = v end
  copy.form = out
  return copy
end


--- run_request(obj, req): the whole request on the pool (the route
-- handler of a sync route). Runs in the request's task; returns status,
-- body, content type, headers, as response.normalize made them in the pool
-- thread. A full pool raises HTTPError 503 with Retry-After.
function M.run_request(obj, req)
  if obj.here then   -- marked outside an app load: no pool has it
    return select(2, M._run_request_here(obj, req))
  end
  local plain = {
    method = req.method,
    target = req.target,
    headers = req.headers,
    body = whole_body(req),
    params = req.params,
    route = req.route,
    client = req.client,
    scheme = req.scheme,
    tls = req.scheme == "https" and req.tls or nil,
    valid = crossing_valid(rawget(req, "valid")),   -- declared inputs, checked on the loop
  }
  local f = new_future(cancel_job)
  local job, err = pool_submit(REQUEST, obj.key, f, plain)
  if job == nil then
    if err == "pool full" then
      error(errors.new(503, "pool full", { ["Retry-After"] = "1" }), 0)
    end
    error(err, 0)
  end
  f._job = job
  local status, body, ctype, headers = await(f)
  if status == nil then   -- a result that could not cross, a stopped pool
    log_request_error(req, body)
    return 500, INTERNAL_ERROR, JSON, nil
  end
  return status, body, ctype, headers
end


-- ---------------------------------------------------------------------------
-- Pool states: loading the app, running jobs

--- _pool_init(init): load the app in this pool state as the main state
-- did. init: app (path), path, cpath, log_level, keys (the main's sync
-- functions of this load). true, or nil, err.
function M._pool_init(init)
  if type(init) ~= "table" or type(init.app) ~= "string" then
    return nil, "pool: bad init"
  end
  package.path = init.path or package.path
  package.cpath = init.cpath or package.cpath
  if init.log_level then log.set_level(init.log_level) end
  -- Sync work often goes through big strings (a file read in 64 KB
  -- pieces); at LuaJIT's default pace the collector lags them, and a
  -- 20 MB file digested in a pool thread left 9 MB of its pieces in
  -- memory at the peak (1.5 MB at this pace; tests/test_forms.py).
  collectgarbage("setstepmul", 1000)
  local app, err = require("luaserve.cli").load_app(init.app)
  if not app then return nil, "pool thread: cannot load app: " .. tostring(err) end
  for _, key in ipairs(init.keys or {}) do
    if not by_key[key] then
      return nil, ("pool thread: the sync function %s was not marked when " ..
        "the app loaded in a pool thread (mark sync functions the same way " ..
        "in every state, unconditionally, at module level)"):format(key)
    end
  end
  return true
end


local function call_result(obj, ok, ...)
  if ok then return true, ... end
  local err = ...
  if type(err) == "table" then return false, err end   -- HTTPError
  log.error(("sync function %s failed: %s"):format(obj.key, trim(err)))
  return false, (tostring(err):match("^[^\n]*"))
end


local EMPTY = {}


-- One request in a pool state: rebuild the request, run the handler,
-- normalize its answer. Returns true, status, body, content type, headers.
local function run_request_here(obj, plain)
  local request = require "luaserve.request"
  local req = request.new(nil, plain.method, plain.target, plain.headers or {},
    plain.body or "", plain.scheme)
  req.params = plain.params or EMPTY
  req.route = plain.route
  req.client = plain.client or {}
  req.tls = plain.tls or false
  req.valid = plain.valid
  return M._run_request_here(obj, req)
end


-- The handler of a sync route, run in this state: true, status, body,
-- content type, headers.
function M._run_request_here(obj, req)
  local response = require "luaserve.response"
  local ok, a, b, c = xpcall(obj.fn, on_error, req)
  if rawget(req, "_uploads") then   -- temp files of req:multipart(), unkept
    require("luaserve.form").discard(req)
  end
  local headers
  if ok then
    ok, a, b, c, headers = pcall(response.normalize, a, b, c)
    if ok then return true, a, b, c, headers end
    log_request_error(req, a)
    return true, 500, INTERNAL_ERROR, response.JSON, nil
  end
  if errors.is_http_error(a) then
    return true, response.from_error(a)
  end
  log_request_error(req, a)
  return true, 500, INTERNAL_ERROR, response.JSON, nil
end


--- _run_job(kind, key, ...): what a pool thread runs for one job. Returns
-- true and the results, or false and the error. Never raises.
function M._run_job(kind, key, ...)
  local obj = by_key[key]
  if obj == nil then
    local msg = "the pool could not find sync function " .. tostring(key) ..
      " (sync() must be called at module level while the app loads)"
    log.error(msg)
    return false, msg
  end
  if kind == REQUEST then return run_request_here(obj, ...) end
  return call_result(obj, xpcall(obj.fn, on_error, ...))
end


M.CALL, M.REQUEST = CALL, REQUEST
return M
