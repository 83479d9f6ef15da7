"""Phone provisioning files: what a requested name means inside data_dir/tftp, and the rules of what phones are told.

Used by both TFTP (greenservers.shells.tftp) and HTTP (greenservers.web.prov), so
a phone gets the same bytes either way. A request for NAME is served from

1. the file NAME, else
2. the template NAME.j2, else
3. when NAME holds a MAC address (a run of exactly 12 hex digits, any case),
   the template named like NAME with that run replaced by ``{mac}`` and
   ``.j2`` appended (``0004F2ABCDEF.cfg`` -> ``{mac}.cfg.j2``), else
4. the stock profile of that name shipped in the package
   (greenservers.provisioning.phones.profiles): so the administrator's files always win. A
   vendor's phones that apply only the first file they get (Grandstream: cfg<mac>.xml, then
   cfg<model>.xml, then cfg.xml) are not answered a stock file while the administrator has one
   they ask for later: it would stop them before theirs.

Names are checked before the file system is asked: NUL bytes, control
characters, backslashes, absolute paths, empty, ``.``/``..`` or hidden
(dot) components, braces and names over MAX_NAME_LENGTH are refused; the
resolved path (symlinks followed) must stay inside the resolved root
(`Path.is_relative_to`) and be a regular file. Templates are never served
raw (a name ending in ``.j2`` is not found).

Templates are rendered by a sandboxed Jinja2 environment (StrictUndefined:
a misspelt variable is an error, not an empty string) with `mac`, `server`
(the address the phone reached us on), `ntp_server`, `ldap_port`,
`ldaps_port`, `ldap_base`, `ldap_user`, `ldap_password`, `http_url` and
`https_url`, and `tz` and `phonebook` (the phone time zone and address
book in each vendor's form, greenservers.provisioning.phones.profiles). A template error is logged (rate-limited) with the template
and line, and answered as an error: never half a file. A stock profile's
rendered bytes are kept (`RenderedStock`) per template, server address and
MAC for as long as the settings object is the same, up to CACHE_SECONDS:
each render cost about as much again as the lookup before it (the
administrator's templates, whose includes may change under them, are
rendered every time).

The rules of what phones are told live here too, for the templates and the
admin page alike: `provisioned_ntp_server` (this server where the NTP
server is on, else the `ntp_server` setting) and `port_for` (the binding a
client that reached us at an address reaches best; the HTTPS redirect's
port too).

Nothing under ``uploads/`` is ever served, by name or through a link, nor
reachable from a template: that is where phones' uploads land
(greenservers.provisioning.uploads), and administrators alone read them (the /uploads page).
"""

from __future__ import annotations

import logging
import os
import re
import stat
import time
import traceback
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from ..ratelog import RateLimitedLog
from .phones import profiles

log = logging.getLogger("greenservers.provisioning")
ratelog = RateLimitedLog(log)

MAX_NAME_LENGTH = 255
MAX_RENDERED_BYTES = 4 * 1024 * 1024
UPLOAD_DIR = "uploads"  # phones' uploads (greenservers.provisioning.uploads): never served
TEMPLATE_SUFFIX = ".j2"
MAC_RUN = re.compile(r"(?<![0-9A-Fa-f])[0-9A-Fa-f]{12}(?![0-9A-Fa-f])")
FORBIDDEN_CHARACTERS = re.compile(r"[\x00-\x1f\x7f\\{}]")


class ProvisioningError(Exception):
    """A refusal, with its TFTP error code and HTTP status."""

    tftp_code = 0
    http_status = 500

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class NotFound(ProvisioningError):
    tftp_code, http_status = 1, 404


class Refused(ProvisioningError):
    tftp_code, http_status = 2, 403


class TemplateFailed(ProvisioningError):
    tftp_code, http_status = 0, 500


# -- names and paths ---------------------------------------------------------


def tftp_root(settings) -> Path:
    return settings.data_path / "tftp"


def check_name(name: str) -> PurePosixPath:
    """The requested name as a relative path, or Refused saying why."""
    if not name or len(name) > MAX_NAME_LENGTH:
        raise Refused(f"name is empty or longer than {MAX_NAME_LENGTH} characters")
    if FORBIDDEN_CHARACTERS.search(name):
        raise Refused("name holds a control character, a backslash or a brace")
    if name.startswith("/"):
        raise Refused("absolute paths are not served")
    parts = name.split("/")
    if any(part == "" or part.startswith(".") for part in parts):
        raise Refused("empty, '.', '..' or hidden path components are not served")
    return PurePosixPath(*parts)


def _inside(root: Path, relative: PurePosixPath | str) -> Path | None:
    """The resolved regular file at root/relative; None if absent; Refused if it leads out."""
    try:
        real = (root / relative).resolve(strict=True)
    except (OSError, RuntimeError):  # absent, not a directory on the way, symlink loop
        return None
    if not real.is_relative_to(root):
        raise Refused("the path leads outside the TFTP root")
    if real.is_relative_to((root / UPLOAD_DIR).resolve()):
        raise Refused("uploads are not served")
    try:
        if not stat.S_ISREG(real.stat().st_mode):
            return None
    except OSError:
        return None
    return real


def _served(root: Path, relative: str) -> bool:
    """Whether a request for root/relative would be served from it."""
    try:
        return _inside(root, relative) is not None
    except Refused:
        return False


@dataclass(frozen=True)
class Found:
    """What a name resolved to: a plain file, or a template and the MAC it was chosen by."""

    name: str
    path: Path
    template: str | None = None  # template name relative to the root (or to the stock templates)
    mac: str = ""
    stock: object = None  # the phones.profiles.StockMatch of a stock profile


def lookup(settings, name: str) -> Found:
    """Resolve a requested name (see the module docstring); NotFound or Refused otherwise."""
    relative = check_name(name)
    if relative.name.endswith(TEMPLATE_SUFFIX):
        raise NotFound(f"{name}: templates are not served raw")
    if relative.parts[0] == UPLOAD_DIR:
        raise Refused("uploads are not served")
    root = tftp_root(settings).resolve()
    match = MAC_RUN.search(relative.name)
    mac = match.group(0).lower() if match else ""
    plain = _inside(root, relative)
    if plain is not None:
        return Found(name, plain)
    candidates = [str(relative) + TEMPLATE_SUFFIX]
    if match:
        generic = relative.name[: match.start()] + "{mac}" + relative.name[match.end():]
        candidates.append(str(relative.with_name(generic)) + TEMPLATE_SUFFIX)
    for candidate in candidates:
        path = _inside(root, candidate)
        if path is not None:
            return Found(name, path, candidate, mac)
    stock = profiles.stock_match(str(relative))
    if stock is not None and not (stock.vendor.first_wins and stock.steps_aside(_theirs_of_first_wins(root))):
        return Found(name, stock.path, stock.file.template, stock.mac, stock)
    raise NotFound(f"{name}: no such file or template")


RACY_NS = 2_000_000_000  # how coarse a folder's timestamp can be (FAT: 2 s; ext4 on older kernels: a jiffy)
_wall_ns = time.time_ns
_listings: dict[Path, tuple[tuple[int, int, int], int, frozenset]] = {}  # folder: (its identity, when listed, what)


def _theirs_of_first_wins(root: Path) -> frozenset:
    """The stock files of vendors whose phones apply only the first file they get (`profiles.first_wins_file`)
    that the administrator has a file or template of, one a request would be served (inside the root, regular):
    worked out once per change of the folder, so a request costs one stat. A listing taken within RACY_NS of
    the folder's timestamp is taken once more after that time: two changes in one tick leave the stamp as it
    was (a file written, then renamed)."""
    try:
        status = root.stat()
        identity = (status.st_dev, status.st_ino, status.st_mtime_ns)
        listed = _listings.get(root)
        now = _wall_ns()
        if listed is None or listed[0] != identity or (listed[1] - identity[2] < RACY_NS <= now - identity[2]):
            theirs = set()
            for name in os.listdir(root):
                stock = profiles.first_wins_file(name.removesuffix(TEMPLATE_SUFFIX))
                if stock is not None and _served(root, name):
                    theirs.add(stock)
            listed = _listings[root] = (identity, now, frozenset(theirs))
    except OSError:
        return frozenset()
    return listed[2]


# -- templates -----------------------------------------------------------------


class _RootLoader(jinja2.BaseLoader):
    """Loads templates (and their includes) through the same checks as requests."""

    def __init__(self, root: Path):
        self.root = root

    def get_source(self, environment, template):
        path = _inside(self.root, template)  # includes may name {mac} templates: not check_name
        if path is None or ".." in PurePosixPath(template).parts:
            raise jinja2.TemplateNotFound(template)
        mtime = path.stat().st_mtime
        return path.read_text(encoding="utf-8"), str(path), lambda: path.exists() and path.stat().st_mtime == mtime


_environments: dict[Path | None, SandboxedEnvironment] = {}


def _environment(root: Path | None) -> SandboxedEnvironment:
    """The administrator's templates under `root`; None: the stock profiles (the same rules, so an
    exported stock template renders the same bytes)."""
    env = _environments.get(root)
    if env is None:
        if len(_environments) > 8:  # data_dir changes are rare; keep the cache bounded anyway
            _environments.clear()
        loader = _RootLoader(root) if root is not None else jinja2.FileSystemLoader(profiles.TEMPLATES)
        env = SandboxedEnvironment(
            loader=loader, undefined=jinja2.StrictUndefined, autoescape=False,
            keep_trailing_newline=True, cache_size=200, auto_reload=True,
        )
        _environments[root] = env
    return env


def provisioned_ntp_server(settings, server_address: str) -> str:
    """The NTP server phones are told to use.

    Our own server (`server_address`, the local address the phone reached us
    on) when `ip_ntp_port` has bindings; otherwise the external `ntp_server`
    setting (may be "" when none is configured).
    """
    if settings.ip_ntp_port:
        return server_address
    return settings.ntp_server


def port_for(bindings, server: str) -> int | str:
    """The port of the binding a client that reached us at `server` reaches best: same address, else a
    wildcard, else the first ("" when there is none). Also the HTTPS redirect's port (shells.http)."""
    for binding in bindings:
        if binding.host == server:
            return binding.port
    for binding in bindings:
        if binding.is_wildcard:
            return binding.port
    return bindings[0].port if bindings else ""


def _url(scheme: str, server: str, bindings, default_port: int) -> str:
    port = port_for(bindings, server)
    if port == "":
        return ""
    host = f"[{server}]" if ":" in server else server
    return f"{scheme}://{host}" + ("" if port == default_port else f":{port}")


def template_context(settings, server: str, mac: str = "") -> dict:
    return {
        "mac": mac,
        "server": server,
        "ntp_server": provisioned_ntp_server(settings, server),
        "ldap_port": port_for(settings.ip_ldap_port, server),
        "ldaps_port": port_for(settings.ip_ldaps_port, server),
        "ldap_base": settings.ldap_base,
        "ldap_user": settings.ldap_user,
        "ldap_password": settings.ldap_password or "",
        "http_url": _url("http", server, settings.ip_http_port, 80),
        "https_url": _url("https", server, settings.ip_https_port, 443),
        **profiles.template_values(settings, server, port_for),
    }


def _error_line(exc: BaseException, filename: str) -> int | str:
    line = getattr(exc, "lineno", None)
    if line:
        return line
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if frame.filename == filename:
            return frame.lineno
    return "?"


def render(settings, found: Found, server: str) -> bytes:
    """The rendered template as UTF-8, or TemplateFailed (logged with template and line)."""
    root = None if found.stock else tftp_root(settings).resolve()
    try:
        template = _environment(root).get_template(found.template)
        pieces, total = [], 0
        for piece in template.generate(template_context(settings, server, found.mac)):
            total += len(piece)
            if total > MAX_RENDERED_BYTES:
                raise TemplateFailed(f"rendered output is over {MAX_RENDERED_BYTES} bytes")
            pieces.append(piece)
        return "".join(pieces).encode("utf-8")
    except Exception as exc:  # any error of the template's own making: a syntax error, an undefined name, a sandbox refusal...
        line = _error_line(exc, str(found.path))
        ratelog.warning("template", found.template, "line %s: %s: %s (requested as %s)", line, type(exc).__name__, exc, found.name)
        raise TemplateFailed(f"template {found.template} failed at line {line}") from None


@dataclass(frozen=True)
class Content:
    """What to send: a plain file's path, or the rendered bytes of a template."""

    found: Found
    data: bytes | None = None

    @property
    def path(self) -> Path | None:
        return None if self.found.template else self.found.path

    @property
    def media_type(self) -> str:
        """The stock profile's media type ("" for the administrator's files: named by their extension)."""
        return self.found.stock.file.media_type if self.found.stock else ""

    @property
    def size(self) -> int:
        return len(self.data) if self.data is not None else self.found.path.stat().st_size


class RenderedStock:
    """Rendered stock profiles by (template, server, MAC), for one settings object, at most
    CACHE_ENTRIES of them (the least recently used go) and none older than CACHE_SECONDS (a
    time zone's rules are read for the current year)."""

    CACHE_ENTRIES = 1024
    CACHE_SECONDS = 300.0

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.entries: OrderedDict[tuple, bytes] = OrderedDict()
        self.settings = None
        self.since = 0.0

    def get(self, settings, found: Found, server: str) -> bytes:
        now = self.clock()
        if settings is not self.settings or now - self.since > self.CACHE_SECONDS:
            self.entries.clear()
            self.settings, self.since = settings, now
        key = (found.template, server, found.mac)
        data = self.entries.get(key)
        if data is None:
            data = self.entries[key] = render(settings, found, server)
            if len(self.entries) > self.CACHE_ENTRIES:
                self.entries.popitem(last=False)
        else:
            self.entries.move_to_end(key)
        return data


rendered_stock = RenderedStock()


def provide(settings, name: str, server: str) -> Content:
    found = lookup(settings, name)
    if found.template is None:
        return Content(found)
    if found.stock:
        return Content(found, rendered_stock.get(settings, found, server))
    return Content(found, render(settings, found, server))


class FileReader:
    """A served file, the TFTP read machine's Source: read with pread (no shared file offset),
    a chunk at a time, so that a lock-step transfer makes one system call per CHUNK, not per block."""

    CHUNK = 64 * 1024

    def __init__(self, path: Path):
        self.fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        stat = os.fstat(self.fd)
        self.size = stat.st_size
        # which file, as it is now: another file, or this one written again, has another
        self.version = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
        self.chunk_offset, self.chunk = 0, b""

    def read(self, offset: int, length: int) -> bytes:
        start = offset - self.chunk_offset
        if start >= 0 and start + length <= len(self.chunk):
            return self.chunk[start:start + length]
        if length >= self.CHUNK:
            return os.pread(self.fd, length, offset)
        self.chunk_offset, self.chunk = offset, os.pread(self.fd, self.CHUNK, offset)
        return self.chunk[:length]

    def close(self) -> None:
        os.close(self.fd)
