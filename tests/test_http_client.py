"""luaserve.http in the real binary, against real upstreams on loopback: the
scripted upstream (tests/upstream.py, run in threads here) for edge cases,
and a second luaserve process. Covers the demo's client routes, the bench
/fanout route with connection reuse, and a client disconnect aborting the
upstream call."""
import json
import os
import time
import unittest
import urllib.parse

import harness
from harness import Client
import upstream

HERE = os.path.dirname(os.path.abspath(__file__))
CLIENT_APP = os.path.join(HERE, "apps", "client_app.lua")


def eventually(fn, timeout=5.0):
    deadline = time.time() + timeout
    while True:
        v = fn()
        if v or time.time() >= deadline:
            return v
        time.sleep(0.05)


def get_json(port, path, timeout=10.0):
    """GET with the Host header real clients send (the demo and bench apps
    find their own address from its port)."""
    with Client(port, timeout=timeout) as c:
        c.request("GET", path, headers=[("Host", "127.0.0.1:%d" % port)])
        r = c.response()
        return r.status, r.json()


class ClientAppTest(unittest.TestCase):
    """The scripted upstream's edge cases through tests/apps/client_app.lua."""

    @classmethod
    def setUpClass(cls):
        cls.up = upstream.start()
        cls.srv = harness.Server(CLIENT_APP, "--no-access-log")

    @classmethod
    def tearDownClass(cls):
        status, _ = cls.srv.stop()
        cls.up.stop()
        assert status == 0, status

    def call(self, path, **params):
        params["url"] = "http://127.0.0.1:%d%s" % (self.up.http_port, path)
        return get_json(self.srv.port, "/call?" + urllib.parse.urlencode(params))[1]

    def test_bodies(self):
        self.assertEqual(self.call("/chunked")["body"], "hello, chunked world")
        self.assertEqual(self.call("/close-delimited")["body"], "until the close")
        r = self.call("/interim")
        self.assertEqual((r["status"], r["body"]), (200, "final"))

    def test_failures(self):
        self.assertEqual(self.call("/close-mid-body"), {"ok": False, "err": "closed"})
        self.assertEqual(self.call("/big?n=100000", max_body=1000),
                         {"ok": False, "err": "too large"})
        self.assertTrue(self.call("/garbage")["err"].startswith("bad response: "))
        self.assertEqual(self.call("/stall-headers", read_timeout=0.2),
                         {"ok": False, "err": "timeout"})
        self.assertEqual(self.call("/trickle", timeout=0.3, read_timeout=5),
                         {"ok": False, "err": "timeout"})
        port = harness.free_port()
        _, r = get_json(self.srv.port, "/call?url=http://127.0.0.1:%d/" % port)
        self.assertEqual(r, {"ok": False, "err": "connection refused"})
        _, r = get_json(self.srv.port, "/call?url=http://bad..name/")
        self.assertTrue(r["err"].startswith("dns: "), r)
        # https to a plain HTTP server that waits for a request line: the
        # handshake is bounded by the connect timeout
        _, r = get_json(self.srv.port, "/call?" + urllib.parse.urlencode({
            "url": "https://127.0.0.1:%d/ok" % self.up.http_port,
            "connect_timeout": 0.3}))
        self.assertEqual(r, {"ok": False, "err": "tls: handshake timeout"})
        _, r = get_json(self.srv.port, "/call?" + urllib.parse.urlencode({
            "url": "http://127.0.0.1:%d/" % self.up.blackhole_port,
            "connect_timeout": 0.2}))
        self.assertEqual(r, {"ok": False, "err": "timeout"})

    def test_pool_reuse(self):
        before = self.up.stats()
        for _ in range(100):
            self.assertEqual(self.call("/ok")["body"], "ok")
        after = self.up.stats()
        self.assertEqual(after["requests"] - before["requests"], 100)
        self.assertLessEqual(after["connections"] - before["connections"], 1)

    def test_client_disconnect_aborts_the_upstream_call(self):
        before = self.up.stats()["stall_aborted"]
        c = Client(self.srv.port)
        q = urllib.parse.urlencode({"url": "http://127.0.0.1:%d/stall-headers"
                                    % self.up.http_port, "read_timeout": 30})
        c.send(("GET /call?%s HTTP/1.1\r\nHost: t\r\n\r\n" % q).encode())
        self.assertTrue(eventually(lambda: self.up.stats()["stall_open"] > 0))
        c.close()
        self.assertTrue(eventually(
            lambda: self.up.stats()["stall_aborted"] > before),
            "the upstream connection stayed open after the client left")
        # the aborted connection is not pooled, and the server still serves
        _, pool = get_json(self.srv.port, "/pool")
        self.assertIsNone(pool.get("http://127.0.0.1:%d" % self.up.http_port + "/x"))
        self.assertEqual(self.call("/ok")["body"], "ok")


    def test_inside_a_sync_function(self):
        q = urllib.parse.urlencode({"url": "http://127.0.0.1:%d/chunked" % self.up.http_port})
        _, r = get_json(self.srv.port, "/sync-call?" + q)
        self.assertEqual(r, {"ok": True, "status": 200, "pool_state": True,
                             "body": "hello, chunked world"})
        before = self.up.stats()["stall_aborted"]
        q = urllib.parse.urlencode({"url": "http://127.0.0.1:%d/stall-headers"
                                    % self.up.http_port, "wait": 0.2})
        _, r = get_json(self.srv.port, "/sync-call?" + q)
        self.assertEqual(r, {"ok": False, "err": "timeout", "pool_state": True})
        self.assertTrue(eventually(
            lambda: self.up.stats()["stall_aborted"] > before))


class DemoTest(unittest.TestCase):
    """apps/demo's client routes, upstream: the demo itself."""

    @classmethod
    def setUpClass(cls):
        cls.srv = harness.Server("apps/demo", "--no-access-log",
                                 env={"LUASERVE_UPSTREAM": ""})

    @classmethod
    def tearDownClass(cls):
        status, _ = cls.srv.stop()
        assert status == 0, status

    def test_external(self):
        status, r = get_json(self.srv.port, "/external")
        self.assertEqual(status, 200)
        self.assertEqual(r["body"], {"slept_ms": 100})
        self.assertGreaterEqual(r["elapsed_ms"], 90)

    def test_fanout_is_the_longest_wait_not_the_sum(self):
        status, r = get_json(self.srv.port, "/fanout")
        self.assertEqual(status, 200)
        self.assertGreaterEqual(r["sequential_ms"], 290)
        self.assertLess(r["gathered_ms"], r["sequential_ms"] * 0.75, r)

    def test_throttled(self):
        status, r = get_json(self.srv.port, "/throttled")
        self.assertEqual(status, 200)
        self.assertEqual(r["most_in_flight"], 2)
        self.assertGreaterEqual(r["elapsed_ms"], 290)

    def test_upstream_timeout(self):
        t0 = time.time()
        status, r = get_json(self.srv.port, "/upstream-timeout")
        self.assertEqual(status, 504)
        self.assertLess(time.time() - t0, 1.5)


class DemoUpstreamEnvTest(unittest.TestCase):
    def test_external_calls_luaserve_upstream(self):
        up = upstream.start()
        try:
            url = "http://127.0.0.1:%d/json" % up.http_port
            with harness.Server("apps/demo", "--no-access-log",
                                env={"LUASERVE_UPSTREAM": url}) as srv:
                status, r = get_json(srv.port, "/external")
                self.assertEqual(status, 200)
                self.assertEqual(r["upstream"], url)
                self.assertEqual(r["body"], {"message": "Hello, World!"})
            refused = "http://127.0.0.1:%d/" % harness.free_port()
            with harness.Server("apps/demo", "--no-access-log",
                                env={"LUASERVE_UPSTREAM": refused}) as srv:
                status, r = get_json(srv.port, "/external")
                self.assertEqual(status, 502)
                self.assertIn("connection refused", r["detail"])
        finally:
            up.stop()


class BenchFanoutTest(unittest.TestCase):
    def test_fanout_reuses_upstream_connections(self):
        up = upstream.start()
        try:
            with harness.Server("apps/bench", "--no-access-log", env={
                    "LUASERVE_UPSTREAM": "http://127.0.0.1:%d" % up.http_port}) as srv:
                with Client(srv.port) as c:
                    for _ in range(50):
                        c.request("GET", "/fanout?n=3",
                                  headers=[("Host", "127.0.0.1:%d" % srv.port)])
                        r = c.response()
                        self.assertEqual(r.status, 200)
                        self.assertEqual(r.json(), {"n": 3, "status": 200})
                s = up.stats()
                self.assertEqual(s["requests"], 150)
                self.assertLessEqual(s["connections"], 6, s)
                status, _, _ = harness.get(srv.port, "/fanout?n=0")
                self.assertEqual(status, 422)
        finally:
            up.stop()

    def test_fanout_against_its_own_json(self):
        with harness.Server("apps/bench", "--no-access-log",
                            env={"LUASERVE_UPSTREAM": ""}) as srv:
            status, r = get_json(srv.port, "/fanout?n=10")
            self.assertEqual((status, r), (200, {"n": 10, "status": 200}))


if __name__ == "__main__":
    unittest.main()
