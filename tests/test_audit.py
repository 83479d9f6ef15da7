"""The audit log file: entries, newest first, and rotation that bounds its size."""

from __future__ import annotations

import json

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
