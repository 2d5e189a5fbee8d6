"""luaserve.websocket.connect against Node's `ws` server (Debian's node-ws),
over ws:// and wss:// (a test CA): messages both ways, binary, a big
compressed message, custom headers, subprotocols, the server's close code,
and a refused connection. The client runs as `luaserve lua
tests/apps/ws_client.lua`."""
import json
import os
import shutil
import subprocess
import tempfile
import unittest

import certs
import harness

HERE = os.path.dirname(os.path.abspath(__file__))
NODE_PATH = "/usr/share/nodejs"


class NodeServer:
    def __init__(self, env=None):
        e = dict(os.environ, NODE_PATH=NODE_PATH)
        e.update(env or {})
        self.proc = subprocess.Popen(["node", os.path.join(HERE, "ws_node_server.js")],
                                     stdout=subprocess.PIPE, env=e)
        self.port = json.loads(self.proc.stdout.readline())["port"]

    def stop(self):
        self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()


@unittest.skipUnless(os.path.isdir(os.path.join(NODE_PATH, "ws")), "node-ws is not installed")
class WebSocketClientTest(unittest.TestCase):
    def run_client(self, url, ca=None):
        args = ["lua", os.path.join(HERE, "apps", "ws_client.lua"), url] + ([ca] if ca else [])
        code, out, err = harness.run_cli(args, timeout=30)
        self.assertEqual(code, 0, out + err)
        return out

    def check(self, out):
        self.assertIn("subprotocol v2", out)
        who = json.loads(out.split("who ", 1)[1].splitlines()[0])
        self.assertEqual(who["protocol"], "v2")
        self.assertEqual(who["header"], "from lua")
        self.assertIn("permessage-deflate", who["extensions"])
        self.assertIn("echo text from lua", out)
        self.assertIn("binary true binary", out)
        self.assertIn("big true", out)
        self.assertIn("closed 1000", out)
        self.assertIn("server close 4001 node says bye", out)
        self.assertIn("refused connection refused", out)

    def test_ws(self):
        srv = NodeServer()
        try:
            self.check(self.run_client("ws://127.0.0.1:%d" % srv.port))
        finally:
            srv.stop()

    def test_wss(self):
        d = tempfile.mkdtemp(prefix="luaserve-certs-")
        try:
            c = certs.make(d)
            srv = NodeServer({"CERT": c["chain"], "KEY": c["server_key"]})
            try:
                self.check(self.run_client("wss://127.0.0.1:%d" % srv.port, c["ca"]))
            finally:
                srv.stop()
        finally:
            shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    unittest.main()
