"""Entries as objects: the Root DSE, the base entry and (for what reads a whole entry) a contact's entry.

`contact_values` is the one mapping of an address-book contact to inetOrgPerson
attributes (and their folded forms); the directory's blobs are made from it.
"""

from __future__ import annotations

from collections.abc import Iterable

from .. import ber
from .codes import SUPPORTED_CONTROLS, SUPPORTED_EXTENSIONS
from .dn import parse_dn
from .schema import ATTRIBUTE_TYPES, FOLDERS, PERSON_CLASSES, PERSON_CLASSES_FOLDED, fold_name, fold_number

# -- entries --------------------------------------------------------------------


def encode_attribute(name: str, values: Iterable[str]) -> bytes:
    """PartialAttribute (§4.1.7): SEQUENCE { type, SET OF value }."""
    tlv = ber.tlv
    return tlv(0x30, tlv(0x04, name.encode()) + tlv(0x31, b"".join([tlv(0x04, v.encode()) for v in values])))


class Entry:
    """One directory entry with its values folded for matching; attributes are encoded on first use."""

    __slots__ = ("dn", "ndn", "values", "folded", "_written", "_encoded", "_encoded_all", "_encoded_dn", "_bodies")

    def __init__(self, dn: str, values: dict[str, tuple[str, ...]], ndn=None, folded=None, written=None):
        self.dn = dn
        self.ndn = parse_dn(dn) if ndn is None else ndn
        self._written = written  # the DN's values as written (written_dn), if its maker knows them
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
    def written_dn(self) -> tuple:
        """The DN as `ndn` is, with its values as written (what an exact matching rule compares)."""
        if self._written is None:
            self._written = parse_dn(self.dn, folded=False)
        return self._written

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


def rdn_raw_value(dn: str, key: str) -> str:
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
