"""The address book store: validation, search, all-or-nothing CSV import, export, version and subscribers."""

from __future__ import annotations

import csv
import io
import threading
import time

import pytest

from greenservers import addressbook as ab
from greenservers.addressbook import AddressBook, Contact, ContactError, ContactNotFound, ImportRejected, store as ab_store


@pytest.fixture
def book(tmp_path):
    b = AddressBook(tmp_path / "addressbook.sqlite3")
    yield b
    b.close()


ANNA = {
    "first_name": "Anna", "last_name": "Müller", "company": "Acme", "work": "+49 (30) 1234-567",
    "mobile": "0171 555 0100", "extension": "201", "email": "anna@example.com",
}


# -- add, get, change, delete -------------------------------------------------------


def test_add_get_and_every_field_is_a_string(book):
    contact = book.add(ANNA)
    assert isinstance(contact, Contact) and contact.id >= 1
    assert book.get(contact.id) == contact
    assert contact.home == "" and contact.display_name == ""
    assert all(isinstance(getattr(contact, f), str) for f in ab.FIELDS)
    assert contact.name == "Anna Müller"
    assert book.get(contact.id + 1) is None


def test_contacts_are_ordered_by_id_and_survive_reopening(book, tmp_path):
    ids = [book.add({"last_name": f"N{i}"}).id for i in range(5)]
    book.delete(ids[2])
    assert [c.id for c in book.contacts()] == ids[:2] + ids[3:]
    again = AddressBook(tmp_path / "addressbook.sqlite3")
    try:
        assert again.contacts() == book.contacts()
    finally:
        again.close()


def test_ids_are_not_reused_after_delete(book):
    first = book.add({"last_name": "A"})
    book.delete(first.id)
    assert book.add({"last_name": "B"}).id > first.id


def test_whitespace_is_collapsed_and_numbers_may_be_json_integers(book):
    contact = book.add({"first_name": "  Anna \t Maria ", "extension": 201, "home": None})
    assert contact.first_name == "Anna Maria" and contact.extension == "201" and contact.home == ""


def test_change_keeps_fields_not_given_and_empty_string_clears(book):
    contact = book.add(ANNA)
    changed = book.change(contact.id, {"mobile": "", "company": "Beta"})
    assert changed.mobile == "" and changed.company == "Beta" and changed.work == ANNA["work"]
    assert book.get(contact.id) == changed


def test_change_and_delete_of_a_missing_contact(book):
    with pytest.raises(ContactNotFound):
        book.change(99, {"last_name": "X"})
    assert book.delete(99) is False


def test_a_rejected_change_changes_nothing(book):
    contact = book.add(ANNA)
    version = book.version
    with pytest.raises(ContactError):
        book.change(contact.id, {"company": "Gamma", "email": "nope"})
    assert book.get(contact.id) == contact and book.version == version


# -- validation --------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields, field, words",
    [
        ({}, "first_name", "needs a name"),
        ({"email": "a@example.com"}, "first_name", "needs a name"),
        ({"last_name": "x" * 129}, "last_name", "longer than 128"),
        ({"company": "=HYPERLINK(1)"}, "company", "formula"),
        ({"display_name": "Bell\x07"}, "display_name", "control"),
        ({"last_name": "A", "work": "call me"}, "work", "not a phone number"),
        ({"last_name": "A", "mobile": "+ (-)"}, "mobile", "no digits"),
        ({"last_name": "A", "home": "12+34"}, "home", "not a phone number"),
        ({"last_name": "A", "home": "1" * 21}, "home", "more than 20 digits"),
        ({"last_name": "A", "work": "1 " * 17}, "work", "longer than 32"),
        ({"last_name": "A", "extension": "20-1"}, "extension", "not an extension"),
        ({"last_name": "A", "extension": "1" * 17}, "extension", "not an extension"),
        ({"last_name": "A", "email": "anna"}, "email", "not an e-mail"),
        ({"last_name": "A", "email": "anna@localhost"}, "email", "not an e-mail"),
        ({"last_name": "A", "email": "an na@example.com"}, "email", "not an e-mail"),
        ({"last_name": "A", "email": "a..b@example.com"}, "email", "not an e-mail"),
        ({"last_name": "A", "email": "a@b@example.com"}, "email", "not an e-mail"),
        ({"last_name": "A", "company": 5}, "company", "must be a string"),
        ({"last_name": "A", "fax": "1"}, "fax", "no such field"),
    ],
)
def test_validation_names_the_field(book, fields, field, words):
    with pytest.raises(ContactError) as caught:
        book.add(fields)
    assert isinstance(caught.value, ValueError)
    assert field in caught.value.errors
    message = caught.value.errors[field]
    assert words in message and field in message
    assert book.contacts() == []


def test_every_bad_field_is_reported_at_once(book):
    with pytest.raises(ContactError) as caught:
        book.add({"last_name": "A", "work": "x", "email": "y", "extension": "z"})
    assert set(caught.value.errors) == {"work", "email", "extension"}


@pytest.mark.parametrize("number", ["+49 30 1234567", "030/123 45-67", "(030) 123.4567", "0049 30 1234567", "112"])
def test_plausible_numbers_are_accepted(book, number):
    assert book.add({"last_name": "A", "work": number}).work == number


@pytest.mark.parametrize("name", ["company", "display_name", "last_name", "first_name"])
def test_any_name_field_is_enough(book, name):
    assert book.add({name: "Pizza Roma"})


# -- search --------------------------------------------------------------------------


@pytest.fixture
def filled(book):
    book.add(ANNA)
    book.add({"first_name": "Bernd", "last_name": "Schmidt", "company": "Müller & Söhne", "home": "030 999 88"})
    book.add({"display_name": "Reception", "extension": "100", "work": "+1 (555) 010-0100"})
    return book


def names(found):
    return [c.last_name or c.display_name for c in found]


@pytest.mark.parametrize(
    "q, expected",
    [
        ("anna", ["Müller"]),
        ("MÜLLER", ["Müller", "Schmidt"]),  # a last name and a company
        ("recep", ["Reception"]),
        ("30 1234567", ["Müller"]),  # formatted differently from "+49 (30) 1234-567"
        ("1234-567", ["Müller"]),
        ("0049301234567", ["Müller"]),  # 00 for +
        ("+49 30 1234567", ["Müller"]),
        ("0171-555-0100", ["Müller"]),  # mobile
        ("99988", ["Schmidt"]),  # home
        ("100", ["Müller", "Reception"]),  # within a mobile number, an extension
        ("zzz", []),
    ],
)
def test_search_names_company_and_numbers_regardless_of_formatting(filled, q, expected):
    assert names(filled.search(q)) == expected


def test_search_limit_and_empty_query(filled):
    assert len(filled.search("", limit=2)) == 2
    assert len(filled.search("e", limit=1)) == 1


def test_number_and_name_folding():
    assert ab.fold_number("+49 (30) 12-34") == "00493012" + "34"
    assert ab.fold_number("0049.30/1234") == "0049301234"
    assert ab.fold_name("STRAẞE") == ab.fold_name("strasse")


# -- CSV import and export -----------------------------------------------------------


GOOD_CSV = "first_name,last_name,work,email\r\nAnna,Müller,+49 30 1234567,anna@example.com\r\nBernd,Schmidt,030 999 88,\r\n"


def test_import_adds_every_row(book):
    assert book.import_csv(GOOD_CSV) == 2
    assert [(c.first_name, c.work) for c in book.contacts()] == [("Anna", "+49 30 1234567"), ("Bernd", "030 999 88")]


def test_import_with_a_bad_row_in_the_middle_changes_nothing(book):
    existing = book.add({"last_name": "Kept"})
    version = book.version
    text = "last_name,work,email\nOne,123,\nTwo,not a number,bad\nThree,456,\n"
    with pytest.raises(ImportRejected) as caught:
        book.import_csv(text)
    assert caught.value.errors == [
        {"row": 3, "field": "work", "message": caught.value.errors[0]["message"]},
        {"row": 3, "field": "email", "message": caught.value.errors[1]["message"]},
    ]
    assert "not a phone number" in caught.value.errors[0]["message"]
    assert book.contacts() == [existing] and book.version == version


def test_import_reports_header_problems(book):
    with pytest.raises(ImportRejected) as caught:
        book.import_csv("last_name,fax,last_name\nA,1,B\n")
    fields = {e["field"] for e in caught.value.errors}
    assert fields == {"fax", "last_name"} and all(e["row"] == 1 for e in caught.value.errors)
    with pytest.raises(ImportRejected) as caught:
        book.import_csv("hello\nworld\n")
    assert any("name the columns" in e["message"] for e in caught.value.errors)
    with pytest.raises(ImportRejected, match="empty"):
        book.import_csv("")


def test_import_reports_rows_of_the_wrong_length(book):
    with pytest.raises(ImportRejected) as caught:
        book.import_csv("last_name,work\nA,1\nB,2,3\n")
    assert caught.value.errors[0]["row"] == 3 and "3 columns" in caught.value.errors[0]["message"]


def test_import_caps_the_error_report(book):
    text = "last_name,work\n" + "A,x\n" * 500
    with pytest.raises(ImportRejected) as caught:
        book.import_csv(text)
    assert len(caught.value.errors) == ab.MAX_REPORTED_ERRORS and caught.value.total == 500


def test_import_caps_rows():
    with pytest.raises(ImportRejected, match="more than 3 contacts"):
        ab.parse_csv("last_name\nA\nB\nC\nD\n", max_rows=3)


def test_import_understands_spreadsheet_csv(book):
    # Byte-order mark, semicolons, header case and spaces, blank lines, quoted newlines, CRLF.
    text = '\ufeffLast_Name ; Company;Work\r\nMüller;"Acme\r\nGmbH";030 1\r\n\r\n;;\r\nSchmidt;Beta;\r\n'
    assert book.import_csv(text) == 2
    assert [(c.last_name, c.company) for c in book.contacts()] == [("Müller", "Acme GmbH"), ("Schmidt", "Beta")]


def test_import_ignores_an_id_column(book):
    assert book.import_csv("id,last_name\n7,A\n") == 1


def test_import_replace(book):
    book.add({"last_name": "Old"})
    assert book.import_csv("last_name\nNew\n", replace=True) == 1
    assert [c.last_name for c in book.contacts()] == ["New"]


def test_export_round_trip(filled, tmp_path):
    exported = filled.export_csv()
    rows = list(csv.reader(io.StringIO(exported)))
    assert rows[0] == list(ab.FIELDS) and len(rows) == 4
    other = AddressBook(tmp_path / "other.sqlite3")
    try:
        assert other.import_csv(exported) == 3
        assert [c.fields() for c in other.contacts()] == [c.fields() for c in filled.contacts()]
        assert other.export_csv() == exported
    finally:
        other.close()


# -- CSV injection (issue 15, item 9) -------------------------------------------------


FORMULA_CONTACTS = [
    {"last_name": "Plus", "work": "+49-30-1234", "mobile": "-1-2", "home": "+ 49 (30) 5"},
    {"company": "'s-Hertogenbosch Telecom", "email": "'quoted@example.com"},
    {"last_name": "Marked", "work": "030 1"},
]


def test_no_exported_cell_starts_a_formula_and_the_export_imports_as_it_was(book, tmp_path):
    for fields in FORMULA_CONTACTS:
        book.add(fields)
    exported = book.export_csv()
    rows = list(csv.reader(io.StringIO(exported)))
    cells = [cell for row in rows for cell in row]
    assert not any(cell.startswith(ab.FORMULA_STARTS) for cell in cells)
    plus = dict(zip(rows[0], rows[1], strict=True))
    assert (plus["work"], plus["mobile"], plus["home"]) == ("'+49-30-1234", "'-1-2", "'+ 49 (30) 5")
    quoted = dict(zip(rows[0], rows[2], strict=True))
    assert (quoted["company"], quoted["email"]) == ("''s-Hertogenbosch Telecom", "''quoted@example.com")
    assert rows[3][rows[0].index("work")] == "030 1"  # nothing added where nothing starts a formula
    other = AddressBook(tmp_path / "other.sqlite3")
    try:
        assert other.import_csv(exported) == len(FORMULA_CONTACTS)
        assert [c.fields() for c in other.contacts()] == [c.fields() for c in book.contacts()]
        assert other.export_csv() == exported
    finally:
        other.close()


def test_import_removes_only_the_apostrophe_an_export_adds(book):
    # a file from elsewhere: a typed apostrophe before a number goes, one before a letter stays
    book.import_csv("company,work\n's-Hertogenbosch,'+49 30 1\n")
    contact = book.contacts()[0]
    assert (contact.company, contact.work) == ("'s-Hertogenbosch", "+49 30 1")
    with pytest.raises(ImportRejected, match="not a phone number"):
        ab.parse_csv("last_name,work\nA,'0301\n")  # an apostrophe before a digit is not ours: kept, and refused


@pytest.mark.parametrize("value", ["", "a", "'", "''", "'a", "'=", "=", "==", "\uff0b1", "@", "-", "\t1", "'\uff20", "''+"])
def test_csv_cell_and_csv_value_undo_each_other(value):
    cell = ab.csv_cell(value)
    assert ab.csv_value(cell) == value
    assert not cell.startswith(ab.FORMULA_STARTS)


def test_names_may_not_start_a_formula_in_full_width_either(book):
    with pytest.raises(ContactError, match="formula"):
        book.add({"company": "\uff1dHYPERLINK(1)"})


# -- version, subscribers, other processes ------------------------------------------


def test_version_and_subscribers_follow_every_committed_change(book):
    seen = []
    book.subscribe(lambda: seen.append((book.version, len(book.contacts()))))
    v0 = book.version
    contact = book.add({"last_name": "A"})
    book.change(contact.id, {"first_name": "B"})
    book.import_csv("last_name\nC\nD\n")
    book.delete(contact.id)
    # the version is the change log's last number: one per contact added, changed or deleted
    assert seen == [(v0 + 1, 1), (v0 + 2, 1), (v0 + 4, 3), (v0 + 5, 2)]
    with pytest.raises(ContactError):
        book.add({})
    with pytest.raises(ImportRejected):
        book.import_csv("last_name\n\n=x\n")
    assert book.delete(contact.id) is False
    assert len(seen) == 4 and book.version == v0 + 5


def test_a_failing_subscriber_does_not_undo_the_change(book):
    book.subscribe(lambda: 1 / 0)
    calls = []
    book.subscribe(lambda: calls.append(1))
    contact = book.add({"last_name": "A"})
    assert book.get(contact.id) == contact and calls == [1]


def test_concurrent_writers(book):
    threads_n, each = 8, 25
    calls = []
    lock = threading.Lock()

    def on_change():
        with lock:
            calls.append(book.version)

    book.subscribe(on_change)
    v0 = book.version

    def writer(n):
        for i in range(each):
            contact = book.add({"last_name": f"T{n}-{i}"})
            book.change(contact.id, {"first_name": "x"})

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert book.version == v0 + 2 * threads_n * each
    assert len(calls) == 2 * threads_n * each
    contacts = book.contacts()
    assert len({c.id for c in contacts}) == threads_n * each
    assert all(c.first_name == "x" for c in contacts)


def test_a_change_by_another_process_is_noticed(book, tmp_path):
    other = AddressBook(tmp_path / "addressbook.sqlite3")  # another connection, as another process would have
    try:
        v0 = book.version
        added = other.add({"last_name": "Elsewhere"})
        assert book.get(added.id) == added
        assert book.version > v0
    finally:
        other.close()


def test_addressbook_for_gives_one_per_data_dir(tmp_path):
    class FakeRuntime:
        class settings:
            data_path = tmp_path / "data"

    first = ab.addressbook_for(FakeRuntime)
    try:
        assert ab.addressbook_for(FakeRuntime) is first
        assert first.path == tmp_path / "data" / "addressbook.sqlite3" and first.path.exists()
    finally:
        ab_store._books.pop(first.path).close()


# -- size -------------------------------------------------------------------------


def test_import_100000_contacts(book, capsys):
    """100,000 contacts: the time is reported, not asserted (timed assertions are for bench/)."""
    count = 100_000
    lines = ["first_name,last_name,company,work,mobile,extension,email"]
    lines += [f"First{i},Last{i},Company {i % 500},+49 30 {i:07d},0171 {i:07d},{i % 10000},user{i}@example.com" for i in range(count)]
    text = "\n".join(lines) + "\n"
    started = time.perf_counter()
    assert book.import_csv(text) == count
    imported = time.perf_counter() - started
    started = time.perf_counter()
    found = book.search("0049 (30) 009-9999")
    searched = time.perf_counter() - started
    assert [c.last_name for c in found] == ["Last99999"]
    with capsys.disabled():
        print(f"\n[addressbook] import of {count} contacts ({len(text) / 1e6:.1f} MB): {imported:.2f} s;"
              f" one number search: {searched * 1000:.1f} ms")
