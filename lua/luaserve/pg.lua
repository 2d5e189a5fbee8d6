-- luaserve.pg: PostgreSQL on the loop, on libpq in non-blocking mode
-- (core/pg.c). Every call returns a future; await gives the value or
-- nil, err.
--
--   local pg = require "luaserve.pg"
--   local db = pg.pool{ url = "postgresql://user:pass@host:5432/db", max = 16 }
--   local rows, err = await(db:query("select id, name from users where id = $1", id))
--   rows[1].name, rows.affected, rows.columns[1], rows.types[1]
--
-- rows is an array of rows (tables keyed by column name); what describes
-- it (affected, command, columns, types) is reached through its metatable,
-- so `return rows` from a handler answers a JSON array.
--
-- Parameters are bound by libpq ($1, $2, ...), never put into the SQL
-- text: nil and pg.null are NULL, booleans, numbers and strings go as
-- text, a table as JSON, pg.array{...} as a PostgreSQL array, pg.bytea(s)
-- as bytes. Each connection prepares a statement the first time it runs
-- its text and reuses it after (up to MAX_STATEMENTS per connection).
--
-- Values come back decoded: int2/int4/int8/oid as numbers (an int8 beyond
-- 2^53 as a string: a Lua number would lose digits), float4/float8 as
-- numbers, numeric as a string (exact), bool, text and the other string
-- types as strings, json/jsonb decoded (JSON null is pg.null), bytea as
-- bytes, date/time/timestamp/interval as the server's ISO strings
-- ("2024-01-02 03:04:05+00"), arrays as tables, SQL NULL as pg.null.
--
-- Errors: a failed command gives nil, err where err is a pg.Error table
-- (err.code the SQLSTATE, err.message, err.detail, err.hint, ...;
-- tostring(err) is one readable line); a connection failure gives nil
-- and a string (libpq's message, "timeout", "closed", "dns: <reason>"),
-- a full pool nil, "pool timeout". A command that fails because its
-- pooled connection had been closed by the server (terminated, restarted)
-- is retried once on a new connection. A broken connection never returns
-- to the pool.
--
-- Cancellation: when a call's task is cancelled (wait_for expired, its
-- request's client left, task:cancel()), a command in flight is cancelled
-- on the server with libpq's PQcancel, which runs on libuv's thread pool,
-- and its connection is closed rather than returned to the pool (a late
-- cancel request can then never hit another command).
--
-- Everything runs in whichever Lua state calls it, on that state's loop:
-- a pool made in a sync function's module lives in that pool thread.

local core = require "luaserve.core"
local dbpool = require "luaserve.dbpool"
local future = require "luaserve.future"
local json = require "luaserve.json"

local new_future = future.new_internal   -- the futures users get are tasks'
local resolved = future.resolved
local await = future.await
local spawn = future.spawn
local on_cancel = future.on_cancel
local Semaphore = future.Semaphore
local pg_connect = core.pg_connect
local now = core.now
local json_decode = json.decode
local json_encode = json.encode
local setmetatable = setmetatable
local getmetatable = getmetatable
local select = select
local type = type
local tostring = tostring
local error = error
local concat = table.concat
local format = string.format
local gsub = string.gsub
local byte = string.byte

local M = {}

--- SQL NULL (and JSON null): luaserve.null.
M.null = json.null
local null = M.null

--- Prepared statements kept per connection; past it, statements run
-- unnamed (parsed each time).
M.MAX_STATEMENTS = 256

M.DEFAULTS = {
  max = 16,               -- connections at most
  acquire_timeout = 5,    -- s waiting for a free connection; then "pool timeout"
  connect_timeout = 10,   -- s, DNS, TCP, TLS and authentication
  timeout = nil,          -- s per command (nil: none); a command over it is
                          -- cancelled on the server and gives "timeout"
  idle_timeout = 300,     -- s an idle connection is kept
}


-- ---------------------------------------------------------------------------
-- Errors

local Error = {}
Error.__index = Error
Error.__name = "luaserve.pg.Error"


function Error.__tostring(e)
  local s = (e.severity or "ERROR") .. ": " .. tostring(e.message)
  if e.code then s = s .. " (SQLSTATE " .. e.code .. ")" end
  if e.detail then s = s .. ": " .. e.detail end
  return s
end

M.Error = Error
core.pg_init(null, Error)


local function is_error(v)
  return getmetatable(v) == Error
end
M.is_error = is_error


-- ---------------------------------------------------------------------------
-- Parameters

local Array = { __name = "luaserve.pg.array" }
local Bytea = { __name = "luaserve.pg.bytea" }


--- array(t): t sent as a PostgreSQL array (nested tables: more
-- dimensions); the element type comes from the query ($1::int[]).
function M.array(t)
  if type(t) ~= "table" then error("pg.array: expected a table", 2) end
  return setmetatable({ t, n = table.maxn(t) }, Array)
end


--- bytea(s): s sent as bytes (any byte, NUL included).
function M.bytea(s)
  if type(s) ~= "string" then error("pg.bytea: expected a string", 2) end
  return setmetatable({ s }, Bytea)
end


local function hex(s)
  return "\\x" .. gsub(s, ".", function(c) return format("%02x", byte(c)) end)
end


local encode_param


local function array_literal(t, n)
  local out = {}
  for i = 1, n or table.maxn(t) do
    local v = t[i]
    if v == nil or v == null then
      out[i] = "NULL"
    elseif type(v) == "table" and getmetatable(v) == nil and v[1] ~= nil then
      out[i] = array_literal(v)   -- a nested dimension
    else
      v = encode_param(v)
      if type(v) == "boolean" then v = v and "t" or "f" end
      v = tostring(v)
      out[i] = '"' .. gsub(v, '[\\"]', "\\%0") .. '"'
    end
  end
  return "{" .. concat(out, ",") .. "}"
end


-- A Lua value as a parameter for C: nil, null, a boolean, a number or a
-- string. Raises on what cannot be sent (a misuse).
function encode_param(v)
  local t = type(v)
  if t == "table" then
    local mt = getmetatable(v)
    if mt == Array then return array_literal(v[1], v.n) end
    if mt == Bytea then return hex(v[1]) end
    return json_encode(v)
  end
  if t == "number" and v ~= v then return "NaN" end
  if t == "number" and (v == math.huge or v == -math.huge) then
    return v > 0 and "Infinity" or "-Infinity"
  end
  if t == "function" or t == "thread" or (t == "userdata" and v ~= null) then
    error("pg: a parameter cannot be a " .. t, 4)
  end
  return v
end


-- A command: { sql = , args = , n = }. From (sql, ...) or from
-- { sql, arg1, ..., n = , timeout = } (then also its timeout).
local function command(sql, ...)
  local args, n, timeout
  if type(sql) == "table" then
    local t = sql
    sql = t[1]
    n = (t.n or table.maxn(t)) - 1
    args = {}
    for i = 1, n do args[i] = t[i + 1] end
    timeout = t.timeout
  else
    n = select("#", ...)
    args = n > 0 and { ... } or {}
  end
  if type(sql) ~= "string" then error("pg: the SQL must be a string", 3) end
  for i = 1, n do
    local v = args[i]
    local tv = type(v)
    if tv ~= "string" and tv ~= "nil" then args[i] = encode_param(v) end
  end
  return { sql = sql, args = args, n = n }, timeout
end


-- ---------------------------------------------------------------------------
-- Connections: { c = the C connection, stmts = { [sql] = name },
-- nstmts, reused, idle_since }.

local function ms(seconds)
  if seconds and seconds > 0 then return seconds * 1000 end
  return 0
end


local JSON_TYPES = { json = true, jsonb = true, _json = true, _jsonb = true }


local function decode_json(v)
  if type(v) == "string" then return (json_decode(v)) end
  if type(v) == "table" then
    for i = 1, #v do v[i] = decode_json(v[i]) end
  end
  return v
end


-- Decode the json columns C left as text.
local function finish_rows(rows)
  if rows._json then
    getmetatable(rows)._json = nil
    local cols, types = rows.columns, rows.types
    for c = 1, #cols do
      if JSON_TYPES[types[c]] then
        local name = cols[c]
        for i = 1, #rows do
          local v = rows[i][name]
          if v ~= null then rows[i][name] = decode_json(v) end
        end
      end
    end
  end
  return rows
end


-- The statement name for sql on conn: name, prepare (true the first time).
local function statement(conn, sql)
  local name = conn.stmts[sql]
  if name then return name, false end
  if conn.nstmts >= M.MAX_STATEMENTS then return nil, false end
  conn.nstmts = conn.nstmts + 1
  name = "luaserve_" .. conn.nstmts
  conn.stmts[sql] = name
  return name, true
end


-- A pipeline that failed at command i (list: its { sql, name, prepare,
-- ... }): the statements it was to prepare from i on were not made (the
-- one at i may have been: its name is then left unused, never given to
-- another statement).
local function forget_from(conn, list, i)
  for j = i, #list do
    if list[j][3] then conn.stmts[list[j][1]] = nil end
  end
end


-- Run cmd (one command) or cmds (a list, in one pipeline) on conn and
-- await the answer: rows (or the list of results), or nil, err.
local function execute(conn, cmd, cmds, timeout)
  local f = new_future()
  local ok, err, prepared, list
  if cmd then
    local name, prepare = statement(conn, cmd.sql)
    prepared = prepare
    ok, err = conn.c:query(f, ms(timeout), cmd.sql, name, prepare, cmd.args, cmd.n)
  else
    list = {}
    for i = 1, #cmds do
      local c = cmds[i]
      local name, prepare = statement(conn, c.sql)
      list[i] = { c.sql, name, prepare, c.args, c.n }
    end
    ok, err = conn.c:batch(f, ms(timeout), list)
  end
  if not ok then   -- nothing was sent: what it was to prepare was not made
    if list then forget_from(conn, list, 1) elseif prepared then conn.stmts[cmd.sql] = nil end
    return nil, err
  end
  local r, e = await(f)
  if cmd then
    if r then return finish_rows(r) end
    -- a statement that failed to prepare (or went stale) is made anew
    if prepared or (is_error(e) and (e.code == "0A000" or e.code == "26000")) then
      conn.stmts[cmd.sql] = nil
    end
    return nil, e
  end
  if not r then   -- nothing came back: what it was to prepare may not exist
    forget_from(conn, list, 1)
    return nil, e
  end
  for i = 1, #r do
    if is_error(r[i]) then
      -- The commands before i ran, their statements with them; i and the
      -- ones after it did not (the server skips the rest of a pipeline).
      forget_from(conn, list, i)
      if r[i].code == "0A000" or r[i].code == "26000" then   -- stale
        conn.stmts[cmds[i].sql] = nil
      end
      return nil, r[i]
    end
    finish_rows(r[i])
  end
  return r
end


local function cancel_connect(f)
  f._c:close(true)
end


-- Open a connection: a future of a connection table, or of nil, err.
local function connect(url, timeout)
  local f = new_future(cancel_connect)
  local conn = { stmts = {}, nstmts = 0, reused = 0 }
  local c, err = pg_connect(url, { _done = false, resolve = function(self, ok, e)
    self._done = true
    if f._done then return end
    if ok then f:resolve(conn) else f._c:close() f:resolve(nil, e) end
  end }, ms(timeout))
  if not c then return resolved(nil, err) end
  f._c, conn.c = c, c
  return f
end


-- A new connection, ready for commands (DateStyle ISO): conn or nil, err.
local function open(pool)
  local conn, err = await(connect(pool.url, pool.connect_timeout))
  if not conn then return nil, err end
  local info = conn.c:info()
  if info and not info.datestyle:find("^ISO") then
    local ok, serr = execute(conn, { sql = "SET DateStyle = ISO, YMD", args = {}, n = 0 })
    if not ok then conn.c:close() return nil, serr end
  end
  return conn
end


-- ---------------------------------------------------------------------------
-- The pool: at most `max` connections in use (a Semaphore), idle ones on
-- a stack (the most recent first). New connections are opened only when
-- none is idle, so the open ones never number more than max.

local Pool = {}
Pool.__index = Pool
Pool.__name = "luaserve.pg.Pool"


function Pool.__tostring(p)
  return format("luaserve.pg.Pool (%d in use, %d idle, max %d)",
    p.sem.size - p.sem.free, #p.idle, p.max)
end


--- pool{url=, max=, acquire_timeout=, connect_timeout=, timeout=,
-- idle_timeout=}: a pool of connections to url (a postgresql:// URL or
-- libpq's key=value pairs; sslmode= and the other libpq settings work).
-- Nothing connects before the first command.
function M.pool(opts)
  if type(opts) ~= "table" then error("pg.pool: expected a table of options", 2) end
  if type(opts.url) ~= "string" then error("pg.pool: url must be a string", 2) end
  local o = {}
  for k, v in pairs(M.DEFAULTS) do o[k] = v end
  for k, v in pairs(opts) do o[k] = v end
  if type(o.max) ~= "number" or o.max < 1 then error("pg.pool: max must be >= 1", 2) end
  return setmetatable({ url = o.url, max = o.max, acquire_timeout = o.acquire_timeout,
    connect_timeout = o.connect_timeout, timeout = o.timeout,
    idle_timeout = o.idle_timeout, sem = Semaphore(o.max), idle = {} }, Pool)
end


-- A connection for a command (st.conn while held): conn, or nil, err.
-- fresh: a new one, not an idle one. The permit is held until release.
local function acquire(pool, st, fresh)
  local sem = pool.sem
  local ok, err = dbpool.acquire(sem, pool.acquire_timeout)
  if not ok then return nil, err end
  st.permit = true
  local idle = pool.idle
  while not fresh do
    local n = #idle
    if n == 0 then break end
    local conn = idle[n]
    idle[n] = nil
    if conn.c:ok() and now() - conn.idle_since < pool.idle_timeout then
      conn.reused = conn.reused + 1
      st.conn = conn
      return conn
    end
    conn.c:close()
  end
  local conn, err = open(pool)
  if not conn then
    st.permit = nil
    sem:release()
    return nil, err
  end
  st.conn = conn
  return conn
end


-- Give the connection back (closed instead when it broke) and the permit.
local function release(pool, st)
  local conn = st.conn
  st.conn = nil
  if conn then
    if conn.c:ok() then
      conn.idle_since = now()
      pool.idle[#pool.idle + 1] = conn
    else
      conn.c:close()
    end
  end
  if st.permit then
    st.permit = nil
    pool.sem:release()
  end
end


-- The task was cancelled: a connection it held is closed (a command in
-- flight cancelled on the server); the Semaphore takes its permit back.
local function abandon(st)
  local conn = st.conn
  st.conn = nil
  if conn then conn.c:close(true) end
end


-- A failure that says the pooled connection was dead before we used it.
local function stale(conn, err)
  if conn.reused == 0 or conn.c:ok() or err == "timeout" then return false end
  return type(err) == "string" or
    (is_error(err) and type(err.code) == "string" and err.code:sub(1, 4) == "57P0")
end


-- The task behind query and pipeline.
local function run(pool, cmd, cmds, timeout)
  local st = {}
  local remove = on_cancel(function() abandon(st) end)
  local r, err
  for try = 1, 2 do
    local conn
    conn, err = acquire(pool, st, try > 1)
    if not conn then break end
    r, err = execute(conn, cmd, cmds, timeout)
    release(pool, st)
    if r or not stale(conn, err) then break end
  end
  if remove then remove() end
  if r then return r end
  return nil, err
end


--- db:query(sql, ...) or db:query{sql, ..., timeout = s}: a future of
-- the rows (with rows.affected, rows.command, rows.columns, rows.types),
-- or of nil, err.
function Pool:query(sql, ...)
  local cmd, timeout = command(sql, ...)
  return spawn(run, self, cmd, nil, timeout or self.timeout):future()
end


-- Collects the commands of a pipeline.
local Batch = {}
Batch.__index = Batch
Batch.__name = "luaserve.pg.Pipeline"


function Batch:query(sql, ...)
  local cmd = command(sql, ...)
  self[#self + 1] = cmd
  return self
end


local function collect(fn)
  local b = setmetatable({}, Batch)
  fn(b)
  return b
end


--- db:pipeline(function(p) p:query(sql, ...) ... end): the commands sent
-- together on one connection (libpq's pipeline mode: one round trip); a
-- future of the array of their rows, or of nil, err (the first failure:
-- the commands after it were not run). Not a transaction: the commands
-- before a failure stay done.
function Pool:pipeline(fn, opts)
  if type(fn) ~= "function" then error("pg: pipeline expects a function", 2) end
  local b = collect(fn)
  if #b == 0 then return resolved({}) end
  return spawn(run, self, nil, b, opts and opts.timeout or self.timeout):future()
end


-- ---------------------------------------------------------------------------
-- Transactions

local Tx = {}
Tx.__index = Tx
Tx.__name = "luaserve.pg.Transaction"


local function tx_run(tx, cmd, cmds, timeout)
  if tx.done then error("pg: the transaction is over", 0) end
  return execute(tx.conn, cmd, cmds, timeout or tx.pool.timeout)
end


--- tx:query(...), tx:pipeline(fn): as db's, on the transaction's
-- connection (one command at a time).
function Tx:query(sql, ...)
  local cmd, timeout = command(sql, ...)
  return spawn(tx_run, self, cmd, nil, timeout):future()
end


function Tx:pipeline(fn)
  local b = collect(fn)
  if #b == 0 then return resolved({}) end
  return spawn(tx_run, self, nil, b):future()
end


local function simple(conn, sql)
  return execute(conn, { sql = sql, args = {}, n = 0 })
end


local function run_transaction(pool, fn, begin)
  local st = {}
  local remove = on_cancel(function() abandon(st) end)
  local conn, err = acquire(pool, st, false)
  if not conn then
    if remove then remove() end
    return nil, err
  end
  local ok, berr = simple(conn, begin)
  if not ok then
    release(pool, st)
    if remove then remove() end
    return nil, berr
  end
  local tx = setmetatable({ conn = conn, pool = pool }, Tx)
  local r = { pcall(fn, tx) }
  tx.done = true
  local out
  if r[1] then
    local c, cerr = simple(conn, "COMMIT")
    if c and c.command == "ROLLBACK" then   -- a command had failed
      cerr = "rolled back: a command in the transaction failed"
    end
    if c and not cerr then
      out = { true, unpack(r, 2, table.maxn(r)) }
    else
      out = { false, cerr }
    end
  else
    if conn.c:ok() then simple(conn, "ROLLBACK") end
    out = { false, r[2] }
  end
  release(pool, st)
  if remove then remove() end
  if out[1] then return unpack(out, 2, table.maxn(out)) end
  return nil, out[2]
end


--- db:transaction(fn[, opts]): runs fn(tx) between BEGIN and COMMIT on
-- one connection. A future of fn's results once committed; of nil, err
-- when fn raised (err: what it raised; rolled back), when a command
-- failed and fn went on (rolled back), or when the commit failed. A
-- cancelled transaction's connection is closed, which rolls it back on
-- the server. opts.begin: the statement that opens it (default "BEGIN",
-- e.g. "BEGIN ISOLATION LEVEL SERIALIZABLE").
function Pool:transaction(fn, opts)
  if type(fn) ~= "function" then error("pg: transaction expects a function", 2) end
  return spawn(run_transaction, self, fn, opts and opts.begin or "BEGIN"):future()
end


-- ---------------------------------------------------------------------------
-- LISTEN / NOTIFY

local Listener = {}
Listener.__index = Listener
Listener.__name = "luaserve.pg.Listener"


local function quote_ident(s)
  return '"' .. gsub(s, '"', '""') .. '"'
end


--- listener:close(): stop listening (the connection is closed).
function Listener:close()
  if self.closed then return end
  self.closed = true
  local conn = self.conn
  self.conn = nil
  if conn then conn.c:close(true) end
  dbpool.untie(self)
end


function Listener:_start()
  local conn, err = open(self.pool)
  if not conn then return nil, err end
  self.conn = conn
  if self.closed then conn.c:close() return nil, "closed" end
  local ok, lerr = simple(conn, "LISTEN " .. quote_ident(self.channel))
  if not ok then return nil, lerr end
  dbpool.tie(self)   -- it ends with the task (request) iterating it
  return true
end


local function stop_waiting(f)
  local c = f._c
  if c then c:stop_waiting() end
end


--- listener:next(): the next notification {channel, payload, pid} (awaits
-- it), or nil once closed or failed (listener.err says why).
function Listener:next()
  if self.closed then return nil end
  if not self.conn then
    local ok, err = self:_start()
    if not ok then
      self.err = err
      self:close()
      return nil
    end
  end
  local c = self.conn.c
  local f = new_future(stop_waiting)
  f._c = c
  local ch, payload, pid = c:notification(f)
  if ch == true then   -- cancelled while it waits: the listener closes
    ch, payload, pid = dbpool.wait(self, await, f)
  end
  if type(ch) ~= "string" then
    self.err = payload or "closed"
    self:close()
    return nil
  end
  return { channel = ch, payload = payload, pid = pid }
end

Listener.__call = Listener.next


--- db:listen(channel): an iterator of the notifications sent to channel,
-- on a connection of its own (opened at the first step, outside the
-- pool's max): `for n in db:listen("jobs") do ... n.channel, n.payload
-- end`. Each step awaits. It stops listening when closed
-- (listener:close()), when the task (request) that iterates it ends, or
-- when it is garbage-collected.
function Pool:listen(channel)
  if type(channel) ~= "string" or channel == "" then
    error("pg: listen expects a channel name", 2)
  end
  return setmetatable({ pool = self, channel = channel }, Listener)
end


--- db:close(): close the idle connections (those in use close when given
-- back: the pool keeps working).
function Pool:close()
  local idle = self.idle
  self.idle = {}
  for i = 1, #idle do idle[i].c:close() end
end


--- db:stats(): { max, in_use, idle, waiting }.
function Pool:stats()
  local sem = self.sem
  return { max = self.max, in_use = sem.size - sem.free, idle = #self.idle,
    waiting = #sem._queue }
end


M.Pool = Pool

return M
