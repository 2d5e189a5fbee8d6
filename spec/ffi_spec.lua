-- spec/ffi_spec.lua: luaserve.ffi, the core calls a request makes most,
-- through LuaJIT's FFI: reachable from the luaserve binary, in agreement
-- with the classic functions, and safe with a request that is over.

local luaserve = require "luaserve"
local testing = require "luaserve.testing"
local core = require "luaserve.core"
local cffi = require "luaserve.ffi"
local CONN = require("luaserve.request_slots").CONN

describe("luaserve.ffi", function()
  it("reaches the core's exported functions in the luaserve binary", function()
    assert.is_true(cffi.enabled)
    assert.not_equal(core.now_ms, cffi.now_ms)
  end)

  it("reads the same clocks as the classic functions", function()
    local a, b, c = core.now_ms(), cffi.now_ms(), core.now_ms()
    assert.is_true(a <= b and b <= c, ("%s %s %s"):format(a, b, c))
    local h1, h2, h3 = core.hrtime(), cffi.hrtime(), core.hrtime()
    assert.is_true(h1 <= h2 and h2 <= h3, ("%s %s %s"):format(h1, h2, h3))
  end)

  it("buffers an access line, saying whether it is the first waiting", function()
    require("luaserve.log").flush()   -- nothing waits now
    assert.is_true(cffi.log_access("127.0.0.1", "GET", "/x?a=1", "/x", nil, 200, 2,
      0.001, nil))
    -- a second line joins the first: it is not the first waiting
    assert.is_false(cffi.log_access(nil, "GET", "/y", "/y", "/y", 404, 0, 0, "id1"))
    require("luaserve.log").flush()
  end)

  it("says a request is over for a handle that names none", function()
    assert.is_false(cffi.respond(123456789, 200, "x", "text/plain"))
    assert.is_false(cffi.respond(0, 200, "", nil))
  end)

  it("reads the client's address as the classic peer does, and not after the request", function()
    assert.is_nil(cffi.peer(123456789))
    assert.equal("closed", select(2, cffi.peer(123456789)))
    local app = luaserve.app()
    local seen = {}
    app:get("/peer", function(req)
      local ffi_host, ffi_port = cffi.peer(req[CONN])
      local host, port = core.peer(req[CONN])
      seen.handle = req[CONN]
      return { ffi = { ffi_host, ffi_port }, classic = { host, port },
        client = { req.client.host, req.client.port } }
    end)
    local client = testing.client(app)
    local r = client:get("/peer"):json()
    client:close()
    assert.equal("127.0.0.1", r.ffi[1])
    assert.is_true(r.ffi[2] > 0)
    assert.same(r.classic, r.ffi)
    assert.same(r.classic, r.client)
    -- the handle of an answered request names nothing any more
    local host, err = cffi.peer(seen.handle)
    assert.is_nil(host)
    assert.equal("closed", err)
  end)

  it("answers plain responses, HEAD without a body, and keeps the connection", function()
    local app = luaserve.app()
    app:get("/j", function() return { ok = true } end)
    app:get("/t", function() return "text" end)
    app:get("/s", function() return 201, "made" end)
    local client = testing.client(app)
    for _ = 1, 3 do   -- one connection, reused
      local r = client:get("/j")
      assert.equal(200, r.status)
      assert.equal("application/json", r.headers["content-type"])
      assert.same({ ok = true }, r:json())
      assert.equal("text", client:get("/t").body)
      local s = client:get("/s")
      assert.equal(201, s.status)
      assert.equal("made", s.body)
    end
    local h = client:request("HEAD", "/j")
    assert.equal(200, h.status)
    assert.equal("", h.body)
    assert.equal("11", h.headers["content-length"])
    client:close()
  end)
end)
