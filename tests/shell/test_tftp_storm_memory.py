"""After a restart, the TFTP service takes the phones the record trusts (their address answered, lately) as having
answered: in a storm of requests after a power cut, their requests go first (TftpService.sheds)."""

from __future__ import annotations

import time
from types import SimpleNamespace

from greenservers.config.settings import Settings
from greenservers.provisioning.phones import seen
from greenservers.sensors import SensorRegistry
from greenservers.shells.tftp import SHED_AFTER, TftpService


def test_a_phone_the_record_trusts_is_not_shed_after_a_restart(tmp_path):
    settings = Settings.from_raw({"data_dir": str(tmp_path / "data")}, tmp_path)
    runtime = SimpleNamespace(settings=settings, sensors=SensorRegistry())
    record = seen.registry_for(runtime)
    record.note("001565abcdef.cfg", "192.0.2.7", "served", "tftp", answered=True)
    record.note("001565abcde0.cfg", "192.0.2.8", "failed", "tftp")  # never answered: may be spoofed
    record.note("001565abcde1.cfg", "::ffff:192.0.2.9", "served", "http", "Yealink SIP-T46S 66.86.0.15")  # dual-stack
    service = TftpService(runtime)
    now = time.monotonic()
    assert not service.sheds("192.0.2.7", now, 2 * SHED_AFTER) and not service.sheds("192.0.2.9", now, 2 * SHED_AFTER)
    assert service.sheds("192.0.2.8", now, 2 * SHED_AFTER) and runtime.sensors.value("tftp_requests_shed") == 1
    assert not service.sheds("192.0.2.8", now, SHED_AFTER / 2)
