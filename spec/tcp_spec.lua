-- spec/tcp_spec.lua: luaserve.tcp, client sockets and their keep-alive
-- pool, against tests/upstream.py (a scripted HTTP server, a small RESP
-- server, listeners that never accept or never read). A tiny RESP (Redis
-- protocol) client written here in plain Lua on the socket API shows that
-- a driver needs nothing more.

local luaserve = require "luaserve"
local tcp = require "luaserve.tcp"
local testing = require "luaserve.testing"
local core = require "luaserve.core"
local helper = dofile((debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "spec")
  .. "/upstream_helper.lua")

local await, gather, wait_for, spawn = luaserve.await, luaserve.gather,
  luaserve.wait_for, luaserve.spawn
local eventually = helper.eventually


-- ---------------------------------------------------------------------------
-- A RESP client in pure Lua: commands as arrays of bulk strings, replies
-- parsed with receive("*l") and receive(n).

local resp = {}
resp.__index = resp

function resp.connect(host, port)
  local sock, err = await(tcp.connect(host, port, { timeout = 2, read_timeout = 2 }))
  if not sock then return nil, err end
  return setmetatable({ sock = sock }, resp)
end

local function encode(args)
  local out = { "*" .. #args .. "\r\n" }
  for _, a in ipairs(args) do
    a = tostring(a)
    out[#out + 1] = "$" .. #a .. "\r\n" .. a .. "\r\n"
  end
  return table.concat(out)
end

-- One reply: a string, a number, a list, nil (null bulk), or
-- false, message for an error reply; nil, err when the socket fails.
function resp:read_reply()
  local line, err = await(self.sock:receive("*l"))
  if not line then return nil, err end
  local kind, rest = line:sub(1, 1), line:sub(2)
  if kind == "+" then return rest
  elseif kind == "-" then return false, rest
  elseif kind == ":" then return tonumber(rest)
  elseif kind == "$" then
    local n = tonumber(rest)
    if n < 0 then return nil end
    local data, derr = await(self.sock:receive(n + 2))
    if not data then return nil, derr end
    return data:sub(1, n)
  elseif kind == "*" then
    local list = {}
    for i = 1, tonumber(rest) do list[i] = self:read_reply() end
    return list
  end
  return nil, "bad reply: " .. line
end

function resp:call(...)
  local ok, err = await(self.sock:send(encode({ ... })))
  if not ok then return nil, err end
  return self:read_reply()
end

-- Several commands in one write; their replies in order.
function resp:pipeline(cmds)
  local out = {}
  for i, c in ipairs(cmds) do out[i] = encode(c) end
  assert(await(self.sock:send(out)))
  local replies = {}
  for i = 1, #cmds do replies[i] = self:read_reply() end
  return replies
end


describe("luaserve.tcp", function()
  local up

  setup(function() up = helper.start() end)
  teardown(function()
    up.stop()
    tcp.close_pools()
  end)

  describe("a RESP client on top", function()
    it("speaks to the scripted RESP server", function()
      local r = assert(resp.connect("127.0.0.1", up.resp))
      assert.equal("PONG", r:call("PING"))
      assert.equal("OK", r:call("SET", "greeting", "hello\r\nworld"))
      assert.equal("hello\r\nworld", r:call("GET", "greeting"))
      assert.is_nil(r:call("GET", "missing"))
      assert.equal(1, r:call("INCR", "n"))
      assert.equal(2, r:call("INCR", "n"))
      local ok, msg = r:call("NOSUCH")
      assert.is_false(ok)
      assert.matches("^ERR unknown command", msg)
      local big = string.rep("0123456789", 20000)
      assert.equal("OK", r:call("SET", "big", big))
      assert.equal(big, r:call("GET", "big"))
      assert.same({ "OK", 3, "x" }, r:pipeline({ { "SET", "n", "2" }, { "INCR", "n" },
        { "ECHO", "x" } }))
      r.sock:close()
    end)

    it("runs concurrent clients and reuses pooled connections", testing.async(function()
      local function worker(i)
        local r = assert(resp.connect("127.0.0.1", up.resp))
        local v = r:call("ECHO", "w" .. i)
        local reused = r.sock:getreusedtimes()
        assert(r.sock:setkeepalive(10, 10))
        return v .. ":" .. reused
      end
      local first = { await(gather(spawn(worker, 1), spawn(worker, 2), spawn(worker, 3))) }
      assert.same({ "w1:0", "w2:0", "w3:0" }, first)
      local again = { await(gather(spawn(worker, 4), spawn(worker, 5))) }
      assert.same({ "w4:1", "w5:1" }, again)
    end))
  end)

  describe("receive", function()
    local function raw_get(path)
      local sock = assert(await(tcp.connect("127.0.0.1", up.http)))
      assert.is_true(await(sock:send({ "GET ", path, " HTTP/1.1\r\n",
        "Host: x\r\n\r\n" })))
      return sock
    end

    it("reads lines, byte counts, up to a delimiter, and to the close", function()
      local sock = raw_get("/close-delimited")
      assert.equal("HTTP/1.1 200 OK", await(sock:receive("*l")))
      assert.equal("Content-Type", await(sock:receive_until(": ")))
      assert.equal("text/plain", await(sock:receive("*l")))
      assert.equal("", await(sock:receive("*l")))
      assert.equal("unt", await(sock:receive(3)))
      assert.equal("il the close", await(sock:receive("*a")))
      assert.is_true(sock:closed())
      assert.same({ nil, "closed", "" }, { await(sock:receive(1)) })
    end)

    it("finds a delimiter split across chunks", function()
      local sock = raw_get("/chunked")
      await(sock:receive_until("\r\n\r\n"))
      -- "7\r\nhello, \r\n" and "8\r\nchunked \r\n" are written 20 ms apart
      assert.equal("7\r\nhello, ", await(sock:receive_until("\r\n8\r\n")))
      assert.equal("chunked ", await(sock:receive("*l")))
      sock:close()
    end)

    it("receive() gives whatever arrives next", function()
      local sock = raw_get("/ok")
      local data = await(sock:receive())
      assert.matches("^HTTP/1.1 200", data)
      sock:close()
    end)

    it("a close mid-read gives nil, 'closed' and the partial data", function()
      local sock = raw_get("/close-mid-body")
      await(sock:receive_until("\r\n\r\n"))
      assert.same({ nil, "closed", "0123456789" }, { await(sock:receive(100)) })
    end)

    it("a read timeout leaves the socket usable", function()
      local sock = assert(await(tcp.connect("127.0.0.1", up.resp)))
      sock:settimeouts(nil, nil, 0.1)
      assert.same({ nil, "timeout", "" }, { await(sock:receive("*l")) })
      assert.is_false(sock:closed())
      assert(await(sock:send("PING\r\n")))
      assert.equal("+PONG", await(sock:receive("*l")))
      sock:close()
    end)

    it("two receives at once on one socket is an error", function()
      local sock = assert(await(tcp.connect("127.0.0.1", up.resp)))
      local f = sock:receive("*l")
      assert.has_error(function() sock:receive("*l") end)
      f:cancel()
      assert(await(sock:send("PING\r\n")))
      assert.equal("+PONG", await(sock:receive("*l")))
      sock:close()
    end)
  end)

  describe("failures and timeouts", function()
    it("connection refused, dns, connect and send timeouts", function()
      local s = assert(await(tcp.connect("127.0.0.1", up.resp)))
      s:close()
      assert.same({ nil, "closed" }, { await(s:send("x")) })
      assert.same({ nil, "closed" }, { s:close() })
      local _, err = await(tcp.connect("bad..name", 80))
      assert.matches("^dns: ", err)
      assert.same({ nil, "timeout" },
        { await(tcp.connect("127.0.0.1", up.blackhole, { timeout = 0.2 })) })
      local sock = assert(await(tcp.connect("127.0.0.1", up.noread, { send_timeout = 0.2 })))
      assert.same({ nil, "timeout" }, { await(sock:send(string.rep("x", 32 * 1024 * 1024))) })
      assert.is_true(sock:closed())
      assert.has_error(function() tcp.connect("127.0.0.1", 0) end)
      assert.has_error(function() tcp.connect(nil, 80) end)
    end)

    it("connects to localhost by name and to [::1]", function()
      local sock = assert(await(tcp.connect("localhost", up.resp)))
      sock:close()
      -- tests/upstream.py listens on IPv4 only: [::1] is refused, not a bad name
      local _, err = await(tcp.connect("[::1]", up.resp))
      assert.equal("connection refused", err)
    end)

    it("wait_for around connect cancels it", function()
      assert.same({ nil, "timeout" },
        { await(wait_for(tcp.connect("127.0.0.1", up.blackhole, { timeout = 10 }), 0.2)) })
    end)
  end)

  describe("the pool", function()
    it("setkeepalive hands the connection over; connect takes it back", function()
      tcp.close_pools()
      local a = assert(await(tcp.connect("127.0.0.1", up.resp)))
      local port = a:local_port()
      assert.equal(0, a:getreusedtimes())
      assert.is_true(a:setkeepalive(5, 4))
      assert.is_true(a:closed())
      assert.same({ nil, "closed" }, { a:setkeepalive() })
      local b = assert(await(tcp.connect("127.0.0.1", up.resp)))
      assert.equal(1, b:getreusedtimes())
      assert.equal(port, b:local_port())
      assert(await(b:send("PING\r\n")))
      assert.equal("+PONG", await(b:receive("*l")))
      b:close()
      local c = assert(await(tcp.connect("127.0.0.1", up.resp, { reuse = false })))
      assert.equal(0, c:getreusedtimes())
      c:close()
    end)

    it("refuses a connection with unread data", function()
      local a = assert(await(tcp.connect("127.0.0.1", up.resp)))
      assert(await(a:send("PING\r\nPING\r\n")))
      assert.equal("+PONG", await(a:receive(5)))   -- "\r\n+PONG\r\n" unread
      assert.same({ nil, "unread data" }, { a:setkeepalive() })
      assert.is_true(a:closed())
    end)

    it("keeps at most size idle connections, closes them when idle too long", function()
      tcp.close_pools()
      local key = "127.0.0.1:" .. up.resp
      local socks = {}
      for i = 1, 4 do socks[i] = assert(await(tcp.connect("127.0.0.1", up.resp))) end
      for i = 1, 4 do assert(socks[i]:setkeepalive(0.2, 3)) end
      assert.equal(3, tcp.pool_stats()[key])
      assert.is_true(eventually(function() return tcp.pool_stats()[key] == nil end, 3))
    end)

    it("drops an idle connection the peer closes", function()
      tcp.close_pools()
      local key = "127.0.0.1:" .. up.resp
      local a = assert(await(tcp.connect("127.0.0.1", up.resp)))
      local b = assert(await(tcp.connect("127.0.0.1", up.resp)))
      assert(await(b:send("QUIT\r\n")))   -- the server answers, then closes
      assert.equal("+OK", await(b:receive("*l")))
      assert(a:setkeepalive(10))
      assert(b:setkeepalive(10))
      assert.equal(2, tcp.pool_stats()[key])
      assert.is_true(eventually(function() return tcp.pool_stats()[key] == 1 end, 3))
      local c = assert(await(tcp.connect("127.0.0.1", up.resp)))
      assert.equal("PONG", (setmetatable({ sock = c }, resp)):call("PING"))
      c:close()
    end)
  end)

  describe("garbage collection", function()
    it("closes a socket dropped without close()", function()
      local before = up.stats().stall_aborted
      do
        local sock = assert(await(tcp.connect("127.0.0.1", up.http)))
        assert(await(sock:send("GET /stall-headers HTTP/1.1\r\nHost: x\r\n\r\n")))
      end
      assert.is_true(eventually(function() return up.stats().stall_open > 0 end, 5))
      collectgarbage()
      collectgarbage()
      assert.is_true(eventually(function()
        return up.stats().stall_aborted > before end, 5))
    end)
  end)
end)
