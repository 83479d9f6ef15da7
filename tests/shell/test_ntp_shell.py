"""The NTP shell's window on the kernel clock, in this process: adjtimex through ctypes."""

from __future__ import annotations

import os

from greenservers.shells.ntp import adjtimex, read_kernel_clock


def test_adjtimex_struct_layout_matches_the_kernel():
    state, timex = adjtimex()
    assert state in range(6)  # TIME_OK .. TIME_ERROR
    assert timex.tick == 1_000_000 // os.sysconf("SC_CLK_TCK")  # microseconds per USER_HZ tick
    assert timex.tolerance == 500 << 16  # MAXFREQ, 500 ppm in 16.16
    assert 0 <= timex.maxerror <= 16_000_000  # the kernel caps it at NTP_PHASE_LIMIT
    assert read_kernel_clock().synchronised == (state != 5 and not timex.status & 0x40)
