"""Shared helpers for the binary tests: start `luaserve` on a free loopback
port, wait until it answers, talk raw HTTP over sockets, stop it by pid.

Every server listens on 127.0.0.1; every wait has a deadline."""
import os
import signal
import socket
import subprocess
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LUASERVE = os.environ.get("LUASERVE", os.path.join(ROOT, "luaserve"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A luaserve process serving `app` (a folder or .lua file)."""

    def __init__(self, app, *args, env=None, port=None, wait=True):
        self.port = port or free_port()
        self.args = [LUASERVE, app, "--host", "127.0.0.1", "--port", str(self.port)] + list(args)
        e = dict(os.environ)
        e.update(env or {})
        self.proc = subprocess.Popen(self.args, cwd=ROOT, env=e,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout=10.0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                out, err = self.proc.communicate()
                raise RuntimeError("luaserve exited %s: %s" % (self.proc.returncode, err.decode(errors="replace")))
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("luaserve did not start on port %d" % self.port)

    def connect(self, timeout=5.0):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s

    def request(self, raw, timeout=5.0):
        """Send raw bytes on a new connection; return everything read until
        the server closes (or the timeout)."""
        with self.connect(timeout) as s:
            s.sendall(raw)
            return read_until_close(s, timeout)

    def stop(self, sig=signal.SIGTERM, timeout=15.0):
        """Stop by pid; return (exit status, stderr text)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        return self.proc.returncode, err.decode(errors="replace")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.stop()
        else:
            self.proc.communicate()


def read_until_close(s, timeout=5.0):
    s.settimeout(timeout)
    chunks = []
    try:
        while True:
            b = s.recv(65536)
            if not b:
                break
            chunks.append(b)
    except (socket.timeout, ConnectionResetError):
        pass
    return b"".join(chunks)


def read_response(s, timeout=5.0):
    """Read one HTTP response (Content-Length bodies) off socket s.
    Returns (status, headers dict with lower-case names, body bytes)."""
    s.settimeout(timeout)
    buf = b""
    while b"\r\n\r\n" not in buf:
        b = s.recv(65536)
        if not b:
            raise ConnectionError("closed before the headers: %r" % buf)
        buf += b
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, v = line.split(":", 1)
        headers[k.strip().lower()] = v.strip()
    n = int(headers.get("content-length", "0"))
    while len(rest) < n:
        b = s.recv(65536)
        if not b:
            break
        rest += b
    return status, headers, rest[:n], rest[n:]


def parse_responses(data):
    """Split a byte stream of Content-Length responses into
    [(status, headers, body)]."""
    out = []
    while data:
        if b"\r\n\r\n" not in data:
            break
        head, rest = data.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
        n = int(headers.get("content-length", "0"))
        out.append((status, headers, rest[:n]))
        data = rest[n:]
    return out


def get(port, path, timeout=5.0, headers=""):
    """One GET on a new connection: (status, headers, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(("GET %s HTTP/1.1\r\nHost: t\r\n%s\r\n" % (path, headers)).encode())
        status, h, body, _ = read_response(s, timeout)
        return status, h, body
