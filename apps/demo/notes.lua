-- apps/demo/notes.lua: the database lessons as routes. A notes API on
-- PostgreSQL ($LUASERVE_PG), a rate limit on adding notes kept in Redis
-- ($LUASERVE_REDIS), and /db/slow, a slow query that is cancelled on the
-- server when its client leaves or its deadline passes.
--
-- app.lua: require("notes")(app). Without LUASERVE_PG (or with the server
-- down) the database routes answer 503 and say why; without
-- LUASERVE_REDIS the rate limit is off.

local luaserve = require "luaserve"
local pg = require "luaserve.pg"
local redis = require "luaserve.redis"
local S = require "luaserve.schema"   -- declared inputs (issue 12)

local await, raise = luaserve.await, luaserve.raise

-- Notes added per client and minute before 429.
local RATE_LIMIT = tonumber(os.getenv("LUASERVE_NOTES_PER_MINUTE")) or 10

local SCHEMA = [[create table if not exists notes (
  id serial primary key,
  text text not null,
  created timestamptz not null default now())]]


return function(app)
  local PG = os.getenv("LUASERVE_PG") or ""
  local REDIS = os.getenv("LUASERVE_REDIS") or ""
  local db = PG ~= "" and pg.pool{ url = PG, max = 8, acquire_timeout = 2,
    connect_timeout = 2 } or nil
  local r = REDIS ~= "" and redis.pool{ url = REDIS, max = 8,
    connect_timeout = 1, timeout = 1 } or nil
  local schema = nil   -- the future of the CREATE TABLE, shared by all

  -- The pool, with the table made once; 503 when there is no database.
  local function database()
    if not db then
      raise(503, "no database: start luaserve with LUASERVE_PG set to a " ..
        "postgresql:// URL (see apps/demo/README.md)")
    end
    schema = schema or db:query(SCHEMA)
    local ok, err = await(schema)
    if not ok then
      schema = nil
      raise(503, "database unavailable: " .. tostring(err))
    end
    return db
  end

  -- Rows, or 503 for a database that cannot be reached; an SQL error is
  -- a bug here: it raises (500, logged with the route).
  local function query(...)
    local rows, err = await(database():query(...))
    if rows then return rows end
    if pg.is_error(err) then error(tostring(err), 2) end
    raise(503, "database unavailable: " .. tostring(err))
  end

  -- 429 past RATE_LIMIT notes a minute per client (INCR and EXPIRE in one
  -- round trip); with Redis unset or down the limit is off (fails open).
  local function rate_limit(req)
    if not r then return "off" end
    local key = ("notes:rate:%s:%d"):format(req.client.host or "?",
      math.floor(os.time() / 60))
    local out = await(r:pipeline(function(p)
      p:incr(key)
      p:expire(key, 60)
    end))
    if not out then return "unavailable" end
    if out[1] > RATE_LIMIT then
      raise(429, ("at most %d notes a minute"):format(RATE_LIMIT),
        { ["Retry-After"] = 60 - os.time() % 60 })
    end
    return tostring(RATE_LIMIT - out[1])
  end

  local Note = S.object{ name = "Note", fields = {
    id = S.integer(), text = S.string(),
    created = S.string{ description = "PostgreSQL's timestamptz, as text" } } }
  local Problem = S.object{ name = "Problem", fields = { detail = S.any() } }
  local tags = { "databases" }

  app:get("/notes", { summary = "The latest 50 notes", tags = tags,
    response = { [200] = S.object{ fields = { notes = S.array{ items = Note } } },
      [503] = Problem } },
  function(req)
    local rows = query("select id, text, created from notes order by id desc limit 50")
    return { notes = luaserve.json.array(rows) }
  end)

  app:post("/notes", { summary = "Add a note (rate limited in Redis)", tags = tags,
    body = S.object{ name = "NewNote", fields = {
      text = S.string{ min_length = 1, max_length = 10000 } } },
    response = { [201] = Note, [429] = Problem, [503] = Problem } },
  function(req)
    local body = req.valid.body
    local left = rate_limit(req)
    local rows = query("insert into notes (text) values ($1) returning id, text, created",
      body.text)
    return 201, rows[1], { ["X-RateLimit-Remaining"] = left }
  end)

  app:get("/notes/{id:int}", { summary = "A note by id", tags = tags,
    response = { [200] = Note, [404] = Problem, [503] = Problem } },
  function(req)
    local rows = query("select id, text, created from notes where id = $1", req.params.id)
    if not rows[1] then raise(404, "no such note") end
    return rows[1]
  end)

  app:delete("/notes/{id:int}", { summary = "Delete a note", tags = tags,
    response = { [204] = { description = "Deleted" }, [404] = Problem } },
  function(req)
    local rows = query("delete from notes where id = $1", req.params.id)
    if rows.affected == 0 then raise(404, "no such note") end
    return nil
  end)

  -- A slow query (pg_sleep). Leave early (Ctrl-C curl) and the server's
  -- backend stops at once: the query is cancelled (PQcancel, off the
  -- loop). ?timeout=S bounds it: 504 after S seconds, cancelled the same.
  app:get("/db/slow", { summary = "A slow query, cancelled on the server when the client leaves",
    tags = tags, query = { s = S.number{ min = 0, max = 60, default = 5 },
      timeout = S.number{ exclusive_min = 0, optional = true } } },
  function(req)
    local s = req.valid.query.s
    local rows, err = await(database():query{ "select pg_sleep($1) /* demo slow */", s,
      timeout = req.valid.query.timeout })
    if err == "timeout" then
      return 504, { detail = "the query took longer than the timeout: cancelled on the server" }
    end
    if not rows then raise(503, "database unavailable: " .. tostring(err)) end
    return { slept_s = s }
  end)
end
