"""The stock phone profiles against the running service, with real clients (one service for every check).

For every vendor, each boot file name is fetched with tftp-hpa's `tftp` and
`curl tftp://`, and over /prov/ with curl (HTTP and HTTPS), over 127.0.0.1
and ::1. Each answer must parse in its vendor's format and hold the NTP
address, the LDAP host, port, transport, base, user and password that
match the settings and the address the request came in on, and the time
zone (Europe/Berlin with DST; then Asia/Kolkata, set through the API).
Each vendor's name and number filters, filled in as a phone would, run
with ldapsearch using the provisioned credentials and transport, must find
exactly the expected contacts of a fixture address book. Then: the
administrator's files win over the stock ones, `phones export` gives
templates that serve the same bytes, and the Phones page shows the fetches
in headless Chromium.
"""

from __future__ import annotations

import base64
import csv
import io
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from support import REPO, ServiceProcess, free_port, free_udp_port
from support.tftp_clients import curl_tftp, tftp_hpa, url_host
from support.web import PASSWORD, PASSWORD_HASH

from greenservers.addressbook import AddressBook

HOSTS = ("127.0.0.1", "::1")
LDAP_PASSWORD = "phones-live-pw"
BASE = "dc=example,dc=com"
USER_DN = f"cn=phonebook,{BASE}"

BOOT_NAMES = {
    "yealink": ["y000000000000.boot", "001565abcdef.boot", "y000000000000.cfg", "y000000000066.cfg"],
    "snom": ["snomD785.htm"],
    "poly": ["000000000000.cfg", "greenservers-poly.cfg", "0004f2abcdef-phone.cfg"],
    "grandstream": ["cfg000b82abcdef.xml", "cfggrp2614.xml", "cfg.xml"],
    "fanvil": ["F0V00X600000.cfg"],
    "cisco": ["spa504G.cfg"],
    "panasonic": ["ConfigCommon.cfg", "ConfigKX-HDV130.cfg"],
    "gigaset": ["7c2f80abcdef.xml"],
}
# the files that carry time and phone book (the others are boot lists)
SETTINGS_FILES = {"y000000000000.cfg", "y000000000066.cfg", "snomD785.htm", "greenservers-poly.cfg", "cfg000b82abcdef.xml",
                  "cfggrp2614.xml", "cfg.xml", "F0V00X600000.cfg", "spa504G.cfg", "ConfigCommon.cfg", "ConfigKX-HDV130.cfg",
                  "7c2f80abcdef.xml"}
# what each vendor is told, by the rules of the issue: StartTLS where it can, else LDAPS where it can, else plain
TRANSPORTS = {"yealink": "starttls", "snom": "ldaps", "poly": "ldaps", "grandstream": "ldaps", "fanvil": "ldaps",
              "cisco": "plain", "panasonic": "ldaps", "gigaset": None}

CONTACTS = [  # first, last, display, company, work, mobile, home, extension
    ("Mark", "Meier", "", "", "+49 30 1234-5", "", "", ""),
    ("Anna", "Marx", "", "", "", "030 12345", "", ""),
    ("Omar", "Ali", "", "", "", "", "+49 (30) 123-45", ""),
    ("Zoe", "Zander", "", "Marvel GmbH", "030 123456", "", "", ""),
    ("Peter", "Schmidt", "Maria Desk", "", "", "", "", "4711"),
    ("MARTIN", "Lowe", "", "", "", "0049 30 12345", "", "12"),
    ("Bob", "Smith", "", "", "+1 555 0100", "", "", ""),
]
NAME_HITS = {"Mark Meier", "Anna Marx", "Zoe Zander", "Maria Desk", "MARTIN Lowe"}  # "mar" over cn, sn, givenName, displayName, o
NUMBER_HITS = {"Mark Meier", "Anna Marx", "Omar Ali", "MARTIN Lowe"}  # "+49 30 1234-5" in any formatting, national form too
# starting with it in either form (+49 30 12345... or 030 12345...): Zoe's 030 123456 too
NUMBER_PREFIX_HITS = NUMBER_HITS | {"Zoe Zander"}
TYPED_NAME, TYPED_NUMBER = "mar", "+49 30 1234-5"
# what a phone puts in place of its placeholder when the user types `typed`: most vendors document "%" as
# "starting with the entered prefix" (the phone adds the "*"); Cisco's $VALUE and Snom's "%" are the text alone
PHONE_SENDS = {"%": "{}*", "$VALUE": "{}"}
TEXT_ALONE = {"snom"}


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    directory = tmp_path_factory.mktemp("phones")
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["first_name", "last_name", "display_name", "company", "work", "mobile", "home", "extension"])
    writer.writerows(CONTACTS)
    book = AddressBook(directory / "data" / "addressbook.sqlite3")
    book.import_csv(out.getvalue())
    book.close()

    def both(port: int) -> str:
        return f"127.0.0.1:{port} [::1]:{port}"

    proc = ServiceProcess(directory, {
        "ip_tftp_port": both(free_udp_port()), "ip_ntp_port": both(free_udp_port()),
        "ip_http_port": both(free_port()), "ip_https_port": both(free_port()),
        "ip_ldap_port": both(free_port()), "ip_ldaps_port": both(free_port()),
        "ldap_base": BASE, "ldap_password": LDAP_PASSWORD, "phone_timezone": "Europe/Berlin",
        "admin_password_hash": PASSWORD_HASH, "tftp_max_per_client": 50,
        "ip_snmp_port": f"127.0.0.1:{free_udp_port()}", "snmp_trusted": "127.0.0.1",
    })
    proc.start()
    proc.fetched = {}  # (name, host) -> bytes, from the first test
    yield proc
    proc.stop()


CLIENTS = {
    "tftp-hpa": lambda svc, host, name, out: tftp_hpa(host, svc.port("ip_tftp_port"), "get", name, out),
    "curl-tftp": lambda svc, host, name, out: curl_tftp(host, svc.port("ip_tftp_port"), name, "-o", out),
    "curl-http": lambda svc, host, name, out: ["curl", "-sS", "-g", "-f", "-A", "greenservers-test", "-o", str(out),
                                               svc.url(f"/prov/{name}", host=host)],
    "curl-https": lambda svc, host, name, out: ["curl", "-sS", "-g", "-f", "--cacert", str(svc.cert_path), "-o", str(out),
                                                "-w", "%{content_type}", svc.url(f"/prov/{name}", "https", host=host)],
}


def fetch(svc, client: str, host: str, name: str, tmp_path: Path, stock: bool = True) -> bytes:
    out = tmp_path / f"{client}-{name}"
    out.unlink(missing_ok=True)
    result = subprocess.run(CLIENTS[client](svc, host, name, out), capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, (client, host, name, result.stderr)
    if client == "curl-https" and stock:  # the administrator's files are typed by their extension
        assert result.stdout.split(";")[0] in ("application/xml", "text/plain"), (name, result.stdout)
    return out.read_bytes()


# -- reading each vendor's format, the way its phone would --------------------------------------------------


def key_values(body: str, separator: str, line_end: str) -> dict[str, str]:
    values = {}
    for line in body.split(line_end)[1:]:
        if line and not line.startswith("#"):
            key, _, value = line.partition(separator)
            values[key.strip()] = value.strip()
    return values


def read_profile(vendor: str, body: bytes) -> dict:
    """ntp, ldap (host, port, transport, base, user, password, name and number filters) and tz, as the vendor names them."""
    text = body.decode("utf-8")
    ldap: dict = {}
    if vendor == "yealink":
        assert text.startswith("#!version:1.0.0.1\n")
        v = key_values(text, "=", "\n")
        if v.get("ldap.enable") == "1":
            ldap = {
                "host": v["ldap.host"],
                "port": int(v["ldap.port"]),
                "transport": ["plain", "starttls", "ldaps"][int(v["ldap.tls_mode"])],
                "base": v["ldap.base"],
                "user": v["ldap.user"],
                "password": v["ldap.password"],
                "name": v["ldap.name_filter"],
                "number": v["ldap.number_filter"],
                "placeholder": "%",
            }
        tz = (v["local_time.time_zone"], v["local_time.summer_time"], v.get("local_time.start_time"), v.get("local_time.end_time"))
        return {"ntp": v.get("local_time.ntp_server1"), "ldap": ldap, "tz": tz}
    if vendor == "panasonic":
        assert text.startswith("# Panasonic SIP Phone Standard Format File #\r\n") and text.endswith("\r\n\r\n")
        v = {k: val.strip('"') for k, val in key_values(text, "=", "\r\n").items()}
        if v.get("LDAP_ENABLE") == "Y":
            url = urlsplit(v["LDAP_SERVER"])
            ldap = {"host": url.hostname, "port": int(v["LDAP_SERVER_PORT"]), "transport": "ldaps" if url.scheme == "ldaps" else "plain",
                    "base": v["LDAP_BASEDN"], "user": v["LDAP_USERID"], "password": v["LDAP_PASSWORD"],
                    "name": v["LDAP_NAME_FILTER"], "number": v["LDAP_NUMB_FILTER"], "placeholder": "%"}
        return {"ntp": v.get("NTP_ADDR"), "ldap": ldap, "tz": (v["TIME_ZONE"], v["DST_ENABLE"], v["LOCAL_TIME_ZONE_POSIX"])}
    root = ET.fromstring(body)
    if vendor == "snom":
        s = {e.tag: e.text for e in root.find("phone-settings")}
        if "ldap_server" in s:
            ldap = {"host": s["ldap_server"], "port": int(s["ldap_port"]), "transport": "ldaps" if s["ldap_over_tls"] == "on" else "plain",
                    "base": s["ldap_base"], "user": s["ldap_username"], "password": s["ldap_password"],
                    "name": s["ldap_search_filter"], "number": s["ldap_number_filter"], "placeholder": "%"}
            assert s["ldap_number_filter_during_call"] == s["ldap_number_filter"]
        return {"ntp": s.get("ntp_server"), "ldap": ldap, "tz": s.get("timezone")}
    if vendor == "poly":
        t, d = root.find("tcpIpApp").attrib, root.find("dir")
        if d is not None:
            d = d.attrib
            url = urlsplit(d["dir.corp.address"])
            searchable = [d[f"dir.corp.attribute.{i}.name"] for i in range(1, 10)
                          if d.get(f"dir.corp.attribute.{i}.searchable") == "1"]
            ldap = {
                "host": url.hostname,
                "port": int(d["dir.corp.port"]),
                "transport": "ldaps" if d["dir.corp.transport"] == "TLS" else "plain",
                "base": d["dir.corp.baseDN"],
                "user": d["dir.corp.user"],
                "password": d["dir.corp.password"],
                # Poly has no filter keys: it searches its searchable attributes under the filter prefix
                "name": "(&" + d["dir.corp.filterPrefix"] + "(|" + "".join(f"({a}=%)" for a in searchable) + "))",
                "number": None,
                "placeholder": "%",
            }
        dst = t["tcpIpApp.sntp.daylightSavings.enable"]
        rules = tuple(t.get(f"tcpIpApp.sntp.daylightSavings.{k}.{f}") for k in ("start", "stop")
                      for f in ("month", "date", "dayOfWeek", "dayOfWeek.lastInMonth", "time"))
        return {"ntp": t.get("tcpIpApp.sntp.address"), "ldap": ldap, "tz": (t["tcpIpApp.sntp.gmtOffset"], dst, rules)}
    if vendor == "grandstream":
        p = {e.tag: e.text for e in root.find("config")}
        if "P8020" in p:
            ldap = {"host": p["P8020"], "port": int(p["P8021"]), "transport": "ldaps" if p["P8037"] == "1" else "plain",
                    "base": p["P8022"], "user": p["P8023"], "password": p["P8024"], "name": p["P8026"], "number": p["P8025"],
                    "placeholder": "%"}
        return {"ntp": p.get("P30"), "ldap": ldap, "tz": (p["P64"], p["P246"])}
    if vendor == "fanvil":
        assert root.tag == "sysConf" and root.find("Version").text == "2.0000000000"
        date = {e.tag: e.text for e in root.find("phone/date")}
        entry = root.find("phone/ldap")
        if entry is not None:
            e = {x.tag: x.text for x in entry}
            ldap = {"host": e["Server"], "port": int(e["port"]), "transport": "ldaps" if e["UseSSL"] == "1" else "plain",
                    "base": e["Base"], "user": e["Username"], "password": e["Password"], "name": e["NameFilter"],
                    "number": e["NumberFilter"], "placeholder": "%"}
        tz = (date["TimeZone"], date["Enable_DST"], date.get("DSTStartMon"), date.get("DSTStartWeek"), date.get("DSTStartWday"),
              date.get("DSTStartHour"), date.get("DSTEndMon"), date.get("DSTEndHour"))
        return {"ntp": date.get("SNTPServer"), "ldap": ldap, "tz": tz}
    if vendor == "cisco":
        assert root.tag == "flat-profile"
        c = {e.tag: e.text for e in root}
        if c["LDAP_Dir_Enable"] == "Yes":
            host, _, port = c["LDAP_Server"].rpartition(":")
            last_attr, _, last_filter = c["LDAP_Last_Name_Filter"].partition(":")
            number_attr, _, number_filter = c["LDAP_Item_3_Filter"].partition(":")
            assert (last_attr, number_attr) == ("sn", "telephoneNumber")
            ldap = {"host": host, "port": int(port), "transport": "plain", "base": c["LDAP_Search_Base"], "user": c["LDAP_Client_DN"],
                    "password": c["LDAP_Password"], "name": last_filter, "number": number_filter, "placeholder": "$VALUE"}
        return {"ntp": c.get("Primary_NTP_Server"), "ldap": ldap,
                "tz": (c["Time_Zone"], c["Daylight_Saving_Time_Enable"], c.get("Daylight_Saving_Time_Rule"))}
    if vendor == "gigaset":
        assert root.tag == "provisioning" and root.get("productID") == "e2"
        p = {e.get("name"): e.get("value") for e in root.find("nvm")}
        return {"ntp": p.get("DmGlobal.0.NtpServer"), "ldap": {}, "tz": p.get("DmGlobal.0.TimeZone")}
    raise AssertionError(vendor)


BERLIN = {
    "yealink": ("+1", "1", "3/5/7/2", "10/5/7/3"),
    "snom": "GER+1",
    "poly": ("3600", "1", ("3", "1", "1", "1", "2", "10", "1", "1", "1", "3")),
    "grandstream": ("customize", "CET-1CEST-2,M3.5.0/02:00:00,M10.5.0/03:00:00"),
    "fanvil": ("4", "2", "3", "5", "0", "2", "10", "3"),
    "cisco": ("GMT+01:00", "Yes", "start=3/-1/7/2:0:0;end=10/-1/7/3:0:0;save=1:0:0"),
    "panasonic": ("60", "Y", "CET-1CEST-2,M3.5.0/02:00:00,M10.5.0/03:00:00"),
    "gigaset": "Europe/Berlin",
}
KOLKATA = {
    "yealink": ("+5:30", "0", None, None),
    "snom": "IND+5.5",
    "poly": ("19800", "0", (None,) * 10),
    "grandstream": ("customize", "IST-5:30"),
    "fanvil": ("22", "0", None, None, None, None, None, None),
    "cisco": ("GMT+05:30", "No", None),
    "panasonic": ("330", "N", "IST-5:30"),
    "gigaset": None,  # not in the base station's list, and no listed zone keeps +5:30
}


def check_profile(svc, vendor: str, name: str, body: bytes, host: str, zone: dict) -> dict:
    if name not in SETTINGS_FILES:
        return check_boot_list(vendor, name, body)
    profile = read_profile(vendor, body)
    assert profile["ntp"] == host, (vendor, name)  # the NTP server is on: the address the request came in on
    assert profile["tz"] == zone[vendor], (vendor, name)
    transport = TRANSPORTS[vendor]
    if transport is None:
        assert profile["ldap"] == {}
        return profile
    ldap = profile["ldap"]
    port = svc.port("ip_ldaps_port" if transport == "ldaps" else "ip_ldap_port")
    assert (ldap["host"], ldap["port"], ldap["transport"]) == (host, port, transport), (vendor, name)
    assert (ldap["base"], ldap["user"], ldap["password"]) == (BASE, USER_DN, LDAP_PASSWORD), (vendor, name)
    return profile


def check_boot_list(vendor: str, name: str, body: bytes) -> dict:
    text = body.decode("utf-8")
    if vendor == "yealink":
        assert text.startswith("#!version:1.0.0.1\n") and 'include:config "y000000000000.cfg"' in text
        assert ('include:config "001565abcdef.cfg"' in text) == name.startswith("001565")
    elif name == "000000000000.cfg":
        app = ET.fromstring(body)
        assert app.tag == "APPLICATION" and app.get("CONFIG_FILES") == "[PHONE_MAC_ADDRESS]-phone.cfg, greenservers-poly.cfg"
    else:
        assert ET.fromstring(body).tag == "polycomConfig" and len(ET.fromstring(body)) == 0
    return {}


# -- the tests -------------------------------------------------------------------------------------------------


@pytest.mark.real_client
def test_every_boot_file_over_every_client_and_family(svc, tmp_path):
    for vendor, names in BOOT_NAMES.items():
        for name in names:
            for host in HOSTS:
                answers = {client: fetch(svc, client, host, name, tmp_path) for client in CLIENTS}
                first = answers["tftp-hpa"]
                assert all(body == first for body in answers.values()), (vendor, name, host)  # the same bytes either way
                check_profile(svc, vendor, name, first, host, BERLIN)
                svc.fetched[(name, host)] = first


@pytest.mark.parametrize("host", HOSTS)
def test_a_request_without_a_sane_host_is_told_the_address_it_came_to(svc, host):
    """HTTP/1.0 without a Host made the profile name "localhost"; a Host with an IPv6 zone ("%" and any text
    after it) is none a phone can use. Either way the profile names the address the connection came to."""
    import socket

    port = svc.port("ip_http_port")
    for head in (b"GET /prov/y000000000000.cfg HTTP/1.0\r\n\r\n",
                 b"GET /prov/y000000000000.cfg HTTP/1.1\r\nHost: [fe80::1%25x]\r\nConnection: close\r\n\r\n"):
        with socket.create_connection((host, port), timeout=10) as sock:
            sock.sendall(head)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        status, _, body = answer.partition(b"\r\n\r\n")
        assert status.startswith(b"HTTP/1.1 200"), status
        assert read_profile("yealink", body)["ntp"] == host and b"fe80" not in body and b"localhost" not in body


def ldapsearch(svc, ldap: dict, host: str, search: str) -> set[str]:
    scheme = "ldaps" if ldap["transport"] == "ldaps" else "ldap"
    args = ["ldapsearch", "-x", "-LLL", "-H", f"{scheme}://{url_host(host)}:{ldap['port']}", "-D", ldap["user"], "-w", ldap["password"],
            "-b", ldap["base"], search, "cn"]
    if ldap["transport"] == "starttls":
        args.insert(2, "-ZZ")
    env = dict(os.environ, LDAPTLS_CACERT=str(svc.cert_path), LDAPTLS_REQCERT="demand")
    result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=30)
    assert result.returncode == 0, (search, result.stderr)
    names = set()
    for line in result.stdout.splitlines():
        if line.startswith("cn: "):
            names.add(line[4:])
        elif line.startswith("cn:: "):
            names.add(base64.b64decode(line[5:]).decode())
    return names


@pytest.mark.real_client
@pytest.mark.parametrize("host", HOSTS)
def test_each_vendors_filters_find_the_expected_contacts_with_its_credentials(svc, host):
    assert svc.fetched, "needs the fetches of the first test"
    checked = set()
    for vendor, names in BOOT_NAMES.items():
        for name in names:
            if name not in SETTINGS_FILES or TRANSPORTS[vendor] is None:
                continue
            ldap = read_profile(vendor, svc.fetched[(name, host)])["ldap"]
            sends = "{}" if vendor in TEXT_ALONE else PHONE_SENDS[ldap["placeholder"]]
            typed_name = ldap["name"].replace(ldap["placeholder"], sends.format(TYPED_NAME))
            expected = {"Mark Meier", "Anna Marx", "MARTIN Lowe"} if vendor == "poly" else NAME_HITS  # Poly: sn and givenName
            assert ldapsearch(svc, ldap, host, typed_name) == expected, (vendor, name, typed_name)
            if ldap["number"] is not None:
                typed_number = ldap["number"].replace(ldap["placeholder"], sends.format(TYPED_NUMBER))
                expected = NUMBER_PREFIX_HITS if sends.endswith("*") else NUMBER_HITS
                assert ldapsearch(svc, ldap, host, typed_number) == expected, (vendor, name, typed_number)
            checked.add(vendor)
    assert checked == {v for v, t in TRANSPORTS.items() if t}


@pytest.mark.real_client
def test_an_incoming_number_looked_up_as_it_came_finds_it_in_any_formatting(svc):
    ldap = read_profile("snom", svc.fetched[("snomD785.htm", "127.0.0.1")])["ldap"]
    assert ldapsearch(svc, ldap, "127.0.0.1", ldap["number"].replace("%", TYPED_NUMBER)) == NUMBER_HITS


def set_setting(svc, **changes) -> None:
    response = requests.put(
        svc.url("/api/settings/ports", "https"), json=changes, auth=("admin", PASSWORD), verify=str(svc.cert_path), timeout=10
    )
    assert response.status_code == 200, response.text


@pytest.mark.real_client
def test_kolkata_without_daylight_saving(svc, tmp_path):
    response = requests.put(svc.url("/api/settings/ports", "https"), json={"phone_timezone": "Mars/Olympus"}, auth=("admin", PASSWORD),
                            verify=str(svc.cert_path), timeout=10)
    assert response.status_code == 400 and "Mars/Olympus" in response.json()["errors"]["phone_timezone"]
    set_setting(svc, phone_timezone="Asia/Kolkata")
    try:
        for vendor, names in BOOT_NAMES.items():
            for name in names:
                check_profile(svc, vendor, name, fetch(svc, "tftp-hpa", "127.0.0.1", name, tmp_path), "127.0.0.1", KOLKATA)
                check_profile(svc, vendor, name, fetch(svc, "curl-https", "::1", name, tmp_path), "::1", KOLKATA)
    finally:
        set_setting(svc, phone_timezone="Europe/Berlin")


@pytest.mark.real_client
def test_the_administrators_files_win_and_mac_templates_hold(svc, tmp_path):
    root = svc.directory / "data" / "tftp"
    root.mkdir(exist_ok=True)
    mine = {"spa504G.cfg": "<flat-profile><!-- mine --></flat-profile>\n",
            "cfg.xml.j2": "<mine server='{{ server }}' tz='{{ tz.posix_full }}'/>\n",
            "{mac}.boot.j2": "#!version:1.0.0.1\n# mine {{ mac }}\n"}
    for name, text in mine.items():
        (root / name).write_text(text)
    try:
        for host in HOSTS:
            assert fetch(svc, "curl-tftp", host, "spa504G.cfg", tmp_path).decode() == mine["spa504G.cfg"]
            assert fetch(svc, "curl-http", host, "cfg.xml", tmp_path).decode() == \
                f"<mine server='{host}' tz='CET-1CEST-2,M3.5.0/02:00:00,M10.5.0/03:00:00'/>\n"
            assert fetch(svc, "tftp-hpa", host, "001565ABCDEF.boot", tmp_path).decode() == "#!version:1.0.0.1\n# mine 001565abcdef\n"
            assert fetch(svc, "tftp-hpa", host, "y000000000000.boot", tmp_path) == svc.fetched[("y000000000000.boot", host)]  # stock still
            # a Grandstream phone applies the first of cfg<mac>.xml, cfg<model>.xml, cfg.xml it gets: not the stock ones now
            for name in ("cfg000b82abcdef.xml", "cfggrp2614.xml"):
                refused = subprocess.run(CLIENTS["curl-tftp"](svc, host, name, tmp_path / "refused"), capture_output=True)
                assert refused.returncode != 0 and not (tmp_path / "refused").exists(), (host, name)
    finally:
        for name in mine:
            (root / name).unlink()
    assert fetch(svc, "curl-http", "127.0.0.1", "cfg.xml", tmp_path) == svc.fetched[("cfg.xml", "127.0.0.1")]


@pytest.mark.real_client
def test_exported_templates_serve_the_same_bytes(svc, tmp_path):
    root = svc.directory / "data" / "tftp"
    before = set(root.iterdir())
    result = subprocess.run([sys.executable, "-m", "greenservers", "phones", "export"], cwd=REPO, capture_output=True, text=True,
                            env=dict(os.environ, GREENSERVERS_CONFIG=str(svc.config_path)), timeout=60)
    assert result.returncode == 0, result.stderr
    exported = set(root.iterdir()) - before
    try:
        assert len(exported) > 40
        for (name, host), stock in svc.fetched.items():
            assert fetch(svc, "curl-tftp", host, name, tmp_path) == stock, name
            assert fetch(svc, "curl-https", host, name, tmp_path, stock=False) == stock, name
    finally:
        for path in exported:
            path.unlink()


@pytest.mark.real_client
def test_the_phones_page_shows_the_fetches_in_chromium(svc, tmp_path):
    from selenium.webdriver.common.by import By
    from support.browser import ARTIFACTS, click_and_wait_for_new_page, screenshot, set_field, start_chromium, submit_login, wait_for

    api = requests.get(svc.url("/api/phones", "https"), auth=("admin", PASSWORD), verify=str(svc.cert_path), timeout=10).json()
    macs = {phone["mac"] for phone in api["phones"]}
    assert {"001565abcdef", "0004f2abcdef", "000b82abcdef", "7c2f80abcdef"} <= macs
    assert api["seen_last_24h"] == api["total"] == len(api["phones"])
    sensors = requests.get(svc.url("/api/sensors", "https"), auth=("admin", PASSWORD), verify=str(svc.cert_path), timeout=10).json()
    assert {s["name"]: s["value"] for s in sensors["sensors"]}["phones_seen_24h"] == len(api["phones"])
    snmp = subprocess.run(["snmpget", "-v1", "-c", "public", "-Oqv", f"127.0.0.1:{svc.port('ip_snmp_port')}", "1.3.6.1.4.1.32473.1.1.70.0"],
                          capture_output=True, text=True, timeout=30)
    assert snmp.stdout.strip() == str(len(api["phones"])), snmp.stderr

    driver = start_chromium(tmp_path / "chromium-profile")
    try:
        driver.get(svc.url("/phones", "https"))
        wait_for(driver, (By.ID, "password"))
        set_field(driver, "password", PASSWORD)
        submit_login(driver)
        wait_for(driver, (By.ID, "phones"))
        grandstream = driver.find_element(By.ID, "phone-000b82abcdef")
        assert "Grandstream GXP/GRP" in grandstream.text and "got its configuration" in grandstream.text
        assert "cfg000b82abcdef.xml" in grandstream.text and "served" in grandstream.text
        yealink = driver.find_element(By.ID, "phone-001565abcdef").text
        assert "001565abcdef.boot" in yealink and "tftp" in yealink and "https" in yealink
        page = driver.find_element(By.ID, "phones").text
        assert "Snom D7xx D785" in page and "Cisco SPA5xx SPA504G" in page and "Panasonic KX-HDV" in page
        ARTIFACTS.mkdir(exist_ok=True)
        screenshot(driver, ARTIFACTS / "phones-page.png", 1100)
        screenshot(driver, ARTIFACTS / "phones-page-phone.png", 390, 844)
        assert driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1"), "page wider than a phone"
        # forget one phone with the page's own form (CSRF token included)
        driver.set_window_size(1100, 900)
        form_button = driver.find_element(By.CSS_SELECTOR, "#phone-7c2f80abcdef button[type=submit]")
        click_and_wait_for_new_page(driver, form_button)
        assert driver.find_elements(By.ID, "phone-7c2f80abcdef") == []
        assert "Forgotten" in driver.find_element(By.CSS_SELECTOR, ".flash").text
    finally:
        driver.quit()


@pytest.mark.real_client
def test_the_record_of_phones_survives_a_restart(svc):
    def phones():
        body = requests.get(svc.url("/api/phones", "https"), auth=("admin", PASSWORD), verify=str(svc.cert_path), timeout=10).json()
        return sorted((p["id"], p["last_seen"], len(p["files"])) for p in body["phones"])

    before = phones()
    assert before and "7c2f80abcdef" not in {p[0] for p in before}  # forgotten on the page
    svc.stop()
    assert (svc.directory / "data" / "phones.sqlite3").stat().st_mode & 0o777 == 0o600
    svc.start()
    assert phones() == before
    snmp = subprocess.run(["snmpget", "-v1", "-c", "public", "-Oqv", f"127.0.0.1:{svc.port('ip_snmp_port')}", "1.3.6.1.4.1.32473.1.1.70.0"],
                          capture_output=True, text=True, timeout=30)
    assert snmp.stdout.strip() == str(len(before)), snmp.stderr
