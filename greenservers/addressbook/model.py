"""Contacts: the nine fields, the limits, validation (each bad field named), and the admin search's matching.

Names and numbers are folded as the LDAP server folds them (fold_name,
fold_number of greenservers/proto/ldap/schema.py), so the admin search and
LDAP agree: a number matches regardless of formatting, "+" written "00"
("+49 (30) 123-4" -> "0049301234").
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, fields as dataclass_fields
from typing import Any

from ..proto.ldap import fold_name, fold_number

FIELDS = ("first_name", "last_name", "display_name", "company", "work", "mobile", "home", "extension", "email")
NAME_FIELDS = ("first_name", "last_name", "display_name", "company")
NUMBER_FIELDS = ("work", "mobile", "home", "extension")

MAX_CONTACTS = 200_000  # the whole book; an import that would pass it is refused
MAX_IMPORT_BYTES = 24 * 1024 * 1024  # room for MAX_CONTACTS contacts of typical length
MAX_REPORTED_ERRORS = 100  # an import report lists at most this many problems
MAX_SEARCH_LENGTH = 100

MAX_NAME = 128
MAX_NUMBER = 32
MAX_NUMBER_DIGITS = 20  # E.164 allows 15; room for a 00 prefix and carrier codes
MAX_EXTENSION = 16
MAX_EMAIL = 254  # RFC 5321 path limit

_NUMBER_RE = re.compile(r"\+?[0-9 ()./\-]+")
_NON_DIGITS = re.compile(r"[^0-9]+")
_EXTENSION_RE = re.compile(r"[0-9*#]+")
_DNS_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?"
_EMAIL_RE = re.compile(rf"[A-Za-z0-9!#$%&'*+/=?^_`{{|}}~.\-]+@{_DNS_LABEL}(?:\.{_DNS_LABEL})+")
# A cell starting with one of these is a formula to a spreadsheet (CSV injection, as OWASP
# lists them); the full-width forms as a precaution: a spreadsheet that normalises what it
# reads (NFKC) would take them for the ASCII ones.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\n", "\uff1d", "\uff0b", "\uff0d", "\uff20")
TEXT_MARK = "'"  # what makes a spreadsheet take a cell as text


@dataclass(frozen=True)
class Contact:
    """One contact: its id and the nine fields, all str ("" when empty)."""

    id: int
    first_name: str = ""
    last_name: str = ""
    display_name: str = ""
    company: str = ""
    work: str = ""
    mobile: str = ""
    home: str = ""
    extension: str = ""
    email: str = ""

    @property
    def name(self) -> str:
        """What a phone shows: display_name, else "first last", else company."""
        return self.display_name or " ".join(p for p in (self.first_name, self.last_name) if p) or self.company

    def fields(self) -> dict[str, str]:
        return {name: getattr(self, name) for name in FIELDS}

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, **self.fields()}


assert tuple(f.name for f in dataclass_fields(Contact)) == ("id",) + FIELDS


class ContactError(ValueError):
    """A contact failed validation; `errors` maps each bad field to a message that names it."""

    def __init__(self, errors: dict[str, str]):
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


class ContactNotFound(KeyError):
    """No contact with that id."""


class BookBusy(RuntimeError):
    """Another writer held the book past the store's busy timeout; nothing was changed (the caller may try again)."""

    def __init__(self, seconds: float):
        super().__init__(f"the address book is busy: another writer has held it for {seconds:g} s; nothing was changed, try again")
        self.seconds = seconds

    def __reduce__(self):  # pickled as it was made (an import's child process sends it to the worker)
        return type(self), (self.seconds,)


class ImportRejected(ValueError):
    """A CSV import was refused and nothing changed; `errors` is [{row, field, message}]."""

    def __init__(self, errors: list[dict[str, Any]], total: int | None = None):
        self.errors = errors[:MAX_REPORTED_ERRORS]
        self.total = total if total is not None else len(errors)
        first = self.errors[0] if self.errors else {"row": 0, "field": "", "message": "rejected"}
        more = f" (and {self.total - 1} more)" if self.total > 1 else ""
        super().__init__(f"row {first['row']}, {first['field'] or 'row'}: {first['message']}{more}")

    def __reduce__(self):  # pickled as it was made (an import's child process sends it to the worker)
        return type(self), (self.errors, self.total)


# -- searching -------------------------------------------------------------------


def looks_like_number(text: str) -> bool:
    """True when `text` is made of phone-number characters and has a digit."""
    return bool(_NUMBER_RE.fullmatch(text.strip())) and any(ch.isdigit() for ch in text)


def matcher(q: str) -> Callable[[Contact], bool]:
    """Whether a contact's names or company contain `q` (folded), or its numbers `q`'s number (folded)."""
    text = fold_name(q)
    number = fold_number(q) if looks_like_number(q) else ""

    def matches(contact: Contact) -> bool:
        for field in NAME_FIELDS:
            if text in fold_name(getattr(contact, field)):
                return True
        if number:
            for field in NUMBER_FIELDS:
                if number in fold_number(getattr(contact, field)):
                    return True
        return False
    return matches


# -- validation -----------------------------------------------------------------


def _check_text(field: str, value: str) -> str | None:
    if len(value) > MAX_NAME:
        return f"{field} is longer than {MAX_NAME} characters"
    if value.startswith(FORMULA_STARTS):
        return f"{field} must not start with = + - or @ (a spreadsheet would run it as a formula)"
    return None


def _check_number(field: str, value: str) -> str | None:
    if len(value) > MAX_NUMBER:
        return f"{field} is longer than {MAX_NUMBER} characters"
    if not _NUMBER_RE.fullmatch(value):
        return f"{field} {value!r} is not a phone number (digits, an optional leading +, spaces, ( ) - . /)"
    digits = len(_NON_DIGITS.sub("", value))
    if digits == 0:
        return f"{field} {value!r} has no digits"
    if digits > MAX_NUMBER_DIGITS:
        return f"{field} has more than {MAX_NUMBER_DIGITS} digits"
    return None


def _check_extension(field: str, value: str) -> str | None:
    if len(value) > MAX_EXTENSION or not _EXTENSION_RE.fullmatch(value):
        return f"{field} {value!r} is not an extension (1 to {MAX_EXTENSION} of 0-9 * #)"
    return None


def _check_email(field: str, value: str) -> str | None:
    if len(value) > MAX_EMAIL:
        return f"{field} is longer than {MAX_EMAIL} characters"
    local = value.partition("@")[0]
    if not _EMAIL_RE.fullmatch(value) or len(local) > 64 or local.startswith(("=", "+", "-", ".")) or ".." in local or local.endswith("."):
        return f"{field} {value!r} is not an e-mail address like name@example.com"
    return None


FIELD_CHECKS: dict[str, Callable[[str, str], str | None]] = {
    "first_name": _check_text,
    "last_name": _check_text,
    "display_name": _check_text,
    "company": _check_text,
    "work": _check_number,
    "mobile": _check_number,
    "home": _check_number,
    "extension": _check_extension,
    "email": _check_email,
}


def _clean(field: str, raw: Any) -> tuple[str, str | None]:
    """The stored form of one field's value, and its error (or None)."""
    if raw is None:
        return "", None
    if isinstance(raw, int) and not isinstance(raw, bool) and field in NUMBER_FIELDS:
        raw = str(raw)  # JSON clients send extensions as numbers
    if not isinstance(raw, str):
        return "", f"{field} must be a string"
    value = " ".join(raw.split())  # collapse whitespace, newlines and tabs included
    if not value.isprintable():  # control, format, surrogate, unassigned characters
        return "", f"{field} contains control or unprintable characters"
    if not value:
        return "", None
    return value, FIELD_CHECKS[field](field, value)


def validate(fields: dict[str, Any], base: dict[str, str] | None = None) -> dict[str, str]:
    """All nine fields, cleaned; `base` gives the values of fields not in `fields`.

    Raises ContactError naming every bad field (unknown keys included).
    """
    if not isinstance(fields, dict):
        raise ContactError({"contact": "a contact is an object of fields"})
    errors: dict[str, str] = {}
    for key in fields:
        if key not in FIELD_CHECKS and key != "id":
            errors[str(key)[:64]] = f"no such field {str(key)[:64]!r}; fields are {', '.join(FIELDS)}"
    cleaned = dict(base) if base else dict.fromkeys(FIELDS, "")
    for field in FIELDS:
        if field in fields:
            cleaned[field], error = _clean(field, fields[field])
            if error:
                errors[field] = error
    if not errors and not any(cleaned[f] for f in NAME_FIELDS):
        errors["first_name"] = "a contact needs a name: first_name, last_name, display_name or company"
    if errors:
        raise ContactError(errors)
    return cleaned
