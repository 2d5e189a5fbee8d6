-- luaserve.dbpool: what the database drivers (luaserve.pg, luaserve.redis)
-- share: a pool's permit taken with a deadline, and streams of messages
-- (LISTEN iterators, subscriptions; the HTTP client's streamed bodies too)
-- that end with the task using them.

local future = require "luaserve.future"

local await = future.await
local new_future = future.new_internal   -- the futures users get are tasks'
local on_cancel = future.on_cancel
local spawn = future.spawn
local wait_for = future.wait_for
local select = select
local unpack = unpack

local M = {}


--- acquire(sem, timeout): a permit of the Semaphore sem, waiting at most
-- timeout seconds (nil or 0: no limit): true, or nil, "pool timeout". A
-- task cancelled while it holds or waits for the permit gives it back.
function M.acquire(sem, timeout)
  if sem.free > 0 or not timeout or timeout <= 0 then
    return await(sem:acquire())
  end
  if await(wait_for(sem:acquire(), timeout)) then return true end
  return nil, "pool timeout"
end


--- tie(obj): obj:close() runs when the task that calls this (its
-- request's, for a task of a request) ends: a child task waits on a
-- future whose cancellation closes obj. Outside a task: nothing.
function M.tie(obj)
  if future.current() == nil or obj._guard then return end
  local guard = new_future(function() obj:close() end)
  obj._guard = guard
  spawn(await, guard)
end


--- untie(obj): obj is closed: its guard task ends (call from obj:close()).
function M.untie(obj)
  local guard = obj._guard
  obj._guard = nil
  if guard and not guard._done then
    guard._cancel = nil
    guard:resolve()
  end
end


local function finish(remove, ...)
  if remove then remove() end
  return ...
end


--- wait(obj, fn, ...): fn(...)'s results; obj:close() runs if the running
-- task is cancelled meanwhile (while it awaits inside fn).
function M.wait(obj, fn, ...)
  return finish(on_cancel(function() obj:close() end), fn(...))
end

return M
