-- tests/apps/transport_app.lua: routes for tests/test_transport.py: large
-- bodies for slow readers, a stream that writes until the client is gone,
-- and a detached task that outlives its request. What happened is kept in
-- module-level state (the main Lua state serves every request) and read
-- back through /state.

local luaserve = require "luaserve"

local await, sleep = luaserve.await, luaserve.sleep

local app = luaserve.app()

local state = {
  stream_result = false,    -- what the last failed stream write gave
  stream_writes = 0,
  detached = false,         -- what the detached task saw
}

local blocks = {}   -- MB strings, made once


local function megabytes(n)
  local b = blocks[n]
  if not b then
    b = string.rep("0123456789abcdef", 65536 * n)
    blocks[n] = b
  end
  return b
end


-- A body of `mb` MB in one response.
app:get("/big", function(req)
  local mb = tonumber(req.query.mb) or 1
  return 200, megabytes(mb), { ["Content-Type"] = "application/octet-stream" }
end)


-- A stream of 64 KB chunks until the client is gone (or `mb` MB).
app:get("/stream", function(req)
  local mb = tonumber(req.query.mb) or 1e9
  state.stream_result, state.stream_writes = false, 0
  return luaserve.Response{ stream = function(write)
    local piece = megabytes(1):sub(1, 65536)
    for _ = 1, mb * 16 do
      local ok, err = write(piece)
      if not ok then
        state.stream_result = tostring(err)
        return
      end
      state.stream_writes = state.stream_writes + 1
    end
    state.stream_result = "done"
  end }
end)


-- Writes a chunk, then (resumed before the loop sees the client's reset)
-- holds the loop and writes again: the second write fails inside the write
-- call itself.
app:get("/stream-then-block", function()
  state.stream_result = false
  return luaserve.Response{ stream = function(write)
    write("first")
    await(sleep(0))   -- the chunk goes out; the client resets
    local t = os.clock() + 0.4
    while os.clock() < t do end
    local ok, err = write("second")
    state.stream_result = ok and "written" or tostring(err)
  end }
end)


-- Answers at once; a detached task reads req.client after the request has
-- finished and its client has gone.
app:get("/detached", function(req)
  state.detached = false
  luaserve.spawn_detached(function()
    await(sleep(0.3))
    local ok, v = pcall(function() return req.client.host end)
    state.detached = { ok = ok, value = tostring(v) }
  end)
  return { started = true }
end)


-- What the request knows of its connection: scheme, TLS, client.
app:get("/who", function(req)
  local t = req.tls
  return {
    scheme = req.scheme,
    tls = t and { version = t.version, cipher = t.cipher, alpn = t.alpn or luaserve.null,
      peer_subject = t.peer_subject or luaserve.null,
      peer_verified = t.peer_verified or false } or false,
    client = req.client.host,
  }
end)


app:post("/echo", function(req)
  return 200, req.body, { ["Content-Type"] = "application/octet-stream" }
end)


app:get("/state", function()
  return state
end)

return app
