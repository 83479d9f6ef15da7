"""python -m greenservers check-config / passwd / setup."""

import os
import subprocess
import sys

import tomlkit
from support import REPO, eventually, run_cli

from greenservers.passwords import verify_password

run = run_cli


def test_check_config_prints_effective_settings_without_secrets(tmp_path):
    config = tmp_path / "g.toml"
    config.write_text('ip_http_port = "8080"\nsnmp_community = "topsecret"\n')
    result = run(["check-config"], config)
    assert result.returncode == 0, result.stderr
    assert "ip_http_port = '8080'" in result.stdout and "http_max_conn = 1000" in result.stdout
    assert "snmp_community = (set)" in result.stdout and "topsecret" not in result.stdout


def test_check_config_gives_every_reason_and_exit_1(tmp_path):
    config = tmp_path / "g.toml"
    config.write_text('ip_http_port = "80 x"\nhttp_max_conn = -3\nsnmp_trusted = "nms.local"\n')
    result = run(["check-config"], config)
    assert result.returncode == 1
    for expected in ("ip_http_port: 'x'", "http_max_conn: -3 is out of range", "snmp_trusted: 'nms.local'"):
        assert expected in result.stderr


def test_check_config_reports_broken_toml(tmp_path):
    config = tmp_path / "g.toml"
    config.write_text("ip_http_port = \n")
    result = run(["check-config"], config)
    assert result.returncode == 1 and "not valid TOML" in result.stderr


def test_passwd_stores_only_a_salted_hash(tmp_path):
    config = tmp_path / "g.toml"
    config.write_text("# keep me\n")
    result = run(["passwd"], config, stdin="correct horse\n")
    assert result.returncode == 0, result.stderr
    text = config.read_text()
    stored = tomlkit.parse(text)["admin_password_hash"]
    assert "correct horse" not in text and text.startswith("# keep me")
    assert verify_password("correct horse", stored) and not verify_password("wrong", stored)
    assert run(["passwd"], config, stdin="correct horse\n").returncode == 0
    assert tomlkit.parse(config.read_text())["admin_password_hash"] != stored  # new salt


def test_setup_as_ordinary_user_writes_unprivileged_ports(tmp_path):
    config = tmp_path / "g.toml"
    script = "import greenservers.cli as m; m.can_bind_low_ports = lambda: False; raise SystemExit(m.main(['setup']))"
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                            env=dict(os.environ, GREENSERVERS_CONFIG=str(config)), timeout=60)
    assert result.returncode == 0, result.stderr
    document = tomlkit.parse(config.read_text())
    assert (
        document["ip_http_port"],
        document["ip_https_port"],
        document["ip_snmp_port"],
        document["ip_tftp_port"],
        document["ip_ntp_port"],
    ) == ("8080", "8443", "1161", "1069", "1123")
    assert "unprivileged ports" in result.stdout
    assert (tmp_path / "data" / "tls" / "selfsigned.crt").exists() and (tmp_path / "data" / "tftp").is_dir()


def test_setup_at_a_terminal_asks_for_the_admin_password(tmp_path):
    """./serve's first start at a terminal sets the admin password: no third command needed."""
    import pty
    import select

    config = tmp_path / "g.toml"
    pid, fd = pty.fork()
    if pid == 0:  # the child: setup on a terminal
        os.chdir(REPO)
        os.environ["GREENSERVERS_CONFIG"] = str(config)
        os.execv(sys.executable, [sys.executable, "-m", "greenservers", "setup"])
    screen = b""

    def read_until(text: bytes):
        def shown() -> bool:
            nonlocal screen
            if select.select([fd], [], [], 1)[0]:
                try:
                    screen += os.read(fd, 4096)
                except OSError:  # the command has ended: what it wrote is all there is
                    assert text in screen, screen
            return text in screen

        eventually(shown, 60, what=lambda: repr(screen), retry_on=())

    read_until(b"New admin password: ")
    os.write(fd, b"first-pw-1\n")
    read_until(b"Again: ")
    os.write(fd, b"first-pw-1\n")
    read_until(b"admin password set")
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0 and b"first-pw-1" not in screen
    assert verify_password("first-pw-1", tomlkit.parse(config.read_text())["admin_password_hash"])


def test_phones_export_writes_templates_that_render_the_stock_bytes(tmp_path):
    from greenservers.config.settings import Settings
    from greenservers.provisioning import files as provisioning
    from greenservers.provisioning.phones import profiles

    config = tmp_path / "g.toml"
    config.write_text('data_dir = "data"\nldap_password = "pw-1"\nphone_timezone = "Europe/Berlin"\n')
    settings = Settings.from_raw({"data_dir": "data", "ldap_password": "pw-1", "phone_timezone": "Europe/Berlin"}, tmp_path)
    names = ["y000000000000.boot", "001565abcdef.boot", "y000000000066.cfg", "snomD785.htm", "000000000000.cfg", "greenservers-poly.cfg",
             "0004f2abcdef-phone.cfg", "cfg000b82abcdef.xml", "cfggxp2170.xml", "cfg.xml", "F0V00X600000.cfg", "spa504G.cfg",
             "ConfigCommon.cfg", "ConfigKX-HDV130.cfg", "7c2f80abcdef.xml"]
    stock = {name: provisioning.provide(settings, name, "192.0.2.1").data for name in names}
    (tmp_path / "data" / "tftp").mkdir(parents=True)
    (tmp_path / "data" / "tftp" / "cfg.xml.j2").write_text("mine\n")
    result = run(["phones", "export"], config)
    assert result.returncode == 0, result.stderr
    assert "kept" in result.stdout and "cfg.xml.j2 (exists)" in result.stdout
    assert (tmp_path / "data" / "tftp" / "cfg.xml.j2").read_text() == "mine\n"
    assert (tmp_path / "data" / "tftp" / "snomD785.htm.j2").stat().st_mode & 0o777 == 0o600
    for name in names:
        content = provisioning.provide(settings, name, "192.0.2.1")
        if name == "cfg.xml":
            assert content.data == b"mine\n"
            continue
        assert content.found.stock is None, name  # now the administrator's template
        assert content.data == stock[name], name
    assert len(list((tmp_path / "data" / "tftp").glob("*.j2"))) == len(profiles.export_plan())


def test_phones_export_one_vendor_and_a_wrong_one(tmp_path):
    config = tmp_path / "g.toml"
    config.write_text('data_dir = "data"\n')
    result = run(["phones", "export", "cisco"], config)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "data" / "tftp").iterdir())[0] == "spa301.cfg.j2"
    assert all(p.name.startswith("spa") for p in (tmp_path / "data" / "tftp").iterdir())
    result = run(["phones", "export", "acme"], config)
    assert result.returncode == 2 and "invalid choice: 'acme'" in result.stderr
