"""The TFTP provisioning server's gevent shell: sockets, greenlets, limits and logging.

Each `ip_tftp_port` socket gets a listener greenlet that reads requests with
recvmsg (the binder enabled IP_PKTINFO/IPV6_RECVPKTINFO, so a wildcard
socket learns the local address each request came in on). An admitted
request gets its own greenlet and its own ephemeral UDP socket, bound to
that local address and connected to the client (a new transfer ID, RFC 1350
§4); the protocol itself is greenservers.proto.tftp's state machines, the file
names and templates are greenservers.provisioning's. Transfers are limited
per client address (`tftp_max_per_client`) and in total (`tftp_max_transfers`).
"""

from __future__ import annotations

import socket
import time
from collections import Counter

import gevent
from gevent.pool import Group

from . import provisioning
from .binder import local_address
from .phones import seen
from .proto import tftp as proto
from .proto.peers import plain_address
from .ratelog import RateLimitedLog
from .service import Service
from .tftp_transfer import Segmentation, SendBatch, TransferDriver, transfer_socket

MAX_REQUEST = 1024  # an RRQ/WRQ with its options; longer ones are truncated and refused
ANCILLARY_SIZE = socket.CMSG_SPACE(32)
REQUEST_RATE = 1000.0  # requests handled per second, all listeners together (see pace_requests)
REQUEST_BURST = 256.0


class UploadSink(provisioning.Upload):
    """An upload as the write machine's Sink: a refused commit becomes its TFTP error."""

    def commit(self) -> None:
        try:
            super().commit()
        except provisioning.ProvisioningError as exc:
            raise proto.TftpError(exc.message, exc.tftp_code) from None


class TftpService(Service):
    name = "tftp"

    def __init__(self, runtime):
        super().__init__(runtime)
        self.ratelog = RateLimitedLog(self.log)
        self.per_client: Counter[str] = Counter()
        self.active = 0
        self.transfers = Group()  # all listeners': a transfer outlives its listener (a port change)
        self.segmentation = Segmentation(self.log)
        self.send_batch = SendBatch()
        self.tokens, self.tokens_at = float(REQUEST_BURST), time.monotonic()
        seen.registry_for(runtime)  # the record of phones read now, before its sensor is first asked for
        removed = provisioning.remove_orphan_uploads(runtime.settings)
        if removed:
            self.log.warning("removed %d partial upload(s) left by a process that ended mid-upload", len(removed))

    def make_server(self, bound):
        return TftpListener(self, bound)

    def pace_requests(self) -> None:
        """At most REQUEST_RATE requests a second (burst REQUEST_BURST), all listeners together.

        A read-request storm otherwise starts transfers back to back for as long
        as it lasts and every other service waits; paced, the excess waits in the
        socket's buffer (and is dropped by the kernel when that is full), and a
        boot storm of a few hundred phones still starts within a fraction of a second.
        """
        now = time.monotonic()
        self.tokens = min(REQUEST_BURST, self.tokens + (now - self.tokens_at) * REQUEST_RATE)
        self.tokens_at = now
        if self.tokens < 1.0:
            gevent.sleep((1.0 - self.tokens) / REQUEST_RATE)
            self.tokens, self.tokens_at = 1.0, time.monotonic()
        self.tokens -= 1.0

    def close(self) -> None:
        """At shutdown: end the transfers still running (their uploads are aborted); keep the record of phones."""
        self.transfers.kill(timeout=1)
        seen.save_all()

    # -- requests -----------------------------------------------------------

    def handle_request(self, datagram: bytes, local: tuple[str, int], peer, listener: "TftpListener") -> None:
        client = plain_address(peer[0])
        try:
            request = proto.parse_request(datagram)
        except proto.TftpError as exc:
            self.ratelog.warning("bad-request", client, "refused: %s", exc.message)
            listener.sock.sendto(exc.datagram(), peer)
            self.runtime.sensors.add("tftp_transfers_failed")
            return
        settings = self.runtime.settings
        if self.active >= settings.tftp_max_transfers or self.per_client[client] >= settings.tftp_max_per_client:
            self.ratelog.warning("busy", client, "refused %s: too many transfers (%d in all, %d from this client)",
                                 request.filename, self.active, self.per_client[client])
            listener.sock.sendto(proto.encode_error(0, "server busy, retry later"), peer)
            self.runtime.sensors.add("tftp_transfers_failed")
            return
        self._hold(client, +1)
        self.transfers.spawn(self._transfer, request, local, peer, client, listener.sock.family)

    def _hold(self, client: str, change: int) -> None:
        """Count a transfer slot in (+1) or out (-1), for the limits and the sensor."""
        self.active += change
        self.per_client[client] += change
        if self.per_client[client] <= 0:
            del self.per_client[client]
        self.runtime.sensors.set("tftp_transfers_active", self.active)

    def _transfer(self, request, local, peer, client: str, family: int) -> None:
        sock = machine = resource = None
        holding = [True]

        def release_slot():  # early once only courtesy retransmissions remain (a write's dally)
            if holding:
                holding.clear()
                self._hold(client, -1)

        try:
            sock = self._transfer_socket(local, peer, family)
            machine, resource = self._start(request, local, client)
            TransferDriver(sock, machine, self.segmentation, self.send_batch, release_slot).run()
        except proto.TftpError as exc:
            self.ratelog.warning("refused", client, "%s %s refused: %s", "WRQ" if request.write else "RRQ", request.filename, exc.message)
            self._send_quietly(sock, exc.datagram())
            if not request.write:
                seen.note_fetch(self.runtime, request.filename, client, "not found" if exc.code == 1 else "refused", "tftp")
        except OSError as exc:  # the peer vanished (ICMP unreachable) or a socket of ours failed
            self.log.debug("%s: transfer of %s ended: %s", client, request.filename, exc)
        except Exception:
            self.log.exception("%s: transfer of %s failed", client, request.filename)
            self._send_quietly(sock, proto.encode_error(0, "internal error"))
        finally:
            release_slot()
            self._finish(request, client, sock, machine, resource)

    @staticmethod
    def _transfer_socket(local, peer, family: int):
        host, interface = plain_address(local[0]), local[1]
        if ":" not in host:  # IPv4, possibly reached through a dual-stack [::] socket
            family, peer = socket.AF_INET, (plain_address(peer[0]), peer[1])
        return transfer_socket(family, (host, 0, 0, interface) if family == socket.AF_INET6 else (host, 0), peer)

    def _start(self, request, local, client: str):
        """The machine for a request and the resource to release after it."""
        settings = self.runtime.settings
        limits = proto.Limits()
        try:
            if request.write:
                if not settings.tftp_write:
                    raise proto.AccessViolation("writing is disabled (tftp_write)")
                negotiated = proto.negotiate(request, None, limits)
                sink = UploadSink(provisioning.upload_target(settings, request.filename))
                self.ratelog.info("upload", client, "upload of %s started", request.filename)
                return proto.WriteTransfer(sink, negotiated, limits, netascii=request.mode == "netascii"), sink
            content = provisioning.provide(settings, request.filename, plain_address(local[0]))
        except provisioning.ProvisioningError as exc:
            raise proto.TftpError(exc.message, exc.tftp_code) from None
        if request.mode == "netascii" and content.size > proto.MAX_NETASCII_BYTES:
            raise proto.AccessViolation(f"netascii is for text files up to {proto.MAX_NETASCII_BYTES} bytes; use octet")
        resource = source = provisioning.FileReader(content.path) if content.path else proto.BytesSource(content.data)
        if request.mode == "netascii":
            source = proto.NetasciiSource(source)
        return proto.ReadTransfer(source, proto.negotiate(request, source.size, limits), limits), resource

    def _finish(self, request, client: str, sock, machine, resource) -> None:
        sensors = self.runtime.sensors
        done = machine is not None and machine.state is proto.State.DONE
        sensors.add("tftp_transfers_done" if done else "tftp_transfers_failed")
        if isinstance(machine, proto.ReadTransfer):
            seen.note_fetch(self.runtime, request.filename, client, "served" if done else "failed", "tftp")
        if isinstance(machine, proto.ReadTransfer):
            sensors.add("tftp_bytes_sent", machine.bytes_sent)
        if machine is not None and machine.failure and not machine.peer_vanished:
            self.ratelog.warning("failed", client, "transfer of %s failed: %s", request.filename, machine.failure)
        elif done and request.write:
            self.ratelog.info("uploaded", client, "upload of %s complete (%d bytes)", request.filename, machine.bytes_received)
        if resource is not None:  # a file closed; an upload's temporary file removed (after a commit: nothing)
            resource.close()
        if sock is not None:
            sock.close()

    @staticmethod
    def _send_quietly(sock, datagram: bytes) -> None:
        try:
            if sock is not None:
                sock.send(datagram)
        except OSError:
            pass


class TftpListener:
    """One bound `ip_tftp_port` socket: reads requests and starts transfers."""

    def __init__(self, service: TftpService, bound):
        self.service, self.bound, self.sock = service, bound, bound.sock
        self.greenlet = None

    def start(self) -> None:
        self.sock.settimeout(None)  # the binder left it non-blocking: gevent would raise EAGAIN instead of waiting
        self.greenlet = gevent.spawn(self._serve)

    def stop(self, timeout: float | None = None) -> None:
        """Stop taking requests; transfers in flight carry on over their own sockets."""
        if self.greenlet is not None:
            self.greenlet.kill(timeout=timeout)

    def _serve(self) -> None:
        bound_host = self.bound.binding.host
        served = 0
        while True:
            served += 1
            if served % 64 == 0:  # a socket that always has data never blocks: yield, or a storm starves every other service
                gevent.sleep(0)
            self.service.pace_requests()
            try:
                datagram, ancillary, _flags, peer = self.sock.recvmsg(MAX_REQUEST, ANCILLARY_SIZE)
                local = local_address(ancillary, bound_host)
                self.service.handle_request(datagram, local, peer, self)
            except OSError as exc:  # e.g. a send to a vanished peer; the socket itself stays usable
                if self.sock.fileno() < 0:
                    return  # closed under us: the binding is going away
                self.service.log.debug("tftp listener %s: %s", self.bound.address, exc)
            except Exception:
                self.service.log.exception("tftp listener %s: request failed", self.bound.address)
