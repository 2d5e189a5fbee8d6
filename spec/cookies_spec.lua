-- spec/cookies_spec.lua: luaserve.cookies: the Cookie header parsed
-- (req.cookies), Set-Cookie values made and checked (res:set_cookie,
-- luaserve.cookie, several per response), signed cookies.

local luaserve = require "luaserve"
local cookies = require "luaserve.cookies"
local testing = require "luaserve.testing"

local SECRET = "0123456789abcdef0123456789abcdef"


local function raises(pattern, fn, ...)
  local ok, err = pcall(fn, ...)
  assert.is_false(ok, "expected an error matching " .. pattern)
  assert.matches(pattern, tostring(err))
end


describe("luaserve.cookies parse", function()
  it("splits pairs at ';' and trims blanks", function()
    assert.same({ a = "1", b = "2", c = "" }, cookies.parse("a=1;b=2 ;  c= "))
  end)

  it("percent-decodes values and unquotes quoted ones", function()
    assert.same({ s = "a b;c", q = "x y", p = "100%" },
      cookies.parse('s=a%20b%3Bc; q="x%20y"; p=100%'))
  end)

  it("keeps '=' inside values, the first of a repeated name, skips junk", function()
    assert.same({ tok = "a=b==", dup = "first" },
      cookies.parse("tok=a=b==; dup=first; dup=second; novalue; =empty-name; ;"))
  end)

  it("gives an empty table without a header", function()
    assert.same({}, cookies.parse(nil))
    assert.same({}, cookies.parse(""))
  end)
end)


describe("luaserve.cookies serialize", function()
  it("writes every attribute", function()
    assert.equals("id=42; Max-Age=3600; Expires=Thu, 01 Jan 1970 00:00:10 GMT; " ..
      "Path=/app; Domain=example.com; Secure; HttpOnly; SameSite=Lax",
      cookies.serialize("id", 42, { max_age = 3600, expires = 10, path = "/app",
        domain = "example.com", secure = true, http_only = true, same_site = "lax" }))
    assert.equals("a=b; SameSite=None; Secure; Partitioned",
      cookies.serialize("a", "b", { same_site = "None", secure = true, partitioned = true })
        :gsub("; Secure; SameSite=None", "; SameSite=None; Secure"))
  end)

  it("percent-encodes what a cookie value cannot hold, and it round-trips", function()
    local v = 'a b;c,d"e\\f%g\n\0\255'
    local line = cookies.serialize("v", v)
    assert.equals("v=a%20b%3Bc%2Cd%22e%5Cf%25g%0A%00%FF", line)
    assert.equals(v, cookies.parse(line).v)
  end)

  it("refuses names that are not tokens and values that are not strings", function()
    raises("cookie name \"a b\" is not valid", cookies.serialize, "a b", "1")
    raises("cookie name \"a=b\" is not valid", cookies.serialize, "a=b", "1")
    raises("cookie name \"a\\\nb\" is not valid", cookies.serialize, "a\nb", "1")
    raises("cookie name \"\" is not valid", cookies.serialize, "", "1")
    raises("cookie name number is not valid", cookies.serialize, 5, "1")
    raises("the value must be a string or number, got table", cookies.serialize, "a", {})
  end)

  it("refuses attributes that would inject into the header", function()
    raises("cookie option path: .* control character or ';'", cookies.serialize,
      "a", "1", { path = "/x; Domain=evil.com" })
    raises("cookie option path: .* control character", cookies.serialize,
      "a", "1", { path = "/x\r\nSet-Cookie: b=2" })
    raises("cookie option domain", cookies.serialize, "a", "1", { domain = "a.com\n" })
    raises("domain \"a b.com\" is not a host name", cookies.serialize, "a", "1",
      { domain = "a b.com" })
    raises("path must start with '/'", cookies.serialize, "a", "1", { path = "x" })
    raises("max_age must be a number", cookies.serialize, "a", "1", { max_age = "1h" })
  end)

  it("enforces what browsers enforce", function()
    raises("same_site \"None\" needs secure = true", cookies.serialize, "a", "1",
      { same_site = "None" })
    raises("same_site must be \"Strict\", \"Lax\" or \"None\"", cookies.serialize,
      "a", "1", { same_site = "sometimes" })
    raises("a __Secure%- cookie needs secure = true", cookies.serialize, "__Secure-a", "1")
    raises("a __Host%- cookie needs secure = true, path = \"/\" and no domain",
      cookies.serialize, "__Host-a", "1", { secure = true })
    assert.equals("__Host-a=1; Path=/; Secure",
      cookies.serialize("__Host-a", "1", { secure = true, path = "/" }))
    raises("browsers keep at most 4096", cookies.serialize, "big", string.rep("x", 5000))
  end)

  it("names unknown options, with the right spelling when it is a known mistake", function()
    raises("unknown option 'httponly' %(did you mean http_only%?%)", cookies.serialize,
      "a", "1", { httponly = true })
    raises("unknown option 'colour'", cookies.serialize, "a", "1", { colour = 1 })
  end)

  it("makes a deletion: empty, Max-Age=0, Expires in 1970, same path", function()
    assert.equals("sid=; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Path=/app",
      cookies.deletion("sid", { path = "/app" }))
  end)
end)


describe("luaserve.cookies signed values", function()
  it("round-trips and refuses a changed value, name or secret", function()
    local s = cookies.sign("sid", "user.42", SECRET, 1000)
    assert.matches("^user%.42%.1000%.[%w_%-]+$", s)
    assert.equals("user.42", cookies.unsign("sid", s, SECRET))
    local forged = s:gsub("^user%.42", "user.43")
    assert.same({ nil, "bad signature" }, { cookies.unsign("sid", forged, SECRET) })
    assert.same({ nil, "bad signature" }, { cookies.unsign("other", s, SECRET) })
    assert.same({ nil, "bad signature" },
      { cookies.unsign("sid", s, SECRET:reverse()) })
    assert.same({ nil, "malformed" }, { cookies.unsign("sid", "nodots", SECRET) })
  end)

  it("expires with max_age and rotates keys", function()
    local s = cookies.sign("sid", "v", SECRET, 1000)
    assert.equals("v", cookies.unsign("sid", s, SECRET, 60, 1059))
    assert.same({ nil, "expired" }, { cookies.unsign("sid", s, SECRET, 60, 1061) })
    local new = "another secret, 32 bytes long..."
    assert.equals("v", cookies.unsign("sid", s, { new, SECRET }))
    assert.matches("%.[%w_%-]+$", cookies.sign("sid", "v", { new, SECRET }))
  end)

  it("refuses a short secret", function()
    raises("at least 16 bytes", cookies.sign, "sid", "v", "short")
  end)
end)


describe("cookies through the server", function()
  local app = luaserve.app()
  app:get("/read", function(req) return req.cookies end)
  app:get("/set", function(req)
    return luaserve.Response{ body = "ok" }
      :set_cookie("a", "1", { http_only = true })
      :set_cookie("b", "two words", { max_age = 60, path = "/" })
      :delete_cookie("old")
  end)
  local SHARED = { ["X-Const"] = "1" }
  app:get("/shared", function(req)
    return luaserve.Response{ body = "ok", headers = SHARED }:set_cookie("n", req.query.n)
  end)
  app:get("/plain", function(req)
    return 200, "ok", { ["Set-Cookie"] = { luaserve.cookie("x", "1"),
      luaserve.cookie("y", "2", { secure = true }) } }
  end)
  app:get("/login", function(req)
    return luaserve.Response{ body = "in" }:set_cookie("sid", "user-7",
      { secret = SECRET, http_only = true })
  end)
  app:get("/me", function(req)
    local uid, why = req:signed_cookie("sid", SECRET, 3600)
    if not uid then return 401, { detail = why } end
    return { user = uid }
  end)
  app:get("/bad", function(req)
    return luaserve.Response{ body = "x" }:set_cookie("a b", "1")
  end)
  app:use(function(req, call_next)
    local res = call_next(req)
    if req.path == "/mw" then res:set_cookie("from_mw", "yes") end
    return res
  end)
  app:get("/mw", function() return "ok" end)

  local client
  setup(function() client = testing.client(app) end)
  teardown(function() client:close() end)

  -- Set-Cookie lines of a raw response (the test client joins repeats).
  local function set_cookies(res)
    local v = res.headers["set-cookie"] or ""
    local list = {}
    for line in (v .. ", "):gmatch("(.-), (%f[%w_])") do list[#list + 1] = line end
    return list, v
  end

  it("gives req.cookies parsed from the Cookie header", function()
    local res = client:get("/read", { headers = { Cookie = "a=1; b=x%20y" } })
    assert.same({ a = "1", b = "x y" }, res:json())
    assert.same({}, client:get("/read"):json())
  end)

  it("sends several Set-Cookie lines in one response", function()
    local res = client:get("/set")
    local _, raw = set_cookies(res)
    assert.matches("a=1; HttpOnly", raw, 1, true)
    assert.matches("b=two%20words; Max-Age=60; Path=/", raw, 1, true)
    assert.matches("old=; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT", raw, 1, true)
  end)

  it("does not let a shared headers table collect cookies", function()
    client:get("/shared?n=1")
    local res = client:get("/shared?n=2")
    assert.equals("n=2", res.headers["set-cookie"])
    assert.is_nil(SHARED["Set-Cookie"])
  end)

  it("sets cookies with the plain return form", function()
    local raw = client:get("/plain").headers["set-cookie"]
    assert.matches("x=1", raw, 1, true)
    assert.matches("y=2; Secure", raw, 1, true)
  end)

  it("signs a session cookie and reads it back; a forged one is refused", function()
    local raw = client:get("/login").headers["set-cookie"]
    local value = raw:match("^sid=([^;]+)")
    assert.matches("; HttpOnly", raw, 1, true)
    local res = client:get("/me", { headers = { Cookie = "sid=" .. value } })
    assert.same({ user = "user-7" }, res:json())
    local forged = value:gsub("user%-7", "user-8")
    res = client:get("/me", { headers = { Cookie = "sid=" .. forged } })
    assert.equals(401, res.status)
    assert.same({ detail = "bad signature" }, res:json())
    assert.same({ detail = "missing" }, client:get("/me"):json())
  end)

  it("answers 500 for a bad cookie name, and a middleware can set cookies", function()
    assert.equals(500, client:get("/bad").status)
    assert.equals("from_mw=yes", client:get("/mw").headers["set-cookie"])
  end)
end)
