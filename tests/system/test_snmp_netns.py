"""The SNMP agent on wildcard bindings ("PORT" dual-stack, "0.0.0.0:PORT"), in a private network namespace.

A wildcard socket is not loopback-only, so this runs the real service in a
private network namespace holding only `lo` (support.netns).
It shows what only a wildcard socket exercises: an IPv4 client arrives as
::ffff:a.b.c.d and matches its IPv4 entry of snmp_trusted (and is logged
by its IPv4 address), and every reply leaves from the address the request
was sent to (a connected client socket accepts nothing else), for IPv4 and
IPv6 alike.

`probe` runs inside the namespace and returns its findings.
"""

from __future__ import annotations

import os
import socket
import subprocess

import pytest
from support import ServiceProcess, free_udp_port
from support.netns import in_network_namespace

GET_SYSDESCR = "302902010004067075626c6963a01c02040c19c76b020100020100300e300c06082b060102010101000500"

pytestmark = pytest.mark.real_client


def test_dual_stack_wildcard_binding_in_a_private_network_namespace(tmp_path):
    found = in_network_namespace(probe, tmp_path, addresses=("fd00::5/128", "fd00::6/128"))
    assert found["binding"] == f"[::]:{found['port']}"
    assert found["mapped_ipv4_answered"], found
    assert found["reply_from"] == {"127.0.0.5": True, "fd00::5": True, "127.0.0.5 via 0.0.0.0": True}, found
    assert found["snmpget_127.0.0.5"].startswith('"greenservers '), found
    assert found["untrusted_ipv4_answered"] is False
    assert found["untrusted_logged_as_ipv4"], found["log"]
    assert "Traceback" not in found["log"]


# -- the script run inside the namespace -------------------------------------------------------


def _ask(family: int, source: str | None, target: tuple, timeout: float = 2.0) -> bytes | None:
    """One GET from a *connected* socket: a reply from any other address than `target` is never received."""
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        if source:
            sock.bind((source, 0))
        sock.connect(target)
        sock.settimeout(timeout)
        sock.send(bytes.fromhex(GET_SYSDESCR))
        try:
            return sock.recv(2048)
        except TimeoutError:
            return None


def probe(directory: str) -> dict:
    port, ipv4_port = free_udp_port(), free_udp_port()
    svc = ServiceProcess(directory, {"ip_snmp_port": f"{port} 0.0.0.0:{ipv4_port}", "snmp_trusted": "127.0.0.0/29 ::1 fd00::/16"})
    svc.start()
    try:
        found: dict = {"port": port, "binding": svc.wait_for_log("greenservers serving:").split("ip_snmp_port=")[1].split(",")[0].strip()}
        found["mapped_ipv4_answered"] = _ask(socket.AF_INET, "127.0.0.1", ("127.0.0.1", port)) is not None
        found["reply_from"] = {
            "127.0.0.5": _ask(socket.AF_INET, None, ("127.0.0.5", port)) is not None,
            # from fd00::6: routing alone would answer from the client's own address
            "fd00::5": _ask(socket.AF_INET6, "fd00::6", ("fd00::5", port)) is not None,
            "127.0.0.5 via 0.0.0.0": _ask(socket.AF_INET, None, ("127.0.0.5", ipv4_port)) is not None,
        }
        snmpget = subprocess.run(["snmpget", "-v1", "-c", "public", "-Oqv", f"127.0.0.5:{port}", ".1.3.6.1.2.1.1.1.0"],
                                 capture_output=True, text=True, env=dict(os.environ, MIBS=""), timeout=30)
        found["snmpget_127.0.0.5"] = snmpget.stdout.strip() or snmpget.stderr
        found["untrusted_ipv4_answered"] = _ask(socket.AF_INET, "127.0.0.9", ("127.0.0.1", port), timeout=0.5) is not None
        svc.wait_for_log("127.0.0.9: SNMP request dropped", timeout=5)
        found["untrusted_logged_as_ipv4"] = "] 127.0.0.9: SNMP request dropped: address not in snmp_trusted" in svc.log
        found["log"] = svc.log
        return found
    finally:
        svc.stop()

