"""Phones' uploads against the running service: real clients upload (tftp-hpa and atftp `put`, curl -T);
nothing serves an upload back (TFTP, /prov/); the admin page lists it and downloads it as an attachment;
the upload budget and the per-client quota refuse as "disk full" and are counted.

A raw uploader (lock-step WRQ from a chosen loopback address) stands for phones at other addresses.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess

import pytest
import requests
from support import ServiceProcess, free_port, free_udp_port
from support.tftp_clients import atftp_put, curl_tftp, tftp_hpa
from support.web import HTML, PASSWORD, PASSWORD_HASH, csrf_of

from greenservers.provisioning import uploads

AUTH = ("admin", PASSWORD)
KIB = 1024


def start(directory, **settings) -> ServiceProcess:
    port = free_udp_port()
    svc = ServiceProcess(directory, {
        "ip_tftp_port": f"127.0.0.1:{port} [::1]:{port}", "ip_http_port": f"127.0.0.1:{free_port()}",
        "admin_password_hash": PASSWORD_HASH, "tftp_write": True, **settings,
    })
    (svc.directory / "data" / "tftp").mkdir(parents=True)
    (svc.directory / "data" / "tftp" / "served.cfg").write_text("served\n")
    return svc.start()


@pytest.fixture(scope="module")
def tftp(tmp_path_factory):
    svc = start(tmp_path_factory.mktemp("uploads"))
    yield svc
    svc.stop()


def sensors(svc) -> dict[str, int]:
    answer = requests.get(svc.url("/api/sensors"), auth=AUTH, timeout=10)
    return {row["name"]: row["value"] for row in answer.json()["sensors"]}


def raw_upload(svc, name: str, data: bytes, source: str = "127.0.0.1") -> bytes:
    """A lock-step WRQ of `data` from `source`; the server's last answer (the final ACK, or an ERROR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        sock.settimeout(5)
        sock.sendto(b"\x00\x02" + name.encode() + b"\x00octet\x00", ("127.0.0.1", svc.port("ip_tftp_port")))
        answer, tid = sock.recvfrom(600)
        block = 0
        while answer[:2] == b"\x00\x04" and block * 512 <= len(data):
            block += 1
            sock.sendto(struct.pack("!HH", 3, block % 65536) + data[(block - 1) * 512:block * 512], tid)
            answer = sock.recv(600)
        return answer


def tftp_error(answer: bytes) -> tuple[int, str]:
    assert answer[:2] == b"\x00\x05", answer[:40]
    return struct.unpack("!H", answer[2:4])[0], answer[4:-1].decode()


UPLOADERS = {
    "tftp-hpa": lambda host, port, local, name: tftp_hpa(host, port, "put", local, name),
    "atftp": atftp_put,
    "curl": lambda host, port, local, name: curl_tftp(host, port, name, "-T", local),
}


@pytest.mark.real_client
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
@pytest.mark.parametrize("client", sorted(UPLOADERS))
def test_real_clients_upload_and_nothing_serves_the_upload_back(tftp, tmp_path, client, host):
    name = f"phish-{client}-{'v6' if ':' in host else 'v4'}.html"
    content = b"<html><meta http-equiv=refresh content='0;url=https://evil.example'></html>\n" + os.urandom(3000)
    (tmp_path / "local").write_bytes(content)
    port = tftp.port("ip_tftp_port")
    result = subprocess.run(UPLOADERS[client](host, port, str(tmp_path / "local"), name), capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tftp.directory / "data" / "tftp" / "uploads" / name).read_bytes() == content
    # TFTP: refused like any forbidden file, by the clients and by a raw request
    fetched = subprocess.run(tftp_hpa("127.0.0.1", port, "get", f"uploads/{name}", tmp_path / "back"),
                             capture_output=True, text=True, timeout=30)
    assert "not served" in fetched.stdout + fetched.stderr
    assert not (tmp_path / "back").exists() or (tmp_path / "back").read_bytes() == b""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(b"\x00\x01uploads/" + name.encode() + b"\x00octet\x00", ("127.0.0.1", port))
        assert tftp_error(sock.recv(600)) == (2, "uploads are not served")
    # HTTP: /prov/ refuses it, never as a page
    answer = requests.get(tftp.url(f"/prov/uploads/{name}"), timeout=10)
    assert answer.status_code == 403 and b"evil.example" not in answer.content
    assert answer.headers["Content-Type"].startswith("text/plain")
    # the admin page lists it; unauthenticated, it is refused
    assert requests.get(tftp.url("/uploads"), timeout=10).status_code == 401
    assert requests.get(tftp.url(f"/uploads/{name}"), timeout=10).status_code == 401
    page = requests.get(tftp.url("/uploads"), auth=AUTH, timeout=10)
    assert page.status_code == 200 and name in page.text and ("2.9 KiB" in page.text or "3.0 KiB" in page.text)
    assert ("::1" if ":" in host else "127.0.0.1") in page.text
    download = requests.get(tftp.url(f"/uploads/{name}"), auth=AUTH, timeout=10)
    assert download.content == content
    assert download.headers["Content-Type"] == "application/octet-stream"
    assert download.headers["Content-Disposition"] == f"attachment; filename={name}"
    assert download.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.real_client
def test_a_full_budget_refuses_uploads_as_disk_full_counts_them_and_deletes_nothing(tmp_path, tmp_path_factory):
    svc = start(tmp_path_factory.mktemp("budget"), tftp_upload_budget_mib=1, tftp_upload_mib_per_hour=1)
    try:
        first, second = os.urandom(600 * KIB), os.urandom(400 * KIB)
        assert raw_upload(svc, "first.log", first, "127.0.0.21")[:2] == b"\x00\x04"
        assert raw_upload(svc, "second.log", second, "127.0.0.22")[:2] == b"\x00\x04"
        before = sensors(svc)["tftp_uploads_refused_full"]
        # now 1000 KiB of 1024: a real client's 100 KiB does not fit, refused when its block would pass the budget
        (tmp_path / "more").write_bytes(os.urandom(100 * KIB))
        result = subprocess.run(UPLOADERS["tftp-hpa"]("127.0.0.1", svc.port("ip_tftp_port"), str(tmp_path / "more"), "more.log"),
                                capture_output=True, text=True, timeout=30)
        assert "disk full: the upload budget of 1 MiB (tftp_upload_budget_mib) is used up" in result.stdout + result.stderr
        # curl announces its size (tsize): refused before a byte is sent
        result = subprocess.run(UPLOADERS["curl"]("127.0.0.1", svc.port("ip_tftp_port"), str(tmp_path / "more"), "announced.log"),
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 70, result.stderr  # CURLE_REMOTE_DISK_FULL: the server's TFTP error 3
        assert sensors(svc)["tftp_uploads_refused_full"] == before + 2
        uploads = svc.directory / "data" / "tftp" / "uploads"
        svc.wait_for_log("announced.log refused")
        assert sorted(os.listdir(uploads)) == ["first.log", "second.log"]  # the old ones are kept, no partial file
        assert (uploads / "first.log").read_bytes() == first and (uploads / "second.log").read_bytes() == second
        # the administrator deletes one on the page (logged in, the form's CSRF token): there is room again
        session = requests.Session()
        login = session.get(svc.url("/login"), headers=HTML, timeout=10)
        session.post(svc.url("/login"), data={"csrf_token": csrf_of(login.text), "username": "admin", "password": PASSWORD},
                     headers=HTML, timeout=10).raise_for_status()
        page = session.get(svc.url("/uploads"), headers=HTML, timeout=10)
        assert "first.log" in page.text
        deleted = session.post(svc.url("/uploads/first.log/delete"), data={"csrf_token": csrf_of(page.text)}, headers=HTML, timeout=10)
        assert deleted.status_code == 200 and "Deleted first.log" in deleted.text  # after the redirect
        assert raw_upload(svc, "after.log", os.urandom(300 * KIB), "127.0.0.23")[:2] == b"\x00\x04"
    finally:
        svc.stop()


@pytest.mark.real_client
def test_one_address_may_upload_only_its_hourly_quota_and_others_are_not_held_back(tmp_path, tmp_path_factory):
    svc = start(tmp_path_factory.mktemp("quota"), tftp_upload_mib_per_hour=1)
    try:
        (tmp_path / "log").write_bytes(os.urandom(700 * KIB))
        put = UPLOADERS["tftp-hpa"]("127.0.0.1", svc.port("ip_tftp_port"), str(tmp_path / "log"), "first.log")
        assert subprocess.run(put, capture_output=True, text=True, timeout=30).returncode == 0
        before = sensors(svc)["tftp_uploads_refused_rate"]
        put[-1] = "second.log"
        result = subprocess.run(put, capture_output=True, text=True, timeout=30)
        assert "this address has uploaded its 1 MiB for the hour (tftp_upload_mib_per_hour)" in result.stdout + result.stderr
        answer = raw_upload(svc, "third.log", b"x" * 10 * KIB, "127.0.0.1")  # what refilled since is a few blocks at most
        assert tftp_error(answer)[0] == 3
        assert sensors(svc)["tftp_uploads_refused_rate"] == before + 2
        assert raw_upload(svc, "other.log", os.urandom(700 * KIB), "127.0.0.31")[:2] == b"\x00\x04"  # another phone
        assert sorted(os.listdir(svc.directory / "data" / "tftp" / "uploads")) == ["first.log", "other.log"]
    finally:
        svc.stop()


@pytest.mark.real_client
def test_one_address_cannot_fill_the_folder_with_one_byte_files(tmp_path_factory):
    """The review's tiny uploads (9,750 one-byte files from one address in 12 s, then every phone refused): each
    file costs FILE_CHARGE of the hourly quota, so one address stores 16 MiB / 64 KiB of them, and another
    phone still uploads."""
    svc = start(tmp_path_factory.mktemp("tiny"))
    try:
        stored = 0
        for n in range(2 * uploads.MIB * 16 // uploads.FILE_CHARGE):  # bounded: twice what may pass
            answer = raw_upload(svc, f"u2-{n:06d}.txt", b"x", "127.0.0.41")
            if answer[:2] != b"\x00\x04":
                break
            stored += 1
        assert tftp_error(answer) == (3, "disk full: this address has uploaded its 16 MiB for the hour (tftp_upload_mib_per_hour); "
                                         "try again later")
        assert stored <= 16 * uploads.MIB // uploads.FILE_CHARGE, stored
        assert raw_upload(svc, "phone.log", b"log\n" * 1000, "127.0.0.42")[:2] == b"\x00\x04"
    finally:
        svc.stop()
