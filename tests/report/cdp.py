"""A tiny Chrome DevTools Protocol client over ``--remote-debugging-pipe``, stdlib only.

Why the pipe and not ``--dump-dom`` + ``--enable-logging``: the pipe gives structured events
(console calls, uncaught exceptions, log entries such as CSP violations, every network
request) plus DOM evaluation and a screenshot from one browser session, without parsing
Chromium's unstable log text. Why the pipe and not a port: no port to pick or race for
between parallel test workers, and no websocket client to write. Chromium reads commands
from fd 3 and writes replies to fd 4, each a JSON message ended by a NUL byte.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class CDPError(RuntimeError):
    pass


@dataclass
class PageResult:
    url: str
    console: list[dict[str, Any]] = field(default_factory=list)  # Runtime.consoleAPICalled
    exceptions: list[dict[str, Any]] = field(default_factory=list)  # Runtime.exceptionThrown
    log: list[dict[str, Any]] = field(default_factory=list)  # Log.entryAdded
    requests: list[str] = field(default_factory=list)  # every URL the page asked for
    blocked: dict[str, str] = field(default_factory=dict)  # URL -> why it failed (e.g. "csp")
    value: Any = None  # what the evaluated expression returned
    screenshot: bytes = b""

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and error-level log entries, as text."""
        out = [f"console.{c['type']}: {c.get('args')}" for c in self.console if c["type"] in ("error", "assert")]
        out += [f"exception: {e.get('exceptionDetails', {}).get('text')}" for e in self.exceptions]
        out += [f"log {e['entry'].get('source')}: {e['entry'].get('text')} {e['entry'].get('url', '')}"
                for e in self.log if e["entry"].get("level") == "error"]
        return out

    def external_requests(self) -> list[str]:
        """Requests for anything but the page itself (data: URIs are inline, not fetched)."""
        return [u for u in self.requests if u != self.url and not u.startswith("data:")]


class Chromium:
    """One headless Chromium with a fresh profile; use as a context manager."""

    def __init__(self, binary: str, profile: Path, width: int = 1280, height: int = 800) -> None:
        self.width, self.height = width, height
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        # Move the child's ends to free descriptors above 10 so that the child's dup2 onto 3 and
        # 4 cannot clobber either one. F_DUPFD picks a *free* number: a fixed one (dup2 onto
        # 20) would silently close whatever this process had there, e.g. Ray's GCS socket.
        hi_r = fcntl.fcntl(to_child_r, fcntl.F_DUPFD, 10)
        hi_w = fcntl.fcntl(from_child_w, fcntl.F_DUPFD, 10)
        os.close(to_child_r)
        os.close(from_child_w)

        def child_fds() -> None:
            os.dup2(hi_r, 3)
            os.dup2(hi_w, 4)

        self.stderr_path = profile.parent / "chromium.stderr"
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe", "--no-first-run",
             "--no-default-browser-check", "--hide-scrollbars", "--mute-audio", f"--window-size={width},{height}",
             "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._stderr,
            pass_fds=(3, 4, hi_r, hi_w), preexec_fn=child_fds,
        )
        os.close(hi_r)
        os.close(hi_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict[str, Any]] = []

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                try:
                    self.send("Browser.close", timeout=5)
                except Exception:
                    pass
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=10)
        finally:
            for fd in (self._to_child, self._from_child):
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._stderr.close()

    # -- protocol ------------------------------------------------------------------------

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise CDPError("timed out waiting for Chromium")
            ready, _, _ = select.select([self._from_child], [], [], min(left, 1.0))
            if not ready:
                if self.proc.poll() is not None:
                    raise CDPError(f"Chromium exited ({self.proc.returncode}); see {self.stderr_path}")
                continue
            chunk = os.read(self._from_child, 1 << 16)
            if not chunk:
                raise CDPError(f"Chromium closed the pipe; see {self.stderr_path}")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
             timeout: float = 30) -> dict[str, Any]:
        """Send one command and wait for its reply; events that arrive meanwhile are kept."""
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_child, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise CDPError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    def wait_for(self, method: str, session: str, timeout: float = 30) -> dict[str, Any]:
        for ev in self.events:
            if ev["method"] == method and ev.get("sessionId") == session:
                return ev
        deadline = time.monotonic() + timeout
        while True:
            ev = self._read_message(deadline)
            if "method" in ev:
                self.events.append(ev)
                if ev["method"] == method and ev.get("sessionId") == session:
                    return ev

    # -- one page ------------------------------------------------------------------------

    def open(self, path: Path | str, expression: str, screenshot: Path | None = None, settle_s: float = 0.3) -> PageResult:
        """Load ``path`` (a file, or a URL given as a string), record console/log/network,
        evaluate ``expression`` (its JSON-able value is returned), and optionally save a
        full-page screenshot."""
        url = path if isinstance(path, str) else path.resolve().as_uri()
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable", session=session)
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False}, session=session)
        self.events.clear()
        self.send("Page.navigate", {"url": url}, session=session)
        self.wait_for("Page.loadEventFired", session)
        # Late console messages (none expected: the page has no scripts) get a moment to arrive.
        end = time.monotonic() + settle_s
        while time.monotonic() < end:
            try:
                ev = self._read_message(end)
                if "method" in ev:
                    self.events.append(ev)
            except CDPError:
                break
        res = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=session)
        if "exceptionDetails" in res:
            raise CDPError(f"evaluate: {res['exceptionDetails']}")
        out = PageResult(url, value=res["result"].get("value"))
        if screenshot is not None:
            shot = self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True},
                             session=session, timeout=60)
            out.screenshot = base64.b64decode(shot["data"])
            screenshot.write_bytes(out.screenshot)
        ids: dict[str, str] = {}
        for ev in self.events:
            if ev.get("sessionId") != session:
                continue
            m, p = ev["method"], ev["params"]
            if m == "Runtime.consoleAPICalled":
                out.console.append({"type": p["type"], "args": [a.get("value", a.get("description")) for a in p["args"]]})
            elif m == "Runtime.exceptionThrown":
                out.exceptions.append(p)
            elif m == "Log.entryAdded":
                out.log.append(p)
            elif m == "Network.requestWillBeSent":
                out.requests.append(p["request"]["url"])
                ids[p["requestId"]] = p["request"]["url"]
            elif m == "Network.loadingFailed":
                out.blocked[ids.get(p["requestId"], p["requestId"])] = p.get("blockedReason") or p.get("errorText", "")
        self.send("Target.closeTarget", {"targetId": target})
        return out
