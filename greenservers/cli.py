"""Command line: check-config, passwd, setup, phones export (python -m greenservers COMMAND)."""

from __future__ import annotations

import argparse
import getpass
import os
import sys

from .config.private import make_private_dir, tighten_install, use_private_umask
from .config.settings import DECLARATIONS, GROUPS, SettingsError
from .config.store import ConfigFileError, ConfigStore
from .passwords import hash_password
from .provisioning.phones.profiles import VENDORS
from .services import UNPRIVILEGED_PORTS


def check_config(store: ConfigStore) -> int:
    try:
        settings = store.load()
    except SettingsError as exc:
        print(f"{store.path}: invalid configuration:", file=sys.stderr)
        for name, message in exc.errors.items():
            print(f"  {name}: {message}", file=sys.stderr)
        return 1
    except ConfigFileError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    exists = "" if store.path.exists() else " (missing: all defaults)"
    print(f"# effective settings of {store.path}{exists}")
    for warning in settings.warnings:
        print(f"# warning: {warning}")
    view = settings.public_view()
    for group, title in GROUPS.items():
        print(f"\n# {title}")
        for setting in DECLARATIONS:
            if setting.group == group:
                value = view[setting.name]
                if setting.secret:
                    generated = setting.name == "ldap_password" and settings.raw[setting.name] is not None
                    shown = "(set)" if value["set"] else ("(generated at first start)" if generated else "(not set)")
                else:
                    shown = repr(value) if not isinstance(value, bool) else str(value).lower()
                print(f"{setting.name} = {shown}")
    return 0


def passwd(store: ConfigStore) -> int:
    if sys.stdin.isatty():
        first = getpass.getpass("New admin password: ")
        if getpass.getpass("Again: ") != first:
            print("the passwords differ; nothing changed", file=sys.stderr)
            return 1
    else:
        first = sys.stdin.readline().rstrip("\r\n")
    try:
        store.update({"admin_password_hash": hash_password(first)})
    except (ValueError, ConfigFileError, OSError) as exc:  # OSError: ForeignFileError, a full disk
        print(f"password not set: {exc}", file=sys.stderr)
        return 1
    print(f"admin password set in {store.path}")
    return 0


def can_bind_low_ports() -> bool:
    if os.geteuid() == 0:
        return True
    try:
        with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as f:
            if int(f.read()) <= 69:
                return True
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) & (1 << 10))  # CAP_NET_BIND_SERVICE
    except (OSError, ValueError):
        pass
    return False


def setup(store: ConfigStore) -> int:
    """First start: the configuration file, data folders and certificate."""
    from .tls.certificates import CertificateError, ensure_certificate

    if not store.path.exists():
        overrides = {} if can_bind_low_ports() else UNPRIVILEGED_PORTS
        store.create(overrides)
        print(f"greenservers: created {store.path} with every setting and its default")
        if overrides:
            print("greenservers: not root: using unprivileged ports " + ", ".join(f"{k} = {v}" for k, v in overrides.items()))
    rc = check_config(store) if "-v" in sys.argv else 0
    try:
        settings = store.ensure_generated()
        tightened = tighten_install(store.path, settings.data_path)
        if tightened.changed or tightened.not_ours:
            print(f"greenservers: {tightened.summary()}")
        make_private_dir(settings.data_path / "tftp")
        pair = ensure_certificate(settings)
    except (SettingsError, ConfigFileError, CertificateError, OSError) as exc:
        print(f"greenservers: {exc}", file=sys.stderr)
        return 1
    print(f"greenservers: data in {settings.data_path}; TLS certificate {pair.cert_path}")
    if not settings.admin_password_hash and sys.stdin.isatty():
        # first start at a terminal: ask here, so a newcomer needs no third command
        print("greenservers: no admin password is set yet (user 'admin'); choose one now, or press Enter to skip")
        try:
            first = getpass.getpass("New admin password: ")
            again = getpass.getpass("Again: ") if first else ""
        except (EOFError, KeyboardInterrupt):
            first = again = ""
        if first and again == first:
            store.update({"admin_password_hash": hash_password(first)})
            print("greenservers: admin password set")
        else:
            print("greenservers: skipped; set it later with: python -m greenservers passwd")
    return rc


def phones_export(store: ConfigStore, vendor: str | None) -> int:
    """Write the stock profiles into data_dir/tftp/ as templates to customise; existing files are kept."""
    from .config.store import atomic_write
    from .provisioning.files import tftp_root
    from .provisioning.phones.profiles import export_plan

    try:
        settings = store.load()
    except (SettingsError, ConfigFileError) as exc:
        print(f"greenservers: {exc}", file=sys.stderr)
        return 1
    root = tftp_root(settings)
    make_private_dir(root)
    written = kept = 0
    for name, source in export_plan(vendor):
        target = root / name
        if os.path.lexists(target):
            print(f"kept     {target} (exists)")
            kept += 1
            continue
        atomic_write(target, source.read_bytes())
        print(f"written  {target}")
        written += 1
    print(f"{written} template(s) written, {kept} kept; they are served instead of the stock profiles from now on")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m greenservers")
    parser.add_argument("--config", help="configuration file (default: $GREENSERVERS_CONFIG or ./greenservers.toml)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("check-config", help="validate the file and print the effective settings")
    sub.add_parser("passwd", help="set the admin password (read from standard input)")
    sub.add_parser("setup", help="first start: create the file, data folders and certificate")
    phones = sub.add_parser("phones", help="the stock phone profiles").add_subparsers(dest="action", required=True)
    export = phones.add_parser("export", help="write the stock profiles into data_dir/tftp/ as templates to customise")
    export.add_argument("vendor", nargs="?", choices=[v.key for v in VENDORS], help="one vendor (default: all)")
    args = parser.parse_args(argv)
    use_private_umask()
    store = ConfigStore(args.config)
    if args.command == "phones":
        return phones_export(store, args.vendor)
    return {"check-config": check_config, "passwd": passwd, "setup": setup}[args.command](store)


if __name__ == "__main__":
    sys.exit(main())
