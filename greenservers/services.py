"""The plug-in interface between the worker and the UDP/TCP services.

A service owns one or more binding settings. For every socket the binder
bound for those settings, the worker calls `make_server(bound)` and starts
what it returns; removed bindings are stopped with `stop(timeout)`. The
registry SERVICES maps a binding setting to the class that serves it.
"""

from __future__ import annotations

import importlib
import logging
from typing import Protocol

from .process.binder import Bound

# binding setting -> "module:Class"; a setting absent here is not served yet
SERVICES: dict[str, str] = {
    "ip_ldap_port": "greenservers.ldap:LdapService",
    "ip_ldaps_port": "greenservers.ldap:LdapService",
    "ip_ntp_port": "greenservers.shells.ntp:NtpService",
    "ip_snmp_port": "greenservers.shells.snmp:SnmpService",
    "ip_tftp_port": "greenservers.shells.tftp:TftpService",
}


class Server(Protocol):
    def start(self) -> None: ...
    def stop(self, timeout: float | None = None) -> None: ...


class Service:
    """Base of the services: holds the runtime and a logger named after the service."""

    name = "service"

    def __init__(self, runtime):
        self.runtime = runtime
        self.log = logging.getLogger(f"greenservers.{self.name}")

    def make_server(self, bound: Bound) -> Server:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the service holds besides its servers (called at shutdown)."""


def load_service_class(path: str):
    module_name, _, class_name = path.partition(":")
    return getattr(importlib.import_module(module_name), class_name)
