-- spec/files_helper.lua: looking at files from specs (blocking io: specs
-- only): whether a path exists, what a file holds.
--
--   local files = dofile("spec/files_helper.lua")
--   files.exists(path), files.read(path)

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

return M
