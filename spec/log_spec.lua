-- spec/log_spec.lua: luaserve.log, levels and the buffered access lines.

local luaserve = require "luaserve"
local testing = require "luaserve.testing"
local log = require "luaserve.log"

local await, sleep = luaserve.await, luaserve.sleep


describe("luaserve.log", function()
  local lines, prev
  before_each(function()
    lines = {}
    prev = log.set_output({ write = function(_, ...)
      lines[#lines + 1] = table.concat({ ... })
    end })
  end)
  after_each(function()
    log.set_output(prev)
    log.set_level("info")
  end)
  local function text() return table.concat(lines) end

  local T = "%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ"

  it("writes 'TIME LEVEL message' lines", function()
    log.error("it broke")
    log.warn("careful")
    log.info("fyi")
    assert.equal(3, #lines)
    assert.matches("^" .. T .. " ERROR it broke\n$", lines[1])
    assert.matches("^" .. T .. " WARN  careful\n$", lines[2])
    assert.matches("^" .. T .. " INFO  fyi\n$", lines[3])
  end)

  it("formats arguments, and appends a table of fields", function()
    log.info("user %s logged in after %d tries", "ana", 3)
    log.warn("slow upstream", { ms = 812, host = "api.example", note = "two words" })
    assert.matches(" INFO  user ana logged in after 3 tries\n$", lines[1])
    assert.matches(" WARN  slow upstream ", lines[2])
    assert.matches(" ms=812", lines[2])
    assert.matches(" host=api.example", lines[2])
    assert.matches(' note="two words"', lines[2])
  end)

  it("drops lines below the level", function()
    log.set_level("warn")
    log.debug("d") log.info("i") log.warn("w") log.error("e")
    assert.equal(2, #lines)
    assert.matches("WARN  w\n$", lines[1])
    assert.matches("ERROR e\n$", lines[2])
    log.set_level("debug")
    log.debug("d")
    assert.matches("DEBUG d\n$", lines[3])
    assert.equal("debug", log.level())
  end)

  describe("as JSON", function()
    after_each(function() log.set_format("text") end)

    it("writes one object per line: time, level, message, fields", function()
      log.set_format("json")
      log.error("it broke: \"quoted\"\n\tand \255 not UTF-8", { code = 7, ok = false })
      assert.equal(1, #lines)
      assert.matches("^{[^\n]*}\n$", lines[1])
      local v = luaserve.json.decode(lines[1])
      assert.matches("^" .. T .. "$", v.time)
      assert.equal("error", v.level)
      assert.equal("it broke: \"quoted\"\n\tand \239\191\189 not UTF-8", v.message)
      assert.equal(7, v.code)
      assert.is_false(v.ok)
    end)

    it("refuses an unknown format", function()
      assert.has_error(function() log.set_format("xml") end,
        "log format must be text or json, got xml")
    end)
  end)

  it("raises on an unknown level", function()
    assert.has_error(function() log.set_level("loud") end,
      "log level must be debug, info, warn or error, got loud")
  end)

  describe("access lines", function()
    local app = luaserve.app()
    app:get("/hello", function() return "hi" end)
    local client
    setup(function() client = testing.client(app, { access_log = true }) end)
    teardown(function() client:close() end)

    it("are buffered, then written within about 100 ms", function()
      client:get("/hello?x=1")
      client:get("/nowhere")
      local deadline = os.time() + 3
      while text() == "" and os.time() < deadline do await(sleep(0.02)) end
      local out = text()
      assert.matches('127%.0%.0%.1 %- "GET /hello%?x=1" 200 2 [%d.]+ms\n', out)
      assert.matches('"GET /nowhere" 404 %d+ [%d.]+ms\n', out)
    end)

    it("show a target's control bytes and quotes as \\xNN, an unknown client as -", function()
      local core = require "luaserve.core"
      local line = core.log_access("10.0.0.1", "GET", '/a"b\1c\127', "/a", nil, 200, 5,
        0.00123, "r1", true)
      assert.matches('INFO  10%.0%.0%.1 %- "GET /a\\x22b\\x01c\\x7f" 200 5 1%.23ms id=r1\n$', line)
      line = core.log_access(nil, "POST", "/x", "/x", "/x", 404, 0, 0, nil, true)
      assert.matches('INFO  %- %- "POST /x" 404 0 0%.00ms\n$', line)
    end)

    it("are written at once by flush()", function()
      client:get("/hello")
      log.flush()
      assert.matches('"GET /hello" 200', text())
    end)

    it("go before an error line, in order", function()
      client:get("/hello")
      log.error("after")
      assert.matches('"GET /hello" 200.*ERROR after', text())
    end)

    it("as JSON carry method, path, target, route, status, bytes, duration, client", function()
      log.set_format("json")
      client:get("/hello?x=1")
      log.flush()
      log.set_format("text")
      local v = luaserve.json.decode(text())
      assert.same({ "info", "access", "GET", "/hello", "/hello?x=1", "/hello", 200, 2, "127.0.0.1" },
        { v.level, v.type, v.method, v.path, v.target, v.route, v.status, v.bytes, v.client })
      assert.equal("GET /hello?x=1 200", v.message)
      assert.is_number(v.duration_ms)
      assert.is_nil(v.request_id)
    end)

    it("are not written above the info level", function()
      log.set_level("warn")
      client:get("/hello")
      log.flush()
      assert.equal("", text())
    end)
  end)
end)
