-- luaserve.docs: the app's OpenAPI document at GET /openapi.json and
-- Swagger UI at GET /docs, added when the app is served (after the app's
-- own routes, which win). Swagger UI's files come from the npm registry's
-- swagger-ui-dist, which the Makefile fetches into build/swagger-ui and
-- `make install` puts beside the framework's Lua folder; luaserve serves
-- them itself (no CDN: the page works offline). luaserve.app{ docs =
-- false } or --no-docs turns both off.

local json = require "luaserve.json"
local log = require "luaserve.log"
local openapi = require "luaserve.openapi"
local static = require "luaserve.static"

local M = {}

-- The files of swagger-ui-dist that /docs uses.
local ASSETS = {
  ["swagger-ui.css"] = true, ["swagger-ui-bundle.js"] = true,
  ["swagger-ui-standalone-preset.js"] = true, ["favicon-32x32.png"] = true,
  ["favicon-16x16.png"] = true, ["oauth2-redirect.js"] = true,
}


-- The framework's Lua folder: where this file is (…/lua/luaserve/docs.lua).
local function lua_dir()
  local src = debug.getinfo(1, "S").source
  return src:sub(2):match("^(.*)/luaserve/[^/]*$") or "."
end


local function is_file(path)
  local f = io.open(path, "r")
  if f then f:close() return true end
  return false
end


--- swagger_ui_dir(): the folder of swagger-ui-dist's files, or nil:
-- $LUASERVE_SWAGGER_UI, else swagger-ui beside the installed Lua folder
-- ($(PREFIX)/share/luaserve/swagger-ui), else build/swagger-ui of the
-- build tree the Lua folder is in.
function M.swagger_ui_dir()
  local dir = lua_dir()
  local candidates = { os.getenv("LUASERVE_SWAGGER_UI"), dir .. "/../swagger-ui",
    dir .. "/../build/swagger-ui" }
  for _, c in pairs(candidates) do
    if c and c ~= "" and is_file(c .. "/swagger-ui-bundle.js") then return c end
  end
  return nil
end


local function html_escape(s)
  return (tostring(s):gsub("[&<>\"']", { ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;",
    ['"'] = "&quot;", ["'"] = "&#39;" }))
end


local PAGE = [[<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>%s - Swagger UI</title>
<link rel="stylesheet" href="/docs/assets/swagger-ui.css">
<link rel="icon" type="image/png" href="/docs/assets/favicon-32x32.png">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/assets/swagger-ui-bundle.js"></script>
<script>
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  layout: "BaseLayout",
  deepLinking: true,
  showExtensions: true,
  showCommonExtensions: true,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
  oauth2RedirectUrl: window.location.origin + "/docs/oauth2-redirect"
});
</script>
</body>
</html>
]]


local function has_route(app, method, path)
  local methods = app.exact[path]
  return methods and methods[method] ~= nil
end


--- mount(app): add GET /openapi.json, /docs, /docs/oauth2-redirect and
-- /docs/assets/{file} to app, unless app.docs is false, they are there
-- already, or the app defines these paths itself. Returns the app.
function M.mount(app)
  if app.docs == false or app._docs_mounted then return app end
  app._docs_mounted = true
  local hidden = { include_in_schema = false }
  local cached, cached_n = nil, -1
  if not has_route(app, "GET", "/openapi.json") then
    app:get("/openapi.json", function()
      if cached_n ~= #app.routes then   -- routes added since: again
        cached = json.encode(openapi.document(app))
        cached_n = #app.routes
      end
      return 200, cached, { ["Content-Type"] = "application/json" }
    end, hidden)
  end
  if has_route(app, "GET", "/docs") then return app end
  local dir = M.swagger_ui_dir()
  if not dir then
    log.warn("docs: swagger-ui-dist is not installed (run make; or set " ..
      "LUASERVE_SWAGGER_UI): /docs answers 503")
  end
  local function missing()
    return 503, { detail = "Swagger UI is not installed: build luaserve with make " ..
      "(it fetches swagger-ui-dist), or set LUASERVE_SWAGGER_UI" }
  end
  local page = PAGE:format(html_escape(app.title))
  app:get("/docs", function()
    if not dir then return missing() end
    return 200, page, { ["Content-Type"] = "text/html; charset=utf-8" }
  end, hidden)
  local cache = { cache_control = "public, max-age=86400" }
  app:get("/docs/oauth2-redirect", function(req)
    if not dir then return missing() end
    return static.respond(req, dir, "oauth2-redirect.html", cache)
  end, hidden)
  app:get("/docs/assets/{file}", function(req)
    if not dir then return missing() end
    local file = req.params.file
    if not ASSETS[file] then return 404, { detail = "Not Found" } end
    return static.respond(req, dir, file, cache)
  end, hidden)
  return app
end

return M
