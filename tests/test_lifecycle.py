"""The application's lifecycle against the real binary: middleware order
and headers on 200/404/405/500 and sync answers, request deadlines (504 in
about the deadline; the upstream connection closed; a running pool job's
result dropped and a queued one never run), startup hooks before the first
connection (a failing one: exit 2), shutdown hooks after the drain on
SIGTERM, and background tasks finished before the exit. Uses
tests/apps/lifecycle_app.lua and the scripted upstream (tests/upstream.py)."""
import json
import os
import signal
import socket
import time
import unittest

import harness
import upstream

HERE = os.path.dirname(os.path.abspath(__file__))
APP = os.path.join(HERE, "apps", "lifecycle_app.lua")


class LifecycleTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.up = upstream.start()
        cls.srv = harness.Server(APP, "--threads", "1", "--pool-queue", "4", env={
            "LIFECYCLE_UPSTREAM": "http://127.0.0.1:%d" % cls.up.http_port})

    @classmethod
    def tearDownClass(cls):
        status, log = cls.srv.stop()
        cls.up.stop()
        assert status == 0, log

    def get(self, path, method="GET"):
        with harness.Client(self.srv.port) as c:
            c.request(method, path)
            return c.response()

    def test_startup_ran_before_the_first_request(self):
        r = self.get("/ok")
        self.assertEqual(r.json(), {"started": True})
        log = self.srv.log()
        self.assertLess(log.index("startup hook ran"), log.index("serving"))

    def test_middleware_run_in_order_on_every_kind_of_answer(self):
        for path, method, status, route in (("/ok", "GET", 200, "/ok"),
                                            ("/nowhere", "GET", 404, "false"),
                                            ("/ok", "DELETE", 405, "false"),
                                            ("/boom", "GET", 500, "/boom"),
                                            ("/sync-slow", "GET", 504, "/sync-slow")):
            r = self.get(path, method)
            self.assertEqual(r.status, status, path)
            self.assertEqual(r.headers.get("x-trace"), "outer,inner", path)
            self.assertEqual(r.headers.get("x-route"), route, path)

    def test_a_deadline_answers_504_and_closes_the_upstream_connection(self):
        before = self.up.stats().get("stall_aborted", 0)
        t0 = time.time()
        r = self.get("/upstream")
        took = time.time() - t0
        self.assertEqual(r.status, 504)
        self.assertEqual(r.json(), {"detail": "request timed out"})
        self.assertGreater(took, 0.4)
        self.assertLess(took, 2.0)
        deadline = time.time() + 3
        while time.time() < deadline and self.up.stats().get("stall_aborted", 0) <= before:
            time.sleep(0.05)
        self.assertGreater(self.up.stats().get("stall_aborted", 0), before,
                           "the upstream connection stayed open")
        self.assertTrue(self.srv.wait_log(r"GET /upstream \(route /upstream\): the handler "
                                          r"did not answer within 0.5 s", 2))

    def test_a_deadline_drops_the_pool_jobs_result_and_a_queued_job(self):
        base = json.loads(self.get("/counts").body)
        # Two at once on one pool thread: one runs, one waits in the queue.
        c1, c2 = harness.Client(self.srv.port), harness.Client(self.srv.port)
        t0 = time.time()
        c1.request("GET", "/sync-slow")
        c2.request("GET", "/sync-slow")
        r1, r2 = c1.response(), c2.response()
        took = time.time() - t0
        c1.close(), c2.close()
        self.assertEqual((r1.status, r2.status), (504, 504))
        self.assertLess(took, 0.9, "the deadline waited for the job")
        # The running job (1 s of CPU) ends meanwhile: on a busy machine
        # that takes longer than 1 s of wall time.
        deadline = time.time() + 15
        while True:
            after = json.loads(self.get("/counts").body)
            if after["pool"]["busy"] == 0 or time.time() > deadline:
                break
            time.sleep(0.1)
        self.assertEqual(after["started"] - base["started"], 1, after)
        self.assertEqual(after["finished"] - base["finished"], 1, after)
        self.assertEqual(after["pool"]["queued"], 0)
        self.assertTrue(self.srv.alive())


class ShutdownTest(unittest.TestCase):
    def test_shutdown_hooks_and_background_tasks_on_sigterm(self):
        srv = harness.Server(APP)
        with harness.Client(srv.port) as c:
            c.request("POST", "/signup")
            self.assertEqual(c.response().status, 202)
        srv.proc.send_signal(signal.SIGTERM)
        status, log = srv.wait()
        self.assertEqual(status, 0, log)
        i_drain = log.index("shutting down")
        i_mail = log.index("welcome mail sent")
        i_hook = log.index("shutdown hook ran")
        i_stop = log.index("stopped")
        self.assertTrue(i_drain < i_mail < i_hook < i_stop, log)

    def test_a_failing_startup_hook_exits_2_and_never_listens(self):
        port = harness.free_port()
        code, out, err = harness.run_cli([APP, "--port", str(port)],
                                         env={"LIFECYCLE_FAIL_STARTUP": "1"})
        self.assertEqual(code, 2, err)
        self.assertIn("startup hook failed", err)
        self.assertIn("cannot reach the database", err)
        self.assertIn("lifecycle_app.lua", err)
        self.assertNotIn("serving", err)
        with self.assertRaises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()


if __name__ == "__main__":
    unittest.main()
