"""A clock the test sets: what the sans-IO cores and the web app's limiters are given instead of time.monotonic."""

from __future__ import annotations


class FakeClock:
    """Calling it gives `now`; the test moves `now` on."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now
