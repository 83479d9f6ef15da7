"""Binding-list parser: every form the README's "Port bindings" table documents and every kind of bad token."""

import socket

import pytest

from greenservers.config.portspec import Binding, PortSpecError, format_bindings, parse_bindings

V4, V6 = socket.AF_INET, socket.AF_INET6


@pytest.mark.parametrize(
    "text, expected",
    [
        ("5060", [Binding(V6, "::", 5060, False)]),
        ("0.0.0.0:5060", [Binding(V4, "0.0.0.0", 5060, False)]),
        ("[::]:5060", [Binding(V6, "::", 5060, True)]),
        ("192.168.1.2:5060", [Binding(V4, "192.168.1.2", 5060, False)]),
        ("[2001:db8::4]:5060", [Binding(V6, "2001:db8::4", 5060, True)]),
        ("[2001:DB8:0::4]:1", [Binding(V6, "2001:db8::4", 1, True)]),
        ("0.0.0.0:5060 [::]:5060", [Binding(V4, "0.0.0.0", 5060, False), Binding(V6, "::", 5060, True)]),
        ("  80\t443\n", [Binding(V6, "::", 80, False), Binding(V6, "::", 443, False)]),
        ("127.0.0.1:8080 127.0.0.2:8080 [::1]:8080",
         [Binding(V4, "127.0.0.1", 8080, False), Binding(V4, "127.0.0.2", 8080, False), Binding(V6, "::1", 8080, True)]),
        ("65535", [Binding(V6, "::", 65535, False)]),
        ("", []),
        ("   ", []),
    ],
)
def test_forms(text, expected):
    assert list(parse_bindings(text)) == expected


def test_round_trip_is_canonical():
    text = "80 0.0.0.0:81 [::]:81 10.0.0.1:82 [2001:db8::4]:83"
    assert format_bindings(parse_bindings(text)) == text


@pytest.mark.parametrize(
    "text, bad, why",
    [
        ("80 0", "'0'", "1 to 65535"),
        ("65536", "'65536'", "1 to 65535"),
        ("-1", "'-1'", "1 to 65535"),
        ("80 http", "'http'", "expected"),
        ("localhost:80", "'localhost:80'", "host names"),
        ("pbx.example.com:80", "'pbx.example.com:80'", "host names"),
        ("2001:db8::4:5060", "'2001:db8::4:5060'", "brackets"),
        ("::5060", "'::5060'", "brackets"),
        ("[2001:db8::4]", "'[2001:db8::4]'", "port is missing"),
        ("[2001:db8::4]:", "'[2001:db8::4]:'", "port is missing"),
        ("[::1]:99999", "'[::1]:99999'", "1 to 65535"),
        ("[zz::1]:80", "'[zz::1]:80'", "not an IPv6"),
        ("[127.0.0.1]:80", "'[127.0.0.1]:80'", "not an IPv6"),
        ("256.1.1.1:80", "'256.1.1.1:80'", "not an IPv4"),
        ("1.2.3:80", "'1.2.3:80'", "not an IPv4"),
        ("01.2.3.4:80", "'01.2.3.4:80'", "not an IPv4"),
        ("1.2.3.4:", "'1.2.3.4:'", "port is missing"),
        ("1.2.3.4:8a", "'1.2.3.4:8a'", ""),
        ("80 80", "'80'", "overlaps"),
        ("80 0.0.0.0:80", "'0.0.0.0:80'", "overlaps"),
        ("[::]:80 80", "'80'", "overlaps"),
        ("0.0.0.0:80 1.2.3.4:80", "'1.2.3.4:80'", "overlaps"),
        ("[::1]:80 [::]:80", "'[::]:80'", "overlaps"),
        ("080000", "'080000'", "1 to 65535"),
        ("\u0661\u0662", "'\u0661\u0662'", ""),
    ],
)
def test_bad_lists_are_refused_whole_quoting_the_token(text, bad, why):
    with pytest.raises(PortSpecError) as info:
        parse_bindings(text)
    assert str(info.value).startswith(bad)
    assert why in str(info.value)


def test_non_string_is_refused():
    with pytest.raises(PortSpecError):
        parse_bindings(["80"])


def test_v4_and_v6_wildcards_on_one_port_do_not_overlap():
    a, b = parse_bindings("0.0.0.0:5060 [::]:5060")
    assert not a.covers(b) and b.v6only


def test_display_names_the_address():
    (dual,) = parse_bindings("443")
    assert dual.display == "[::]:443" and str(dual) == "443"
