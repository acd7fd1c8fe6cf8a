"""Open an HTML file in headless Chromium the way a person would, and report what the page
shows: its tables, each image as decoded and laid out, the console errors, every URL it
asked for, and a full-page screenshot.

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``:
JSON messages ending in a NUL byte, commands on fd 3, answers and events on fd 4), so
nothing but the standard library is needed and no port is opened.

Run as a script to take a screenshot: ``python tests/chromium_page.py PAGE.html OUT.png``.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--mute-audio", "--remote-debugging-pipe"]

# What a reader sees: tables with their first row, and every image as drawn on the page.
INSPECT = """JSON.stringify({
  title: document.title,
  tables: [...document.querySelectorAll('table')].map(t => ({
    rows: t.rows.length, header: [...t.rows[0].cells].map(c => c.textContent),
    height: t.getBoundingClientRect().height})),
  images: [...document.images].map(i => ({alt: i.alt, complete: i.complete,
    width: i.naturalWidth, height: i.naturalHeight, shown: i.getBoundingClientRect().width,
    source: i.src.slice(0, 22)})),
  text: document.body.innerText})"""


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if found := shutil.which(name):
            return found
    return None


@dataclass
class Page:
    title: str
    tables: list[dict[str, Any]]
    images: list[dict[str, Any]]
    text: str
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    screenshot: bytes = b""


class _Pipe:
    def __init__(self, process: subprocess.Popen, to_browser: int, from_browser: int) -> None:
        self.process, self.to_browser, self.from_browser = process, to_browser, from_browser
        self.buffer, self.events, self.next_id = b"", [], 0

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             *, deadline: float) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.to_browser, json.dumps(message).encode() + b"\0")
        while True:
            reply = self.receive(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, *, deadline: float) -> dict:
        while True:
            for index, event in enumerate(self.events):
                if event.get("method") == method:
                    return self.events.pop(index)
            self.events.append(self.receive(deadline))

    def receive(self, deadline: float) -> dict:
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("Chromium did not answer in time")
            ready, _, _ = select.select([self.from_browser], [], [], left)
            if ready:
                chunk = os.read(self.from_browser, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"Chromium exited (code {self.process.poll()})")
                self.buffer += chunk
        message, _, self.buffer = self.buffer.partition(b"\0")
        return json.loads(message)


def _above(fd: int, lowest: int = 10) -> int:
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, lowest)
    os.close(fd)
    return high


def open_page(path: Path, *, width: int = 1280, timeout: float = 90.0) -> Page:
    """Load ``path`` (a local file) in a fresh headless Chromium and inspect it."""
    chromium = find_chromium()
    if chromium is None:
        raise FileNotFoundError("no Chromium on PATH")
    deadline = time.monotonic() + timeout
    commands_r, commands_w = os.pipe()
    answers_r, answers_w = os.pipe()
    # The child's ends move above fd 9, so that putting them on fds 3 and 4 never
    # overwrites one with the other (under pytest the lowest free fds are taken).
    commands_r, answers_w = _above(commands_r), _above(answers_w)
    with tempfile.TemporaryDirectory() as profile:
        # bash puts the pipe ends on fds 3 and 4, where Chromium expects them (dash takes
        # only one-digit fds in a redirection).
        script = f'exec "$0" "$@" 3<&{commands_r} 4>&{answers_w}'
        process = subprocess.Popen(
            [shutil.which("bash") or "bash", "-c", script, chromium, *FLAGS,
             f"--user-data-dir={profile}", "about:blank"],
            pass_fds=(commands_r, answers_w), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        os.close(commands_r)
        os.close(answers_w)
        pipe = _Pipe(process, commands_w, answers_r)
        try:
            return _inspect(pipe, path, width=width, deadline=deadline)
        finally:
            # A browser that already died is fine here: the process is reaped below.
            with contextlib.suppress(OSError, RuntimeError, TimeoutError):
                pipe.send("Browser.close", deadline=time.monotonic() + 5)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            os.close(commands_w)
            os.close(answers_r)


def _inspect(pipe: _Pipe, path: Path, *, width: int, deadline: float) -> Page:
    target = pipe.send("Target.createTarget", {"url": "about:blank"}, deadline=deadline)
    session = pipe.send("Target.attachToTarget", {"targetId": target["targetId"],
                                                  "flatten": True}, deadline=deadline)["sessionId"]
    for domain in ("Page", "Runtime", "Log", "Network"):
        pipe.send(f"{domain}.enable", session=session, deadline=deadline)
    pipe.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": 900,
              "deviceScaleFactor": 1, "mobile": False}, session=session, deadline=deadline)
    pipe.events.clear()  # only what the page itself does counts
    pipe.send("Page.navigate", {"url": path.resolve().as_uri()}, session=session,
              deadline=deadline)
    pipe.wait_for("Page.loadEventFired", deadline=deadline)
    found = pipe.send("Runtime.evaluate", {"expression": INSPECT, "returnByValue": True},
                      session=session, deadline=deadline)
    page = Page(**json.loads(found["result"]["value"]))
    size = pipe.send("Page.getLayoutMetrics", session=session, deadline=deadline)
    content = size["cssContentSize"]
    shot = pipe.send("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": width, "height": content["height"], "scale": 1}},
        session=session, deadline=deadline)
    page.screenshot = base64.b64decode(shot["data"])
    for event in pipe.events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            page.errors.append(" ".join(str(a.get("value")) for a in params.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            page.errors.append(params["exceptionDetails"].get("text", "exception"))
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            page.errors.append(params["entry"].get("text", ""))
        elif method == "Network.requestWillBeSent":
            page.requests.append(params["request"]["url"])
    return page


if __name__ == "__main__":
    shown = open_page(Path(sys.argv[1]))
    Path(sys.argv[2]).write_bytes(shown.screenshot)
    print(f"{len(shown.tables)} tables, {len(shown.images)} images, errors: {shown.errors}")
