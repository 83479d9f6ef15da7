"""The address-book contacts the tests and benchmarks use: one list for the sans-IO directory, one CSV for a service."""

from __future__ import annotations

from greenservers.addressbook import Contact

# names that fold alike (Smith twice, Schmitt), numbers written every way, a contact without a person's name
CONTACTS = (
    Contact(1, "John", "Smith", "", "ACME", "+49 30 1234567", "0171 555", "", "201", "john@example.org"),
    Contact(2, "Anna", "Müller", "", "", "030-99887766", "", "", "202", ""),
    Contact(3, "Jonas", "Schmitt", "", "Widgets", "", "+49 171 555", "", "", ""),
    Contact(4, "", "", "Reception", "ACME", "(030) 111.222", "", "0041 44 123 45 67", "100", ""),
    Contact(5, "John", "Smith", "", "Other", "", "", "", "", ""),
    Contact(6, "", "", "", "Plumbers, Inc.", "555-0100", "", "", "", ""),
)

# what a running service's address book is given (imported before the start)
CONTACTS_CSV = ("first_name,last_name,work,mobile\n" + "".join(
    f"{first},{last},+49 30 {1000 + i},+49 171 {2000 + i}\n"
    for i, (first, last) in enumerate([("John", "Smith"), ("Anna", "Müller"), ("Jonas", "Schmitt"), ("Petra", "Jansen")])))
