"""proto.peers.TokenBuckets on a fake clock: refill, capacity, floor, refunds, bounded memory."""

from __future__ import annotations

from greenservers.proto.clients import TokenBuckets


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
    assert buckets.level("a", 0.0) == 0.0 and buckets.level("b", 0.0) == 10.0  # forgotten: full again


def test_a_changed_rate_and_capacity_apply_from_the_next_refill():
    buckets = TokenBuckets(rate=1.0, capacity=10)
    buckets.take("a", 10, 0.0)
    buckets.rate, buckets.capacity = 100.0, 1000
    assert buckets.level("a", 5.0) == 500.0
