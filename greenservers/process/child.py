"""A child process of the worker that runs one function and ends (offload.run_in_child): an address-book import.

    python -m greenservers.process.child   (the request pickled on stdin, the answer pickled on stdout)

The request is (module, function name, arguments, the worker's pid,
niceness); the answer is (True, result) or (False, exception). The child
lowers its own priority first, so that the worker's event loop gets a core
before it whenever both want one (and the part of its work that holds no
lock may wait for idle cores: offload.run_when_idle), and asks the kernel to
kill it if the worker dies: an import cut short that way rolls back, as
SQLite does with any transaction never committed. The worker is its only client (a pipe of
its own), so the pickles are trusted.
"""

from __future__ import annotations

import ctypes
import importlib
import os
import pickle
import signal
import sys
from contextlib import suppress

from greenservers.process import offload

PR_SET_PDEATHSIG = 1  # prctl(2): the signal the kernel sends this process when its parent dies


def _die_with(parent: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # the worker died before the request was read
        os._exit(1)


def _close_inherited() -> None:
    """Only stdin, stdout and stderr stay open (the worker's sockets are not the child's business)."""
    for name in os.listdir("/proc/self/fd"):
        if int(name) > 2:
            with suppress(OSError):  # the listing's own descriptor, closed already
                os.close(int(name))


def main() -> None:
    _close_inherited()
    answer_to = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    sys.stdout = sys.stderr  # nothing the function prints can spoil the answer
    module, name, args, parent, niceness = pickle.load(sys.stdin.buffer)
    _die_with(parent)
    os.nice(niceness)
    offload.in_a_child = True  # work that may wait for idle cores asks for them (offload.run_when_idle)
    function = importlib.import_module(module)
    for part in name.split("."):
        function = getattr(function, part)
    try:
        answer = (True, function(*args))
    except Exception as error:  # the worker raises it again
        answer = (False, error)
    try:
        data = pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # the worker still learns what failed to come back
        what = "result" if answer[0] else "exception"
        data = pickle.dumps((False, RuntimeError(f"the child's {what} ({type(answer[1]).__name__}) could not be pickled")))
    answer_to.write(data)
    answer_to.close()


if __name__ == "__main__":
    main()
