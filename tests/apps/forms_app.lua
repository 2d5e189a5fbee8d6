-- tests/apps/forms_app.lua: cookies, forms and streamed uploads for
-- tests/test_forms.py (real clients: curl, Python, Node).

local luaserve = require "luaserve"
local crypto = require "luaserve.crypto"

local await, sleep, sync = luaserve.await, luaserve.sleep, luaserve.sync

local app = luaserve.app()


-- Size and SHA-256 of a file, from disk, in a pool thread.
local digest_file = sync(function(path)
  local f = assert(io.open(path, "rb"))
  local d = crypto.sha256_stream()
  while true do
    local s = f:read(65536)
    if not s then break end
    d:update(s)
  end
  f:close()
  return d.size, d:digest("hex")
end)


app:get("/ping", function() return "pong" end)

-- Every field, and each file's name, size and digest (from its temp file).
app:post("/upload", function(req)
  local form = req:multipart()
  local files = {}
  for _, p in ipairs(form.list) do
    local u = p.value
    if type(u) == "table" then
      local size, hex = await(digest_file(u.path))
      files[#files + 1] = { name = u.name, filename = u.filename,
        content_type = u.content_type, size = size, sha256 = hex }
    end
  end
  return { fields = form.fields, files = files }
end)

-- Parts as they stream, digested in the loop piece by piece; ?delay=s
-- sleeps between pieces (a handler slower than its client).
app:post("/parts", function(req)
  local delay = tonumber(req.query.delay)
  local out = {}
  for part in req:parts() do
    local d = crypto.sha256_stream()
    while true do
      local piece = part:read()
      if not piece then break end
      d:update(piece)
      if delay then await(sleep(delay)) end
    end
    out[#out + 1] = { name = part.name, filename = part.filename, size = d.size,
      sha256 = d:digest("hex") }
  end
  return out
end)

-- Refuses without reading the body.
app:post("/early", function(req) return 403, { detail = "uploads closed" } end)

-- Reads the body raw, piece by piece; ?delay=s after the first piece.
app:post("/count", function(req)
  local n = 0
  for piece in req:chunks() do
    if n == 0 and req.query.delay then await(sleep(tonumber(req.query.delay))) end
    n = n + #piece
  end
  return { bytes = n }
end)

-- A route with its own, smaller, upload limit.
app:post("/small", function(req)
  return { n = #req:multipart().list }
end, { max_upload = 100000 })

app:post("/form", function(req)
  return { form = req:form(), tags = req:form_all("tag") }
end)

app:get("/cookies", function(req) return req.cookies end)

app:get("/set-cookies", function(req)
  return luaserve.Response{ body = "set" }
    :set_cookie("plain", "1")
    :set_cookie("spaced", "a b;c", { path = "/", max_age = 3600 })
    :set_cookie("secret_ish", "x", { http_only = true, same_site = "Strict" })
end)

return app
