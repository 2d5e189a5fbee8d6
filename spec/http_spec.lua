-- spec/http_spec.lua: luaserve.http, the HTTP client, against real servers
-- on loopback: a second luaserve app served in-process (testing.client) for
-- the normal cases, and tests/upstream.py, a scripted upstream, for the
-- edge cases (chunked and close-delimited bodies, stalls, a close mid-body,
-- a listener that never accepts or never reads, oversize responses).

local luaserve = require "luaserve"
local testing = require "luaserve.testing"
local http = require "luaserve.http"
local tcp = require "luaserve.tcp"
local core = require "luaserve.core"
local helper = dofile((debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "spec")
  .. "/upstream_helper.lua")

local await, sleep, gather, wait_for, spawn = luaserve.await, luaserve.sleep,
  luaserve.gather, luaserve.wait_for, luaserve.spawn
local hrtime = core.hrtime
local eventually = helper.eventually


-- The in-process upstream: a luaserve app.
local upstream_app = luaserve.app()

upstream_app:get("/json", function() return { message = "Hello, World!" } end)

upstream_app:get("/peer", function(req)
  return { port = req.client.port }
end)

upstream_app:get("/slow", function(req)
  await(sleep((tonumber(req.query.ms) or 100) / 1000))
  return { slept = true }
end)

local function echo(req)
  return { method = req.method, target = req.target, body = req.body,
    ctype = req.headers["content-type"], x = req.headers["x-test"],
    ua = req.headers["user-agent"], host = req.headers.host }
end
for _, m in ipairs({ "get", "post", "put", "patch", "delete", "options" }) do
  upstream_app[m](upstream_app, "/echo", echo)
end

upstream_app:get("/text", function() return 200, "plain words",
  { ["Content-Type"] = "text/plain", ["X-Multi"] = { "a", "b" } } end)

-- A streamed upstream answer the handler never reads nor closes.
upstream_app:get("/abandon", function(req)
  local res = assert(await(http.get("http://127.0.0.1:" .. req.query.port .. "/text",
    { stream = true })))
  return { status = res.status }
end)
upstream_app:get("/close", function()
  return 200, "bye", { Connection = "close" }
end)


describe("luaserve.http", function()
  local up_client, base, up

  setup(function()
    up_client = testing.client(upstream_app)
    base = "http://127.0.0.1:" .. up_client.port
    up = helper.start()
  end)

  teardown(function()
    up.stop()
    up_client:close()
    tcp.close_pools()
  end)

  describe("requests and responses", function()
    it("GET gives status, case-insensitive headers, body and json()", function()
      local res, err = await(http.get(base .. "/json"))
      assert.is_nil(err)
      assert.equal(200, res.status)
      assert.equal("application/json", res.headers["Content-Type"])
      assert.equal(res.headers["content-type"], res.headers["CONTENT-TYPE"])
      assert.same({ message = "Hello, World!" }, res:json())
      assert.equal(base .. "/json", res.url)
    end)

    it("res:json() gives nil, err for a body that is not JSON", function()
      local res = assert(await(http.get(base .. "/text")))
      local v, err = res:json()
      assert.is_nil(v)
      assert.matches("^bad json", err)
      assert.equal("plain words", res.body)
      assert.equal("a, b", res.headers["x-multi"])
    end)

    it("POST sends a string as is and a table as JSON", function()
      local res = assert(await(http.post(base .. "/echo", "raw bytes",
        { headers = { ["Content-Type"] = "text/plain" } })))
      assert.same("raw bytes", res:json().body)
      assert.same("text/plain", res:json().ctype)
      res = assert(await(http.post(base .. "/echo", { a = 1 })))
      assert.same({ a = 1 }, luaserve.json.decode(res:json().body))
      assert.equal("application/json", res:json().ctype)
    end)

    it("request{} takes method, headers, query, json", function()
      local res = assert(await(http.request{
        method = "PUT", url = base .. "/echo?x=1",
        headers = { ["X-Test"] = "yes" }, query = { b = "two words" },
        json = { k = "v" },
      }))
      local e = res:json()
      assert.equal("PUT", e.method)
      assert.equal("/echo?x=1&b=two%20words", e.target)
      assert.equal("yes", e.x)
      assert.equal('{"k":"v"}', e.body)
      assert.matches("^luaserve/", e.ua)
      assert.equal("127.0.0.1:" .. up_client.port, e.host)
      for _, m in ipairs({ "patch", "delete", "options" }) do
        local r = assert(await(http[m](base .. "/echo")))
        assert.equal(m:upper(), r:json().method)
      end
    end)

    it("HEAD gives the headers and no body", function()
      local res = assert(await(http.head(base .. "/json")))
      assert.equal(200, res.status)
      assert.equal("", res.body)
      assert.equal("27", res.headers["content-length"])
      -- the connection is still in step: the next call works
      assert.equal(200, (await(http.get(base .. "/json"))).status)
    end)

    it("reads chunked, close-delimited and 1xx-preceded responses", function()
      local res = assert(await(http.get(up.url("/chunked"))))
      assert.equal("hello, chunked world", res.body)
      res = assert(await(http.get(up.url("/close-delimited"))))
      assert.equal("until the close", res.body)
      res = assert(await(http.get(up.url("/interim"))))
      assert.equal(200, res.status)
      assert.equal("final", res.body)
      assert.equal("yes", res.headers["x-final"])
    end)

    it("looks names up (localhost) and speaks IPv6", function()
      local res = assert(await(http.get("http://localhost:" .. up_client.port .. "/json")))
      assert.equal(200, res.status)
      local server = require "luaserve.server"
      local srv = server.serve(upstream_app, { host = "::1", port = 0, access_log = false })
      if srv then   -- a machine without IPv6 loopback cannot run this part
        local _, port = srv:address()
        res = assert(await(http.get("http://[::1]:" .. port .. "/json")))
        assert.equal(200, res.status)
        srv:close()
      end
    end)
  end)

  describe("failures", function()
    it("a refused port gives 'connection refused'", function()
      -- a port just freed: nothing listens there
      local s = testing.client(upstream_app)
      local port = s.port
      s:close()
      assert.same({ nil, "connection refused" },
        { await(http.get("http://127.0.0.1:" .. port .. "/")) })
    end)

    it("a bad DNS name gives 'dns: ...'", function()
      local res, err = await(http.get("http://no-such-host..invalid/"))
      assert.is_nil(res)
      assert.matches("^dns: ", err)
    end)

    it("a bad url gives nil, 'bad url: ...'; misuse raises", function()
      local res, err = await(http.get("not a url"))
      assert.is_nil(res)
      assert.matches("^bad url", err)
      assert.has_error(function() http.get(42) end)
      assert.has_error(function() http.get(base, { headers = { ["X"] = "a\r\nb" } }) end)
      assert.has_error(function() http.request{ url = base, body = {} } end)
    end)

    it("a response that is not HTTP gives 'bad response: ...'", function()
      local res, err = await(http.get(up.url("/garbage")))
      assert.is_nil(res)
      assert.matches("^bad response: ", err)
    end)

    it("a close mid-body gives 'closed'", function()
      assert.same({ nil, "closed" }, { await(http.get(up.url("/close-mid-body"))) })
    end)

    it("a body over max_body gives 'too large' (by length and while chunked)", function()
      assert.same({ nil, "too large" },
        { await(http.get(up.url("/big?n=200000"), { max_body = 100000 })) })
      assert.same({ nil, "too large" },
        { await(http.get(up.url("/big-chunked?n=200000"), { max_body = 100000 })) })
      local res = assert(await(http.get(up.url("/big?n=200000"))))
      assert.equal(200000, #res.body)
    end)
  end)

  describe("timeouts", function()
    it("connect: a listener that never answers", function()
      local t0 = hrtime()
      assert.same({ nil, "timeout" }, { await(http.get(
        "http://127.0.0.1:" .. up.blackhole .. "/", { connect_timeout = 0.2 })) })
      assert.is_true(hrtime() - t0 < 5)
    end)

    it("send: a peer that never reads", function()
      local body = string.rep("x", 32 * 1024 * 1024)
      assert.same({ nil, "timeout" }, { await(http.post(
        "http://127.0.0.1:" .. up.noread .. "/", body, { send_timeout = 0.2 })) })
    end)

    it("read: no answer, and a body that stops", function()
      assert.same({ nil, "timeout" },
        { await(http.get(up.url("/stall-headers"), { read_timeout = 0.2 })) })
      assert.same({ nil, "timeout" },
        { await(http.get(up.url("/stall-body"), { read_timeout = 0.2 })) })
    end)

    it("the overall deadline: bytes that keep coming, too slowly", function()
      local t0 = hrtime()
      assert.same({ nil, "timeout" },
        { await(http.get(up.url("/trickle"), { timeout = 0.4, read_timeout = 5 })) })
      local took = hrtime() - t0
      assert.is_true(took >= 0.3 and took < 4, "took " .. took)
    end)

    it("has documented defaults", function()
      local d = http.DEFAULTS
      assert.equal(10, d.connect_timeout)
      assert.equal(30, d.send_timeout)
      assert.equal(30, d.read_timeout)
      assert.equal(60, d.timeout)
    end)
  end)

  describe("the connection pool", function()
    it("100 sequential calls use one connection", function()
      tcp.close_pools()
      local ports = {}
      for _ = 1, 100 do
        local res = assert(await(http.get(base .. "/peer")))
        ports[res:json().port] = true
      end
      local n = 0
      for _ in pairs(ports) do n = n + 1 end
      assert.equal(1, n)
      assert.equal(1, tcp.pool_stats()["http://127.0.0.1:" .. up_client.port])
    end)

    it("a streamed answer its request leaves unread is closed when the request ends", function()
      local function open_fds()
        local p = io.popen("ls /proc/" .. require("luaserve.core").getpid() .. "/fd")
        local n = 0
        for _ in p:lines() do n = n + 1 end
        p:close()
        return n
      end
      local before = open_fds()
      for _ = 1, 30 do
        local res = assert(await(http.get(base .. "/abandon?port=" .. up_client.port)))
        assert.equal(200, res.status)
      end
      local left = open_fds() - before   -- at once: closed as each request ended
      assert.is_true(left < 10, "descriptors left open: " .. left)
    end)

    it("keepalive = false opens a connection per call", function()
      local ports = {}
      for _ = 1, 3 do
        local res = assert(await(http.get(base .. "/peer", { keepalive = false })))
        ports[res:json().port] = true
      end
      local n = 0
      for _ in pairs(ports) do n = n + 1 end
      assert.equal(3, n)
    end)

    it("a response with Connection: close is not pooled", function()
      tcp.close_pools()
      assert.equal("bye", (await(http.get(base .. "/close"))).body)
      assert.is_nil(tcp.pool_stats()["http://127.0.0.1:" .. up_client.port])
    end)

    it("caps idle connections per host and closes them after the idle timeout", function()
      tcp.close_pools()
      local fs = {}
      for i = 1, 6 do fs[i] = http.get(base .. "/slow?ms=50",
        { pool_size = 2, keepalive_timeout = 0.2 }) end
      await(gather(unpack(fs)))
      local key = "http://127.0.0.1:" .. up_client.port
      assert.equal(2, tcp.pool_stats()[key])
      assert.is_true(eventually(function() return tcp.pool_stats()[key] == nil end, 3))
    end)

    it("drops a pooled connection the server closed", function()
      local short = testing.client(upstream_app, { keepalive_timeout_ms = 100 })
      local key = "http://127.0.0.1:" .. short.port
      assert(await(http.get("http://127.0.0.1:" .. short.port .. "/json")))
      assert.equal(1, tcp.pool_stats()[key])
      assert.is_true(eventually(function() return tcp.pool_stats()[key] == nil end, 3))
      assert.equal(200, (await(http.get("http://127.0.0.1:" .. short.port .. "/json"))).status)
      short:close()
    end)

    it("retries an idempotent request once when a reused connection was stale", function()
      tcp.close_pools()
      -- /once-per-conn answers a connection's first request only
      assert.equal("first", (await(http.get(up.url("/once-per-conn")))).body)
      assert.equal("first", (await(http.get(up.url("/once-per-conn")))).body)
      -- POST is not retried
      tcp.close_pools()
      assert(await(http.post(up.url("/once-per-conn"), "a")))
      assert.same({ nil, "closed" }, { await(http.post(up.url("/once-per-conn"), "a")) })
    end)
  end)

  describe("redirects", function()
    it("are not followed unless asked", function()
      local res = assert(await(http.get(up.url("/redirect?n=2"))))
      assert.equal(302, res.status)
      assert.equal("/redirect?n=1", res.headers.location)
    end)

    it("are followed up to follow_redirects", function()
      local res = assert(await(http.get(up.url("/redirect?n=3"), { follow_redirects = 3 })))
      assert.equal(200, res.status)
      assert.equal(up.url("/ok"), res.url)
      res = assert(await(http.get(up.url("/redirect?n=3"), { follow_redirects = 2 })))
      assert.equal(302, res.status)
    end)

    it("drop credentials on the way to another host, keep them on the same one", function()
      local secret = { Authorization = "Bearer s3cret", Cookie = "sid=1",
        ["Proxy-Authorization"] = "Basic eA==", ["X-Custom"] = "kept" }
      -- 127.0.0.1 -> localhost: another host
      local other = "http://localhost:" .. up.http .. "/echo"
      local res = assert(await(http.get(up.url("/redirect?to=" .. other),
        { follow_redirects = 1, headers = secret })))
      local h = res:json().headers
      assert.is_nil(h.authorization)
      assert.is_nil(h.cookie)
      assert.is_nil(h["proxy-authorization"])
      assert.equal("kept", h["x-custom"])
      -- the same host and port: kept
      res = assert(await(http.get(up.url("/redirect?to=/echo"),
        { follow_redirects = 1, headers = secret })))
      h = res:json().headers
      assert.equal("Bearer s3cret", h.authorization)
      assert.equal("sid=1", h.cookie)
    end)

    it("303 turns a POST into a GET without body", function()
      local res = assert(await(http.post(up.url("/redirect?status=303&to=/echo"), "data",
        { follow_redirects = 1 })))
      local e = res:json()
      assert.equal("GET", e.method)
      assert.equal("", e.body)
    end)
  end)

  describe("composition and cancellation", function()
    it("gathers 100 calls concurrently", function()
      local t0 = hrtime()
      local fs = {}
      for i = 1, 100 do fs[i] = http.get(base .. "/slow?ms=200") end
      local rs = { await(gather(unpack(fs))) }
      assert.equal(100, #rs)
      for i = 1, 100 do assert.equal(200, rs[i].status) end
      -- one after another it would take 20 s
      assert.is_true(hrtime() - t0 < 5, "took " .. (hrtime() - t0))
    end)

    it("a Semaphore bounds calls in flight", testing.async(function()
      local sem = luaserve.Semaphore(2)
      local inflight, most = 0, 0
      local tasks = {}
      for i = 1, 6 do
        tasks[i] = spawn(function()
          return sem:run(function()
            inflight = inflight + 1
            if inflight > most then most = inflight end
            local res = await(http.get(base .. "/slow?ms=30"))
            inflight = inflight - 1
            return res.status
          end)
        end)
      end
      assert.same({ 200, 200, 200, 200, 200, 200 }, { await(gather(unpack(tasks))) })
      assert.equal(2, most)
    end))

    it("wait_for expiring aborts the call and closes its connection", function()
      local before = up.stats().stall_aborted
      assert.same({ nil, "timeout" },
        { await(wait_for(http.get(up.url("/stall-headers")), 0.2)) })
      assert.is_true(eventually(function()
        return up.stats().stall_aborted > before end, 5))
      assert.is_nil(tcp.pool_stats()["http://127.0.0.1:" .. up.http .. "/stall"])
    end)

    it("a request's client going away aborts its upstream call", function()
      local front_app = luaserve.app()
      local finished = false
      front_app:get("/proxy", function()
        local res, err = await(http.get(up.url("/stall-headers"), { read_timeout = 30 }))
        finished = true
        return { err = err }
      end)
      local front = testing.client(front_app)
      local before = up.stats().stall_aborted
      local sock = assert(await(tcp.connect("127.0.0.1", front.port)))
      assert(await(sock:send("GET /proxy HTTP/1.1\r\nHost: x\r\n\r\n")))
      assert.is_true(eventually(function() return up.stats().stall_open > 0 end, 5))
      sock:close()
      assert.is_true(eventually(function()
        return up.stats().stall_aborted > before end, 5))
      assert.is_false(finished)
      front:close()
    end)

    it("cancelling the future closes the connection", function()
      local before = up.stats().stall_aborted
      local f = http.get(up.url("/stall-headers"))
      await(sleep(0.1))
      assert.is_true(f:cancel())
      assert.same({ nil, "cancelled" }, { await(f) })
      assert.is_true(eventually(function()
        return up.stats().stall_aborted > before end, 5))
    end)
  end)

  describe("the response parser (core.response_parser)", function()
    -- raw response, options, expected { status, body, keep, extra, header
    -- checks } or { err = pattern }; eof: the peer closes after raw.
    local fixtures = {
      { "content-length",
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello",
        {}, { status = 200, body = "hello", keep = true, extra = 0, h = { ["x-a"] = "1" } } },
      { "chunked, with an extension and a trailer",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" ..
        "5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
        {}, { status = 200, body = "hello world", keep = true, extra = 0 } },
      { "close-delimited", "HTTP/1.1 200 OK\r\n\r\nuntil the end",
        { eof = true }, { status = 200, body = "until the end", keep = false } },
      { "HEAD: a length but no body",
        "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",
        { head = true }, { status = 200, body = "", keep = true, extra = 0 } },
      { "204 and 304 have no body",
        "HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n",
        {}, { status = 304, body = "", keep = true, extra = 0 } },
      { "1xx responses are skipped",
        "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: a\r\n\r\n" ..
        "HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
        {}, { status = 201, body = "ok", keep = true, extra = 0, h = { link = false } } },
      { "HTTP/1.0 closes unless asked", "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
        {}, { status = 200, body = "ok", keep = false, extra = 0 } },
      { "Connection: close", "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        {}, { status = 200, body = "ok", keep = false, extra = 0 } },
      { "bytes after the response are counted",
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1",
        {}, { status = 200, body = "ok", keep = true, extra = 8 } },
      { "repeated headers are joined, names lower-cased",
        "HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nSET-COOKIE: b=2\r\nContent-Length: 0\r\n\r\n",
        {}, { status = 200, body = "", keep = true, extra = 0, h = { ["set-cookie"] = "a=1, b=2" } } },
      { "not HTTP", "HELLO\r\n\r\n", {}, { err = "^bad response: " } },
      { "a bad chunk size", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        {}, { err = "^bad response: " } },
      { "a body over max_body, by its length",
        "HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world", { max = 10 },
        { err = "^too large$" } },
      { "a body over max_body, chunked",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nhello \r\n6\r\nworld!\r\n0\r\n\r\n",
        { max = 10 }, { err = "^too large$" } },
      { "headers over 64 KiB",
        "HTTP/1.1 200 OK\r\nX-Big: " .. string.rep("a", 70000) .. "\r\n\r\n",
        {}, { err = "^too large$" } },
      { "a close mid-body", "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello",
        { eof = true }, { err = "^closed$" } },
    }

    -- Feed raw in pieces of `step` bytes; what the parser made of it.
    local function parse(raw, o, step)
      local p = core.response_parser()
      p:reset(o.head, o.max)
      local extra_total = 0
      local i = 1
      while i <= #raw do
        local ok, extra = p:execute(raw:sub(i, i + step - 1))
        if ok == nil then return { err = extra } end
        if ok then
          extra_total = extra + (#raw - (i + step - 1) > 0 and #raw - (i + step - 1) or 0)
          local status, headers, body, keep = p:result()
          return { status = status, headers = headers, body = body, keep = keep,
            extra = extra_total }
        end
        i = i + step
      end
      if not o.eof then return { err = "incomplete" } end
      local ok, err = p:finish()
      if not ok then return { err = err } end
      local status, headers, body, keep = p:result()
      return { status = status, headers = headers, body = body, keep = keep }
    end

    for _, fx in ipairs(fixtures) do
      local name, raw, o, want = fx[1], fx[2], fx[3], fx[4]
      it(name .. " (whole, and one byte at a time)", function()
        for _, step in ipairs({ #raw, 1, 7 }) do
          local got = parse(raw, o, step)
          if want.err then
            assert.is_string(got.err, "step " .. step)
            assert.matches(want.err, got.err)
          else
            assert.is_nil(got.err, "step " .. step)
            assert.equal(want.status, got.status)
            assert.equal(want.body, got.body)
            assert.equal(want.keep, got.keep)
            if want.extra then assert.equal(want.extra, got.extra, "step " .. step) end
            for k, v in pairs(want.h or {}) do
              assert.equal(v or nil, got.headers[k])
            end
          end
        end
      end)
    end
  end)

  describe("read_response", function()
    it("parses a response off any socket", function()
      local sock = assert(await(tcp.connect("127.0.0.1", up.http)))
      assert(await(sock:send("GET /chunked HTTP/1.1\r\nHost: x\r\n\r\n")))
      local status, headers, body, reusable = http.read_response(sock)
      assert.equal(200, status)
      assert.equal("chunked", headers["Transfer-Encoding"])
      assert.equal("hello, chunked world", body)
      assert.is_true(reusable)
      sock:close()
    end)
  end)
end)
