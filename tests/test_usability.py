"""What a new user meets (issue 14): log lines with a time and a level, as
text or JSON, from handlers, pool threads and background tasks, in the order
things happened; a stream write to a client that reset the connection; the
sanitizer build finding its Lua files by itself."""
import json
import os
import re
import socket
import struct
import subprocess
import tempfile
import time
import unittest

import harness

APP = "tests/apps/logging_app.lua"
TIME = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


class TextLogTest(unittest.TestCase):
    def test_every_line_has_a_time_and_a_level(self):
        with harness.Server(APP) as srv:
            self.assertEqual(harness.get(srv.port, "/handler")[0], 200)
            status, _, body = harness.get(srv.port, "/pool")
            self.assertEqual(json.loads(body), {"doubled": 42})
            self.assertEqual(harness.get(srv.port, "/background")[0], 200)
            self.assertIsNotNone(srv.wait_log("from a background task"), srv.log())
            status, log = srv.stop()
        self.assertEqual(status, 0)
        lines = log.splitlines()
        for line in lines:
            self.assertRegex(line, r"^%s (DEBUG|INFO |WARN |ERROR) \S" % TIME)
        self.assertRegex(log, r"WARN  from a handler( user=ana| tries=3){2}\n")
        self.assertRegex(log, r"INFO  crunching 21 in a pool thread\n")
        self.assertRegex(log, r'INFO  127\.0\.0\.1 - "GET /pool" 200 14 [\d.]+ms\n')

    def test_access_lines_come_before_the_shutdown_lines(self):
        # Access lines are buffered for up to 100 ms; a later line (the
        # shutdown's) writes them first.
        with harness.Server(APP) as srv:
            with harness.Client(srv.port) as c:
                c.request("GET", "/handler")
                self.assertEqual(c.response().status, 200)
            status, log = srv.stop()
        access = log.index('"GET /handler" 200')
        self.assertLess(access, log.index("SIGTERM: shutting down"), log)
        self.assertLess(log.index("from a handler"), access, log)
        self.assertTrue(log.rstrip().endswith("INFO  stopped"), log)


class JsonLogTest(unittest.TestCase):
    def test_one_json_object_per_line(self):
        with harness.Server(APP, "--log-format", "json") as srv:
            with harness.Client(srv.port) as c:
                c.request("GET", "/handler?x=%22y")
                self.assertEqual(c.response().status, 200)
                c.request("GET", "/pool")
                self.assertEqual(c.response().status, 200)
            self.assertEqual(harness.get(srv.port, "/background")[0], 200)
            self.assertIsNotNone(srv.wait_log("from a background task"), srv.log())
            status, log = srv.stop()
        self.assertEqual(status, 0)
        records = [json.loads(line) for line in log.splitlines()]   # each parses
        for r in records:
            self.assertRegex(r["time"], "^%s$" % TIME)
            self.assertIn(r["level"], ("debug", "info", "warn", "error"))
            self.assertIsInstance(r["message"], str)
        by_message = {r["message"]: r for r in records}
        warn = by_message["from a handler"]
        self.assertEqual((warn["level"], warn["user"], warn["tries"]), ("warn", "ana", 3))
        self.assertIn("crunching 21 in a pool thread", by_message)
        self.assertIn("from a background task", by_message)
        access = [r for r in records if r.get("type") == "access"]
        self.assertEqual([a["path"] for a in access], ["/handler", "/pool", "/background"])
        first = access[0]
        self.assertEqual(first["target"], '/handler?x=%22y')
        self.assertEqual((first["method"], first["route"], first["status"], first["bytes"],
                          first["client"]), ("GET", "/handler", 200, 2, "127.0.0.1"))
        self.assertIsInstance(first["duration_ms"], float)
        self.assertEqual(first["message"], 'GET /handler?x=%22y 200')
        self.assertEqual(records[-1]["message"], "stopped")

    def test_a_bad_format_is_refused(self):
        status, out, err = harness.run_cli([APP, "--log-format", "xml"])
        self.assertEqual(status, 2)
        self.assertIn("--log-format xml: must be text or json", err)


class StreamResetTest(unittest.TestCase):
    def test_write_after_a_reset_gives_nil_closed(self):
        with harness.Server(APP, "--no-access-log") as srv:
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
            s.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
            self.assertTrue(s.recv(65536).startswith(b"HTTP/1.1 200"))
            time.sleep(0.1)   # the server fills the socket and waits
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()         # RST
            deadline = time.time() + 5
            last = None
            while time.time() < deadline:
                last = harness.get(srv.port, "/last")[2]
                if last != b"none":
                    break
                time.sleep(0.05)
            self.assertEqual(last, b"nil closed")
            self.assertEqual(harness.get(srv.port, "/handler")[0], 200)   # still serving


class SleepTest(unittest.TestCase):
    """Nothing left but a future nobody resolves: await says so at once;
    a cancelled 60 s sleep must not keep the loop waiting."""

    def check_not_held(self, *steps):
        script = "\n".join(('local luaserve = require "luaserve"',) + steps + (
            'local ok, err = pcall(luaserve.await, luaserve.Future())',
            'print(err:match("a deadlock") and "done" or err)', ""))
        with tempfile.NamedTemporaryFile("w", suffix=".lua") as f:
            f.write(script)
            f.flush()
            t0 = time.monotonic()
            p = subprocess.run([harness.LUASERVE, "lua", f.name], cwd=harness.ROOT,
                               capture_output=True, timeout=90)
            took = time.monotonic() - t0
        self.assertEqual(p.stdout, b"done\n", p.stderr)
        self.assertEqual(p.returncode, 0)
        self.assertLess(took, 20)   # not the 60 s of the cancelled sleep

    def test_a_cancelled_sleep_does_not_hold_the_loop(self):
        self.check_not_held('local f = luaserve.sleep(60)',
                            'luaserve.await(luaserve.sleep(0.01))',
                            'f:cancel()')

    def test_a_sleep_cancelled_while_another_runs_does_not_hold_the_loop(self):
        # It stays in the sleep heap, dead, but once the shorter one has
        # fired nothing holds the loop for it.
        self.check_not_held('local f = luaserve.sleep(60)',
                            'local g = luaserve.sleep(0.01)',
                            'f:cancel()',
                            'luaserve.await(g)')


class LuaDirTest(unittest.TestCase):
    def test_the_binary_finds_its_lua_files_without_the_variable(self):
        # Under SAN=1 the binary is build/san/luaserve: lua/ is two folders up.
        env = dict(os.environ)
        env.pop("LUASERVE_LUA_DIR", None)
        p = subprocess.run([harness.LUASERVE, "check", "apps/demo"], cwd=harness.ROOT,
                           env=env, capture_output=True, timeout=30)
        self.assertEqual(p.returncode, 0, p.stderr.decode(errors="replace"))
        with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
            script.write('print(package.path:match("^([^;]*)"))\n')
            script.flush()
            p = subprocess.run([harness.LUASERVE, "lua", script.name], cwd="/", env=env,
                               capture_output=True, timeout=30)
        first = p.stdout.decode().strip()
        self.assertEqual(first, os.path.join(harness.ROOT, "lua", "?.lua"),
                         p.stderr.decode(errors="replace"))


if __name__ == "__main__":
    unittest.main()
