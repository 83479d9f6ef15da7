"""shells.source_filter: the kernel's socket filter admits exactly what proto.snmp.address_in admits.

On real loopback sockets (IPv4, and dual-stack with IPv4 and IPv6 sources;
the kernel runs the program), and, for the sources loopback cannot send
from (IPv6 beyond ::1, IPv6 packets with a v4-mapped source), through an
interpreter of the few classic BPF instructions the compiler emits, against
address_in on random networks and sources (hypothesis).
"""

from __future__ import annotations

import ipaddress
import socket
import struct

import pytest
from hypothesis import given, settings, strategies as st

from greenservers.proto.snmp import address_in
from greenservers.shells import source_filter as sf

# -- an interpreter of what the compiler emits -----------------------------------------------


def admitted(filter_program: bytes, header: bytes) -> bool:
    """Run `filter_program` on a datagram whose IP header is `header`: kept (True) or dropped."""
    code = [sf._INSTRUCTION.unpack_from(filter_program, at) for at in range(0, len(filter_program), sf._INSTRUCTION.size)]
    a = x = pc = 0
    for _ in range(len(code)):  # no loops in classic BPF: each instruction runs once at most
        op, jt, jf, k = code[pc]
        pc += 1
        if op in (sf.LD_W, sf.LD_B):
            offset = (k - ((-sf.NET) & 0xFFFFFFFF)) & 0xFFFFFFFF
            size = 4 if op == sf.LD_W else 1
            a = int.from_bytes(header[offset:offset + size], "big")
        elif op == sf.ALU_AND:
            a &= k
        elif op == sf.ALU_RSH:
            a >>= k
        elif op == sf.JEQ:
            pc += jt if a == k else jf
        elif op == sf.JA:
            pc += k
        elif op == sf.TAX:
            x = a
        elif op == sf.TXA:
            a = x
        elif op == sf.RET:
            return k != 0
        else:
            raise AssertionError(f"an instruction the interpreter does not know: {op:#x}")
    raise AssertionError("the program ran off its end")


def header_from(source: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    if source.version == 4:
        return bytes([0x45]) + bytes(11) + source.packed + bytes(4)
    return bytes([0x60]) + bytes(7) + source.packed + bytes(16)


def seen_as(source, family: int) -> str:
    """How recvfrom shows the source to the shell (an IPv4 client of a dual-stack socket is ::ffff:a.b.c.d)."""
    if family == socket.AF_INET6 and source.version == 4:
        return f"::ffff:{source}"
    return socket.inet_ntop(socket.AF_INET6, source.packed) if source.version == 6 else str(source)


NEAR_V4 = st.sampled_from(["127.0.0.0", "127.0.0.1", "127.0.0.2", "10.1.2.3", "192.0.2.255", "0.0.0.0"])
IPV4 = st.one_of(NEAR_V4, st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n))))
IPV6 = st.one_of(st.sampled_from(["::1", "::", "2001:db8::1", "fe80::1"]),
                 IPV4.map(lambda a: f"::ffff:{a}"), IPV4.map(lambda a: f"::{a}"),
                 st.integers(0, 2**128 - 1).map(lambda n: str(ipaddress.IPv6Address(n))))
NETWORKS = st.lists(st.one_of(
    st.tuples(IPV4, st.integers(0, 32)).map(lambda t: ipaddress.ip_network(f"{t[0]}/{t[1]}", strict=False)),
    st.tuples(IPV6, st.integers(0, 128)).map(lambda t: ipaddress.ip_network(f"{t[0]}/{t[1]}", strict=False)),
), max_size=5).map(tuple)


@settings(max_examples=400, deadline=None)
@given(networks=NETWORKS, sources=st.lists(st.one_of(IPV4, IPV6), min_size=1, max_size=6),
       family=st.sampled_from([socket.AF_INET, socket.AF_INET6]))
def test_the_program_admits_what_address_in_admits(networks, sources, family):
    compiled = sf.program(networks, family)
    for text in sources:
        source = ipaddress.ip_address(text)
        if family == socket.AF_INET and source.version == 6:
            continue  # an IPv4 socket gets no IPv6 datagram
        assert admitted(compiled, header_from(source)) == address_in(seen_as(source, family), networks), (text, networks)


def test_the_interpreter_tells_a_broken_program_from_a_right_one():
    """The interpreter can fail: a program with its IPv4 comparison's value changed admits the wrong source."""
    networks = (ipaddress.ip_network("10.0.0.0/8"),)
    right = sf.program(networks, socket.AF_INET)
    code = bytearray(right)
    jeq = next(at for at in range(0, len(code), 8) if struct.unpack_from("=H", code, at)[0] == sf.JEQ)
    struct.pack_into("=I", code, jeq + 4, int(ipaddress.ip_address("11.0.0.0")))
    source = header_from(ipaddress.ip_address("10.9.9.9"))
    assert admitted(right, source) and not admitted(bytes(code), source)


def test_a_list_too_long_for_the_kernel_is_no_program():
    many = tuple(ipaddress.ip_network(f"2001:db8::{i:x}/128") for i in range(400))  # 13 instructions each
    assert sf.program(many, socket.AF_INET6) is None
    assert sf.program(many[:100], socket.AF_INET6) is not None


# -- the kernel runs it ------------------------------------------------------------------------------

V4_LISTS = ["", "127.0.0.1", "127.0.0.2/31", "0.0.0.0/0", "10.0.0.0/8 127.0.0.3", "::1", "::ffff:127.0.0.0/104", "::/0"]
V6_LISTS = V4_LISTS + ["::ffff:127.0.0.2", "::1 127.0.0.1", "2001:db8::/32"]


def networks_of(text: str) -> tuple:
    return tuple(ipaddress.ip_network(token, strict=False) for token in text.split())


def received_from(family: int, networks: tuple, sources: list[str]) -> tuple[dict[str, bool], int]:
    """Which sources' datagrams a socket with the filter on received, and its drop counter."""
    with socket.socket(family, socket.SOCK_DGRAM) as listener:
        if family == socket.AF_INET6:
            listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        listener.bind(("::" if family == socket.AF_INET6 else "127.0.0.1", 0))
        sf.attach(listener, sf.program(networks, family))
        port = listener.getsockname()[1]
        got = {}
        for source in sources:
            source_family = socket.AF_INET6 if ":" in source else socket.AF_INET
            with socket.socket(source_family, socket.SOCK_DGRAM) as sender:
                sender.bind((source, 0))
                sender.sendto(source.encode(), ("::1" if source_family == socket.AF_INET6 else "127.0.0.1", port))
            got[source] = False
        listener.setblocking(False)
        while True:  # loopback delivers at send time: whatever was admitted is queued already
            try:
                got[listener.recv(100).decode()] = True
            except BlockingIOError:
                break
        return got, sf.drops(listener)


@pytest.mark.parametrize(("family", "text"), [(socket.AF_INET, text) for text in V4_LISTS]
                         + [(socket.AF_INET6, text) for text in V6_LISTS])
def test_the_kernel_admits_what_address_in_admits(family, text):
    networks = networks_of(text)
    sources = ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.1.2.3"] + (["::1"] if family == socket.AF_INET6 else [])
    got, dropped = received_from(family, networks, sources)
    expected = {source: address_in(seen_as(ipaddress.ip_address(source), family), networks) for source in sources}
    assert got == expected
    assert dropped == sum(not admitted for admitted in expected.values())


def test_a_shed_engages_past_a_flood_and_not_for_a_list_the_kernel_cannot_take():
    many = tuple(ipaddress.ip_network(f"2001:db8::{i:x}/128") for i in range(400))
    few = networks_of("127.0.0.1 ::1")
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
        sock.bind(("::1", 0))
        shed = sf.KernelShed(sock, socket.AF_INET6)
        assert not shed.dropped(sf.FLOOD_DATAGRAMS, 0.0, few)  # at the threshold: no flood yet
        assert not shed.dropped(1, 1.0, few)  # a new second
        assert not shed.dropped(sf.FLOOD_DATAGRAMS + 1, 2.0, many) and not shed.attached
        assert shed.refused == many  # user space keeps dropping; the compiler is not asked again
        assert "too many networks" in shed.failure
        assert shed.dropped(sf.FLOOD_DATAGRAMS + 1, 3.0, few) and shed.attached
        assert shed.tick(3.5, few) == 0 and shed.attached
        assert shed.tick(3.0 + sf.SHED_SECONDS, few) == 0 and not shed.attached


def test_a_filter_the_kernel_refuses_is_asked_for_again_a_minute_later():
    few = networks_of("127.0.0.1")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    shed = sf.KernelShed(sock, socket.AF_INET)
    sock.close()  # every socket option now fails, as on a kernel that refuses them
    assert not shed.dropped(sf.FLOOD_DATAGRAMS + 1, 0.0, few) and "the kernel refused the filter" in shed.failure
    shed.failure = None
    assert not shed.dropped(sf.FLOOD_DATAGRAMS + 1, 59.0, few) and shed.failure is None  # not asked again yet
    assert not shed.dropped(sf.FLOOD_DATAGRAMS + 1, 60.0, few) and shed.failure is not None
