"""A client that disconnects mid-request: its pending waits are cancelled
(timer stopped, the coroutine never resumed), the access log shows 499, and
the server goes on. Uses tests/apps/cancel_app.lua."""
import json
import os
import socket
import struct
import time
import unittest

import harness
from harness import Client

HERE = os.path.dirname(os.path.abspath(__file__))
CANCEL_APP = os.path.join(HERE, "apps", "cancel_app.lua")


class CancelTest(unittest.TestCase):
    def setUp(self):
        # One server per test: the app's counters start at zero.
        self.srv = harness.Server(CANCEL_APP)

    def tearDown(self):
        status, log = self.srv.stop()
        self.assertEqual(status, 0, log)

    def state(self):
        status, _, body = harness.get(self.srv.port, "/state")
        self.assertEqual(status, 200)
        return json.loads(body)

    def wait_started(self, n, timeout=5.0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.state()["started"] >= n:
                return
            time.sleep(0.05)
        self.fail("the handlers did not start: %r" % self.state())

    def test_disconnect_during_await_cancels_it(self):
        c = Client(self.srv.port)
        c.request("GET", "/sleep?ms=800")
        self.wait_started(1)
        t0 = time.time()
        c.close()
        # Query after the sleep would have ended.
        time.sleep(max(0, 1.3 - (time.time() - t0)))
        st = self.state()
        self.assertEqual(st["started"], 1)
        self.assertEqual(st["finished_after_await"], 0)
        self.assertEqual(st["cancelled"], 1)
        self.assertEqual(st["sleep_results"], ["cancelled"])
        self.assertEqual(st["cancelled_with_timer"], 0)
        m = self.srv.wait_log(r'127\.0\.0\.1 - "GET /sleep\?ms=800" 499 0 ')
        self.assertIsNotNone(m, self.srv.log())
        self.assertTrue(self.srv.alive())

    def test_reset_during_await_cancels_it(self):
        c = Client(self.srv.port)
        c.request("GET", "/sleep?ms=800")
        self.wait_started(1)
        # SO_LINGER 0: close() sends an RST instead of a FIN.
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()
        time.sleep(1.2)
        st = self.state()
        self.assertEqual((st["started"], st["finished_after_await"], st["cancelled"]),
                         (1, 0, 1))
        self.assertIsNotNone(self.srv.wait_log(r'"GET /sleep\?ms=800" 499 '))

    def test_a_completed_request_is_not_cancelled(self):
        with Client(self.srv.port) as c:
            c.request("GET", "/sleep?ms=50")
            self.assertEqual(c.response().json(), {"slept_ms": 50})
        st = self.state()
        self.assertEqual((st["started"], st["finished_after_await"], st["cancelled"]),
                         (1, 1, 0))
        self.assertEqual(st["sleep_results"], ["slept"])

    def test_many_disconnects_and_the_others_still_answered(self):
        gone = [Client(self.srv.port) for _ in range(30)]
        stay = [Client(self.srv.port) for _ in range(10)]
        for c in gone + stay:
            c.request("GET", "/sleep?ms=600")
        self.wait_started(40)
        for c in gone:
            c.close()
        for c in stay:
            r = c.response()
            self.assertEqual(r.status, 200)
            c.close()
        st = self.state()
        self.assertEqual(st["started"], 40)
        self.assertEqual(st["finished_after_await"], 10)
        self.assertEqual(st["cancelled"], 30)
        self.assertEqual(st["cancelled_with_timer"], 0)
        time.sleep(0.3)
        self.assertEqual(self.srv.log().count('"GET /sleep?ms=600" 499 '), 30)

    def test_disconnect_with_pipelined_requests_behind(self):
        # The first request is cancelled; the ones queued behind it never
        # reach Lua.
        c = Client(self.srv.port)
        c.send(b"GET /sleep?ms=600 HTTP/1.1\r\nHost: t\r\n\r\n" * 3)
        self.wait_started(1)
        c.close()
        time.sleep(1.0)
        st = self.state()
        self.assertEqual((st["started"], st["finished_after_await"], st["cancelled"]),
                         (1, 0, 1))

    def test_half_close_during_await(self):
        # A client that shuts down its sending side mid-request is treated
        # as gone, like uvicorn does: the wait is cancelled, and the
        # connection reset (nothing more will be sent on it).
        c = Client(self.srv.port)
        c.request("GET", "/sleep?ms=600")
        self.wait_started(1)
        c.sock.shutdown(socket.SHUT_WR)
        c.sock.settimeout(5)
        with self.assertRaises(ConnectionResetError):
            while c.sock.recv(65536):
                pass
        c.close()
        st = self.state()
        self.assertEqual((st["started"], st["cancelled"]), (1, 1))

    def test_client_gone_leaves_no_time_wait(self):
        # The server resets a connection whose client left mid-request: the
        # client's port is free at once, not held in TIME_WAIT (a client
        # that reconnects at once on loopback reuses such ports, and its
        # SYN would wait a second to be resent).
        c = Client(self.srv.port)
        c.request("GET", "/sleep?ms=800")
        self.wait_started(1)
        port = c.sock.getsockname()[1]
        c.close()
        # Waited for on the access log, not with a request: a new
        # connection could take the freed port (and leave its own
        # TIME_WAIT on it).
        m = self.srv.wait_log(r'"GET /sleep\?ms=800" 499 ', 5)
        self.assertIsNotNone(m, self.srv.log())
        self.assertEqual(tcp_states(port, self.srv.port), [],
                         "the client's end after the server closed")
        self.assertEqual(self.state()["cancelled"], 1)


def tcp_states(port, peer_port):
    """The TCP states (hex, as /proc/net/tcp has them) of the sockets from
    local port `port` to `peer_port` (IPv4 loopback here)."""
    found = []
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if (int(fields[1].split(":")[1], 16) == port and
                    int(fields[2].split(":")[1], 16) == peer_port):
                found.append(fields[3])
    return found


if __name__ == "__main__":
    unittest.main()
