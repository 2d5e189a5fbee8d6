-- tests/apps/db_app.lua: Redis and PostgreSQL behind routes, for
-- tests/test_db.py ($LUASERVE_REDIS, $LUASERVE_PG).

local luaserve = require "luaserve"
local pg = require "luaserve.pg"
local redis = require "luaserve.redis"

local await = luaserve.await

local app = luaserve.app()
local r = redis.pool{ url = os.getenv("LUASERVE_REDIS"), connect_timeout = 1, timeout = 2 }
local db = pg.pool{ url = os.getenv("LUASERVE_PG"), max = 2 }


app:get("/incr", function()
  local n, err = await(r:incr("db_app:hits"))
  if not n then return 503, { detail = err } end
  return { n = n }
end)


app:get("/sleep", function(req)
  local rows, err = await(db:query("select pg_sleep($1) /* db_app sleep */",
    tonumber(req.query.s) or 10))
  if not rows then return 503, { detail = tostring(err) } end
  return { slept = true }
end)


-- A sync route: the pool thread's own pools.
app:get("/sync", luaserve.sync(function()
  local rows, err = await(db:query("select 41 + 1 as n"))
  if not rows then return 503, { detail = tostring(err) } end
  local n, rerr = await(r:incr("db_app:sync"))
  if not n then return 503, { detail = rerr } end
  return { pg = rows[1].n, redis = n }
end))

return app
