"""The TFTP provisioning server's gevent shell: sockets, greenlets, limits and logging.

Each `ip_tftp_port` socket gets a listener greenlet that reads requests with
recvmsg (the binder enabled IP_PKTINFO/IPV6_RECVPKTINFO, so a wildcard
socket learns the local address each request came in on: shells.udp). An admitted
request gets its own greenlet and its own ephemeral UDP socket, bound to
that local address and connected to the client (a new transfer ID, RFC 1350
§4); the protocol itself is greenservers.proto.tftp's state machines, the file
names and templates are greenservers.provisioning.files'. Who gets a transfer is
the core's `Admission`: limited per client address (`tftp_max_per_client`),
per IPv6 /64 (a quarter of all) and in total (`tftp_max_transfers`), where an unverified transfer (its first packet not acknowledged)
gives its slot to a new request (one of its own address only once it is past its first retransmission); and
every address may be sent only so much that it has not acknowledged, as a
request's source address may be spoofed and whatever we send goes to that
address. A request from an address whose allowance is spent, or from a client
whose every slot awaits an acknowledgement, is dropped unread (paced at
DROP_COST of a handled request) and counted (`tftp_sends_withheld`); an honest
client gets its bytes back with each acknowledgement and never runs short. A
source whose allowance is spent is remembered by the listener for at most
MEMO_SECONDS (its next requests are dropped without a look at its bucket), so
it is heard again as soon as its allowance is above zero, on a quiet network
too; the other refusal is never remembered. Uploads go through
greenservers.provisioning.uploads (budget, files, and each address's and /64's hourly quota).

Every line a peer can cause goes through the rate-limited log, with what the
peer named (a file name, a refusal that quotes it) escaped by ratelog.printable.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections import OrderedDict

import gevent
from gevent.pool import Group

from ..process.offload import run_off_loop
from ..proto import tftp as proto
from ..proto.clients import TokenBuckets, plain_address
from ..provisioning import files as provisioning, uploads
from ..provisioning.misses import TooManyMisses
from ..provisioning.phones import seen
from ..ratelog import RateLimitedLog, printable
from ..services import Service
from .loop import run_in_turns
from .tftp_transfer import Segmentation, SendBatch, TransferDriver, transfer_socket
from .udp import PKTINFO_SPACE, SO_TIMESTAMPNS, TIMESTAMP_SPACE, local_address, received_ns, waited_since

MAX_REQUEST = 1024  # an RRQ/WRQ with its options; longer ones are truncated and refused
ANCILLARY_SPACE = PKTINFO_SPACE + TIMESTAMP_SPACE  # the local address a request came to, and when
REQUEST_RATE = 1000.0  # requests handled per second, all listeners together (see pace_requests)
DROP_COST = 1 / 8  # a request dropped unread, as a share of one handled: 8,000 a second at most
REQUEST_BURST = 256.0
SHED_AFTER = 0.05  # seconds a request waited in the socket's buffer: past it, one from an address that has not answered
# lately is shed (read and dropped), as the server is behind. The buffer (about 270 requests) fills before: at 3,000 a
# second it is full 90 ms after the storm starts, and the kernel drops what comes, a phone's request as likely as any
BUSY = proto.encode_error(0, "server busy, retry later")
SLOW_ENDED = proto.encode_error(0, "server busy: this slow transfer gave its slot to another, retry later")
YIELD_EVERY = 64  # datagrams read before other greenlets get a turn
MEMO_SECONDS = 0.5  # longest a source whose allowance is spent is dropped without a look at its bucket (which refills)
NETASCII_COUNTED = 32  # files whose netascii offsets are kept (counting 16 MiB takes about 20 ms)
REFUSAL_SENSORS = {uploads.UploadsFull: "tftp_uploads_refused_full", uploads.QuotaSpent: "tftp_uploads_refused_rate",
                   TooManyMisses: "provisioning_refused_misses"}


class UploadSink:
    """An upload (greenservers.provisioning.uploads) as the write machine's Sink: its refusals become their TFTP errors."""

    def __init__(self, upload: uploads.Upload, service: TftpService):
        self.upload, self.service = upload, service

    def write(self, data: bytes) -> None:
        try:
            self.upload.write(data)
        except provisioning.ProvisioningError as exc:
            raise self.service.tftp_error(exc) from None

    def commit(self) -> None:
        try:
            # fsync and link, in a thread, waited for even when the transfer is killed meanwhile (its clean-up
            # would abort the upload under the thread); called in the transfer's greenlet (commits_with)
            run_off_loop(self.upload.commit, to_its_end=True)
        except provisioning.ProvisioningError as exc:
            raise self.service.tftp_error(exc) from None

    def abort(self) -> None:
        self.upload.abort()

    close = abort


class TftpService(Service):
    name = "tftp"

    def __init__(self, runtime):
        super().__init__(runtime)
        self.ratelog = RateLimitedLog(self.log)
        self.limits = proto.Limits()
        self.admission = proto.Admission(self.limits, TokenBuckets(rate=0.0, capacity=0))  # sized by configure()
        self.upload_quota = uploads.HourlyQuota()
        self.transfers = Group()  # all listeners': a transfer outlives its listener (a port change)
        self.segmentation = Segmentation(self.log)
        self.send_batch = SendBatch()
        self.tokens, self.tokens_at = float(REQUEST_BURST), time.monotonic()
        self.netascii_counted: OrderedDict[tuple, list[int]] = OrderedDict()  # by FileReader.version, the last used last
        # the record of phones read now, before its sensor is first asked for; the phones it trusts answered lately
        # (a power cut that restarts the server too reboots them all: their requests go first in the storm)
        monotonic, wall = time.monotonic(), time.time()
        for address, last_seen in seen.registry_for(runtime).trusted_since(proto.ANSWERED_FOR):
            self.admission.remember_answered(plain_address(address), monotonic - (wall - last_seen))  # as requests' sources
        removed = uploads.remove_orphan_uploads(runtime.settings)
        if removed:
            self.log.warning("removed %d partial upload(s) left by a process that ended mid-upload", len(removed))

    def make_server(self, bound):
        bound.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)  # how long each request waited (sheds)
        return TftpListener(self, bound)

    def sheds(self, address: str, now: float, waited: float) -> bool:
        """Whether a request is shed (read and dropped, paced as a drop): when it `waited` in the socket's buffer
        more than SHED_AFTER and `address` has not acknowledged a transfer lately.

        Paced alone, a storm's requests waited in the socket's buffer and the kernel dropped whatever came
        when it was full: during 3,000 spoofed requests a second, 3 of 3 phones got no answer. Shed, the
        buffer is read faster (a shed request costs DROP_COST) and stays short of full, and a phone that
        booted here before (a power cut reboots them all; the record of phones says which, after a restart)
        is handled within SHED_AFTER or so; a new phone's request is handled when it comes as the wait falls
        below SHED_AFTER. A boot storm of phones never seen, more than REQUEST_BURST at once, may have its
        last ones shed: they are served at their next try, a few seconds later.
        """
        if waited > SHED_AFTER and not self.admission.answered_lately(address, now):
            self.runtime.sensors.add("tftp_requests_shed")
            self.ratelog.warning("shed", address, "request dropped: the server is reading a storm of requests, and those of "
                                 "addresses that answered before go first")
            self.pace_requests(DROP_COST)
            return True
        return False

    def pace_requests(self, cost: float = 1.0) -> None:
        """At most REQUEST_RATE requests a second (burst REQUEST_BURST), all listeners together,
        a request dropped unread counting as DROP_COST of one.

        A read-request storm otherwise starts transfers back to back for as long
        as it lasts and every other service waits; paced, the excess waits in the
        socket's buffer, what waited past SHED_AFTER is shed (`sheds`), and a
        boot storm of a few hundred phones still starts within a fraction of a second.
        A dropped request costs a lookup: many more are read, so that a phone's
        request among them is less likely to be dropped by the kernel, but not
        without bound: reading everything of a storm took the whole process
        (on 2 busy cores the other services' p99 rose from 20 to 130 ms).
        """
        self._refill()
        if self.tokens < cost:
            gevent.sleep((cost - self.tokens) / REQUEST_RATE)
            # what the sleep earned, all of it: the loop's timers wake a millisecond late or more, and reset
            # to one request's worth, the drops came at the rate of the wake-ups (about 1,000 a second, not 8,000)
            self._refill()
        self.tokens -= cost

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(REQUEST_BURST, self.tokens + (now - self.tokens_at) * REQUEST_RATE)
        self.tokens_at = now

    def close(self) -> None:
        """At shutdown: end the transfers still running (their uploads are aborted); keep the record of phones."""
        self.transfers.kill(timeout=1)
        seen.save_all()

    # -- requests -----------------------------------------------------------

    def admits(self, host: str, now: float) -> float | None:
        """None when a request from `host` is read; else for how long its next requests may be dropped
        without a look (0: each is looked at), as it has not acknowledged what it was sent."""
        settings = self.runtime.settings
        self.admission.configure(settings.tftp_max_transfers, settings.tftp_max_per_client)
        address = plain_address(host)
        hearing = self.admission.hears(address, now)
        if hearing is proto.Hearing.HEARD:
            return None
        self.runtime.sensors.add("tftp_sends_withheld")
        if hearing is proto.Hearing.SPENT:
            self.ratelog.warning("withheld", address, "request dropped: what was sent to this address is not acknowledged "
                                 "(a spoofed source?); it is sent more as it acknowledges or as time passes")
            return min(MEMO_SECONDS, self.admission.refilled_in(address, now))
        self.ratelog.warning("awaiting", address, "request dropped: every transfer slot of this client awaits an "
                             "acknowledgement (a spoofed source?); one is given up to a new request after its retransmission")
        return 0.0

    def withheld(self, host: str, count: int) -> None:
        """What admits() would have counted and logged for `count` more requests of a source it just refused."""
        if count:
            self.runtime.sensors.add("tftp_sends_withheld", count)
            self.ratelog.suppressed("withheld", plain_address(host), count)

    def _send_unverified(self, send, datagram: bytes, allowance: proto.Allowance) -> None:
        """An answer to a peer that has not acknowledged anything (an ERROR): from its allowance, or not at all."""
        now = time.monotonic()
        if not allowance.permits(now):
            self.runtime.sensors.add("tftp_sends_withheld")
            return
        allowance.take(len(datagram), now)
        with contextlib.suppress(OSError):  # a full send buffer or a vanished peer: UDP answers may be lost
            send(datagram)

    def handle_request(self, datagram: bytes, local: tuple[str, int], peer, listener: TftpListener) -> None:
        """A request admits() let through: a slot first (a refusal is then one send, nothing parsed), then the request."""
        address = plain_address(peer[0])
        slot, evicted = self.admission.admit(address, time.monotonic())
        for victim in evicted:
            self._evict(victim)
        if slot is None:
            self.ratelog.warning("busy", address, "request refused: too many transfers (%d in all, %d from this client)",
                                 self.admission.active, self.admission.per_client[address])
            self._refuse(BUSY, address, peer, listener)
            return
        try:
            request = proto.parse_request(datagram)
        except proto.TftpError as exc:
            self._release(slot)
            self.ratelog.warning("bad-request", address, "refused: %s", printable(exc.message))
            self._refuse(exc.datagram(), address, peer, listener)
            return
        self.runtime.sensors.set("tftp_transfers_active", self.admission.active)
        allowance = self.admission.allowance(address, time.monotonic())
        slot.owner = self.transfers.spawn(self._transfer, request, local, peer, address, listener.sock.family, slot, allowance)

    def _refuse(self, error: bytes, address: str, peer, listener: TftpListener) -> None:
        allowance = self.admission.allowance(address, time.monotonic(), transfer=False)
        self._send_unverified(lambda d: listener.sock.sendto(d, peer), error, allowance)
        self.runtime.sensors.add("tftp_transfers_failed")

    def _evict(self, slot: proto.Slot) -> None:
        """A transfer gives its slot to a new request: an unverified one (counted as never acknowledged), or a
        slow one to a probationer whose peer answered; ended now (the slow one's peer is told why)."""
        sensors = self.runtime.sensors
        if slot.verified:
            self.ratelog.warning("slow", slot.client, "a transfer moving %d bytes a second gave its slot to a new request: verified "
                                 "transfers held every slot, and this one and its client's moved less than %d bytes a second each",
                                 slot.pace(), proto.MIN_PACE)
            sensors.add("tftp_transfers_slow_ended")
        else:
            self.ratelog.info("evicted", slot.client, "a transfer whose first packet was not acknowledged gave its slot to a new request")
            sensors.add("tftp_first_packets_unacknowledged")
        sensors.add("tftp_transfers_failed")
        if slot.owner is not None:
            slot.owner.kill(block=False)

    def _verified(self, slot: proto.Slot) -> None:
        """The peer acknowledged the first packet: a transfer on probation may take a slow one's slot."""
        for victim in self.admission.verified(slot, time.monotonic()):
            self._evict(victim)
        self.runtime.sensors.set("tftp_transfers_active", self.admission.active)

    def _release(self, slot: proto.Slot) -> None:
        self.admission.release(slot, time.monotonic())
        self.runtime.sensors.set("tftp_transfers_active", self.admission.active)

    def _transfer(self, request, local, peer, address: str, family: int, slot: proto.Slot, allowance: proto.Allowance) -> None:
        sock = machine = resource = None
        try:
            sock = self._transfer_socket(local, peer, family)
            machine, resource = self._start(request, local, address, allowance)
            slot.transfer = machine
            # the slot is given up early once only courtesy retransmissions remain (a write's dally)
            TransferDriver(sock, machine, self.segmentation, self.send_batch, lambda: self._release(slot),
                           lambda: self._verified(slot)).run()
        except proto.TftpError as exc:
            self.ratelog.warning("refused", address, "%s %s refused: %s", "WRQ" if request.write else "RRQ",
                                 printable(request.filename), printable(exc.message))
            if sock is not None:  # the error is paid for by the first packet's reservation
                self._send_unverified(sock.send, exc.datagram(), allowance)
            if not request.write:
                seen.note_fetch(self.runtime, request.filename, address, "not found" if exc.code == 1 else "refused", "tftp")
        except OSError as exc:  # the peer vanished (ICMP unreachable) or a socket of ours failed
            self.ratelog.info("ended", address, "transfer of %s ended: %s", printable(request.filename), exc)
        except Exception:
            self.log.exception("%s: transfer of %s failed", address, printable(request.filename))
            self._send_quietly(sock, proto.encode_error(0, "internal error"))
        except gevent.GreenletExit:
            # evicted (_evict). Ended here: raised on, it kept its traceback, whose frames and the greenlet
            # hold each other, a cycle only a full collection frees (80,000 objects every 1.25 s under a flood
            # of spoofed requests, collected in 93-179 ms with the loop held)
            if slot.verified and sock is not None:  # a real peer, slow: told, so that it does not wait out its retries
                self._send_quietly(sock, SLOW_ENDED)
        finally:
            slot.owner = None  # the slot and the greenlet no longer hold each other
            allowance.release(time.monotonic())  # the first packet's reservation, if nothing used it
            self._release(slot)
            self._finish(request, address, sock, machine, resource, slot)

    @staticmethod
    def _transfer_socket(local, peer, family: int):
        host, interface = plain_address(local[0]), local[1]
        if ":" not in host:  # IPv4, possibly reached through a dual-stack [::] socket
            family, peer = socket.AF_INET, (plain_address(peer[0]), peer[1])
        return transfer_socket(family, (host, 0, 0, interface) if family == socket.AF_INET6 else (host, 0), peer)

    def _start(self, request, local, address: str, allowance: proto.Allowance):
        """The machine for a request from `address` and the resource to release after it."""
        settings, limits = self.runtime.settings, self.limits
        try:
            if request.write:
                if not settings.tftp_write:
                    raise proto.AccessViolation("writing is disabled (tftp_write)")
                negotiated = proto.negotiate(request, None, limits)
                announced = int(negotiated.oack["tsize"]) if "tsize" in negotiated.oack else None
                upload = uploads.begin(settings, request.filename, address, announced, self.upload_quota.of(settings, address))
                sink = UploadSink(upload, self)
                self.ratelog.info("upload", address, "upload of %s started", printable(request.filename))
                return proto.WriteTransfer(sink, negotiated, limits, netascii=request.mode == "netascii", allowance=allowance), sink
            content = self.runtime.misses.provide(settings, request.filename, plain_address(local[0]), address,
                                                  lambda mac: seen.proven_at(self.runtime, mac, address))
        except provisioning.ProvisioningError as exc:
            raise self.tftp_error(exc) from None
        if request.mode == "netascii" and content.size > proto.MAX_NETASCII_BYTES:
            raise proto.AccessViolation(f"netascii is for text files up to {proto.MAX_NETASCII_BYTES} bytes; use octet")
        resource = source = provisioning.FileReader(content.path) if content.path else proto.BytesSource(content.data)
        if request.mode == "netascii":
            source = self._netascii(source)
        return proto.ReadTransfer(source, proto.negotiate(request, source.size, limits), limits, allowance), resource

    def _netascii(self, source) -> proto.NetasciiSource:
        """The netascii view of a source. Its counting pass (a 16 MiB file: about 20 ms) runs in turns of the
        loop, and a file's is kept (NETASCII_COUNTED files, by their version): one client asking for a large file
        in netascii again and again, and aborting each time, held the loop 17-22 ms per request."""
        version = getattr(source, "version", None)
        starts = self.netascii_counted.get(version) if version is not None else None
        if starts is None:
            starts = run_in_turns(proto.netascii_starts(source))
            if version is not None:
                self.netascii_counted[version] = starts
                if len(self.netascii_counted) > NETASCII_COUNTED:
                    self.netascii_counted.popitem(last=False)
        else:
            self.netascii_counted.move_to_end(version)
        return proto.NetasciiSource(source, starts)

    def tftp_error(self, exc: provisioning.ProvisioningError) -> proto.TftpError:
        """A refusal of greenservers.provisioning.files or .uploads as its TFTP error (counted when a sensor counts it)."""
        sensor = REFUSAL_SENSORS.get(type(exc))
        if sensor:
            self.runtime.sensors.add(sensor)
        return proto.TftpError(exc.message, exc.tftp_code)

    def _finish(self, request, address: str, sock, machine, resource, slot: proto.Slot) -> None:
        sensors = self.runtime.sensors
        done = machine is not None and machine.state is proto.State.DONE
        if not slot.evicted:  # an evicted transfer was counted when its slot was taken
            sensors.add("tftp_transfers_done" if done else "tftp_transfers_failed")
            if machine is not None and (machine.withheld or machine.unacknowledged):
                sensors.add("tftp_sends_withheld" if machine.withheld else "tftp_first_packets_unacknowledged")
        if isinstance(machine, proto.ReadTransfer):
            seen.note_fetch(self.runtime, request.filename, address, "served" if done else "failed", "tftp", answered=machine.verified)
        if isinstance(machine, proto.ReadTransfer):
            sensors.add("tftp_bytes_sent", machine.bytes_sent)
        if machine is not None and machine.failure and not machine.peer_vanished:
            self.ratelog.warning("failed", address, "transfer of %s failed: %s", printable(request.filename), printable(machine.failure))
        elif done and request.write:
            self.ratelog.info("uploaded", address, "upload of %s complete (%d bytes)", printable(request.filename),
                              machine.bytes_received)
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
        bound_host, service = self.bound.binding.host, self.service
        served = 0
        # sources admits() refused for a spent allowance -> [until when their requests are dropped without a
        # look, how many were]: at most MEMO_SECONDS, and all forgotten every MEMO_SECONDS (bounded memory)
        dropped: dict[str, list] = {}
        forget_at = 0.0
        while True:
            served += 1
            if served % YIELD_EVERY == 0:  # a socket that always has data never blocks: yield, or a storm starves every other service
                gevent.sleep(0)
            try:
                datagram, ancillary, _flags, peer = self.sock.recvmsg(MAX_REQUEST, ANCILLARY_SPACE)
                host, now = peer[0], time.monotonic()
                if now >= forget_at:
                    for source, (_until, count) in dropped.items():
                        service.withheld(source, count)
                    dropped.clear()
                    forget_at = now + MEMO_SECONDS
                memo = dropped.get(host)
                if memo is not None:
                    if now < memo[0]:
                        memo[1] += 1
                        service.pace_requests(DROP_COST)
                        continue
                    del dropped[host]
                    service.withheld(host, memo[1])
                # shed before the allowance is looked at: a look remembers the address, and thousands of shed
                # requests a second would push a spent allowance (a spoofed phone's) out of its table, full again
                if service.sheds(plain_address(host), now, waited_since(received_ns(ancillary))):
                    continue
                refused_for = service.admits(host, now)
                if refused_for is not None:
                    if refused_for > 0:
                        dropped[host] = [now + refused_for, 0]
                    service.pace_requests(DROP_COST)
                    continue
                service.pace_requests()
                local = local_address(ancillary, bound_host)
                service.handle_request(datagram, local, peer, self)
            except OSError as exc:  # e.g. a send to a vanished peer; the socket itself stays usable
                if self.sock.fileno() < 0:
                    return  # closed under us: the binding is going away
                self.service.log.debug("tftp listener %s: %s", self.bound.address, exc)
            except Exception:
                self.service.log.exception("tftp listener %s: request failed", self.bound.address)
