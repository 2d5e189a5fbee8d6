-- luaserve.fs: files without blocking the loop. Every call runs on libuv's
-- thread pool and returns a future; await gives the result, or nil, err,
-- code ("no such file or directory", "ENOENT"). In sync functions they
-- work the same, on the pool thread's own loop.
--
--   local fs = require "luaserve.fs"
--   local f = assert(await(fs.open("/tmp/x", "w")))
--   await(f:write("hello"))
--   await(f:close())
--   local st = await(fs.stat("/tmp/x"))            -- st.size, st.mtime, st.type
--   await(fs.move("/tmp/x", "/srv/data/x"))        -- rename, or copy + remove
--
-- A file's operations run one after another in the order they were asked
-- for, also when the task that asked was cancelled meanwhile: a close never
-- overtakes a write still on the thread pool, and a file opened for a task
-- that was cancelled before it got it is closed (a temp file removed).

local core = require "luaserve.core"
local errors = require "luaserve.errors"
local future = require "luaserve.future"

local check_string = errors.check_string
local new_future = future.new
local fs_open = core.fs_open
local fs_mkstemp = core.fs_mkstemp
local fs_write = core.fs_write
local fs_read = core.fs_read
local fs_close = core.fs_close
local fs_unlink = core.fs_unlink
local fs_rename = core.fs_rename
local fs_copyfile = core.fs_copyfile
local fs_stat = core.fs_stat
local type = type
local error = error
local remove = table.remove

local M = {}

local MODES = { r = true, ["r+"] = true, w = true, wx = true, a = true }

local File = {}
File.__index = File
File.__name = "luaserve.fs.File"


function File.__tostring(f)
  return ("luaserve.fs.File (%s%s)"):format(f.path or ("fd " .. tostring(f.fd)),
    f.fd and "" or ", closed")
end


-- Start a core call with a fresh target: a future of its result, or one
-- already failed when libuv refused the call.
local function call(start)
  local f = new_future()
  local ok, err, code = start(f)
  if not ok then f:resolve(nil, err, code) end
  return f
end




-- A file object for fd; its sentinel closes the descriptor if the object
-- is collected while open (a forgotten close must not leak it).
local function new_file(fd, path)
  local guard = newproxy(true)
  local state = { fd = fd }
  getmetatable(guard).__gc = function()
    if state.fd then fs_close(state.fd) end
  end
  return setmetatable({ fd = fd, path = path, _state = state, _guard = guard,
    _queue = nil, _busy = false }, File)
end


-- A future of fd-taking results, whose descriptor is closed (and a temp
-- file removed) if the future was cancelled before it got them.
local function open_call(start, path, temp)
  local cancelled = false
  local out = new_future(function() cancelled = true end)
  local inner = call(start)
  inner:on_done(function(g)
    local fd, path_or_err, code = g:result()
    if cancelled then
      if fd then
        fs_close(fd)
        if temp then fs_unlink(path_or_err) end
      end
      return
    end
    if fd then
      out:resolve(new_file(fd, temp and path_or_err or path))
    else
      out:resolve(nil, path_or_err, code)
    end
  end)
  return out
end


--- open(path, mode, perm): a File (fd, path), or nil, err, code. mode: "r"
-- (default), "r+", "w" (create or truncate), "wx" (create, fail if it
-- exists), "a" (append); perm for a created file (default 0644).
function M.open(path, mode, perm)
  check_string(path, "fs.open: path")
  mode = mode or "r"
  if not MODES[mode] then
    error("fs.open: mode must be r, r+, w, wx or a, got '" .. tostring(mode) .. "'", 2)
  end
  return open_call(function(f)
    return fs_open(path, mode, perm or 420, f)
  end, path)
end


--- mkstemp(template): a new file, mode 0600, named by template with its
-- trailing "XXXXXX" made unique ("/tmp/upload-XXXXXX"): a File whose
-- `path` is the name.
function M.mkstemp(template)
  check_string(template, "fs.mkstemp")
  return open_call(function(f) return fs_mkstemp(template, f) end, nil, true)
end


-- Run start(target) once the file's earlier operations are done; the
-- returned future has its result. The file's queue goes on when the
-- future's task is cancelled.
function File:_op(start)
  local out = new_future()
  local function go()
    if not self.fd then
      out:resolve(nil, "closed", "EBADF")
      return self:_next()
    end
    self._busy = true
    local inner = call(function(f) return start(f, self.fd) end)
    inner:on_done(function(g)
      self._busy = false
      out:resolve(g:result())   -- ignored if out was cancelled
      self:_next()
    end)
  end
  if self._busy then
    local q = self._queue
    if q == nil then q = {} self._queue = q end
    q[#q + 1] = go
  else
    go()
  end
  return out
end


function File:_next()
  local q = self._queue
  if q and q[1] then remove(q, 1)() end
end


--- file:write(data): true once every byte is written, or nil, err, code.
function File:write(data)
  check_string(data, "file:write")
  local out = new_future()
  self:_op(function(f, fd) return fs_write(fd, data, -1, f) end):on_done(function(g)
    local n, err, code = g:result()
    if n then out:resolve(true) else out:resolve(nil, err, code) end
  end)
  return out
end


--- file:read(n, offset): up to n bytes (default 64 KiB; "" at the end of
-- the file), from offset or the file position.
function File:read(n, offset)
  n = n or 65536
  return self:_op(function(f, fd) return fs_read(fd, n, offset or -1, f) end)
end


--- file:close(): true once closed (after every operation asked before).
function File:close()
  local state = self._state
  return self:_op(function(f, fd)
    self.fd = nil
    state.fd = nil
    return fs_close(fd, f)
  end)
end


--- remove(path): true, or nil, err, code.
function M.remove(path)
  check_string(path, "fs.remove")
  return call(function(f) return fs_unlink(path, f) end)
end


--- rename(from, to): true, or nil, err, code (both on one file system).
function M.rename(from, to)
  check_string(from, "fs.rename: from")
  check_string(to, "fs.rename: to")
  return call(function(f) return fs_rename(from, to, f) end)
end


--- copy(from, to): true, or nil, err, code ("EEXIST": to exists).
function M.copy(from, to)
  check_string(from, "fs.copy: from")
  check_string(to, "fs.copy: to")
  return call(function(f) return fs_copyfile(from, to, f) end)
end


--- stat(path) (a symlink is followed): {size, mtime, mode, type = "file"|"directory"|
-- "other"}, or nil, err, code.
function M.stat(path)
  check_string(path, "fs.stat")
  return call(function(f) return fs_stat(path, f) end)
end


--- move(from, to): rename; across file systems (EXDEV) copy, then remove
-- the original. true, or nil, err, code.
function M.move(from, to)
  check_string(from, "fs.move: from")
  check_string(to, "fs.move: to")
  local out = new_future()
  M.rename(from, to):on_done(function(g)
    local ok, err, code = g:result()
    if ok or code ~= "EXDEV" then return out:resolve(ok, err, code) end
    M.copy(from, to):on_done(function(c)
      local cok, cerr, ccode = c:result()
      if not cok then return out:resolve(nil, cerr, ccode) end
      M.remove(from):on_done(function() out:resolve(true) end)
    end)
  end)
  return out
end


M.File = File
return M
