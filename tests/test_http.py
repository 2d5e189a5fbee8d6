"""HTTP/1.1 as real clients use it, against the real binary: keep-alive,
pipelining, HEAD, request bodies, 100-continue, Date/Server headers, and a
handler error."""
import email.utils
import os
import time
import unittest

import harness
from harness import Client

HERE = os.path.dirname(os.path.abspath(__file__))
INSPECT_APP = os.path.join(HERE, "apps", "inspect_app.lua")


class KeepAliveTest(harness.ServerTest):
    SERVER = ("apps/bench",)

    def test_http11_keeps_the_connection_by_default(self):
        with Client(self.srv.port) as c:
            for i in range(5):
                c.request("GET", "/sleep?ms=%d" % i)
                r = c.response()
                self.assertEqual(r.status, 200)
                self.assertEqual(r.json(), {"slept_ms": i})
                self.assertNotIn("close", r.headers.get("connection", ""))

    def test_http10_closes_by_default(self):
        with Client(self.srv.port) as c:
            c.request("GET", "/json", version="1.0")
            r = c.response()
            self.assertEqual(r.status, 200)
            self.assertEqual(r.headers.get("connection"), "close")
            self.assertTrue(c.wait_closed(5), "HTTP/1.0 without keep-alive stays open")

    def test_http10_keep_alive_is_opt_in(self):
        with Client(self.srv.port) as c:
            for _ in range(3):
                c.request("GET", "/json", [("Connection", "keep-alive")], version="1.0")
                r = c.response()
                self.assertEqual(r.status, 200)
                self.assertEqual(r.headers.get("connection"), "keep-alive")
            # Without the header the last one closes.
            c.request("GET", "/plaintext", version="1.0")
            r = c.response()
            self.assertEqual(r.body, b"Hello, World!")
            self.assertTrue(c.wait_closed(5))

    def test_connection_close_is_honoured(self):
        with Client(self.srv.port) as c:
            c.request("GET", "/json", [("Connection", "close")])
            r = c.response()
            self.assertEqual(r.status, 200)
            self.assertEqual(r.headers.get("connection"), "close")
            self.assertTrue(c.wait_closed(5), "Connection: close not honoured")
            self.assertEqual(c.buf, b"")

    def test_connection_close_after_keep_alive_requests(self):
        with Client(self.srv.port) as c:
            c.request("GET", "/json")
            self.assertEqual(c.response().status, 200)
            c.request("POST", "/echo", [("Connection", "close")], body=b"bye")
            r = c.response()
            self.assertEqual(r.body, b"bye")
            self.assertTrue(c.wait_closed(5))


class PipeliningTest(harness.ServerTest):
    SERVER = ("apps/bench",)

    def test_answers_come_in_request_order(self):
        # A slow request first: the quick ones behind it wait their turn.
        reqs = (b"GET /sleep?ms=300 HTTP/1.1\r\nHost: t\r\n\r\n"
                b"GET /json HTTP/1.1\r\nHost: t\r\n\r\n"
                b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
                b"Content-Type: text/x-test\r\n\r\nhello"
                b"GET /sleep?ms=20 HTTP/1.1\r\nHost: t\r\n\r\n"
                b"HEAD /plaintext HTTP/1.1\r\nHost: t\r\n\r\n"
                b"GET /plaintext HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        with Client(self.srv.port) as c:
            c.send(reqs)
            rs = [c.response() for _ in range(4)]
            rs.append(c.response(head=True))
            rs.append(c.response())
            self.assertTrue(c.wait_closed(5))
            self.assertEqual(c.buf, b"", "bytes after the last answer")
        self.assertEqual([r.status for r in rs], [200] * 6)
        self.assertEqual(rs[0].json(), {"slept_ms": 300})
        self.assertEqual(rs[1].json(), {"message": "Hello, World!"})
        self.assertEqual(rs[2].body, b"hello")
        self.assertEqual(rs[2].headers["content-type"], "text/x-test")
        self.assertEqual(rs[3].json(), {"slept_ms": 20})
        self.assertEqual(rs[4].headers["content-length"], "13")
        self.assertEqual(rs[5].body, b"Hello, World!")

    def test_many_pipelined_requests_in_one_write(self):
        # Each sleeps less than the one before: finishing order is the
        # reverse of request order, answers must still come in order.
        n = 40
        data = b"".join(b"GET /sleep?ms=%d HTTP/1.1\r\nHost: t\r\n\r\n" % (n - i)
                        for i in range(n))
        with Client(self.srv.port, timeout=10) as c:
            c.send(data)
            got = [c.response().json()["slept_ms"] for _ in range(n)]
        self.assertEqual(got, [n - i for i in range(n)])

    def test_pipelined_requests_split_across_writes(self):
        data = b"".join(b"GET /sleep?ms=%d HTTP/1.1\r\nHost: t\r\n\r\n" % i
                        for i in range(10))
        with Client(self.srv.port) as c:
            for k in range(0, len(data), 7):   # cut mid-line everywhere
                c.send(data[k:k + 7])
            got = [c.response().json()["slept_ms"] for _ in range(10)]
        self.assertEqual(got, list(range(10)))

    def test_pipelined_bodies(self):
        data = b""
        for i in range(10):
            body = b"x" * (i * 1000)
            data += (b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n"
                     % len(body)) + body
        with Client(self.srv.port) as c:
            c.send(data)
            lens = [len(c.response().body) for _ in range(10)]
        self.assertEqual(lens, [i * 1000 for i in range(10)])


class HeadAndHeadersTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.srv = harness.Server("apps/bench")
        cls.inspect = harness.Server(INSPECT_APP)

    @classmethod
    def tearDownClass(cls):
        for s in (cls.srv, cls.inspect):
            status, _ = s.stop()
            assert status == 0, status

    def test_head_has_headers_and_no_body(self):
        with Client(self.srv.port) as c:
            c.request("GET", "/json")
            get = c.response()
            # HEAD then GET on one connection: any body after the HEAD
            # answer would be read as the start of the next response.
            c.request("HEAD", "/json")
            c.request("GET", "/plaintext")
            head = c.response(head=True)
            after = c.response()
        self.assertEqual(head.status, 200)
        self.assertEqual(head.headers["content-length"], str(len(get.body)))
        self.assertEqual(head.headers["content-type"], get.headers["content-type"])
        self.assertEqual(after.status, 200)
        self.assertEqual(after.body, b"Hello, World!")

    def test_head_with_connection_close(self):
        with Client(self.srv.port) as c:
            c.request("HEAD", "/plaintext", [("Connection", "close")])
            r = c.response(head=True)
            self.assertEqual(r.headers["content-length"], "13")
            self.assertTrue(c.wait_closed(5))
            self.assertEqual(c.buf, b"", "HEAD answered with a body")

    def check_date_server(self, r):
        self.assertEqual(r.headers.get("server"), "luaserve")
        self.assertIn("date", r.headers)
        date = email.utils.parsedate_to_datetime(r.headers["date"])
        self.assertTrue(r.headers["date"].endswith(" GMT"), r.headers["date"])
        self.assertLess(abs(date.timestamp() - time.time()), 300)

    def test_date_and_server_headers(self):
        with Client(self.srv.port) as c:
            c.request("GET", "/json")
            self.check_date_server(c.response())
            c.request("GET", "/nowhere")          # a 404 from the router
            r = c.response()
            self.assertEqual(r.status, 404)
            self.check_date_server(r)

    def test_date_and_server_on_core_errors(self):
        with Client(self.srv.port) as c:
            c.send(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n")   # a 400 from the core
            r = c.response()
            self.assertEqual(r.status, 400)
            self.check_date_server(r)

    def test_the_path_is_split_from_the_query_and_decoded(self):
        # The core says where the path ends and whether it holds escapes:
        # an escape in the path is decoded, one in the query is left alone;
        # an absolute-form target's path is what follows the authority.
        for target, path, query in [
                (b"/insp%65ct?x=%41", "/inspect", "x=%41"),
                (b"/inspect?p=/a%2Fb", "/inspect", "p=/a%2Fb"),
                (b"/inspect?", "/inspect", ""),
                (b"http://t/insp%65ct?q=1", "/inspect", "q=1"),
                (b"/%69nspect", "/inspect", None)]:
            with Client(self.inspect.port) as c:
                c.send(b"GET " + target + b" HTTP/1.1\r\nHost: t\r\n\r\n")
                r = c.response()
                self.assertEqual(r.status, 200, target)
                r = r.json()
            self.assertEqual(r["path"], path, target)
            self.assertEqual(r["target"], target.decode(), target)
            self.assertEqual(r.get("query_string"), query, target)

    def test_headers_reach_the_handler(self):
        with Client(self.inspect.port) as c:
            c.send(b"GET /inspect?a=1&b=x%20y HTTP/1.1\r\nHost: t\r\n"
                   b"X-Mixed-Case: Value  \r\nX-Rep: a\r\nx-rep: b\r\n"
                   b"X-Empty:\r\nX-Tab:\tt \t\r\nX-Fold: a\r\n  b\r\n"
                   b"X-Inner:  two  words\r\n\r\n")
            r = c.response().json()
        self.assertEqual(r["method"], "GET")
        self.assertEqual(r["path"], "/inspect")
        self.assertEqual(r["target"], "/inspect?a=1&b=x%20y")
        self.assertEqual(r["query_string"], "a=1&b=x%20y")
        # Every field, as pairs() sees it: names lower-cased, blanks around
        # values cut (inside kept), repeats joined, empty values kept.
        self.assertEqual(r["headers"], {
            "host": "t", "x-mixed-case": "Value", "x-rep": "a, b",
            "x-empty": "", "x-tab": "t", "x-fold": "a  b",
            "x-inner": "two  words"})

    def test_upgrade_request_is_answered_then_closed(self):
        # No upgrades here: the request gets a normal answer and the
        # connection closes; bytes after it never reach Lua.
        with Client(self.inspect.port) as c:
            c.send(b"GET /inspect HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n"
                   b"Connection: Upgrade\r\n\r\n"
                   b"GET /inspect?second HTTP/1.1\r\nHost: t\r\n\r\n")
            r = c.response()
            self.assertEqual(r.status, 200)
            self.assertEqual(r.json()["target"], "/inspect")
            self.assertEqual(r.headers.get("connection"), "close")
            self.assertTrue(c.wait_closed(5))
            self.assertEqual(c.buf, b"")
        time.sleep(0.3)   # access lines are flushed every 100 ms
        self.assertNotIn("/inspect?second", self.inspect.log())

    def test_connect_is_answered_then_closed(self):
        with Client(self.inspect.port) as c:
            c.send(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
                   b"GET /inspect HTTP/1.1\r\nHost: t\r\n\r\n")
            r = c.response()
            self.assertLess(r.status, 500)
            self.assertTrue(c.wait_closed(5))
            self.assertEqual(c.buf, b"")

    def test_empty_lines_before_a_request_are_ignored(self):
        with Client(self.srv.port) as c:
            c.send(b"\r\n\r\nGET /plaintext HTTP/1.1\r\nHost: t\r\n\r\n")
            self.assertEqual(c.response().body, b"Hello, World!")


class BodyTest(harness.ServerTest):
    SERVER = ("apps/bench",)

    def test_content_length_body(self):
        with Client(self.srv.port) as c:
            c.request("POST", "/echo", [("Content-Type", "application/json")],
                      body=b'{"a":1}')
            r = c.response()
        self.assertEqual(r.status, 200)
        self.assertEqual(r.body, b'{"a":1}')
        self.assertEqual(r.headers["content-type"], "application/json")

    def test_large_content_length_body_in_pieces(self):
        body = os.urandom(300 * 1024)
        with Client(self.srv.port, timeout=10) as c:
            c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(body))
            for k in range(0, len(body), 50000):
                c.send(body[k:k + 50000])
                time.sleep(0.01)
            r = c.response()
        self.assertEqual(r.status, 200)
        self.assertEqual(r.body, body)

    def test_empty_body(self):
        with Client(self.srv.port) as c:
            c.request("POST", "/echo", [("Content-Length", "0")])
            r = c.response()
        self.assertEqual(r.status, 200)
        self.assertEqual(r.body, b"")

    def test_chunked_body(self):
        with Client(self.srv.port) as c:
            c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
                   b"Content-Type: text/plain\r\n\r\n")
            # chunks in separate writes, one with an extension, then trailers
            c.send(b"5\r\nhello\r\n")
            time.sleep(0.05)
            c.send(b"1;ext=1\r\n \r\n")
            time.sleep(0.05)
            c.send(b"A\r\n0123456789\r\n0\r\nX-Trailer: yes\r\n\r\n")
            r = c.response()
            self.assertEqual(r.status, 200)
            self.assertEqual(r.body, b"hello 0123456789")
            # the connection is still good afterwards
            c.request("GET", "/plaintext")
            self.assertEqual(c.response().body, b"Hello, World!")

    def test_chunked_body_byte_by_byte(self):
        data = (b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n")
        with Client(self.srv.port) as c:
            for i in range(len(data)):
                c.send(data[i:i + 1])
            r = c.response()
        self.assertEqual(r.body, b"abcdefg")

    def test_large_chunked_body(self):
        body = os.urandom(200 * 1024)
        enc = b"".join(b"%x\r\n%s\r\n" % (len(body[k:k + 10000]), body[k:k + 10000])
                       for k in range(0, len(body), 10000)) + b"0\r\n\r\n"
        with Client(self.srv.port, timeout=10) as c:
            c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" + enc)
            r = c.response()
        self.assertEqual(r.body, body)


class ExpectContinueTest(harness.ServerTest):
    SERVER = ("apps/bench", "--max-body", "1000")

    def test_100_continue_before_the_body(self):
        with Client(self.srv.port) as c:
            c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
                   b"Expect: 100-continue\r\n\r\n")
            r = c.response()   # sent before we send any body byte
            self.assertEqual(r.status, 100)
            self.assertEqual(r.head, b"HTTP/1.1 100 Continue\r\n\r\n")
            c.send(b"hello")
            r = c.response()
            self.assertEqual(r.status, 200)
            self.assertEqual(r.body, b"hello")
            # and the connection goes on
            c.request("GET", "/plaintext")
            self.assertEqual(c.response().status, 200)

    def test_100_continue_with_a_chunked_body(self):
        with Client(self.srv.port) as c:
            c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
                   b"Expect: 100-continue\r\n\r\n")
            self.assertEqual(c.response().status, 100)
            c.send(b"2\r\nok\r\n0\r\n\r\n")
            self.assertEqual(c.response().body, b"ok")

    def test_413_instead_of_100_when_too_large(self):
        with Client(self.srv.port) as c:
            c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n"
                   b"Expect: 100-continue\r\n\r\n")
            r = c.response()
            self.assertEqual(r.status, 413)
            self.assertEqual(r.headers.get("connection"), "close")
            self.assertTrue(c.wait_closed(5))

    def test_no_100_without_expect(self):
        with Client(self.srv.port) as c:
            c.request("POST", "/echo", body=b"abc")
            r = c.response()
            self.assertEqual(r.status, 200)
            self.assertEqual(r.body, b"abc")


class HandlerErrorTest(harness.ServerTest):
    SERVER = ("apps/demo",)

    def test_error_is_a_500_logged_with_route_and_traceback(self):
        with Client(self.srv.port) as c:
            c.request("GET", "/boom")
            r = c.response()
            self.assertEqual(r.status, 500)
            self.assertEqual(r.body, b'{"detail":"Internal Server Error"}')
            self.assertEqual(r.headers["content-type"], "application/json")
            # the server keeps serving, on this connection too
            c.request("GET", "/users/7")
            r = c.response()
            self.assertEqual(r.status, 200)
            self.assertEqual(r.json()["id"], 7)
        m = self.srv.wait_log(r"ERROR GET /boom \(route /boom\): "
                              r"[^\n]*app\.lua:\d+: attempt to index")
        self.assertIsNotNone(m, self.srv.log())
        log = self.srv.log()
        self.assertIn("stack traceback:", log)
        self.assertRegex(log, r"apps/demo/app\.lua:\d+: in function")
        self.assertTrue(self.srv.alive())
        self.assertEqual(harness.get(self.srv.port, "/async")[0], 200)


if __name__ == "__main__":
    unittest.main()
