"""proto.clients on a fake clock: TokenBuckets (refill, capacity, floor, refunds, bounded memory, debts kept past it),
AddressBuckets (per address, per /64 as a whole, an address cycling its /64), ClientCounts with Shares and
FailureBackoff (the failures within the window, the wait they earn, bounded memory)."""

from __future__ import annotations

from greenservers.proto.clients import (
    DEBT_SLOTS,
    AddressBuckets,
    ClientCounts,
    FailureBackoff,
    Holdings,
    Shares,
    TokenBuckets,
    address_groups,
    client_key,
)


def test_a_new_key_starts_full_and_refills_at_the_rate_up_to_the_capacity():
    buckets = TokenBuckets(rate=10.0, capacity=100)
    assert buckets.level("a", 0.0) == 100.0
    assert buckets.take("a", 150, 0.0) == -50.0  # no floor: a debt
    assert buckets.level("a", 10.0) == 50.0
    assert buckets.level("a", 1000.0) == 100.0


def test_a_floor_bounds_the_debt_and_a_refund_never_exceeds_the_capacity():
    buckets = TokenBuckets(rate=1.0, capacity=10)
    assert buckets.take("a", 100, 0.0, floor=-10) == -10.0
    buckets.give("a", 5, 0.0)
    assert buckets.level("a", 0.0) == -5.0
    buckets.give("a", 500, 0.0)
    assert buckets.level("a", 0.0) == 10.0


def test_keys_are_independent_and_the_least_recently_seen_are_forgotten():
    buckets = TokenBuckets(rate=1.0, capacity=10, max_keys=3)
    for key in "abc":
        buckets.take(key, 10, 0.0)
    buckets.level("a", 0.0)  # seen again: "b" is now the least recent
    buckets.take("d", 1, 0.0)
    assert len(buckets) == 3
    assert buckets.level("a", 0.0) == 0.0 and "b" not in buckets._entries  # "b" forgotten


def test_a_bucket_pushed_out_of_the_table_comes_back_with_its_debt_and_a_full_one_full():
    """A source seen again after the table filled with others (forged sources) is not given a full bucket; one
    that had refilled comes back full, and so does every other key, whatever slot it falls in."""
    buckets = TokenBuckets(rate=1.0, capacity=10, max_keys=3)
    buckets.take("guesser", 10, 0.0)
    buckets.take("paid-up", 10, 0.0)
    buckets.take("paid-up", -10, 0.0)  # a refund: full again
    for n in range(6):  # pushes both out, and each other in debt
        buckets.take(f"forged-{n}", 1, 1.0)
    assert "guesser" not in buckets._entries and "paid-up" not in buckets._entries
    assert buckets.level("guesser", 4.0) == 4.0  # owed 9 at 1.0, four seconds of refill since
    assert buckets.level("paid-up", 4.0) == 10.0
    assert all(buckets.level(f"new-{n}", 4.0) == 10.0 for n in range(3 * DEBT_SLOTS))  # slots shared: no debt of another's
    buckets.take("guesser", 1, 4.0)
    for n in range(3):
        buckets.take(f"forged-{n}", 1, 4.0)
    assert buckets.level("guesser", 10.0) == 9.0  # pushed out again: the debt it had then, refilled meanwhile
    assert buckets.level("forged-5", 100.0) == 10.0  # repaid in time


def test_a_changed_rate_and_capacity_apply_from_the_next_refill():
    buckets = TokenBuckets(rate=1.0, capacity=10)
    buckets.take("a", 10, 0.0)
    buckets.rate, buckets.capacity = 100.0, 1000
    assert buckets.level("a", 5.0) == 500.0


def test_failures_within_the_window_earn_a_wait_until_the_oldest_of_them_is_past():
    backoff = FailureBackoff(limit=3, window=60.0)
    assert [backoff.failed("a", t) for t in (0.0, 10.0, 20.0)] == [1, 2, 3]
    assert backoff.retry_after("a", 30.0) == 30.0 and backoff.retry_after("b", 30.0) == 0.0
    assert backoff.retry_after("a", 60.0) == 0.0  # the first failure is out of the window: two are left
    assert backoff.failures("a", 60.0) == 2 and backoff.failed("a", 61.0) == 3
    assert backoff.failed("a", 62.0) == 3  # at most `limit` are kept: the wait is that of the last three
    assert backoff.retry_after("a", 62.0) == 20.0 + 60.0 - 62.0  # until the oldest kept (20 s) is past


def test_a_success_forgets_the_failures_and_quiet_keys_are_not_kept():
    backoff = FailureBackoff(limit=2, window=10.0)
    backoff.failed("a", 0.0)
    backoff.failed("a", 1.0)
    backoff.succeeded("a")
    assert backoff.retry_after("a", 1.0) == 0.0 and len(backoff) == 0
    backoff.failed("b", 0.0)
    assert backoff.failures("b", 100.0) == 0 and len(backoff) == 0


def test_failure_records_are_bounded_the_least_recent_forgotten():
    backoff = FailureBackoff(limit=2, window=10.0, max_keys=3)
    for key in "abcd":
        backoff.failed(key, 0.0)
        backoff.failed(key, 0.0)
    assert len(backoff) == 3 and backoff.retry_after("a", 0.0) == 0.0 and backoff.retry_after("d", 0.0) == 10.0


def test_a_client_is_an_ipv4_address_or_an_ipv6_64():
    assert client_key("2001:db8:1:2::1") == client_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert client_key("fe80::1%eth0") == client_key("fe80::2")
    assert client_key("192.0.2.1") != client_key("192.0.2.2")


def test_a_per_address_limit_counts_an_ipv6_address_under_its_64_too():
    assert address_groups("192.0.2.1") == ("192.0.2.1",)
    assert address_groups("::ffff:192.0.2.1") == ("192.0.2.1",)  # an IPv4 client of a dual-stack socket
    assert address_groups("2001:db8:1:2::1") == ("2001:db8:1:2::1", "2001:db8:1:2::/64")
    shares = Shares(per_address=4, per_prefix=24)
    assert shares.of("2001:db8:1:2::1") == [("2001:db8:1:2::1", 4), ("2001:db8:1:2::/64", 24)]
    assert shares.of("192.0.2.1") == [("192.0.2.1", 4)]


def test_counts_admit_per_address_within_the_64s_share_and_the_total():
    counts, shares = ClientCounts(), Shares(per_address=2, per_prefix=5)
    phones = [f"2001:db8::{n}" for n in range(1, 5)]
    held = [counts.admit(shares.of(phone), total=8) for phone in phones for _ in range(3)]
    assert [bool(h) for h in held] == [True, True, False, True, True, False, True, False, False, False, False, False]
    assert counts.of("2001:db8::/64") == 5 and counts.of("2001:db8::1") == 2 and counts.total == 5
    assert counts.admit(shares.of("2001:db8:0:1::1"), total=8) and counts.admit(shares.of("192.0.2.1"), total=8)
    counts.add(held[0], -1)  # one ends: a place of its address and of its /64 again
    assert counts.of("2001:db8::1") == 1 and counts.of("2001:db8::/64") == 4 and counts.total == 6
    assert counts.admit(shares.of("2001:db8::4"), total=8)
    assert counts.admit(shares.of("192.0.2.2"), total=8) and counts.admit(shares.of("192.0.2.3"), total=8) is None
    assert counts.full(shares.of("2001:db8::1")) == "2001:db8::/64" and counts.full(shares.of("2001:db8:0:1::1")) is None
    assert counts.full(shares.of("2001:db8::4")) == "2001:db8::/64"


def lan_buckets(max_keys: int = 4096) -> AddressBuckets:
    return AddressBuckets(rate=Shares(1.0, 4.0), capacity=Shares(10, 40), max_keys=max_keys)


def test_address_buckets_give_each_address_its_own_and_a_64_as_a_whole_its_larger_share():
    buckets, now = lan_buckets(), 0.0
    assert [buckets.take("192.0.2.1", 5, now) for _ in range(3)] == [None, None, (buckets.addresses, "192.0.2.1")]
    assert buckets.take("::ffff:192.0.2.1", 1, now) == (buckets.addresses, "192.0.2.1")  # the same client
    assert buckets.take("192.0.2.2", 10, now) is None  # another address: its own bucket
    phones = [f"2001:db8:1:2::{n}" for n in range(1, 6)]
    granted = [buckets.take(phone, 10, now) is None for phone in phones]
    assert granted == [True, True, True, True, False]  # four phones of a /64 take their 10 each: the /64's 40
    assert buckets.take("2001:db8:1:2::5", 1, now) == (buckets.prefixes, "2001:db8:1:2::/64")
    assert buckets.take("2001:db8:1:3::1", 10, now) is None  # the next /64 is not held back
    assert buckets.take("2001:db8:1:2::5", 4, now + 1.0) is None  # a second later: the /64 refilled 4


def test_an_address_spending_its_own_bucket_leaves_its_64_and_a_refusal_costs_nothing_unless_it_pays():
    buckets, now = lan_buckets(), 0.0
    assert buckets.take("2001:db8::66", 10, now) is None
    for _ in range(100):
        assert buckets.take("2001:db8::66", 1, now) == (buckets.addresses, "2001:db8::66")
    assert buckets.prefixes.level("2001:db8::/64", now) == 30  # only what was granted
    assert buckets.addresses.level("2001:db8::66", now) == 0
    for _ in range(100):
        buckets.take("2001:db8::66", 1, now, refused_pays=True)
    assert buckets.addresses.level("2001:db8::66", now) == -10  # in debt down to minus its capacity
    assert buckets.prefixes.level("2001:db8::/64", now) == 30
    assert buckets.take("2001:db8::66", 1, now + 20.0) is None  # 20 s at 1 a second: out of debt again


def test_a_device_cycling_the_addresses_of_its_64_meets_its_share_and_does_not_fill_the_table():
    buckets, now = lan_buckets(max_keys=100), 0.0
    for n in range(50):
        assert buckets.take(f"192.0.2.{n}", 1, now) is None  # others, remembered
    outcomes = [buckets.take(f"2001:db8:6:4::{n:x}", 1, now) for n in range(10_000)]
    assert outcomes[:40] == [None] * 40
    assert set(outcomes[40:]) == {(buckets.prefixes, "2001:db8:6:4::/64")}
    assert len(buckets.addresses) == 90  # 40 of its addresses were looked up, then none: nobody was forgotten
    assert buckets.addresses.level("192.0.2.0", now) == 9
    for n in range(1000):  # paying for its refusals too: still no address looked up
        buckets.take(f"2001:db8:6:4::1:{n:x}", 1, now, refused_pays=True)
    assert len(buckets.addresses) == 90 and buckets.prefixes.level("2001:db8:6:4::/64", now) == -40


def test_address_buckets_may_be_resized_and_keep_their_levels_within_the_new_capacity():
    buckets, now = lan_buckets(), 0.0
    buckets.take("2001:db8::1", 6, now)
    buckets.resize(rate=Shares(2.0, 8.0), capacity=Shares(5, 20))
    assert buckets.addresses.level("2001:db8::1", now + 1.0) == 5  # 4 + 2, capped at 5
    assert buckets.prefixes.level("2001:db8::/64", now + 1.0) == 20  # 34 + 8, capped at 20


def test_holdings_ask_a_bounded_number_of_connections_whatever_is_held():
    """A review: walking every count from the most held down cost 10-15 ms at 100,000 connections, on every
    refusal. Only the counts held are visited, and at most `look_at` connections are asked."""
    holdings = Holdings(look_at=64)
    for n in range(50_000):
        holdings.add("10.0.0.1", ("hog", n))
    for n in range(2_000):
        holdings.add(f"10.1.{n // 250}.{n % 250}", ("phone", n))
    asked = []
    assert holdings.crowded_out("192.0.2.1", lambda c: asked.append(c) or False) is None  # all busy
    assert len(asked) == 64
    assert holdings.crowded_out("192.0.2.1", lambda c: c == ("hog", 3)) == ("hog", 3)
    for n in range(50_000):
        holdings.remove("10.0.0.1", ("hog", n))
    holdings.remove("10.0.0.1", ("hog", 0))  # again: nothing happens
    assert holdings.count("10.0.0.1") == 0 and len(holdings) == 2_000
    assert holdings.crowded_out("192.0.2.1", lambda c: True) is None  # one each: nobody holds two more
