-- luaserve.future: futures, tasks, the scheduler and the async toolkit
-- (await, sleep, spawn, gather, wait_for, Semaphore).
--
-- A future is a result that arrives later. It is resolved once, with any
-- values; by the Lua convention `nil, err` is a failure. A task is a
-- function running in a coroutine; its future resolves with what the function
-- returns (or nil, err when it raises). `await(f)` suspends the running task
-- until f is resolved, and returns f's values.
--
-- The C core resolves futures from libuv callbacks through `resolve`, given
-- to it once by `core.init`. Waiting tasks are not resumed from inside
-- whoever resolved the future: they go to a ready queue that is drained at
-- the top, so resumes never nest.

local core = require "luaserve.core"

local co_create = coroutine.create
local co_resume = coroutine.resume
local co_yield = coroutine.yield
local co_status = coroutine.status
local co_running = coroutine.running
local select = select
local setmetatable = setmetatable
local traceback = debug.traceback
local unpack = unpack
local xpcall = xpcall
local error = error
local type = type
local tostring = tostring
local pcall = pcall

local M = {}

local function log_error(msg)
  io.stderr:write("luaserve: error: ", msg, "\n")
end


-- Log through the logger without ever raising: a broken log hook must not
-- stop the scheduler (the line then goes to stderr).
local function safe_log(msg)
  if not pcall(log_error, msg) then
    io.stderr:write("luaserve: error: ", tostring(msg), "\n")
  end
end

-- What a framework yield carries, so user coroutines can pass it through.
local AWAIT = setmetatable({}, { __tostring = function() return "await" end })
-- What an idle runner coroutine yields: it can take the next task.
local IDLE = setmetatable({}, { __tostring = function() return "idle" end })
M.AWAIT_TAG = AWAIT


-- ---------------------------------------------------------------------------
-- Futures

local Future = {}
local Task = {}   -- defined below; futures wake tasks
Future.__index = Future
Future.__name = "luaserve.Future"
M.Future = Future


function Future.__tostring(f)
  return (f._done and "luaserve.Future (done)" or "luaserve.Future (pending)")
end


--- A new pending future. `cancel(f)`, when given, stops the operation
-- behind it when the future is cancelled.
function M.new(cancel)
  return setmetatable({ _cancel = cancel }, Future)
end
local new_future = M.new


--- A future that is already resolved with the given values.
function M.resolved(...)
  local n = select("#", ...)
  return setmetatable({ _done = true, _rn = n, _r = n > 0 and { ... } or nil },
    Future)
end


function M.is_future(v)
  return type(v) == "table" and getmetatable(v) == Future
end


local ready = {}           -- tasks to resume, with the future they waited on
local ready_head, ready_tail = 1, 0
local draining = false
local current = nil        -- the task running now, or nil
local last_stepped = nil   -- the task resumed last (who held the loop)
local step_hook = nil      -- workers: fn(task) before each resume
local step                 -- forward: resumes a task


local function schedule(task, fut)
  ready_tail = ready_tail + 1
  ready[ready_tail] = task
  task._resume_with = fut
end


local function drain_ready()
  while ready_head <= ready_tail do
    local task = ready[ready_head]
    ready[ready_head] = nil
    ready_head = ready_head + 1
    if not task._cancelled then
      local f = task._resume_with
      task._resume_with = nil
      if f._r then step(task, unpack(f._r, 1, f._rn)) else step(task) end
    end
  end
end


--- Resume every ready task. Called at the top of each entry from C (and
-- by the test helpers); a call from inside the drain does nothing. An
-- error that escapes a step (a log hook, a resolve callback) is logged and
-- the drain goes on with the next task: the scheduler never stays stuck.
local function drain()
  if draining or ready_head > ready_tail then return end
  draining = true
  while true do
    local ok, err = pcall(drain_ready)
    if ok then break end
    safe_log("scheduler: " .. tostring(err))
  end
  ready_head, ready_tail = 1, 0
  draining = false
end
M.drain = drain


--- Resolve f with the given values and wake what waits on it. Resolving a
-- resolved future is an error in the caller, except after cancellation
-- (then it is ignored: the result came too late).
function Future:resolve(...)
  if self._done then
    if self._cancelled then return end
    error("future resolved twice", 2)
  end
  self._done = true
  local n = select("#", ...)
  self._rn = n
  if n > 0 then self._r = { ... } end
  self._cancel = nil
  local w = self._waiters
  if w == nil then return end
  self._waiters = nil
  if getmetatable(w) == Task then
    w._waiting = nil
    schedule(w, self)
  else
    for i = 1, #w do
      local x = w[i]
      if type(x) == "table" then
        x._waiting = nil
        schedule(x, self)
      else
        -- A callback (gather, wait_for, on_done): one that raises is
        -- logged; the waiters after it still wake.
        local ok, err = pcall(x, self)
        if not ok then safe_log("future callback: " .. tostring(err)) end
      end
    end
  end
end


--- Resolve with nil, err.
function Future:fail(err)
  return self:resolve(nil, err)
end


function Future:done()
  return self._done == true
end


--- The values of a resolved future.
function Future:result()
  if not self._done then error("future is still pending", 2) end
  if self._r then return unpack(self._r, 1, self._rn) end
end


--- Call fn(f) once f is resolved (at once if it is).
function Future:on_done(fn)
  if self._done then fn(self) return end
  local w = self._waiters
  if w == nil then
    self._waiters = { fn }
  elseif getmetatable(w) == Task then
    self._waiters = { w, fn }
  else
    w[#w + 1] = fn
  end
end


local function add_waiter(f, task)
  local w = f._waiters
  if w == nil then
    f._waiters = task
  elseif getmetatable(w) == Task then
    f._waiters = { w, task }
  else
    w[#w + 1] = task
  end
end


local function remove_waiter(f, x)
  local w = f._waiters
  if w == x then
    f._waiters = nil
    return true
  end
  if type(w) == "table" and getmetatable(w) ~= Task then
    for i = 1, #w do
      if w[i] == x then
        table.remove(w, i)
        if #w == 0 then f._waiters = nil end
        return true
      end
    end
  end
  return false
end


--- Cancel a pending future: stop what is behind it and resolve it with
-- nil, "cancelled". Returns true if it was pending.
function Future:cancel()
  if self._done then return false end
  local stop = self._cancel
  self._cancel = nil
  self._cancelled = true
  if stop then
    local ok, err = pcall(stop, self)
    if not ok then safe_log("cancel: " .. tostring(err)) end
  end
  self._cancelled = nil
  if not self._done then self:resolve(nil, "cancelled") end
  self._cancelled = true
  return true
end


-- ---------------------------------------------------------------------------
-- Tasks

Task.__index = Task
Task.__name = "luaserve.Task"
M.Task = Task


function Task.__tostring(t)
  return "luaserve.Task (" .. (t._finished and "done" or "running") .. ")"
end


local runners = {}          -- idle runner coroutines, reused
local nrunners = 0
local MAX_IDLE_RUNNERS = 256


-- A runner runs tasks, one after another, for as long as none of them is
-- cancelled while suspended (that one is dropped with its coroutine). The
-- task's function is called right here: every frame less is stack a
-- suspended task does not keep.
local finish   -- forward


local function runner_body(task)
  while true do
    local args, a1 = task._args, task._a1
    if args then
      finish(task, xpcall(task._fn, M.on_error, unpack(args, 1, args.n)))
    elseif a1 ~= nil then
      finish(task, xpcall(task._fn, M.on_error, a1))
    else
      finish(task, xpcall(task._fn, M.on_error))
    end
    task = co_yield(IDLE)
  end
end


local function on_error(err)
  if type(err) == "table" then return err end   -- HTTPError and friends
  -- Level 1: under LuaJIT the handler's own frame is not counted, so level
  -- 1 is the function that failed (or `error`); 2 would drop that line.
  return traceback(tostring(err), 1)
end
M.on_error = on_error


-- Resume task's coroutine with the values; what comes back decides where
-- the coroutine goes.
-- The coroutine is taken before the resume: a task may cancel itself
-- while it runs (which drops task._co), and its runner must still go back
-- to the idle list when it finishes.
function step(task, ...)
  local prev = current
  local co = task._co
  current = task
  last_stepped = task
  if step_hook then step_hook(task) end
  local ok, tag = co_resume(co, ...)
  current = prev
  if not ok then
    safe_log("task runner failed: " .. traceback(co, tostring(tag)))
  elseif tag == IDLE then
    if nrunners < MAX_IDLE_RUNNERS then
      nrunners = nrunners + 1
      runners[nrunners] = co
    end
    task._co = nil
  elseif tag ~= AWAIT then
    safe_log("a task yielded outside await (" .. tostring(tag) ..
      "): use luaserve.await, or wrap the coroutine with coroutine.wrap")
  end
end


--- Start a task running fn(...) now; it runs until its first wait.
-- `opts.parent` ties it to a request (cancelled with it); `opts.detached`
-- keeps it running after its request ends; opts == false: no parent.
-- The task's future is made only when asked for (await(task)): a request's
-- task, which nobody awaits, costs no future.
local function start(fn, opts, ...)
  local n = select("#", ...)
  -- Every field a task gets is named here, so the table is made once at
  -- its full size instead of growing (rehashing) per field.
  local task = setmetatable({ _fn = fn, _a1 = (...), _co = false,
    _waiting = false, _finished = false }, Task)
  if n > 1 then task._a1 = nil task._args = { n = n, ... } end
  local parent = opts ~= false and current or nil
  if parent and not (opts and opts.detached) then
    local root = parent._root or parent
    task._root = root
    local kids = root._children
    if kids == nil then kids = {} root._children = kids end
    kids[task] = true
  end
  local co
  if nrunners > 0 then
    co = runners[nrunners]
    runners[nrunners] = nil
    nrunners = nrunners - 1
  else
    co = co_create(runner_body)
  end
  task._co = co
  step(task, task)
  return task
end
M.start = start


-- The task's function returned (ok) or raised: record the outcome, detach
-- from the request, cancel what it spawned, wake whoever awaits it.
function finish(task, ok, ...)
  task._finished = true
  local root = task._root
  if root and root._children then root._children[task] = nil end
  task:_cancel_children()
  local fut = task._fut
  if ok then
    local n = select("#", ...)
    if fut then
      if not fut._done then fut:resolve(...) end
    elseif n > 0 then
      task._r, task._rn = { ... }, n
    end
    return
  end
  local err = ...
  if type(err) ~= "table" then
    safe_log("task failed: " .. tostring(err))
    err = tostring(err):match("^[^\n]*")
  end
  if fut then
    if not fut._done then fut:resolve(nil, err) end
  else
    task._r, task._rn = { nil, err }, 2
  end
end


function Task:_cancel_children()
  local kids = self._children
  if kids == nil then return end
  self._children = nil
  for t in pairs(kids) do t:cancel() end
end


--- Cancel the task: it is never resumed again; what it waited on is
-- cancelled too (if nothing else waits on it); its children are cancelled;
-- its cleanups run; its future resolves with nil, "cancelled".
function Task:cancel()
  if self._cancelled or self._finished then return false end
  self._cancelled = true
  self._finished = true
  local f = self._waiting
  self._waiting = nil
  if f and remove_waiter(f, self) and f._waiters == nil then f:cancel() end
  self._co = nil
  self:_cancel_children()
  local cleanups = self._cleanups
  self._cleanups = nil
  if cleanups then
    for i = #cleanups, 1, -1 do
      local ok, err = pcall(cleanups[i])
      if not ok then safe_log("cleanup: " .. tostring(err)) end
    end
  end
  local root = self._root
  if root and root._children then root._children[self] = nil end
  local fut = self._fut
  if fut and not fut._done then
    fut._cancel = nil
    fut:resolve(nil, "cancelled")
    fut._cancelled = true
  elseif not fut then
    self._r, self._rn = { nil, "cancelled" }, 2
  end
  return true
end


--- Keep this task running after its request ends.
function Task:detach()
  local root = self._root
  if root and root._children then root._children[self] = nil end
  self._root = nil
  return self
end


--- The task's future: resolves with what the task's function returns, or
-- nil, err when it raises or is cancelled. await(task) awaits it.
function Task:future()
  local fut = self._fut
  if fut then return fut end
  if self._finished then
    local r = self._r
    fut = r and M.resolved(unpack(r, 1, self._rn)) or M.resolved()
  else
    fut = new_future(function() self:cancel() end)
    fut._task = self
  end
  self._fut = fut
  return fut
end


function Task:done()
  return self._finished == true
end


--- Run fn when the running task is cancelled (until `remove` is called).
-- Returns remove, or nil outside a task.
function M.on_cancel(fn)
  local task = current
  if task == nil then return nil end
  local root = task
  local list = root._cleanups
  if list == nil then list = {} root._cleanups = list end
  list[#list + 1] = fn
  return function()
    for i = #list, 1, -1 do
      if list[i] == fn then table.remove(list, i) return end
    end
  end
end


function M.current()
  return current
end


--- deadline(): the loop time (core.now()) by which the running request
-- must be answered, or nil: calls that wait (the HTTP client) take no
-- longer than what is left of it.
function M.deadline()
  local task = current
  if task == nil then return nil end
  local root = task._root or task
  return root._deadline
end


--- set_step_hook(fn): fn(task) before each task is resumed (a worker
-- publishes what runs, for its master's heartbeat check); nil: none.
function M.set_step_hook(fn)
  step_hook = fn
end


--- The task resumed last: after an entry from the loop that blocked it,
-- the likely culprit (see server.watch_blocking).
function M.last_task()
  return last_stepped
end


-- ---------------------------------------------------------------------------
-- await

local pool_state = core.is_pool_state()
local blocking_ok = false   -- set by the test helpers and pool states


--- Allow await outside a task, by running the loop until the future is
-- done (pool threads; scripts and specs at top level; startup and
-- shutdown hooks). Returns the setting before.
function M.allow_blocking(on)
  local was = blocking_ok
  blocking_ok = on
  return was
end


local function run_until(f)
  while not f._done do
    drain()
    if f._done then break end
    if not core.run_once() and not f._done then
      drain()
      if not f._done then
        error("await: the loop has nothing left to do and the future is " ..
          "still pending (a deadlock)", 3)
      end
    end
  end
  drain()
end


--- await(f): f's values once it is resolved. A task yields meanwhile;
-- outside a task (pool threads, top-level scripts) the loop runs until then.
local function await(f)
  if getmetatable(f) ~= Future then
    if getmetatable(f) == Task then
      f = f:future()
    else
      error("await: expected a future, got " .. type(f), 2)
    end
  end
  if not f._done then
    local task = current
    if task == nil or co_running() == nil then
      if not (pool_state or blocking_ok) then
        error("await: called outside a request or task", 2)
      end
      run_until(f)
    else
      add_waiter(f, task)
      task._waiting = f
      return co_yield(AWAIT)
    end
  end
  local r = f._r
  if r then return unpack(r, 1, f._rn) end
end
M.await = await


-- ---------------------------------------------------------------------------
-- The toolkit

local function stop_timer(f)
  local t = f._timer
  if t then f._timer = nil t:stop() end
end


local timer = core.timer


--- sleep(seconds): a future resolved after that long (millisecond
-- resolution), with no values.
function M.sleep(seconds)
  if type(seconds) ~= "number" or seconds ~= seconds then
    error("sleep: seconds must be a number", 2)
  end
  local f = setmetatable({ _cancel = stop_timer }, Future)
  f._timer = timer(seconds * 1000, f)
  return f
end


--- spawn(fn, ...): run fn(...) as a task; returns the task (await it for
-- its results). Inside a request the task is cancelled when the request
-- ends, unless detached (spawn_detached, or task:detach()).
function M.spawn(fn, ...)
  if type(fn) ~= "function" then error("spawn: expected a function", 2) end
  return start(fn, nil, ...)
end


function M.spawn_detached(fn, ...)
  if type(fn) ~= "function" then error("spawn_detached: expected a function", 2) end
  return start(fn, { detached = true }, ...)
end


local function as_future(v, fname, i)
  local mt = getmetatable(v)
  if mt == Future then return v end
  if mt == Task then return v:future() end
  error(fname .. ": argument " .. i .. " is not a future (" .. type(v) .. ")", 3)
end


--- gather(f1, f2, ...): a future of the first value of each, in order.
-- The first failure (nil, err) resolves it with nil, err and cancels the
-- futures still pending.
function M.gather(...)
  local n = select("#", ...)
  local fs = { ... }
  for i = 1, n do fs[i] = as_future(fs[i], "gather", i) end
  local out = M.new(function()
    for i = 1, n do fs[i]:cancel() end
  end)
  if n == 0 then out:resolve() return out end
  local results, left = {}, n
  for i = 1, n do
    fs[i]:on_done(function(f)
      if out._done then return end
      local r = f._r
      local v = r and r[1]
      if v == nil and r and r[2] ~= nil then
        out._cancel = nil
        out:resolve(nil, r[2])
        for j = 1, n do fs[j]:cancel() end
        return
      end
      results[i] = v
      left = left - 1
      if left == 0 then out:resolve(unpack(results, 1, n)) end
    end)
  end
  return out
end


--- wait_for(f, seconds): f's values, or nil, "timeout" after that long
-- (f is then cancelled).
function M.wait_for(f, seconds)
  f = as_future(f, "wait_for", 1)
  if type(seconds) ~= "number" then error("wait_for: seconds must be a number", 2) end
  if f._done then return f end
  local t
  local out = M.new(function()
    if t then t:cancel() end
    f:cancel()
  end)
  t = M.sleep(seconds)
  t:on_done(function()
    if out._done then return end
    out._cancel = nil
    out:resolve(nil, "timeout")   -- first: cancelling f resolves f
    f:cancel()
  end)
  f:on_done(function(g)
    if out._done then return end
    out._cancel = nil
    if g._r then out:resolve(unpack(g._r, 1, g._rn)) else out:resolve() end
    t:cancel()   -- after: cancelling t resolves t, which must not time out
  end)
  return out
end


-- ---------------------------------------------------------------------------
-- Semaphore

local Semaphore = {}
Semaphore.__index = Semaphore
Semaphore.__name = "luaserve.Semaphore"


function Semaphore.__tostring(s)
  return ("luaserve.Semaphore (%d free, %d waiting)"):format(s.free, #s._queue)
end


--- Semaphore(n): at most n holders at once.
function M.Semaphore(n)
  if type(n) ~= "number" or n < 1 then
    error("Semaphore: n must be a number >= 1", 2)
  end
  return setmetatable({ free = n, size = n, _queue = {} }, Semaphore)
end


--- sem:acquire(): a future resolved (with true) once a permit is held.
-- A task cancelled while it waits leaves the queue; one cancelled while it
-- holds a permit gives it back.
function Semaphore:acquire()
  local f = M.new()
  local task = current
  if task then
    local holds = task._holds
    if holds == nil then holds = {} task._holds = holds end
    local list = holds[self]
    if list == nil then list = {} holds[self] = list end
    list[#list + 1] = M.on_cancel(function()
      -- Held (granted, not cancelled): give it back. Waiting: leave the queue.
      if f._done and not f._cancelled then self:release(true) else f:cancel() end
    end)
  end
  if self.free > 0 then
    self.free = self.free - 1
    f:resolve(true)
  else
    local q = self._queue
    q[#q + 1] = f
    f._cancel = function()
      for i = 1, #q do if q[i] == f then table.remove(q, i) break end end
    end
  end
  return f
end


--- sem:release(): give a permit back (to the longest waiter first).
function Semaphore:release(from_cancel)
  local task = current
  local list = not from_cancel and task and task._holds and task._holds[self]
  if list and #list > 0 then table.remove(list)() end
  local q = self._queue
  while #q > 0 do
    local f = table.remove(q, 1)
    if not f._done then
      f._cancel = nil
      f:resolve(true)
      return
    end
  end
  if self.free >= self.size then error("Semaphore: released more than acquired", 2) end
  self.free = self.free + 1
end


--- sem:run(fn, ...): acquire, fn(...), release (also when fn raises).
function Semaphore:run(fn, ...)
  await(self:acquire())
  local r = { pcall(fn, ...) }
  self:release()
  if not r[1] then error(r[2], 0) end
  return unpack(r, 2, table.maxn(r))
end


-- ---------------------------------------------------------------------------
-- Yields through user coroutines (lua-http's yieldable_pcall idea): a user
-- coroutine that awaits passes the framework's yield up to the task and the
-- task's resume back down.

local function pass_through(co, ok, ...)
  if ok and (...) == AWAIT and co_status(co) == "suspended" then
    return pass_through(co, co_resume(co, co_yield(AWAIT)))
  end
  return ok, ...
end


function M.coroutine_resume(co, ...)
  return pass_through(co, co_resume(co, ...))
end


local function wrap_result(ok, ...)
  if not ok then error((...), 0) end
  return ...
end


function M.coroutine_wrap(fn)
  local co = co_create(fn)
  return function(...)
    return wrap_result(pass_through(co, co_resume(co, ...)))
  end
end


-- The entry point of every result from C: resolve target with the values
-- (a future), then run what became ready.
local function resolve_from_c(target, ...)
  if not target._done then target:resolve(...) end
  drain()
end
M.resolve_from_c = resolve_from_c
core.init(resolve_from_c)


--- Set the error logger (the server's, with its format).
function M.set_logger(fn)
  log_error = fn
end


return M
