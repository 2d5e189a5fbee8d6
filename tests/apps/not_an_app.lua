-- tests/apps/not_an_app.lua: loads fine but returns a number, not an app.
return 42
