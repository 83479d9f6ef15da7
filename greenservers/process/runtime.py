"""Process-wide state shared by the web application and every server.

One Runtime per process (workers = 1): the current settings (replaced whole
on a change, so a reader never sees half of one), the sensors, the TLS
context, the ACME manager, the web application, and the state of each binding. Servers read `runtime.settings` at
the moment they need a value, which is how changes that need no rebind
apply without a restart.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..config.settings import Settings, SettingsError
from ..config.store import ConfigStore
from ..provisioning.misses import MissBudget
from ..sensors import SENSORS, SensorRegistry
from ..services import SERVICES
from .binder import BindError
from .offload import run_off_loop


@dataclass
class BindingState:
    address: str
    state: str  # "serving", "not implemented", or the error that kept it from binding


@dataclass
class ChangeResult:
    settings: Settings
    changed: list[str]
    needs_restart: list[str] = field(default_factory=list)


class Runtime:
    def __init__(self, store: ConfigStore, settings: Settings | None = None, sensors: SensorRegistry = SENSORS):
        self.store = store
        self.settings = settings if settings is not None else store.load()
        self.sensors = sensors
        self.tls = None  # TLSContextHolder, set by the worker
        self.acme = None  # greenservers.tls.acme.AcmeManager, set by the worker
        self.web_app = None  # the WSGI application the HTTP servers serve, set by the worker...
        self.access_log = None  # ...and gunicorn's log, which writes their access log
        self.bindings: dict[str, list[BindingState]] = {}
        self.started = time.time()
        self.pending_restart: set[str] = set()
        # set by the worker: rebinder(new) binds what `new` adds and returns an undo; raises BindError
        self.rebinder: Callable[[Settings], Callable[[], None]] | None = None
        self.binding_errors: dict[str, str] = {}  # a refused SIGHUP: setting -> why
        self.misses = MissBudget()  # absent provisioning files asked for, per address: TFTP's and /prov/'s together
        self._lock = threading.RLock()

    def apply(self, new: Settings) -> list[str]:
        """Make `new` the current settings; returns the names that changed."""
        old, self.settings = self.settings, new
        return old.changed_names(new)

    def update(self, changes: dict[str, Any]) -> ChangeResult:
        """Validate, rebind, write and apply `changes`, all or nothing.

        Raises SettingsError (a bad value, or a certificate that cannot be used)
        or BindError (a new binding cannot be bound); then nothing changed: the
        old bindings serve on and the file keeps its content.
        """
        with self._lock:
            proposed = self.settings.with_changes(changes)
            self._check_certificate(proposed)
            undo = self._rebind(proposed)
            try:
                written = run_off_loop(self.store.update, changes)  # waits for another writer's lock; fsyncs
            except BaseException:
                undo()
                raise
            return self._applied(written)

    def reload_from_file(self) -> ChangeResult:
        """Re-read the file (SIGHUP); an invalid file or a failed bind raises and changes nothing."""
        with self._lock:
            new = self.store.load()
            self._check_certificate(new)
            try:
                self._rebind(new)
            except Exception as exc:
                # public on /healthz: the binder's own words (setting, address, the system's reason), nothing else
                reason = str(exc) if isinstance(exc, BindError) else "could not be bound (the log says why)"
                self.binding_errors = {getattr(exc, "setting", "?"): reason}
                raise
            return self._applied(new, reload_certificate=True)

    def _check_certificate(self, proposed: Settings) -> None:
        from ..tls.certificates import CertificateError, check_ca_bundle, ensure_certificate

        if proposed.acme_ca_bundle and proposed.acme_ca_bundle != self.settings.acme_ca_bundle:
            try:
                check_ca_bundle(proposed.resolve(proposed.acme_ca_bundle))
            except CertificateError as exc:
                raise SettingsError({"acme_ca_bundle": str(exc)}) from None
        if self.tls is None:
            return
        if proposed.certificate_source == self.settings.certificate_source:
            return
        try:
            run_off_loop(ensure_certificate, proposed)  # a custom RSA key's check alone takes 40 ms
        except CertificateError as exc:
            raise SettingsError({"tls_cert": str(exc)}) from None

    def _rebind(self, proposed: Settings) -> Callable[[], None]:
        if self.rebinder is not None and self.settings.changed_bindings(proposed):
            return self.rebinder(proposed)
        return lambda: None

    def _applied(self, new: Settings, reload_certificate: bool = False) -> ChangeResult:
        old = self.settings
        cert_changed = new.certificate_source != old.certificate_source
        pending = old.changed_bindings(new) if self.rebinder is None else []
        changed = self.apply(new)
        self.binding_errors = {}
        if self.tls is not None and (cert_changed or reload_certificate):
            from ..tls.certificates import ensure_certificate

            self.tls.replace(run_off_loop(ensure_certificate, new))
        if self.acme is not None and any(name.startswith("acme_") or name == "data_dir" for name in changed):
            self.acme.reconfigure()
        self.pending_restart.update(pending)
        return ChangeResult(new, changed, pending)

    def health(self, detail: bool = False) -> dict[str, Any]:
        """Each service's bindings and the certificate: public (/healthz), so errors are only named by
        category; `detail` (the Ports page, behind the login) gives them in full."""
        services: dict[str, Any] = {}
        for spec in SERVICES:
            states = self.bindings.get(spec.setting)
            if states is None:
                states = [BindingState(b.display, "not implemented yet") for b in getattr(self.settings, spec.setting)]
            if spec.setting in self.binding_errors:
                states = states + [BindingState("(new)", self.binding_errors[spec.setting])]
            services[spec.name] = {
                "setting": spec.setting,
                "on": bool(states),
                "bindings": [{"address": s.address, "state": s.state} for s in states],
            }
        return {
            "status": "ok",
            "uptime_seconds": int(time.time() - self.started),
            "services": services,
            "certificate": self.certificate_view(detail),
            "restart_needed_for": sorted(self.pending_restart),
        }

    def certificate_view(self, detail: bool = False) -> dict[str, Any] | None:
        """The served certificate and ACME's state, as /healthz and (with `detail`, errors in full) the Ports page show them."""
        pair = getattr(self.tls, "pair", None)
        if pair is None:
            return None
        view: dict[str, Any] = {
            "source": pair.source,
            "days_left": self.sensors.value("tls_certificate_days_left"),
            "chains": [{"kind": c.kind, "subject": c.subject, "issuer": c.issuer, "names": list(c.names), "serial": f"{c.serial:x}",
                        "not_before": c.not_before.isoformat(), "not_after": c.not_after.isoformat()} for c in pair.chains],
        }
        if self.acme is not None:
            view["acme"] = self.acme.view(detail)
        return view


_current: Runtime | None = None


def current() -> Runtime:
    """The process's runtime; made from the configuration file on first use."""
    global _current
    if _current is None:
        _current = Runtime(ConfigStore())
    return _current


def install(runtime: Runtime) -> Runtime:
    global _current
    _current = runtime
    return runtime
