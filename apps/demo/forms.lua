-- apps/demo/forms.lua: cookies, forms and uploads as routes. A login form
-- that sets a signed session cookie, a page that reads it, an upload
-- whose size and SHA-256 are computed by a sync function once the file is
-- on disk (streamed there: never whole in memory), and a form whose
-- fields are declared (checked, converted, in /docs).
--
-- app.lua: require("forms")(app). Sessions are signed with
-- $LUASERVE_SECRET (at least 16 bytes); without it, with a random secret
-- made at startup and shared by the workers (sessions then end with the
-- server).

local luaserve = require "luaserve"
local crypto = require "luaserve.crypto"
local schema = require "luaserve.schema"
local log = require "luaserve.log"

local await, sync = luaserve.await, luaserve.sync

local SESSION = "session"
local SESSION_AGE = 24 * 3600
-- The demo's one account (a real app keeps salted password hashes).
local USERS = { ann = crypto.sha256("correct horse", "hex") }


-- The file's size and SHA-256, read in 64 KiB pieces in a pool thread:
-- a blocking read and CPU work, both off the loop.
local file_digest = sync(function(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local d = crypto.sha256_stream()
  while true do
    local piece = f:read(65536)
    if not piece then break end
    d:update(piece)
  end
  f:close()
  return d.size, d:digest("hex")
end)


local function page(title, body)
  return luaserve.Response{ content_type = "text/html; charset=utf-8",
    body = ("<!doctype html><title>%s</title><h1>%s</h1>%s"):format(title, title, body) }
end


local function escape(s)
  return (tostring(s):gsub("[&<>\"']", { ["&"] = "&amp;", ["<"] = "&lt;",
    [">"] = "&gt;", ['"'] = "&quot;", ["'"] = "&#39;" }))
end


local LOGIN_FORM = [[<form method="post" action="/login">
<label>user <input name="user" value="ann"></label>
<label>password <input name="password" type="password"></label>
<button>log in</button></form><p>The demo's account: ann / correct horse</p>]]

local UPLOAD_FORM = [[<form method="post" action="/upload" enctype="multipart/form-data">
<input type="file" name="file"> <button>upload</button></form>]]


return function(app)
  local secret = os.getenv("LUASERVE_SECRET") or ""
  if #secret < 16 then
    if secret ~= "" then
      log.warn("LUASERVE_SECRET is shorter than 16 bytes: using a random secret")
    end
    -- One random secret for every worker (--workers): the first to load
    -- puts it in the shared dictionary, the others read it there.
    luaserve.shared.add("demo:session-secret", crypto.token())
    secret = luaserve.shared.get("demo:session-secret") or crypto.token()
  end

  app:get("/login", { summary = "The login form (HTML)", tags = { "forms" } }, function(req)
    return page("Log in", LOGIN_FORM)
  end)

  -- The form's fields (req:form(): urlencoded here; multipart works the
  -- same); a good password sets the signed session cookie and redirects.
  app:post("/login", { summary = "Check the form, set a signed session cookie",
    tags = { "forms" } }, function(req)
    local form = req:form()
    local want = USERS[form.user or ""]
    local got = crypto.sha256(form.password or "", "hex")
    if not (want and crypto.equal(want, got)) then
      local res = page("Log in", "<p>Wrong user or password.</p>" .. LOGIN_FORM)
      res.status = 401
      return res
    end
    return luaserve.Response{ status = 303, headers = { Location = "/me" } }
      :set_cookie(SESSION, form.user, { secret = secret, max_age = SESSION_AGE,
        http_only = true, same_site = "Lax", path = "/",
        secure = req.scheme == "https" })
  end)

  -- Who the session cookie says: checked signature and age.
  app:get("/me", { summary = "Who the session cookie says", tags = { "forms" } }, function(req)
    local user, why = req:signed_cookie(SESSION, secret, SESSION_AGE)
    if not user then
      return 401, { detail = "not logged in (" .. why .. "): POST /login first" }
    end
    return { user = user }
  end)

  app:post("/logout", { summary = "Delete the session cookie", tags = { "forms" } }, function(req)
    return luaserve.Response{ body = { logged_out = true } }
      :delete_cookie(SESSION, { path = "/" })
  end)

  app:get("/upload", { summary = "The upload form (HTML)", tags = { "forms" } }, function(req)
    return page("Upload a file", UPLOAD_FORM)
  end)

  -- A declared form: its fields checked and converted (req.valid.form),
  -- a 422 naming each problem, and the fields in /docs (multipart, for
  -- the file field).
  app:post("/profile", { summary = "A declared form: typed fields and an optional file",
    tags = { "forms" }, form = {
      name = schema.string{ min_length = 1, max_length = 50, description = "who you are" },
      age = schema.integer{ min = 0, max = 150 },
      photo = schema.file{ optional = true, max_size = 1024 * 1024,
        content_types = { "image/png", "image/jpeg" }, description = "a PNG or JPEG up to 1 MB" },
    } }, function(req)
    local f = req.valid.form
    return { name = f.name, age = f.age,
      photo = f.photo and { filename = f.photo.filename, size = f.photo.size,
        content_type = f.photo.content_type } or luaserve.null }
  end)

  -- The file streams into a temp file (bounded memory, whatever its size);
  -- a sync function digests it from disk; the temp file is removed when
  -- the request ends.
  app:post("/upload", { summary = "Stream a file to disk, answer its size and SHA-256",
    tags = { "forms" }, max_upload = 1024 * 1024 * 1024 }, function(req)
    local form = req:multipart()
    local file = form.files.file
    if not file then
      return 400, { detail = "send the file as the form field 'file' " ..
        "(curl -F file=@PATH localhost:8080/upload)" }
    end
    local size, digest = await(file_digest(file.path))
    if not size then return 500, { detail = "could not read the upload: " .. digest } end
    return { filename = file.filename, size = size, sha256 = digest,
      content_type = file.content_type }
  end)
end
