-- luaserve.shared: one dictionary that every Lua state of the process sees,
-- the main state and every pool thread's (core/shared.c). Values are
-- copied in and out: strings, numbers, booleans, nil and tables of those
-- (nested tables too, which OpenResty's shared dicts cannot hold).
--
--   local shared = luaserve.shared
--   shared.set("greeting", { text = "hi" }, 60)   -- ttl in seconds (0: none)
--   shared.get("greeting").text                    -- "hi" (a copy)
--   shared.add("lock", true, 5)                    -- nil, "exists" if present
--   shared.incr("hits", 1, 0)                      -- atomic; starts at 0
--
-- The size is bounded (--shared-size); a write that does not fit answers
-- nil, "shared dictionary full" (nothing is evicted). Thread-safe.

local core = require "luaserve.core"

local M = {}

--- get(key): a copy of the value, or nil (missing or expired).
M.get = core.shared_get
--- set(key, value, ttl): true, or nil, "shared dictionary full". A nil
-- value deletes the key.
M.set = core.shared_set
--- add(key, value, ttl): like set, only if the key is absent; else nil,
-- "exists".
M.add = core.shared_add
--- incr(key, by, init, init_ttl): the new number, atomically. A missing
-- key starts at init (nil, "not found" without one); a value that is not
-- a number gives nil, "not a number".
M.incr = core.shared_incr
--- delete(key): true.
M.delete = core.shared_delete
--- ttl(key): the seconds left (0: no expiry), or nil, "not found".
M.ttl = core.shared_ttl
--- keys(max): a list of the keys (at most max; 0 or nil: all), unordered.
M.keys = core.shared_keys
--- flush_all(): delete every key.
M.flush_all = core.shared_flush_all
--- stats(): { count, bytes, capacity }.
M.stats = core.shared_stats

return M
