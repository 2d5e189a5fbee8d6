-- spec/stream_spec.lua: streamed responses (Response{stream = fn}): chunks
-- in order, back-pressure, a client that leaves, an error mid-stream, HEAD.

local luaserve = require "luaserve"
local testing = require "luaserve.testing"
local tcp = require "luaserve.tcp"
local log = require "luaserve.log"

local await, sleep = luaserve.await, luaserve.sleep

-- A log sink for log.set_output: collects what is written.
local function sink(lines)
  return { write = function(self, ...)
    for _, s in ipairs({ ... }) do if lines then lines[#lines + 1] = s end end
  end }
end

describe("streamed responses", function()
  local state = {}
  local app = luaserve.app()

  app:get("/chunks", function()
    return luaserve.Response{ content_type = "text/plain", stream = function(write)
      for i = 1, 3 do
        assert(write("part " .. i .. ";"))
        await(sleep(0.01))
      end
    end }
  end)

  -- Writes until the client is gone; records what write said then.
  app:get("/endless", function()
    state.writes, state.result = 0, nil
    return luaserve.Response{ stream = function(write)
      local piece = string.rep("y", 16384)
      while true do
        local ok, err = write(piece)
        if not ok then state.result = err return end
        state.writes = state.writes + 1
      end
    end }
  end)

  app:get("/fails", function()
    return luaserve.Response{ stream = function(write)
      write("half")
      error("broken stream")
    end }
  end)

  app:get("/bad-write", function()
    return luaserve.Response{ stream = function(write) write(42) end }
  end)

  local client
  setup(function()
    log.set_output(sink())
    client = testing.client(app)
  end)
  teardown(function()
    client:close()
    log.set_output(nil)
  end)

  it("sends each write as a chunk, in order, chunked", function()
    local res = client:get("/chunks")
    assert.equal(200, res.status)
    assert.equal("chunked", res.headers["transfer-encoding"])
    assert.is_nil(res.headers["content-length"])
    assert.equal("part 1;part 2;part 3;", res.body)
  end)

  it("HEAD gets the head and no body", function()
    local res = client:head("/chunks")
    assert.equal(200, res.status)
    assert.equal("", res.body)
  end)

  it("yields while the client does not read, and write gives nil, 'closed' once it leaves",
    testing.async(function()
      local sock = assert(await(tcp.connect(client.host, client.port)))
      assert(await(sock:send("GET /endless HTTP/1.1\r\nHost: x\r\n\r\n")))
      await(sleep(0.3))   -- the client reads nothing: the socket fills up
      local stalled = state.writes
      await(sleep(0.2))
      -- bounded by the kernel's socket buffers, not growing in memory
      assert.equal(stalled, state.writes)
      assert.is_true(stalled < 2000, stalled)
      sock:close()
      local deadline = require("luaserve.core").hrtime() + 5
      while state.result == nil and require("luaserve.core").hrtime() < deadline do
        await(sleep(0.02))
      end
      -- closing the connection wakes the waiting write with nil, "closed"
      -- (before the request is aborted), so the stream can end itself
      assert.equal("closed", state.result)
      assert.equal(200, client:get("/chunks").status)   -- still serving
    end))

  it("an error mid-stream cuts the body (no last chunk) and is logged", function()
    local lines = {}
    log.set_output(sink(lines))
    local res, err = client:get("/fails")
    log.set_output(sink())
    -- the body was cut: the client sees an incomplete response, not a whole one
    assert.is_nil(res)
    assert.is_string(err)
    assert.matches("GET /fails %(route /fails%).*broken stream", table.concat(lines))
    assert.equal(200, client:get("/chunks").status)
  end)

  it("writing a non-string raises in the stream (logged, body cut)", function()
    local res = client:get("/bad-write")
    assert.is_nil(res)
  end)

  it("a stream must be a function", function()
    local bad = luaserve.app()
    bad:get("/", function() return luaserve.Response{ stream = "nope" } end)
    local c = testing.client(bad)
    local res = c:get("/")
    c:close()
    assert.equal(500, res.status)
  end)
end)
