-- spec/proxy_spec.lua: luaserve.proxy, who may set the client's address
-- and scheme (the binary's side: tests/test_balancer.py).

local proxy = require "luaserve.proxy"
local luaserve = require "luaserve"
local testing = require "luaserve.testing"


describe("luaserve.proxy", function()
  describe("parse_allow", function()
    it("trusts addresses and networks, IPv4 and IPv6, mapped IPv4 too", function()
      local trusted = assert(proxy.parse_allow("127.0.0.1, 10.0.0.0/8,::1, 2001:db8::/32"))
      for _, h in ipairs({ "127.0.0.1", "10.255.0.1", "::1", "::ffff:127.0.0.1",
                           "2001:db8:ffff::1", "::ffff:10.1.2.3" }) do
        assert.is_true(trusted(h), h)
      end
      for _, h in ipairs({ "127.0.0.2", "11.0.0.1", "::2", "2001:db9::1", "fe80::1",
                           "unknown", "", "example.com" }) do
        assert.is_false(trusted(h), h)
      end
    end)

    it("handles prefixes that are not whole bytes", function()
      local trusted = assert(proxy.parse_allow("192.168.0.0/23"))
      assert.is_true(trusted("192.168.1.200"))
      assert.is_false(trusted("192.168.2.1"))
    end)

    it("trusts anyone with *", function()
      assert.is_true(assert(proxy.parse_allow("*"))("203.0.113.9"))
    end)

    it("refuses what is not an address or a network", function()
      local ok, err = proxy.parse_allow("10.0.0.0/8, proxy.local")
      assert.is_nil(ok)
      assert.matches("proxy.local: not an IP address or CIDR", err, 1, true)
      ok, err = proxy.parse_allow("10.0.0.0/33")
      assert.is_nil(ok)
      assert.matches("prefix too long", err, 1, true)
      assert.is_nil((proxy.parse_allow("1.2.3.256")))
      assert.is_nil((proxy.parse_allow("1:2:3")))
    end)
  end)

  describe("bytes_of", function()
    it("reads the forms of IPv6", function()
      assert.same(proxy.bytes_of("::1"), proxy.bytes_of("0:0:0:0:0:0:0:1"))
      assert.same(proxy.bytes_of("::ffff:1.2.3.4"), proxy.bytes_of("1.2.3.4"))
      assert.same(proxy.bytes_of("[2001:db8::1]"), proxy.bytes_of("2001:db8:0:0:0:0:0:1"))
      assert.is_nil(proxy.bytes_of("2001:db8::1::2"))
    end)
  end)

  describe("the access line", function()
    local app = luaserve.app()
    app:get("/who", function(req) return req.client.host end)
    local client
    setup(function()
      client = testing.client(app, { access_log = true, proxy = "127.0.0.1" })
    end)
    teardown(function() client:close() end)

    it("names the forwarded client from a trusted proxy, else the peer", function()
      local out = testing.logged(function()
        local r = client:get("/who", { headers = { ["X-Forwarded-For"] = "203.0.113.7" } })
        assert.equal("203.0.113.7", r.body)
        assert.equal("127.0.0.1", client:get("/who").body)
      end)
      assert.matches('203%.0%.113%.7 %- "GET /who" 200 11 ', out)
      assert.matches('127%.0%.0%.1 %- "GET /who" 200 9 ', out)
    end)
  end)
end)
