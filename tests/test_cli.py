"""The command line: error exits (with the broken apps in tests/apps/),
--help and --version, options from the environment, the start line, the
access log."""
import os
import re
import socket
import time
import unittest

import harness

HERE = os.path.dirname(os.path.abspath(__file__))
APPS = os.path.join(HERE, "apps")
START_LINE = re.compile(r"^\S+Z INFO  luaserve 0\.1 serving (\S+) on http://127\.0\.0\.1:(\d+) "
                        r"\(Ctrl\+C to quit\)$", re.M)


def app(name):
    return os.path.join("tests", "apps", name)


class LoadErrorTest(unittest.TestCase):
    def assert_clean_message(self, err):
        # A message for people: no Lua or C stack dump.
        self.assertNotIn("stack traceback", err)
        self.assertNotIn("[C]", err)
        self.assertNotIn("cli.lua", err)

    def test_missing_app(self):
        status, out, err = harness.run_cli([app("no_such_app")])
        self.assertEqual(status, 2)
        self.assertIn("tests/apps/no_such_app", err)
        self.assertIn("no such app", err)
        self.assert_clean_message(err)

    def test_missing_lua_file(self):
        status, out, err = harness.run_cli([app("no_such_app.lua")])
        self.assertEqual(status, 2)
        self.assertIn("tests/apps/no_such_app.lua", err)
        self.assert_clean_message(err)

    def test_syntax_error_names_file_and_line(self):
        status, out, err = harness.run_cli([app("syntax_error.lua")])
        self.assertEqual(status, 2)
        self.assertIn("tests/apps/syntax_error.lua:8:", err)
        self.assertEqual(len(err.strip().splitlines()), 1, err)
        self.assert_clean_message(err)

    def test_syntax_error_in_a_folder_app(self):
        for arg in ("tests/apps/syntax_folder", "tests/apps/syntax_folder/"):
            status, out, err = harness.run_cli([arg])
            self.assertEqual(status, 2)
            self.assertIn("tests/apps/syntax_folder/app.lua:5:", err)
            self.assert_clean_message(err)

    def test_runtime_error_while_loading_names_file_and_line(self):
        status, out, err = harness.run_cli([app("load_error.lua")])
        self.assertEqual(status, 2)
        self.assertIn("tests/apps/load_error.lua:6:", err)
        self.assertIn("attempt to index", err)
        self.assert_clean_message(err)

    def test_error_raised_inside_the_framework_names_the_app_line(self):
        status, out, err = harness.run_cli([app("nested_error.lua")])
        self.assertEqual(status, 2)
        self.assertIn("tests/apps/nested_error.lua:6", err)
        self.assertIn("must be a string starting with '/'", err)
        self.assert_clean_message(err)

    def test_file_that_does_not_return_an_app(self):
        status, out, err = harness.run_cli([app("not_an_app.lua")])
        self.assertEqual(status, 2)
        self.assertIn("tests/apps/not_an_app.lua", err)
        self.assertIn("must return an app", err)
        self.assertIn("number", err)
        self.assert_clean_message(err)

    def test_folder_without_app_lua(self):
        status, out, err = harness.run_cli(["tests"])
        self.assertEqual(status, 2)
        self.assertIn("no such app", err)


class OptionsTest(unittest.TestCase):
    def test_help(self):
        for flag in ("--help", "-h"):
            status, out, err = harness.run_cli([flag])
            self.assertEqual(status, 0)
            self.assertIn("usage: luaserve APP", out)
            for opt in ("--port", "--max-body", "--timeout-graceful-shutdown",
                        "--limit-concurrency", "--no-access-log"):
                self.assertIn(opt, out)

    def test_version(self):
        for flag in ("--version", "-V"):
            status, out, err = harness.run_cli([flag])
            self.assertEqual(status, 0)
            self.assertEqual(out.strip(), "luaserve 0.1")

    def test_unknown_option(self):
        status, out, err = harness.run_cli(["apps/bench", "--no-such-option"])
        self.assertEqual(status, 2)
        self.assertIn("--no-such-option", err)

    def test_bad_option_values(self):
        for args in (["--port", "abc"], ["--port", "70000"], ["--max-body", "-1"],
                     ["--port"], ["--no-access-log=2"], ["--log-level", "loud"]):
            with self.subTest(args):
                status, out, err = harness.run_cli(["apps/bench"] + args)
                self.assertEqual(status, 2, err)
                self.assertIn(args[0].split("=")[0], err)

    def test_bad_environment_value(self):
        status, out, err = harness.run_cli(["apps/bench"], env={"LUASERVE_PORT": "http"})
        self.assertEqual(status, 2)
        self.assertIn("LUASERVE_PORT", err)

    def test_host_name_is_looked_up(self):
        # --host localhost: the name's first address (127.0.0.1 or ::1)
        port = harness.free_port()
        with harness.Server("apps/bench", "--host", "localhost", "--port", str(port),
                            port_flags=False, wait=False) as srv:
            m = srv.wait_log(r"serving apps/bench on http://(127\.0\.0\.1|\[::1\]):%d " % port)
            self.assertIsNotNone(m, srv.log())
            family = socket.AF_INET6 if m.group(1) == "[::1]" else socket.AF_INET
            with socket.socket(family) as s:
                s.settimeout(5)
                s.connect((m.group(1).strip("[]"), port))
                s.sendall(b"GET /plaintext HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                self.assertTrue(s.recv(4096).startswith(b"HTTP/1.1 200 OK"))

    def test_host_name_that_does_not_resolve(self):
        status, out, err = harness.run_cli(["apps/bench", "--host", "no-such-host.invalid",
                                            "--port", "0"])
        self.assertEqual(status, 2)
        self.assertIn("cannot resolve host 'no-such-host.invalid'", err)
        self.assertNotIn("stack traceback", err)

    def test_ipv6_loopback(self):
        port = harness.free_port()
        with harness.Server("apps/bench", "--host", "::1", "--port", str(port),
                            port_flags=False, wait=False) as srv:
            m = srv.wait_log(r"serving apps/bench on http://\[::1\]:%d " % port)
            self.assertIsNotNone(m, srv.log())
            with socket.socket(socket.AF_INET6) as s:
                s.settimeout(5)
                s.connect(("::1", port))
                s.sendall(b"GET /json HTTP/1.1\r\nHost: [::1]\r\nConnection: close\r\n\r\n")
                data = b""
                while not data.endswith(b"}"):
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                self.assertIn(b'{"message":"Hello, World!"}', data)
            _, log = srv.stop()
            self.assertRegex(log, r'INFO  ::1 - "GET /json" 200')

    def test_durations_take_units(self):
        # --timeout-keep-alive 300ms: an idle connection is closed well
        # before the default 5 s.
        with harness.Server("apps/bench", "--timeout-keep-alive", "300ms",
                            "--timeout-graceful-shutdown", "2s") as srv:
            with harness.Client(srv.port, timeout=10) as c:
                c.request("GET", "/plaintext")
                self.assertEqual(c.response().status, 200)
                t0 = time.monotonic()
                self.assertEqual(c.sock.recv(1), b"")   # closed by the server
                self.assertLess(time.monotonic() - t0, 3)
        status, out, err = harness.run_cli(["apps/bench", "--timeout-send", "5 parsecs"])
        self.assertEqual(status, 2)
        self.assertIn("--timeout-send 5 parsecs: expects seconds: a number >= 0, or with "
                      "a unit (250ms, 5s, 2m, 1h)", err)

    def test_no_app(self):
        status, out, err = harness.run_cli([])
        self.assertEqual(status, 2)
        self.assertIn("usage:", err)

    def test_port_in_use(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen()
            port = s.getsockname()[1]
            status, out, err = harness.run_cli(["apps/bench", "--port", str(port)])
        self.assertEqual(status, 1)
        lines = err.strip().splitlines()
        self.assertEqual(len(lines), 1, err)
        self.assertIn(str(port), lines[0])
        self.assertIn("in use", lines[0])

    def test_port_from_the_environment(self):
        port = harness.free_port()
        with harness.Server("apps/bench", port=port, port_flags=False,
                            env={"LUASERVE_PORT": str(port),
                                 "LUASERVE_HOST": "127.0.0.1"}) as srv:
            self.assertEqual(harness.get(port, "/json")[0], 200)
            m = srv.wait_log(START_LINE)
            self.assertEqual(int(m.group(2)), port)

    def test_flags_win_over_the_environment(self):
        env_port = harness.free_port()
        with harness.Server("apps/bench", env={"LUASERVE_PORT": str(env_port)}) as srv:
            self.assertNotEqual(srv.port, env_port)
            self.assertEqual(harness.get(srv.port, "/json")[0], 200)
            m = srv.wait_log(START_LINE)
            self.assertEqual(int(m.group(2)), srv.port)
            with self.assertRaises(OSError):
                socket.create_connection(("127.0.0.1", env_port), timeout=1).close()

    def test_other_options_from_the_environment(self):
        # LUASERVE_MAX_BODY=100: a 101-byte body gets 413.
        with harness.Server("apps/bench", env={"LUASERVE_MAX_BODY": "100",
                                               "LUASERVE_NO_ACCESS_LOG": "1"}) as srv:
            with harness.Client(srv.port) as c:
                c.request("POST", "/echo", body=b"x" * 100)
                self.assertEqual(c.response().status, 200)
                c.request("POST", "/echo", body=b"x" * 101)
                self.assertEqual(c.response().status, 413)
            time.sleep(0.3)
            self.assertNotIn('"POST /echo"', srv.log())


class StartLineAndLogTest(unittest.TestCase):
    def test_start_line(self):
        with harness.Server("apps/bench") as srv:
            m = srv.wait_log(START_LINE)
            self.assertIsNotNone(m, srv.log())
            self.assertEqual(m.group(1), "apps/bench")
            self.assertEqual(int(m.group(2)), srv.port)
            self.assertTrue(srv.log().startswith(m.group(0)))

    def test_port_0_prints_the_port_picked(self):
        with harness.Server("apps/bench", "--port", "0", port=1, wait=False) as srv:
            m = srv.wait_log(START_LINE, timeout=10)
            self.assertIsNotNone(m, srv.log())
            port = int(m.group(2))
            self.assertNotEqual(port, 0)
            self.assertEqual(harness.get(port, "/plaintext")[0], 200)

    def test_access_log_lines(self):
        with harness.Server("apps/bench") as srv:
            with harness.Client(srv.port) as c:
                c.request("GET", "/json")
                c.response()
                c.request("POST", "/echo", body=b"12345")
                c.response()
                c.request("GET", "/missing?x=1")
                c.response()
                c.request("GET", "/sleep?ms=100", [("Connection", "close")])
                c.response()
            m = srv.wait_log(r'"GET /sleep\?ms=100" 200')
            self.assertIsNotNone(m, srv.log())
            log = srv.log()
            # client, "method target", status, bytes, duration
            self.assertRegex(log, r'(?m)^\S+Z INFO  127\.0\.0\.1 - "GET /json" 200 27 \d+\.\d+ms$')
            self.assertRegex(log, r'(?m)^\S+Z INFO  127\.0\.0\.1 - "POST /echo" 200 5 \d+\.\d+ms$')
            self.assertRegex(log, r'(?m)^\S+Z INFO  127\.0\.0\.1 - "GET /missing\?x=1" 404 \d+ \d+\.\d+ms$')
            dur = re.search(r'"GET /sleep\?ms=100" 200 \d+ (\d+\.\d+)ms', log)
            self.assertGreaterEqual(float(dur.group(1)), 90)

    def test_no_access_log(self):
        with harness.Server("apps/bench", "--no-access-log") as srv:
            for path in ("/json", "/plaintext", "/missing"):
                harness.get(srv.port, path)
            time.sleep(0.3)
            status, log = srv.stop()
        self.assertEqual(status, 0)
        self.assertNotIn('"GET ', log)
        self.assertRegex(log, START_LINE)


if __name__ == "__main__":
    unittest.main()
