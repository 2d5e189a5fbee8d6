"""Cookies, forms and streamed uploads against the real binary, with real
clients: curl (-b, -c, -F with a 20 MB file while the server's memory is
watched), Python's http.client (whole and chunked bodies), Node's fetch
with FormData; an upload over TLS; a client that leaves mid-upload; a
handler slower than its client (back-pressure); Expect: 100-continue;
keep-alive and pipelining after a streamed body; limits (413), malformed
bodies (400), a stalled sender (408); the demo's /login and /upload.
Every server gets a private TMPDIR, so leftover temp files are seen."""
import hashlib
import http.client
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import unittest

import certs
import harness

HERE = os.path.dirname(os.path.abspath(__file__))
APP = os.path.join(HERE, "apps", "forms_app.lua")
DEMO = os.path.join(os.path.dirname(HERE), "apps", "demo")
BOUNDARY = "----luaserveFormsTest9f8e7d"
MB = 1024 * 1024
SAN = os.sep + "san" + os.sep in harness.LUASERVE


def multipart(parts, boundary=BOUNDARY):
    """parts: (name, value bytes) or (name, value bytes, filename, type)."""
    out = []
    for p in parts:
        name, value = p[0], p[1]
        out.append(b"--" + boundary.encode() + b"\r\n")
        if len(p) > 2:
            out.append(('Content-Disposition: form-data; name="%s"; filename="%s"\r\n'
                        'Content-Type: %s\r\n' % (name, p[2], p[3])).encode())
        else:
            out.append(('Content-Disposition: form-data; name="%s"\r\n' % name).encode())
        out.append(b"\r\n" + value + b"\r\n")
    out.append(b"--" + boundary.encode() + b"--\r\n")
    return b"".join(out)


def mp_head(path, length=None, extra=""):
    h = ("POST %s HTTP/1.1\r\nHost: test\r\nContent-Type: multipart/form-data; "
         "boundary=%s\r\n" % (path, BOUNDARY))
    if length is not None:
        h += "Content-Length: %d\r\n" % length
    return (h + extra + "\r\n").encode()


def status_kb(pid, field):
    with open("/proc/%d/status" % pid) as f:
        return int(re.search(field + r":\s+(\d+)", f.read()).group(1))


def reset_peak(pid):
    """Reset VmHWM (the peak RSS) to the current RSS (Linux >= 4.0)."""
    with open("/proc/%d/clear_refs" % pid, "w") as f:
        f.write("5")


class FormsServerTest(unittest.TestCase):
    """One server (tests/apps/forms_app.lua) per test class, TMPDIR private."""
    ARGS = ()

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="luaserve-forms-tmp-")
        cls.files = tempfile.mkdtemp(prefix="luaserve-forms-files-")
        cls.srv = harness.Server(APP, *cls.ARGS, env={"TMPDIR": cls.tmp})

    @classmethod
    def tearDownClass(cls):
        try:
            status, log = cls.srv.stop()
            assert status == 0, log   # a crash at shutdown after the uploads
        finally:
            shutil.rmtree(cls.tmp, ignore_errors=True)
            shutil.rmtree(cls.files, ignore_errors=True)

    def url(self, path):
        return "http://127.0.0.1:%d%s" % (self.srv.port, path)

    def leftovers(self, timeout=5.0):
        """Temp files left in the server's TMPDIR, once they had time to go."""
        deadline = time.time() + timeout
        while True:
            left = [n for n in os.listdir(self.tmp) if n.startswith("luaserve-upload-")]
            if not left or time.time() > deadline:
                return left
            time.sleep(0.05)

    def make_file(self, name, size):
        path = os.path.join(self.files, name)
        if not os.path.exists(path):
            with open(path, "wb") as f:
                left = size
                while left:
                    n = min(left, MB)
                    f.write(os.urandom(n))
                    left -= n
        with open(path, "rb") as f:
            return path, hashlib.sha256(f.read()).hexdigest()

    def post_raw(self, path, body, extra=""):
        with harness.Client(self.srv.port, timeout=30) as c:
            c.send(mp_head(path, len(body), extra) + body)
            return c.response(timeout=30)


class CurlTest(FormsServerTest):
    def test_curl_uploads_20_mb_in_bounded_memory(self):
        path, digest = self.make_file("big.bin", 20 * MB)
        small, small_digest = self.make_file("small.bin", 3 * MB)
        pid = self.srv.proc.pid
        # Warm up (first uploads: the pool threads, the allocator's arenas),
        # then watch the peak.
        for _ in range(2):
            out = subprocess.run(["curl", "-sS", "-F", "f=@" + small, self.url("/upload")],
                                 capture_output=True, timeout=30).stdout
            self.assertEqual(json.loads(out)["files"][0]["sha256"], small_digest)
        rss0 = status_kb(pid, "VmRSS")
        reset_peak(pid)
        p = subprocess.run(["curl", "-sS", "-F", "title=big one", "-F",
                            "f=@%s;type=application/x-test" % path, self.url("/upload")],
                           capture_output=True, timeout=60)
        peak = status_kb(pid, "VmHWM")
        t = json.loads(p.stdout)
        self.assertEqual(t["fields"], {"title": "big one"})
        self.assertEqual(t["files"], [{"name": "f", "filename": "big.bin",
                                       "content_type": "application/x-test",
                                       "size": 20 * MB, "sha256": digest}])
        grew = peak - rss0
        print("\n  20 MB upload: server peak RSS %d KB over %d KB before (+%d KB)"
              % (peak, rss0, grew))
        if not SAN:   # ASan keeps freed C buffers in quarantine: no figure there
            # about 1.5 MB: the body streams to the file, and the pool
            # thread's collector keeps up with the digest's 64 KB pieces
            # (at LuaJIT's default pace they peaked at 9 MB)
            self.assertLess(grew, 5 * 1024, "the upload, or the pieces of its digest, "
                            "were held in memory")
        self.assertEqual(self.leftovers(), [])

    def test_a_slow_handler_holds_the_client_back_in_bounded_memory(self):
        data = os.urandom(20 * MB)
        body = multipart([("f", data, "f.bin", "application/octet-stream")])
        pid = self.srv.proc.pid
        with harness.Client(self.srv.port, timeout=60) as c:
            c.request("GET", "/ping")
            c.response()
            rss0 = status_kb(pid, "VmRSS")
            reset_peak(pid)
            # a handler that sleeps 20 ms per piece (at most 320 KB): the client
            # must wait for it
            done = threading.Event()

            def send():
                try:
                    c.send(mp_head("/parts?delay=0.02", len(body)) + body)
                finally:
                    done.set()
            t = threading.Thread(target=send)
            t.start()
            time.sleep(0.5)
            sent_early = done.is_set()
            r = c.response(timeout=120)
            t.join()
        peak = status_kb(pid, "VmHWM")
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(json.loads(r.body)[0]["sha256"], hashlib.sha256(data).hexdigest())
        self.assertFalse(sent_early, "the client was not held back")
        print("\n  20 MB to a slow handler: server peak RSS +%d KB" % (peak - rss0))
        if not SAN:
            self.assertLess(peak - rss0, 10 * 1024, "the server buffered what the handler "
                            "did not take")

    def test_curl_sends_and_keeps_cookies(self):
        jar = os.path.join(self.files, "jar.txt")
        p = subprocess.run(["curl", "-sS", "-c", jar, "-D", "-", "-o", "/dev/null",
                            self.url("/set-cookies")], capture_output=True, timeout=10)
        head = p.stdout.decode()
        self.assertEqual(len(re.findall(r"(?im)^set-cookie:", head)), 3, head)
        self.assertIn("spaced=a%20b%3Bc; Max-Age=3600; Path=/", head)
        self.assertIn("secret_ish=x; HttpOnly; SameSite=Strict", head)
        with open(jar) as f:
            text = f.read()
        self.assertIn("#HttpOnly_127.0.0.1", text)   # curl saw HttpOnly
        p = subprocess.run(["curl", "-sS", "-b", jar, self.url("/cookies")],
                           capture_output=True, timeout=10)
        self.assertEqual(json.loads(p.stdout),
                         {"plain": "1", "spaced": "a b;c", "secret_ish": "x"})
        p = subprocess.run(["curl", "-sS", "-b", "a=1; b=%22q%22; a=2", self.url("/cookies")],
                           capture_output=True, timeout=10)
        self.assertEqual(json.loads(p.stdout), {"a": "1", "b": '"q"'})

    def test_curl_posts_urlencoded_and_multipart_forms(self):
        p = subprocess.run(["curl", "-sS", "--data-urlencode", "name=Zoë & co",
                            "-d", "tag=a", "-d", "tag=b", self.url("/form")],
                           capture_output=True, timeout=10)
        self.assertEqual(json.loads(p.stdout),
                         {"form": {"name": "Zoë & co", "tag": "a"}, "tags": ["a", "b"]})
        p = subprocess.run(["curl", "-sS", "-F", "tag=x", "-F", "tag=y", self.url("/form")],
                           capture_output=True, timeout=10)
        self.assertEqual(json.loads(p.stdout), {"form": {"tag": "x"}, "tags": ["x", "y"]})


class PythonClientTest(FormsServerTest):
    def test_http_client_whole_and_chunked_bodies(self):
        data = os.urandom(3 * MB)
        body = multipart([("note", "héllo".encode()), ("doc", data, "d.bin",
                                                       "application/octet-stream")])
        ctype = "multipart/form-data; boundary=" + BOUNDARY
        conn = http.client.HTTPConnection("127.0.0.1", self.srv.port, timeout=30)
        try:
            conn.request("POST", "/upload", body=body, headers={"Content-Type": ctype})
            r = conn.getresponse()
            t = json.loads(r.read())
            self.assertEqual(r.status, 200)
            self.assertEqual(t["fields"], {"note": "héllo"})
            self.assertEqual(t["files"][0]["sha256"], hashlib.sha256(data).hexdigest())
            # the same connection, a chunked body in 7 KB pieces
            pieces = (body[i:i + 7000] for i in range(0, len(body), 7000))
            conn.request("POST", "/parts", body=pieces, encode_chunked=True,
                         headers={"Content-Type": ctype, "Transfer-Encoding": "chunked"})
            r = conn.getresponse()
            t = json.loads(r.read())
            self.assertEqual(r.status, 200)
            self.assertEqual([p["size"] for p in t], [len("héllo".encode()), len(data)])
            self.assertEqual(t[1]["sha256"], hashlib.sha256(data).hexdigest())
            self.assertNotEqual(r.getheader("Connection"), "close")
        finally:
            conn.close()
        self.assertEqual(self.leftovers(), [])


class NodeFetchTest(FormsServerTest):
    def test_node_fetch_with_formdata(self):
        script = r"""
const url = process.argv[1];
(async () => {
  const data = new Uint8Array(2 * 1024 * 1024);
  for (let i = 0; i < data.length; i++) data[i] = (i * 7) & 255;
  const fd = new FormData();
  fd.append("who", "node");
  fd.append("file", new Blob([data], { type: "application/x-node" }), "n.bin");
  const up = await (await fetch(url + "/upload", { method: "POST", body: fd })).json();
  const form = await (await fetch(url + "/form", { method: "POST",
    body: new URLSearchParams([["tag", "1"], ["tag", "2"], ["x", "a b"]]) })).json();
  const r = await fetch(url + "/set-cookies");
  const cookies = r.headers.getSetCookie();
  const back = await (await fetch(url + "/cookies",
    { headers: { cookie: cookies.map(c => c.split(";")[0]).join("; ") } })).json();
  const crypto = require("crypto");
  console.log(JSON.stringify({ up, form, cookies, back,
    sha: crypto.createHash("sha256").update(data).digest("hex") }));
})().catch(e => { console.error(e); process.exit(1); });
"""
        p = subprocess.run(["node", "-e", script, self.url("")], capture_output=True,
                           timeout=60)
        self.assertEqual(p.returncode, 0, p.stderr.decode())
        t = json.loads(p.stdout)
        self.assertEqual(t["up"]["fields"], {"who": "node"})
        self.assertEqual(t["up"]["files"], [{"name": "file", "filename": "n.bin",
                                             "content_type": "application/x-node",
                                             "size": 2 * MB, "sha256": t["sha"]}])
        self.assertEqual(t["form"], {"form": {"tag": "1", "x": "a b"}, "tags": ["1", "2"]})
        self.assertEqual(len(t["cookies"]), 3)
        self.assertEqual(t["back"], {"plain": "1", "spaced": "a b;c", "secret_ish": "x"})


class TransportTest(FormsServerTest):
    ARGS = ("--timeout-header", "1", "--max-upload", str(8 * MB))

    def test_a_client_leaving_mid_upload_costs_nothing(self):
        body = multipart([("f", os.urandom(4 * MB), "f.bin", "application/octet-stream")])
        for i in range(10):
            s = socket.create_connection(("127.0.0.1", self.srv.port))
            s.sendall(mp_head("/upload", len(body)) + body[:len(body) // 3 + i * 1000])
            time.sleep(0.05)
            s.close()
        self.assertIsNotNone(self.srv.wait_log(r'"POST /upload" 499'), self.srv.log())
        self.assertEqual(self.leftovers(), [], "temp files of aborted uploads removed")
        r = self.post_raw("/upload", multipart([("a", b"1")]))
        self.assertEqual(r.status, 200)
        with harness.Client(self.srv.port) as c:
            c.request("GET", "/ping")
            self.assertEqual(c.response().body, b"pong")

    def test_expect_100_continue(self):
        body = multipart([("a", b"1"), ("f", b"x" * 5000, "f.txt", "text/plain")])
        # a handler that reads: 100 Continue, then the answer, keep-alive
        with harness.Client(self.srv.port) as c:
            c.send(mp_head("/upload", len(body), "Expect: 100-continue\r\n"))
            r = c.response()
            self.assertEqual(r.status, 100)
            c.send(body)
            r = c.response()
            self.assertEqual(r.status, 200)
            self.assertEqual(json.loads(r.body)["fields"], {"a": "1"})
            c.request("GET", "/ping")
            self.assertEqual(c.response().body, b"pong")
        # a handler that refuses: no 100, its answer, and the connection closes
        with harness.Client(self.srv.port) as c:
            c.send(mp_head("/early", len(body), "Expect: 100-continue\r\n"))
            r = c.response()
            self.assertEqual(r.status, 403)
            self.assertEqual(r.headers.get("connection"), "close")
            self.assertEqual(c.read_until_close(), b"")

    def test_keep_alive_and_pipelining_after_streamed_bodies(self):
        one = multipart([("a", b"1")])
        two = multipart([("f", os.urandom(300000), "f.bin", "application/octet-stream")])
        with harness.Client(self.srv.port) as c:
            c.send(mp_head("/upload", len(one)) + one +
                   b"GET /ping HTTP/1.1\r\nHost: test\r\n\r\n" +
                   mp_head("/parts", len(two)) + two +
                   b"GET /ping HTTP/1.1\r\nHost: test\r\n\r\n")
            self.assertEqual(json.loads(c.response().body)["fields"], {"a": "1"})
            self.assertEqual(c.response().body, b"pong")
            self.assertEqual(json.loads(c.response().body)[0]["size"], 300000)
            self.assertEqual(c.response().body, b"pong")

    def test_an_answer_before_the_body_closes_the_connection_cleanly(self):
        body = multipart([("f", os.urandom(3 * MB), "f.bin", "application/octet-stream")])
        with harness.Client(self.srv.port, timeout=10) as c:
            c.send(mp_head("/early", len(body)))
            done = threading.Event()

            def send():
                try:
                    c.sock.sendall(body)
                except OSError:
                    pass
                done.set()
            t = threading.Thread(target=send)
            t.start()
            r = c.response()
            self.assertEqual(r.status, 403)
            self.assertEqual(json.loads(r.body), {"detail": "uploads closed"})
            self.assertEqual(r.headers.get("connection"), "close")
            t.join(10)

    def test_limits_and_malformed_bodies(self):
        # Content-Length over --max-upload: 413 before anything is read
        with harness.Client(self.srv.port) as c:
            c.send(mp_head("/upload", 9 * MB))
            r = c.response()
            self.assertEqual(r.status, 413)
        # chunked past --max-upload: 413 while it streams
        body = multipart([("f", b"z" * (9 * MB), "f.bin", "application/octet-stream")])
        with harness.Client(self.srv.port, timeout=20) as c:
            c.send(mp_head("/upload", None, "Transfer-Encoding: chunked\r\n"))
            try:
                for i in range(0, len(body), 256 * 1024):
                    piece = body[i:i + 256 * 1024]
                    c.sock.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
                c.sock.sendall(b"0\r\n\r\n")
            except OSError:
                pass   # the server answered and closed
            r = c.response(timeout=20)
            self.assertEqual(r.status, 413)
            self.assertEqual(json.loads(r.body),
                             {"detail": "request body too large"})
        # chunked past a route's own max_upload: 413 naming it
        body = multipart([("f", b"z" * 200000, "f.bin", "application/octet-stream")])
        with harness.Client(self.srv.port, timeout=20) as c:
            c.send(mp_head("/small", None, "Transfer-Encoding: chunked\r\n") +
                   b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n")
            r = c.response(timeout=20)
            self.assertEqual(r.status, 413)
            self.assertEqual(json.loads(r.body),
                             {"detail": "request body larger than 100000 bytes"})
        # malformed: no closing boundary; bad chunk encoding
        r = self.post_raw("/upload", multipart([("a", b"1")])[:-8])
        self.assertEqual(r.status, 400)
        self.assertIn("closing boundary", json.loads(r.body)["detail"])
        with harness.Client(self.srv.port) as c:
            c.send(mp_head("/upload", None, "Transfer-Encoding: chunked\r\n") +
                   b"zz\r\nnot hex\r\n")
            r = c.response()
            self.assertEqual(r.status, 400)
        self.assertEqual(self.leftovers(), [])
        with harness.Client(self.srv.port) as c:
            c.request("GET", "/ping")
            self.assertEqual(c.response().body, b"pong")

    def test_a_stalled_sender_gets_408(self):
        body = multipart([("f", b"y" * 100000, "f.bin", "application/octet-stream")])
        with harness.Client(self.srv.port, timeout=10) as c:
            c.send(mp_head("/upload", len(body)) + body[:50000])
            t0 = time.time()
            r = c.response(timeout=10)
            self.assertEqual(r.status, 408)
            self.assertEqual(json.loads(r.body), {"detail": "request body timeout"})
            self.assertLess(time.time() - t0, 8)
        # the headers alone, not a byte of the body: the same 408
        with harness.Client(self.srv.port, timeout=10) as c:
            c.send(mp_head("/upload", len(body)))
            t0 = time.time()
            r = c.response(timeout=10)
            self.assertEqual(r.status, 408)
            self.assertLess(time.time() - t0, 8)
        self.assertEqual(self.leftovers(), [])


class TLSUploadTest(unittest.TestCase):
    def test_an_upload_over_tls(self):
        d = tempfile.mkdtemp(prefix="luaserve-forms-tls-")
        try:
            c = certs.make(os.path.join(d, "certs"))
            tmp = os.path.join(d, "tmp")
            os.mkdir(tmp)
            path = os.path.join(d, "f.bin")
            data = os.urandom(6 * MB)
            with open(path, "wb") as f:
                f.write(data)
            with harness.Server(APP, "--ssl-certfile", c["chain"], "--ssl-keyfile",
                                c["server_key"], env={"TMPDIR": tmp}) as srv:
                p = subprocess.run(["curl", "-sS", "--cacert", c["ca"], "-F", "f=@" + path,
                                    "https://127.0.0.1:%d/upload" % srv.port],
                                   capture_output=True, timeout=60)
                t = json.loads(p.stdout)
                self.assertEqual(t["files"][0]["sha256"], hashlib.sha256(data).hexdigest())
                # Python, keep-alive over TLS, a chunked streamed body
                ctx = ssl.create_default_context(cafile=c["ca"])
                conn = http.client.HTTPSConnection("127.0.0.1", srv.port, context=ctx,
                                                   timeout=30)
                body = multipart([("f", data, "f.bin", "application/octet-stream")])
                pieces = (body[i:i + 50000] for i in range(0, len(body), 50000))
                conn.request("POST", "/parts?delay=0.001", body=pieces, encode_chunked=True,
                             headers={"Content-Type": "multipart/form-data; boundary="
                                      + BOUNDARY, "Transfer-Encoding": "chunked"})
                r = conn.getresponse()
                self.assertEqual(json.loads(r.read())[0]["sha256"],
                                 hashlib.sha256(data).hexdigest())
                conn.request("GET", "/ping")
                self.assertEqual(conn.getresponse().read(), b"pong")
                conn.close()
                self.assertEqual([n for n in os.listdir(tmp)], [])
        finally:
            shutil.rmtree(d, ignore_errors=True)


class DemoTest(unittest.TestCase):
    def test_login_session_and_upload(self):
        d = tempfile.mkdtemp(prefix="luaserve-forms-demo-")
        try:
            jar = os.path.join(d, "jar")
            env = {"TMPDIR": d, "LUASERVE_SECRET": "a demo secret of 32 bytes, or so"}
            with harness.Server(DEMO, env=env) as srv:
                url = "http://127.0.0.1:%d" % srv.port

                def curl(*args):
                    p = subprocess.run(["curl", "-sS"] + list(args), capture_output=True,
                                       timeout=30)
                    return p.stdout.decode()
                self.assertIn('<form method="post" action="/login">', curl(url + "/login"))
                self.assertEqual(curl("-o", "/dev/null", "-w", "%{http_code}", "-d",
                                      "user=ann&password=wrong", url + "/login"), "401")
                head = curl("-c", jar, "-D", "-", "-o", "/dev/null", "-d",
                            "user=ann&password=correct+horse", url + "/login")
                self.assertRegex(head, r"HTTP/1.1 303")
                self.assertRegex(head, r"(?i)set-cookie: session=ann\.\d+\.[\w-]+; "
                                       r"Max-Age=86400; Path=/; HttpOnly; SameSite=Lax")
                self.assertEqual(json.loads(curl("-b", jar, url + "/me")), {"user": "ann"})
                with open(jar) as f:
                    forged = f.read().replace("\tann.", "\tbob.")
                with open(jar, "w") as f:
                    f.write(forged)
                self.assertIn("bad signature", curl("-b", jar, url + "/me"))
                self.assertIn("missing", curl(url + "/me"))
                path = os.path.join(d, "up.bin")
                data = os.urandom(5 * MB)
                with open(path, "wb") as f:
                    f.write(data)
                t = json.loads(curl("-F", "file=@" + path, url + "/upload"))
                self.assertEqual(t["size"], len(data))
                self.assertEqual(t["sha256"], hashlib.sha256(data).hexdigest())
                self.assertEqual(t["filename"], "up.bin")
                # a declared form (POST /profile): curl's fields converted, the file
                # checked; a wrong field is a 422 at ["body", name]
                png = os.path.join(d, "p.png")
                with open(png, "wb") as f:
                    f.write(b"\x89PNG" + os.urandom(100))
                t = json.loads(curl("-F", "name=Ann", "-F", "age=30", "-F",
                                    "photo=@%s;type=image/png" % png, url + "/profile"))
                self.assertEqual(t, {"name": "Ann", "age": 30, "photo": {
                    "filename": "p.png", "size": 104, "content_type": "image/png"}})
                t = json.loads(curl("-d", "name=Bo&age=7", url + "/profile"))
                self.assertEqual(t, {"name": "Bo", "age": 7, "photo": None})
                t = json.loads(curl("-F", "name=", "-F", "age=old", "-F",
                                    "photo=@%s;type=text/plain" % png, url + "/profile"))
                self.assertEqual([(e["loc"], e["type"]) for e in t["detail"]], [
                    (["body", "age"], "int_parsing"), (["body", "name"], "string_too_short"),
                    (["body", "photo"], "file_type_not_allowed")])
            left = [n for n in os.listdir(d) if n.startswith("luaserve-upload-")]
            self.assertEqual(left, [])
        finally:
            shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    unittest.main()
