"""Session tests of the TFTP state machines (greenservers.proto.tftp): no sockets, a fake clock.

Requests come from the golden vectors captured from curl, atftp and tftp-hpa;
the machines are driven packet by packet, losing, repeating and delaying
what a real network would.
"""

from __future__ import annotations

import struct

import pytest
from vectors import tftp_vectors as v

from greenservers.proto import tftp as t
from greenservers.proto.clients import TokenBuckets

LIMITS = t.Limits(timeout=1.0, max_retries=3)
HEARD = t.Hearing.HEARD


def data_of(datagram: bytes) -> tuple[int, bytes]:
    opcode, block = struct.unpack("!HH", datagram[:4])
    assert opcode == t.OP_DATA, datagram[:40]
    return block, datagram[4:]


def ack(block: int) -> bytes:
    return struct.pack("!HH", t.OP_ACK, block % 65536)


def data(block: int, payload: bytes) -> bytes:
    return struct.pack("!HH", t.OP_DATA, block % 65536) + payload


def oack_options(datagram: bytes) -> dict[str, str]:
    assert datagram[:2] == b"\x00\x06"
    parts = datagram[2:].split(b"\0")[:-1]
    return {parts[i].decode(): parts[i + 1].decode() for i in range(0, len(parts), 2)}


def read_machine(content: bytes, request: bytes, limits: t.Limits = LIMITS, netascii: bool = False) -> t.ReadTransfer:
    req = t.parse_request(request)
    source = t.BytesSource(content)
    if netascii or req.mode == "netascii":
        source = t.NetasciiSource(source)
    return t.ReadTransfer(source, t.negotiate(req, source.size, limits), limits)


def rrq(name: str = "f", mode: str = "octet", **options) -> bytes:
    out = b"\x00\x01" + name.encode() + b"\0" + mode.encode() + b"\0"
    for key, value in options.items():
        out += key.encode() + b"\0" + str(value).encode() + b"\0"
    return out


def run_read(machine: t.ReadTransfer, clock: float = 0.0) -> bytes:
    """A perfect client: acknowledges every window's last block; returns the file it got."""
    received = bytearray()
    out = machine.start(clock)
    if out and out[0][:2] == b"\x00\x06":
        out = machine.receive(ack(0), clock)
    while not machine.finished:
        assert out, "the machine stalled"
        for datagram in out:
            block, payload = data_of(datagram)
            received += payload
        out = machine.receive(ack(block), clock)
    assert machine.state is t.State.DONE
    return bytes(received)


class Collector:
    def __init__(self):
        self.data = bytearray()
        self.committed = self.aborted = False
        self.refuse: t.TftpError | None = None

    def write(self, chunk: bytes) -> None:
        self.data += chunk

    def commit(self) -> None:
        if self.refuse:
            raise self.refuse
        self.committed = True

    def abort(self) -> None:
        self.aborted = True


# -- golden vectors: decode what the real clients send ---------------------------


def test_curl_request_decodes_with_its_default_options():
    req = t.parse_request(v.CURL_RRQ[0])
    assert (req.write, req.filename, req.mode) == (False, "y000000000025.cfg", "octet")
    assert req.options == {"tsize": "0", "blksize": "512", "timeout": "6"}
    negotiated = t.negotiate(req, 1234, LIMITS)
    assert negotiated.oack == {"tsize": "1234", "blksize": "512", "timeout": "6"}
    assert negotiated.timeout == 6.0


def test_atftp_window_request_negotiates_blksize_and_windowsize():
    req = t.parse_request(v.ATFTP_RRQ_OPTIONS[0])
    negotiated = t.negotiate(req, 10, LIMITS)
    assert (negotiated.blksize, negotiated.windowsize) == (1428, 8)
    machine = t.ReadTransfer(t.BytesSource(b"x" * 20000), negotiated, LIMITS)
    assert machine.start(0.0) == [bytes.fromhex("0006") + b"blksize\x001428\x00windowsize\x008\x00"]
    window = machine.receive(v.ATFTP_RRQ_OPTIONS[1], 0.0)
    assert [data_of(d)[0] for d in window] == list(range(1, 9))
    assert all(len(d) == 4 + 1428 for d in window)


def test_tftp_hpa_plain_request_gets_data_without_oack():
    machine = read_machine(b"hi\n", v.TFTP_HPA_RRQ_BINARY[0])
    assert machine.start(0.0) == [data(1, b"hi\n")]
    assert machine.receive(v.TFTP_HPA_RRQ_BINARY[1], 0.1) == []
    assert machine.state is t.State.DONE


def test_tftp_hpa_ascii_request_is_netascii():
    req = t.parse_request(v.TFTP_HPA_RRQ_ASCII[0])
    assert req.mode == "netascii"
    machine = read_machine(b"a\nb\rc", v.TFTP_HPA_RRQ_ASCII[0])
    assert machine.start(0.0) == [data(1, b"a\r\nb\r\0c")]


def test_tftp_hpa_write_request_and_data():
    req = t.parse_request(v.TFTP_HPA_WRQ[0])
    assert req.write and req.filename == "0004f2abcdef-app.log"
    sink = Collector()
    machine = t.WriteTransfer(sink, t.negotiate(req, None, LIMITS), LIMITS)
    assert machine.start(0.0) == [ack(0)]
    assert machine.receive(v.TFTP_HPA_WRQ[1], 0.1) == [ack(1)]
    assert sink.data == b"hello\n" and sink.committed and machine.state is t.State.DALLYING
    assert machine.timeout(1.2) == [] and machine.state is t.State.DONE


@pytest.mark.parametrize("garbage", [
    b"", b"\x00", b"\x00\x01", b"\x00\x01name", b"\x00\x01name\x00", b"\x00\x09x\x00octet\x00",
    b"\x00\x01\xff\xfe\x00octet\x00", b"\x00\x01f\x00mail\x00",
    b"\x00\x03\x00\x01data", b"\x00\x01f\x00\x00",
])
def test_malformed_requests_raise_illegal_operation(garbage):
    with pytest.raises(t.IllegalOperation) as info:
        t.parse_request(garbage)
    assert info.value.datagram()[:4] == b"\x00\x05\x00\x04"


# -- options ------------------------------------------------------------------------


@pytest.mark.parametrize("asked, granted", [("8", "8"), ("1428", "1428"), ("65464", "65464"), ("70000", "65464"), ("7", None), ("x", None),
                                             ("-5", None)])
def test_blksize_option(asked, granted):
    negotiated = t.negotiate(t.parse_request(rrq(blksize=asked)), 100, LIMITS)
    assert negotiated.oack.get("blksize") == granted
    assert negotiated.blksize == (int(granted) if granted else 512)


def test_blksize_8_sends_8_byte_blocks():
    content = bytes(range(40))
    machine = read_machine(content, rrq(blksize=8))
    assert run_read(machine) == content
    assert machine.last_block == 6  # 5 full blocks and an empty final one


@pytest.mark.parametrize("asked, granted", [
    ("1", "1"), ("10", "10"), ("11", None), ("255", None), ("0", None), ("256", None), ("soon", None),
])
def test_timeout_option_over_ten_seconds_is_declined(asked, granted):
    negotiated = t.negotiate(t.parse_request(rrq(timeout=asked)), 1, LIMITS)
    assert negotiated.oack.get("timeout") == granted
    assert negotiated.timeout == (float(granted) if granted else LIMITS.timeout)


def test_negotiated_timeout_applies_once_the_oack_is_acknowledged():
    machine = read_machine(b"abc" * 300, rrq(timeout=5))
    oack = machine.start(0.0)
    assert machine.timeout(1.0) == oack  # not agreed yet: our own 1 s
    first = machine.receive(ack(0), 1.5)
    assert [data_of(d)[0] for d in first] == [1]
    assert machine.timeout(6.4) == []
    assert machine.timeout(6.5) == first


def test_tsize_option_reports_the_size_for_reads_and_checks_it_for_writes():
    assert t.negotiate(t.parse_request(rrq(tsize=0)), 10485760, LIMITS).oack == {"tsize": "10485760"}
    wrq = rrq(tsize=100).replace(b"\x00\x01", b"\x00\x02", 1)
    assert t.negotiate(t.parse_request(wrq), None, LIMITS).oack == {"tsize": "100"}
    too_big = rrq(tsize=LIMITS.upload_max_bytes + 1).replace(b"\x00\x01", b"\x00\x02", 1)
    with pytest.raises(t.DiskFull):
        t.negotiate(t.parse_request(too_big), None, LIMITS)


def test_tsize_is_left_out_for_an_empty_file():
    """curl 7.88 treats "tsize 0" in an OACK as an illegal operation (so it cannot fetch an empty file from in.tftpd)."""
    assert t.negotiate(t.parse_request(v.CURL_RRQ[0]), 0, LIMITS).oack == {"blksize": "512", "timeout": "6"}


def test_netascii_tsize_is_the_converted_size():
    machine = read_machine(b"a\nb\n", rrq(mode="netascii", tsize=0))
    assert oack_options(machine.start(0.0)[0]) == {"tsize": "6"}


@pytest.mark.parametrize("asked, granted", [("1", "1"), ("16", "16"), ("65535", str(t.MAX_WINDOWSIZE)), ("0", None), ("many", None)])
def test_windowsize_option(asked, granted):
    negotiated = t.negotiate(t.parse_request(rrq(windowsize=asked)), 1, LIMITS)
    assert negotiated.oack.get("windowsize") == granted


@pytest.mark.parametrize("blksize, asked, granted", [(1428, 16, "16"), (8192, 16, "8"), (65464, 64, "1"), (1428, 64, "45")])
def test_a_window_is_at_most_64_kib(blksize, asked, granted):
    negotiated = t.negotiate(t.parse_request(rrq(windowsize=asked, blksize=blksize)), 1, LIMITS)
    assert negotiated.oack["windowsize"] == granted and negotiated.windowsize * negotiated.blksize <= t.MAX_WINDOW_BYTES


def test_a_blind_ack_of_the_oack_gets_its_spoofed_address_one_block_a_try_not_four_mib():
    """A review acknowledged spoofed requests' OACKs blindly (every port): each transfer hit sent 64 blocks of
    65464 octets, six times (222 times the attacker's bytes)."""
    machine = read_machine(b"x" * (8 << 20), rrq(blksize=65464, windowsize=64))
    machine.start(0.0)
    sent = machine.receive(b"\x00\x04\x00\x00", 0.1)  # the ACK 0 the victim never sent
    for second in range(1, 10):
        sent += machine.timeout(0.1 + second * 1.0)
    assert len(sent) == 1 + LIMITS.max_retries and sum(map(len, sent)) <= 6 * (65464 + 4)
    assert machine.state is t.State.FAILED


def test_unknown_options_are_ignored_and_option_names_are_case_insensitive():
    negotiated = t.negotiate(t.parse_request(rrq(BLKSIZE=1024, rollover="0", utimeout=5000)), 1, LIMITS)
    assert negotiated.oack == {"blksize": "1024"}


def test_client_refusing_the_oack_ends_the_transfer_silently():
    machine = read_machine(b"abc", rrq(blksize=1024))
    machine.start(0.0)
    assert machine.receive(t.encode_error(8, "no"), 0.1) == []
    assert machine.state is t.State.FAILED and machine.peer_vanished


# -- reads: losses, duplicates, timeouts -------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 511, 512, 513, 1024, 5000])
def test_read_sizes_around_block_boundaries(size):
    content = bytes(i % 251 for i in range(size))
    machine = read_machine(content, rrq())
    assert run_read(machine) == content
    assert machine.last_block == size // 512 + 1


def test_lost_data_is_resent_after_the_timeout_only():
    machine = read_machine(b"A" * 512 + b"B" * 10, rrq())
    assert [data_of(d)[0] for d in machine.start(0.0)] == [1]
    # DATA 1 lost: nothing before the timeout, then DATA 1 again
    assert machine.timeout(0.5) == []
    assert [data_of(d)[0] for d in machine.timeout(1.0)] == [1]
    assert [data_of(d)[0] for d in machine.receive(ack(1), 1.1)] == [2]
    assert machine.receive(ack(2), 1.2) == [] and machine.state is t.State.DONE


def test_lost_ack_resends_the_block_once_per_timeout():
    machine = read_machine(b"A" * 600, rrq())
    machine.start(0.0)
    assert [data_of(d)[0] for d in machine.receive(ack(1), 0.1)] == [2]
    # the ACK of block 2 is lost: block 2 again after 1 s, and again after 1 s more
    assert [data_of(d)[0] for d in machine.timeout(1.1)] == [2]
    assert [data_of(d)[0] for d in machine.timeout(2.1)] == [2]
    assert machine.receive(ack(2), 2.2) == [] and machine.state is t.State.DONE


def test_duplicate_acks_never_cause_retransmission():
    """The Sorcerer's Apprentice bug: a delayed duplicate ACK must not send the next block twice."""
    machine = read_machine(b"x" * 512 * 4, rrq())
    machine.start(0.0)
    sent = []
    sent += machine.receive(ack(1), 0.1)      # -> DATA 2
    sent += machine.receive(ack(1), 0.2)      # duplicate: nothing
    sent += machine.receive(ack(2), 0.3)      # -> DATA 3
    sent += machine.receive(ack(2), 0.4)      # duplicate: nothing
    sent += machine.receive(ack(1), 0.5)      # stale: nothing
    assert [data_of(d)[0] for d in sent] == [2, 3]


def run_timeouts(machine, now: float, step: float = 0.5) -> tuple[list[float], float]:
    """Let the clock run until the machine gives up: when it sent something, and when it failed."""
    sent_at = []
    while not machine.finished:
        now += step
        if machine.timeout(now):
            sent_at.append(now)
        assert now < 1000
    return sent_at, now


def test_established_transfer_retransmits_max_retries_times_then_fails_silently():
    machine = read_machine(b"x" * 1000, rrq())
    machine.start(0.0)
    machine.receive(ack(1), 0.1)  # established: DATA 2 is out
    sent_at, failed_at = run_timeouts(machine, 0.1, step=1.0)
    assert len(sent_at) == LIMITS.max_retries
    assert machine.state is t.State.FAILED and machine.peer_vanished and not machine.unacknowledged


@pytest.mark.parametrize("request_, first", [
    (rrq(), t.OP_DATA),  # a plain request: DATA 1 is the first packet
    (rrq(timeout=255, blksize=1428, tsize=0), t.OP_OACK),  # the attack: timeout 255, never acknowledged
])
def test_unacknowledged_first_packet_is_sent_twice_then_given_up_after_the_hold(request_, first):
    machine = read_machine(b"x" * 4000, request_)
    out = machine.start(0.0)
    assert struct.unpack("!H", out[0][:2])[0] == first
    assert "timeout" not in (oack_options(out[0]) if first == t.OP_OACK else {})
    sent_at, failed_at = run_timeouts(machine, 0.0, step=0.25)
    assert sent_at == [LIMITS.timeout] * LIMITS.first_packet_retries  # once more, after our own 1 s
    assert failed_at == LIMITS.first_packet_hold
    assert machine.state is t.State.FAILED and machine.peer_vanished and machine.unacknowledged


def test_a_late_acknowledgement_within_the_hold_still_establishes_the_transfer():
    """The client's own retransmission (its ACK again after 5-6 s) finds the transfer waiting."""
    machine = read_machine(b"A" * 512 + b"B", rrq())
    machine.start(0.0)
    assert [data_of(d)[0] for d in machine.timeout(1.0)] == [1]
    assert machine.timeout(6.0) == []
    assert [data_of(d)[0] for d in machine.receive(ack(1), 6.0)] == [2]
    assert machine.verified and machine.rto == LIMITS.timeout
    assert machine.receive(ack(2), 6.1) == [] and machine.state is t.State.DONE


def test_write_handshake_never_answered_is_given_up_like_a_read():
    sink = Collector()
    machine = write_machine(sink, blksize=1024)
    assert oack_options(machine.start(0.0)[0]) == {"blksize": "1024"}
    sent_at, failed_at = run_timeouts(machine, 0.0)
    assert (sent_at, failed_at) == ([1.0], LIMITS.first_packet_hold)
    assert machine.unacknowledged and sink.aborted


# -- the allowance of unacknowledged bytes per source ------------------------------------


def allowance(buckets: TokenBuckets, key: str = "192.0.2.9") -> t.Allowance:
    return t.Allowance(buckets, key)


def test_first_packets_are_taken_from_the_sources_bucket_and_refused_when_it_is_spent():
    buckets = TokenBuckets(rate=0.0, capacity=1000)
    machines = [read_machine(b"x" * 4000, rrq()) for _ in range(3)]
    for machine in machines:
        machine.allowance = allowance(buckets)
    assert len(machines[0].start(0.0)[0]) == 516 and len(machines[1].start(0.0)[0]) == 516  # 1000 - 1032 < 0
    assert machines[2].start(0.0) == []  # nothing sent: the transfer ends at once
    assert machines[2].state is t.State.FAILED and machines[2].withheld
    assert machines[0].timeout(1.0) == []  # the retransmission is withheld, as if lost...
    assert machines[0].state is t.State.SENDING and machines[0].deadline == LIMITS.first_packet_hold  # ...the hold runs on
    assert buckets.level("192.0.2.9", 1.0) == 1000 - 1032


def test_an_acknowledgement_gives_the_bytes_back_and_established_transfers_take_none():
    buckets = TokenBuckets(rate=0.0, capacity=10_000)
    machine = read_machine(b"x" * 4000, rrq(blksize=1024))
    machine.allowance = allowance(buckets)
    oack = machine.start(0.0)
    assert machine.timeout(1.0) == oack
    assert buckets.level("192.0.2.9", 1.0) == 10_000 - 2 * len(oack[0])
    machine.receive(ack(0), 1.1)
    assert buckets.level("192.0.2.9", 1.1) == 10_000
    machine.timeout(2.1)  # DATA 1 again: an established transfer is not charged
    assert buckets.level("192.0.2.9", 2.1) == 10_000


def test_a_write_is_verified_by_its_first_data_block():
    buckets = TokenBuckets(rate=0.0, capacity=100)
    sink = Collector()
    machine = write_machine(sink)
    machine.allowance = allowance(buckets)
    assert machine.start(0.0) == [ack(0)] and buckets.level("192.0.2.9", 0.0) == 96
    assert machine.receive(data(1, b"a" * 512), 0.1) == [ack(1)]
    assert machine.verified and buckets.level("192.0.2.9", 0.1) == 100


class RefusingSink(Collector):
    def write(self, chunk: bytes) -> None:
        if len(self.data) + len(chunk) > 600:
            raise t.DiskFull("the upload budget is full")
        super().write(chunk)


def test_a_sink_refusing_a_write_aborts_the_upload_with_its_error():
    sink = RefusingSink()
    machine = write_machine(sink)
    machine.start(0.0)
    assert machine.receive(data(1, b"a" * 512), 0.0) == [ack(1)]
    out = machine.receive(data(2, b"a" * 512), 0.1)
    assert out == [t.encode_error(3, "the upload budget is full")]
    assert sink.aborted and not sink.committed and machine.state is t.State.FAILED


def test_oack_is_resent_on_timeout():
    machine = read_machine(b"x", rrq(blksize=1024))
    oack = machine.start(0.0)
    assert machine.timeout(1.0) == oack
    assert machine.receive(ack(5), 1.1) == []  # not the ACK of the OACK: ignored
    assert [data_of(d)[0] for d in machine.receive(ack(0), 1.2)] == [1]


def test_unexpected_packet_answers_illegal_operation():
    machine = read_machine(b"x" * 1000, rrq())
    machine.start(0.0)
    out = machine.receive(data(1, b"zz"), 0.1)
    assert out[0][:4] == b"\x00\x05\x00\x04"
    assert machine.state is t.State.FAILED and not machine.peer_vanished
    assert machine.receive(b"\x00", 0.2) == []  # finished: silence


def test_malformed_packet_during_transfer_answers_illegal_operation():
    machine = read_machine(b"x" * 1000, rrq())
    machine.start(0.0)
    assert machine.receive(b"\x00\x04\x00", 0.1)[0][:4] == b"\x00\x05\x00\x04"


def test_block_numbers_roll_over_past_65535():
    blksize = 8
    content = bytes(i % 253 for i in range(blksize * 65540 + 3))
    machine = read_machine(content, rrq(blksize=blksize))
    seen = []
    received = bytearray()
    out = machine.receive(ack(0), 0.0) if machine.start(0.0) else []
    while not machine.finished:
        block, payload = data_of(out[0])
        seen.append(block)
        received += payload
        out = machine.receive(ack(block), 0.0)
    assert bytes(received) == content
    assert seen[65533:65538] == [65534, 65535, 0, 1, 2]
    assert machine.last_block == 65541


def test_rolled_over_duplicate_ack_is_still_ignored():
    machine = read_machine(b"x" * 8 * 65540, rrq(blksize=8))
    machine.start(0.0)
    out = machine.receive(ack(0), 0.0)
    for block in range(1, 65537):
        out = machine.receive(ack(block), 0.0)
    assert data_of(out[0])[0] == 1  # block 65537 on the wire
    assert machine.receive(ack(65536), 0.0) == []  # block 65536 (wire 0) again: a duplicate


# -- windowsize > 1 (RFC 7440) ---------------------------------------------------------


def test_window_sends_windowsize_blocks_per_ack():
    content = bytes(i % 249 for i in range(512 * 20 + 7))
    machine = read_machine(content, rrq(windowsize=8))
    assert run_read(machine) == content
    machine = read_machine(content, rrq(windowsize=8))
    machine.start(0.0)
    assert [data_of(d)[0] for d in machine.receive(ack(0), 0.0)] == list(range(1, 9))
    assert [data_of(d)[0] for d in machine.receive(ack(8), 0.0)] == list(range(9, 17))
    assert [data_of(d)[0] for d in machine.receive(ack(16), 0.0)] == list(range(17, 22))


def test_window_partial_ack_resends_from_the_gap():
    machine = read_machine(b"y" * 512 * 30, rrq(windowsize=8))
    machine.start(0.0)
    machine.receive(ack(0), 0.0)  # blocks 1..8; the client lost block 6 and says so with ACK 5
    assert [data_of(d)[0] for d in machine.receive(ack(5), 0.1)] == list(range(6, 14))
    assert machine.receive(ack(5), 0.2) == []  # the same ACK again: no second burst


def test_window_lost_entirely_is_resent_on_timeout():
    machine = read_machine(b"y" * 512 * 30, rrq(windowsize=4))
    machine.start(0.0)
    machine.receive(ack(0), 0.0)
    assert [data_of(d)[0] for d in machine.timeout(1.0)] == [1, 2, 3, 4]


def test_window_larger_than_the_file():
    machine = read_machine(b"z" * 1000, rrq(windowsize=16))
    machine.start(0.0)
    assert [data_of(d)[0] for d in machine.receive(ack(0), 0.0)] == [1, 2]
    assert machine.receive(ack(2), 0.0) == [] and machine.state is t.State.DONE


# -- netascii source -------------------------------------------------------------------


def test_netascii_source_random_access_across_chunks():
    raw = (b"line\nwith\rcr\r\n" * 20000)[: 3 * t.NETASCII_CHUNK + 77]
    expected = raw.replace(b"\r", b"\r\0").replace(b"\n", b"\r\n")
    source = t.NetasciiSource(t.BytesSource(raw))
    assert source.size == len(expected)
    for offset in (0, 1, t.NETASCII_CHUNK - 3, 100000, len(expected) - 5, len(expected)):
        assert source.read(offset, 700) == expected[offset:offset + 700]


def test_netascii_source_of_a_file_truncated_after_it_was_counted_reads_what_is_left():
    """A file edited in place during a transfer: the chunks it no longer has are empty, and a read ends there
    (it looped for ever, in the hub)."""
    raw = b"line\n" * 40000
    inner = t.BytesSource(raw)
    source = t.NetasciiSource(inner)
    inner.data = raw[:1000]  # truncated in place
    assert source.read(100000, 512) == b""
    assert source.read(0, 512) == raw[:1000].replace(b"\n", b"\r\n")[:512]


# -- writes -----------------------------------------------------------------------------


def write_machine(sink, limits: t.Limits = LIMITS, mode: str = "octet", **options) -> t.WriteTransfer:
    req = t.parse_request(rrq(mode=mode, **options).replace(b"\x00\x01", b"\x00\x02", 1))
    return t.WriteTransfer(sink, t.negotiate(req, None, limits), limits, netascii=req.mode == "netascii")


def test_write_in_order_with_lost_ack_and_duplicate_data():
    sink = Collector()
    machine = write_machine(sink)
    assert machine.start(0.0) == [ack(0)]
    assert machine.receive(data(1, b"a" * 512), 0.1) == [ack(1)]
    assert machine.receive(data(1, b"a" * 512), 1.1) == [ack(1)]  # our ACK was lost: acknowledge again
    assert machine.receive(data(1, b"a" * 512), 1.2) == []  # once per gap
    assert machine.receive(data(2, b"end"), 1.3) == [ack(2)]
    assert sink.committed and bytes(sink.data) == b"a" * 512 + b"end"
    assert machine.receive(data(2, b"end"), 1.4) == [ack(2)]  # final ACK lost: dally answers
    assert machine.timeout(2.3) == [] and machine.state is t.State.DONE


def test_write_timeout_reacks_then_fails_and_aborts():
    sink = Collector()
    machine = write_machine(sink)
    machine.start(0.0)
    machine.receive(data(1, b"a" * 512), 0.1)
    assert machine.timeout(1.1) == [ack(1)]
    now = 1.1
    while not machine.finished:
        now += 1.0
        machine.timeout(now)
    assert machine.state is t.State.FAILED and sink.aborted and not sink.committed


def test_write_over_the_size_limit_is_refused_and_aborted():
    sink = Collector()
    machine = write_machine(sink, t.Limits(upload_max_bytes=1000))
    machine.start(0.0)
    machine.receive(data(1, b"a" * 512), 0.0)
    out = machine.receive(data(2, b"a" * 512), 0.0)
    assert out[0][:4] == b"\x00\x05\x00\x03" and sink.aborted and not sink.committed


def test_write_refused_commit_answers_its_error_instead_of_the_final_ack():
    sink = Collector()
    sink.refuse = t.FileExists("already there")
    machine = write_machine(sink)
    machine.start(0.0)
    out = machine.receive(data(1, b"short"), 0.0)
    assert out[0][:4] == b"\x00\x05\x00\x06" and sink.aborted


def test_write_with_window_acks_every_windowsize_blocks_and_answers_a_gap_once():
    sink = Collector()
    machine = write_machine(sink, blksize=8, windowsize=4)
    assert oack_options(machine.start(0.0)[0]) == {"blksize": "8", "windowsize": "4"}
    assert [machine.receive(data(n, b"%08d" % n), 0.0) for n in (1, 2, 3)] == [[], [], []]
    assert machine.receive(data(4, b"%08d" % 4), 0.0) == [ack(4)]
    machine.receive(data(5, b"%08d" % 5), 0.0)
    # block 6 lost: 7 and 8 answered by one ACK 5
    assert machine.receive(data(7, b"%08d" % 7), 0.0) == [ack(5)]
    assert machine.receive(data(8, b"%08d" % 8), 0.0) == []
    for n in (6, 7, 8):
        machine.receive(data(n, b"%08d" % n), 0.0)
    assert machine.receive(data(9, b"x"), 0.0) == [ack(9)]
    assert bytes(sink.data) == b"".join(b"%08d" % n for n in range(1, 9)) + b"x"


def test_write_netascii_is_converted_even_across_blocks():
    sink = Collector()
    machine = write_machine(sink, mode="netascii", blksize=8)
    machine.start(0.0)
    machine.receive(data(1, b"ab\r\ncd\r\r"), 0.0)  # the trailing CR pairs with the next block's NUL
    machine.receive(data(2, b"\0x\r\n"), 0.0)
    assert sink.committed and bytes(sink.data) == b"ab\ncd\r\rx\n"


def test_write_oversized_block_is_illegal():
    sink = Collector()
    machine = write_machine(sink)
    machine.start(0.0)
    out = machine.receive(data(1, b"q" * 600), 0.0)
    assert out[0][:4] == b"\x00\x05\x00\x04" and sink.aborted


def test_write_peer_error_aborts():
    sink = Collector()
    machine = write_machine(sink)
    machine.start(0.0)
    assert machine.receive(t.encode_error(0, "bye"), 0.0) == []
    assert sink.aborted and machine.state is t.State.FAILED


def test_request_with_options_tftpy_cannot_decode_is_served_without_options():
    req = t.parse_request(b"\x00\x01f\x00octet\x00multicast\x00\x00blksize\x001024\x00")
    assert (req.filename, req.mode, req.options) == ("f", "octet", {})


# -- admission: slots and the sources' allowances -------------------------------------


def admission(max_total: int = 4, max_per_client: int = 2) -> t.Admission:
    gate = t.Admission(LIMITS, TokenBuckets(rate=0.0, capacity=0))
    gate.configure(max_total, max_per_client)
    return gate


def test_a_client_over_its_limit_is_busy_until_its_oldest_unverified_transfer_is_past_its_retransmission():
    gate = admission()
    first, _ = gate.admit("a", 0.0)
    second, _ = gate.admit("a", 0.5)
    assert gate.admit("a", 0.9) == (None, [])  # a client's own burst: busy, as before
    third, evicted = gate.admit("a", 1.0)  # the first has had its retransmission: its slot goes
    assert third is not None and evicted == [first] and first.evicted and first.released
    assert (gate.active, gate.per_client["a"]) == (2, 2)
    gate.release(first)  # its owner ends later and releases again: nothing changes
    assert (gate.active, gate.per_client["a"]) == (2, 2)


def test_verified_transfers_are_never_evicted():
    gate = admission()
    for slot in (gate.admit("a", 0.0)[0], gate.admit("a", 0.0)[0]):
        gate.verified(slot, 0.0)
    assert gate.admit("a", 100.0) == (None, [])  # its own limit: busy, whatever their pace


def test_when_all_slots_are_taken_the_oldest_unverified_of_any_client_goes():
    gate = admission(max_total=3)
    a1, _ = gate.admit("a", 0.0)
    gate.verified(a1, 0.0)
    b1, _ = gate.admit("b", 0.2)
    c1, _ = gate.admit("c", 0.4)
    slot, evicted = gate.admit("d", 1.3)
    assert slot.client == "d" and evicted == [b1]  # a1 is verified, c1 younger
    assert dict(gate.per_client) == {"a": 1, "c": 1, "d": 1}


def test_a_flood_of_spoofed_requests_holding_every_slot_for_less_than_a_second_does_not_make_a_phone_busy():
    """A review's 1,000 spoofed requests a second from 10,000 addresses held every slot with transfers younger
    than their first retransmission, and half of the phones' requests were refused as busy."""
    gate = admission(max_total=4, max_per_client=2)
    flood = [gate.admit(f"198.51.100.{n}", 0.01 * n)[0] for n in range(4)]
    slot, evicted = gate.admit("192.0.2.20", 0.05)
    assert slot is not None and evicted == [flood[0]]
    for taken in (slot, *flood[1:]):  # verified transfers are never given up to an unverified request
        gate.verified(taken, 0.06)
    probationer, evicted = gate.admit("192.0.2.21", 0.06)
    assert probationer.probation and evicted == [] and gate.active == 5


class Moving:
    """What admission reads of a transfer machine: the bytes it moved."""

    def __init__(self):
        self.moved = 0


def crawling(gate: t.Admission, addresses: list[str], now: float) -> list[t.Slot]:
    """Every slot taken by verified transfers of `addresses`, each with a machine that has moved nothing yet."""
    slots = []
    while True:
        slot, _ = gate.admit(addresses[len(slots) % len(addresses)], now)
        if slot is None or slot.probation:
            if slot is not None:
                gate.release(slot, now)
            return slots
        slot.transfer = Moving()
        gate.verified(slot, now)
        slots.append(slot)


def test_a_client_whose_transfers_crawl_gives_a_slot_to_a_newcomer_once_the_newcomer_answers():
    """A review's device on 63 addresses, acknowledging a block every 5 s, held all 500 slots: every phone was
    busy. A request that finds verified transfers holding every slot waits on probation; once its peer answers,
    a transfer of the slowest client under MIN_PACE gives its slot (the slowest of that client's)."""
    gate = admission(max_total=4, max_per_client=2)
    held = crawling(gate, ["198.51.100.1", "198.51.100.2"], 0.0)
    assert len(held) == 4
    for n, slot in enumerate(held):
        slot.transfer.moved = 512 * (n + 1) * 4  # a block every few seconds: 0.2-0.7 KiB/s at 20 s
    phone, evicted = gate.admit("192.0.2.20", 20.0)
    assert phone.probation and evicted == [] and gate.active == 5  # unanswered, it takes nothing
    phone.transfer = Moving()
    evicted = gate.verified(phone, 20.01)
    assert evicted == [held[0]] and held[0].evicted and held[0].released  # 198.51.100.1 moved less
    assert not phone.probation and not gate.probation and gate.active == 4
    assert gate.per_client["198.51.100.1"] == 1


def test_transfers_that_move_are_not_given_up_and_a_probationer_then_goes_on_beyond_the_limit():
    gate = admission(max_total=4, max_per_client=2)
    held = crawling(gate, ["198.51.100.1", "198.51.100.2"], 0.0)
    for slot in held:
        slot.transfer.moved = 20 * 16384  # 16 KiB a second: a phone over a slow link, not a crawl
    phone, _ = gate.admit("192.0.2.20", 20.0)
    assert gate.verified(phone, 20.01) == [] and phone.probation and gate.active == 5
    assert gate.admit("192.0.2.20", 20.1) == (None, [])  # one probationer per client
    others = [gate.admit(f"192.0.2.{30 + n}", 20.1) for n in range(3)]
    assert all(slot.probation for slot, _ in others) and len(gate.probation) == 4  # max_probation, the phone's included
    for n in range(20):  # beyond it, each takes the place of the oldest unanswered, on probation as it was
        slot, evicted = gate.admit(f"192.0.2.{40 + n}", 20.2)
        assert slot.probation and len(evicted) == 1 and evicted[0].probation
        assert len(gate.probation) == 4 and gate.active == 4 + 4
    gate.release(phone, 25.0)
    assert len(gate.probation) == 3 and gate.active == 7


def test_a_spoofed_request_on_probation_never_takes_a_verified_transfers_slot():
    """A review showed a spoofed request that never answered ending a real phone's slow transfer (over a 25 ms link,
    or waiting out its own 10 s timeout). Only an answered probationer takes a slot; unanswered ones give theirs to
    the next request, as every unverified transfer does."""
    gate = admission(max_total=4, max_per_client=2)
    held = crawling(gate, ["198.51.100.1", "198.51.100.2"], 0.0)
    spoofed = [gate.admit(f"203.0.113.{n}", 20.0 + n / 100)[0] for n in range(4)]
    assert all(slot.probation for slot in spoofed) and not any(slot.released for slot in held)
    phone, evicted = gate.admit("192.0.2.20", 20.1)
    assert phone.probation and evicted == [spoofed[0]]  # the oldest unverified, on probation or not
    assert gate.active == 8 and not any(slot.released for slot in held)


def test_a_client_that_ends_its_transfers_and_asks_again_stays_slow():
    """The reverted rule counted a newly verified transfer as moving: a device that ended its transfers and asked
    again every 1.5 s held every slot for about 40 bytes a second each. A client's pace counts its ended
    transfers too."""
    gate = admission(max_total=4, max_per_client=2)
    crawlers = ["198.51.100.1", "198.51.100.2"]
    held = crawling(gate, crawlers, 0.0)
    now = 0.0
    while now < 30.0:  # every 1.5 s: each transfer acknowledged once more, ended, asked for again
        now += 1.5
        for slot in held:
            slot.transfer.moved += 512
            gate.release(slot, now)
        held = crawling(gate, crawlers, now)
    phone, _ = gate.admit("192.0.2.20", now)
    phone.transfer = Moving()
    assert len(gate.verified(phone, now + 0.01)) == 1 and not phone.probation


def test_a_new_client_is_judged_only_after_its_grace():
    """A phone's first seconds (its transfer just verified, or waiting out one retransmission) are not judged."""
    gate = admission(max_total=4, max_per_client=2)
    crawling(gate, ["198.51.100.1", "198.51.100.2"], 0.0)
    phone, _ = gate.admit("192.0.2.20", 4.0)  # 2 slots x 4 s held each: under PACE_GRACE
    assert gate.verified(phone, 4.01) == [] and phone.probation


def test_in_a_64_a_probationer_takes_the_slot_of_the_64s_slowest_transfer():
    """On IPv6 a device has as many addresses as it likes: a /64 is one client for its pace, and a phone of that
    /64 on probation takes the slot of its slowest transfer when the /64 holds its quarter."""
    gate = admission(max_total=16, max_per_client=2)
    attacker = [f"fd00:1::{0x100 + n:x}" for n in range(4)]
    held = crawling(gate, attacker, 0.0)
    assert len(held) == 4 and gate.per_client["fd00:1::/64"] == 4  # its quarter of 16
    held[2].transfer.moved = 4096
    phone, _ = gate.admit("fd00:1::5", 20.0)
    assert phone.probation and gate.per_client["fd00:1::/64"] == 5
    phone.transfer = Moving()
    assert gate.verified(phone, 20.01) in ([held[0]], [held[1]], [held[3]])  # one that moved nothing
    assert gate.per_client["fd00:1::/64"] == 4 and not phone.probation


def test_a_phone_moving_fast_in_a_slow_64_keeps_its_slot():
    """A review: a phone shares its /64's pace with a device there that moved 2.5 MB per transfer at once, then
    crawled: the /64 was slow, but the phone's average since verified (20 KiB/s) was the /64's lowest, and its
    transfer was the one ended. A transfer is ended only when it moves under MIN_PACE itself, lately."""
    gate = admission(max_total=16, max_per_client=2)
    held = crawling(gate, [f"fd00:1::{0x100 + n:x}" for n in range(3)], 0.0)
    assert len(held) == 4 and gate.per_client["fd00:1::/64"] == 4  # its quarter of 16
    for slot in held[:3]:
        slot.transfer.moved = 2_500_000
    gate._rank(1.0)  # counted then (as a probationer answering would have them counted): a burst, then a crawl
    gate.release(held[3], 100.0)
    phone, _ = gate.admit("fd00:1::5", 100.0)
    phone.transfer = Moving()
    gate.verified(phone, 100.0)
    phone.transfer.moved = 20 * 20480
    newcomer, _ = gate.admit("fd00:1::6", 120.0)
    assert newcomer.probation
    newcomer.transfer = Moving()
    assert gate.verified(newcomer, 120.01) in ([held[0]], [held[1]], [held[2]]) and not phone.released


def test_a_probationer_that_answered_then_crawls_gives_its_place_to_a_newcomer():
    """A review: probationers that answered while nothing was slow kept their places beyond the limit for as long
    as their transfers lasted; crawling then, they held every place and phones were busy again."""
    gate = admission(max_total=4, max_per_client=2)
    held = crawling(gate, ["198.51.100.1", "198.51.100.2"], 0.0)
    for slot in held:
        slot.transfer.moved = 20 * 16384  # moving well: no one to evict
    places = []
    for n in range(4):
        slot, _ = gate.admit(f"203.0.113.{n}", 20.0)
        slot.transfer = Moving()
        assert gate.verified(slot, 20.0) == [] and slot.probation
        places.append(slot)
    assert len(gate.probation) == gate.max_probation == 4
    assert gate.admit("192.0.2.20", 21.0) == (None, [])  # answered a second ago: not judged yet
    for slot in places[1:]:
        slot.transfer.moved = 10 * 16384  # the others move; places[0] crawls
    for slot in held:
        slot.transfer.moved = 40 * 16384
    spoofed, evicted = gate.admit("203.0.113.99", 30.0)  # a contender, one beyond the places: it ends nothing
    assert evicted == [] and spoofed.probation and len(gate.probation) == 5 and not places[0].released
    phone, evicted = gate.admit("192.0.2.20", 30.1)  # it takes the unanswered contender's place
    assert evicted == [spoofed] and phone.probation and len(gate.probation) == 5
    phone.transfer = Moving()
    assert gate.verified(phone, 30.2) == [places[0]] and places[0].released  # answered: the crawler's place is its
    assert phone.probation and len(gate.probation) == 4


def test_a_device_answering_on_many_addresses_of_its_64_forgets_its_own_not_the_phones():
    gate = admission()
    gate.remember_answered("192.0.2.7", 0.0)
    gate.remember_answered("fd00:2::7", 0.0)  # a phone of another /64
    gate.remember_answered("fd00:1::7", 0.0)  # a phone of the device's /64
    for n in range(t.admission.ANSWERED_PER_PREFIX + 10):
        gate.remember_answered(f"fd00:1::1:{n:x}", 1.0)
    assert gate.answered_lately("192.0.2.7", 1.0) and gate.answered_lately("fd00:2::7", 1.0)
    assert not gate.answered_lately("fd00:1::7", 1.0)  # its own /64's oldest goes first
    assert len(gate.answered) == t.admission.ANSWERED_PER_PREFIX + 2
    gate.remember_answered("fd00:2::7", 2.0)  # answering again keeps it longest
    assert next(reversed(gate.answered)) == "fd00:2::7" and gate.answered["fd00:2::7"] == 2.0


def test_an_address_that_acknowledged_a_transfer_counts_as_answered_for_a_day():
    gate = admission()
    slot, _ = gate.admit("192.0.2.7", 0.0)
    assert not gate.answered_lately("192.0.2.7", 0.0)  # asked, not answered: a spoofed source looks the same
    gate.verified(slot, 0.5)
    gate.release(slot, 1.0)
    assert gate.answered_lately("192.0.2.7", 1.0) and not gate.answered_lately("192.0.2.8", 1.0)
    assert not gate.answered_lately("192.0.2.7", 0.5 + t.admission.ANSWERED_FOR)
    for n in range(t.admission.ANSWERED_KEPT):  # the least recently answered is forgotten first
        other, _ = gate.admit(f"10.0.{n >> 8}.{n & 255}", 2.0)
        gate.verified(other, 2.0)
        gate.release(other, 2.0)
    assert not gate.answered_lately("192.0.2.7", 2.0) and len(gate.answered) == t.admission.ANSWERED_KEPT


def test_the_paces_remembered_are_bounded():
    gate = admission(max_total=4, max_per_client=2)
    for n in range(t.admission.PACES_KEPT + 100):
        slot, _ = gate.admit(f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}", float(n))
        slot.transfer = Moving()
        gate.verified(slot, float(n))
        gate.release(slot, float(n))
    assert len(gate.paces) <= t.admission.PACES_KEPT


def test_the_per_client_limit_takes_the_clients_own_slot_not_anothers():
    gate = admission(max_total=10)
    b1, _ = gate.admit("b", 0.0)
    a1, _ = gate.admit("a", 0.1)
    gate.admit("a", 0.2)
    assert gate.admit("a", 5.0)[1] == [a1]


def test_a_sources_allowance_holds_its_first_packets_sent_twice_and_refills_in_a_minute():
    gate = admission(max_per_client=8)
    assert gate.buckets.capacity == 8 * 2 * 516 and gate.buckets.rate == 8 * 2 * 516 / t.ALLOWANCE_REFILL
    assert gate.hears("192.0.2.9", 0.0) is HEARD
    gate.buckets.take("192.0.2.9", 8 * 2 * 516, 0.0)
    assert gate.hears("192.0.2.9", 0.0) is t.Hearing.SPENT
    assert not gate.allowance("192.0.2.9", 0.0, transfer=False).permits(0.0)
    assert gate.hears("192.0.2.10", 0.0) is HEARD  # another source has its own
    assert gate.hears("192.0.2.9", 0.1) is HEARD


def test_the_first_packet_is_paid_for_at_admission_so_a_burst_is_held_to_the_bucket():
    gate = admission(max_total=100, max_per_client=100)
    allowances = []
    while gate.hears("192.0.2.9", 0.0) is HEARD:  # a burst: none of its first packets is sent yet
        allowances.append(gate.allowance("192.0.2.9", 0.0))
    assert len(allowances) == 100 * 2  # capacity / FIRST_PACKET_MAX
    machine = read_machine(b"x" * 4000, rrq(blksize=1024))
    machine.allowance = allowances[0]
    oack = machine.start(0.0)[0]  # a small OACK: the rest of its reservation goes back
    assert gate.buckets.level("192.0.2.9", 0.0) == 516 - len(oack)
    allowances[1].release(0.0)  # a transfer that ended without sending: its reservation goes back
    assert gate.buckets.level("192.0.2.9", 0.0) == 2 * 516 - len(oack)


def test_a_client_whose_slots_all_await_acknowledgement_is_not_heard_until_one_may_be_given_up():
    gate = admission(max_per_client=2)
    gate.admit("192.0.2.9", 0.0)
    gate.admit("192.0.2.9", 0.2)
    assert gate.hears("192.0.2.9", 0.5) is t.Hearing.AWAITING  # not even "busy": it acknowledged nothing yet
    assert gate.hears("192.0.2.9", 1.0) is HEARD  # the oldest is past its retransmission: its slot may go
    verified, _ = gate.admit("192.0.2.8", 0.0)
    gate.verified(verified, 0.0)
    gate.admit("192.0.2.8", 0.0)
    assert gate.hears("192.0.2.8", 0.5) is HEARD  # a client that acknowledges is answered, if only "busy"
    assert gate.admit("192.0.2.8", 0.5) == (None, [])


def test_a_spent_allowance_says_when_it_is_above_zero_again():
    gate = admission(max_per_client=8)
    assert gate.refilled_in("192.0.2.9", 0.0) == 0.0
    gate.buckets.take("192.0.2.9", 8 * 2 * 516 + 516, 0.0)  # a packet below empty, the most a bucket goes
    wait = gate.refilled_in("192.0.2.9", 0.0)
    assert wait == pytest.approx(517 / gate.buckets.rate)  # 3.8 s at 137 bytes a second
    assert gate.hears("192.0.2.9", wait - 0.01) is t.Hearing.SPENT
    assert gate.hears("192.0.2.9", wait) is HEARD


def test_slots_and_allowances_are_per_address_and_a_64_holds_a_quarter_of_all_slots():
    """An IPv6 device using many addresses of its /64 holds at most a quarter of all slots and spends only its own
    addresses' allowances: a phone at another address of the /64 is heard and takes an unverified slot."""
    gate = admission(max_total=100, max_per_client=8)
    prefix = "fd00:1::/64"
    for n in range(100):  # 5 requests a second, each from another address, never acknowledged
        attacker, now = f"fd00:1::{0x100 + n:x}", n * 0.2
        assert gate.hears(attacker, now) is HEARD
        assert gate.admit(attacker, now)[0] is not None  # past 25, each takes the slot of the oldest (1.6 s+ old)
        gate.allowance(attacker, now).take(516, now)
    assert gate.per_client[prefix] == 25 and gate.active == 25  # 100 x 516 bytes: per /64, the allowance would be spent
    assert gate.hears("fd00:1::5", 20.0) is HEARD
    slot, evicted = gate.admit("fd00:1::5", 20.0)
    assert slot is not None and len(evicted) == 1 and evicted[0].client != "fd00:1::5"
    assert gate.buckets.level("fd00:1::5", 20.0) == gate.buckets.capacity


def test_phones_sharing_a_64_boot_together_each_with_its_own_slots():
    """A LAN's phones share one /64: a hundred of them booting at once all get a transfer (of a quarter of 500),
    each address its own eight."""
    gate = admission(max_total=500, max_per_client=8)
    phones = [f"2001:db8:0:1::{n + 1:x}" for n in range(100)]
    slots = [gate.admit(phone, 0.0)[0] for phone in phones]
    assert None not in slots and gate.per_client["2001:db8:0:1::/64"] == 100
    for slot in slots:
        gate.verified(slot, 0.0)
    assert [gate.admit(phones[0], 0.1)[0] is not None for _ in range(7)] == [True] * 7
    assert gate.admit(phones[0], 0.1) == (None, [])  # its eight are taken and verified
    assert gate.admit("192.0.2.1", 0.1)[0] is not None  # IPv4: the address is the client, counted once
    assert gate.per_client["192.0.2.1"] == 1


def test_a_transfer_machine_is_freed_by_its_last_reference_not_by_the_cyclic_collector():
    """Its dispatch table held its own bound methods: a cycle per transfer, which under a flood of spoofed
    requests only full collections freed (80,000 objects every 1.25 s, 93-179 ms with the loop held)."""
    import gc
    import weakref

    gc.disable()
    try:
        for make in (lambda: read_machine(b"x" * 3000, rrq(windowsize=4)), lambda: write_machine(Collector())):
            machine = make()
            machine.start(0.0)
            machine.timeout(100.0)
            gone = weakref.ref(machine)
            del machine
            assert gone() is None
    finally:
        gc.enable()
