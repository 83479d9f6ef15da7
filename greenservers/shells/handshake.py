"""A server's TLS handshake on the event loop: one deadline for the whole of it, and its steps in a WorkLine.

The handshake runs on the loop, a step at a time: a step that computes
(the ServerHello's key exchange and signature: 0.1-0.4 ms with our keys) runs
when the client's bytes are there. A hundred clients' hellos arriving at once
were a hundred such steps between two polls of the loop (45-50 ms held with an
RSA key, 18 ms with ECDSA; NTP's answers waited as long), so each step here
asks the line first (shells.loop's WorkLine): past its budget of steps since
the loop's last poll, it waits in line, one per turn.

The deadline is for the whole handshake: a socket timeout restarts at every
byte, so a client dripping one byte every few seconds held its connection
(and its slot) for as long as it liked.
"""

from __future__ import annotations

import ssl
import time

from gevent.socket import wait_read, wait_write

from .loop import WorkLine


class HandshakeTimeout(TimeoutError):
    """The client did not finish its TLS handshake in time."""


def handshake(tls_sock, line: WorkLine, seconds: float) -> None:
    """Complete the server side of `tls_sock`'s handshake (a gevent SSLSocket made with
    do_handshake_on_connect=False) within `seconds`, each step in `line`; its timeout is 0 afterwards."""
    deadline = time.monotonic() + seconds
    late = f"TLS handshake not finished in {seconds:g} s"
    tls_sock.settimeout(0.0)  # a step that needs the client's bytes raises, and is waited for here
    while True:
        line.wait_for_turn()
        started = time.perf_counter()
        try:
            tls_sock.do_handshake()
            return
        except ssl.SSLWantReadError:
            wait = wait_read
        except ssl.SSLWantWriteError:
            wait = wait_write
        finally:
            line.spent(time.perf_counter() - started)
        left = deadline - time.monotonic()
        if left <= 0:
            raise HandshakeTimeout(late)
        wait(tls_sock.fileno(), timeout=left, timeout_exc=HandshakeTimeout(late))
