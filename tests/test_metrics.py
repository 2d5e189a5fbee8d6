"""--metrics-path against the real binary: the counts are exact (also with
two workers, whichever one answered each request and whichever answers the
scrape, and after a worker is killed), the gauges show what is in flight,
and Prometheus' own parser (promtool check metrics) accepts the text."""
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import unittest

import harness
from test_workers import Master, children, pids_seen, wait_for

APP = "tests/apps/workers_app.lua"


def scrape(port):
    status, headers, body = harness.get(port, "/metrics")
    assert status == 200, status
    assert headers["content-type"].startswith("text/plain; version=0.0.4"), headers
    return body.decode()


def value(text, name, labels=""):
    """The sample's value (0 when absent)."""
    m = re.search(r"^%s%s (\S+)$" % (re.escape(name), re.escape(labels)), text, re.M)
    return float(m.group(1)) if m else 0.0


def promtool_check(test, text):
    promtool = shutil.which("promtool")
    if not promtool:
        test.skipTest("promtool is not installed (make test installs prometheus)")
    p = subprocess.run([promtool, "check", "metrics"], input=text.encode(),
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
    test.assertEqual(p.returncode, 0, p.stdout.decode() + "\n" + text)


class SingleProcessTest(harness.ServerTest):
    SERVER = (APP, "--metrics-path", "/metrics", "--no-access-log", "--threads", "2")

    def test_counts_histogram_gauges_and_promtool(self):
        before = scrape(self.srv.port)
        n0 = value(before, "luaserve_http_requests_total",
                   '{route="/whoami",method="GET",status="200"}')
        for _ in range(25):
            harness.get(self.srv.port, "/whoami")
        for _ in range(3):
            harness.get(self.srv.port, "/nope")
        # in flight: a sleeping request, and a sync one holding a pool thread
        slow = [threading.Thread(target=harness.get, args=(self.srv.port, p))
                for p in ("/sleep?ms=800", "/sync-busy?ms=800")]
        for t in slow:
            t.start()
        time.sleep(0.3)
        text = scrape(self.srv.port)
        for t in slow:
            t.join(10)
        self.assertEqual(value(text, "luaserve_http_requests_total",
                               '{route="/whoami",method="GET",status="200"}'), n0 + 25)
        self.assertEqual(value(text, "luaserve_http_requests_total",
                               '{route="(unmatched)",method="GET",status="404"}'), 3)
        count = value(text, "luaserve_http_request_duration_seconds_count", '{route="/whoami"}')
        self.assertEqual(count, n0 + 25)
        self.assertEqual(value(text, "luaserve_http_request_duration_seconds_bucket",
                               '{route="/whoami",le="+Inf"}'), count)
        self.assertGreater(value(text, "luaserve_http_request_duration_seconds_sum",
                                 '{route="/whoami"}'), 0)
        # the scrape itself and the two slow ones are in flight
        self.assertEqual(value(text, "luaserve_http_requests_in_flight"), 3)
        self.assertGreaterEqual(value(text, "luaserve_http_connections"), 3)
        self.assertEqual(value(text, "luaserve_sync_pool_threads"), 2)
        self.assertEqual(value(text, "luaserve_sync_pool_busy_threads"), 1)
        self.assertGreater(value(text, "luaserve_shared_dict_capacity_bytes"), 0)
        self.assertRegex(text, r'luaserve_event_loop_lag_seconds\{worker="0"\} \S+')
        promtool_check(self, text)
        after = scrape(self.srv.port)
        self.assertEqual(value(after, "luaserve_sync_pool_busy_threads"), 0)
        self.assertEqual(value(after, "luaserve_http_requests_total",
                               '{route="/sleep",method="GET",status="200"}'), 1)


class WorkersTest(unittest.TestCase):
    def test_totals_of_every_worker_survive_a_killed_one(self):
        srv = Master(APP, "--workers", "2", "--metrics-path", "/metrics", "--no-access-log")
        self.addCleanup(lambda: srv.alive() and srv.stop(signal.SIGKILL))
        srv.wait_workers(2)
        seen = set()
        total = 0
        while len(seen) < 2 and total < 640:
            seen |= pids_seen(srv.port, 64)   # 64 /whoami each time
            total += 64
        self.assertEqual(len(seen), 2)
        key = '{route="/whoami",method="GET",status="200"}'
        for _ in range(4):   # any worker's answer gives the totals
            self.assertEqual(value(scrape(srv.port), "luaserve_http_requests_total", key), total)
        text = scrape(srv.port)
        self.assertEqual(value(text, "luaserve_workers"), 2)
        promtool_check(self, text)
        victim = srv.workers()[0]
        os.kill(victim, signal.SIGKILL)
        self.assertTrue(wait_for(lambda: len(srv.workers()) == 2 and victim not in srv.workers()
                                 and srv.log().count(" ready") >= 3, 5), srv.log())
        text = scrape(srv.port)
        self.assertEqual(value(text, "luaserve_http_requests_total", key), total)
        self.assertEqual(value(text, "luaserve_worker_restarts_total"), 1)
        status, log = srv.stop()
        self.assertEqual(status, 0, log)

    def test_bad_options(self):
        for args, msg in ((["--forwarded-allow-ips", "10.0.0.0/99"],
                           "--forwarded-allow-ips 10.0.0.0/99: prefix too long"),
                          (["--forwarded-allow-ips", "proxy.local"],
                           "proxy.local: not an IP address or CIDR"),
                          (["--root-path", "api"], "--root-path api: must start with /"),
                          (["--workers", "500"], "--workers 500: at most 128")):
            code, _, err = harness.run_cli([APP] + args)
            self.assertEqual(code, 2, err)
            self.assertIn(msg, err)

    def test_bad_metrics_path(self):
        code, _, err = harness.run_cli([APP, "--metrics-path", "metrics"])
        self.assertEqual(code, 2)
        self.assertIn("--metrics-path metrics: must start with /", err)
        code, _, err = harness.run_cli([APP, "--metrics-path", "/whoami", "--port",
                                        str(harness.free_port())])
        self.assertEqual(code, 2)
        self.assertIn("route GET /whoami is defined twice", err)


if __name__ == "__main__":
    unittest.main()
