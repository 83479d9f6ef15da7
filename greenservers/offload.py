"""Runs CPU-heavy work off the event loop: what a large address book costs (import, export,
listing, the admin page, reloading it and indexing it for LDAP).

In the gevent worker such work goes to a thread of the hub's pool, so the
other services keep answering while it runs. A thread alone is not enough:

- it holds the GIL in 5 ms slices by default, and the event loop waits a
  slice each time it releases the GIL for a system call, so every other
  request slowed down by tens of milliseconds; 0.5 ms slices while the work
  runs keep their latency low;
- the work makes millions of objects, and each full collection of the
  cyclic garbage collector among them held the GIL for up to 170 ms (a dozen
  during a 100,000-contact build). The collector is off while work runs, and
  what it made is then moved straight to the oldest generation (freeze,
  unfreeze) instead of being scanned by the young ones on its way there;
  nothing is exempt from later collections.

Outside the gevent worker (the CLI, tests of the web app) the work simply runs.
"""

from __future__ import annotations

import gc
import sys

import gevent
from gevent import monkey

SWITCH_INTERVAL = 0.0005  # seconds; Python's default is 0.005

# pieces of work in threads now: the last to finish restores the interpreter's settings
# (only greenlets of the hub's thread change these, without yielding in between)
_running = 0
_saved: tuple[float, bool] = (0.005, True)


def run_off_loop(function, *args):
    """function(*args) in a pool thread if this is the gevent worker (the caller's greenlet waits), else here."""
    if not monkey.is_module_patched("threading"):
        return function(*args)
    _begin()
    try:
        return gevent.get_hub().threadpool.apply(function, args)
    finally:
        _end()


def _begin() -> None:
    global _running, _saved
    if _running == 0:
        _saved = (sys.getswitchinterval(), gc.isenabled())
        sys.setswitchinterval(SWITCH_INTERVAL)
        gc.disable()
    _running += 1


def _end() -> None:
    global _running
    _running -= 1
    if _running == 0:
        gc.freeze()  # what the work made, and all else, to the oldest generation without a scan
        gc.unfreeze()
        interval, collecting = _saved
        if collecting:
            gc.enable()
        sys.setswitchinterval(interval)
