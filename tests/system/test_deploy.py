"""The production install, run for real: deploy/install.sh, then the unit's commands as systemd runs them.

The script installs into a private folder (ROOT=DIR: the user in DIR/etc/passwd,
the unit's paths under DIR). There is no systemd here, so the test reads the
installed unit file and does what systemd would with it: inside a private
network namespace (support.netns, where ports below 1024 need the capability),
ExecStartPre and then ExecStart run as the unit's User and Group with its
Environment, WorkingDirectory and UMask, with the ambient capability
CAP_NET_BIND_SERVICE and nothing else (setpriv). The service must come up on
its default ports below 1024 and answer there.

`run_in_namespace` runs inside the namespace and returns its findings.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import threading
from pathlib import Path

import pytest
from support import READY_LINE, REPO
from support.netns import in_network_namespace

CAP_NET_BIND_SERVICE = 1 << 10
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@pytest.mark.real_client
def test_install_script_and_unit_bring_the_service_up_below_1024_as_an_unprivileged_user(open_tmp):
    assert os.geteuid() == 0, "installing needs root (./run-tests runs as root in CI)"
    root = open_tmp / "root"
    (root / "etc").mkdir(parents=True)
    for name in ("passwd", "group"):  # the machine's users, so the new one gets an unused id
        shutil.copy(f"/etc/{name}", root / "etc" / name)
    for name in ("shadow", "gshadow"):
        (root / "etc" / name).touch(mode=0o600)
    installed = subprocess.run([str(REPO / "deploy" / "install.sh")], env=dict(os.environ, ROOT=str(root)),
                               capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    assert "systemd is not running here" in installed.stdout

    venv_python = root / "opt" / "greenservers" / ".venv" / "bin" / "python"
    assert os.path.realpath(venv_python).startswith("/usr/bin/python3"), os.path.realpath(venv_python)
    state = root / "var" / "lib" / "greenservers"
    user = next(line.split(":") for line in (root / "etc" / "passwd").read_text().splitlines() if line.startswith("greenservers:"))
    assert int(user[2]) != 0 and user[6] == "/usr/sbin/nologin"
    assert (state.stat().st_uid, oct(state.stat().st_mode & 0o777)) == (int(user[2]), "0o700")

    found = in_network_namespace(run_in_namespace, root, timeout=240)
    assert found["binds_80_without_the_capability"] is False  # so the unit's capability is what lets it bind
    assert found["ready"], found["log"]
    assert found["setup_rc"] == 0, found["log"]
    ports = {service: sorted(int(b["address"].rsplit(":", 1)[1]) for b in entry["bindings"] if b["state"] == "serving")
             for service, entry in found["health"]["services"].items()}
    assert ports == {"http": [80], "https": [443], "snmp": [161], "tftp": [69], "ntp": [123], "ldap": [2389], "ldaps": [2636]}, found[
        "health"
    ]
    assert found["https"] == "200" and found["ntp_answered"] and found["ldap_connected"], found
    assert found["tftp"] == "00050001", found["tftp"]  # TFTP ERROR "file not found", from port 69
    assert found["worker_uid"] == int(user[2]) and found["worker_caps"] == CAP_NET_BIND_SERVICE, found
    assert found["state_files"] and all(
        owner == int(user[2]) and mode in ("0o600", "0o700") for owner, mode in found["state_files"].values()
    ), found
    assert "Traceback" not in found["log"]


# -- the script run inside the namespace -------------------------------------------------------


def read_unit(path: Path) -> dict[str, list[str]]:
    """The [Service] section of a unit file: key -> its values in order (keys may repeat)."""
    section, service = "", {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, _, value = line.partition("=")
            service.setdefault(key.strip(), []).append(value.strip())
    return service


def systemd_command(unit: dict[str, list[str]], root: Path, line: str) -> tuple[list[str], dict, str, int]:
    """An Exec line as systemd runs it: (argv under setpriv, environment, working directory, umask)."""
    passwd = {f[0]: f for f in (line.split(":") for line in (root / "etc" / "passwd").read_text().splitlines())}
    groups = {f[0]: f for f in (line.split(":") for line in (root / "etc" / "group").read_text().splitlines())}
    user = passwd[unit["User"][-1]]
    gid = groups[unit["Group"][-1]][2]
    env = {"PATH": SYSTEMD_PATH, "LANG": "C.UTF-8", "HOME": user[5], "USER": user[0], "LOGNAME": user[0], "SHELL": user[6]}
    for assignment in unit.get("Environment", []):
        for pair in shlex.split(assignment):
            key, _, value = pair.partition("=")
            env[key] = value
    caps = ",".join("+" + cap.lower().removeprefix("cap_") for value in unit.get("AmbientCapabilities", []) for cap in value.split())
    bounding = ",".join("+" + cap.lower().removeprefix("cap_") for value in unit.get("CapabilityBoundingSet", []) for cap in value.split())
    setpriv = ["setpriv", f"--reuid={user[2]}", f"--regid={gid}", "--clear-groups", f"--inh-caps={caps}", f"--ambient-caps={caps}",
               f"--bounding-set=-all,{bounding}"]
    if unit.get("NoNewPrivileges", ["false"])[-1] == "true":
        setpriv.append("--no-new-privs")
    return setpriv + ["--", *shlex.split(line)], env, unit["WorkingDirectory"][-1], int(unit.get("UMask", ["0022"])[-1], 8)


def run_in_namespace(root: str) -> dict:
    root = Path(root)
    unit = read_unit(root / "etc" / "systemd" / "system" / "greenservers.service")
    found: dict = {"log": ""}
    for line in unit.get("ExecStartPre", []):
        argv, env, cwd, umask = systemd_command(unit, root, line)
        pre = subprocess.run(argv, env=env, cwd=cwd, umask=umask, capture_output=True, text=True, timeout=120)
        found["setup_rc"] = pre.returncode
        found["log"] += pre.stdout + pre.stderr
        if pre.returncode:
            return found
    argv, env, cwd, umask = systemd_command(unit, root, unit["ExecStart"][-1])
    without_caps = [arg for arg in argv[:argv.index("--")] if "caps" not in arg] + ["--", "/usr/bin/python3", "-c",
                                                                                   "import socket; socket.socket().bind(('127.0.0.1', 80))"]
    found["binds_80_without_the_capability"] = subprocess.run(without_caps, capture_output=True, timeout=30).returncode == 0
    service = subprocess.Popen(argv, env=env, cwd=cwd, umask=umask, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    ready = threading.Event()

    def read():
        for line in service.stdout:
            lines.append(line)
            if READY_LINE in line:
                ready.set()
        ready.set()  # it ended

    threading.Thread(target=read, daemon=True).start()
    try:
        found["ready"] = ready.wait(90) and service.poll() is None
        if not found["ready"]:
            return found
        curl = ["curl", "-sS", "--max-time", "10"]
        found["health"] = json.loads(subprocess.run(curl + ["http://127.0.0.1:80/healthz"], capture_output=True, text=True).stdout)
        found["https"] = subprocess.run(curl + ["-k", "-o", "/dev/null", "-w", "%{http_code}", "https://127.0.0.1:443/healthz"],
                                        capture_output=True, text=True).stdout
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tftp:
            tftp.settimeout(5)
            tftp.sendto(b"\x00\x01no-such-file.cfg\x00octet\x00", ("127.0.0.1", 69))
            found["tftp"] = tftp.recv(512)[:4].hex()  # ERROR, file not found
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as ntp:
            ntp.settimeout(5)
            ntp.sendto(b"\x23" + bytes(47), ("127.0.0.1", 123))  # a v4 client request
            found["ntp_answered"] = len(ntp.recv(512)) >= 48
        with socket.create_connection(("127.0.0.1", 2389), timeout=5):
            found["ldap_connected"] = True
        [worker] = subprocess.run(["pgrep", "-P", str(service.pid)], capture_output=True, text=True).stdout.split()
        status = dict(line.split(":", 1) for line in Path(f"/proc/{worker}/status").read_text().splitlines())
        found["worker_uid"] = int(status["Uid"].split()[1])
        found["worker_caps"] = int(status["CapEff"].strip(), 16)
        state = root / "var" / "lib" / "greenservers"
        found["state_files"] = {str(p.relative_to(state)): (p.stat().st_uid, oct(p.stat().st_mode & 0o777)) for p in state.rglob("*")}
    finally:
        service.terminate()
        try:
            service.wait(20)
        except subprocess.TimeoutExpired:
            service.kill()
            service.wait()
        found["log"] += "".join(lines)
    return found

