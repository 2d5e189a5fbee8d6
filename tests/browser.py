"""A real headless browser for the tests: Debian's chromium, driven through
the DevTools protocol (CDP) over a WebSocket (python3-websockets).

    with Browser() as b:                  # chromium on 127.0.0.1, a throw-away profile
        page = b.page()
        page.navigate("http://127.0.0.1:8080/docs")
        page.wait_for("document.querySelectorAll('.opblock').length > 0")
        page.problems                     # console errors and uncaught exceptions
        page.screenshot("build/docs.png")

Chromium is started with --remote-debugging-port=0 (it picks a free port
and writes it to DevToolsActivePort in the profile), --no-sandbox (the
tests run as root) and is stopped by its pid, also when a test fails."""
import asyncio
import base64
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request

CHROMIUM = os.environ.get("CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")


class Page:
    """One tab, with its own CDP connection on a private event loop."""

    def __init__(self, ws_url):
        import websockets   # Debian's python3-websockets
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)

        async def connect():   # made inside the loop (websockets 10 binds it then)
            return await websockets.connect(ws_url, max_size=None, open_timeout=10)
        self.ws = self.loop.run_until_complete(connect())
        self.next_id = 0
        self.events = []
        self.problems = []   # console errors, exceptions, failed loads
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(domain + ".enable")

    def _note(self, msg):
        method, p = msg.get("method"), msg.get("params", {})
        if method == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            self.problems.append("exception: %s %s" % (d.get("text"),
                                 d.get("exception", {}).get("description", "")))
        elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            args = [a.get("value", a.get("description", "")) for a in p.get("args", [])]
            self.problems.append("console.%s: %s" % (p["type"], " ".join(map(str, args))))
        elif method == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            e = p["entry"]
            self.problems.append("log: %s %s" % (e.get("text"), e.get("url", "")))
        elif method == "Network.loadingFailed" and not p.get("canceled"):
            self.problems.append("load failed: %s" % p.get("errorText"))
        self.events.append(msg)

    async def _call(self, method, params, timeout):
        self.next_id += 1
        mid = self.next_id
        await self.ws.send(json.dumps({"id": mid, "method": method, "params": params or {}}))
        deadline = time.time() + timeout
        while True:
            left = deadline - time.time()
            if left <= 0:
                raise TimeoutError("CDP %s: no answer in %.0f s" % (method, timeout))
            msg = json.loads(await asyncio.wait_for(self.ws.recv(), left))
            if msg.get("id") == mid:
                if "error" in msg:
                    raise RuntimeError("CDP %s: %s" % (method, msg["error"]))
                return msg.get("result", {})
            self._note(msg)

    def call(self, method, params=None, timeout=10.0):
        return self.loop.run_until_complete(self._call(method, params, timeout))

    async def _pump(self, seconds):
        try:
            while True:
                self._note(json.loads(await asyncio.wait_for(self.ws.recv(), seconds)))
        except asyncio.TimeoutError:
            pass

    def pump(self, seconds=0.05):
        """Take the events that arrived (console messages, loads)."""
        self.loop.run_until_complete(self._pump(seconds))

    def evaluate(self, expression, timeout=10.0):
        r = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                           "awaitPromise": True}, timeout)
        if "exceptionDetails" in r:
            raise RuntimeError("evaluate %r: %s" % (expression, r["exceptionDetails"]))
        return r.get("result", {}).get("value")

    def navigate(self, url, timeout=20.0):
        self.call("Page.navigate", {"url": url}, timeout)
        self.wait_for("document.readyState === 'complete'", timeout)

    def wait_for(self, expression, timeout=20.0):
        """Poll expression until it is truthy; return its value."""
        deadline = time.time() + timeout
        while True:
            v = self.evaluate(expression)
            if v:
                return v
            if time.time() > deadline:
                raise TimeoutError("waited %.0f s for %s" % (timeout, expression))
            self.pump(0.1)

    def screenshot(self, path):
        r = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True},
                      timeout=30.0)
        with open(path, "wb") as f:
            f.write(base64.b64decode(r["data"]))

    def close(self):
        try:
            self.loop.run_until_complete(self.ws.close())
        except Exception:
            pass
        self.loop.close()


class Browser:
    """Headless chromium on 127.0.0.1 with a throw-away profile."""

    def __init__(self, width=1280, height=1600, timeout=20.0):
        self.profile = tempfile.mkdtemp(prefix="luaserve-chromium.")
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([
            CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu",
            "--no-first-run", "--no-default-browser-check", "--disable-extensions",
            "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--disable-features=Translate,MediaRouter",
            "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
            "--user-data-dir=" + self.profile, "--window-size=%d,%d" % (width, height),
            "about:blank"], stdout=self.log, stderr=self.log, start_new_session=True)
        self.pages = []
        try:
            self.port = self._wait_port(timeout)
        except Exception:
            self.close()
            raise

    def _wait_port(self, timeout):
        path = os.path.join(self.profile, "DevToolsActivePort")
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError("chromium exited %s: %s" % (
                    self.proc.returncode, self.log.read().decode(errors="replace")[-2000:]))
            try:
                with open(path) as f:
                    return int(f.readline().strip())
            except (OSError, ValueError):
                time.sleep(0.05)
        raise RuntimeError("chromium did not open its DevTools port in %.0f s" % timeout)

    def page(self):
        """The first tab (about:blank)."""
        with urllib.request.urlopen("http://127.0.0.1:%d/json/list" % self.port, timeout=10) as r:
            targets = json.load(r)
        target = next(t for t in targets if t.get("type") == "page")
        p = Page(target["webSocketDebuggerUrl"])
        self.pages.append(p)
        return p

    def close(self):
        for p in self.pages:
            p.close()
        self.pages = []
        if self.proc.poll() is None:
            # chromium's helper processes share its session: stop them all
            # by the group chromium leads (its own pid), then wait for it.
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
