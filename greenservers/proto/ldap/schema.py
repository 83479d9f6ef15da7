"""The directory's schema: attribute types and their aliases, and how values are folded for matching.

Names fold to caseIgnoreMatch's form (`fold_name`), approximately to one
Soundex code per word (`fold_loose`); phone numbers to `fold_number`'s
(formatting removed, "+" written "00"), equal when `same_number` says so, a
prefix matching in either form (`number_prefix_match`). The address book
folds with these same functions.
"""

from __future__ import annotations

import functools
import itertools
import re
import unicodedata
from collections.abc import Callable

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


def attribute_key_sent(description: bytes) -> str | None:
    """attribute_key of a description as it was sent (UTF-8), by its bytes: nothing decoded for one seen before."""
    key = _KEYS_SENT.get(description, _UNSEEN)
    if key is _UNSEEN:
        key = attribute_key(description.decode("utf-8", "replace"))
        if len(_KEYS_SENT) >= MAX_CACHED:
            _KEYS_SENT.clear()
        _KEYS_SENT[description] = key
    return key


_UNSEEN = object()
MAX_CACHED = 1024  # attribute descriptions (and attribute lists) decoded before: phones repeat theirs
_KEYS: dict[str, str | None] = {}
_KEYS_SENT: dict[bytes, str | None] = {}


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
    for word, plain in zip(words, letters, strict=True):
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
    for code in codes:  # noqa: SIM110 (a loop: all() would make a generator per value checked)
        if code not in value_sounds:
            return False
    return True


# a table by code point, not str.maketrans's dict: translate looks every character up, and each one a dict
# lacks (every digit) raised KeyError (about 5,000 instructions a number); past its end (IndexError, a
# LookupError) a character stays as it is
_NUMBER_FORMATTING = [None if chr(c) in " \t-.()[]/" else chr(c) for c in range(128)]


def fold_number(text: str) -> str:
    """Phone-number form: formatting removed, a leading '+' written '00' ("+49 (30) 12-3" -> "004930123")."""
    if text.isdigit():  # what a phone sends: already folded (isdigit is true of other scripts' digits too: kept)
        return text
    if text[1:].isdigit() and text[0] == "+":
        return "00" + text[1:]
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
_COUNTRY_TWO_DIGITS = frozenset([
    "20", "27", "30", "31", "32", "33", "34", "36", "39", "40", "41", "43", "44", "45", "46", "47", "48", "49", "51", "52",
    "53", "54", "55", "56", "57", "58", "60", "61", "62", "63", "64", "65", "66", "81", "82", "84", "86", "90", "91", "92",
    "93", "94", "95", "98",
])


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


FOLDER_OF: dict[str, Callable[[str], str]] = {key: FOLDERS[kind] for key, (_, kind) in ATTRIBUTE_TYPES.items()}


def fold_for(key: str) -> Callable[[str], str]:
    return FOLDER_OF[key]
