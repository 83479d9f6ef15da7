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
client's request). Two forms of the same turn:

- `serve_ready_then_continue()`: the calling greenlet waits for the turn;
- `after_the_loop_turns(callback, *args)`: `callback(*args)` runs in the hub
  after the turn (for code that hands work on instead of waiting itself).
"""

from __future__ import annotations

from collections.abc import Callable

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
