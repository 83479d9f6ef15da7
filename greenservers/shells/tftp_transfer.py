"""Drives one TFTP transfer machine over its own connected UDP socket, with the least work per packet.

A boot storm is hundreds of lock-step transfers: per packet one ACK comes in
and one DATA goes out. Waiting for each ACK in the transfer's greenlet (an io
watcher, a timer and two greenlet switches) cost more than the protocol work,
so the packets are handled in a libev io-watcher callback that runs in the
hub: read, `machine.receive`, write, and no switch. The transfer's greenlet
keeps what is rare: the first send, retransmission when the machine's deadline
passes, what a full socket buffer refused, and the end.

The answers of the hot path go out through a `SendBatch`: sent together once
the loop has handled every socket that was ready. Each DATA wakes a client, and
on a busy machine a burst of wake-ups costs the kernel fewer inter-processor
interrupts than the same wake-ups spread out (100-phone boot storm on 2 cores:
5.9 s sent one by one, 5.05 s batched). A window is at most 64 KiB
(proto.tftp.MAX_WINDOW_BYTES), which a client's default receive buffer holds
whole: it goes out at once (a window of 8 x 64 KiB overran atftp's, which lost
each window's tail, and had to be paced).

The socket is a plain non-blocking one (not gevent's), because nothing may
block or switch inside a hub callback.
"""

from __future__ import annotations

import _socket
import errno
import os
import sys
import time

import gevent
from gevent.event import Event
from gevent.socket import wait_write

from ..proto import tftp as proto

RECV_SIZE = proto.MAX_BLKSIZE + 4
UDP_SEGMENT = getattr(_socket, "UDP_SEGMENT", 103)  # Linux 4.18+: one send, many datagrams
UDP_MAX_SEGMENTS = 64
NO_SEGMENTATION = (errno.ENOPROTOOPT, errno.EOPNOTSUPP)  # the kernel has no UDP GSO at all
NOT_THIS_WINDOW = (errno.EMSGSIZE, errno.EINVAL, errno.EIO) + NO_SEGMENTATION


def transfer_socket(family: int, local: tuple, peer: tuple) -> _socket.socket:
    """A new transfer ID (RFC 1350 §4): a fresh port on the request's local address, connected to the client."""
    sock = _socket.socket(family, _socket.SOCK_DGRAM)
    try:
        sock.bind(local)
        sock.connect(peer)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class Segmentation:
    """Whether UDP GSO works here; switched off for good the first time the kernel says it has none."""

    def __init__(self, log):
        self.available, self.log = True, log

    def unavailable(self, exc: OSError) -> None:
        if self.available:
            self.available = False
            self.log.info("UDP segmentation offload unavailable (%s); windows go one datagram at a time", exc)


class TransferDriver:
    """Runs `machine` over `sock` until it is finished; `verified()` is called once the peer has
    acknowledged the first packet, `settled()` once only a dally remains."""

    def __init__(self, sock: _socket.socket, machine: proto.Transfer, segmentation: Segmentation,
                 batch: SendBatch, settled, verified=None):
        self.sock, self.fd, self.machine = sock, sock.fileno(), machine
        self.segmentation, self.batch, self.settled = segmentation, batch, settled
        self.verified = verified  # None once called (or if nobody asked)
        self.backlog: list[bytes] = []  # datagrams a full socket buffer refused, sent by the greenlet
        self.failure: BaseException | None = None  # raised in the callback, re-raised in the greenlet
        self.held: bytes | None = None  # a datagram the callback left to the greenlet: an upload's last block,
        # whose commit syncs the file to disk (15 MB: 12-16 ms here) off the loop
        self.wake = Event()
        self.watcher = None

    def run(self) -> None:
        machine, clock = self.machine, time.monotonic
        self.watcher = gevent.get_hub().loop.io(self.fd, 1)
        try:
            self._send(machine.start(clock()))
            while True:
                if self.failure is not None:
                    raise self.failure
                if self.backlog:
                    self._flush_backlog()
                    continue
                if self.held is not None:
                    datagram, self.held = self.held, None
                    self._peer_heard()  # the block expected, from its port: its slot is kept while the upload commits
                    self._received(datagram, clock())
                    continue
                if machine.finished:
                    return
                if machine.state is proto.State.DALLYING:
                    self.settled()
                if not self.watcher.active:
                    self.watcher.start(self._on_readable)
                wait = machine.deadline - clock()
                if wait > 0:
                    self.wake.wait(wait)
                    self.wake.clear()
                else:
                    self._send(machine.timeout(clock()))
        finally:
            self.watcher.stop()
            self.watcher.close()

    def _on_readable(self) -> None:
        """The hot path, in the hub: one datagram in, the machine's answer out (one that may make the sink
        commit is left to the greenlet)."""
        try:
            try:
                datagram = os.read(self.fd, RECV_SIZE)
            except BlockingIOError:  # a spurious wake-up
                return
            if self.machine.commits_with(datagram):
                self.held = datagram
                self.hand_over()
                return
            self._received(datagram, time.monotonic())
        except BaseException as exc:  # noqa: BLE001 -- nothing may escape into the hub; the greenlet re-raises it
            self.failure = exc
            self.hand_over()

    def _received(self, datagram: bytes, now: float) -> None:
        """One datagram in, the machine's answer out (in the hub, or in the greenlet for one it was left)."""
        machine = self.machine
        out = machine.receive(datagram, now)
        if self.verified is not None and machine.verified:
            self._peer_heard()
        overdue = machine.timeout(now)  # a stream of stray packets must not stall retransmission
        if overdue:
            out += overdue
        streaming = machine.state in proto.STREAMING
        if len(out) == 1 and streaming:
            self.batch.add(self, out[0])
        else:  # a window (one segmented send), or a last word that must leave before the socket closes
            self._send(out)
        if self.backlog or not streaming:
            self.hand_over()

    def _peer_heard(self) -> None:
        """The peer has shown it receives what we send: `verified()`, once."""
        if self.verified is not None:
            verified, self.verified = self.verified, None
            verified()

    def hand_over(self) -> None:
        """Stop the fast path and let the greenlet deal with what just happened."""
        self.watcher.stop()
        self.wake.set()

    def _send(self, datagrams: list[bytes]) -> None:
        """Send without blocking; what the socket buffer refuses goes to the backlog."""
        if not datagrams:
            return
        if len(datagrams) > 1 and self.segmentation.available:
            sent = self._send_segmented(datagrams)
        else:
            sent = self._send_one_by_one(datagrams, 0)
        self.backlog.extend(datagrams[sent:])

    def _send_segmented(self, datagrams: list[bytes]) -> int:
        """A window of DATA in as few system calls as UDP GSO allows (all but the last datagram are full size)."""
        size = len(datagrams[0])
        per_call = max(1, min(UDP_MAX_SEGMENTS, 65000 // size))
        segment = [(_socket.SOL_UDP, UDP_SEGMENT, size.to_bytes(2, sys.byteorder))]
        sent = 0
        try:
            while sent < len(datagrams):
                self.sock.sendmsg([b"".join(datagrams[sent:sent + per_call])], segment)
                sent = min(len(datagrams), sent + per_call)
        except BlockingIOError:
            return sent
        except OSError as exc:  # this window cannot be segmented (blksize over the MTU, no checksum offload...)
            if exc.errno not in NOT_THIS_WINDOW:
                raise
            if exc.errno in NO_SEGMENTATION:
                self.segmentation.unavailable(exc)
            return self._send_one_by_one(datagrams, sent)
        return sent

    def _send_one_by_one(self, datagrams: list[bytes], sent: int) -> int:
        """Send datagrams[sent:] until the socket buffer refuses one; how many are sent in all."""
        try:
            while sent < len(datagrams):
                self.sock.send(datagrams[sent])
                sent += 1
        except BlockingIOError:
            pass
        return sent

    def _flush_backlog(self) -> None:
        """In the greenlet: send the backlog once the socket takes it. What it still refuses by the
        machine's deadline is dropped, as if lost on the way: the machine retransmits it."""
        deadline = self.machine.deadline or time.monotonic() + 1.0
        while self.backlog:
            wait = deadline - time.monotonic()
            if wait <= 0:
                self.backlog.clear()
                return
            try:
                wait_write(self.fd, timeout=wait)
            except TimeoutError:
                continue
            backlog, self.backlog = self.backlog, []
            self._send(backlog)


class SendBatch:
    """Datagrams of many transfers, sent after the loop has handled every socket that was ready,
    or every FLUSH_AT datagrams so the first clients need not wait for the whole round."""

    FLUSH_AT = 32

    def __init__(self):
        self.pending: list[tuple[TransferDriver, bytes]] = []

    def add(self, driver: TransferDriver, datagram: bytes) -> None:
        if not self.pending:
            # Not shells.loop's turn: that waits for the next poll, and what is wanted is only the end of this
            # round of ready watchers, which a hub callback gives without another poll or a timer per batch.
            gevent.get_hub().loop.run_callback(self.flush)
        self.pending.append((driver, datagram))
        if len(self.pending) >= self.FLUSH_AT:
            self.flush()

    def flush(self) -> None:
        pending, self.pending = self.pending, []
        for driver, datagram in pending:
            try:
                driver.sock.send(datagram)
            except BlockingIOError:
                driver.backlog.append(datagram)
                driver.hand_over()
            except OSError as exc:  # the peer vanished (ICMP unreachable): the transfer ends
                driver.failure = exc
                driver.hand_over()
