"""Runs CPU-heavy work off the event loop: a single change to the address book, the export, the admin search,
the JSON list and the page of a large book; scrypt; an RSA key; an address-book import in a child process. And
keeps the cyclic collector's costly collections out of work that makes many objects on the loop.

In the gevent worker such work goes to a thread of the hub's pool
(`run_off_loop`), so the other services keep answering while it runs. It
holds the GIL in 5 ms slices by default, and the event loop waits a slice
each time it releases the GIL for a system call, so every other request
slowed down by tens of milliseconds; 0.5 ms slices while the work runs keep
their latency low.

An import is seconds of CPU (50,000 contacts: about 2.5 s). In a thread, even
with short slices, the loop's thread waited for the GIL and for a core while
the import's thread held them: the other services' p99 read 13-31 ms during
it. It runs in a child process instead (`run_in_child`, greenservers/process/child.py),
of lower priority (CHILD_NICENESS): no GIL is shared, and the kernel gives the
loop's thread a core first. The child is killed if the worker dies, and
after CHILD_TIMEOUT.

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

Outside the gevent worker (the CLI, tests of the web app) the work simply runs."""

from __future__ import annotations

import gc
import logging
import os
import pickle
import sys
from contextlib import contextmanager
from pathlib import Path

import gevent
from gevent import monkey

from ..shells.loop import serve_ready_then_continue

log = logging.getLogger("greenservers.offload")

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
CHILD_NICENESS = 10  # added to the worker's: the child gets a core when the loop's thread does not want it
CHILD_TIMEOUT = 600.0  # seconds a child may run (an import of the largest book allowed: about 10 s)
CHILDREN = 1  # children at once; more wait their turn (imports wait for each other's commit anyway)
_child_slots = None  # a gevent Semaphore(CHILDREN), made in the worker on first use
_PROJECT_ROOT = str(Path(__file__).resolve().parents[2])  # where the child finds the greenservers package


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


class ChildFailed(RuntimeError):
    """A child process ended without an answer (killed, crashed, or past CHILD_TIMEOUT)."""


def run_in_child(function, *args):
    """function(*args) in a child process of lower priority if this is the gevent worker (the caller's greenlet
    waits; the loop goes on), else here. `function` is named by its module and name (a module's top level);
    its arguments, result and exception travel pickled. Raises what it raised, or ChildFailed."""
    if not _in_the_worker():
        return function(*args)
    global _child_slots
    from gevent import subprocess  # cooperative: the loop serves the others while the child runs
    from gevent.lock import Semaphore

    if _child_slots is None:
        _child_slots = Semaphore(CHILDREN)
    with _child_slots:
        return _answer_of_child(subprocess, function, args)


def _answer_of_child(subprocess, function, args):
    request = pickle.dumps((function.__module__, function.__qualname__, args, os.getpid(), CHILD_NICENESS),
                           protocol=pickle.HIGHEST_PROTOCOL)
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (_PROJECT_ROOT, os.environ.get("PYTHONPATH")))))
    child = subprocess.Popen([sys.executable, "-m", "greenservers.process.child"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environment)
    try:
        answer, errors = child.communicate(request, timeout=CHILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise ChildFailed(f"{function.__qualname__} did not end within {CHILD_TIMEOUT:.0f} s; it was stopped") from None
    finally:
        if child.poll() is None:  # past its time, or the waiting greenlet was killed: the child goes too
            child.kill()
            child.wait()
    if child.returncode != 0 or not answer:
        last = errors.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no message"]
        log.error("child process for %s ended with code %s: %s", function.__qualname__, child.returncode, last[0][:300])
        raise ChildFailed(f"{function.__qualname__} ended without an answer (code {child.returncode})")
    succeeded, value = pickle.loads(answer)
    if succeeded:
        return value
    raise value
