-- spec/websocket_spec.lua: luaserve.websocket, both ends in one process on
-- the real loop: app:websocket routes through the test client
-- (client:websocket), the client (websocket.connect), messages, close
-- codes, limits, subprotocols, permessage-deflate, and the client inside a
-- sync function.

local luaserve = require "luaserve"
local testing = require "luaserve.testing"
local websocket = require "luaserve.websocket"

local await, sleep = luaserve.await, luaserve.sleep

local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "spec"

local app = luaserve.app()
app:websocket("/echo", function(ws)
  for msg, kind in ws:messages() do await(ws:send(msg, kind)) end
end)
app:websocket("/items/{id:int}", function(ws, req)
  await(ws:send(("item %d %s"):format(req.params.id, ws.subprotocol or "-")))
  await(ws:receive())
end, { subprotocols = { "b", "a" } })
app:websocket("/small", function(ws)
  await(ws:receive())
end, { max_message = 100 })
app:websocket("/closer", function(ws)
  await(ws:close(4000, "custom reason"))
end)
app:websocket("/fails", function(ws) error("boom in session") end)
local api = app:group("/api")
api:websocket("/ws", function(ws) await(ws:send("grouped")) end)


describe("websocket", function()
  local client
  setup(function() client = testing.client(app) end)
  teardown(function() client:close() end)

  it("echoes text and binary; messages() ends at the close", testing.async(function()
    local ws = assert(client:websocket("/echo"))
    assert.same({ true }, { await(ws:send("hello")) })
    assert.same({ "hello", "text" }, { await(ws:receive()) })
    assert(await(ws:send("\0\1\2", "binary")))
    assert.same({ "\0\1\2", "binary" }, { await(ws:receive()) })
    local big = string.rep("abc", 100000)
    assert(await(ws:send(big)))
    assert.equal(big, (await(ws:receive())))
    assert.equal(1000, await(ws:close()))
    assert.same({ nil, "close 1000", 1000, "" }, { await(ws:receive()) })
    assert.same({ nil, "closed" }, { await(ws:send("late")) })
  end))

  it("routes like any route: typed parameters, groups, subprotocols", testing.async(function()
    local ws = assert(client:websocket("/items/7", { subprotocols = { "a", "z" } }))
    assert.equal("a", ws.subprotocol)
    assert.equal("item 7 a", (await(ws:receive())))
    ws:close()
    local res = client:get("/items/x", { headers = { Upgrade = "websocket" } })
    assert.equal(422, res.status)
    ws = assert(client:websocket("/api/ws"))
    assert.equal("grouped", (await(ws:receive())))
  end))

  it("refuses a handshake to a path that is no WebSocket, and plain GETs", testing.async(function()
    local ws, err = client:websocket("/nowhere")
    assert.is_nil(ws)
    assert.equal("handshake failed: status 404", err)
    assert.equal(426, client:get("/echo").status)
  end))

  it("closes 1009 past max_message, and says the peer's code and reason", testing.async(function()
    local ws = assert(client:websocket("/small", { deflate = false }))
    assert(await(ws:send(string.rep("x", 200))))
    assert.same({ nil, "close 1009", 1009, "" }, { await(ws:receive()) })
    ws = assert(client:websocket("/closer"))
    assert.same({ nil, "close 4000", 4000, "custom reason" }, { await(ws:receive()) })
  end))

  it("a session that raises closes 1011 and logs the route", testing.async(function()
    local reason, code
    local out = testing.logged(function()
      local ws = assert(client:websocket("/fails"))
      local _
      _, reason, code = await(ws:receive())
    end)
    assert.equal(1011, code)
    assert.equal("close 1011", reason)
    assert.matches("GET /fails %(route /fails%) websocket: .*boom in session", out)
  end))

  it("refuses misuse: text that is not UTF-8, a bad close code", testing.async(function()
    local ws = assert(client:websocket("/echo"))
    assert.has_error(function() ws:send("\255\254") end,
      "websocket: a text message must be valid UTF-8 (send it as binary)")
    assert.has_error(function() ws:close(1005) end)
    ws:close()
  end))

  it("echoes a big message with the deflate option on and off", testing.async(function()
    local big = string.rep("compress me ", 10000)
    for _, deflate in ipairs({ true, false }) do
      local ws = assert(client:websocket("/echo", { deflate = deflate }))
      assert(await(ws:send(big)))
      assert.equal(big, (await(ws:receive())))
      ws:close()
    end
  end))

  it("connects from a sync function, on the pool thread's loop", function()
    local c = testing.client(here .. "/fixtures/ws_sync_app.lua")
    local res = c:get("/relay?port=" .. client.port)
    c:close()
    assert.equal(200, res.status)
    assert.same({ echoed = "from the pool", pool = true }, res:json())
  end)

  it("a bad url is a clear error", testing.async(function()
    assert.same({ nil, "bad url: http://x/" }, { await(websocket.connect("http://x/")) })
    assert.has_error(function() websocket.connect(42) end)
  end))
end)
