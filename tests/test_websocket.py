"""WebSockets against the real binary: real clients (Python websockets, Node
ws), the handshake's checks, crafted frames for every protocol error (each
answered with the right close code, the server serving on), the session's
ends (1000 on return, 1011 on an error, cancellation when the client
vanishes, 1001 on shutdown, the keepalive ping), wss://, permessage-deflate,
and 2,000 connections in one room. Uses tests/apps/ws_app.lua."""
import asyncio
import base64
import json
import os
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import tempfile
import time
import unittest

import certs
import harness

try:
    import websockets
except ImportError:   # Debian's python3-websockets (the Makefile installs it)
    websockets = None

HERE = os.path.dirname(os.path.abspath(__file__))
APP = os.path.join(HERE, "apps", "ws_app.lua")
NODE_PATH = "/usr/share/nodejs"


def frame(opcode, payload=b"", fin=True, mask=True, rsv=0):
    """One frame as a client would send it (masked unless told)."""
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", b0, (0x80 if mask else 0) | n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, (0x80 if mask else 0) | 126, n)
    else:
        head = struct.pack("!BBQ", b0, (0x80 if mask else 0) | 127, n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def read_frame(sock):
    """(opcode, payload) of the next frame from the server; None at EOF."""
    def take(n):
        buf = b""
        while len(buf) < n:
            b = sock.recv(n - len(buf))
            if not b:
                return None
            buf += b
        return buf
    h = take(2)
    if h is None:
        return None
    opcode, n = h[0] & 0x0f, h[1] & 0x7f
    if n == 126:
        n = struct.unpack("!H", take(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", take(8))[0]
    return opcode, take(n) if n else b""


def close_code(payload):
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005


def handshake(port, path="/ws/echo", headers=None):
    """A raw connection after a successful handshake."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    key = base64.b64encode(os.urandom(16)).decode()
    extra = "".join("%s: %s\r\n" % kv for kv in (headers or []))
    s.sendall(("GET %s HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n%s\r\n"
               % (path, key, extra)).encode())
    head = b""
    while b"\r\n\r\n" not in head:
        b = s.recv(1)
        if not b:
            raise ConnectionError("closed during the handshake: %r" % head)
        head += b
    assert head.startswith(b"HTTP/1.1 101 "), head
    return s


def raw_request(port, text):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(text.encode())
        return harness.read_until_close(s)


@unittest.skipIf(websockets is None, "python3-websockets is not installed")
class WebSocketTest(harness.ServerTest):
    SERVER = (APP,)

    def run_async(self, coro, timeout=30):
        return asyncio.run(asyncio.wait_for(coro, timeout))

    def url(self, path):
        return "ws://127.0.0.1:%d%s" % (self.srv.port, path)

    def echo_still_works(self):
        async def go():
            async with websockets.connect(self.url("/ws/echo")) as ws:
                await ws.send("still here")
                return await ws.recv()
        self.assertEqual(self.run_async(go()), "still here")

    # -- real clients ------------------------------------------------------

    def test_python_websockets_echo_text_binary_subprotocol_and_deflate(self):
        async def go():
            async with websockets.connect(self.url("/ws/echo"),
                                          subprotocols=["chat.v1", "chat.v2"]) as ws:
                self.assertEqual(ws.subprotocol, "chat.v2")   # the server's preference
                self.assertEqual([type(e).__name__ for e in ws.extensions],
                                 ["PerMessageDeflate"])
                await ws.send("héllo")
                self.assertEqual(await ws.recv(), "héllo")
                await ws.send(b"\x00\xff\x10")
                self.assertEqual(await ws.recv(), b"\x00\xff\x10")
                big = "compressible " * 20000
                await ws.send(big)
                self.assertEqual(await ws.recv(), big)
                fragments = ["part one ", "part two ", "part three"]
                await ws.send(iter(fragments))   # a fragmented message
                self.assertEqual(await ws.recv(), "".join(fragments))
                pong = await ws.ping(b"are you there")
                await asyncio.wait_for(pong, 5)
        self.run_async(go())

    def test_node_ws_echo(self):
        script = ("const WebSocket=require('ws');const ws=new WebSocket(%r,['chat.v1']);"
                  "ws.on('open',()=>ws.send('from node'));"
                  "ws.on('message',(m,isBinary)=>{console.log(ws.protocol+' '+m.toString());"
                  "ws.close(1000)});ws.on('close',(c)=>{console.log('closed '+c)});"
                  "ws.on('error',(e)=>{console.log('error '+e.message);process.exit(1)})"
                  % self.url("/ws/echo"))
        p = subprocess.run(["node", "-e", script], capture_output=True, timeout=20,
                           env=dict(os.environ, NODE_PATH=NODE_PATH))
        out = p.stdout.decode()
        self.assertEqual(p.returncode, 0, out + p.stderr.decode())
        self.assertIn("chat.v1 from node", out)
        self.assertIn("closed 1000", out)

    # -- the handshake --------------------------------------------------------

    def test_handshake_checks(self):
        key = base64.b64encode(os.urandom(16)).decode()
        base = ("GET /ws/echo HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\n")
        r = raw_request(self.srv.port, base + "Sec-WebSocket-Key: short\r\n"
                        "Sec-WebSocket-Version: 13\r\n\r\n")
        self.assertTrue(r.startswith(b"HTTP/1.1 400"), r)
        r = raw_request(self.srv.port, base + "Sec-WebSocket-Key: %s\r\n"
                        "Sec-WebSocket-Version: 8\r\n\r\n" % key)
        self.assertTrue(r.startswith(b"HTTP/1.1 400"), r)
        self.assertIn(b"Sec-WebSocket-Version: 13", r)
        r = raw_request(self.srv.port, "POST /ws/echo HTTP/1.1\r\nHost: t\r\n"
                        "Content-Length: 0\r\n\r\n")
        self.assertTrue(r.startswith(b"HTTP/1.1 405"), r)
        r = raw_request(self.srv.port, "GET /ws/echo HTTP/1.1\r\nHost: t\r\n\r\n")
        self.assertTrue(r.startswith(b"HTTP/1.1 426"), r)
        self.assertIn(b"Upgrade: websocket", r)
        self.echo_still_works()

    # -- protocol errors, each with its close code ------------------------------

    def protocol_error(self, frames, want, path="/ws/echo"):
        s = handshake(self.srv.port, path)
        try:
            for f in frames:
                s.sendall(f)
            while True:
                f = read_frame(s)
                self.assertIsNotNone(f, "closed without a close frame")
                if f[0] == 8:
                    self.assertEqual(close_code(f[1]), want)
                    return
        finally:
            s.close()

    def test_unmasked_client_frame_is_1002(self):
        self.protocol_error([frame(1, b"hi", mask=False)], 1002)
        self.echo_still_works()

    def test_bad_opcode_is_1002(self):
        self.protocol_error([frame(3, b"x")], 1002)

    def test_reserved_bits_are_1002(self):
        self.protocol_error([frame(1, b"x", rsv=2)], 1002)

    def test_fragmented_control_frame_is_1002(self):
        self.protocol_error([frame(9, b"ping", fin=False)], 1002)

    def test_invalid_utf8_split_across_fragments_is_1007(self):
        # U+20AC is e2 82 ac: cut after e2 82, then a bad continuation
        self.protocol_error([frame(1, b"ok \xe2\x82", fin=False),
                             frame(0, b"\x41 end", fin=True)], 1007)
        self.echo_still_works()

    def test_oversize_message_is_1009(self):
        self.protocol_error([frame(2, b"x" * 2000)], 1009, path="/ws/small")
        self.echo_still_works()

    def test_close_with_an_invalid_code_is_1002(self):
        self.protocol_error([frame(8, struct.pack("!H", 1005) + b"no")], 1002)

    def test_control_frames_between_fragments_and_ping_answered(self):
        s = handshake(self.srv.port)
        try:
            s.sendall(frame(1, b"one ", fin=False) + frame(9, b"p1") +
                      frame(0, b"two", fin=True))
            got = [read_frame(s), read_frame(s)]
            self.assertIn((10, b"p1"), got)        # the pong, automatic
            self.assertIn((1, b"one two"), got)    # the message, whole
            s.sendall(frame(8, struct.pack("!H", 1000) + b"done"))
            f = read_frame(s)
            self.assertEqual((f[0], close_code(f[1])), (8, 1000))
            self.assertIsNone(read_frame(s))       # the server closes the TCP
        finally:
            s.close()

    # -- the session's ends --------------------------------------------------------

    def test_a_handler_that_returns_closes_1000(self):
        async def go():
            async with websockets.connect(self.url("/ws/bye")) as ws:
                self.assertEqual(await ws.recv(), "bye")
                try:
                    await ws.recv()
                except websockets.ConnectionClosedOK as e:
                    return e.code
        self.assertEqual(self.run_async(go()), 1000)

    def test_a_handler_that_raises_closes_1011_and_is_logged(self):
        async def go():
            async with websockets.connect(self.url("/ws/fails")) as ws:
                await ws.send("go")
                try:
                    await ws.recv()
                except websockets.ConnectionClosedError as e:
                    return e.code
        self.assertEqual(self.run_async(go()), 1011)
        self.assertTrue(self.srv.wait_log(r"GET /ws/fails \(route /ws/fails\) websocket: "
                                          r".*handler bug in the session", 3))

    def state(self):
        status, _, body = harness.get(self.srv.port, "/state")
        return json.loads(body)

    def test_a_client_that_vanishes_cancels_the_handler(self):
        before = self.state()
        s = handshake(self.srv.port, "/ws/wait")
        deadline = time.time() + 5
        while self.state()["wait_started"] == before["wait_started"] and time.time() < deadline:
            time.sleep(0.05)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()   # an RST, no close frame
        while self.state()["wait_cancelled"] == before["wait_cancelled"] and time.time() < deadline:
            time.sleep(0.05)
        after = self.state()
        self.assertEqual(after["wait_cancelled"], before["wait_cancelled"] + 1)
        self.assertEqual(after["wait_closed"], before["wait_closed"])
        # a clean close is not a cancellation: the handler goes on and returns
        s = handshake(self.srv.port, "/ws/wait")
        s.sendall(frame(8, struct.pack("!H", 1000)))
        self.assertEqual(read_frame(s)[0], 8)
        s.close()
        while self.state()["wait_closed"] == before["wait_closed"] and time.time() < deadline:
            time.sleep(0.05)
        self.assertEqual(self.state()["wait_closed"], before["wait_closed"] + 1)
        self.assertEqual(self.state()["wait_cancelled"], before["wait_cancelled"] + 1)

    def test_senders_wait_for_a_slow_client_and_every_message_arrives(self):
        s = handshake(self.srv.port, "/ws/flood")
        try:
            s.sendall(frame(1, b"200"))   # 2 x 200 x 64 KB = 25 MB, far past the socket buffers
            time.sleep(1)                # a slow client: the senders must wait
            got = 0
            while True:
                op, payload = read_frame(s)
                if op == 1:
                    break
                self.assertEqual(op, 2)
                self.assertEqual(len(payload), 65536)
                got += 1
            done, sent, waited = payload.decode().split()
            self.assertEqual((done, int(sent)), ("done", 400))
            self.assertEqual(got, 400)
            self.assertGreater(int(waited), 0)
            s.sendall(frame(8, struct.pack("!H", 1000)))
        finally:
            s.close()
        self.echo_still_works()

    def test_a_client_that_ignores_pings_is_closed(self):
        s = handshake(self.srv.port, "/ws/ping")
        t0 = time.time()
        try:
            while True:   # read the pings, never answer
                f = read_frame(s)
                if f is None or f[0] == 8:
                    break
                self.assertEqual(f[0], 9)
            took = time.time() - t0
            self.assertIsNotNone(f)
            self.assertEqual(close_code(f[1]), 1011)
            self.assertLess(took, 3)
        finally:
            s.close()


@unittest.skipIf(websockets is None, "python3-websockets is not installed")
class ShutdownTest(unittest.TestCase):
    def test_graceful_shutdown_closes_websockets_with_1001(self):
        srv = harness.Server(APP)

        async def go():
            async with websockets.connect("ws://127.0.0.1:%d/ws/echo" % srv.port) as ws:
                await ws.send("x")
                await ws.recv()
                srv.proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(ws.recv(), 10)
                except websockets.ConnectionClosed as e:
                    return e.code
        try:
            code = asyncio.run(go())
            self.assertEqual(code, 1001)
            status, log = srv.wait()
            self.assertEqual(status, 0, log)
        finally:
            srv.stop()


@unittest.skipIf(websockets is None, "python3-websockets is not installed")
class TLSTest(unittest.TestCase):
    def test_wss(self):
        d = tempfile.mkdtemp(prefix="luaserve-certs-")
        try:
            c = certs.make(d)
            with harness.Server(APP, "--ssl-certfile", c["chain"],
                                "--ssl-keyfile", c["server_key"]) as srv:
                ctx = ssl.create_default_context(cafile=c["ca"])

                async def go():
                    async with websockets.connect("wss://127.0.0.1:%d/ws/who" % srv.port,
                                                  ssl=ctx) as ws:
                        return json.loads(await ws.recv())
                who = asyncio.run(asyncio.wait_for(go(), 20))
                self.assertEqual(who["scheme"], "https")
        finally:
            shutil.rmtree(d, ignore_errors=True)


@unittest.skipIf(websockets is None, "python3-websockets is not installed")
class ManyConnectionsTest(unittest.TestCase):
    N = 2000

    def rss_kb(self, pid):
        with open("/proc/%d/status" % pid) as f:
            return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))

    def test_2000_connections_in_one_room_each_get_every_broadcast(self):
        harness.raise_nofile(self.N * 2 + 512)
        with harness.Server(APP, "--no-access-log", "--backlog", "4096") as srv:
            url = "ws://127.0.0.1:%d/ws/room" % srv.port
            rss0 = self.rss_kb(srv.proc.pid)

            async def go():
                sem = asyncio.Semaphore(200)

                async def join():
                    async with sem:
                        ws = await websockets.connect(url, ping_interval=None,
                                                      compression=None, max_queue=None)
                        self.assertEqual(await ws.recv(), "joined")
                        return ws
                conns = await asyncio.gather(*[join() for _ in range(self.N)])
                await asyncio.sleep(0.5)
                rss1 = self.rss_kb(srv.proc.pid)
                for i in range(3):
                    await conns[i].send("broadcast %d" % i)
                async def three(c):
                    return [await c.recv() for _ in range(3)]
                got = await asyncio.gather(*[three(c) for c in conns])
                await asyncio.gather(*[c.close() for c in conns])
                return rss1, got
            rss1, got = asyncio.run(asyncio.wait_for(go(), 120))
            want = sorted("broadcast %d" % i for i in range(3))
            self.assertTrue(all(sorted(g) == want for g in got))
            per = (rss1 - rss0) * 1024 / self.N
            print("\n  memory per idle WebSocket connection: %.1f KB "
                  "(%d connections, server RSS %d -> %d KB)" % (per / 1024, self.N, rss0, rss1))
            self.assertLess(per, 64 * 1024, "memory per connection")


class SSETest(harness.ServerTest):
    SERVER = (APP,)

    def test_curl_reads_events_as_they_come(self):
        p = subprocess.run(["curl", "-sN", "--max-time", "10",
                            "http://127.0.0.1:%d/events?count=3" % self.srv.port],
                           capture_output=True, timeout=20)
        out = p.stdout.decode()
        self.assertEqual(re.findall(r"id: (\d+)", out), ["1", "2", "3"])
        self.assertIn('event: tick\nid: 2\ndata: {"n":2}\n\n', out)
        self.assertIn("data: line one\ndata: line two\n\n", out)

    def test_a_reader_resumes_after_last_event_id(self):
        with harness.Client(self.srv.port) as c:
            c.request("GET", "/events?count=2&every=0.01")
            r = c.response()
            self.assertEqual(r.status, 200)
            self.assertEqual(r.headers["content-type"], "text/event-stream; charset=utf-8")
            self.assertEqual(r.headers["cache-control"], "no-cache")
            self.assertEqual(r.headers["x-accel-buffering"], "no")
            last = re.findall(rb"id: (\d+)", r.body)[-1].decode()
        self.assertEqual(last, "2")
        with harness.Client(self.srv.port) as c:
            c.request("GET", "/events?count=2&every=0.01", [("Last-Event-ID", last)])
            ids = re.findall(rb"id: (\d+)", c.response().body)
        self.assertEqual(ids, [b"3", b"4"])

    def test_comment_pings_keep_the_stream_alive(self):
        with harness.Client(self.srv.port) as c:
            c.request("GET", "/events?count=1&every=1.2&ping=0.3")
            body = c.response(timeout=10).body
        self.assertGreaterEqual(body.count(b": ping\n\n"), 2, body)


class StreamProxyTest(unittest.TestCase):
    def test_a_50_mb_upstream_body_goes_through_without_being_held(self):
        import upstream
        up = upstream.start()
        try:
            # The Lua heap may keep --gc-headroom of garbage by design (16 MB
            # by default): 4 MB here, so that a body held would show.
            with harness.Server(APP, "--no-access-log", "--gc-headroom", "4m") as srv:
                rss0 = int(re.search(r"VmRSS:\s+(\d+)",
                                     open("/proc/%d/status" % srv.proc.pid).read()).group(1))
                with harness.Client(srv.port, timeout=30) as c:
                    c.request("GET", "/proxy?url=http://127.0.0.1:%d/big-chunked?n=%d"
                              % (up.http_port, 50 * 1024 * 1024))
                    r = c.response(timeout=60)
                self.assertEqual(len(r.body), 50 * 1024 * 1024)
                rss1 = int(re.search(r"VmRSS:\s+(\d+)",
                                     open("/proc/%d/status" % srv.proc.pid).read()).group(1))
                self.assertLess(rss1 - rss0, 20 * 1024, "the body was held in memory")
        finally:
            up.stop()


if __name__ == "__main__":
    unittest.main()
