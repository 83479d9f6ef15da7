"""Runs CPU-heavy work off the event loop: storing an address-book import or a single change, the export, the admin search,
the JSON list and the page of a large book; scrypt; an RSA key. And keeps the cyclic collector's costly
collections out of work that makes many objects, in a thread or on the loop.

In the gevent worker such work goes to a thread of the hub's pool, so the
other services keep answering while it runs. A thread alone is not enough:

- it holds the GIL in 5 ms slices by default, and the event loop waits a
  slice each time it releases the GIL for a system call, so every other
  request slowed down by tens of milliseconds; 0.5 ms slices while the work
  runs keep their latency low;
- work that makes many objects (`build_off_loop`: an import) met full
  collections of the cyclic garbage collector, each holding the GIL for up to
  170 ms (a dozen while a 100,000-contact index was built in a thread, before
  the LDAP directory was changed in place on the loop). Full collections are
  off while it runs (`no_full_collections`); young ones go on: with the
  collector off altogether, the garbage every greenlet of the loop made
  meanwhile waited for one young collection as the import ended (4.5 ms with
  the loop held in the worker, 8.6 ms for 42,000 objects in a test). Lighter
  work (an export, a page) leaves the collector alone.

On the loop, while the LDAP directory is built or an import is merged into it
(in slices), the collector's full collections landed in the slices: each
scanned what the merge had made so far (10-20 ms near its end). They are off
meanwhile (`no_full_collections`); young collections go on (a slice's
garbage is freed as usual, and one turning it off altogether left 12,000
objects for one young collection at the end: 33 ms with the loop held).

A full collection scans every object the collector tracks, and most of them
are loaded at the start (modules, the web app, the services, the MIB: about
55,000, 30 ms of scanning with the loop held): the worker freezes them once
everything is loaded (`freeze_the_loaded`), so collections scan only what
was made since; the LDAP directory is frozen likewise once it is built or an
import is merged into it (`freeze_the_built`). Objects made later are
collected as usual. Each freeze is followed by a full collection of what is
left (next to nothing): CPython makes a full collection once the objects
moved to the oldest generation since the last one exceed a quarter of those
it kept then, and a freeze does not reset that count, so the objects of a
merge, though frozen, made a full collection due as soon as the threshold allowed.

Outside the gevent worker (the CLI, tests of the web app) the work simply runs.
"""

from __future__ import annotations

import gc
import sys
from contextlib import contextmanager

import gevent
from gevent import monkey

from ..shells.loop import serve_ready_then_continue

SWITCH_INTERVAL = 0.0005  # seconds; Python's default is 0.005

# Pieces of work in threads now: the last to finish restores the interpreter's switch interval.
# Only greenlets of the hub's thread change these, without yielding between.
_running = 0
_saved_interval = 0.005
_unfull = 0  # merges on the loop under way: full collections are off while any runs
_middle_threshold = 10
_full_threshold = 10
NEVER = 2**31 - 1  # a threshold of full collections that is never reached
MERGE_MIDDLE = 3  # young collections between two of the middle generation while a merge runs (CPython's: 10)


def _in_the_worker() -> bool:
    """The gevent worker has patched threading; a command or a test has not."""
    return monkey.is_module_patched("threading")


def freeze_the_loaded() -> None:
    """What the process has loaded lives as long as it does: the cyclic collector no longer scans it."""
    gc.collect()
    _freeze()


def _freeze() -> None:
    """Everything tracked now is frozen; then a full collection, of nothing, so that no full one is due because
    of what was frozen (see the module's docstring)."""
    gc.freeze()
    gc.collect()


def freeze_the_built() -> None:
    """A large structure just built (the LDAP directory, or an import merged into it) lives on: later full
    collections skip it (after an import they scanned it for 8-27 ms with the loop held). A young collection
    first, so that little garbage is frozen with it; what is frozen is still freed when its last reference goes.
    Only in the gevent worker (elsewhere the process is a command or a test)."""
    if _in_the_worker():
        gc.collect(1)
        _freeze()


@contextmanager
def no_full_collections():
    """The cyclic collector makes no full collection while the block runs (work that makes many objects: on
    the loop in slices, or in a pool thread); young ones go on, the middle generation's more often (MERGE_MIDDLE). As it
    was again when the last such block ends, however it ends. Only in the gevent worker."""
    global _unfull, _middle_threshold, _full_threshold
    if not _in_the_worker():
        yield
        return
    if _unfull == 0:
        young, _middle_threshold, _full_threshold = gc.get_threshold()
        gc.set_threshold(young, min(MERGE_MIDDLE, _middle_threshold), NEVER)
    _unfull += 1
    try:
        yield
    finally:
        _unfull -= 1
        if _unfull == 0:
            young, _, _ = gc.get_threshold()
            gc.set_threshold(young, _middle_threshold, _full_threshold)


def let_the_loop_turn() -> None:
    """In the gevent worker, wait until the loop has polled and served what was ready (work on the loop
    that goes on for long: read a piece, let the others in, read on); elsewhere nothing."""
    if _in_the_worker():
        serve_ready_then_continue()


def run_off_loop(function, *args):
    """function(*args) in a pool thread if this is the gevent worker (the caller's greenlet waits), else here."""
    global _running, _saved_interval
    if not _in_the_worker():
        return function(*args)
    if _running == 0:
        _saved_interval = sys.getswitchinterval()
        sys.setswitchinterval(SWITCH_INTERVAL)
    _running += 1
    try:
        return gevent.get_hub().threadpool.apply(function, args)
    finally:
        _running -= 1
        if _running == 0:
            sys.setswitchinterval(_saved_interval)


def build_off_loop(function, *args):
    """The same, for work that makes many objects (an import): no full collection meanwhile."""
    with no_full_collections():
        return run_off_loop(function, *args)
