"""The pieces of the WebSocket benchmark (tests/bench/ws.sh) behave as it
assumes: apps/bench's /ws/echo and /ws/room/{name} (checked with Python's
websockets), the Node and uvicorn peers serving the same routes, and the
load client wsload, which checks every echo and every broadcast byte for
byte and fails when one is wrong. Short runs: behaviour, not speed (the
figures come from `make bench`)."""
import asyncio
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest

import harness

try:
    import websockets
except ImportError:   # Debian's python3-websockets (the Makefile installs it)
    websockets = None

HERE = os.path.dirname(os.path.abspath(__file__))
WS = os.path.join(HERE, "bench", "ws")
NODE_PATH = "/usr/share/nodejs"
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else "python3"


def have_uvicorn():
    return subprocess.run([PYTHON, "-c", "import uvicorn, websockets"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0


class Peer:
    """A peer of the benchmark on a free 127.0.0.1 port, stopped by pid."""

    def __init__(self, name):
        self.port = harness.free_port()
        env = dict(os.environ, NODE_PATH=NODE_PATH, PORT=str(self.port))
        if name == "node":
            args = ["node", os.path.join(WS, "node_ws.js")]
        else:
            args = [PYTHON, "-m", "uvicorn", "uvicorn_app:app", "--app-dir", WS,
                    "--ws", "websockets", "--host", "127.0.0.1", "--port", str(self.port),
                    "--no-access-log", "--log-level", "warning"]
        self.errfile = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL,
                                     stderr=self.errfile)
        deadline = time.time() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    self.stop()
                    self.errfile.seek(0)
                    raise RuntimeError("%s did not start: %s" % (name, self.errfile.read()))
                time.sleep(0.05)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.errfile.close()


@unittest.skipUnless(websockets, "python3-websockets is not installed")
class BenchRoutesTest(harness.ServerTest):
    SERVER = ("apps/bench",)

    def url(self, path):
        return "ws://127.0.0.1:%d%s" % (self.srv.port, path)

    def test_echo_sends_text_and_binary_back(self):
        async def go():
            async with websockets.connect(self.url("/ws/echo"), compression=None) as ws:
                await ws.send("hello")
                self.assertEqual(await asyncio.wait_for(ws.recv(), 5), "hello")
                await ws.send(b"\x00\xff")
                self.assertEqual(await asyncio.wait_for(ws.recv(), 5), b"\x00\xff")
        asyncio.run(go())

    def test_room_sends_each_message_to_every_member_the_sender_included(self):
        async def go():
            a = [await websockets.connect(self.url("/ws/room/a"), compression=None)
                 for _ in range(3)]
            other = await websockets.connect(self.url("/ws/room/b"), compression=None)
            try:
                # a member is in the room once its handler runs: settle first
                await asyncio.sleep(0.2)
                await a[1].send("to room a")
                for ws in a:
                    self.assertEqual(await asyncio.wait_for(ws.recv(), 5), "to room a")
                await a[2].send(b"\x01\x02")
                for ws in a:
                    self.assertEqual(await asyncio.wait_for(ws.recv(), 5), b"\x01\x02")
                with self.assertRaises(asyncio.TimeoutError):   # no join notices either
                    await asyncio.wait_for(other.recv(), 0.3)
                await a[0].close()
                await a[1].send("after a leave")
                for ws in a[1:]:
                    self.assertEqual(await asyncio.wait_for(ws.recv(), 5), "after a leave")
            finally:
                for ws in a + [other]:
                    await ws.close()
        asyncio.run(go())


class LoadClientTest(unittest.TestCase):
    """wsload against luaserve and each peer: short echo and fan-out runs
    that must end with every message checked and no error."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp()
        cls.client = os.path.join(cls.tmp, "wsload")
        subprocess.run(["cc", "-O2", "-Wall", "-Wextra", "-Werror", "-o", cls.client,
                        os.path.join(WS, "wsload.c")], check=True, timeout=120)
        harness.raise_nofile(1024)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp)

    def wsload(self, port, *args, pid=None):
        """(exit status, the result fields, stderr) of one wsload run."""
        cmd = [self.client] + [args[0], "127.0.0.1", str(port)] + list(args[1:])
        if pid:
            cmd += ["-p", str(pid)]
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
        fields = dict(kv.split("=", 1) for kv in p.stdout.decode().split())
        return p.returncode, fields, p.stderr.decode()

    def check_server(self, port, pid):
        rc, f, err = self.wsload(port, "echo", "/ws/echo", "-c", "8", "-d", "0.5",
                                 "-w", "0.2", pid=pid)
        self.assertEqual((rc, f.get("errors")), (0, "0"), err)
        self.assertGreater(int(f["msgs"]), 100)
        self.assertGreater(float(f["server_us_per_msg"]), 0)   # the server's CPU was read
        rc, f, err = self.wsload(port, "fanout", "/ws/room/t", "-c", "200", "-r", "3",
                                 pid=pid)
        self.assertEqual((rc, f.get("errors")), (0, "0"), err)
        self.assertEqual(len(f["all_ms"].split(",")), 3)
        self.assertLessEqual(float(f["p50_ms"]), float(f["max_ms"]))

    def test_luaserve(self):
        with harness.Server("apps/bench", "--no-access-log") as srv:
            self.check_server(srv.port, srv.proc.pid)

    @unittest.skipUnless(os.path.isdir(os.path.join(NODE_PATH, "ws")), "node-ws is not installed")
    def test_node_ws(self):
        peer = Peer("node")
        self.addCleanup(peer.stop)
        self.check_server(peer.port, peer.proc.pid)

    @unittest.skipUnless(have_uvicorn(), "python3-uvicorn is not installed")
    def test_uvicorn(self):
        peer = Peer("uvicorn")
        self.addCleanup(peer.stop)
        self.check_server(peer.port, peer.proc.pid)

    def test_a_wrong_echo_fails_the_run(self):
        # In a room of two, each connection gets the other's messages, not
        # its own echo: the client must notice and fail.
        with harness.Server("apps/bench", "--no-access-log") as srv:
            rc, f, err = self.wsload(srv.port, "echo", "/ws/room/x", "-c", "2", "-d", "0.3",
                                     "-w", "0.1")
            self.assertEqual(rc, 1)
            self.assertRegex(err, "wrong size|differs")

    def test_a_refused_handshake_fails_the_run(self):
        with harness.Server("apps/bench", "--no-access-log") as srv:
            rc, _, err = self.wsload(srv.port, "echo", "/no-such-route", "-c", "2", "-d", "0.3")
            self.assertEqual(rc, 1)
            self.assertIn("handshake refused: HTTP/1.1 404 Not Found\n", err)


if __name__ == "__main__":
    unittest.main()
