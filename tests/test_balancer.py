"""Two luaserve instances (--workers 2 each) behind a real HAProxy and a real
nginx (tests/balancer/*: the configurations the README shows), all on
loopback ports, stopped by pid: requests are balanced over both instances,
the app sees the original client's address (the client connects from
127.0.0.2; the balancers from 127.0.0.1, which --forwarded-allow-ips trusts
by default) and a reload (SIGHUP) of one instance under a wrk run loses no
request. Forwarding headers from an untrusted peer are ignored."""
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest

import harness

HERE = os.path.dirname(os.path.abspath(__file__))
APP = "tests/apps/workers_app.lua"
CLIENT_ADDR = "127.0.0.2"   # the "original client": not the balancer's address


def get_from(port, path, source=CLIENT_ADDR, headers="", timeout=5.0):
    """GET on a new connection made from the source address."""
    s = socket.socket()
    s.settimeout(timeout)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    with s:
        s.sendall(("GET %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n%s\r\n"
                   % (path, headers)).encode())
        status, h, body, _ = harness.read_response(s, timeout)
        return status, json.loads(body) if body else None


def fill(template, **values):
    with open(os.path.join(HERE, "balancer", template)) as f:
        text = f.read()
    for k, v in values.items():
        text = text.replace("@%s@" % k, v)
    return text


class Balanced:
    """Start the two instances once for a test class."""

    @classmethod
    def start_instances(cls):
        cls.a = harness.Server(APP, "--workers", "2", "--no-access-log",
                               env={"WORKERS_APP_VERSION": "a"})
        cls.b = harness.Server(APP, "--workers", "2", "--no-access-log",
                               env={"WORKERS_APP_VERSION": "b"})
        for srv in (cls.a, cls.b):
            if not srv.wait_log(r"serving .* with 2 workers", 10):
                raise RuntimeError(srv.log())

    @classmethod
    def stop_instances(cls):
        for srv in (cls.a, cls.b):
            status, log = srv.stop()
            assert status == 0, log

    def check_balanced_and_client(self, port):
        seen = set()
        for _ in range(20):
            status, body = get_from(port, "/whoami")
            self.assertEqual(status, 200)
            seen.add(body["version"])
            self.assertEqual(body["client"], CLIENT_ADDR, body)
            self.assertEqual(body["scheme"], "http")
        self.assertEqual(seen, {"a", "b"})

    def check_reload_under_load(self, port):
        wrk = subprocess.Popen(["wrk", "-t1", "-c16", "-d4s",
                                "http://127.0.0.1:%d/whoami" % port],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.addCleanup(lambda: wrk.poll() is None and wrk.kill())
        old = harness_children(self.a.proc.pid)
        time.sleep(1.0)
        self.a.proc.send_signal(signal.SIGHUP)
        out = wrk.communicate(timeout=30)[0].decode()
        self.assertEqual(wrk.returncode, 0, out)
        self.assertRegex(out, r"\d+ requests in")
        self.assertNotIn("Socket errors", out)
        self.assertNotIn("Non-2xx", out)
        deadline = time.time() + 10
        while time.time() < deadline and set(harness_children(self.a.proc.pid)) & set(old):
            time.sleep(0.1)
        self.assertFalse(set(harness_children(self.a.proc.pid)) & set(old), self.a.log())
        self.assertIn("SIGHUP: reloading", self.a.log())
        self.check_balanced_and_client(port)


def harness_children(pid):
    from test_workers import children
    return children(pid)


class BalancerTest(Balanced):
    """Two instances, then the balancer (start_balancer(conf_dir)), once
    for the class; everything is stopped by pid afterwards."""

    @classmethod
    def setUpClass(cls):
        cls.start_instances()
        cls.dir = tempfile.mkdtemp(prefix="luaserve-balancer-")
        os.chmod(cls.dir, 0o755)
        cls.port = harness.free_port()
        try:
            cls.proc = cls.start_balancer(dict(
                LISTEN="127.0.0.1:%d" % cls.port, DIR=cls.dir,
                UPSTREAM_A="127.0.0.1:%d" % cls.a.port,
                UPSTREAM_B="127.0.0.1:%d" % cls.b.port))
            wait_port(cls.port, cls.proc)
        except Exception:
            cls.stop_instances()
            raise

    @classmethod
    def tearDownClass(cls):
        stop(cls.proc)
        cls.stop_instances()
        shutil.rmtree(cls.dir, ignore_errors=True)

    @classmethod
    def write_conf(cls, template, values):
        conf = os.path.join(cls.dir, template)
        with open(conf, "w") as f:
            f.write(fill(template, **values))
        return conf

    def test_balanced_and_original_client(self):
        self.check_balanced_and_client(self.port)

    def test_reload_of_one_instance_under_load_loses_nothing(self):
        self.check_reload_under_load(self.port)


@unittest.skipUnless(shutil.which("nginx") or os.path.exists("/usr/sbin/nginx"),
                     "nginx is not installed (make test installs it)")
class NginxTest(BalancerTest, unittest.TestCase):
    @classmethod
    def start_balancer(cls, values):
        conf = cls.write_conf("nginx.conf", values)
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        return subprocess.Popen([nginx, "-c", conf, "-p", cls.dir, "-e",
                                 os.path.join(cls.dir, "error.log")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)


@unittest.skipUnless(shutil.which("haproxy") or os.path.exists("/usr/sbin/haproxy"),
                     "haproxy is not installed (make test installs it)")
class HAProxyTest(BalancerTest, unittest.TestCase):
    @classmethod
    def start_balancer(cls, values):
        conf = cls.write_conf("haproxy.cfg", values)
        haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
        return subprocess.Popen([haproxy, "-f", conf, "-db"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)


class ProxyHeadersTest(harness.ServerTest):
    """Straight to luaserve: who may set the client's address and scheme."""

    SERVER = (APP, "--no-access-log", "--forwarded-allow-ips", "127.0.0.1, 10.0.0.0/8",
              "--root-path", "/api")

    def test_trusted_peer_sets_client_and_scheme(self):
        status, body = get_from(self.srv.port, "/whoami", source="127.0.0.1",
                                headers="X-Forwarded-For: 203.0.113.7, 10.1.1.1\r\n"
                                        "X-Forwarded-Proto: https\r\n")
        self.assertEqual(body["client"], "203.0.113.7")   # 10.1.1.1 is a trusted hop
        self.assertEqual(body["scheme"], "https")
        status, body = get_from(self.srv.port, "/whoami", source="127.0.0.1",
                                headers='Forwarded: for="[2001:db8::1]:4711";proto=https\r\n')
        self.assertEqual(body["client"], "2001:db8::1")
        self.assertEqual(body["scheme"], "https")

    def test_untrusted_peer_is_ignored(self):
        status, body = get_from(self.srv.port, "/whoami", source=CLIENT_ADDR,
                                headers="X-Forwarded-For: 6.6.6.6\r\n"
                                        "X-Forwarded-Proto: https\r\n"
                                        "Forwarded: for=6.6.6.7\r\n")
        self.assertEqual(body["client"], CLIENT_ADDR)
        self.assertEqual(body["scheme"], "http")

    def test_untrusted_hop_ends_the_chain(self):
        # 198.51.100.9 is not trusted: what it claims (the 6.6.6.6 to its
        # left) cannot be believed
        status, body = get_from(self.srv.port, "/whoami", source="127.0.0.1",
                                headers="X-Forwarded-For: 6.6.6.6, 198.51.100.9\r\n")
        self.assertEqual(body["client"], "198.51.100.9")

    def test_root_path(self):
        status, body = get_from(self.srv.port, "/api/whoami")
        self.assertEqual(status, 200)
        self.assertEqual(body["path"], "/whoami")
        self.assertEqual(body["root_path"], "/api")
        status, body = get_from(self.srv.port, "/whoami")   # a proxy that strips it
        self.assertEqual(status, 200)
        status, _ = get_from(self.srv.port, "/apiwhoami")
        self.assertEqual(status, 404)


class ProxyHeadersOffTest(harness.ServerTest):
    SERVER = (APP, "--no-access-log", "--no-proxy-headers")

    def test_headers_are_ignored(self):
        status, body = get_from(self.srv.port, "/whoami", source="127.0.0.1",
                                headers="X-Forwarded-For: 203.0.113.7\r\n")
        self.assertEqual(body["client"], "127.0.0.1")


def wait_port(port, proc, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the balancer exited with %s" % proc.returncode)
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    stop(proc)
    raise RuntimeError("the balancer did not listen on %d" % port)


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    unittest.main()
