"""Bad input never reaches Lua and never costs more than its connection: a
4xx and a close, never a 5xx, never a crash, and the next client is served.

llhttp 8.1 (Debian's node-llhttp, strict mode) rejects a bare LF as the end
of a header line ("Invalid header value char"), and so do we: 400. A bare LF
after the request line alone is tolerated by llhttp; the header line after it
still needs CRLF."""
import os
import re
import socket
import time
import unittest

import harness
from harness import Client

HERE = os.path.dirname(os.path.abspath(__file__))
INSPECT_APP = os.path.join(HERE, "apps", "inspect_app.lua")

TLS_CLIENT_HELLO = bytes.fromhex(
    "16030100a5010000a10303") + bytes(32) + bytes.fromhex(
    "000020c02bc02fc02cc030cca9cca8c013c014009c009d002f0035c012000a"
    "010000580000000e000c0000096c6f63616c686f7374") + bytes(60)

# name -> raw bytes; every one answers a 4xx and closes.
CASES = {
    "garbage request line": b"HELLO\r\n\r\n",
    "unknown method": b"FETCH / HTTP/1.1\r\nHost: t\r\n\r\n",
    "lower-case method": b"get / HTTP/1.1\r\nHost: t\r\n\r\n",
    "no version": b"GET /json\r\nHost: t\r\n\r\n",
    "bad version": b"GET / HTTP/1.7\r\nHost: t\r\n\r\n",
    "HTTP/2.0 request line": b"GET / HTTP/2.0\r\nHost: t\r\n\r\n",
    "HTTP/0.9 version": b"GET / HTTP/0.9\r\nHost: t\r\n\r\n",
    "not HTTP": b"GET / FTP/1.1\r\nHost: t\r\n\r\n",
    "space in target": b"GET /a b HTTP/1.1\r\nHost: t\r\n\r\n",
    "header without colon": b"GET / HTTP/1.1\r\nHost t\r\n\r\n",
    "space before colon": b"GET / HTTP/1.1\r\nHost : t\r\n\r\n",
    "tab in header name": b"GET / HTTP/1.1\r\nX\tY: 1\r\n\r\n",
    "empty header name": b"GET / HTTP/1.1\r\n: v\r\n\r\n",
    "line folding first": b"GET / HTTP/1.1\r\n Host: t\r\n\r\n",
    "bare LF in headers": b"GET / HTTP/1.1\nHost: t\nX: 1\n\n",
    "bare LF after a header": b"GET / HTTP/1.1\r\nHost: t\nX: 1\r\n\r\n",
    "bare CR": b"GET / HTTP/1.1\rHost: t\r\n\r\n",
    "NUL in target": b"GET /js\x00on HTTP/1.1\r\nHost: t\r\n\r\n",
    "NUL in header value": b"GET / HTTP/1.1\r\nHost: t\r\nX: a\x00b\r\n\r\n",
    "NUL in header name": b"GET / HTTP/1.1\r\nHo\x00st: t\r\n\r\n",
    "NUL bytes only": b"\x00" * 64,
    "HTTP/1.1 without Host": b"GET /inspect HTTP/1.1\r\nX: 1\r\n\r\n",
    "two Host headers": b"GET /inspect HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "control char in header value": b"GET / HTTP/1.1\r\nHost: t\r\nX: a\x01b\r\n\r\n",
    "Content-Length and Transfer-Encoding":
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "two Content-Lengths":
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
        b"Content-Length: 6\r\n\r\nhello!",
    "two equal Content-Lengths":
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
        b"Content-Length: 5\r\n\r\nhello",
    "Content-Length not a number":
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: abc\r\n\r\n",
    "negative Content-Length":
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n",
    "Content-Length overflow":
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999999999999999999\r\n\r\n",
    "Content-Length list":
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5, 5\r\n\r\nhello",
    "Transfer-Encoding not chunked":
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\nabc",
    "chunked not last":
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n",
    "bad chunk size":
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz\r\nhello\r\n0\r\n\r\n",
    "negative chunk size":
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"-5\r\nhello\r\n0\r\n\r\n",
    "chunk size overflow":
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"ffffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
    "chunk longer than its size":
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nhello\r\n0\r\n\r\n",
    "HTTP/2 preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "HTTP/2 preface and a frame":
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\x00\x00\x00\x00\x00"
        b"\x00\x03\x00\x00\x00\x64\x00\x04\x00\x10\x00\x00\x00\x06\x00\x00\x40\x00",
    "TLS ClientHello": TLS_CLIENT_HELLO,
    "binary garbage": bytes(range(256)) * 4,
}


# Odd but valid, or tolerated by llhttp 8.1 as RFC 9112 allows: served.
TOLERATED = {
    "two spaces after the method": b"GET  /inspect HTTP/1.1\r\nHost: t\r\n\r\n",
    "bare LF after the request line": b"GET /inspect HTTP/1.1\nHost: t\r\n\r\n",
    "empty lines before the request": b"\r\n\r\nGET /inspect HTTP/1.1\r\nHost: t\r\n\r\n",
    "HTTP/1.0 without Host": b"GET /inspect HTTP/1.0\r\n\r\n",
    "empty header value": b"GET /inspect HTTP/1.1\r\nHost: t\r\nX:\r\n\r\n",
    "obs-fold continuation": b"GET /inspect HTTP/1.1\r\nHost: t\r\nX: a\r\n b\r\n\r\n",
}


class BadInputTest(harness.ServerTest):
    SERVER = (INSPECT_APP,)

    def check_rejected(self, data, first=None):
        """Send data (after `first`, a good request, if given) on one
        connection; expect a 4xx with Connection: close, then the close."""
        with Client(self.srv.port) as c:
            if first:
                c.send(first)
                self.assertEqual(c.response().status, 200)
            try:
                c.send(data)
            except (BrokenPipeError, ConnectionResetError):
                pass
            r = c.response()
            self.assertGreaterEqual(r.status, 400, r)
            self.assertLess(r.status, 500, r)
            self.assertEqual(r.headers.get("connection"), "close")
            self.assertEqual(r.headers.get("content-type"), "application/json")
            self.assertIn(b'"detail"', r.body)
            self.assertTrue(c.wait_closed(5), "still open after the error")
        return r

    def check_alive(self):
        self.assertTrue(self.srv.alive(), self.srv.log())
        status, _, body = harness.get(self.srv.port, "/inspect")
        self.assertEqual(status, 200)

    def test_each_bad_request_gets_a_4xx_and_a_close(self):
        for name, data in CASES.items():
            with self.subTest(name):
                self.check_rejected(data)
                self.check_alive()

    def test_tolerated_input_is_served(self):
        for name, data in TOLERATED.items():
            with self.subTest(name):
                with Client(self.srv.port) as c:
                    c.send(data)
                    r = c.response()
                    self.assertEqual(r.status, 200, r)
                    self.assertEqual(r.json()["target"], "/inspect")
                self.check_alive()

    def test_bad_input_after_a_good_request_on_the_same_connection(self):
        good = b"GET /inspect HTTP/1.1\r\nHost: t\r\n\r\n"
        for name in ("garbage request line", "bare LF in headers",
                     "two Content-Lengths", "HTTP/2 preface", "TLS ClientHello"):
            with self.subTest(name):
                self.check_rejected(CASES[name], first=good)
        self.check_alive()

    def test_good_and_bad_pipelined_in_one_write(self):
        good = b"GET /inspect?n=1 HTTP/1.1\r\nHost: t\r\n\r\n"
        with Client(self.srv.port) as c:
            c.send(good + b"GET / HTTP/1.1\r\nBad Header\r\n\r\n" + good)
            self.assertEqual(c.response().status, 200)
            self.assertEqual(c.response().status, 400)
            self.assertTrue(c.wait_closed(5))
            self.assertEqual(c.buf, b"", "answered past the bad request")
        self.check_alive()

    def test_specific_statuses(self):
        self.assertEqual(self.check_rejected(CASES["two Content-Lengths"]).status, 400)
        self.assertEqual(self.check_rejected(CASES["HTTP/2 preface"]).status, 400)
        self.assertEqual(self.check_rejected(CASES["TLS ClientHello"]).status, 400)
        self.assertEqual(self.check_rejected(CASES["bare LF in headers"]).status, 400)
        self.assertEqual(self.check_rejected(CASES["space before colon"]).status, 400)

    def test_bad_input_never_reaches_lua(self):
        # The inspect app would answer 200 for any of these with /inspect.
        time.sleep(0.3)   # access lines are flushed every 100 ms
        before = len(self.srv.log())
        self.check_rejected(b"GET /inspect HTTP/1.1\r\nHost : t\r\n\r\n")
        self.check_rejected(b"POST /inspect HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n"
                            b"Content-Length: 3\r\n\r\nabc")
        self.check_rejected(b"GET /inspect HTTP/1.1\r\nHost: t\r\nX: \x00\r\n\r\n")
        time.sleep(0.3)   # access lines are flushed every 100 ms
        self.assertNotIn("/inspect", self.srv.log()[before:])

    def test_request_cut_off_midway(self):
        # A client that goes away half-way: nothing reaches Lua, no crash.
        for data in (b"GET /insp", b"GET /inspect HTTP/1.1\r\nHost: t\r\nX-",
                     b"POST /inspect HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc",
                     b"POST /inspect HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab"):
            with Client(self.srv.port) as c:
                c.send(data)
                time.sleep(0.05)
        self.check_alive()

    def test_many_bad_clients_at_once(self):
        clients = [Client(self.srv.port) for _ in range(50)]
        try:
            for i, c in enumerate(clients):
                c.send(list(CASES.values())[i % len(CASES)])
            for c in clients:
                r = c.response()
                self.assertTrue(400 <= r.status < 500, r)
        finally:
            for c in clients:
                c.close()
        self.check_alive()



BASES = [
    b"GET /inspect?a=1 HTTP/1.1\r\nHost: t\r\nAccept: */*\r\nX-A: b\r\n\r\n",
    b"POST /inspect HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
    b"Content-Type: text/plain\r\n\r\nhello",
    b"POST /inspect HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n3;x=y\r\nabc\r\n0\r\nT: 1\r\n\r\n",
    b"HEAD /inspect HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
]
SPECIAL = b"\r\n\x00 :\t;,-0123456789abcdefABCDEF\x7f\x80\xff"


def mutate(rng, data):
    """A few random edits: flip, insert, delete, duplicate, truncate."""
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(5)
        i = rng.randrange(len(data) + 1)
        if op == 0 and i < len(data):
            data[i] = rng.choice(SPECIAL)
        elif op == 1:
            data[i:i] = bytes([rng.choice(SPECIAL) if rng.random() < 0.7
                               else rng.randrange(256)])
        elif op == 2 and i < len(data):
            del data[i:i + rng.randint(1, 4)]
        elif op == 3:
            j = rng.randrange(len(data) + 1)
            data[i:i] = data[min(i, j):max(i, j)][:64]
        elif op == 4 and rng.random() < 0.2:
            del data[i:]
    return bytes(data)


class FuzzTest(harness.ServerTest):
    """Seeded random edits of good requests: whatever the server answers is
    never a 5xx, and it stays up."""

    SERVER = (INSPECT_APP,)

    def test_mutated_requests(self):
        import random
        rng = random.Random(20261121)
        for n in range(400):
            data = mutate(rng, rng.choice(BASES))
            with Client(self.srv.port, timeout=5) as c:
                try:
                    c.send(data)
                    # Our side is done: an incomplete request then ends
                    # with the server closing, a complete one is answered.
                    c.sock.shutdown(socket.SHUT_WR)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                got = c.read_until_close()
            for m in re.finditer(rb"HTTP/1\.1 (\d{3}) ", got):
                self.assertLess(int(m.group(1)), 500, (n, data, got[:300]))
            self.assertTrue(self.srv.alive(), (n, data))
        self.assertEqual(harness.get(self.srv.port, "/inspect")[0], 200)
        self.assertNotIn(" ERROR ", self.srv.log())


if __name__ == "__main__":
    unittest.main()
