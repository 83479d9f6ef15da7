"""What the tests (and the benchmarks) share; no test module imports from another.

- ports: free ports, never in the kernel's ephemeral range, never twice;
- service: the real service as in production (ServiceProcess), the CLI (run_cli);
- wait: `eventually`, the one way to wait for something;
- netns: `in_network_namespace`, the one way to use a private network namespace;
- web: the web app in-process (WebFixture), the admin's credentials, CSRF tokens;
- ldap: the service with an address book (ldap_service), LDAP answers off a socket;
- ldap_wire: LDAP requests built (RFC 4515 filter strings included) and responses parsed, independently of the server;
- clock, certs, contacts, snmp: a settable clock, certificates, the contacts, SNMP messages;
- tftp_clients: the command lines of the real TFTP clients (tftp-hpa, atftp, curl);
- pebble (a real ACME authority), tftp_relay (a lossy TFTP relay), fuzz_targets (shared with bench/fuzz_long.py).

The names most tests use are importable from `support` itself.
"""

from .ldap import ldap_service
from .ports import free_port, free_udp_port
from .service import READY_LINE, REPO, ServiceProcess, run_cli
from .wait import eventually

__all__ = ["READY_LINE", "REPO", "ServiceProcess", "eventually", "free_port", "free_udp_port", "ldap_service", "run_cli"]
