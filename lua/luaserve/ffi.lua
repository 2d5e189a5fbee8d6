-- luaserve.ffi: the core calls a request makes most, through LuaJIT's FFI
-- (core/ffi.c): a compiled trace runs through them, where a classic C
-- function ends it. Each falls back to the classic one when the FFI cannot
-- reach the core (its symbols are not exported: an embedding that loads
-- the core as a module), so callers need not care.
--
--   now_ms()                        as core.now_ms
--   hrtime()                        as core.hrtime
--   log_access(client, method, target, path, route, status, bytes,
--              seconds, request_id)
--     as core.log_access without capture (strings, or nil for route and
--     request_id): true when the line is the first waiting, false when
--     not, nil when it failed (call core.log_access)
--   peer(handle)                    as core.peer: the client's address and
--                                   port; nothing if unknown; nil, "closed"
--   respond(handle, status, body, ctype)
--     the answer with no header table and nothing to tell when written:
--     true (answered), false (the request is over) or nil (not for this
--     path: call core.respond)

local core = require "luaserve.core"

local M = {
  now_ms = core.now_ms,
  hrtime = core.hrtime,
  respond = function() return nil end,
  log_access = function() return nil end,
  peer = core.peer,
}

local ok, ffi = pcall(require, "ffi")
if not ok then return M end

pcall(ffi.cdef, [[
double ls_ffi_now_ms(void *rt);
double ls_ffi_hrtime(void);
int ls_ffi_respond(void *rt, double handle, int status, const char *body,
                   size_t blen, const char *ctype, size_t ctlen);
int ls_ffi_log_access(const char *client, size_t cn, const char *method,
                      size_t mn, const char *target, size_t tn,
                      const char *path, size_t pn, const char *route,
                      size_t rn, int status, double bytes, double seconds,
                      const char *rid, size_t idn);
int ls_ffi_peer(void *rt, double handle, const char **host);
]])
local C = ffi.C
-- Resolve the symbols now: a missing one keeps the classic functions.
local found = pcall(function()
  return C.ls_ffi_now_ms ~= nil and C.ls_ffi_hrtime ~= nil and
    C.ls_ffi_respond ~= nil and C.ls_ffi_log_access ~= nil and
    C.ls_ffi_peer ~= nil
end)
if not found then return M end

local rt = ffi.cast("void *", core.runtime())   -- a cdata: compiled calls take it
local now_ms, hrtime, respond = C.ls_ffi_now_ms, C.ls_ffi_hrtime, C.ls_ffi_respond
local log_access, peer = C.ls_ffi_log_access, C.ls_ffi_peer
local peer_host = ffi.new("const char *[1]")   -- one, reused: no garbage

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
function M.log_access(client, method, target, path, route, status, nbytes,
    seconds, rid)
  local r = log_access(client, client and #client or 0, method, #method,
    target, #target, path, #path, route, route and #route or 0, status,
    nbytes, seconds, rid, rid and #rid or 0)
  if r < 0 then return nil end
  return r == 1
end
function M.peer(handle)
  local port = peer(rt, handle, peer_host)
  if port >= 0 then return (ffi.string(peer_host[0])), port end
  if port == -1 then return nil, "closed" end
end
M.enabled = true

return M
