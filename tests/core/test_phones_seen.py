"""The record of phones (greenservers.provisioning.phones.seen) on a fake clock: what is kept, bounded, saved and forgotten;
floods from one source, a LAN of phones and a device cycling the addresses of one /64, and forged TFTP sources;
the store (phones.sqlite3) and the move from phones.json."""

from __future__ import annotations

import json
import os
import sqlite3

import pytest
from support.clock import FakeClock

from greenservers.provisioning.phones import seen


@pytest.fixture
def registry(tmp_path):
    return seen.PhoneRegistry(tmp_path / "phones.sqlite3", clock=FakeClock(1_800_000_000.0))


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


def test_only_names_that_mean_a_phone_are_recorded(registry):
    yealink = "Yealink SIP-T46S 66.86.0.15"
    assert registry.note("random.bin", "192.0.2.8", "not found", "tftp") is None
    assert registry.note("random.bin", "192.0.2.8", "not found", "http", yealink) is None  # a vendor's User-Agent is not enough
    assert registry.note("../etc/passwd", "192.0.2.8", "refused", "http", "curl/8.0") is None
    assert registry.note("000000000000.bin", "192.0.2.8", "not found", "tftp") is None
    assert registry.note("001565000000-01-xxxx.cfg", "192.0.2.8", "not found", "http", yealink) is None  # the review's flood
    assert registry.note("firmware/001565abcdef.cfg", "192.0.2.8", "not found", "http", yealink) is None
    assert registry.listing() == []
    assert registry.note("snomD785-000413ABCDEF.htm", "192.0.2.8", "not found", "http")["model"] == "D785"  # a per-phone file
    assert registry.note("0004f2abcdef.cfg", "192.0.2.9", "not found", "tftp")["vendor"] == ""  # Poly's, Yealink's or Fanvil's
    assert registry.note("0004f2abcdef.cfg", "192.0.2.9", "served", "http", "PolycomVVX-VVX_411-UA/6.4")["vendor"] == "poly"


def test_bounded_oldest_forgotten_first_and_files_per_phone(registry, monkeypatch):
    monkeypatch.setattr(seen, "MAX_PHONES", 5)
    for i in range(8):
        registry.clock.now += 1 if i != 5 else seen.KEEP_SEEN  # the first five unseen for a day when the sixth comes
        registry.note(f"0015650000{i:02x}.boot", "192.0.2.9", "served", "tftp")
    assert [p["mac"] for p in registry.listing()] == [f"0015650000{i:02x}" for i in range(7, 2, -1)]
    for name in ["001565000007.cfg", "cfg001565000007", "cfg001565000007.xml", "001565000007-phone.cfg", "snomD785-001565000007.htm"]:
        registry.note(name, "192.0.2.9", "not found", "tftp", answered=True)  # names of one MAC in every vendor's form: one phone
    files = registry.listing()[0]["files"]
    assert len(files) == seen.MAX_FILES == 4 and [f["name"] for f in files] == [
        "snomD785-001565000007.htm", "001565000007-phone.cfg", "cfg001565000007.xml", "cfg001565000007"]


def test_texts_are_cut_and_cleaned_and_a_phone_stays_within_its_bytes(registry):
    long_ua = "Yealink SIP-T46S " + "<script>alert(1)</script>" + "A\x00" * 300
    phone = registry.note("001565abcdef.cfg", "2001:db8:1:2:3:4:5:6%" + "e" * 200, "served", "http" + "s" * 50, long_ua)
    assert phone["model"] == "T46S" and len(phone["user_agent"]) == seen.MAX_TEXT and "\x00" not in phone["user_agent"]
    assert len(phone["address"]) == seen.MAX_TEXT
    for name in ("cfg001565abcdef.xml", "001565abcdef-phone.cfg", "snomD785-001565abcdef.htm", "ConfigKX-HDV130.cfg"):
        registry.note(name.replace("ConfigKX-HDV130", "Config001565ABCDEF"), "2001:db8::1" + "1" * 100, "not found", "http", long_ua)
    (row,) = registry.store._db.execute("SELECT * FROM phones").fetchall()
    assert len(json.dumps(row)) <= seen.MAX_PHONE_BYTES


def test_a_flood_of_new_macs_from_one_source_records_only_the_rate(registry):
    for i in range(500):  # the review's fill: distinct MACs, one keep-alive connection, within a second
        registry.note(f"0015650{i:05x}.boot", "192.0.2.66", "served", "http", "Yealink SIP-T46S")
    assert len(registry) == seen.NEW_PER_SOURCE and registry.not_recorded == 500 - seen.NEW_PER_SOURCE
    registry.clock.now += 60  # a minute later: a new phone every 15 s
    for i in range(500, 1000):
        registry.note(f"0015650{i:05x}.boot", "192.0.2.66", "served", "http")
    assert len(registry) == seen.NEW_PER_SOURCE + 60 * seen.NEW_PER_SOURCE_RATE
    for i in range(20):  # an IPv6 address has its own rate too
        registry.note(f"0004f2{i:06x}-phone.cfg", "2001:db8:5:6::1", "served", "http")
    assert len(registry) == 2 * seen.NEW_PER_SOURCE + 60 * seen.NEW_PER_SOURCE_RATE
    registry.note("001565abcdef.boot", "192.0.2.67", "served", "http")  # another source is not held back
    assert registry.listing(0, 1)[0]["mac"] == "001565abcdef"
    registry.note("001565000000.boot", "192.0.2.67", "served", "https")  # phones already recorded go on being updated
    phone = registry.listing(0, 1)[0]
    assert (phone["mac"], phone["address"], phone["verified_by"]) == ("001565000000", "192.0.2.67", "http")
    registry.note("001565000000.boot", "192.0.2.68", "served", "tftp")  # an acknowledged transfer proves its address too
    phone = registry.listing(0, 1)[0]  # the trust stays the highest
    assert (phone["mac"], phone["address"], phone["verified_by"]) == ("001565000000", "192.0.2.68", "http")
    registry.note("001565000000.boot", "10.0.0.9", "failed", "tftp")  # an unanswered one (forgeable) proves nothing
    assert registry.listing(0, 1)[0]["address"] == "192.0.2.68"


def test_a_lan_of_phones_in_one_64_appears_at_once_and_the_64_as_a_whole_meets_its_share(registry):
    lan = [f"2001:db8:1:2::{n:x}" for n in range(1, seen.NEW_PER_PREFIX + 1)]
    for n, phone in enumerate(lan):  # the phones of an IPv6 LAN booting together, each with its own address
        assert registry.note(f"001565{n:06x}.boot", phone, "served", "tftp") is not None
    assert len(registry) == seen.NEW_PER_PREFIX == 500
    # a device cycling the addresses of that /64 meets the /64's share: nothing more until it refills
    for n in range(5000):
        assert registry.note(f"0004f2{n:06x}-phone.cfg", f"2001:db8:1:2::1:{n:x}", "served", "http") is None
    assert len(registry.new_per_source.addresses) == seen.NEW_PER_PREFIX  # refused before its addresses were looked up
    assert registry.note("001565abcdef.boot", "2001:db8:1:3::1", "served", "http") is not None  # the next /64
    assert registry.note("001565abcdee.boot", "192.0.2.1", "served", "http") is not None
    registry.clock.now += 60  # a minute: the /64's rate
    added = sum(registry.note(f"0004f2{n:06x}-phone.cfg", f"2001:db8:1:2::2:{n:x}", "served", "http") is not None
                for n in range(100))
    assert added == 60 * seen.NEW_PER_PREFIX_RATE


def test_one_address_of_a_64_adding_phones_spends_only_its_own_allowance(registry):
    for n in range(100):
        registry.note(f"001565{n:06x}.boot", "2001:db8:1:2::66", "served", "http")
    assert len(registry) == seen.NEW_PER_SOURCE
    assert registry.new_per_source.prefixes.level("2001:db8:1:2::/64", registry.clock.now) == seen.NEW_PER_PREFIX - seen.NEW_PER_SOURCE
    assert registry.note("0004f2abcdef-phone.cfg", "2001:db8:1:2::1", "served", "http") is not None  # its neighbour


def test_a_full_record_nobody_may_leave_spends_no_allowance(registry, monkeypatch):
    monkeypatch.setattr(seen, "MAX_PHONES", 3)
    for n in range(3):
        registry.note(f"001565{n:06x}.boot", f"192.0.2.{n}", "served", "http")
    for n in range(50):  # answered over TFTP only: may replace none of the phones seen over HTTP
        assert registry.note(f"0004f2{n:06x}-phone.cfg", "2001:db8::9", "served", "tftp") is None
    assert registry.new_per_source.addresses.level("2001:db8::9", registry.clock.now) == seen.NEW_PER_SOURCE
    assert registry.new_per_source.prefixes.level("2001:db8::/64", registry.clock.now) == seen.NEW_PER_PREFIX


def test_forged_requests_do_not_spend_the_allowance_of_the_address_they_name(registry):
    for i in range(200):
        registry.note(f"7c2f81{i:06x}.xml", "192.0.2.50", "not found", "tftp")
    assert len(registry) == seen.NEW_UNVERIFIED
    for i in range(seen.NEW_PER_SOURCE):
        assert registry.note(f"0004f2{i:06x}-phone.cfg", "192.0.2.50", "served", "http") is not None


def test_forged_tftp_sources_cannot_push_out_phones_that_answered(registry, monkeypatch):
    monkeypatch.setattr(seen, "MAX_PHONES", 20)
    registry.note("cfg000b82abcdef.xml", "192.0.2.10", "served", "https", "Grandstream Model HW GXP2170")
    registry.note("001565abcdef.boot", "192.0.2.11", "served", "tftp")  # acknowledged to its end
    registry.note("0004f2abcdef-phone.cfg", "192.0.2.12", "not found", "tftp")  # never answered
    spoofed = 0
    for minute in range(30):  # 30 minutes of forged RRQs from ever new sources, none acknowledged
        for i in range(100):
            registry.note(f"7c2f80{spoofed:06x}.xml", f"10.{minute}.{i}.1", "failed", "tftp")
            spoofed += 1
        registry.clock.now += 60
    phones = {p["mac"]: p for p in registry.listing()}
    assert len(phones) == 20
    assert phones["000b82abcdef"]["verified_by"] == "http" and phones["001565abcdef"]["verified_by"] == "tftp"
    assert "0004f2abcdef" not in phones  # as doubtful as the forged ones: it may go
    admitted = spoofed - registry.not_recorded  # each forged name was a new phone
    assert seen.NEW_UNVERIFIED <= admitted <= seen.NEW_UNVERIFIED + 30 * 60 * seen.NEW_UNVERIFIED_RATE
    # a forged request for a trusted phone's name changes nothing of it: no file, address, vendor, model or time
    before = {p["mac"]: p for p in registry.listing()}["000b82abcdef"]
    for name in ("cfg000b82abcdef.xml", "000b82abcdef.cfg", "cfg000b82abcdef", "000b82abcdef-phone.cfg"):
        registry.note(name, "10.9.9.9", "failed", "tftp", "Poly VVX 400")
    assert {p["mac"]: p for p in registry.listing()}["000b82abcdef"] == before
    # a phone over HTTP takes the place of a doubtful one first; then, of those that answered, only of one unseen
    # for a day (a device with 130 addresses replaced every phone of a full record in 3 s), the least trusted first
    trust = {}
    for i in range(20):
        registry.clock.now += 1
        registry.note(f"0004f2{i:06x}-phone.cfg", f"192.0.3.{i}", "served", "http")
        trust[i] = sorted(p["verified_by"] for p in registry.listing())
    assert trust[16] == [""] + ["http"] * 18 + ["tftp"]  # 17 of the 18 forged ones gone
    assert trust[17] == trust[19] == ["http"] * 19 + ["tftp"]  # then none: every phone left answered and was seen today
    registry.clock.now += seen.KEEP_SEEN
    registry.note("0004f2fffff0-phone.cfg", "192.0.3.100", "served", "http")
    assert sorted(p["verified_by"] for p in registry.listing()) == ["http"] * 20  # the TFTP-only phone went
    registry.note("0004f2fffff1-phone.cfg", "192.0.3.101", "served", "http")
    assert "000b82abcdef" not in {p["mac"] for p in registry.listing()}  # then the least recently seen over HTTP


def test_pages(registry):
    for i in range(30):
        registry.clock.now += 1
        registry.note(f"0004f2{i:06x}-phone.cfg", f"192.0.2.{i}", "served", "http")
    assert [p["mac"] for p in registry.listing(0, 3)] == [f"0004f2{i:06x}" for i in (29, 28, 27)]
    assert [p["mac"] for p in registry.listing(28, 10)] == ["0004f2000001", "0004f2000000"]
    assert registry.listing(30, 10) == [] and len(registry.listing()) == 30


def test_kept_across_restarts_private_and_only_what_changed_written(registry, tmp_path):
    registry.note("cfg000b82abcdef.xml", "192.0.2.10", "served", "https", "Grandstream Model HW GXP2170 SW 1.0.11.3")
    registry.note("001565abcdef.boot", "192.0.2.11", "served", "tftp")
    path = tmp_path / "phones.sqlite3"
    assert os.stat(path).st_mode & 0o777 == 0o600
    writes = []
    registry.store._db.set_trace_callback(writes.append)
    registry.note("001565abcdef.boot", "192.0.2.11", "served", "tftp")
    assert sum("INSERT INTO phones" in w for w in writes) == 1 and "'001565abcdef'" in "".join(writes)
    assert "000b82abcdef" not in "".join(writes)
    registry.store._db.set_trace_callback(None)
    again = seen.PhoneRegistry(path, clock=FakeClock(1_800_000_000.0))
    assert again.listing() == registry.listing()
    assert {p.name for p in tmp_path.iterdir()} <= {"phones.sqlite3", "phones.sqlite3-wal", "phones.sqlite3-shm"}
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in tmp_path.iterdir())


def test_a_broken_file_is_set_aside_not_lost(tmp_path):
    (tmp_path / "phones.sqlite3").write_text("{not sqlite" * 100)
    registry = seen.PhoneRegistry(tmp_path / "phones.sqlite3", clock=FakeClock(1_800_000_000.0))
    assert registry.listing() == []
    assert (tmp_path / "phones.sqlite3.broken-1800000000").read_text() == "{not sqlite" * 100
    registry.note("001565abcdef.boot", "192.0.2.11", "served", "tftp")
    assert sqlite3.connect(tmp_path / "phones.sqlite3").execute("SELECT count(*) FROM phones").fetchone() == (1,)


def test_an_older_versions_phones_json_is_carried_over_once_under_todays_bounds(tmp_path):
    def old_phone(key, files, **more):
        return {"key": key, "id": key, "mac": key, "vendor": "yealink", "model": "T46S", "address": "192.0.2.7",
                "user_agent": "Yealink " + "A" * 190, "first_seen": 1_700_000_000.0, "last_seen": 1_700_000_100.0,
                "files": {name: {"result": result, "at": 1_700_000_050.0, "via": via} for name, result, via in files}, **more}

    flood = [old_phone(f"0015650000{i:02x}", [(f"0015650000{i:02x}-01-{'x' * 100}.cfg", "not found", "http")]) for i in range(50)]
    real = old_phone("001565abcdef", [(f"001565abcdef-{i}.cfg", "not found", "tftp") for i in range(10)]
                     + [("001565abcdef.boot", "served", "tftp"), ("y000000000000.boot", "served", "tftp"),
                        ("y000000000066.cfg", "served", "tftp"), ("001565abcdef.cfg", "served", "http"),
                        ("001565ABCDEF.boot", "failed", "tftp")])
    (tmp_path / "phones.json").write_text(json.dumps({"version": 1, "phones": [*flood, real, {"key": "broken"}]}))
    registry = seen.PhoneRegistry(tmp_path / "phones.sqlite3", clock=FakeClock(1_800_000_000.0))
    (phone,) = registry.listing()
    assert phone["mac"] == "001565abcdef" and phone["verified_by"] == "http" and len(phone["user_agent"]) == seen.MAX_TEXT
    assert [f["name"] for f in phone["files"]] == ["001565ABCDEF.boot", "001565abcdef.cfg", "y000000000066.cfg", "y000000000000.boot"]
    assert not (tmp_path / "phones.json").exists()  # carried over, then removed
    again = seen.PhoneRegistry(tmp_path / "phones.sqlite3", clock=FakeClock(1_800_000_000.0))
    assert again.listing() == registry.listing()


def test_forget_and_seen_since(registry):
    registry.note("001565abcdef.boot", "192.0.2.7", "served", "tftp")
    registry.clock.now += seen.DAY + 1
    registry.note("cfg000b82abcdef.xml", "192.0.2.8", "served", "tftp")
    assert registry.seen_since(seen.DAY) == 1 and len(registry.listing()) == 2
    assert registry.forget("001565abcdef") and not registry.forget("001565abcdef")
    assert [p["mac"] for p in registry.listing()] == ["000b82abcdef"]


def test_a_device_with_many_ipv4_addresses_cannot_replace_the_phones_that_answered(registry, monkeypatch):
    """A review's device fetched new MACs over TCP from 130 addresses of its own, 16 each: all 20 real phones of
    a full record were gone in 3 s. Phones that answered and were seen in the last day stay."""
    monkeypatch.setattr(seen, "MAX_PHONES", 100)
    real = [f"001565{n:06x}" for n in range(20)]
    for n, mac in enumerate(real):
        registry.note(f"{mac}.boot", f"192.0.2.{n + 1}", "served", "http" if n % 2 else "tftp")
    for source in range(130):
        for n in range(16):
            registry.note(f"0004f2{source:03x}{n:03x}-phone.cfg", f"198.51.{source // 250}.{source % 250 + 1}", "served", "http")
    macs = {p["mac"] for p in registry.listing()}
    assert set(real) <= macs and len(macs) == 100  # the device's newest phones took its oldest ones' places


def test_a_device_that_filled_the_record_and_keeps_it_fresh_does_not_lock_new_phones_out(registry, monkeypatch):
    """A review filled the record from a few addresses and fetched every entry again each day: no new phone
    was recorded for days. The address recorded most often gives up a place to a newcomer that answered."""
    monkeypatch.setattr(seen, "MAX_PHONES", 100)
    for n in range(20):
        registry.note(f"001565{n:06x}.boot", f"192.0.2.{n + 1}", "served", "http")
    device = [f"198.51.100.{n + 1}" for n in range(10)]
    for n in range(160):
        registry.note(f"0004f2{n:06x}-phone.cfg", device[n % 10], "served", "http")
    assert len(registry) == 100
    registry.clock.now += 3600
    for phone in registry.listing():  # every entry seen again
        name = f"{phone['mac']}.boot" if phone["mac"].startswith("001565") else f"{phone['mac']}-phone.cfg"
        registry.note(name, phone["address"], "served", "http")
    assert registry.note("001565ffffff.boot", "192.0.2.200", "served", "tftp") is not None
    kept = {p["mac"]: p["address"] for p in registry.listing()}
    assert len(kept) == 100 and sum(address.startswith("192.0.2.") for address in kept.values()) == 21


def test_the_phones_trusted_lately_are_those_whose_address_answered_or_connected(registry):
    registry.note("001565abcdef.cfg", "192.0.2.7", "served", "tftp", answered=True)
    registry.note("001565abcde0.cfg", "192.0.2.8", "failed", "tftp")  # asked, never answered: may be spoofed
    registry.note("001565abcde1.cfg", "192.0.2.9", "served", "http", "Yealink SIP-T46S 66.86.0.15")
    registry.clock.now += 100
    assert sorted(registry.trusted_since(3600)) == [("192.0.2.7", 1_800_000_000.0), ("192.0.2.9", 1_800_000_000.0)]
    assert registry.trusted_since(50) == []


def test_a_phone_is_proven_at_an_address_only_by_a_fetch_the_address_answered(registry):
    registry.note("001565abcdef.cfg", "192.0.2.7", "not found", "tftp")  # unanswered: anyone may have sent it
    assert not registry.proven_at("001565abcdef", "192.0.2.7")
    registry.note("001565abcdef.cfg", "192.0.2.7", "served", "tftp", answered=True)
    assert registry.proven_at("001565abcdef", "192.0.2.7") and registry.proven_at("001565abcdef", "::ffff:192.0.2.7")
    assert not registry.proven_at("001565abcdef", "192.0.2.8") and not registry.proven_at("001565abcdee", "192.0.2.7")
    registry.note("001565abcdef.cfg", "192.0.2.9", "not found", "tftp")  # a forged request moves nothing
    assert registry.proven_at("001565abcdef", "192.0.2.7")
    registry.note("001565abcdef.cfg", "192.0.2.9", "served", "http")  # the phone moved, as its own request shows
    assert registry.proven_at("001565abcdef", "192.0.2.9") and not registry.proven_at("001565abcdef", "192.0.2.7")
