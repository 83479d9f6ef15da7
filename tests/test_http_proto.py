"""Connection caps and the HTTPS redirect, decided without sockets (fake clock)."""

import pytest

from greenservers.proto.http import OVER_MAX_CONN, OVER_MAX_CONN_RATE, ConnectionGate, redirect_target, split_host


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
    assert [g.admit() for _ in range(20)] == [None] * 20
    assert g.admit() == OVER_MAX_CONN
    g.release()
    assert g.admit() is None and g.open == 20


def test_rate_allows_a_one_second_burst_then_the_rate():
    g, clock, _ = gate(rate=10)
    results = []
    for _ in range(100):
        results.append(g.admit())
        g.release()
    assert results.count(None) == 10 and results.count(OVER_MAX_CONN_RATE) == 90
    admitted = 0
    for _ in range(300):  # 3 seconds, a try every 10 ms
        clock.now += 0.01
        if g.admit() is None:
            admitted += 1
            g.release()
    assert 29 <= admitted <= 31


def test_limits_are_read_at_each_admission():
    g, clock, limits = gate(max_conn=1)
    assert g.admit() is None and g.admit() == OVER_MAX_CONN
    limits["max_conn"] = 2
    assert g.admit() is None


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
