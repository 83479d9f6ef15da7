"""The phone address book: contacts in SQLite in data_dir, managed on the page, the API, imports and the CLI,
and followed by the LDAP server.

- `model`: a contact's fields, the limits, validation, the admin search's matching.
- `csv`: import (validated row by row) and export (no cell starts a formula).
- `store`: `AddressBook` (SQLite, no copy in memory), the change log and `ChangeReader`.
- `search`: the admin search's index, a table of folded names and numbers in the same file, following the log.
"""

from __future__ import annotations

from .csv import csv_body, csv_cell, csv_rows, csv_value, parse_csv, to_csv
from .model import (
                    FIELD_CHECKS,
                    FIELDS,
                    FORMULA_STARTS,
                    MAX_CONTACTS,
                    MAX_EMAIL,
                    MAX_EXTENSION,
                    MAX_IMPORT_BYTES,
                    MAX_NAME,
                    MAX_NUMBER,
                    MAX_NUMBER_DIGITS,
                    MAX_REPORTED_ERRORS,
                    MAX_SEARCH_LENGTH,
                    NAME_FIELDS,
                    NUMBER_FIELDS,
                    TEXT_MARK,
                    BookBusy,
                    Contact,
                    ContactError,
                    ContactNotFound,
                    ImportRejected,
                    fold_name,
                    fold_number,
                    looks_like_number,
                    matcher,
                    validate,
)
from .store import LOG_KEEP, PAGE, AddressBook, ChangeReader, addressbook_for

__all__ = [
    "FIELD_CHECKS", "FIELDS", "FORMULA_STARTS", "LOG_KEEP", "MAX_CONTACTS", "MAX_EMAIL", "MAX_EXTENSION", "MAX_IMPORT_BYTES",
    "MAX_NAME", "MAX_NUMBER", "MAX_NUMBER_DIGITS", "MAX_REPORTED_ERRORS", "MAX_SEARCH_LENGTH", "NAME_FIELDS", "NUMBER_FIELDS",
    "PAGE", "TEXT_MARK", "AddressBook", "BookBusy", "ChangeReader", "Contact", "ContactError", "ContactNotFound", "ImportRejected",
    "addressbook_for", "csv_body", "csv_cell", "csv_rows", "csv_value", "fold_name", "fold_number", "looks_like_number", "matcher",
    "parse_csv", "to_csv", "validate",
]
