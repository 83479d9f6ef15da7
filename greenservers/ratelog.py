"""Rate-limited logging for anything a remote peer can trigger.

One line per (kind, source) per interval; what was suppressed meanwhile is
reported as a count on the next line, so a flood cannot fill the disk and
the administrator still learns how much happened. What a peer sent is
quoted through `printable`: short, on one line, so it cannot forge others.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

MAX_TRACKED = 4096  # sources remembered at once; beyond it the oldest are forgotten
SAMPLE_CHARS = 100  # of a peer's text quoted in a line


def printable(text: str, limit: int = SAMPLE_CHARS) -> str:
    """`text` cut to `limit` characters, control and non-ASCII characters escaped."""
    shown = "".join(c if c.isascii() and c.isprintable() else ascii(c)[1:-1] for c in text[:limit])
    return shown + ("..." if len(text) > limit else "")


class RateLimitedLog:
    def __init__(self, logger: logging.Logger, interval: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self._last: dict[tuple, list] = {}  # key -> [time of last line, suppressed count]

    def warning(self, kind: str, source: str, message: str, *args) -> bool:
        """Log unless this (kind, source) logged within the interval; True when logged."""
        return self._log(logging.WARNING, kind, source, message, args)

    def info(self, kind: str, source: str, message: str, *args) -> bool:
        return self._log(logging.INFO, kind, source, message, args)

    def suppressed(self, kind: str, source: str, count: int) -> None:
        """`count` more occurrences of a (kind, source) just logged or suppressed, counted without
        a call each (a flood handled in a batch); reported with its next line."""
        entry = self._last.get((kind, source))
        if entry is not None:
            entry[1] += count

    def _log(self, level: int, kind: str, source: str, message: str, args: tuple) -> bool:
        now = self.clock()
        key = (kind, source)
        entry = self._last.get(key)
        if entry is not None and now - entry[0] < self.interval:
            entry[1] += 1
            return False
        suppressed = entry[1] if entry else 0
        if entry is None and len(self._last) >= MAX_TRACKED:
            self._last.pop(next(iter(self._last)))
        self._last[key] = [now, 0]
        suffix = f" ({suppressed} more since the last line)" if suppressed else ""
        self.logger.log(level, "%s: " + message + suffix, source, *args)
        return True
