"""The record of phones (greenservers.provisioning.phones.seen) on a fake clock: what is kept, bounded, saved and forgotten."""

from __future__ import annotations

import os

import pytest
from support.clock import FakeClock

from greenservers.provisioning.phones import seen


@pytest.fixture
def registry(tmp_path):
    return seen.PhoneRegistry(tmp_path / "phones.json", clock=FakeClock(1_800_000_000.0))


def test_a_phone_by_mac_with_its_files_and_results(registry):
    registry.note("001565ABCDEF.boot", "192.0.2.7", "served", "tftp")
    registry.clock.now += 5
    registry.note("y000000000066.cfg", "192.0.2.7", "served", "tftp")  # no MAC of its own: by address + vendor
    registry.note("001565abcdef.cfg", "192.0.2.7", "not found", "http", "Yealink SIP-T46S 66.86.0.15 00:15:65:ab:cd:ef")
    phones = registry.listing()
    assert [p["mac"] for p in phones] == ["001565abcdef", ""]
    phone = phones[0]
    assert (phone["vendor"], phone["model"], phone["address"]) == ("yealink", "T46S", "192.0.2.7")
    assert [(f["name"], f["result"], f["via"]) for f in phone["files"]] == [("001565abcdef.cfg", "not found", "http"),
                                                                              ("001565ABCDEF.boot", "served", "tftp")]
    assert phone["first_seen"] == 1_800_000_000.0 and phone["last_seen"] == 1_800_000_005.0
    assert phones[1]["vendor"] == "yealink" and phones[1]["model"] == "T46S"


def test_requests_naming_no_mac_and_no_vendor_are_not_recorded(registry):
    assert registry.note("random.bin", "192.0.2.8", "not found", "tftp") is None
    assert registry.note("../etc/passwd", "192.0.2.8", "refused", "http", "curl/8.0") is None
    assert registry.note("000000000000.bin", "192.0.2.8", "not found", "tftp") is None
    assert registry.listing() == []


def test_bounded_oldest_forgotten_first_and_files_per_phone(registry, monkeypatch):
    monkeypatch.setattr(seen, "MAX_PHONES", 5)
    for i in range(8):
        registry.clock.now += 1
        registry.note(f"0015650000{i:02x}.boot", "192.0.2.9", "served", "tftp")
    assert [p["mac"] for p in registry.listing()] == [f"0015650000{i:02x}" for i in range(7, 2, -1)]
    for i in range(seen.MAX_FILES + 10):
        registry.note(f"001565000007-{i}.cfg", "192.0.2.9", "not found", "tftp")
    files = registry.listing()[0]["files"]
    assert len(files) == seen.MAX_FILES and files[0]["name"] == f"001565000007-{seen.MAX_FILES + 9}.cfg"
    long_name = "001565000007" + "x" * 300 + "\x01"
    registry.note(long_name, "192.0.2.9", "served", "tftp", "ua\x00" * 200)
    phone = registry.listing()[0]
    assert len(phone["files"][0]["name"]) == seen.MAX_NAME and len(phone["user_agent"]) == seen.MAX_USER_AGENT
    assert "\x00" not in phone["user_agent"]


def test_kept_across_restarts_private_and_atomic(registry, tmp_path):
    registry.note("cfg000b82abcdef.xml", "192.0.2.10", "served", "https", "Grandstream Model HW GXP2170 SW 1.0.11.3")
    path = tmp_path / "phones.json"
    assert os.stat(path).st_mode & 0o777 == 0o600
    again = seen.PhoneRegistry(path, clock=FakeClock(1_800_000_000.0))
    assert again.listing() == registry.listing()
    assert [p.name for p in tmp_path.iterdir()] == ["phones.json"]  # no temporary file left


def test_a_broken_file_is_set_aside_not_lost(tmp_path):
    (tmp_path / "phones.json").write_text("{not json")
    registry = seen.PhoneRegistry(tmp_path / "phones.json", clock=FakeClock(1_800_000_000.0))
    assert registry.listing() == []
    assert (tmp_path / "phones.json.broken-1800000000").read_text() == "{not json"


def test_forget_and_seen_since(registry):
    registry.note("001565abcdef.boot", "192.0.2.7", "served", "tftp")
    registry.clock.now += seen.DAY + 1
    registry.note("cfg000b82abcdef.xml", "192.0.2.8", "served", "tftp")
    assert registry.seen_since(seen.DAY) == 1 and len(registry.listing()) == 2
    assert registry.forget("001565abcdef") and not registry.forget("001565abcdef")
    assert [p["mac"] for p in registry.listing()] == ["000b82abcdef"]
