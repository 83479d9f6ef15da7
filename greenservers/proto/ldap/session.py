"""One client connection's LDAP session, sans-IO: bytes in, response bytes and events out.

`LdapSession.receive(data)` appends bytes to a buffer, cuts complete
LDAPMessages off it (RFC 4511 §4.1.1, BER framing in ber.py; a length over
`Policy.max_message`, or before a successful bind over the much smaller
`max_unbound_message`, is refused from the header), and answers up to
MAX_BATCH of them in order, for BATCH_SECONDS of its clock at most (`backlog`
tells the shell to call again before reading more, so pipelined requests
cannot pile up answers in memory, nor hold the shell's loop for long). The
bytes it holds between calls count against a `BufferBudget` shared by all
sessions; past it, the connection is closed. Paged results kept between
pages count against a `PagedBudget` shared by all sessions, which may give
them up. It returns a list of outputs (proto/results.py): `bytes` to send
and events — `BindFailed`, `Searched`,
`StartTLS`, `Close` — and last, for a search, a `SearchCursor` the shell runs
a slice at a time before it calls `receive` again. The session reads no clock
but the `clock` it is given (for time limits).

Operations (OPERATIONS: each protocolOp's decoder, giving a typed request,
and its handler):
- Bind (§4.2, RFC 4513 §5.1): simple only; `ldap_user` as a bare name or as
  cn=/uid=NAME under the base; an anonymous bind succeeds (clients read the
  Root DSE after it) but its searches are refused with
  insufficientAccessRights unless anonymous reading is allowed; a password
  over a plain connection refused when plain binds are off
  (confidentialityRequired); SASL -> authMethodNotSupported.
- Search (§4.5, search.py): the Root DSE (base "", scope base, allowed
  before a bind), the base entry and one inetOrgPerson entry per contact;
  every scope and filter choice; size and time limits; paged results and
  server-side sorting.
- Compare (§4.10), Abandon (§4.11), Unbind (§4.3), Extended (§4.12):
  StartTLS (RFC 4511 §4.14; refused when already on TLS or with more
  messages pending) and Who am I? (RFC 4532).
- Add/Delete/Modify/ModifyDN -> unwillingToPerform (a read-only directory).
- Anything else, or a malformed message -> Notice of Disconnection with
  protocolError (§4.1.1, §4.4.1), then Close.

State machine (TRANSITIONS): ANONYMOUS -bind ok-> BOUND, BOUND -bind
failed-> ANONYMOUS, any -unbind/fatal error-> CLOSED.
"""

from __future__ import annotations

import hmac
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from .. import ber
from ..ber import BerError, Incomplete
from ..clients import client_key
from .codes import (
    ABANDON_REQUEST,
    ADD_REQUEST,
    ANONYMOUS_REFUSED,
    AUTH_METHOD_NOT_SUPPORTED,
    BATCH_SECONDS,
    BIND_REQUEST,
    BIND_RESPONSE,
    BUSY,
    COMPARE_FALSE,
    COMPARE_REQUEST,
    COMPARE_RESPONSE,
    COMPARE_TRUE,
    CONFIDENTIALITY_REQUIRED,
    CONTROLS_TAG,
    DEL_REQUEST,
    EXTENDED_REQUEST,
    EXTENDED_RESPONSE,
    F_EQ,
    INSUFFICIENT_ACCESS_RIGHTS,
    INVALID_CREDENTIALS,
    INVALID_DN_SYNTAX,
    MAX_BATCH,
    MAX_BATCH_BYTES,
    MAX_MESSAGE,
    MAX_UNBOUND_MESSAGE,
    MODDN_REQUEST,
    MODIFY_REQUEST,
    NO_SUCH_ATTRIBUTE,
    NO_SUCH_OBJECT,
    OID_STARTTLS,
    OID_WHOAMI,
    OPERATIONS_ERROR,
    PROTOCOL_ERROR,
    SEARCH_REQUEST,
    SEARCH_RESULT_DONE,
    SERVER_SIZE_LIMIT,
    SERVER_TIME_LIMIT,
    SUCCESS,
    UNBIND_REQUEST,
    UNWILLING_TO_PERFORM,
    LdapError,
)
from .directory import Directory
from .dn import DnError, escape_rdn_value, parse_dn
from .entries import Entry
from .filters import compile_filter
from .limits import BufferBudget, PagedBudget
from .messages import (
    _WRITE_RESPONSES,
    BindFailed,
    BindRequest,
    Close,
    CompareRequest,
    Control,
    Searched,
    SearchRequest,
    StartTLS,
    decode_abandon,
    decode_bind,
    decode_compare,
    decode_controls,
    decode_extended,
    decode_search,
    message,
    notice_of_disconnection,
    result,
)
from .schema import attribute_key, fold_for, fold_name
from .search import SearchCursor, Searches

ANONYMOUS, BOUND, CLOSED = "anonymous", "bound", "closed"
EV_BIND_OK, EV_BIND_ANONYMOUS, EV_BIND_FAILED, EV_UNBIND, EV_FATAL = "bind ok", "anonymous bind", "bind failed", "unbind", "fatal"
ANONYMOUS_BIND = -1  # internal: the bind was anonymous (answered as success)
_NONE_ABANDONED: frozenset[int] = frozenset()
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


class FatalProtocolError(Exception):
    """The connection must end with a Notice of Disconnection (§4.1.1)."""


class TooLarge(BerError):
    """A message longer than the session accepts now, refused from its header."""


class LdapSession:
    """One client connection's LDAP state; feed it bytes, send what it returns.

    `address` is the connection's address as the socket gives it: its paged results count under it (and an
    IPv6 address's /64) in `paged`, and its client (`client`: the IPv4 address, or the IPv6 /64) holds its
    bytes in `buffers`, the budget of bytes held across all connections (None: not capped).
    """

    def __init__(self, policy: Callable[[], Policy], directory: Callable[[str], Directory],
                 clock: Callable[[], float], tls: bool = False, address: str = "-", buffers: BufferBudget | None = None,
                 paged: PagedBudget | None = None):
        self.policy = policy
        self.directory = directory
        self.clock = clock
        self.tls = tls
        self.client = client_key(address)
        self.buffers = buffers
        self.state = ANONYMOUS
        self.bound_dn = ""
        self._buffer = bytearray()
        self._queue: deque[bytes] = deque()  # messages cut from the buffer, not answered yet
        self._abandoned: set[int] | frozenset[int] = _NONE_ABANDONED  # message ids abandoned by a request queued with them
        self.searches = Searches(clock, address, paged)
        self.answered = 0  # messages the last receive() call answered

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
        """Answer the complete messages in `data` (plus what was buffered), up to MAX_BATCH of them (and as
        many as BATCH_SECONDS allow, one at least).

        A search ends the list as a `SearchCursor` for the shell to run; the
        messages after it wait (`backlog`) until the shell calls again.
        """
        self.answered = 0
        if self.state == CLOSED:
            return []
        if data:
            self._buffer += data
        out: list = []
        handled = handled_bytes = 0
        until = self.clock() + BATCH_SECONDS
        while handled < MAX_BATCH and handled_bytes < MAX_BATCH_BYTES and (handled == 0 or self.clock() < until):
            if not self._queue:
                try:
                    self._frame()
                except BerError as exc:
                    return self._fatal(out, str(exc), oversize=isinstance(exc, TooLarge))
                if not self._queue:
                    break
            raw = self._queue.popleft()
            handled += 1
            self.answered = handled
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
        if not self._queue:
            return len(self._buffer)
        return len(self._buffer) + sum(len(raw) for raw in self._queue)

    def _frame(self) -> None:
        """Cut up to MAX_BATCH complete messages off the buffer into the queue.

        Before a successful bind a message may be only `max_unbound_message` long, and
        a longer one is refused from its header, before its bytes arrive.
        """
        policy = self.policy()
        limit = policy.max_message if self.state == BOUND else policy.max_unbound_message
        buffer = self._buffer
        size = len(buffer)
        # one whole message (a phone's request): taken as it is, without the views and the list below
        # (6 bytes hold any header frame_length accepts: it raises no Incomplete here, and the same BerError)
        if size >= 6 and buffer[0] == 0x30 and ber.frame_length(buffer) == size <= limit:
            self._queue.append(bytes(buffer))
            self._buffer = bytearray()
            self._abandoned = _NONE_ABANDONED
            return
        view = memoryview(buffer)
        pos, frames = 0, []
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
        # abandon requests (§4.11) take effect on the messages queued with them (a message alone: none)
        self._abandoned = self._abandoned_ids(frames) if len(frames) > 1 else _NONE_ABANDONED

    @property
    def backlog(self) -> bool:
        """True when a complete message waits: call `receive(b"")` before reading more."""
        if self.state == CLOSED:
            return False
        if self._queue:
            return True
        if len(self._buffer) < 2:  # no header yet (frame_length would raise Incomplete)
            return False
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
        self.searches.drop_all()
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
        operation = OPERATIONS.get(tag)
        if operation is None:
            raise FatalProtocolError(f"unknown protocolOp tag 0x{tag:02x}")
        decode, handler = operation
        request = decode(raw, op_start, op_end) if decode is not None else tag
        handler(self, message_id, request, controls, out, pending)

    # -- operations ------------------------------------------------------------

    def _bind(self, message_id: int, request: BindRequest, controls, out: list, pending: bool) -> None:
        policy = self.policy()
        self.searches.drop_all()
        code, diagnostic = self._check_bind(policy, request)
        if code == ANONYMOUS_BIND:
            code = SUCCESS
            self._transition(EV_BIND_ANONYMOUS)
        elif code == SUCCESS:
            self._transition(EV_BIND_OK)
        else:
            self._transition(EV_BIND_FAILED)
            self.bound_dn = ""
            out.append(BindFailed(request.name, code))
        out.append(message(message_id, result(BIND_RESPONSE, code, diagnostic)))

    def _check_bind(self, policy: Policy, request: BindRequest) -> tuple[int, str]:
        name, credentials = request.name, request.credentials
        if request.version not in (2, 3):
            return PROTOCOL_ERROR, "only LDAPv3 (and v2) binds"
        if not request.simple:
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

    def _unbind(self, message_id: int, request: int, controls, out: list, pending: bool) -> None:
        self._transition(EV_UNBIND)
        out.append(Close(None))

    def _abandon(self, message_id: int, abandoned: int, controls, out: list, pending: bool) -> None:
        self.searches.abandon(abandoned)

    def _write(self, message_id: int, tag: int, controls, out: list, pending: bool) -> None:
        out.append(message(message_id, result(_WRITE_RESPONSES[tag], UNWILLING_TO_PERFORM, "the address book is read-only over LDAP")))

    def _extended(self, message_id: int, oid: str, controls, out: list, pending: bool) -> None:
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

    def _compare(self, message_id: int, request: CompareRequest, controls, out: list, pending: bool) -> None:
        policy = self.policy()
        try:
            if not self._may_read(policy):
                raise LdapError(INSUFFICIENT_ACCESS_RIGHTS, ANONYMOUS_REFUSED)
            directory = self.directory(policy.base)
            entry = self._find_entry(directory, request.dn)
            key = attribute_key(request.attribute)
            if key is None or key not in entry.values:
                raise LdapError(NO_SUCH_ATTRIBUTE, "")
            predicate = compile_filter((F_EQ, key, fold_for(key)(request.value), ""))
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

    def _search(self, message_id: int, request: SearchRequest, controls: list[Control], out: list, pending: bool) -> None:
        policy = self.policy()
        try:
            cursor = self.searches.start(message_id, request, controls, policy, self.directory(policy.base), self._may_read(policy))
        except LdapError as exc:
            if exc.result_code == INSUFFICIENT_ACCESS_RIGHTS:
                out.append(BindFailed("", INSUFFICIENT_ACCESS_RIGHTS))  # an anonymous read: counted and slowed like a bad bind
            out.append(message(message_id, result(SEARCH_RESULT_DONE, exc.result_code, str(exc), exc.matched_dn)))
            out.append(Searched(0))
            return
        out.append(cursor)


# what each protocolOp is decoded to (None: its tag), and its handler
OPERATIONS: dict[int, tuple[Callable | None, Callable]] = {
    BIND_REQUEST: (decode_bind, LdapSession._bind),
    UNBIND_REQUEST: (None, LdapSession._unbind),
    SEARCH_REQUEST: (decode_search, LdapSession._search),
    COMPARE_REQUEST: (decode_compare, LdapSession._compare),
    ABANDON_REQUEST: (decode_abandon, LdapSession._abandon),
    EXTENDED_REQUEST: (decode_extended, LdapSession._extended),
    MODIFY_REQUEST: (None, LdapSession._write),
    ADD_REQUEST: (None, LdapSession._write),
    DEL_REQUEST: (None, LdapSession._write),
    MODDN_REQUEST: (None, LdapSession._write),
}
