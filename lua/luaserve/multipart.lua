-- luaserve.multipart: a streaming multipart/form-data parser (RFC 7578 on
-- RFC 2046's multipart syntax). It is fed the body in pieces of any size
-- (a boundary may be split anywhere across them) and gives events; it
-- never holds more than one piece plus a boundary's length of a part's
-- content, so a large file passes through it in bounded memory. No I/O:
-- luaserve.form drives it with the request's body.
--
--   local p = multipart.parser(boundary, { max_header_bytes = 16384 })
--   p:feed(chunk)            -- or p:finish() at the end of the body
--   local ev, v = p:next()   -- "part", headers | "data", bytes | "end" |
--                            -- "done" | nil (feed me more)
--
-- Malformed input raises an HTTPError: 400 (with what is wrong), 413 for
-- part headers larger than max_header_bytes.

local errors = require "luaserve.errors"

local find = string.find
local sub = string.sub
local byte = string.byte
local lower = string.lower
local gsub = string.gsub
local match = string.match
local char = string.char
local tonumber = tonumber
local type = type
local concat = table.concat

local M = {}

local Parser = {}
Parser.__index = Parser
Parser.__name = "luaserve.multipart.Parser"

-- States: before the first boundary, right after a boundary, in a part's
-- headers, in its content, after the closing boundary.
local PREAMBLE, AFTER, HEADERS, BODY, DONE = 1, 2, 3, 4, 5

-- Whitespace allowed after a boundary before its CRLF (transport padding):
-- more than this is not padding.
local MAX_PADDING = 256


local function bad(msg)
  error(errors.new(400, "malformed multipart body: " .. msg), 0)
end


--- boundary(content_type): the boundary parameter of a multipart/form-data
-- content type, or nil, why.
function M.boundary(content_type)
  if type(content_type) ~= "string" then return nil, "no content type" end
  local b = match(content_type, ';%s*[Bb][Oo][Uu][Nn][Dd][Aa][Rr][Yy]%s*=%s*"([^"]*)"')
    or match(content_type, ';%s*[Bb][Oo][Uu][Nn][Dd][Aa][Rr][Yy]%s*=%s*([^%s;]+)')
  if b == nil or b == "" then return nil, "the content type has no boundary" end
  -- RFC 2046 5.1.1: 1 to 70 characters, not ending in a space.
  if #b > 70 or byte(b, #b) == 32 then return nil, "bad boundary" end
  return b
end


--- parser(boundary, opts): a parser for one body. opts.max_header_bytes:
-- the largest header block of a part (default 16 KiB).
function M.parser(boundary, opts)
  opts = opts or {}
  return setmetatable({
    delim = "\r\n--" .. boundary,
    -- The body is read as if it began with CRLF: a first boundary at its
    -- very start is then found like every other.
    buf = "\r\n",
    state = PREAMBLE,
    eof = false,
    max_header_bytes = opts.max_header_bytes or 16384,
  }, Parser)
end


--- p:feed(data): more of the body.
function Parser:feed(data)
  if self.eof then error("multipart: feed after finish", 2) end
  if data ~= "" then
    local buf = self.buf
    self.buf = buf == "" and data or buf .. data
  end
end


--- p:finish(): the body ended.
function Parser:finish()
  self.eof = true
end


-- "Name: value" lines into a table (names lower-cased, repeated ones
-- joined with ", "; folded lines joined to the one before).
local function parse_headers(block)
  local headers = {}
  local last
  for line in (block .. "\r\n"):gmatch("(.-)\r\n") do
    local b1 = byte(line, 1)
    if b1 == 32 or b1 == 9 then   -- obs-fold
      if not last then bad("a part header starts with whitespace") end
      headers[last] = headers[last] .. " " .. match(line, "^%s*(.-)%s*$")
    elseif line ~= "" then
      local name, value = match(line, "^([^:%s]+):%s*(.-)%s*$")
      if not name then bad("bad part header line '" .. sub(line, 1, 60) .. "'") end
      name = lower(name)
      if headers[name] then
        headers[name] = headers[name] .. ", " .. value
      else
        headers[name] = value
      end
      last = name
    end
  end
  return headers
end


--- p:next(): the next event: "part", headers (a part begins: its headers,
-- names lower-cased); "data", bytes (some of its content); "end" (the part
-- ended); "done" (the closing boundary was read; what follows is
-- ignored); nil when it needs more input (feed, or finish).
function Parser:next()
  local state = self.state
  while true do
    local buf = self.buf
    if state == PREAMBLE or state == BODY then
      local delim = self.delim
      local i = find(buf, delim, 1, true)
      if i then
        self.buf = sub(buf, i + #delim)
        local was = state
        state = AFTER
        self.state = AFTER
        if was == BODY then
          if i > 1 then
            -- the content before the boundary, then "end" on the next call
            self.pending_end = true
            return "data", sub(buf, 1, i - 1)
          end
          return "end"
        end
      else
        -- No boundary: all but what may be the start of one is content
        -- (or preamble, dropped).
        local keep = #delim - 1
        if self.eof then
          bad(state == PREAMBLE and "no boundary found" or
            "the body ends before the closing boundary")
        end
        if #buf <= keep then return nil end
        self.buf = sub(buf, #buf - keep + 1)
        if state == BODY then return "data", sub(buf, 1, #buf - keep) end
        return nil
      end
    elseif state == AFTER then
      if self.pending_end then
        self.pending_end = nil
        return "end"
      end
      -- "--" closes the body; else optional padding, then CRLF.
      if #buf < 2 then
        if self.eof then bad("the body ends after a boundary") end
        return nil
      end
      if sub(buf, 1, 2) == "--" then
        self.state = DONE
        self.buf = ""
        return "done"
      end
      local s, e = find(buf, "^[ \t]*\r\n")
      if s then
        self.buf = sub(buf, e + 1)
        state = HEADERS
        self.state = HEADERS
        self.header_bytes = 0
      elseif find(buf, "^[ \t]*\r?$") and #buf <= MAX_PADDING then
        if self.eof then bad("the body ends after a boundary") end
        return nil
      else
        bad("a boundary is followed by something else than a line end")
      end
    elseif state == HEADERS then
      local i
      if sub(buf, 1, 2) == "\r\n" then
        i = -1   -- no headers at all
      else
        i = find(buf, "\r\n\r\n", 1, true)
      end
      if i == nil then
        if #buf > self.max_header_bytes then
          error(errors.new(413, ("multipart part headers larger than %d bytes")
            :format(self.max_header_bytes)), 0)
        end
        if self.eof then bad("the body ends inside a part's headers") end
        return nil
      end
      if i > self.max_header_bytes then
        error(errors.new(413, ("multipart part headers larger than %d bytes")
          :format(self.max_header_bytes)), 0)
      end
      local headers = i == -1 and {} or parse_headers(sub(buf, 1, i - 1))
      self.buf = sub(buf, i == -1 and 3 or i + 4)
      self.state = BODY
      return "part", headers
    else   -- DONE: the epilogue is ignored
      self.buf = ""
      return "done"
    end
  end
end


-- ---------------------------------------------------------------------------
-- Content-Disposition

-- The three escapes browsers use in quoted names and filenames (WHATWG
-- "multipart/form-data encoding algorithm"): %22, %0D, %0A.
local HTML_ESCAPES = { ["%22"] = '"', ["%0D"] = "\r", ["%0A"] = "\n",
  ["%0d"] = "\r", ["%0a"] = "\n" }


local function hex_char(h)
  return char(tonumber(h, 16))
end


--- disposition(value): the type ("form-data") and a table of parameters
-- (names lower-cased; quoted strings unquoted; filename* (RFC 5987)
-- decoded into filename), or nil when the value is unreadable.
function M.disposition(value)
  if type(value) ~= "string" then return nil end
  local pos = 1
  local dtype = match(value, "^%s*([^;%s]+)")
  if not dtype then return nil end
  local params = {}
  pos = (find(value, ";", 1, true) or #value + 1) + 1
  while pos <= #value do
    local s, e, name = find(value, "^%s*([^=;%s]+)%s*=%s*", pos)
    if not s then
      -- a parameter without a value (or junk): skip to the next ';'
      local semi = find(value, ";", pos, true)
      if not semi then break end
      pos = semi + 1
    else
      name = lower(name)
      pos = e + 1
      local v
      if byte(value, pos) == 34 then   -- quoted string
        local out, i = {}, pos + 1
        while true do
          local c = byte(value, i)
          if c == nil then return nil end
          if c == 34 then break end
          if c == 92 and byte(value, i + 1) then   -- a quoted pair: \" or \\
            local n = byte(value, i + 1)
            if n == 34 or n == 92 then
              out[#out + 1] = char(n)
              i = i + 2
            else
              out[#out + 1] = "\\"
              i = i + 1
            end
          else
            out[#out + 1] = char(c)
            i = i + 1
          end
        end
        v = concat(out)
        v = gsub(v, "%%[02][2DdAa]", HTML_ESCAPES)
        pos = i + 1
      else
        local ts, te = find(value, "^[^;]*", pos)
        v = match(sub(value, ts, te), "^(.-)%s*$")
        pos = te + 1
      end
      params[name] = v
      local semi = find(value, ";", pos, true)
      if not semi then break end
      pos = semi + 1
    end
  end
  local ext = params["filename*"]
  if ext then   -- RFC 5987: charset'lang'percent-encoded
    local charset, encoded = match(ext, "^([^']*)'[^']*'(.*)$")
    if charset and (lower(charset) == "utf-8" or lower(charset) == "iso-8859-1") then
      params.filename = gsub(encoded, "%%(%x%x)", hex_char)
    end
  end
  return lower(dtype), params
end


--- basename(filename): the last path component (a client may send a whole
-- path, with / or \); "" stays "".
function M.basename(filename)
  return match(filename, "([^/\\]*)$")
end


M.Parser = Parser
return M
