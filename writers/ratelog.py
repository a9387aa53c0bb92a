"""Rate-limited diagnostics: a flood of bad input must not become a flood of log lines."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO


class RateLimitedLog:
    """At most one line per ``interval`` seconds per category, with a count of what was held back.

    The category (``"malformed"``, ``"write_error"``...) keeps one noisy problem from hiding
    another; the suppressed count keeps the log honest about volume.
    """

    def __init__(
        self,
        prefix: str,
        stream: TextIO | None = None,
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._prefix = prefix
        self._stream = stream
        self._interval = interval
        self._clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def __call__(self, category: str, message: str) -> bool:
        """Log ``message`` unless ``category`` logged recently; return whether it was printed."""
        now = self._clock()
        last = self._last.get(category)
        if last is not None and now - last < self._interval:
            self._suppressed[category] = self._suppressed.get(category, 0) + 1
            return False
        self._last[category] = now
        held = self._suppressed.pop(category, 0)
        suffix = f" ({held} similar suppressed)" if held else ""
        # One line whatever the message holds: reasons may quote hostile input.
        text = message.replace("\n", "\\n").replace("\r", "\\r")
        stream = self._stream if self._stream is not None else sys.stderr
        print(f"{self._prefix}: {category}: {text}{suffix}", file=stream, flush=True)
        return True
