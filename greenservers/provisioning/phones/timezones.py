"""A time zone in the forms phones take, from its IANA name (pure: names and bytes in, values out).

The rules come from the zone's tzdata file: the POSIX TZ string of its
footer (RFC 8536 §3.3), which says how the zone keeps time after the last
transition in the file, e.g. ``CET-1CEST,M3.5.0,M10.5.0/3`` for
Europe/Berlin or ``IST-5:30`` for Asia/Kolkata. `parse_posix` reads such a
string into a `Zone` (offsets in seconds east of UTC, DST rules as
month / week / weekday / seconds after local midnight); the `*_form`
functions write it the way each vendor takes it. Where a vendor cannot say
something (an hour past 23, a DST shift other than one hour), the nearest
value it can take is written and the form's `approximate` says so.

A zone whose "daylight" time is behind its standard time (Europe/Dublin:
IST in summer is its standard time, GMT in winter its negative DST) is
turned round, so that every form has DST ahead of standard time; the
clock the phone shows is the same.

Gigaset's base stations take only the zone names of their own list; for
any other zone the listed one that keeps the same time is found in a
table read from tzdata once, on import.
"""

from __future__ import annotations

import re
import zoneinfo
from dataclasses import dataclass, replace
from pathlib import Path

MAX_TZIF_BYTES = 1024 * 1024


class TimeZoneError(ValueError):
    """Not an IANA zone name we can read the rules of."""


@dataclass(frozen=True)
class Rule:
    """When a change happens: the `weekday` (0 Sunday .. 6 Saturday) of `week` (1..4, 5 = last) of `month`,
    at `seconds` after midnight local time (before the change; POSIX allows -167..167 hours)."""

    month: int
    week: int
    weekday: int
    seconds: int = 7200


@dataclass(frozen=True)
class Zone:
    name: str  # the IANA name
    posix: str  # the footer as written in the tzdata file
    std_abbr: str
    std_offset: int  # seconds east of UTC
    dst_abbr: str = ""
    dst_offset: int | None = None
    start: Rule | None = None  # DST starts (local standard time)
    end: Rule | None = None  # DST ends (local daylight time)

    @property
    def has_dst(self) -> bool:
        return self.dst_offset is not None and self.start is not None and self.end is not None

    @property
    def dst_shift(self) -> int:
        """Seconds the clock goes forward in DST (0 without DST)."""
        return (self.dst_offset - self.std_offset) if self.has_dst else 0


# -- reading the tzdata file ---------------------------------------------------------


def _tzif_bytes(name: str) -> bytes:
    for folder in zoneinfo.TZPATH:
        path = Path(folder) / name
        try:
            if path.resolve().is_relative_to(Path(folder).resolve()) and path.is_file():
                with open(path, "rb") as f:
                    return f.read(MAX_TZIF_BYTES)
        except OSError:
            continue
    try:  # the tzdata package, where the system has no zoneinfo folder
        from importlib import resources

        package, _, leaf = ("tzdata.zoneinfo/" + name).rpartition("/")
        return resources.files(package.replace("/", ".")).joinpath(leaf).read_bytes()
    except (ImportError, OSError, ValueError):
        raise TimeZoneError(f"{name!r}: no tzdata file found for it") from None


def footer(data: bytes) -> str:
    """The POSIX TZ string at the end of a version 2+ TZif file."""
    if not data.startswith(b"TZif") or data[4:5] not in (b"2", b"3", b"4") or not data.endswith(b"\n"):
        raise TimeZoneError("not a TZif file of version 2 or later")
    text = data[:-1].rpartition(b"\n")[2]
    try:
        return text.decode("ascii")
    except UnicodeDecodeError:
        raise TimeZoneError("the TZif footer is not ASCII") from None


def load(name: str) -> Zone:
    """The zone named `name` (validated by zoneinfo first: no paths, no unknown names)."""
    if not isinstance(name, str) or not name or name != name.strip():
        raise TimeZoneError(f"{name!r} is not an IANA time zone name like Europe/Berlin")
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        raise TimeZoneError(f"{name!r} is not an IANA time zone name like Europe/Berlin") from None
    posix = footer(_tzif_bytes(name))
    if not posix:
        raise TimeZoneError(f"{name!r}: its tzdata file has no rule for the present (empty footer)")
    return parse_posix(posix, name)


# -- POSIX TZ strings (POSIX.1-2017 §8.3, with RFC 8536's extensions) ---------------------

_ABBR = r"(?:<[A-Za-z0-9+-]{3,}>|[A-Za-z]{3,})"
_OFFSET = r"[+-]?\d{1,3}(?::\d{1,2}){0,2}"
_RULE = r"M\d{1,2}\.\d\.\d(?:/" + _OFFSET + r")?"
_POSIX = re.compile(
    rf"(?P<std>{_ABBR})(?P<stdoff>{_OFFSET})(?:(?P<dst>{_ABBR})(?P<dstoff>{_OFFSET})?,(?P<start>{_RULE}),(?P<end>{_RULE}))?"
)


MAX_OFFSET_HOURS = 24  # POSIX: a zone's offset is 0..24 hours
MAX_RULE_HOURS = 167  # RFC 8536 §3.3.1: a rule's time is -167..167 hours


def _seconds(text: str, max_hours: int = MAX_OFFSET_HOURS) -> int:
    sign = -1 if text.startswith("-") else 1
    hours, minutes, seconds = ([int(p) for p in text.lstrip("+-").split(":")] + [0, 0])[:3]
    total = hours * 3600 + minutes * 60 + seconds
    if total > max_hours * 3600 or minutes > 59 or seconds > 59:
        raise TimeZoneError(f"{text!r} is out of range (at most {max_hours} hours; minutes and seconds 0..59)")
    return sign * total


def _rule(text: str) -> Rule:
    date, _, time = text.partition("/")
    month, week, weekday = (int(x) for x in date[1:].split("."))
    if not (1 <= month <= 12 and 1 <= week <= 5 and 0 <= weekday <= 6):
        raise TimeZoneError(f"rule {text!r} is out of range")
    return Rule(month, week, weekday, _seconds(time, MAX_RULE_HOURS) if time else 7200)


def parse_posix(text: str, name: str = "") -> Zone:
    """A Zone from a POSIX TZ string (only the M month.week.day rule form, which tzdata uses)."""
    match = _POSIX.fullmatch(text)
    if not match:
        raise TimeZoneError(f"{text!r} is not a POSIX TZ string this server understands")
    std_offset = -_seconds(match["stdoff"])  # POSIX counts west of UTC
    zone = Zone(name or text, text, match["std"].strip("<>"), std_offset)
    if match["dst"]:
        dst_offset = -_seconds(match["dstoff"]) if match["dstoff"] else std_offset + 3600
        if abs(dst_offset) > MAX_OFFSET_HOURS * 3600:  # an hour ahead of 24 hours: no offset can be written for it
            raise TimeZoneError(f"{text!r}: its summer time would be more than {MAX_OFFSET_HOURS} hours from UTC")
        zone = replace(zone, dst_abbr=match["dst"].strip("<>"), dst_offset=dst_offset,
                       start=_rule(match["start"]), end=_rule(match["end"]))
        if dst_offset < std_offset:  # negative DST (Europe/Dublin): the same clock with the roles turned round
            zone = replace(zone, std_abbr=zone.dst_abbr, std_offset=dst_offset, dst_abbr=zone.std_abbr,
                           dst_offset=std_offset, start=zone.end, end=zone.start)
    return zone


# -- vendor forms ----------------------------------------------------------------------------


def _hours_minutes(seconds: int, sep: str = ":", plus_zero: bool = True) -> str:
    sign = "-" if seconds < 0 else "+"
    hours, rest = divmod(abs(seconds), 3600)
    minutes = rest // 60
    return f"{sign}{hours}{sep}{minutes:02d}" if minutes or not plus_zero else f"{sign}{hours}"


def _clock(seconds: int) -> str:
    sign = "-" if seconds < 0 else "+"
    hours, rest = divmod(abs(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return text if sign == "+" else "-" + text


def _in_day(rule: Rule) -> tuple[Rule, bool]:
    """The rule moved to a time within 0..23:59 of a day (Santiago's "24:00 on Saturday" becomes Sunday 0:00);
    True when that moved it (the week may then be off by one near the month's edges)."""
    if 0 <= rule.seconds < 86400:
        return rule, False
    days, seconds = divmod(rule.seconds, 86400)
    return Rule(rule.month, rule.week, (rule.weekday + days) % 7, seconds), True


def _posix_offset(seconds_west: int) -> str:
    sign = "-" if seconds_west < 0 else ""
    hours, rest = divmod(abs(seconds_west), 3600)
    minutes, secs = divmod(rest, 60)
    return sign + str(hours) + (f":{minutes:02d}" if minutes or secs else "") + (f":{secs:02d}" if secs else "")


def posix_form(zone: Zone) -> str:
    """The rules as a POSIX TZ string with every field written out: ``CET-1CEST-2,M3.5.0/02:00:00,M10.5.0/03:00:00``.

    Bracketed abbreviations (``<+0530>``) become STD/DST, since several phones parse only letters."""
    def abbr(text: str, fallback: str) -> str:
        return text if text.isalpha() else fallback

    def rule(r: Rule) -> str:
        return f"M{r.month}.{r.week}.{r.weekday}/{_clock(r.seconds)}"

    text = f"{abbr(zone.std_abbr, 'STD')}{_posix_offset(-zone.std_offset)}"
    if zone.has_dst:
        text += f"{abbr(zone.dst_abbr, 'DST')}{_posix_offset(-zone.dst_offset)},{rule(zone.start)},{rule(zone.end)}"
    return text


def yealink_form(zone: Zone) -> dict:
    """local_time.*: time_zone "+1" / "+5:30", summer_time 1 with rules by week (dst_time_type 1),
    start/end "month/week/weekday/hour" (week 5 = last, weekday 1 Monday .. 7 Sunday), offset_time minutes.
    No time_zone_name: it takes a name of Yealink's own list ("Germany(Berlin)"), which only picks the rules
    when summer_time is 2 (automatic); ours are given with summer_time 1."""
    form = {"time_zone": _hours_minutes(zone.std_offset) if zone.std_offset else "0",
            "summer_time": 1 if zone.has_dst else 0, "approximate": False}
    if zone.has_dst:
        rules = []
        for r in (zone.start, zone.end):
            r, moved = _in_day(r)
            form["approximate"] |= moved or r.seconds % 3600 != 0
            rules.append(f"{r.month}/{r.week}/{r.weekday or 7}/{r.seconds // 3600}")
        form.update(dst_time_type=1, start_time=rules[0], end_time=rules[1], offset_time=zone.dst_shift // 60)
    return form


def poly_form(zone: Zone) -> dict:
    """tcpIpApp.sntp.*: gmtOffset in seconds; daylightSavings.* with the rule as "the n-th weekday on or after
    date" (date 1, 8, 15, 22; lastInMonth for week 5), dayOfWeek 1 Sunday .. 7 Saturday, time in hours."""
    form = {"gmtOffset": zone.std_offset, "enable": 1 if zone.has_dst else 0, "approximate": False}
    if zone.has_dst:
        form["approximate"] = zone.dst_shift != 3600  # the phone always moves one hour
        for key, r in (("start", zone.start), ("stop", zone.end)):
            r, moved = _in_day(r)
            form["approximate"] |= moved or r.seconds % 3600 != 0
            form[key] = {"month": r.month, "date": 1 + 7 * (min(r.week, 5) - 1) if r.week < 5 else 1,
                         "dayOfWeek": r.weekday + 1, "lastInMonth": 1 if r.week == 5 else 0, "time": r.seconds // 3600}
    return form


def cisco_form(zone: Zone) -> dict:
    """Time_Zone "GMT+01:00"; Daylight_Saving_Time_Rule "start=3/-1/7/2:0:0;end=10/-1/7/3:0:0;save=1:0:0"
    (day n>0: the weekday on or after day n, -1: the last; weekday 1 Monday .. 7 Sunday)."""
    hours, minutes = divmod(abs(zone.std_offset) // 60, 60)
    form = {"time_zone": f"GMT{'-' if zone.std_offset < 0 else '+'}{hours:02d}:{minutes:02d}",
            "dst_enable": "yes" if zone.has_dst else "no", "dst_rule": "", "approximate": False}
    if zone.has_dst:
        parts = []
        for key, r in (("start", zone.start), ("end", zone.end)):
            r, moved = _in_day(r)
            form["approximate"] |= moved
            day = -1 if r.week == 5 else 1 + 7 * (r.week - 1)
            hours, rest = divmod(r.seconds, 3600)
            parts.append(f"{key}={r.month}/{day}/{r.weekday or 7}/{hours}:{rest // 60}:{rest % 60}")
        shift_h, shift_rest = divmod(zone.dst_shift, 3600)
        parts.append(f"save={shift_h}:{shift_rest // 60}:0")
        form["dst_rule"] = ";".join(parts)
    return form


def minutes_form(zone: Zone) -> dict:
    """Offsets in minutes east and the rule fields one by one (Panasonic, Fanvil): month, week (1..5, 5 = last),
    weekday (0 Sunday .. 6 Saturday), time as minutes after midnight and as hour + minute. Fanvil counts the
    offset in quarter hours (UTC+1 is 4) and names it "UTC+1"."""
    form = {"offset_minutes": zone.std_offset // 60, "quarter_hours": zone.std_offset // 900,
            "utc_name": "UTC" + _hours_minutes(zone.std_offset) if zone.std_offset else "UTC",
            "dst": 1 if zone.has_dst else 0, "dst_minutes": zone.dst_shift // 60, "approximate": False}
    if zone.has_dst:
        for key, r in (("start", zone.start), ("end", zone.end)):
            r, moved = _in_day(r)
            form["approximate"] |= moved
            form[key] = {"month": r.month, "week": r.week, "weekday": r.weekday, "minutes": r.seconds // 60,
                         "hour": r.seconds // 3600, "minute": r.seconds % 3600 // 60}
    return form


# Snom's own zone codes (country + standard offset in hours; the phone knows each one's DST rules).
# From a third-party list of the values of the phones' `timezone` setting; the code form is Snom's (GER+1, USA-5),
# which code each zone gets is unconfirmed (see profiles.VENDORS).
# Entries whose offset no longer matches tzdata are left out (a test checks every entry).
SNOM_ZONES = {
    "America/Los_Angeles": "USA-8", "America/Denver": "USA-7", "America/Phoenix": "USA2-7", "America/Chicago": "USA-6",
    "America/New_York": "USA-5", "America/Edmonton": "CAN-7", "America/Winnipeg": "CAN-6", "America/Toronto": "CAN-5",
    "America/Halifax": "CAN-4", "America/St_Johns": "CAN-3.5", "America/Mazatlan": "MEX-7", "America/Mexico_City": "MEX-6",
    "Pacific/Easter": "CHL-6", "America/Santiago": "CHL-4", "America/Nassau": "BHS-5", "America/Bogota": "COL-5",
    "America/Havana": "CUB-5", "Atlantic/Bermuda": "BMU-4",
    "America/Port_of_Spain": "TTB-4", "America/Argentina/Buenos_Aires": "ARG-3", "America/Sao_Paulo": "BRA2-3",
    "America/Noronha": "BRA-2", "Atlantic/Azores": "PRT-1", "Atlantic/Faroe": "FRO-0", "Europe/Dublin": "IRL-0",
    "Europe/Lisbon": "PRT-0", "Atlantic/Canary": "ESP-0", "Europe/London": "GBR-0", "Europe/Tirane": "ALB+1",
    "Europe/Vienna": "AUT+1", "Europe/Brussels": "BEL+1", "Europe/Zagreb": "HRV+1", "Europe/Prague": "CZE+1",
    "Europe/Copenhagen": "DNK+1", "Europe/Paris": "FRA+1", "Europe/Berlin": "GER+1", "Europe/Budapest": "HUN+1",
    "Europe/Rome": "ITA+1", "Europe/Luxembourg": "LUX+1", "Europe/Skopje": "MAK+1", "Europe/Amsterdam": "NLD+1",
    "Europe/Oslo": "NOR+1", "Europe/Warsaw": "POL+1", "Europe/Bratislava": "SVK+1", "Europe/Madrid": "ESP+1",
    "Europe/Stockholm": "SWE+1", "Europe/Zurich": "CHE+1", "Europe/Gibraltar": "GIB+1", "Europe/Belgrade": "YUG+1",
    "Africa/Lagos": "WAT+1", "Europe/Sofia": "BGR+2", "Asia/Nicosia": "CYP+2", "Africa/Maputo": "CAT+2",
    "Africa/Cairo": "EGY+2", "Europe/Tallinn": "EST+2", "Europe/Helsinki": "FIN+2", "Asia/Gaza": "GAZ+2",
    "Europe/Athens": "GRC+2", "Asia/Jerusalem": "ISR+2", "Europe/Riga": "LVA+2", "Europe/Vilnius": "LTU+2",
    "Asia/Beirut": "LBN+2", "Europe/Chisinau": "MDA+2", "Europe/Kaliningrad": "RUS+2", "Europe/Bucharest": "ROU+2",
    "Europe/Kyiv": "UKR+2", "Europe/Kiev": "UKR+2", "Africa/Nairobi": "EAT+3", "Asia/Baghdad": "IRQ+3",
    "Europe/Moscow": "RUS+3", "Asia/Tehran": "IRN+3.5", "Asia/Yerevan": "ARM+4", "Asia/Baku": "AZE+4",
    "Asia/Tbilisi": "GEO+4", "Europe/Samara": "RUS+4", "Asia/Dubai": "UAE+4", "Asia/Karachi": "PAK+5",
    "Asia/Yekaterinburg": "RUS+5", "Asia/Kolkata": "IND+5.5", "Asia/Calcutta": "IND+5.5", "Asia/Omsk": "RUS+6",
    "Asia/Krasnoyarsk": "RUS+7", "Asia/Bangkok": "THA+7", "Asia/Shanghai": "CHN+8", "Asia/Singapore": "SGP+8",
    "Australia/Perth": "AUS+8", "Asia/Seoul": "KOR+9", "Asia/Tokyo": "JPN+9", "Australia/Adelaide": "AUS+9.5",
    "Australia/Darwin": "AUS2+9.5", "Australia/Sydney": "AUS+10", "Australia/Melbourne": "AUS+10",
    "Australia/Brisbane": "AUS2+10", "Australia/Hobart": "AUS3+10", "Asia/Vladivostok": "RUS+10",
    "Australia/Lord_Howe": "AUS+10.5", "Pacific/Noumea": "NCL+11", "Pacific/Auckland": "NZL+12",
    "Asia/Kamchatka": "RUS+12", "Pacific/Chatham": "NZL+12.75", "Pacific/Tongatapu": "TON+13",
}


def snom_form(zone: Zone) -> str:
    """Snom's `timezone` code for the zone, or "" when the list has none (the template then leaves the key out)."""
    return SNOM_ZONES.get(zone.name, "")


# The names Gigaset's N670/N870 IP PRO take for DmGlobal.0.TimeZone: a list of their own, not every IANA name
# (as the N870/Nx70 provisioning of wazo-provd-plugins keeps it). Other zones get the first of these that keeps
# the same time, or nothing.
GIGASET_ZONES = (
    "Africa/Cairo", "America/Anchorage", "America/Caracas", "America/Chicago", "America/Denver",
    "America/Los_Angeles", "America/New_York", "America/Sao_Paulo", "Asia/Dhaka", "Asia/Dubai", "Asia/Hong_Kong",
    "Asia/Karachi", "Asia/Tokyo", "Australia/Adelaide", "Australia/Brisbane", "Australia/Darwin", "Australia/Sydney",
    "Europe/Amsterdam", "Europe/Andorra", "Europe/Astrakhan", "Europe/Athens", "Europe/Belfast", "Europe/Belgrade",
    "Europe/Berlin", "Europe/Bratislava", "Europe/Brussels", "Europe/Bucharest", "Europe/Budapest",
    "Europe/Busingen", "Europe/Chisinau", "Europe/Copenhagen", "Europe/Dublin", "Europe/Gibraltar",
    "Europe/Guernsey", "Europe/Helsinki", "Europe/Isle_of_Man", "Europe/Istanbul", "Europe/Jersey",
    "Europe/Kaliningrad", "Europe/Kiev", "Europe/Kirov", "Europe/Lisbon", "Europe/Ljubljana", "Europe/London",
    "Europe/Luxembourg", "Europe/Madrid", "Europe/Malta", "Europe/Mariehamn", "Europe/Minsk", "Europe/Monaco",
    "Europe/Moscow", "Europe/Nicosia", "Europe/Oslo", "Europe/Paris", "Europe/Podgorica", "Europe/Prague",
    "Europe/Riga", "Europe/Rome", "Europe/Samara", "Europe/San_Marino", "Europe/Sarajevo", "Europe/Simferopol",
    "Europe/Skopje", "Europe/Sofia", "Europe/Stockholm", "Europe/Tallinn", "Europe/Tirane", "Europe/Tiraspol",
    "Europe/Ulyanovsk", "Europe/Uzhgorod", "Europe/Vaduz", "Europe/Vatican", "Europe/Vienna", "Europe/Vilnius",
    "Europe/Volgograd", "Europe/Warsaw", "Europe/Zagreb", "Europe/Zaporozhye", "Europe/Zurich", "Greenwich",
    "Pacific/Honolulu", "Pacific/Noumea",
)


def _rules(zone: Zone) -> tuple:
    return zone.std_offset, zone.dst_offset, zone.start, zone.end


def _gigaset_by_rules() -> dict:
    by_rules = {}
    for name in GIGASET_ZONES:
        try:
            by_rules.setdefault(_rules(load(name)), name)
        except TimeZoneError:  # a name this system's tzdata no longer has
            continue
    return by_rules


# Built on import (some 20 ms of tzdata reads), so that no request waits for it.
GIGASET_BY_RULES = _gigaset_by_rules()


def gigaset_form(zone: Zone) -> str:
    """The zone's own name when Gigaset's list has it, else a listed zone with the same offsets and DST rules,
    else "" (the template then leaves the key out and the base station keeps its own setting)."""
    if zone.name in GIGASET_ZONES:
        return zone.name
    return GIGASET_BY_RULES.get(_rules(zone), "")


def forms(zone: Zone) -> dict:
    """Every form, as the templates see it under ``tz``."""
    return {
        "name": zone.name, "posix": zone.posix, "posix_full": posix_form(zone),
        "offset_seconds": zone.std_offset, "dst": zone.has_dst, "dst_shift_seconds": zone.dst_shift,
        "yealink": yealink_form(zone), "poly": poly_form(zone), "cisco": cisco_form(zone),
        "minutes": minutes_form(zone), "snom": snom_form(zone), "gigaset": gigaset_form(zone),
    }
