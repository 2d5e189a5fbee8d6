-- spec/fs_spec.lua: luaserve.fs: file operations on the thread pool, their
-- errors, the order of a file's operations, descriptors and temp files of
-- a cancelled task, and the same in sync functions.

local luaserve = require "luaserve"
local fs = require "luaserve.fs"
local future = require "luaserve.future"
local testing = require "luaserve.testing"

local await, sleep, spawn = luaserve.await, luaserve.sleep, luaserve.spawn


-- This process's open descriptors (listed in-process: a child such as
-- `ls` would race with the pipe popen closes after it started).
local function open_fds()
  return #assert(require("luaserve.core").scandir("/proc/self/fd"))
end


local exists = dofile((debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "spec")
  .. "/files_helper.lua").exists


describe("luaserve.fs", function()
  local base = os.tmpname()   -- a unique name; the files below are base.*
  teardown(function()
    for _, s in ipairs({ "", ".a", ".b", ".c", ".d", ".e" }) do os.remove(base .. s) end
  end)

  it("writes, reads, stats and removes a file, binary safe", testing.async(function()
    local data = string.rep("\0\1\2\255", 50000)
    local f = assert(await(fs.open(base .. ".a", "w")))
    assert.equals(base .. ".a", f.path)
    assert.is_true(await(f:write(data)))
    assert.is_true(await(f:write("tail")))
    assert.is_true(await(f:close()))
    local st = await(fs.stat(base .. ".a"))
    assert.equals(#data + 4, st.size)
    assert.equals("file", st.type)
    f = assert(await(fs.open(base .. ".a")))
    assert.equals(data:sub(1, 10), await(f:read(10)))
    assert.equals("tail", await(f:read(4, #data)))    -- at an offset
    assert.equals(#data + 4 - 10, #await(f:read(4 * 1024 * 1024)))  -- pread: no move
    assert.is_true(await(f:close()))
    assert.same({ nil, "closed", "EBADF" }, { await(f:read(1)) })
    assert.is_true(await(fs.remove(base .. ".a")))
    assert.is_false(exists(base .. ".a"))
  end))

  it("gives nil, message, code on failure", testing.async(function()
    assert.same({ nil, "no such file or directory", "ENOENT" },
      { await(fs.open(base .. ".missing")) })
    assert.same({ nil, "no such file or directory", "ENOENT" },
      { await(fs.stat(base .. ".missing")) })
    assert.same({ nil, "no such file or directory", "ENOENT" },
      { await(fs.remove(base .. ".missing")) })
    local f = assert(await(fs.open(base .. ".b", "wx")))
    await(f:close())
    assert.same({ nil, "file already exists", "EEXIST" }, { await(fs.open(base .. ".b", "wx")) })
  end))

  it("raises on misuse", function()
    assert.has_error(function() fs.open(42) end, "fs.open: path: expected a string, got number")
    assert.has_error(function() fs.open(base, "rw") end,
      "fs.open: mode must be r, r+, w, wx or a, got 'rw'")
  end)

  it("makes temp files (mode 0600), renames, copies and moves", testing.async(function()
    local f = assert(await(fs.mkstemp(base .. "-XXXXXX")))
    assert.matches("^" .. base:gsub("%p", "%%%0") .. "%-%w%w%w%w%w%w$", f.path)
    assert.equals(384, await(fs.stat(f.path)).mode)   -- 0600
    await(f:write("moved"))
    await(f:close())
    assert.is_true(await(fs.rename(f.path, base .. ".c")))
    assert.is_true(await(fs.copy(base .. ".c", base .. ".d")))
    assert.same({ nil, "file already exists", "EEXIST" },
      { await(fs.copy(base .. ".c", base .. ".d")) })
    assert.is_true(await(fs.move(base .. ".d", base .. ".e")))
    assert.is_false(exists(base .. ".d"))
    local h = io.open(base .. ".e", "rb")
    assert.equals("moved", h:read("*a"))
    h:close()
  end))

  it("runs a file's operations in order, also when nobody awaits them", testing.async(function()
    local f = assert(await(fs.open(base .. ".a", "w")))
    for i = 1, 50 do   -- quiet: dropped on purpose, not a forgotten await
      future.quiet(f:write(("%03d,"):format(i)))
    end
    assert.is_true(await(f:close()))
    local h = io.open(base .. ".a", "rb")
    local got = h:read("*a")
    h:close()
    local want = {}
    for i = 1, 50 do want[i] = ("%03d,"):format(i) end
    assert.equals(table.concat(want), got)
  end))

  it("closes what a cancelled task was opening, and removes its temp file", testing.async(function()
    local before = open_fds()
    local dir_before = {}
    for i = 1, 20 do
      local t = spawn(function()
        return await(fs.mkstemp(base .. "-cancel-XXXXXX"))
      end)
      t:cancel()
      local t2 = spawn(function() return await(fs.open(base .. ".b", "r")) end)
      t2:cancel()
    end
    await(sleep(0.3))
    assert.equals(before, open_fds())
    local p = io.popen("ls " .. base .. "-cancel-* 2>/dev/null | wc -l")
    assert.equals("0", p:read("*l"))
    p:close()
  end))

  it("closes the descriptor of a file object that was collected open", testing.async(function()
    local before = open_fds()
    -- Opened in a coroutine of its own, which then dies: nothing (no
    -- recycled task stack) keeps the file object once it is dropped.
    local inside
    local co = coroutine.wrap(function()
      local f = assert(await(fs.open(base .. ".b", "r")))
      inside = open_fds()
      assert(f.fd)   -- f lives until here
    end)
    co()
    co = nil
    assert.equals(before + 1, inside)
    for _ = 1, 3 do
      collectgarbage()
      await(sleep(0.1))
    end
    assert.equals(before, open_fds())
  end))
end)


describe("luaserve.fs in sync functions", function()
  local client
  setup(function()
    client = testing.client("spec/fixtures/forms_sync_app.lua", { threads = 2 })
  end)
  teardown(function() client:close() end)

  it("works on the pool thread's loop", testing.async(function()
    local path = os.tmpname()
    local data = string.rep("x", 100000) .. "\0end"
    local size, back = await(client.app.fns.write_read(path, data))
    assert.equals(#data, size)
    assert.equals(data, back)
    assert.is_false(exists(path))
    local h = io.open(path, "wb") h:write(data) h:close()
    local n, hex = await(client.app.fns.file_sha256(path))
    os.remove(path)
    assert.equals(#data, n)
    assert.equals(require("luaserve.crypto").sha256(data, "hex"), hex)
  end))
end)
