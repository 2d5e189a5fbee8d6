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
-- (where a request keeps its task and route: tasks serve requests)
local slots = require "luaserve.request_slots"
local REQ_TASK, REQ_ROUTE = slots.TASK, slots.ROUTE

local co_create = coroutine.create
local co_resume = coroutine.resume
local co_yield = coroutine.yield
local co_status = coroutine.status
local co_running = coroutine.running
local select = select
local setmetatable = setmetatable
local traceback = debug.traceback
local unpack = unpack
local error = error
local type = type
local tostring = tostring
local pcall = pcall
local byte = string.byte

local M = {}

-- Until the server sets its loggers (set_logger): the core's log.
local function log_error(msg)
  core.log(4, tostring(msg))
end

local function warn_log(msg)
  core.log(3, tostring(msg))
end


-- Log through the logger without ever raising: a broken log hook must not
-- stop the scheduler (the line then goes to stderr).
local function safe_log(msg)
  if not pcall(log_error, msg) then core.log(4, tostring(msg)) end
end

-- What a framework yield carries, so user coroutines can pass it through.
local AWAIT = setmetatable({}, { __tostring = function() return "await" end })
-- What an idle runner coroutine yields: it can take the next task.
local IDLE = setmetatable({}, { __tostring = function() return "idle" end })


-- ---------------------------------------------------------------------------
-- Futures

local Future = {}
local Task = {}   -- defined below; futures wake tasks

-- A task's own fields, in its table's array part: a task is 136 bytes
-- instead of 256 (seven keys took an 8-slot hash part). The
-- function, its one argument (a request's task: the request), its runner
-- coroutine (false before it starts), the future it waits on (false: none
-- yet; nil once woken), whether it finished, its failure handler (a
-- request's task: falsy for any other), and whether the futures its code
-- makes are followed (0 until its first one: see note_created). Fields
-- that few tasks get (_root, _children, _fut, _cleanups...) are named keys.
local FN, A1, CO, WAITING, FINISHED, ON_FAIL, CHK = 1, 2, 3, 4, 5, 6, 7
Future.__index = Future
Future.__name = "luaserve.Future"
M.Future = Future
-- What a future reads before it is set: found here, not through the
-- __index function below (a Lua call per read), and not stored in each
-- future (a sleep's table keeps its 4 fields: no resize when it fires).
Future._r = false    -- the values, once resolved with any
Future._rn = 0       -- how many (-1: await raises _r[1])
Future._cancelled = false

-- A future used as if it were its result (`http.get(u).status`: a missing
-- await) fails at that line instead of reading nil. Fields that start
-- with "_" are the framework's own, absent until set.
setmetatable(Future, { __index = function(_, k)
  if type(k) == "string" and byte(k, 1) == 95 then return nil end
  error(("attempt to read '%s' of a future: did you forget await?")
    :format(tostring(k)), 2)
end })


function Future.__tostring(f)
  return (f._done and "luaserve.Future (done)" or "luaserve.Future (pending)")
end


-- _waiters: false while nobody has looked at the future (awaited it, or
-- asked to be told: on_done, gather, wait_for); then the task or the list
-- waiting on it; true once it was looked at and nobody waits any more.
-- A future created by a request's code that is still unlooked-at when
-- its request ends was never awaited: see note_created below.

local note_created   -- forward: remembers where a future was made
local sweep_created  -- forward
local nmade = 0      -- futures noted in the running step
local current = nil  -- the task running now, or nil


--- A new pending future. `cancel(f)`, when given, stops the operation
-- behind it when the future is cancelled.
function M.new(cancel)
  local f = setmetatable({ _cancel = cancel, _done = false, _waiters = false },
    Future)
  if current then note_created(f) end
  return f
end


--- A new pending future the framework keeps to itself (never reported as
-- unawaited, and cheaper: no call site is looked up).
function M.new_internal(cancel)
  local f = setmetatable({ _cancel = cancel, _done = false, _waiters = true },
    Future)
  return f   -- not a tail call: see request.new
end
local new_future = M.new_internal


--- quiet(f): f may be dropped without being awaited (a WebSocket send in a
-- broadcast): it is not reported. Returns f.
function M.quiet(f)
  if f._waiters == false then f._waiters = true end
  return f
end


--- A future that is already resolved with the given values.
function M.resolved(...)
  local n = select("#", ...)
  return setmetatable({ _done = true, _rn = n, _r = n > 0 and { ... } or nil,
    _waiters = true }, Future)
end


function M.is_future(v)
  return type(v) == "table" and getmetatable(v) == Future
end


local ready = {}           -- tasks to resume, with the future they waited on
local ready_head, ready_tail = 1, 0
local draining = false
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
-- Resolved: record the values (r, n; n = -1: await raises r[1]) and wake
-- the waiters.
local function settle(self, r, n)
  self._done = true
  if n ~= 0 then self._rn = n end
  if r then self._r = r end
  self._cancel = nil
  local w = self._waiters
  if not w or w == true then return end
  self._waiters = true
  if getmetatable(w) == Task then
    w[WAITING] = nil
    schedule(w, self)
  else
    for i = 1, #w do
      local x = w[i]
      if type(x) == "table" then
        x[WAITING] = nil
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


function Future:resolve(...)
  if self._done then
    if self._cancelled then return end
    error("future resolved twice", 2)
  end
  local n = select("#", ...)
  settle(self, n > 0 and { ... } or nil, n)
end


--- Resolve f so that await(f) raises err (where await is called) instead
-- of returning values: gather's failure, which values could not carry.
function Future:reject(err)
  if self._done then
    if self._cancelled then return end
    error("future resolved twice", 2)
  end
  settle(self, { err }, -1)
end


--- Resolve with nil, err.
function Future:fail(err)
  return self:resolve(nil, err)
end


function Future:done()
  return self._done == true
end


-- The values of a resolved future, as await gives them: a future that
-- fails by raising (gather's) raises its error at the caller's level.
local function values_of(f, level)
  local r = f._r
  if r then
    local n = f._rn
    if n < 0 then error(r[1], level + 1) end
    return unpack(r, 1, n)
  end
end


--- The values of a resolved future.
function Future:result()
  if not self._done then error("future is still pending", 2) end
  self._waiters = true
  return values_of(self, 2)
end


-- Add a waiter to a pending future: a task (alone, it is the field's
-- value), or a callback (always in a list).
local function add_waiter(f, x)
  local w = f._waiters
  if not w or w == true then
    f._waiters = type(x) == "function" and { x } or x
  elseif getmetatable(w) == Task then
    f._waiters = { w, x }
  else
    w[#w + 1] = x
  end
end


--- Call fn(f) once f is resolved (at once if it is).
function Future:on_done(fn)
  if self._done then
    self._waiters = true
    fn(self)
    return
  end
  add_waiter(self, fn)
end


local function remove_waiter(f, x)
  local w = f._waiters
  if w == x then
    f._waiters = true
    return true
  end
  if type(w) == "table" and getmetatable(w) ~= Task then
    for i = 1, #w do
      if w[i] == x then
        table.remove(w, i)
        if #w == 0 then f._waiters = true end
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
  return "luaserve.Task (" .. (t[FINISHED] and "done" or "running") .. ")"
end


-- Idle runner coroutines, reused. Enough are kept for a server's waves:
-- at 10,000 connections waiting 100 ms each, sleeps end in batches of
-- hundreds, and with 256 kept four requests in five made a coroutine
-- (and grew its stack) while the last wave's went to the collector; with
-- 4,096 one in forty does. An idle one is about 0.5 to 0.9 KB.
local runners = {}
local nrunners = 0
local MAX_IDLE_RUNNERS = 4096


-- A runner runs tasks, one after another, for as long as none of them is
-- cancelled while suspended or raises (that one is dropped with its
-- coroutine). The task's function is called right here, and unprotected:
-- every frame less is stack a suspended task does not keep, and a
-- protected call's frame would stop the compiled code of a request that
-- has waited, or called a C function such as json.encode, from running on
-- to its answer (a trace cannot return into a pcall entered before it).
-- An error ends the coroutine instead; step() hands it to task_failed.
-- The call of the task's function is made with as few slots below it as
-- can be (no locals, finish's fixed arguments in a wrapper): the stack
-- of a request's coroutine starts at 40 usable slots and doubles for
-- good when a frame or a C call does not fit (see server.lua's
-- run_pipeline).
local finish   -- forward
local function finished(task, ...) return finish(task, true, ...) end


local function runner_body(task)
  while true do
    if task._args then
      finished(task, task[FN](unpack(task._args, 1, task._args.n)))
    elseif task[A1] ~= nil then
      finished(task, task[FN](task[A1]))
    else
      finished(task, task[FN]())
    end
    task = co_yield(IDLE)
  end
end


-- An idle runner, or a new one.
local function take_runner()
  if nrunners == 0 then return co_create(runner_body) end
  local co = runners[nrunners]
  runners[nrunners] = nil
  nrunners = nrunners - 1
  return co
end


local function on_error(err)
  if type(err) == "table" then return err end   -- HTTPError and friends
  -- Level 1: under LuaJIT the handler's own frame is not counted, so level
  -- 1 is the function that failed (or `error`); 2 would drop that line.
  return traceback(tostring(err), 1)
end
M.on_error = on_error


-- ---------------------------------------------------------------------------
-- Futures that are never awaited
--
-- `sleep(1)` without await does not wait; `http.post(u, b)` without await
-- is never checked. A future made by a task's code (outside the framework)
-- is noted with its call site; at the end of the task's step it is kept
-- on its request's root task if nobody has looked at it yet, and when the
-- request ends one still unlooked-at is reported once per call site.
-- Cost: a debug.getinfo per future made by user code, a few table writes.
-- A route's first CHECK_ALL requests are checked in full, then one in
-- CHECK_EVERY (a sleep's call-site lookup is about a tenth of its
-- request's CPU): a forgotten await on a route's usual path shows at its
-- first request, one on a rare branch after a few more. Tasks outside a
-- route (background work) are always checked; check_unawaited("all")
-- checks every request.

local getinfo = debug.getinfo
local sub = string.sub
local made, made_root, made_src, made_line = {}, {}, {}, {}
local reported, nreported = {}, 0
local MAX_LOOSE = 64        -- per request: the rest are not followed
local MAX_REPORTED = 1000   -- call sites remembered (then no new reports)
local check_unawaited = true   -- true (sampled), "all" or false
local CHECK_ALL, CHECK_EVERY = 64, 16
-- The framework's own Lua files (lua/luaserve/*): a future's call site
-- is the first frame outside them.
local FRAMEWORK = getinfo(1, "S").source:match("^(@.*)luaserve/future%.lua$")
local NFRAMEWORK = FRAMEWORK and #FRAMEWORK or 0


--- check_unawaited(on): report futures never awaited: true (the default:
-- every request of a route at first, then a sample), "all" (every
-- request) or false. Returns the setting before.
function M.check_unawaited(on)
  local was = check_unawaited
  check_unawaited = on == "all" and "all" or (on and true or false)
  return was
end


-- Whether a root task's futures are followed (decided once per task):
-- a request's by its route's count, anything else always.
local function sampled(root)
  if check_unawaited == "all" then return true end
  -- (a request's task has a failure handler; its A1 is the request)
  local req = root[ON_FAIL] and root[A1]
  local route = type(req) == "table" and rawget(req, REQ_ROUTE)
  if not route then return true end
  local n = (rawget(route, "_nchecked") or 0) + 1
  route._nchecked = n
  return n <= CHECK_ALL or n % CHECK_EVERY == 0
end


-- function -> its file (short_src), or false for C and the framework's
-- own functions; weak: closures made per request come and go.
local file_of = setmetatable({}, { __mode = "k" })

local function user_file(fn)
  local file = file_of[fn]
  if file == nil then
    local info = getinfo(fn, "S")
    file = info.what ~= "C" and (FRAMEWORK == nil or
      sub(info.source, 1, NFRAMEWORK) ~= FRAMEWORK) and info.short_src
    file_of[fn] = file
  end
  return file
end


function note_created(f)
  if not check_unawaited then return end
  local task = current
  local root = task._root or task
  local chk = root[CHK]
  if chk == 0 then
    chk = sampled(root)
    root[CHK] = chk
  end
  if not chk then return end
  -- Level 3: the caller of new() or sleep(); up past framework frames.
  -- (user_file's cache is read here: its frame, and the getinfo it
  -- makes, would sit 11 slots deeper on the task's stack; see runner_body)
  for level = 3, 12 do
    local info = getinfo(level, "fl")
    if info == nil then return end
    local file = file_of[info.func]
    if file == nil then file = user_file(info.func) end
    if file then
      nmade = nmade + 1
      made[nmade] = f
      made_root[nmade] = root
      made_src[nmade] = file
      made_line[nmade] = info.currentline
      return
    end
  end
end


-- After a step: the futures it made that nobody has looked at go to
-- their request's list (until the request ends or they are looked at).
function sweep_created()
  for i = 1, nmade do
    local f = made[i]
    if f._waiters == false then
      local root = made_root[i]
      local loose = root._loose
      if loose == nil then loose = { n = 0 } root._loose = loose end
      local n = loose.n
      if n < 3 * MAX_LOOSE then
        loose[n + 1], loose[n + 2], loose[n + 3] = f, made_src[i], made_line[i]
        loose.n = n + 3
      end
    end
    made[i], made_root[i], made_src[i] = nil, nil, nil
  end
  nmade = 0
end


-- What a root task was doing, for the report: its request, if any.
local function describe(task)
  local req = task[A1]
  if type(req) == "table" and rawget(req, "method") and rawget(req, "path") then
    return ("request %s %s, route %s"):format(req.method, req.path,
      tostring(rawget(req, "route") or "-"))
  end
  return "a task"
end


-- The root task ended: report its futures never looked at.
local function report_loose(task)
  local loose = task._loose
  task._loose = nil
  for i = 1, loose.n, 3 do
    local f, site = loose[i], loose[i + 1] .. ":" .. tostring(loose[i + 2])
    if f._waiters == false and not reported[site] and nreported < MAX_REPORTED then
      reported[site] = true
      nreported = nreported + 1
      warn_log(("a future created at %s was never awaited (%s; it %s): did " ..
        "you forget await? (reported once per call site)"):format(site,
        describe(task), f._done and "finished with nobody reading its result"
          or "was still pending when its task ended"))
    end
  end
end


-- The traceback of a coroutine an error ended. LuaJIT has lost the line
-- of the frame that raised (it keeps the return points of the frames below
-- only): a runtime error's message names it ("app.lua:12: attempt to
-- index..."), so the frame gets it back from there.
local function dead_traceback(co, msg)
  local tb = traceback(co, msg, 0)
  local file, line = string.match(msg, "^([^\n]-):(%d+): ")
  if not file then return tb end
  local at = string.find(tb, "\n\t" .. file .. ": in ", 1, true)
  if not at then return tb end
  return string.sub(tb, 1, at + 1 + #file) .. ":" .. line ..
    string.sub(tb, at + 2 + #file)
end


-- The task's function raised: its coroutine is dead, and its stack still
-- tells where (an error that is a table, such as an HTTPError, stays as
-- it is). A task with a failure handler (a request's, which answers the
-- error) goes on running it, fn(arg, err), in a fresh runner, once; any
-- other task ends with the error.
local function task_failed(task, co, err)
  if type(err) ~= "table" then err = dead_traceback(co, tostring(err)) end
  if task[CO] == co then task[CO] = nil end
  if task[FINISHED] then   -- cancelled meanwhile, or failed in finish()
    if not task._cancelled then safe_log("task runner failed: " .. tostring(err)) end
    return
  end
  local on_fail = task[ON_FAIL]
  if not on_fail then
    finish(task, false, err)
    return
  end
  task[ON_FAIL] = false
  task._args = { n = 2, task[A1], err }
  task[A1] = nil
  task[FN] = on_fail
  task[CO] = take_runner()
  step(task, task)
end


-- Resume task's coroutine with the values; what comes back decides where
-- the coroutine goes.
-- The coroutine is taken before the resume: a task may cancel itself
-- while it runs (which drops task[CO]), and its runner must still go back
-- to the idle list when it finishes.
function step(task, ...)
  local prev = current
  local co = task[CO]
  current = task
  last_stepped = task
  if step_hook then step_hook(task) end
  local ok, tag = co_resume(co, ...)
  current = prev
  if nmade > 0 then sweep_created() end
  if not ok then
    task_failed(task, co, tag)
  elseif tag == IDLE then
    if nrunners < MAX_IDLE_RUNNERS then
      nrunners = nrunners + 1
      runners[nrunners] = co
    end
    task[CO] = nil
  elseif tag ~= AWAIT then
    -- A yield that got past the guard on coroutine.yield (a library that
    -- kept the original): nothing will resume this task.
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
  -- Every field a task always has is set here, so the table is made once
  -- at its full size instead of growing per field.
  local task = setmetatable({ fn, (...), false, false, false, false, 0 }, Task)
  if n > 1 then task[A1] = nil task._args = { n = n, ... } end
  local parent = opts ~= false and current or nil
  if parent and not (opts and opts.detached) then
    local root = parent._root or parent
    task._root = root
    local kids = root._children
    if kids == nil then kids = {} root._children = kids end
    kids[task] = true
  end
  task[CO] = take_runner()
  step(task, task)
  return task
end
M.start = start


-- A request's task that ended in its first step (it never waited), with
-- nothing left on it that outlives it: the next request's task. Nobody
-- can hold it: it was never a future's waiter or the parent of a live
-- task (its children are cancelled when it finishes), nobody asked for
-- its future, its request's task slot is cleared; only M.current() handed it
-- out (to the framework, which does not keep it). A plain answer then
-- makes one table per request instead of two.
local spare_task = nil


-- Can a finished request task be reused? Only if all it got beyond its
-- first fields is gone.
local function reusable(task)
  return task[FINISHED] == true and task[WAITING] == false and
    rawget(task, "_cancelled") == nil and rawget(task, "_args") == nil and
    rawget(task, "_fut") == nil and rawget(task, "_r") == nil and
    rawget(task, "_cleanups") == nil and rawget(task, "_holds") == nil and
    rawget(task, "_loose") == nil and rawget(task, "_deadline") == nil and
    rawget(task, "_root") == nil
end


--- start_request(fn, on_fail, req): a task with no parent running fn(req)
-- now; if fn raises, on_fail(req, err) runs in its place (in the same
-- task: cancelling the task cancels it too).
function M.start_request(fn, on_fail, req)
  local task = spare_task
  if task then
    spare_task = nil
    task[FN], task[A1], task[FINISHED], task[ON_FAIL] = fn, req, false, on_fail
    task[CHK] = 0
  else
    task = setmetatable({ fn, req, false, false, false, on_fail, 0 }, Task)
  end
  task[CO] = take_runner()
  step(task, task)
  if reusable(task) then
    if rawget(req, REQ_TASK) == task then req[REQ_TASK] = false end
    spare_task = task
  end
end


-- The task's function returned (ok) or raised: record the outcome, detach
-- from the request, cancel what it spawned, wake whoever awaits it.
function finish(task, ok, ...)
  task[FINISHED] = true
  local root = task._root
  if root == nil then
    if nmade > 0 then sweep_created() end
    if task._loose then report_loose(task) end
  end
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
  if self._cancelled or self[FINISHED] then return false end
  self._cancelled = true
  self[FINISHED] = true
  local f = self[WAITING]
  self[WAITING] = nil
  if f and remove_waiter(f, self) and f._waiters == true then f:cancel() end
  self[CO] = nil
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
  if root == nil then
    if nmade > 0 then sweep_created() end
    if self._loose then report_loose(self) end
  end
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
  if self[FINISHED] then
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
  return self[FINISHED] == true
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


--- request_of(task): the request a task serves (its root is a request's
-- task, started by start_request), or nil.
function M.request_of(task)
  local root = task and (task._root or task)
  if root and root[ON_FAIL] then return root[A1] end
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


-- What a task's await returns once it is resumed: f's values (passed to
-- the resume), or f's error raised at the await (gather's failure).
local function after_wait(f, ...)
  if f._rn < 0 then error(f._r[1], 3) end
  return ...
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
      task[WAITING] = f
      return after_wait(f, co_yield(AWAIT))
    end
  end
  f._waiters = true
  local r = f._r
  if r then
    local n = f._rn
    if n < 0 then error(r[1], 2) end
    return unpack(r, 1, n)
  end
end
M.await = await


-- ---------------------------------------------------------------------------
-- The toolkit

-- The sleeping futures: a binary min-heap of (deadline, sequence) in
-- parallel arrays. One core timer is armed for the earliest deadline
-- (core.sleep_arm): a sleep costs a table and a few array writes, no
-- handle or allocation in C. Equal deadlines fire in the order the sleeps
-- started. f._timer is true while f is in the heap. A cancelled sleep
-- stays in it, dead (f._timer false), until it comes to the top or dead
-- ones are half the heap (then the live ones are heaped again): moving an
-- entry then writes only the heap's arrays, not the futures' tables
-- (with 10,000 sleeping, each wake-up would otherwise write the index into
-- a dozen futures scattered in memory).

local heap_at, heap_seq, heap_f = {}, {}, {}
local nheap, ndead, seq = 0, 0, 0
local armed_at = nil       -- what the core's timer is armed for, or nil
local now_ms = require("luaserve.ffi").now_ms   -- compiled in line
local sleep_arm = core.sleep_arm
local floor = math.floor
local COMPACT_MIN = 64     -- dead entries below this are left to expire


local function sift_up(i, at, sq, f)
  while i > 1 do
    local p = floor(i / 2)
    local pat = heap_at[p]
    if pat < at or (pat == at and heap_seq[p] < sq) then break end
    heap_at[i], heap_seq[i], heap_f[i] = pat, heap_seq[p], heap_f[p]
    i = p
  end
  heap_at[i], heap_seq[i], heap_f[i] = at, sq, f
end


local function sift_down(i, at, sq, f)
  local n = nheap
  while true do
    local c = 2 * i
    if c > n then break end
    local cat, csq = heap_at[c], heap_seq[c]
    if c < n then
      local rat, rsq = heap_at[c + 1], heap_seq[c + 1]
      if rat < cat or (rat == cat and rsq < csq) then c, cat, csq = c + 1, rat, rsq end
    end
    if at < cat or (at == cat and sq < csq) then break end
    heap_at[i], heap_seq[i], heap_f[i] = cat, csq, heap_f[c]
    i = c
  end
  heap_at[i], heap_seq[i], heap_f[i] = at, sq, f
end


-- Take the top entry out of the heap; returns its future.
local function heap_pop()
  local n = nheap
  local top = heap_f[1]
  local at, sq, f = heap_at[n], heap_seq[n], heap_f[n]
  heap_at[n], heap_seq[n], heap_f[n] = nil, nil, nil
  nheap = n - 1
  if n > 1 then sift_down(1, at, sq, f) end
  return top
end


-- Keep the live entries only, and make them a heap again.
local function heap_compact()
  local n = 0
  for i = 1, nheap do
    local f = heap_f[i]
    if f._timer then
      n = n + 1
      heap_at[n], heap_seq[n], heap_f[n] = heap_at[i], heap_seq[i], f
    end
  end
  for i = n + 1, nheap do heap_at[i], heap_seq[i], heap_f[i] = nil, nil, nil end
  nheap, ndead = n, 0
  for i = floor(n / 2), 1, -1 do
    sift_down(i, heap_at[i], heap_seq[i], heap_f[i])
  end
end


-- A sleep cancelled: dead in the heap (the core's timer stays armed
-- unless nothing sleeps any more; firing early just arms it again).
local function stop_timer(f)
  if not f._timer then return end
  f._timer = false
  ndead = ndead + 1
  if ndead == nheap then
    for i = 1, nheap do heap_at[i], heap_seq[i], heap_f[i] = nil, nil, nil end
    nheap, ndead = 0, 0
    if armed_at then armed_at = nil sleep_arm(nil) end
  elseif ndead >= COMPACT_MIN and ndead * 2 > nheap then
    heap_compact()
  end
end


-- The core's timer fired at loop time now: resolve what is due, arm for
-- what is left, run what became ready.
local function fire_sleeps(now)
  armed_at = nil
  while nheap > 0 and heap_at[1] <= now do
    local f = heap_pop()
    if f._timer then
      f._timer = false
      if not f._done then settle(f, nil, 0) end
    else
      ndead = ndead - 1
    end
  end
  -- Cancelled ones that came to the top go now: the timer is armed for a
  -- live sleep, and never holds the loop for cancelled ones alone.
  while nheap > 0 and not heap_f[1]._timer do
    heap_pop()
    ndead = ndead - 1
  end
  if nheap > 0 then
    armed_at = heap_at[1]
    sleep_arm(armed_at)
  end
  drain()
end
core.sleep_init(fire_sleeps)


--- sleep(seconds): a future resolved after that long (millisecond
-- resolution), with no values.
-- (note: user code's sleep, followed by the unawaited-future check;
-- the framework's own timers skip it)
local function make_sleep(seconds, note)
  if type(seconds) ~= "number" or seconds ~= seconds then
    error("sleep: seconds must be a number", 2)   -- 2: M.sleep tail-calls
  end
  local ms = seconds * 1000
  ms = ms > 0 and floor(ms + 0.5) or 0
  local f = setmetatable({ _cancel = stop_timer, _done = false,
    _waiters = false, _timer = true }, Future)
  local at = now_ms() + ms
  seq = seq + 1
  nheap = nheap + 1
  sift_up(nheap, at, seq, f)
  if armed_at == nil or at < armed_at then
    armed_at = at
    sleep_arm(at)
  end
  if note and current then note_created(f) end
  return f
end

function M.sleep(seconds)
  return make_sleep(seconds, true)
end


--- sleep_internal(seconds): sleep for the framework's own timers (a
-- deadline, wait_for's bound), never reported as unawaited and without
-- the call-site lookup.
function M.sleep_internal(seconds)
  return make_sleep(seconds, false)
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


-- Errors gather passes through as they are: raised tables (an HTTPError
-- from a task, a GatherError from a gather inside).
local function errors_pass(err)
  return type(err) == "table"
end


local function as_future(v, fname, i)
  local mt = getmetatable(v)
  if mt == Future then return v end
  if mt == Task then return v:future() end
  error(fname .. ": argument " .. i .. " is not a future (" .. type(v) .. ")", 3)
end


-- What await(gather(...)) raises when one of them fails: err is the
-- failure (the second value of its nil, err), index its position.
local GatherError = {}
GatherError.__index = GatherError
GatherError.__name = "luaserve.GatherError"
GatherError.__tostring = function(e)
  return ("gather: future %d failed: %s"):format(e.index, tostring(e.error))
end
M.GatherError = GatherError


--- gather(f1, f2, ...): a future of the first value of each, in order:
-- `local a, b = await(gather(fa, fb))` (a value may be nil). When one
-- fails (resolves with nil, err), the futures still pending are cancelled
-- and await raises a GatherError {index =, error = err} (an HTTPError
-- raised by a task passes as it is): several values cannot also carry an
-- error. `pcall(await, gather(...))` catches it.
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
      local failed = f._rn < 0 or (v == nil and r and r[2] ~= nil)
      if failed then
        local err = f._rn < 0 and v or r[2]
        if not errors_pass(err) then
          err = setmetatable({ index = i, error = err }, GatherError)
        end
        out._cancel = nil
        out:reject(err)
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
  t = M.sleep_internal(seconds)
  t:on_done(function()
    if out._done then return end
    out._cancel = nil
    out:resolve(nil, "timeout")   -- first: cancelling f resolves f
    f:cancel()
  end)
  f:on_done(function(g)
    if out._done then return end
    out._cancel = nil
    if g._rn < 0 then
      out:reject(g._r[1])
    elseif g._r then
      out:resolve(unpack(g._r, 1, g._rn))
    else
      out:resolve()
    end
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


-- coroutine.yield() straight from a task (not inside a coroutine of the
-- task's own): nothing would ever resume it and its request would hang.
-- It raises at that line instead, so the request answers 500 at once.
local function guarded_yield(...)
  local task = current
  if task ~= nil and task[CO] == co_running() then
    error("coroutine.yield() called in a task outside a coroutine of its " ..
      "own: to wait, use luaserve.await(future); to yield from a " ..
      "generator, run it with coroutine.wrap", 2)
  end
  return co_yield(...)
end
coroutine.yield = guarded_yield


-- The entry point of every result from C: resolve target with the values
-- (a future), then run what became ready.
local function resolve_from_c(target, ...)
  if not target._done then target:resolve(...) end
  drain()
end
M.resolve_from_c = resolve_from_c
core.init(resolve_from_c)


--- Set the error logger and the warning logger (the server's, with its
-- format).
function M.set_logger(fn, warn)
  log_error = fn
  if warn then warn_log = warn end
end


return M
