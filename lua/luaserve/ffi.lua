-- luaserve.ffi: the core calls a request makes most, through LuaJIT's FFI
-- (core/ffi.c): a compiled trace runs through them, where a classic C
-- function ends it. Each falls back to the classic one when the FFI cannot
-- reach the core (its symbols are not exported: an embedding that loads
-- the core as a module), so callers need not care.
--
--   now_ms()                        as core.now_ms
--   hrtime()                        as core.hrtime
--   respond(handle, status, body, ctype)
--     the answer with no header table and nothing to tell when written:
--     true (answered), false (the request is over) or nil (not for this
--     path: call core.respond)

local core = require "luaserve.core"

local M = {
  now_ms = core.now_ms,
  hrtime = core.hrtime,
  respond = function() return nil end,
}

local ok, ffi = pcall(require, "ffi")
if not ok then return M end

pcall(ffi.cdef, [[
double ls_ffi_now_ms(void *rt);
double ls_ffi_hrtime(void);
int ls_ffi_respond(void *rt, double handle, int status, const char *body,
                   size_t blen, const char *ctype, size_t ctlen);
]])
local C = ffi.C
-- Resolve the symbols now: a missing one keeps the classic functions.
local found = pcall(function()
  return C.ls_ffi_now_ms ~= nil and C.ls_ffi_hrtime ~= nil and
    C.ls_ffi_respond ~= nil
end)
if not found then return M end

local rt = ffi.cast("void *", core.runtime())   -- a cdata: compiled calls take it
local now_ms, hrtime, respond = C.ls_ffi_now_ms, C.ls_ffi_hrtime, C.ls_ffi_respond

-- Not tail calls: a trace cannot tail-call out of its root function
-- ("leaving loop in root trace"), and an FFI call left to the interpreter
-- costs more than the classic one.
function M.now_ms() return (now_ms(rt)) end
function M.hrtime() return (hrtime()) end
function M.respond(handle, status, body, ctype)
  local r = respond(rt, handle, status, body, #body, ctype, ctype and #ctype or 0)
  if r < 0 then return nil end
  return r == 1
end
M.enabled = true

return M
