"""Graceful shutdown: SIGINT and SIGTERM stop accepting, let requests in
flight finish, close idle keep-alive connections and exit 0;
--timeout-graceful-shutdown bounds the wait."""
import signal
import socket
import time
import unittest

import harness
from harness import Client


class GracefulShutdownTest(unittest.TestCase):
    def start(self, *args):
        srv = harness.Server("apps/bench", *args)
        self.addCleanup(lambda: srv.alive() and srv.stop(signal.SIGKILL))
        return srv

    def check_drain(self, sig):
        srv = self.start()
        busy = Client(srv.port)
        idle = Client(srv.port)
        idle.request("GET", "/json")
        self.assertEqual(idle.response().status, 200)
        busy.request("GET", "/sleep?ms=500")
        time.sleep(0.15)   # the sleep is in flight
        t0 = time.time()
        srv.proc.send_signal(sig)
        # the idle keep-alive connection is closed at once
        self.assertTrue(idle.wait_closed(2), "idle connection kept open")
        self.assertLess(time.time() - t0, 1.0)
        # the request in flight still gets its answer, then the close
        r = busy.response()
        self.assertEqual(r.status, 200)
        self.assertEqual(r.json(), {"slept_ms": 500})
        self.assertEqual(r.headers.get("connection"), "close")
        self.assertTrue(busy.wait_closed(3))
        busy.close()
        idle.close()
        status, log = srv.wait(timeout=10)
        self.assertEqual(status, 0, log)
        self.assertLess(time.time() - t0, 5)
        self.assertIn("shutting down", log)
        self.assertRegex(log, r'"GET /sleep\?ms=500" 200 ')

    def test_sigterm_lets_requests_in_flight_finish(self):
        self.check_drain(signal.SIGTERM)

    def test_sigint_lets_requests_in_flight_finish(self):
        self.check_drain(signal.SIGINT)

    def test_no_new_connections_while_draining(self):
        srv = self.start()
        busy = Client(srv.port)
        busy.request("GET", "/sleep?ms=800")
        time.sleep(0.15)
        srv.proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        self.assertTrue(srv.alive())   # still draining
        with self.assertRaises(OSError):
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=2)
            try:
                # Should the connect race the close, nothing may answer.
                s.sendall(b"GET /json HTTP/1.1\r\nHost: t\r\n\r\n")
                if not s.recv(100):
                    raise ConnectionResetError("closed")
            finally:
                s.close()
        self.assertEqual(busy.response().status, 200)
        busy.close()
        self.assertEqual(srv.wait()[0], 0)

    def test_pipelined_requests_behind_the_one_in_flight_are_dropped(self):
        # After the signal only the request in Lua is answered, with a close.
        srv = self.start()
        c = Client(srv.port)
        c.send(b"GET /sleep?ms=400 HTTP/1.1\r\nHost: t\r\n\r\n"
               b"GET /json HTTP/1.1\r\nHost: t\r\n\r\n")
        time.sleep(0.15)
        srv.proc.send_signal(signal.SIGTERM)
        r = c.response()
        self.assertEqual(r.status, 200)
        self.assertEqual(r.headers.get("connection"), "close")
        self.assertTrue(c.wait_closed(4))
        c.close()
        self.assertEqual(srv.wait()[0], 0)

    def test_timeout_graceful_shutdown_bounds_the_wait(self):
        srv = self.start("--timeout-graceful-shutdown", "1")
        c = Client(srv.port, timeout=10)
        c.request("GET", "/sleep?ms=10000")
        time.sleep(0.15)
        t0 = time.time()
        srv.proc.send_signal(signal.SIGTERM)
        # cut after about 1 s: closed without an answer
        self.assertTrue(c.wait_closed(8))
        self.assertEqual(c.buf, b"")
        c.close()
        status, log = srv.wait(timeout=10)
        elapsed = time.time() - t0
        self.assertEqual(status, 0, log)
        self.assertGreater(elapsed, 0.7)
        self.assertLess(elapsed, 5)
        self.assertRegex(log, r'"GET /sleep\?ms=10000" 499 ')

    def test_idle_server_exits_at_once(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            with self.subTest(sig):
                srv = self.start()
                self.assertEqual(harness.get(srv.port, "/json")[0], 200)
                t0 = time.time()
                status, log = srv.stop(sig)
                self.assertEqual(status, 0, log)
                self.assertLess(time.time() - t0, 3)
                self.assertIn("stopped", log)

    def test_second_signal_stops_without_waiting(self):
        srv = self.start("--timeout-graceful-shutdown", "30")
        c = Client(srv.port, timeout=10)
        c.request("GET", "/sleep?ms=20000")
        time.sleep(0.15)
        t0 = time.time()
        srv.proc.send_signal(signal.SIGINT)
        time.sleep(0.3)
        srv.proc.send_signal(signal.SIGINT)
        self.assertTrue(c.wait_closed(5))
        c.close()
        status, log = srv.wait(timeout=10)
        self.assertEqual(status, 0, log)
        self.assertLess(time.time() - t0, 5)


if __name__ == "__main__":
    unittest.main()
