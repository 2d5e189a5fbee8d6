"""TLS on the server, against the real binary, with real clients: curl,
Python's ssl and http.client, openssl s_client, Node's https, h2load and
wrk; session resumption, close_notify, renegotiation and old protocols
refused, client certificates, bad input on the TLS port, bad certificate
files, and the transport's guarantees (pipelining, the send timeout) over
TLS. Certificates are made for the run (tests/certs.py)."""
import http.client
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import unittest
import warnings

import certs
import harness
from test_transport import segments_in, slow_socket, read_all

HERE = os.path.dirname(os.path.abspath(__file__))
APP = os.path.join(HERE, "apps", "transport_app.lua")
CERTS = None


def setUpModule():
    global CERTS
    CERTS = certs.make(tempfile.mkdtemp(prefix="luaserve-certs-"))


def tearDownModule():
    shutil.rmtree(CERTS["dir"], ignore_errors=True)


def tls_flags(**extra):
    flags = ["--ssl-certfile", CERTS["chain"], "--ssl-keyfile", CERTS["server_key"]]
    for k, v in extra.items():
        flags += ["--" + k.replace("_", "-"), v]
    return flags


def client_context(cert=None):
    ctx = ssl.create_default_context(cafile=CERTS["ca"])
    if cert:
        ctx.load_cert_chain(CERTS[cert], CERTS[cert + "_key"])
    return ctx


def https_get(port, path, ctx=None):
    """One GET; the certificate is checked for 127.0.0.1 (an IP SAN)."""
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10,
                                       context=ctx or client_context())
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def tls_socket(port, ctx=None, server_hostname="localhost", **kw):
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    return (ctx or client_context()).wrap_socket(raw, server_hostname=server_hostname, **kw)


def run(args, timeout=30, input=None):
    p = subprocess.run(args, capture_output=True, timeout=timeout, input=input)
    return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")


class TLSServerTest(harness.ServerTest):
    @classmethod
    def setUpClass(cls):
        cls.SERVER = (APP,) + tuple(tls_flags())
        super().setUpClass()

    def test_banner_says_https(self):
        self.assertIn("on https://127.0.0.1:%d" % self.srv.port, self.srv.log())

    def test_python_http_client(self):
        ctx = client_context()
        ctx.set_alpn_protocols(["http/1.1"])
        status, body = https_get(self.srv.port, "/who", ctx)
        self.assertEqual(status, 200)
        who = json.loads(body)
        self.assertEqual(who["scheme"], "https")
        self.assertIn(who["tls"]["version"], ("TLSv1.2", "TLSv1.3"))
        self.assertEqual(who["tls"]["alpn"], "http/1.1")
        self.assertEqual(who["client"], "127.0.0.1")

    def test_curl_with_cacert(self):
        code, out, err = run(["curl", "-sS", "--cacert", CERTS["ca"],
                              "https://127.0.0.1:%d/who" % self.srv.port])
        self.assertEqual(code, 0, err)
        self.assertEqual(json.loads(out)["scheme"], "https")
        # without the CA: curl refuses the certificate
        code, _, err = run(["curl", "-sS", "https://127.0.0.1:%d/who" % self.srv.port])
        self.assertNotEqual(code, 0)
        self.assertIn("certificate", err)

    def test_openssl_s_client_shows_alpn(self):
        code, out, err = run(["openssl", "s_client", "-connect", "127.0.0.1:%d" % self.srv.port,
                              "-alpn", "h2,http/1.1", "-servername", "localhost",
                              "-CAfile", CERTS["ca"]], input=b"")
        self.assertIn("ALPN protocol: http/1.1", out)
        self.assertIn("Verify return code: 0 (ok)", out)

    def test_node_https(self):
        script = ("const https=require('https'),fs=require('fs');"
                  "https.get({host:'127.0.0.1',servername:'localhost',port:%d,path:'/who',"
                  "ca:fs.readFileSync(%r)},r=>{let b='';r.on('data',d=>b+=d);"
                  "r.on('end',()=>{console.log(r.statusCode+' '+b)})})"
                  ".on('error',e=>{console.log('error '+e.message);process.exit(1)})"
                  % (self.srv.port, CERTS["ca"]))
        code, out, err = run(["node", "-e", script])
        self.assertEqual(code, 0, out + err)
        status, body = out.split(" ", 1)
        self.assertEqual(status, "200")
        self.assertEqual(json.loads(body)["scheme"], "https")

    def test_h2load_h1_over_tls(self):
        code, out, err = run(["h2load", "--h1", "-n", "400", "-c", "4",
                              "https://127.0.0.1:%d/who" % self.srv.port])
        self.assertEqual(code, 0, out + err)
        self.assertRegex(out, r"requests: 400 total, 400 started, 400 done, 400 succeeded")
        self.assertIn("TLS Protocol: TLSv1.3", out)

    def test_wrk_over_https(self):
        code, out, err = run(["wrk", "-t1", "-c8", "-d1s",
                              "https://127.0.0.1:%d/who" % self.srv.port])
        self.assertEqual(code, 0, out + err)
        n = int(re.search(r"(\d+) requests in", out).group(1))
        self.assertGreater(n, 100, out)
        self.assertNotIn("Socket errors", out)
        self.assertNotIn("Non-2xx", out)

    def test_sessions_resume(self):
        ctx = client_context()
        s = tls_socket(self.srv.port, ctx)
        s.sendall(b"GET /who HTTP/1.1\r\nHost: localhost\r\n\r\n")
        s.recv(65536)          # the answer: the session ticket came before it
        session = s.session
        s.close()
        self.assertIsNotNone(session)
        s2 = tls_socket(self.srv.port, ctx, session=session)
        try:
            self.assertTrue(s2.session_reused)
        finally:
            s2.close()

    def test_close_notify_on_close(self):
        s = tls_socket(self.srv.port, suppress_ragged_eofs=False)
        s.sendall(b"GET /who HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            b = s.recv(65536)   # an EOF without close_notify raises SSLEOFError
            if not b:
                break
            data += b
        s.close()
        self.assertTrue(data.startswith(b"HTTP/1.1 200 OK"), data[:80])

    def test_renegotiation_is_refused(self):
        code, out, err = run(["sh", "-c", "(sleep 0.5; echo R; sleep 1) | openssl s_client "
                              "-tls1_2 -connect 127.0.0.1:%d -servername localhost" % self.srv.port])
        self.assertIn("RENEGOTIATING", out + err)
        self.assertIn("no renegotiation", out + err)

    def test_tls_1_1_is_refused(self):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_ciphers("DEFAULT@SECLEVEL=0")
        with warnings.catch_warnings():   # deprecated: that is the point
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = ssl.TLSVersion.TLSv1
            ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        with self.assertRaises(ssl.SSLError):
            tls_socket(self.srv.port, ctx).close()
        # the server goes on
        self.assertEqual(https_get(self.srv.port, "/who")[0], 200)

    def test_pipelined_answers_go_out_in_one_batch(self):
        s = tls_socket(self.srv.port)
        s.sendall(b"GET /who HTTP/1.1\r\nHost: localhost\r\n\r\n")
        first = s.recv(65536)
        self.assertTrue(first.startswith(b"HTTP/1.1 200"))
        time.sleep(0.2)
        before = segments_in(s)
        s.sendall(b"GET /who HTTP/1.1\r\nHost: localhost\r\n\r\n" * 16)
        data = b""
        while data.count(b"HTTP/1.1 200 OK") < 16:
            data += s.recv(65536)
        after = segments_in(s)
        s.close()
        # One send of the 16 answers' records (see test_transport).
        self.assertLessEqual(after - before, 3, "%d segments" % (after - before))

    def test_a_large_body_both_ways(self):
        s = tls_socket(self.srv.port)
        body = os.urandom(900 * 1024)
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n"
                  b"Connection: close\r\n\r\n" % len(body) + body)
        data = b""
        while True:
            b = s.recv(1 << 20)
            if not b:
                break
            data += b
        s.close()
        head, got = data.split(b"\r\n\r\n", 1)
        self.assertIn(b"200 OK", head)
        self.assertEqual(got, body)


class BadInputTest(unittest.TestCase):
    """Bad input on the TLS port closes that connection only; at most one
    debug line each; the next client is served."""

    def setUp(self):
        self.srv = harness.Server(APP, "--log-level", "debug", "--timeout-header", "1",
                                  *tls_flags())

    def tearDown(self):
        status, log = self.srv.stop()
        self.assertEqual(status, 0, log)

    def served(self):
        self.assertEqual(https_get(self.srv.port, "/who")[0], 200)

    def test_plain_http_gets_a_readable_400(self):
        raw = self.srv.request(b"GET /who HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(raw.startswith(b"HTTP/1.1 400 Bad Request"), raw)
        self.assertIn(b"use https://", raw)
        self.served()
        time.sleep(0.2)
        self.assertEqual(len(re.findall(r"handshake failed: http request", self.srv.log())), 1,
                         self.srv.log())

    def test_garbage_client_hello(self):
        with self.srv.connect() as s:
            port = s.getsockname()[1]
            s.sendall(b"\x16\x03\x01\x00\x10" + os.urandom(316))
            raw = harness.read_until_close(s)
        self.assertNotIn(b"HTTP", raw)
        self.served()
        time.sleep(0.2)
        lines = re.findall(r"DEBUG tls: 127.0.0.1:%d: handshake failed" % port, self.srv.log())
        self.assertEqual(len(lines), 1, self.srv.log())

    def test_truncated_client_hello_is_bounded_by_the_header_timeout(self):
        # The start of a real ClientHello, then nothing.
        hello = bytearray()
        mem_in, mem_out = ssl.MemoryBIO(), ssl.MemoryBIO()
        ctx = client_context()
        obj = ctx.wrap_bio(mem_in, mem_out, server_hostname="localhost")
        try:
            obj.do_handshake()
        except ssl.SSLWantReadError:
            hello = mem_out.read()
        s = socket.create_connection(("127.0.0.1", self.srv.port))
        s.sendall(hello[:40])
        t0 = time.time()
        s.settimeout(5)
        try:
            self.assertEqual(s.recv(100), b"")
        except ConnectionResetError:
            pass
        took = time.time() - t0
        s.close()
        self.assertGreater(took, 0.7)
        self.assertLess(took, 3.5)
        self.served()

    def test_client_vanishing_mid_record(self):
        s = tls_socket(self.srv.port)
        s.sendall(b"GET /who HTTP/1.1\r\nHost: localhost\r\n\r\n")
        s.recv(65536)
        # Under the TLS session: half an application-data record, then an RST.
        sock = socket.socket(fileno=os.dup(s.fileno()))
        s.close()
        sock.sendall(b"\x17\x03\x03\x40\x00" + os.urandom(100))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()
        time.sleep(0.3)
        self.served()
        self.assertTrue(self.srv.alive())


class ClientCertificateTest(unittest.TestCase):
    def test_required_client_certificates(self):
        with harness.Server(APP, *tls_flags(ssl_ca_certs=CERTS["ca"],
                                            ssl_cert_reqs="required")) as srv:
            status, body = https_get(srv.port, "/who", client_context("client"))
            self.assertEqual(status, 200)
            tls = json.loads(body)["tls"]
            self.assertIn("CN=test-client", tls["peer_subject"])
            self.assertTrue(tls["peer_verified"])
            with self.assertRaises((ssl.SSLError, ConnectionError)):
                https_get(srv.port, "/who", client_context())
            # a certificate from another CA (self-signed) is refused too
            with self.assertRaises((ssl.SSLError, ConnectionError)):
                https_get(srv.port, "/who", client_context("self"))
            self.assertEqual(https_get(srv.port, "/who", client_context("client"))[0], 200)

    def test_optional_client_certificates(self):
        with harness.Server(APP, *tls_flags(ssl_ca_certs=CERTS["ca"],
                                            ssl_cert_reqs="optional")) as srv:
            status, body = https_get(srv.port, "/who", client_context())
            self.assertEqual(status, 200)
            self.assertIsNone(json.loads(body)["tls"]["peer_subject"])
            status, body = https_get(srv.port, "/who", client_context("client"))
            self.assertIn("CN=test-client", json.loads(body)["tls"]["peer_subject"])

    def test_an_encrypted_key_with_its_password(self):
        with harness.Server(APP, "--ssl-certfile", CERTS["chain"], "--ssl-keyfile",
                            CERTS["enc_key"], env={"LUASERVE_SSL_KEYFILE_PASSWORD": "secret"}) as srv:
            self.assertEqual(https_get(srv.port, "/who")[0], 200)


class BadFilesTest(unittest.TestCase):
    """A bad certificate or key: one line naming the file and the reason,
    exit status 2, before anything listens."""

    def refused(self, *flags):
        port = harness.free_port()
        code, out, err = harness.run_cli([APP, "--port", str(port)] + list(flags))
        self.assertEqual(code, 2, err)
        self.assertNotIn("serving", err)
        lines = err.strip().splitlines()
        self.assertEqual(len(lines), 1, err)
        with self.assertRaises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return lines[0]

    def test_missing_certificate(self):
        line = self.refused("--ssl-certfile", "/nonexistent/cert.pem",
                            "--ssl-keyfile", CERTS["server_key"])
        self.assertEqual(line, "luaserve: --ssl-certfile /nonexistent/cert.pem: "
                               "No such file or directory")

    def test_a_directory_is_not_a_certificate(self):
        line = self.refused("--ssl-certfile", CERTS["dir"], "--ssl-keyfile", CERTS["server_key"])
        self.assertIn("--ssl-certfile %s:" % CERTS["dir"], line)

    def test_malformed_certificate(self):
        line = self.refused("--ssl-certfile", CERTS["garbage"], "--ssl-keyfile", CERTS["server_key"])
        self.assertIn("--ssl-certfile %s: " % CERTS["garbage"], line)

    def test_malformed_key(self):
        line = self.refused("--ssl-certfile", CERTS["server"], "--ssl-keyfile", CERTS["garbage"])
        self.assertIn("--ssl-keyfile %s: " % CERTS["garbage"], line)

    def test_key_that_does_not_match(self):
        line = self.refused("--ssl-certfile", CERTS["server"], "--ssl-keyfile", CERTS["other_key"])
        self.assertEqual(line, "luaserve: --ssl-keyfile %s: the key does not match "
                               "the certificate" % CERTS["other_key"])

    def test_encrypted_key_without_or_with_a_wrong_password(self):
        line = self.refused("--ssl-certfile", CERTS["server"], "--ssl-keyfile", CERTS["enc_key"])
        self.assertIn("the key is encrypted", line)
        line = self.refused("--ssl-certfile", CERTS["server"], "--ssl-keyfile", CERTS["enc_key"],
                            "--ssl-keyfile-password", "wrong")
        self.assertIn("wrong password", line)

    def test_client_verification_needs_ca_certs(self):
        line = self.refused(*tls_flags(ssl_cert_reqs="required"))
        self.assertIn("--ssl-ca-certs", line)


class SlowReaderTLSTest(unittest.TestCase):
    def test_a_tls_reader_that_stops_is_cut_off_after_timeout_send(self):
        with harness.Server(APP, "--timeout-send", "1", *tls_flags()) as srv:
            t = slow_socket(srv.port, lambda s: client_context().wrap_socket(
                s, server_hostname="localhost"))
            t.sendall(b"GET /big?mb=20 HTTP/1.1\r\nHost: localhost\r\n\r\n")
            time.sleep(3.5)
            got = read_all(t, (ConnectionError, socket.timeout, ssl.SSLError))
            t.close()
            self.assertLess(got, 10 * 1024 * 1024)
            self.assertGreater(got, 0)
            self.assertTrue(srv.wait_log(r"send timeout", 2), srv.log())
            self.assertEqual(https_get(srv.port, "/who")[0], 200)


if __name__ == "__main__":
    unittest.main()
