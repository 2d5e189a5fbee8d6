-- spec/rockspec_spec.lua: the rockspec installs every module of lua/, each
-- under the name require gives it (a module left out installs fine and
-- fails at the first require that needs it).

describe("rockspec", function()
  it("lists every Lua module under its require name", function()
    local env = {}
    local chunk = assert(loadfile("rockspec/luaserve-scm-1.rockspec"))
    setfenv(chunk, env)
    chunk()
    local listed = {}
    for name, file in pairs(env.build.install.lua) do listed[file] = name end
    local found = {}
    local p = assert(io.popen("find lua -name '*.lua' | sort"))
    for file in p:lines() do
      local name = file:gsub("^lua/", ""):gsub("%.lua$", ""):gsub("/init$", ""):gsub("/", ".")
      found[file] = name
    end
    p:close()
    assert.is_not_nil(next(found))
    assert.same(found, listed)
  end)
end)
