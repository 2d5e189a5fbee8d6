"""Shared helpers for the binary tests: start `luaserve` on a free loopback
port, wait until it answers, talk raw HTTP over sockets, stop it by pid.

Every server listens on 127.0.0.1; every wait has a deadline."""
import os
import re
import resource
import signal
import socket
import subprocess
import tempfile
import time
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LUASERVE = os.environ.get("LUASERVE", os.path.join(ROOT, "luaserve"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A luaserve process serving `app` (a folder or .lua file)."""

    def __init__(self, app, *args, env=None, port=None, wait=True, port_flags=True):
        """port_flags=False: no --host/--port flags (set them through env;
        `port` still names where to wait for the server). A "was never
        awaited" warning in the log fails the test at stop()."""
        self.port = port or free_port()
        flags = ["--host", "127.0.0.1", "--port", str(self.port)] if port_flags else []
        self.args = [LUASERVE, app] + flags + list(args)
        e = dict(os.environ)
        e.update(env or {})
        # stderr goes to a file, not a pipe: a busy access log never blocks
        # the server on a full pipe, and tests read it while it runs.
        self.errfile = tempfile.TemporaryFile()
        self.outfile = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(self.args, cwd=ROOT, env=e,
                                     stdout=self.outfile, stderr=self.errfile)
        if wait:
            self.wait_ready()

    def log(self):
        """Everything the server wrote on stderr so far."""
        if self.errfile.closed:   # stopped: the text was kept
            return self.final_log
        self.errfile.seek(0)
        return self.errfile.read().decode(errors="replace")

    def wait_log(self, pattern, timeout=5.0):
        """Wait until stderr matches the regex `pattern`; return the match
        (None after the timeout). Access lines are flushed every 100 ms."""
        deadline = time.time() + timeout
        while True:
            m = re.search(pattern, self.log())
            if m or time.time() >= deadline:
                return m
            time.sleep(0.05)

    def alive(self):
        return self.proc.poll() is None

    def wait_ready(self, timeout=10.0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("luaserve exited %s: %s" % (self.proc.returncode, self.log()))
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.proc.kill()
        self.proc.wait()
        raise RuntimeError("luaserve did not start on port %d: %s" % (self.port, self.log()))

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
        """Stop by pid; return (exit status, stderr text). Raises
        AssertionError when the sanitizer build reported an error."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        err = self.log()
        if not self.errfile.closed:
            self.final_log = err
            self.errfile.close()
            self.outfile.close()
        check_sanitizer(self.proc.returncode, err)
        if "was never awaited" in err:
            raise AssertionError("luaserve reported a future never awaited "
                                 "(a bug in the app or the framework):\n" + err)
        return self.proc.returncode, err

    def wait(self, timeout=15.0):
        """Wait for the process to exit on its own (after a signal the test
        sent: a second one could cut its clean-up short); return (exit
        status, stderr text) like stop()."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        return self.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


# What ASan, LSan and UBSan print, and the exit statuses tests/run gives
# them (ASAN_OPTIONS exitcode=86, UBSAN_OPTIONS exitcode=87).
SANITIZER_REPORT = re.compile(r"ERROR: (Address|Leak)Sanitizer|"
                              r"\.[ch]:\d+:\d+: runtime error:")
SANITIZER_EXIT = (86, 87)


def check_sanitizer(status, stderr):
    """Raise AssertionError if a sanitizer build reported an error."""
    m = SANITIZER_REPORT.search(stderr)
    if m or status in SANITIZER_EXIT:
        start = m.start() if m else max(0, len(stderr) - 3000)
        raise AssertionError("sanitizer report (exit status %s):\n%s"
                             % (status, stderr[start:start + 3000]))


def run_cli(args, env=None, timeout=15.0):
    """Run `luaserve ARGS` to completion: (exit status, stdout, stderr).
    Sanitizer reports fail the caller."""
    e = dict(os.environ)
    e.update(env or {})
    p = subprocess.run([LUASERVE] + list(args), cwd=ROOT, env=e,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=timeout)
    err = p.stderr.decode(errors="replace")
    check_sanitizer(p.returncode, err)
    return p.returncode, p.stdout.decode(errors="replace"), err


def raise_nofile(n):
    """Raise this process's open-file limit to at least n (children inherit
    it) where the hard limit allows; return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n:
        want = n if hard == resource.RLIM_INFINITY else min(n, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        soft = want
    return soft


class Response:
    """A parsed HTTP response: status, reason, version, headers (lower-case
    names; repeated ones joined with ", "), body bytes, head (raw bytes)."""

    def __init__(self, status, reason, version, headers, body, head):
        self.status, self.reason, self.version = status, reason, version
        self.headers, self.body, self.head = headers, body, head

    def json(self):
        import json
        return json.loads(self.body.decode())

    def __repr__(self):
        return "<Response %d %r>" % (self.status, self.body[:80])


class Client:
    """One client connection with a read buffer, so that several responses
    (keep-alive, pipelining) are read one at a time off the same socket."""

    def __init__(self, port, timeout=5.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def request(self, method, path, headers=None, body=b"", version="1.1"):
        """Send one request; Host is added, Content-Length when there is a
        body. headers: list of (name, value)."""
        headers = list(headers or [])
        if not any(k.lower() == "host" for k, _ in headers):
            headers.insert(0, ("Host", "test"))
        if body and not any(k.lower() in ("content-length", "transfer-encoding")
                            for k, _ in headers):
            headers.append(("Content-Length", str(len(body))))
        head = "%s %s HTTP/%s\r\n" % (method, path, version)
        head += "".join("%s: %s\r\n" % kv for kv in headers) + "\r\n"
        self.send(head.encode("latin-1") + body)

    def _fill(self):
        b = self.sock.recv(65536)
        if not b:
            raise ConnectionError("closed by the server; read so far: %r" % self.buf[:200])
        self.buf += b

    def _line(self):
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _take(self, n):
        while len(self.buf) < n:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def response(self, head=False, timeout=None):
        """Read one response (Content-Length, chunked or until close). For a
        HEAD request pass head=True: no body follows the headers."""
        self.sock.settimeout(timeout or self.timeout)
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        raw, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = raw.decode("latin-1").split("\r\n")
        version, status, reason = (lines[0].split(" ", 2) + [""])[:3]
        headers = {}
        for line in lines[1:]:
            k, v = line.split(":", 1)
            k, v = k.strip().lower(), v.strip()
            headers[k] = headers[k] + ", " + v if k in headers else v
        status = int(status)
        if head or status < 200 or status in (204, 304):
            body = b""
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int(self._line().split(b";")[0], 16)
                if size == 0:
                    while self._line() != b"":
                        pass
                    break
                body += self._take(size)
                self._take(2)
        elif "content-length" in headers:
            body = self._take(int(headers["content-length"]))
        else:
            body = self.read_until_close()
        return Response(status, reason, version, headers, body, raw + b"\r\n\r\n")

    def read_until_close(self, timeout=None):
        data = self.buf + read_until_close(self.sock, timeout or self.timeout)
        self.buf = b""
        return data

    def wait_closed(self, timeout=5.0):
        """Wait for the server to close: True if it did within timeout (any
        bytes that came first are kept in self.buf), False otherwise."""
        deadline = time.time() + timeout
        while True:
            left = deadline - time.time()
            if left <= 0:
                return False
            self.sock.settimeout(left)
            try:
                b = self.sock.recv(65536)
            except socket.timeout:
                return False
            except (ConnectionResetError, BrokenPipeError):
                return True
            if not b:
                return True
            self.buf += b

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class ServerTest(unittest.TestCase):
    """Test classes that share one server: SERVER = (app, *flags) and, if
    needed, SERVER_ENV. The server is started once for the class (self.srv)
    and must exit 0 on the SIGTERM that stops it (stop() also fails on any
    sanitizer report)."""

    SERVER = ("apps/bench",)
    SERVER_ENV = None

    @classmethod
    def setUpClass(cls):
        cls.srv = Server(*cls.SERVER, env=cls.SERVER_ENV)

    @classmethod
    def tearDownClass(cls):
        status, _ = cls.srv.stop()
        assert status == 0, status


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


def read_head(s):
    """Read a response head off socket s: (status, headers dict with
    lower-case names, the bytes read past the head)."""
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
    return status, headers, rest


def read_response(s, timeout=5.0):
    """Read one HTTP response (Content-Length bodies) off socket s.
    Returns (status, headers dict with lower-case names, body bytes)."""
    s.settimeout(timeout)
    status, headers, rest = read_head(s)
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
