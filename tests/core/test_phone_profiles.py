"""Unit tests of the stock phone profiles (greenservers.provisioning.phones.profiles through greenservers.provisioning.files): every
boot name answered in its vendor's format, the administrator's files first, transports chosen from the settings."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from greenservers.config.settings import Settings
from greenservers.provisioning import files as p
from greenservers.provisioning.phones import profiles

SERVER = "192.0.2.10"
# one name of each stock file, and what it must hold besides the header
BOOT_NAMES = {
    "yealink": ["y000000000000.boot", "001565abcdef.boot", "y000000000000.cfg", "y000000000066.cfg", "y000000000116.cfg"],
    "snom": ["snomD785.htm", "snomD715.htm"],
    "poly": ["000000000000.cfg", "greenservers-poly.cfg", "0004f2abcdef-phone.cfg"],
    "grandstream": ["cfg000b82abcdef.xml", "cfggxp2170.xml", "cfggrp2614.xml", "cfg.xml"],
    "fanvil": ["F0V00X600000.cfg", "f0X4hw1.100.cfg"],
    "cisco": ["spa504G.cfg", "spa525G2.cfg"],
    "panasonic": ["ConfigCommon.cfg", "ConfigKX-HDV130.cfg"],
    "gigaset": ["7c2f80abcdef.xml"],
}


def make_settings(tmp_path, **changes):
    raw = {"data_dir": "data", "ip_ntp_port": "123", "ip_ldap_port": "2389", "ip_ldaps_port": "2636",
           "ldap_password": "pw&<\"x", "phone_timezone": "Europe/Berlin", **changes}
    settings = Settings.from_raw(raw, tmp_path)
    p.tftp_root(settings).mkdir(parents=True, exist_ok=True)
    return settings


@pytest.fixture
def settings(tmp_path):
    return make_settings(tmp_path)


def text(settings, name):
    content = p.provide(settings, name, SERVER)
    return (content.data if content.data is not None else content.path.read_bytes()).decode("utf-8")


def check_format(vendor, name, body):
    if body.startswith("<"):
        ET.fromstring(body.encode("utf-8"))  # raises on anything but well-formed XML
    if vendor == "yealink":
        assert body.startswith("#!version:1.0.0.1\n")
    elif vendor == "panasonic":
        assert body.startswith("# Panasonic SIP Phone Standard Format File #\r\n") and body.endswith("\r\n\r\n")
        assert "\n" not in body.replace("\r\n", "")
    elif vendor == "snom":
        assert body.startswith('<?xml version="1.0" encoding="utf-8"?>') and ET.fromstring(body).tag == "settings"
    elif vendor == "grandstream":
        assert ET.fromstring(body).tag == "gs_provision"
    elif vendor == "cisco":
        assert ET.fromstring(body).tag == "flat-profile"
    elif vendor == "fanvil":
        assert ET.fromstring(body).find("Version").text == "2.0000000000"
    elif vendor == "gigaset":
        assert ET.fromstring(body).get("productID") == "e2"


@pytest.mark.parametrize("vendor,name", [(v, n) for v, names in BOOT_NAMES.items() for n in names])
def test_every_boot_name_is_answered_in_its_vendors_format(settings, vendor, name):
    content = p.provide(settings, name, SERVER)
    assert content.found.stock.vendor.key == vendor
    assert content.media_type in ("application/xml", "text/plain")
    check_format(vendor, name, content.data.decode("utf-8"))


def test_models_and_macs_from_names():
    assert profiles.stock_match("y000000000066.cfg").model == "T46S"
    assert profiles.stock_match("y000000000000.cfg").model == ""
    assert profiles.stock_match("snomD785.htm").model == "D785"
    assert profiles.stock_match("cfggxp2170.xml").model == "GXP2170"
    assert profiles.stock_match("spa504G.cfg").model == "SPA504G"
    assert profiles.stock_match("F0V00X600000.cfg").model == "X6"
    # wazo-provd-plugins' Fanvil X list: F0V00X200000.cfg is the X210's, the X2 asks for f0X2hw1.100.cfg
    assert profiles.stock_match("F0V00X200000.cfg").model == "X210"
    assert profiles.stock_match("f0X2hw1.100.cfg").model == "X2"
    assert profiles.stock_match("f0X3sghw1.100.cfg").model == "X3SG"
    assert profiles.stock_match("ConfigKX-HDV130.cfg").model == "KX-HDV130"
    assert profiles.stock_match("001565ABCDEF.boot").mac == "001565abcdef"
    assert profiles.stock_match("cfg000B82ABCDEF.xml").mac == "000b82abcdef"


@pytest.mark.parametrize("name", ["001565abcdef.cfg", "0004F2ABCDEF.cfg", "000413ABCDEF.xml", "sub/cfg.xml", "snomD785-000413ABCDEF.htm",
                                  "ConfigABCDEF012345.cfg", "f01234567890.cfg", "nothing.cfg"])
def test_per_phone_names_of_the_administrator_are_not_stock(settings, name):
    with pytest.raises(p.NotFound):
        p.provide(settings, name, SERVER)


@pytest.mark.parametrize(("name", "vendor", "mac", "model", "stock"), [
    ("001565ABCDEF.boot", "yealink", "001565abcdef", "", True),
    ("y000000000066.cfg", "yealink", "", "T46S", True),
    ("cfg.xml", "grandstream", "", "", True),
    ("000000000000.xml", "gigaset", "", "", True),  # no phone's MAC: a file of every phone
    ("snomD785-000413ABCDEF.htm", "snom", "000413abcdef", "D785", False),
    ("000413ABCDEF.xml", "", "000413abcdef", "", False),  # Snom's <MAC>.xml or Cisco's $MAU.xml
    ("001565abcdef.cfg", "", "001565abcdef", "", False),  # Yealink's, Poly's or Fanvil's <mac>.cfg
    ("0004F2ABCDEF.cfg", "poly", "0004f2abcdef", "", False),  # upper case: only Poly's
    ("cfg000b82abcdef", "grandstream", "000b82abcdef", "", False),
    ("cfg000b82abcdef.bin", "grandstream", "000b82abcdef", "", False),
    ("ConfigABCDEF012345.cfg", "panasonic", "abcdef012345", "", False),
])
def test_names_that_mean_a_phone(name, vendor, mac, model, stock):
    assert profiles.phone_file(name) == profiles.PhoneFile(vendor, mac, model, stock)


@pytest.mark.parametrize("name", ["nothing.cfg", "000000000000.htm", "sub/001565abcdef.cfg", "001565abcdef-01-xxx.cfg",
                                  "001565abcdef.cfg.bak", "cfg000b82abcdef.txt", "0015650000000.cfg",
                                  "000000abcdef.cfg"])
def test_names_that_mean_no_phone(name):
    assert profiles.phone_file(name) is None


def test_user_agents():
    assert profiles.from_user_agent("Yealink SIP-T46S 66.86.0.15 00:15:65:ab:cd:ef") == ("yealink", "T46S")
    assert profiles.from_user_agent("Mozilla/4.0 (compatible; snomD785-SIP 10.1.33.33)") == ("snom", "D785")
    assert profiles.from_user_agent("FileTransport PolycomVVX-VVX_411-UA/5.9.0.9373") == ("poly", "VVX 411")
    assert profiles.from_user_agent("Grandstream Model HW GXP2170 SW 1.0.11.3 DevId 000b82abcdef") == ("grandstream", "GXP2170")
    assert profiles.from_user_agent("Fanvil X4 2.10.2.6887 0c383e07e16c") == ("fanvil", "X4")
    assert profiles.from_user_agent("Cisco/SPA504G-7.6.2") == ("cisco", "SPA504G")
    # the forms wazo-provd-plugins parses: with the MAC and serial, Panasonic's and Gigaset's
    assert profiles.from_user_agent("Cisco/SPA525G2-7.5.5 (0018B9ABCDEF)(CBT1234567)") == ("cisco", "SPA525G2")
    assert profiles.from_user_agent("Panasonic_KX-HDV130/01.133 (0080f0abcdef)") == ("panasonic", "KX-HDV130")
    assert profiles.from_user_agent("Gigaset N870 IP PRO/83.V2.11.0+build.a546b91;7C2F80E0D605") == ("gigaset", "N870")
    assert profiles.from_user_agent("curl/8.0") == ("", "")


def test_administrators_file_template_and_mac_template_win(settings):
    root = p.tftp_root(settings)
    (root / "cfg.xml").write_text("<mine/>\n")
    (root / "spa504G.cfg.j2").write_text("<mine server='{{ server }}'/>\n")
    (root / "{mac}.boot.j2").write_text("#!version:1.0.0.1\n# mine {{ mac }}\n")
    assert text(settings, "cfg.xml") == "<mine/>\n"
    assert text(settings, "spa504G.cfg") == f"<mine server='{SERVER}'/>\n"
    assert text(settings, "001565ABCDEF.boot") == "#!version:1.0.0.1\n# mine 001565abcdef\n"
    assert "local_time.ntp_server1" in text(settings, "y000000000108.cfg")  # the other stock files still answer
    assert p.provide(settings, "cfg.xml", SERVER).found.stock is None


def test_ntp_and_time_zone_follow_the_settings(tmp_path):
    settings = make_settings(tmp_path, ip_ntp_port="", ntp_server="ntp.example.org", phone_timezone="Asia/Kolkata")
    body = text(settings, "y000000000000.cfg")
    assert "local_time.ntp_server1 = ntp.example.org\n" in body and "local_time.time_zone = +5:30\n" in body
    assert "local_time.summer_time = 0\n" in body and "start_time" not in body
    nothing = make_settings(tmp_path / "b", ip_ntp_port="", ntp_server="")
    assert "ntp_server1" not in text(nothing, "y000000000000.cfg") and "<P30>" not in text(nothing, "cfg.xml")


@pytest.mark.parametrize("changes,expected", [
    ({}, {"yealink": ("starttls", 2389), "snom": ("ldaps", 2636), "cisco": ("plain", 2389), "gigaset": ("", "")}),
    ({"ip_ldaps_port": ""}, {"yealink": ("starttls", 2389), "snom": ("plain", 2389), "cisco": ("plain", 2389)}),
    ({"ip_ldap_port": ""}, {"yealink": ("ldaps", 2636), "snom": ("ldaps", 2636), "cisco": ("", "")}),
    ({"ip_ldaps_port": "", "ldap_plain_bind": False}, {"yealink": ("starttls", 2389), "snom": ("", ""), "cisco": ("", "")}),
    ({"ip_ldap_port": "", "ip_ldaps_port": ""}, {"yealink": ("", ""), "grandstream": ("", "")}),
    ({"ip_ldap_port": "127.0.0.1:3389 [::]:4389"}, {"yealink": ("starttls", 4389)}),
])
def test_transport_and_port_never_a_port_that_is_off(tmp_path, changes, expected):
    settings = make_settings(tmp_path, **changes)
    books = profiles.template_values(settings, SERVER, p.port_for)["phonebook"]
    for vendor, (transport, port) in expected.items():
        assert (books[vendor]["transport"], books[vendor]["port"]) == (transport, port), vendor
        assert books[vendor]["enabled"] == bool(transport)


def test_phone_book_off_says_so_in_every_file(tmp_path):
    settings = make_settings(tmp_path, ip_ldap_port="", ip_ldaps_port="")
    assert "ldap.enable = 0\n" in text(settings, "y000000000000.cfg")
    assert "<LDAP_Dir_Enable ua=\"na\">No</LDAP_Dir_Enable>" in text(settings, "spa504G.cfg")
    assert 'LDAP_ENABLE="N"\r\n' in text(settings, "ConfigCommon.cfg")
    assert "P8020" not in text(settings, "cfg.xml") and "ldap_server" not in text(settings, "snomD785.htm")


def test_secrets_are_escaped_in_xml(settings):
    root = ET.fromstring(text(settings, "cfg.xml"))
    assert root.find("config/P8024").text == 'pw&<"x'
    assert ET.fromstring(text(settings, "greenservers-poly.cfg")).find("dir").get("dir.corp.password") == 'pw&<"x'


def test_filters_use_each_vendors_placeholder(settings):
    assert (
        "(cn=$VALUE*)" in text(settings, "spa504G.cfg")
        and "(cn=%)" in text(settings, "cfg.xml")
        and "%" not in text(settings, "spa504G.cfg").split("LDAP_Display")[0]
    )
    assert "(|(telephoneNumber=%)(mobile=%)(homePhone=%)(ipPhone=%))" in text(settings, "snomD785.htm")


def test_yealink_gets_no_iana_name_as_its_time_zone_name(settings):
    """local_time.time_zone_name takes a name of Yealink's own list ("Germany(Berlin)") and only matters for automatic
    DST; the rules are given explicitly, so the key is left out rather than sent an IANA name the phone does not know."""
    body = text(settings, "y000000000000.cfg")
    assert "time_zone_name" not in body and "Europe/Berlin" not in body
    assert "local_time.summer_time = 1\n" in body and "local_time.start_time = 3/5/7/2\n" in body


def fanvil_date_and_ldap(settings):
    root = ET.fromstring(text(settings, "F0V00X600000.cfg"))
    return {e.tag: e.text for e in root.find("phone/date")}, {e.tag: e.text for e in root.find("phone/ldap")}


def test_fanvil_time_zone_in_quarter_hours_and_dst_by_week_with_week_5_last(settings):
    date, ldap = fanvil_date_and_ldap(settings)
    assert (date["TimeZone"], date["TimeZoneName"]) == ("4", "UTC+1")  # not decimal hours, not an IANA name
    assert "EnableDST" not in date and (date["Enable_DST"], date["DST_Fixed_Type"]) == ("2", "2")  # manual, by week
    assert (date["DSTStartMon"], date["DSTStartWeek"], date["DSTStartWday"], date["DSTStartHour"]) == ("3", "5", "0", "2")
    assert (date["DSTEndMon"], date["DSTEndWeek"], date["DSTEndHour"]) == ("10", "5", "3")
    assert ldap["Authenticate"] == "3" and ldap["UseSSL"] == "1"


def test_fanvil_half_hour_zone_without_dst(tmp_path):
    date, _ = fanvil_date_and_ldap(make_settings(tmp_path, phone_timezone="Asia/Kolkata"))
    assert (date["TimeZone"], date["TimeZoneName"], date["Enable_DST"]) == ("22", "UTC+5:30", "0")
    assert "DST_Fixed_Type" not in date and "DSTStartWeek" not in date


def test_snom_name_filters_add_the_wildcard_the_phone_does_not(settings):
    """Snom puts the typed text alone in place of "%": names beginning with it need "%*" (Snom's own examples)."""
    s = {e.tag: e.text for e in ET.fromstring(text(settings, "snomD785.htm")).find("phone-settings")}
    for key in ("ldap_search_filter", "ldap_search_filter_during_call"):
        assert s[key] == "(|(cn=%*)(sn=%*)(givenName=%*)(displayName=%*)(o=%*))", key
    assert s["ldap_number_filter"] == "(|(telephoneNumber=%)(mobile=%)(homePhone=%)(ipPhone=%))"
    assert "(cn=%)" in text(settings, "cfg.xml")  # Grandstream's phone adds the "*" itself


@pytest.mark.parametrize(("zone", "expected"), [
    ("Europe/Berlin", "Europe/Berlin"),  # in the base station's list
    ("America/Toronto", "America/New_York"),  # not listed: the listed zone that keeps the same time
    ("Asia/Kolkata", None),  # nothing listed keeps +5:30: the key is left out
])
def test_gigaset_time_zone_only_from_its_own_list(tmp_path, zone, expected):
    root = ET.fromstring(text(make_settings(tmp_path, phone_timezone=zone), "7c2f80abcdef.xml"))
    params = {e.get("name"): e.get("value") for e in root.find("nvm")}
    assert params.get("DmGlobal.0.TimeZone") == expected
