"""Unit tests of greenservers.provisioning.phones.timezones: tzdata footers read and parsed, every vendor form; hypothesis on the
parser and on the record of phones (no sockets)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import example, given, settings as hsettings, strategies as st
from support.hypothesis_profiles import examples

from greenservers.provisioning.phones import profiles, seen, timezones as tz


def test_footer_of_the_system_tzdata_files():
    assert tz.load("Europe/Berlin").posix == "CET-1CEST,M3.5.0,M10.5.0/3"
    assert tz.load("Asia/Kolkata").posix == "IST-5:30"


@pytest.mark.parametrize("name", ["", "Mars/Olympus", "../../etc/passwd", "/usr/share/zoneinfo/UTC", " Europe/Berlin", 5])
def test_bad_names_are_refused(name):
    with pytest.raises(tz.TimeZoneError):
        tz.load(name)


def test_footer_needs_a_version_2_file():
    with pytest.raises(tz.TimeZoneError):
        tz.footer(b"TZif\x00" + b"\x00" * 40 + b"\nUTC0\n")
    assert tz.footer(b"TZif2" + b"\x00" * 40 + b"\nCET-1CEST,M3.5.0,M10.5.0/3\n") == "CET-1CEST,M3.5.0,M10.5.0/3"


def test_parse_posix_with_rules_and_defaults():
    zone = tz.parse_posix("CET-1CEST,M3.5.0,M10.5.0/3", "Europe/Berlin")
    assert (zone.std_abbr, zone.std_offset, zone.dst_abbr, zone.dst_offset) == ("CET", 3600, "CEST", 7200)
    assert zone.start == tz.Rule(3, 5, 0, 7200) and zone.end == tz.Rule(10, 5, 0, 10800)
    assert zone.dst_shift == 3600 and zone.has_dst


def test_parse_posix_bracketed_and_fractional_offsets():
    zone = tz.parse_posix("<+1030>-10:30<+11>-11,M10.1.0,M4.1.0", "Australia/Lord_Howe")
    assert zone.std_offset == 37800 and zone.dst_offset == 39600 and zone.dst_shift == 1800
    assert tz.parse_posix("<-03>3").std_offset == -3 * 3600 and not tz.parse_posix("<-03>3").has_dst


def test_negative_dst_is_turned_round():
    zone = tz.load("Europe/Dublin")  # IST-1GMT0,M10.5.0,M3.5.0/1
    assert (zone.std_abbr, zone.std_offset, zone.dst_abbr, zone.dst_offset) == ("GMT", 0, "IST", 3600)
    assert zone.start == tz.Rule(3, 5, 0, 3600) and zone.end == tz.Rule(10, 5, 0, 7200)


@pytest.mark.parametrize("text", ["", "CET", "CET-1CEST,M13.5.0,M10.5.0", "CET-1CEST,J60,J300", "CET-1CEST,M3.5.0",
                                  "CET-25", "CET-1:60", "CET-1:00:60", "CET-1CEST-25,M3.5.0,M10.5.0", "CET-24CEST,M3.5.0,M10.5.0",
                                  "CET-1CEST,M3.5.0/168,M10.5.0"])
def test_unparsable_posix_strings(text):
    with pytest.raises(tz.TimeZoneError):
        tz.parse_posix(text)


def test_berlin_in_every_form():
    forms = tz.forms(tz.load("Europe/Berlin"))
    assert forms["posix_full"] == "CET-1CEST-2,M3.5.0/02:00:00,M10.5.0/03:00:00"
    assert forms["yealink"] == {"time_zone": "+1", "summer_time": 1, "dst_time_type": 1,
                                "start_time": "3/5/7/2", "end_time": "10/5/7/3", "offset_time": 60, "approximate": False}
    poly = forms["poly"]
    assert poly["gmtOffset"] == 3600 and poly["enable"] == 1
    assert poly["start"] == {"month": 3, "date": 1, "dayOfWeek": 1, "lastInMonth": 1, "time": 2}
    assert poly["stop"] == {"month": 10, "date": 1, "dayOfWeek": 1, "lastInMonth": 1, "time": 3}
    assert forms["cisco"]["time_zone"] == "GMT+01:00"
    assert forms["cisco"]["dst_rule"] == "start=3/-1/7/2:0:0;end=10/-1/7/3:0:0;save=1:0:0"
    assert forms["minutes"]["offset_minutes"] == 60 and forms["minutes"]["start"]["minutes"] == 120
    assert forms["snom"] == "GER+1"


def test_kolkata_in_every_form():
    forms = tz.forms(tz.load("Asia/Kolkata"))
    assert forms["posix_full"] == "IST-5:30" and not forms["dst"]
    assert forms["yealink"] == {"time_zone": "+5:30", "summer_time": 0, "approximate": False}
    assert forms["poly"] == {"gmtOffset": 19800, "enable": 0, "approximate": False}
    assert forms["cisco"] == {"time_zone": "GMT+05:30", "dst_enable": "no", "dst_rule": "", "approximate": False}
    assert forms["minutes"]["offset_minutes"] == 330 and forms["minutes"]["quarter_hours"] == 22
    assert forms["snom"] == "IND+5.5"


def test_new_york_week_rules():
    forms = tz.forms(tz.load("America/New_York"))  # EST5EDT,M3.2.0,M11.1.0
    assert forms["yealink"]["start_time"] == "3/2/7/2" and forms["yealink"]["end_time"] == "11/1/7/2"
    assert forms["poly"]["start"]["date"] == 8 and forms["poly"]["start"]["lastInMonth"] == 0
    assert forms["cisco"]["dst_rule"] == "start=3/8/7/2:0:0;end=11/1/7/2:0:0;save=1:0:0"
    assert forms["cisco"]["time_zone"] == "GMT-05:00" and forms["posix_full"] == "EST5EDT4,M3.2.0/02:00:00,M11.1.0/02:00:00"


def test_a_change_at_24_00_moves_to_the_next_day_and_says_so():
    forms = tz.forms(tz.load("America/Santiago"))  # <-04>4<-03>,M9.1.6/24,M4.1.6/24
    assert forms["yealink"]["start_time"] == "9/1/7/0" and forms["yealink"]["approximate"]
    assert forms["posix_full"].startswith("STD4DST3,M9.1.6/24:00:00")


def test_every_snom_code_matches_the_zones_standard_offset():
    for name, code in tz.SNOM_ZONES.items():
        number = code[code.index("+") if "+" in code else code.index("-", 3):]
        assert round(float(number) * 3600) == tz.load(name).std_offset, (name, code)


def test_zone_without_snom_code():
    assert tz.forms(tz.load("Asia/Kathmandu"))["snom"] == ""


def test_the_tzdata_package_serves_where_the_system_has_no_zoneinfo():
    import zoneinfo

    saved = zoneinfo.TZPATH
    zoneinfo.reset_tzpath(to=[])
    try:
        assert tz.load("America/Argentina/Buenos_Aires").posix == "<-03>3"
        assert tz.load("Europe/Berlin").posix == "CET-1CEST,M3.5.0,M10.5.0/3"
    finally:
        zoneinfo.reset_tzpath(to=saved)



POSIX_ALPHABET = "CESTIMJ<>+-,./:0123456789"


def _offset(sign: str, hours: int, minutes: int | None, seconds: int | None) -> str:
    return sign + str(hours) + (f":{minutes:02d}" if minutes is not None else "") + (f":{seconds:02d}" if seconds is not None else "")


# POSIX TZ strings put together from their parts, so that every run parses many (random text almost never does):
# numbers in range and past it (hours, minutes, months, weeks, weekdays), with and without DST and rule times
ABBREVIATIONS = st.one_of(st.sampled_from(["CET", "CEST", "EST", "IST", "GMT", "NZST"]),
                          st.builds(lambda sign, hours: f"<{sign}{hours:02d}>", st.sampled_from("+-"), st.integers(0, 14)))
OFFSETS = st.builds(_offset, st.sampled_from(["", "+", "-"]), st.integers(0, 30),
                    st.one_of(st.none(), st.integers(0, 70)), st.one_of(st.none(), st.integers(0, 70)))
RULE_TIMES = st.builds(_offset, st.sampled_from(["", "+", "-"]), st.integers(0, 200),
                       st.one_of(st.none(), st.integers(0, 59)), st.one_of(st.none(), st.integers(0, 59)))
RULES = st.builds(lambda month, week, day, time: f"M{month}.{week}.{day}" + (f"/{time}" if time else ""),
                  st.integers(0, 13), st.integers(0, 6), st.integers(0, 7), st.one_of(st.none(), RULE_TIMES))
POSIX_STRINGS = st.builds(lambda std, offset, dst: std + offset + dst, ABBREVIATIONS, OFFSETS, st.one_of(
    st.just(""), st.builds(lambda abbr, offset, start, end: f"{abbr}{offset},{start},{end}", ABBREVIATIONS,
                           st.one_of(st.just(""), OFFSETS), RULES, RULES)))


@hsettings(max_examples=examples(1500), deadline=None)
@given(st.one_of(POSIX_STRINGS, st.text(POSIX_ALPHABET, max_size=60), st.text(max_size=40)))
@example("CET-24CEST,M3.5.0,M10.5.0")  # summer time implied an hour past the limit: was accepted, its full form unreadable
@example("<+1245>-12:45<+1345>,M9.5.0/2:45,M4.1.0/3:45")  # Pacific/Chatham: brackets, minutes, rule times with minutes
def test_any_text_parses_or_is_refused_with_a_clear_error(text):
    try:
        zone = tz.parse_posix(text)
    except tz.TimeZoneError:
        return
    limit = tz.MAX_OFFSET_HOURS * 3600
    assert abs(zone.std_offset) <= limit and (zone.dst_offset is None or abs(zone.dst_offset) <= limit)
    assert all(abs(rule.seconds) <= tz.MAX_RULE_HOURS * 3600 for rule in (zone.start, zone.end) if rule)
    forms = tz.forms(zone)  # a parsed zone is written in every form without an error
    assert forms["posix_full"] and forms["yealink"]["time_zone"]
    again = tz.parse_posix(forms["posix_full"])  # and the full form, read back, means the same clock
    assert (again.std_offset, again.dst_offset, again.start, again.end) == (zone.std_offset, zone.dst_offset, zone.start, zone.end)


# names that mean a phone, so that every run records some (random text alone rarely does)
PHONE_FILE_NAMES = st.sampled_from(["001565ABCDEF.boot", "000000000000.boot", "y000000000066.cfg", "cfg000b82abcdef",
                                    "snomD785-000413ABCDEF.htm", "ConfigABCDEF012345.cfg", "000413ABCDEF.xml"])


@hsettings(max_examples=examples(400), deadline=None)
@given(st.one_of(PHONE_FILE_NAMES, st.text(max_size=300)), st.text(max_size=300))
def test_any_requested_name_and_user_agent_are_recorded_or_ignored(name, user_agent):
    with tempfile.TemporaryDirectory() as folder:  # a fresh record for each example: no rate or bound carried over
        registry = seen.PhoneRegistry(Path(folder) / "phones.sqlite3", clock=lambda: 1.0)
        phone = registry.note(name, "192.0.2.1", "served", "tftp", user_agent)
        found = profiles.phone_file(name)
        if found is None:
            assert phone is None and len(registry) == 0
        elif found.mac or phone is not None:  # a name with a MAC is always recorded (else it takes a vendor)
            assert phone is not None and all(len(f) <= seen.MAX_TEXT for f in phone["files"]) and len(phone["user_agent"]) <= seen.MAX_TEXT
            assert registry.listing()[0]["id"] == phone["id"]
