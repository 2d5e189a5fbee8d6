-- luaserve.shared: one dictionary that every Lua state of every worker
-- process sees: the main state and every pool thread's, in each worker
-- (core/shmdict.c, in the shared memory the master maps before it forks).
-- Values are copied in and out: strings, numbers, booleans, nil and tables
-- of those (nested tables too, which OpenResty's shared dicts cannot hold).
--
--   local shared = luaserve.shared
--   shared.set("greeting", { text = "hi" }, 60)   -- ttl in seconds (0: none)
--   shared.get("greeting").text                    -- "hi" (a copy)
--   shared.add("lock", true, 5)                    -- nil, "exists" if present
--   shared.incr("hits", 1, 0)                      -- atomic; starts at 0
--
-- The size is bounded (--shared-size). When a set does not fit, expired
-- entries and then the least recently used ones are evicted; safe_set and
-- safe_add never evict a live entry: nil, "shared dictionary full".

local core = require "luaserve.core"

local M = {}

--- get(key): a copy of the value, or nil (missing or expired).
M.get = core.shared_get
--- set(key, value, ttl): true (evicting the least recently used entries
-- if it must). A nil value deletes the key. nil, "shared dictionary full"
-- only for a value bigger than the whole dictionary.
M.set = core.shared_set
--- add(key, value, ttl): like set, only if the key is absent; else nil,
-- "exists".
M.add = core.shared_add
--- safe_set(key, value, ttl), safe_add(key, value, ttl): like set and add,
-- but no live entry is evicted: nil, "shared dictionary full".
M.safe_set = core.shared_safe_set
M.safe_add = core.shared_safe_add
--- incr(key, by, init, init_ttl): the new number, atomically (across
-- threads and worker processes). A missing key starts at init (nil, "not
-- found" without one); a value that is not a number gives nil, "not a
-- number".
M.incr = core.shared_incr
--- delete(key): true.
M.delete = core.shared_delete
--- ttl(key): the seconds left (0: no expiry), or nil, "not found".
M.ttl = core.shared_ttl
--- keys(max): a list of the keys (at most max; 0 or nil: all), most
-- recently used first.
M.keys = core.shared_keys
--- flush_all(): delete every key.
M.flush_all = core.shared_flush_all
--- stats(): { count, bytes, capacity, evicted, repairs }.
M.stats = core.shared_stats
--- verify(): true, or nil and what is wrong (every link and count checked).
M.verify = core.shared_verify

return M
