"""The stock provisioning profiles: which file names each vendor's phones ask for, and what we answer.

One declarative table, VENDORS: per vendor, the files it asks for at boot
(a pattern on the requested name, the template under templates/, its media
type, the names `phones export` writes it as), the per-phone files its
phones ask for that the administrator writes (`own_files`), how its phones
reach the address book (LDAP transports they support, the placeholder their
filters use, the bind user's form), how a file name and an HTTP User-Agent
name the model, and the keys and names that no vendor document we could read
confirms (`unconfirmed`; see also the comments in the templates).
`phone_file(name)` says which phone a name phones ask for belongs to (the
record of phones, greenservers.provisioning.phones.seen, keeps no other).

greenservers.provisioning.files asks `stock_match(name)` only after the
administrator's file, NAME.j2 and {mac} template were not found, so an
administrator's file always wins. The templates get the usual provisioning
variables plus `tz` (the `phone_timezone` in every vendor's form,
greenservers.provisioning.phones.timezones) and `phonebook` (per vendor: server, port,
transport, base, user, password and filters, from the live settings and the
address the request came in on), so an exported template renders the same
bytes as the stock one.

What the files set: the NTP server, the time zone with its DST rules, the
LDAP phone book (enabled, with the lookup of incoming callers where the
vendor has it). Nothing else: no SIP accounts, no firmware, nothing that
would fight the administrator's own files.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path

from . import timezones

TEMPLATES = Path(__file__).resolve().parent / "templates"
MAC = r"(?P<mac>[0-9A-Fa-f]{12})"

# Attributes our LDAP server answers (greenservers.proto.ldap): names match case-insensitively,
# numbers regardless of formatting ("+49 30 1234-5" = "030 12345").
NAME_ATTRIBUTES = ("cn", "sn", "givenName", "displayName", "o")
NUMBER_ATTRIBUTES = ("telephoneNumber", "mobile", "homePhone", "ipPhone")
MAX_HITS = 50


def name_filter(placeholder: str, phone_adds_wildcard: bool) -> str:
    """Names starting with what the user typed. Where the vendor documents `%` as "starting with the
    entered prefix", the phone puts "typed*" in its place: a "*" of ours would make "typed**", which
    OpenLDAP's client library refuses as a bad filter. Cisco's $VALUE and Snom's % are the text alone."""
    wildcard = "" if phone_adds_wildcard else "*"
    return "(|" + "".join(f"({a}={placeholder}{wildcard})" for a in NAME_ATTRIBUTES) + ")"


def number_filter(placeholder: str) -> str:
    """The number that was typed or came in, in any formatting (our server compares numbers without
    spaces, dashes and brackets, "+" as "00"; equal numbers also national = international form)."""
    return "(|" + "".join(f"({a}={placeholder})" for a in NUMBER_ATTRIBUTES) + ")"


@dataclass(frozen=True)
class StockFile:
    pattern: str  # full match on the requested name (no folders); a (?P<mac>) group makes it per phone
    template: str  # under templates/
    media_type: str
    export_names: tuple[str, ...]  # what `phones export` writes (NAME.j2), each found by the usual lookup
    model_group: str = ""  # the pattern's group that names the model, if any

    def __post_init__(self):
        object.__setattr__(self, "regex", re.compile(self.pattern))


@dataclass(frozen=True)
class Vendor:
    key: str
    label: str
    files: tuple[StockFile, ...]
    transports: tuple[str, ...]  # LDAP transports the phones can use: "starttls", "ldaps", "plain"; () = no phone book
    own_files: tuple[str, ...] = ()  # full-match patterns (a (?P<mac>) group, maybe (?P<model>)) of the per-phone files
    # the phones ask for that are the administrator's to write (SIP accounts): not stock, but names that mean a phone
    placeholder: str = "%"  # what the phone replaces by what was typed
    phone_adds_wildcard: bool = True  # "%" becomes "typed*" (the vendors' "starting with the entered prefix")
    user_agent: str = ""  # regex with a (?P<model>) group
    models: dict = field(default_factory=dict)  # model code in a file name -> model
    confirmed: tuple[str, ...] = ()  # what a vendor document confirms, and which
    unconfirmed: tuple[str, ...] = ()
    first_wins: bool = False  # the phone asks for `files` in their order and applies only the first it gets

    def __post_init__(self):
        object.__setattr__(self, "ua_regex", re.compile(self.user_agent) if self.user_agent else None)
        object.__setattr__(self, "own_regexes", tuple(re.compile(p) for p in self.own_files))


XML, TEXT = "application/xml", "text/plain"
MAC_LOWER, MAC_UPPER = r"(?P<mac>[0-9a-f]{12})", r"(?P<mac>[0-9A-F]{12})"

YEALINK_MODELS = {"68": "T41S", "67": "T42S", "66": "T46S", "65": "T48S", "116": "T42U", "107": "T43U", "108": "T46U",
                  "109": "T48U", "95": "T53", "96": "T54W", "97": "T57W"}
SNOM_MODELS = ("D710", "D712", "D713", "D715", "D717", "D725", "D735", "D745", "D765", "D785")
GRANDSTREAM_MODELS = ("gxp1610", "gxp1615", "gxp1620", "gxp1625", "gxp1628", "gxp1630", "gxp2130", "gxp2135", "gxp2140",
                      "gxp2160", "gxp2170", "grp2601", "grp2602", "grp2603", "grp2604", "grp2612", "grp2613", "grp2614",
                      "grp2615", "grp2616", "grp2624", "grp2634", "grp2636", "grp2650", "grp2670")
# F0V00X200000 is the X210's (the X2 asks for f0X2hw1.100): wazo-provd-plugins plugins/wazo_fanvil/serie_x/entry.py
FANVIL_MODELS = {"f0X2hw1.100": "X2", "F0V00X200000": "X210", "F0V00X300000": "X3", "f0X3shw1.100": "X3S",
                 "f0X3sghw1.100": "X3SG", "f0X4hw1.100": "X4", "f0X5hw1.100": "X5", "F0V00X5S0000": "X5S",
                 "F0V00X600000": "X6", "F0000X600000": "X6V2", "F0V00X700000": "X7", "F0V0X7C00000": "X7C"}
CISCO_MODELS = ("301", "303", "501G", "502G", "504G", "508G", "509G", "512G", "514G", "525G", "525G2")
PANASONIC_MODELS = ("KX-HDV100", "KX-HDV130", "KX-HDV230", "KX-HDV330", "KX-HDV340", "KX-HDV430", "KX-HDV800")

VENDORS: tuple[Vendor, ...] = (
    Vendor(
        "yealink", "Yealink T4x/T5x",
        files=(
            StockFile(r"y000000000000\.boot", "yealink/boot.j2", TEXT, ("y000000000000.boot",)),
            StockFile(MAC + r"\.boot", "yealink/boot.j2", TEXT, ("{mac}.boot",)),
            # the common file of every model (y000000000000.cfg and the per-model y0000000000XX.cfg)
            StockFile(r"y0{9}(?P<model>\d{3})\.cfg", "yealink/common.cfg.j2", TEXT, ("y{mac}.cfg",), "model"),
        ),
        transports=("starttls", "ldaps", "plain"),
        own_files=(MAC_LOWER + r"\.cfg",),
        user_agent=r"Yealink\s+(?:SIP[-_])?(?P<model>[A-Z]+\d+[A-Z]*)",
        models={k.zfill(3): v for k, v in YEALINK_MODELS.items()},
        confirmed=("local_time.summer_time 0/1/2, dst_time_type 1 (by week), start_time/end_time month/week(5 = last)/"
                   "weekday(1 Monday .. 7 Sunday)/hour, offset_time in minutes, time_zone as +h[:mm]: Yealink Administrator's "
                   "Guide for SIP-T2/T4/T5 Series (DST configuration, AutoDST attributes)",
                   "name filter % = the entered prefix: Yealink Administrator's Guide (LDAP)",
                   "local_time.ntp_server1, ldap.enable/host/port/base/user/password/version/name_filter/number_filter/"
                   "name_attr/numb_attr/display_name/max_hits/ldap_sort/call_in_lookup/call_out_lookup, "
                   "directory_setting.ldap.enable, search_in_dialing.ldap.enable: fusionpbx/fusionpbx "
                   "resources/templates/provision/yealink/t46u/y000000000108.cfg (Yealink's common-file layout) and "
                   "nethesis/tancredi data/templates/yealink.tmpl",
                   "ldap.tls_mode 0 plain, 1 StartTLS, 2 LDAPS: nethesis/tancredi data/templates/yealink.tmpl",
                   "boot file of include:config lines: fusionpbx/fusionpbx resources/templates/provision/yealink/t46u/"
                   "y000000000000.boot",
                   "User-Agent \"Yealink SIP-<model> <version> <MAC>\": wazo-platform/wazo-provd-plugins "
                   "plugins/wazo_yealink/common/common.py (its User-Agent patterns and examples)"),
    ),
    Vendor(
        "snom", "Snom D7xx",
        files=(StockFile(r"snom(?P<model>[Dd]7\d\d)\.htm", "snom/settings.xml.j2", XML,
                         tuple(f"snom{m}.htm" for m in SNOM_MODELS), "model"),),
        transports=("ldaps", "plain"),
        phone_adds_wildcard=False,  # "%" is the text alone: Snom's own examples write "(cn=%*)" for "beginning with"
        own_files=(r"snom(?P<model>[Dd]7\d\d)-" + MAC + r"\.htm", MAC_UPPER + r"\.xml"),
        user_agent=r"snom(?P<model>D\d{3}\w*)",
        confirmed=("filters with %, the filters during call (10.1.27 and later): service.snom.com, LDAP Directory",
                   "% replaced by the text alone, a name filter of prefixes written (cn=%*): service.snom.com, "
                   "ldap_search_filter; nethesis/tancredi scripts/upgrade.d/012.php (its Snom filter fix)",
                   "<settings><phone-settings> with `timezone` codes such as GER+1, USA-5, ITA+1: service.snom.com, "
                   "<phone-settings> tag and Configuration files (also Gigaset's wiki for its Snom-format desk phones)",
                   "ntp_server, ldap_server/port/base/username/password, ldap_over_tls on for LDAPS, ldap_search_filter, "
                   "ldap_number_filter, space-separated ldap_name_attributes / ldap_number_attributes, ldap_display_name "
                   "as %attr: nethesis/tancredi data/templates/snom.tmpl; ldap_max_hits, ldap_sort_results on/off: "
                   "fusionpbx/fusionpbx resources/templates/provision/snom/720/{$mac}.xml",
                   "User-Agent with \"snom<model>-SIP <version>\": wazo-platform/wazo-provd-plugins "
                   "plugins/wazo_snom/common/common.py"),
        unconfirmed=("which code a zone gets: 72 of our 98 codes appear in nethesis/tancredi data/templates/snom.macros, "
                     "which picks a neighbour's code of the same offset for the others (AUT+1, CHE+1 ...)",),
    ),
    Vendor(
        "poly", "Poly VVX (UC Software)",
        files=(
            StockFile(r"000000000000\.cfg", "poly/master.cfg.j2", XML, ("000000000000.cfg",)),
            StockFile(r"greenservers-poly\.cfg", "poly/site.cfg.j2", XML, ("greenservers-poly.cfg",)),
            StockFile(MAC + r"-phone\.cfg", "poly/phone.cfg.j2", XML, ("{mac}-phone.cfg",)),
        ),
        transports=("ldaps", "plain"),
        own_files=(MAC + r"\.cfg",),
        user_agent=r"Polycom[A-Za-z]*-(?P<model>[A-Za-z]+_\d+)",
        confirmed=("tcpIpApp.sntp.address, gmtOffset in seconds, daylightSavings.enable / fixedDayEnable / start|stop.month, "
                   ".date (1, 8, 15, 22 = n-th weekday), .dayOfWeek (1 Sunday .. 7 Saturday), .dayOfWeek.lastInMonth, "
                   ".time in hours: Polycom SoundPoint IP / UC Software Administrator's Guides",
                   "tcpIpApp.sntp.address.overrideDHCP: wazo-platform/wazo-provd-plugins plugins/wazo_polycom/common/templates/"
                   "base.tpl and Polycom's own sip.cfg (plugins/wazo_polycom/v3_1_6/var/tftpboot/sip.cfg there)",
                   "dir.corp.address/port/transport/baseDN/scope/filterPrefix/user/password, dir.corp.attribute.N.name/label/"
                   "type (first_name, last_name)/filter/sticky/searchable, dir.corp.vlv.allow/sortOrder: Polycom's own sip.cfg "
                   "(fusionpbx/fusionpbx resources/templates/provision/polycom/650/sip.cfg, wazo-platform/wazo-provd-plugins "
                   "plugins/wazo_polycom/v3_1_6/var/tftpboot/sip.cfg)",
                   "feature.corporateDirectory.enabled 0/1, dir.corp.address as an ldap:// URL: excaliburpartners/polycomphones "
                   "views/polycomphones_corporate.php",
                   "attribute type phone_number for telephoneNumber, mobile and homePhone: the public gist "
                   "rpfilomeno/d641fabad8ccdb08e7f7 (a VVX directory.cfg)",
                   "User-Agent \"FileTransport Polycom<family>-<model>-UA/<version>\": wazo-platform/wazo-provd-plugins "
                   "plugins/wazo_polycom/common/common.py"),
        unconfirmed=("dir.corp.transport TLS meaning LDAPS (not StartTLS): no source says which",
                     "a missing file in CONFIG_FILES (hence the stock per-phone file)"),
    ),
    Vendor(
        "grandstream", "Grandstream GXP/GRP",
        # the phone applies the first of these it gets: the stock cfg<mac>.xml and cfg<model>.xml step aside when the
        # administrator has a cfg<model>.xml or cfg.xml (first_wins), else the phone would stop before it
        files=(
            StockFile(r"cfg" + MAC + r"\.xml", "grandstream/config.xml.j2", XML, ("cfg{mac}.xml",)),
            StockFile(r"cfg(?P<model>g[xr]p\d{4}\w*)\.xml", "grandstream/config.xml.j2", XML,
                      tuple(f"cfg{m}.xml" for m in GRANDSTREAM_MODELS), "model"),
            StockFile(r"cfg\.xml", "grandstream/config.xml.j2", XML, ("cfg.xml",)),
        ),
        transports=("ldaps", "plain"),
        own_files=(r"cfg" + MAC_LOWER + r"(?:\.bin)?",),
        first_wins=True,
        user_agent=r"Grandstream Model HW (?P<model>[A-Z]+\d+\w*)",
        confirmed=("LDAP or LDAPS (no StartTLS), server, port, base, user, password, name and number filters with % as the "
                   "entered prefix, version 3, name and number attributes, display as %attr fields (up to 3): Grandstream "
                   "GRP26xx, GXV, DP750 Administration Guides", "self-defined time zone as a POSIX string: Grandstream UCM guide",
                   "P30 NTP server, P144 (0: DHCP option 42 does not override), P64 = customize, P246 self-defined zone "
                   "(at most 64 characters; Berlin written exactly as ours, explicit DST offset and rule times), P143 "
                   "(0: DHCP option 2 does not override), P8037 0 LDAP / 1 LDAPS, P8020-P8024 server/port/base/user/password, "
                   "P8025 number filter, P8026 name filter, P8027 3 = version 3, P8028/P8029 space-separated name/number "
                   "attributes, P8030 display, P8031 max hits, P8032 timeout (0-180 s), P8033 sort, P8034 lookup of outgoing "
                   "and P8035 of incoming calls, P1526 = 1 phone book key opens the LDAP search: Grandstream's own config "
                   "templates as kept in fusionpbx/fusionpbx resources/templates/provision/grandstream/ (grp2614/{$mac}.xml "
                   "names each P-value; gxp16xx and gxp21xx give the numeric values)",
                   "the phone asks for cfg<mac>.xml, then (if that fails) cfg<model>.xml, then cfg.xml, and applies the first "
                   "it gets (fallbacks, not layers; the binary cfg<mac> comes before them all): Grandstream SIP Device "
                   "Provisioning Guide (documentation.grandstream.com/knowledge-base/sip-device-provisioning-guide/)",
                   "User-Agent \"Grandstream Model HW <model> [V<hw>] SW <version> DevId <MAC>\": wazo-platform/"
                   "wazo-provd-plugins plugins/wazo_grandstream/common/common.py"),
    ),
    Vendor(
        "fanvil", "Fanvil X",
        files=(StockFile(r"(?P<model>F0V00X\w{6}|F0000X\w{6}|F0V0X7C\w{5}|f0X\w{1,3}hw\d\.\d{3})\.cfg",
                         "fanvil/common.xml.j2", XML, tuple(f"{name}.cfg" for name in FANVIL_MODELS), "model"),),
        transports=("ldaps", "plain"),
        own_files=(MAC_LOWER + r"\.cfg",),
        user_agent=r"Fanvil (?P<model>[A-Z]+\d+[A-Z0-9]*)",
        models=FANVIL_MODELS,
        confirmed=("<sysConf><phone><date>: EnableSNTP, SNTPServer, TimeZone, TimeZoneName, Enable_DST 0 off / 1 automatic "
                   "/ 2 manual, DST_Fixed_Type 2 = by week, DSTMinOffset, DST{Start,End}{Mon,Week,Wday,Hour} with week 5 for "
                   "the last week and Wday 0 Sunday: fusionpbx/fusionpbx resources/templates/provision/fanvil/x6u/{$mac}.cfg "
                   "(firmware 2.2.10 and later) and app/fanvil/app_config.php; the same week/weekday values in "
                   "nethesis/tancredi data/templates/fanvil-X5.tmpl",
                   "TimeZone in quarter hours named UTC+h (Europe/Rome: 4, UTC+1; UTC: 0): nethesis/tancredi "
                   "data/templates/fanvil.macros (tz_map)",
                   "<phone><ldap index=\"1\">: Title, Server, port, Base, UseSSL (0 plain, 1 LDAPS, 2 StartTLS), Version 3, "
                   "Authenticate 3 with a user and password, Username, Password, TelAttr, MobileAttr, OtherAttr, NameAttr, "
                   "SortAttr, Displayname without %, NameFilter/NumberFilter with %, MaxHits, InCallSearch, OutCallSearch: "
                   "fusionpbx/fusionpbx resources/templates/provision/fanvil/x6u/{$mac}.cfg, nethesis/tancredi "
                   "data/templates/fanvil-X5.tmpl",
                   "per-model file names (F0V00X200000 the X210's, f0X2hw1.100 the X2's, F0V00X300000, f0X3shw1.100, "
                   "f0X3sghw1.100, f0X4hw1.100, f0X5hw1.100, F0V00X5S0000, F0V00X600000, F0000X600000) and the User-Agent "
                   "\"Fanvil <model> <version> <mac>\": wazo-platform/wazo-provd-plugins plugins/wazo_fanvil/serie_x/entry.py "
                   "and common/common.py"),
        unconfirmed=("DST{Start,End}Min (the sources give the hour only; the older flat format had DST_Start_Min)",
                     "TimeZoneName for half-hour zones (UTC+5:30)",
                     "the file names of the X7 and X7C (F0V00X700000, F0V0X7C00000)",
                     "UseSSL 2 = StartTLS (one project only, nethesis/tancredi; unused while transports lacks starttls)",
                     "Enable_DST / DST_Fixed_Type: wazo-provd-plugins writes EnableDST / DSTFixedType in the same <date>",
                     "the order of the common and the <mac>.cfg files"),
    ),
    Vendor(
        "cisco", "Cisco SPA5xx",
        files=(StockFile(r"spa(?P<model>\d{3}\w*)\.cfg", "cisco/spa.xml.j2", XML,
                         tuple(f"spa{m}.cfg" for m in CISCO_MODELS), "model"),),
        transports=("plain",),
        placeholder="$VALUE", phone_adds_wildcard=False,
        own_files=(MAC + r"\.xml",),  # Profile_Rule_B's conventional $MA.xml ($MAU.xml upper case)
        user_agent=r"(?:Cisco|Linksys)/(?P<model>SPA\d+\w*)",
        confirmed=("Daylight_Saving_Time_Rule start=m/d/w/HH:mm:ss;end=...;save=... (day -1 = last, weekday 1 Monday .. 7 "
                   "Sunday), Time_Zone, LDAP Search Item 3 / Item 3 Filter, LDAP Display Attrs a=/n=/t=p: Cisco SPA300/SPA500 "
                   "Administration Guide",
                   "Primary_NTP_Server, Time_Zone as GMT-07:00, Daylight_Saving_Time_Enable, LDAP_Dir_Enable, "
                   "LDAP_Corp_Dir_Name, LDAP_Server, LDAP_Auth_Method, LDAP_Client_DN, LDAP_Password, LDAP_Search_Base, "
                   "LDAP_Last_Name_Filter, LDAP_First_Name_Filter, LDAP_Search_Item_3, LDAP_Item_3_Filter, LDAP_Display_Attrs "
                   "as element names: the SPA's own profile as kept in fusionpbx/fusionpbx "
                   "resources/templates/provision/cisco/spa504g/{$mac}.xml, app/cisco/app_config.php",
                   "name filters written attr:(filter) with $VALUE, e.g. cn:(cn=*$VALUE*): aelintra/sail "
                   "opt/sark/db/db_v4_device.sql (its Cisco SPA LDAP settings) and provisioner/Provisioner "
                   "endpoint/cisco/spa5xx/spa$mac.xml",
                   "LDAP Search Item 3 / Item 3 Filter as an additional search item of one's own (here: numbers): Cisco "
                   "SPA300/SPA500 Administration Guide, Phone tab field reference",
                   "User-Agent \"Cisco/<model>-<version> [(<MAC>)](<serial>)\" (Linksys/ on older firmware): wazo-platform/"
                   "wazo-provd-plugins plugins/wazo_cisco_spa/common/common.py"),
        unconfirmed=("LDAP_Server with host:port (no port key exists; no source shows a port)",),
    ),
    Vendor(
        "panasonic", "Panasonic KX-HDV",
        files=(
            StockFile(r"ConfigCommon\.cfg", "panasonic/config.cfg.j2", TEXT, ("ConfigCommon.cfg",)),
            StockFile(r"Config(?P<model>KX-HDV\d+\w*)\.cfg", "panasonic/config.cfg.j2", TEXT,
                      tuple(f"Config{m}.cfg" for m in PANASONIC_MODELS), "model"),
        ),
        transports=("ldaps", "plain"),
        own_files=(r"Config" + MAC + r"\.cfg",),
        user_agent=r"Panasonic[_ -]?(?P<model>KX-[A-Z]+\d+\w*)",
        confirmed=("the header line, NTP_ADDR, LOCAL_TIME_ZONE_POSIX as a POSIX string, LDAP_ENABLE Y/N, LDAP_SERVER as "
                   "ldap://host, LDAP_SERVER_PORT, LDAP_BASEDN, LDAP_USERID, LDAP_PASSWORD, LDAP_NAME_FILTER / LDAP_NUMB_FILTER "
                   "with %, comma-separated LDAP_NAME_ATTRIBUTE / LDAP_NUMB_ATTRIBUTE, LDAP_MAXRECORD, LDAP_SSL_VERIFY: "
                   "aelintra/sail opt/sark/db/db_v4_device.sql (its Panasonic KX-HDV range entry and Panasonic LDAP fragment)",
                   "TIME_ZONE in minutes, DST_ENABLE Y/N, DST_OFFSET minutes, DST_START|STOP_MONTH, _ORDINAL_DAY, _DAY_OF_WEEK "
                   "(0 Sunday), _TIME in minutes: Panasonic's sample file as kept in fusionpbx/fusionpbx "
                   "resources/templates/provision/panasonic/tgp500/{$mac}.cfg (KX-TGP500, the same key set)",
                   "User-Agent \"Panasonic_<model>/<version> (<MAC>)\": wazo-platform/wazo-provd-plugins "
                   "plugins/wazo_panasonic/common/common.py",
                   "the three files: master ConfigCommon.cfg (every phone), product Config{MODEL}.cfg, standard Config{MAC}.cfg, "
                   "the standard file's settings winning over the product's over the master's: Panasonic KX-UTG200/300 and "
                   "KX-HDV100/230 Administrator's Manuals (2.4.3 Device Configuration File Types, 2.4.4 priority table)"),
        unconfirmed=("which of these a KX-HDV asks for when no CFG_*_FILE_PATH is set (the guides give them as examples "
                     "of configured paths)",
                     "_ORDINAL_DAY 5 for the last week (Panasonic's KX-TGP500 Administrator Guide: 1-5, 5 = \"the fifth "
                     "week of the month\"; what a month with four such days does is not said)",
                     "ldaps:// in LDAP_SERVER"),
    ),
    Vendor(
        "gigaset", "Gigaset N670/N870 IP PRO",
        # lower case only: Snom's <MAC>.xml is upper case
        files=(StockFile(r"(?P<mac>[0-9a-f]{12})\.xml", "gigaset/provisioning.xml.j2", XML, ("{mac}.xml",)),),
        transports=(),  # time only until its LDAP keys are confirmed
        user_agent=r"Gigaset (?P<model>N\d{3}\w*)",
        confirmed=("<provisioning version=\"1.1\" productID=\"e2\"><nvm><param name value/>: Gigaset's wiki (N610/N670/N870)",
                   "DmGlobal.0.NtpServer, DmGlobal.0.TimeZone taking the IANA names of the base station's own list only: "
                   "wazo-platform/wazo-provd-plugins plugins/wazo_gigaset/Nx70_83_v2_65_0/templates/base.tpl and common.py",
                   "User-Agent \"Gigaset N870 IP PRO/<version>;<MAC>\": the same plugins' Nx70_83_v2_49_1/common.py"),
        unconfirmed=("LDAP keys (none found for the N670/N870; the Maxwell desk phones' NetDir.LDAP.0.* are another "
                     "product's)",),
    ),
)
BY_KEY = {v.key: v for v in VENDORS}


# -- requested names -----------------------------------------------------------------------


@dataclass(frozen=True)
class StockMatch:
    vendor: Vendor
    file: StockFile
    mac: str  # lower case; "" for a file that is not per phone
    model: str

    @property
    def path(self) -> Path:
        return TEMPLATES / self.file.template

    def steps_aside(self, theirs: frozenset[StockFile]) -> bool:
        """Whether the administrator has a file the phone asks for after this one (`theirs`: `first_wins_file` of
        their names), for a vendor whose phones apply only the first file they get: answered, the stock file would
        stop the phone before it (and the administrator's files always win)."""
        files = self.vendor.files
        return self.vendor.first_wins and not theirs.isdisjoint(files[files.index(self.file) + 1:])


def stock_match(name: str) -> StockMatch | None:
    """The stock file a requested name (relative, checked by provisioning.check_name) is answered with."""
    if "/" in name:
        return None
    for vendor in VENDORS:
        for stock in vendor.files:
            match = stock.regex.fullmatch(name)
            if match:
                mac = (match.groupdict().get("mac") or "").lower()
                code = match.group(stock.model_group) if stock.model_group else ""
                return StockMatch(vendor, stock, mac, _model(vendor, code))
    return None


_FIRST_WINS = tuple(stock for vendor in VENDORS if vendor.first_wins for stock in vendor.files)


def first_wins_file(name: str) -> StockFile | None:
    """The stock file that a name in the provisioning folder (a file or a template's name without .j2) stands for,
    of a vendor whose phones apply only the first file they get."""
    return next((stock for stock in _FIRST_WINS if stock.regex.fullmatch(name)), None)


@dataclass(frozen=True)
class PhoneFile:
    """What a requested name says about the phone asking for it."""

    vendor: str  # the vendor key; "" when several vendors' phones ask for this name (<mac>.cfg)
    mac: str  # lower case; "" for a file of every phone
    model: str
    stock: bool  # a stock profile (else one of the per-phone files the administrator writes)


def phone_file(name: str) -> PhoneFile | None:
    """The phone a requested name belongs to, if it is a name phones ask for at boot: a stock profile, or a
    per-phone file of a vendor's (`own_files`). A MAC starting with 000000 is no phone's: a stock file of that
    name is every phone's (mac ""), a per-phone name with it means none. None for any other name."""
    stock = stock_match(name)
    if stock is not None:
        return PhoneFile(stock.vendor.key, "" if stock.mac.startswith("000000") else stock.mac, stock.model, True)
    if "/" in name:
        return None
    found = [(vendor, match) for vendor in VENDORS for regex in vendor.own_regexes if (match := regex.fullmatch(name))]
    if not found or found[0][1].group("mac").startswith("000000"):
        return None
    vendor, match = found[0]
    if len({v.key for v, _ in found}) > 1:
        return PhoneFile("", match.group("mac").lower(), "", False)
    return PhoneFile(vendor.key, match.group("mac").lower(), _model(vendor, match.groupdict().get("model") or ""), False)


def _model(vendor: Vendor, code: str) -> str:
    if not code:
        return ""
    if vendor.key == "yealink":
        return vendor.models.get(code, "")  # y000000000000.cfg is every model's
    if vendor.key == "cisco":
        return "SPA" + code
    return vendor.models.get(code, code.upper())


def from_user_agent(user_agent: str) -> tuple[str, str]:
    """(vendor key, model) named by an HTTP User-Agent, or ("", "")."""
    for vendor in VENDORS:
        if vendor.ua_regex is not None:
            match = vendor.ua_regex.search(user_agent or "")
            if match:
                return vendor.key, match.group("model").replace("_", " ")
    return "", ""


# -- template values ---------------------------------------------------------------------------


def _transport(vendor: Vendor, settings, server: str, port_for) -> tuple[str, int | str]:
    """StartTLS on ip_ldap_port where the phones can, LDAPS on ip_ldaps_port where they can only that,
    else plain; never a port that is off, and never plain when plain binds are refused."""
    ldap_port = port_for(settings.ip_ldap_port, server) if settings.ip_ldap_port else ""
    ldaps_port = port_for(settings.ip_ldaps_port, server) if settings.ip_ldaps_port else ""
    if "starttls" in vendor.transports and ldap_port != "":
        return "starttls", ldap_port
    if "ldaps" in vendor.transports and ldaps_port != "":
        return "ldaps", ldaps_port
    if "plain" in vendor.transports and ldap_port != "" and settings.ldap_plain_bind:
        return "plain", ldap_port
    return "", ""


def phonebook(vendor: Vendor, settings, server: str, port_for) -> dict:
    """What one vendor's phones are told about the address book."""
    transport, port = _transport(vendor, settings, server, port_for)
    host = f"[{server}]" if ":" in server else server
    scheme = "ldaps" if transport == "ldaps" else "ldap"
    p = vendor.placeholder
    return {
        "enabled": bool(transport) and bool(server), "transport": transport, "port": port,
        "host": server, "url": f"{scheme}://{host}" if transport else "", "url_with_port": f"{scheme}://{host}:{port}" if transport else "",
        "base": settings.ldap_base, "user": settings.ldap_user, "user_dn": f"cn={settings.ldap_user},{settings.ldap_base}",
        "password": settings.ldap_password or "",
        "name_filter": name_filter(p, vendor.phone_adds_wildcard), "number_filter": number_filter(p),
        "name_attributes": NAME_ATTRIBUTES, "number_attributes": NUMBER_ATTRIBUTES, "max_hits": MAX_HITS,
    }


def _copied(value):
    """A copy of nested dicts (of plain values): what deepcopy does, at a tenth of its cost."""
    return {k: _copied(v) for k, v in value.items()} if isinstance(value, dict) else value


@functools.lru_cache(maxsize=16)
def _zone_forms(name: str) -> dict:
    return timezones.forms(timezones.load(name))  # reading and parsing the tzdata file is most of a render's cost


def template_values(settings, server: str, port_for) -> dict:
    """`tz` and `phonebook` for every template (stock or the administrator's); copies, which a template may change."""
    return {"tz": _copied(_zone_forms(settings.phone_timezone)),
            "phonebook": {v.key: phonebook(v, settings, server, port_for) for v in VENDORS}}


# -- export --------------------------------------------------------------------------------------


def export_plan(vendor_key: str | None = None) -> list[tuple[str, Path]]:
    """(template name to write under the TFTP root, stock template) for one vendor or all."""
    vendors = VENDORS if vendor_key is None else (BY_KEY[vendor_key],)
    return [(name + ".j2", TEMPLATES / stock.template) for vendor in vendors for stock in vendor.files for name in stock.export_names]
