-- luaserve.middleware: the middleware users reach for, each a function
-- that takes its options and returns a middleware for app:use.
--
--   local mw = require "luaserve.middleware"
--   app:use(mw.request_id())
--   app:use(mw.cors{ origins = { "https://example.com" }, credentials = true })
--   app:use(mw.gzip{ minimum_size = 500 })
--   app:use(mw.trusted_hosts{ "example.com", "*.example.com" })
--   app:use(mw.hooks{ before = fn(req), after = fn(req, res) })   -- one's own, not nesting

return {
  cors = require "luaserve.middleware.cors",
  gzip = require "luaserve.middleware.gzip",
  request_id = require "luaserve.middleware.request_id",
  trusted_hosts = require "luaserve.middleware.trusted_hosts",
  hooks = require "luaserve.middleware.hooks",
}
