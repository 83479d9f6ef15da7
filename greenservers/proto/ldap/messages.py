"""LDAP messages: requests decoded into typed values, responses encoded, and the events a session gives its shell.

Requests: `decode_search` (SearchRequest; a phone's search head and attribute
list are decoded once per distinct bytes), `decode_bind`, `decode_compare`,
`decode_extended`, `decode_abandon`, and the controls (paged results, RFC
2696; server-side sorting, RFC 2891). Responses: `message`, `result`,
`encode_control`, `notice_of_disconnection`. `Selection` is which attributes
a search returns and how an Entry is encoded for it. Events (proto/results.py's
shape): `BindFailed`, `Searched`, `StartTLS`, `Close`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import ber
from ..ber import BerError
from ..results import Event
from .codes import (
    ADD_REQUEST,
    ADD_RESPONSE,
    DEL_REQUEST,
    DEL_RESPONSE,
    EXTENDED_RESPONSE,
    MAX_CONTROLS,
    MAX_REQUESTED_ATTRIBUTES,
    MAX_SORT_KEYS,
    MODDN_REQUEST,
    MODDN_RESPONSE,
    MODIFY_REQUEST,
    MODIFY_RESPONSE,
    OID_NOTICE_OF_DISCONNECTION,
    PROTOCOL_ERROR,
    SCOPE_BASE,
    SCOPE_ONE,
    SCOPE_SUB,
    LdapError,
)
from .entries import Entry, RootDSE, encode_attribute
from .filters import _description, _text, decode_budget, decode_filter, decoded_units
from .schema import ATTRIBUTE_TYPES, MAX_CACHED, attribute_key

# -- events for the shell -------------------------------------------------------


@dataclass(frozen=True)
class BindFailed(Event):
    """A bind failed (or an anonymous client tried to read): count it, log it, answer after a delay."""

    name: str
    result_code: int


@dataclass(frozen=True)
class Searched(Event):
    """A search ended: count it."""

    entries: int
    time_limited: bool = False  # ended by its time limit (timeLimitExceeded)


@dataclass(frozen=True)
class StartTLS(Event):
    """Send everything before this event, then start TLS (server side) on the socket."""


@dataclass(frozen=True)
class Close(Event):
    """Send everything before this event, then close; `reason` is set when the peer misbehaved."""

    reason: str | None = None
    oversize: bool = False  # a message over the size limit, or more unfinished input than the server holds


# -- requests -------------------------------------------------------------------


@dataclass
class SearchRequest:
    base: str
    scope: int
    size_limit: int
    time_limit: int
    types_only: bool
    filter: tuple
    attributes: list[str]
    filter_bytes: bytes  # identifies the search for a paged continuation
    filter_units: int  # what checking one entry against the filter costs (filter_units), counted while decoding


def decode_search(data: bytes, start: int, stop: int) -> SearchRequest:
    head = _search_head(data, start, stop)  # the parts before the filter: a phone sends the same every time
    e6 = start + len(head[0])
    base, scope, size_limit, time_limit, types_only, e = head[1]
    tag, fs, fe = ber.read_header(data, e6, stop)
    budget = decode_budget()
    flt = decode_filter(data, tag, fs, fe, 0, budget)
    s, e7 = ber.expect(data, fe, stop, 0x30, "attributes")
    listed = data[s:e7]
    attributes = _ATTRIBUTE_LISTS.get(listed)
    if attributes is None:
        attributes = []
        for t, a, b in ber.children(data, s, e7, MAX_REQUESTED_ATTRIBUTES, f"more than {MAX_REQUESTED_ATTRIBUTES} attributes requested"):
            if t != ber.OCTET_STRING:
                raise BerError("attribute selector is not an OCTET STRING")
            attributes.append(_description(data, a, b))
        if len(listed) <= MAX_CACHED_LIST:  # a phone's; 1,024 lists of 128 long names held 70 MiB, 11 ms to free
            if len(_ATTRIBUTE_LISTS) >= MAX_CACHED:
                _ATTRIBUTE_LISTS.clear()
            _ATTRIBUTE_LISTS[listed] = attributes  # shared: no caller changes it
    if scope not in (SCOPE_BASE, SCOPE_ONE, SCOPE_SUB) or size_limit < 0 or time_limit < 0:
        raise BerError("scope or limits out of range")
    return SearchRequest(base, scope, size_limit, time_limit, types_only, flt, attributes, data[start + e:fe] + listed,
                         decoded_units(budget))


def _search_head(data: bytes, start: int, stop: int) -> tuple[bytes, tuple]:
    """(the bytes of baseObject to typesOnly, (base, scope, sizeLimit, timeLimit, typesOnly, scope's offset in them))."""
    s, e = ber.expect(data, start, stop, ber.OCTET_STRING, "baseObject")
    end = e
    for _ in range(5):  # scope, derefAliases, sizeLimit, timeLimit, typesOnly: where they end, if their lengths are short
        if end + 1 >= stop or data[end + 1] >= 0x80:
            break
        end += 2 + data[end + 1]
    else:
        cached = _SEARCH_HEADS.get(data[start:end])
        if cached is not None:
            return data[start:end], cached
    base = _text(data, s, e)
    s, e2 = ber.expect(data, e, stop, ber.ENUMERATED, "scope")
    scope = ber.read_integer(data, s, e2)
    s, e3 = ber.expect(data, e2, stop, ber.ENUMERATED, "derefAliases")
    s, e4 = ber.expect(data, e3, stop, ber.INTEGER, "sizeLimit")
    size_limit = ber.read_integer(data, s, e4)
    s, e5 = ber.expect(data, e4, stop, ber.INTEGER, "timeLimit")
    time_limit = ber.read_integer(data, s, e5)
    s, e6 = ber.expect(data, e5, stop, ber.BOOLEAN, "typesOnly")
    types_only = ber.read_boolean(data, s, e6)
    decoded = (base, scope, size_limit, time_limit, types_only, e - start)
    if e6 - start <= MAX_CACHED_HEAD:
        if len(_SEARCH_HEADS) >= MAX_CACHED:
            _SEARCH_HEADS.clear()
        _SEARCH_HEADS[data[start:e6]] = decoded
    return data[start:e6], decoded


_SEARCH_HEADS: dict[bytes, tuple] = {}
MAX_CACHED_HEAD = 128  # bytes of a search's head worth keeping decoded
MAX_CACHED_LIST = 512  # bytes of a search's attribute list worth keeping decoded (a phone's: about 60)


_ATTRIBUTE_LISTS: dict[bytes, list[str]] = {}


@dataclass(frozen=True)
class BindRequest:
    version: int
    name: str
    simple: bool  # a simple bind (the password in `credentials`); anything else is SASL
    credentials: bytes


def decode_bind(data: bytes, start: int, stop: int) -> BindRequest:
    """BindRequest (§4.2): version, name, authentication choice."""
    s, e = ber.expect(data, start, stop, ber.INTEGER, "version")
    version = ber.read_integer(data, s, e)
    s, name_end = ber.expect(data, e, stop, ber.OCTET_STRING, "name")
    auth_tag, a, b = ber.read_header(data, name_end, stop)
    return BindRequest(version, _text(data, s, name_end), auth_tag == 0x80, data[a:b])


@dataclass(frozen=True)
class CompareRequest:
    dn: str
    attribute: str  # the attribute description as sent
    value: str


def decode_compare(data: bytes, start: int, stop: int) -> CompareRequest:
    """CompareRequest (§4.10): entry, SEQUENCE { attributeDesc, assertionValue }."""
    s, e = ber.expect(data, start, stop, ber.OCTET_STRING, "entry")
    ava, ava_end = ber.expect(data, e, stop, 0x30, "ava")
    a, b = ber.expect(data, ava, ava_end, ber.OCTET_STRING, "attributeDesc")
    v, w = ber.expect(data, b, ava_end, ber.OCTET_STRING, "assertionValue")
    return CompareRequest(_text(data, s, e), _description(data, a, b), _text(data, v, w))


def decode_extended(data: bytes, start: int, stop: int) -> str:
    """ExtendedRequest (§4.12): its requestName (an OID)."""
    s, e = ber.expect(data, start, stop, 0x80, "requestName")
    return _text(data, s, e)


def decode_abandon(data: bytes, start: int, stop: int) -> int:
    """AbandonRequest (§4.11): the message id to abandon."""
    return ber.read_integer(data, start, stop)


@dataclass(frozen=True)
class Control:
    oid: str
    critical: bool
    value: bytes | None


def decode_controls(data: bytes, start: int, stop: int) -> list[Control]:
    controls = []
    for tag, s, e in ber.children(data, start, stop, MAX_CONTROLS, f"more than {MAX_CONTROLS} controls"):
        if tag != 0x30:
            raise BerError("control is not a SEQUENCE")
        parts = ber.children(data, s, e, 3, "control: more than three elements")
        if not parts or parts[0][0] != ber.OCTET_STRING:
            raise BerError("control without a controlType")
        oid = _text(data, parts[0][1], parts[0][2])
        critical, value = False, None
        for t, a, b in parts[1:]:
            if t == ber.BOOLEAN:
                critical = ber.read_boolean(data, a, b)
            elif t == ber.OCTET_STRING:
                value = data[a:b]
            else:
                raise BerError("control: unexpected element")
        controls.append(Control(oid, critical, value))
    return controls


def decode_paged(value: bytes | None) -> tuple[int, bytes]:
    """RFC 2696 realSearchControlValue: SEQUENCE { size INTEGER, cookie OCTET STRING }."""
    if value is None:
        raise LdapError(PROTOCOL_ERROR, "paged results control without a value")
    s, e = ber.expect(value, 0, len(value), 0x30, "paged results")
    a, b = ber.expect(value, s, e, ber.INTEGER, "page size")
    c, d = ber.expect(value, b, e, ber.OCTET_STRING, "cookie")
    size = ber.read_integer(value, a, b)
    if size < 0:  # 0..maxInt; a negative one sliced the results as "all but the last" (the whole book in one page)
        raise LdapError(PROTOCOL_ERROR, "paged results size is negative")
    return size, value[c:d]


def decode_sort(value: bytes | None) -> list[tuple[str, str | None, bool]]:
    """RFC 2891 SortKeyList: SEQUENCE OF SEQUENCE { type, [0] orderingRule OPTIONAL, [1] reverse DEFAULT FALSE }."""
    if value is None:
        raise LdapError(PROTOCOL_ERROR, "sort control without a value")
    s, e = ber.expect(value, 0, len(value), 0x30, "sort keys")
    keys = []
    try:
        listed = ber.children(value, s, e, MAX_SORT_KEYS)
    except ber.TooMany:
        listed = []  # refused below, as a search error
    for tag, a, b in listed:
        if tag != 0x30:
            raise BerError("sort key is not a SEQUENCE")
        parts = ber.children(value, a, b, 3, "sort key: more than three elements")
        if not parts or parts[0][0] != ber.OCTET_STRING:
            raise BerError("sort key without an attribute type")
        attr, rule, reverse = _description(value, parts[0][1], parts[0][2]), None, False
        for t, x, y in parts[1:]:
            if t == 0x80:
                rule = _description(value, x, y).lower()
            elif t == 0x81:
                reverse = ber.read_boolean(value, x, y)
            else:
                raise BerError("sort key: unexpected element")
        keys.append((attr, rule, reverse))
    if not keys:
        raise LdapError(PROTOCOL_ERROR, f"1 to {MAX_SORT_KEYS} sort keys")
    return keys


# -- responses --------------------------------------------------------------------


def message(message_id: int, op: bytes, controls: bytes = b"") -> bytes:
    return ber.tlv(0x30, ber.integer(message_id) + op + controls)


def result(tag: int, code: int, diagnostic: str = "", matched_dn: str = "", extra: bytes = b"") -> bytes:
    return ber.tlv(tag, ber.enumerated(code) + ber.octets(matched_dn) + ber.octets(diagnostic) + extra)


def encode_control(oid: str, value: bytes) -> bytes:
    return ber.tlv(0x30, ber.octets(oid) + ber.octets(value))


def notice_of_disconnection(code: int, diagnostic: str) -> bytes:
    """Unsolicited notification (§4.4.1): messageID 0, the server is closing the connection."""
    return message(0, result(EXTENDED_RESPONSE, code, diagnostic, extra=ber.octets(OID_NOTICE_OF_DISCONNECTION, 0x8A)))


_WRITE_RESPONSES = {MODIFY_REQUEST: MODIFY_RESPONSE, ADD_REQUEST: ADD_RESPONSE, DEL_REQUEST: DEL_RESPONSE, MODDN_REQUEST: MODDN_RESPONSE}


@dataclass
class Selection:
    """Which attributes a search returns (§4.5.1.8)."""

    all_user: bool
    operational: bool
    keys: list[tuple[str, str | None]]  # (key, requested spelling when it was an alias)
    names: set[str]  # lower-case requested names (for Root DSE operational attributes)
    types_only: bool
    key: tuple = ()  # (requested attributes, types only): what an entry's encoded body is cached under
    aliased: bool = field(default=False, init=False)  # an attribute asked for by an alias (commonName): answered under it

    def __post_init__(self):
        self.aliased = any(alias for _, alias in self.keys)

    @classmethod
    def of(cls, requested: list[str], types_only: bool) -> Selection:
        lowered = [r.strip().lower() for r in requested]
        all_user = not requested or "*" in lowered
        if lowered and all(r == "1.1" for r in lowered):
            return cls(False, False, [], set(), types_only)
        keys: list[tuple[str, str | None]] = []
        for raw, low in zip(requested, lowered, strict=True):
            key = attribute_key(low)
            if key is not None and key not in (k for k, _ in keys):
                name = low.split(";", 1)[0]
                alias = raw.split(";", 1)[0] if name not in ATTRIBUTE_TYPES else None
                keys.append((key, alias))
        return cls(all_user, "+" in lowered, keys, set(lowered), types_only)

    def encode(self, entry: Entry) -> bytes:
        if self.all_user and not self.types_only and not self.aliased:
            return entry.encoded_all
        if isinstance(entry, RootDSE):
            parts = [entry.encoded_all] if (self.all_user or self.operational) else [
                v for k, v in entry.operational.items() if k in self.names]
            if not (self.all_user or self.operational) and "objectclass" in self.names:
                parts.insert(0, entry.encoded["objectclass"])
            return b"".join(parts)
        if self.types_only:
            keys = list(entry.values) if self.all_user else [k for k, _ in self.keys]
            return b"".join(encode_attribute(ATTRIBUTE_TYPES[k][0], ()) for k in keys if k in entry.values)
        parts = []
        if self.all_user:
            parts.append(entry.encoded_all)
            for key, alias in self.keys:
                if alias and key in entry.values:
                    parts.append(encode_attribute(alias, entry.values[key]))
            return b"".join(parts)
        values = entry.values
        for key, alias in self.keys:
            if key in values:  # encoded here, not via entry.encoded: only what is asked for
                parts.append(encode_attribute(alias or ATTRIBUTE_TYPES[key][0], values[key]))
        return b"".join(parts)


# Selections by request, shared by all sessions (phones repeat the same attribute list)
_SELECTIONS: dict[tuple, Selection] = {}
MAX_SELECTIONS = 256
MAX_BODIES_PER_ENTRY = 2  # encoded answers an entry keeps (a phone asks with one or two attribute lists)
