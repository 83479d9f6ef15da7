"""The one way tests wait: `eventually(probe)` asks again until the answer is there, never a fixed sleep."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

INTERVAL = 0.02  # seconds between two probes: short, so a test waits no longer than the thing it waits for


def eventually(probe: Callable[[], Any], timeout: float = 10.0, what: str | Callable[[], str] = "", interval: float = INTERVAL,
               retry_on: tuple[type[BaseException], ...] = (AssertionError,)) -> Any:
    """The first true value `probe()` returns within `timeout` seconds.

    A probe that raises one of `retry_on` (an assertion not holding yet) is asked
    again; at the deadline, that error is raised, or, when the probe answered
    something false, an AssertionError naming `what` (a text, or a function
    that makes one: a log read at the deadline) and the last answer.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            answer = probe()
        except retry_on:
            if time.monotonic() >= deadline:
                raise
        else:
            if answer:
                return answer
            if time.monotonic() >= deadline:
                described = what() if callable(what) else what
                raise AssertionError(f"not within {timeout:g} s: {described or probe!r} (last: {answer!r})")
        time.sleep(interval)
