"""The record of phones against the running service under the review's attacks: one device fetching names of ever new
MACs over one keep-alive connection, forged TFTP requests from many sources (sources that never acknowledge: where a
forged request's answer goes), and the views of a record larger than a page.

How much gets in is bounded by the rates (greenservers.provisioning.phones.seen) over the time the flood took, measured
around it: an upper bound, not a timing assertion. Eviction of a full record is shown on a fake clock in
tests/core/test_phones_seen.py (2,000 phones is more than a test should send).
"""

from __future__ import annotations

import http.client
import socket
import time

import pytest
import requests
from support import ServiceProcess, eventually, free_port, free_udp_port
from support.web import PASSWORD, PASSWORD_HASH

from greenservers.provisioning.phones import seen


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    proc = ServiceProcess(tmp_path_factory.mktemp("phones-record"), {
        "ip_tftp_port": f"127.0.0.1:{free_udp_port()}", "ip_http_port": f"127.0.0.1:{free_port()}",
        "admin_password_hash": PASSWORD_HASH,
    })
    proc.start()
    yield proc
    proc.stop()


def phones(svc) -> list[dict]:
    """The whole record, page by page."""
    found: list[dict] = []
    while True:
        body = requests.get(svc.url(f"/api/phones?offset={len(found)}&limit=200"), auth=("admin", PASSWORD), timeout=10).json()
        found += body["phones"]
        if not body["phones"] or len(found) >= body["total"]:
            return found


def fetch_over_tftp(svc, name: str, source: str) -> None:
    """A phone's lock-step fetch, acknowledged to the end."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        sock.settimeout(5)
        sock.sendto(b"\x00\x01" + name.encode() + b"\x00octet\x00", ("127.0.0.1", svc.port("ip_tftp_port")))
        while True:
            data, peer = sock.recvfrom(4096)
            assert data[:2] == b"\x00\x03", data
            sock.sendto(b"\x00\x04" + data[2:4], peer)
            if len(data) - 4 < 512:
                return


def by_address(svc) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for phone in phones(svc):
        grouped.setdefault(phone["address"], []).append(phone)
    return grouped


def test_real_phones_are_recorded_with_what_their_address_proved(svc):
    conn = http.client.HTTPConnection("127.0.0.1", svc.port("ip_http_port"), timeout=10, source_address=("127.0.0.11", 0))
    conn.request("GET", "/prov/cfg000b82abcdef.xml", headers={"User-Agent": "Grandstream Model HW GXP2170 SW 1.0.11.3"})
    assert conn.getresponse().read()
    conn.close()
    fetch_over_tftp(svc, "001565abcdef.boot", "127.0.0.12")
    found = eventually(lambda: {p["mac"]: p for p in phones(svc)} if len(phones(svc)) == 2 else None, 10, what=lambda: phones(svc))
    assert found["000b82abcdef"]["verified_by"] == "http" and found["000b82abcdef"]["model"] == "GXP2170"
    assert found["001565abcdef"]["verified_by"] == "tftp"


def test_one_device_adds_only_the_rates_worth_of_phones(svc):
    ua = "Yealink SIP-T46S " + "<script>alert(1)</script>" + "A" * 300
    conn = http.client.HTTPConnection("127.0.0.1", svc.port("ip_http_port"), timeout=10, source_address=("127.0.0.13", 0))
    started = time.monotonic()
    for i in range(300):  # the review's fill: names that mean no phone, then per-phone names of new MACs
        conn.request("GET", f"/prov/{0x001565000000 + i // 16:012x}-{i % 16:02d}-{'x' * 100}.cfg", headers={"User-Agent": ua})
        conn.getresponse().read()
    for i in range(300):
        conn.request("GET", f"/prov/{0x001565100000 + i:012x}.boot", headers={"User-Agent": ua})
        conn.getresponse().read()
    elapsed = time.monotonic() - started
    conn.close()
    mine = by_address(svc).get("127.0.0.13", [])
    assert seen.NEW_PER_SOURCE <= len(mine) <= seen.NEW_PER_SOURCE + elapsed * seen.NEW_PER_SOURCE_RATE + 1
    assert all(p["mac"].startswith("0015651") for p in mine)  # none of the names that mean no phone
    assert all(len(p["user_agent"]) == seen.MAX_TEXT and len(p["files"]) == 1 for p in mine)


def test_forged_tftp_requests_add_only_the_shared_rates_worth_and_are_shown_as_such(svc):
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(50)]
    started = time.monotonic()
    try:
        for number, sock in enumerate(socks, 1):
            sock.bind((f"127.0.9.{number}", 0))
        for i in range(400):  # a per-phone file no one wrote: answered "not found" at once, to an address that never asked
            socks[i % len(socks)].sendto(b"\x00\x01" + f"{0x7c2f81000000 + i:012x}.cfg".encode() + b"\x00octet\x00",
                                         ("127.0.0.1", svc.port("ip_tftp_port")))
            if i % 50 == 49:
                time.sleep(0.01)  # as fast as the service's per-source allowance lets most of them in
        eventually(lambda: [p for p in phones(svc) if p["address"].startswith("127.0.9.")], 10, what="a forged phone recorded")
        # a barrier, not a pause: the listener reads its datagrams in order and this phone's fetch takes several
        # round trips, so every forged request sent before it has been read and handled once it ends
        fetch_over_tftp(svc, "001565abcdef.boot", "127.0.0.12")
    finally:
        for sock in socks:
            sock.close()
    forged = [p for p in phones(svc) if p["address"].startswith("127.0.9.")]
    elapsed = time.monotonic() - started
    assert len(forged) <= seen.NEW_UNVERIFIED + elapsed * seen.NEW_UNVERIFIED_RATE + 1
    assert {p["verified_by"] for p in forged} == {""}
    real = {p["mac"]: p for p in phones(svc)}
    assert real["000b82abcdef"]["verified_by"] == "http" and real["001565abcdef"]["verified_by"] == "tftp"


def test_views_of_a_record_larger_than_a_page_are_bounded(svc):
    total = len(phones(svc))
    assert total > 50  # the floods above
    auth = ("admin", PASSWORD)
    body = requests.get(svc.url("/api/phones"), auth=auth, timeout=10).json()
    assert (len(body["phones"]), body["total"], body["limit"]) == (50, total, 50)
    refused = requests.get(svc.url("/api/phones?limit=100000"), auth=auth, timeout=10)
    assert refused.status_code == 400 and "limit must be a whole number from 1 to 200" in refused.json()["error"]
    page = requests.get(svc.url("/phones"), auth=auth, headers={"Accept": "text/html"}, timeout=10).text
    assert page.count('class="field phone"') == 50 and f"{total} phones recorded" in page and "unanswered UDP only" in page
