"""Limits and timeouts, with their defaults and flags: header bytes, header
count, body size (server-wide and per route), slow senders, idle keep-alive
connections, --limit-concurrency."""
import os
import select
import time
import unittest

import harness
from harness import Client

HERE = os.path.dirname(os.path.abspath(__file__))
INSPECT_APP = os.path.join(HERE, "apps", "inspect_app.lua")


def get_with_header(port, value_len, extra=b""):
    """GET with an X-Big header of value_len bytes and `extra` header
    lines: the response, and whether the server closed (errors only)."""
    with Client(port) as c:
        c.send(b"GET /plaintext HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * value_len +
               b"\r\n" + extra + b"\r\n")
        r = c.response()
        return r, r.status >= 400 and c.wait_closed(5)


class HeaderLimitsDefaultTest(harness.ServerTest):
    SERVER = ("apps/bench",)

    def test_headers_under_16k_pass(self):
        r, _ = get_with_header(self.srv.port, 15 * 1024)
        self.assertEqual(r.status, 200)

    def test_headers_over_16k_get_431_and_close(self):
        r, closed = get_with_header(self.srv.port, 17 * 1024)
        self.assertEqual(r.status, 431)
        self.assertEqual(r.headers.get("connection"), "close")
        self.assertTrue(closed)
        self.assertEqual(harness.get(self.srv.port, "/plaintext")[0], 200)

    def test_many_small_headers_over_16k_get_431(self):
        extra = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 90) for i in range(99))
        r, closed = get_with_header(self.srv.port, 8 * 1024, extra)
        self.assertEqual(r.status, 431)
        self.assertTrue(closed)

    def test_long_url_gets_a_4xx(self):
        with Client(self.srv.port) as c:
            c.send(b"GET /" + b"a" * (20 * 1024) + b" HTTP/1.1\r\nHost: t\r\n\r\n")
            r = c.response()
            self.assertIn(r.status, (414, 431))
            self.assertTrue(c.wait_closed(5))

    def test_100_headers_pass_101_get_431(self):
        # Host plus 99 more: 100, the default limit.
        extra = b"".join(b"X-H%d: v\r\n" % i for i in range(98))
        r, _ = get_with_header(self.srv.port, 1, extra)
        self.assertEqual(r.status, 200)
        extra += b"X-Last: v\r\n"
        r, closed = get_with_header(self.srv.port, 1, extra)
        self.assertEqual(r.status, 431)
        self.assertTrue(closed)


class HeaderLimitsFlagsTest(harness.ServerTest):
    SERVER = ("apps/bench", "--max-header-bytes", "2048", "--max-headers", "10")

    def test_max_header_bytes(self):
        r, _ = get_with_header(self.srv.port, 1500)
        self.assertEqual(r.status, 200)
        r, closed = get_with_header(self.srv.port, 2100)
        self.assertEqual(r.status, 431)
        self.assertTrue(closed)

    def test_max_headers(self):
        # Host + X-Big + 8 = 10 headers: fine; one more: 431.
        extra = b"".join(b"X-H%d: v\r\n" % i for i in range(8))
        r, _ = get_with_header(self.srv.port, 1, extra)
        self.assertEqual(r.status, 200)
        r, closed = get_with_header(self.srv.port, 1, extra + b"X-More: v\r\n")
        self.assertEqual(r.status, 431)
        self.assertTrue(closed)
        self.assertTrue(self.srv.alive())


class BodyLimitDefaultTest(harness.ServerTest):
    SERVER = ("apps/bench",)

    def test_1mb_passes(self):
        body = b"b" * (1024 * 1024)
        with Client(self.srv.port, timeout=10) as c:
            c.request("POST", "/echo", body=body)
            r = c.response()
        self.assertEqual(r.status, 200)
        self.assertEqual(len(r.body), len(body))

    def test_over_1mb_gets_413_even_while_the_client_sends(self):
        # The client sends the whole body without waiting: the 413 must
        # still reach it (lingering close, no reset).
        body = b"b" * (1024 * 1024 + 1)
        with Client(self.srv.port, timeout=10) as c:
            c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(body))
            try:
                c.send(body)
            except (BrokenPipeError, ConnectionResetError):
                pass   # the server may stop reading; the answer must be there
            r = c.response()
        self.assertEqual(r.status, 413)
        self.assertEqual(r.headers.get("connection"), "close")
        self.assertIn("detail", r.json())

    def test_chunked_over_1mb_gets_413(self):
        chunk = b"c" * 65536
        with Client(self.srv.port, timeout=10) as c:
            c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
            try:
                for _ in range(17):   # 17 * 64 KB > 1 MB
                    c.send(b"10000\r\n" + chunk + b"\r\n")
                c.send(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass
            r = c.response()
            self.assertEqual(r.status, 413)
            self.assertTrue(c.wait_closed(5))
        self.assertEqual(harness.get(self.srv.port, "/json")[0], 200)


class BodyLimitPerRouteTest(harness.ServerTest):
    """--max-body 1000; /big allows 2 MB, /tiny 10 bytes, /small the
    server's 1000. The core reads up to the largest; Lua enforces each
    route's own."""

    SERVER = (INSPECT_APP, "--max-body", "1000")

    def post(self, path, n):
        with Client(self.srv.port, timeout=10) as c:
            c.request("POST", path, body=b"x" * n)
            return c.response()

    def test_server_limit(self):
        self.assertEqual(self.post("/small", 1000).json(), {"body_len": 1000})
        r = self.post("/small", 1001)
        self.assertEqual(r.status, 413)
        self.assertEqual(r.json(), {"detail": "request body too large"})

    def test_route_raises_the_limit(self):
        r = self.post("/big", 1536 * 1024)
        self.assertEqual(r.status, 200)
        self.assertEqual(r.json(), {"body_len": 1536 * 1024})
        self.assertEqual(self.post("/big", 2 * 1024 * 1024 + 1).status, 413)

    def test_route_lowers_the_limit(self):
        self.assertEqual(self.post("/tiny", 10).status, 200)
        self.assertEqual(self.post("/tiny", 11).status, 413)

    def test_expect_continue_uses_the_largest_limit(self):
        with Client(self.srv.port) as c:
            c.send(b"POST /big HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n"
                   b"Expect: 100-continue\r\n\r\n")
            self.assertEqual(c.response().status, 100)
            c.send(b"y" * 5000)
            self.assertEqual(c.response().json(), {"body_len": 5000})


class HeaderTimeoutTest(harness.ServerTest):
    """--timeout-header 1 (keep-alive timeout: the default 5 s)."""

    SERVER = ("apps/bench", "--timeout-header", "1")

    def test_slow_header_sender_gets_408_and_close(self):
        data = b"GET /plaintext HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"s" * 40 + b"\r\n\r\n"
        t0 = time.time()
        with Client(self.srv.port) as c:
            sent = 0
            try:
                for i in range(len(data)):   # 0.2 s a byte: 16 s in all
                    c.send(data[i:i + 1])
                    sent += 1
                    # wait 0.2 s, or less if the server answers
                    if select.select([c.sock], [], [], 0.2)[0] or time.time() - t0 > 6:
                        break
            except (BrokenPipeError, ConnectionResetError):
                pass
            self.assertLess(sent, len(data), "the whole request went through")
            r = c.response()
            self.assertEqual(r.status, 408)
            self.assertEqual(r.headers.get("connection"), "close")
            self.assertTrue(c.wait_closed(5))
        self.assertLess(time.time() - t0, 6)
        self.assertEqual(harness.get(self.srv.port, "/plaintext")[0], 200)

    def test_slow_body_sender_gets_408(self):
        with Client(self.srv.port) as c:
            c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc")
            t0 = time.time()
            r = c.response(timeout=6)
            self.assertEqual(r.status, 408)
            self.assertTrue(c.wait_closed(5))
            self.assertLess(time.time() - t0, 5)

    def test_idle_client_after_connect_is_closed(self):
        # by the header timeout (1 s), well before the keep-alive one (5 s)
        with Client(self.srv.port) as c:
            t0 = time.time()
            self.assertTrue(c.wait_closed(4), "an idle connection stays open")
            self.assertGreater(time.time() - t0, 0.5)
            self.assertEqual(c.buf, b"")

    def test_a_slow_handler_is_not_a_slow_sender(self):
        # The header timeout stops while the request is in Lua.
        with Client(self.srv.port) as c:
            c.request("GET", "/sleep?ms=1500")
            r = c.response()
            self.assertEqual(r.status, 200)
            self.assertEqual(r.json(), {"slept_ms": 1500})


class KeepAliveTimeoutTest(harness.ServerTest):
    """--timeout-keep-alive 1 (header timeout: the default 10 s)."""

    SERVER = ("apps/bench", "--timeout-keep-alive", "1")

    def test_idle_keep_alive_connection_is_closed(self):
        with Client(self.srv.port) as c:
            c.request("GET", "/json")
            self.assertEqual(c.response().status, 200)
            t0 = time.time()
            self.assertTrue(c.wait_closed(6), "idle keep-alive connection kept")
            elapsed = time.time() - t0
            self.assertGreater(elapsed, 0.5)
            self.assertLess(elapsed, 5)
            self.assertEqual(c.buf, b"")

    def test_keep_alive_timeout_counts_idle_time_only(self):
        # Requests every 0.4 s for 2.4 s: never idle for 1 s, never closed.
        with Client(self.srv.port) as c:
            for _ in range(6):
                c.request("GET", "/sleep?ms=1")
                self.assertEqual(c.response().status, 200)
                time.sleep(0.4)
            c.request("GET", "/json")
            self.assertEqual(c.response().status, 200)

    def test_a_slow_handler_is_not_idle(self):
        # The keep-alive timeout does not run while the request is in Lua.
        with Client(self.srv.port) as c:
            c.request("GET", "/sleep?ms=1500")
            self.assertEqual(c.response().json(), {"slept_ms": 1500})


class LimitConcurrencyTest(harness.ServerTest):
    SERVER = ("apps/bench", "--limit-concurrency", "2")

    def test_503_beyond_the_limit(self):
        slow = [Client(self.srv.port, timeout=10) for _ in range(2)]
        try:
            for c in slow:
                c.request("GET", "/sleep?ms=1000")
            time.sleep(0.3)   # both are in Lua now
            with Client(self.srv.port) as c:
                c.request("GET", "/json")
                r = c.response()
                self.assertEqual(r.status, 503)
                self.assertIn("retry-after", r.headers)
                self.assertEqual(r.headers.get("connection"), "close")
                self.assertTrue(c.wait_closed(5))
            for c in slow:
                self.assertEqual(c.response().status, 200)
        finally:
            for c in slow:
                c.close()
        # Once they are done, requests are served again.
        self.assertEqual(harness.get(self.srv.port, "/json")[0], 200)

    def test_sequential_requests_are_not_limited(self):
        with Client(self.srv.port) as c:
            for _ in range(10):
                c.request("GET", "/json")
                self.assertEqual(c.response().status, 200)


if __name__ == "__main__":
    unittest.main()
