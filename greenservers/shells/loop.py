"""Giving the event loop a real turn: let it poll the sockets and serve what is ready, then carry on.

A greenlet whose socket always has data (a client pipelining requests, a
flood of messages on one connection) never blocks, so it never gives the
loop back: every other socket waits until it is done. `gevent.sleep(0)` does
not help: it only queues the greenlet behind the callbacks already ready, and
gevent runs up to 50 of those before it polls again.

What marks a turn is a zero timer of lower priority than the sockets'
watchers: libev starts a timer's countdown at its next poll, and runs the
ready watchers of higher priority first. So when it fires, the loop has
polled and served every socket that was ready (an NTP query, another
client's request). Three forms of the same turn:

- `serve_ready_then_continue()`: the calling greenlet waits for the turn
  (`run_in_turns(steps)` runs work cut in steps, one such turn every
  millisecond of it);
- `after_the_loop_turns(callback, *args)`: `callback(*args)` runs in the hub
  after the turn (for code that hands work on instead of waiting itself);
- `Turns.take()`: many greenlets of one kind (connections pipelining
  requests) wait in line, and one of them goes on per turn of the loop: if
  each waited for a turn of its own, they would all go on after the same
  poll, and the loop would wait for all their work before it polled again.

`WorkLine` puts Turns to work for many connections' small pieces of work (an
HTTP request answered, a step of a TLS handshake): a piece runs at once while
nobody waits and the pieces since the loop's last poll took less than a
budget, else it waits in line.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Generator

import gevent
from gevent.hub import Waiter

BELOW_SOCKETS = -1  # libev runs the ready watchers by priority: sockets' are 0


def after_the_loop_turns(callback: Callable, *args) -> None:
    """Run `callback(*args)` in the hub once the loop has polled and served what was ready."""
    timer = gevent.get_hub().loop.timer(0.0, priority=BELOW_SOCKETS)

    def turned() -> None:
        timer.close()
        callback(*args)

    timer.start(turned)


def serve_ready_then_continue() -> None:
    """Wait (this greenlet) until the loop has polled and served what was ready."""
    waiter = Waiter()
    after_the_loop_turns(waiter.switch, None)
    waiter.get()


def run_in_turns(steps: Generator, slice_seconds: float = 0.001, meanwhile: Callable[[], None] | None = None):
    """Run a generator's steps to its end and return what it returns, letting the loop serve what is ready
    every `slice_seconds` (and calling `meanwhile()` then, if given). A turn, not a sleep: the work takes the
    time no one else needs, and is not stretched by pauses while nothing else waits."""
    deadline = time.monotonic() + slice_seconds
    while True:
        try:
            next(steps)
        except StopIteration as end:
            return end.value
        if time.monotonic() >= deadline:
            serve_ready_then_continue()
            if meanwhile is not None:
                meanwhile()
            deadline = time.monotonic() + slice_seconds


class Turns:
    """Greenlets that take turns with the loop: one goes on per turn, in the order they asked (`take`)."""

    def __init__(self):
        self._line: deque[Waiter] = deque()
        self._turning = False  # a turn is on its way for the first in line

    def __len__(self) -> int:
        return len(self._line)

    def take(self) -> None:
        """Wait (this greenlet) until the loop has served what was ready and those ahead in line had their turn."""
        waiter = Waiter()
        self._line.append(waiter)
        if not self._turning:
            self._turning = True
            after_the_loop_turns(self._next)
        try:
            waiter.get()
        except BaseException:  # killed in line (its server stopped): out of the line
            if waiter in self._line:
                self._line.remove(waiter)
            raise

    def _next(self) -> None:
        if not self._line:  # the only one in line was killed
            self._turning = False
            return
        waiter = self._line.popleft()
        if self._line:
            after_the_loop_turns(self._next)  # counts down from the next poll: after this one's work
        else:
            self._turning = False
        gevent.get_hub().loop.run_callback(waiter.switch, None)


class WorkLine:
    """Pieces of work of many connections, taking turns with the loop past `budget` seconds of them between two
    of its polls: a piece runs at once while nobody waits in line and those since the last poll took less,
    else it waits in line (Turns), one per turn of the loop. Call `wait_for_turn()` before a piece and
    `spent(seconds)` after it."""

    def __init__(self, budget: float = 0.001):
        self.budget = budget
        self.turns = Turns()
        self.iteration = -1  # the loop's iteration in which `work` was spent
        self.work = 0.0  # seconds of pieces since that iteration's poll

    def wait_for_turn(self) -> None:
        if len(self.turns) or (gevent.get_hub().loop.iteration == self.iteration and self.work >= self.budget):
            self.turns.take()

    def spent(self, seconds: float) -> None:
        """A piece took `seconds` (wall time: one that waited meanwhile counts it all)."""
        iteration = gevent.get_hub().loop.iteration
        if iteration != self.iteration:
            self.iteration, self.work = iteration, 0.0
        self.work += seconds
