-- luaserve.filecache: the open-file cache of app:static (nginx's
-- open_file_cache, holding the content of small files too): what each
-- path beneath a folder turned out to be, kept in memory so that a
-- request for it is answered from the loop without a trip to the thread
-- pool.
--
--   local cache = filecache.new("/srv/public", { max_bytes = 8 * 2^20,
--     max_file = 64 * 1024, valid = 1 })
--   local kind, size, mtime, data, entry = cache:open("css/site.css")   -- in a task
--
-- What is kept: a file of up to max_file bytes (its content, size, mtime
-- and stamp), a folder, something else (a fifo), and a path that gave a
-- lasting error (missing, not a folder, leaving the root, a loop, no
-- permission: a "negative" entry). Bigger files are not kept (they go out
-- with sendfile from a fresh open), nor are passing errors (no memory,
-- too many open files).
--
-- Freshness. An entry is used while it was checked less than `valid`
-- seconds ago (the loop's clock). After that, the first request that wants
-- it checks it again: the same file_open as a miss, on the pool, beneath
-- the folder with openat2(RESOLVE_BENEATH), so a file swapped for a
-- symlink that leaves the folder is a 404 from then on. The request waits
-- for the check, and so do the others that want the entry meanwhile (one
-- open per entry per window, whatever the load). A file whose device,
-- inode, size, mtime and ctime are unchanged is not read again (a file
-- changed within two seconds of its read is read again: a change in the
-- same timestamp tick could keep its stat). So a change on disk is seen by
-- every request that starts more than `valid` seconds after it; requests
-- in between may get the copy from before.
--
-- Memory: each entry costs its content plus ENTRY_COST bytes (the tables
-- and strings around it) toward max_bytes; when the total passes it, the
-- least recently used entries are dropped. Several caches may share one
-- bound (M.budget: app:static's folders of one app that do not set their
-- own max_bytes): their entries are then on one recency list, and the
-- least recently used entry of any of them goes first. Per process (each
-- worker has its own).
--
-- Entries are plain tables; their users may keep what they derive from
-- one on it (static.lua keeps the ETag): a changed file gets a new entry.

local core = require "luaserve.core"
local future = require "luaserve.future"

local file_open = core.file_open
local now = core.now
local new_future = future.new_internal
local await = future.await
local type = type
local pairs = pairs
local setmetatable = setmetatable
local tostring = tostring

local M = {}

--- target(f): what to give core.file_open for the future f: it resolves
-- f, or, when f was cancelled meanwhile (its request's client left),
-- closes the open file that came too late instead of leaving it to the
-- garbage collector.
function M.target(f)
  return { _done = false, resolve = function(self, kind, size, mtime, data, stamp)
    self._done = true
    if f._done then
      if type(data) == "userdata" then data:close() end
    else
      f:resolve(kind, size, mtime, data, stamp)
    end
  end }
end
local target = M.target

--- What one entry costs beside its content: its table, key and stamp.
M.ENTRY_COST = 512
--- core/static.c reads files up to this size whole when not told more.
M.READ_WHOLE = 64 * 1024
M.DEFAULTS = { max_bytes = 8 * 1024 * 1024, max_file = 64 * 1024, valid = 1 }

-- Errors that last until the tree changes: worth a negative entry.
local LASTING = { ENOENT = true, ENOTDIR = true, EXDEV = true, ELOOP = true,
  EACCES = true, EPERM = true, ENAMETOOLONG = true }

local Cache = {}
Cache.__index = Cache
Cache.__name = "luaserve.FileCache"


function Cache.__tostring(c)
  return ("luaserve.FileCache (%s: %d entries, %d bytes)"):format(c.root,
    c.entries, c.bytes)
end


-- ---------------------------------------------------------------------------
-- The recency list: head.next is the most recently used, head.prev the
-- least.

local function unlink(e)
  e.prev.next = e.next
  e.next.prev = e.prev
end


local function push_front(head, e)
  local first = head.next
  e.next, e.prev = first, head
  first.prev = e
  head.next = e
end


local function remove(self, e)
  unlink(e)
  self.map[e.key] = nil
  self.bytes = self.bytes - e.cost
  self.budget.bytes = self.budget.bytes - e.cost
  self.entries = self.entries - 1
end


-- Keep what an open of path (started at loop time `started`) gave: a new
-- entry, or nil when it is not kept. It replaces the path's entry unless
-- that one was checked later (opens that overlap: the newer view wins).
local function store(self, path, started, kind, size, mtime, data, stamp)
  local map = self.map
  local old = map[path]
  if old then
    if old.checked > started then return nil end
    remove(self, old)
  end
  local cost = M.ENTRY_COST + #path
  if kind == nil then
    if not LASTING[size] then return nil end
  elseif kind == "file" then
    if type(data) ~= "string" or size > self.max_file then return nil end
    cost = cost + #data
  end
  local budget = self.budget
  if cost > budget.max_bytes then return nil end
  local e = { key = path, kind = kind, size = size, mtime = mtime, data = data,
    err = kind == nil and size or nil, stamp = stamp, checked = started, cost = cost,
    pending = nil, next = nil, prev = nil, cache = self }
  map[path] = e
  push_front(budget.head, e)
  self.bytes = self.bytes + cost
  budget.bytes = budget.bytes + cost
  self.entries = self.entries + 1
  while budget.bytes > budget.max_bytes do
    local last = budget.head.prev   -- of this cache, or of one sharing the bound
    local owner = last.cache
    remove(owner, last)
    owner.evictions = owner.evictions + 1
  end
  return e
end


-- Open path on the pool (the miss): what file_open gives, and the entry
-- kept (or nil).
local function load(self, path)
  local started = now()
  local f = new_future()
  local ok, err = file_open(self.root, path, target(f), self.read_whole)
  if not ok then return nil, err end
  self.misses = self.misses + 1
  local kind, size, mtime, data, stamp = await(f)
  local e = store(self, path, started, kind, size, mtime, data, stamp)
  if kind == nil then return nil, size end
  return kind, size, mtime, data, e
end


-- Check e again (it is past its validity): a future resolved once its
-- entry is updated (or dropped); nil when the open could not start (e is
-- dropped). The check belongs to the cache, not to a request: a request
-- that waits for it and leaves does not stop it.
local function check(self, e)
  local f = new_future()
  local started = now()
  if not file_open(self.root, e.key, f, self.read_whole, e.stamp) then
    remove(self, e)
    return nil
  end
  self.checks = self.checks + 1
  e.pending = f
  f:on_done(function()
    e.pending = nil
    local kind, size, mtime, data, stamp = f:result()
    local current = self.map[e.key] == e
    if data == true then   -- unchanged: the content held is the file's
      if current then e.checked, e.stamp = started, stamp end
    elseif current then
      store(self, e.key, started, kind, size, mtime, data, stamp)
    end
    if type(data) == "userdata" then data:close() end   -- grew past max_file
  end)
  return f
end


--- cache:open(path): what the path beneath the root is, as file_open
-- gives it (kind, size, mtime, content or an open file or false; or nil,
-- errno name), and its entry (nil when not kept). From the entry when it
-- is fresh; else after a check or an open on the pool (the task waits).
function Cache:open(path)
  local map = self.map
  local e = map[path]
  if e then
    if now() - e.checked < self.valid then
      self.hits = self.hits + 1
    else
      local f = e.pending or check(self, e)
      if f then await(f) end
      -- What the check left: e checked again, the changed file's new
      -- entry (or a newer one), or nothing (dropped, not kept).
      e = map[path]
    end
  end
  if e == nil then return load(self, path) end
  local head = self.budget.head
  if head.next ~= e then
    unlink(e)
    push_front(head, e)
  end
  local kind = e.kind
  if kind == nil then return nil, e.err end
  return kind, e.size, e.mtime, e.data, e
end


--- cache:stats(): entries, bytes, hits, misses (opens for a path not
-- kept), checks (opens of an entry past its validity), evictions (of its
-- entries); max_bytes and shared_bytes: the bound and what every cache
-- under it holds.
function Cache:stats()
  return { entries = self.entries, bytes = self.bytes, hits = self.hits,
    misses = self.misses, checks = self.checks, evictions = self.evictions,
    max_bytes = self.budget.max_bytes, shared_bytes = self.budget.bytes,
    max_file = self.max_file, valid = self.valid }
end


--- options(t, who, level): the options of a cache (t: nil or true for
-- the defaults, or a table of some) with the defaults filled in; raises on
-- a wrong one, naming who, at that level of options' caller (1: the
-- function that calls options).
function M.options(t, who, level)
  level = (level or 1) + 1
  local o = {}
  for k, v in pairs(M.DEFAULTS) do o[k] = v end
  if t == nil or t == true then return o end
  if type(t) ~= "table" then
    error(("%s: cache must be false, true or a table, not %s"):format(who,
      type(t)), level)
  end
  for k, v in pairs(t) do
    if M.DEFAULTS[k] == nil then
      error(("%s: unknown cache option '%s' (max_bytes, max_file, valid)")
        :format(who, tostring(k)), level)
    end
    if type(v) ~= "number" or v ~= v or v < 0 or v == math.huge then
      error(("%s: cache option %s must be a number >= 0"):format(who, k), level)
    end
    o[k] = v
  end
  if o.valid <= 0 then
    error(("%s: cache option valid must be more than 0 seconds (cache = false " ..
      "turns the cache off)"):format(who), level)
  end
  if o.max_file > o.max_bytes then
    error(("%s: cache option max_file (%.0f) is more than max_bytes (%.0f)"):format(who,
      o.max_file, o.max_bytes), level)
  end
  if o.max_file > 2 ^ 30 then
    error(("%s: cache option max_file is more than 1 GB"):format(who), level)
  end
  return o
end


--- budget(max_bytes): a memory bound that caches can share (new's third
-- argument): one recency list and one byte count for all of them.
function M.budget(max_bytes)
  local head = {}
  head.next, head.prev = head, head
  return { max_bytes = max_bytes, bytes = 0, head = head }
end


--- new(root, opts[, budget]): a cache of the paths beneath the folder
-- root. opts: max_bytes (default 8 MB), max_file (64 KB), valid (1 s), as
-- checked by options(). budget: a bound shared with other caches (then
-- opts.max_bytes is not used); without it, the cache's own of max_bytes.
function M.new(root, opts, budget)
  opts = opts or M.options(nil)
  local max_file = opts.max_file
  budget = budget or M.budget(opts.max_bytes)
  if max_file > budget.max_bytes then
    error(("filecache: max_file (%.0f) is more than the shared max_bytes (%.0f)")
      :format(max_file, budget.max_bytes), 2)
  end
  return setmetatable({
    root = root,
    max_file = max_file,
    valid = opts.valid,
    -- what file_open reads whole: never less than it reads uncached
    read_whole = max_file > M.READ_WHOLE and max_file or nil,
    map = {},
    budget = budget,
    bytes = 0, entries = 0,
    hits = 0, misses = 0, checks = 0, evictions = 0,
  }, Cache)
end

return M
