"""Capture the datagrams real net-snmp clients send, for tests/vectors/snmp_requests.py.

Run once (python tests/vectors/capture_snmp.py > tests/vectors/snmp_requests.py):
each client is pointed at a loopback socket that records what arrives and
never answers (the client gives up after -t 0.3 -r 0).
"""

import socket
import subprocess

COMMON = ["-t", "0.3", "-r", "0", "-On"]

CAPTURES = [
    # name, program, arguments before the agent, arguments after it
    ("get_sysdescr", "snmpget", ["-v1", "-c", "public"], ["1.3.6.1.2.1.1.1.0"]),
    ("get_system_group", "snmpget", ["-v1", "-c", "public"], [f"1.3.6.1.2.1.1.{i}.0" for i in range(1, 8)]),
    ("get_missing", "snmpget", ["-v1", "-c", "public"], ["1.3.6.1.2.1.1.1.0", "1.3.6.1.2.1.2.1.0"]),
    ("getnext_system", "snmpgetnext", ["-v1", "-c", "public"], ["1.3.6.1.2.1.1"]),
    ("getnext_last_sensor", "snmpgetnext", ["-v1", "-c", "public"], ["1.3.6.1.4.1.32473.1.1.71.0"]),
    ("walk_start", "snmpwalk", ["-v1", "-c", "public"], []),
    ("set_syscontact", "snmpset", ["-v1", "-c", "public"], ["1.3.6.1.2.1.1.4.0", "s", "nobody"]),
    ("get_wrong_community", "snmpget", ["-v1", "-c", "private"], ["1.3.6.1.2.1.1.1.0"]),
    ("get_v2c", "snmpget", ["-v2c", "-c", "public"], ["1.3.6.1.2.1.1.1.0"]),
    ("get_v3", "snmpget", ["-v3", "-l", "noAuthNoPriv", "-u", "monitor"], ["1.3.6.1.2.1.1.1.0"]),
    ("get_ipv6", "snmpget", ["-v1", "-c", "public"], ["1.3.6.1.2.1.1.3.0"]),
]


def capture(program: str, before: list[str], after: list[str], ipv6: bool = False) -> bytes:
    family, host = (socket.AF_INET6, "::1") if ipv6 else (socket.AF_INET, "127.0.0.1")
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        sock.settimeout(5)
        port = sock.getsockname()[1]
        target = f"udp6:[::1]:{port}" if ipv6 else f"127.0.0.1:{port}"
        client = subprocess.Popen([program, *COMMON, *before, target, *after], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            return sock.recvfrom(65536)[0]
        finally:
            client.wait(10)


if __name__ == "__main__":
    print('"""Requests captured from net-snmp 5.9 clients by tests/vectors/capture_snmp.py (hex)."""\n')
    print("REQUESTS = {")
    for name, program, before, after in CAPTURES:
        data = capture(program, before, after, ipv6=name.endswith("ipv6"))
        print(f'    "{name}": "{data.hex()}",  # {program} {" ".join(before)} AGENT {" ".join(after)}')
    print("}")
