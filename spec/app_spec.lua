-- spec/app_spec.lua: luaserve.app, the router: methods, templates and
-- typed parameters, 404/405/422, HEAD, groups, definition-time errors.

local luaserve = require "luaserve"
local testing = require "luaserve.testing"


-- The handler answers with what it saw.
local function echo(req)
  local params = {}
  for k, v in pairs(req.params) do params[k] = { v, type(v) } end
  return { method = req.method, route = req.route, params = params }
end


describe("luaserve.app", function()
  local app = luaserve.app()
  app:get("/items", echo)
  app:post("/items", echo)
  app:put("/items/{id:int}", echo)
  app:patch("/items/{id:int}", echo)
  app:delete("/items/{id:int}", echo)
  app:options("/items", echo)
  app:route("GET", "/route", echo)
  app:route({ "GET", "post" }, "/multi", echo)
  app:get("/users/me", function() return { me = true } end)
  app:get("/users/{name}", echo)
  app:get("/n/{id:int}", echo)
  app:get("/x/{x:number}", echo)
  app:get("/files/{rest:path}", echo)
  app:get("/two/{a}/and/{b:int}", echo)
  app:get("/weird.path+(x)", function() return "literal" end)
  app:get("/text", function() return "hello" end)
  -- the same shape, another method, other names: each serves its method
  app:get("/things/{thing_id:int}", echo)
  app:delete("/things/{id:int}", echo)
  -- a typed template first, a string one after: "abc" falls to the second
  app:get("/slug/{id:int}", echo)
  app:get("/slug/{slug}/", echo)
  app:get("/slug/{slug}", echo)
  -- a static path with GET only, a template with DELETE on the same path
  app:get("/docs/index", function() return "static" end)
  app:delete("/docs/{page}", echo)

  local api = app:group("/api")
  api:get("/status", echo)
  api:post("/things/{id:int}", echo)
  local v1 = api:group("/v1/")
  v1:get("/ping", echo)

  local client
  setup(function() client = testing.client(app) end)
  teardown(function() client:close() end)

  describe("methods", function()
    it("routes each method to its handler", function()
      for _, m in ipairs({ "GET", "POST", "OPTIONS" }) do
        local res = client:request(m, "/items")
        assert.equal(200, res.status)
        assert.equal(m, res:json().method)
      end
      for _, m in ipairs({ "PUT", "PATCH", "DELETE" }) do
        local res = client:request(m, "/items/7")
        assert.equal(200, res.status, m)
        assert.equal(m, res:json().method)
        assert.same({ 7, "number" }, res:json().params.id)
      end
    end)

    it("takes a method or a list of methods in app:route", function()
      assert.equal(200, client:get("/route").status)
      assert.equal(405, client:post("/route").status)
      assert.equal("GET", client:get("/multi"):json().method)
      assert.equal("POST", client:post("/multi"):json().method)
      assert.equal(405, client:put("/multi").status)
    end)

    it("tells the handler which route matched", function()
      assert.equal("/users/{name}", client:get("/users/ann"):json().route)
      assert.equal("/items", client:get("/items"):json().route)
    end)
  end)

  describe("templates", function()
    it("gives a {name} parameter as a string", function()
      local res = client:get("/users/42")
      assert.equal(200, res.status)
      assert.same({ name = { "42", "string" } }, res:json().params)
    end)

    it("percent-decodes parameters", function()
      local res = client:get("/users/J%C3%B6rg%20B")
      assert.same({ "Jörg B", "string" }, res:json().params.name)
    end)

    it("prefers a static path to a template", function()
      assert.same({ me = true }, client:get("/users/me"):json())
    end)

    it("does not let a {name} parameter span segments", function()
      assert.equal(404, client:get("/users/a/b").status)
      assert.equal(404, client:get("/users/").status)
    end)

    it("converts {id:int}", function()
      assert.same({ 12, "number" }, client:get("/n/12"):json().params.id)
      assert.same({ -3, "number" }, client:get("/n/-3"):json().params.id)
      local id = client:get("/n/0"):json().params.id
      assert.same({ 0, "number" }, id)
    end)

    it("takes only a sign and digits as {id:int}", function()
      local m = luaserve.app()
      m:get("/n/{id:int}", function() end)
      m:get("/n/{id:int}/more", function() end)
      for input, want in pairs({ ["42"] = 42, ["-7"] = -7, ["+5"] = 5, ["007"] = 7,
          ["0"] = 0, ["123456789012"] = 123456789012 }) do
        local route, params = m:match("GET", "/n/" .. input)
        assert.is_not_nil(route, input)
        assert.equal(want, params.id, input)
        route, params = m:match("GET", "/n/" .. input .. "/more")
        assert.equal("/n/{id:int}/more", route.path, input)
        assert.equal(want, params.id, input)
      end
      for _, input in ipairs({ "0x10", "4.2", "1e3", "+", "-", "4 ", "%2042", "nan", "inf",
          "1e400", "-inf", "-nan" }) do
        local route, status = m:match("GET", "/n/" .. input)
        assert.is_nil(route, input)
        assert.equal(422, status, input)
      end
      assert.is_nil((m:match("GET", "/n/42/less")))
      assert.is_nil((m:match("GET", "/n/42/more/x")))
      assert.is_nil((m:match("GET", "/n/")))
    end)

    it("converts {x:number}", function()
      assert.same({ 1.5, "number" }, client:get("/x/1.5"):json().params.x)
      assert.same({ -2, "number" }, client:get("/x/-2"):json().params.x)
      assert.same({ 1000, "number" }, client:get("/x/1e3"):json().params.x)
    end)

    it("takes the rest of the path with {rest:path}", function()
      local res = client:get("/files/a/b/c.txt")
      assert.same({ "a/b/c.txt", "string" }, res:json().params.rest)
      assert.same({ "x", "string" }, client:get("/files/x"):json().params.rest)
      assert.equal(404, client:get("/files/").status)
    end)

    it("takes several parameters", function()
      local p = client:get("/two/q/and/5"):json().params
      assert.same({ a = { "q", "string" }, b = { 5, "number" } }, p)
    end)

    it("matches literal characters that are magic in Lua patterns", function()
      local res = client:get("/weird.path+(x)")
      assert.equal(200, res.status)
      assert.equal("literal", res.body)
      assert.equal(404, client:get("/weirdXpath+(x)").status)
    end)

    it("tries the next template when a typed one does not convert", function()
      assert.same({ 3, "number" }, client:get("/slug/3"):json().params.id)
      local res = client:get("/slug/abc")
      assert.equal(200, res.status)
      assert.same({ "abc", "string" }, res:json().params.slug)
    end)

    it("serves each method of templates with the same shape", function()
      local g = client:get("/things/4")
      assert.equal(200, g.status)
      assert.same({ thing_id = { 4, "number" } }, g:json().params)
      local d = client:delete("/things/4")
      assert.equal(200, d.status)
      assert.same({ id = { 4, "number" } }, d:json().params)
      local p = client:put("/things/4")
      assert.equal(405, p.status)
      assert.equal("DELETE, GET, HEAD", p.headers["allow"])
    end)

    it("lets a template serve a method a static path lacks", function()
      assert.equal("static", client:get("/docs/index").body)
      local d = client:delete("/docs/index")
      assert.equal(200, d.status)
      assert.same({ "index", "string" }, d:json().params.page)
      local p = client:post("/docs/index")
      assert.equal(405, p.status)
      assert.equal("DELETE, GET, HEAD", p.headers["allow"])
    end)
  end)

  describe("templates indexed by the path's first segment", function()
    it("keeps the declared order between literal and parameter first segments", function()
      local a = luaserve.app()
      local any = a:get("/{kind}/{id:int}", echo)
      a:get("/users/{id:int}", echo)   -- shadowed by the one above
      local posts = a:get("/users/{name}/posts", echo)
      assert.equal(any, (a:match("GET", "/users/7")))
      assert.equal(posts, (a:match("GET", "/users/ann/posts")))
      assert.equal(any, (a:match("GET", "/pets/3")))
      local route, status, _, _, near = a:match("GET", "/users/x")
      assert.is_nil(route)
      assert.equal(422, status)
      assert.equal(any, near)
      assert.equal(404, select(2, a:match("GET", "/users/ann/likes")))
    end)

    it("finds routes added after a match, and gathers the methods of every candidate", function()
      local b = luaserve.app()
      local get = b:get("/pets/{id:int}", echo)
      assert.equal(get, (b:match("GET", "/pets/1")))
      local post = b:post("/{any}/{x}", echo)
      assert.equal(post, (b:match("POST", "/pets/1")))
      assert.equal(post, (b:match("POST", "/cats/1")))
      local route, status, _, extra = b:match("PUT", "/pets/1")
      assert.is_nil(route)
      assert.equal(405, status)
      assert.equal("GET, HEAD, POST", extra.Allow)
      assert.equal("POST", select(4, b:match("PUT", "/cats/1")).Allow)
    end)
  end)

  describe("a typed parameter that does not convert", function()
    it("answers 422 naming the parameter ({id:int})", function()
      for _, bad in ipairs({ "abc", "1.5", "1e3", "0x10", "12abc" }) do
        local res = client:get("/n/" .. bad)
        assert.equal(422, res.status, bad)
        assert.matches("^application/json", res.headers["content-type"])
        local detail = res:json().detail
        assert.equal("table", type(detail))
        assert.same({ "path", "id" }, detail[1].loc)
        assert.equal(bad, detail[1].input)
        assert.equal("int_parsing", detail[1].type)
        assert.is_string(detail[1].msg)
      end
    end)

    it("answers 422 naming the parameter ({x:number})", function()
      for _, bad in ipairs({ "abc", "nan", "inf", "1.2.3" }) do
        local res = client:get("/x/" .. bad)
        assert.equal(422, res.status, bad)
        assert.same({ "path", "x" }, res:json().detail[1].loc)
      end
    end)

    it("names the right parameter among several", function()
      local res = client:get("/two/q/and/z")
      assert.equal(422, res.status)
      assert.same({ "path", "b" }, res:json().detail[1].loc)
    end)

    it("answers 422 for the method whose route did not convert", function()
      -- PUT /items/{id:int} exists: PUT /items/abc is 422, not 405
      assert.equal(422, client:put("/items/abc").status)
    end)
  end)

  describe("no route", function()
    it("answers 404 with a JSON detail for an unknown path", function()
      local res = client:get("/nowhere")
      assert.equal(404, res.status)
      assert.matches("^application/json", res.headers["content-type"])
      assert.same({ detail = "Not Found" }, res:json())
      assert.equal(404, client:post("/nowhere/else").status)
    end)

    it("answers 405 with Allow for a wrong method", function()
      local res = client:delete("/items")
      assert.equal(405, res.status)
      assert.same({ detail = "Method Not Allowed" }, res:json())
      assert.equal("GET, HEAD, OPTIONS, POST", res.headers["allow"])
      local t = client:post("/users/bob")
      assert.equal(405, t.status)
      assert.equal("GET, HEAD", t.headers["allow"])
    end)
  end)

  describe("HEAD", function()
    it("is served by a GET route, with the headers and no body", function()
      local get = client:get("/text")
      local head = client:head("/text")
      assert.equal(200, head.status)
      assert.equal("", head.body)
      assert.equal(get.headers["content-length"], head.headers["content-length"])
      assert.equal(tostring(#"hello"), head.headers["content-length"])
      assert.equal(get.headers["content-type"], head.headers["content-type"])
    end)

    it("works with templates", function()
      local res = client:head("/users/ann")
      assert.equal(200, res.status)
      assert.equal("", res.body)
      assert.is_truthy(tonumber(res.headers["content-length"]) > 0)
    end)

    it("is 405 where there is no GET", function()
      assert.equal(405, client:head("/items/1").status)
    end)
  end)

  describe("groups", function()
    it("adds the prefix to the group's routes", function()
      local res = client:get("/api/status")
      assert.equal(200, res.status)
      assert.equal("/api/status", res:json().route)
      assert.equal(404, client:get("/status").status)
      local p = client:post("/api/things/9")
      assert.same({ 9, "number" }, p:json().params.id)
    end)

    it("nests, and drops a trailing slash of the prefix", function()
      local res = client:get("/api/v1/ping")
      assert.equal(200, res.status)
      assert.equal("/api/v1/ping", res:json().route)
    end)
  end)

  describe("definition-time errors", function()
    local a = luaserve.app()
    local function f() end
    a:get("/dup", f)
    a:get("/dup/{id}", f)

    -- The error message, which must point at this file.
    local function err_of(fn)
      local ok, err = pcall(fn)
      assert.is_false(ok)
      assert.matches("app_spec%.lua:%d+: ", err)
      return err
    end

    it("rejects a duplicate route", function()
      assert.matches("route GET /dup is defined twice",
        err_of(function() a:get("/dup", f) end), 1, true)
      assert.matches("route GET /dup/{id} is defined twice",
        err_of(function() a:route("GET", "/dup/{id}", f) end), 1, true)
      assert.matches("route GET /dup/{other} is defined twice (as /dup/{id})",
        err_of(function() a:get("/dup/{other}", f) end), 1, true)
      assert.matches("/api/x is defined twice", err_of(function()
        local g = a:group("/api")
        g:get("/x", f)
        g:get("/x", f)
      end), 1, true)
      -- another method on the same path is fine
      a:post("/dup", f)
      a:post("/dup/{other}", f)
    end)

    it("rejects bad templates, naming the problem", function()
      assert.matches("bad parameter '{1x}'",
        err_of(function() a:get("/b/{1x}", f) end), 1, true)
      assert.matches("bad parameter '{}'",
        err_of(function() a:get("/b/{}", f) end), 1, true)
      assert.matches("unknown parameter type 'uuid'",
        err_of(function() a:get("/b/{id:uuid}", f) end), 1, true)
      assert.matches("{p:path} must come last",
        err_of(function() a:get("/b/{p:path}/x", f) end), 1, true)
      assert.matches("unbalanced",
        err_of(function() a:get("/b/{id", f) end), 1, true)
      assert.matches("unbalanced",
        err_of(function() a:get("/b/id}", f) end), 1, true)
      assert.matches("parameter 'id' appears twice",
        err_of(function() a:get("/b/{id}/{id:int}", f) end), 1, true)
      assert.matches("bad parameter",
        err_of(function() a:group("/g"):get("/{-}", f) end), 1, true)
    end)

    it("rejects bad paths, methods and handlers", function()
      assert.matches("must be a string starting with '/'",
        err_of(function() a:get("nope", f) end), 1, true)
      assert.matches("must be a string starting with '/'",
        err_of(function() a:get(nil, f) end), 1, true)
      assert.matches("unknown method FETCH",
        err_of(function() a:route("FETCH", "/c", f) end), 1, true)
      assert.matches("no method given",
        err_of(function() a:route({}, "/c", f) end), 1, true)
      assert.matches("the handler must be a function",
        err_of(function() a:get("/c", "nope") end), 1, true)
      assert.matches("prefix must be a string starting with '/'",
        err_of(function() a:group("api") end), 1, true)
    end)

    it("accepts a callable table as a handler", function()
      local h = setmetatable({}, { __call = function() return "called" end })
      local b = luaserve.app()
      b:get("/", h)
      local c = testing.client(b)
      local res = c:get("/")
      c:close()
      assert.equal("called", res.body)
    end)
  end)
end)
