"""The one shape of what a sans-IO core returns: a list, in order, of `bytes` to send and `Event`s.

A shell walks the list in order: bytes are sent, each event is acted on
where it stands (so an LDAP StartTLS wraps the socket after the answers
before it, and a failed bind's delay comes before its answer). Cores count
nothing: what became of a request is in its events (and its bytes), and the
shell counts its sensors from them.

- TFTP's transfer machines return bytes only; what became of a transfer is
  the machine's state (verified, finished, failed and why).
- SNMP's agent returns its reply, or a `Dropped` event with the verdict
  (proto.snmp.verdict_of names it either way).
- NTP's responder returns its reply, or a `Refused` event, followed by the
  kiss-o'-death when one is due (proto.ntp.verdict_of).
- LDAP's session returns answers and its events (BindFailed, Searched,
  StartTLS, Close); they take this base class with the LDAP rewrite (issue 20).
"""

from __future__ import annotations


class Event:
    """What a core tells its shell besides bytes to send; tell them apart with `isinstance(item, Event)`."""

    __slots__ = ()


Output = bytes | Event  # an item of a core's answer
