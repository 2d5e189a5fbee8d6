-- luaserve.docs: the app's OpenAPI document at GET /openapi.json, Swagger
-- UI at GET /docs and ReDoc at GET /redoc, added when the app is served
-- (after the app's own routes, which win). Their files come from the npm
-- registry (swagger-ui-dist, redoc), which the Makefile fetches into
-- build/swagger-ui and build/redoc and `make install` puts beside the
-- framework's Lua folder; luaserve serves them itself (no CDN: the pages
-- work offline). luaserve.app{ docs = false } or --no-docs turns all three
-- off.

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


-- The folder of an npm package's files: $ENV, else `name` beside the
-- installed Lua folder ($(PREFIX)/share/luaserve/name), else build/name of
-- the build tree the Lua folder is in; nil if probe is in none of them.
local function asset_dir(env, name, probe)
  local dir = lua_dir()
  local candidates = { os.getenv(env), dir .. "/../" .. name, dir .. "/../build/" .. name }
  for _, c in pairs(candidates) do
    if c and c ~= "" and is_file(c .. "/" .. probe) then return c end
  end
  return nil
end


--- swagger_ui_dir(): the folder of swagger-ui-dist's files, or nil:
-- $LUASERVE_SWAGGER_UI, else swagger-ui beside the installed Lua folder,
-- else build/swagger-ui.
function M.swagger_ui_dir()
  return asset_dir("LUASERVE_SWAGGER_UI", "swagger-ui", "swagger-ui-bundle.js")
end


--- redoc_dir(): the folder of redoc's standalone bundle, or nil:
-- $LUASERVE_REDOC, else redoc beside the installed Lua folder, else
-- build/redoc.
function M.redoc_dir()
  return asset_dir("LUASERVE_REDOC", "redoc", "redoc.standalone.js")
end


local html_escape = static.html_escape


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


local REDOC_PAGE = [[<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>%s - ReDoc</title>
<link rel="icon" href="data:,">
<style>body { margin: 0; padding: 0; }</style>
</head>
<body>
<redoc spec-url="/openapi.json"></redoc>
<script src="/redoc/assets/redoc.standalone.js"></script>
</body>
</html>
]]


local function has_route(app, method, path)
  local methods = app.exact[path]
  return methods and methods[method] ~= nil
end


local HTML = { ["Content-Type"] = "text/html; charset=utf-8" }
local ASSET_CACHE = { cache_control = "public, max-age=86400" }


-- A page whose files are not installed answers 503, saying how to get them.
local function not_installed(what, package, env)
  log.warn(("docs: %s is not installed (run make; or set %s): it answers 503")
    :format(package, env))
  return function()
    return 503, { detail = ("%s is not installed: build luaserve with make " ..
      "(it fetches %s), or set %s"):format(what, package, env) }
  end
end


-- GET /docs (Swagger UI), /docs/oauth2-redirect and /docs/assets/{file}.
local function mount_swagger_ui(app, hidden)
  local dir = M.swagger_ui_dir()
  local missing = not dir and
    not_installed("Swagger UI", "swagger-ui-dist", "LUASERVE_SWAGGER_UI")
  local page = PAGE:format(html_escape(app.title))
  app:get("/docs", function()
    if missing then return missing() end
    return 200, page, HTML
  end, hidden)
  app:get("/docs/oauth2-redirect", function(req)
    if missing then return missing() end
    return static.respond(req, dir, "oauth2-redirect.html", ASSET_CACHE)
  end, hidden)
  app:get("/docs/assets/{file}", function(req)
    if missing then return missing() end
    local file = req.params.file
    if not ASSETS[file] then return 404, { detail = "Not Found" } end
    return static.respond(req, dir, file, ASSET_CACHE)
  end, hidden)
end


-- The page's images come from luaserve or data: URLs only: ReDoc's bundle
-- shows a logo from cdn.redoc.ly, which the page then does without (no
-- request leaves the browser for it; offline it would fail anyway).
local REDOC_HEADERS = {
  ["Content-Type"] = "text/html; charset=utf-8",
  ["Content-Security-Policy"] = "img-src 'self' data:",
}


-- GET /redoc (ReDoc: the same document as one reading page) and its
-- bundle at /redoc/assets/redoc.standalone.js.
local function mount_redoc(app, hidden)
  local dir = M.redoc_dir()
  local missing = not dir and not_installed("ReDoc", "redoc", "LUASERVE_REDOC")
  local page = REDOC_PAGE:format(html_escape(app.title))
  app:get("/redoc", function()
    if missing then return missing() end
    return 200, page, REDOC_HEADERS
  end, hidden)
  app:get("/redoc/assets/{file}", function(req)
    if missing then return missing() end
    if req.params.file ~= "redoc.standalone.js" then return 404, { detail = "Not Found" } end
    return static.respond(req, dir, "redoc.standalone.js", ASSET_CACHE)
  end, hidden)
end


--- mount(app): add GET /openapi.json, /docs (Swagger UI, with
-- /docs/oauth2-redirect and /docs/assets/{file}) and /redoc (with
-- /redoc/assets/{file}) to app, unless app.docs is false, they are there
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
  if not has_route(app, "GET", "/docs") then mount_swagger_ui(app, hidden) end
  if not has_route(app, "GET", "/redoc") then mount_redoc(app, hidden) end
  return app
end

return M
