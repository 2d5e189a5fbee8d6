-- luaserve.master: `--workers N`. The master process holds the listening
-- socket and the shared memory, forks N workers (each one is the single
-- process server: its own loop, Lua state, app and sync pool) and serves
-- no request itself. It runs no event loop: it waits in core.master_wait
-- for signals, exits and the workers' messages, a tick at a time, and
-- forks from this plain code, so that a new worker returns from run() and
-- goes on in cli.lua to load the app and serve.
--
--   a worker that dies          is replaced (with a growing pause if it
--                               keeps dying soon after it started)
--   a worker that fails to      at startup: the master stops with the
--   load the app (or to start)  app's error and status 2; on a reload:
--                               the old workers keep serving
--   a worker whose loop is      beyond --timeout-worker-healthcheck: killed
--   blocked                     (SIGKILL), the log names the route
--   --max-requests N (+jitter)  the worker asks to retire; a new one starts
--                               and, once ready, the old one is drained
--   SIGTERM, SIGINT, SIGQUIT    every worker drains (its graceful shutdown),
--                               then the master exits 0; a second one cuts
--                               the drains short
--   SIGHUP                      rolling reload: new workers load the app;
--                               each old one is drained once a new one is
--                               ready (so one is always accepting)
--   SIGTTIN, SIGTTOU            one worker more, one less

local core = require "luaserve.core"
local log = require "luaserve.log"

local signals = core.signals
local hrtime = core.hrtime
local fmt = string.format

local M = {}

local TICK = 0.25          -- s between checks
local QUICK_DEATH = 10     -- s: a worker that dies sooner counts toward backoff
local BACKOFF_MAX = 30     -- s
local SIGNAL_NAMES = {}
for name, num in pairs(signals) do SIGNAL_NAMES[num] = "SIG" .. name end


local function signame(n)
  return SIGNAL_NAMES[n] or ("signal " .. tostring(n))
end


local function how(status, sig)
  if sig and sig ~= 0 then return "was killed by " .. signame(sig) end
  return "exited with status " .. tostring(status)
end


--- run(cfg): the master. cfg: workers, app (path, for the log),
-- healthcheck (s), grace (s), max_requests, jitter, nslots, banner
-- (function(count) that prints the serving line).
-- Returns "worker", slot in a forked worker; else "done", exit status.
function M.run(cfg)
  local ok, err = core.master_open()
  if not ok then
    log.error("cannot start the master: " .. tostring(err))
    return "done", 1
  end
  local workers = {}         -- pid -> { pid, slot, gen, state, t0, ... }
  local by_slot = {}
  local target = cfg.workers
  local gen = 1              -- the generation of the app the master wants
  local served = false       -- some worker was ready once
  local stopping, stop_deadline = false, nil
  local restarts = 0
  local backoff, next_start = 0, 0
  local fatal = nil          -- the error that ends the master at startup
  local announced = false

  local function each(fn)
    for _, w in pairs(workers) do fn(w) end
  end

  local function figures()
    local n = 0
    each(function() n = n + 1 end)
    core.master_figures(n, restarts)
    return n
  end

  local function free_slot()
    for i = 0, cfg.nslots - 1 do
      if not by_slot[i] then return i end
    end
  end

  -- Fork one worker of generation g: "child" in the worker.
  local function start(g)
    local slot = free_slot()
    if not slot then
      log.error(fmt("no free worker slot (%d in use): not starting another",
        cfg.nslots))
      return
    end
    local limit = 0
    if cfg.max_requests > 0 then
      limit = cfg.max_requests + (cfg.jitter > 0 and math.random(0, cfg.jitter) or 0)
    end
    local pid, ferr = core.master_fork(slot, g, limit)
    if pid == 0 then return "child", slot end
    if not pid then
      log.error("cannot fork a worker: " .. tostring(ferr))
      next_start = hrtime() + 1
      return
    end
    local w = { pid = pid, slot = slot, gen = g, state = "starting",
                t0 = hrtime() }
    workers[pid] = w
    by_slot[slot] = w
    log.info(fmt("worker %d started (slot %d%s)", pid, slot,
      g > 1 and fmt(", generation %d", g) or ""))
    figures()
    return true
  end

  local function drain(w, why)
    if w.state == "draining" then return end
    w.state = "draining"
    w.drain_t0 = hrtime()
    log.info(fmt("worker %d: %s; draining it", w.pid, why))
    core.kill(w.pid, signals.TERM)
  end

  local function kill_hard(w, why)
    if w.killed then return end
    w.killed = why
    log.error(fmt("worker %d (slot %d) %s: killing it", w.pid, w.slot, why))
    core.kill(w.pid, signals.KILL)
  end

  -- Start what is missing; drain what is surplus once enough is ready.
  local function maintain(now)
    if stopping or fatal then return end
    local have, ready_good, ready_other = 0, 0, 0
    local surplus = {}
    each(function(w)
      if w.state == "draining" then return end
      local good = w.gen == gen and not w.retiring
      if good then
        have = have + 1
        if w.state == "ready" then ready_good = ready_good + 1 end
      else
        surplus[#surplus + 1] = w
        if w.state == "ready" then ready_other = ready_other + 1 end
      end
    end)
    while have < target and now >= next_start do
      local r, slot = start(gen)
      if r == "child" then return r, slot end
      if not r then break end
      have = have + 1
    end
    -- Old generations and retiring workers go as new ones are ready: one
    -- for each ready worker beyond the target.
    table.sort(surplus, function(a, b) return a.gen < b.gen end)
    for _, w in ipairs(surplus) do
      if w.state == "starting" then
        drain(w, "started with older code")
      elseif ready_good + ready_other > target then
        drain(w, w.retiring and "a new worker took its place (--max-requests)"
          or "a worker with the new code is ready")
        ready_other = ready_other - 1
      end
    end
    if ready_good > target then   -- SIGTTOU
      local extra = {}
      each(function(w)
        if w.state == "ready" and w.gen == gen and not w.retiring then
          extra[#extra + 1] = w
        end
      end)
      table.sort(extra, function(a, b) return a.t0 > b.t0 end)
      for i = 1, ready_good - target do drain(extra[i], "one worker less (SIGTTOU)") end
    end
    if not announced and ready_good >= target then
      announced = true
      cfg.banner(ready_good)
    end
  end

  local function stop_all(sig_name)
    if not stopping then
      stopping = true
      stop_deadline = hrtime() + cfg.grace + 5
      log.info(fmt("%s: stopping %d workers, finishing requests in flight",
        sig_name, figures()))
    end
    each(function(w)
      w.state = "draining"
      core.kill(w.pid, signals.TERM)
    end)
  end

  local function failed_start(w, text)
    if not served then
      if not fatal then
        fatal = text
        log.error(text)
        each(function(o) if o ~= w then core.kill(o.pid, signals.KILL) end end)
      end
      return
    end
    local old = nil
    each(function(o)
      if o.gen ~= w.gen and o.state ~= "draining" then old = math.max(old or 0, o.gen) end
    end)
    if w.gen == gen and old then
      log.error(fmt("reload failed, the old workers keep serving: %s", text))
      gen = old
      each(function(o)
        if o.gen == w.gen and o.state == "starting" and o ~= w then
          o.state = "draining"
          core.kill(o.pid, signals.KILL)
        end
      end)
      return
    end
    backoff = math.min(math.max(1, backoff * 2), BACKOFF_MAX)
    next_start = hrtime() + backoff
    log.error(fmt("worker %d could not start: %s; trying again in %g s",
      w.pid, text, backoff))
  end

  local function on_exit(e)
    local w = workers[e.pid]
    if not w then return end
    workers[e.pid] = nil
    by_slot[w.slot] = nil
    core.slot_release(w.slot)
    -- If it died holding the dictionary's lock, repair it now.
    core.shared_recover()
    local now = hrtime()
    if w.state == "starting" and not stopping then
      failed_start(w, w.error or (w.killed and fmt("it %s", w.killed)) or
        fmt("the worker %s before it was ready", how(e.status, e.signal)))
    elseif w.state == "draining" or stopping then
      log.info(fmt("worker %d %s", w.pid, how(e.status, e.signal)))
    else
      restarts = restarts + 1
      if now - w.t0 < QUICK_DEATH and not w.killed then   -- it crashed
        backoff = math.min(math.max(1, backoff * 2), BACKOFF_MAX)
        next_start = now + backoff
      else
        backoff = 0
      end
      log.warn(fmt("worker %d (slot %d) %s%s; starting a new one%s", w.pid,
        w.slot, how(e.status, e.signal), w.killed and " (it " .. w.killed .. ")" or "",
        backoff > 0 and fmt(" in %g s (it keeps dying)", backoff) or ""))
    end
    figures()
  end

  local function on_message(e)
    local w = by_slot[e.slot]
    if not w or w.gen ~= e.gen then return end
    if e.kind == "ready" then
      w.state = w.state == "starting" and "ready" or w.state
      served = true
      if w.gen == gen then backoff = 0 end
      log.info(fmt("worker %d ready", w.pid))
    elseif e.kind == "failed" then
      w.error = e.text
    elseif e.kind == "retire" and w.state == "ready" then
      w.retiring = true
      log.info(fmt("worker %d served its --max-requests: starting its replacement",
        w.pid))
    end
  end

  local function on_signal(sig)
    if sig == signals.TERM or sig == signals.INT or sig == signals.QUIT then
      stop_all(signame(sig))
    elseif stopping then
      return
    elseif sig == signals.HUP then
      gen = gen + 1
      log.info(fmt("SIGHUP: reloading: starting %d workers with the app as it is now", target))
    elseif sig == signals.TTIN then
      if target + 1 > cfg.nslots / 2 then
        log.warn(fmt("SIGTTIN: already %d workers, the most this master takes", target))
      else
        target = target + 1
        log.info(fmt("SIGTTIN: %d workers", target))
      end
    elseif sig == signals.TTOU then
      if target > 1 then target = target - 1 end
      log.info(fmt("SIGTTOU: %d workers", target))
    end
  end

  -- Kill workers whose loop is blocked, or that never get ready.
  local function check_health(now)
    local limit = cfg.healthcheck
    if limit <= 0 then return end
    each(function(w)
      if w.killed then return end
      if w.state == "starting" then
        if now - w.t0 > limit then
          kill_hard(w, fmt("did not get ready within %g s", limit))
        end
        return
      end
      local info = core.slot_info(w.slot)
      if info.pid ~= w.pid then return end
      -- The loop has not beaten since info.beat; if Lua code is running,
      -- that is what holds it.
      local silent = now - info.beat
      local blocked = info.entry > 0 and now - info.entry or 0
      if info.entry > 0 and (blocked > limit or silent > limit) then
        kill_hard(w, fmt("has held its loop for %.1f s running %s " ..
          "(--timeout-worker-healthcheck %g)", math.max(blocked, silent),
          info.running, limit))
      elseif silent > limit then
        kill_hard(w, fmt("missed its heartbeat for %.1f s (last running %s; " ..
          "--timeout-worker-healthcheck %g)", now - info.beat,
          info.running ~= "" and info.running or "-", limit))
      end
    end)
  end

  local status = 0
  while true do
    local now = hrtime()
    local r, slot = maintain(now)
    if r == "child" then return "worker", slot end
    local events = core.master_wait(TICK)
    for _, e in ipairs(events) do
      if e.kind == "signal" then
        on_signal(e.signal)
      elseif e.kind == "exit" then
        on_exit(e)
      else
        on_message(e)
      end
    end
    now = hrtime()
    check_health(now)
    if fatal then
      if next(workers) == nil then status = 2 break end
    elseif stopping then
      if next(workers) == nil then break end
      if now > stop_deadline then
        each(function(w)
          if not w.killed then kill_hard(w, "is still draining") end
        end)
        stop_deadline = now + 5
      end
    end
  end
  core.master_close()
  if not fatal then log.info("stopped") end
  return "done", status
end

return M
