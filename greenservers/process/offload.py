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
after CHILD_TIMEOUT. Its work that holds no lock may ask for idle cores only
(`run_when_idle`: during an import of 50,000 the other services' p99 read
13.5-16.8 ms with the niceness alone, 6.4-10.6 ms with the whole child idle, in
4 runs each; with the validation idle and the commit niced, 6.3-20.5 ms, median
11.3, in 17 runs on a noisier host: bench/RESULTS.md).

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
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import gevent
from gevent import monkey, os as gevent_os

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
IDLE_PATIENCE = 30.0  # seconds a child's work waits for idle cores at most (run_when_idle), then goes on niced
CHILDREN = 1  # children at once; more wait their turn (imports wait for each other's commit anyway)
CHILD_ANSWER_LIMIT = 1 << 20  # bytes of a child's pickled answer (an import's: a count, or the problems it reports)
CHILD_ERRORS_KEPT = 1 << 16  # bytes of a child's standard error read (its last line is logged if it fails)
_child_slots = None  # a gevent Semaphore(CHILDREN), made in the worker on first use
in_a_child = False  # set by greenservers/process/child.py: this process is the worker's child
_PROJECT_ROOT = str(Path(__file__).resolve().parents[2])  # where the child finds the greenservers package


# A lock, and storage per thread, that the loop's thread and the pool's share, whether or not gevent has patched
# threading: in the worker, threading's locks are gevent's, which a native thread cannot wait on safely (waits that
# never ended), and its `local` is per greenlet. The loop waiting on a NativeLock a thread holds waits whole: for
# work that runs off the loop.
NativeLock = monkey.get_original("threading", "Lock")
ThreadLocal = monkey.get_original("threading", "local")


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


def run_off_loop(function, *args, to_its_end: bool = False):
    """function(*args) in a pool thread if this is the gevent worker (the caller's greenlet waits), else here.

    `to_its_end`: a greenlet killed while it waits (its service stopped) still waits for the thread to finish,
    then goes on with the kill: for work whose resources the caller's clean-up would release under it (an
    upload's file, being synced and linked)."""
    global _running, _saved_interval
    if not _in_the_worker():
        return function(*args)
    if _running == 0:
        _saved_interval = sys.getswitchinterval()
        sys.setswitchinterval(SWITCH_INTERVAL)
    _running += 1
    try:
        if not to_its_end:
            return gevent.get_hub().threadpool.apply(function, args)
        return _waited_through_kills(gevent.get_hub().threadpool.spawn(function, *args))
    finally:
        _running -= 1
        if _running == 0:
            sys.setswitchinterval(_saved_interval)


def _waited_through_kills(done):
    """The value of a thread's result (`done`), waited for whatever is thrown into the caller meanwhile; then
    what was thrown goes on."""
    killed = None
    while True:
        try:
            value = done.get()
        except BaseException as exc:  # noqa: BLE001 -- a kill (GreenletExit, or what the killer chose) is held back
            if not done.ready():
                killed = exc
                continue
            raise killed if killed is not None else exc  # noqa: B904 -- the kill, if any, is what goes on
        if killed is not None:
            raise killed
        return value


class ChildFailed(RuntimeError):
    """A child process ended without an answer (killed, crashed, or past CHILD_TIMEOUT); `reason` says how."""

    def __init__(self, what: str, reason: str):
        super().__init__(what, reason)  # its arguments, so that it pickles as it was made
        self.what, self.reason = what, reason

    def __str__(self) -> str:
        return f"{self.what} {self.reason}"


def run_in_child(function, *args):
    """function(*args) in a child process of lower priority if this is the gevent worker (the caller's greenlet
    waits; the loop goes on), else here. `function` is named by its module and name (a module's top level);
    its arguments, result and exception travel pickled. Raises what it raised, or ChildFailed."""
    if not _in_the_worker():
        return function(*args)
    global _child_slots
    if _child_slots is None:
        from gevent.lock import Semaphore

        _child_slots = Semaphore(CHILDREN)
    with _child_slots:
        # pickled in a thread: 2.5 MB of CSV take 2 ms
        request = run_off_loop(pickle.dumps, (function.__module__, function.__qualname__, args, os.getpid(), CHILD_NICENESS),
                               pickle.HIGHEST_PROTOCOL)
        succeeded, value = _ask_child(function.__qualname__, request)
    if succeeded:
        return value
    raise value


def run_when_idle(steps: Iterator, patience: float | None = None) -> None:
    """Run `steps` (work that holds no lock, cut in steps) to their end. In the worker's child process they
    run in a thread of Linux's SCHED_IDLE policy, a core only when no other thread of the machine wants one
    (the worker's event loop above all), for `patience` seconds (IDLE_PATIENCE; looked at between two steps,
    so one step more at most); what is left runs here, at the child's niceness, so that cores other programs
    keep busy delay the work, not starve it. A thread, because a policy is a thread's own and an unprivileged
    one cannot go back to the normal one: the caller goes on afterwards at its niceness (an import's commit,
    which other writers wait for, never waits for idle cores). Elsewhere, all of it here (where the policy is
    refused, the thread runs at the child's niceness). The steps are closed however it ends."""
    try:
        if in_a_child and hasattr(os, "SCHED_IDLE"):
            _run_idle(steps, IDLE_PATIENCE if patience is None else patience)
        for _ in steps:  # what is left: nothing, unless the patience ran out
            pass
    finally:
        close = getattr(steps, "close", None)
        if close is not None:
            close()


def _run_idle(steps: Iterator, patience: float) -> None:
    failed: list[BaseException] = []

    def idle():
        with suppress(OSError):  # refused (a container's seccomp policy, say): the niceness alone
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # 0: this thread (Linux)
        until = time.monotonic() + patience
        try:
            for _ in steps:
                if time.monotonic() >= until:
                    return
        except BaseException as error:  # the caller raises it again
            failed.append(error)

    thread = threading.Thread(target=idle, name="idle")
    try:
        thread.start()
    except RuntimeError:  # no thread to be had (a limit on tasks): all of it in the caller's
        return
    thread.join()
    if failed:
        raise failed[0]


def _ask_child(what: str, request: bytes) -> tuple[bool, object]:
    """Start the child with posix_spawn (vfork and exec: gevent's Popen forks the whole worker first, 12-40 ms
    with the loop held at 150 MB), hand it `request`, read its answer; it is ended and reaped whatever happens."""
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (_PROJECT_ROOT, os.environ.get("PYTHONPATH")))))
    to_child, request_end = os.pipe()
    answer_end, from_child = os.pipe()
    errors_end, errors_from_child = os.pipe()
    try:
        pid = gevent_os.posix_spawn(sys.executable, [sys.executable, "-m", "greenservers.process.child"], environment,
                                    file_actions=[(os.POSIX_SPAWN_DUP2, to_child, 0), (os.POSIX_SPAWN_DUP2, from_child, 1),
                                                  (os.POSIX_SPAWN_DUP2, errors_from_child, 2)])
    except BaseException:
        for fd in (request_end, answer_end, errors_end):
            os.close(fd)
        raise
    finally:
        for fd in (to_child, from_child, errors_from_child):
            os.close(fd)
    for fd in (request_end, answer_end, errors_end):
        gevent_os.make_nonblocking(fd)
    feeding = gevent.spawn(_write_all, request_end, request)
    reading_errors = gevent.spawn(_read_all, errors_end, CHILD_ERRORS_KEPT, True)
    exit_code = None
    try:
        with gevent.Timeout(CHILD_TIMEOUT, False):
            answer = _read_all(answer_end, CHILD_ANSWER_LIMIT)
            feeding.get()
            errors = reading_errors.get()
            exit_code = os.waitstatus_to_exitcode(gevent_os.waitpid(pid, 0)[1])
        if exit_code is None:
            raise ChildFailed(what, f"did not end within {CHILD_TIMEOUT:.0f} s; it was stopped")
    finally:
        feeding.kill()
        reading_errors.kill()
        if exit_code is None:  # past its time, or the waiting greenlet was killed: the child goes too
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            gevent_os.waitpid(pid, 0)
    if exit_code != 0 or not answer:
        last = errors.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no message"]
        log.error("child process for %s ended with code %s: %s", what, exit_code, last[0][:300])
        raise ChildFailed(what, f"ended without an answer (code {exit_code})")
    return pickle.loads(answer)


def _write_all(fd: int, data: bytes) -> None:
    try:
        view = memoryview(data)
        while view:
            view = view[gevent_os.nb_write(fd, view[:65536]):]
    except BrokenPipeError:  # the child ended before it read everything: its exit code tells why
        pass
    finally:
        os.close(fd)


def _read_all(fd: int, limit: int, keep_the_end: bool = False) -> bytes:
    """What the child writes to `fd` until it closes it. Past `limit` bytes: ChildFailed, or with
    `keep_the_end`, the last `limit` bytes (a long traceback's end)."""
    try:
        kept = bytearray()
        while chunk := gevent_os.nb_read(fd, 65536):
            kept += chunk
            if len(kept) > limit:
                if not keep_the_end:
                    raise ChildFailed("the child", f"wrote more than {limit} bytes")
                del kept[:-limit]
        return bytes(kept)
    finally:
        os.close(fd)
