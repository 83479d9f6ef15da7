"""The SNMP shell on a real loopback socket (port 0), in-process under gevent: the error tiers and the read loop."""

from __future__ import annotations

import contextlib
import logging
import socket

import gevent
import gevent.socket
import pytest
from support.snmp import FIXED_SENSORS, bad_inputs
from support.wait import eventually
from vectors.snmp_requests import REQUESTS

from greenservers.config.portspec import Binding
from greenservers.config.settings import Settings
from greenservers.process.binder import Bound, open_socket
from greenservers.sensors import SensorRegistry
from greenservers.shells import source_filter
from greenservers.shells.snmp import SnmpService

GET = bytes.fromhex(REQUESTS["get_sysdescr"])


class FakeRuntime:
    def __init__(self):
        self.settings = Settings.from_raw({"snmp_trusted": "127.0.0.1"})
        self.sensors = SensorRegistry(FIXED_SENSORS)


@pytest.fixture
def served():
    """(service, server, port) of an agent on a loopback socket trusting 127.0.0.1."""
    runtime = FakeRuntime()
    service = SnmpService(runtime)
    bound = Bound("ip_snmp_port", "udp", Binding(socket.AF_INET, "127.0.0.1", 0, False),
                  open_socket(Binding(socket.AF_INET, "127.0.0.1", 0, False), "udp"))
    server = service.make_server(bound)
    server.start()
    yield service, server, bound.sock.getsockname()[1]
    server.stop(timeout=1)
    bound.close()


@pytest.fixture
def agent_server(served):
    service, _, port = served
    return service, port


def reference_verdict(datagram: bytes) -> str:
    """What the sans-IO core makes of a datagram (read past the shell's 8193-octet buffer: the size check still fires)."""
    from greenservers.proto import snmp

    agent = snmp.Agent(SensorRegistry(FIXED_SENSORS), 0.0, "h", "d")
    return snmp.verdict_of(agent.handle(datagram[:8193], "127.0.0.1", 1.0, FakeRuntime().settings))


def ask(port: int, datagram: bytes, source: str = "127.0.0.1", timeout: float = 1.0) -> bytes | None:
    with gevent.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        sock.send(datagram)
        with gevent.Timeout(timeout, False):
            return sock.recv(65536)
    return None


def test_answers_on_a_port_0_socket(agent_server):
    service, port = agent_server
    reply = ask(port, GET)
    assert reply is not None and b"greenservers" in reply
    assert service.runtime.sensors.value("snmp_requests_answered") == 1


def test_every_datagram_is_counted_in_the_sensor_of_its_verdict(agent_server):
    """The counts the agent core leaves to its shell (proto.results): answered, community, version, address."""
    service, port = agent_server
    sensors = service.runtime.sensors
    assert ask(port, GET) is not None
    assert sensors.value("snmp_requests_answered") == 1
    for name in ("get_wrong_community", "get_v2c", "get_v3"):
        assert ask(port, bytes.fromhex(REQUESTS[name]), timeout=0.2) is None
    assert ask(port, GET, source="127.0.0.2", timeout=0.2) is None
    assert ask(port, GET) is not None  # read after the others: every one of them was handled
    assert sensors.value("snmp_rejected_community") == 1
    assert sensors.value("snmp_rejected_version") == 2
    assert sensors.value("snmp_rejected_address") == 1
    assert sensors.value("snmp_requests_answered") == 2


def test_a_bug_is_logged_once_per_source_with_its_traceback_and_serving_goes_on(agent_server, caplog, monkeypatch):
    service, port = agent_server
    caplog.set_level(logging.WARNING, logger="greenservers.snmp")

    def broken(*args):
        raise RuntimeError("a bug in the agent")

    monkeypatch.setattr(service.agent, "respond", broken)
    for _ in range(3):
        assert ask(port, GET, timeout=0.3) is None
    errors = [r for r in caplog.records if "error handling a datagram" in r.getMessage()]
    tracebacks = [r for r in caplog.records if r.exc_info and "a bug in the agent" in str(r.exc_info[1])]
    assert len(errors) == 1 and len(tracebacks) == 1
    monkeypatch.undo()
    assert ask(port, GET) is not None


def test_untrusted_flood_is_counted_and_logged_once(agent_server, caplog):
    service, port = agent_server
    caplog.set_level(logging.WARNING, logger="greenservers.snmp")
    for _ in range(20):
        assert ask(port, GET, source="127.0.0.2", timeout=0.05) is None
    assert ask(port, GET) is not None  # read after the flood: every flood datagram was handled
    assert service.runtime.sensors.value("snmp_rejected_address") == 20
    lines = [r.getMessage() for r in caplog.records if "address not in snmp_trusted" in r.getMessage()]
    assert lines == ["127.0.0.2: SNMP request dropped: address not in snmp_trusted"]


def test_an_untrusted_burst_is_counted_whole_though_handled_in_a_batch(agent_server, caplog):
    service, port = agent_server
    caplog.set_level(logging.WARNING, logger="greenservers.snmp")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as flood:
        flood.bind(("127.0.0.2", 0))
        for _ in range(300):  # at once: the server reads them many per turn of its loop
            flood.sendto(GET, ("127.0.0.1", port))
    assert ask(port, GET) is not None  # read after the burst: every datagram of it was handled
    assert service.runtime.sensors.value("snmp_rejected_address") == 300
    service.ratelog.interval = 0  # the next one is logged, with how many were held back
    assert ask(port, GET, source="127.0.0.2", timeout=0.2) is None
    lines = [r.getMessage() for r in caplog.records if "address not in snmp_trusted" in r.getMessage()]
    assert lines == ["127.0.0.2: SNMP request dropped: address not in snmp_trusted",
                     "127.0.0.2: SNMP request dropped: address not in snmp_trusted (299 more since the last line)"]


def flood(port: int, count: int, source: str = "127.0.0.2", chunk: int = 100) -> None:
    """`count` GETs from `source`, a trusted GET answered after each `chunk` (the buffer never overflows)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        sender.bind((source, 0))
        for start in range(0, count, chunk):
            for _ in range(min(chunk, count - start)):
                sender.sendto(GET, ("127.0.0.1", port))
            assert ask(port, GET) is not None  # the trusted are answered all along


def test_a_flood_from_untrusted_addresses_is_shed_in_the_kernel_and_every_datagram_counted(served, caplog):
    service, server, port = served
    sensors = service.runtime.sensors
    caplog.set_level(logging.WARNING, logger="greenservers.snmp")
    flood(port, 5000)
    assert server.shed.attached
    server._shed_tick()  # the kernel's drops counted (once a second, on its own)
    in_user_space, in_kernel = sensors.value("snmp_rejected_address"), sensors.value("snmp_dropped_in_kernel")
    assert in_user_space > source_filter.FLOOD_DATAGRAMS and in_kernel > 0
    assert in_user_space + in_kernel == 5000
    lines = [r.getMessage() for r in caplog.records if "the kernel drops them" in r.getMessage()]
    assert len(lines) == 1 and "the last from 127.0.0.2" in lines[0] and "next 10 s" in lines[0]
    # the filter follows snmp_trusted at its next tick
    assert ask(port, GET, source="127.0.0.3", timeout=0.2) is None
    service.runtime.settings = Settings.from_raw({"snmp_trusted": "127.0.0.1 127.0.0.3"})
    server._shed_tick()
    assert ask(port, GET, source="127.0.0.3") is not None
    assert sensors.value("snmp_dropped_in_kernel") == in_kernel + 1  # the one before the change
    # and comes off after SHED_SECONDS: user space sees, logs and counts each source again
    server.shed.until = 0.0
    server._shed_tick()
    assert not server.shed.attached
    assert ask(port, GET, source="127.0.0.4", timeout=0.2) is None
    assert ask(port, GET) is not None
    assert sensors.value("snmp_rejected_address") == in_user_space + 1
    assert any("127.0.0.4: SNMP request dropped" in r.getMessage() for r in caplog.records)


def test_what_a_flood_overflowing_the_buffer_lost_before_the_filter_is_counted_too(served):
    """Sent at once, with no turn for the server to read: the receive buffer overflows. Every datagram is then
    read, or dropped by the filter, or lost to the full buffer: each is counted."""
    service, server, port = served
    sensors = service.runtime.sensors
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        sender.bind(("127.0.0.2", 0))
        sender.setblocking(False)
        sent = 0
        for _ in range(20000):
            with contextlib.suppress(BlockingIOError):  # a full send buffer: not sent, not counted
                sender.sendto(GET, ("127.0.0.1", port))
                sent += 1
    barriers = 0

    def answered() -> bool:  # a trusted GET the full buffer may lose too (then counted in the kernel's drops)
        nonlocal barriers
        barriers += 1
        return ask(port, GET, timeout=0.2) is not None

    eventually(answered, 30, what="a trusted GET answered after the flood")
    assert server.shed.attached
    server._shed_tick()
    in_kernel = sensors.value("snmp_dropped_in_kernel")
    assert sensors.value("snmp_rejected_address") + in_kernel == sent + barriers - 1
    assert in_kernel > 0


def test_a_flood_the_kernel_cannot_filter_is_dropped_in_user_space_and_says_why(served, caplog):
    service, server, port = served
    caplog.set_level(logging.WARNING, logger="greenservers.snmp")
    many = " ".join(f"10.0.{i // 256}.{i % 256}" for i in range(1100))  # more than a program of 4,096 instructions holds
    service.runtime.settings = Settings.from_raw({"snmp_trusted": f"127.0.0.1 {many}"})
    flood(port, 2 * source_filter.FLOOD_DATAGRAMS)
    assert not server.shed.attached
    assert service.runtime.sensors.value("snmp_rejected_address") == 2 * source_filter.FLOOD_DATAGRAMS
    lines = [r.getMessage() for r in caplog.records if "is dropped in user space" in r.getMessage()]
    assert len(lines) == 1 and "too many networks for a kernel filter" in lines[0]


def test_a_few_untrusted_datagrams_a_second_stay_in_user_space(served):
    """An ordinary mistake (a poller not yet in snmp_trusted) keeps its log line for each source: no kernel filter."""
    service, server, port = served
    flood(port, source_filter.FLOOD_DATAGRAMS)  # at the threshold, not over it
    assert not server.shed.attached
    assert service.runtime.sensors.value("snmp_rejected_address") == source_filter.FLOOD_DATAGRAMS


def test_every_bad_datagram_leaves_the_server_answering(agent_server, caplog):
    service, port = agent_server
    caplog.set_level(logging.WARNING, logger="greenservers.snmp")
    for name, datagram in bad_inputs().items():
        ask(port, datagram[:65507], timeout=0.05)
        assert ask(port, GET) is not None, name
    assert not [r for r in caplog.records if r.exc_info], "a bad datagram hit a bug"
    dropped = [r.getMessage() for r in caplog.records if "SNMP datagram dropped" in r.getMessage()]
    assert len(dropped) == 1  # one line per source and reason per minute ...
    # ... but every one is counted (malformed and v2c/v3 share the sensor)
    expected = sum(1 for d in bad_inputs().values() if reference_verdict(d[:65507]) in ("malformed", "bad_version"))
    assert service.runtime.sensors.value("snmp_rejected_version") == expected
