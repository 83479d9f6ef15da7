"""The key-exchange groups our TLS servers accept: elliptic curves only, set on the context's OpenSSL object.

OpenSSL 3 accepts the finite-field groups of RFC 7919 too (ffdhe2048 to
ffdhe8192), and the server computes what the client asks for: one ClientHello
offering only ffdhe8192 costs 170 ms of CPU on the event loop (ffdhe4096:
27 ms), X25519 or P-256 a few hundredths of one; the client computes nothing.
Python's ssl module has no call for the list (up to 3.13): `set_ecdh_curve`
sets a single group, so a browser whose hello carries an X25519 share would
need a HelloRetryRequest (a round trip more). So the list is set with
OpenSSL's own `SSL_CTX_ctrl(SSL_CTRL_SET_GROUPS_LIST)`, found through the
library the ssl module is linked with; the context's `SSL_CTX *` is the first
field of CPython's SSLContext object, and is used only once OpenSSL has
confirmed it (its options read through it are the context's). Where that
cannot be done, `set_ecdh_curve` is the fallback: P-256 alone, slower for
some clients, never costly for the server.
"""

from __future__ import annotations

import ctypes
import logging
import ssl
import sys

GROUPS = b"X25519:P-256:P-384"  # what browsers, phones and libldap offer first; each costs the server well under 1 ms
FALLBACK_CURVE = "prime256v1"
SSL_CTRL_SET_GROUPS_LIST = 92  # OpenSSL's ssl.h (1.1.1 and 3.x)

log = logging.getLogger(__name__)
_functions: tuple | None = None


def _openssl():
    """(SSL_CTX_ctrl, SSL_CTX_get_options) of the libssl the ssl module uses."""
    global _functions
    if _functions is None:
        library = ctypes.CDLL(ssl._ssl.__file__)  # its symbols, and those of the libssl it was linked with
        ctrl, get_options = library.SSL_CTX_ctrl, library.SSL_CTX_get_options
        ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_char_p]
        ctrl.restype = ctypes.c_long
        get_options.argtypes = [ctypes.c_void_p]
        get_options.restype = ctypes.c_uint64
        _functions = ctrl, get_options
    return _functions


def only_elliptic_curves(context: ssl.SSLContext) -> bool:
    """Make `context` accept GROUPS only; True if so, False if it fell back to P-256 alone."""
    if sys.implementation.name != "cpython" or not (3, 8) <= sys.version_info[:2] <= (3, 13):
        # the pointer is read before OpenSSL can confirm it: only where CPython's SSLContext is known to start so
        return _fall_back(context)
    try:
        ctrl, get_options = _openssl()
        pointer = ctypes.c_void_p.from_address(id(context) + object.__basicsize__).value
        if pointer and get_options(pointer) == context.options and ctrl(pointer, SSL_CTRL_SET_GROUPS_LIST, 0, GROUPS) == 1:
            return True
    except (OSError, AttributeError, ctypes.ArgumentError):
        pass
    return _fall_back(context)


def _fall_back(context: ssl.SSLContext) -> bool:
    log.warning("TLS: the key-exchange groups could not be set through OpenSSL; P-256 alone is accepted")
    context.set_ecdh_curve(FALLBACK_CURVE)
    return False
