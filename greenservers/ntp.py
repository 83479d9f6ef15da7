"""The NTP server shell (UDP) and the rule for which time source phones are given.

`provisioned_ntp_server` is what the provisioning templates (TFTP, HTTP) and
the admin page use. The server itself follows in this module.
"""

from __future__ import annotations


def provisioned_ntp_server(settings, server_address: str) -> str:
    """The NTP server phones are told to use.

    Our own server (`server_address`, the local address the phone reached us
    on) when `ip_ntp_port` has bindings; otherwise the external `ntp_server`
    setting (may be "" when none is configured).
    """
    if settings.ip_ntp_port:
        return server_address
    return settings.ntp_server
