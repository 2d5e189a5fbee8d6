-- tests/apps/syntax_folder/app.lua: a folder app whose app.lua does not
-- compile (the error is reported at line 5).
local app = require("luaserve").app()
app:get("/", function() return 1 +
end)
return app
