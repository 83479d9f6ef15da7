"""Command lines of the real TFTP clients the tests run: tftp-hpa, atftp and curl, each built one way.

Each returns an argv list for subprocess.run; `host` is an address literal
(IPv6 without brackets), `port` the service's TFTP port.
"""

from __future__ import annotations


def url_host(host: str) -> str:
    """The host as a URL writes it: an IPv6 literal in brackets."""
    return f"[{host}]" if ":" in host else host


def tftp_hpa(host: str, port: int, verb: str, *files: str, mode: str = "binary") -> list[str]:
    """tftp-hpa of the host's address family: `verb` is "get" (remote, local) or "put" (local, remote)."""
    return ["tftp", "-6" if ":" in host else "-4", "-m", mode, host, str(port), "-c", verb, *map(str, files)]


def atftp_get(host: str, port: int, name: str, out: str, *options: str) -> list[str]:
    """atftp fetching `name` into `out`, asking for each option ("blksize 1428")."""
    asked = [word for option in options for word in ("--option", option)]
    return ["atftp", "-g", "-r", name, "-l", str(out), *asked, host, str(port)]


def atftp_put(host: str, port: int, local: str, name: str) -> list[str]:
    return ["atftp", "-p", "-l", str(local), "-r", name, host, str(port)]


def curl_tftp(host: str, port: int, name: str, *arguments: str) -> list[str]:
    """curl on tftp://host:port/name (no URL globbing, errors shown), with `arguments` ("-o", out; "-T", local)."""
    return ["curl", "-sS", "-g", *map(str, arguments), f"tftp://{url_host(host)}:{port}/{name}"]
