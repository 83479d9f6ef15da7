"""Rate-limited logging for anything a remote peer can trigger.

Two limits, both per interval (a minute by default), for every service that
logs what peers cause:

- per client: one line per (kind, client) per interval, the client being
  proto.clients' client key (an IPv4 address, an IPv6 /64), so a device
  cannot write a line for each of the addresses of its /64; what was
  suppressed meanwhile is reported as a count on that client's next line;
- per kind, all clients together: at most `budget` lines of one kind per
  interval, as spoofed sources are endless; the lines over it are counted and
  reported in one summary line when the interval is over (or at the next line
  of that log after it, where no timer can run).

So a flood cannot fill the disk, and the administrator still learns how much
happened. What a peer sent is quoted through `printable`: short, on one line,
so it cannot forge others.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from .proto.clients import client_key

MAX_TRACKED = 4096  # clients remembered at once; beyond it the oldest are forgotten
SAMPLE_CHARS = 100  # of a peer's text quoted in a line
LINES_PER_KIND = 30  # lines of one kind per interval, all clients together


def printable(text: str, limit: int = SAMPLE_CHARS) -> str:
    """`text` cut to `limit` characters, control and non-ASCII characters escaped."""
    shown = "".join(c if c.isascii() and c.isprintable() else ascii(c)[1:-1] for c in text[:limit])
    return shown + ("..." if len(text) > limit else "")


def _gevent_later(delay: float, callback: Callable[[], None]) -> None:
    import gevent

    gevent.spawn_later(delay, callback)


class RateLimitedLog:
    """`later(delay, callback)` runs the summary of a kind when its interval is over (gevent's timer by
    default; None: at the next line of this log after it)."""

    def __init__(self, logger: logging.Logger, interval: float = 60.0, clock: Callable[[], float] = time.monotonic,
                 budget: int = LINES_PER_KIND, later: Callable[[float, Callable[[], None]], None] | None = _gevent_later):
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self.budget = budget
        self.later = later
        self._last: dict[tuple, list] = {}  # (kind, client key) -> [time of last line, suppressed count]
        self._kinds: dict[str, list] = {}  # kind -> [start of its interval, lines logged, lines held back, level]
        self._keys: dict[str, str] = {}  # an IPv6 source -> its /64 (parsing one costs microseconds)
        self._oldest = float("inf")  # when the oldest of the kinds' intervals began

    def warning(self, kind: str, source: str, message: str, *args) -> bool:
        """Log unless this (kind, client) logged within the interval or the kind is over its budget; True when logged."""
        return self._log(logging.WARNING, kind, source, message, args)

    def info(self, kind: str, source: str, message: str, *args) -> bool:
        return self._log(logging.INFO, kind, source, message, args)

    def suppressed(self, kind: str, source: str, count: int) -> None:
        """`count` more occurrences of a (kind, source) just logged or suppressed, counted without
        a call each (a flood handled in a batch); reported with its next line, or in the kind's summary."""
        if count <= 0:
            return
        entry = self._last.get((kind, self._key(source)))
        if entry is not None:
            entry[1] += count
            return
        tally = self._kinds.get(kind)
        if tally is not None:
            self._hold(kind, tally, count)

    def flush(self, now: float | None = None) -> None:
        """Write the summary of every kind whose interval is over and that held lines back."""
        now = self.clock() if now is None else now
        for kind, tally in list(self._kinds.items()):
            if now - tally[0] >= self.interval:
                self._close(kind, tally)
        self._oldest = min((tally[0] for tally in self._kinds.values()), default=float("inf"))

    def _key(self, source: str) -> str:
        if ":" not in source:
            return source
        key = self._keys.get(source)
        if key is None:
            if len(self._keys) >= MAX_TRACKED:
                self._keys.clear()
            key = self._keys[source] = client_key(source)
        return key

    def _log(self, level: int, kind: str, source: str, message: str, args: tuple) -> bool:
        now = self.clock()
        key = (kind, self._key(source))
        entry = self._last.get(key)
        if entry is not None and now - entry[0] < self.interval:
            entry[1] += 1
            return False
        if not self._within_budget(kind, level, now):
            return False
        suppressed = entry[1] if entry else 0
        if entry is None and len(self._last) >= MAX_TRACKED:
            self._last.pop(next(iter(self._last)))
        self._last[key] = [now, 0]
        suffix = f" ({suppressed} more since the last line)" if suppressed else ""
        self.logger.log(level, "%s: " + message + suffix, source, *args)
        return True

    def _within_budget(self, kind: str, level: int, now: float) -> bool:
        """Whether a line of `kind` may be written now; if not, it is counted for the kind's summary."""
        if now - self._oldest >= self.interval:
            self.flush(now)
        tally = self._kinds.get(kind)
        if tally is None:
            tally = self._kinds[kind] = [now, 0, 0, level]
            self._oldest = min(self._oldest, now)
        if tally[1] < self.budget:
            tally[1] += 1
            return True
        self._hold(kind, tally, 1)
        return False

    def _hold(self, kind: str, tally: list, count: int) -> None:
        if not tally[2] and self.later is not None:  # the first held back this interval: its summary is due at its end
            self.later(max(0.0, tally[0] + self.interval - self.clock()), lambda: self._close(kind, tally))
        tally[2] += count

    def _close(self, kind: str, tally: list) -> None:
        """The kind's interval is over: its summary, if it held lines back (once: a later call finds it closed)."""
        if self._kinds.get(kind) is not tally:
            return
        del self._kinds[kind]
        if tally[2]:
            self.logger.log(tally[3], "rate limit: %d more %r lines not logged (over %d of that kind within %d s, "
                            "all sources together)", tally[2], kind, self.budget, round(self.interval))
