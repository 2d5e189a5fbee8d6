-- tests/apps/inspect_app.lua: routes that show what a request looked like
-- once it reached Lua, for the binary tests (tests/test_http.py and others).

local luaserve = require "luaserve"

local app = luaserve.app()


-- The request as the handler sees it.
app:route({ "GET", "POST", "PUT", "DELETE" }, "/inspect", function(req)
  return {
    method = req.method,
    path = req.path,
    target = req.target,
    query_string = req.query_string,
    headers = req.headers,
    body = req.body,
    body_len = #req.body,
  }
end)


-- The default body limit (the server's --max-body).
app:post("/small", function(req)
  return { body_len = #req.body }
end)


-- A route that raises its own body limit above the server's.
app:post("/big", function(req)
  return { body_len = #req.body }
end, { max_body = 2 * 1024 * 1024 })


-- A route with a lower limit than the server's.
app:post("/tiny", function(req)
  return { body_len = #req.body }
end, { max_body = 10 })

return app
