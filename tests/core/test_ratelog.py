"""greenservers.ratelog: one line per kind and client (IPv4 address, IPv6 /64) per interval, at most a budget of
lines of a kind from all sources together, then one summary with the count; peers' text quoted on one line."""

from __future__ import annotations

import logging

import pytest
from support.clock import FakeClock

from greenservers.ratelog import LINES_PER_KIND, RateLimitedLog, printable


class Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def lines():
    handler = Lines()
    logger = logging.getLogger("test.ratelog")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    yield handler.lines, logger
    logger.removeHandler(handler)


class Timers:
    """`later` for the log: what it asked to run, and when."""

    def __init__(self, clock: FakeClock):
        self.clock, self.due = clock, []

    def __call__(self, delay: float, callback) -> None:
        self.due.append((self.clock.now + delay, callback))

    def run_due(self) -> None:
        ready = [c for at, c in self.due if at <= self.clock.now]
        self.due = [(at, c) for at, c in self.due if at > self.clock.now]
        for callback in ready:
            callback()


def test_one_line_per_kind_and_client_per_interval_with_the_count_held_back(lines):
    out, logger = lines
    clock = FakeClock()
    log = RateLimitedLog(logger, clock=clock, later=None)
    assert log.warning("refused", "192.0.2.1", "refused: %s", "a")
    assert not log.warning("refused", "192.0.2.1", "refused: %s", "b")
    log.suppressed("refused", "192.0.2.1", 5)
    assert log.warning("busy", "192.0.2.1", "busy")  # another kind
    assert log.warning("refused", "192.0.2.2", "refused: %s", "c")  # another client
    clock.now += 60
    assert log.warning("refused", "192.0.2.1", "refused: %s", "d")
    assert out == ["192.0.2.1: refused: a", "192.0.2.1: busy", "192.0.2.2: refused: c",
                   "192.0.2.1: refused: d (6 more since the last line)"]


def test_an_ipv6_client_is_its_64_whichever_of_its_addresses_it_uses(lines):
    out, logger = lines
    log = RateLimitedLog(logger, clock=FakeClock(), later=None)
    for host in range(1, 101):
        log.warning("withheld", f"fd00:1::{host:x}", "request dropped")
    log.warning("withheld", "fd00:2::1", "request dropped")  # another /64
    log.warning("withheld", "::ffff:192.0.2.7", "request dropped")  # an IPv4 client of a dual-stack socket
    log.warning("withheld", "192.0.2.7", "request dropped")
    assert out == ["fd00:1::1: request dropped", "fd00:2::1: request dropped", "::ffff:192.0.2.7: request dropped"]


def test_a_kind_from_thousands_of_sources_writes_its_budget_then_one_summary_when_the_interval_is_over(lines):
    out, logger = lines
    clock = FakeClock()
    timers = Timers(clock)
    log = RateLimitedLog(logger, clock=clock, later=timers)
    for n in range(3000):
        clock.now += 0.001
        log.warning("refused", f"10.{n // 250}.{n % 250}.1", "RRQ nofile refused: not found")
        log.suppressed("refused", f"10.{n // 250}.{n % 250}.1", 2)  # e.g. the datagrams a shell dropped unread
    assert log.warning("busy", "10.0.0.1", "busy")  # other kinds have budgets of their own
    assert len(out) == LINES_PER_KIND + 1
    assert len(timers.due) == 1  # one summary is due, at the end of the kind's interval
    clock.now = 1000 + 61
    timers.run_due()
    assert len(out) == LINES_PER_KIND + 2
    held = (3000 - LINES_PER_KIND) * 3  # the lines over the budget and what was suppressed for their sources
    assert out[-1] == (f"rate limit: {held} more 'refused' lines not logged "
                       f"(over {LINES_PER_KIND} of that kind within 60 s, all sources together)")
    timers.run_due()
    log.flush()
    assert len(out) == LINES_PER_KIND + 2  # once
    # the next interval has its own budget; the counts suppressed for the clients that were logged come with their next line
    assert log.warning("refused", "10.0.0.1", "RRQ nofile refused: not found")
    assert out[-1].endswith("(2 more since the last line)")


def test_without_a_timer_the_summary_comes_with_the_next_line_after_the_interval(lines):
    out, logger = lines
    clock = FakeClock()
    log = RateLimitedLog(logger, clock=clock, budget=2, later=None)
    for n in range(5):
        log.info("evicted", f"192.0.2.{n}", "slot given up")
    assert len(out) == 2
    clock.now += 61
    log.info("other", "192.0.2.99", "something else")
    assert out[2:] == ["rate limit: 3 more 'evicted' lines not logged (over 2 of that kind within 60 s, all sources together)",
                       "192.0.2.99: something else"]


def test_the_forged_line_of_an_rrq_name_stays_on_one_line():
    name = "x\n[2026-12-01 10:00:00 +0000] [1] [INFO] admin logged in from 6.6.6.6"
    shown = printable(name)
    assert "\n" not in shown and shown.startswith("x\\n[2026-12-01")
    assert printable("a\x1b[31mred\u202eevil") == "a\\x1b[31mred\\u202eevil"
    assert printable("y" * 300).endswith("...") and len(printable("y" * 300)) == 103
