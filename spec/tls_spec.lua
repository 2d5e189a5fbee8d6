-- spec/tls_spec.lua: TLS both ways, in one process on the real loop: the
-- server's TLS listener (testing.client with tls) and the HTTP client and
-- raw sockets over https. Certificates are made for the run by
-- tests/certs.py (the openssl command line): a CA and what it signs, a
-- self-signed and an expired certificate, a client certificate.

local luaserve = require "luaserve"
local testing = require "luaserve.testing"
local http = require "luaserve.http"
local tcp = require "luaserve.tcp"
local log = require "luaserve.log"

local await = luaserve.await
local hrtime = require("luaserve.core").hrtime
local server_context = require("luaserve.server").tls_context

local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "spec"
local DIR = os.tmpname()
os.remove(DIR)
assert(os.execute("python3 " .. here .. "/../tests/certs.py " .. DIR .. " >/dev/null") == 0,
  "tests/certs.py failed")
local function pem(name) return DIR .. "/" .. name end

local app = luaserve.app()
app:get("/who", function(req)
  local t = req.tls
  return { scheme = req.scheme, version = t and t.version or nil,
    alpn = t and t.alpn or nil, peer = t and t.peer_subject or luaserve.null,
    port = req.client.port }
end)
app:get("/redirect", function(req)
  return 302, "", { Location = req.query.to }
end)
app:get("/headers", function(req)
  return { authorization = req.headers.authorization or luaserve.null,
    cookie = req.headers.cookie or luaserve.null }
end)


describe("TLS", function()
  local servers = {}
  local function serve(tls)
    local c = testing.client(app, { tls = tls })
    servers[#servers + 1] = c
    return c
  end

  local good, other, expired, selfsigned, mutual, plain
  setup(function()
    good = serve({ cert = pem("chain.pem"), key = pem("server.key") })
    other = serve({ cert = pem("other.pem"), key = pem("other.key") })
    expired = serve({ cert = pem("expired.pem"), key = pem("expired.key") })
    selfsigned = serve({ cert = pem("self.pem"), key = pem("self.key") })
    mutual = serve({ cert = pem("server.pem"), key = pem("server.key"),
      ca = pem("ca.pem"), verify = "required" })
    plain = testing.client(app)
    servers[#servers + 1] = plain
  end)
  teardown(function()
    for _, c in ipairs(servers) do c:close() end
    tcp.close_pools()
    os.execute("rm -rf " .. DIR)
  end)

  describe("the server", function()
    it("serves https: req.scheme, req.tls with the ALPN protocol", function()
      local res = assert(await(http.get(good:url("/who"), { ca_file = pem("ca.pem") })))
      assert.equal(200, res.status)
      local who = res:json()
      assert.equal("https", who.scheme)
      assert.matches("^TLSv1%.[23]$", who.version)
      assert.equal("http/1.1", who.alpn)
      assert.equal(luaserve.null, who.peer)
    end)

    it("plain http has scheme 'http' and no tls", function()
      local who = assert(await(http.get(plain:url("/who")))):json()
      assert.equal("http", who.scheme)
      assert.is_nil(who.version)
    end)

    it("asks for a client certificate when told to, and puts its subject on the request", function()
      local res = assert(await(http.get(mutual:url("/who"), { ca_file = pem("ca.pem"),
        cert_file = pem("client.pem"), key_file = pem("client.key") })))
      local who = res:json()
      assert.matches("CN=test%-client", who.peer)
      assert.matches("O=luaserve tests", who.peer)
    end)

    it("refuses a client without a certificate when one is required", function()
      local res, err = await(http.get(mutual:url("/who"), { ca_file = pem("ca.pem"),
        keepalive = false }))
      assert.is_nil(res)
      assert.matches("^tls: .*certificate required", err)
    end)

    it("refuses a bad certificate file with the file's name", function()
      local ctx, err, which = server_context({ cert = pem("garbage.pem"),
        key = pem("server.key") })
      assert.is_nil(ctx)
      assert.equal("cert", which)
      assert.matches(pem("garbage.pem"), err, 1, true)
      ctx, err, which = server_context({ cert = pem("server.pem"),
        key = pem("other.key") })
      assert.is_nil(ctx)
      assert.equal("key", which)
      assert.matches("does not match", err)
      ctx, err, which = server_context({ cert = pem("server.pem"),
        key = pem("enc.key"), password = "secret" })
      assert.is_not_nil(ctx, err)
      ctx, err = server_context({ cert = pem("server.pem"), key = pem("enc.key") })
      assert.is_nil(ctx)
      assert.matches("encrypted", err)
    end)

    it("says a wrong password is wrong, whatever garbage it decrypts to", function()
      -- About one wrong password in 256 decrypts to bytes whose padding
      -- passes, and fails in the parse instead: 600 tries meet a few.
      for i = 1, 600 do
        local ctx, err = server_context({ cert = pem("server.pem"),
          key = pem("enc.key"), password = "wrong" .. i })
        assert.is_nil(ctx)
        assert.matches("wrong password", err, 1, true)
      end
    end)
  end)

  describe("the client", function()
    it("verifies against ca_file, and fails without it", function()
      assert.equal(200, assert(await(http.get(good:url("/who"),
        { ca_file = pem("ca.pem") }))).status)
      local res, err = await(http.get(good:url("/who")))
      assert.is_nil(res)
      assert.matches("^tls: certificate verify failed: ", err)
    end)

    it("rejects a self-signed certificate unless verify = false", function()
      local res, err = await(http.get(selfsigned:url("/who")))
      assert.is_nil(res)
      assert.equal("tls: certificate verify failed: self-signed certificate", err)
      assert.equal(200, assert(await(http.get(selfsigned:url("/who"),
        { verify = false }))).status)
    end)

    it("checks the name: a certificate for another host is a mismatch", function()
      local res, err = await(http.get(other:url("/who"), { ca_file = pem("ca.pem") }))
      assert.is_nil(res)
      assert.equal("tls: hostname mismatch", err)
      -- the same server, asked for the name on its certificate
      res = assert(await(http.get(other:url("/who"),
        { ca_file = pem("ca.pem"), server_name = "other.example" })))
      assert.equal(200, res.status)
      -- an IP literal is checked as an IP: localhost's certificate has 127.0.0.1
      res = assert(await(http.get(good:url("/who"), { ca_file = pem("ca.pem") })))
      assert.equal(200, res.status)
    end)

    it("rejects an expired certificate", function()
      local res, err = await(http.get(expired:url("/who"), { ca_file = pem("ca.pem") }))
      assert.is_nil(res)
      assert.equal("tls: certificate verify failed: certificate has expired", err)
    end)

    it("reuses a pooled TLS connection without a new handshake", function()
      tcp.close_pools()
      local o = { ca_file = pem("ca.pem") }
      local a = assert(await(http.get(good:url("/who"), o))):json()
      local b = assert(await(http.get(good:url("/who"), o))):json()
      assert.equal(a.port, b.port)   -- the same client connection
      -- other TLS settings: another pool entry, another connection
      local c = assert(await(http.get(good:url("/who"),
        { ca_file = pem("ca.pem"), server_name = "localhost" }))):json()
      assert.not_equal(a.port, c.port)
    end)

    it("speaks TLS to a plain HTTP port: a clear error, no hang", function()
      local res, err = await(http.get("https://127.0.0.1:" .. plain.port .. "/who",
        { timeout = 5 }))
      assert.is_nil(res)
      assert.matches("^tls: ", err)
    end)

    it("a handshake the server never answers times out", function()
      local up = dofile(here .. "/upstream_helper.lua").start()
      local sock = assert(await(tcp.connect("127.0.0.1", up.noread)))
      local t0 = hrtime()
      local ok, err = await(sock:sslhandshake({ timeout = 0.3 }))
      local took = hrtime() - t0
      up.stop()
      assert.is_nil(ok)
      assert.equal("tls: handshake timeout", err)
      assert.is_true(took < 3)
    end)

    it("sslhandshake upgrades a raw socket", function()
      local sock = assert(await(tcp.connect("127.0.0.1", good.port)))
      assert(await(sock:sslhandshake({ ca_file = pem("ca.pem"), server_name = "localhost" })))
      local info = assert(sock:tls_info())
      assert.is_true(info.peer_verified)
      assert.equal("CN=localhost", info.peer_subject)
      assert.is_nil(info.alpn)   -- none asked for
      assert(await(sock:send("GET /who HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")))
      local all = assert(await(sock:receive("*a")))
      assert.matches("^HTTP/1.1 200 OK", all)
      assert.matches('"scheme":"https"', all, 1, true)
    end)

    it("a bad ca_file is a clear error", function()
      local res, err = await(http.get(good:url("/who"), { ca_file = DIR .. "/missing.pem" }))
      assert.is_nil(res)
      assert.matches("^tls: ca_file .*missing%.pem: No such file", err)
    end)

    it("drops credentials on a redirect from https to http", function()
      local secret = { Authorization = "Bearer x", Cookie = "a=1" }
      local to = plain:url("/headers")
      local res = assert(await(http.get(good:url("/redirect?to=" .. to),
        { ca_file = pem("ca.pem"), follow_redirects = 1, headers = secret })))
      assert.same({ authorization = luaserve.null, cookie = luaserve.null }, res:json())
    end)

    it("works inside a sync function, on the pool thread's own loop", function()
      local c = testing.client(here .. "/fixtures/tls_sync_app.lua")
      local res = assert(c:get("/fetch?url=" .. good:url("/who") .. "&ca=" .. pem("ca.pem")))
      c:close()
      assert.equal(200, res.status)
      local body = res:json()
      assert.is_true(body.in_pool)
      assert.equal("https", body.scheme)
    end)
  end)
end)
