"""The one registry of services, and the interface between the worker and a service's shell.

Each service is declared once, in SERVICES: its name (the key of /healthz's
"services"), the label the Ports page shows, the binding setting that lists
its sockets, the transport of those sockets, the port `setup` writes for it
when the process may not bind below 1024, the shell class that serves it,
and whether its sockets speak TLS from the first byte. Every other table of
services is derived from here: the transports of the binding settings
(greenservers.config.settings), what the worker binds and starts, /healthz's
names (greenservers.process.runtime), the Ports page's labels, `setup`'s
unprivileged ports, and the tests' and the benchmarks' binding keys.

HTTP and HTTPS are services like the others. The shell class is named as
"module:Class" and imported by the worker only (this module imports nothing
heavy: the settings read it). Services whose entries name the same shell
class share one instance of it (HTTP and HTTPS share one connection gate;
LDAP and LDAPS one directory). For every socket the binder bound for a
service's setting, the worker calls the instance's `make_server(bound)` and
starts what it returns; a binding that goes away is stopped with
`stop_server`, and at shutdown, once every binding has stopped accepting,
`drain` lets the work in flight finish.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class ServiceSpec:
    name: str  # /healthz's key, e.g. "https"
    label: str  # how the Ports page names it, e.g. "HTTPS"
    setting: str  # the binding setting that lists its sockets, e.g. "ip_https_port"
    transport: str  # "tcp" or "udp"
    unprivileged_port: int | None  # what `setup` writes when ports below 1024 are out of reach; None: the default is above
    shell: str  # "module:Class" of the Service that serves it
    tls: bool = False  # TLS from the first byte (HTTPS, LDAPS)


SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec("http", "HTTP", "ip_http_port", "tcp", 8080, "greenservers.shells.http:HttpService"),
    ServiceSpec("https", "HTTPS", "ip_https_port", "tcp", 8443, "greenservers.shells.http:HttpService", tls=True),
    ServiceSpec("snmp", "SNMP", "ip_snmp_port", "udp", 1161, "greenservers.shells.snmp:SnmpService"),
    ServiceSpec("tftp", "TFTP", "ip_tftp_port", "udp", 1069, "greenservers.shells.tftp:TftpService"),
    ServiceSpec("ntp", "NTP", "ip_ntp_port", "udp", 1123, "greenservers.shells.ntp:NtpService"),
    ServiceSpec("ldap", "LDAP", "ip_ldap_port", "tcp", None, "greenservers.shells.ldap:LdapService"),
    ServiceSpec("ldaps", "LDAPS", "ip_ldaps_port", "tcp", None, "greenservers.shells.ldap:LdapService", tls=True),
)

BY_SETTING: dict[str, ServiceSpec] = {spec.setting: spec for spec in SERVICES}
BINDING_KEYS: tuple[str, ...] = tuple(BY_SETTING)
UNPRIVILEGED_PORTS: dict[str, str] = {spec.setting: str(spec.unprivileged_port) for spec in SERVICES if spec.unprivileged_port}


class Server(Protocol):
    def start(self) -> None: ...
    def stop(self, timeout: float | None = None) -> None: ...


class Service:
    """Base of the shells: holds the runtime and a logger named after the service."""

    name = "service"

    def __init__(self, runtime):
        self.runtime = runtime
        self.log = logging.getLogger(f"greenservers.{self.name}")

    def make_server(self, bound) -> Server:
        """The server of one bound socket (process.binder.Bound), not started yet."""
        raise NotImplementedError

    def stop_server(self, server: Server, timeout: float = 1.0) -> None:
        """Stop accepting on one binding: what it is doing gets `timeout` seconds (gevent's stop)."""
        server.stop(timeout=timeout)

    def drain(self, server: Server, timeout: float) -> None:
        """At shutdown, after every binding stopped accepting: wait up to `timeout` for work still in flight."""

    def close(self) -> None:
        """Release what the service holds besides its servers (called at shutdown)."""


def load_shell(path: str) -> type[Service]:
    """The Service class a registry entry names ("module:Class")."""
    module_name, _, class_name = path.partition(":")
    return getattr(importlib.import_module(module_name), class_name)
