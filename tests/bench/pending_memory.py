#!/usr/bin/env python3
"""Resident memory per pending request: start `luaserve apps/bench`, open N
connections that each send GET /sleep?ms=<long> (so N requests are parked in
the server, each a coroutine waiting on a timer), and compare the server's
RSS with N pending against its RSS before. Prints one line:

  pending_memory n=10000 rss_before_kb=... rss_pending_kb=... per_request_bytes=...

Everything listens on 127.0.0.1; the server is stopped by pid."""
import os
import resource
import selectors
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LUASERVE = os.environ.get("LUASERVE", os.path.join(ROOT, "luaserve"))
N = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
SLEEP_MS = 60000


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, N + 1000)
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if want < N + 100:
        print("pending_memory: fd limit %d too low for n=%d" % (want, N))
        return 1
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([LUASERVE, "apps/bench", "--port", str(port), "--no-access-log",
                             "--backlog", "4096", "--timeout-keep-alive", "120"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        # Warm up: a few requests of the same kind, so that what the runtime
        # allocates once (JIT traces, module tables) is in the baseline.
        for _ in range(50):
            with socket.create_connection(("127.0.0.1", port)) as c:
                c.sendall(b"GET /sleep?ms=1 HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
                while c.recv(4096):
                    pass
        time.sleep(0.5)
        before = rss_kb(proc.pid)
        socks = []
        req = ("GET /sleep?ms=%d HTTP/1.1\r\nHost: b\r\n\r\n" % SLEEP_MS).encode()
        t0 = time.time()
        for i in range(N):
            c = socket.socket()
            c.setblocking(True)
            c.connect(("127.0.0.1", port))
            c.sendall(req)
            socks.append(c)
        # Let the server read and park every request.
        time.sleep(2.0)
        during = rss_kb(proc.pid)
        alive = proc.poll() is None
        per = (during - before) * 1024 / N
        print("pending_memory n=%d rss_before_kb=%d rss_pending_kb=%d per_request_bytes=%.0f "
              "connect_s=%.1f server_alive=%s" % (N, before, during, per, time.time() - t0, alive))
        for c in socks:
            c.close()
        return 0 if alive else 1
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    sys.exit(main())
