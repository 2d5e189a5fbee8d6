-- luaserve.cli: the command line. `luaserve APP [options]` loads the app and
-- serves it; `luaserve busted [args]` runs busted specs inside the runtime;
-- `luaserve lua FILE [args]` runs a Lua script in it. main() returns the
-- process exit status.

local core = require "luaserve.core"

local M = {}

local VERSION = core.version

-- name, kind, default, help. Each has an environment variable
-- LUASERVE_<NAME> (upper case, '-' as '_'); a flag wins over it.
local OPTIONS = {
  { "host", "string", "127.0.0.1", "address to listen on: IPv4, IPv6 (::1) or a name, looked up at startup (localhost)" },
  { "port", "port", 8080, "port to listen on (0 picks a free one)" },
  { "log-level", "level", "info", "debug, info, warn or error" },
  { "log-format", "logformat", "text", "text, or json: one JSON object per line" },
  { "no-access-log", "flag", false, "do not log each request" },
  { "limit-concurrency", "count", 0, "requests in flight before 503 (0: no limit)" },
  { "timeout-keep-alive", "seconds", 5, "close idle keep-alive connections after this" },
  { "timeout-header", "seconds", 10, "a request's headers must arrive within this" },
  { "timeout-send", "seconds", 60, "close a connection whose client takes no bytes of an answer for this long" },
  { "timeout-request", "seconds", 0, "answer 504 and cancel a handler that has not answered in this long (0: off; routes may set their own)" },
  { "timeout-graceful-shutdown", "seconds", 10, "on SIGINT/SIGTERM, wait this for requests in flight" },
  { "ssl-certfile", "file", "", "serve HTTPS with this certificate chain (PEM)" },
  { "ssl-keyfile", "file", "", "its private key (PEM; default: in the certfile)" },
  { "ssl-keyfile-password", "string", "", "the key's password, if it is encrypted" },
  { "ssl-ca-certs", "file", "", "CA certificates (PEM) that client certificates are checked against" },
  { "ssl-cert-reqs", "certreqs", "none", "client certificates: none, optional or required" },
  { "max-body", "bytes", 1048576, "largest request body (413 beyond; routes may raise it)" },
  { "max-upload", "bytes", 100 * 1024 * 1024, "largest multipart/form-data body, streamed (413 beyond; routes may set their own)" },
  { "max-header-bytes", "bytes", 16384, "largest request line + headers (431 beyond)" },
  { "max-headers", "count", 100, "most header fields in a request (431 beyond)" },
  { "backlog", "count", 1024, "listen backlog" },
  { "warn-blocking", "seconds", 0.1, "warn, naming the route, when code holds the loop this long (0: off)" },
  { "threads", "count", 0, "sync pool threads (0: one per core)" },
  { "pool-queue", "count", 128, "sync jobs waiting for a thread before 503 / \"pool full\"" },
  { "pool-nice", "count", 5, "how much lower the pool threads' priority is than the loop's (0-19)" },
  { "shared-size", "bytes", 64 * 1024 * 1024, "capacity of luaserve.shared in bytes" },
  { "reload", "flag", false, "development: restart the server when a .lua file of the app changes" },
}
M.OPTIONS = OPTIONS


local USAGE = [[
usage: luaserve APP [options]
       luaserve check APP                    load the app, print why it fails
       luaserve busted [busted options] [spec paths]
       luaserve lua FILE [args]

APP is a folder holding app.lua, or a .lua file; it returns luaserve.app().

options (each also read from LUASERVE_<NAME>, e.g. LUASERVE_PORT=9000):
%s  -h, --help           this text
  -V, --version        the version
]]


local function usage()
  local lines = {}
  for _, o in ipairs(OPTIONS) do
    local kind = o[2] == "certreqs" and "MODE" or o[2] == "seconds" and "DURATION"
      or o[2] == "logformat" and "FORMAT" or o[2]:upper()
    local flag = "--" .. o[1] .. (o[2] == "flag" and "" or " " .. kind)
    local def = (o[2] == "flag" or o[3] == "") and "" or
      (" (default %s)"):format(tostring(o[3]))
    lines[#lines + 1] = ("  %-34s %s%s\n"):format(flag, o[4], def)
  end
  return USAGE:format(table.concat(lines))
end


local function fail(status, fmt, ...)
  io.stderr:write("luaserve: ", fmt:format(...), "\n")
  return nil, status
end


local UNITS = { ms = 0.001, s = 1, m = 60, h = 3600 }

--- duration(v): seconds from a number (seconds) or a number with a unit
-- (250ms, 5s, 2m, 1h, 1.5s); nil, message when it is not one.
function M.duration(v)
  local num, unit = tostring(v):match("^%s*(%d*%.?%d+)%s*(%a*)%s*$")
  local n = tonumber(num)
  if n == nil or (unit ~= "" and not UNITS[unit]) then
    return nil, "expects seconds: a number >= 0, or with a unit (250ms, 5s, 2m, 1h)"
  end
  return n * (UNITS[unit] or 1)
end


-- Check and convert one option value; nil, message when it is bad.
local function convert(o, v)
  local kind = o[2]
  if kind == "flag" then
    if v == true or v == "1" or v == "true" or v == "yes" then return true end
    if v == "0" or v == "false" or v == "no" or v == "" then return false end
    return nil, "expects 1 or 0"
  elseif kind == "string" or kind == "file" then
    return v
  elseif kind == "certreqs" then
    if v == "none" or v == "optional" or v == "required" then return v end
    return nil, "must be none, optional or required"
  elseif kind == "level" then
    if v == "debug" or v == "info" or v == "warn" or v == "error" then return v end
    return nil, "must be debug, info, warn or error"
  elseif kind == "logformat" then
    if v == "text" or v == "json" then return v end
    return nil, "must be text or json"
  elseif kind == "seconds" then
    return M.duration(v)
  end
  local n = tonumber(v)
  if n == nil then
    -- 16k, 4m: bytes with a unit
    local num, unit = tostring(v):match("^(%d+)([kKmM])$")
    if kind == "bytes" and num then
      n = tonumber(num) * (unit:lower() == "k" and 1024 or 1024 * 1024)
    end
  end
  if n == nil or n < 0 then return nil, "expects a number >= 0" end
  if kind == "port" and (n > 65535 or n % 1 ~= 0) then
    return nil, "expects a port from 0 to 65535"
  end
  if (kind == "count" or kind == "bytes") and n % 1 ~= 0 then
    return nil, "expects a whole number"
  end
  return n
end


--- parse(args): options table, app path; or nil, exit status (after
-- printing why). Options come from the environment, then flags.
function M.parse(args, getenv)
  getenv = getenv or os.getenv
  local by_name, opts = {}, {}
  for _, o in ipairs(OPTIONS) do
    by_name[o[1]] = o
    opts[o[1]] = o[3]
    local env = "LUASERVE_" .. o[1]:upper():gsub("-", "_")
    local v = getenv(env)
    if v ~= nil and v ~= "" then
      local c, err = convert(o, v)
      if c == nil then return fail(2, "%s=%s: %s", env, v, err) end
      opts[o[1]] = c
    end
  end
  local app_path
  local i = 1
  while i <= #args do
    local a = args[i]
    if a == "-h" or a == "--help" then
      io.stdout:write(usage())
      return nil, 0
    elseif a == "-V" or a == "--version" then
      io.stdout:write("luaserve ", VERSION, "\n")
      return nil, 0
    elseif a:sub(1, 2) == "--" then
      local name, value = a:sub(3):match("^([^=]+)=(.*)$")
      name = name or a:sub(3)
      local o = by_name[name]
      if o == nil then return fail(2, "unknown option --%s (see --help)", name) end
      if o[2] == "flag" then
        if value then return fail(2, "--%s takes no value", name) end
        value = true
      elseif value == nil then
        i = i + 1
        value = args[i]
        if value == nil then return fail(2, "--%s needs a value", name) end
      end
      local c, err = convert(o, value)
      if c == nil then return fail(2, "--%s %s: %s", name, tostring(value), err) end
      opts[name] = c
    elseif app_path == nil then
      app_path = a
    else
      return fail(2, "unexpected argument '%s' (one APP only)", a)
    end
    i = i + 1
  end
  if app_path == nil then
    io.stderr:write(usage())
    return nil, 2
  end
  return opts, app_path
end


--- load_app(path): the app a folder's app.lua or a .lua file returns; or
-- nil, message (naming the file and line).
function M.load_app(path)
  local app_mod = require "luaserve.app"
  local file = path
  local attr = io.open(path .. "/app.lua", "r")
  if attr then
    attr:close()
    file = path:gsub("/$", "") .. "/app.lua"
  elseif not path:match("%.lua$") then
    return nil, ("%s: no such app (expected a folder holding app.lua, or a .lua file)")
      :format(path)
  end
  local dir = file:match("^(.*)/[^/]*$") or "."
  local dir_path = dir .. "/?.lua;" .. dir .. "/?/init.lua;"
  if package.path:sub(1, #dir_path) ~= dir_path then   -- pool states have it
    package.path = dir_path .. package.path
  end
  local chunk, err = loadfile(file)
  if not chunk then
    if not io.open(file, "r") then return nil, file .. ": no such file" end
    return nil, err
  end
  -- sync() may be called while the app's code runs (luaserve.sync).
  local sync = require "luaserve.sync"
  sync.begin_load()
  local ok, app = xpcall(chunk, function(e)
    -- The message names file and line; add where in the app file it came
    -- from when the error was raised deeper down.
    local msg = tostring(e)
    local tb = debug.traceback("", 2)
    for l in tb:gmatch("\n%s*([^\n]+)") do
      if l:find(file, 1, true) and not msg:find(l:match("^[^:]+:%d+") or "\0", 1, true) then
        msg = msg .. "\n  (at " .. l:match("^[^:]+:%d+") .. ")"
        break
      end
    end
    return msg
  end)
  sync.end_load(ok and app or nil)
  if not ok then return nil, app end
  if not app_mod.is_app(app) then
    return nil, ("%s: must return an app (luaserve.app()), got %s")
      :format(file, type(app))
  end
  return app
end


-- The server's TLS context from the ssl-* options: nil (plain HTTP), a
-- context, or false after printing why (a missing, unreadable or broken
-- file, a key that does not match: one line naming the file).
local function refuse(fmt, ...)
  fail(2, fmt, ...)
  return false
end


local function tls_context(opts)
  local cert, key = opts["ssl-certfile"], opts["ssl-keyfile"]
  local ca, reqs = opts["ssl-ca-certs"], opts["ssl-cert-reqs"]
  if cert == "" then
    for _, name in ipairs({ "ssl-keyfile", "ssl-ca-certs" }) do
      if opts[name] ~= "" then
        return refuse("--%s needs --ssl-certfile", name)
      end
    end
    if reqs ~= "none" then return refuse("--ssl-cert-reqs needs --ssl-certfile") end
    return nil
  end
  if reqs ~= "none" and ca == "" then
    return refuse("--ssl-cert-reqs %s needs --ssl-ca-certs (the CAs to check "
      .. "client certificates against)", reqs)
  end
  local ctx, err, which = require("luaserve.server").tls_context({
    cert = cert,
    key = key ~= "" and key or nil,
    password = opts["ssl-keyfile-password"] ~= "" and opts["ssl-keyfile-password"] or nil,
    ca = ca ~= "" and ca or nil,
    verify = reqs,
  })
  if not ctx then
    local flag = ({ cert = "ssl-certfile", key = key ~= "" and "ssl-keyfile" or "ssl-certfile",
      ca = "ssl-ca-certs" })[which] or "ssl-certfile"
    return refuse("--%s %s", flag, tostring(err))
  end
  return ctx
end


local function serve(args)
  local opts, app_path = M.parse(args)
  if opts == nil then return app_path end
  local log = require "luaserve.log"
  log.set_level(opts["log-level"])
  log.set_format(opts["log-format"])
  if opts.reload then
    local child_args = {}
    for _, a in ipairs(args) do
      if a ~= "--reload" then child_args[#child_args + 1] = a end
    end
    return require("luaserve.reload").supervise(app_path, child_args)
  end
  core.shared_configure(opts["shared-size"])
  local tls = tls_context(opts)
  if tls == false then return 2 end
  local app, err = M.load_app(app_path)
  if not app then
    log.error("cannot load app: " .. err)
    return 2
  end
  local server = require "luaserve.server"
  local host, herr = server.listen_address(opts.host)
  if not host then
    log.error(herr)
    return 2
  end
  local ok, srv, lerr = pcall(server.serve, app, {
    host = host,
    port = opts.port,
    tls = tls,
    access_log = not opts["no-access-log"] and log.LEVELS[opts["log-level"]] <= log.LEVELS.info,
    max_body = opts["max-body"],
    max_upload = opts["max-upload"],
    max_header_bytes = opts["max-header-bytes"],
    max_headers = opts["max-headers"],
    header_timeout_ms = opts["timeout-header"] * 1000,
    keepalive_timeout_ms = opts["timeout-keep-alive"] * 1000,
    send_timeout_ms = opts["timeout-send"] * 1000,
    timeout_request = opts["timeout-request"] > 0 and opts["timeout-request"] or nil,
    limit_concurrency = opts["limit-concurrency"],
    backlog = opts.backlog,
    paused = true,   -- bound; accepting once the startup hooks are done
  })
  if not ok then   -- an option value the core refuses
    log.error((tostring(srv):gsub("^[^\n]-:%d+: ", "")))
    return 2
  end
  if not srv then
    log.error(("cannot listen on %s port %d: %s"):format(opts.host, opts.port, lerr))
    return 1
  end
  -- The pool, if the app marked any function sync: each thread loads the
  -- app. Once listening works (a port in use loads nothing more); no
  -- request is dispatched before core.run().
  local pooled, perr = require("luaserve.sync").start_pool(app, app_path, {
    threads = opts.threads, queue = opts["pool-queue"], nice = opts["pool-nice"],
    log_level = opts["log-level"] })
  if pooled == nil then
    srv:close()
    log.error("cannot start the sync pool: " .. tostring(perr))
    return 2
  end
  -- The app's startup hooks, before any connection is accepted.
  local grace = opts["timeout-graceful-shutdown"]
  local sok, serr = server.startup(app)
  if sok then sok, serr = srv:start() end
  if not sok then
    srv:close()
    log.error(tostring(serr))
    return 2
  end
  local host, port = srv:address()
  log.info(("luaserve %s serving %s on %s://%s:%d (Ctrl+C to quit)")
    :format(VERSION, app_path, tls and "https" or "http",
      host:find(":") and "[" .. host .. "]" or host, port))
  if pooled then
    local st = core.pool_stats()
    log.info(("sync pool: %d threads, queue %d"):format(st.threads, st.queue_max))
  end
  core.shutdown_on_signals(grace * 1000)
  server.watch_blocking(opts["warn-blocking"])
  core.run()
  -- Drained: background tasks finish, then the shutdown hooks run, each
  -- bounded by the graceful shutdown timeout.
  local future = require "luaserve.future"
  future.allow_blocking(true)
  local done = future.await(future.wait_for(server.background_done(), grace))
  if not done then
    log.warn(("background tasks still running after %g s: stopped"):format(grace))
  end
  server.shutdown(app, grace)
  log.flush()
  log.info("stopped")
  return 0
end


-- Run fn with os.exit turned into a return (so the runtime closes cleanly:
-- every handle closed, every allocation freed).
local function run_catching_exit(fn)
  local real_exit = os.exit
  local EXIT = {}
  os.exit = function(code)
    if code == true or code == nil then code = 0 elseif code == false then code = 1 end
    error({ [EXIT] = code }, 0)
  end
  local future = require "luaserve.future"
  future.allow_blocking(true)
  local ok, err = xpcall(fn, debug.traceback)
  os.exit = real_exit
  io.stdout:flush()
  if ok then return 0 end
  if type(err) == "table" and err[EXIT] then return tonumber(err[EXIT]) or 1 end
  -- busted ends a failed run with error() (no message): it printed why.
  if err == nil then return 1 end
  io.stderr:write("luaserve: ", tostring(err), "\n")
  return 1
end


local function run_busted(args)
  _G.arg = { [0] = "busted" }
  for i, a in ipairs(args) do _G.arg[i] = a end
  return run_catching_exit(function()
    require("busted.runner")({ standalone = false })
  end)
end


local function run_script(args)
  local file = args[1]
  if not file then
    io.stderr:write("usage: luaserve lua FILE [args]\n")
    return 2
  end
  _G.arg = { [0] = file }
  for i = 2, #args do _G.arg[i - 1] = args[i] end
  local chunk, err = loadfile(file)
  if not chunk then
    io.stderr:write("luaserve: ", err, "\n")
    return 2
  end
  return run_catching_exit(function() chunk(unpack(_G.arg)) end)
end


-- `luaserve check APP`: load the app as the server would; 0, or the error
-- with its file and line and 2.
local function check(args)
  if #args ~= 1 then
    io.stderr:write("usage: luaserve check APP\n")
    return 2
  end
  local app, err = M.load_app(args[1])
  if not app then
    io.stderr:write("luaserve: cannot load app: ", err, "\n")
    return 2
  end
  return 0
end


function M.main(...)
  local args = { ... }
  if args[1] == "check" then
    table.remove(args, 1)
    return check(args)
  elseif args[1] == "busted" then
    table.remove(args, 1)
    return run_busted(args)
  elseif args[1] == "lua" then
    table.remove(args, 1)
    return run_script(args)
  end
  return serve(args)
end

return M
