"""--workers N against the real binary: a master that forks workers which
all serve, replaces one killed under load within 2 s (only its own requests
in flight fail), reloads on SIGHUP under a bounded wrk run with no socket
error and no non-2xx answer, keeps the old workers when the new code does
not load, kills a worker whose loop is blocked (naming the route), counts
10,000 increments of one shared counter across 4 workers exactly, and does
not hang when a worker dies holding the shared dictionary's lock. Every
process is stopped by pid, also when a test fails."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest

import harness

APP = "tests/apps/workers_app.lua"


def children(pid):
    """The pids whose parent is pid (from /proc)."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name) as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] != "Z" and int(fields[1]) == pid:
            out.append(int(name))
    return sorted(out)


def get_json(port, path, timeout=5.0, headers=""):
    status, _, body = harness.get(port, path, timeout=timeout, headers=headers)
    return status, json.loads(body) if body else None


def wait_for(pred, timeout, step=0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(step)
    return pred()


def pids_seen(port, n=64):
    """Open n connections at once, ask /whoami on each: the pids that
    answered."""
    socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(n)]
    try:
        for s in socks:
            s.sendall(b"GET /whoami HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        pids = set()
        for s in socks:
            data = harness.read_until_close(s, 5)
            pids.add(json.loads(data.split(b"\r\n\r\n", 1)[1])["pid"])
        return pids
    finally:
        for s in socks:
            s.close()


class Master(harness.Server):
    """A luaserve master: its workers are its children."""

    def workers(self):
        return children(self.proc.pid)

    def wait_workers(self, n, timeout=10):
        ok = wait_for(lambda: len(self.workers()) == n and
                      self.log().count(" ready") >= n, timeout)
        if not ok:
            raise AssertionError("wanted %d workers, have %s:\n%s"
                                 % (n, self.workers(), self.log()))


def start(test, *args, env=None, workers=2):
    srv = Master(APP, "--workers", str(workers), *args, env=env)
    test.addCleanup(lambda: srv.alive() and srv.stop(signal.SIGKILL))
    # never leave a worker behind, whatever happened to the master
    test.addCleanup(lambda: [os.kill(p, signal.SIGKILL) for p in
                             children(srv.proc.pid)] if srv.alive() else None)
    srv.wait_workers(workers)
    return srv


class WorkersTest(unittest.TestCase):
    def test_every_worker_serves_and_sigterm_drains_all(self):
        for n in (2, 4):
            srv = start(self, "--timeout-graceful-shutdown", "5", workers=n)
            workers = srv.workers()
            self.assertEqual(len(workers), n)
            seen = set()
            for _ in range(5):
                seen |= pids_seen(srv.port)
                if seen == set(workers):
                    break
            self.assertEqual(seen, set(workers), srv.log())
            self.assertNotIn(srv.proc.pid, seen)   # the master serves nothing
            self.assertRegex(srv.log(), r"serving %s on http://127\.0\.0\.1:%d with %d "
                             r"workers \(master %d" % (re.escape(APP), srv.port, n,
                                                       srv.proc.pid))
            for pid in workers:
                self.assertRegex(srv.log(), r"worker %d started \(slot \d+\)" % pid)
            # SIGTERM: a request in flight finishes, every worker exits, 0
            c = harness.Client(srv.port)
            c.request("GET", "/sleep?ms=600")
            time.sleep(0.2)
            srv.proc.send_signal(signal.SIGTERM)
            r = c.response()
            self.assertEqual(r.status, 200)
            self.assertEqual(r.headers.get("connection"), "close")
            status, log = srv.wait(15)
            self.assertEqual(status, 0, log)
            self.assertIn("SIGTERM: stopping %d workers" % n, log)
            for pid in workers:
                self.assertIn("worker %d exited with status 0" % pid, log)
                # and is gone (a worker that outlived its master would be
                # re-parented, not gone)
                self.assertTrue(wait_for(lambda: not os.path.exists("/proc/%d" % pid), 2),
                                "worker %d outlived its master" % pid)

    def test_counter_is_exact_across_four_workers(self):
        srv = start(self, "--no-access-log", workers=4)
        counts, errors = [], []
        lock = threading.Lock()

        def client(k):
            got = []
            try:
                c = None
                for i in range(1250):
                    if c is None or i % 50 == 0:   # new connections: other workers
                        if c:
                            c.close()
                        c = harness.Client(srv.port)
                    c.request("GET", "/counter")
                    got.append(json.loads(c.response().body)["count"])
                c.close()
            except Exception as e:   # noqa: BLE001 - reported below
                errors.append(repr(e))
            with lock:
                counts.extend(got)

        threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        self.assertEqual(errors, [])
        self.assertEqual(sorted(counts), list(range(1, 10001)))
        status, body = get_json(srv.port, "/shared")
        self.assertEqual(body["verify"], True)

    def test_pid_file_and_worker_slot(self):
        d = tempfile.mkdtemp(prefix="luaserve-pid-")
        self.addCleanup(shutil.rmtree, d, True)
        pidfile = os.path.join(d, "luaserve.pid")
        srv = start(self, "--pid", pidfile)
        with open(pidfile) as f:
            self.assertEqual(int(f.read()), srv.proc.pid)
        status, _ = srv.stop()
        self.assertEqual(status, 0)
        self.assertFalse(os.path.exists(pidfile))


class FailureTest(unittest.TestCase):
    def test_killed_worker_is_replaced_within_2s_and_only_its_requests_fail(self):
        srv = start(self, "--no-access-log")
        victim = srv.workers()[0]
        results = []   # (start time, ok, pid or error)
        stop = time.time() + 3.0
        lock = threading.Lock()

        def client():
            while time.time() < stop:
                t0 = time.time()
                try:
                    status, body = get_json(srv.port, "/sleep?ms=100", timeout=5)
                    r = (t0, status == 200, body["pid"])
                except OSError as e:
                    r = (t0, False, repr(e))
                with lock:
                    results.append(r)

        threads = [threading.Thread(target=client) for _ in range(8)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        killed_at = time.time()
        os.kill(victim, signal.SIGKILL)
        replaced = wait_for(lambda: len(srv.workers()) == 2 and victim not in srv.workers()
                            and srv.log().count(" ready") >= 3, 2.0, 0.02)
        took = time.time() - killed_at
        for t in threads:
            t.join(10)
        self.assertTrue(replaced, "not replaced within 2 s: %s\n%s" % (srv.workers(), srv.log()))
        self.assertLess(took, 2.0)
        failed = [r for r in results if not r[1]]
        # only what was in flight on the killed worker failed: at most one
        # request per client thread, all started before the kill
        self.assertLessEqual(len(failed), 8, failed)
        for t0, _, err in failed:
            self.assertLess(t0, killed_at + 0.01, err)
        after = [r for r in results if r[0] > killed_at + 0.05]
        self.assertTrue(after and all(ok for _, ok, _ in after))
        self.assertRegex(srv.log(), r"worker %d \(slot \d+\) was killed by SIGKILL; "
                         r"starting a new one" % victim)

    def test_blocked_worker_is_killed_naming_the_route(self):
        srv = start(self, "--timeout-worker-healthcheck", "1", "--no-access-log")
        before = srv.workers()
        c = harness.Client(srv.port)
        # Requests of another route first, on the same connection (so the
        # same worker): the finished request's task serves the next one,
        # and what the worker runs must still be the new request.
        for _ in range(3):
            c.request("GET", "/whoami")
            self.assertEqual(c.response().status, 200)
        c.request("GET", "/block")
        m = srv.wait_log(r"worker (\d+) \(slot \d+\) has held its loop for [\d.]+ s "
                         r"running GET /block \(route /block\) "
                         r"\(--timeout-worker-healthcheck 1\): killing it", 8)
        self.assertTrue(m, srv.log())
        blocked = int(m.group(1))
        self.assertIn(blocked, before)
        self.assertTrue(c.wait_closed(5))   # its connection died with it
        c.close()
        srv.wait_workers(2)
        self.assertNotIn(blocked, srv.workers())
        # the others served meanwhile, and the new one serves
        self.assertEqual(pids_seen(srv.port, 16) - set(srv.workers()), set())

    def test_app_that_does_not_load_stops_the_master_with_status_2(self):
        code, _, err = harness.run_cli(["tests/apps/load_error.lua", "--workers", "2",
                                        "--host", "127.0.0.1",
                                        "--port", str(harness.free_port())], timeout=20)
        self.assertEqual(code, 2, err)
        self.assertRegex(err, r"cannot load app: .*load_error\.lua:\d+")
        self.assertEqual(err.count("cannot load app"), 1, err)   # once, not per worker

    def test_worker_killed_holding_the_shared_lock_does_not_hang_the_others(self):
        srv = start(self, "--no-access-log", "--timeout-graceful-shutdown", "1")
        repaired = None
        for attempt in range(60):   # a kill lands inside the lock most times, not all
            c = harness.Client(srv.port)
            c.request("GET", "/hammer?id=%d" % attempt)
            # the worker running /hammer writes its pid first
            def hammer_pid():
                try:
                    s, body = get_json(srv.port, "/shared?key=hammer:pid:%d" % attempt,
                                       timeout=2)
                    return body.get("value")
                except OSError:
                    return None
            pid = wait_for(hammer_pid, 5)
            self.assertTrue(pid, srv.log())
            time.sleep(0.05 + 0.01 * (attempt % 7))
            os.kill(pid, signal.SIGKILL)
            c.close()
            repaired = srv.wait_log(r"died holding the dictionary's lock; repaired it", 0.5)
            srv.wait_workers(2)
            if repaired:
                break
            # the lock was free when the kill landed: try again
        self.assertTrue(repaired, "the kill never landed inside the lock:\n" + srv.log())
        # the others go on, quickly, with a sound dictionary
        t0 = time.time()
        status, body = get_json(srv.port, "/counter", timeout=2)
        self.assertEqual(status, 200)
        self.assertLess(time.time() - t0, 1.0)
        status, body = get_json(srv.port, "/shared?key=test:counter")
        self.assertEqual(body["verify"], True)
        self.assertGreaterEqual(body["stats"]["repairs"], 1)
        # and it still stores
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
            data = json.dumps({"key": "after", "value": {"ok": 1}}).encode()
            s.sendall(b"POST /shared HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n%s" % (len(data), data))
            st, _, b, _ = harness.read_response(s)
            self.assertEqual(st, 200)
        status, body = get_json(srv.port, "/shared?key=after")
        self.assertEqual(body["value"], {"ok": 1})


class ReloadTest(unittest.TestCase):
    """SIGHUP: a temporary app folder whose code the test changes."""

    APP_CODE = '''local luaserve = require "luaserve"
local core = require "luaserve.core"
local app = luaserve.app()
app:get("/v", function() return { v = "%s", pid = core.getpid() } end)
app:get("/plaintext", function() return "Hello, World!" end)
return app
'''

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="luaserve-hup-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.write("one")

    def write(self, version, broken=False):
        code = self.APP_CODE % version
        if broken:
            code = code.replace("return app", "return app +")
        path = os.path.join(self.dir, "app.lua")
        with open(path + ".tmp", "w") as f:
            f.write(code)
        os.rename(path + ".tmp", path)

    def start(self, *args):
        srv = Master(self.dir, "--workers", "2", *args)
        self.addCleanup(lambda: srv.alive() and srv.stop(signal.SIGKILL))
        srv.wait_workers(2)
        return srv

    def version(self, srv):
        return get_json(srv.port, "/v")[1]["v"]

    def test_sighup_under_wrk_loses_nothing_and_loads_the_new_code(self):
        srv = self.start("--no-access-log")
        old = set(srv.workers())
        self.assertEqual(self.version(srv), "one")
        self.write("two")
        wrk = subprocess.Popen(["wrk", "-t1", "-c16", "-d4s",
                                "http://127.0.0.1:%d/plaintext" % srv.port],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.addCleanup(lambda: wrk.poll() is None and wrk.kill())
        time.sleep(1.0)
        srv.proc.send_signal(signal.SIGHUP)
        out = wrk.communicate(timeout=30)[0].decode()
        self.assertEqual(wrk.returncode, 0, out)
        self.assertRegex(out, r"\d+ requests in", out)
        self.assertNotIn("Socket errors", out)
        self.assertNotIn("Non-2xx", out)
        self.assertTrue(wait_for(lambda: len(set(srv.workers()) & old) == 0 and
                                 len(srv.workers()) == 2, 10), srv.log())
        self.assertEqual(self.version(srv), "two")
        self.assertIn("SIGHUP: reloading", srv.log())
        status, log = srv.stop()
        self.assertEqual(status, 0, log)

    def test_new_code_that_does_not_load_keeps_the_old_workers(self):
        srv = self.start()
        old = srv.workers()
        self.write("two", broken=True)
        srv.proc.send_signal(signal.SIGHUP)
        self.assertTrue(srv.wait_log(r"reload failed, the old workers keep serving: "
                                     r"cannot load app: .*app\.lua:\d+", 10), srv.log())
        time.sleep(0.3)
        self.assertEqual(srv.workers(), old)
        self.assertEqual(self.version(srv), "one")
        # fixed: the next SIGHUP goes through
        self.write("three")
        srv.proc.send_signal(signal.SIGHUP)
        self.assertTrue(wait_for(lambda: self.version(srv) == "three" and
                                 not set(srv.workers()) & set(old), 10), srv.log())
        status, log = srv.stop()
        self.assertEqual(status, 0, log)

    def test_sigttin_sigttou_and_max_requests(self):
        srv = self.start("--max-requests", "40", "--max-requests-jitter", "5",
                         "--no-access-log")
        srv.proc.send_signal(signal.SIGTTIN)
        self.assertTrue(wait_for(lambda: len(srv.workers()) == 3, 5), srv.log())
        srv.proc.send_signal(signal.SIGTTOU)
        self.assertTrue(wait_for(lambda: len(srv.workers()) == 2, 5), srv.log())
        srv.proc.send_signal(signal.SIGTTOU)
        self.assertTrue(wait_for(lambda: len(srv.workers()) == 1 and
                                 "SIGTTOU: 1 workers" in srv.log(), 10), srv.log())
        first = srv.workers()
        # a worker retires after 40 to 45 requests: a new one starts and
        # takes over, then the old one drains; no request fails meanwhile
        pids = set()
        deadline = time.time() + 30
        while srv.log().count("served its --max-requests") < 3 and time.time() < deadline:
            status, body = get_json(srv.port, "/v")
            self.assertEqual(status, 200)
            pids.add(body["pid"])
        self.assertGreaterEqual(srv.log().count("served its --max-requests"), 3, srv.log())
        self.assertGreaterEqual(len(pids), 3)
        self.assertNotEqual(srv.workers(), first)
        status, log = srv.stop()
        self.assertEqual(status, 0, log)


if __name__ == "__main__":
    unittest.main()
