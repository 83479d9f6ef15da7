"""The LDAP session without sockets: golden vectors from OpenLDAP clients, every operation, limits, bad input."""

from __future__ import annotations

import random
import re
import unicodedata
from array import array
from dataclasses import replace

import pytest
from support import ldap_wire as w
from support.contacts import CONTACTS
from vectors.ldap_capture import CONTACTS as CAPTURE_CONTACTS
from vectors.ldap_vectors import CAPTURED

from greenservers import addressbook
from greenservers.addressbook import Contact
from greenservers.proto import ber, ldap

PASSWORD = "secret"


class Clock:
    def __init__(self, now: float = 1000.0, step: float = 0.0):
        self.now, self.step = now, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now




def run_searches(outputs: list) -> list:
    """The outputs with each SearchCursor run to its end (in slices of the cursor's own clock), as the shell does."""
    done = []
    for item in outputs:
        if isinstance(item, ldap.SearchCursor):
            while not item.done:
                done += item.run(item.clock() + 0.002)
        else:
            done.append(item)
    return done


class Harness:
    def __init__(self, contacts=CONTACTS, **policy):
        self.policy = ldap.Policy(password=PASSWORD, **policy)
        self.directory = ldap.Directory("dc=pbx", contacts)
        self.clock = Clock()
        self.session = ldap.LdapSession(lambda: self.policy, lambda base: self.directory, self.clock)

    def send(self, data: bytes) -> list:
        """Everything the session answers to `data`, the backlog included (as the shell would send it)."""
        outputs = run_searches(self.session.receive(data))
        while self.session.backlog and not any(isinstance(o, ldap.Close) for o in outputs):
            outputs += run_searches(self.session.receive(b""))
        return outputs

    def answers(self, data: bytes) -> list[w.Response]:
        return w.parse_responses(b"".join(x for x in self.send(data) if isinstance(x, bytes)))

    def bind(self, name: str = "cn=phonebook,dc=pbx", password: str = PASSWORD) -> w.Response:
        return self.answers(w.bind(1, name, password))[0]

    def search(self, *args, **kwargs) -> tuple[list[w.Response], w.Response]:
        responses = self.answers(w.search(2, *args, **kwargs))
        return responses[:-1], responses[-1]


def bound(**policy) -> Harness:
    h = Harness(**policy)
    assert h.bind().code == 0
    return h


def names(entries) -> list[str]:
    return [e.dn for e in entries]


# -- golden vectors from ldapsearch, ldapwhoami, ldapcompare, ldapmodify -----------


def replay(name: str) -> tuple[list, list[w.Response]]:
    """Answer every captured message of one client run; (all outputs, parsed responses)."""
    directory = ldap.Directory("dc=pbx", CAPTURE_CONTACTS)
    session = ldap.LdapSession(lambda: ldap.Policy(password=PASSWORD), lambda base: directory, Clock())
    outputs = []
    for hex_message in CAPTURED[name]:
        outputs += run_searches(session.receive(bytes.fromhex(hex_message)))
    return outputs, w.parse_responses(b"".join(x for x in outputs if isinstance(x, bytes)))


def entries_of(responses):
    return [r for r in responses if r.tag == ldap.SEARCH_RESULT_ENTRY]


def done_of(responses):
    return [r for r in responses if r.tag == ldap.SEARCH_RESULT_DONE][-1]


def test_vector_root_dse():
    outputs, responses = replay("root_dse")
    (entry,) = entries_of(responses)
    assert entry.dn == ""
    assert entry.attributes["namingContexts"] == ["dc=pbx"]
    assert entry.attributes["supportedLDAPVersion"] == ["3"]
    assert ldap.OID_STARTTLS in entry.attributes["supportedExtension"]
    assert {ldap.OID_PAGED_RESULTS, ldap.OID_SORT_REQUEST} <= set(entry.attributes["supportedControl"])
    assert isinstance(outputs[-1], ldap.Close) and outputs[-1].reason is None  # the unbind


def test_vector_anonymous_search_is_refused_and_reported():
    outputs, responses = replay("anonymous_search")
    assert responses[0].code == 0  # the anonymous bind itself (clients read the Root DSE after it)
    assert done_of(responses).code == ldap.INSUFFICIENT_ACCESS_RIGHTS
    assert not entries_of(responses)
    assert ldap.BindFailed("", ldap.INSUFFICIENT_ACCESS_RIGHTS) in outputs


def test_vector_bare_user_name_binds_and_one_level_lists_contacts_without_attributes():
    _, responses = replay("bare_user_bind")
    assert responses[0].code == 0
    entries = entries_of(responses)
    assert len(entries) == 3 and all(e.attributes == {} for e in entries)  # "1.1": no attributes


def test_vector_wrong_password():
    outputs, responses = replay("wrong_password")
    assert responses[0].code == ldap.INVALID_CREDENTIALS
    assert ldap.BindFailed("cn=phonebook,dc=pbx", ldap.INVALID_CREDENTIALS) in outputs


def test_vector_yealink_name_filter():
    _, responses = replay("yealink_name")
    entries = entries_of(responses)
    assert names(entries) == ["cn=John Smith,dc=pbx", "cn=Jonas Schmitt,dc=pbx"]
    john = entries[0].attributes
    # "company" is an alias of o, answered under the name asked for
    assert john == {"cn": ["John Smith"], "sn": ["Smith"], "givenName": ["John"], "company": ["ACME"],
                    "telephoneNumber": ["+49 30 1234567"], "mobile": ["0171 555"], "ipPhone": ["201"]}
    assert done_of(responses).code == 0


def test_vector_yealink_number_filter_matches_any_formatting():
    _, responses = replay("yealink_number")
    assert names(entries_of(responses)) == ["cn=John Smith,dc=pbx"]


def test_vector_snom_filters():
    _, responses = replay("snom_name")
    assert names(entries_of(responses)) == ["cn=John Smith,dc=pbx"]  # Schmitt has no telephoneNumber
    _, responses = replay("snom_number")  # "030 1234567": the national form of +49 30 1234567
    assert names(entries_of(responses)) == ["cn=John Smith,dc=pbx"]


def test_vector_gigaset_filters():
    _, responses = replay("gigaset_name")
    assert [e.attributes["displayName"] for e in entries_of(responses)] == [["John Smith"]]
    _, responses = replay("gigaset_number")  # 0171-555 is John's mobile "0171 555", not Jonas' +49 171 555
    assert names(entries_of(responses)) == ["cn=John Smith,dc=pbx", "cn=Jonas Schmitt,dc=pbx"]


def test_vector_substring_and_every_filter_type():
    _, responses = replay("substring_any")
    assert names(entries_of(responses)) == ["cn=John Smith,dc=pbx", "cn=Jonas Schmitt,dc=pbx"]
    _, responses = replay("all_filter_types")
    (entry,) = entries_of(responses)
    assert entry.dn == "cn=John Smith,dc=pbx"
    assert entry.attributes["objectClass"] == ["top", "person", "organizationalPerson", "inetOrgPerson"]
    assert entry.attributes["mail"] == ["john@example.org"] and entry.attributes["o"] == ["ACME"]


def test_vector_paged_search_returns_everything_in_pages():
    _, responses = replay("paged")
    entries = entries_of(responses)
    assert len(entries) == 3 and len({e.dn for e in entries}) == 3
    dones = [r for r in responses if r.tag == ldap.SEARCH_RESULT_DONE]
    assert [w.paged_cookie(d.controls[ldap.OID_PAGED_RESULTS])[1] != b"" for d in dones] == [True, False]


def test_vector_sorted():
    _, responses = replay("sorted")
    assert [e.attributes["sn"][0] for e in entries_of(responses)] == ["Müller", "Schmitt", "Smith"]
    assert done_of(responses).controls[ldap.OID_SORT_RESPONSE] == b"\x30\x03\x0a\x01\x00"


def test_vector_size_limit():
    _, responses = replay("size_limit")
    assert len(entries_of(responses)) == 1
    assert done_of(responses).code == ldap.SIZE_LIMIT_EXCEEDED


def test_vector_types_only():
    _, responses = replay("types_only")
    (entry,) = entries_of(responses)
    assert "telephoneNumber" in entry.attributes and all(v == [] for v in entry.attributes.values())


def test_vector_whoami_compare_modify():
    _, responses = replay("whoami")
    assert responses[1].code == 0 and responses[1].value == b"dn:cn=phonebook,dc=pbx"
    _, responses = replay("compare")
    assert responses[1].tag == ldap.COMPARE_RESPONSE and responses[1].code == ldap.COMPARE_TRUE
    _, responses = replay("modify")
    assert responses[1].tag == ldap.MODIFY_RESPONSE and responses[1].code == ldap.UNWILLING_TO_PERFORM


# -- bind ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["phonebook", "PhoneBook", "cn=phonebook,dc=pbx", "CN=Phonebook, DC=PBX", "uid=phonebook,dc=pbx"])
def test_bind_names_accepted(name):
    assert Harness().bind(name).code == 0


@pytest.mark.parametrize("name, password, code", [
    ("phonebook", "wrong", ldap.INVALID_CREDENTIALS),
    ("cn=phonebook,dc=other", PASSWORD, ldap.INVALID_CREDENTIALS),
    ("cn=phonebook,ou=x,dc=pbx", PASSWORD, ldap.INVALID_CREDENTIALS),
    ("someone", PASSWORD, ldap.INVALID_CREDENTIALS),
    ("phonebook", "", ldap.UNWILLING_TO_PERFORM),  # unauthenticated bind (RFC 4513 §5.1.2)
])
def test_bind_refusals(name, password, code):
    h = Harness()
    assert h.bind(name, password).code == code
    _, done = h.search()
    assert done.code == ldap.INSUFFICIENT_ACCESS_RIGHTS


def test_failed_bind_drops_an_earlier_successful_one():
    h = bound()
    assert h.bind("phonebook", "wrong").code == ldap.INVALID_CREDENTIALS
    assert h.search()[1].code == ldap.INSUFFICIENT_ACCESS_RIGHTS


def test_plain_password_bind_refused_when_plain_binds_are_off_but_allowed_after_starttls():
    h = Harness(plain_bind=False)
    assert h.bind().code == ldap.CONFIDENTIALITY_REQUIRED
    outputs = h.send(w.extended(3, ldap.OID_STARTTLS))
    assert isinstance(outputs[-1], ldap.StartTLS)
    h.session.tls_started()
    assert h.bind().code == 0


def test_anonymous_reading_when_allowed():
    h = Harness(anonymous=True)
    entries, done = h.search("(cn=john*)")
    assert done.code == 0 and len(entries) == 2


def test_sasl_and_bad_version():
    h = Harness()
    sasl = w.message(1, ber.tlv(0x60, ber.integer(3) + ber.octets("") + ber.tlv(0xA3, ber.octets("EXTERNAL"))))
    assert h.answers(sasl)[0].code == ldap.AUTH_METHOD_NOT_SUPPORTED
    assert h.answers(w.bind(1, "phonebook", PASSWORD, version=4))[0].code == ldap.PROTOCOL_ERROR
    assert h.answers(w.bind(1, "phonebook", PASSWORD, version=2))[0].code == 0


def test_no_password_configured_means_no_bind_succeeds():
    h = Harness()
    h.policy = replace(h.policy, password=None)
    assert h.bind("phonebook", "anything").code == ldap.INVALID_CREDENTIALS


# -- search: scopes, filters, attributes ---------------------------------------------


def test_scopes():
    h = bound()
    entries, done = h.search(scope=0)
    assert names(entries) == ["dc=pbx"]
    entries, _ = h.search(scope=1)
    assert len(entries) == len(CONTACTS) and "dc=pbx" not in names(entries)
    entries, _ = h.search(scope=2)
    assert len(entries) == len(CONTACTS) + 1
    entries, _ = h.search(base="cn=Reception,dc=pbx", scope=0)
    assert names(entries) == ["cn=Reception,dc=pbx"]
    entries, _ = h.search(base="cn=reception, DC=PBX", scope=1)
    assert entries == []


def test_unknown_bases():
    h = bound()
    _, done = h.search(base="cn=nobody,dc=pbx")
    assert (done.code, done.matched_dn) == (ldap.NO_SUCH_OBJECT, "dc=pbx")
    _, done = h.search(base="dc=example,dc=com")
    assert done.code == ldap.NO_SUCH_OBJECT
    _, done = h.search(base="cn=a=b=,,")
    assert done.code == ldap.INVALID_DN_SYNTAX


def test_duplicate_names_get_unique_dns_and_special_characters_are_escaped():
    h = bound()
    entries, _ = h.search("(cn=John Smith)")
    assert names(entries) == ["cn=John Smith+uid=1,dc=pbx", "cn=John Smith+uid=5,dc=pbx"]
    entries, _ = h.search("(o=plumbers, inc.)")
    assert names(entries) == ["cn=Plumbers\\, Inc.,dc=pbx"]
    entries, _ = h.search(base="cn=Plumbers\\2C Inc.,dc=pbx", scope=0)
    assert len(entries) == 1
    assert len({e.dn for e in h.search(scope=1)[0]}) == len(CONTACTS)


@pytest.mark.parametrize("filter_text, expected", [
    ("(cn=JOHN SMITH)", {1, 5}),
    ("(sn=müller)", {2}),
    ("(sn=MÜLLER)", {2}),
    ("(sn~=muller)", {2}),
    ("(cn=jo*)", {1, 3, 5}),
    ("(cn=*SMI*)", {1, 5}),
    ("(cn=*mitt)", {3}),
    ("(cn=j*s*t)", {3}),
    ("(cn=j*n*smith)", {1, 5}),
    ("(givenName=*)", {1, 2, 3, 5}),
    ("(!(givenName=*))", {4, 6}),
    ("(&(givenName=john)(o=acme))", {1}),
    ("(|(o=widgets)(cn=reception))", {3, 4}),
    ("(sn>=smith)", {1, 5}),
    ("(sn<=m)", set()),
    ("(sn<=n)", {2}),
    ("(telephoneNumber=+49 30 1234567)", {1}),
    ("(telephoneNumber=0049301234567)", {1}),
    ("(telephoneNumber=+49-30-123 45 67)", {1}),
    ("(telephoneNumber=030 1234567)", {1}),
    ("(telephoneNumber=030111222)", {4}),
    ("(telephoneNumber=(030) 111-222)", {4}),
    ("(homePhone=+41441234567)", {4}),
    # a number prefix matches in either form: +49 30 1234567 starts with 030, 030-99887766 with +49 30
    ("(telephoneNumber=030*)", {1, 2, 4}),
    ("(telephoneNumber=+4930*)", {1, 2, 4}),
    ("(telephoneNumber=+4930 1234*)", {1}),
    ("(telephoneNumber=+3330*)", {2, 4}),  # a national number is the same in any country (same_number)
    ("(telephoneNumber=0049*)", {1}),  # ends within its country code: only literally
    ("(homePhone=044 123*)", {4}),
    ("(homePhone=030*)", set()),
    ("(telephoneNumber=*1234567)", {1}),
    ("(telephoneNumber=*88-77*)", {2}),
    ("(mobile=+49171555)", {1, 3}),  # 0171 555 is the national form of +49 171 555
    ("(ipPhone=201)", {1}),
    ("(|(telephoneNumber=0171555)(mobile=0171555)(homePhone=0171555))", {1, 3}),
    ("(mail=JOHN@EXAMPLE.ORG)", {1}),
    ("(objectClass=inetOrgPerson)", {1, 2, 3, 4, 5, 6}),
    ("(cn:caseExactMatch:=Reception)", {4}),
    ("(cn:caseExactMatch:=reception)", set()),
    ("(cn:2.5.13.2:=reception)", {4}),
    ("(:caseIgnoreMatch:=widgets)", {3}),
    ("(givenName:dn:=reception)", set()),
    ("(cn:dn:=reception)", {4}),
    ("(cn:unknownRule:=reception)", set()),
    ("(nosuchattribute=x)", set()),
    ("(!(nosuchattribute=x))", set()),  # NOT of Undefined is Undefined (RFC 4511 §4.5.1.7)
    ("(|(nosuchattribute=x)(cn=reception))", {4}),
    ("(&)", {1, 2, 3, 4, 5, 6}),  # absolute true (RFC 4526)
    ("(|)", set()),
    ("(CN=reception)", {4}),
    ("(commonName=reception)", {4}),
    ("(2.5.4.3=reception)", {4}),
    ("(cn;lang-de=reception)", {4}),
])
def test_filters(filter_text, expected):
    h = bound()
    entries, done = h.search(filter_text, scope=1, attributes=["uid"])
    assert done.code == 0
    assert {int(e.attributes["uid"][0]) for e in entries} == expected


def test_soundex_codes_and_each_value_folded_once_for_approximate_matching(monkeypatch):
    words = ("Robert", "Rupert", "Ashcraft", "Tymczak", "Pfister", "Honeyman", "Lloyd", "Jon Müller", "1234", "Hhh")
    assert [ldap.fold_loose(word) for word in words] == [
        "r163", "r163", "a261", "t522", "p236", "h555", "l300", "j500 m460", "1234", "h000"]
    h = bound()
    folded = []
    real = ldap.padded_sounds
    monkeypatch.setattr(ldap, "padded_sounds", lambda value: folded.append(value) or real(value))
    text = "(|(cn~=jon smit)" + "(cn~=zzyzx)" * 50 + "(sn~=myller))"
    entries, done = h.search(text, scope=1)
    assert done.code == 0 and sorted(e.dn for e in entries) == ["cn=Anna Müller,dc=pbx", "cn=John Smith+uid=1,dc=pbx",
                                                                 "cn=John Smith+uid=5,dc=pbx"]
    assert len(folded) == len(set(folded)) <= 2 * len(CONTACTS)  # each cn and sn value once, not once per item
    h.search(text, scope=1)
    assert len(folded) == len(set(folded))  # and not again


def test_folding_agrees_with_the_address_book():
    assert addressbook.fold_name is ldap.fold_name and addressbook.fold_number is ldap.fold_number  # one fold each
    for text in ["Müller", "JOHN  Smith", "ǅemal", "ＡＢＣ"]:
        assert ldap.fold_name(text) == " ".join(unicodedata.normalize("NFKC", text).casefold().split())
    for number in ["+49 (30) 123-4", "0049 30 1234", "030.1234", "[030] 1234"]:
        assert ldap.fold_number(number) == ("00" if number.startswith("+") else "") + re.sub("[^0-9]", "", number)


def test_requested_attributes():
    h = bound()
    (entry,), _ = h.search("(cn=reception)", attributes=["CN", "telephonenumber", "nonsense"])
    assert entry.attributes == {"cn": ["Reception"], "telephoneNumber": ["(030) 111.222"]}
    (entry,), _ = h.search("(cn=reception)", attributes=["1.1"])
    assert entry.attributes == {}
    (entry,), _ = h.search("(cn=reception)", attributes=["*"])
    assert set(entry.attributes) == {"objectClass", "cn", "sn", "displayName", "telephoneNumber", "homePhone", "ipPhone", "o", "uid"}
    (entry,), _ = h.search("(cn=reception)", attributes=["*", "company"])
    assert entry.attributes["company"] == ["ACME"] and entry.attributes["o"] == ["ACME"]
    (entry,), _ = h.search("(cn=reception)", attributes=["sn"], types_only=True)
    assert entry.attributes == {"sn": []}


def test_entries_are_inetorgperson_mapped_from_contacts():
    h = bound()
    (entry,), _ = h.search("(uid=1)", attributes=["*"])
    assert entry.attributes == {
        "objectClass": ["top", "person", "organizationalPerson", "inetOrgPerson"],
        "cn": ["John Smith"], "sn": ["Smith"], "givenName": ["John"], "displayName": ["John Smith"],
        "telephoneNumber": ["+49 30 1234567"], "mobile": ["0171 555"], "ipPhone": ["201"],
        "mail": ["john@example.org"], "o": ["ACME"], "uid": ["1"],
    }


def test_root_dse_before_bind_and_selected_attributes():
    h = Harness()
    (entry,), done = h.search(base="", scope=0, attributes=["namingContexts"])
    assert done.code == 0 and entry.attributes == {"namingContexts": ["dc=pbx"]}


# -- limits --------------------------------------------------------------------------


def many(count: int) -> list[Contact]:
    return [Contact(i, f"Person{i:05d}", f"Name{i:05d}", "", "", f"+1 555 {i:07d}", "", "", "", "") for i in range(1, count + 1)]


def test_client_size_limit_returns_entries_so_far():
    h = Harness(contacts=many(50))
    h.bind()
    entries, done = h.search("(sn=name*)", size_limit=7)
    assert len(entries) == 7 and done.code == ldap.SIZE_LIMIT_EXCEEDED
    entries, done = h.search("(sn=name0001*)", size_limit=10)
    assert len(entries) == 10 and done.code == 0  # exactly the limit is not exceeded


def test_server_size_limit():
    h = Harness(contacts=many(30), size_limit=20)
    h.bind()
    entries, done = h.search("(sn=*)", scope=1)
    assert len(entries) == 20 and done.code == ldap.SIZE_LIMIT_EXCEEDED
    entries, done = h.search("(sn=*)", scope=1, size_limit=100)
    assert len(entries) == 20 and done.code == ldap.SIZE_LIMIT_EXCEEDED


def test_time_limit_with_a_fake_clock():
    h = Harness(contacts=many(1000))
    h.bind()
    h.clock.step = 0.5  # every clock read advances half a second
    entries, done = h.search("(sn=*)", scope=1, time_limit=1, size_limit=1000)
    assert done.code == ldap.TIME_LIMIT_EXCEEDED and 0 < len(entries) < 1000


EXPENSIVE = "(|" + "(cn~=zzyzx)" * 100 + "(sn=*7))"  # a scan, each entry checked against 101 items


def start_search(h: Harness, *args, **kwargs) -> ldap.SearchCursor:
    (cursor,) = [o for o in h.session.receive(w.search(2, *args, **kwargs)) if isinstance(o, ldap.SearchCursor)]
    return cursor


def test_a_search_runs_in_slices_that_end_when_the_clock_passes_their_end():
    h = Harness(contacts=many(2000))
    h.bind()
    h.clock.step = 0.0001  # every clock read: 0.1 ms
    cursor = start_search(h, EXPENSIVE, scope=1, size_limit=500)
    slices, outputs = 0, []
    while not cursor.done:
        until = h.clock.now + 0.002
        outputs += cursor.run(until)
        slices += 1
        assert cursor.done or until <= h.clock.now <= until + 0.0002  # ended at the first look past its end
    assert slices > 50  # 2,000 entries of 101 items: not in one go
    responses = w.parse_responses(b"".join(o for o in outputs if isinstance(o, bytes)))
    assert [r.tag for r in responses] == [ldap.SEARCH_RESULT_ENTRY] * 200 + [ldap.SEARCH_RESULT_DONE]
    assert responses[-1].code == 0 and outputs[-1] == ldap.Searched(200)
    # the same entries as one unsliced run
    again = start_search(h, EXPENSIVE, scope=1, size_limit=500).run(float("inf"))
    assert b"".join(o for o in again if isinstance(o, bytes)) == b"".join(o for o in outputs if isinstance(o, bytes))


def test_entries_are_sent_as_they_are_found():
    h = Harness(contacts=many(2000))
    h.bind()
    h.clock.step = 0.0001
    cursor = start_search(h, EXPENSIVE, scope=1)
    first = cursor.run(h.clock.now + 0.002)
    assert not cursor.done and first and all(r.tag == ldap.SEARCH_RESULT_ENTRY for r in w.parse_responses(b"".join(first)))


@pytest.mark.parametrize("client_limit, server_limit", [(1, 10.0), (0, 1.0), (5, 1.0)])
def test_the_time_limit_ends_matching_with_what_was_found(client_limit, server_limit):
    """The client's limit or the server's, whichever is shorter, counted from the request's arrival (RFC 4511 §4.5.1.5)."""
    h = Harness(contacts=many(2000), time_limit=server_limit)
    h.bind()
    h.clock.step = 0.001
    started = h.clock.now
    cursor = start_search(h, EXPENSIVE, scope=1, size_limit=500, time_limit=client_limit)
    outputs = []
    while not cursor.done:
        outputs += cursor.run(h.clock.now + 0.002)
    responses = w.parse_responses(b"".join(o for o in outputs if isinstance(o, bytes)))
    assert responses[-1].code == ldap.TIME_LIMIT_EXCEEDED
    assert 0 < len(responses) - 1 < 200 and outputs[-1] == ldap.Searched(len(responses) - 1, True)
    assert h.clock.now - started < 1.01  # it stopped at the limit, not after the whole search


@pytest.mark.parametrize("critical", [False, True])
def test_a_sort_the_time_limit_cuts_is_given_up(critical):
    """RFC 2891: the entries found so far go unsorted with sortResult timeLimitExceeded, none if the control was critical."""
    h = Harness(contacts=many(2000))
    h.bind()
    h.clock.step = 0.001
    cursor = start_search(h, EXPENSIVE, scope=1, time_limit=1, attributes=["sn"], controls=[w.sort("-sn", critical=critical)])
    outputs = []
    while not cursor.done:
        outputs += cursor.run(h.clock.now + 0.002)
    responses = w.parse_responses(b"".join(o for o in outputs if isinstance(o, bytes)))
    surnames = [r.attributes["sn"][0] for r in responses[:-1]]
    assert responses[-1].code == ldap.TIME_LIMIT_EXCEEDED
    assert responses[-1].controls[ldap.OID_SORT_RESPONSE] == b"\x30\x03\x0a\x01\x03"
    if critical:
        assert surnames == []
    else:
        assert 0 < len(surnames) < 200 and surnames == sorted(surnames)  # as found: in the directory's order
    # a sort that finished in time is sent sorted even if sending it runs out of time
    h.clock.step = 0.0
    _, done = h.search("(sn=*7)", scope=1, time_limit=1, attributes=["sn"], controls=[w.sort("-sn")])
    assert done.code == 0 and done.controls[ldap.OID_SORT_RESPONSE] == b"\x30\x03\x0a\x01\x00"


def test_a_paged_search_cut_by_its_time_limit_ends_without_a_cookie():
    h = Harness(contacts=many(2000))
    h.bind()
    h.clock.step = 0.001
    cursor = start_search(h, EXPENSIVE, scope=1, time_limit=1, controls=[w.paged(10)])
    outputs = []
    while not cursor.done:
        outputs += cursor.run(h.clock.now + 0.002)
    responses = w.parse_responses(b"".join(o for o in outputs if isinstance(o, bytes)))
    assert responses[-1].code == ldap.TIME_LIMIT_EXCEEDED and len(responses) - 1 == 10
    assert w.paged_cookie(responses[-1].controls[ldap.OID_PAGED_RESULTS])[1] == b"" and not h.session.searches.paged


def test_a_paged_search_over_a_replaced_directory_is_given_up_at_its_next_page():
    """A book read anew (a replacing import) makes a new directory; a client asking for a page now and then kept the
    old one for as long as it went on (twice the memory), answering contacts the book no longer had."""
    h = bound()
    entries, done = h.search("(objectClass=inetOrgPerson)", attributes=["cn"], controls=[w.paged(2)])
    cookie = w.paged_cookie(done.controls[ldap.OID_PAGED_RESULTS])[1]
    assert len(entries) == 2 and cookie
    h.directory.retired = True  # as the LDAP shell marks one it replaced
    h.directory = ldap.Directory("dc=pbx", CONTACTS[:3])
    entries, done = h.search("(objectClass=inetOrgPerson)", attributes=["cn"], controls=[w.paged(2, cookie)])
    assert entries == [] and done.code == ldap.UNWILLING_TO_PERFORM and "read anew" in done.diagnostic
    assert not h.session.searches.paged  # let go: nothing holds the old directory
    entries, done = h.search("(objectClass=inetOrgPerson)", attributes=["cn"], controls=[w.paged(2)])
    assert len(entries) == 2 and done.code == ldap.SUCCESS  # starting again reads the new one


def test_a_search_refused_as_busy_answers_at_once():
    h = bound()
    cursor = start_search(h, "(cn=*)")
    outputs = cursor.refuse(ldap.BUSY, "too many searches in progress; try again")
    assert cursor.done and outputs[-1] == ldap.Searched(0)
    (done,) = w.parse_responses(outputs[0])
    assert (done.tag, done.code) == (ldap.SEARCH_RESULT_DONE, ldap.BUSY)


def test_sorting_in_slices_is_stable_and_puts_entries_without_the_key_last():
    rng = random.Random(4)
    contacts = [Contact(i, "", rng.choice(["Ann", "Bob", "Cy", ""]), "", rng.choice(["ACME", "Widgets", ""]), f"+1 555 {i:07d}",
                        "", "", "", "") for i in range(1, 3001)]
    directory = ldap.Directory("dc=pbx", contacts)
    for keys in ([("o", False)], [("o", True)], [("o", False), ("sn", True)], [("sn", True), ("o", False), ("uid", False)]):
        expected = [directory.entry(i) for i in directory.order]
        for key, reverse in reversed(keys):  # the definition: one stable sort per key, least significant first
            present = sorted((e for e in expected if key in e.folded), key=lambda e: min(e.folded[key]), reverse=reverse)
            absent = [e for e in expected if key not in e.folded]
            expected = absent + present if reverse else present + absent
        result = array("i")
        entries = ldap.Entries(directory, [])
        steps = sum(1 for _ in ldap.sort_steps(array("i", directory.order), keys, entries, result))
        assert [entries.entry(i).dn for i in result] == [e.dn for e in expected], keys
        assert steps >= 3 * len(keys)  # slices, not one call


def test_merging_many_runs_reads_a_bounded_number_of_values_per_step():
    """The first value of every run is read in steps too (heapq.merge read them all in its first step: with
    100,000 entries, 390 reads in one step), and the merge is stable: of equal values, an earlier run's first."""
    from greenservers.proto.ldap.search import SORT_STEP, merged_steps

    rng = random.Random(7)
    values = {i: rng.choice("abcde") for i in range(12 * SORT_STEP)}
    runs = [array("i", sorted(range(start, start + 3), key=values.__getitem__)) for start in range(0, len(values), 3)]
    reads = 0

    def value(i: int) -> str:
        nonlocal reads
        reads += 1
        return values[i]

    merged, most = array("i"), 0
    for _ in merged_steps(runs, value, merged):
        most, reads = max(most, reads), 0
    most = max(most, reads)
    assert list(merged) == sorted(range(len(values)), key=values.__getitem__)  # sorted() is stable: ids ascending
    assert most <= SORT_STEP + 1, most  # 4 * SORT_STEP runs: their first values were read 4 steps apart


# -- fair shares of search time -------------------------------------------------------


def test_the_client_that_used_the_least_search_time_goes_first():
    fair = ldap.FairShare()
    heavy, light = fair.start("10.0.0.1"), fair.start("10.0.0.2")
    fair.charge("10.0.0.1", 5.0, now=100.0)  # the heavy client has used 5 s of search time
    fair.want(heavy)
    fair.want(light)  # arrives after
    assert fair.next(100.0) is light and fair.delayed == 1 and heavy.delayed
    assert fair.next(100.0) is heavy and fair.next(100.0) is None
    # among equals, the first to arrive
    first, second = fair.start("10.0.0.3"), fair.start("10.0.0.4")
    fair.want(first)
    fair.want(second)
    assert fair.next(100.0) is first


def test_search_time_used_is_given_back_at_the_refill_rate():
    fair = ldap.FairShare(budget=10.0, refill=0.5)
    fair.charge("a", 8.0, now=0.0)
    assert fair.usage("a", 0.0) == 8.0 and fair.usage("a", 4.0) == 6.0 and fair.usage("a", 20.0) == 0.0
    fair.charge("a", 30.0, now=20.0)
    assert fair.usage("a", 20.0) == 10.0  # at most the budget: it comes back in 20 s whatever was spent
    a, b = fair.start("a"), fair.start("b")
    fair.charge("b", 4.0, now=20.0)
    fair.want(a)
    fair.want(b)
    assert fair.next(20.0) is b  # b has used less (4 s against 10 s)
    fair.want(b)
    assert fair.next(1000.0) is a  # long after, both have it all back: the first to arrive


def test_searches_in_progress_are_capped_per_client_and_in_total():
    fair = ldap.FairShare(per_client=2, total=3)
    a1, a2 = fair.start("a"), fair.start("a")
    assert a1 and a2 and fair.start("a") is None and fair.running_from("a") == 2
    b1 = fair.start("b")
    assert b1 and fair.start("c") is None and fair.running == 3
    fair.want(a1)
    fair.end(a1)  # ended while waiting (its connection closed): no longer chosen
    assert fair.next(0.0) is None and fair.start("c") is not None


def test_a_search_waiting_for_its_client_to_read_holds_no_slot_but_counts_for_its_client():
    fair = ldap.FairShare(per_client=2, total=4, reserved=1)
    held = [fair.start(c) for c in ("a", "a", "b")]
    assert all(held) and fair.start("a") is None  # a has its two in progress
    for ticket in held:
        fair.suspend(ticket)
    assert fair.running == 0 and fair.suspended == 3 and fair.running_from("a") == 2
    assert fair.start("a") is None  # suspended, they still count for their client
    others = [fair.start(c) for c in ("c", "d", "e", "f")]  # but hold no slot of the total
    assert all(others) and fair.running == 4
    fair.resume(held[0])  # let go on past the total: it was admitted
    assert fair.running == 5 and fair.suspended == 2
    for ticket in held + others:
        fair.end(ticket)
    assert fair.running == fair.suspended == 0 and fair.running_from("a") == 0


def test_the_last_slots_are_kept_for_clients_with_no_search_in_progress():
    fair = ldap.FairShare(per_client=4, total=8)  # a quarter kept: 2
    assert fair.reserved == 2
    mine = [fair.start(c) for c in ("a", "a", "b", "b", "c", "c")]
    assert all(mine) and fair.running == 6
    assert fair.start("a") is None and fair.start("b") is None  # a second, third... search: not into the reserve
    assert fair.start("d") is not None and fair.start("e") is not None  # a first one: yes
    assert fair.start("f") is None  # and no further than the total


def test_searches_in_progress_are_capped_per_address_and_a_64_may_fill_all_but_the_reserve():
    fair = ldap.FairShare()  # 4 per address, 32 running, 8 of them kept
    assert fair.per_prefix == ldap.MAX_SEARCHES - fair.reserved == 24
    lan = [fair.start(f"2001:db8:1:2::{n:x}") for n in range(1, 31)]  # thirty phones of one LAN at once
    assert all(lan[:24]) and not any(lan[24:]) and fair.running_from("2001:db8:1:2::/64") == 24
    assert fair.running_from("2001:db8:1:2::1") == 1
    others = [fair.start(f"192.0.2.{n}") for n in range(1, 10)]  # the reserve: other clients' first searches
    assert all(others[:8]) and others[8] is None and fair.running == 32
    for ticket in lan[:24] + others[:8]:
        fair.end(ticket)
    assert fair.running == 0 and fair.running_from("2001:db8:1:2::/64") == 0


def test_one_address_of_a_64_holds_its_own_four_and_suspended_searches_count_for_the_64():
    fair = ldap.FairShare(per_client=2, total=8, reserved=2, per_prefix=3)
    mine = [fair.start("2001:db8::66") for _ in range(3)]
    assert mine[0] and mine[1] and mine[2] is None  # its address's two
    assert fair.start("2001:db8::1") is not None  # a phone beside it: its own
    for ticket in mine[:2]:
        fair.suspend(ticket)  # reading nothing: no running slot, but still the /64's
    assert fair.running == 1 and fair.start("2001:db8::2") is None and fair.start("2001:db8:0:1::1") is not None
    fair.end(mine[0])
    assert fair.suspended == 1 and fair.start("2001:db8::2") is not None


class Owner:
    """Stands for a session's searches: what the budget gave up."""

    def __init__(self):
        self.dropped: list[bytes] = []

    def drop(self, cookie: bytes) -> None:
        self.dropped.append(cookie)


def test_paged_budget_bounds_each_client_across_its_connections():
    budget = ldap.PagedBudget(per_client=3, total_ids=10**6, idle=60.0)
    connections = [Owner() for _ in range(4)]
    for n, owner in enumerate(connections):
        budget.keep(owner, b"1", "10.0.0.1", 100, now=float(n))
    assert budget.open == 3 and connections[0].dropped == [b"1"]  # its oldest given up
    budget.keep(Owner(), b"1", "10.0.0.2", 100, now=5.0)  # another client has its own share
    assert budget.open == 4 and budget.ids == 400
    for owner in connections[1:]:
        budget.release(owner, b"1")
    assert budget.open == 1 and budget.ids == 100 and not any(o.dropped for o in connections[1:])


def test_paged_budget_keeps_8_per_address_and_a_64_may_keep_its_larger_share():
    budget = ldap.PagedBudget()  # 8 per address, 64 per /64
    assert budget.per_client == ldap.MAX_PAGED_PER_CLIENT == 8 and budget.per_prefix == ldap.MAX_PAGED_PER_PREFIX == 64
    phones = [Owner() for _ in range(40)]  # forty phones of one LAN paging at once: none gives up another's
    for n, phone in enumerate(phones):
        budget.keep(phone, b"1", f"2001:db8:1:2::{n + 1:x}", 100, now=0.0)
    assert budget.open == 40 and budget.kept_by("2001:db8:1:2::/64") == 40 and not any(p.dropped for p in phones)
    greedy = [Owner() for _ in range(12)]  # one address of the LAN keeps twelve: it gives up its own oldest four
    for n, owner in enumerate(greedy):
        budget.keep(owner, b"1", "2001:db8:1:2::66", 100, now=1.0 + n)
    assert [bool(o.dropped) for o in greedy] == [True] * 4 + [False] * 8 and budget.kept_by("2001:db8:1:2::66") == 8
    assert not any(p.dropped for p in phones) and budget.kept_by("2001:db8:1:2::/64") == 48
    for owner in greedy[4:]:
        budget.release(owner, b"1")
    for phone in phones:
        budget.release(phone, b"1")
    assert budget.open == 0 and budget.ids == 0 and budget.kept_by("2001:db8:1:2::/64") == 0 and not budget._of_group


def test_paged_budget_an_address_cycling_its_64_keeps_the_64s_share_and_gives_up_the_64s_oldest():
    budget = ldap.PagedBudget(per_client=2, per_prefix=5, total_ids=10**6, idle=60.0)
    owners = [Owner() for _ in range(20)]
    for n, owner in enumerate(owners):  # a new address each time
        budget.keep(owner, b"1", f"2001:db8::{n + 1:x}", 100, now=float(n))
    assert budget.open == 5 and budget.kept_by("2001:db8::/64") == 5 and budget.ids == 500
    assert [bool(o.dropped) for o in owners] == [True] * 15 + [False] * 5  # the /64's oldest each time
    others = [Owner() for _ in range(3)]  # another /64 and an IPv4 address keep their own
    budget.keep(others[0], b"1", "2001:db8:0:1::1", 100, now=30.0)
    budget.keep(others[1], b"1", "2001:db8:0:1::1", 100, now=30.0)
    budget.keep(others[2], b"1", "::ffff:192.0.2.1", 100, now=30.0)  # an IPv4 client of a dual-stack socket
    assert budget.open == 8 and not any(o.dropped for o in others) and budget.kept_by("192.0.2.1") == 1


def test_paged_budget_past_the_total_the_64_keeping_the_most_ids_gives_up_first():
    budget = ldap.PagedBudget(per_client=8, per_prefix=64, total_ids=1000, idle=60.0)
    lan = [Owner() for _ in range(3)]
    for n, owner in enumerate(lan):  # three addresses of one /64: 600 ids between them
        budget.keep(owner, b"1", f"2001:db8::{n + 1:x}", 200, now=float(n))
    single = Owner()
    budget.keep(single, b"1", "192.0.2.1", 300, now=5.0)  # more than any one address of the /64 keeps
    budget.keep(Owner(), b"1", "192.0.2.2", 200, now=6.0)  # 1,100: the /64 keeps the most, its oldest goes
    assert lan[0].dropped == [b"1"] and not lan[1].dropped and not single.dropped and budget.ids == 900


def test_paged_budget_gives_up_the_heaviest_clients_oldest_past_the_total():
    budget = ldap.PagedBudget(per_client=8, total_ids=1000, idle=60.0)
    heavy, light = Owner(), Owner()
    budget.keep(heavy, b"1", "10.0.0.1", 400, now=0.0)
    budget.keep(light, b"1", "10.0.0.2", 100, now=1.0)
    budget.keep(heavy, b"2", "10.0.0.1", 400, now=2.0)
    budget.keep(light, b"2", "10.0.0.2", 200, now=3.0)  # 1,100: the heavy client's oldest goes
    assert heavy.dropped == [b"1"] and light.dropped == [] and budget.ids == 700


def test_paged_budget_gives_up_idle_searches():
    budget = ldap.PagedBudget(per_client=8, total_ids=10**6, idle=60.0)
    early, late = Owner(), Owner()
    budget.keep(early, b"1", "10.0.0.1", 10, now=0.0)
    budget.keep(late, b"1", "10.0.0.2", 10, now=30.0)
    budget.touch(early, b"1", now=50.0)  # a page asked for: idle from then
    budget.expire(100.0)
    assert early.dropped == [] and late.dropped == [b"1"] and budget.open == 1
    budget.expire(110.0)
    assert early.dropped == [b"1"] and budget.open == 0 and budget.ids == 0


def test_paged_results_a_client_leaves_idle_are_given_up_and_closing_gives_back_the_rest():
    budget = ldap.PagedBudget(per_client=2, idle=60.0)
    sessions = []
    for _ in range(3):  # three connections of one client, each leaving a paged search unfinished
        h = Harness(contacts=many(30))
        h.session = ldap.LdapSession(lambda h=h: h.policy, lambda base, h=h: h.directory, h.clock, address="10.0.0.1", paged=budget)
        h.bind()
        _, done = h.search(scope=1, controls=[w.paged(10)])
        sessions.append((h, w.paged_cookie(done.controls[ldap.OID_PAGED_RESULTS])[1]))
    assert budget.open == 2 and budget.ids == 60
    (first, cookie1), (second, cookie2), (third, cookie3) = sessions
    assert first.search(scope=1, controls=[w.paged(10, cookie1)])[1].code == ldap.UNWILLING_TO_PERFORM  # given up
    entries, done = second.search(scope=1, controls=[w.paged(10, cookie2)])
    assert len(entries) == 10 and done.code == 0
    third.clock.now += 61  # idle past the limit (the second one was asked for a page since)
    assert third.search(scope=1, controls=[w.paged(10, cookie3)])[1].code == ldap.UNWILLING_TO_PERFORM
    assert budget.open == 0  # the second one was idle too
    _, done = third.search(scope=1, controls=[w.paged(10)])
    assert w.paged_cookie(done.controls[ldap.OID_PAGED_RESULTS])[1] and budget.open == 1
    third.session.close()
    assert budget.open == 0 and budget.ids == 0


def test_the_clients_remembered_are_bounded():
    fair = ldap.FairShare(max_clients=3)
    for n in range(10):
        fair.charge(f"10.0.0.{n}", 1.0, now=9.0)
    assert len(fair._budgets) == 3 and fair.usage("10.0.0.9", 9.0) == 1.0
    assert "10.0.0.0" not in fair._budgets._entries
    assert fair.usage("10.0.0.0", 9.0) == 1.0  # forgotten, its time spent is not (proto.clients.TokenBuckets)


def test_paged_results_cover_everything_once_and_sort_across_pages():
    h = Harness(contacts=many(45))
    h.bind()
    seen, cookie, pages = [], b"", 0
    while True:
        responses = h.answers(w.search(10 + pages, "(objectClass=person)", scope=1, attributes=["sn"],
                                       controls=[w.paged(10, cookie), w.sort("-sn")]))
        seen += [e.attributes["sn"][0] for e in responses[:-1]]
        done = responses[-1]
        assert done.code == 0 and done.controls[ldap.OID_SORT_RESPONSE] == b"\x30\x03\x0a\x01\x00"
        estimate, cookie = w.paged_cookie(done.controls[ldap.OID_PAGED_RESULTS])
        assert estimate == 45
        pages += 1
        if not cookie:
            break
    assert pages == 5 and seen == sorted((f"Name{i:05d}" for i in range(1, 46)), reverse=True)


def test_paged_results_bypass_the_server_limit_but_not_the_clients():
    h = Harness(contacts=many(30), size_limit=20)
    h.bind()
    entries, done = h.search(scope=1, controls=[w.paged(100)])
    assert len(entries) == 20 and w.paged_cookie(done.controls[ldap.OID_PAGED_RESULTS])[1]  # capped page, more to come
    h = Harness(contacts=many(30))
    h.bind()
    entries, done = h.search(scope=1, size_limit=25, controls=[w.paged(100)])
    assert len(entries) == 25 and done.code == ldap.SIZE_LIMIT_EXCEEDED


def test_paged_cookie_errors_and_abandon():
    h = Harness(contacts=many(30))
    h.bind()
    _, done = h.search(scope=1, controls=[w.paged(10)])
    _, cookie = w.paged_cookie(done.controls[ldap.OID_PAGED_RESULTS])
    _, other = h.search("(cn=x*)", scope=1, controls=[w.paged(10, cookie)])
    assert other.code == ldap.UNWILLING_TO_PERFORM  # a cookie belongs to its own search
    _, stop = h.search(scope=1, controls=[w.paged(0, cookie)])
    assert stop.code == 0 and w.paged_cookie(stop.controls[ldap.OID_PAGED_RESULTS])[1] == b""
    _, gone = h.search(scope=1, controls=[w.paged(10, cookie)])
    assert gone.code == ldap.UNWILLING_TO_PERFORM
    # abandon (§4.11) of the message that holds a paged search forgets it
    _, done = h.search(scope=1, controls=[w.paged(10)])
    _, cookie = w.paged_cookie(done.controls[ldap.OID_PAGED_RESULTS])
    assert h.send(w.message(5, ber.integer(2, 0x50))) == []
    assert h.search(scope=1, controls=[w.paged(10, cookie)])[1].code == ldap.UNWILLING_TO_PERFORM


def test_abandon_of_a_queued_search_suppresses_its_answer():
    h = bound()
    responses = h.answers(w.search(7, "(cn=*)") + w.message(8, ber.integer(7, 0x50)) + w.search(9, "(cn=reception)"))
    assert {r.message_id for r in responses} == {9}


def test_sort_by_unknown_attribute():
    h = bound()
    entries, done = h.search(scope=1, controls=[w.sort("nonsense")])
    assert done.code == 0 and len(entries) == len(CONTACTS)
    assert done.controls[ldap.OID_SORT_RESPONSE] == b"\x30\x03\x0a\x01\x10"  # noSuchAttribute
    _, done = h.search(scope=1, controls=[w.sort("nonsense", critical=True)])
    assert done.code == ldap.UNAVAILABLE_CRITICAL_EXTENSION


def test_unknown_critical_control_refused_noncritical_ignored():
    h = bound()
    _, done = h.search(controls=[w.control("1.2.3.4", critical=True)])
    assert done.code == ldap.UNAVAILABLE_CRITICAL_EXTENSION
    _, done = h.search(controls=[w.control("1.2.3.4")])
    assert done.code == 0


# -- extended operations, writes, unknown operations ---------------------------------


def test_starttls_refused_when_already_tls_or_with_pending_messages():
    h = Harness()
    outputs = h.send(w.extended(1, ldap.OID_STARTTLS) + w.search(2, base="", scope=0))
    assert not any(isinstance(o, ldap.StartTLS) for o in outputs)
    responses = w.parse_responses(b"".join(o for o in outputs if isinstance(o, bytes)))
    assert responses[0].code == ldap.OPERATIONS_ERROR and responses[0].name == ldap.OID_STARTTLS
    outputs = h.send(w.extended(3, ldap.OID_STARTTLS))
    assert w.parse_responses(outputs[0])[0].code == 0 and isinstance(outputs[1], ldap.StartTLS)
    h.session.tls_started()
    assert h.answers(w.extended(4, ldap.OID_STARTTLS))[0].code == ldap.OPERATIONS_ERROR


def test_unknown_extended_operation():
    assert Harness().answers(w.extended(1, "1.2.3.4"))[0].code == ldap.PROTOCOL_ERROR


@pytest.mark.parametrize("op, response_tag", [
    (ber.tlv(0x68, ber.octets("cn=x,dc=pbx") + ber.sequence()), ldap.ADD_RESPONSE),
    (ber.octets("cn=Reception,dc=pbx", 0x4A), ldap.DEL_RESPONSE),
    (ber.tlv(0x66, ber.octets("cn=Reception,dc=pbx") + ber.sequence()), ldap.MODIFY_RESPONSE),
    (ber.tlv(0x6C, ber.octets("cn=Reception,dc=pbx") + ber.octets("cn=Desk") + ber.boolean(True)), ldap.MODDN_RESPONSE),
])
def test_writes_are_refused(op, response_tag):
    (response,) = bound().answers(w.message(3, op))
    assert (response.tag, response.code) == (response_tag, ldap.UNWILLING_TO_PERFORM)


def test_compare_results():
    h = bound()

    def compare(dn, attr, value):
        return w.message(4, ber.tlv(0x6E, ber.octets(dn) + ber.sequence(ber.octets(attr), ber.octets(value))))
    assert h.answers(compare("cn=Reception,dc=pbx", "ipPhone", "100"))[0].code == ldap.COMPARE_TRUE
    assert h.answers(compare("cn=Reception,dc=pbx", "ipPhone", "101"))[0].code == ldap.COMPARE_FALSE
    assert h.answers(compare("cn=Reception,dc=pbx", "mobile", "1"))[0].code == ldap.NO_SUCH_ATTRIBUTE
    assert h.answers(compare("cn=Nobody,dc=pbx", "cn", "1"))[0].code == ldap.NO_SUCH_OBJECT


def assert_disconnected(outputs, why: str):
    assert isinstance(outputs[-1], ldap.Close) and why in outputs[-1].reason
    (notice,) = w.parse_responses(outputs[-2])
    assert (notice.message_id, notice.code, notice.name) == (0, ldap.PROTOCOL_ERROR, ldap.OID_NOTICE_OF_DISCONNECTION)


def test_unknown_operation_disconnects_with_a_notice():
    h = Harness()
    assert_disconnected(h.send(w.message(1, ber.tlv(0x7F & 0x5E, b""))), "unknown protocolOp")
    assert h.session.closed and h.send(w.search(2)) == []


@pytest.mark.parametrize("data, why", [
    (b"\x04\x03abc", "not SEQUENCE"),
    (b"\x30\x80\x02\x01\x01", "indefinite"),
    (b"\x30\x84\x00\xa0\x00\x00", "over the limit"),  # a 10 MB message: refused from its header
    (w.message(0, b"\x42\x00"), "messageID 0"),
    (b"\x30\x07\x02\x01\x01\x63\x02\x04\x05", "runs past"),
    (b"\x30\x05\x02\x01\x01\x60\x00", "truncated"),
    (w.message(1, b"\x42\x00", b"\x04\x00"), "after the protocolOp"),
] + [  # a search's filter item cut short where the message ends (no attribute list after it), before a bind
    (w.message(2, ber.tlv(0x63, ber.octets("dc=pbx") + ber.enumerated(2) + ber.enumerated(0) + ber.integer(0)
                          + ber.integer(0) + ber.boolean(False) + item)), "")
    for item in (b"\xa4\x00", b"\xa4\x01\x04", b"\xa3\x00", b"\xa3\x01\x04")
])
def test_malformed_messages_disconnect(data, why):
    assert_disconnected(Harness().send(data), why)


_NUMBERS = w.encode_filter("(|(telephoneNumber=4930123)(mobile=4930123)(homePhone=4930123))")  # a phone's, 71 bytes
_HEAD = ber.octets("dc=pbx") + ber.enumerated(2) + ber.enumerated(0) + ber.integer(50) + ber.integer(0) + ber.boolean(False)
# an OR whose length ends 5 bytes into its last item, and those 5 bytes (the item's value ends with them) an attribute
# list: a reader of the OR's items bounded by the message, not by the OR, would take them for the search's attributes
_ITEMS = w.encode_filter("(|(telephoneNumber=4930123)(mobile=4930123))")[2:] + ber.tlv(
    0xA3, ber.octets("homePhone") + ber.octets(b"49" + ber.sequence(ber.octets("c"))))
_OR_CUT_INSIDE_ITEM = bytes([0xA1, len(_ITEMS) - 5]) + _ITEMS


@pytest.mark.parametrize("op, why", [
    (_HEAD + _NUMBERS, "truncated"),  # no attribute list after the filter
    (_HEAD + _NUMBERS + b"\x30", "truncated"),  # the attribute list's header cut after its tag
    (_HEAD + _NUMBERS[:-5], "runs past"),  # the message ends inside the OR's last item (refused from the OR's length)
    (_HEAD + _OR_CUT_INSIDE_ITEM, "runs past"),  # its items are read within the OR
])
def test_a_bound_search_cut_after_or_inside_its_filter_disconnects(op, why):
    assert_disconnected(bound().send(w.message(2, ber.tlv(0x63, op))), why)


def test_deeply_nested_and_oversized_filters():
    deep = "(!" * 40 + "(cn=x)" + ")" * 40
    assert_disconnected(bound().send(w.search(2, deep)), "deeper")
    wide = "(|" + "(cn=x)" * 600 + ")"
    assert_disconnected(bound().send(w.search(2, wide)), "items")


N = ldap.MAX_FILTER_ITEMS  # 256 units


@pytest.mark.parametrize("over, at_limit", [
    # every item costs one; a substring filter one per piece, an approximate match one per word,
    # an extensible match without a type one per attribute type (14), plus two for the DN
    ("(|" + "(cn=x)" * (N - 1) + "(cn=y))", "(|" + "(cn=x)" * (N - 2) + "(cn=y))"),
    ("(|" + "(cn=*a*b*c*d)" * ((N - 4) // 4) + "(cn=*a*b*c*d*e))", "(|" + "(cn=*a*b*c*d)" * ((N - 4) // 4) + "(cn=*a*b*c))"),
    ("(|" + "(cn~=al bo ci di)" * ((N - 4) // 4) + "(cn~=al bo ci di e))", "(|" + "(cn~=al bo ci di)" * ((N - 4) // 4) + "(cn~=al bo c))"),
    ("(|" + "(:dn:2.5.13.2:=x)" * ((N - 16) // 16) + "(:2.5.13.2:=x)(cn=x)(cn=y))",
     "(|" + "(:dn:2.5.13.2:=x)" * ((N - 16) // 16) + "(:2.5.13.2:=x)(cn=x))"),
])
def test_filter_items_count_what_checking_an_entry_costs(over, at_limit):
    h = bound()
    _, done = h.search(at_limit, attributes=["1.1"])
    assert done.code == 0
    assert_disconnected(bound().send(w.search(2, over)), f"more than {N} items")


def test_a_filter_of_many_empty_items_is_refused_at_the_first_over_the_limit():
    assert_disconnected(bound().send(w.search(2, "(|" + "(&)" * 300 + ")")), f"more than {N} items")


def test_an_assertion_value_or_piece_over_1_kib_is_refused():
    for text in ("(cn=" + "x" * 1025 + ")", "(cn=*" + "x" * 1025 + "*)", "(:2.5.13.2:=" + "x" * 1025 + ")", "(sn~=" + "x" * 1025 + ")"):
        assert_disconnected(bound().send(w.search(2, text)), "over the limit of 1024")
    _, done = bound().search("(cn=" + "x" * 1024 + ")")
    assert done.code == 0


def test_assertion_bytes_count_as_filter_items_and_long_names_are_refused():
    long_values = "(|" + ("(cn=" + "x" * 992 + ")") * ((N - 32) // 32) + "(cn=y)" * 31  # 1 + 32 x (1 + 992 // 32) + 31 = N
    _, done = bound().search(long_values + ")")
    assert done.code == 0
    assert_disconnected(bound().send(w.search(2, long_values + "(cn=z))")), f"more than {N} items")
    assert_disconnected(bound().send(w.search(2, f"({'c' * 257}=x)")), "over the limit of 256")
    assert_disconnected(bound().send(w.search(2, attributes=["x" * 257])), "over the limit of 256")
    _, done = bound().search(base="cn=" + "x" * 1100 + ",dc=pbx")  # parsing a DN is a step per character
    assert done.code == ldap.INVALID_DN_SYNTAX and "over the limit of 1024" in done.diagnostic
    assert Harness().bind("cn=" + "x" * 1100 + ",dc=pbx", PASSWORD).code == ldap.INVALID_CREDENTIALS


def test_lists_in_a_request_are_refused_at_the_first_element_over_their_limit():
    many_attributes = w.search(2, attributes=[""] * 20000)
    assert_disconnected(bound().send(many_attributes), "more than 128 attributes")
    many_controls = w.search(2, controls=[w.control("1.2.3")] * 20000)
    assert_disconnected(bound().send(many_controls), "more than 16 controls")
    h = bound()
    many_keys = w.control("1.2.840.113556.1.4.473", ber.sequence(*[ber.sequence(ber.octets("sn"))] * 20000))
    _, done = h.search(controls=[many_keys])
    assert done.code == ldap.PROTOCOL_ERROR and "sort keys" in done.diagnostic  # a search error: the connection stays
    assert h.search("(cn=reception)")[1].code == 0


def test_before_a_bind_a_message_over_8_kib_is_refused_from_its_header():
    h = Harness()
    outputs = h.send(b"\x30\x83\x03\xff\xfb")  # a header announcing 255 KiB, before any bind
    assert isinstance(outputs[-1], ldap.Close) and outputs[-1].oversize and "before a bind" in outputs[-1].reason
    assert h.session.closed and h.session.held == 0
    # what clients send before binding fits: a bind with a long DN and password, StartTLS, the Root DSE
    h = Harness()
    long_name = "cn=" + "x" * 3000 + ",dc=pbx"
    assert h.bind(long_name, "p" * 3000).code == ldap.INVALID_CREDENTIALS
    assert h.answers(w.search(3, base="", scope=0, attributes=["supportedExtension"] * 100))[-1].code == 0
    assert h.bind().code == 0
    _, done = h.search("(cn=x)", controls=[w.control("1.2.3.4", b"x" * 100_000)])  # 100 KiB once bound
    assert done.code == 0
    assert h.bind("cn=phonebook,dc=pbx", "wrong").code == ldap.INVALID_CREDENTIALS  # not bound any more: small again
    assert isinstance(h.send(w.search(4, controls=[w.control("1.2.3.4", b"x" * 9000)]))[-1], ldap.Close)


def test_a_bind_and_a_large_search_sent_together_are_both_answered():
    h = Harness()
    unknown = w.control("1.2.3.4", b"x" * 20_000)
    search = w.search(2, "(cn=reception)", attributes=["1.1"], controls=[unknown])
    responses = h.answers(w.bind(1, "cn=phonebook,dc=pbx", PASSWORD) + search)
    assert [(r.tag, r.code) for r in responses] == [(ldap.BIND_RESPONSE, 0), (ldap.SEARCH_RESULT_ENTRY, None), (ldap.SEARCH_RESULT_DONE, 0)]


def test_the_buffer_budget_caps_unfinished_input_in_total_and_per_client():
    budget = ldap.BufferBudget(total=100, per_client=60)
    a, b, c = object(), object(), object()
    assert budget.hold(a, "10.0.0.1", 50) and budget.hold(b, "10.0.0.2", 40)
    assert not budget.hold(c, "10.0.0.3", 20) and budget.held == 110  # over the total: refused
    budget.release(c)
    assert not budget.hold(c, "10.0.0.1", 20)  # over its client's share
    budget.release(c)
    assert budget.hold(a, "10.0.0.1", 10)  # shrinking is always fine
    assert budget.hold(c, "10.0.0.3", 40) and budget.held == 90
    for holder in (a, b, c):
        budget.release(holder)
    assert budget.held == 0 and not budget._by_client and not budget._by_holder


def test_a_session_over_the_buffer_budget_is_closed_busy_and_gives_its_bytes_back():
    budget = ldap.BufferBudget(total=150_000, per_client=150_000)
    directory = ldap.Directory("dc=pbx", CONTACTS)
    policy = ldap.Policy(password=PASSWORD)
    sessions = [ldap.LdapSession(lambda: policy, lambda base: directory, Clock(), address=f"10.0.0.{n}", buffers=budget)
                for n in range(3)]
    big = w.search(2, "(cn=reception)", controls=[w.control("1.2.3.4", b"x" * 200_000)])  # an unknown control, ignored
    for session in sessions[:2]:
        assert session.receive(w.bind(1, "phonebook", PASSWORD))[-1]
        assert session.receive(big[:70_000]) == [] and session.held == 70_000
    assert budget.held == 140_000
    sessions[2].receive(w.bind(1, "phonebook", PASSWORD))
    outputs = sessions[2].receive(big[:70_000])
    assert isinstance(outputs[-1], ldap.Close) and outputs[-1].oversize and sessions[2].closed
    (notice,) = w.parse_responses(outputs[-2])
    assert notice.name == ldap.OID_NOTICE_OF_DISCONNECTION and notice.code == ldap.BUSY
    assert budget.held == 140_000  # the refused one holds nothing
    outputs = run_searches(sessions[0].receive(big[70_000:]))  # the message completes: answered, nothing held
    assert w.parse_responses(b"".join(o for o in outputs if isinstance(o, bytes)))[-1].code == 0
    assert sessions[0].held == 0 and budget.held == 70_000
    sessions[1].close()
    assert budget.held == 0


def test_truncated_message_waits_then_completes():
    h = bound()
    data = w.search(2, "(cn=reception)")
    assert h.send(data[:1]) == [] and h.send(data[1:5]) == []
    responses = w.parse_responses(h.send(data[5:])[0])
    assert responses[0].dn == "cn=Reception,dc=pbx"


def test_random_bytes_never_raise():
    rng = random.Random(7)
    for _ in range(300):
        h = Harness()
        h.bind()
        for output in h.send(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 80)))):
            assert isinstance(output, (bytes, ldap.Close, ldap.Searched, ldap.BindFailed, ldap.StartTLS))


def test_mutated_valid_requests_never_raise():
    rng = random.Random(11)
    valid = [bytes.fromhex(x) for messages in CAPTURED.values() for x in messages]
    for _ in range(1500):
        data = bytearray(rng.choice(valid))
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        h = bound()
        h.send(bytes(data))


# -- directory, throttle, caps ------------------------------------------------------------


def test_the_directory_is_changed_in_place_a_contact_at_a_time():
    directory = ldap.Directory("dc=pbx", CONTACTS)
    h = Harness()
    h.directory = directory
    assert h.bind().code == 0
    assert [e.dn for e in h.search("(sn=schmitt)")[0]] == ["cn=Jonas Schmitt,dc=pbx"]
    directory.put(replace(CONTACTS[2], last_name="Schmidt"))
    directory.delete(1)
    assert h.search("(sn=schmitt)")[0] == [] and [e.dn for e in h.search("(sn=schmidt)")[0]] == ["cn=Jonas Schmidt,dc=pbx"]
    assert [e.dn for e in h.search("(cn=john smith)")[0]] == ["cn=John Smith,dc=pbx"]  # no namesake left: no +uid
    assert len(directory) == len(CONTACTS) - 1
    assert ldap.Directory("ou=book,dc=example").base_entry.dn == "ou=book,dc=example"


def test_bind_throttle_doubles_and_forgets():
    throttle = ldap.BindThrottle(first=0.25, cap=2.0, forget_after=60)
    assert [throttle.delay("10.0.0.1", 0) for _ in range(5)] == [0.25, 0.5, 1.0, 2.0, 2.0]
    assert throttle.delay("10.0.0.2", 0) == 0.25
    assert throttle.delay("10.0.0.1", 1000) == 0.25
    small = ldap.BindThrottle(max_clients=2)
    for address in ("a", "b", "c"):
        small.delay(address, 0)
    assert len(small) == 2


def test_connection_caps():
    caps = ldap.ConnectionCaps(per_client=2, total=3)
    admitted = [caps.admit(address, n) for n, address in enumerate("aaabc")]
    assert admitted == [True, True, False, True, False]
    caps.release(0)
    caps.release(0)  # again: nothing happens
    assert caps.admit("c", 5) and caps.open == 3


def test_when_every_slot_is_taken_the_client_holding_the_most_gives_up_an_idle_connection():
    """Sixteen addresses holding 256 connections each (the per-address cap, for a NAT) took every slot: no phone
    could connect. The client holding two more than the newcomer's gives up its oldest idle one."""
    caps = ldap.ConnectionCaps(per_client=4, total=10)
    busy = {"10.0.0.1#0"}  # a connection answering a request is never closed for room
    for n in range(4):
        assert caps.admit("10.0.0.1", f"10.0.0.1#{n}")
    for n in range(3):
        assert caps.admit("10.0.0.2", f"10.0.0.2#{n}") and caps.admit("10.0.0.3", f"10.0.0.3#{n}")
    idle = lambda connection: connection not in busy  # noqa: E731
    assert caps.admit("192.0.2.7", "phone") is False
    assert caps.make_room("10.0.0.1", idle) is None  # it holds the most itself
    assert caps.make_room("10.0.0.2", idle) is None  # 3 against 4: nothing to gain
    assert caps.make_room("192.0.2.7", idle) == "10.0.0.1#1"  # the most (4), its oldest idle one
    assert caps.open == 9 and caps.admit("192.0.2.7", "phone")
    caps.release("10.0.0.1#1")  # its greenlet ends later: not released twice
    assert caps.open == 10
    assert caps.make_room("192.0.2.8", idle) in {"10.0.0.2#0", "10.0.0.3#0"}  # three each now, the oldest of one
    assert caps.make_room("192.0.2.8", lambda connection: False) is None  # all busy: none


def test_phones_of_an_ipv6_lan_are_not_crowded_out_nor_by_a_newcomer_refused_anyway():
    """A review: holdings keyed by /64 made a LAN's phones, one connection each, one client holding hundreds:
    58 IPv4 addresses closed 430 of 500 phones' connections. And an address at its own cap closed one of
    someone's connections at each attempt, to be refused anyway."""
    caps = ldap.ConnectionCaps(per_client=4, total=12, per_prefix=8)
    for n in range(8):
        assert caps.admit(f"2001:db8:1::{n + 1}", ("phone", n))
    for n in range(4):
        assert caps.admit("10.0.0.1", ("hog", n))
    idle = lambda connection: True  # noqa: E731
    assert caps.make_room("2001:db8:1::99", idle) is None  # its /64 is at its cap: it would be refused anyway
    for n, newcomer in enumerate(("192.0.2.7", "192.0.2.8", "192.0.2.9")):
        assert caps.make_room(newcomer, idle) == ("hog", n)  # the address holding the most: never a phone
        assert caps.admit(newcomer, newcomer)
    assert caps.make_room("192.0.2.10", idle) is None  # one each now: nobody holds two more
    assert caps.open == 12 and caps.open_from("2001:db8:1::/64") == 8


def test_connections_are_capped_per_address_and_a_64_holds_a_quarter_of_all():
    caps = ldap.ConnectionCaps(per_client=2, total=16)
    assert caps.per_prefix == 4
    phones = [caps.admit(f"2001:db8:1:2::{n}", n) for n in range(1, 6)]  # one connection each
    assert phones == [True] * 4 + [False]
    assert caps.open_from("2001:db8:1:2::/64") == 4 and caps.open_from("2001:db8:1:2::1") == 1
    assert caps.admit("2001:db8:1:3::1", "a") and caps.admit("192.0.2.1", "b")  # the others keep the rest
    caps.release(1)
    assert caps.admit("2001:db8:1:2::5", 6) and caps.open_from("2001:db8:1:2::/64") == 4
    assert caps.admit("2001:db8:1:2::5", 7) is False  # the /64's quarter again


def test_pipelined_requests_are_answered_in_bounded_batches():
    h = bound()
    binds = b"".join(w.bind(10 + i, "cn=phonebook,dc=pbx", PASSWORD) for i in range(40))
    answered = [r.message_id for r in w.parse_responses(b"".join(h.session.receive(binds)))]
    assert answered == list(range(10, 10 + ldap.MAX_BATCH)) and h.session.backlog
    while h.session.backlog:
        answered += [r.message_id for r in w.parse_responses(b"".join(h.session.receive(b"")))]
    assert answered == list(range(10, 50))
    # a search ends the batch: the shell runs its cursor before the messages after it are answered
    searches = b"".join(w.search(100 + i, "(cn=reception)", attributes=["cn"]) for i in range(40))
    outputs = h.session.receive(searches)
    assert isinstance(outputs[-1], ldap.SearchCursor) and sum(isinstance(o, ldap.SearchCursor) for o in outputs) == 1
    assert h.session.backlog
    outputs = run_searches(outputs)
    while h.session.backlog:
        outputs += run_searches(h.session.receive(b""))
    done = [r.message_id for r in w.parse_responses(b"".join(x for x in outputs if isinstance(x, bytes)))
            if r.tag == ldap.SEARCH_RESULT_DONE]
    assert done == list(range(100, 140))
    assert not h.session.backlog and h.session.held == 0


def test_a_batch_ends_once_its_time_is_spent_and_the_rest_waits_its_turn():
    """Costly messages (binds with long names to parse: 16 of them held the loop 10 ms) are answered for
    BATCH_SECONDS of the session's clock per call, one at least; the rest wait (backlog), none lost."""
    h = bound()
    h.clock.step = ldap.BATCH_SECONDS / 3  # each look at the clock: a third of the batch's time
    name = "cn=" + "a\\ " * 300 + ",dc=pbx"
    binds = b"".join(w.bind(10 + i, name, "wrong") for i in range(16))
    answered = [r.message_id for r in w.parse_responses(b"".join(x for x in h.session.receive(binds) if isinstance(x, bytes)))]
    assert 1 <= len(answered) < 16 and h.session.backlog
    while h.session.backlog:
        outputs = h.session.receive(b"")
        answered += [r.message_id for r in w.parse_responses(b"".join(x for x in outputs if isinstance(x, bytes)))]
    assert answered == list(range(10, 26))


def test_a_negative_page_size_is_refused():
    """RFC 2696's size is 0..maxInt; a negative one took all the results but the last |size| as one page."""
    h = bound()
    entries, done = h.search("(objectClass=inetOrgPerson)", attributes=["cn"], controls=[w.paged(-1)])
    assert entries == [] and done.code == ldap.PROTOCOL_ERROR
    entries, done = h.search("(objectClass=inetOrgPerson)", attributes=["cn"], controls=[w.paged(2)])
    assert len(entries) == 2 and done.code == ldap.SUCCESS


def test_only_short_attribute_lists_are_kept_decoded():
    """A phone's list is kept (it sends the same every time); one of many long names is decoded per request:
    1,024 of them kept held 70 MiB, and freeing them at once held the loop 11 ms."""
    from greenservers.proto.ldap import messages

    h = bound()
    messages._ATTRIBUTE_LISTS.clear()
    h.search("(cn=reception)", attributes=["cn", "telephoneNumber"])
    long_names = [f"x-{n:03d}-" + "a" * 200 for n in range(10)]
    h.search("(cn=reception)", attributes=long_names)
    assert [len(key) <= messages.MAX_CACHED_LIST for key in messages._ATTRIBUTE_LISTS] == [True]


def test_a_filter_of_many_lookups_makes_them_in_steps():
    """An OR (or AND) of 255 lookups made them all in one step of the search: 2-5 ms with 50,000 contacts."""
    text = "(|" + "".join(f"(telephoneNumber=*{n:03d})" for n in range(255)) + ")"
    raw = w.encode_filter(text)
    tag, start, stop = ber.read_header(raw, 0, len(raw))
    steps = bound().directory.candidate_steps(ldap.decode_filter(raw, tag, start, stop, 0, ldap.decode_budget()))
    yields = 0
    while True:
        try:
            next(steps)
        except StopIteration as end:
            ids, exact, _ = end.value
            break
        yields += 1
    assert yields == 255 // ldap.LOOKUPS_PER_STEP
    h = bound()
    entries, done = h.search(text, attributes=["cn"])
    assert exact and done.code == ldap.SUCCESS and len(entries) == len({i for i in ids if i != ldap.NOT_A_MATCH}) > 0


def test_indexed_lookups_agree_with_evaluating_every_entry():
    """The index only narrows: for random filters, the entries found equal a full scan's."""
    rng = random.Random(5)
    syllables = ["an", "ber", "jo", "mül", "ler", "sch", "mit", "ke", "ö", "ti", "han"]
    contacts = [Contact(i, "".join(rng.choices(syllables, k=2)).title(), "".join(rng.choices(syllables, k=rng.randint(1, 3))).title(),
                        "", rng.choice(["", "ACME", "Widgets"]), rng.choice(["", f"+49 30 {rng.randint(100, 999)}-{i}"]),
                        rng.choice(["", f"0171 {rng.randint(10000, 99999)}"]), "", str(i), "") for i in range(1, 301)]
    directory = ldap.Directory("dc=pbx", contacts)
    entries = {i: directory.entry(i) for i in directory.order}  # the reference: every entry evaluated
    numbers = [c.work for c in contacts if c.work] + [c.mobile for c in contacts if c.mobile]

    def item() -> str:
        kind = rng.randrange(7)
        attr = rng.choice(["cn", "sn", "givenName", "o"])
        if kind == 6:  # what the base entry has (dc, objectClass), presence, and an unknown type
            return rng.choice(["(dc=pbx)", "(dc=p*)", "(objectClass=top)", "(objectClass=*)", "(dc=*)", "(cn=*)",
                               "(foo=bar)", "(dc>=a)", "(dc~=pbx)"])
        text = "".join(rng.choices(syllables, k=rng.randint(1, 2)))
        if kind == 0:
            return f"({attr}={text[:rng.randint(1, 4)]}*)"
        if kind == 1:
            return f"({attr}=*{text[rng.randint(0, 1):][:rng.randint(1, 4)]}*)"
        if kind == 2:
            return f"({attr}=*{text})"
        if kind == 3:
            number = rng.choice(numbers)
            return f"({rng.choice(['telephoneNumber', 'mobile'])}={number})"
        if kind == 4:
            number = rng.choice(numbers).replace(" ", "")
            return f"(telephoneNumber={number[:rng.randint(2, 8)]}*)"
        return f"({attr}={text[:2]}*{text[2:]}*)"

    def random_filter(depth: int = 0) -> str:
        if depth < 2 and rng.random() < 0.4:
            op = rng.choice("&|!")
            if op == "!":
                return f"(!{random_filter(depth + 1)})"
            return f"({op}{''.join(random_filter(depth + 1) for _ in range(rng.randint(1, 3)))})"
        return item()

    for _ in range(400):
        text = random_filter()
        encoded = w.encode_filter(text)
        tag, s, e = ber.read_header(encoded, 0, len(encoded))
        budget = ldap.decode_budget()
        flt = ldap.decode_filter(encoded, tag, s, e, 0, budget)
        assert ldap.decoded_units(budget) == ldap.filter_units(flt), text
        predicate = ldap.compile_filter(flt, directory.sounds)
        for entry in (directory.base_entry, *entries.values()):  # False without its attributes: False indeed
            assert not ldap.false_without(flt, entry.folded) or predicate(entry) is False, text
        found = array("i")
        for _ in ldap.find_entries(directory, [directory.base_entry], True, flt, found):
            pass
        assert (-1 in found) == bool(predicate(directory.base_entry)), text
        found = array("i", (i for i in found if i != -1))
        assert {entries[i].dn for i in found} == {e.dn for e in entries.values() if predicate(e)}, text
        assert len(found) == len(set(found)), text
        limited = array("i")
        for _ in ldap.find_entries(directory, [], True, flt, limited, limit=3):
            pass
        assert len(limited) == min(3, len(found)) and set(limited) <= set(found), text


def test_the_phones_short_substring_items_decode_as_the_general_path_decodes_them(monkeypatch):
    from greenservers.proto.ldap import filters

    texts = ["(cn=Joha*)", "(sn=*schr*)", "(CN=Ü*)", "(displayName=  Jo  *)", "(telephoneNumber=+49 30*)",
             "(telephoneNumber=*4711*)", "(foo=ab*)", "(cn=ab*cd)", "(cn=*ab*cd*)", "(cn=" + "x" * 40 + "*)",
             "(|(cn=Joha*)(sn=Joha*))", "(|(cn=*schr*)(sn=*schr*))"]
    encoded = [w.encode_filter(text) for text in texts]
    # the same item with a length in its long form (0x81 0x04): valid BER, not the phones' encoding
    encoded.append(bytes.fromhex("a40d0402636e3007808104") + b"Joha")

    def decode(data: bytes):
        tag, s, e = ber.read_header(data, 0, len(data))
        budget = ldap.decode_budget()
        return ldap.decode_filter(data, tag, s, e, 0, budget), ldap.decoded_units(budget)

    fast = [decode(data) for data in encoded]
    monkeypatch.setattr(filters, "_short_substring", lambda data, start, stop: None)
    assert fast == [decode(data) for data in encoded]
    assert fast[0][0] == (ldap.F_SUB, "cn", "joha", (), "") and fast[1][0] == (ldap.F_SUB, "sn", "", ("schr",), "")


def test_a_slice_of_a_search_makes_a_bounded_number_of_answers_even_of_a_costly_selection():
    """Answers made from whole entries (an alias or typesOnly: about 50 us each) are made EMIT_STEP a slice, though
    a slice finds more (an exact OR's lookups: 64)."""
    h = Harness(contacts=[Contact(i, "Anna", f"Name{i:04d}", work=f"+49 30 {1000000 + i}") for i in range(1, 301)])
    assert h.bind().code == 0
    cursor = h.session.receive(w.search(2, "(|(cn=anna*)(sn=anna*))", attributes=["commonName", "surname"]))[-1]
    assert isinstance(cursor, ldap.SearchCursor)
    made = []
    while not cursor.done:
        made.append(sum(len(w.parse_responses(out)) for out in cursor.run(float("-inf")) if isinstance(out, bytes)))
    assert max(made) <= ldap.EMIT_STEP + 1 and sum(made) == 301  # 300 entries and the SearchResultDone
