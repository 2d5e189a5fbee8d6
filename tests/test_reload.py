"""--reload against the real binary: a change to an app file restarts the
server with the new code, code that does not load keeps the old code
serving and shows the error with its file and line, a change in a module
of a subfolder counts too, and SIGTERM stops the server and the
supervisor. The app is a temporary folder the test writes."""
import os
import shutil
import signal
import tempfile
import time
import unittest

import harness

APP = '''local luaserve = require "luaserve"
local lib = require "lib.version"
local app = luaserve.app()
app:get("/v", function() return "%s " .. lib.VERSION end)
return app
'''
LIB = 'return { VERSION = "%s" }\n'


def write(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, path)   # as editors save: a rename over the file


class ReloadTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="luaserve-reload-")
        os.mkdir(os.path.join(self.dir, "lib"))
        write(os.path.join(self.dir, "app.lua"), APP % "one")
        write(os.path.join(self.dir, "lib", "version.lua"), LIB % "1.0")
        self.srv = harness.Server(self.dir, "--reload")

    def tearDown(self):
        self.srv.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def body(self):
        try:
            status, _, body = harness.get(self.srv.port, "/v", timeout=2)
            return body.decode() if status == 200 else None
        except OSError:
            return None

    def eventually(self, want, timeout=10):
        deadline = time.time() + timeout
        got = None
        while time.time() < deadline:
            got = self.body()
            if got == want:
                return
            time.sleep(0.1)
        self.fail("wanted %r, got %r; log:\n%s" % (want, got, self.srv.log()))

    def test_reload_on_change_keeps_old_code_on_error_and_stops_cleanly(self):
        self.assertEqual(self.body(), "one 1.0")
        write(os.path.join(self.dir, "app.lua"), APP % "two")
        self.eventually("two 1.0")
        self.assertRegex(self.srv.log(), r"reload: .*app\.lua changed")
        # a module in a subfolder
        write(os.path.join(self.dir, "lib", "version.lua"), LIB % "2.0")
        self.eventually("two 2.0")
        # broken code: the old server goes on, the error names file and line
        write(os.path.join(self.dir, "app.lua"), APP.replace("return app", "return app +") % "three")
        self.assertTrue(self.srv.wait_log(r"app\.lua:\d+: .*near", 10), self.srv.log())
        self.assertTrue(self.srv.wait_log(r"the server goes on with the old code", 5))
        self.assertEqual(self.body(), "two 2.0")
        # fixed
        write(os.path.join(self.dir, "app.lua"), APP % "four")
        self.eventually("four 2.0")
        status, log = self.srv.stop()
        self.assertEqual(status, 0, log)
        with self.assertRaises(OSError):
            harness.get(self.srv.port, "/v", timeout=1)


if __name__ == "__main__":
    unittest.main()
