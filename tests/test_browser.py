"""Real-browser check of the rendered reports: headless Chromium, network disabled, via DevTools.

Each HTML opens from file:// with zero console errors and zero network requests, and its
screenshot is not blank. Needs Debian ``chromium`` (``make browser-deps``); skipped otherwise.
"""
from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.xdist_group("reports")]

from test_report import SMALL, rendered_reports, report_project  # noqa: E402,F401  (shared session fixtures)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class Chromium:
    """Headless Chromium driven over the DevTools protocol (websocket-client)."""

    def __init__(self):
        self.profile = tempfile.mkdtemp(prefix="jl-chromium-")
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-default-apps", "--disable-extensions", "--no-default-browser-check",
             "--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND",
             "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
             f"--user-data-dir={self.profile}", "--window-size=1200,1600", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = Path(self.profile) / "DevToolsActivePort"
        for _ in range(300):
            if port_file.exists() and port_file.read_text().strip():
                break
            time.sleep(0.1)
        else:
            self.close()
            raise RuntimeError("chromium did not open its DevTools port")
        self.port = int(port_file.read_text().split()[0])

    def page(self) -> "Page":
        for _ in range(50):
            targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=10))
            pages = [t for t in targets if t.get("type") == "page"]
            if pages:
                return Page(pages[0]["webSocketDebuggerUrl"])
            time.sleep(0.1)
        raise RuntimeError("no page target")

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.profile, ignore_errors=True)


class Page:
    def __init__(self, ws_url: str):
        import websocket
        self.ws = websocket.create_connection(ws_url, timeout=60, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict] = []

    def call(self, method: str, **params):
        self.next_id += 1
        my_id = self.next_id
        self.ws.send(json.dumps({"id": my_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def wait_for(self, event: str, timeout: float = 60):
        end = time.time() + timeout
        while time.time() < end:
            for e in self.events:
                if e.get("method") == event:
                    return e
            self.events.append(json.loads(self.ws.recv()))
        raise TimeoutError(event)

    def close(self):
        self.ws.close()


def inspect_html(browser: Chromium, html_path: Path) -> dict:
    """Open a file offline; return console errors, network requests and the screenshot PNG bytes."""
    page = browser.page()
    try:
        for domain in ("Page", "Network", "Runtime", "Log"):
            page.call(f"{domain}.enable")
        page.call("Network.emulateNetworkConditions", offline=True, latency=0, downloadThroughput=-1,
                  uploadThroughput=-1)
        page.call("Emulation.setDeviceMetricsOverride", width=1200, height=1600, deviceScaleFactor=1, mobile=False)
        page.events.clear()
        page.call("Page.navigate", url=html_path.resolve().as_uri())
        page.wait_for("Page.loadEventFired")
        time.sleep(0.5)  # let late console messages arrive
        page.call("Runtime.evaluate", expression="1")
        shot = base64.b64decode(page.call("Page.captureScreenshot", format="png")["data"])
        errors, requests = [], []
        for e in page.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.exceptionThrown":
                errors.append(str(p.get("exceptionDetails", {}).get("text")))
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                errors.append(str(p.get("args")))
            elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                errors.append(p["entry"].get("text", ""))
            elif m == "Network.requestWillBeSent":
                url = p.get("request", {}).get("url", "")
                if not url.startswith(("file:", "data:")):
                    requests.append(url)
            elif m == "Network.loadingFailed":
                errors.append(f"loading failed: {p.get('errorText')}")
        return {"errors": errors, "requests": requests, "png": shot}
    finally:
        page.close()


def pixel_stats(png: bytes) -> tuple[float, float]:
    """(grey-level variance, share of non-white pixels) of a screenshot."""
    import numpy as np
    from PIL import Image
    a = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=float)
    return float(a.var()), float((a < 240).mean())


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM:
        pytest.skip("chromium not installed (Debian: apt-get install chromium, or `make browser-deps`)")
    pytest.importorskip("websocket", reason="websocket-client not installed")
    b = Chromium()
    yield b
    b.close()


def test_blank_page_is_detected(browser, tmp_path):
    """The checks can fail: a blank page has ~zero variance, an external image is a network request."""
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body></body></html>")
    r = inspect_html(browser, blank)
    var, ink = pixel_stats(r["png"])
    assert var < 1 and ink < 0.001
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><body><img src="https://example.invalid/x.png">'
                   '<script>console.error("boom")</script></body></html>')
    r = inspect_html(browser, bad)
    assert r["requests"] and any("boom" in e for e in r["errors"])


def test_reports_render_offline(browser, rendered_reports, tmp_path):
    """Every report and the index: no console errors, no network, visible content."""
    for html in sorted(rendered_reports.glob("*.html")):
        r = inspect_html(browser, html)
        assert r["errors"] == [], f"{html.name}: console errors {r['errors']}"
        assert r["requests"] == [], f"{html.name}: network requests {r['requests']}"
        var, ink = pixel_stats(r["png"])
        assert var > 100 and ink > 0.01, f"{html.name}: screenshot looks blank (variance {var:.1f}, ink {ink:.3f})"
        out = os.environ.get("JOURNEYLAB_SCREENSHOTS")
        if out:
            Path(out).mkdir(parents=True, exist_ok=True)
            (Path(out) / f"{html.stem}.png").write_bytes(r["png"])
