-- tests/apps/cancel_app.lua: records what happens to a request whose client
-- goes away during an await (tests/test_cancel.py). Module-level state
-- lives in the main Lua state, which serves every request.

local luaserve = require "luaserve"

local await, sleep = luaserve.await, luaserve.sleep

local app = luaserve.app()

local state = {
  started = 0,                -- handlers that reached the await
  finished_after_await = 0,   -- handlers that ran past it (must stay 0)
  cancelled = 0,              -- on_cancel callbacks run
  sleep_results = {},         -- how each sleep ended: "cancelled",
                              -- "slept" or "pending"
  cancelled_with_timer = 0,   -- cancelled sleeps whose timer still runs
}
local sleeps = {}            -- every sleep future, in order


-- Sleeps ms (default 1000), counting what happens around the await.
app:get("/sleep", function(req)
  local ms = tonumber(req.query.ms) or 1000
  state.started = state.started + 1
  luaserve.on_cancel(function() state.cancelled = state.cancelled + 1 end)
  local f = sleep(ms / 1000)
  sleeps[#sleeps + 1] = f   -- no on_done here: a waiter keeps it uncancelled
  await(f)
  state.finished_after_await = state.finished_after_await + 1
  return { slept_ms = ms }
end)


app:get("/state", function()
  local left, results = 0, {}
  for i, f in ipairs(sleeps) do
    if f._cancelled and f._timer then left = left + 1 end   -- still in the sleep heap
    local err = f:done() and select(2, f:result())
    results[i] = f:done() and (err or "slept") or "pending"
  end
  state.cancelled_with_timer = left
  state.sleep_results = results
  return state
end)

return app
