-- luaserve.app: the app object and its router.
--
--   local app = luaserve.app()
--   app:get("/users/{id:int}", function(req) return { id = req.params.id } end)
--   local api = app:group("/api")        -- routes under a prefix
--   api:post("/items", handler, { max_body = 4 * 1024 * 1024 })
--
-- Templates: `{name}` one segment (a string), `{name:int}`, `{name:number}`,
-- `{name:path}` (the rest of the path, slashes included). Static paths are
-- found by one table look-up; templates are tried in the order they were
-- added, and one whose method or typed parameters do not fit lets the next
-- try. A typed parameter that does not convert (and no other route takes
-- the request) answers 422; a path with routes for other methods, 405.

local errors = require "luaserve.errors"
local inputs = require "luaserve.inputs"
local hooks = require "luaserve.middleware.hooks"

local setmetatable = setmetatable
local type = type
local tonumber = tonumber
local find = string.find
local gsub = string.gsub
local match = string.match
local sub = string.sub
local byte = string.byte
local concat = table.concat
local sort = table.sort
local unpack = unpack
local error = error
local floor = math.floor
local HUGE = math.huge

local M = {}

local App = {}
App.__index = App
App.__name = "luaserve.App"

local Group = {}
Group.__index = Group
Group.__name = "luaserve.Group"

local METHODS = { "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS" }
local KNOWN_METHOD = {}
for _, m in ipairs(METHODS) do KNOWN_METHOD[m] = true end


function App.__tostring(app)
  return ("luaserve.App (%d routes)"):format(#app.routes)
end


--- app(opts): a new app with no routes. opts (all optional): title,
-- version, description (the OpenAPI document's info), docs (false: no
-- /openapi.json, /docs).
function M.new(opts)
  if opts ~= nil and type(opts) ~= "table" then
    error("luaserve.app: expected a table of options {title=, version=, ...}", 2)
  end
  opts = opts or {}
  return setmetatable({
    title = opts.title or "luaserve app",
    version = opts.version or "0.1.0",
    description = opts.description,
    docs = opts.docs ~= false,
    routes = {},      -- every route, in order
    exact = {},       -- static path -> { METHOD = route }
    dynamic = {},     -- { pattern=, names=, types=, methods = { METHOD = route } }
    by_template = {}, -- template -> the dynamic entry
    max_body = 0,     -- the largest per-route max_body (the core's limit)
    middleware = {},  -- app:use, in the order added (outermost first)
    handlers = {},    -- app:exception_handler: status or error class -> fn
    startup = {},     -- app:on_startup
    shutdown = {},    -- app:on_shutdown
    lifespans = {},   -- app:lifespan
    state = {},       -- what startup hooks set up, for handlers (req.app.state)
  }, App)
end


local function check_fn(fn, what)
  if type(fn) ~= "function" then
    error(what .. ": expected a function, got " .. type(fn), 3)
  end
end


--- app:use(fn): a middleware, fn(req, call_next). It runs around every
-- request (async and sync routes, 404, 405, 422 and error answers too), in
-- the order added (the first added is outermost). call_next(req) gives the
-- response as an object (res.status, res.headers, res.body, res:header(),
-- res:set_header()) to read, change and return, or to replace; a
-- middleware may also answer without calling it. fn may also be hooks
-- that do not nest: { before = fn(req), after = fn(req, res) } (see
-- luaserve.middleware.hooks). Returns the app.
function App:use(fn)
  if type(fn) ~= "table" then
    check_fn(fn, "app:use")
  elseif not hooks.is_hooks(fn) then
    fn = hooks.new(fn, 2)   -- app:use{ before = ..., after = ... }
  end
  self.middleware[#self.middleware + 1] = fn
  self._chain = nil
  return self
end


--- app:exception_handler(status_or_class, fn): fn(req, err) answers instead
-- of the default for errors of that class (the metatable of the raised
-- table; luaserve.HTTPError for every HTTPError), or for answers with
-- that status: an HTTPError's, the router's 404/405/422, a timed-out
-- request's 504, 500 for any other error. fn returns what a handler
-- returns. Returns the app.
function App:exception_handler(key, fn)
  if key == errors.new then key = errors.HTTPError end   -- luaserve.HTTPError
  if type(key) ~= "number" and type(key) ~= "table" then
    error("app:exception_handler: expected a status or an error class (a " ..
      "metatable), got " .. type(key), 2)
  end
  check_fn(fn, "app:exception_handler")
  self.handlers[key] = fn
  return self
end


--- app:on_startup(fn), app:on_shutdown(fn): fn(app) runs before the server
-- accepts its first connection (in the order added), or after it has
-- drained on SIGTERM/SIGINT (in the order added). Both may await. A startup
-- hook that fails stops the server with its error (exit status 2).
function App:on_startup(fn)
  check_fn(fn, "app:on_startup")
  self.startup[#self.startup + 1] = fn
  return self
end


function App:on_shutdown(fn)
  check_fn(fn, "app:on_shutdown")
  self.shutdown[#self.shutdown + 1] = fn
  return self
end


--- app:lifespan(fn): startup and shutdown in one function: fn(app) runs at
-- startup until it calls coroutine.yield(), and goes on from there at
-- shutdown (after the on_shutdown hooks; lifespans end in reverse order).
-- It may await in both halves.
function App:lifespan(fn)
  check_fn(fn, "app:lifespan")
  self.lifespans[#self.lifespans + 1] = fn
  return self
end


function M.is_app(v)
  return type(v) == "table" and getmetatable(v) == App
end


-- Whether s is an optional sign and then digits only.
local function int_digits(s)
  local first = byte(s, 1)
  local from = (first == 43 or first == 45) and 2 or 1
  if from > #s then return false end
  for i = from, #s do
    local c = byte(s, i)
    if c < 48 or c > 57 then return false end
  end
  return true
end

local converters = {
  str = function(s) return s end,
  path = function(s) return s end,
  -- An optional sign, then digits. The usual one ("42", "-7") is its own
  -- tostring; anything else (a "+", leading zeros, a space, hex, an
  -- exponent) is checked byte by byte. (No pattern match and no loop on
  -- the usual way: LuaJIT compiles neither a match nor a loop that ends
  -- after a turn or two, and this runs on every such request.)
  int = function(s)
    local n = tonumber(s)
    if n == nil or n ~= floor(n) or n == HUGE or n == -HUGE then return nil end
    if tostring(n) == s then return n end
    return int_digits(s) and n or nil
  end,
  number = function(s)
    local n = tonumber(s)
    if n and n == n and n ~= math.huge and n ~= -math.huge then return n end
  end,
}
local type_errors = {
  int = { "int_parsing", "Input should be a valid integer, unable to parse string as an integer" },
  number = { "float_parsing", "Input should be a valid number, unable to parse string as a number" },
}


-- "/users/{id:int}/x" -> Lua pattern, names, types. Errors are raised at
-- the level of route()'s caller.
local compile
-- The parameter names and types of a template (none for a static path).
local function compile_names(template)
  if not find(template, "[{}]") then return {}, {} end
  local _, names, types = compile(template)
  return names, types
end


function compile(template)
  local names, types, seen = {}, {}, {}
  local pat = { "^" }
  local pos = 1
  while true do
    local s, e, body = find(template, "{([^}]*)}", pos)
    local lit = template:sub(pos, (s or 0) - 1)
    if not s then lit = template:sub(pos) end
    if find(lit, "[{}]") then
      error(("route %s: unbalanced '{' or '}'"):format(template), 3)
    end
    pat[#pat + 1] = gsub(lit, "[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0")
    if not s then break end
    local name, typ = match(body, "^([%a_][%w_]*):?(%a*)$")
    if not name then
      error(("route %s: bad parameter '{%s}'"):format(template, body), 3)
    end
    typ = typ ~= "" and typ or "str"
    if not converters[typ] then
      error(("route %s: unknown parameter type '%s' (int, number, str, path)")
        :format(template, typ), 3)
    end
    if typ == "path" and e ~= #template then
      error(("route %s: {%s:path} must come last"):format(template, name), 3)
    end
    if seen[name] then
      error(("route %s: parameter '%s' appears twice"):format(template, name), 3)
    end
    seen[name] = true
    names[#names + 1] = name
    types[#types + 1] = typ
    pat[#pat + 1] = typ == "path" and "(.+)" or "([^/]+)"
    pos = e + 1
  end
  pat[#pat + 1] = "$"
  return concat(pat), names, types
end


-- A template with one parameter, not a path, followed by nothing or by
-- literal text from a "/" ("/users/{id}", "/users/{id}/posts"): the text
-- after it, matched without a pattern (a pattern match is not compiled,
-- and its trace left the router to the interpreter). nil otherwise.
local function plain_suffix(template, types)
  if #types ~= 1 or types[1] == "path" then return nil end
  local close = find(template, "}", 1, true)
  local rest = template:sub(close + 1)
  if rest ~= "" and (byte(rest, 1) ~= 47 or find(rest, "[{}%%]")) then
    return nil
  end
  return rest
end


-- Path parameters in another framework's syntax (Express's /users/:id,
-- Flask's /users/<int:id>) would be matched literally: refuse them and
-- show the luaserve form.
local FLASK_TYPES = { int = "int", float = "number", path = "path", string = "str" }

local function check_foreign_syntax(path, level)
  local express = find(path, "/:[%a_]")
  local flask = find(path, "<[%a_][%w_:]*>")
  if not express and not flask then return end
  local fixed = gsub(path, "/:([%a_][%w_]*)", "/{%1}")
  fixed = gsub(fixed, "<([%a_][%w_]*):([%a_][%w_]*)>", function(typ, name)
    local t = FLASK_TYPES[typ]
    return "{" .. name .. (t and t ~= "str" and ":" .. t or "") .. "}"
  end)
  fixed = gsub(fixed, "<([%a_][%w_]*)>", "{%1}")
  error(("route %s: path parameters are written {name} in luaserve " ..
    "(typed: {name:int}); did you mean %s?"):format(path, fixed), level + 1)
end


-- Is v something a route can call (a function or a table with __call)?
local function callable(v)
  if type(v) == "function" then return true end
  local mt = type(v) == "table" and getmetatable(v)
  return mt and mt.__call ~= nil or false
end


--- app:route(method, path, handler, opts) or app:route(method, path, opts,
-- handler): add a route. method is a string or a list of strings.
-- opts.max_body: this route's body limit in bytes; opts.max_upload: this
-- route's limit of a streamed multipart/form-data body in bytes (413
-- beyond); opts.timeout: seconds the handler may take (504 after);
-- opts.deps: {name = fn(req)} dependencies resolved before the handler
-- into req.deps (fn may await and may return a cleanup function as its
-- second value, run after the response). Declared inputs and outputs
-- (luaserve.inputs): opts.path, opts.query, opts.headers, opts.body,
-- opts.response; for the OpenAPI document: summary, description, tags,
-- deprecated, operation_id, include_in_schema (false: left out).
function App:route(method, path, handler, opts)
  if type(handler) == "table" and not callable(handler) and callable(opts) then
    handler, opts = opts, handler   -- the options before the handler
  end
  if type(handler) ~= "function" and not (type(handler) == "table" and
      getmetatable(handler) and getmetatable(handler).__call) then
    error("route " .. tostring(path) .. ": the handler must be a function", 2)
  end
  if type(path) ~= "string" or path:sub(1, 1) ~= "/" then
    error("route: the path must be a string starting with '/'", 2)
  end
  check_foreign_syntax(path, 2)
  local methods = type(method) == "table" and method or { method }
  if methods[1] == nil then
    error("route " .. path .. ": no method given", 2)
  end
  opts = opts or {}
  if opts.timeout ~= nil and (type(opts.timeout) ~= "number" or opts.timeout <= 0) then
    error("route " .. path .. ": timeout must be a number of seconds > 0", 2)
  end
  if opts.deps ~= nil then
    if type(opts.deps) ~= "table" then
      error("route " .. path .. ": deps must be a table {name = function(req)}", 2)
    end
    for name, fn in pairs(opts.deps) do
      if type(fn) ~= "function" then
        error(("route %s: dependency %s must be a function(req)"):format(path,
          tostring(name)), 2)
      end
    end
  end
  local route = {
    path = path,
    handler = handler,
    opts = opts,
    name = nil,
  }
  if opts.deps then   -- resolved in the order of their names (made once)
    local names = {}
    for name in pairs(opts.deps) do names[#names + 1] = name end
    table.sort(names, function(a, b) return tostring(a) < tostring(b) end)
    route.dep_names = names
  end
  if route.opts.max_body and route.opts.max_body > self.max_body then
    self.max_body = route.opts.max_body
  end
  if route.opts.max_upload and route.opts.max_upload > (self.max_upload or 0) then
    self.max_upload = route.opts.max_upload   -- streamed bodies (multipart)
  end
  for _, m in ipairs(methods) do
    m = type(m) == "string" and m:upper() or m
    if not KNOWN_METHOD[m] then
      error("route " .. tostring(path) .. ": unknown method " .. tostring(m), 2)
    end
    local methods_of
    if not find(path, "[{}]") then
      methods_of = self.exact[path]
      if not methods_of then methods_of = {} self.exact[path] = methods_of end
    else
      local entry = self.by_template[path]
      if not entry then
        local pattern, names, types = compile(path)
        entry = { template = path, pattern = pattern, names = names,
                  types = types, methods = {},
                  -- the literal text before the first parameter: a path
                  -- that does not start with it is not tried
                  prefix = path:sub(1, (find(path, "{", 1, true) or 1) - 1),
                  suffix = plain_suffix(path, types),
                  shape = pattern .. " " .. concat(types, ",") }
        self.by_template[path] = entry
        self.dynamic[#self.dynamic + 1] = entry
        self._by_segment = nil   -- made again at the next match
      end
      -- "/users/{id}" and "/users/{uid}" match the same paths: the second
      -- would never be reached.
      local dyn = self.dynamic
      for i = 1, #dyn do
        local other = dyn[i]
        if other ~= entry and other.shape == entry.shape and other.methods[m] then
          error(("route %s %s is defined twice (as %s)")
            :format(m, path, other.template), 2)
        end
      end
      methods_of = entry.methods
      route.param_names, route.param_types = entry.names, entry.types
    end
    if methods_of[m] then
      error(("route %s %s is defined twice"):format(m, path), 2)
    end
    methods_of[m] = route
    self.routes[#self.routes + 1] = { method = m, path = path, route = route }
  end
  local ok, err = pcall(inputs.declare, route, type(method) == "table" and
    table.concat(method, ",") or tostring(method), compile_names(path))
  if not ok then error(err, 2) end
  return route
end


for _, m in ipairs(METHODS) do
  App[m:lower()] = function(self, path, handler, opts)
    return self:route(m, path, handler, opts)
  end
end


--- app:static(prefix, dir, opts): serve the files under dir at prefix
-- (luaserve.static: sendfile off the loop, ETag, ranges, 304). A
-- relative dir is taken from the folder of the file that calls it.
-- opts: index ("index.html"; false: none), cache_control, max_age.
function App:static(prefix, dir, opts)
  local caller = debug.getinfo(2, "S").source
  return require("luaserve.static").mount(self, prefix, dir, opts, caller)
end


--- app:websocket(path, handler, opts): a WebSocket route: handler(ws, req)
-- runs as the request's task once the handshake is done (see
-- luaserve.websocket). Routed like any GET route (typed parameters,
-- groups, middleware around the handshake). opts: subprotocols (a list,
-- in preference order), max_message (bytes, default 1 MiB), ping_interval,
-- ping_timeout, close_timeout (seconds), deflate (default true).
function App:websocket(path, handler, opts)
  if type(handler) ~= "function" then
    error("websocket " .. tostring(path) .. ": the handler must be a function(ws, req)", 2)
  end
  if type(path) == "string" then check_foreign_syntax(path, 2) end
  opts = opts or {}
  local route = self:route("GET", path, handler, opts)
  route.websocket = true
  return route
end


-- The Allow header: a set of methods, with HEAD when GET is there.
local function allow_header(allowed)
  local list = {}
  for m in pairs(allowed) do list[#list + 1] = m end
  if allowed.GET and not allowed.HEAD then list[#list + 1] = "HEAD" end
  sort(list)
  return concat(list, ", ")
end


-- The route for method among a path's routes (a GET route serves HEAD).
local function pick(methods, method)
  local route = methods[method]
  if route == nil and method == "HEAD" then route = methods.GET end
  return route
end


local function add_methods(set, methods)
  set = set or {}
  for m in pairs(methods) do set[m] = true end
  return set
end


-- The first segment of a path or template ("users" of "/users/7"); nil
-- for a template whose first segment holds a parameter.
local function first_segment(path, template)
  local stop = find(path, "/", 2, true)
  local seg = sub(path, 2, (stop or #path + 1) - 1)
  if template and find(seg, "{", 1, true) then return nil end
  return seg
end


-- The dynamic templates a path may match, by the path's first segment:
-- those whose first segment is that text, and those whose first segment
-- holds a parameter, in the order they were declared (the first match
-- wins). An app with many routes then tries a few templates, not all.
local function index_dynamic(self)
  local dyn, open, by = self.dynamic, {}, {}
  for i = 1, #dyn do   -- a template with a parameter first goes everywhere
    local seg = first_segment(dyn[i].template, true)
    if seg then
      local list = by[seg]
      if list == nil then list = { unpack(open) } by[seg] = list end
      list[#list + 1] = dyn[i]
    else
      open[#open + 1] = dyn[i]
      for _, list in pairs(by) do list[#list + 1] = dyn[i] end
    end
  end
  self._by_segment, self._open = by, open
  return by
end


--- app:match(method, path): route, params; or nil, status, detail, headers
-- (404; 405 with Allow when the path matches but the method does not; 422
-- with the parameter that did not convert, and the route as a fifth
-- value). A static path is looked up first, then the templates that may
-- match (by the path's first segment) in the order they were added: one
-- whose method does not match, or whose parameters do not convert, lets
-- the next try.
function App:match(method, path)
  local allowed, unconverted, unconverted_route
  local methods = self.exact[path]
  if methods ~= nil then
    local route = pick(methods, method)
    if route then return route, nil end
    allowed = add_methods(allowed, methods)
  end
  local by = self._by_segment or index_dynamic(self)
  local dyn = by[first_segment(path)] or self._open
  for i = 1, #dyn do
    local e = dyn[i]
    -- A plain find of the literal prefix first (compiled, where a pattern
    -- match is not), and the captures in a table only on a match.
    local pre, names = e.prefix, e.names
    local c1, caps
    if find(path, pre, 1, true) == 1 then
      local suffix = e.suffix
      if suffix then
        local start = #pre + 1
        local stop = (find(path, "/", start, true) or #path + 1) - 1
        if stop >= start and sub(path, stop + 1) == suffix then
          c1 = sub(path, start, stop)
        end
      elseif #names == 1 then
        c1 = match(path, e.pattern)
      else
        caps = { match(path, e.pattern) }
        c1 = caps[1]
      end
    end
    if c1 then
      local route = pick(e.methods, method)
      if route == nil then
        allowed = add_methods(allowed, e.methods)
      elseif #names == 1 then   -- the usual: no loop (see converters.int)
        local typ = e.types[1]
        local v = converters[typ](c1)
        if v ~= nil then return route, { [names[1]] = v } end
        if unconverted == nil then
          local te = type_errors[typ]
          unconverted = { {
            type = te[1], loc = { "path", names[1] }, msg = te[2], input = c1,
          } }
          unconverted_route = route
        end
      else
        local params = {}
        for j = 1, #e.names do
          local typ = e.types[j]
          local raw = caps[j]
          local v = converters[typ](raw)
          if v == nil then
            if unconverted == nil then
              local te = type_errors[typ]
              unconverted = { {
                type = te[1], loc = { "path", e.names[j] }, msg = te[2], input = raw,
              } }
              unconverted_route = route
            end
            params = nil
            break
          end
          params[e.names[j]] = v
        end
        if params then return route, params end
      end
    end
  end
  if unconverted then return nil, 422, unconverted, nil, unconverted_route end
  if allowed then
    return nil, 405, "Method Not Allowed", { Allow = allow_header(allowed) }
  end
  return nil, 404, "Not Found"
end


--- app:group(prefix): an object with the same route methods, adding prefix.
function App:group(prefix)
  if type(prefix) ~= "string" or prefix:sub(1, 1) ~= "/" then
    error("group: the prefix must be a string starting with '/'", 2)
  end
  return setmetatable({ app = self, prefix = prefix:gsub("/$", "") }, Group)
end


function Group:route(method, path, handler, opts)
  return self.app:route(method, self.prefix .. path, handler, opts)
end


function Group:group(prefix)
  return self.app:group(self.prefix .. prefix)
end


function Group:websocket(path, handler, opts)
  return self.app:websocket(self.prefix .. path, handler, opts)
end


function Group:static(prefix, dir, opts)
  local caller = debug.getinfo(2, "S").source
  return require("luaserve.static").mount(self.app, self.prefix .. prefix, dir, opts, caller)
end


for _, m in ipairs(METHODS) do
  Group[m:lower()] = function(self, path, handler, opts)
    return self:route(m, path, handler, opts)
  end
end


M.App = App
return M
