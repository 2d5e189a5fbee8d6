"""The database drivers through the real binary, against the PostgreSQL and
Redis that tests/run starts (LUASERVE_TEST_PG, LUASERVE_TEST_REDIS; skipped
without them): a client that leaves mid-query gets the query cancelled on
the server, a Redis restart mid-test, apps/demo's notes, rate limit and 503s,
apps/bench's TechEmpower routes, sync routes."""
import json
import os
import re
import signal
import subprocess
import time
import unittest

from harness import Client, Server, free_port, get

PG = os.environ.get("LUASERVE_TEST_PG")
REDIS = os.environ.get("LUASERVE_TEST_REDIS")
NEEDS = unittest.skipUnless(PG and REDIS, "needs LUASERVE_TEST_PG and LUASERVE_TEST_REDIS (make test)")


def psql(sql):
    """Run sql with psql against the test database; the output, trimmed."""
    p = subprocess.run(["psql", PG, "-v", "ON_ERROR_STOP=1", "-Atqc", sql],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    if p.returncode != 0:
        raise AssertionError("psql failed: %s" % p.stderr.decode())
    return p.stdout.decode().strip()


def active(marker):
    """Active backends whose query contains marker (psql's own excluded)."""
    return int(psql("select count(*) from pg_stat_activity where state = 'active' "
                    "and query like '%%%s%%' and pid <> pg_backend_pid()" % marker))


def wait_until(fn, timeout):
    deadline = time.time() + timeout
    while True:
        v = fn()
        if v or time.time() > deadline:
            return v
        time.sleep(0.05)


@NEEDS
class CancelTest(unittest.TestCase):
    """A client that leaves during select pg_sleep(10): the query is
    cancelled on the server within a second."""

    def test_client_leaves_mid_query(self):
        with Server("apps/demo", env={"LUASERVE_PG": PG}) as srv:
            self.assertEqual(get(srv.port, "/notes")[0], 200)   # connected, table made
            c = Client(srv.port)
            c.request("GET", "/db/slow?s=10")
            self.assertTrue(wait_until(lambda: active("demo slow") == 1, 5))
            c.close()
            t0 = time.time()
            self.assertTrue(wait_until(lambda: active("demo slow") == 0, 5))
            self.assertLess(time.time() - t0, 1.0)
            # the server goes on, with a new connection
            self.assertEqual(get(srv.port, "/notes")[0], 200)

    def test_timeout_answers_504_and_cancels(self):
        with Server("apps/demo", env={"LUASERVE_PG": PG}) as srv:
            status, _, body = get(srv.port, "/db/slow?s=10&timeout=0.3", timeout=5)
            self.assertEqual(status, 504, body)
            self.assertTrue(wait_until(lambda: active("demo slow") == 0, 1))

    def test_sigterm_with_a_query_running(self):
        srv = Server("tests/apps/db_app.lua",
                     env={"LUASERVE_PG": PG, "LUASERVE_REDIS": REDIS,
                          "LUASERVE_TIMEOUT_GRACEFUL_SHUTDOWN": "0.5"})
        self.addCleanup(srv.stop)   # also when an assertion fails first
        c = Client(srv.port)
        c.request("GET", "/sleep?s=10")
        self.assertTrue(wait_until(lambda: active("db_app sleep") == 1, 5))
        status, _ = srv.stop()
        c.close()
        self.assertEqual(status, 0)
        self.assertTrue(wait_until(lambda: active("db_app sleep") == 0, 2))


@NEEDS
class DemoTest(unittest.TestCase):

    def test_notes_and_rate_limit(self):
        env = {"LUASERVE_PG": PG, "LUASERVE_REDIS": REDIS, "LUASERVE_NOTES_PER_MINUTE": "2"}
        psql("create table if not exists notes (id serial primary key, text text not null, "
             "created timestamptz not null default now())")
        # a fresh minute for this client's counter
        subprocess.run(["redis-cli", "-u", REDIS, "--no-auth-warning", "eval",
                        "for _,k in ipairs(redis.call('keys','notes:rate:*')) do redis.call('del',k) end", "0"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10)
        with Server("apps/demo", env=env) as srv:
            c = Client(srv.port)
            c.request("POST", "/notes", [("Content-Type", "application/json")],
                      json.dumps({"text": "it's \"quoted\"; drop table notes; --"}).encode())
            res = c.response()
            self.assertEqual(res.status, 201, res.body)
            note = res.json()
            self.assertEqual(note["text"], "it's \"quoted\"; drop table notes; --")
            self.assertRegex(note["created"], r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
            self.assertIn(res.headers["x-ratelimit-remaining"], ("0", "1"))
            c.request("GET", "/notes/%d" % note["id"])
            self.assertEqual(c.response().json()["text"], note["text"])
            c.request("GET", "/notes")
            notes = c.response().json()["notes"]
            self.assertEqual(notes[0]["id"], note["id"])
            for _ in range(3):
                c.request("POST", "/notes", [("Content-Type", "application/json")], b'{"text":"x"}')
                res = c.response()
                if res.status == 429:
                    break
            self.assertEqual(res.status, 429)
            self.assertIn("retry-after", res.headers)
            c.request("DELETE", "/notes/%d" % note["id"])
            self.assertEqual(c.response().status, 204)
            c.request("GET", "/notes/%d" % note["id"])
            self.assertEqual(c.response().status, 404)
            c.close()

    def test_503_without_a_database(self):
        env = {"LUASERVE_PG": "", "LUASERVE_REDIS": ""}
        with Server("apps/demo", env=env) as srv:
            status, _, body = get(srv.port, "/notes")
            self.assertEqual(status, 503)
            self.assertIn("LUASERVE_PG", json.loads(body)["detail"])
        dead = "postgresql://u:p@127.0.0.1:%d/x" % free_port()
        with Server("apps/demo", env={"LUASERVE_PG": dead}) as srv:
            status, _, body = get(srv.port, "/notes")
            self.assertEqual(status, 503)
            self.assertIn("database unavailable", json.loads(body)["detail"])


@NEEDS
class RedisRestartTest(unittest.TestCase):
    """A redis-server of its own, stopped and started again mid-test."""

    def start_redis(self, port):
        p = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(port),
                              "--save", "", "--appendonly", "no", "--daemonize", "no"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(lambda: p.poll() is None and (p.kill(), p.wait()))
        ok = wait_until(lambda: subprocess.run(
            ["redis-cli", "-p", str(port), "ping"], stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL).stdout.strip() == b"PONG", 10)
        self.assertTrue(ok, "redis-server did not start")
        return p

    def test_restart(self):
        port = free_port()
        redis = self.start_redis(port)
        try:
            env = {"LUASERVE_REDIS": "redis://127.0.0.1:%d/0" % port, "LUASERVE_PG": PG}
            with Server("tests/apps/db_app.lua", env=env) as srv:
                c = Client(srv.port)
                for n in (1, 2):
                    c.request("GET", "/incr")
                    self.assertEqual(c.response().json(), {"n": n})
                redis.send_signal(signal.SIGTERM)
                redis.wait(10)
                c.request("GET", "/incr")
                res = c.response()
                self.assertEqual(res.status, 503)
                self.assertIn("refused", res.json()["detail"])
                redis = self.start_redis(port)
                c.request("GET", "/incr")   # its pooled connection died: a new one
                self.assertEqual(c.response().json(), {"n": 1})
                c.request("GET", "/incr")
                self.assertEqual(c.response().json(), {"n": 2})
                c.close()
        finally:
            redis.kill()
            redis.wait(10)

    def test_sync_route_uses_both(self):
        env = {"LUASERVE_REDIS": REDIS, "LUASERVE_PG": PG}
        with Server("tests/apps/db_app.lua", "--threads", "2", env=env) as srv:
            for _ in range(4):
                status, _, body = get(srv.port, "/sync")
                self.assertEqual(status, 200, body)
                self.assertEqual(json.loads(body)["pg"], 42)


@NEEDS
class BenchRoutesTest(unittest.TestCase):
    """apps/bench's TechEmpower routes on tables like ../shared/bench/db's."""

    @classmethod
    def setUpClass(cls):
        psql("""
            create table if not exists world (id integer primary key, randomnumber integer not null default 0);
            create table if not exists fortune (id integer primary key, message varchar(2048) not null);
            insert into world select x, least(floor(random() * 10000 + 1), 10000)
              from generate_series(1, 10000) as x on conflict do nothing;
            insert into fortune values (1, 'fortune: No such file or directory'),
              (2, '<script>alert("x");</script> & ''q'''), (3, 'フレームワーク')
              on conflict do nothing;""")
        cls.srv = Server("apps/bench", env={"LUASERVE_PG": PG})

    @classmethod
    def tearDownClass(cls):
        status, _ = cls.srv.stop()
        assert status == 0, status

    def test_db(self):
        status, h, body = get(self.srv.port, "/db")
        self.assertEqual(status, 200)
        self.assertEqual(h["content-type"], "application/json")
        row = json.loads(body)
        self.assertEqual(set(row), {"id", "randomNumber"})
        self.assertTrue(1 <= row["id"] <= 10000)

    def test_queries_clamped(self):
        for q, n in (("20", 20), ("0", 1), ("abc", 1), ("", 1), ("1000", 500), ("7.9", 7)):
            status, _, body = get(self.srv.port, "/queries?queries=" + q, timeout=10)
            self.assertEqual(status, 200, body)
            rows = json.loads(body)
            self.assertEqual(len(rows), n, q)
            self.assertEqual(len({r["id"] for r in rows}), n)

    def test_fortunes(self):
        status, h, body = get(self.srv.port, "/fortunes")
        self.assertEqual(status, 200)
        self.assertEqual(h["content-type"], "text/html; charset=utf-8")
        text = body.decode()
        self.assertIn("<td>0</td><td>Additional fortune added at request time.</td>", text)
        self.assertIn("&lt;script&gt;alert(&quot;x&quot;);&lt;/script&gt; &amp; &#x27;q&#x27;", text)
        self.assertNotIn("<script>", text)
        messages = re.findall(r"<tr><td>\d+</td><td>(.*?)</td></tr>", text)
        self.assertEqual(messages, sorted(messages, key=lambda m: m.encode()))
        self.assertIn("フレームワーク", text)

    def test_updates_persist(self):
        status, _, body = get(self.srv.port, "/updates?queries=5")
        self.assertEqual(status, 200, body)
        rows = json.loads(body)
        self.assertEqual(len(rows), 5)
        for r in rows:
            self.assertEqual(int(psql("select randomnumber from world where id = %d" % r["id"])),
                             r["randomNumber"])


if __name__ == "__main__":
    unittest.main()
