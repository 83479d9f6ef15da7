"""Fuzz targets shared by the short pass (tests/core/test_fuzz.py, hypothesis) and the long one (bench/fuzz_long.py, atheris).

Each target takes arbitrary bytes and drives one sans-IO core (or parser) the
way its shell does. The contract under test: wrong input gives an error
reply, None, or one of the core's own exception types (caught here); any
other exception — KeyError, IndexError, RecursionError, struct.error,
UnicodeDecodeError... — escapes and is a bug. Multi-datagram targets split
their input on SEPARATOR, so one byte string is a whole conversation.

SEEDS holds, per target, real-client traffic (the golden vectors) that the
fuzzers mutate, so they start deep inside each protocol.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))
if str(TESTS.parent) not in sys.path:
    sys.path.insert(0, str(TESTS.parent))

from greenservers.config import portspec, settings as settings_module  # noqa: E402
from greenservers.proto import ber, http, ldap, ntp, snmp, tftp  # noqa: E402
from greenservers.sensors import DECLARED, Sensor, SensorRegistry  # noqa: E402
from support.contacts import CONTACTS  # noqa: E402

SEPARATOR = b"\xfe\xfd"  # splits one input into several datagrams / reads
MAX_PARTS = 64  # a conversation longer than this is cut (keeps one input's cost bounded)
NOW = 1_000_000.0


def parts(data: bytes) -> list[bytes]:
    return data.split(SEPARATOR, MAX_PARTS)[:MAX_PARTS]


# -- SNMP: Agent.handle, the shell's only call ------------------------------------------

_SNMP_SETTINGS = settings_module.Settings.from_raw({"snmp_trusted": "127.0.0.1 ::1", "snmp_community": "public"})
_SNMP_AGENT = snmp.Agent(SensorRegistry(tuple(Sensor(s.name, s.index, s.kind, s.description) for s in DECLARED)),
                         started=0.0, hostname="fuzz", sys_descr="fuzz agent")


def fuzz_snmp(data: bytes) -> None:
    for datagram in parts(data):
        outputs = _SNMP_AGENT.handle(datagram, "127.0.0.1", NOW, _SNMP_SETTINGS)
        assert len(outputs) == 1 and snmp.verdict_of(outputs) in snmp.SENSOR_OF_VERDICT, outputs
        if snmp.verdict_of(outputs) == snmp.ANSWERED:
            assert isinstance(outputs[0], bytes) and len(outputs[0]) <= snmp.MAX_RESPONSE
    # an untrusted source is dropped before any byte is read
    assert snmp.verdict_of(_SNMP_AGENT.handle(data, "127.0.0.2", NOW, _SNMP_SETTINGS)) == snmp.UNTRUSTED


# -- TFTP: request parsing, option negotiation, both transfer machines ----------------------


class _MemorySink:
    LIMIT = 1 << 20

    def __init__(self):
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        if len(self.data) + len(data) > self.LIMIT:
            raise tftp.DiskFull("over the fuzz sink's limit")
        self.data += data

    def commit(self) -> None:
        pass

    def abort(self) -> None:
        self.data.clear()


_TFTP_FILE = bytes(range(256)) * 7 + b"line\nwith\rends\r\n"  # 1,809 octets: several blocks, CR and LF
_TFTP_LIMITS = tftp.Limits(max_retries=3, upload_max_bytes=1 << 20)


def fuzz_tftp(data: bytes) -> None:
    datagrams = parts(data)
    try:
        request = tftp.parse_request(datagrams[0])
    except tftp.TftpError as error:
        assert isinstance(error.datagram(), bytes)
        return
    try:
        negotiated = tftp.negotiate(request, None if request.write else len(_TFTP_FILE), _TFTP_LIMITS)
    except tftp.TftpError:
        return
    assert negotiated.blksize >= tftp.MIN_BLKSIZE and 1 <= negotiated.windowsize <= tftp.MAX_WINDOWSIZE
    netascii = request.mode == "netascii"
    if request.write:
        transfer = tftp.WriteTransfer(_MemorySink(), negotiated, _TFTP_LIMITS, netascii=netascii)
    else:
        source = tftp.BytesSource(_TFTP_FILE)
        transfer = tftp.ReadTransfer(tftp.NetasciiSource(source) if netascii else source, negotiated, _TFTP_LIMITS)
    now = NOW
    sent = transfer.start(now)
    for datagram in datagrams[1:]:
        now += 0.01
        sent = transfer.receive(datagram, now)
        if len(datagram) == 1:  # a one-octet part stands for the clock running out
            now = (transfer.deadline or now) + 0.001
            sent = transfer.timeout(now)
        assert all(isinstance(d, bytes) for d in sent)
        # one packet can cause at most one window (plus an OACK/ACK): the burst is bounded
        assert len(sent) <= tftp.MAX_WINDOWSIZE + 1
    for _ in range(_TFTP_LIMITS.max_retries + 3):  # the peer vanishes: every machine must give up
        if transfer.finished or transfer.deadline is None:
            break
        now = transfer.deadline + 0.001
        transfer.timeout(now)
    assert transfer.finished or transfer.deadline is None


# -- LDAP / BER: the codec alone, then a whole session (anonymous and bound) ----------------

_LDAP_POLICY = ldap.Policy(password="secret", max_message=64 * 1024)


_LDAP_DIRECTORY = ldap.Directory("dc=pbx", list(CONTACTS[:5]))
_LDAP_BIND = bytes.fromhex("302502010160200201030413636e3d70686f6e65626f6f6b2c64633d7062788006736563726574")


def fuzz_ber(data: bytes) -> None:
    try:
        total = ber.frame_length(data)
    except (ber.BerError, ber.Incomplete):
        return
    assert total > 0
    end = min(total, len(data))
    try:
        for tag, start, stop in ber.children(data, 0, end):
            assert 0 <= start <= stop <= end
            if tag == ber.INTEGER:
                ber.read_integer(data, start, stop)
    except ber.BerError:
        pass


class _Clock:
    def __init__(self):
        self.now = NOW

    def __call__(self) -> float:
        self.now += 0.001
        return self.now


def fuzz_ldap(data: bytes) -> None:
    # first octet: bound first or not (a bound session reaches search, filters, paging and sorting)
    bound = bool(data[:1]) and data[0] & 1
    session = ldap.LdapSession(lambda: _LDAP_POLICY, lambda base: _LDAP_DIRECTORY, _Clock())
    if bound:
        session.receive(_LDAP_BIND)
    fed = len(_LDAP_BIND) if bound else 0
    for chunk in parts(data[1:]):
        fed += len(chunk)
        outputs = session.receive(chunk)
        while outputs:
            output = outputs.pop(0)
            if isinstance(output, ldap.SearchCursor):  # run as the shell does, a slice at a time
                while not output.done:
                    outputs += output.run(session.clock() + 0.002)
                continue
            assert isinstance(output, (bytes, ldap.BindFailed, ldap.Searched, ldap.StartTLS, ldap.Close)), output
        assert session.held <= fed  # what it holds between calls is never more than it was given
        if session.closed:
            break


# -- NTP ----------------------------------------------------------------------------------------

_NTP_RESPONDER = ntp.NtpResponder()


def fuzz_ntp(data: bytes) -> None:
    # the first octet picks the client (a few IPv4 and IPv6 peers share one limiter) and the clock state
    selector = data[0] if data else 0
    client = ("127.0.0.1", "192.0.2.7", "2001:db8::1", "::ffff:10.0.0.1", "fe80::1%lo")[selector % 5]
    kernel = ntp.KernelClock(bool(selector & 8), (selector >> 4) % 3, ((selector >> 6) + 1) * 0.25, 1_700_000_000 * 10**9)
    state = ntp.server_state(kernel, None, (selector >> 4) % 16, -20)
    now = NOW
    for datagram in parts(data[1:]):
        now += 0.05
        outputs = _NTP_RESPONDER.respond(datagram, client, 1_700_000_000 * 10**9, state, now, lambda: 1_700_000_000 * 10**9 + 1)
        assert ntp.verdict_of(outputs) in (ntp.ANSWERED, ntp.KISSED, ntp.DROPPED)
        reply = outputs[-1] if isinstance(outputs[-1], bytes) else None
        if reply is not None:
            assert len(reply) == ntp.PACKET_LEN <= len(datagram)  # never amplifies
            assert reply[24:32] == datagram[40:48]  # origin copied verbatim
    # the clock state from `chronyc -c tracking` output must always give an encodable header
    upstream = ntp.parse_chronyc_tracking(data[1:].decode("utf-8", "replace"))
    if upstream is not None:
        synced = ntp.server_state(ntp.KernelClock(True, 0, 0.1, 1_700_000_000 * 10**9), upstream, 0, -20)
        assert len(ntp.build_reply(ntp.parse_request(bytes([0x23]) + bytes(47)), synced, 0, lambda: 0)) == ntp.PACKET_LEN
    assert len(_NTP_RESPONDER.limiter) <= ntp.MAX_CLIENTS


# -- port bindings, settings, HTTP decisions --------------------------------------------------


def fuzz_settings(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    try:
        bindings = portspec.parse_bindings(text)
    except portspec.PortSpecError:
        pass
    else:
        assert portspec.parse_bindings(portspec.format_bindings(bindings)) == bindings  # round trip
    for setting in settings_module.DECLARATIONS:
        for raw in (text, text.strip()):
            with contextlib.suppress(ValueError):
                setting.validate(raw)
    if data[:1]:
        name = settings_module.DECLARATIONS[data[0] % len(settings_module.DECLARATIONS)].name
        with contextlib.suppress(settings_module.SettingsError):
            settings_module.Settings.from_raw({name: text[1:]})
    http.split_host(text)
    http.redirect_target("GET", "/" + text, "", text, "127.0.0.1", 8443)


TARGETS = {
    "snmp": fuzz_snmp,
    "tftp": fuzz_tftp,
    "ber": fuzz_ber,
    "ldap": fuzz_ldap,
    "settings": fuzz_settings,
    "ntp": fuzz_ntp,
}


# -- seeds: real-client traffic ---------------------------------------------------------------


def seeds() -> dict[str, list[bytes]]:
    from vectors import tftp_vectors
    from vectors.ldap_vectors import CAPTURED
    from vectors.ntp_vectors import REQUESTS as NTP_REQUESTS
    from vectors.snmp_requests import REQUESTS

    snmp_seeds = [bytes.fromhex(h) for h in REQUESTS.values()]
    tftp_seeds = []
    for name in dir(tftp_vectors):
        value = getattr(tftp_vectors, name)
        if isinstance(value, list) and value and all(isinstance(v, bytes) for v in value):
            tftp_seeds.append(SEPARATOR.join(value + [tftp.encode_ack(n) for n in range(1, 5)] + [b"t"]))
    tftp_seeds.append(SEPARATOR.join([b"\x00\x02up.log\x00octet\x00blksize\x00512\x00",
                                      tftp.encode_data(1, b"x" * 512), tftp.encode_data(2, b"end"), b"t"]))
    ldap_messages = {name: [bytes.fromhex(h) for h in hexes] for name, hexes in CAPTURED.items()}
    ldap_seeds = [b"\x00" + SEPARATOR.join(msgs) for msgs in ldap_messages.values()]
    ldap_seeds += [b"\x01" + SEPARATOR.join(msgs[1:]) for msgs in ldap_messages.values()]
    ber_seeds = [m for msgs in ldap_messages.values() for m in msgs] + snmp_seeds
    settings_seeds = [b"161", b"0.0.0.0:161 [::]:161", b"[2001:db8::4]:5060", b"192.168.1.2:69", b"127.0.0.1 ::1 10.0.0.0/8",
                      b"dc=pbx", b"ou=phonebook,dc=example,dc=com", b"ntp.example.org", b"true", b"100"]
    requests = [bytes.fromhex(h) for h in NTP_REQUESTS.values()]
    ntp_seeds = [bytes([i * 37 % 256]) + SEPARATOR.join(requests[i:] + requests[:i]) for i in range(len(requests))]
    ntp_seeds += [b"C0A80001,192.168.0.1,2,1700000000.123456789,0.000001,0.000002,0.000003,-1.5,0.01,0.02,0.015,0.001,64.0,Normal",
                  b"7F7F0101,,10,1700000000.5,0,0,0,0,0,0,0,0,0,Not synchronised"]
    return {"snmp": snmp_seeds, "tftp": tftp_seeds, "ber": ber_seeds, "ldap": ldap_seeds, "settings": settings_seeds, "ntp": ntp_seeds}
