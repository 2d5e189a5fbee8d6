-- tests/apps/client_app.lua: luaserve.http inside the real binary, for
-- tests/test_http_client.py. GET /call?url=U[&method=M&timeout=S&
-- read_timeout=S&max_body=N&follow_redirects=N] calls U and answers what
-- happened as JSON: {ok=true, status, body, headers} or {ok=false, err}.
-- GET /sync-call?url=U[&wait=S] does the same in a sync function (on a
-- pool thread). GET /pool answers the idle pooled connections of this
-- worker.

local luaserve = require "luaserve"
local http = require "luaserve.http"
local tcp = require "luaserve.tcp"

local await = luaserve.await

local app = luaserve.app()

local NUMERIC = { "timeout", "connect_timeout", "read_timeout", "send_timeout",
  "max_body", "follow_redirects" }

app:get("/call", function(req)
  local q = req.query
  local o = { url = q.url, method = q.method or "GET" }
  for _, k in ipairs(NUMERIC) do o[k] = tonumber(q[k]) end
  local res, err = await(http.request(o))
  if not res then return { ok = false, err = err } end
  local headers = {}
  for k, v in pairs(res.headers) do headers[k] = v end
  return { ok = true, status = res.status, body = res.body, headers = headers }
end)

-- The same client inside a sync function: it runs on the pool thread's
-- own loop. ?wait=S bounds the call with wait_for.
app:get("/sync-call", luaserve.sync(function(req)
  local f = http.get(req.query.url)
  local wait = tonumber(req.query.wait)
  if wait then f = luaserve.wait_for(f, wait) end
  local res, err = await(f)
  return { ok = res ~= nil, status = res and res.status, body = res and res.body,
    err = err, pool_state = require("luaserve.core").is_pool_state() }
end))

app:get("/pool", function()
  return tcp.pool_stats()
end)

return app
