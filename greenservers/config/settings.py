"""Every setting, declared once (like gunicorn's config.py).

A declaration gives the name, the group it is shown in, the default, a pure
validator (raw value -> typed value, or `Invalid`: the reason, and apart
from it the bad value or the bad part of it), the label the Ports page shows
it by (the name administrators know from phone systems, with the key beside
it), the description shown on the Ports page and by check-config, whether a
change needs the listening sockets to be redone, and whether it is a secret
(never shown, logged or answered by the API). A binding list's transport is
its service's, from the registry of services (greenservers.services).

A refusal is worded in one place, `Setting.refusal`: the reason with the bad
value quoted in front of it, or for a secret the reason alone. Every error
about a setting (API answers, the Ports page, check-config, the log of a
start or a SIGHUP) comes from there, so none holds any part of a secret.

`Settings` is an immutable, fully validated set of values. Every write goes
through `Settings.with_changes`, which validates all fields and the rules
between them and refuses the whole change if any field is bad.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..services import BY_SETTING as SERVICE_OF_BINDING
from .portspec import Binding, PortSpecError, parse_bindings


class SettingsError(ValueError):
    """One or more fields are invalid: `errors` maps a setting name to its message."""

    def __init__(self, errors: dict[str, str]):
        self.errors = dict(errors)
        super().__init__("; ".join(f"{name}: {msg}" for name, msg in self.errors.items()))


_NOTHING = object()
QUOTED_CHARS = 20  # of a long bad value quoted in a message


def quote(value: Any) -> str:
    """A bad value as a message shows it: repr, a long text cut short."""
    if isinstance(value, str) and len(value) > 2 * QUOTED_CHARS:
        return f"{value[:QUOTED_CHARS]!r}..."
    return repr(value)


class Invalid(ValueError):
    """A validator's refusal: `reason` (which never holds the value) and, apart from it, the
    `value` or the part of it that is wrong; shown as "<value> <reason>" (see Setting.refusal)."""

    def __init__(self, reason: str, value: Any = _NOTHING):
        self.reason, self.value = reason, value
        super().__init__(reason if value is _NOTHING else f"{quote(value)} {reason}")


# -- pure validators: raw (TOML / JSON / form) value -> typed value ---------


def _bindings(raw: Any) -> tuple[Binding, ...]:
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = str(raw)
    try:
        return parse_bindings(raw)
    except PortSpecError as exc:
        raise ValueError(str(exc)) from None  # quotes the bad token


def _int_in(low: int, high: int) -> Callable[[Any], int]:
    def validate(raw: Any) -> int:
        if isinstance(raw, str) and re.fullmatch(r"\s*\d+\s*", raw):
            raw = int(raw)
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise Invalid("is not a whole number", raw)
        if not low <= raw <= high:
            raise Invalid(f"is out of range {low}..{high}", raw)
        return raw

    return validate


_TRUE = {"true", "on", "yes", "1"}
_FALSE = {"false", "off", "no", "0", ""}


def _bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().lower() in _TRUE | _FALSE:
        return raw.strip().lower() in _TRUE
    raise Invalid("is not true or false", raw)


def _text(max_len: int, allow_empty: bool = True) -> Callable[[Any], str]:
    def validate(raw: Any) -> str:
        if not isinstance(raw, str):
            raise Invalid("is not text", raw)
        if not allow_empty and not raw:
            raise Invalid("must not be empty")
        if len(raw) > max_len:
            raise Invalid(f"is longer than {max_len} characters", raw)
        if any(ord(c) < 32 or ord(c) == 127 for c in raw):
            raise Invalid("contains control characters", raw)
        return raw

    return validate


def _community(raw: Any) -> str:
    value = _text(64, allow_empty=False)(raw)
    if not value.isascii() or " " in value:
        raise Invalid("must be printable ASCII without spaces", raw)
    return value


def _secret(raw: Any) -> str:
    if not isinstance(raw, str):
        raise Invalid("is not text", raw)
    if not 1 <= len(raw) <= 128 or any(ord(c) < 32 for c in raw):
        raise Invalid("must be 1 to 128 printable characters", raw)
    return raw


def _addresses(raw: Any) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    if not isinstance(raw, str):
        raise Invalid("is not a space-separated list of addresses", raw)
    networks = []
    for token in raw.split():
        try:
            networks.append(ipaddress.ip_network(token, strict=False))
        except ValueError:
            raise Invalid("is not an IPv4 or IPv6 address (DNS names are not accepted)", token) from None
    return tuple(networks)


_HOSTNAME = re.compile(r"(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?")


def _host(raw: Any) -> str:
    if not isinstance(raw, str):
        raise Invalid("is not an address or a host name", raw)
    value = raw.strip()
    if not value:
        return ""
    try:
        return str(ipaddress.ip_address(value.strip("[]")))
    except ValueError:
        pass
    if not _HOSTNAME.fullmatch(value) or value.replace(".", "").isdigit():
        raise Invalid("is neither an IP address nor a valid DNS name", raw)
    return value


def _timezone(raw: Any) -> str:
    from ..provisioning.phones.timezones import TimeZoneError, load  # reads the zone's tzdata file: the phones need its rules

    if not isinstance(raw, str):
        raise ValueError(f"{raw!r} is not an IANA time zone name like Europe/Berlin")
    try:
        return load(raw.strip()).name
    except TimeZoneError as exc:
        raise ValueError(str(exc)) from None


def server_timezone() -> str:
    """This machine's own zone name (TZ, /etc/localtime's link, /etc/timezone), or UTC."""
    candidates = [os.environ.get("TZ", "").lstrip(":")]
    try:
        link = os.readlink("/etc/localtime")
        candidates.append(link.split("zoneinfo/", 1)[1] if "zoneinfo/" in link else "")
    except OSError:
        pass
    try:
        with open("/etc/timezone", encoding="utf-8") as f:
            candidates.append(f.read(100).strip())
    except OSError:
        pass
    for name in candidates:
        try:
            return _timezone(name)
        except ValueError:
            continue
    return "UTC"


_DN_PART = re.compile(r"\s*[A-Za-z][A-Za-z0-9-]*\s*=\s*[^,=+<>#;\\\"]+")


def _dn(raw: Any) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise Invalid("is not a DN like dc=pbx", raw)
    if not all(_DN_PART.fullmatch(part) for part in raw.split(",")):
        raise Invalid("is not a DN like dc=pbx or ou=phonebook,dc=example,dc=com", raw)
    return ",".join(part.strip().replace(" = ", "=") for part in raw.split(","))


def _path(raw: Any) -> str:
    if not isinstance(raw, str):
        raise Invalid("is not a path", raw)
    if "\0" in raw:
        raise Invalid("contains a NUL byte", raw)
    return raw


def _dns_name_reason(name: str) -> str | None:
    """Why `name` cannot be in a publicly trusted certificate ordered over http-01, or None."""
    try:
        ipaddress.ip_address(name.strip("[]"))
        return "is an IP address; give DNS names (http-01 certificates name hosts, not addresses)"
    except ValueError:
        pass
    if "*" in name:
        return "is a wildcard; wildcard certificates need the dns-01 challenge, and only http-01 is offered"
    if not _HOSTNAME.fullmatch(name) or name.endswith("."):
        return "is not a DNS name (letters, digits, hyphens; dot-separated labels of at most 63 characters)"
    if "." not in name:
        return "is not a fully qualified DNS name (like pbx.example.com)"
    if name.rsplit(".", 1)[1].isdigit():
        return "is not a DNS name: its last label is a number"
    return None


MAX_ACME_NAMES = 100  # what public authorities accept in one certificate


def _dns_names(raw: Any) -> tuple[str, ...]:
    if not isinstance(raw, str):
        raise Invalid("is not a space-separated list of DNS names", raw)
    names = tuple(dict.fromkeys(token.lower() for token in raw.split()))
    for name in names:
        reason = _dns_name_reason(name)
        if reason:
            raise Invalid(reason, name)
    if len(names) > MAX_ACME_NAMES:
        raise Invalid(f"names; a certificate holds at most {MAX_ACME_NAMES}", len(names))
    return names


_EMAIL = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@(?P<domain>[^@\s]{1,253})")


def _email(raw: Any) -> str:
    if not isinstance(raw, str):
        raise Invalid("is not an e-mail address", raw)
    value = raw.strip()
    if not value:
        return ""
    match = _EMAIL.fullmatch(value)
    if match is None or _dns_name_reason(match["domain"].lower()) is not None or ".." in value:
        raise Invalid("is not an e-mail address like admin@example.com", raw)
    return value


def _https_url(raw: Any) -> str:
    if not isinstance(raw, str):
        raise Invalid("is not a URL", raw)
    value = raw.strip()
    parts = urlsplit(value) if len(value) <= 2000 and not any(ord(c) <= 32 for c in value) else None
    if parts is None or parts.scheme != "https" or not parts.hostname:
        raise Invalid("is not an https:// URL (ACME directories are served over HTTPS only)", raw)
    if "@" in parts.netloc:  # the URL is shown on /healthz to anyone: no user name or password in it
        raise Invalid("has a user name or password in it (ACME needs none: an account key signs each request)")
    return value


def _password_hash(raw: Any) -> str:
    if not isinstance(raw, str):
        raise Invalid("is not a password hash", raw)
    if raw and not raw.startswith("scrypt$"):
        raise Invalid("is not a password hash made by 'python -m greenservers passwd'", raw)
    return raw


# -- declarations ------------------------------------------------------------

GENERATED = object()  # default of a secret made once at first start
LETS_ENCRYPT_DIRECTORY = "https://acme-v02.api.letsencrypt.org/directory"


@dataclass(frozen=True)
class Setting:
    name: str
    group: str
    default: Any
    validate: Callable[[Any], Any]
    description: str
    rebind: bool = False
    secret: bool = False
    transport: str | None = None  # "tcp"/"udp" for binding lists
    on_ports_page: bool = True
    label: str = ""  # the name administrators know it by from phone systems' Ports pages

    @property
    def is_bindings(self) -> bool:
        return self.transport is not None

    def refusal(self, exc: ValueError) -> str:
        """What an error about this setting says: the bad value and the reason; for a secret the
        reason alone, and nothing but a fixed sentence from a validator that did not give one apart."""
        if not self.secret:
            return str(exc)
        return exc.reason if isinstance(exc, Invalid) else "is not valid"


def _binding_list(name: str, group: str, default: str, description: str, label: str) -> Setting:
    """A binding-list setting; its transport is its service's (greenservers.services)."""
    return Setting(name, group, default, _bindings, description, rebind=True, transport=SERVICE_OF_BINDING[name].transport, label=label)


GROUPS = {
    "http": "HTTP / HTTPS",
    "snmp": "SNMP",
    "tftp": "TFTP",
    "ntp": "NTP",
    "ldap": "LDAP",
    "acme": "Certificates (ACME)",
    "system": "System",
}

DECLARATIONS: tuple[Setting, ...] = (
    _binding_list("ip_http_port", "http", "80", "HTTP bindings (TCP): admin interface, API and provisioning.", label="HTTP Port"),
    _binding_list("ip_https_port", "http", "443", "HTTPS bindings (TCP, TLS 1.2 and newer).", label="HTTPS Port"),
    Setting("http_max_conn_rate", "http", 100, _int_in(1, 100_000),
            "New HTTP(S) connections accepted per second, all bindings together; more are turned away (503), but a tenth more is kept "
            "for clients other than one using it all.", label="Maximum number of HTTP connections per second"),
    Setting("http_max_conn", "http", 1000, _int_in(1, 100_000),
            "HTTP(S) connections open at a time, all bindings together; more are turned away (503), unless the client holding the most "
            "(two more than the newcomer's) gives up an idle one.", label="Maximum number of HTTP connections (total)"),
    Setting("http_redirect_https", "http", False, _bool,
            "Redirect plain-HTTP requests to HTTPS (only where an HTTPS binding exists; /prov/, /healthz and ACME challenges are "
            "exempt).", label="Redirect to HTTPS"),
    _binding_list("ip_snmp_port", "snmp", "161", "SNMP v1 agent bindings (UDP).", label="SNMP Port"),
    Setting("snmp_trusted", "snmp", "", _addresses,
            "Addresses or networks (IPv4/IPv6, space separated, no DNS names) allowed to query; empty: nobody.",
            label="SNMP Trusted Addresses"),
    Setting("snmp_community", "snmp", "public", _community, "The read community.", secret=True, label="SNMP Community"),
    Setting("snmp_contact", "snmp", "", _text(255), "sysContact: who looks after this system.", label="SNMP Contact"),
    Setting("snmp_name", "snmp", "", _text(255), "sysName; empty: the host name.", label="SNMP System Name"),
    Setting("snmp_location", "snmp", "", _text(255), "sysLocation: where this system stands.", label="SNMP Location"),
    _binding_list("ip_tftp_port", "tftp", "69", "TFTP provisioning bindings (UDP).", label="TFTP Port"),
    Setting("tftp_write", "tftp", False, _bool,
            "Allow TFTP write requests (new files under uploads/ only, e.g. phones' logs; never served back, administrators find them on "
            "the Uploads page).", label="Allow TFTP Write"),
    Setting("tftp_upload_budget_mib", "tftp", 256, _int_in(1, 1_000_000),
            "MiB that uploads/ may hold in all; when it is full, uploads are refused (TFTP \"disk full\") and nothing is deleted to make "
            "room.", label="TFTP Upload Budget (MiB)"),
    Setting("tftp_upload_mib_per_hour", "tftp", 16, _int_in(1, 100_000),
            "MiB one address may upload per hour (all of it at once, if it likes), each file counting 64 KiB besides its size; "
            "an IPv6 /64 as a whole (a LAN of phones) 8 times as much; more is refused as \"disk full\".",
            label="TFTP Uploads per Client and Hour (MiB)"),
    Setting("prov_misses_per_hour", "tftp", 2000, _int_in(0, 1_000_000),
            "Provisioning files whose names hold a MAC and that are not there (TFTP or /prov/) one address may ask for per hour (all at "
            "once, if it likes), an IPv6 /64 as a whole 8 times as many; past that, the address is refused every such name it was not "
            "served lately, whether the file exists or not (guessing phones' MACs for their files, slowed); 0: no limit.",
            label="Absent Provisioning Files per Client and Hour"),
    Setting("tftp_max_transfers", "tftp", 500, _int_in(1, 100_000),
            "TFTP transfers in progress at a time, all clients together; more are refused (the phone retries).",
            label="Maximum number of TFTP transfers (total)"),
    Setting("tftp_max_per_client", "tftp", 8, _int_in(1, 100_000),
            "TFTP transfers in progress at a time from one address; more are refused.",
            label="Maximum number of TFTP transfers per client"),
    _binding_list("ip_ntp_port", "ntp", "123",
                  "NTP server bindings (UDP); empty: no NTP server, phones are given ntp_server.", label="NTP Port"),
    Setting("ntp_server", "ntp", "", _host,
            "External NTP server (IP or DNS name) given to phones when ip_ntp_port is empty.", label="NTP Server"),
    Setting("ntp_local_stratum", "ntp", 0, _int_in(0, 15),
            "Serve the local clock at this stratum even when it is not synchronised (like chrony's 'local stratum'); 0: off, answer "
            "'unsynchronised' instead.", label="Local Clock Stratum"),
    Setting("phone_timezone", "ntp", server_timezone(), _timezone,
            "Time zone provisioned to phones: an IANA name such as Europe/Berlin, written in each vendor's form with its daylight-saving "
            "rules; default: this server's zone.", label="Phone Time Zone"),
    _binding_list("ip_ldap_port", "ldap", "2389", "LDAP address book bindings (TCP, StartTLS offered).", label="LDAP Port (TCP, StartTLS)"),
    _binding_list("ip_ldaps_port", "ldap", "2636", "LDAP over TLS bindings (TCP).", label="LDAP Port (TLS)"),
    Setting("ldap_base", "ldap", "dc=pbx", _dn, "The address book's base DN.", label="LDAP Base DN"),
    Setting("ldap_user", "ldap", "phonebook", _text(64, allow_empty=False),
            "The user phones bind with (bare name, or as cn=NAME under the base DN).", label="LDAP User"),
    Setting("ldap_password", "ldap", GENERATED, _secret,
            "The password phones bind with (generated at first start).", secret=True, label="LDAP Password"),
    Setting("ldap_anonymous", "ldap", False, _bool, "Allow anonymous searches.", label="Allow Anonymous LDAP Searches"),
    Setting("ldap_plain_bind", "ldap", True, _bool,
            "Allow password binds over plain LDAP (many phones cannot do TLS).", label="Allow LDAP Passwords without TLS"),
    Setting("acme_domains", "acme", "", _dns_names,
            "DNS names (space separated) to get a trusted certificate for from the ACME authority (e.g. Let's Encrypt) with the http-01 "
            "challenge: port 80 of each name must reach an HTTP binding. Empty: off. Once issued, it is served instead of an uploaded "
            "certificate.", label="ACME Domain Names"),
    Setting("acme_email", "acme", "", _email,
            "Contact address given to the ACME authority (expiry warnings, policy changes); may be empty.", label="ACME Contact E-mail"),
    Setting("acme_directory", "acme", LETS_ENCRYPT_DIRECTORY, _https_url,
            "The ACME authority's directory URL (https). Default: Let's Encrypt's production directory.", label="ACME Directory URL"),
    Setting("acme_ca_bundle", "acme", "", _path,
            "PEM file of the CA certificates the ACME authority's own HTTPS is checked against (a private authority such as step-ca); "
            "empty: the system's trust store.", label="ACME Server CA Bundle"),
    Setting("data_dir", "system", "data", _path,
            "Folder of the TFTP root (tftp/), the address book and the TLS files; relative to the configuration file.",
            rebind=True, label="Data Folder"),
    Setting("tls_cert", "system", "", _path,
            "PEM certificate (chain) for HTTPS and LDAPS; empty: a self-signed ECDSA + RSA pair is generated into data_dir.",
            label="TLS Certificate"),
    Setting("tls_key", "system", "", _path, "PEM private key of tls_cert.", label="TLS Private Key"),
    Setting("admin_password_hash", "system", "", _password_hash,
            "Hash of the admin password; set with 'python -m greenservers passwd'.",
            secret=True, on_ports_page=False, label="Admin Password"),
)

BY_NAME: dict[str, Setting] = {s.name: s for s in DECLARATIONS}
BINDING_SETTINGS: tuple[Setting, ...] = tuple(s for s in DECLARATIONS if s.is_bindings)


def generate_secret() -> str:
    return secrets.token_urlsafe(18)


@dataclass(frozen=True)
class Settings:
    """A complete, validated set of values; read attributes by setting name."""

    raw: dict[str, Any]
    values: dict[str, Any]
    base_dir: Path
    warnings: tuple[str, ...] = field(default=())

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["values"][name]
        except KeyError:
            raise AttributeError(name) from None

    @classmethod
    def from_raw(cls, raw: dict[str, Any], base_dir: Path | str = ".") -> Settings:
        """Validate a mapping read from the file; missing keys take defaults."""
        errors: dict[str, str] = {}
        warnings = [f"unknown setting {key!r} ignored" for key in raw if key not in BY_NAME]
        merged: dict[str, Any] = {}
        values: dict[str, Any] = {}
        for setting in DECLARATIONS:
            value = raw.get(setting.name, setting.default)
            merged[setting.name] = value
            if value is GENERATED:
                values[setting.name] = None
                continue
            try:
                values[setting.name] = setting.validate(value)
            except ValueError as exc:
                errors[setting.name] = setting.refusal(exc)
        errors.update(_cross_checks(values, errors))
        if errors:
            raise SettingsError(errors)
        return cls(merged, values, Path(base_dir), tuple(warnings))

    def with_changes(self, changes: dict[str, Any]) -> Settings:
        """All-or-nothing: a new Settings with `changes`, or SettingsError per field."""
        unknown = {k: "no such setting" for k in changes if k not in BY_NAME}
        if unknown:
            raise SettingsError(unknown)
        raw = {k: v for k, v in self.raw.items() if v is not GENERATED}
        raw.update(changes)
        return Settings.from_raw(raw, self.base_dir)

    def changed_names(self, other: Settings) -> list[str]:
        return [s.name for s in DECLARATIONS if self.raw.get(s.name) != other.raw.get(s.name)]

    def changed_bindings(self, other: Settings) -> list[str]:
        """The binding-list settings that differ: what a change must rebind."""
        return [n for n in self.changed_names(other) if BY_NAME[n].is_bindings]

    @property
    def certificate_source(self) -> tuple[str, str, str, bool]:
        """What decides the certificate in use (the generated and the ACME ones live in data_dir)."""
        return self.tls_cert, self.tls_key, self.data_dir, bool(self.acme_domains)

    # -- derived values --------------------------------------------------

    def resolve(self, value: str) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else (self.base_dir / path)

    @functools.cached_property
    def data_path(self) -> Path:
        """data_dir, absolute, its links resolved: once per Settings (a TFTP request asked several times, 35 us each)."""
        return self.resolve(self.values["data_dir"]).resolve()

    def public_view(self) -> dict[str, Any]:
        """Values safe to show: secrets replaced by whether they are set."""
        view: dict[str, Any] = {}
        for setting in DECLARATIONS:
            if setting.secret:
                view[setting.name] = {"set": bool(self.values.get(setting.name))}
            else:
                value = self.raw[setting.name]
                view[setting.name] = value
        return view


def _cross_checks(values: dict[str, Any], already: Iterable[str]) -> dict[str, str]:
    """Rules between settings: no two binding lists of one transport may overlap."""
    errors: dict[str, str] = {}
    seen: dict[str, list[tuple[str, Binding]]] = {"tcp": [], "udp": []}
    for setting in BINDING_SETTINGS:
        if setting.name in already or setting.name not in values:
            continue
        for binding in values[setting.name]:
            for other_name, other in seen[setting.transport]:
                if other.covers(binding) and setting.name not in errors:
                    errors[setting.name] = (f"{str(binding)!r} overlaps {str(other)!r} of {other_name} "
                                            f"({setting.transport.upper()} port {binding.port} is taken)")
            seen[setting.transport].append((setting.name, binding))
    if (values.get("tls_cert") or "") and not (values.get("tls_key") or ""):
        # a PEM file can hold both; only an empty key with an empty cert is the default
        pass
    if (values.get("tls_key") or "") and not (values.get("tls_cert") or ""):
        errors.setdefault("tls_cert", "tls_key is set but tls_cert is empty")
    if values.get("acme_domains") and "ip_http_port" in values and not values["ip_http_port"] and "acme_domains" not in errors:
        errors["acme_domains"] = "needs an HTTP binding (ip_http_port, port 80 as seen from the internet) to answer the http-01 challenge"
    return errors
