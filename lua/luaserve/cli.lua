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
  { "gc-headroom", "bytes", 16 * 1024 * 1024, "garbage the Lua heap may gather between collections, at least (0: collect when the heap doubles)" },
  { "pool-queue", "count", 128, "sync jobs waiting for a thread before 503 / \"pool full\"" },
  { "pool-nice", "count", 5, "how much lower the pool threads' priority is than the loop's (0-19)" },
  { "shared-size", "bytes", 64 * 1024 * 1024, "capacity of luaserve.shared in bytes" },
  { "reload", "flag", false, "development: restart the server when a .lua file of the app changes" },
  -- processes, metrics, proxies (luaserve.master, luaserve.metrics, luaserve.proxy)
  { "workers", "count", 1, "worker processes under a master (0: one per core; 1: this process serves)" },
  { "timeout-worker-healthcheck", "seconds", 30, "kill and replace a worker whose loop is blocked this long (0: never)" },
  { "max-requests", "count", 0, "replace a worker gracefully after this many requests (0: never; starts a master)" },
  { "max-requests-jitter", "count", 0, "add 0 to N to each worker's --max-requests, so they do not restart together" },
  { "pid", "file", "", "write the server's process id (the master's) to this file" },
  { "metrics-path", "string", "", "serve Prometheus metrics at this path, e.g. /metrics (off: \"\")" },
  { "no-proxy-headers", "flag", false, "ignore X-Forwarded-For, X-Forwarded-Proto and Forwarded" },
  { "forwarded-allow-ips", "string", "127.0.0.1", "proxies whose forwarding headers are trusted: addresses and CIDRs, comma-separated, or *" },
  { "root-path", "string", "", "the path prefix the app is mounted under behind a proxy, e.g. /api" },
  -- issue 12: declared inputs, OpenAPI and docs
  { "no-docs", "flag", false, "do not serve /openapi.json, /docs and /redoc" },
  { "validate-responses", "flag", false, "development: a handler's answer that does not match its declared response schema is a logged 500" },
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


-- Serve in this process: the single process server, or one worker of a
-- master (worker = { fd = the master's socket }). Returns the exit status.
local function serve_one(opts, app_path, tls, worker)
  local log = require "luaserve.log"
  -- What stops the start: a worker tells its master (which logs it once
  -- and decides), a single process logs it.
  local function cannot(status, msg)
    if worker then core.worker_notify("failed", msg) else log.error(msg) end
    return status
  end
  local metrics_path = opts["metrics-path"] ~= "" and opts["metrics-path"] or nil
  if not worker and metrics_path then core.worker_attach() end
  local app, err = M.load_app(app_path)
  if not app then return cannot(2, "cannot load app: " .. err) end
  local server = require "luaserve.server"
  if metrics_path then
    local mok, merr = pcall(require("luaserve.metrics").mount, app, metrics_path)
    if not mok then return cannot(2, tostring(merr)) end
  end
  if worker and opts["timeout-worker-healthcheck"] > 0 then
    server.publish_running(true)
  end
  local host, herr = "127.0.0.1", nil
  if not worker then
    host, herr = server.listen_address(opts.host)
    if not host then return cannot(2, herr) end
  end
  local ok, srv, lerr = pcall(server.serve, app, {
    fd = worker and worker.fd,
    metrics = metrics_path ~= nil,
    proxy = not opts["no-proxy-headers"] and opts["forwarded-allow-ips"] or nil,
    root_path = opts["root-path"] ~= "" and opts["root-path"] or nil,
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
    docs = not opts["no-docs"],
    validate_responses = opts["validate-responses"],
  })
  if not ok then   -- an option value the core refuses
    return cannot(2, (tostring(srv):gsub("^[^\n]-:%d+: ", "")))
  end
  if not srv then
    return cannot(1, ("cannot listen on %s port %d: %s"):format(opts.host,
      opts.port, lerr))
  end
  -- The pool, if the app marked any function sync: each thread loads the
  -- app. Once listening works (a port in use loads nothing more); no
  -- request is dispatched before core.run().
  local pooled, perr = require("luaserve.sync").start_pool(app, app_path, {
    threads = opts.threads, queue = opts["pool-queue"], nice = opts["pool-nice"],
    log_level = opts["log-level"] })
  if pooled == nil then
    srv:close()
    return cannot(2, "cannot start the sync pool: " .. tostring(perr))
  end
  -- The app's startup hooks, before any connection is accepted.
  local grace = opts["timeout-graceful-shutdown"]
  local sok, serr = server.startup(app)
  if sok then sok, serr = srv:start() end
  if not sok then
    srv:close()
    return cannot(2, tostring(serr))
  end
  if worker then
    core.shutdown_on_signals(grace * 1000, true)
    local hc = opts["timeout-worker-healthcheck"]
    if hc > 0 then server.heartbeat(math.min(1, hc / 4)) end
    core.worker_notify("ready")
  else
    local shost, port = srv:address()
    log.info(("luaserve %s serving %s on %s://%s:%d (Ctrl+C to quit)")
      :format(VERSION, app_path, tls and "https" or "http",
        shost:find(":") and "[" .. shost .. "]" or shost, port))
    core.shutdown_on_signals(grace * 1000)
  end
  if pooled then
    local st = core.pool_stats()
    log.info(("sync pool: %d threads, queue %d"):format(st.threads, st.queue_max))
  end
  server.watch_blocking(opts["warn-blocking"])
  server.gc_headroom(opts["gc-headroom"])
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
  if not worker then log.info("stopped") end
  return 0
end


-- The pid file: written at start, removed at exit (by the process that
-- wrote it).
local function write_pid(path)
  if path == "" then return true end
  local f, err = io.open(path, "w")
  if not f then return nil, err end
  f:write(core.getpid(), "\n")
  f:close()
  return true
end


-- --workers N: the master binds the socket, maps the shared memory and
-- forks; each worker comes back here and serves.
local function serve_master(opts, app_path, tls, n)
  local log = require "luaserve.log"
  local addr, herr = require("luaserve.server").listen_address(opts.host)
  if not addr then
    log.error(herr)
    return 2
  end
  local fd, port = core.listen_socket(addr, opts.port)
  if not fd then
    log.error(("cannot listen on %s port %d: %s"):format(opts.host, opts.port, port))
    return 1
  end
  local nslots = math.min(512, 2 * math.max(n, 32))
  local ok, err = core.shm_init({ shared_size = opts["shared-size"], slots = nslots,
    series = opts["metrics-path"] ~= "" and 2048 or 0 })
  if not ok then
    log.error("cannot map the shared memory: " .. tostring(err))
    return 1
  end
  local pid_ok, pid_err = write_pid(opts.pid)
  if not pid_ok then
    log.error(("--pid %s: %s"):format(opts.pid, tostring(pid_err)))
    return 2
  end
  local host = opts.host:find(":") and "[" .. opts.host .. "]" or opts.host
  local role, status = require("luaserve.master").run({
    workers = n,
    healthcheck = opts["timeout-worker-healthcheck"],
    grace = opts["timeout-graceful-shutdown"],
    max_requests = opts["max-requests"],
    jitter = opts["max-requests-jitter"],
    nslots = nslots,
    banner = function(count)
      log.info(("luaserve %s serving %s on %s://%s:%d with %d workers " ..
        "(master %d; Ctrl+C to quit)"):format(VERSION, app_path,
        tls and "https" or "http", host, port, count, core.getpid()))
    end,
  })
  if role == "worker" then
    return serve_one(opts, app_path, tls, { fd = fd, slot = status })
  end
  if opts.pid ~= "" then os.remove(opts.pid) end
  return status
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
  local bad = M.check_options(opts)
  if bad then
    log.error(bad)
    return 2
  end
  local tls = tls_context(opts)
  if tls == false then return 2 end
  local n = opts.workers == 0 and core.cpus() or opts.workers
  if n > 1 or opts["max-requests"] > 0 then
    return serve_master(opts, app_path, tls, n)
  end
  core.shared_configure(opts["shared-size"])
  core.shm_init({ shared_size = opts["shared-size"], slots = 1,
    series = opts["metrics-path"] ~= "" and 2048 or 0 })
  local pid_ok, pid_err = write_pid(opts.pid)
  if not pid_ok then
    log.error(("--pid %s: %s"):format(opts.pid, tostring(pid_err)))
    return 2
  end
  local status = serve_one(opts, app_path, tls, nil)
  if opts.pid ~= "" then os.remove(opts.pid) end
  return status
end


--- check_options(opts): nil, or what is wrong with the options of the
-- process model, metrics and proxies.
function M.check_options(opts)
  local mp = opts["metrics-path"]
  if mp ~= "" and mp:sub(1, 1) ~= "/" then
    return ("--metrics-path %s: must start with /"):format(mp)
  end
  local rp = opts["root-path"]
  if rp ~= "" and (rp:sub(1, 1) ~= "/" or rp == "/") then
    return ("--root-path %s: must start with / and name a prefix, e.g. /api"):format(rp)
  end
  if opts.workers > 128 then
    return ("--workers %d: at most 128"):format(opts.workers)
  end
  local ok, err = require("luaserve.proxy").parse_allow(opts["forwarded-allow-ips"])
  if not ok then return "--forwarded-allow-ips " .. err end
  return nil
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
