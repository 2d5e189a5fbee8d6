-- luaserve.log: the server's log lines on stderr. Levels debug, info, warn,
-- error; access lines are buffered and written at most every 100 ms (or at
-- 32 KB), so logging costs no system call per request.

local core = require "luaserve.core"

local stderr = io.stderr
local format = string.format
local concat = table.concat

local M = {}

local LEVELS = { debug = 1, info = 2, warn = 3, error = 4 }
M.LEVELS = LEVELS
local threshold = LEVELS.info

local buf, nbuf, bytes = {}, 0, 0
local flush_timer = nil


--- set_level(name): "debug", "info", "warn" or "error".
function M.set_level(name)
  local l = LEVELS[name]
  if not l then
    error("log level must be debug, info, warn or error, got " .. tostring(name), 2)
  end
  threshold = l
  core.set_log_level(l)   -- what the core logs itself (debug lines)
end


--- flush(): write the buffered access lines now.
function M.flush()
  if flush_timer then flush_timer:stop() flush_timer = nil end
  if nbuf == 0 then return end
  stderr:write(concat(buf, "", 1, nbuf))
  for i = 1, nbuf do buf[i] = nil end
  nbuf, bytes = 0, 0
end
local flush = M.flush


--- set_output(f): write the lines to f (anything with :write, e.g. a
-- file, or a table that collects them in a spec); nil: back to stderr.
-- Returns the previous output.
function M.set_output(f)
  flush()
  local prev = stderr
  stderr = f or io.stderr
  return prev
end


local function line(level, msg)
  if LEVELS[level] < threshold then return end
  flush()
  stderr:write("luaserve: ", level, ": ", msg, "\n")
end

function M.debug(msg) line("debug", msg) end
function M.info(msg) line("info", msg) end
function M.warn(msg) line("warn", msg) end
function M.error(msg) line("error", msg) end


-- The flush timer resolves its target like any future: a table with a
-- resolve method is enough.
local flusher = { _done = false, resolve = function(self) flush_timer = nil flush() end }


--- access(req, status, bytes, seconds): one access line (at info level).
function M.access(req, status, nbytes, seconds)
  if threshold > LEVELS.info then return end
  local client = req.client
  local rid = req.request_id
  local s = format("%s - \"%s %s\" %d %d %.2fms%s\n", client.host or "-",
    req.method, req.target, status, nbytes, seconds * 1000,
    rid and " id=" .. rid or "")
  nbuf = nbuf + 1
  buf[nbuf] = s
  bytes = bytes + #s
  if bytes >= 32768 then
    flush()
  elseif flush_timer == nil then
    flush_timer = core.timer(100, flusher)
  end
end

return M
