-- spec/multipart_spec.lua: luaserve.multipart, the streaming multipart/form-
-- data parser: boundaries split across pieces at every offset, part
-- headers, limits, malformed bodies, Content-Disposition parameters.

local multipart = require "luaserve.multipart"


-- Feed body in pieces (a list of sizes, repeated) and collect the parts:
-- { { headers = ..., data = "..." }, ..., done = true }.
local function parse(body, sizes, boundary, opts)
  local p = multipart.parser(boundary or "XyZ", opts)
  local parts, cur = {}, nil
  local pos, k = 1, 1
  local done = false
  while not done do
    local ev, v = p:next()
    if ev == nil then
      if pos > #body then
        p:finish()
      else
        local n = sizes and sizes[(k - 1) % #sizes + 1] or #body
        k = k + 1
        p:feed(body:sub(pos, pos + n - 1))
        pos = pos + n
      end
    elseif ev == "part" then
      cur = { headers = v, data = {} }
    elseif ev == "data" then
      assert.is_truthy(cur, "data outside a part")
      assert.is_true(#v > 0, "an empty data event")
      cur.data[#cur.data + 1] = v
    elseif ev == "end" then
      cur.data = table.concat(cur.data)
      parts[#parts + 1] = cur
      cur = nil
    elseif ev == "done" then
      done = true
      parts.done = true
    end
  end
  return parts
end


local function errors_with(status, pattern, fn)
  local ok, err = pcall(fn)
  assert.is_false(ok, "expected an error")
  assert.equals("table", type(err), tostring(err))
  assert.equals(status, err.status)
  assert.matches(pattern, err.detail)
end


local BODY = table.concat({
  "preamble to ignore\r\n",
  "--XyZ\r\n",
  'Content-Disposition: form-data; name="title"\r\n',
  "\r\n",
  "holiday\r\n",
  "--XyZ\r\n",
  'Content-Disposition: form-data; name="photo"; filename="a.bin"\r\n',
  "Content-Type: application/octet-stream\r\n",
  "\r\n",
  "\0\1\2\r\n--Xy not a boundary\r\n-XyZ-- still data\r\r\n\n",
  "\r\n",
  "--XyZ  \t\r\n",   -- transport padding after a boundary
  'content-disposition: form-data; name="empty"\r\n',
  "\r\n",
  "\r\n",
  "--XyZ--\r\n",
  "epilogue to ignore --XyZ\r\n",
})


describe("luaserve.multipart parser", function()
  it("gives the parts with their headers and content", function()
    local parts = parse(BODY)
    assert.is_true(parts.done)
    assert.equals(3, #parts)
    assert.equals('form-data; name="title"', parts[1].headers["content-disposition"])
    assert.equals("holiday", parts[1].data)
    assert.equals("application/octet-stream", parts[2].headers["content-type"])
    assert.equals("\0\1\2\r\n--Xy not a boundary\r\n-XyZ-- still data\r\r\n\n",
      parts[2].data)
    assert.equals("", parts[3].data)
  end)

  it("gives the same parts whatever the pieces: every split offset", function()
    local whole = parse(BODY)
    for cut = 1, #BODY - 1 do   -- two pieces, split at every offset
      local p = multipart.parser("XyZ")
      local got, cur = {}, nil
      p:feed(BODY:sub(1, cut))
      local fed2, finished = false, false
      while true do
        local ev, v = p:next()
        if ev == nil then
          if not fed2 then p:feed(BODY:sub(cut + 1)) fed2 = true
          elseif not finished then p:finish() finished = true
          else error("stuck at cut " .. cut) end
        elseif ev == "part" then cur = { data = {} }
        elseif ev == "data" then cur.data[#cur.data + 1] = v
        elseif ev == "end" then got[#got + 1] = table.concat(cur.data)
        else break end
      end
      assert.equals(#whole, #got, "cut at " .. cut)
      for i = 1, #whole do assert.equals(whole[i].data, got[i], "cut at " .. cut) end
    end
  end)

  it("parses byte by byte and in odd piece sizes", function()
    local whole = parse(BODY)
    for _, sizes in ipairs({ { 1 }, { 2 }, { 3, 1 }, { 7 }, { 13, 5, 1 } }) do
      local parts = parse(BODY, sizes)
      assert.equals(#whole, #parts)
      for i = 1, #whole do assert.equals(whole[i].data, parts[i].data) end
    end
  end)

  it("passes a large part through in bounded pieces", function()
    local big = string.rep("0123456789abcdef", 65536)   -- 1 MiB
    local body = "--b\r\nContent-Disposition: form-data; name=\"f\"; filename=\"x\"\r\n\r\n"
      .. big .. "\r\n--b--\r\n"
    local p = multipart.parser("b")
    local pos, out, largest = 1, {}, 0
    while true do
      local ev, v = p:next()
      if ev == nil then
        if pos > #body then p:finish()
        else p:feed(body:sub(pos, pos + 65535)) pos = pos + 65536 end
      elseif ev == "data" then
        out[#out + 1] = v
        if #v > largest then largest = #v end
        assert.is_true(#p.buf < 65536 + 16, "the parser holds at most a piece")
      elseif ev == "done" then break end
    end
    assert.equals(big, table.concat(out))
    assert.is_true(largest <= 65536 + 16)
  end)

  it("takes a first boundary at the very start, and part headers folded or absent", function()
    local body = "--q\r\n\r\nno headers\r\n--q\r\nX-A: one\r\n  two\r\nX-A: three\r\n\r\nv\r\n--q--"
    local parts = parse(body, nil, "q")
    assert.equals(2, #parts)
    assert.same({}, parts[1].headers)
    assert.equals("no headers", parts[1].data)
    assert.equals("one two, three", parts[2].headers["x-a"])
  end)

  it("refuses malformed bodies with a 400 naming the problem", function()
    errors_with(400, "no boundary found", function() parse("just text") end)
    errors_with(400, "ends before the closing boundary", function()
      parse("--q\r\nContent-Disposition: form-data; name=a\r\n\r\nvalue", nil, "q")
    end)
    errors_with(400, "ends inside a part's headers", function()
      parse("--q\r\nContent-Disposition: form-data", nil, "q")
    end)
    errors_with(400, "followed by something else", function()
      parse("--q\r\n\r\nv\r\n--qX\r\n\r\n--q--", nil, "q")
    end)
    errors_with(400, "bad part header line", function()
      parse("--q\r\nno colon here\r\n\r\nv\r\n--q--", nil, "q")
    end)
    errors_with(400, "ends after a boundary", function() parse("--q", nil, "q") end)
  end)

  it("bounds a part's headers: 413", function()
    local body = "--q\r\nX-Big: " .. string.rep("a", 300) .. "\r\n\r\nv\r\n--q--"
    errors_with(413, "part headers larger than 100 bytes", function()
      parse(body, { 7 }, "q", { max_header_bytes = 100 })
    end)
    errors_with(413, "part headers larger than 100 bytes", function()
      parse(body, nil, "q", { max_header_bytes = 100 })
    end)
  end)
end)


describe("luaserve.multipart helpers", function()
  it("reads the boundary of a content type", function()
    assert.equals("abc", multipart.boundary("multipart/form-data; boundary=abc"))
    assert.equals("a b:c", multipart.boundary('multipart/form-data; BOUNDARY="a b:c"'))
    assert.equals("x", multipart.boundary("multipart/form-data;boundary=x; charset=utf-8"))
    assert.is_nil(multipart.boundary("multipart/form-data"))
    assert.is_nil(multipart.boundary("multipart/form-data; boundary=" .. string.rep("a", 71)))
    assert.is_nil(multipart.boundary(nil))
  end)

  it("parses Content-Disposition like browsers write it", function()
    local t, p = multipart.disposition('form-data; name="file"; filename="a \\"b\\".txt"')
    assert.equals("form-data", t)
    assert.equals("file", p.name)
    assert.equals('a "b".txt', p.filename)
    t, p = multipart.disposition('form-data; name="x%22y"; filename="line%0Abreak.txt"')
    assert.equals('x"y', p.name)   -- the WHATWG escapes of quotes and line ends
    assert.equals("line\nbreak.txt", p.filename)
    t, p = multipart.disposition("form-data; name=plain; filename*=UTF-8''%E2%82%AC%20rates.txt")
    assert.equals("plain", p.name)
    assert.equals("\226\130\172 rates.txt", p.filename)
    t, p = multipart.disposition('Form-Data; NAME="a;b"; flag; filename=""')
    assert.equals("form-data", t)
    assert.equals("a;b", p.name)
    assert.equals("", p.filename)
    assert.is_nil(multipart.disposition('form-data; name="unterminated'))
    assert.is_nil(multipart.disposition(nil))
  end)

  it("keeps the last path component of a filename", function()
    assert.equals("x.txt", multipart.basename("C:\\Users\\me\\x.txt"))
    assert.equals("x.txt", multipart.basename("../../etc/x.txt"))
    assert.equals("", multipart.basename(""))
    assert.equals("", multipart.basename("dir/"))
  end)
end)
