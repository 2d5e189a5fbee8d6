#!/usr/bin/env python3
"""A scripted upstream for the HTTP client and socket tests: a small HTTP
server on 127.0.0.1 whose paths misbehave on purpose, plus three raw
listeners (one that never accepts, one that never reads, a tiny RESP
server). Standard library only.

As a module: `up = upstream.start()` serves in threads; up.http_port,
up.blackhole_port, up.noread_port, up.resp_port; up.stats(); up.stop().
As a script: prints one JSON line {"pid":..,"http":..,"blackhole":..,
"noread":..,"resp":..} and serves until SIGTERM/SIGINT, or for at most
--lifetime seconds (default 600).

HTTP paths (query ?n= sets a size where it applies):
  /ok                 200, Content-Length body "ok", keep-alive
  /json               200 {"message":"Hello, World!"}, keep-alive
  /chunked            chunked body "hello, chunked world" in pieces, keep-alive
  /close-delimited    200 without a length; body "until the close", then close
  /stall-headers      reads the request, never answers (until the peer closes)
  /stall-body         headers (Content-Length: 100) and 10 bytes, then nothing
  /trickle            Content-Length: 1000, one byte every 0.1 s
  /close-mid-body     headers (Content-Length: 100) and 10 bytes, then close
  /big?n=N            Content-Length N
  /big-chunked?n=N    N bytes in 64 KiB chunks
  /interim            100 Continue and 103 Early Hints before a 200
  /garbage            not HTTP at all
  /redirect?to=URL    302 to URL (/redirect?n=K: a chain of K then /ok)
  /once-per-conn      answers the first request of a connection; on any
                      later one it closes without answering
  /echo               200 with the request's method, headers and body as JSON
  /stats              JSON counters (see Upstream.stats)
"""
import json
import os
import signal
import socket
import socketserver
import sys
import threading
import time
import urllib.parse


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.c = {"connections": 0, "requests": 0, "stall_aborted": 0,
                  "stall_open": 0}

    def add(self, k, n=1):
        with self.lock:
            self.c[k] = self.c.get(k, 0) + n

    def snapshot(self):
        with self.lock:
            return dict(self.c)


def response(status, body=b"", headers=(), reason="OK"):
    head = "HTTP/1.1 %d %s\r\n" % (status, reason)
    for k, v in headers:
        head += "%s: %s\r\n" % (k, v)
    head += "Content-Length: %d\r\n\r\n" % len(body)
    return head.encode() + body


class HTTPHandler(socketserver.BaseRequestHandler):
    def setup(self):
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.request.settimeout(30)
        self.buf = b""
        self.stats = self.server.stats
        self.stats.add("connections")

    def read_request(self):
        while b"\r\n\r\n" not in self.buf:
            b = self.request.recv(65536)
            if not b:
                return None
            self.buf += b
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
        n = int(headers.get("content-length", "0"))
        while len(self.buf) < n:
            b = self.request.recv(65536)
            if not b:
                return None
            self.buf += b
        body, self.buf = self.buf[:n], self.buf[n:]
        return method, target, headers, body

    def handle(self):
        served = 0
        try:
            while True:
                req = self.read_request()
                if req is None:
                    return
                self.stats.add("requests")
                if not self.serve(served, *req):
                    return
                served += 1
        except (OSError, ValueError):
            return

    def wait_for_close(self, limit=30.0):
        """Block until the peer closes (True) or the limit passes."""
        self.request.settimeout(limit)
        try:
            while True:
                if not self.request.recv(65536):
                    return True
        except OSError:
            return False

    # Returns True to keep the connection for another request.
    def serve(self, served, method, target, headers, body):
        u = urllib.parse.urlsplit(target)
        q = dict(urllib.parse.parse_qsl(u.query))
        path = u.path
        send = self.request.sendall
        if path == "/ok":
            send(response(200, b"ok", [("Content-Type", "text/plain")]))
        elif path == "/json":
            send(response(200, b'{"message":"Hello, World!"}',
                          [("Content-Type", "application/json")]))
        elif path == "/chunked":
            send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                 b"Content-Type: text/plain\r\n\r\n")
            for piece in (b"hello, ", b"chunked ", b"world"):
                send(b"%x\r\n%s\r\n" % (len(piece), piece))
                time.sleep(0.02)
            send(b"0\r\n\r\n")
        elif path == "/close-delimited":
            send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil ")
            time.sleep(0.05)
            send(b"the close")
            return False
        elif path == "/stall-headers":
            self.stats.add("stall_open")
            if self.wait_for_close():
                self.stats.add("stall_aborted")
            self.stats.add("stall_open", -1)
            return False
        elif path == "/stall-body":
            send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
            self.wait_for_close()
            return False
        elif path == "/trickle":
            send(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
            for _ in range(1000):
                send(b"x")
                time.sleep(0.1)
        elif path == "/close-mid-body":
            send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
            return False
        elif path == "/big":
            n = int(q.get("n", "1000"))
            send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % n)
            chunk = b"x" * 65536
            left = n
            while left > 0:
                send(chunk[:min(left, len(chunk))])
                left -= min(left, len(chunk))
        elif path == "/big-chunked":
            n = int(q.get("n", "1000"))
            send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            left = n
            while left > 0:
                k = min(left, 65536)
                send(b"%x\r\n%s\r\n" % (k, b"x" * k))
                left -= k
            send(b"0\r\n\r\n")
        elif path == "/interim":
            send(b"HTTP/1.1 100 Continue\r\n\r\n"
                 b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n")
            send(response(200, b"final", [("X-Final", "yes")]))
        elif path == "/garbage":
            send(b"SURELY NOT HTTP\r\n\r\n")
            return False
        elif path == "/redirect":
            if "to" in q:
                loc = q["to"]
            else:
                n = int(q.get("n", "1"))
                loc = "/redirect?n=%d" % (n - 1) if n > 1 else "/ok"
            send(response(int(q.get("status", "302")), b"", [("Location", loc)],
                          reason="Redirect"))
        elif path == "/once-per-conn":
            if served > 0:
                return False
            send(response(200, b"first", [("X-Conn", str(id(self)))]))
        elif path == "/echo":
            out = json.dumps({"method": method, "target": target,
                              "headers": headers,
                              "body": body.decode("latin-1")}).encode()
            send(response(200, out, [("Content-Type", "application/json")]))
        elif path == "/stats":
            send(response(200, json.dumps(self.stats.snapshot()).encode(),
                          [("Content-Type", "application/json")]))
        else:
            send(response(404, b"no such path", reason="Not Found"))
        return headers.get("connection", "").lower() != "close"


class RESPHandler(socketserver.BaseRequestHandler):
    """PING, ECHO, SET, GET, DEL, INCR, QUIT over RESP arrays of bulk strings
    (and inline commands), pipelining included."""

    def handle(self):
        self.request.settimeout(30)
        buf = b""
        data = self.server.data
        try:
            while True:
                cmd, buf = self.parse(buf)
                while cmd is None:
                    b = self.request.recv(65536)
                    if not b:
                        return
                    buf += b
                    cmd, buf = self.parse(buf)
                out = self.run(cmd, data)
                self.request.sendall(out)
                if cmd and cmd[0].upper() == b"QUIT":
                    return
        except (OSError, ValueError):
            return

    @staticmethod
    def parse(buf):
        if not buf:
            return None, buf
        if buf[:1] != b"*":
            if b"\r\n" not in buf:
                return None, buf
            line, rest = buf.split(b"\r\n", 1)
            return line.split(), rest
        if b"\r\n" not in buf:
            return None, buf
        line, rest = buf.split(b"\r\n", 1)
        n = int(line[1:])
        args = []
        for _ in range(n):
            if b"\r\n" not in rest:
                return None, buf
            line, after = rest.split(b"\r\n", 1)
            if line[:1] != b"$":
                raise ValueError("expected a bulk string")
            k = int(line[1:])
            if len(after) < k + 2:
                return None, buf
            args.append(after[:k])
            rest = after[k + 2:]
        return args, rest

    @staticmethod
    def bulk(v):
        if v is None:
            return b"$-1\r\n"
        return b"$%d\r\n%s\r\n" % (len(v), v)

    def run(self, cmd, data):
        if not cmd:
            return b"-ERR empty command\r\n"
        name = cmd[0].upper()
        if name == b"PING":
            return self.bulk(cmd[1]) if len(cmd) > 1 else b"+PONG\r\n"
        if name == b"ECHO" and len(cmd) == 2:
            return self.bulk(cmd[1])
        if name == b"SET" and len(cmd) == 3:
            data[cmd[1]] = cmd[2]
            return b"+OK\r\n"
        if name == b"GET" and len(cmd) == 2:
            return self.bulk(data.get(cmd[1]))
        if name == b"DEL":
            n = sum(1 for k in cmd[1:] if data.pop(k, None) is not None)
            return b":%d\r\n" % n
        if name == b"INCR" and len(cmd) == 2:
            try:
                v = int(data.get(cmd[1], b"0")) + 1
            except ValueError:
                return b"-ERR value is not an integer or out of range\r\n"
            data[cmd[1]] = b"%d" % v
            return b":%d\r\n" % v
        if name == b"QUIT":
            return b"+OK\r\n"
        return b"-ERR unknown command '%s'\r\n" % cmd[0]


class NoReadHandler(socketserver.BaseRequestHandler):
    """Accepts and never reads; holds the connection until the peer closes
    or 30 s pass."""

    def handle(self):
        deadline = time.time() + 30
        while time.time() < deadline and not self.server.stopping:
            time.sleep(0.05)


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    stopping = False


class Upstream:
    def __init__(self):
        self.stats_ = Stats()
        self.http = Server(("127.0.0.1", 0), HTTPHandler)
        self.http.stats = self.stats_
        self.resp = Server(("127.0.0.1", 0), RESPHandler)
        self.resp.data = {}
        self.noread = Server(("127.0.0.1", 0), NoReadHandler)
        self.noread.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        # A listener that never accepts, its queue kept full: connects to it
        # get no answer (the kernel drops their SYNs) and time out.
        self.blackhole = socket.socket()
        self.blackhole.bind(("127.0.0.1", 0))
        self.blackhole.listen(0)
        self.fillers = []
        bh = self.blackhole.getsockname()
        for _ in range(4):
            c = socket.socket()
            c.setblocking(False)
            try:
                c.connect(bh)
            except (BlockingIOError, OSError):
                pass
            self.fillers.append(c)
        self.threads = []
        for srv in (self.http, self.resp, self.noread):
            t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1},
                                 daemon=True)
            t.start()
            self.threads.append(t)

    http_port = property(lambda self: self.http.server_address[1])
    resp_port = property(lambda self: self.resp.server_address[1])
    noread_port = property(lambda self: self.noread.server_address[1])
    blackhole_port = property(lambda self: self.blackhole.getsockname()[1])

    def stats(self):
        return self.stats_.snapshot()

    def ports(self):
        return {"pid": os.getpid(), "http": self.http_port,
                "blackhole": self.blackhole_port, "noread": self.noread_port,
                "resp": self.resp_port}

    def stop(self):
        for srv in (self.http, self.resp, self.noread):
            srv.stopping = True
            srv.shutdown()
            srv.server_close()
        for c in self.fillers:
            c.close()
        self.blackhole.close()


def start():
    return Upstream()


def main():
    lifetime = 600.0
    if "--lifetime" in sys.argv:
        lifetime = float(sys.argv[sys.argv.index("--lifetime") + 1])
    up = start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: done.set())
    signal.signal(signal.SIGINT, lambda *a: done.set())
    sys.stdout.write(json.dumps(up.ports()) + "\n")
    sys.stdout.flush()
    done.wait(lifetime)
    up.stop()
    os._exit(0)


if __name__ == "__main__":
    main()
