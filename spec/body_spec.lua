-- spec/body_spec.lua: luaserve.body, a request's body as a stream: a
-- multipart request's body read whole on first use of req.body (within the
-- route's max_body), in pieces with req:chunks(), and read one way only.

local luaserve = require "luaserve"
local testing = require "luaserve.testing"

local B = "----luaserveBodySpec"
local MP = "multipart/form-data; boundary=" .. B


local function body_of(value)
  return "--" .. B .. '\r\nContent-Disposition: form-data; name="a"\r\n\r\n' ..
    value .. "\r\n--" .. B .. "--\r\n"
end


describe("luaserve.body", function()
  local app = luaserve.app()
  app:post("/body", function(req)
    return { len = #req.body, head = req.body:sub(1, 2 + #B), again = #req.body }
  end, { max_body = 4096 })
  app:post("/chunks", function(req)
    local n, count = 0, 0
    for c in req:chunks() do n, count = n + #c, count + 1 end
    -- a new iterator: nothing more of a streamed body, an in-memory one again
    return { n = n, count = count, again = #(req:chunks()() or "") }
  end)
  app:post("/twice", function(req)
    req:multipart()
    return { len = #req.body }
  end)
  app:use(function(req, call_next)   -- a middleware may read the body first
    if req.headers["x-peek"] then req.peeked = #req.body end
    return call_next(req)
  end)
  app:post("/after-peek", function(req)
    return { peeked = req.peeked, fields = req:multipart().fields }
  end)

  local client
  setup(function() client = testing.client(app) end)
  teardown(function() client:close() end)

  local function post(path, body, ctype, headers)
    local h = { ["Content-Type"] = ctype or MP }
    for k, v in pairs(headers or {}) do h[k] = v end
    return client:post(path, { body = body, headers = h })
  end

  it("reads a streamed body whole as req.body, within the route's max_body", function()
    local body = body_of("1")
    assert.same({ len = #body, head = "--" .. B, again = #body }, post("/body", body):json())
    local res = post("/body", body_of(string.rep("x", 5000)))
    assert.equals(413, res.status)
    assert.equals("request body larger than 4096 bytes", res:json().detail)
  end)

  it("gives a body's pieces with req:chunks(), streamed or not", function()
    local body = body_of(string.rep("x", 300000))
    local t = post("/chunks", body):json()
    assert.equals(#body, t.n)
    assert.is_true(t.count >= 1)
    assert.equals(0, t.again)
    assert.same({ n = 10, count = 1, again = 10 }, post("/chunks", "plain body",
      "text/plain"):json())
  end)

  it("refuses to read a body twice: a 500 naming the handler's line", function()
    assert.equals(500, post("/twice", body_of("1")).status)
  end)

  it("lets a middleware read the body before the handler parses it", function()
    local body = body_of("v")
    assert.same({ peeked = #body, fields = { a = "v" } },
      post("/after-peek", body, nil, { ["X-Peek"] = "1" }):json())
  end)
end)
