-- luaserve.form: HTML form bodies. application/x-www-form-urlencoded is
-- parsed from req.body; multipart/form-data is parsed as it streams in
-- (luaserve.body, luaserve.multipart): fields are kept in memory (bounded),
-- files go to temporary files written on the thread pool (luaserve.fs),
-- or the parts are handed to the handler one piece at a time. These are
-- what req:form(), req:form_all(), req:multipart() and req:parts() call.
--
-- Temporary files are named <dir>/luaserve-upload-XXXXXX (mode 0600) and
-- removed when the request ends (answered, failed or cancelled because
-- its client left) unless the handler moved or kept them.
--
-- Bad input raises an HTTPError for the client: 415 (not a form), 400
-- (malformed), 413 (a limit).

local body = require "luaserve.body"
local errors = require "luaserve.errors"
local fs = require "luaserve.fs"
local future = require "luaserve.future"
local multipart = require "luaserve.multipart"

local core = require "luaserve.core"

local await = future.await
local find = string.find
local sub = string.sub
local gsub = string.gsub
local char = string.char
local lower = string.lower
local match = string.match
local tonumber = tonumber
local type = type
local rawget = rawget
local concat = table.concat
local error = error
local setmetatable = setmetatable
local fs_unlink = core.fs_unlink

local M = {}

--- The limits of multipart bodies; req:multipart(opts) / req:parts(opts)
-- override them per call. The whole body is bounded by the route's
-- max_upload (--max-upload).
M.DEFAULTS = {
  max_fields = 1000,           -- non-file parts (and urlencoded fields)
  max_files = 100,             -- file parts
  max_field_size = 1024 * 1024, -- bytes of one non-file part (kept in memory)
  max_file_size = nil,         -- bytes of one file (nil: only max_upload)
  max_part_header_bytes = 16384, -- a part's header block
  dir = nil,                   -- temp files: nil is $TMPDIR or /tmp
}


local function http_error(status, detail)
  return errors.new(status, detail)
end


local function media_type(ctype)
  if type(ctype) ~= "string" then return nil end
  return lower(match(ctype, "^%s*([^;%s]+)") or "")
end
M.media_type = media_type


local function limits(opts)
  local d = M.DEFAULTS
  if opts == nil then return d end
  if type(opts) ~= "table" then error("form options must be a table", 3) end
  local out = {}
  for k, v in pairs(d) do out[k] = v end
  for k, v in pairs(opts) do
    if d[k] == nil and k ~= "max_file_size" and k ~= "dir" then
      error(("unknown form option '%s' (max_fields, max_files, max_field_size, " ..
        "max_file_size, max_part_header_bytes, dir)"):format(tostring(k)), 3)
    end
    out[k] = v
  end
  return out
end


-- ---------------------------------------------------------------------------
-- application/x-www-form-urlencoded

local function hex_char(h)
  return char(tonumber(h, 16))
end


local function form_decode(s)
  s = gsub(s, "+", " ")
  if not find(s, "%", 1, true) then return s end
  if find(gsub(s, "%%%x%x", ""), "%", 1, true) then
    error(http_error(400, ("malformed form body: bad percent-escape in '%s'")
      :format(sub(s, 1, 60))), 0)
  end
  return (gsub(s, "%%(%x%x)", hex_char))
end


--- parse_urlencoded(body, max_fields): fields (name -> first value) and
-- all (name -> every value, in order). Pairs are split at '&' only;
-- '+' is a space; a bad %-escape is a 400, more than max_fields a 413.
function M.parse_urlencoded(s, max_fields)
  local fields, all, n = {}, {}, 0
  max_fields = max_fields or M.DEFAULTS.max_fields
  for pair in s:gmatch("[^&]+") do
    n = n + 1
    if n > max_fields then
      error(http_error(413, ("more than %d form fields"):format(max_fields)), 0)
    end
    local eq = find(pair, "=", 1, true)
    local k, v
    if eq then
      k, v = form_decode(sub(pair, 1, eq - 1)), form_decode(sub(pair, eq + 1))
    else
      k, v = form_decode(pair), ""
    end
    local list = all[k]
    if list == nil then
      all[k] = { v }
      fields[k] = v
    else
      list[#list + 1] = v
    end
  end
  return fields, all
end


-- ---------------------------------------------------------------------------
-- Uploads: files received into temporary files

local Upload = {}
Upload.__index = Upload
Upload.__name = "luaserve.Upload"


function Upload.__tostring(u)
  return ("luaserve.Upload (%s, %s, %d bytes)"):format(u.name,
    tostring(u.filename), u.size or 0)
end


--- upload:move_to(path): a future: true once the file is at path (a
-- rename; across file systems a copy), or nil, err, code. A moved file is
-- not removed when the request ends.
function Upload:move_to(path)
  if type(path) ~= "string" then
    error("upload:move_to: expected a path, got " .. type(path), 2)
  end
  local out = future.new()
  fs.move(self.path, path):on_done(function(g)
    local ok, err, code = g:result()
    if ok then
      self.path = path
      self._kept = true
    end
    out:resolve(ok, err, code)
  end)
  return out
end


--- upload:keep(): keep the temp file at upload.path when the request ends
-- (removing it is then yours). Returns the upload.
function Upload:keep()
  self._kept = true
  return self
end


--- upload:open(): a future of a luaserve.fs file open for reading.
function Upload:open()
  return fs.open(self.path, "r")
end


-- Remove the request's temp files that nobody moved or kept; close the
-- ones still open (after their last write). Runs once.
local function discard(req)
  local list = rawget(req, "_uploads")
  if list == nil then return end
  req._uploads = nil
  for i = 1, #list do
    local u = list[i]
    if u._file then
      future.quiet(u._file:close())   -- after its last write; nobody waits
      u._file = nil
    end
    if not u._kept then fs_unlink(u.path) end
  end
end
M.discard = discard


local function temp_dir(lim)
  local dir = lim.dir or os.getenv("TMPDIR") or "/tmp"
  if dir == "" then dir = "/tmp" end
  return (gsub(dir, "/+$", ""))
end


-- A new upload with an open temp file, tied to the request: removed when
-- it ends (its cleanups) or when its task is cancelled.
local function new_upload(req, lim, name, filename, headers)
  local dir = temp_dir(lim)
  local f, err = await(fs.mkstemp(dir .. "/luaserve-upload-XXXXXX"))
  if not f then
    error(("upload: cannot create a temporary file in %s: %s"):format(dir,
      tostring(err)), 0)
  end
  local u = setmetatable({ name = name, filename = filename,
    content_type = headers["content-type"], headers = headers, size = 0,
    path = f.path, _file = f, _kept = false }, Upload)
  local list = rawget(req, "_uploads")
  if list == nil then
    list = {}
    req._uploads = list
    -- After the answer: the request's cleanups (server.lua runs them,
    -- also for a streamed or failed answer). A client that leaves cancels
    -- the task instead: its cancel hooks.
    local cleanups = rawget(req, "_cleanups")
    if cleanups == nil then cleanups = {} req._cleanups = cleanups end
    cleanups[#cleanups + 1] = function() discard(req) end
    future.on_cancel(function() discard(req) end)
  end
  list[#list + 1] = u
  return u
end


-- ---------------------------------------------------------------------------
-- multipart/form-data

-- The parser for req's body (415 if it is not multipart/form-data, 400
-- without a boundary), and a function giving its next event, reading the
-- body as it needs.
local function open_multipart(req, lim)
  local st = rawget(req, "_body")
  if st and st.received > 0 then
    if rawget(req, "body") == nil then
      error("the request's body was read already as a stream (req:multipart(), " ..
        "req:parts() and req:chunks() each read it; use one)", 3)
    end
    req._body = nil   -- whole in memory (req.body): read it again
  end
  local ctype = req.headers["content-type"]
  if media_type(ctype) ~= "multipart/form-data" then
    error(http_error(415, ("expected a multipart/form-data body, got %s")
      :format(ctype and ("'" .. ctype .. "'") or "no content type")), 0)
  end
  local boundary, why = multipart.boundary(ctype)
  if not boundary then
    error(http_error(400, "malformed multipart body: " .. why), 0)
  end
  local p = multipart.parser(boundary, { max_header_bytes = lim.max_part_header_bytes })
  local read = body.read
  local function next_event()
    while true do
      local ev, v = p:next()
      if ev then return ev, v end
      local data = read(req)
      if data == nil then p:finish() else p:feed(data) end
    end
  end
  -- After the closing boundary: read the rest (the epilogue) so the
  -- connection can be reused.
  local function drain()
    while read(req) do end
  end
  return next_event, drain
end


-- The name and filename of a part from its Content-Disposition (400
-- without one); filename nil for a field, the last path component for a
-- file.
local function part_names(headers)
  local dtype, params = multipart.disposition(headers["content-disposition"])
  if dtype ~= "form-data" or params.name == nil then
    error(http_error(400, "malformed multipart body: a part has no " ..
      "Content-Disposition: form-data with a name"), 0)
  end
  local filename = params.filename
  if filename ~= nil then filename = multipart.basename(filename) end
  return params.name, filename
end


local Form = {}
Form.__index = Form
Form.__name = "luaserve.Form"


--- form:all(name): every value given for name, in order (strings for
-- fields, uploads for files).
function Form:all(name)
  return self._all[name] or {}
end


local function form_add(form, name, value, is_file)
  local list = form._all[name]
  if list == nil then
    form._all[name] = { value }
    if is_file then form.files[name] = value else form.fields[name] = value end
  else
    list[#list + 1] = value
    if is_file and form.files[name] == nil then form.files[name] = value end
    if not is_file and form.fields[name] == nil then form.fields[name] = value end
  end
  form.list[#form.list + 1] = { name = name, value = value }
end


--- multipart(req, opts): the whole multipart body, read as it streams: a
-- form with fields (name -> first string), files (name -> first upload:
-- name, filename, content_type, headers, size, path, :move_to(), :keep(),
-- :open()), list (every part in order: {name=, value=}) and :all(name).
-- A file input left empty (no filename, no bytes) is not listed.
function M.multipart(req, opts)
  local cached = rawget(req, "_multipart")
  if cached then return cached end
  local lim = limits(opts)
  local next_event, drain = open_multipart(req, lim)
  local form = setmetatable({ fields = {}, files = {}, list = {}, _all = {} }, Form)
  local nfields, nfiles = 0, 0
  local cur
  while true do
    local ev, v = next_event()
    if ev == "part" then
      local name, filename = part_names(v)
      if filename ~= nil then
        nfiles = nfiles + 1
        if nfiles > lim.max_files then
          error(http_error(413, ("more than %d files"):format(lim.max_files)), 0)
        end
        cur = { upload = new_upload(req, lim, name, filename, v), size = 0 }
      else
        nfields = nfields + 1
        if nfields > lim.max_fields then
          error(http_error(413, ("more than %d form fields"):format(lim.max_fields)), 0)
        end
        cur = { name = name, chunks = {}, size = 0 }
      end
    elseif ev == "data" then
      local size = cur.size + #v
      cur.size = size
      local up = cur.upload
      if up then
        local max = lim.max_file_size
        if max and size > max then
          error(http_error(413, ("file '%s' is larger than %d bytes")
            :format(up.name, max)), 0)
        end
        local ok, err = await(up._file:write(v))
        if not ok then
          error(("upload: cannot write %s: %s"):format(up.path, tostring(err)), 0)
        end
      else
        if size > lim.max_field_size then
          error(http_error(413, ("form field '%s' is larger than %d bytes")
            :format(cur.name, lim.max_field_size)), 0)
        end
        cur.chunks[#cur.chunks + 1] = v
      end
    elseif ev == "end" then
      local up = cur.upload
      if up then
        local f = up._file
        up._file = nil
        local ok, err = await(f:close())
        if not ok then
          error(("upload: cannot close %s: %s"):format(up.path, tostring(err)), 0)
        end
        up.size = cur.size
        if up.filename == "" and cur.size == 0 then
          nfiles = nfiles - 1   -- an empty file input: not an upload
        else
          form_add(form, up.name, up, true)
        end
      else
        form_add(form, cur.name, concat(cur.chunks), false)
      end
      cur = nil
    else   -- "done"
      break
    end
  end
  drain()
  req._multipart = form
  return form
end


-- ---------------------------------------------------------------------------
-- Parts, one at a time

local Part = {}
Part.__index = Part
Part.__name = "luaserve.Part"


--- part:read(): the next piece of the part's content, or nil at its end.
function Part:read()
  if self._ended then return nil end
  if self._stale then
    error("part:read: this part is over (the iterator moved on to the next)", 2)
  end
  local ev, v = self._next()
  if ev == "data" then
    self.size = self.size + #v
    return v
  end
  self._ended = true   -- "end"
  return nil
end


--- part:text(max): the rest of the part as a string, at most max bytes
-- (default max_field_size; 413 beyond).
function Part:text(max)
  max = max or self._max
  local out, n = {}, 0
  while true do
    local v = self:read()
    if v == nil then break end
    n = n + #v
    if n > max then
      error(http_error(413, ("part '%s' is larger than %d bytes"):format(self.name, max)), 0)
    end
    out[#out + 1] = v
  end
  return concat(out)
end


--- parts(req, opts): an iterator over the parts of a multipart body as
-- it streams: each part has name, filename (nil for a field),
-- content_type, headers, size (read so far), :read() and :text(max). What
-- a part's reader does not take is skipped when the iterator moves on.
-- Nothing is written to disk: the handler decides where the bytes go.
function M.parts(req, opts)
  local lim = limits(opts)
  local next_event, drain = open_multipart(req, lim)
  local current
  local finished = false
  local count = 0
  req._body_parts = true
  return function()
    if finished then return nil end
    if current then
      while not current._ended do current:read() end
      current._stale = true
    end
    local ev, v = next_event()
    if ev == "done" then
      finished = true
      drain()
      return nil
    end
    local name, filename = part_names(v)
    count = count + 1
    if count > lim.max_fields + lim.max_files then
      error(http_error(413, ("more than %d parts"):format(lim.max_fields +
        lim.max_files)), 0)
    end
    current = setmetatable({ name = name, filename = filename,
      content_type = v["content-type"], headers = v, size = 0,
      _next = next_event, _ended = false, _max = lim.max_field_size }, Part)
    return current
  end
end


-- ---------------------------------------------------------------------------
-- req:form()

--- form(req): name -> first value of a form body: urlencoded (strings) or
-- multipart (strings, and uploads for files); cached. 415 for another
-- content type.
function M.form(req)
  local cached = rawget(req, "_form")
  if cached then return cached[1] end
  local ctype = req.headers["content-type"]
  local mt = media_type(ctype)
  local fields, all
  if mt == "application/x-www-form-urlencoded" then
    fields, all = M.parse_urlencoded(req.body)
  elseif mt == "multipart/form-data" then
    local form = M.multipart(req)
    fields, all = {}, form._all
    for name, list in pairs(all) do fields[name] = list[1] end
  else
    error(http_error(415, ("expected a form body (application/x-www-form-urlencoded " ..
      "or multipart/form-data), got %s"):format(ctype and ("'" .. ctype .. "'")
      or "no content type")), 0)
  end
  req._form = { fields, all }
  return fields
end


--- form_all(req, name): every value of a form field, in order.
function M.form_all(req, name)
  M.form(req)
  return rawget(req, "_form")[2][name] or {}
end


M.Upload = Upload
M.Form = Form
M.Part = Part
return M
