-- luaserve.reload: `luaserve APP --reload`, for development. This process
-- serves nothing itself: it runs the server as a child process (the same
-- command line without --reload), watches the app's Lua files (every
-- folder under the app's, with libuv's fs events), and when one changes
-- (a burst of changes counts once) it says which, checks that the new code
-- loads (`luaserve check APP` in a process of its own), and only then
-- stops the old server and starts a new one. Code that does not load
-- leaves the old server serving and shows the error with its file and
-- line. SIGINT/SIGTERM stop the server and then this process.

local core = require "luaserve.core"
local future = require "luaserve.future"

local await, sleep, spawn = future.await, future.sleep, future.spawn
local signals = core.signals

local M = {}

local DEBOUNCE = 0.15   -- s: an editor's write, rename and chmod are one change
local SKIP = { [".git"] = true, node_modules = true, build = true }


local function say(fmt, ...)
  core.log(2, "reload: " .. fmt:format(...))
end


-- Every folder under root (root included), hidden and build ones left out.
local function folders(root, out)
  out = out or {}
  out[#out + 1] = root
  local list = core.scandir(root)
  for _, e in ipairs(list or {}) do
    if e.dir and e.name:sub(1, 1) ~= "." and not SKIP[e.name] then
      folders(root .. "/" .. e.name, out)
    end
  end
  return out
end


-- Run the process to its end: a future of status, signal.
local function run(exe, args, env)
  local f = future.new()
  local proc, err = core.spawn(exe, args, function(status, sig)
    if not f._done then f:resolve(status, sig) end
  end, env)
  if not proc then f:resolve(nil, err) end
  return f, proc
end


--- supervise(app_path, args): args is the command line without --reload.
-- Returns the exit status for this process.
function M.supervise(app_path, args)
  future.allow_blocking(true)
  local exe = core.exepath() or "/proc/self/exe"
  local env = { LUASERVE_RELOAD = "0" }   -- the children serve
  local root = app_path:match("%.lua$") and (app_path:match("^(.*)/[^/]*$") or ".")
    or app_path:gsub("/$", "")

  local changed = nil        -- the first file changed since the last restart
  local wake = nil           -- a future the main task waits on
  local stopping = false
  local function poke()
    if wake and not wake._done then wake:resolve() end
  end

  local watchers = {}
  local function watch_all()
    for _, w in ipairs(watchers) do w:close() end
    watchers = {}
    for _, dir in ipairs(folders(root)) do
      local w = core.watch(dir, function(name)
        if name:match("%.lua$") then   -- (new folders are watched from the
          changed = changed or (dir .. "/" .. name)   -- next restart on)
          poke()
        end
      end)
      if w then watchers[#watchers + 1] = w end
    end
  end

  local sigs = {}
  for _, s in ipairs({ signals.INT, signals.TERM }) do
    sigs[#sigs + 1] = core.on_signal(s, function()
      stopping = true
      poke()
    end)
  end

  local status = 0
  local main = spawn(function()
    watch_all()
    say("watching %s (%d folders) for changes to .lua files", root, #watchers)
    local exited, child
    local function start()
      exited, child = run(exe, args, env)
      exited:on_done(poke)
    end
    start()
    while true do
      wake = future.new()
      if not exited._done or changed or stopping then await(wake) end
      if stopping then break end
      if exited._done and not changed then
        local st, sig = exited:result()
        say("the server exited (%s); waiting for a change to start it again",
          sig and sig ~= 0 and "signal " .. sig or "status " .. tostring(st))
        exited = future.new()   -- resolved by nothing: wait for a change
        child = nil
      end
      if changed then
        await(sleep(DEBOUNCE))
        local file = changed
        changed = nil
        say("%s changed", file)
        watch_all()   -- folders may have come or gone
        local cst = await((run(exe, { "check", app_path }, env)))
        if cst ~= 0 then
          say("the new code does not load (above); %s", child and
            "the server goes on with the old code" or "waiting for a fix")
        else
          if child and not exited._done then
            child:kill(signals.TERM)
            await(exited)
          end
          start()
        end
      end
    end
    if child and not exited._done then
      child:kill(signals.TERM)
      local st, sig = await(exited)
      status = sig == 0 and (st or 0) or 0
    end
  end)
  await(main)
  for _, w in ipairs(watchers) do w:close() end
  for _, s in ipairs(sigs) do s:close() end
  return status
end

return M
