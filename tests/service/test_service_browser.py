"""Model tier: the upload page in a real headless Chromium, driven over the DevTools protocol.

A tiny CDP client over ``websockets`` (no chromedriver, no browser download): open the page served by
a real uvicorn server, put photos into the file input, press "Assess", and read what the page shows.
Skipped when no Chromium is installed (``apt-get install -y chromium``).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_service_support import cached_model, car_photo, jpeg_bytes, running, service_params

pytestmark = pytest.mark.slow

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def find_browser() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


class Page:
    """One browser tab over the Chrome DevTools Protocol (synchronous, one command at a time)."""

    def __init__(self, ws_url: str):
        from websockets.sync.client import connect

        self.ws = connect(ws_url, max_size=None, open_timeout=30)
        self.ids = itertools.count(1)

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        msg_id = next(self.ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:  # events arrive in between; the answer carries our id
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def js(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait(self, expression: str, timeout_s: float = 90.0) -> Any:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.2)
        raise AssertionError(f"the page never showed: {expression}\n{self.js('document.body.innerText')}")

    def set_files(self, selector: str, paths: list[Path]) -> None:
        node = self.send("Runtime.evaluate", expression=f"document.querySelector({json.dumps(selector)})")
        self.send("DOM.setFileInputFiles", files=[str(p) for p in paths], objectId=node["result"]["objectId"])


@contextlib.contextmanager
def chromium(binary: str, profile: Path) -> Iterator[Page]:
    """Start headless Chromium on a free DevTools port; yields its first tab."""
    proc = subprocess.Popen([binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                             "--disable-background-networking", "--disable-component-update", "--disable-sync",
                             "--no-first-run", "--no-default-browser-check", f"--user-data-dir={profile}",
                             "--remote-debugging-port=0", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file, deadline = profile / "DevToolsActivePort", time.monotonic() + 60
        while not port_file.is_file() or not port_file.read_text().strip():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("Chromium did not start")
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30))
        page = Page(next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page"))
        try:
            yield page
        finally:
            page.ws.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def browser_binary() -> str:
    binary = find_browser()
    if binary is None:
        pytest.skip("no Chromium found (apt-get install -y chromium): the page is not checked in a browser")
    pytest.importorskip("websockets", reason="pip install websockets (dev extra) to drive Chromium")
    return binary


def test_upload_page_shows_splash_table_and_proposal(browser_binary, tmp_path):
    from cardamage.service.app import create_app

    good, dark = tmp_path / "bumper.jpg", tmp_path / "night.jpg"
    good.write_bytes(jpeg_bytes(car_photo("11.jpg")))
    dark.write_bytes(jpeg_bytes((np.asarray(car_photo("12.jpg")) * 0.2).astype(np.uint8)))
    app = create_app(service_params(tmp_path, cached_model(["damage"])))
    with running(app) as url, chromium(browser_binary, tmp_path / "profile") as page:
        page.send("Page.enable")
        page.send("Page.navigate", url=url + "/")
        page.wait("document.readyState === 'complete' && !!document.querySelector('#claim-form')")
        page.wait("document.querySelector('#version').textContent.includes('model')")
        page.js("document.querySelector('#claim-id').value = 'WEB-1'")
        page.set_files("#photos", [good])
        page.js("document.querySelector('#submit').click()")
        shown = page.wait("""(() => {
            const img = document.querySelector('img.splash');
            const rows = document.querySelectorAll('table.damage tr').length;
            const box = document.querySelector('#proposal');
            return img && img.complete && img.naturalWidth > 0 && rows > 1 && !box.hidden &&
                   {width: img.naturalWidth, rows, decision: box.dataset.decision, rule: box.dataset.rule,
                    text: box.innerText, status: document.querySelector('#status').textContent};
        })()""")
        assert shown["width"] == 480  # the splash is drawn on the photo's own pixel grid
        assert shown["decision"] in ("estimate", "no_damage", "refer_to_handler") and shown["rule"]
        assert "rule" in shown["text"] and "Done" in shown["status"]

        page.set_files("#photos", [good, dark])
        page.js("document.querySelector('#submit').click()")
        problem = page.wait("(() => { const li = document.querySelector('.photo.refused .problems li');"
                            " return li && li.textContent; })()")
        assert "too dark" in problem
        assert page.js("document.querySelector('#proposal').dataset.rule") == "quality_gate"
