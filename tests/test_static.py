"""Static files (issue 12): app:static and FileResponse over real sockets.
Path traversal in every form answers 404; ETag / Last-Modified and 304;
ranges (206, 416, If-Range); HEAD; index.html; Content-Type from
/etc/mime.types; big files (sendfile off the loop) whole, pipelined, over
TLS, and clients that leave in the middle of one (the server frees
everything: the sanitizer build checks it at the stop)."""
import hashlib
import os
import shutil
import socket
import ssl
import tempfile
import time
import unittest

import certs
from harness import Client, Server, read_until_close

APP = "tests/apps/static_app.lua"
BIG = 3 * 1024 * 1024 + 7      # sendfile path (bigger than 64 KB)
HUGE = 32 * 1024 * 1024        # for clients that leave


def make_tree():
    d = tempfile.mkdtemp(prefix="luaserve-static-")
    root = os.path.join(d, "root")
    os.makedirs(os.path.join(root, "sub"))
    os.makedirs(os.path.join(root, "noindex"))
    with open(os.path.join(d, "secret.txt"), "w") as f:
        f.write("outside the root\n")
    with open(os.path.join(root, "index.html"), "w") as f:
        f.write("<h1>root</h1>\n")
    with open(os.path.join(root, "sub", "index.html"), "w") as f:
        f.write("<h1>sub</h1>\n")
    with open(os.path.join(root, "a.txt"), "w") as f:
        f.write("0123456789abcdefghij")
    with open(os.path.join(root, "style.css"), "w") as f:
        f.write("body { color: red }\n")
    with open(os.path.join(root, "app.js"), "w") as f:
        f.write("console.log(1)\n")
    with open(os.path.join(root, "blob.unknownext"), "wb") as f:
        f.write(b"\0\1\2")
    data = os.urandom(BIG)
    with open(os.path.join(root, "big.bin"), "wb") as f:
        f.write(data)
    with open(os.path.join(root, "huge.bin"), "wb") as f:
        f.write(os.urandom(1024 * 1024) * (HUGE // (1024 * 1024)))
    os.symlink("../secret.txt", os.path.join(root, "out"))
    os.symlink(os.path.join(d, "secret.txt"), os.path.join(root, "abs"))
    os.symlink("/etc", os.path.join(root, "etc"))
    os.symlink("a.txt", os.path.join(root, "inside.txt"))
    os.mkfifo(os.path.join(root, "fifo"))
    return d, root, data


class TreeTest(unittest.TestCase):
    """A class's server on a fresh tree (make_tree), stopped and removed
    at the end; flags() gives its extra command-line flags."""

    @classmethod
    def flags(cls):
        return []

    @classmethod
    def setUpClass(cls):
        cls.tmp, cls.root, cls.big = make_tree()
        cls.srv = Server(APP, *cls.flags(), env={"LUASERVE_TEST_STATIC": cls.root})

    @classmethod
    def tearDownClass(cls):
        try:
            status, _ = cls.srv.stop()
            assert status == 0, status
        finally:
            shutil.rmtree(cls.tmp, ignore_errors=True)


class StaticFiles(TreeTest):

    def req(self, target, headers=(), method="GET"):
        with Client(self.srv.port) as c:
            c.request(method, target, list(headers))
            return c.response(head=method == "HEAD")

    def test_files_and_their_types(self):
        cases = {
            "/static/a.txt": ("text/plain; charset=utf-8", b"0123456789abcdefghij"),
            "/static/style.css": ("text/css; charset=utf-8", b"body { color: red }\n"),
            "/static/index.html": ("text/html; charset=utf-8", b"<h1>root</h1>\n"),
            "/static/blob.unknownext": ("application/octet-stream", b"\0\1\2"),
        }
        for target, (ctype, body) in cases.items():
            r = self.req(target)
            self.assertEqual((r.status, r.headers["content-type"], r.body), (200, ctype, body), target)
            self.assertEqual(r.headers["cache-control"], "public, max-age=60")
            self.assertEqual(r.headers["accept-ranges"], "bytes")
        self.assertIn("javascript", self.req("/static/app.js").headers["content-type"])

    def test_traversal_answers_404(self):
        for target in ["/static/../secret.txt", "/static/%2e%2e/secret.txt",
                       "/static/%2E%2E%2Fsecret.txt", "/static/sub/..%2F..%2Fsecret.txt",
                       "/static/sub%2Findex.html", "/static/sub%2findex.html",
                       "/static/a.txt%00.png", "/static/%00", "/static//etc/passwd",
                       "/static/%2Fetc%2Fpasswd", "/static/out", "/static/abs",
                       "/static/etc/passwd", "/static/sub%5C..%5C..%5Csecret.txt",
                       "/static/sub\\..\\a.txt", "/static/./a.txt", "/static/sub/./index.html"]:
            r = self.req(target)
            self.assertEqual(r.status, 404, target)
            self.assertNotIn(b"outside the root", r.body, target)
            self.assertNotIn(b"root:", r.body, target)
        # a symlink that stays inside the root is served
        self.assertEqual(self.req("/static/inside.txt").body, b"0123456789abcdefghij")

    def test_missing_folders_and_odd_files(self):
        self.assertEqual(self.req("/static/nope.txt").status, 404)
        self.assertEqual(self.req("/static/noindex/").status, 404)   # no index.html
        self.assertEqual(self.req("/plain/").status, 404)            # index = false
        self.assertEqual(self.req("/static/fifo").status, 404)       # not a regular file
        r = self.req("/static/")
        self.assertEqual((r.status, r.body), (200, b"<h1>root</h1>\n"))
        r = self.req("/static/sub/")
        self.assertEqual((r.status, r.body), (200, b"<h1>sub</h1>\n"))
        r = self.req("/static/sub?x=1")
        self.assertEqual((r.status, r.headers["location"]), (301, "/static/sub/?x=1"))
        r = self.req("/static")
        self.assertEqual((r.status, r.headers["location"]), (301, "/static/"))
        # the server goes on after all of that
        self.assertEqual(self.req("/hello").body, b"hello")

    def test_etag_last_modified_and_304(self):
        r = self.req("/static/a.txt")
        etag, lm = r.headers["etag"], r.headers["last-modified"]
        self.assertRegex(etag, r'^"[0-9a-f]+-14"$')
        self.assertTrue(lm.endswith(" GMT"))
        for h in [("If-None-Match", etag), ("If-None-Match", "W/" + etag),
                  ("If-None-Match", '"x", ' + etag), ("If-None-Match", "*"),
                  ("If-Modified-Since", lm), ("If-Modified-Since", "Fri, 01 Jan 2100 00:00:00 GMT")]:
            r = self.req("/static/a.txt", [h])
            self.assertEqual((r.status, r.body), (304, b""), h)
            self.assertEqual(r.headers["etag"], etag)
        for h in [("If-None-Match", '"other"'), ("If-Modified-Since", "Thu, 01 Jan 1970 00:00:01 GMT")]:
            self.assertEqual(self.req("/static/a.txt", [h]).status, 200, h)
        # If-None-Match wins over If-Modified-Since
        r = self.req("/static/a.txt", [("If-None-Match", '"other"'), ("If-Modified-Since", lm)])
        self.assertEqual(r.status, 200)
        # the same for a big file (sendfile path)
        big = self.req("/static/big.bin", method="HEAD")
        r = self.req("/static/big.bin", [("If-None-Match", big.headers["etag"])])
        self.assertEqual((r.status, r.body), (304, b""))

    def test_ranges(self):
        for target, data in [("/static/a.txt", b"0123456789abcdefghij"), ("/static/big.bin", self.big)]:
            n = len(data)
            for rng, (a, b) in [("bytes=0-9", (0, 9)), ("bytes=5-", (5, n - 1)),
                                ("bytes=-4", (n - 4, n - 1)), ("bytes=3-100000000", (3, n - 1))]:
                r = self.req(target, [("Range", rng)])
                self.assertEqual(r.status, 206, (target, rng))
                self.assertEqual(r.headers["content-range"], "bytes %d-%d/%d" % (a, b, n))
                self.assertEqual(r.body, data[a:b + 1], (target, rng))
            r = self.req(target, [("Range", "bytes=%d-" % n)])
            self.assertEqual((r.status, r.headers["content-range"]), (416, "bytes */%d" % n))
            # several ranges, another unit, garbage: the whole file
            for rng in ["bytes=0-1,3-4", "items=0-1", "bytes=x-y", "bytes=9-3"]:
                r = self.req(target, [("Range", rng)])
                self.assertEqual((r.status, len(r.body)), (200, n), rng)
            # If-Range with a stale validator: the whole file
            r = self.req(target, [("Range", "bytes=0-1"), ("If-Range", '"stale"')])
            self.assertEqual((r.status, len(r.body)), (200, n))
            etag = self.req(target, method="HEAD").headers["etag"]
            r = self.req(target, [("Range", "bytes=0-1"), ("If-Range", etag)])
            self.assertEqual((r.status, r.body), (206, data[0:2]))

    def test_head(self):
        for target, n in [("/static/a.txt", 20), ("/static/big.bin", BIG)]:
            with Client(self.srv.port) as c:
                c.request("HEAD", target)
                r = c.response(head=True)
                self.assertEqual((r.status, int(r.headers["content-length"])), (200, n))
                c.request("GET", "/hello")        # nothing was sent after the head
                self.assertEqual(c.response().body, b"hello")

    def test_big_file_whole_and_pipelined(self):
        r = self.req("/static/big.bin")
        self.assertEqual(int(r.headers["content-length"]), BIG)
        self.assertEqual(hashlib.sha256(r.body).digest(), hashlib.sha256(self.big).digest())
        # pipelined: the answers after the file wait for it, in order
        with Client(self.srv.port, timeout=30) as c:
            c.send(b"GET /static/big.bin HTTP/1.1\r\nHost: t\r\n\r\n"
                   b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n"
                   b"GET /static/a.txt HTTP/1.1\r\nHost: t\r\n\r\n"
                   b"GET /static/big.bin HTTP/1.1\r\nHost: t\r\nRange: bytes=1-3\r\n\r\n")
            self.assertEqual(c.response().body, self.big)
            self.assertEqual(c.response().body, b"hello")
            self.assertEqual(c.response().body, b"0123456789abcdefghij")
            self.assertEqual(c.response().body, self.big[1:4])

    def test_file_response(self):
        r = self.req("/pick/big.bin")
        self.assertEqual((r.status, r.body == self.big), (200, True))
        self.assertEqual(r.headers["content-disposition"], 'attachment; filename="picked.bin"')
        self.assertEqual(self.req("/pick/a.txt", [("Range", "bytes=-3")]).body, b"hij")
        self.assertEqual(self.req("/pick/nothing-here").status, 404)

    def test_a_file_response_with_a_bad_header_is_a_500_that_closes_the_file(self):
        def open_big():
            n = 0
            for fd in os.listdir("/proc/%d/fd" % self.srv.proc.pid):
                try:
                    n += os.readlink("/proc/%d/fd/%s" % (self.srv.proc.pid, fd)).endswith("/big.bin")
                except OSError:
                    pass
            return n
        for _ in range(20):
            r = self.req("/pick-bad/big.bin")
            self.assertEqual(r.status, 500)
            self.assertNotIn("injected", r.headers)
        self.assertLess(open_big(), 3)   # each request closed its descriptor at once

    def test_clients_that_leave_mid_file(self):
        for i in range(15):
            s = socket.create_connection(("127.0.0.1", self.srv.port), timeout=10)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
            s.sendall(b"GET /static/huge.bin HTTP/1.1\r\nHost: t\r\n\r\n")
            got = 0
            while got < 100000 * (1 + i % 3):
                b = s.recv(65536)
                if not b:
                    break
                got += len(b)
            if i % 2:   # an abrupt reset, or a plain close
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
            s.close()
        # a client that stops reading: the others are served meanwhile
        stuck = socket.create_connection(("127.0.0.1", self.srv.port), timeout=10)
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.sendall(b"GET /static/huge.bin HTTP/1.1\r\nHost: t\r\n\r\n")
        time.sleep(0.3)
        t0 = time.time()
        self.assertEqual(self.req("/hello").body, b"hello")
        r = self.req("/static/big.bin")
        self.assertEqual(len(r.body), BIG)
        self.assertLess(time.time() - t0, 10)
        stuck.close()
        self.assertTrue(self.srv.alive())


class Listings(TreeTest):
    """listing = true: a folder without its index answers with a page that
    lists it: folders first, then files, by name; names escaped in the
    text and percent-encoded in the links; hidden files left out; links
    that a browser follows back to the files."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        odd = os.path.join(cls.root, "noindex")
        for name in ["with space.txt", "<b>&amp;.txt", "100%.txt", ".hidden", "é.txt"]:
            with open(os.path.join(odd, name), "w") as f:
                f.write(name)
        os.makedirs(os.path.join(odd, "zdir"))
        os.makedirs(os.path.join(odd, "adir"))

    def req(self, target, method="GET"):
        with Client(self.srv.port) as c:
            c.request(method, target, [])
            return c.response(head=method == "HEAD")

    def links(self, body):
        import re
        return re.findall(r'<a href="([^"]*)">([^<]*)</a>', body.decode())

    def test_a_folder_without_index_is_listed(self):
        r = self.req("/listed/noindex/")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.headers["content-type"], "text/html; charset=utf-8")
        self.assertIn(b"<title>Index of /listed/noindex/</title>", r.body)
        self.assertEqual(self.links(r.body), [
            ("../", "../"), ("adir/", "adir/"), ("zdir/", "zdir/"),   # folders first
            ("100%25.txt", "100%.txt"), ("%3Cb%3E%26amp%3B.txt", "&lt;b&gt;&amp;amp;.txt"),
            ("with%20space.txt", "with space.txt"), ("%C3%A9.txt", "é.txt")])   # by bytes
        self.assertNotIn(b".hidden", r.body)
        self.assertNotIn(b"<b>", r.body)   # a name never becomes markup
        # every link the page gives leads to its file
        for href, name in self.links(r.body):
            if href.endswith(".txt"):
                got = self.req("/listed/noindex/" + href)
                self.assertEqual((got.status, got.body.decode()), (200, name.replace(
                    "&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")))

    def test_an_index_still_wins_and_the_root_has_no_parent(self):
        self.assertEqual(self.req("/listed/").body, b"<h1>root</h1>\n")
        r = self.req("/listed-all/")
        names = [name for _, name in self.links(r.body)]
        self.assertNotIn("../", names)                      # the mount's root
        folders = [n for n in names if n.endswith("/")]
        self.assertEqual(names[:len(folders)], folders)     # folders first
        self.assertIn("noindex/", folders)
        self.assertIn("sub/", folders)
        for name in ["a.txt", "big.bin", "index.html", "inside.txt", "out", "etc", "fifo"]:
            self.assertIn(name, names)
        self.assertIn(b"3.0 MB", r.body)   # big.bin's size
        # listed symlinks that leave the root still answer 404 when followed
        for target in ["/listed-all/out", "/listed-all/etc/", "/listed-all/etc/passwd"]:
            got = self.req(target)
            self.assertEqual(got.status, 404, target)
            self.assertNotIn(b"outside the root", got.body)
            self.assertNotIn(b"passwd", got.body)

    def test_folders_redirect_to_their_slash_and_head_and_misses(self):
        r = self.req("/listed/noindex")
        self.assertEqual((r.status, r.headers["location"]), (301, "/listed/noindex/"))
        # HEAD: the GET's head (its length), no body
        got = self.req("/listed/noindex/")
        r = self.req("/listed/noindex/", method="HEAD")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.headers["content-length"], str(len(got.body)))
        self.assertEqual(r.headers["content-type"], "text/html; charset=utf-8")
        self.assertEqual(self.req("/listed/nope/").status, 404)
        self.assertEqual(self.req("/listed/a.txt/").status, 404)
        self.assertEqual(self.req("/listed/%2e%2e/").status, 404)
        self.assertEqual(self.req("/static/noindex/").status, 404)   # not asked for: no listing

    def test_a_huge_folder_is_cut_at_ten_thousand(self):
        big = os.path.join(self.root, "many")
        os.makedirs(big)
        try:
            for i in range(10005):
                open(os.path.join(big, "f%05d" % i), "w").close()
            r = self.req("/listed/many/")
            self.assertEqual(r.status, 200)
            self.assertEqual(len(self.links(r.body)), 10000 + 1)   # and ../
            self.assertIn(b"The folder holds more: only 10000 entries are listed.", r.body)
            self.assertEqual(self.req("/hello").body, b"hello")
        finally:
            shutil.rmtree(big)


class StaticCache(TreeTest):
    """app:static's open-file cache (luaserve.filecache): small files
    answered from memory, checked again on the pool after `valid` seconds
    (a change, a removal, a symlink that leaves the root are seen then),
    a bound on its bytes, and cache = false. Each test writes its own
    folder (the routes: tests/apps/static_app.lua)."""

    req = StaticFiles.req

    def folder(self, name):
        d = os.path.join(self.root, name)
        os.makedirs(d)
        return d

    def write(self, path, data):
        with open(path, "wb") as f:
            f.write(data)

    def test_hit_answers_from_memory_with_range_head_and_304(self):
        d = self.folder("held")
        self.write(os.path.join(d, "a.txt"), b"0123456789")
        first = self.req("/held/held/a.txt")
        self.assertEqual((first.status, first.body), (200, b"0123456789"))
        etag = first.headers["etag"]
        # changed on disk: the copy held for the hour is what is answered
        self.write(os.path.join(d, "a.txt"), b"changed on disk")
        r = self.req("/held/held/a.txt")
        self.assertEqual((r.status, r.body, r.headers["etag"]), (200, b"0123456789", etag))
        self.assertEqual(r.headers["content-type"], "text/plain; charset=utf-8")
        r = self.req("/held/held/a.txt", [("Range", "bytes=2-4")])
        self.assertEqual((r.status, r.body, r.headers["content-range"]), (206, b"234", "bytes 2-4/10"))
        r = self.req("/held/held/a.txt", [("Range", "bytes=10-")])
        self.assertEqual(r.status, 416)
        r = self.req("/held/held/a.txt", [("If-None-Match", etag)])
        self.assertEqual((r.status, r.body), (304, b""))
        r = self.req("/held/held/a.txt", [("If-Modified-Since", first.headers["last-modified"])])
        self.assertEqual(r.status, 304)
        r = self.req("/held/held/a.txt", method="HEAD")
        self.assertEqual((r.status, r.headers["content-length"], r.body), (200, "10", b""))
        # removed: still held
        os.remove(os.path.join(d, "a.txt"))
        self.assertEqual(self.req("/held/held/a.txt").body, b"0123456789")
        # a missing path is held too (a negative entry), and a folder's index
        self.assertEqual(self.req("/held/held/late.txt").status, 404)
        self.write(os.path.join(d, "late.txt"), b"late")
        self.assertEqual(self.req("/held/held/late.txt").status, 404)
        self.write(os.path.join(d, "index.html"), b"<p>index</p>")
        self.assertEqual(self.req("/held/held/").body, b"<p>index</p>")
        os.remove(os.path.join(d, "index.html"))
        self.assertEqual(self.req("/held/held/").body, b"<p>index</p>")
        # a big file is not kept: sent from a fresh open each time
        self.write(os.path.join(d, "big.bin"), b"x" * 100000)
        self.assertEqual(len(self.req("/held/held/big.bin").body), 100000)
        self.write(os.path.join(d, "big.bin"), b"y" * 100001)
        self.assertEqual(self.req("/held/held/big.bin").body, b"y" * 100001)
        # traversal is refused before the cache is asked
        self.assertEqual(self.req("/held/out").status, 404)
        self.assertEqual(self.req("/held/held/..%2F..%2Fsecret.txt").status, 404)

    def test_changes_are_seen_after_the_window(self):
        # valid = 0.3 s; each change is looked for after 1.2 s (four windows)
        d = self.folder("fresh")
        p = os.path.join(d, "a.txt")
        self.write(p, b"one")
        self.assertEqual(self.req("/fresh/fresh/a.txt").body, b"one")
        self.write(p, b"two")   # same size, within the same second
        time.sleep(1.2)
        r = self.req("/fresh/fresh/a.txt")
        self.assertEqual((r.status, r.body), (200, b"two"))
        self.write(p, b"three, longer")
        time.sleep(1.2)
        r = self.req("/fresh/fresh/a.txt")
        self.assertEqual(r.body, b"three, longer")
        self.assertRegex(r.headers["etag"], r'^"[0-9a-f]+-d"$')
        os.remove(p)
        time.sleep(1.2)
        self.assertEqual(self.req("/fresh/fresh/a.txt").status, 404)
        self.write(p, b"back")
        time.sleep(1.2)
        self.assertEqual(self.req("/fresh/fresh/a.txt").body, b"back")
        # swapped for a symlink that leaves the root: 404, never the file
        os.remove(p)
        os.symlink("../../secret.txt", p)
        os.symlink(os.path.join(self.tmp, "secret.txt"), os.path.join(d, "abs.txt"))
        time.sleep(1.2)
        for _ in range(3):
            for target in ["/fresh/fresh/a.txt", "/fresh/fresh/abs.txt"]:
                r = self.req(target)
                self.assertEqual(r.status, 404, target)
                self.assertNotIn(b"outside the root", r.body)
        # a file that grew past 64 KB goes out with sendfile from then on
        q = os.path.join(d, "grows.bin")
        self.write(q, b"s" * 1000)
        self.assertEqual(self.req("/fresh/fresh/grows.bin").body, b"s" * 1000)
        self.write(q, b"g" * 200000)
        time.sleep(1.2)
        self.assertEqual(self.req("/fresh/fresh/grows.bin").body, b"g" * 200000)

    def test_memory_bound_drops_the_least_recently_used(self):
        # /tiny holds 3100 bytes: two 1 KB files (each costs 1 KB + 512 +
        # its path)
        d = self.folder("tiny")
        names = ["e1.txt", "e2.txt", "e3.txt"]
        for n in names:
            self.write(os.path.join(d, n), n[1].encode() * 1000)
        for n in names:
            self.assertEqual(self.req("/tiny/tiny/" + n).body, n[1].encode() * 1000)
        for n in names:
            self.write(os.path.join(d, n), b"n" * 1000)
        # e1 was dropped for e3 (read again, the new content, which drops
        # e2); e3 is still held
        self.assertEqual(self.req("/tiny/tiny/e3.txt").body, b"3" * 1000)
        self.assertEqual(self.req("/tiny/tiny/e1.txt").body, b"n" * 1000)
        self.assertEqual(self.req("/tiny/tiny/e2.txt").body, b"n" * 1000)
        # a file past max_file (2000) is never held
        self.write(os.path.join(d, "big.txt"), b"b" * 3000)
        self.assertEqual(len(self.req("/tiny/tiny/big.txt").body), 3000)
        self.write(os.path.join(d, "big.txt"), b"c" * 3000)
        self.assertEqual(self.req("/tiny/tiny/big.txt").body, b"c" * 3000)

    def test_cache_off(self):
        d = self.folder("off")
        p = os.path.join(d, "a.txt")
        self.write(p, b"one")
        self.assertEqual(self.req("/nocache/off/a.txt").body, b"one")
        self.write(p, b"two")
        self.assertEqual(self.req("/nocache/off/a.txt").body, b"two")
        os.remove(p)
        self.assertEqual(self.req("/nocache/off/a.txt").status, 404)
        self.write(p, b"three")
        self.assertEqual(self.req("/nocache/off/a.txt").body, b"three")


class StaticOverTLS(TreeTest):
    """Over TLS sendfile cannot work: chunks are read off the loop and go
    through the stream (and its back-pressure)."""

    @classmethod
    def flags(cls):
        cls.certs = certs.make(tempfile.mkdtemp(prefix="luaserve-certs-"))
        return ["--ssl-certfile", cls.certs["chain"], "--ssl-keyfile", cls.certs["server_key"]]

    def tls(self):
        ctx = ssl.create_default_context(cafile=self.certs["ca"])
        raw = socket.create_connection(("127.0.0.1", self.srv.port), timeout=30)
        return ctx.wrap_socket(raw, server_hostname="localhost")

    def test_big_file_and_range_over_tls(self):
        with self.tls() as s:
            s.sendall(b"GET /static/big.bin HTTP/1.1\r\nHost: t\r\n\r\n"
                      b"GET /static/big.bin HTTP/1.1\r\nHost: t\r\nRange: bytes=100-70000\r\n"
                      b"Connection: close\r\n\r\n")
            data = read_until_close(s, 30)
        head, rest = data.split(b"\r\n\r\n", 1)
        self.assertIn(b"Content-Length: %d" % BIG, head)
        self.assertEqual(rest[:BIG], self.big)
        head2, body2 = rest[BIG:].split(b"\r\n\r\n", 1)
        self.assertIn(b"206 Partial Content", head2)
        self.assertEqual(body2, self.big[100:70001])

    def test_tls_client_that_leaves(self):
        for _ in range(5):
            s = self.tls()
            s.sendall(b"GET /static/huge.bin HTTP/1.1\r\nHost: t\r\n\r\n")
            s.recv(50000)
            s.close()
        with self.tls() as s:
            s.sendall(b"GET /hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            self.assertTrue(read_until_close(s, 10).endswith(b"hello"))


if __name__ == "__main__":
    unittest.main()
