"""The TFTP transfer driver in-process (gevent, loopback): the hot path, a full send buffer,
a vanished peer, a peer that never answers, many transfers batched; an upload's commit off the hub;
the chunked file reader; and the netascii view of a file, counted once per version of the file."""

from __future__ import annotations

import _socket
import logging
import os
import socket

import gevent
import pytest
from gevent import socket as gsocket

from greenservers.proto import tftp as proto
from greenservers.provisioning.files import FileReader
from greenservers.shells.tftp_transfer import Segmentation, SendBatch, TransferDriver, transfer_socket


def client_socket() -> gsocket.socket:
    sock = gsocket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    return sock


def read_machine(data: bytes, max_retries: int = 2, timeout: float = 5.0, **options) -> proto.ReadTransfer:
    """A download's machine. Its retransmission `timeout` is long unless a test is about retransmissions:
    a test process descheduled for 0.2 s on a loaded machine would otherwise send a block twice."""
    request = proto.Request(False, "f", "octet", {k: str(v) for k, v in options.items()})
    limits = proto.Limits(timeout=timeout, max_retries=max_retries, first_packet_hold=3 * timeout)
    return proto.ReadTransfer(proto.BytesSource(data), proto.negotiate(request, len(data), limits), limits)


class BusySocket(_socket.socket):
    """A transfer socket whose send buffer is full every other time (loopback itself never is)."""

    refusals = 0

    def _busy(self) -> bool:
        self.refusals += 1
        return self.refusals % 2 == 1

    def send(self, data, *flags):
        if self._busy():
            raise BlockingIOError(11, "Resource temporarily unavailable")
        return super().send(data, *flags)

    def sendmsg(self, *args):
        if self._busy():
            raise BlockingIOError(11, "Resource temporarily unavailable")
        return super().sendmsg(*args)


def busy_socket(peer) -> BusySocket:
    sock = BusySocket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.connect(peer)
    sock.setblocking(False)
    return sock


def start_driver(machine, client: gsocket.socket, batch: SendBatch | None = None, busy: bool = False):
    peer = client.getsockname()
    sock = busy_socket(peer) if busy else transfer_socket(socket.AF_INET, ("127.0.0.1", 0), peer)
    driver = TransferDriver(sock, machine, Segmentation(logging.getLogger("test")), batch or SendBatch(), lambda: None)
    return gevent.spawn(driver.run), sock


def download(client: gsocket.socket, blksize: int = 512, windowsize: int = 1, oack: bool = False) -> bytes:
    """A well-behaved client: acknowledges each window (or the OACK) and collects the blocks."""
    received, expected, in_window = bytearray(), 1, 0
    client.settimeout(5)
    while True:
        datagram, peer = client.recvfrom(70000)
        if not received and oack and datagram[:2] == b"\x00\x06":
            client.sendto(b"\x00\x04\x00\x00", peer)
            continue
        assert datagram[:2] == b"\x00\x03"
        block = int.from_bytes(datagram[2:4], "big")
        if block != expected % 65536:
            continue
        received += datagram[4:]
        expected, in_window = expected + 1, in_window + 1
        last = len(datagram) - 4 < blksize
        if last or in_window == windowsize:
            client.sendto(datagram[:4].replace(b"\x00\x03", b"\x00\x04", 1), peer)
            in_window = 0
        if last:
            return bytes(received)


def test_lock_step_download_through_the_hot_path():
    data = os.urandom(300 * 512 + 7)
    client = client_socket()
    machine = read_machine(data)
    greenlet, sock = start_driver(machine, client)
    assert download(client) == data
    greenlet.get(timeout=5)
    assert machine.state is proto.State.DONE and machine.bytes_sent == len(data)
    sock.close()


@pytest.mark.parametrize("windowsize", [1, 8])
def test_what_a_full_send_buffer_refuses_goes_out_later_in_order(windowsize):
    data = os.urandom(100 * 1024 + 3)
    client = client_socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    machine = read_machine(data, blksize=1024, windowsize=windowsize)
    greenlet, sock = start_driver(machine, client, busy=True)
    assert download(client, blksize=1024, windowsize=windowsize, oack=True) == data
    greenlet.get(timeout=5)
    assert machine.state is proto.State.DONE and machine.bytes_sent == len(data)  # nothing lost, nothing sent twice
    assert sock.refusals >= 100 // windowsize  # about every other send was refused and retried
    sock.close()


def test_vanished_peer_ends_the_transfer_with_the_os_error():
    client = client_socket()
    machine = read_machine(os.urandom(10 * 512), timeout=0.2)
    greenlet, sock = start_driver(machine, client)
    client.settimeout(5)
    datagram, peer = client.recvfrom(600)
    client.close()  # the next DATA (DATA 1 again, 0.2 s later) meets a closed port: ICMP unreachable, ECONNREFUSED
    with gsocket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
        other.sendto(b"\x00\x04\x00\x01", peer)  # wrong transfer ID: the connected socket never sees it
    with pytest.raises(OSError):
        greenlet.get(timeout=5)
    sock.close()


@pytest.mark.parametrize("acknowledged", [True, False])
def test_silent_peer_gets_bounded_retransmissions_then_the_transfer_fails(acknowledged):
    """Established (DATA 1 acknowledged): max_retries copies of DATA 2; never acknowledged: DATA 1 twice."""
    client = client_socket()
    machine = read_machine(os.urandom(2048), timeout=0.2)
    greenlet, sock = start_driver(machine, client)
    client.settimeout(5)
    if acknowledged:
        client.sendto(b"\x00\x04\x00\x01", client.recvfrom(600)[1])
    copies = [client.recvfrom(600)[0] for _ in range(1 + (machine.max_retries if acknowledged else machine.first_retries))]
    assert len(set(copies)) == 1 and copies[0][:4] == (b"\x00\x03\x00\x02" if acknowledged else b"\x00\x03\x00\x01")
    greenlet.get(timeout=5)
    assert machine.state is proto.State.FAILED and machine.peer_vanished and machine.unacknowledged is not acknowledged
    client.settimeout(0.1)  # the transfer has ended: nothing more comes
    with pytest.raises(TimeoutError):
        client.recvfrom(600)
    sock.close()


def test_an_uploads_last_block_is_received_in_the_greenlet_where_its_commit_may_wait():
    """The commit syncs the file to disk (15 MB: 12-16 ms): the hub's fast path leaves the last block to the
    transfer's greenlet, which may wait for a thread meanwhile; the other blocks stay on the fast path."""
    committed_in, written = [], []

    class Sink:
        def write(self, data: bytes) -> None:
            written.append(gevent.getcurrent())

        def commit(self) -> None:
            committed_in.append(gevent.getcurrent())
            gevent.sleep(0)  # what waiting for a thread does: switch to the hub (refused in the hub itself)

        def abort(self) -> None:
            pass

    request = proto.Request(True, "u.log", "octet", {})
    limits = proto.Limits(timeout=5.0)
    machine = proto.WriteTransfer(Sink(), proto.negotiate(request, None, limits), limits)
    assert not machine.commits_with(proto.encode_data(1, b"x" * 10))  # not receiving yet
    client = client_socket()
    greenlet, sock = start_driver(machine, client)
    try:
        client.settimeout(10)
        assert client.recv(100) == proto.encode_ack(0)
        server = sock.getsockname()
        client.sendto(proto.encode_data(1, b"a" * 512), server)
        assert client.recv(100) == proto.encode_ack(1)
        assert machine.commits_with(proto.encode_data(2, b"end")) and not machine.commits_with(proto.encode_data(2, b"b" * 512))
        assert not machine.commits_with(proto.encode_data(3, b"end"))  # not the block expected: answered on the fast path
        client.sendto(proto.encode_data(2, b"end"), server)
        assert client.recv(100) == proto.encode_ack(2)
        assert committed_in == [greenlet] and gevent.get_hub() in written  # the full block: on the fast path
    finally:
        greenlet.kill()
        client.close()


def test_many_transfers_at_once_share_one_send_batch():
    batch = SendBatch()
    files = [os.urandom(64 * 512 + n) for n in range(40)]
    clients = [client_socket() for _ in files]
    started = [start_driver(read_machine(data), client, batch) for data, client in zip(files, clients, strict=True)]
    downloads = [gevent.spawn(download, client) for client in clients]
    gevent.joinall(downloads, timeout=20, raise_error=True)
    assert [d.value for d in downloads] == files
    for greenlet, sock in started:
        greenlet.get(timeout=5)
        sock.close()


@pytest.mark.parametrize("reads", [
    [(0, 512), (512, 512), (65024, 512), (65536, 512)],  # lock-step across a chunk boundary
    [(1000, 512), (0, 512), (1000, 512)],  # a retransmission goes back
    [(0, 70000), (100, 8)],  # a window longer than a chunk
    [(199_990, 512), (200_000, 512), (300_000, 512)],  # the end of the file and past it
])
def test_file_reader_returns_what_pread_would(tmp_path, reads):
    path = tmp_path / "f"
    path.write_bytes(data := os.urandom(200_001))
    reader = FileReader(path)
    try:
        for offset, length in reads:
            assert reader.read(offset, length) == data[offset:offset + length]
    finally:
        reader.close()


def test_decoding_into_reused_packets_keeps_no_stale_fields():
    reusable: dict = {}
    first = proto.decode(b"\x00\x03\x00\x01" + b"a" * 10, reusable)
    assert (first.blocknumber, first.data) == (1, b"a" * 10)
    ack = proto.decode(b"\x00\x04\x00\x07", reusable)
    assert (ack.opcode, ack.blocknumber) == (4, 7)
    second = proto.decode(b"\x00\x03\x00\x02", reusable)
    assert second is first and (second.opcode, second.blocknumber, second.data) == (3, 2, b"")
    with pytest.raises(proto.IllegalOperation):
        proto.decode(b"\x00\x04\x00", reusable)


def test_a_files_netascii_size_is_counted_once_per_version(tmp_path, monkeypatch):
    """A client asking for a large file in netascii again and again costs its counting pass once (in turns of
    the loop), until the file changes."""
    from collections import OrderedDict
    from types import SimpleNamespace

    from greenservers.shells import tftp as shell

    counted = []
    real = proto.netascii_starts

    def counting(source):
        counted.append(source)
        return (yield from real(source))

    monkeypatch.setattr(shell.proto, "netascii_starts", counting)
    service = SimpleNamespace(netascii_counted=OrderedDict())
    path = tmp_path / "phone.cfg"
    raw = b"line one\nline two\r\n" * 10000
    path.write_bytes(raw)
    views = []
    for _ in range(3):
        reader = FileReader(path)
        views.append(shell.TftpService._netascii(service, reader))
        reader.close()
    assert len(counted) == 1 and views[0].size == views[2].size == len(raw) + raw.count(b"\n") + raw.count(b"\r")
    path.write_bytes(b"a\n" * 5)  # written again: another version
    reader = FileReader(path)
    assert shell.TftpService._netascii(service, reader).read(0, 100) == b"a\r\n" * 5
    reader.close()
    assert len(counted) == 2

