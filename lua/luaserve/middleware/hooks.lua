-- luaserve.middleware.hooks: a middleware in two halves that do not nest.
--
--   app:use(hooks{
--     before = function(req) ... end,        -- nothing: go on; else an answer
--     after = function(req, res) ... end,    -- change res, or return another
--   })
--
-- `before` runs where `call_next` would be called from, `after` on what
-- came back (an error inside comes back as its answer, as for call_next);
-- an answer from `before` skips the rest of the chain and this hook's
-- `after`, and the middleware outside it see it as usual. The app's
-- middleware that are hooks, one after another, run from one frame of
-- about 5 slots on the stack below the handler, which a waiting request
-- keeps, where each `function(req, call_next)` adds 5 to 10 (past about
-- 95 slots a waiting request's stack doubles: 0.9 KB more). The built-in middleware are hooks. A hooks table
-- can still be called as a middleware, hooks(req, call_next).

local type = type
local error = error
local setmetatable = setmetatable
local getmetatable = getmetatable

local M = {}

local Hooks = {}


-- As a plain middleware (to wrap one in a middleware of one's own).
function Hooks.__call(h, req, call_next)
  local before, after = h.before, h.after
  if before then
    local a, b, c = before(req)
    if a ~= nil or b ~= nil then return a, b, c end
  end
  local res = call_next(req)
  if after then
    local a, b, c = after(req, res)
    if a ~= nil or b ~= nil then return a, b, c end
  end
  return res
end


--- hooks{ before = fn(req), after = fn(req, res) }: a middleware; at least
-- one of the two.
function M.new(t, level)
  level = (level or 1) + 1
  if type(t) ~= "table" then error("hooks: expected { before = fn, after = fn }", level) end
  local before, after = t.before, t.after
  if before ~= nil and type(before) ~= "function" then
    error("hooks: before must be a function", level)
  end
  if after ~= nil and type(after) ~= "function" then
    error("hooks: after must be a function", level)
  end
  if before == nil and after == nil then
    error("hooks: give before, after or both", level)
  end
  return setmetatable({ before = before, after = after }, Hooks)
end


--- is_hooks(v): whether v was made by hooks{}.
function M.is_hooks(v)
  return getmetatable(v) == Hooks
end


return setmetatable(M, { __call = function(_, t) return M.new(t, 2) end })
