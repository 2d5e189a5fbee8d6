"""The transport under every connection, against the real binary: pipelined
answers batched into one write, the send timeout, a keep-alive timer that
waits for the response to be written, graceful shutdown that waits for it
too, a stream whose client resets, and a detached task that outlives its
request. Uses tests/apps/transport_app.lua."""
import json
import os
import signal
import socket
import struct
import time
import unittest

import harness
from harness import Client

HERE = os.path.dirname(os.path.abspath(__file__))
APP = os.path.join(HERE, "apps", "transport_app.lua")
MB = 1024 * 1024


def segments_in(sock):
    """TCP segments this socket has received (Linux TCP_INFO tcpi_segs_in):
    the server's sends as the client sees them (on loopback with
    TCP_NODELAY, one segment per send of a few KB). /proc/PID/io's syscw
    would not do: it counts write(2), and the server sends with send(2)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return struct.unpack_from("I", info, 140)[0]


def slow_socket(port, wrap=None):
    """A connection with a small receive buffer (the server's writes wait
    on it soon); wrap(sock) may put TLS on it."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    s.connect(("127.0.0.1", port))
    return wrap(s) if wrap else s


def read_all(sock, errors=(ConnectionError, socket.timeout)):
    """Bytes read until EOF or an error (the server cut us off)."""
    got = 0
    sock.settimeout(5)
    try:
        while True:
            b = sock.recv(1 << 20)
            if not b:
                break
            got += len(b)
    except errors:
        pass
    return got


def read_paced(sock, total, seconds, deadline):
    """Read up to `total` bytes at a steady rate that takes `seconds`;
    returns the bytes read before EOF, an error or the deadline."""
    rate = total / seconds
    got = 0
    t0 = time.time()
    sock.settimeout(1.0)
    while got < total and time.time() < deadline:
        allowed = rate * (time.time() - t0) - got
        if allowed < 16384:
            time.sleep(0.005)
            continue
        try:
            b = sock.recv(min(int(allowed), 256 * 1024))
        except socket.timeout:
            continue
        except ConnectionError:
            break
        if not b:
            break
        got += len(b)
    return got


def head_of(sock):
    """Read a response head; returns (status, content-length, bytes of the
    body already read)."""
    status, headers, rest = harness.read_head(sock)
    length = headers.get("content-length")
    return status, length and int(length), len(rest)


class PipelineBatchTest(unittest.TestCase):
    def test_pipelined_answers_ready_together_go_out_in_one_write(self):
        with harness.Server("apps/bench", "--no-access-log") as srv:
            with Client(srv.port) as c:
                c.request("GET", "/plaintext")     # warm: the first request loads code
                self.assertEqual(c.response().status, 200)
                time.sleep(0.2)
                before = segments_in(c.sock)
                c.send(b"GET /plaintext HTTP/1.1\r\nHost: t\r\n\r\n" * 16)
                for _ in range(16):
                    r = c.response()
                    self.assertEqual(r.body, b"Hello, World!")
                after = segments_in(c.sock)
                # The same 16 one at a time: a segment each (the measure
                # can tell).
                one_by_one = after
                for _ in range(16):
                    c.send(b"GET /plaintext HTTP/1.1\r\nHost: t\r\n\r\n")
                    self.assertEqual(c.response().body, b"Hello, World!")
                one_by_one = segments_in(c.sock) - one_by_one
            # One send for the 16 answers (two if the kernel split the
            # requests across reads, a third for a lone ACK); before the
            # stream layer it was 16.
            self.assertLessEqual(after - before, 3, "%d segments" % (after - before))
            self.assertGreaterEqual(one_by_one, 16)


class SlowReaderTest(unittest.TestCase):
    def test_a_reader_that_stops_is_cut_off_after_timeout_send(self):
        with harness.Server(APP, "--timeout-send", "1") as srv:
            s = slow_socket(srv.port)
            s.sendall(b"GET /big?mb=20 HTTP/1.1\r\nHost: t\r\n\r\n")
            time.sleep(3.5)   # read nothing: no progress for over a second
            got = read_all(s)
            s.close()
            self.assertLess(got, 10 * MB, "the stalled client was never cut off")
            self.assertGreater(got, 0)
            # The server goes on.
            status, _, body = harness.get(srv.port, "/state")
            self.assertEqual(status, 200)
            self.assertTrue(srv.wait_log(r"send timeout", 2), srv.log())

    def test_a_slow_steady_reader_gets_every_byte_past_the_keep_alive_timeout(self):
        with harness.Server(APP, "--timeout-keep-alive", "1") as srv:
            s = slow_socket(srv.port)
            s.sendall(b"GET /big?mb=50 HTTP/1.1\r\nHost: t\r\n\r\n")
            status, length, already = head_of(s)
            self.assertEqual((status, length), (200, 50 * MB))
            t0 = time.time()
            got = already + read_paced(s, 50 * MB - already, 8.0, time.time() + 30)
            self.assertEqual(got, 50 * MB)
            self.assertGreater(time.time() - t0, 5, "not a slow reader")
            # Written completely: now the keep-alive timer runs, and the
            # connection still carries a request.
            s.sendall(b"GET /state HTTP/1.1\r\nHost: t\r\n\r\n")
            status, _, _ = head_of(s)
            self.assertEqual(status, 200)
            s.close()

    def test_graceful_shutdown_waits_for_a_response_being_written(self):
        srv = harness.Server(APP, "--timeout-graceful-shutdown", "20")
        try:
            s = slow_socket(srv.port)
            s.sendall(b"GET /big?mb=20 HTTP/1.1\r\nHost: t\r\n\r\n")
            status, length, already = head_of(s)
            self.assertEqual((status, length), (200, 20 * MB))
            srv.proc.send_signal(signal.SIGTERM)
            got = already + read_paced(s, 20 * MB - already, 3.0, time.time() + 30)
            self.assertEqual(got, 20 * MB)
            s.close()
            status, log = srv.wait()
            self.assertEqual(status, 0, log)
        finally:
            srv.stop()


class DeadlinesTest(unittest.TestCase):
    """Every connection's deadline is an entry in one heap per process
    (stream.c), behind one timer."""

    def test_many_connections_time_out_each_on_its_own_deadline(self):
        # Three waves of idle keep-alive connections, 0.6 s apart, and one
        # connection that keeps asking: each idle one is closed about the
        # keep-alive timeout after its answer (not before, not much after),
        # the waves in their order; the busy one's deadline keeps moving
        # and it stays open.
        import selectors
        with harness.Server(APP, "--timeout-keep-alive", "1") as srv:
            busy = Client(srv.port)
            answered, clients = [], []
            for wave in range(3):
                if wave:
                    time.sleep(0.6)
                for _ in range(10):
                    c = Client(srv.port)
                    c.request("GET", "/state")
                    self.assertEqual(c.response().status, 200)
                    answered.append(time.time())
                    clients.append(c)
                busy.request("GET", "/state")
                self.assertEqual(busy.response().status, 200)
            sel = selectors.DefaultSelector()
            for i, c in enumerate(clients):
                sel.register(c.sock, selectors.EVENT_READ, i)
            closed = {}
            end = time.time() + 10
            next_busy = time.time() + 0.3
            while len(closed) < len(clients) and time.time() < end:
                for key, _ in sel.select(timeout=0.05):
                    closed[key.data] = time.time()
                    sel.unregister(key.fileobj)
                if time.time() >= next_busy:
                    busy.request("GET", "/state")
                    self.assertEqual(busy.response().status, 200)
                    next_busy = time.time() + 0.3
            sel.close()
            self.assertEqual(len(closed), len(clients), "some idle connection stayed open")
            for i in range(len(clients)):
                waited = closed[i] - answered[i]
                self.assertGreater(waited, 0.7, "connection %d closed early" % i)
                self.assertLess(waited, 4.0, "connection %d closed late" % i)
                self.assertTrue(clients[i].wait_closed(1), "connection %d" % i)
            self.assertLess(max(closed[i] for i in range(10)),
                            min(closed[i] for i in range(20, 30)))
            # the busy one outlived every idle one: it still answers
            busy.request("GET", "/state")
            self.assertEqual(busy.response().status, 200)
            for c in clients + [busy]:
                c.close()


class ClosedRequestTest(harness.ServerTest):
    SERVER = (APP,)

    def state(self):
        status, _, body = harness.get(self.srv.port, "/state")
        self.assertEqual(status, 200)
        return json.loads(body)

    def test_a_stream_write_to_a_client_that_reset_gives_closed(self):
        s = slow_socket(self.srv.port)
        s.sendall(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")
        s.recv(65536)
        time.sleep(0.2)   # the stream fills the socket and waits
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()         # an RST
        deadline = time.time() + 5
        while time.time() < deadline and not self.state()["stream_result"]:
            time.sleep(0.05)
        self.assertEqual(self.state()["stream_result"], "closed")
        # The scheduler is healthy: many requests after it are served.
        for _ in range(20):
            status, _, _ = harness.get(self.srv.port, "/state")
            self.assertEqual(status, 200)

    def test_a_write_that_fails_inside_the_call_leaves_the_scheduler_healthy(self):
        # The task must resume from its sleep(0) before the loop reads the
        # reset (else the request is cancelled and never writes again): a
        # race, so a few tries; a write that fails must always say "closed".
        results = []
        for _ in range(8):
            s = socket.create_connection(("127.0.0.1", self.srv.port))
            s.sendall(b"GET /stream-then-block HTTP/1.1\r\nHost: t\r\n\r\n")
            s.recv(65536)     # the head and the first chunk
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()         # an RST while the server holds its loop
            deadline = time.time() + 2
            while time.time() < deadline and not self.state()["stream_result"]:
                time.sleep(0.05)
            results.append(self.state()["stream_result"])
            if results[-1]:
                break
        self.assertEqual(results[-1], "closed", results)
        self.assertEqual(set(results[:-1]), {False} if len(results) > 1 else set(), results)
        for _ in range(300):   # more than the idle runner coroutines kept
            status, _, _ = harness.get(self.srv.port, "/state")
            self.assertEqual(status, 200)

    def test_a_detached_task_reading_req_client_read_during_the_request(self):
        # The access log reads req.client while the request runs: the
        # detached task sees that value.
        with Client(self.srv.port) as c:
            c.request("GET", "/detached", [("Connection", "close")])
            self.assertEqual(c.response().status, 200)
            self.assertTrue(c.wait_closed(5))
        time.sleep(0.6)
        self.assertEqual(self.state()["detached"], {"ok": True, "value": "127.0.0.1"})


class StaleHandleTest(unittest.TestCase):
    def test_a_detached_task_reading_req_client_after_the_request_gets_a_clear_error(self):
        # No access log: nothing read req.client while the request ran, so
        # the detached task asks the core about a connection that is gone.
        with harness.Server(APP, "--no-access-log") as srv:
            with Client(srv.port) as c:
                c.request("GET", "/detached", [("Connection", "close")])
                self.assertEqual(c.response().status, 200)
                self.assertTrue(c.wait_closed(5))
            time.sleep(0.6)
            status, _, body = harness.get(srv.port, "/state")
            st = json.loads(body)["detached"]
            self.assertEqual(st["ok"], False, st)
            self.assertIn("the request has finished", st["value"])


if __name__ == "__main__":
    unittest.main()
