-- tests/apps/ws_client.lua URL [CA]: luaserve.websocket.connect against a
-- server another program runs (tests/test_websocket_client.py); prints
-- one line per step.
local luaserve = require "luaserve"
local websocket = require "luaserve.websocket"
local await = luaserve.await

local base, ca = arg[1], arg[2]
local opts = { headers = { ["X-Test"] = "from lua" }, subprotocols = { "v1", "v2" },
  ca_file = ca, server_name = "localhost" }

local ws = assert(await(websocket.connect(base .. "/who", opts)))
print("subprotocol " .. tostring(ws.subprotocol))
print("who " .. await(ws:receive()))
assert(await(ws:send("text from lua")))
print("echo " .. await(ws:receive()))
local bin = "\0\1\2\3"
assert(await(ws:send(bin, "binary")))
local m, kind = await(ws:receive())
print("binary " .. tostring(m == bin) .. " " .. kind)
local big = string.rep("lua ", 50000)
assert(await(ws:send(big)))
print("big " .. tostring(await(ws:receive()) == big))
print("closed " .. tostring(await(ws:close())))

ws = assert(await(websocket.connect(base .. "/close", opts)))
local _, reason, code, text = await(ws:receive())
print("server close " .. tostring(code) .. " " .. tostring(text))

local none, err = await(websocket.connect(base:gsub(":%d+", ":1") .. "/x", { timeout = 2 }))
print("refused " .. tostring(err))
