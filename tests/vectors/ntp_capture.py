"""Capture the NTP golden vectors in tests/vectors/ntp_vectors.py from the real programs.

Run by hand (as root, or it re-executes itself under `unshare -rn`):

    python tests/vectors/ntp_capture.py > tests/vectors/ntp_vectors.py

Inside a private network namespace it listens on 127.0.0.1:123 (sntp/ntpdig
and ntpdate have no port option), records the first request each client
sends (chronyd -Q, sntp, ntpdate, ntplib v3 and v4), then asks a chronyd
serving `local stratum 8` one request and records its reply.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time

CLIENTS = {
    "chronyd": ["chronyd", "-f", "/dev/null", "-Q", "-t", "3", "server 127.0.0.1 port 123 iburst maxsamples 1"],
    "sntp": ["sntp", "-t", "1", "127.0.0.1"],
    "ntpdate": ["ntpdate", "-q", "-t", "1", "127.0.0.1"],
    "ntplib_v3": [sys.executable, "-c", "import ntplib; ntplib.NTPClient().request('127.0.0.1', version=3, timeout=1)"],
    "ntplib_v4": [sys.executable, "-c", "import ntplib; ntplib.NTPClient().request('127.0.0.1', version=4, timeout=1)"],
}


def capture_request(argv: list[str]) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 123))
        sock.settimeout(5)
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            data, _ = sock.recvfrom(2048)
        finally:
            proc.kill()
            proc.wait()
    return data


def capture_chronyd_reply(request: bytes) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        conf = os.path.join(tmp, "chrony.conf")
        with open(conf, "w") as f:
            f.write(f"port 123\nallow 127.0.0.1\nlocal stratum 8\ncmdport 0\npidfile {tmp}/pid\n")
        proc = subprocess.Popen(["chronyd", "-f", conf, "-d", "-x"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.settimeout(0.2)
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    sock.sendto(request, ("127.0.0.1", 123))
                    try:
                        return sock.recvfrom(2048)[0]
                    except TimeoutError:
                        continue
                raise RuntimeError("chronyd did not answer")
        finally:
            proc.terminate()
            proc.wait()


def main() -> None:
    if os.environ.get("NTP_CAPTURE_IN_NETNS") != "1":
        unshare = ["unshare", "-n"] if os.geteuid() == 0 else ["unshare", "-rn"]
        env = dict(os.environ, NTP_CAPTURE_IN_NETNS="1")
        sys.exit(subprocess.call(unshare + [sys.executable, __file__], env=env))
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    requests = {name: capture_request(argv) for name, argv in CLIENTS.items()}
    reply = capture_chronyd_reply(requests["ntplib_v4"])
    print('"""NTP golden vectors captured from the real programs by tests/vectors/ntp_capture.py."""')
    print()
    print("# the first request each client sent, as hex")
    print("REQUESTS = {")
    for name, data in requests.items():
        print(f"    {name!r}: {data.hex()!r},")
    print("}")
    print()
    print("# chronyd 4.3 (`local stratum 8`, unsynchronised clock) answering REQUESTS['ntplib_v4']")
    print(f"CHRONYD_REPLY_TO_NTPLIB_V4 = {reply.hex()!r}")


if __name__ == "__main__":
    main()
