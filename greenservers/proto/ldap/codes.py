"""LDAP's numbers and limits: result codes, protocol op tags, filter choices, scopes, OIDs, the server's limits,
and `LdapError` (an operation failing with a result code)."""

from __future__ import annotations

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
BATCH_SECONDS = 0.001  # and the time they take: costly ones (16 binds of long DNs to parse: 10 ms) go on after a turn


ANONYMOUS_REFUSED = "anonymous searches are not allowed: bind with the address book's user and password"


class LdapError(Exception):
    """An operation fails with `result_code` (the session answers it; the connection stays)."""

    def __init__(self, result_code: int, message: str = "", matched_dn: str = ""):
        super().__init__(message)
        self.result_code = result_code
        self.matched_dn = matched_dn
