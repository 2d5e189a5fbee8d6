-- spec/files_helper.lua: looking at files from specs (blocking io: specs
-- only): whether a path exists, what a file holds.
--
--   local files = dofile("spec/files_helper.lua")
--   files.exists(path), files.read(path), files.multipart(parts, boundary)

local M = {}


function M.exists(path)
  local f = io.open(path, "rb")
  if f then f:close() return true end
  return false
end


--- read(path): the file's bytes, or nil if it cannot be opened.
function M.read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end


--- multipart(parts, boundary): a multipart/form-data body of parts:
-- { name=, value= } or { name=, filename=, value=, type= }.
function M.multipart(parts, boundary)
  local out = {}
  for _, p in ipairs(parts) do
    out[#out + 1] = "--" .. boundary .. "\r\n"
    if p.filename then
      out[#out + 1] = ('Content-Disposition: form-data; name="%s"; filename="%s"\r\n')
        :format(p.name, p.filename)
      out[#out + 1] = "Content-Type: " .. (p.type or "application/octet-stream") .. "\r\n"
    else
      out[#out + 1] = ('Content-Disposition: form-data; name="%s"\r\n'):format(p.name)
    end
    out[#out + 1] = "\r\n" .. p.value .. "\r\n"
  end
  out[#out + 1] = "--" .. boundary .. "--\r\n"
  return table.concat(out)
end

return M
