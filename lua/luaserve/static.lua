-- luaserve.static: files from disk. app:static(prefix, dir, opts) serves a
-- folder; luaserve.FileResponse(path, opts) answers with one file a handler
-- picked.
--
--   app:static("/static", "public")              -- beside the app's file
--   app:get("/report", function(req)
--     return luaserve.FileResponse("/srv/reports/latest.pdf", { filename = "report.pdf" })
--   end)
--
-- The file is opened and stat'ed on libuv's thread pool (core/static.c):
-- beneath the folder (openat2 RESOLVE_BENEATH: `..`, absolute paths and
-- symlinks that leave it fail), never a blocking call on the loop. Files
-- up to 64 KB are read there whole and answered from memory (middleware
-- such as GZip see the body); bigger ones go out with sendfile(2) off the
-- loop (in chunks over TLS). app:static keeps what it opened in an
-- open-file cache (luaserve.filecache: small files' content, folders,
-- missing paths; checked again on the pool after `valid` seconds), so a
-- hit is answered from the loop. Content-Type from Debian's /etc/mime.types,
-- ETag and Last-Modified with 304 for If-None-Match / If-Modified-Since,
-- one byte range (206, 416 when it cannot be met; If-Range), HEAD,
-- index.html for folders (or, when asked, a page listing the folder),
-- Cache-Control.

local core = require "luaserve.core"
local errors = require "luaserve.errors"
local filecache = require "luaserve.filecache"
local future = require "luaserve.future"
local response = require "luaserve.response"

local file_open = core.file_open
local new_future = future.new_internal   -- always awaited at once
local await = future.await
local type = type
local tonumber = tonumber
local tostring = tostring
local setmetatable = setmetatable
local format = string.format
local byte = string.byte
local find = string.find
local match = string.match
local lower = string.lower
local sub = string.sub
local gsub = string.gsub
local floor = math.floor
local os_date = os.date

local M = {}

local FileBody = response.FileBody


-- ---------------------------------------------------------------------------
-- Content types

local FALLBACK_TYPES = {
  html = "text/html", htm = "text/html", css = "text/css", js = "text/javascript",
  mjs = "text/javascript", json = "application/json", txt = "text/plain",
  svg = "image/svg+xml", png = "image/png", jpg = "image/jpeg", jpeg = "image/jpeg",
  gif = "image/gif", ico = "image/vnd.microsoft.icon", webp = "image/webp",
  wasm = "application/wasm", pdf = "application/pdf", xml = "application/xml",
  map = "application/json", woff = "font/woff", woff2 = "font/woff2",
}


--- load_types(file): extension -> content type, from a mime.types file
-- (Debian's media-types: "type ext1 ext2 ..."); the built-in table for
-- the common ones when it cannot be read.
function M.load_types(file)
  local types = {}
  local f = io.open(file or "/etc/mime.types", "r")
  if not f then
    for k, v in pairs(FALLBACK_TYPES) do types[k] = v end
    return types
  end
  for line in f:lines() do
    if not find(line, "^%s*#") then
      local t, rest = match(line, "^%s*(%S+)%s+(.+)$")
      if t then
        for ext in rest:gmatch("%S+") do
          types[lower(ext)] = types[lower(ext)] or t
        end
      end
    end
  end
  f:close()
  for k, v in pairs(FALLBACK_TYPES) do types[k] = types[k] or v end
  return types
end

-- Once, when the module loads (the app's load, before serving).
local TYPES = M.load_types(os.getenv("LUASERVE_MIME_TYPES"))
M.TYPES = TYPES


--- content_type(path): the type for the file's extension (text gets
-- charset=utf-8), application/octet-stream when unknown.
function M.content_type(path)
  local ext = match(path, "%.([^./]+)$")
  local t = ext and TYPES[lower(ext)]
  if not t then return "application/octet-stream" end
  if find(t, "^text/") or t == "application/json" or t == "application/javascript" or
     t == "image/svg+xml" then
    return t .. "; charset=utf-8"
  end
  return t
end


-- ---------------------------------------------------------------------------
-- Dates

local MONTHS = { Jan = 1, Feb = 2, Mar = 3, Apr = 4, May = 5, Jun = 6, Jul = 7,
  Aug = 8, Sep = 9, Oct = 10, Nov = 11, Dec = 12 }


--- http_date(t): "Sun, 06 Nov 1994 08:49:37 GMT"
function M.http_date(t)
  return os_date("!%a, %d %b %Y %H:%M:%S GMT", t)
end


-- Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = floor(y / 400)
  local yoe = y - era * 400
  local mp = (m + 9) % 12
  local doy = floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + floor(yoe / 4) - floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end


--- parse_http_date(s): seconds since the epoch, or nil (IMF-fixdate, the
-- form every client sends back).
function M.parse_http_date(s)
  if type(s) ~= "string" then return nil end
  local d, mon, y, h, mi, sec = match(s, "^%a+, (%d%d) (%a%a%a) (%d%d%d%d) (%d%d):(%d%d):(%d%d) GMT$")
  if not d or not MONTHS[mon] then return nil end
  return days_from_civil(tonumber(y), MONTHS[mon], tonumber(d)) * 86400 +
    tonumber(h) * 3600 + tonumber(mi) * 60 + tonumber(sec)
end


-- ---------------------------------------------------------------------------
-- Answering with a file

-- The request of the running task (FileResponse is called in a handler).
local function current_request()
  local req = future.request_of(future.current())
  if type(req) == "table" and req.method and req.headers then return req end
  return nil
end


-- Does the If-None-Match list hold etag (weak comparison)?
local function etag_matches(list, etag)
  if find(list, "*", 1, true) and match(list, "^%s*%*%s*$") then return true end
  local bare = etag:gsub("^W/", "")
  for tag in list:gmatch("[^,]+") do
    tag = match(tag, "^%s*(.-)%s*$"):gsub("^W/", "")
    if tag == bare then return true end
  end
  return false
end


-- The one byte range of a Range header: first, last (inclusive); "416"
-- when it cannot be met; nil to send the whole file (no header, another
-- unit, several ranges or a malformed one: RFC 9110 lets a server ignore
-- those).
local function byte_range(h, size)
  if h == nil then return nil end
  local a, b = match(h, "^%s*bytes%s*=%s*(%d*)%s*%-%s*(%d*)%s*$")
  if a == nil or (a == "" and b == "") then return nil end
  if a == "" then   -- the last b bytes
    local n = tonumber(b)
    if n == 0 or size == 0 then return "416" end
    if n > size then n = size end
    return size - n, size - 1
  end
  a = tonumber(a)
  if b ~= "" and tonumber(b) < a then return nil end   -- malformed: ignored
  if a >= size then return "416" end
  b = b ~= "" and tonumber(b) or size - 1
  if b >= size then b = size - 1 end
  return a, b
end


local function not_found()
  error(errors.new(404, "Not Found"), 0)
end


-- Open root/path (root nil: path as it is) on the pool: kind, size,
-- mtime, content|file|false; or nil, errno name. (Not the stamp
-- file_open gives fifth: only the cache uses it.)
local function open(root, path)
  local f = new_future()
  local ok, err = file_open(root, path, filecache.target(f))
  if not ok then return nil, err end
  local kind, size, mtime, data = await(f)
  return kind, size, mtime, data
end


-- Through the cache when there is one: open's values and the entry.
local function lookup(root, path, cache)
  if cache then return cache:open(path) end
  return open(root, path)
end


local FORBIDDEN = { EACCES = true, EPERM = true }


--- respond(req, root, path, opts): the answer for the file at path
-- (beneath root when given) as a Response. Raises HTTPError 404 (or
-- 403) when there is no such file. opts: content_type, headers,
-- cache_control, filename (Content-Disposition: attachment), status,
-- index (a folder's file), redirect_dir (a folder without a slash: 301),
-- cache (a luaserve.filecache of root).
function M.respond(req, root, path, opts)
  local cache = opts.cache
  local kind, size, mtime, data, entry = lookup(root, path, cache)
  if kind == nil then
    if FORBIDDEN[size] then error(errors.new(403, "Forbidden"), 0) end
    if size == "EMFILE" or size == "ENFILE" then
      error(errors.new(503, "too many open files", { ["Retry-After"] = "1" }), 0)
    end
    not_found()
  end
  if kind == "dir" then
    local index, listed = opts.index, opts.listing and root
    if not index and not listed then not_found() end
    if opts.redirect_dir and sub(req.path, -1) ~= "/" then
      local q = req.query_string
      return response.new{ status = 301, body = "",
        headers = { Location = req.path .. "/" .. (q and ("?" .. q) or "") } }
    end
    local folder = path
    if index then
      path = (path == "" or sub(path, -1) == "/") and path .. index or path .. "/" .. index
      kind, size, mtime, data, entry = lookup(root, path, cache)
    end
    if kind ~= "file" then
      if listed and (not index or size == "ENOENT") then
        return M.listing(req, root, folder)
      end
      if FORBIDDEN[size] then error(errors.new(403, "Forbidden"), 0) end
      not_found()
    end
  elseif kind ~= "file" then
    not_found()   -- a fifo, a device: nothing to serve
  end
  -- A cached file's validators and type are made once, on its entry.
  local etag = entry and entry.etag
  local last_modified, ctype
  if etag then
    last_modified, ctype = entry.last_modified, entry.content_type
  else
    etag = format('"%x-%x"', mtime, size)
    last_modified = M.http_date(mtime)
    ctype = M.content_type(path)
    if entry then
      entry.etag, entry.last_modified, entry.content_type = etag, last_modified, ctype
    end
  end
  ctype = opts.content_type or ctype
  local headers = { ETag = etag, ["Last-Modified"] = last_modified,
    ["Accept-Ranges"] = "bytes" }
  if opts.cache_control then headers["Cache-Control"] = opts.cache_control end
  if opts.filename then
    headers["Content-Disposition"] = format('attachment; filename="%s"',
      (tostring(opts.filename):gsub('["\\\r\n]', "_")))
  end
  if opts.headers then
    for k, v in pairs(opts.headers) do headers[k] = v end
  end
  local rh = req.headers
  -- Conditional requests (RFC 9110 13.2.2): If-None-Match first, else
  -- If-Modified-Since; 304 for GET and HEAD.
  local inm, ims = rh["if-none-match"], rh["if-modified-since"]
  local method = req.method
  if method == "GET" or method == "HEAD" then
    local fresh
    if inm then
      fresh = etag_matches(inm, etag)
    elseif ims then
      local t = M.parse_http_date(ims)
      fresh = t ~= nil and mtime <= t
    end
    if fresh then
      if type(data) ~= "string" and data then data:close() end
      headers["Accept-Ranges"] = nil
      return response.new{ status = 304, body = "", headers = headers }
    end
  end
  local status, first, last = opts.status or 200, 0, size - 1
  local range = rh.range
  if range and method == "GET" and status == 200 then
    local if_range = rh["if-range"]
    if if_range == nil or if_range == etag or if_range == last_modified then
      local a, b = byte_range(range, size)
      if a == "416" then
        if type(data) ~= "string" and data then data:close() end
        headers["Content-Range"] = "bytes */" .. size
        return response.new{ status = 416, headers = headers,
          body = { detail = "Range Not Satisfiable" } }
      elseif a then
        status, first, last = 206, a, b
        headers["Content-Range"] = format("bytes %d-%d/%d", a, b, size)
      end
    end
  end
  if type(data) == "string" then   -- a small file, read whole
    if first ~= 0 or last ~= size - 1 then data = sub(data, first + 1, last + 1) end
    return response.new{ status = status, body = data, content_type = ctype,
      headers = headers }
  end
  return response.new{ status = status, content_type = ctype, headers = headers,
    stream = setmetatable({ file = data, offset = first, length = last - first + 1 }, FileBody) }
end


--- FileResponse(path, opts): answer with the file at path (relative to
-- the working folder, or absolute), from an async handler: it opens the
-- file (off the loop) and gives the Response, with ETag, Last-Modified,
-- 304 and Range handled like app:static. A missing file raises
-- HTTPError(404). opts: content_type, filename (sent as an attachment),
-- headers, cache_control, status.
function M.FileResponse(path, opts)
  if type(path) ~= "string" then error("FileResponse: expected a path", 2) end
  opts = opts or {}
  local req = current_request()
  if req == nil then
    error("FileResponse: call it from an async handler (it answers the request " ..
      "that runs)", 2)
  end
  return M.respond(req, nil, path, opts)
end


-- ---------------------------------------------------------------------------
-- Folder listings (app:static's listing = true)

local dir_list = core.dir_list
local MAX_LISTED = 10000   -- entries shown at most (the rest are counted out)

local HTML_ESCAPES = { ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;",
  ['"'] = "&quot;", ["'"] = "&#39;" }

--- html_escape(s): s as HTML text or attribute value.
local function html_escape(s)
  return (gsub(tostring(s), "[&<>\"']", HTML_ESCAPES))
end
M.html_escape = html_escape

-- A name as one path segment of a link: every byte but unreserved ones
-- percent-encoded.
local function url_segment(s)
  return (gsub(s, "[^%w%-%._~]", function(c) return format("%%%02X", byte(c)) end))
end

local function listed_before(a, b)
  local ad, bd = a.kind == "dir", b.kind == "dir"
  if ad ~= bd then return ad end   -- folders first
  return a.name < b.name
end

local function size_text(n)
  if n < 1024 then return format("%d B", n) end
  if n < 1024 * 1024 then return format("%.1f KB", n / 1024) end
  if n < 1024 ^ 3 then return format("%.1f MB", n / 1024 ^ 2) end
  return format("%.1f GB", n / 1024 ^ 3)
end

local LISTING_HEAD = [[<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Index of %s</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em; }
table { border-collapse: collapse; }
th, td { padding: 0.2em 1.5em 0.2em 0; text-align: left; }
td.size { text-align: right; }
</style>
</head>
<body>
<h1>Index of %s</h1>
<table>
<tr><th>Name</th><th>Size</th><th>Modified (UTC)</th></tr>
]]


--- listing(req, root, folder): an HTML page listing the folder beneath
-- root (read on the pool: core.dir_list). Names starting with "." are
-- left out; folders come first, then files, each by name; a symlink is
-- listed by its name (following it resolves it beneath the root, as any
-- path: one that leaves answers 404). At most 10,000 entries.
function M.listing(req, root, folder)
  local f = new_future()
  local ok, err = dir_list(root, folder, f, MAX_LISTED)
  if not ok then error(errors.new(503, "cannot list the folder: " .. tostring(err)), 0) end
  local entries, cut = await(f)
  if entries == nil then
    if FORBIDDEN[cut] then error(errors.new(403, "Forbidden"), 0) end
    not_found()
  end
  table.sort(entries, listed_before)
  local where = html_escape(req.path)
  local out = { format(LISTING_HEAD, where, where) }
  if folder ~= "." and folder ~= "" then
    out[#out + 1] = '<tr><td><a href="../">../</a></td><td></td><td></td></tr>\n'
  end
  for i = 1, #entries do
    local e = entries[i]
    local slash = e.kind == "dir" and "/" or ""
    out[#out + 1] = format('<tr><td><a href="%s%s">%s%s</a></td><td class="size">%s</td><td>%s</td></tr>\n',
      url_segment(e.name), slash, html_escape(e.name), slash,
      e.kind == "file" and size_text(e.size) or "", os_date("!%Y-%m-%d %H:%M", e.mtime))
  end
  out[#out + 1] = "</table>\n"
  if cut then
    out[#out + 1] = format("<p>The folder holds more: only %d entries are listed.</p>\n", MAX_LISTED)
  end
  out[#out + 1] = "</body>\n</html>\n"
  return response.new{ status = 200, body = table.concat(out),
    headers = { ["Content-Type"] = "text/html; charset=utf-8", ["Cache-Control"] = "no-cache" } }
end


-- ---------------------------------------------------------------------------
-- app:static

-- A path a client may ask for beneath the root, or nil: no NUL, no
-- backslash, no empty, "." or ".." segment, not absolute; nothing encoded
-- in the target that decoding turned into a separator.
-- One pass over the bytes (string.byte compiles; patterns and gmatch make
-- LuaJIT leave its trace): it runs on every request.
local function safe_path(req, rel)
  if rel == nil or rel == "" then return "." end
  local n = #rel
  local start = 1   -- where the segment being read starts
  for i = 1, n + 1 do
    local b = i <= n and byte(rel, i) or 47   -- the end closes a segment
    if b == 0 or b == 92 then return nil end   -- NUL, backslash
    if b == 47 then
      local len = i - start
      if len == 0 then
        if i <= n then return nil end   -- a leading "/" or "//" (a trailing "/" is a folder)
      elseif len <= 2 and byte(rel, start) == 46 and
             (len == 1 or byte(rel, start + 1) == 46) then
        return nil   -- "." or ".."
      end
      start = i + 1
    end
  end
  local raw = req.target
  if find(raw, "%", 1, true) and
     (find(raw, "%%2[fF]") or find(raw, "%%5[cC]") or find(raw, "%%00")) then
    return nil
  end
  return rel
end
M.safe_path = safe_path


local function folder_of(source)
  if type(source) ~= "string" or sub(source, 1, 1) ~= "@" then return "." end
  return match(sub(source, 2), "^(.*)/[^/]*$") or "."
end


--- mount(app, prefix, dir, opts, caller): the routes of app:static. dir
-- relative: beside the file that called app:static (caller: its
-- debug.getinfo source). opts: index, listing (true: a folder without
-- its index answers with a page listing it), cache_control or max_age,
-- cache (false, or luaserve.filecache's options: max_bytes, max_file,
-- valid; the app's folders that do not set max_bytes share one bound of
-- the default 8 MB).
function M.mount(app, prefix, dir, opts, caller)
  if type(prefix) ~= "string" or sub(prefix, 1, 1) ~= "/" then
    error("app:static: the prefix must be a path starting with '/'", 3)
  end
  if type(dir) ~= "string" or dir == "" then
    error("app:static: the folder must be a path", 3)
  end
  opts = opts or {}
  if sub(dir, 1, 1) ~= "/" then dir = folder_of(caller) .. "/" .. dir end
  dir = dir:gsub("/+$", "")
  local f = io.open(dir .. "/.", "r")   -- opens only when dir is a folder
  if not f then error(("app:static: %s is not a folder"):format(dir), 3) end
  f:close()
  local cache_control = opts.cache_control or
    (opts.max_age and ("public, max-age=" .. floor(opts.max_age)) or nil)
  local cache = nil
  if opts.cache ~= false then
    local copts = filecache.options(opts.cache, "app:static", 3)
    -- The app's folders share one bound unless a folder sets its own.
    local budget = nil
    if not (type(opts.cache) == "table" and opts.cache.max_bytes ~= nil) then
      budget = app._static_budget or filecache.budget(copts.max_bytes)
      app._static_budget = budget
    end
    cache = filecache.new(dir, copts, budget)
  end
  if opts.listing ~= nil and type(opts.listing) ~= "boolean" then
    error("app:static: listing must be true or false", 3)
  end
  local o = { index = opts.index == nil and "index.html" or opts.index,
    cache_control = cache_control, redirect_dir = true, cache = cache,
    listing = opts.listing }
  prefix = prefix:gsub("/+$", "")
  local function handler(req)
    local rel = safe_path(req, req.params.path)
    if rel == nil then not_found() end
    return M.respond(req, dir, rel, o)
  end
  local ropts = { include_in_schema = false }
  if prefix ~= "" then
    app:get(prefix, function(req)
      local q = req.query_string
      return 301, "", { Location = prefix .. "/" .. (q and ("?" .. q) or "") }
    end, ropts)
  end
  app:get(prefix .. "/", handler, ropts)
  app:get(prefix .. "/{path:path}", handler, ropts)
  return app
end

return M
