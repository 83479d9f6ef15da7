"""The LDAPv3 address-book server, sans-IO: bytes in, response bytes and events out.

Theory of operation
-------------------
`LdapSession.receive(data)` appends bytes to a buffer, cuts complete
LDAPMessages off it (RFC 4511 §4.1.1, BER framing in ber.py; a length over
`Policy.max_message`, or before a successful bind over the much smaller
`max_unbound_message`, is refused from the header), and answers up to
MAX_BATCH of them in order (`backlog` tells the shell to call again before
reading more, so pipelined requests cannot pile up answers in memory). The
bytes it holds between calls count against a `BufferBudget` shared by all
sessions; past it, the connection is closed.
It returns a list of outputs: `bytes` to send, and events
the shell acts on — `BindFailed` (count, log, delay), `Searched` (count),
`StartTLS` (wrap the socket now, after sending what came before), `Close`
(send what came before, then close; `reason` is set for a peer's fault),
and last, for a search, a `SearchCursor`: the shell runs it a slice at a
time (`run(until)`), sending what each slice returns, and calls `receive`
again when it is done. `FairShare` is the bookkeeping that orders the slices
of all searches (the client that used the least search time first) and caps
how many run. The session never reads a clock except through the `clock` it
is given (used for time limits), and imports no socket, ssl or time.

Operations (dispatch map OPERATIONS, fallback `_unknown_operation`):
- Bind (§4.2, RFC 4513 §5.1): simple only; `ldap_user` as a bare name or as
  cn=/uid=NAME under the base; an anonymous bind succeeds (clients read the
  Root DSE after it) but its searches are refused with
  insufficientAccessRights unless anonymous reading is allowed; a password
  over a plain connection refused when plain binds are off
  (confidentialityRequired); SASL -> authMethodNotSupported.
- Search (§4.5): Root DSE (base "", scope base, allowed before a bind), the
  base entry and one inetOrgPerson entry per contact; base/one/subtree
  scopes; every filter choice (§4.5.1.7) with three-valued logic; names
  match case-insensitively, phone numbers regardless of formatting (spaces,
  dashes, dots, brackets, "+" = "00"); requested attributes with "*", "+",
  "1.1" and case-insensitive names; size limit (client's and the server's)
  and time limit (enforced while the search runs) -> sizeLimitExceeded /
  timeLimitExceeded after the entries found so far; paged results (RFC 2696)
  and server-side sorting (RFC 2891). Filters are limited in units that
  measure what checking an entry and decoding the request cost (MAX_FILTER_ITEMS).
- Compare (§4.10), Abandon (§4.11), Unbind (§4.3), Extended (§4.12):
  StartTLS (RFC 4511 §4.14; refused when already on TLS or with more
  messages pending) and Who am I? (RFC 4532).
- Add/Delete/Modify/ModifyDN -> unwillingToPerform (a read-only directory).
- Anything else, or a malformed message -> Notice of Disconnection with
  protocolError (§4.1.1, §4.4.1), then Close.

Searches are served from a `Directory` (greenservers/proto/ldapindex.py): the
Root DSE, the base entry and one inetOrgPerson entry per contact, kept as one
blob each and changed a contact at a time, with indexes for the lookups
phones make: sorted folded values for equality and prefix, trigram postings
of cn and sn for "*typed*", numbers by their national form (a prefix typed in
either form) and reversed (equality by the last five characters, verified by
`same_number`; "*4711"). Lookups are lazy and stop at the size limit, so a
common prefix costs what is returned, not what exists; results come in index
order (alphabetical for name lookups); a filter no index narrows is a scan in
id order, run a step at a time like the rest. Exact lookups skip
verification; the rest are checked by the compiled filter (`compile_filter`,
one compiler for Entry objects and for blobs), whose approximate matches read
each value's Soundex codes from the directory's cache. A search keeps what it
found as ids in an array (`Entries`), not as a list of entries; a contact
changed or deleted while a search runs is checked again or skipped.

Phone numbers: folded by `fold_number` (formatting removed, "+" written
"00"); equal when `same_number` says so (a national number 030 1234567 is
the same as +49 30 1234567, in any country); a number prefix matches in
either form (`number_prefix_match`): "+49 30 12*" finds 030 1234567 and
"030 12*" finds +49 30 1234567, where an international number's country code
is told apart by E.164's prefix code; a prefix that ends within its country
code ("+49*") matches only literally.

Session state machine (TRANSITIONS): ANONYMOUS -bind ok-> BOUND,
BOUND -bind failed-> ANONYMOUS, any -unbind/fatal error-> CLOSED.
"""

from __future__ import annotations

import functools
import heapq
import hmac
import itertools
import re
import unicodedata
from array import array
from collections import deque
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from . import ber
from .ber import BerError, Incomplete
from .clients import TokenBuckets

# -- result codes (RFC 4511 §4.1.9, Appendix A) ---------------------------------

SUCCESS = 0
OPERATIONS_ERROR = 1
PROTOCOL_ERROR = 2
TIME_LIMIT_EXCEEDED = 3
SIZE_LIMIT_EXCEEDED = 4
COMPARE_FALSE = 5
COMPARE_TRUE = 6
AUTH_METHOD_NOT_SUPPORTED = 7
ADMIN_LIMIT_EXCEEDED = 11
UNAVAILABLE_CRITICAL_EXTENSION = 12
CONFIDENTIALITY_REQUIRED = 13
NO_SUCH_ATTRIBUTE = 16
INAPPROPRIATE_MATCHING = 18
NO_SUCH_OBJECT = 32
INVALID_DN_SYNTAX = 34
INAPPROPRIATE_AUTHENTICATION = 48
INVALID_CREDENTIALS = 49
INSUFFICIENT_ACCESS_RIGHTS = 50
BUSY = 51
UNWILLING_TO_PERFORM = 53

# -- protocol op tags (RFC 4511 §4.2-§4.12, [APPLICATION n]) --------------------

BIND_REQUEST, BIND_RESPONSE = 0x60, 0x61
UNBIND_REQUEST = 0x42
SEARCH_REQUEST, SEARCH_RESULT_ENTRY, SEARCH_RESULT_DONE = 0x63, 0x64, 0x65
MODIFY_REQUEST, MODIFY_RESPONSE = 0x66, 0x67
ADD_REQUEST, ADD_RESPONSE = 0x68, 0x69
DEL_REQUEST, DEL_RESPONSE = 0x4A, 0x6B
MODDN_REQUEST, MODDN_RESPONSE = 0x6C, 0x6D
COMPARE_REQUEST, COMPARE_RESPONSE = 0x6E, 0x6F
ABANDON_REQUEST = 0x50
EXTENDED_REQUEST, EXTENDED_RESPONSE = 0x77, 0x78
CONTROLS_TAG = 0xA0

# filter choices (§4.5.1.7)
F_AND, F_OR, F_NOT, F_EQ, F_SUB, F_GE, F_LE, F_PRESENT, F_APPROX, F_EXT = 0xA0, 0xA1, 0xA2, 0xA3, 0xA4, 0xA5, 0xA6, 0x87, 0xA8, 0xA9

SCOPE_BASE, SCOPE_ONE, SCOPE_SUB = 0, 1, 2

OID_STARTTLS = "1.3.6.1.4.1.1466.20037"
OID_WHOAMI = "1.3.6.1.4.1.4203.1.11.3"
OID_NOTICE_OF_DISCONNECTION = "1.3.6.1.4.1.1466.20036"
OID_PAGED_RESULTS = "1.2.840.113556.1.4.319"
OID_SORT_REQUEST = "1.2.840.113556.1.4.473"
OID_SORT_RESPONSE = "1.2.840.113556.1.4.474"
OID_MANAGE_DSA_IT = "2.16.840.1.113730.3.4.2"
SUPPORTED_CONTROLS = (OID_PAGED_RESULTS, OID_SORT_REQUEST, OID_MANAGE_DSA_IT)
SUPPORTED_EXTENSIONS = (OID_STARTTLS, OID_WHOAMI)

# -- limits -------------------------------------------------------------------

MAX_MESSAGE = 256 * 1024  # a phone's request is < 1 KiB; this leaves room for long filters
MAX_UNBOUND_MESSAGE = 8 * 1024  # before a bind: a bind with a long DN and password, StartTLS, the Root DSE search
MAX_FILTER_DEPTH = 32
MAX_FILTER_ITEMS = 256  # units of a filter (item_units; and assertion bytes): bounds checking an entry, and decoding
MAX_ASSERTION = 1024  # bytes in one assertion value or substring piece (a contact's values have at most 254 characters)
ASSERTION_UNIT = 32  # bytes of assertion values that count as one more filter item (folding them costs)
MAX_DESCRIPTION = 256  # bytes in an attribute description or a matching rule's name
MAX_DN = 1024  # characters in a DN a request names: parsing one is a step per character
MAX_REQUESTED_ATTRIBUTES = 128
MAX_CONTROLS = 16
MAX_SORT_KEYS = 8
MAX_PAGED_SEARCHES = 8  # open paged searches per connection; the oldest is dropped
SERVER_SIZE_LIMIT = 500  # entries per search (per page for paged searches), like slapd's default
SERVER_TIME_LIMIT = 10.0  # seconds per search
MAX_BATCH = 16  # messages answered per receive() call: bounds the output held in memory at once
MAX_BATCH_BYTES = 64 * 1024  # and their bytes: decoding is bounded per call too

# -- session states and their table -----------------------------------------

ANONYMOUS, BOUND, CLOSED = "anonymous", "bound", "closed"
EV_BIND_OK, EV_BIND_ANONYMOUS, EV_BIND_FAILED, EV_UNBIND, EV_FATAL = "bind ok", "anonymous bind", "bind failed", "unbind", "fatal"
ANONYMOUS_BIND = -1  # internal: the bind was anonymous (answered as success)
TRANSITIONS = {
    (ANONYMOUS, EV_BIND_OK): BOUND,
    (ANONYMOUS, EV_BIND_ANONYMOUS): ANONYMOUS,
    (BOUND, EV_BIND_ANONYMOUS): ANONYMOUS,
    (ANONYMOUS, EV_BIND_FAILED): ANONYMOUS,
    (BOUND, EV_BIND_OK): BOUND,
    (BOUND, EV_BIND_FAILED): ANONYMOUS,
    (ANONYMOUS, EV_UNBIND): CLOSED,
    (BOUND, EV_UNBIND): CLOSED,
    (ANONYMOUS, EV_FATAL): CLOSED,
    (BOUND, EV_FATAL): CLOSED,
}


ANONYMOUS_REFUSED = "anonymous searches are not allowed: bind with the address book's user and password"


class LdapError(Exception):
    """An operation fails with `result_code` (the session answers it; the connection stays)."""

    def __init__(self, result_code: int, message: str = "", matched_dn: str = ""):
        super().__init__(message)
        self.result_code = result_code
        self.matched_dn = matched_dn


# -- events for the shell -------------------------------------------------------


@dataclass(frozen=True)
class BindFailed:
    name: str
    result_code: int


@dataclass(frozen=True)
class Searched:
    entries: int
    time_limited: bool = False  # ended by its time limit (timeLimitExceeded)


@dataclass(frozen=True)
class StartTLS:
    """Send everything before this event, then start TLS (server side) on the socket."""


@dataclass(frozen=True)
class Close:
    """Send everything before this event, then close; `reason` is set when the peer misbehaved."""

    reason: str | None = None
    oversize: bool = False  # a message over the size limit, or more unfinished input than the server holds


@dataclass(frozen=True)
class Policy:
    """The settings a session obeys, read by the shell at each use."""

    base: str = "dc=pbx"
    user: str = "phonebook"
    password: str | None = None
    anonymous: bool = False
    plain_bind: bool = True
    size_limit: int = SERVER_SIZE_LIMIT
    time_limit: float = SERVER_TIME_LIMIT
    max_message: int = MAX_MESSAGE
    max_unbound_message: int = MAX_UNBOUND_MESSAGE


# -- schema: attribute types, aliases, normalization ----------------------------

K_NAME, K_NUMBER, K_OCLASS = "name", "number", "objectclass"

# key (lower-case canonical name) -> (canonical spelling, kind)
ATTRIBUTE_TYPES: dict[str, tuple[str, str]] = {
    "objectclass": ("objectClass", K_OCLASS),
    "cn": ("cn", K_NAME),
    "sn": ("sn", K_NAME),
    "givenname": ("givenName", K_NAME),
    "displayname": ("displayName", K_NAME),
    "telephonenumber": ("telephoneNumber", K_NUMBER),
    "mobile": ("mobile", K_NUMBER),
    "homephone": ("homePhone", K_NUMBER),
    "ipphone": ("ipPhone", K_NUMBER),
    "mail": ("mail", K_NAME),
    "o": ("o", K_NAME),
    "uid": ("uid", K_NAME),
    "dc": ("dc", K_NAME),
    "ou": ("ou", K_NAME),
}
ALIASES = {
    "commonname": "cn", "2.5.4.3": "cn",
    "surname": "sn", "2.5.4.4": "sn",
    "gn": "givenname", "2.5.4.42": "givenname",
    "2.16.840.1.113730.3.1.241": "displayname",
    "2.5.4.20": "telephonenumber",
    "mobiletelephonenumber": "mobile", "0.9.2342.19200300.100.1.41": "mobile",
    "hometelephonenumber": "homephone", "0.9.2342.19200300.100.1.20": "homephone",
    "1.2.840.113556.1.4.721": "ipphone",
    "rfc822mailbox": "mail", "0.9.2342.19200300.100.1.3": "mail",
    "organizationname": "o", "company": "o", "2.5.4.10": "o",
    "userid": "uid", "0.9.2342.19200300.100.1.1": "uid",
    "domaincomponent": "dc", "0.9.2342.19200300.100.1.25": "dc",
    "organizationalunitname": "ou", "2.5.4.11": "ou",
    "2.5.4.0": "objectclass",
}
NUMBER_KEYS = tuple(k for k, (_, kind) in ATTRIBUTE_TYPES.items() if kind == K_NUMBER)
PERSON_CLASSES = ("top", "person", "organizationalPerson", "inetOrgPerson")
PERSON_CLASSES_FOLDED = tuple(c.lower() for c in PERSON_CLASSES)

# matching rules an extensible filter may name (RFC 4517 §4.2): -> how values compare
RULE_DEFAULT, RULE_EXACT, RULE_SUBSTRING = "default", "exact", "substring"
MATCHING_RULES = {
    "2.5.13.2": RULE_DEFAULT, "caseignorematch": RULE_DEFAULT,
    "1.3.6.1.4.1.1466.109.114.2": RULE_DEFAULT, "caseignoreia5match": RULE_DEFAULT,
    "2.5.13.20": RULE_DEFAULT, "telephonenumbermatch": RULE_DEFAULT,
    "2.5.13.0": RULE_DEFAULT, "objectidentifiermatch": RULE_DEFAULT,
    "2.5.13.5": RULE_EXACT, "caseexactmatch": RULE_EXACT,
    "1.3.6.1.4.1.1466.109.114.1": RULE_EXACT, "caseexactia5match": RULE_EXACT,
    "2.5.13.17": RULE_EXACT, "octetstringmatch": RULE_EXACT,
    "2.5.13.4": RULE_SUBSTRING, "caseignoresubstringsmatch": RULE_SUBSTRING,
    "2.5.13.21": RULE_SUBSTRING, "telephonenumbersubstringsmatch": RULE_SUBSTRING,
}
ORDERING_RULES = {"2.5.13.3", "caseignoreorderingmatch", "2.5.13.6", "caseexactorderingmatch"}


def attribute_key(description: str) -> str | None:
    """The schema key of an attribute description ("CN;lang-de" -> "cn"), None if unknown."""
    key = _KEYS.get(description, _UNSEEN)
    if key is _UNSEEN:
        name = description.split(";", 1)[0].strip().lower()
        name = ALIASES.get(name, name)
        key = name if name in ATTRIBUTE_TYPES else None
        if len(_KEYS) >= MAX_CACHED:
            _KEYS.clear()
        _KEYS[description] = key
    return key


_UNSEEN = object()
MAX_CACHED = 1024  # attribute descriptions (and attribute lists) decoded before: phones repeat theirs
_KEYS: dict[str, str | None] = {}


def fold_name(text: str) -> str:
    """caseIgnoreMatch form: NFKC, case-folded, runs of spaces collapsed (RFC 4518 §2.6.1)."""
    if text.isascii():  # the common case, ten times cheaper
        return " ".join(text.lower().split())
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def fold_loose(text: str) -> str:
    """The approximate-match form of a name: one Soundex code per word, accents removed.

    "Jon Muller" ~ "john müller" (RFC 4511 leaves approxMatch to the server; like
    OpenLDAP's, every word of the assertion must sound like a word of the value).
    Each pass over the text is one C call (translate, a regular expression, groupby),
    so a long value costs microseconds, not a Python step per character.
    """
    folded = fold_name(text)
    if not folded.isascii():
        folded = unicodedata.normalize("NFKD", folded)  # "ü" -> "u" + a combining mark, dropped below
    words = folded.split()
    spaced = " ".join(words)
    letters = _NOT_A_TO_Z.sub("", spaced).split(" ")  # per word, only a-z ("" if none)
    codes = []
    for word, plain in zip(words, letters):
        if plain:
            codes.append(_soundex(plain))
        else:  # digits, CJK...: the word's letters and digits (accents and punctuation dropped)
            codes.append(_NOT_A_LETTER_OR_DIGIT.sub("", word) or word)
    return " ".join(codes)


_SOUNDEX = {c: d for letters, d in (("bfpv", "1"), ("cgjkqsxz", "2"), ("dt", "3"), ("l", "4"), ("mn", "5"), ("r", "6")) for c in letters}
# vowels (and y) separate equal digits ("0" here, never written), h and w do not, so they are removed
_SOUNDEX_DIGITS = str.maketrans({c: _SOUNDEX.get(c, "" if c in "hw" else "0") for c in "abcdefghijklmnopqrstuvwxyz"})
_NOT_A_TO_Z = re.compile(r"[^a-z ]+")
_NOT_A_LETTER_OR_DIGIT = re.compile(r"\W+")  # combining marks are not word characters either


def _soundex(letters: str) -> str:
    """American Soundex of a word of a-z: its first letter and up to three digits."""
    digits = letters.translate(_SOUNDEX_DIGITS)
    code, last, rest = letters[0], "0", digits
    if letters[0] not in "hw":  # the first letter stands for its own digit
        last, rest = digits[0], digits[1:]
    for digit, _ in itertools.groupby(rest):  # a run of one digit counts once: "bbbb..." is one step, not one per letter
        if digit != last:
            if digit != "0":
                code += digit
                if len(code) == 4:
                    return code
            last = digit
    return (code + "000")[:4]


@functools.lru_cache(maxsize=1024)
def sound_codes(assertion: str) -> tuple[str, ...]:
    """The distinct codes an approximate assertion needs, each padded to be found in `padded_sounds` of a value."""
    return tuple(dict.fromkeys(f" {code} " for code in fold_loose(assertion).split()))


def padded_sounds(value: str) -> str:
    """A value's codes as " c1 c2 ... ": a code is one of its words exactly when " code " is in it."""
    return f" {fold_loose(value)} "


def approx_match(value_sounds: str, codes: tuple[str, ...]) -> bool:
    for code in codes:
        if code not in value_sounds:
            return False
    return True


_NUMBER_FORMATTING = str.maketrans("", "", " \t-.()[]/")


def fold_number(text: str) -> str:
    """Phone-number form: formatting removed, a leading '+' written '00' ("+49 (30) 12-3" -> "00493012 3")."""
    stripped = text.strip().translate(_NUMBER_FORMATTING)
    return "00" + stripped[1:] if stripped.startswith("+") else stripped.lower()


def same_number(a: str, b: str) -> bool:
    """Folded numbers equal, or a national number (0301234567) equal to an international one (0049301234567)."""
    if a == b:
        return True
    if len(a) < len(b):
        a, b = b, a
    # a: the longer; international form "00" + country code (1-3 digits) + national number without its 0
    if a.startswith("00") and b.startswith("0") and not b.startswith("00") and len(b) >= 6:
        return a.endswith(b[1:]) and 1 <= len(a) - 2 - (len(b) - 1) <= 3
    return False


# E.164 country codes form a prefix code: the first one or two digits tell a code's length
_COUNTRY_ONE_DIGIT = frozenset("17")
_COUNTRY_TWO_DIGITS = frozenset(
    "20 27 30 31 32 33 34 36 39 40 41 43 44 45 46 47 48 49 51 52 53 54 55 56 57 58 60 61 62 63 64 65 66 "
    "81 82 84 86 90 91 92 93 94 95 98".split())


def country_code_length(digits: str) -> int:
    """How many leading digits of an international number (without its 00) are the country code."""
    if digits[:1] in _COUNTRY_ONE_DIGIT:
        return 1
    return 2 if digits[:2] in _COUNTRY_TWO_DIGITS else 3


def is_national(number: str) -> bool:
    """A folded number that starts with exactly one 0 (a trunk prefix: 030 1234567)."""
    return number.startswith("0") and not number.startswith("00")


def national_form(number: str) -> str:
    """An international folded number written as a national one ("0049301234" -> "0301234"): its country
    code (by E.164's prefix code) replaced by a 0. Other numbers, and one that ends within its code, as they are."""
    if number.startswith("00"):
        code = 2 + country_code_length(number[2:])
        if len(number) > code:
            return "0" + number[code:]
    return number


def number_prefix_national(prefix: str) -> str | None:
    """The national form a number prefix is looked up by (national_form), None when it has none: an
    international prefix that ends within its country code ("0049") only matches literally."""
    if prefix.startswith("00"):
        national = national_form(prefix)
        return national if national != prefix else None
    return prefix


def number_prefix_match(value: str, prefix: str, national: str | None) -> bool:
    """A folded number starts with a folded prefix, in either form.

    Literally; or a national number (one 0) against an international prefix, with the
    prefix's country code dropped ("030 12345" starts with "+49 30 1234": the rule of
    same_number, where a national number is the same as its international form in any
    country); or an international number against a national prefix, in its national form
    ("+49 30 12345" starts with "030 12"). `national` is number_prefix_national(prefix).
    """
    if value.startswith(prefix):
        return True
    if national is None:
        return False
    if prefix.startswith("00"):
        return is_national(value) and value.startswith(national)
    return is_national(prefix) and value.startswith("00") and national_form(value).startswith(prefix)


FOLDERS: dict[str, Callable[[str], str]] = {K_NAME: fold_name, K_NUMBER: fold_number, K_OCLASS: fold_name}


def fold_for(key: str) -> Callable[[str], str]:
    return FOLDERS[ATTRIBUTE_TYPES[key][1]]


# -- distinguished names (RFC 4514) ---------------------------------------------

_DN_SPECIAL = set(',+"\\<>;=')
_NEEDS_ESCAPE = re.compile(r'[,+"\\<>;=\0]|^[ #]| $')


class DnError(ValueError):
    result_code = INVALID_DN_SYNTAX


def escape_rdn_value(value: str) -> str:
    if not _NEEDS_ESCAPE.search(value):
        return value
    out = []
    for i, ch in enumerate(value):
        if ch in _DN_SPECIAL or (ch in " #" and i == 0) or (ch == " " and i == len(value) - 1):
            out.append("\\" + ch)
        elif ch == "\0":
            out.append("\\00")
        else:
            out.append(ch)
    return "".join(out)


def parse_dn(dn: str) -> tuple[tuple[tuple[str, str], ...], ...]:
    """Normalized DN: a tuple of RDNs, each a sorted tuple of (attribute key, folded value)."""
    if not dn.strip():
        return ()
    if len(dn) > MAX_DN:
        raise DnError(f"DN of {len(dn)} characters is over the limit of {MAX_DN}")
    rdns: list[tuple[tuple[str, str], ...]] = []
    avas: list[tuple[str, str]] = []
    i, n = 0, len(dn)
    while True:
        # attribute type
        j = dn.find("=", i)
        if j < 0:
            raise DnError(f"no '=' in {dn!r}")
        name = dn[i:j].strip().lower()
        if not name:
            raise DnError(f"empty attribute type in {dn!r}")
        name = ALIASES.get(name, name)
        i = j + 1
        value: list[str] = []
        raw_bytes = bytearray()
        quoted = False
        while i < n and dn[i] == " ":
            i += 1
        if i < n and dn[i] == '"':
            quoted = True
            i += 1
        while i < n:
            ch = dn[i]
            if quoted and ch == '"':
                quoted = False
                i += 1
                continue
            if not quoted and ch in ",+;":
                break
            if ch == "\\":
                if i + 1 >= n:
                    raise DnError(f"dangling escape in {dn!r}")
                pair = dn[i + 1:i + 3]
                if len(pair) == 2 and all(c in "0123456789abcdefABCDEF" for c in pair):
                    raw_bytes.append(int(pair, 16))
                    i += 3
                    continue
                ch = dn[i + 1]
                i += 1
            if raw_bytes:
                value.append(raw_bytes.decode("utf-8", "replace"))
                raw_bytes.clear()
            value.append(ch)
            i += 1
        if raw_bytes:
            value.append(raw_bytes.decode("utf-8", "replace"))
        if quoted:
            raise DnError(f"unterminated quote in {dn!r}")
        folder = fold_for(name) if name in ATTRIBUTE_TYPES else fold_name
        avas.append((name, folder("".join(value))))
        if i >= n or dn[i] in ",;":
            rdns.append(tuple(sorted(avas)))
            avas = []
            if i >= n:
                break
        i += 1
    return tuple(rdns)


# phones search the same base every time; a DN is immutable, so its parse can be shared
parse_dn_cached = functools.lru_cache(maxsize=1024)(parse_dn)


# -- entries --------------------------------------------------------------------


def encode_attribute(name: str, values: Iterable[str]) -> bytes:
    """PartialAttribute (§4.1.7): SEQUENCE { type, SET OF value }."""
    tlv = ber.tlv
    return tlv(0x30, tlv(0x04, name.encode()) + tlv(0x31, b"".join([tlv(0x04, v.encode()) for v in values])))


class Entry:
    """One directory entry with its values folded for matching; attributes are encoded on first use."""

    __slots__ = ("dn", "ndn", "values", "folded", "_encoded", "_encoded_all", "_encoded_dn", "_bodies")

    def __init__(self, dn: str, values: dict[str, tuple[str, ...]], ndn=None, folded=None):
        self.dn = dn
        self.ndn = parse_dn(dn) if ndn is None else ndn
        if folded is None:
            values = {k: v for k, v in values.items() if v}
            folded = {k: tuple(FOLDERS[ATTRIBUTE_TYPES[k][1]](x) for x in v) for k, v in values.items()}
        self.values = values
        self.folded = folded
        self._encoded: dict[str, bytes] | None = None
        self._encoded_all: bytes | None = None
        self._encoded_dn: bytes | None = None
        self._bodies: dict[tuple, bytes] | None = None  # SearchResultEntry bodies by selection key

    @property
    def encoded(self) -> dict[str, bytes]:
        if self._encoded is None:
            self._encoded = {k: encode_attribute(ATTRIBUTE_TYPES[k][0], v) for k, v in self.values.items()}
        return self._encoded

    @property
    def encoded_all(self) -> bytes:
        if self._encoded_all is None:
            self._encoded_all = b"".join(self.encoded.values())
        return self._encoded_all

    @property
    def encoded_dn(self) -> bytes:
        if self._encoded_dn is None:
            self._encoded_dn = ber.octets(self.dn)
        return self._encoded_dn


_PERSON_NAME_KEYS = (("givenname", "first_name"), ("mail", "email"), ("o", "company"))
_PERSON_NUMBER_KEYS = (("telephonenumber", "work"), ("mobile", "mobile"), ("homephone", "home"), ("ipphone", "extension"))


def contact_values(contact) -> tuple[dict[str, tuple[str, ...]], dict[str, tuple[str, ...]]]:
    """inetOrgPerson attributes of a contact (the address book's Contact), and their folded forms."""
    first, last = contact.first_name.strip(), contact.last_name.strip()
    name = contact.display_name.strip() or " ".join(p for p in (first, last) if p) or contact.company.strip() or str(contact.id)
    folded_name = fold_name(name)
    uid = str(contact.id)
    # equal values share one tuple: 100,000 entries hold a few hundred thousand of them
    named, folded_named = (name,), (folded_name,)
    uids = (uid,)  # digits: their folded form is the same
    values = {"objectclass": PERSON_CLASSES, "cn": named, "sn": (last,) if last else named, "displayname": named, "uid": uids}
    folded = {"objectclass": PERSON_CLASSES_FOLDED, "cn": folded_named, "sn": (fold_name(last),) if last else folded_named,
              "displayname": folded_named, "uid": uids}
    for key, attr in _PERSON_NAME_KEYS:
        value = getattr(contact, attr).strip()
        if value:
            values[key] = (value,)
            folded[key] = (fold_name(value),)
    for key, attr in _PERSON_NUMBER_KEYS:
        value = getattr(contact, attr).strip()
        if value:
            values[key] = (value,)
            folded[key] = (fold_number(value),)
    return values, folded


def base_entry_values(base_ndn) -> dict[str, tuple[str, ...]]:
    """The base entry: its RDN's attribute and an object class that allows it."""
    if not base_ndn:
        return {"objectclass": ("top",)}
    classes = {"dc": ("top", "domain"), "ou": ("top", "organizationalUnit"), "o": ("top", "organization")}
    values: dict[str, tuple[str, ...]] = {}
    for key, _ in base_ndn[0]:
        values["objectclass"] = classes.get(key, ("top", "extensibleObject"))
    return values


def _rdn_raw_value(dn: str, key: str) -> str:
    first = dn.split(",", 1)[0]
    name, _, value = first.partition("=")
    return value.strip().replace("\\", "")


class RootDSE(Entry):
    """The Root DSE (RFC 4512 §5.1): what the server supports, readable before a bind."""

    __slots__ = ("operational",)

    def __init__(self, base: str):
        super().__init__("", {"objectclass": ("top",)})
        extra = [
            encode_attribute("namingContexts", [base]),
            encode_attribute("supportedLDAPVersion", ["3"]),
            encode_attribute("supportedExtension", SUPPORTED_EXTENSIONS),
            encode_attribute("supportedControl", SUPPORTED_CONTROLS),
            encode_attribute("supportedSASLMechanisms", []),
            encode_attribute("vendorName", ["greenservers"]),
        ]
        self._encoded_all = self.encoded["objectclass"] + b"".join(extra)
        self.operational = {
            "namingcontexts": extra[0], "supportedldapversion": extra[1], "supportedextension": extra[2],
            "supportedcontrol": extra[3], "supportedsaslmechanisms": extra[4], "vendorname": extra[5],
        }


# -- filters: decode (§4.5.1.7) and compile to a three-valued predicate ----------


def _text(data: bytes, start: int, stop: int) -> str:
    return data[start:stop].decode("utf-8", "replace")


def decode_filter(data: bytes, tag: int, start: int, stop: int, depth: int, budget: list[int]):
    """A filter as a tuple: (F_AND, [..]), (F_EQ, key, folded value, raw), (F_SUB, key, initial, anys, final), ...

    `budget` is what is left of MAX_FILTER_ITEMS: every item takes what checking an
    entry against it costs (item_units), and every ASSERTION_UNIT bytes of assertion
    values one more (folding them), so both checking an entry and decoding stay bounded.
    """
    _spend(budget, 1)
    if depth > MAX_FILTER_DEPTH:
        raise BerError(f"filter nested deeper than {MAX_FILTER_DEPTH}")
    if tag == F_EQ and stop - start < 0x80 and data[start] == ber.OCTET_STRING:
        # the phones' item, short lengths (one byte each): read in place (the general path reads the same)
        value_at = start + 2 + data[start + 1]
        if value_at + 2 <= stop and data[value_at] == ber.OCTET_STRING and value_at + 2 + data[value_at + 1] == stop:
            key = attribute_key(_text(data, start + 2, value_at))
            raw = _assertion(data, value_at + 2, stop, budget)
            return (F_EQ, None, raw, raw) if key is None else (F_EQ, key, fold_for(key)(raw), raw)
    if tag in (F_AND, F_OR):
        children = ber.children(data, start, stop, budget[0] + 1, _TOO_MANY_ITEMS)
        items = [decode_filter(data, t, s, e, depth + 1, budget) for t, s, e in children]
        if not items:  # RFC 4526 absolute true/false
            return (F_AND, []) if tag == F_AND else (F_OR, [])
        return (tag, items)
    if tag == F_NOT:
        t, s, e = ber.read_header(data, start, stop)
        if e != stop:
            raise BerError("not: more than one filter")
        return (F_NOT, decode_filter(data, t, s, e, depth + 1, budget))
    if tag == F_PRESENT:
        return (F_PRESENT, attribute_key(_description(data, start, stop)))
    if tag in (F_EQ, F_GE, F_LE, F_APPROX):
        s1, e1 = ber.expect(data, start, stop, ber.OCTET_STRING, "attributeDesc")
        s2, e2 = ber.expect(data, e1, stop, ber.OCTET_STRING, "assertionValue")
        if e2 != stop:
            raise BerError("trailing bytes in attribute value assertion")
        key = attribute_key(_description(data, s1, e1))
        raw = _assertion(data, s2, e2, budget)
        if key is None:
            return (tag, None, raw, raw)
        if tag == F_APPROX and ATTRIBUTE_TYPES[key][1] == K_NAME:
            return _spent((tag, key, sound_codes(raw), raw), budget)
        return (tag, key, fold_for(key)(raw), raw)
    if tag == F_SUB:
        s1, e1 = ber.expect(data, start, stop, ber.OCTET_STRING, "attributeDesc")
        s2, e2 = ber.expect(data, e1, stop, 0x30, "substrings")
        key = attribute_key(_description(data, s1, e1))
        folder = fold_for(key) if key else fold_name
        initial, anys, final = "", [], ""
        parts = ber.children(data, s2, e2, budget[0] + 1, _TOO_MANY_ITEMS)
        if not parts:
            raise BerError("substrings filter without substrings")
        for index, (t, s, e) in enumerate(parts):
            piece = _assertion(data, s, e, budget)
            piece = folder(piece) if not (key and ATTRIBUTE_TYPES[key][1] == K_NUMBER) or t == 0x80 else piece.translate(_NUMBER_FORMATTING)
            if t == 0x80 and index == 0:
                initial = piece
            elif t == 0x81:
                if piece:
                    anys.append(piece)
            elif t == 0x82 and index == len(parts) - 1:
                final = piece
            else:
                raise BerError(f"substring choice 0x{t:02x} out of place")
        return _spent((F_SUB, key, initial, tuple(anys), final), budget)
    if tag == F_EXT:
        rule = key = None
        value, dn_attributes = "", False
        for t, s, e in ber.children(data, start, stop, 4, "extensible match: more than four elements"):
            if t == 0x81:
                rule = _description(data, s, e).strip().lower()
            elif t == 0x82:
                key = _description(data, s, e)
            elif t == 0x83:
                value = _assertion(data, s, e, budget)
            elif t == 0x84:
                dn_attributes = ber.read_boolean(data, s, e)
            else:
                raise BerError(f"extensible match: unexpected tag 0x{t:02x}")
        if rule is None and key is None:
            raise BerError("extensible match needs a matching rule or a type")
        resolved = attribute_key(key) if key is not None else None
        return _spent((F_EXT, rule, resolved, value, dn_attributes, key is not None), budget)
    raise BerError(f"unknown filter choice 0x{tag:02x}")


_TOO_MANY_ITEMS = (f"filter has more than {MAX_FILTER_ITEMS} items (substring pieces, approximate words, untyped extensible "
                   f"matches and every {ASSERTION_UNIT} bytes of values count too)")


def _spend(budget: list[int], units: int) -> None:
    budget[0] -= units
    if budget[0] < 0:
        raise BerError(_TOO_MANY_ITEMS)


def _spent(item: tuple, budget: list[int]) -> tuple:
    _spend(budget, item_units(item) - 1)  # its first unit was spent when it was begun
    return item


def item_units(f) -> int:
    """What checking one entry against the filter item `f` costs (AND, OR and NOT: 1 each, besides
    their items): a substring filter a unit per piece, an approximate match one per word, an
    extensible match without a type one per attribute type it tries, and two for the DN's values."""
    op = f[0]
    if op == F_SUB:
        return max(1, bool(f[2]) + len(f[3]) + bool(f[4]))
    if op == F_APPROX and isinstance(f[2], tuple):
        return max(1, len(f[2]))
    if op == F_EXT:
        _, _, key, _, dn_attributes, has_type = f
        return (1 if key or has_type else len(ATTRIBUTE_TYPES)) + (2 if dn_attributes else 0)
    return 1


def filter_units(f) -> int:
    """What checking one entry against filter `f` costs, in the units MAX_FILTER_ITEMS counts."""
    if f[0] in (F_AND, F_OR):
        return 1 + sum(filter_units(c) for c in f[1])
    if f[0] == F_NOT:
        return 1 + filter_units(f[1])
    return item_units(f)


def _assertion(data: bytes, start: int, stop: int, budget: list[int]) -> str:
    if stop - start > MAX_ASSERTION:
        raise BerError(f"assertion value of {stop - start} bytes is over the limit of {MAX_ASSERTION}")
    _spend(budget, (stop - start) // ASSERTION_UNIT)
    return _text(data, start, stop)


def _description(data: bytes, start: int, stop: int) -> str:
    if stop - start > MAX_DESCRIPTION:
        raise BerError(f"attribute description or rule of {stop - start} bytes is over the limit of {MAX_DESCRIPTION}")
    return _text(data, start, stop)


def _substring_match(value: str, initial: str, anys: tuple, final: str) -> bool:
    pos, end = 0, len(value)
    if initial:
        if not value.startswith(initial):
            return False
        pos = len(initial)
    if final:
        if not value.endswith(final) or end - len(final) < pos:
            return False
        end -= len(final)
    for piece in anys:
        found = value.find(piece, pos, end)
        if found < 0:
            return False
        pos = found + len(piece)
    return True


def _always(result):
    return lambda entry: result


class EntryAccess:
    """How compile_filter's predicates read an Entry (the Root DSE, the base entry, a reference's entries).

    A Directory gives its own (ldapindex.BlobAccess) for its contacts, read by id.
    """

    @staticmethod
    def values(key: str) -> Callable[[Entry], tuple[str, ...]]:
        empty: tuple = ()
        return lambda entry: entry.folded.get(key, empty)

    @staticmethod
    def present(key: str) -> Callable[[Entry], bool]:
        return lambda entry: key in entry.values

    @staticmethod
    def contains(key: str, piece: str) -> Callable[[Entry], bool] | None:
        return None  # the general substring match serves

    @staticmethod
    def entry(entry: Entry) -> Entry:
        return entry


ENTRIES = EntryAccess()


def compile_filter(f, sounds: Callable[[str], str] = padded_sounds, access=ENTRIES) -> Callable[[object], bool | None]:
    """A predicate entry -> True / False / None (Undefined, RFC 4511 §4.5.1.7).

    Everything that depends only on the filter is computed here, once; what depends
    on a value is folded with the entry (or, for approximate matching, by `sounds`,
    which a Directory answers from a cache: once per value, not per evaluation).
    `access` reads an entry's folded values (EntryAccess; a Directory's reads its
    blobs by id), and gives the whole Entry where a match needs it (extensible).
    """
    op = f[0]
    if op in (F_AND, F_OR):
        parts = [compile_filter(c, sounds, access) for c in f[1]]
        decisive = op == F_OR  # the result that ends the loop: True for OR, False for AND

        def match_all(entry):
            result = not decisive
            for part in parts:
                r = part(entry)
                if r is decisive:
                    return decisive
                if r is None:
                    result = None
            return result
        return match_all
    if op == F_NOT:
        inner = compile_filter(f[1], sounds, access)

        def match_not(entry):
            r = inner(entry)
            return None if r is None else not r
        return match_not
    if op == F_PRESENT:
        key = f[1]
        if key is None:
            return _always(False)
        if key == "objectclass":
            return _always(True)
        return access.present(key)
    if op == F_EXT:
        match = _compile_extensible(*f[1:])
        whole = access.entry
        return lambda entry: (lambda e: e is not None and match(e))(whole(entry))
    key = f[1]
    if key is None:
        return _always(None)
    kind = ATTRIBUTE_TYPES[key][1]
    get = access.values(key)
    # loops, not any(generator): a generator made per value checked would cost more than the check
    if op == F_SUB:
        initial, anys, final = f[2], f[3], f[4]
        if kind == K_NUMBER and initial and not anys and not final:
            national = number_prefix_national(initial)

            def match_number_prefix(entry):
                for v in get(entry):
                    if number_prefix_match(v, initial, national):
                        return True
                return False
            return match_number_prefix
        if not initial and not final and len(anys) == 1:
            contains = access.contains(key, anys[0])
            if contains is not None:
                return contains

        def match_substrings(entry):
            for v in get(entry):
                if _substring_match(v, initial, anys, final):
                    return True
            return False
        return match_substrings
    value = f[2]
    if op == F_EQ or (op == F_APPROX and kind != K_NAME):
        if kind == K_NUMBER:
            def match_number(entry):
                for v in get(entry):
                    if same_number(v, value):
                        return True
                return False
            return match_number
        return lambda entry: value in get(entry)
    if op == F_APPROX:  # value: the assertion's codes (sound_codes)
        def match_approx(entry):
            for v in get(entry):
                if approx_match(sounds(v), value):
                    return True
            return False
        return match_approx
    if op == F_GE:
        def match_ge(entry):
            for v in get(entry):
                if v >= value:
                    return True
            return False
        return match_ge

    def match_le(entry):
        for v in get(entry):
            if v <= value:
                return True
        return False
    return match_le


def _compile_extensible(rule, key, value, dn_attributes, has_type):
    """Extensible match (§4.5.1.7.7): a known rule compares like equality (or exactly, or as substrings)."""
    how = MATCHING_RULES.get(rule, None) if rule is not None else RULE_DEFAULT
    if how is None or (has_type and key is None):
        return _always(None)  # unknown rule or attribute type: Undefined
    needles = {kind: folder(value) for kind, folder in FOLDERS.items()}  # the assertion folded for each kind, once

    def test(k: str, raw_values: tuple, folded_values: tuple) -> bool:
        if how == RULE_EXACT:
            return value in raw_values
        kind = ATTRIBUTE_TYPES[k][1]
        needle = needles[kind]
        if how == RULE_SUBSTRING:
            return any(needle in v for v in folded_values)
        if kind == K_NUMBER:
            return any(same_number(v, needle) for v in folded_values)
        return needle in folded_values

    def match(entry):
        if key:
            if key in entry.values and test(key, entry.values[key], entry.folded[key]):
                return True
        else:
            folded = entry.folded
            for k, raw_values in entry.values.items():
                if test(k, raw_values, folded[k]):
                    return True
        if dn_attributes:
            for rdn in entry.ndn:
                for k, folded_value in rdn:
                    if (key is None or k == key) and k in ATTRIBUTE_TYPES and test(k, (folded_value,), (folded_value,)):
                        return True
        return False
    return match


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


def decode_search(data: bytes, start: int, stop: int) -> SearchRequest:
    head = _search_head(data, start, stop)  # the parts before the filter: a phone sends the same every time
    e6 = start + len(head[0])
    base, scope, size_limit, time_limit, types_only, e = head[1]
    tag, fs, fe = ber.read_header(data, e6, stop)
    flt = decode_filter(data, tag, fs, fe, 0, [MAX_FILTER_ITEMS])
    s, e7 = ber.expect(data, fe, stop, 0x30, "attributes")
    listed = data[s:e7]
    attributes = _ATTRIBUTE_LISTS.get(listed)
    if attributes is None:
        attributes = []
        for t, a, b in ber.children(data, s, e7, MAX_REQUESTED_ATTRIBUTES, f"more than {MAX_REQUESTED_ATTRIBUTES} attributes requested"):
            if t != ber.OCTET_STRING:
                raise BerError("attribute selector is not an OCTET STRING")
            attributes.append(_description(data, a, b))
        if len(_ATTRIBUTE_LISTS) >= MAX_CACHED:
            _ATTRIBUTE_LISTS.clear()
        _ATTRIBUTE_LISTS[listed] = attributes  # shared: no caller changes it
    if scope not in (SCOPE_BASE, SCOPE_ONE, SCOPE_SUB) or size_limit < 0 or time_limit < 0:
        raise BerError("scope or limits out of range")
    return SearchRequest(base, scope, size_limit, time_limit, types_only, flt, attributes, data[start + e:fe] + listed)


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


_ATTRIBUTE_LISTS: dict[bytes, list[str]] = {}


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
    return ber.read_integer(value, a, b), value[c:d]


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

    @classmethod
    def of(cls, requested: list[str], types_only: bool) -> "Selection":
        lowered = [r.strip().lower() for r in requested]
        all_user = not requested or "*" in lowered
        if lowered and all(r == "1.1" for r in lowered):
            return cls(False, False, [], set(), types_only)
        keys: list[tuple[str, str | None]] = []
        for raw, low in zip(requested, lowered):
            key = attribute_key(low)
            if key is not None and key not in (k for k, _ in keys):
                name = low.split(";", 1)[0]
                alias = raw.split(";", 1)[0] if name not in ATTRIBUTE_TYPES else None
                keys.append((key, alias))
        return cls(all_user, "+" in lowered, keys, set(lowered), types_only)

    def encode(self, entry: Entry) -> bytes:
        if self.all_user and not self.types_only and not any(alias for _, alias in self.keys):
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


@dataclass
class PagedSearch:
    identity: bytes
    results: array  # ids (Entries)
    entries: "Entries"
    position: int
    size_exceeded: bool
    sort_control: bytes
    message_id: int


# -- search execution: a resumable cursor, run in slices ---------------------------

MATCH_STEP_UNITS = 64  # filter units checked between two yields (about 10-60 us)
SORT_STEP = 256  # entries partitioned, sorted by one call, or merged between two yields (about 0.3 ms)
EMIT_STEP = 32  # entries encoded between two yields


class TimeUp(Exception):
    """Thrown into a search's steps (once) when its time limit has passed."""


class SearchCursor:
    """A search in progress, to be run a slice at a time until it is `done`.

    `run(until)` does the search's work until the clock reaches `until` and
    returns what to send: SearchResultEntry bytes as they are found (or, for a
    sorted or paged search, as they are encoded), then the SearchResultDone and
    a `Searched` event. The shell calls it again, one slice per turn, so no
    search holds the event loop longer than a slice plus one unit of work, and
    several searches share it in whatever order the shell chooses (FairShare).

    The work is a generator (`steps`) that yields between small units of work:
    True where the search may stop for its time limit, False where it may not.
    When the clock passes `deadline` (the client's time limit or the server's,
    from the request's arrival), TimeUp is thrown into the steps at the next such
    point, and they finish with the entries found so far and timeLimitExceeded
    (RFC 4511 §4.5.1.5, §4.1.9); a sort not finished by then is given up, and
    the entries go unsorted with sortResult timeLimitExceeded (RFC 2891 §1.2),
    or not at all if the sort control was critical.
    """

    def __init__(self, message_id: int, clock: Callable[[], float], deadline: float):
        self.message_id = message_id
        self.clock = clock
        self.deadline = deadline
        self.done = False
        self.time_limited = False
        self.sent = 0  # entries sent
        self.given = 0  # found ids given to the encoder (a contact deleted since it was found is not sent)
        self.out: list = []  # filled by the steps, emptied by run()
        self.steps: Iterator[bool] = iter(())

    def run(self, until: float) -> list:
        """Work until the clock reaches `until` (at least one step); what to send, in order."""
        steps, clock = self.steps, self.clock
        try:
            while True:
                interruptible = next(steps)
                now = clock()
                if interruptible and now >= self.deadline and not self.time_limited:
                    self.time_limited = True
                    steps.throw(TimeUp())
                if now >= until:
                    break
        except StopIteration:
            self.done = True
            self.steps = iter(())  # its frame refers to this cursor: no cycle left for the collector
        out, self.out = self.out, []
        return out

    def refuse(self, code: int, diagnostic: str) -> list:
        """End the search before it ran (the server is too busy): its SearchResultDone."""
        self.steps.close()
        self.done = True
        return [message(self.message_id, result(SEARCH_RESULT_DONE, code, diagnostic)), Searched(0)]


def resolve_scope(directory: "Directory", ndn, scope: int) -> tuple[list[Entry], bool]:
    """(entries to check besides the contacts, whether to search the contacts) for a search's base and scope."""
    base_ndn = directory.base_ndn
    if ndn == base_ndn:
        return ([directory.base_entry] if scope != SCOPE_ONE else []), scope != SCOPE_BASE
    if ndn == base_ndn[len(base_ndn) - len(ndn):] and len(ndn) < len(base_ndn):
        # an ancestor of the base (e.g. "" or dc=com): subtree covers all, one-level its child
        if scope == SCOPE_BASE:
            raise LdapError(NO_SUCH_OBJECT, "", "")
        include_base = scope == SCOPE_SUB or len(base_ndn) - len(ndn) == 1
        return ([directory.base_entry] if include_base else []), scope == SCOPE_SUB
    found = directory.find(ndn)
    if found is None:
        matched = directory.base if ndn[len(ndn) - len(base_ndn):] == base_ndn else ""
        raise LdapError(NO_SUCH_OBJECT, "", matched)
    return ([directory.entry(found)] if scope != SCOPE_ONE else []), False


class Entries:
    """What a search's ids stand for: a contact's id (1 and up) in the directory, or -1 - k for first[k].

    A search keeps what it found as ids in an array('i'): 4 bytes each, and not a
    list the cyclic collector walks (a young list of 100,000 entries made every
    collection visit each of them, scattered in memory: 50 ms). A contact deleted
    after it was found is no longer answered; one changed is answered as it is now.
    """

    def __init__(self, directory: "Directory", first: list[Entry]):
        self.directory, self.first = directory, first

    def entry(self, i: int) -> Entry | None:
        return self.first[-1 - i] if i < 0 else self.directory.entry(i)

    def sort_value(self, i: int, key: str) -> str | None:
        """The value an entry sorts by (its least folded value of `key`), None if it has none."""
        if i < 0:
            values = self.first[-1 - i].folded.get(key)
            return min(values) if values else None
        return self.directory.folded(i, key)

    def body(self, i: int, selection: "Selection") -> bytes | None:
        """The SearchResultEntry of an id for `selection`, None if the contact is gone."""
        if i >= 0:
            return self.directory.answer(i, selection)
        entry = self.first[-1 - i]
        cache = entry._bodies
        body = cache.get(selection.key) if cache is not None else None
        if body is None:
            body = ber.tlv(SEARCH_RESULT_ENTRY, entry.encoded_dn + ber.tlv(0x30, selection.encode(entry)))
            if cache is None:
                cache = entry._bodies = {}
            if len(cache) < MAX_BODIES_PER_ENTRY:
                cache[selection.key] = body
        return body


def find_entries(directory: "Directory", first: list[Entry], contacts: bool, flt, found: array,
                 limit: int | None = None) -> Iterator[None]:
    """Append to `found` the ids (Entries) of the entries of `first`, then of the contacts (if
    `contacts`), that match filter `flt`; stop at `limit`. Yields between small units of work
    (MATCH_STEP_UNITS filter units).

    Contacts come from the directory's indexes when the filter allows (in index order,
    alphabetical for name lookups; exact lookups skip the filter while the directory
    has not changed since the search began), else from a scan in id order.
    """
    if first:
        check_first = compile_filter(flt, directory.sounds)  # here, in the search's first slice
        for k, entry in enumerate(first):
            if check_first(entry):
                found.append(-1 - k)
    if not contacts or (limit is not None and len(found) >= limit):
        return
    predicate = None  # compiled when a candidate needs it (an exact lookup needs none)
    stride = max(1, MATCH_STEP_UNITS // filter_units(flt))
    ids, exact, _ = directory.candidates(flt)
    seen: set[int] | None = set()  # an id may come more than once from a lookup
    if ids is None:
        ids, exact, seen = directory.scan(), False, None
    blobs, version = directory.blobs, directory.version
    countdown = stride
    for i in ids:
        countdown -= 1
        if countdown <= 0:
            countdown = stride
            yield
        if seen is not None:
            if i in seen:
                continue
            seen.add(i)
        if i not in blobs:  # deleted since the lookup began
            continue
        if not (exact and directory.version == version):
            if predicate is None:
                predicate = directory.predicate(flt)
            if not predicate(i):
                continue
        found.append(i)
        if limit is not None and len(found) >= limit:
            return


def sort_steps(ids: array, keys: list[tuple[str, bool]], entries: Entries, result: array) -> Iterator[bool]:
    """Sort the entries of `ids` into `result` by `keys` [(attribute key, reverse)], SORT_STEP entries per step
    (`result` stays empty if the steps are stopped before the end).

    One stable pass per key, least significant first; an entry without the key
    sorts after all others (before them when reversed: RFC 2891 §2.2). Each pass
    sorts slices by one call each and merges them (heapq.merge is stable: of equal
    values, the earlier slice's come first).
    """
    ordered = ids
    sort_value = entries.sort_value
    for key, reverse in reversed(keys):
        def value(i: int, key=key) -> str:
            return sort_value(i, key) or ""  # "": a contact deleted while it was sorted
        present, absent = array("i"), array("i")
        for start in range(0, len(ordered), SORT_STEP):
            for i in ordered[start:start + SORT_STEP]:
                (present if sort_value(i, key) is not None else absent).append(i)
            yield True
        runs = []
        for start in range(0, len(present), SORT_STEP):
            runs.append(array("i", sorted(present[start:start + SORT_STEP], key=value, reverse=reverse)))
            yield True
        merged = array("i")
        for count, i in enumerate(heapq.merge(*runs, key=value, reverse=reverse), 1):
            merged.append(i)
            if count % SORT_STEP == 0:
                yield True
        ordered = absent + merged if reverse else merged + absent
    result[:] = ordered


def encode_entries(message_id: int, selection: "Selection", ids: Iterable[int], entries: Entries) -> tuple[bytes, int]:
    """SearchResultEntry messages of `ids` (those still there), and how many."""
    head = ber.integer(message_id)
    tlv = ber.tlv
    chunks = []
    for i in ids:
        body = entries.body(i, selection)
        if body is not None:
            chunks.append(tlv(0x30, head + body))
    return b"".join(chunks), len(chunks)


# -- fair shares of search time, and buffered bytes (pure bookkeeping for the shell) ----

MAX_SEARCHES_PER_CLIENT = 4  # searches in progress per client (IPv4 address or IPv6 /64)
MAX_SEARCHES = 32  # in total: each holds its filter and, sorted or paged, every match
SEARCH_BUDGET = 10.0  # seconds of search time a client may use before it waits behind lighter clients
SEARCH_REFILL = 0.5  # seconds of it given back per second
USAGE_GRAIN = 0.01  # seconds: usages compared in these (a phone's search takes about 0.2 ms)
MAX_CLIENTS_REMEMBERED = 10000


@dataclass(eq=False)
class SearchTicket:
    """A search admitted by FairShare; `turn` is the shell's handle to wake it."""

    client: str
    turn: object = None
    delayed: bool = False
    arrival: int = 0


class FairShare:
    """Which search runs its next slice, so one client's expensive searches cannot starve others' cheap ones.

    Slices run one at a time (the shell's gate). Each client has a budget of
    search time (a token bucket: `budget` seconds, `refill` seconds given back per
    second); its usage is what it has spent and not got back. Of the searches
    waiting for a slice, the one whose client has the least usage goes first (the
    earliest among equals, to USAGE_GRAIN), so a client that has used much recent
    search time waits behind the others, and a phone that has used none goes next.
    When a search is passed over for another client's it counts once in `delayed`.
    Searches in progress are capped per client and in total (`start` refuses).
    """

    def __init__(self, per_client: int = MAX_SEARCHES_PER_CLIENT, total: int = MAX_SEARCHES, budget: float = SEARCH_BUDGET,
                 refill: float = SEARCH_REFILL, max_clients: int = MAX_CLIENTS_REMEMBERED):
        self.per_client, self.total = per_client, total
        self.running = 0
        self.delayed = 0
        self._running_by_client: dict[str, int] = {}
        self._budgets = TokenBuckets(refill, budget, max_clients)
        self._waiting: list[SearchTicket] = []  # in order of arrival
        self._arrivals = 0

    def start(self, client: str) -> SearchTicket | None:
        """A ticket for a new search, or None when its client or the server has too many in progress."""
        if self.running >= self.total or self._running_by_client.get(client, 0) >= self.per_client:
            return None
        self.running += 1
        self._running_by_client[client] = self._running_by_client.get(client, 0) + 1
        return SearchTicket(client)

    def end(self, ticket: SearchTicket) -> None:
        if ticket in self._waiting:
            self._waiting.remove(ticket)
        self.running -= 1
        left = self._running_by_client.get(ticket.client, 1) - 1
        if left > 0:
            self._running_by_client[ticket.client] = left
        else:
            self._running_by_client.pop(ticket.client, None)

    def want(self, ticket: SearchTicket) -> None:
        """The ticket's search waits for its next slice."""
        self._arrivals += 1
        ticket.arrival = self._arrivals
        self._waiting.append(ticket)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def running_from(self, client: str) -> int:
        return self._running_by_client.get(client, 0)

    def usage(self, client: str, now: float) -> float:
        """Seconds of search time `client` has spent and not got back (at most the budget)."""
        return self._budgets.capacity - self._budgets.level(client, now)

    def next(self, now: float) -> SearchTicket | None:
        """The waiting ticket to run now (removed from the waiting), or None."""
        if not self._waiting:
            return None
        usage = {ticket.client: 0 for ticket in self._waiting}
        for client in usage:  # in grains: clients that used about as little (phones) go in order of arrival
            usage[client] = int(self.usage(client, now) / USAGE_GRAIN)
        chosen = min(self._waiting, key=lambda t: (usage[t.client], t.arrival))
        for ticket in self._waiting:
            if ticket is chosen:
                break
            if ticket.client != chosen.client and not ticket.delayed:  # passed over for a lighter client
                ticket.delayed = True
                self.delayed += 1
        self._waiting.remove(chosen)
        return chosen

    def charge(self, client: str, seconds: float, now: float) -> None:
        """A slice of `seconds` ran for `client`."""
        self._budgets.take(client, seconds, now, floor=0.0)


MAX_BUFFERED = 16 * 1024 * 1024  # bytes of unfinished messages held across all connections
MAX_BUFFERED_PER_CLIENT = 4 * 1024 * 1024


class BufferBudget:
    """Bytes that sessions hold between reads (unfinished messages), capped in total and per client."""

    def __init__(self, total: int = MAX_BUFFERED, per_client: int = MAX_BUFFERED_PER_CLIENT):
        self.total, self.per_client = total, per_client
        self.held = 0
        self._by_holder: dict[object, tuple[str, int]] = {}
        self._by_client: dict[str, int] = {}

    def hold(self, holder: object, client: str, size: int) -> bool:
        """`holder` now holds `size` bytes; False if that grew past a cap (the holder is then refused)."""
        _, before = self._by_holder.get(holder, (client, 0))
        grew = size > before
        self._set(holder, client, size)
        return not grew or (self.held <= self.total and self._by_client.get(client, 0) <= self.per_client)

    def release(self, holder: object) -> None:
        client, _ = self._by_holder.get(holder, ("", 0))
        self._set(holder, client, 0)

    def _set(self, holder: object, client: str, size: int) -> None:
        _, before = self._by_holder.pop(holder, (client, 0))
        self.held += size - before
        by_client = self._by_client.get(client, 0) + size - before
        if by_client > 0:
            self._by_client[client] = by_client
        else:
            self._by_client.pop(client, None)
        if size:
            self._by_holder[holder] = (client, size)


# -- failed-bind throttle and connection caps (pure bookkeeping for the shell) ----


class BindThrottle:
    """Per-address delay before a failed bind is answered: doubles per recent failure, capped."""

    def __init__(self, first: float = 0.25, cap: float = 8.0, forget_after: float = 600.0, max_addresses: int = 10000):
        self.first, self.cap, self.forget_after, self.max_addresses = first, cap, forget_after, max_addresses
        self._failures: dict[str, tuple[int, float]] = {}

    def failed(self, address: str, now: float) -> float:
        count, last = self._failures.pop(address, (0, now))
        if now - last > self.forget_after:
            count = 0
        count += 1
        if len(self._failures) >= self.max_addresses:
            self._failures.pop(next(iter(self._failures)))
        self._failures[address] = (count, now)
        return min(self.cap, self.first * 2 ** (count - 1))

    def succeeded(self, address: str) -> None:
        self._failures.pop(address, None)


class ConnectionCaps:
    """Connections open per client address and in total, both bounded."""

    def __init__(self, per_client: int, total: int):
        self.per_client, self.total = per_client, total
        self.open = 0
        self._by_address: dict[str, int] = {}

    def admit(self, address: str) -> bool:
        if self.open >= self.total or self._by_address.get(address, 0) >= self.per_client:
            return False
        self.open += 1
        self._by_address[address] = self._by_address.get(address, 0) + 1
        return True

    def open_from(self, address: str) -> int:
        return self._by_address.get(address, 0)

    def release(self, address: str) -> None:
        self.open -= 1
        left = self._by_address.get(address, 1) - 1
        if left > 0:
            self._by_address[address] = left
        else:
            self._by_address.pop(address, None)


# -- the session ------------------------------------------------------------------


class FatalProtocolError(Exception):
    """The connection must end with a Notice of Disconnection (§4.1.1)."""


class TooLarge(BerError):
    """A message longer than the session accepts now, refused from its header."""


class LdapSession:
    """One client connection's LDAP state; feed it bytes, send what it returns.

    `client` names the connection's client (IPv4 address or IPv6 /64) for `buffers`,
    the budget of bytes held across all connections (None: not capped).
    """

    def __init__(self, policy: Callable[[], Policy], directory: Callable[[str], Directory],
                 clock: Callable[[], float], tls: bool = False, client: str = "-", buffers: BufferBudget | None = None):
        self.policy = policy
        self.directory = directory
        self.clock = clock
        self.tls = tls
        self.client = client
        self.buffers = buffers
        self.state = ANONYMOUS
        self.bound_dn = ""
        self._buffer = bytearray()
        self._queue: deque[bytes] = deque()  # messages cut from the buffer, not answered yet
        self._abandoned: set[int] = set()  # message ids abandoned by a request queued with them
        self._paged: dict[bytes, PagedSearch] = {}
        self._cookies = 0

    @property
    def closed(self) -> bool:
        return self.state == CLOSED

    def _transition(self, event: str) -> None:
        self.state = TRANSITIONS[(self.state, event)]

    def tls_started(self) -> None:
        self.tls = True

    def close(self) -> None:
        """The connection is gone: give back what this session held."""
        if self.state != CLOSED:
            self._transition(EV_FATAL)
        self._drop_input()

    # -- framing -------------------------------------------------------------

    def receive(self, data: bytes) -> list:
        """Answer the complete messages in `data` (plus what was buffered), up to MAX_BATCH of them.

        A search ends the list as a `SearchCursor` for the shell to run; the
        messages after it wait (`backlog`) until the shell calls again.
        """
        if self.state == CLOSED:
            return []
        if data:
            self._buffer += data
        out: list = []
        handled = handled_bytes = 0
        while handled < MAX_BATCH and handled_bytes < MAX_BATCH_BYTES:
            if not self._queue:
                try:
                    self._frame()
                except BerError as exc:
                    return self._fatal(out, str(exc), oversize=isinstance(exc, TooLarge))
                if not self._queue:
                    break
            raw = self._queue.popleft()
            handled += 1
            handled_bytes += len(raw)
            try:
                self._handle(raw, out, pending=bool(self._queue or self._buffer))
            except (BerError, FatalProtocolError) as exc:
                return self._fatal(out, str(exc))
            if self.state == CLOSED or (out and isinstance(out[-1], (StartTLS, SearchCursor))):
                break
        if self.buffers is not None and not self.buffers.hold(self, self.client, self.held):
            if out and isinstance(out[-1], SearchCursor):
                out.pop()  # not run: the connection ends here
            return self._fatal(out, "the server holds too much unfinished input; try again later", code=BUSY, oversize=True)
        return out

    @property
    def held(self) -> int:
        """Bytes of input held between calls: the unfinished message and those waiting to be answered."""
        return len(self._buffer) + sum(len(raw) for raw in self._queue)

    def _frame(self) -> None:
        """Cut up to MAX_BATCH complete messages off the buffer into the queue.

        Before a successful bind a message may be only `max_unbound_message` long, and
        a longer one is refused from its header, before its bytes arrive.
        """
        policy = self.policy()
        limit = policy.max_message if self.state == BOUND else policy.max_unbound_message
        buffer = self._buffer
        view = memoryview(buffer)
        pos, size, frames = 0, len(buffer), []
        try:
            while pos < size and len(frames) < MAX_BATCH:
                try:
                    total = ber.frame_length(view[pos:pos + 6])
                except Incomplete:
                    break
                if buffer[pos] != 0x30:
                    raise BerError(f"message starts with tag 0x{buffer[pos]:02x}, not SEQUENCE")
                if total > limit:
                    if frames and self.state != BOUND:
                        break  # a bind before it may allow it: answered first
                    raise TooLarge(f"message of {total} bytes is over the limit of {limit} bytes"
                                   + ("" if self.state == BOUND else " before a bind"))
                if pos + total > size:
                    break
                frames.append(bytes(view[pos:pos + total]))
                pos += total
        finally:
            view.release()
        if pos == size:
            self._buffer = bytearray()  # not the emptied one: it would keep its size
        elif pos:
            del buffer[:pos]
        self._queue.extend(frames)
        # abandon requests (§4.11) take effect on the messages queued with them
        self._abandoned = self._abandoned_ids(frames)

    @property
    def backlog(self) -> bool:
        """True when a complete message waits: call `receive(b"")` before reading more."""
        if self.state == CLOSED:
            return False
        if self._queue:
            return True
        try:
            return len(self._buffer) >= ber.frame_length(self._buffer[:6])
        except Incomplete:
            return False
        except BerError:
            return True  # the next receive() answers it with a Notice of Disconnection

    def _fatal(self, out: list, reason: str, code: int = PROTOCOL_ERROR, oversize: bool = False) -> list:
        out.append(notice_of_disconnection(code, reason))
        out.append(Close(reason, oversize))
        if self.state != CLOSED:
            self._transition(EV_FATAL)
        self._drop_input()
        return out

    def _drop_input(self) -> None:
        self._buffer = bytearray()
        self._queue.clear()
        self._paged.clear()
        if self.buffers is not None:
            self.buffers.release(self)

    def _abandoned_ids(self, messages: list[bytes]) -> set[int]:
        ids = set()
        for raw in messages:
            if len(raw) > 4 and ABANDON_REQUEST in raw:
                try:
                    _, s, e = ber.read_header(raw, 0, len(raw))
                    a, b = ber.expect(raw, s, e, ber.INTEGER, "messageID")
                    tag, c, d = ber.read_header(raw, b, e)
                    if tag == ABANDON_REQUEST:
                        ids.add(ber.read_integer(raw, c, d))
                except BerError:
                    pass  # reported when the message itself is handled
        return ids

    def _handle(self, raw: bytes, out: list, pending: bool) -> None:
        _, s, e = ber.read_header(raw, 0, len(raw))
        a, b = ber.expect(raw, s, e, ber.INTEGER, "messageID")
        message_id = ber.read_integer(raw, a, b)
        if not 0 <= message_id <= 0x7FFFFFFF:
            raise BerError("messageID out of range")
        tag, op_start, op_end = ber.read_header(raw, b, e)
        controls: list[Control] = []
        if op_end < e:
            t, c, d = ber.read_header(raw, op_end, e)
            if t != CONTROLS_TAG or d != e:
                raise BerError("unexpected element after the protocolOp")
            controls = decode_controls(raw, c, d)
        if message_id == 0 or (message_id in self._abandoned and tag != ABANDON_REQUEST):
            if message_id == 0:
                raise BerError("messageID 0 is reserved for unsolicited notifications")
            return  # abandoned before it ran: no response at all (§4.11)
        handler = OPERATIONS.get(tag, LdapSession._unknown_operation)
        handler(self, message_id, tag, raw, op_start, op_end, controls, out, pending)

    # -- operations ------------------------------------------------------------

    def _unknown_operation(self, message_id, tag, raw, start, stop, controls, out, pending):
        raise FatalProtocolError(f"unknown protocolOp tag 0x{tag:02x}")

    def _bind(self, message_id, tag, raw, start, stop, controls, out, pending):
        a, b = ber.expect(raw, start, stop, ber.INTEGER, "version")
        version = ber.read_integer(raw, a, b)
        c, d = ber.expect(raw, b, stop, ber.OCTET_STRING, "name")
        name = _text(raw, c, d)
        auth_tag, x, y = ber.read_header(raw, d, stop)
        policy = self.policy()
        self._paged.clear()
        code, diagnostic = self._check_bind(policy, version, name, auth_tag, raw[x:y])
        if code == ANONYMOUS_BIND:
            code = SUCCESS
            self._transition(EV_BIND_ANONYMOUS)
        elif code == SUCCESS:
            self._transition(EV_BIND_OK)
        else:
            self._transition(EV_BIND_FAILED)
            self.bound_dn = ""
            out.append(BindFailed(name, code))
        out.append(message(message_id, result(BIND_RESPONSE, code, diagnostic)))

    def _check_bind(self, policy: Policy, version: int, name: str, auth_tag: int, credentials: bytes) -> tuple[int, str]:
        if version not in (2, 3):
            return PROTOCOL_ERROR, "only LDAPv3 (and v2) binds"
        if auth_tag != 0x80:
            return AUTH_METHOD_NOT_SUPPORTED, "only simple binds"
        if not name and not credentials:
            # an anonymous bind succeeds so clients can read the Root DSE; reading the
            # address book anonymously is refused at the search unless policy.anonymous
            self.bound_dn = ""
            return ANONYMOUS_BIND, ""
        if not credentials:
            return UNWILLING_TO_PERFORM, "unauthenticated bind (a name without a password) refused"
        if not self.tls and not policy.plain_bind:
            return CONFIDENTIALITY_REQUIRED, "use StartTLS or LDAPS before sending a password"
        expected = policy.password or ""
        name_ok = self._is_user(policy, name)
        password_ok = bool(expected) and hmac.compare_digest(credentials, expected.encode())
        if name_ok and password_ok:
            self.bound_dn = f"cn={escape_rdn_value(policy.user)},{policy.base}" if "=" not in policy.user else policy.user
            return SUCCESS, ""
        return INVALID_CREDENTIALS, ""

    @staticmethod
    def _is_user(policy: Policy, name: str) -> bool:
        user = policy.user
        if "=" in user:
            try:
                return parse_dn(name) == parse_dn(user)
            except DnError:
                return False
        if fold_name(name) == fold_name(user):
            return True
        try:
            ndn = parse_dn(name)
            base = parse_dn(policy.base)
        except DnError:
            return False
        wanted = fold_name(user)
        return len(ndn) == len(base) + 1 and ndn[1:] == base and ndn[0] in ((("cn", wanted),), (("uid", wanted),))

    def _unbind(self, message_id, tag, raw, start, stop, controls, out, pending):
        self._transition(EV_UNBIND)
        out.append(Close(None))

    def _abandon(self, message_id, tag, raw, start, stop, controls, out, pending):
        target = ber.read_integer(raw, start, stop)
        for cookie, paged in list(self._paged.items()):
            if paged.message_id == target:
                del self._paged[cookie]

    def _write(self, message_id, tag, raw, start, stop, controls, out, pending):
        out.append(message(message_id, result(_WRITE_RESPONSES[tag], UNWILLING_TO_PERFORM, "the address book is read-only over LDAP")))

    def _extended(self, message_id, tag, raw, start, stop, controls, out, pending):
        a, b = ber.expect(raw, start, stop, 0x80, "requestName")
        oid = _text(raw, a, b)
        if oid == OID_STARTTLS:
            if self.tls:
                code, diagnostic = OPERATIONS_ERROR, "TLS is already on"
            elif pending:
                code, diagnostic = OPERATIONS_ERROR, "other operations are outstanding"
            else:
                out.append(message(message_id, result(EXTENDED_RESPONSE, SUCCESS, extra=ber.octets(OID_STARTTLS, 0x8A))))
                out.append(StartTLS())
                return
            out.append(message(message_id, result(EXTENDED_RESPONSE, code, diagnostic, extra=ber.octets(OID_STARTTLS, 0x8A))))
            return
        if oid == OID_WHOAMI:
            authz = f"dn:{self.bound_dn}" if self.state == BOUND and self.bound_dn else ""
            out.append(message(message_id, result(EXTENDED_RESPONSE, SUCCESS, extra=ber.octets(authz, 0x8B))))
            return
        out.append(message(message_id, result(EXTENDED_RESPONSE, PROTOCOL_ERROR, f"unsupported extended operation {oid}")))

    def _may_read(self, policy: Policy) -> bool:
        return self.state == BOUND or policy.anonymous

    def _compare(self, message_id, tag, raw, start, stop, controls, out, pending):
        a, b = ber.expect(raw, start, stop, ber.OCTET_STRING, "entry")
        dn = _text(raw, a, b)
        c, d = ber.expect(raw, b, stop, 0x30, "ava")
        x, y = ber.expect(raw, c, d, ber.OCTET_STRING, "attributeDesc")
        p, q = ber.expect(raw, y, d, ber.OCTET_STRING, "assertionValue")
        policy = self.policy()
        try:
            if not self._may_read(policy):
                raise LdapError(INSUFFICIENT_ACCESS_RIGHTS, ANONYMOUS_REFUSED)
            directory = self.directory(policy.base)
            entry = self._find_entry(directory, dn)
            key = attribute_key(_description(raw, x, y))
            if key is None or key not in entry.values:
                raise LdapError(NO_SUCH_ATTRIBUTE, "")
            predicate = compile_filter((F_EQ, key, fold_for(key)(_text(raw, p, q)), ""))
            code, diagnostic = (COMPARE_TRUE if predicate(entry) else COMPARE_FALSE), ""
        except LdapError as exc:
            code, diagnostic = exc.result_code, str(exc)
        out.append(message(message_id, result(COMPARE_RESPONSE, code, diagnostic)))

    def _find_entry(self, directory: Directory, dn: str) -> Entry:
        try:
            ndn = parse_dn(dn)
        except DnError as exc:
            raise LdapError(INVALID_DN_SYNTAX, str(exc)) from None
        if ndn == directory.base_ndn:
            return directory.base_entry
        found = directory.find(ndn)
        if found is None:
            raise LdapError(NO_SUCH_OBJECT, "", directory.base if ndn[1:] == directory.base_ndn else "")
        return directory.entry(found)

    # -- search ---------------------------------------------------------------

    def _search(self, message_id, tag, raw, start, stop, controls, out, pending):
        request = decode_search(raw, start, stop)
        try:
            cursor = self._start_search(message_id, request, controls, self.policy())
        except LdapError as exc:
            if exc.result_code == INSUFFICIENT_ACCESS_RIGHTS:
                out.append(BindFailed("", INSUFFICIENT_ACCESS_RIGHTS))  # an anonymous read: counted and slowed like a bad bind
            out.append(message(message_id, result(SEARCH_RESULT_DONE, exc.result_code, str(exc), exc.matched_dn)))
            out.append(Searched(0))
            return
        out.append(cursor)

    def _start_search(self, message_id: int, request: SearchRequest, controls: list[Control], policy: Policy) -> SearchCursor:
        """The search as a cursor whose steps do the work, or LdapError for what is refused at once."""
        paged = sort = None
        for control in controls:
            if control.oid == OID_PAGED_RESULTS:
                paged = decode_paged(control.value)
            elif control.oid == OID_SORT_REQUEST:
                sort = (decode_sort(control.value), control.critical, control.value)
            elif control.critical and control.oid not in SUPPORTED_CONTROLS:
                raise LdapError(UNAVAILABLE_CRITICAL_EXTENSION, f"control {control.oid} is not supported")
        try:
            ndn = parse_dn_cached(request.base)
        except DnError as exc:
            raise LdapError(INVALID_DN_SYNTAX, str(exc)) from None
        directory = self.directory(policy.base)
        time_limit = min(request.time_limit or policy.time_limit, policy.time_limit)
        cursor = SearchCursor(message_id, self.clock, self.clock() + time_limit)
        selection = self._selection(request)
        if not ndn and request.scope == SCOPE_BASE:
            # the Root DSE: readable before a bind, so clients can find StartTLS (RFC 4513 §3.1.1)
            cursor.steps = self._search_steps(cursor, directory, [directory.root_dse], False, request.filter, selection,
                                              None, None, b"", False)
            return cursor
        if not self._may_read(policy):
            raise LdapError(INSUFFICIENT_ACCESS_RIGHTS, ANONYMOUS_REFUSED)
        sort_keys, sort_control = self._sort_keys(sort) if sort is not None else (None, b"")
        critical_sort = sort is not None and sort[1]
        if paged is None:
            first, contacts = resolve_scope(directory, ndn, request.scope)
            size_limit = min(request.size_limit or policy.size_limit, policy.size_limit)
            cursor.steps = self._search_steps(cursor, directory, first, contacts, request.filter, selection, size_limit,
                                              sort_keys, sort_control, critical_sort)
            return cursor
        # paged results (RFC 2696): the whole result is found (and sorted) once; pages are cut from it
        page_size, cookie = paged
        # a cookie continues only the very search it came from, sort order included
        identity = request.base.lower().encode() + bytes([request.scope]) + request.filter_bytes + (sort[2] if sort else b"")
        if cookie:
            state = self._paged.get(cookie)
            if state is None or state.identity != identity:
                raise LdapError(UNWILLING_TO_PERFORM, "paged results cookie is invalid")
            if page_size == 0:  # the client gives up on the rest (RFC 2696 §3)
                del self._paged[cookie]
            state.message_id = message_id
        elif page_size != 0:
            first, contacts = resolve_scope(directory, ndn, request.scope)
            cursor.steps = self._paged_steps(cursor, directory, first, contacts, request, selection, sort_keys,
                                             sort_control, critical_sort, page_size, identity, sort is not None, policy)
            return cursor
        if page_size == 0:
            cursor.steps = self._done_steps(cursor, SUCCESS, encode_control(
                OID_PAGED_RESULTS, ber.sequence(ber.integer(0), ber.octets(b""))))
            return cursor
        cursor.steps = self._page_steps(cursor, state, cookie, page_size, selection, sort is not None, policy, False)
        return cursor

    def _search_steps(self, cursor: SearchCursor, directory: Directory, first: list[Entry], contacts: bool, flt,
                      selection: Selection, size_limit: int | None, sort_keys, sort_control: bytes,
                      critical_sort: bool) -> Iterator[bool]:
        """Find, then (sorted) send; unsorted entries are sent as they are found. Stops at the size limit."""
        found = array("i")
        entries = Entries(directory, first)
        timed_out = False
        stream = sort_keys is None
        # one more than the limit tells "exceeded" apart; a sorted result needs every match
        finder = find_entries(directory, first, contacts, flt, found,
                              None if not stream or size_limit is None else size_limit + 1)
        try:
            for _ in finder:
                if stream and len(found) > cursor.given:
                    self._send_found(cursor, selection, found, entries, size_limit)
                yield True
        except TimeUp:
            timed_out = True
            finder.close()
        exceeded = size_limit is not None and len(found) > size_limit
        if stream:
            self._send_found(cursor, selection, found, entries, size_limit)
        else:
            ordered, sort_control, timed_out = yield from self._sorted(found, sort_keys, entries, sort_control,
                                                                       critical_sort, timed_out)
            del found
            try:
                yield from self._send_steps(cursor, selection, ordered[:size_limit], entries)
            except TimeUp:
                timed_out = True
        code = TIME_LIMIT_EXCEEDED if timed_out else SIZE_LIMIT_EXCEEDED if exceeded else SUCCESS
        self._finish(cursor, code, sort_control)

    @staticmethod
    def _sorted(found: array, sort_keys, entries: Entries, sort_control: bytes, critical: bool, timed_out: bool):
        """Steps that sort `found` unless the time is up: (the ids to send, the sort control, timed out)."""
        ordered = array("i")
        if not timed_out:
            try:
                yield from sort_steps(found, sort_keys, entries, ordered)
                return ordered, sort_control, False
            except TimeUp:
                pass
        unsorted = encode_control(OID_SORT_RESPONSE, ber.sequence(ber.enumerated(TIME_LIMIT_EXCEEDED)))
        return (array("i") if critical else found), unsorted, True

    @staticmethod
    def _send_found(cursor: SearchCursor, selection: Selection, found: array, entries: Entries, size_limit: int | None) -> None:
        end = len(found) if size_limit is None else min(len(found), size_limit)
        if end > cursor.given:
            encoded, count = encode_entries(cursor.message_id, selection, found[cursor.given:end], entries)
            cursor.out.append(encoded)
            cursor.given = end
            cursor.sent += count

    @staticmethod
    def _send_steps(cursor: SearchCursor, selection: Selection, ids: array, entries: Entries) -> Iterator[bool]:
        for start in range(0, len(ids), EMIT_STEP):
            encoded, count = encode_entries(cursor.message_id, selection, ids[start:start + EMIT_STEP], entries)
            cursor.out.append(encoded)
            cursor.given += min(EMIT_STEP, len(ids) - start)
            cursor.sent += count
            yield True

    @staticmethod
    def _finish(cursor: SearchCursor, code: int, controls: bytes) -> None:
        cursor.out.append(message(cursor.message_id, result(SEARCH_RESULT_DONE, code, ""),
                                  ber.tlv(CONTROLS_TAG, controls) if controls else b""))
        cursor.out.append(Searched(cursor.sent, code == TIME_LIMIT_EXCEEDED))

    def _done_steps(self, cursor: SearchCursor, code: int, controls: bytes) -> Iterator[bool]:
        self._finish(cursor, code, controls)
        yield False

    def _paged_steps(self, cursor: SearchCursor, directory: Directory, first: list[Entry], contacts: bool,
                     request: SearchRequest, selection: Selection, sort_keys, sort_control: bytes, critical_sort: bool,
                     page_size: int, identity: bytes, sorted_request: bool, policy: Policy) -> Iterator[bool]:
        """The first page: every match found (and sorted) and kept for the pages after it."""
        found = array("i")
        entries = Entries(directory, first)
        timed_out = False
        limit = request.size_limit + 1 if request.size_limit and sort_keys is None else None
        finder = find_entries(directory, first, contacts, request.filter, found, limit)
        try:
            for _ in finder:
                yield True
        except TimeUp:
            timed_out = True
            finder.close()
        if sort_keys is not None:
            found, sort_control, timed_out = yield from self._sorted(found, sort_keys, entries, sort_control,
                                                                     critical_sort, timed_out)
        exceeded = bool(request.size_limit) and len(found) > request.size_limit
        if exceeded:
            del found[request.size_limit:]
        self._cookies += 1
        cookie = str(self._cookies).encode()
        if len(self._paged) >= MAX_PAGED_SEARCHES:
            self._paged.pop(next(iter(self._paged)))
        state = self._paged[cookie] = PagedSearch(identity, found, entries, 0, exceeded, sort_control, cursor.message_id)
        yield from self._page_steps(cursor, state, cookie, page_size, selection, sorted_request, policy, timed_out)

    def _page_steps(self, cursor: SearchCursor, state: PagedSearch, cookie: bytes, page_size: int, selection: Selection,
                    sorted_request: bool, policy: Policy, timed_out: bool) -> Iterator[bool]:
        size = min(page_size, policy.size_limit)
        try:
            yield from self._send_steps(cursor, selection, state.results[state.position:state.position + size], state.entries)
        except TimeUp:
            timed_out = True
        state.position += cursor.given
        done = state.position >= len(state.results) or timed_out
        if done:
            self._paged.pop(cookie, None)
        code = TIME_LIMIT_EXCEEDED if timed_out else (SIZE_LIMIT_EXCEEDED if done and state.size_exceeded else SUCCESS)
        control = encode_control(OID_PAGED_RESULTS, ber.sequence(ber.integer(len(state.results)), ber.octets(b"" if done else cookie)))
        self._finish(cursor, code, control + (state.sort_control if sorted_request else b""))

    def _sort_keys(self, sort) -> tuple[list[tuple[str, bool]] | None, bytes]:
        """(attribute keys with their direction, the sort response control); None: sent unsorted (RFC 2891 §2.2)."""
        keys, critical, _ = sort
        resolved = []
        for attr, rule, reverse in keys:
            key = attribute_key(attr)
            if key is None or (rule is not None and rule not in ORDERING_RULES):
                code = NO_SUCH_ATTRIBUTE if key is None else INAPPROPRIATE_MATCHING
                if critical:
                    raise LdapError(UNAVAILABLE_CRITICAL_EXTENSION, f"cannot sort by {attr}")
                return None, encode_control(OID_SORT_RESPONSE, ber.sequence(ber.enumerated(code)))
            resolved.append((key, reverse))
        return resolved, encode_control(OID_SORT_RESPONSE, ber.sequence(ber.enumerated(SUCCESS)))

    def _selection(self, request: SearchRequest) -> "Selection":
        key = (tuple(request.attributes), request.types_only)
        selection = _SELECTIONS.get(key)
        if selection is None:
            selection = Selection.of(request.attributes, request.types_only)
            selection.key = key
            if len(_SELECTIONS) >= MAX_SELECTIONS:
                _SELECTIONS.pop(next(iter(_SELECTIONS)))
            _SELECTIONS[key] = selection
        return selection


OPERATIONS: dict[int, Callable] = {
    BIND_REQUEST: LdapSession._bind,
    UNBIND_REQUEST: LdapSession._unbind,
    SEARCH_REQUEST: LdapSession._search,
    COMPARE_REQUEST: LdapSession._compare,
    ABANDON_REQUEST: LdapSession._abandon,
    EXTENDED_REQUEST: LdapSession._extended,
    MODIFY_REQUEST: LdapSession._write,
    ADD_REQUEST: LdapSession._write,
    DEL_REQUEST: LdapSession._write,
    MODDN_REQUEST: LdapSession._write,
}


from .ldapindex import Directory  # noqa: E402  (the index reads this module's schema and filters)
