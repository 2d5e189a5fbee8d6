-- spec/filecache_spec.lua: luaserve.filecache, app:static's open-file
-- cache, on a real folder through the real core: hits and misses,
-- negative entries, revalidation on the pool after `valid` seconds (a
-- changed, removed or swapped file is seen; an unchanged one is not read
-- again), one check per entry whatever the load, the memory bound (LRU),
-- and file_open's stamps underneath. tests/test_static.py checks the same
-- over sockets through app:static.

local luaserve = require "luaserve"
local core = require "luaserve.core"
local filecache = require "luaserve.filecache"
local future = require "luaserve.future"
local testing = require "luaserve.testing"

local await, sleep, spawn = luaserve.await, luaserve.sleep, luaserve.spawn
local async = testing.async

local TOP = os.tmpname()
local DIR = TOP .. "/root"
-- Files written once, more than two seconds before the specs that need a
-- stamp: a file changed (ctime) in the last two seconds gets none (it is
-- "racy", see core/static.c), and touch cannot set ctime back.
local OLD = os.tmpname()


local function write(name, content, age, dir)
  dir = dir or DIR
  local f = assert(io.open(dir .. "/" .. name, "wb"))
  f:write(content)
  f:close()
  -- mtime age seconds ago: ETag and Last-Modified differ from a new file's
  if age then assert(os.execute(("touch -d @%d %s/%s"):format(os.time() - age, dir, name))) end
end


-- file_open's values (kind, size, mtime, data, stamp) for a file in OLD,
-- awaited.
local function file_open(path, small, known)
  local f = future.new_internal()
  assert(core.file_open(OLD, path, f, small, known))
  return await(f)
end


describe("luaserve.filecache", function()
  setup(function()
    os.remove(OLD)
    assert(os.execute("mkdir -p " .. OLD))
    write("a.txt", "first", 3600, OLD)
    write("steady.txt", "steady", 3600, OLD)
    write("mid.bin", string.rep("x", 100 * 1024), 3600, OLD)
    os.execute("sleep 2.2")
  end)
  before_each(function()
    os.execute("rm -rf " .. TOP)
    assert(os.execute("mkdir -p " .. DIR .. "/sub"))
    local f = assert(io.open(TOP .. "/secret.txt", "w"))
    f:write("outside the root")
    f:close()
  end)
  teardown(function() os.execute("rm -rf " .. TOP .. " " .. OLD) end)

  describe("file_open's stamp", function()
    it("lets a check skip reading a file that did not change", async(function()
      local kind, size, _, data, stamp = file_open("a.txt")
      assert.same({ "file", 5, "first" }, { kind, size, data })
      assert.equal("string", type(stamp))
      -- unchanged: true, nothing read, the same stamp
      local _, _, _, again, stamp2 = file_open("a.txt", nil, stamp)
      assert.is_true(again)
      assert.equal(stamp, stamp2)
      -- changed (same size, another old time): read again
      write("a.txt", "other", 7200, OLD)
      local _, _, _, changed, stamp3 = file_open("a.txt", nil, stamp)
      assert.equal("other", changed)
      assert.is_nil(stamp3)   -- changed just now: no stamp
    end))

    it("gives no stamp for a file changed in the last seconds", async(function()
      write("new.txt", "fresh", 3600, OLD)
      local _, _, _, data, stamp = file_open("new.txt")
      assert.equal("fresh", data)
      assert.is_nil(stamp)
    end))

    it("reads whole up to the bound it is given, and refuses a bad stamp", async(function()
      local _, _, _, data = file_open("mid.bin")
      assert.equal("userdata", type(data))   -- past 64 KB: an open file
      data:close()
      _, _, _, data = file_open("mid.bin", 128 * 1024)
      assert.equal(100 * 1024, #data)
      local f = future.new_internal()
      assert.has_error(function() core.file_open(DIR, "mid.bin", f, nil, "short") end)
      assert.has_error(function() core.file_open(DIR, "mid.bin", f, -1) end)
    end))
  end)

  it("answers a hit from memory and keeps missing paths", async(function()
    write("a.txt", "cached", 3600)
    local cache = filecache.new(DIR, filecache.options({ valid = 60 }))
    local kind, size, _, data, entry = cache:open("a.txt")
    assert.same({ "file", 6, "cached" }, { kind, size, data })
    assert.is_table(entry)
    write("a.txt", "changed on disk", 3600)
    local _, _, _, data2, entry2 = cache:open("a.txt")
    assert.equal("cached", data2)              -- valid for 60 s: not looked at
    assert.equal(entry, entry2)
    assert.same({ nil, "ENOENT" }, { cache:open("nothing") })
    write("nothing", "now there", 3600)
    assert.same({ nil, "ENOENT" }, { cache:open("nothing") })   -- the negative entry
    local kind3 = cache:open("sub")
    assert.equal("dir", kind3)
    local st = cache:stats()
    assert.same({ 3, 2 }, { st.misses, st.hits })
    assert.equal(3, st.entries)
    assert.equal(0, st.checks)
  end))

  it("sees a changed, removed or created file after valid seconds", async(function()
    write("a.txt", "one", 3600)
    local cache = filecache.new(DIR, filecache.options({ valid = 0.2 }))
    assert.equal("one", select(4, cache:open("a.txt")))
    write("a.txt", "two")   -- same size, changed just now
    await(sleep(0.5))
    assert.equal("two", select(4, cache:open("a.txt")))
    os.remove(DIR .. "/a.txt")
    await(sleep(0.5))
    assert.same({ nil, "ENOENT" }, { cache:open("a.txt") })
    write("a.txt", "three!")
    await(sleep(0.5))
    local kind, size, _, data = cache:open("a.txt")
    assert.same({ "file", 6, "three!" }, { kind, size, data })
  end))

  it("does not serve a file swapped for a symlink that leaves the root", async(function()
    write("a.txt", "inside", 3600)
    local cache = filecache.new(DIR, filecache.options({ valid = 0.2 }))
    assert.equal("inside", select(4, cache:open("a.txt")))
    os.remove(DIR .. "/a.txt")
    assert(os.execute(("ln -s %s/secret.txt %s/a.txt"):format(TOP, DIR)))
    assert(os.execute(("ln -s ../secret.txt %s/rel.txt"):format(DIR)))
    await(sleep(0.5))
    local kind, err = cache:open("a.txt")
    assert.is_nil(kind)
    assert.equal("EXDEV", err)
    assert.same({ nil, "EXDEV" }, { cache:open("rel.txt") })
    assert.same({ nil, "EXDEV" }, { cache:open("rel.txt") })   -- held as negative
  end))

  it("checks an unchanged file without reading it, once for all who wait", async(function()
    local cache = filecache.new(OLD, filecache.options({ valid = 0.1 }))
    local _, _, _, _, entry = cache:open("steady.txt")
    await(sleep(0.3))
    local got = {}
    local tasks = {}
    for i = 1, 20 do
      tasks[i] = spawn(function()
        local _, _, _, data, e = cache:open("steady.txt")
        got[#got + 1] = data
        assert.equal(entry, e)   -- the same entry: the content was not read again
      end)
    end
    for i = 1, 20 do await(tasks[i]) end
    assert.equal(20, #got)
    for i = 1, 20 do assert.equal("steady", got[i]) end
    local st = cache:stats()
    assert.same({ 1, 1 }, { st.misses, st.checks })
  end))

  it("keeps its bytes under max_bytes, dropping the least recently used", async(function()
    local cost = filecache.ENTRY_COST + 5 + 1000   -- "fN.tx" is 5 bytes
    local cache = filecache.new(DIR, filecache.options({ valid = 60,
      max_bytes = 3 * cost, max_file = 2000 }))
    for i = 1, 5 do write(("f%d.tx"):format(i), string.rep(tostring(i), 1000), 3600) end
    cache:open("f1.tx")
    cache:open("f2.tx")
    cache:open("f3.tx")
    cache:open("f1.tx")   -- f2 is now the least recently used
    cache:open("f4.tx")   -- drops f2
    local st = cache:stats()
    assert.same({ 3, 3 * cost, 1 }, { st.entries, st.bytes, st.evictions })
    -- f1, f3 and f4 are held (changed on disk, still answered from memory),
    -- f2 is read again
    for i = 1, 4 do write(("f%d.tx"):format(i), string.rep("n", 1000), 3600) end
    assert.equal(string.rep("1", 1000), select(4, cache:open("f1.tx")))
    assert.equal(string.rep("4", 1000), select(4, cache:open("f4.tx")))
    assert.equal(string.rep("n", 1000), select(4, cache:open("f2.tx")))
    st = cache:stats()
    assert.is_true(st.bytes <= 3 * cost)
    assert.equal(3, st.entries)
    -- a file past max_file is answered, not kept
    write("big.tx", string.rep("b", 3000), 3600)
    local _, size, _, data, entry = cache:open("big.tx")
    assert.same({ 3000, 3000 }, { size, #data })
    assert.is_nil(entry)
    assert.equal(3, cache:stats().entries)
  end))

  it("shares one bound between caches given the same budget", async(function()
    local cost = filecache.ENTRY_COST + 5 + 1000
    local budget = filecache.budget(3 * cost)
    local opts = filecache.options({ valid = 60, max_file = 2000 })
    local a = filecache.new(DIR, opts, budget)
    local b = filecache.new(DIR, opts, budget)
    for i = 1, 4 do write(("s%d.tx"):format(i), string.rep(tostring(i), 1000), 3600) end
    a:open("s1.tx")
    a:open("s2.tx")
    b:open("s3.tx")
    a:open("s1.tx")   -- s2 (a's) is now the least recently used of all three
    b:open("s4.tx")   -- b's entry drops a's
    local sa, sb = a:stats(), b:stats()
    assert.same({ 1, 1, 0 }, { sa.entries, sa.evictions, sb.evictions })
    assert.same({ 2, 3 * cost, 3 * cost }, { sb.entries, sb.shared_bytes, sa.shared_bytes })
    -- s1 is still held by a: changed on disk, answered from memory
    write("s1.tx", string.rep("n", 1000), 3600)
    assert.equal(string.rep("1", 1000), select(4, a:open("s1.tx")))
  end))

  it("keeps files past 64 KB when max_file says so", async(function()
    write("big.bin", string.rep("z", 100 * 1024), 3600)
    local cache = filecache.new(DIR, filecache.options({ max_file = 200 * 1024 }))
    local _, _, _, data, entry = cache:open("big.bin")
    assert.equal(100 * 1024, #data)
    assert.is_table(entry)
  end))

  it("checks its options", function()
    local o = filecache.options(nil)
    assert.same({ 8 * 1024 * 1024, 64 * 1024, 1 }, { o.max_bytes, o.max_file, o.valid })
    assert.equal(5, filecache.options({ valid = 5 }).valid)
    local function err(t) return select(2, pcall(filecache.options, t, "app:static")) end
    assert.matches("cache must be false, true or a table", err("yes"))
    assert.matches("unknown cache option 'size'", err({ size = 1 }))
    assert.matches("valid must be more than 0", err({ valid = 0 }))
    assert.matches("must be a number >= 0", err({ max_bytes = -1 }))
    assert.matches("max_file %(100%) is more than max_bytes %(10%)",
      err({ max_file = 100, max_bytes = 10 }))
    local app = luaserve.app()
    assert.has_error(function() app:static("/s", DIR, { cache = { valid = "1" } }) end)
    app:static("/s", DIR, { cache = false })
    app:static("/t", DIR, { cache = { valid = 2 } })
  end)
end)
