"""A real headless Chromium, driven over the DevTools protocol on a pipe (no extra library).

`Browser.open(path)` loads a page and records every console message, uncaught exception and
browser log entry (CSP violations, failed loads) at level error or warning; `evaluate` runs an
expression in the page; `screenshot` captures the viewport as PNG bytes.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
SNAP_BIN = "/snap/bin"  # Ubuntu's Chromium is a snap, whose commands may be off PATH


def chromium() -> str | None:
    """The Chromium binary, if one is installed."""
    path = f"{os.environ.get('PATH', os.defpath)}{os.pathsep}{SNAP_BIN}"
    return next(
        (found for name in CHROMIUM_NAMES if (found := shutil.which(name, path=path))), None
    )


class Browser:
    """One Chromium process with one page; use as a context manager."""

    def __init__(self, binary: str, width: int = 1400, height: int = 900):
        self.binary = binary
        self.width, self.height = width, height
        self.problems: list[str] = []
        self._next_id = 0
        self._buffer = b""
        self._loaded = False
        self._profile = tempfile.TemporaryDirectory(prefix="network-isolation-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def wire() -> None:  # the DevTools pipe: Chromium reads fd 3 and writes fd 4
            reads, writes = os.dup(to_browser_r), os.dup(from_browser_w)
            os.dup2(reads, 3)
            os.dup2(writes, 4)

        self.process = subprocess.Popen(
            [
                binary,
                "--headless=new",
                "--remote-debugging-pipe",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                f"--user-data-dir={self._profile.name}",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=wire,
            # kept open across exec (subprocess closes the others after `wire` ran)
            pass_fds=(3, 4, to_browser_r, from_browser_w),
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        target = self._call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self._session = self._call("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        for domain in ("Runtime", "Log", "Page"):
            self.call(f"{domain}.enable")
        self.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *_: object) -> None:
        try:
            self._call("Browser.close")
        except (OSError, RuntimeError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)
        self._profile.cleanup()

    # -- the protocol ------------------------------------------------------------------------

    def _send(self, message: dict[str, Any]) -> None:
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")

    def _receive(self) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def _call(
        self, method: str, params: dict[str, Any] | None = None, session: str | None = None
    ) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        self._send(message)
        while True:
            reply = self._receive()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self._event(reply)

    def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """A command to the page."""
        return self._call(method, params, self._session)

    def _event(self, event: dict[str, Any]) -> None:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "warning"):
            texts = [str(a.get("value", a.get("description", ""))) for a in params.get("args", [])]
            self.problems.append(f"console.{params['type']}: {' '.join(texts)}")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            self.problems.append(f"exception: {details.get('text')} {details.get('exception')}")
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            if entry.get("level") in ("error", "warning"):
                self.problems.append(f"log {entry.get('source')}: {entry.get('text')}")
        elif method == "Page.loadEventFired":
            self._loaded = True

    # -- what tests use ----------------------------------------------------------------------

    def open(self, path: Path) -> None:
        """Load a file and wait for its load event."""
        self._loaded = False
        self.call("Page.navigate", {"url": path.resolve().as_uri()})
        while not self._loaded:
            self._event(self._receive())
        self.evaluate("0")  # let late console messages of the load arrive

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page."""
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self) -> bytes:
        """The viewport as a PNG."""
        return base64.b64decode(self.call("Page.captureScreenshot", {"format": "png"})["data"])
