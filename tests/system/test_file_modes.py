"""File modes and owners: data and secrets private to the service user (0600, folders 0700).

The real service is started with the permissive umask 022 and must still make
every file 0600 and every folder 0700: at its first start and after each kind
of write (the API, the audit log, the address book and its -wal/-shm, the
certificate upload, a TFTP upload, `passwd`). An existing install with
readable files is tightened at start, without following a symlink out.
Commands run as root keep the owner of a file that belongs to the service
user; run as another user, they refuse and name the user to run as.
"""

from __future__ import annotations

import io
import os
import re
import select
import signal
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import tomlkit
from support import ServiceProcess, free_port, free_udp_port, run_cli as cli
from support.certs import make_cert
from support.files import assert_private, modes_under
from support.tftp_clients import tftp_hpa
from support.web import PASSWORD, PASSWORD_HASH, csrf_of

from greenservers.passwords import verify_password

NOBODY = 65534  # uid and gid of Debian's "nobody" / "nogroup"


@pytest.fixture
def started(tmp_path):
    svc = ServiceProcess(tmp_path / "svc", {
        "ip_http_port": f"127.0.0.1:{free_port()}",
        "ip_https_port": f"127.0.0.1:{free_port()}",
        "ip_tftp_port": f"127.0.0.1:{free_udp_port()}",
        "tftp_write": True,
        "admin_password_hash": PASSWORD_HASH,
    }, umask=0o022)
    svc.config_path.chmod(0o644)  # as a hand-made file would be
    svc.start()
    yield svc
    svc.stop()


def _upload_certificate(svc) -> None:
    """Log in with the form and upload a certificate on the Ports page, as a browser does."""
    cert, key = make_cert()
    ca = str(svc.cert_path)  # per request: a session's own `verify` yields to REQUESTS_CA_BUNDLE
    with requests.Session() as web:
        login = web.get(svc.url("/login", scheme="https"), verify=ca, timeout=10)
        web.post(svc.url("/login", scheme="https"), verify=ca, timeout=10,
                 data={"csrf_token": csrf_of(login.text), "username": "admin", "password": PASSWORD})
        page = web.get(svc.url("/settings/ports", scheme="https"), verify=ca, timeout=10)
        answer = web.post(svc.url("/settings/ports/certificate", scheme="https"), verify=ca, timeout=10,
                          data={"csrf_token": csrf_of(page.text)}, files={"cert_file": ("c.pem", cert), "key_file": ("k.pem", key)},
                          allow_redirects=False)
    assert answer.status_code == 303, answer.text[-500:]  # installed: new connections now use the uploaded certificate


@pytest.mark.real_client
def test_fresh_start_and_every_kind_of_write_leave_only_private_files(started, tmp_path):
    svc = started
    data = svc.directory / "data"
    first = assert_private(svc.config_path, data)
    assert {"tls/selfsigned.key", "tls/selfsigned.crt", "session.key"} <= {
        str(Path(p).relative_to(data)) for p in first if p.startswith(f"{data}/")
    }

    https, auth = svc.url("", scheme="https"), ("admin", PASSWORD)
    answer = requests.put(https + "/api/settings/ports", json={"http_max_conn": 77}, auth=auth, verify=str(svc.cert_path), timeout=10)
    assert answer.status_code == 200, answer.text  # the configuration file rewritten, an audit entry
    answer = requests.post(https + "/api/addressbook", json={"display_name": "Private Person", "work": "123"}, auth=auth,
                           verify=str(svc.cert_path), timeout=10)
    assert answer.status_code in (200, 201), answer.text  # SQLite with its -wal and -shm
    _upload_certificate(svc)
    log = tmp_path / "phone.log"
    log.write_bytes(b"boot ok\n")
    tftp = subprocess.run(tftp_hpa("127.0.0.1", svc.port("ip_tftp_port"), "put", log, "phone.log"),
                          capture_output=True, text=True, timeout=30)
    assert tftp.stdout + tftp.stderr == ""
    result = cli(["passwd"], svc.config_path, stdin="new password 1\n")
    assert result.returncode == 0, result.stderr

    after = assert_private(svc.config_path, data)
    written = {str(Path(p).relative_to(data)) for p in after if p.startswith(f"{data}/")}
    for expected in ("audit.log", "addressbook.sqlite3", "addressbook.sqlite3-wal", "addressbook.sqlite3-shm",
                     "tftp/uploads", "tftp/uploads/phone.log"):
        assert expected in written, sorted(written)
    assert any(re.fullmatch(r"tls/uploaded-\d+T\d+\.key", name) for name in written), sorted(written)


@pytest.mark.real_client
def test_an_existing_install_is_made_private_at_start_without_following_links(tmp_path):
    svc = ServiceProcess(tmp_path / "old", {"ip_http_port": f"127.0.0.1:{free_port()}"}, umask=0o022)
    data = svc.directory / "data"
    (data / "tftp" / "phones").mkdir(parents=True)
    (data / "tftp" / "phones" / "001122aabbcc.cfg").write_text("cfg")
    with sqlite3.connect(data / "addressbook.sqlite3") as db:
        db.execute("CREATE TABLE t (x)")
    (data / "audit.log").write_text("{}\n")
    (data / "audit.log.1").write_text("{}\n")
    outside = tmp_path / "elsewhere.txt"
    outside.write_text("not ours")
    (data / "tftp" / "link.txt").symlink_to(outside)
    (data / "tftp" / "linked-folder").symlink_to(tmp_path)
    for path in [svc.config_path, outside, *data.rglob("*")]:
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)
    data.chmod(0o755)
    tmp_path.chmod(0o755)
    svc.start()
    try:
        line = svc.wait_for_log("file(s) and folder(s) private")
    finally:
        svc.stop()
    links = {str(data / "tftp" / "link.txt"), str(data / "tftp" / "linked-folder")}
    found = modes_under(svc.config_path, data)
    loose = {p: m for p, m in found.items() if p not in links and m != ("0o700" if os.path.isdir(p) else "0o600")}
    assert not loose, loose
    assert oct(stat.S_IMODE(outside.stat().st_mode)) == "0o644" and oct(stat.S_IMODE(tmp_path.stat().st_mode)) == "0o755"
    assert re.search(r"made [1-9]\d* file\(s\)", line), line


# -- owners ----------------------------------------------------------------------------------


@pytest.fixture
def as_root():
    assert os.geteuid() == 0, "this test changes owners: run it as root (./run-tests does in CI)"


def test_passwd_as_root_keeps_the_owner_of_a_file_that_belongs_to_the_service_user(as_root, tmp_path):
    config = tmp_path / "greenservers.toml"
    config.write_text('ip_http_port = "8080"\n')
    os.chown(config, NOBODY, NOBODY)
    result = cli(["passwd"], config, stdin="owner kept 1\n")
    assert result.returncode == 0, result.stderr
    info = config.stat()
    assert (info.st_uid, info.st_gid, oct(stat.S_IMODE(info.st_mode))) == (NOBODY, NOBODY, "0o600")
    assert verify_password("owner kept 1", tomlkit.parse(config.read_text())["admin_password_hash"])
    assert [p.name for p in tmp_path.iterdir()] == ["greenservers.toml"]  # no temporary file left


def test_setup_as_root_gives_what_it_makes_the_owner_of_its_folder(as_root, tmp_path):
    home = tmp_path / "state"
    home.mkdir(mode=0o700)
    os.chown(home, NOBODY, NOBODY)
    result = cli(["setup"], home / "greenservers.toml")
    assert result.returncode == 0, result.stderr
    made = list(home.rglob("*"))
    assert {p.name for p in made} >= {"greenservers.toml", "data", "tftp", "tls", "selfsigned.key", "selfsigned.crt"}
    assert {(p.stat().st_uid, p.stat().st_gid) for p in made} == {(NOBODY, NOBODY)}
    assert_private(home)


def test_passwd_as_another_user_refuses_to_take_the_file_and_names_its_owner(as_root, open_tmp):
    """A user who may write in the folder could rename a new file over root's: it refuses instead."""
    from greenservers.cli import main

    folder = open_tmp / "shared"
    folder.mkdir()
    folder.chmod(0o777)
    config = folder / "greenservers.toml"
    config.write_text('ip_http_port = "8080"\n')
    config.chmod(0o644)
    before = config.read_bytes()
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child becomes nobody and runs the command as that user would
        try:
            os.close(reader)
            os.setgroups([])
            os.setresgid(NOBODY, NOBODY, NOBODY)
            os.setresuid(NOBODY, NOBODY, NOBODY)
            sys.stdin, sys.stderr, sys.stdout = io.StringIO("stolen 1\n"), io.StringIO(), io.StringIO()
            code = main(["--config", str(config), "passwd"])
            os.write(writer, f"{code}\n{sys.stderr.getvalue()}".encode())
        finally:
            os._exit(0)
    os.close(writer)
    with os.fdopen(reader) as pipe:
        if not select.select([pipe], [], [], 60)[0]:
            os.kill(pid, signal.SIGKILL)
        code, _, message = pipe.read().partition("\n")
    os.waitpid(pid, 0)
    assert code == "1", message
    assert "belongs to user root; run this as root" in message, message
    assert config.read_bytes() == before and config.stat().st_uid == 0
    assert [p.name for p in folder.iterdir()] == ["greenservers.toml"]

