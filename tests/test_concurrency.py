"""Concurrency: many requests waiting at once cost the loop nothing. 500
concurrent /sleep?ms=200 (apps/bench) are all answered, together, in well
under 3 s (they would take 100 s one after another)."""
import selectors
import socket
import time
import unittest

import harness

N = 500


def many_requests(port, paths, timeout=20.0):
    """Open one connection per path at once, send every request, read every
    answer with a selector. Returns (list of (status, body), seconds)."""
    sel = selectors.DefaultSelector()
    t0 = time.time()
    conns = []
    try:
        for i, path in enumerate(paths):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            req = ("GET %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n" % path).encode()
            st = {"sock": s, "out": req, "in": b"", "i": i}
            conns.append(st)
            sel.register(s, selectors.EVENT_WRITE, st)
        done = 0
        deadline = t0 + timeout
        while done < len(conns) and time.time() < deadline:
            for key, ev in sel.select(timeout=0.5):
                st = key.data
                s = st["sock"]
                if ev & selectors.EVENT_WRITE:
                    try:
                        n = s.send(st["out"])
                    except (BlockingIOError, InterruptedError):
                        continue
                    st["out"] = st["out"][n:]
                    if not st["out"]:
                        sel.modify(s, selectors.EVENT_READ, st)
                    continue
                try:
                    b = s.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except ConnectionResetError:
                    b = b""
                if b:
                    st["in"] += b
                else:   # Connection: close: the answer is complete
                    sel.unregister(s)
                    done += 1
        elapsed = time.time() - t0
    finally:
        for st in conns:
            st["sock"].close()
        sel.close()
    results = []
    for st in conns:
        head, _, body = st["in"].partition(b"\r\n\r\n")
        status = int(head.split(b" ")[1]) if head.startswith(b"HTTP/1.1 ") else None
        results.append((status, body))
    return results, elapsed


class ConcurrencyTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        # Each connection is a descriptor here and in the server.
        harness.raise_nofile(4 * N + 256)
        cls.srv = harness.Server("apps/bench", "--no-access-log")

    @classmethod
    def tearDownClass(cls):
        status, _ = cls.srv.stop()
        assert status == 0, status

    def test_500_concurrent_sleeps_all_answered_together(self):
        results, elapsed = many_requests(self.srv.port, ["/sleep?ms=200"] * N)
        statuses = [r[0] for r in results]
        self.assertEqual(statuses.count(200), N, "not all answered 200: %r"
                         % sorted(set(statuses), key=str))
        for _, body in results:
            self.assertEqual(body, b'{"slept_ms":200}')
        # Sequentially this is 100 s; concurrently about 0.2 s plus overhead.
        self.assertLess(elapsed, 3.0)
        self.assertTrue(self.srv.alive())

    def test_each_answer_is_its_own(self):
        paths = ["/sleep?ms=%d" % (100 + i % 200) for i in range(200)]
        results, _ = many_requests(self.srv.port, paths)
        for path, (status, body) in zip(paths, results):
            self.assertEqual(status, 200)
            self.assertEqual(body, b'{"slept_ms":%s}' % path.split("=")[1].encode())


if __name__ == "__main__":
    unittest.main()
