-- spec/pg_spec.lua: luaserve.pg against the real PostgreSQL that tests/run
-- starts (LUASERVE_TEST_PG; pending without it).

local luaserve = require "luaserve"
local pg = require "luaserve.pg"
local testing = require "luaserve.testing"
local helper = dofile((debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "spec")
  .. "/upstream_helper.lua")

local await, spawn, sleep, wait_for = luaserve.await, luaserve.spawn,
  luaserve.sleep, luaserve.wait_for
local eventually = helper.eventually
local null = luaserve.null
local URL = os.getenv("LUASERVE_TEST_PG")

if not URL then
  describe("luaserve.pg", function()
    pending("needs LUASERVE_TEST_PG (make test starts a PostgreSQL)")
  end)
  return
end

local function q(db, ...)
  local rows, err = await(db:query(...))
  assert(rows, tostring(err))
  return rows
end

-- How many backends run a query whose text contains s.
local function running(db, s)
  local rows = q(db, "select count(*)::int as n from pg_stat_activity " ..
    "where state = 'active' and query like '%' || $1 || '%' and pid <> pg_backend_pid()", s)
  return rows[1].n
end


describe("luaserve.pg", function()
  local db
  setup(function()
    db = pg.pool{ url = URL, max = 4 }
  end)
  teardown(function() db:close() end)

  describe("types", function()
    it("round-trips every type through parameters and results", testing.async(function()
      local r = q(db, [[select $1::int2 as i2, $2::int4 as i4, $3::int8 as i8,
        $4::float4 as f4, $5::float8 as f8, $6::numeric as num, $7::bool as b,
        $8::text as t, $9::varchar as vc, $10::json as j, $11::jsonb as jb,
        $12::bytea as by, $13::timestamptz as ts, $14::date as d,
        $15::timestamp as tsl, $16::int4 as nul, $17::int[] as ai,
        $18::text[] as at, $19::bool[] as ab, $20::float8[] as af]],
        -32768, 2147483647, -9007199254740992, 1.5, -0.1, "123456789012345678901234.5678",
        true, "héllo ' \" \\ ; --", "v", { a = 1, b = { 1, 2 } }, { x = null },
        pg.bytea("\0\1\255zero"), "2024-02-29 12:34:56.789+00", "2024-02-29",
        "1999-12-31 23:59:59", nil, pg.array{ 1, 2, nil, 4 },
        pg.array{ "a b", 'q"uote', "back\\slash", "", "NULL" },
        pg.array{ true, false }, pg.array{ 1.25, -2 })
      local row = r[1]
      assert.equal(-32768, row.i2)
      assert.equal(2147483647, row.i4)
      assert.equal(-9007199254740992, row.i8)
      assert.equal(1.5, row.f4)
      assert.equal(-0.1, row.f8)
      assert.equal("123456789012345678901234.5678", row.num)
      assert.is_true(row.b)
      assert.equal("héllo ' \" \\ ; --", row.t)
      assert.equal("v", row.vc)
      assert.same({ a = 1, b = { 1, 2 } }, row.j)
      assert.equal(null, row.jb.x)
      assert.equal("\0\1\255zero", row.by)
      assert.equal("2024-02-29 12:34:56.789+00", row.ts)
      assert.equal("2024-02-29", row.d)
      assert.equal("1999-12-31 23:59:59", row.tsl)
      assert.equal(null, row.nul)
      assert.same({ 1, 2, null, 4 }, row.ai)
      assert.same({ "a b", 'q"uote', "back\\slash", "", "NULL" }, row.at)
      assert.same({ true, false }, row.ab)
      assert.same({ 1.25, -2 }, row.af)
      assert.same({ "i2", "i4", "i8", "f4", "f8", "num", "b", "t", "vc", "j", "jb", "by",
        "ts", "d", "tsl", "nul", "ai", "at", "ab", "af" }, r.columns)
      assert.same({ "int2", "int4", "int8", "float4", "float8", "numeric", "bool", "text",
        "varchar", "json", "jsonb", "bytea", "timestamptz", "date", "timestamp", "int4",
        "_int4", "_text", "_bool", "_float8" }, r.types)
    end))

    it("gives int8 beyond 2^53 as a string, and special floats as numbers", testing.async(function()
      local row = q(db, [[select 9007199254740993::int8 as big, '-9223372036854775808'::int8 as min,
        'NaN'::float8 as nan, 'Infinity'::float8 as inf, '-Infinity'::float4 as ninf,
        9007199254740992::int8 as exact]])[1]
      assert.equal("9007199254740993", row.big)
      assert.equal("-9223372036854775808", row.min)
      assert.is_true(row.nan ~= row.nan)
      assert.equal(math.huge, row.inf)
      assert.equal(-math.huge, row.ninf)
      assert.equal(9007199254740992, row.exact)
    end))

    it("decodes nested arrays, arrays with NULLs, json arrays and empty arrays", testing.async(function()
      local row = q(db, [[select '{{1,2},{3,4}}'::int[] as m, array[null, 'x']::text[] as n,
        array['{"a":1}'::jsonb, 'null'::jsonb] as ja, '{}'::int[] as e,
        array['\x00ff'::bytea] as ba, array['2024-01-01'::date] as ad]])[1]
      assert.same({ { 1, 2 }, { 3, 4 } }, row.m)
      assert.same({ null, "x" }, row.n)
      assert.same({ { a = 1 }, null }, row.ja)
      assert.same({}, row.e)
      assert.same({ "\0\255" }, row.ba)
      assert.same({ "2024-01-01" }, row.ad)
    end))

    it("gives affected counts and command tags", testing.async(function()
      q(db, "create temporary table if not exists tt (id int)")
      -- temporary tables live per connection: use one
      local out = await(db:transaction(function(tx)
        await(tx:query("create temporary table t1 (id int)"))
        local ins = await(tx:query("insert into t1 select generate_series(1, 5)"))
        local upd = await(tx:query("update t1 set id = id + 1 where id > $1", 2))
        local sel = await(tx:query("select * from t1 where id > 100"))
        return { ins.affected, ins.command, upd.affected, #sel, sel.columns[1] }
      end))
      assert.same({ 5, "INSERT 0 5", 3, 0, "id" }, out)
    end))
  end)

  describe("parameters", function()
    it("are never interpolated: injection-shaped strings are plain values", testing.async(function()
      q(db, "create table if not exists inj (id serial primary key, name text)")
      local evil = { "'; drop table inj; --", "x' or '1'='1", "$1", "\\'; select 1; --",
        "robert'); DROP TABLE inj;--" }
      for _, s in ipairs(evil) do
        q(db, "insert into inj (name) values ($1)", s)
        local r = q(db, "select count(*)::int as n from inj where name = $1", s)
        assert.equal(1, r[1].n)
      end
      assert.equal(0, q(db, "select count(*)::int as n from inj where name = $1", "x")[1].n)
      q(db, "drop table inj")
    end))

    it("take the table form with a timeout and NULL holes", testing.async(function()
      local r = q(db, { "select $1::int as a, $2::text as b, $3::int as c", 1, nil, 3, n = 4 })
      assert.same({ a = 1, b = null, c = 3 }, r[1])
    end))

    it("raise on values that cannot be sent", function()
      assert.has_error(function() db:query("select $1", function() end) end)
      assert.has_error(function() db:query(42) end)
    end)
  end)

  describe("errors", function()
    it("are nil, err with the SQLSTATE and a readable tostring", testing.async(function()
      local r, err = await(db:query("select * from no_such_table"))
      assert.is_nil(r)
      assert.is_true(pg.is_error(err))
      assert.equal("42P01", err.code)
      assert.matches('relation "no_such_table" does not exist', err.message, 1, true)
      assert.matches("^ERROR: .*%(SQLSTATE 42P01%)$", tostring(err))
      local _, e2 = await(db:query("selec 1"))
      assert.equal("42601", e2.code)
      local _, e3 = await(db:query("select 1/0"))
      assert.equal("22012", e3.code)
      q(db, "create table if not exists uniq (id int primary key)")
      q(db, "insert into uniq values (1) on conflict do nothing")
      local _, e4 = await(db:query("insert into uniq values ($1)", 1))
      assert.equal("23505", e4.code)
      assert.equal("uniq_pkey", e4.constraint)
      assert.matches("Key %(id%)=%(1%) already exists", tostring(e4))
      -- the pool still works, on the same connections
      assert.equal(1, q(db, "select 1 as x")[1].x)
    end))

    it("are strings for connection failures", testing.async(function()
      local bad = pg.pool{ url = URL:gsub(":[^:@/]+@", ":wrong@"), max = 1 }
      local r, err = await(bad:query("select 1"))
      assert.is_nil(r)
      assert.equal("string", type(err))
      assert.matches("password authentication failed", err, 1, true)
      local refused = pg.pool{ url = "postgresql://u:p@127.0.0.1:1/x", max = 1 }
      local _, err2 = await(refused:query("select 1"))
      assert.matches("refused", err2, 1, true)
      local nodns = pg.pool{ url = "postgresql://u:p@no-such-host.invalid/x", max = 1 }
      local _, err3 = await(nodns:query("select 1"))
      assert.matches("^dns: ", err3)
    end))

    it("resolves names without libpq's own look-up", testing.async(function()
      local byname = pg.pool{ url = URL:gsub("@127%.0%.0%.1:", "@localhost:"), max = 1 }
      assert.equal(1, q(byname, "select 1 as x")[1].x)
      byname:close()
    end))
  end)

  describe("transactions", function()
    setup(function()
      testing.run(function()
        q(db, "create table if not exists acct (id int primary key, v int)")
        q(db, "truncate acct")
      end)
    end)

    it("commit", testing.async(function()
      local a, b = await(db:transaction(function(tx)
        await(tx:query("insert into acct values (1, 10)"))
        await(tx:query("insert into acct values (2, 20)"))
        return "done", 2
      end))
      assert.equal("done", a)
      assert.equal(2, b)
      assert.equal(30, q(db, "select sum(v)::int as s from acct")[1].s)
    end))

    it("roll back when the function raises", testing.async(function()
      local r, err = await(db:transaction(function(tx)
        await(tx:query("insert into acct values (3, 30)"))
        error("boom")
      end))
      assert.is_nil(r)
      assert.matches("boom", tostring(err))
      assert.equal(0, q(db, "select count(*)::int as n from acct where id = 3")[1].n)
    end))

    it("roll back when a command failed", testing.async(function()
      local r, err = await(db:transaction(function(tx)
        await(tx:query("insert into acct values (4, 40)"))
        local _, e = await(tx:query("insert into acct values (1, 1)"))   -- duplicate
        assert(e.code == "23505")
        return "went on"
      end))
      assert.is_nil(r)
      assert.matches("rolled back", err)
      assert.equal(0, q(db, "select count(*)::int as n from acct where id = 4")[1].n)
    end))

    it("roll back when the task is cancelled", testing.async(function()
      local inside = false
      local task = spawn(function()
        return await(db:transaction(function(tx)
          await(tx:query("insert into acct values (5, 50)"))
          inside = true
          await(sleep(10))
        end))
      end)
      assert.truthy(eventually(function() return inside end, 5))
      task:cancel()
      assert.is_nil((await(task)))
      -- the connection was closed: the server rolls back
      assert.truthy(eventually(function()
        return q(db, "select count(*)::int as n from acct where id = 5")[1].n == 0 and
          running(db, "insert into acct values (5") == 0
      end, 5))
      assert.equal(0, q(db, "select count(*)::int as n from acct where id = 5")[1].n)
    end))
  end)

  describe("the pool", function()
    it("queues waiters when exhausted and serves them in turn", testing.async(function()
      local small = pg.pool{ url = URL, max = 2, acquire_timeout = 10 }
      local t0 = luaserve.now and luaserve.now() or require("luaserve.core").hrtime()
      local fs = {}
      for i = 1, 6 do fs[i] = small:query("select $1::int as i, pg_sleep(0.2)", i) end
      assert.equal(2, small:stats().in_use)
      assert.equal(4, small:stats().waiting)
      for i = 1, 6 do
        local r, err = await(fs[i])
        assert(r, tostring(err))
        assert.equal(i, r[1].i)
      end
      local dt = require("luaserve.core").hrtime() - t0
      assert.truthy(dt >= 0.5, dt)   -- three rounds of two
      assert.equal(0, small:stats().in_use)
      assert.equal(2, small:stats().idle)
      small:close()
    end))

    it("gives pool timeout when no connection frees in time", testing.async(function()
      local small = pg.pool{ url = URL, max = 1, acquire_timeout = 0.2 }
      local busy = small:query("select pg_sleep(1)")
      local r, err = await(small:query("select 1"))
      assert.is_nil(r)
      assert.equal("pool timeout", err)
      assert.truthy((await(busy)))
      assert.truthy((await(small:query("select 1"))))
      small:close()
    end))

    it("recovers when the server terminates its connections", testing.async(function()
      local p = pg.pool{ url = URL, max = 2 }
      local pid = q(p, "select pg_backend_pid() as pid")[1].pid
      local ok = q(db, "select pg_terminate_backend($1) as ok", pid)
      assert.is_true(ok[1].ok)
      local r = q(p, "select pg_backend_pid() as pid")   -- a new connection
      assert.are_not.equal(pid, r[1].pid)
      -- a connection killed while idle in the pool, checked out at once
      local pid2 = r[1].pid
      await(db:query("select pg_terminate_backend($1)", pid2))
      local r2 = q(p, "select 2 as two")
      assert.equal(2, r2[1].two)
      assert.equal(1, p:stats().idle)
      p:close()
    end))
  end)

  describe("cancellation", function()
    it("cancels a running query on the server when its task is cancelled", testing.async(function()
      local task = spawn(function() return await(db:query("select pg_sleep(10) /* cancel-me-1 */")) end)
      assert.truthy(eventually(function() return running(db, "cancel-me-1") == 1 end, 5))
      task:cancel()
      local t0 = require("luaserve.core").hrtime()
      assert.truthy(eventually(function() return running(db, "cancel-me-1") == 0 end, 5))
      assert.truthy(require("luaserve.core").hrtime() - t0 < 1)
    end))

    it("times a query out and cancels it on the server", testing.async(function()
      local r, err = await(db:query{ "select pg_sleep(10) /* cancel-me-2 */", timeout = 0.2 })
      assert.is_nil(r)
      assert.equal("timeout", err)
      assert.truthy(eventually(function() return running(db, "cancel-me-2") == 0 end, 1))
      local r2, err2 = await(wait_for(db:query("select pg_sleep(10) /* cancel-me-3 */"), 0.2))
      assert.is_nil(r2)
      assert.equal("timeout", err2)
      assert.truthy(eventually(function() return running(db, "cancel-me-3") == 0 end, 1))
    end))
  end)

  describe("pipelines", function()
    it("send several commands in one round trip", testing.async(function()
      local out, err = await(db:pipeline(function(p)
        for i = 1, 20 do p:query("select $1::int * 2 as v", i) end
        p:query("select 'x' as s")
      end))
      assert(out, tostring(err))
      assert.equal(21, #out)
      for i = 1, 20 do assert.equal(i * 2, out[i][1].v) end
      assert.equal("x", out[21][1].s)
    end))

    it("of one command: prepared on first use and run", testing.async(function()
      for round = 1, 2 do   -- the first prepares, the second runs the prepared one
        local out, err = await(db:pipeline(function(p)
          p:query("select 41 + $1::int as v", round)
        end))
        assert(out, tostring(err))
        assert.equal(1, #out)
        assert.equal(41 + round, out[1][1].v)
      end
    end))

    it("give the first error", testing.async(function()
      local out, err = await(db:pipeline(function(p)
        p:query("select 1")
        p:query("select 1/0")
        p:query("select 2")
      end))
      assert.is_nil(out)
      assert.equal("22012", err.code)
      assert.equal(1, q(db, "select 1 as x")[1].x)
    end))

    it("keep the statements a failed pipeline prepared before its error", testing.async(function()
      local one = pg.pool{ url = URL, max = 1 }   -- one connection: one session's statements
      local tag = "p" .. math.random(1e9)
      local before = "select 7 as v, '" .. tag .. "b'"
      local after = "select 8 as v, '" .. tag .. "a'"
      local out, err = await(one:pipeline(function(p)
        p:query(before)
        p:query("select 1/0")
        p:query(after)
      end))
      assert.is_nil(out)
      assert.equal("22012", err.code)
      -- both run again: the one before the error with the statement it has,
      -- the one after it prepared now (it never was)
      assert.equal(7, q(one, before)[1].v)
      assert.equal(8, q(one, after)[1].v)
      local function prepared(sql)
        return q(one, "select count(*)::int as n from pg_prepared_statements " ..
          "where statement = $1", sql)[1].n
      end
      assert.equal(1, prepared(before))   -- not prepared a second time
      assert.equal(1, prepared(after))
      one:close()
    end))
  end)

  describe("LISTEN/NOTIFY", function()
    it("iterates the notifications of a channel", testing.async(function()
      local got = {}
      local listener = db:listen("jobs")
      local task = spawn(function()
        for n in listener do
          got[#got + 1] = n.payload
          assert.equal("jobs", n.channel)
          assert.equal("number", type(n.pid))
          if n.payload == "three" then break end
        end
        listener:close()
        return #got
      end)
      -- notifications sent before the LISTEN are not delivered: ping
      -- until one arrives
      assert.truthy(eventually(function()
        q(db, "select pg_notify('jobs', 'ping')")
        return #got > 0
      end, 5))
      q(db, "select pg_notify('jobs', $1)", "two")
      q(db, "notify jobs, 'three'")
      assert.truthy((await(task)) >= 3)
      assert.equal("two", got[#got - 1])
      assert.equal("three", got[#got])
    end))

    it("stops listening when the iterating task ends", testing.async(function()
      local listener = db:listen("gone")
      local task = spawn(function()
        for _ in listener do end
      end)
      assert.truthy(eventually(function()
        local n = q(db, "select count(*)::int as n from pg_stat_activity where query = 'LISTEN \"gone\"'")[1].n
        return n == 1
      end, 5))
      task:cancel()
      assert.truthy(eventually(function()
        return q(db, "select count(*)::int as n from pg_stat_activity where query = 'LISTEN \"gone\"'")[1].n == 0
      end, 5))
      assert.is_true(listener.closed)
    end))
  end)

  describe("TLS", function()
    it("is libpq's sslmode, verified against a CA file", testing.async(function()
      local sep = URL:find("?", 1, true) and "&" or "?"
      local tls = pg.pool{ url = URL .. sep .. "sslmode=verify-full&sslrootcert=" ..
        os.getenv("LUASERVE_TEST_PG_CERT"), max = 1 }
      local r = q(tls, "select ssl from pg_stat_ssl where pid = pg_backend_pid()")
      assert.is_true(r[1].ssl)
      local plain = pg.pool{ url = URL .. sep .. "sslmode=disable", max = 1 }
      assert.is_false(q(plain, "select ssl from pg_stat_ssl where pid = pg_backend_pid()")[1].ssl)
      tls:close()
      plain:close()
    end))
  end)

  describe("inside sync functions", function()
    local client
    setup(function()
      client = testing.client("spec/fixtures/db_sync_app.lua", { threads = 2 })
    end)
    teardown(function() client:close() end)

    it("queries from a pool thread, on its own loop and pool", testing.async(function()
      local r, err = await(client.app.fns.both("pgkey"))
      assert(r, tostring(err))
      assert.equal("pgkey!", r.pg)
      assert.equal("pgkey!", r.redis)
      assert.is_true(r.pool)
      local res = client:get("/both/viahttp")
      assert.equal(200, res.status)
      assert.equal("viahttp!", res:json().pg)
    end))
  end)
end)
