-- spec/form_spec.lua: luaserve.form through the real core: urlencoded
-- forms (req:form, repeated keys, 415/400/413), multipart bodies streamed
-- into fields and temp files (req:multipart: limits, malformed bodies,
-- temp files removed or kept), parts one at a time (req:parts), and forms
-- in sync routes.

local luaserve = require "luaserve"
local form = require "luaserve.form"
local testing = require "luaserve.testing"
local crypto = require "luaserve.crypto"

local await = luaserve.await

local B = "----luaserveTestBoundary7MA4YWxk"
local MP = "multipart/form-data; boundary=" .. B


local files = dofile((debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "spec")
  .. "/files_helper.lua")
local exists, read_file = files.exists, files.read
local function multipart_body(parts) return files.multipart(parts, B) end


describe("application/x-www-form-urlencoded", function()
  local app = luaserve.app()
  app:post("/form", function(req)
    return { form = req:form(), all = req:form_all("a"), none = req:form_all("zz") }
  end)

  local client
  setup(function() client = testing.client(app) end)
  teardown(function() client:close() end)

  local function post(body, ctype)
    return client:post("/form", { body = body, headers = {
      ["Content-Type"] = ctype or "application/x-www-form-urlencoded" } })
  end

  it("parses fields: first value, every value, '+' and %-escapes", function()
    local res = post("a=1&b=two+words&a=2&c=%E2%82%AC%26&flag&a=3&=empty")
    assert.equals(200, res.status)
    local t = res:json()
    assert.same({ a = "1", b = "two words", c = "\226\130\172&", flag = "", [""] = "empty" },
      t.form)
    assert.same({ "1", "2", "3" }, t.all)
    assert.same({}, t.none)
    assert.same({}, post("").json and post(""):json().form)
  end)

  it("takes a charset parameter, splits at '&' only", function()
    local t = post("a=1;b=2", "application/x-www-form-urlencoded; charset=UTF-8"):json()
    assert.same({ a = "1;b=2" }, t.form)
  end)

  it("answers 415 for another content type, 400 for a bad escape", function()
    local res = post('{"a":1}', "application/json")
    assert.equals(415, res.status)
    assert.equals("expected a form body (application/x-www-form-urlencoded or " ..
      "multipart/form-data), got 'application/json'", res:json().detail)
    res = client:post("/form", { body = "a=1" })
    assert.equals(415, res.status)
    assert.matches("got no content type", res:json().detail)
    res = post("a=%zz&b=1")
    assert.equals(400, res.status)
    assert.equals("malformed form body: bad percent-escape in '%zz'", res:json().detail)
    assert.equals(400, post("a=100%").status)
  end)

  it("answers 413 past max_fields", function()
    local pairs_ = {}
    for i = 1, form.DEFAULTS.max_fields + 1 do pairs_[i] = "k" .. i .. "=v" end
    local res = post(table.concat(pairs_, "&"))
    assert.equals(413, res.status)
    assert.equals("more than 1000 form fields", res:json().detail)
  end)
end)


describe("multipart/form-data", function()
  local app = luaserve.app()
  local last   -- what the last handler saw, for checks after the answer

  app:post("/upload", function(req)
    local f = req:multipart()
    local files = {}
    for name, u in pairs(f.files) do
      files[name] = { filename = u.filename, size = u.size, type = u.content_type,
        path = u.path, data = read_file(u.path) }
    end
    local order = {}
    for i, p in ipairs(f.list) do order[i] = p.name end
    local tags = {}
    for i, v in ipairs(f:all("tag")) do tags[i] = v end
    last = { files = files }
    return { fields = f.fields, files = files, order = order, tags = tags,
      same = req:multipart() == f }
  end)
  app:post("/keep", function(req)
    local f = req:multipart()
    local dest = os.tmpname()
    os.remove(dest)
    assert(await(f.files.a:move_to(dest)))
    f.files.b:keep()
    return { moved = dest, kept = f.files.b.path }
  end)
  app:post("/limited", function(req)
    local f = req:multipart({ max_file_size = 1000, max_fields = 2, max_files = 2,
      max_field_size = 100 })
    return { n = #f.list }
  end)
  app:post("/form", function(req)
    local t = req:form()
    return { text = t.text, file = t.doc and t.doc.filename, size = t.doc and t.doc.size,
      all = #req:form_all("text") }
  end)
  app:post("/parts", function(req)
    local out = {}
    for part in req:parts() do
      local rec = { name = part.name, filename = part.filename }
      if part.name == "skip" then
        -- not read: skipped when the iterator moves on
      elseif part.filename then
        local d = crypto.sha256_stream()
        for chunk in part.read, part do d:update(chunk) end
        rec.size, rec.sha256 = part.size, d:digest("hex")
      else
        rec.text = part:text()
      end
      out[#out + 1] = rec
    end
    return out
  end)
  app:post("/small", function(req) return { n = #req:multipart().list } end,
    { max_upload = 2000 })
  app:post("/boom", function(req)
    local f = req:multipart()
    last = { path = f.files.a.path, existed = exists(f.files.a.path) }
    error("handler bug after the upload")
  end)

  local client
  setup(function() client = testing.client(app) end)
  teardown(function() client:close() end)

  local function post(path, body, ctype)
    return client:post(path, { body = body, headers = { ["Content-Type"] = ctype or MP } })
  end

  it("streams fields and files: files into temp files removed after the answer", function()
    local data = string.rep("\0\1binary\r\n--", 30000)
    local res = post("/upload", multipart_body({
      { name = "title", value = "holiday" },
      { name = "tag", value = "a" },
      { name = "photo", filename = "C:\\pics\\sea.jpg", value = data, type = "image/jpeg" },
      { name = "tag", value = "b" },
      { name = "empty", filename = "", value = "" },   -- a file input left empty
      { name = "tag", filename = "t.txt", value = "c" },
    }))
    assert.equals(200, res.status)
    local t = res:json()
    assert.same({ title = "holiday", tag = "a" }, t.fields)
    assert.same({ "title", "tag", "photo", "tag", "tag" }, t.order)
    assert.equals(3, #t.tags)
    assert.is_true(t.same)
    local photo = t.files.photo
    assert.equals("sea.jpg", photo.filename)
    assert.equals("image/jpeg", photo.type)
    assert.equals(#data, photo.size)
    assert.is_true(photo.data == data, "the temp file holds the bytes sent")
    assert.matches("/luaserve%-upload%-%w+$", photo.path)
    assert.is_nil(t.files.empty)
    luaserve.await(luaserve.sleep(0.2))
    assert.is_false(exists(last.files.photo.path), "removed once the request ended")
    assert.is_false(exists(last.files.tag.path))
  end)

  it("keeps a file moved or kept by the handler", function()
    local res = post("/keep", multipart_body({
      { name = "a", filename = "a.txt", value = "AAA" },
      { name = "b", filename = "b.txt", value = "BBB" },
    }))
    local t = res:json()
    luaserve.await(luaserve.sleep(0.2))
    assert.equals("AAA", read_file(t.moved))
    assert.equals("BBB", read_file(t.kept))
    os.remove(t.moved)
    os.remove(t.kept)
  end)

  it("answers 413 past a limit, naming it, and removes what it wrote", function()
    local function status(parts)
      local res = post("/limited", multipart_body(parts))
      return res.status, res:json().detail
    end
    assert.same({ 413, "file 'f' is larger than 1000 bytes" },
      { status({ { name = "f", filename = "x", value = string.rep("x", 1001) } }) })
    assert.same({ 413, "more than 2 form fields" },
      { status({ { name = "a", value = "1" }, { name = "b", value = "2" },
                 { name = "c", value = "3" } }) })
    assert.same({ 413, "more than 2 files" },
      { status({ { name = "a", filename = "1", value = "1" }, { name = "b",
        filename = "2", value = "2" }, { name = "c", filename = "3", value = "3" } }) })
    assert.same({ 413, "form field 'a' is larger than 100 bytes" },
      { status({ { name = "a", value = string.rep("x", 101) } }) })
    assert.same({ 200 }, { (status({ { name = "f", filename = "x", value = "ok" } })) })
    luaserve.await(luaserve.sleep(0.2))
    local p = io.popen("ls " .. (os.getenv("TMPDIR") or "/tmp") ..
      "/luaserve-upload-* 2>/dev/null | wc -l")
    local left = p:read("*l")
    p:close()
    assert.equals("0", left, "no temp file left behind")
  end)

  it("answers 400 for a malformed body, 415 for another content type", function()
    local body = multipart_body({ { name = "a", value = "1" } })
    local res = post("/upload", body:sub(1, -10))   -- no closing boundary
    assert.equals(400, res.status)
    assert.equals("malformed multipart body: the body ends before the closing boundary",
      res:json().detail)
    res = post("/upload", body, "multipart/form-data")
    assert.equals(400, res.status)
    assert.equals("malformed multipart body: the content type has no boundary",
      res:json().detail)
    res = post("/upload", "--" .. B .. "\r\nX-No-Disposition: 1\r\n\r\nv\r\n--" .. B .. "--")
    assert.equals(400, res.status)
    assert.matches("a part has no Content%-Disposition: form%-data with a name",
      res:json().detail)
    res = post("/upload", "a=1", "application/x-www-form-urlencoded")
    assert.equals(415, res.status)
    assert.equals("expected a multipart/form-data body, got " ..
      "'application/x-www-form-urlencoded'", res:json().detail)
  end)

  it("gives req:form() for multipart: strings and uploads", function()
    local res = post("/form", multipart_body({
      { name = "text", value = "hello" }, { name = "text", value = "again" },
      { name = "doc", filename = "d.pdf", value = "%PDF" },
    }))
    assert.same({ text = "hello", file = "d.pdf", size = 4, all = 2 }, res:json())
  end)

  it("hands parts over one at a time, skipping what is not read", function()
    local big = string.rep("0123456789", 50000)
    local res = post("/parts", multipart_body({
      { name = "skip", value = string.rep("s", 100000) },
      { name = "note", value = "hi" },
      { name = "big", filename = "big.bin", value = big },
      { name = "skip", filename = "ignored.bin", value = "zzz" },
    }))
    assert.equals(200, res.status)
    assert.same({
      { name = "skip" },
      { name = "note", text = "hi" },
      { name = "big", filename = "big.bin", size = #big, sha256 = crypto.sha256(big, "hex") },
      { name = "skip", filename = "ignored.bin" },
    }, res:json())
  end)

  it("answers 413 before reading when Content-Length passes the route's max_upload", function()
    local res = post("/small", multipart_body({ { name = "a", value = string.rep("x", 3000) } }))
    assert.equals(413, res.status)
    assert.equals("request body too large", res:json().detail)
    assert.equals(200, post("/small", multipart_body({ { name = "a", value = "x" } })).status)
  end)

  it("removes the temp files of a handler that failed after the upload", function()
    local res = post("/boom", multipart_body({ { name = "a", filename = "a", value = "A" } }))
    assert.equals(500, res.status)
    assert.is_true(last.existed)
    luaserve.await(luaserve.sleep(0.2))
    assert.is_false(exists(last.path))
  end)
end)


describe("forms in sync routes", function()
  local client
  setup(function()
    client = testing.client("spec/fixtures/forms_sync_app.lua", { threads = 2 })
  end)
  teardown(function() client:close() end)

  it("parses a multipart body in a pool thread and removes its temp file", function()
    local data = string.rep("pool", 10000)
    local res = client:post("/sync-form", { body = multipart_body({
      { name = "who", value = "me" }, { name = "file", filename = "f.bin", value = data },
    }), headers = { ["Content-Type"] = MP } })
    assert.equals(200, res.status)
    local t = res:json()
    assert.same({ who = "me" }, t.fields)
    assert.equals(#data, t.size)
    assert.equals(crypto.sha256(data, "hex"), t.sha256)
    assert.is_false(exists(t.path))
  end)

  it("parses an urlencoded body in a pool thread", function()
    local res = client:post("/sync-urlencoded", { body = "a=1&a=2&b=x",
      headers = { ["Content-Type"] = "application/x-www-form-urlencoded" } })
    assert.same({ form = { a = "1", b = "x" }, all = { "1", "2" } }, res:json())
  end)
end)
