-- spec/redis_spec.lua: luaserve.redis against the real redis-server that
-- tests/run starts (LUASERVE_TEST_REDIS, LUASERVE_TEST_REDISS; pending
-- without them). A restart of the server mid-use: tests/test_db.py.

local luaserve = require "luaserve"
local redis = require "luaserve.redis"
local testing = require "luaserve.testing"
local helper = dofile((debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "spec")
  .. "/upstream_helper.lua")

local await, spawn, wait_for = luaserve.await, luaserve.spawn, luaserve.wait_for
local eventually = helper.eventually
local null = luaserve.null
local URL = os.getenv("LUASERVE_TEST_REDIS")

if not URL then
  describe("luaserve.redis", function()
    pending("needs LUASERVE_TEST_REDIS (make test starts a redis-server)")
  end)
  return
end

local function ok(f)
  local v, err = await(f)
  assert(v ~= nil, tostring(err))
  return v
end


describe("luaserve.redis", function()
  local r
  setup(function()
    r = redis.pool{ url = URL, max = 8 }
    testing.run(function() ok(r:flushdb()) end)
  end)

  describe("parse_url", function()
    it("takes password, user, database, port and TLS from the URL", function()
      assert.same({ tls = false, host = "h", port = 6379, db = 0 }, redis.parse_url("redis://h"))
      assert.same({ tls = true, host = "10.0.0.1", port = 7000, user = "bob", password = "p@ss:w",
        db = 5 }, redis.parse_url("rediss://bob:p%40ss%3Aw@10.0.0.1:7000/5"))
      assert.same({ tls = false, host = "::1", port = 6380, password = "x", db = 0 },
        redis.parse_url("redis://:x@[::1]:6380"))
      assert.is_nil(redis.parse_url("http://h"))
      assert.is_nil(redis.parse_url("redis://h/notanumber"))
      assert.has_error(function() redis.pool{ url = "nope" } end)
    end)
  end)

  describe("commands", function()
    it("map replies to Lua values", testing.async(function()
      assert.equal("OK", ok(r:set("a", "1")))
      assert.equal("1", ok(r:get("a")))
      assert.equal(null, ok(r:get("missing")))
      assert.equal(2, ok(r:incr("a")))
      assert.equal(12, ok(r:incrby("a", 10)))
      assert.equal("PONG", ok(r:ping()))
      assert.equal(2, ok(r:rpush("list", "x", "y")))
      assert.same({ "x", "y" }, ok(r:lrange("list", 0, -1)))
      assert.equal("x", ok(r:lpop("list")))
      assert.equal(2, ok(r:hset("h", "f", "v", "g", 7)))
      assert.same({ f = "v", g = "7" }, ok(r:hgetall("h")))
      assert.same({ "12", null }, ok(r:mget("a", "nothing")))
      assert.equal(2, ok(r:del("a", "h")))
    end))

    it("are binary-safe (hiredis's formatter and reader)", testing.async(function()
      local blob = "\0\1\2\r\n$3\r\nfoo\255" .. string.rep("z", 100000)
      ok(r:set("blob", blob))
      assert.equal(blob, ok(r:get("blob")))
      ok(r:set(42, 3.5))
      assert.equal("3.5", ok(r:get("42")))
    end))

    it("set takes ex, px, nx, xx", testing.async(function()
      ok(r:set("t", "v", { ex = 100 }))
      local ttl = ok(r:ttl("t"))
      assert.truthy(ttl > 90 and ttl <= 100)
      assert.equal(null, ok(r:set("t", "w", { nx = true })))
      assert.equal("OK", ok(r:set("t", "w", { xx = true, px = 5000 })))
      assert.equal("w", ok(r:get("t")))
    end))

    it("give nil, err for error replies", testing.async(function()
      ok(r:set("s", "text"))
      local v, err = await(r:incr("s"))
      assert.is_nil(v)
      assert.matches("^ERR value is not an integer", err)
      local _, err2 = await(r:call("NOSUCHCOMMAND"))
      assert.matches("^ERR unknown command", err2)
      local _, err3 = await(r:lpush("s", "x"))
      assert.matches("^WRONGTYPE", err3)
      assert.equal("PONG", ok(r:ping()))   -- the pool goes on
    end))

    it("give an error, never a resend, when more replies come than asked for", testing.async(function()
      ok(r:set("resend", "0"))
      ok(r:incr("resend"))   -- a pooled connection: a failure there used to be retried
      local v, err = await(r:call("SUBSCRIBE", "resend-a", "resend-b"))   -- two replies
      assert.is_nil(v)
      assert.equal("unexpected data after the replies", err)
      assert.equal("1", ok(r:get("resend")))
    end))

    it("raise on arguments that are not strings or numbers", function()
      assert.has_error(function() r:call("SET", "k", {}) end)
      assert.has_error(function() r:call() end)
    end)
  end)

  describe("pipelines", function()
    it("send every command in one round trip and return every reply", testing.async(function()
      ok(r:del("pa", "pb"))
      local out = ok(r:pipeline(function(p)
        for _ = 1, 500 do p:incr("pa") end
        p:set("pb", "x")
        p:get("pb")
        p:lpush("pb", "y")         -- an error reply, in its place
        p:hgetall("nohash")
        p:get("missing")
      end))
      assert.equal(505, #out)
      assert.equal(500, out[500])
      assert.equal("OK", out[501])
      assert.equal("x", out[502])
      assert.is_true(redis.is_error(out[503]))
      assert.matches("^WRONGTYPE", tostring(out[503]))
      assert.same({}, out[504])
      assert.equal(null, out[505])
    end))

    it("carries MULTI/EXEC", testing.async(function()
      local out = ok(r:pipeline(function(p)
        p:call("MULTI")
        p:set("mx", 1)
        p:incr("mx")
        p:call("EXEC")
      end))
      assert.same({ "OK", 2 }, out[4])
    end))
  end)

  describe("the pool", function()
    it("gives pool timeout when every connection is busy", testing.async(function()
      local one = redis.pool{ url = URL, max = 1, acquire_timeout = 0.2 }
      local blocked = one:call("BLPOP", "never", 1)
      local v, err = await(one:get("x"))
      assert.is_nil(v)
      assert.equal("pool timeout", err)
      assert.equal(null, (await(blocked)))
      assert.equal("PONG", ok(one:ping()))
    end))

    it("queues waiters and serves them in turn", testing.async(function()
      local two = redis.pool{ url = URL, max = 2, acquire_timeout = 5 }
      local fs = {}
      for i = 1, 6 do fs[i] = two:call("BLPOP", "nothing" .. i, 0.2) end
      for i = 1, 6 do assert.equal(null, (await(fs[i]))) end
    end))

    it("times a call out and closes its connection", testing.async(function()
      local quick = redis.pool{ url = URL, max = 2, timeout = 0.2 }
      local v, err = await(quick:call("BLPOP", "never", 5))
      assert.is_nil(v)
      assert.equal("timeout", err)
      local v2, err2 = await(wait_for(r:call("BLPOP", "never", 5), 0.2))
      assert.is_nil(v2)
      assert.equal("timeout", err2)
      -- both blocked clients are gone from the server
      assert.truthy(eventually(function()
        return ok(r:call("INFO", "clients")):match("blocked_clients:(%d+)") == "0"
      end, 5))
    end))

    it("uses AUTH and SELECT from the URL", testing.async(function()
      local db3 = redis.pool{ url = URL:gsub("/0$", "/3") }
      ok(db3:set("only3", "yes"))
      assert.equal("yes", ok(db3:get("only3")))
      assert.equal(null, ok(r:get("only3")))
      local bad = redis.pool{ url = URL:gsub(":[^:@/]+@", ":wrong@") }
      local v, err = await(bad:ping())
      assert.is_nil(v)
      assert.matches("WRONGPASS", err)
      local none = redis.pool{ url = URL:gsub("//:[^@]+@", "//") }
      local _, err2 = await(none:get("x"))
      assert.matches("^NOAUTH", err2)
    end))

    it("speaks TLS to rediss:// URLs", testing.async(function()
      local tls = redis.pool{ url = os.getenv("LUASERVE_TEST_REDISS"),
        tls = { ca_file = os.getenv("LUASERVE_TEST_PG_CERT") } }
      assert.equal("PONG", ok(tls:ping()))
      ok(tls:set("overtls", "1"))
      assert.equal("1", ok(r:get("overtls")))
      local unverified = redis.pool{ url = os.getenv("LUASERVE_TEST_REDISS") }
      local v, err = await(unverified:ping())
      assert.is_nil(v)
      assert.matches("^tls: certificate verify failed", err)
    end))

    it("answers connection refused when the server is not there", testing.async(function()
      local gone = redis.pool{ url = "redis://127.0.0.1:1" }
      local v, err = await(gone:ping())
      assert.is_nil(v)
      assert.equal("connection refused", err)
    end))
  end)

  describe("pub/sub", function()
    it("iterates the messages of channels and patterns", testing.async(function()
      local got = {}
      local sub = r:subscribe("news", "sport")
      local psub = r:psubscribe("weather.*")
      local t1 = spawn(function()
        for m in sub do
          got[#got + 1] = m.channel .. "=" .. m.payload
          if m.payload == "last" then break end
        end
        sub:close()
      end)
      local t2 = spawn(function()
        local m = psub()
        psub:close()
        return m
      end)
      -- messages published before the SUBSCRIBE are not delivered:
      -- publish until each iterator has one
      assert.truthy(eventually(function()
        ok(r:publish("news", "hello"))
        ok(r:publish("weather.paris", "rain"))
        return #got > 0 and t2:done()
      end, 5))
      ok(r:publish("sport", "goal"))
      ok(r:publish("news", "last"))
      await(t1)
      local m = await(t2)
      assert.same({ kind = "pmessage", pattern = "weather.*", channel = "weather.paris",
        payload = "rain" }, m)
      assert.equal("sport=goal", got[#got - 1])
      assert.equal("news=last", got[#got])
      assert.truthy(eventually(function()
        return ok(r:call("PUBSUB", "NUMSUB", "news"))[2] == 0
      end, 5))
    end))

    it("unsubscribes when the iterating task ends", testing.async(function()
      local sub = r:subscribe("quiet")
      local task = spawn(function() for _ in sub do end end)
      assert.truthy(eventually(function()
        return ok(r:call("PUBSUB", "NUMSUB", "quiet"))[2] == 1
      end, 5))
      task:cancel()
      assert.truthy(eventually(function()
        return ok(r:call("PUBSUB", "NUMSUB", "quiet"))[2] == 0
      end, 5))
      assert.is_true(sub.closed)
    end))

    it("ends with err when the server cannot be reached", testing.async(function()
      local sub = redis.pool{ url = "redis://127.0.0.1:1" }:subscribe("x")
      assert.is_nil(sub())
      assert.equal("connection refused", sub.err)
    end))
  end)

  describe("inside sync functions", function()
    local client
    setup(function()
      client = testing.client("spec/fixtures/db_sync_app.lua", { threads = 2 })
    end)
    teardown(function() client:close() end)

    it("runs on the pool thread's own loop", testing.async(function()
      local fs = {}
      for i = 1, 4 do fs[i] = client.app.fns.both("rk" .. i) end
      for i = 1, 4 do
        local v, err = await(fs[i])
        assert(v, tostring(err))
        assert.equal("rk" .. i .. "!", v.redis)
        assert.is_true(v.pool)
      end
      assert.equal("rk1!", ok(r:get("rk1")))
    end))
  end)
end)
