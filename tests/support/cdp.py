"""Headless Chromium driven through the DevTools protocol over ``--remote-debugging-pipe``.

Chromium reads commands from its fd 3 and writes answers and events to its fd 4, one JSON
message each, ended by a NUL byte: no port, no websocket client. One page is opened (a target
attached in flat mode, so commands carry its ``sessionId``); ``Input.dispatchMouseEvent`` then
sends real mouse events through the browser's input pipeline, as a user's mouse would, and
``Runtime.evaluate`` reads the DOM back. The page's console messages, uncaught exceptions and
log entries (Content-Security-Policy violations among them) are kept in ``console``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import subprocess
import time
from pathlib import Path
from typing import Any

#: Longest wait for one answer or event.
TIMEOUT_S = 60.0
_HIGH_FD = 100


class Chromium:
    """One headless Chromium with one page; a context manager that closes the browser."""

    def __init__(self, binary: str, profile: Path, size: tuple[int, int] = (1400, 1000)) -> None:
        to_browser, self._write = os.pipe()
        self._read, from_browser = os.pipe()

        def pipes_as_fd_3_and_4() -> None:  # in the child, before exec
            high_in = fcntl.fcntl(to_browser, fcntl.F_DUPFD, _HIGH_FD)
            high_out = fcntl.fcntl(from_browser, fcntl.F_DUPFD, _HIGH_FD)
            os.dup2(high_in, 3)
            os.dup2(high_out, 4)

        self._log = open(profile / "chromium.log", "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
             f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}",
             "--no-first-run", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._log,
            close_fds=False, preexec_fn=pipes_as_fd_3_and_4,
        )  # fmt: skip
        os.close(to_browser)
        os.close(from_browser)
        self._buffer = b""
        self._next_id = 0
        self._events: list[dict[str, Any]] = []
        self.console: list[str] = []
        self.session = ""
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable")

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _message(self) -> dict[str, Any]:
        deadline = time.monotonic() + TIMEOUT_S
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._read], [], [], max(0.0, left))
            if not ready:
                raise TimeoutError(f"Chromium said nothing for {TIMEOUT_S:.0f} s")
            chunk = os.read(self._read, 1 << 20)
            if not chunk:
                raise EOFError(f"Chromium closed its pipe; see {self._log.name}")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        message = json.loads(raw)
        self._note(message)
        return message

    def _note(self, message: dict[str, Any]) -> None:
        """Keep what the page said: console calls, uncaught exceptions, log entries."""
        method, params = message.get("method"), message.get("params", {})
        if method == "Runtime.consoleAPICalled":
            self.console.append(f"console.{params['type']}: {params.get('args')}")
        elif method == "Runtime.exceptionThrown":
            self.console.append(f"exception: {params['exceptionDetails']}")
        elif method == "Log.entryAdded":
            entry = params["entry"]
            self.console.append(f"log {entry['level']} ({entry['source']}): {entry['text']}")

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one command to the page (to the browser before a page is attached) and return
        its result; the events that arrive meanwhile are kept."""
        self._next_id += 1
        command: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if self.session:
            command["sessionId"] = self.session
        os.write(self._write, json.dumps(command).encode() + b"\0")
        while True:
            message = self._message()
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            if "method" in message:
                self._events.append(message)

    def wait_for(self, method: str) -> dict[str, Any]:
        """The first event ``method`` of the page not yet consumed, waiting for it."""
        while True:
            for i, event in enumerate(self._events):
                if event["method"] == method:
                    return self._events.pop(i)
            message = self._message()
            if "method" in message:
                self._events.append(message)

    def open(self, url: str) -> None:
        """Navigate the page to ``url`` and wait until it has loaded (its script has run)."""
        self._events.clear()
        self.call("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (DevTools' evaluation, which the
        page's Content-Security-Policy does not govern: the page's own policy is unchanged)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def mouse(self, kind: str, x: float, y: float, pressed: bool = False) -> None:
        """One real mouse event (``mousePressed``, ``mouseMoved``, ``mouseReleased``) at viewport
        coordinates, with the left button (held while ``pressed``)."""
        params: dict[str, Any] = {"type": kind, "x": x, "y": y, "modifiers": 0}
        if kind != "mouseMoved" or pressed:
            params |= {"button": "left", "buttons": 1 if pressed else 0}
        if kind in ("mousePressed", "mouseReleased"):
            params["clickCount"] = 1
        self.call("Input.dispatchMouseEvent", **params)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.session = ""
                self.call("Browser.close")
            except (OSError, EOFError, TimeoutError, RuntimeError):
                pass
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        for fd in (self._read, self._write):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._log.close()
