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

  it("writes 'luaserve: LEVEL: message' lines", function()
    log.error("it broke")
    log.warn("careful")
    log.info("fyi")
    assert.equal("luaserve: error: it broke\nluaserve: warn: careful\nluaserve: info: fyi\n",
      text())
  end)

  it("drops lines below the level", function()
    log.set_level("warn")
    log.debug("d") log.info("i") log.warn("w") log.error("e")
    assert.equal("luaserve: warn: w\nluaserve: error: e\n", text())
    log.set_level("debug")
    log.debug("d")
    assert.matches("debug: d", text())
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

    it("are written at once by flush()", function()
      client:get("/hello")
      log.flush()
      assert.matches('"GET /hello" 200', text())
    end)

    it("go before an error line, in order", function()
      client:get("/hello")
      log.error("after")
      assert.matches('"GET /hello" 200.*luaserve: error: after', text())
    end)

    it("are not written above the info level", function()
      log.set_level("warn")
      client:get("/hello")
      log.flush()
      assert.equal("", text())
    end)
  end)
end)
