-- tests/apps/ws_app.lua: WebSocket and SSE routes for tests/test_websocket.py
-- and tests/test_sse.py. What happened to sessions is kept in
-- luaserve.shared and read back through GET /state.

local luaserve = require "luaserve"
local shared = luaserve.shared

local await, sleep = luaserve.await, luaserve.sleep

local app = luaserve.app()

local function count(key) shared.incr(key, 1, 0) end

-- Echo, with subprotocols and a small message limit on /ws/small.
local function echo(ws)
  for msg, kind in ws:messages() do
    if not await(ws:send(msg, kind)) then return end
  end
end
app:websocket("/ws/echo", echo, { subprotocols = { "chat.v2", "chat.v1" } })
app:websocket("/ws/small", echo, { max_message = 1024 })

app:websocket("/ws/who", function(ws, req)
  await(ws:send(luaserve.json.encode({ subprotocol = ws.subprotocol or luaserve.null,
    scheme = req.scheme, header = req.headers["x-test"] or luaserve.null })))
  await(ws:receive())
end, { subprotocols = { "chat.v1" } })

-- A handler that raises after its first message: 1011, logged.
app:websocket("/ws/fails", function(ws)
  await(ws:receive())
  error("handler bug in the session")
end)

-- A handler that returns at once: 1000.
app:websocket("/ws/bye", function(ws)
  await(ws:send("bye"))
end)

-- Waits for messages until it is cancelled (the client vanishing).
app:websocket("/ws/wait", function(ws)
  count("wait_started")
  luaserve.on_cancel(function() count("wait_cancelled") end)
  while true do
    local msg = await(ws:receive())
    if msg == nil then count("wait_closed") return end
  end
end)

-- Back-pressure: two tasks each send N 64 KB binary messages and await
-- every send; "waited" counts the sends that had to wait for the socket.
-- Then one text message: "done <sent> <waited>".
app:websocket("/ws/flood", function(ws)
  local n = tonumber((await(ws:receive()))) or 0
  local chunk = string.rep("x", 65536)
  local waited = 0
  local function sender()
    for _ = 1, n do
      local f = ws:send(chunk, "binary")
      if not f:done() then waited = waited + 1 end
      if not await(f) then return end
    end
  end
  local a, b = luaserve.spawn(sender), luaserve.spawn(sender)
  await(a)
  await(b)
  await(ws:send(("done %d %d"):format(2 * n, waited)))
  await(ws:receive())
end)

-- Pings fast and gives up fast on a client that does not answer.
app:websocket("/ws/ping", echo, { ping_interval = 0.3, ping_timeout = 0.3 })

-- One room: every message to everyone.
local room = {}
app:websocket("/ws/room", function(ws, req)
  room[ws] = true
  await(ws:send("joined"))
  for msg in ws:messages() do
    for member in pairs(room) do member:send(msg) end
  end
  room[ws] = nil
end)
app:get("/room", function() local n = 0 for _ in pairs(room) do n = n + 1 end return { members = n } end)

-- SSE: events 1.. after Last-Event-ID, `count` of them, `every` seconds.
app:get("/events", function(req)
  local last = tonumber(req.headers["last-event-id"]) or 0
  local n = tonumber(req.query.count) or 3
  return luaserve.sse(function(send)
    for i = last + 1, last + n do
      if not send{ id = i, event = "tick", data = { n = i } } then return end
      await(sleep(tonumber(req.query.every) or 0.05))
    end
    send{ data = "line one\nline two" }
  end, { ping = tonumber(req.query.ping) or 15 })
end)

-- Streams an upstream body through without holding it.
local http = require "luaserve.http"
app:get("/proxy", function(req)
  local res, err = await(http.get(req.query.url, { stream = true }))
  if not res then return 502, { detail = err } end
  return luaserve.Response{ content_type = "application/octet-stream", stream = function(write)
    for chunk in res:chunks() do
      if not write(chunk) then res:close() return end
    end
  end }
end)

app:get("/state", function()
  return { wait_started = shared.get("wait_started") or 0,
    wait_cancelled = shared.get("wait_cancelled") or 0,
    wait_closed = shared.get("wait_closed") or 0 }
end)

return app
