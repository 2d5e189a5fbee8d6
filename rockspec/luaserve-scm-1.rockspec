-- luarocks make rockspec/luaserve-scm-1.rockspec
rockspec_format = "3.0"
package = "luaserve"
version = "scm-1"
source = {
  url = "git+file://.",
}
description = {
  summary = "An async application server for Lua: libuv, llhttp and LuaJIT coroutines",
  detailed = [[
luaserve runs each HTTP request's handler as a LuaJIT coroutine on a libuv event loop:
await(sleep(0.1)) or await(http.get(url)) yields to the loop, so one process serves thousands
of waiting requests.]],
  license = "MIT",
}
dependencies = {
  "lua == 5.1",
}
external_dependencies = {
  LIBUV = { header = "uv.h" },
  LUAJIT = { header = "luajit-2.1/luajit.h" },
  OPENSSL = { header = "openssl/ssl.h" },
  ZLIB = { header = "zlib.h" },
  WSLAY = { header = "wslay/wslay.h" },
  LIBPQ = { header = "postgresql/libpq-fe.h" },
  HIREDIS = { header = "hiredis/hiredis.h" },
}
build = {
  type = "make",
  build_variables = {
    PREFIX = "$(PREFIX)",
    LUADIR = "$(LUADIR)",
  },
  install_target = "install-bin",
  install_variables = {
    PREFIX = "$(PREFIX)",
    BINDIR = "$(BINDIR)",
    LUADIR = "$(LUADIR)",
  },
  -- The modules, one per line; `make install` copies them into LUADIR.
  install = {
    lua = {
      ["luaserve"] = "lua/luaserve/init.lua",
      ["luaserve.app"] = "lua/luaserve/app.lua",
      ["luaserve.body"] = "lua/luaserve/body.lua",
      ["luaserve.cli"] = "lua/luaserve/cli.lua",
      ["luaserve.cookies"] = "lua/luaserve/cookies.lua",
      ["luaserve.crypto"] = "lua/luaserve/crypto.lua",
      ["luaserve.dbpool"] = "lua/luaserve/dbpool.lua",
      ["luaserve.errors"] = "lua/luaserve/errors.lua",
      ["luaserve.ffi"] = "lua/luaserve/ffi.lua",
      ["luaserve.form"] = "lua/luaserve/form.lua",
      ["luaserve.fs"] = "lua/luaserve/fs.lua",
      ["luaserve.future"] = "lua/luaserve/future.lua",
      ["luaserve.http"] = "lua/luaserve/http.lua",
      ["luaserve.json"] = "lua/luaserve/json.lua",
      ["luaserve.log"] = "lua/luaserve/log.lua",
      ["luaserve.middleware"] = "lua/luaserve/middleware/init.lua",
      ["luaserve.middleware.cors"] = "lua/luaserve/middleware/cors.lua",
      ["luaserve.middleware.gzip"] = "lua/luaserve/middleware/gzip.lua",
      ["luaserve.middleware.hooks"] = "lua/luaserve/middleware/hooks.lua",
      ["luaserve.middleware.request_id"] = "lua/luaserve/middleware/request_id.lua",
      ["luaserve.middleware.trusted_hosts"] = "lua/luaserve/middleware/trusted_hosts.lua",
      ["luaserve.multipart"] = "lua/luaserve/multipart.lua",
      ["luaserve.pg"] = "lua/luaserve/pg.lua",
      ["luaserve.redis"] = "lua/luaserve/redis.lua",
      ["luaserve.master"] = "lua/luaserve/master.lua",
      ["luaserve.metrics"] = "lua/luaserve/metrics.lua",
      ["luaserve.proxy"] = "lua/luaserve/proxy.lua",
      ["luaserve.reload"] = "lua/luaserve/reload.lua",
      ["luaserve.request"] = "lua/luaserve/request.lua",
      ["luaserve.request_slots"] = "lua/luaserve/request_slots.lua",
      ["luaserve.schema"] = "lua/luaserve/schema.lua",
      ["luaserve.inputs"] = "lua/luaserve/inputs.lua",
      ["luaserve.openapi"] = "lua/luaserve/openapi.lua",
      ["luaserve.docs"] = "lua/luaserve/docs.lua",
      ["luaserve.static"] = "lua/luaserve/static.lua",
      ["luaserve.filecache"] = "lua/luaserve/filecache.lua",
      ["luaserve.response"] = "lua/luaserve/response.lua",
      ["luaserve.server"] = "lua/luaserve/server.lua",
      ["luaserve.shared"] = "lua/luaserve/shared.lua",
      ["luaserve.sse"] = "lua/luaserve/sse.lua",
      ["luaserve.sync"] = "lua/luaserve/sync.lua",
      ["luaserve.tcp"] = "lua/luaserve/tcp.lua",
      ["luaserve.testing"] = "lua/luaserve/testing.lua",
      ["luaserve.websocket"] = "lua/luaserve/websocket.lua",
    },
  },
}
