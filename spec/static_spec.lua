-- luaserve.static: content types from mime.types, HTTP dates, what a safe
-- path is, app:static's errors, FileResponse through the real core (the
-- binary tests in tests/test_static.py cover traversal, ranges and big
-- files over sockets).

local luaserve = require "luaserve"
local static = require "luaserve.static"
local testing = require "luaserve.testing"

local DIR = os.tmpname()


describe("luaserve.static", function()
  setup(function()
    os.remove(DIR)
    assert(os.execute("mkdir -p " .. DIR .. "/sub"))
    local f = assert(io.open(DIR .. "/hello.txt", "w"))
    f:write("hello, file")
    f:close()
    f = assert(io.open(DIR .. "/mime.types", "w"))
    f:write("# a comment\ntext/x-spec   spx SPY\napplication/x-other spx\n")
    f:close()
  end)
  teardown(function() os.execute("rm -rf " .. DIR) end)

  it("reads content types from a mime.types file", function()
    local types = static.load_types(DIR .. "/mime.types")
    assert.equal("text/x-spec", types.spx)   -- the first one listed wins
    assert.equal("text/x-spec", types.spy)   -- extensions in lower case
    assert.equal("text/html", types.html)    -- the built-in ones fill gaps
    assert.equal("text/css", static.load_types("/nonexistent/mime.types").css)
  end)

  it("gives text a charset and unknown files octet-stream", function()
    assert.equal("text/html; charset=utf-8", static.content_type("a/b/index.HTML"))
    assert.equal("image/png", static.content_type("x.png"))
    assert.equal("application/octet-stream", static.content_type("x.nosuchext"))
    assert.equal("application/octet-stream", static.content_type("Makefile"))
  end)

  it("writes and reads HTTP dates", function()
    assert.equal("Sun, 06 Nov 1994 08:49:37 GMT", static.http_date(784111777))
    assert.equal(784111777, static.parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"))
    assert.equal(951782400, static.parse_http_date("Tue, 29 Feb 2000 00:00:00 GMT"))
    assert.is_nil(static.parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"))
    assert.is_nil(static.parse_http_date("garbage"))
  end)

  it("knows a safe path", function()
    local req = { target = "/static/x" }
    assert.equal("a/b.txt", static.safe_path(req, "a/b.txt"))
    assert.equal(".", static.safe_path(req, ""))
    for _, ok in ipairs({ "sub/", "a/b/", ".hidden", "..x", "x..", "a/...", "a.b/c.d" }) do
      assert.equal(ok, static.safe_path(req, ok))
    end
    for _, bad in ipairs({ "../x", "a/../../x", "./x", "/etc/passwd", "a//b", "a\\..\\b", "a\0b",
                           ".", "..", "a/.", "a/..", "a/./b", "a/../", "//", "/", "a/b\\" }) do
      assert.is_nil(static.safe_path(req, bad), bad)
    end
    assert.is_nil(static.safe_path({ target = "/static/a%2Fb" }, "a/b"))
    assert.is_nil(static.safe_path({ target = "/static/a%5cb" }, "a\\b"))
  end)

  it("app:static refuses a folder that is not there", function()
    local app = luaserve.app()
    assert.has_error(function() app:static("/s", DIR .. "/hello.txt") end)
    assert.has_error(function() app:static("/s", "/nonexistent/folder") end)
    assert.has_error(function() app:static("s", DIR) end)
    assert.has_error(function() app:static("/s", DIR, { listing = "yes" }) end,
      "app:static: listing must be true or false")
  end)

  it("serves a folder and answers FileResponse through the core", function()
    local app = luaserve.app()
    app:static("/files", DIR)
    app:get("/pick", function(req)
      return luaserve.FileResponse(DIR .. "/hello.txt", { content_type = "text/x-greeting" })
    end)
    app:get("/none", function(req) return luaserve.FileResponse(DIR .. "/nothing") end)
    local client = testing.client(app)
    local res = client:get("/files/hello.txt")
    assert.equal(200, res.status)
    assert.equal("hello, file", res.body)
    assert.equal("text/plain; charset=utf-8", res.headers["content-type"])
    local etag = res.headers["etag"]
    assert.equal(304, client:get("/files/hello.txt", { headers = { ["If-None-Match"] = etag } }).status)
    assert.equal(404, client:get("/files/sub/").status)
    assert.equal(404, client:get("/files/../hello.txt").status)
    res = client:get("/pick", { headers = { Range = "bytes=0-4" } })
    assert.equal(206, res.status)
    assert.equal("hello", res.body)
    assert.equal("text/x-greeting", res.headers["content-type"])
    assert.equal(404, client:get("/none").status)
    assert.is_nil(client:get("/openapi.json"):json().paths["/files/{path}"])   -- not in the schema
    client:close()
  end)

  it("FileResponse outside a handler says where to call it", function()
    assert.has_error(function() luaserve.FileResponse("/etc/hostname") end,
      "FileResponse: call it from an async handler (it answers the request that runs)")
  end)
end)
