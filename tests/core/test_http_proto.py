"""Connection caps and the HTTPS redirect, decided without sockets (fake clock)."""

import pytest

from greenservers.proto.http import (
    OVER_MAX_CONN,
    OVER_MAX_CONN_RATE,
    REQUESTS_PER_SECOND,
    ChallengePeeks,
    ConnectionGate,
    redirect_target,
    split_host,
)


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def gate(max_conn=1000, rate=100):
    clock = Clock()
    limits = {"max_conn": max_conn, "rate": rate}
    return ConnectionGate(lambda: (limits["max_conn"], limits["rate"]), clock), clock, limits


def test_open_connections_are_capped_and_released():
    g, clock, _ = gate(max_conn=20)
    connections = [object() for _ in range(22)]
    assert [g.admit("192.0.2.1", c) for c in connections[:20]] == [None] * 20
    assert g.admit("192.0.2.1", connections[20]) == OVER_MAX_CONN
    assert g.make_room("192.0.2.1") is None  # one client alone meets exactly the cap
    g.release(connections[3])
    g.release(connections[3])  # twice: once counted
    assert g.admit("192.0.2.1", connections[21]) is None and g.open == 20


def test_rate_allows_a_one_second_burst_then_the_rate():
    g, clock, _ = gate(rate=10)
    results = []
    for _ in range(100):
        connection = object()
        results.append(g.admit("192.0.2.1", connection))
        g.release(connection)
    assert results.count(None) == 10 and results.count(OVER_MAX_CONN_RATE) == 90
    admitted = 0
    for _ in range(300):  # 3 seconds, a try every 10 ms
        clock.now += 0.01
        connection = object()
        if g.admit("192.0.2.1", connection) is None:
            admitted += 1
            g.release(connection)
    assert 29 <= admitted <= 31  # one client alone meets exactly the rate


def test_limits_are_read_at_each_admission():
    g, clock, limits = gate(max_conn=1)
    assert g.admit("192.0.2.1", 1) is None and g.admit("192.0.2.1", 2) == OVER_MAX_CONN
    limits["max_conn"] = 2
    assert g.admit("192.0.2.1", 2) is None


def test_a_client_flooding_the_rate_leaves_a_spare_share_to_the_others():
    g, clock, _ = gate(rate=100)
    flood = newcomers = 0
    for step in range(25):  # 5 seconds: the flood tries every millisecond, two other clients in turn every 200 ms
        for _ in range(200):
            clock.now += 0.001
            flood += g.admit("192.0.2.66", object()) is None
        newcomers += g.admit(f"198.51.100.{step % 2}", object()) is None
    assert newcomers == 25  # every one of the others' connections, while...
    assert 100 * 5 <= flood <= 100 * 6  # ...the flood gets the rate (and the first second's burst), never the spare
    assert g.admit("198.51.100.7", object()) is None  # a client new to the gate too


def test_the_spare_share_is_only_for_clients_admitted_rarely_lately():
    g, clock, _ = gate(rate=20)  # spare: 2 a second
    for n in range(20):
        assert g.admit("192.0.2.66", n) is None
    assert g.admit("192.0.2.66", "x") == OVER_MAX_CONN_RATE
    assert [g.admit("198.51.100.1", n) for n in range(100, 103)] == [None, None, OVER_MAX_CONN_RATE]  # 2 a second at most
    clock.now += 2.5  # time has moved on: all are newcomers again, and the bucket is full
    assert g.admit("198.51.100.1", "y") is None


def test_a_client_holding_most_slots_gives_up_an_idle_one_to_another_client():
    g, clock, _ = gate(max_conn=10)
    hog = [object() for _ in range(8)]
    for connection in hog:
        assert g.admit("192.0.2.66", connection) is None
    for connection in hog[:5]:
        g.serving(connection)  # these have a request: never closed to make room
    other = [object() for _ in range(4)]
    assert g.admit("198.51.100.1", other[0]) is None and g.admit("198.51.100.1", other[1]) is None
    assert g.admit("198.51.100.2", other[2]) == OVER_MAX_CONN
    assert g.make_room("192.0.2.66") is None  # the hog itself gets nothing from itself
    assert g.make_room("198.51.100.2") is hog[5]  # the oldest idle one of the client holding most
    assert g.open == 9 and g.admit("198.51.100.2", other[2]) is None
    g.release(hog[5])  # the shell closes it later: not counted twice
    assert g.open == 10
    g.waiting(hog[0])  # its response is done: it waits for the next request, now the newest idle one
    given = []
    for n in range(4):
        given.append(g.make_room("198.51.100.3"))
        g.admit("198.51.100.3", n)
    # each time the hog holds two more than the newcomer's client, until 4 against 3 (then: 5 serving or gone);
    # its oldest idle one first (hog[0] waits again)
    assert given == [hog[0], hog[6], hog[7], None]
    assert g.open == 10


def test_a_newcomer_over_the_rate_gets_no_room_and_an_ipv6_lan_s_phones_are_not_given_up():
    """A review: a newcomer the rate would turn away closed someone's connection first; and holdings keyed by
    /64 made a LAN's phones, one connection each, one client holding them all."""
    g, clock, _ = gate(max_conn=6, rate=10**6)
    for n in range(4):
        assert g.admit("2001:db8:1::/64", ("phone", n), f"2001:db8:1::{n + 1}") is None
    for n in range(2):
        assert g.admit("192.0.2.66", ("hog", n)) is None
    assert g.make_room("198.51.100.1", "198.51.100.1") == ("hog", 0)  # the address holding the most: never a phone
    assert g.admit("198.51.100.1", "newcomer") is None
    assert g.make_room("198.51.100.2", "198.51.100.2") is None  # one each now
    slow, _, _ = gate(max_conn=1, rate=1)
    assert slow.admit("192.0.2.66", "a") is None  # full, and the bucket of one token spent
    assert slow.make_room("198.51.100.1") is None  # the rate would refuse it: nothing closed for it
    assert slow.open == 1


def test_three_clients_holding_a_third_each_give_a_slot_to_a_fourth():
    """Only a client holding more than half gave one up: three addresses shut the admin out."""
    g, clock, _ = gate(max_conn=9)
    for n in range(9):
        assert g.admit(f"192.0.2.{n % 3}", n) is None
    assert g.make_room("192.0.2.0") is None  # 3 against 3 each: nothing to gain
    victim = g.make_room("198.51.100.7")
    assert victim == 0  # the oldest idle connection of one of those holding the most
    assert g.admit("198.51.100.7", "admin") is None


def test_bookkeeping_is_bounded_by_what_is_open_and_the_rate():
    g, clock, _ = gate(max_conn=50, rate=1000)
    for n in range(100_000):
        clock.now += 0.0005
        connection = (n,)
        if g.admit(f"10.{n % 250}.{n % 199}.{n % 7}", connection) is None:
            g.release(connection)
    assert g.open == 0 and not g._address_of and not g._waiting and len(g._holdings) == 0
    assert len(g.lately) <= 2 * (1000 + 100) * 2


def test_each_connection_is_paced_a_second_s_worth_at_once_then_the_rate():
    g, clock, _ = gate()
    piped, other = object(), object()
    assert g.admit("192.0.2.1", piped) is None and g.admit("192.0.2.1", other) is None
    answered = [g.serving(piped) for _ in range(3 * REQUESTS_PER_SECOND)]  # pipelined: all at once
    assert answered.count(True) == REQUESTS_PER_SECOND and answered[REQUESTS_PER_SECOND:] == [False] * (2 * REQUESTS_PER_SECOND)
    assert g.serving(other)  # another connection of the same client has its own pace
    g.release(piped)
    g.admit("192.0.2.1", piped)  # closed and opened again: a new connection, a full bucket
    clock.now += 10.0
    allowed = 0
    for _ in range(3 * REQUESTS_PER_SECOND):  # three seconds at the pace itself
        clock.now += 1.0 / REQUESTS_PER_SECOND
        allowed += g.serving(other)
    assert allowed == 3 * REQUESTS_PER_SECOND  # never refused
    for connection in (piped, other):
        g.release(connection)
    assert len(g.pace) == 0  # nothing kept of a closed connection


def test_challenge_peeks_are_capped_per_client_and_the_oldest_silent_one_makes_room():
    peeks = ChallengePeeks(total=4, per_client=2)
    assert peeks.admit("203.0.113.9", "a1") == (True, None)
    assert peeks.admit("203.0.113.9", "a2") == (True, None)
    assert peeks.admit("203.0.113.9", "a3") == (False, None)  # the client's share is taken
    assert peeks.admit("198.51.100.1", "b1") == (True, None)
    peeks.heard("b1")  # it sent its request: it keeps its place
    assert peeks.admit("198.51.100.2", "c1") == (True, None)
    assert peeks.admit("192.0.2.7", "validator") == (True, "a1")  # full: the oldest silent one gives its place up
    assert peeks.admit("203.0.113.9", "a3") == (True, "a2")  # a1 gone, its client may have another
    peeks.heard("validator")
    peeks.heard("a3")
    peeks.heard("c1")
    assert peeks.admit("192.0.2.8", "late") == (False, None)  # full, and nobody silent: the newcomer is refused
    for connection in ("a1", "a2", "a3", "b1", "c1", "validator", "validator"):
        peeks.done(connection)  # what was given up, and twice: nothing happens
    assert len(peeks) == 0 and not peeks._held and not peeks._silent


@pytest.mark.parametrize(
    "method, path, query, host, port, status, location",
    [
        ("GET", "/settings/ports", "", "pbx.example.com", 443, "301", "https://pbx.example.com/settings/ports"),
        ("HEAD", "/", "", "pbx.example.com:8080", 8443, "301", "https://pbx.example.com:8443/"),
        ("POST", "/api/x", "a=1&b=2", "10.0.0.5:80", 443, "308", "https://10.0.0.5/api/x?a=1&b=2"),
        ("PUT", "/a b", "", "[2001:db8::5]:8080", 8443, "308", "https://[2001:db8::5]:8443/a%20b"),
        ("GET", "/x", "", None, 443, "301", "https://192.0.2.1/x"),
        ("GET", "/x", "", "evil.com/\r\nX: y", 443, "301", "https://192.0.2.1/x"),
        ("GET", "/x", "", "a@b.com", 443, "301", "https://192.0.2.1/x"),
    ],
)
def test_redirect_target(method, path, query, host, port, status, location):
    target = redirect_target(method, path, query, host, "192.0.2.1", port)
    assert target.status.startswith(status) and target.location == location


@pytest.mark.parametrize("path", ["/.well-known/acme-challenge/token", "/prov/y000000000025.cfg", "/healthz"])
def test_exempt_paths_are_not_redirected(path):
    assert redirect_target("GET", path, "", "pbx", "192.0.2.1", 443) is None


def test_split_host():
    assert split_host("[::1]:8080") == "[::1]" and split_host("[::1") is None and split_host("h:xx") is None



@pytest.mark.parametrize("seed", range(20))
def test_the_client_holding_the_most_gives_a_slot_when_it_holds_two_more(seed):
    """Against a search of every client, through random admissions and releases."""
    import random
    rng = random.Random(seed)
    g, clock, _ = gate(max_conn=12, rate=10**6)
    open_now: list = []
    for step in range(3000):
        clock.now += 0.001
        if open_now and rng.random() < 0.45:
            g.release(open_now.pop(rng.randrange(len(open_now))))
            continue
        source = f"192.0.2.{rng.choice([1, 1, 1, 2, 2, 3, 4])}"
        connection = (source, step)
        if g.admit(source, connection) is None:
            open_now.append(connection)
            continue
        counts = {s: sum(1 for c in open_now if c[0] == s) for s in {c[0] for c in open_now}}
        enough = [s for s, n in counts.items() if n >= counts.get(source, 0) + 2]
        victim = g.make_room(source)
        assert (victim is not None) == bool(enough), (step, counts, source)
        if victim is not None:
            assert counts[victim[0]] == max(counts.values())
            assert victim == min((c for c in open_now if c[0] == victim[0]), key=lambda c: c[1])  # its oldest
            open_now.remove(victim)
            assert g.admit(source, connection) is None
            open_now.append(connection)


def test_redirect_to_port_443_leaves_the_port_out():
    assert redirect_target("GET", "/", "", "pbx:80", "10.0.0.1", 443).location == "https://pbx/"
