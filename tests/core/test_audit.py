"""The audit log file: entries, newest first, rotation that bounds its size, every file of it private."""

from __future__ import annotations

import json
import os
from pathlib import Path

from support.files import assert_private

from greenservers import audit
from greenservers.audit import AuditLog


def test_rotation_keeps_the_newest_entries_in_a_bounded_number_of_files(tmp_path, monkeypatch):
    monkeypatch.setattr(audit, "ROTATE_BYTES", 2000)
    log = AuditLog(tmp_path / "audit.log")
    for n in range(200):
        log.record("admin", "127.0.0.1", "api", [{"setting": "snmp_location", "old": n, "new": n + 1}])
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["audit.log", "audit.log.1", "audit.log.2", "audit.log.3"]
    assert all((tmp_path / name).stat().st_size < 2000 + 300 for name in files)
    newest = log.recent(1)[0]
    assert newest.changes[0]["new"] == 200
    rotated = [json.loads(line) for line in (tmp_path / "audit.log.1").read_text().splitlines()]
    current = [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]
    assert rotated[-1]["changes"][0]["new"] + 1 == current[0]["changes"][0]["new"]  # nothing lost between files


def test_audit_log_and_its_rotations_stay_private(tmp_path, monkeypatch):
    monkeypatch.setattr(audit, "ROTATE_BYTES", 300)
    old = os.umask(0o022)
    try:
        log = AuditLog(tmp_path / "data" / "audit.log")
        for number in range(12):
            log.record("admin", "127.0.0.1", "API", [{"setting": "http_max_conn", "old": number, "new": number + 1}])
    finally:
        os.umask(old)
    found = assert_private(tmp_path / "data")
    assert {"audit.log", "audit.log.1", "audit.log.2", "audit.log.3"} <= {Path(p).name for p in found}
