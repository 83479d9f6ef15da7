"""A measuring stick, not a server: the least Python a lock-step TFTP read server can do per packet.

bench/tftp_bench.py runs it in the 512-byte boot storm beside greenservers
and in.tftpd, to show how fast any Python server could be on this machine.
It has no gevent, no tftpy, no options, no retransmission, no path or rate
checks and no logging: one epoll loop; per ACK one recv, a two-byte compare
and one send of a slice of the file, which is read whole into memory. If this
is slower than in.tftpd, no Python server can be faster.

    python bench/tftp_floor.py PORT ROOT    (binds 127.0.0.1:PORT; stop it by PID)
"""

from __future__ import annotations

import os
import select
import socket
import struct
import sys

BLOCK = 512
DATA_HEADER = struct.Struct("!HH")


def serve(port: int, root: str) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", port))
    listener.setblocking(False)
    poller = select.epoll()
    poller.register(listener.fileno(), select.EPOLLIN)
    files: dict[str, bytes] = {}
    transfers: dict[int, list] = {}  # fd: [socket, file, block last sent, last block]
    while True:
        for fd, _ in poller.poll():
            if fd == listener.fileno():
                start_transfers(listener, root, files, transfers, poller)
                continue
            transfer = transfers[fd]
            sock, data, block = transfer[0], transfer[1], transfer[2]
            try:
                ack = sock.recv(BLOCK)
            except OSError:
                continue
            if ack[:2] != b"\x00\x04" or (ack[2] << 8 | ack[3]) != block & 0xFFFF:
                continue
            if block == transfer[3]:
                poller.unregister(fd)
                sock.close()
                del transfers[fd]
                continue
            transfer[2] = block = block + 1
            offset = (block - 1) * BLOCK
            sock.send(DATA_HEADER.pack(3, block & 0xFFFF) + data[offset:offset + BLOCK])


def start_transfers(listener: socket.socket, root: str, files: dict, transfers: dict, poller) -> None:
    """Every waiting RRQ: a connected socket of its own (RFC 1350 §4) and the first block sent."""
    while True:
        try:
            request, peer = listener.recvfrom(BLOCK)
        except BlockingIOError:
            return
        name = request[2:].split(b"\0")[0].decode(errors="replace")
        try:
            if name not in files:
                with open(os.path.join(root, os.path.basename(name)), "rb") as file:
                    files[name] = file.read()
        except OSError:
            listener.sendto(b"\x00\x05\x00\x01not found\x00", peer)
            continue
        data = files[name]
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.connect(peer)
        sock.setblocking(False)
        transfers[sock.fileno()] = [sock, data, 1, len(data) // BLOCK + 1]
        poller.register(sock.fileno(), select.EPOLLIN)
        sock.send(DATA_HEADER.pack(3, 1) + data[:BLOCK])


if __name__ == "__main__":
    serve(int(sys.argv[1]), sys.argv[2])
