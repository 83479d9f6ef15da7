"""The SNMP agent in the running service, driven by net-snmp's snmpget/snmpwalk/snmpset over IPv4 and IPv6 loopback.

One service for the module (SNMP on 127.0.0.1 and [::1], HTTP for the
settings API and the sensors endpoints). Tests that change settings put
them back. Calls that must time out use -t 0.5 -r 0.
"""

from __future__ import annotations

import itertools
import os
import re
import socket
import subprocess
import time

import pytest
import requests
from support import ServiceProcess, eventually, free_port, free_udp_port
from support.snmp import V1, bad_inputs, build_request, request_id
from vectors.snmp_requests import REQUESTS

from greenservers.passwords import hash_password
from greenservers.proto.snmp import MAX_RESPONSE, REFLECTION_BURST, REFLECTION_RATE, mib_name
from greenservers.sensors import DECLARED

pytestmark = pytest.mark.real_client

PASSWORD = "snmp-test-admin-pw"
SYSDESCR = ".1.3.6.1.2.1.1.1.0"
CLIENT_ENV = dict(os.environ, MIBS="")  # numeric output only; no MIB files loaded by the clients
QUICK = ["-t", "0.5", "-r", "0"]  # for calls that are expected to time out


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    snmp_port, http_port = free_udp_port(), free_port()
    proc = ServiceProcess(tmp_path_factory.mktemp("snmp"), {
        "ip_snmp_port": f"127.0.0.1:{snmp_port} [::1]:{snmp_port}",
        "ip_http_port": f"127.0.0.1:{http_port}",
        "snmp_trusted": "127.0.0.1 ::1",
        "snmp_contact": "noc@example.org",
        "snmp_location": "rack 7",
        "admin_password_hash": hash_password(PASSWORD),
    })
    proc.start()
    yield proc
    proc.stop()


def agent(svc, ipv6: bool = False) -> str:
    port = svc.port("ip_snmp_port")
    return f"udp6:[::1]:{port}" if ipv6 else f"127.0.0.1:{port}"


def run(program: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([program, "-On", *args], capture_output=True, text=True, env=CLIENT_ENV, timeout=timeout)


def snmp_value(svc, oid: str, community: str = "public") -> str:
    result = run("snmpget", "-v1", "-c", community, "-Oqv", agent(svc), oid)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.strip()


def sensor_value(svc, name: str) -> int:
    oid = "." + ".".join(map(str, next(s.oid for s in DECLARED if s.name == name)))
    return int(snmp_value(svc, oid))


def api(svc, method: str, path: str, **kwargs) -> requests.Response:
    return requests.request(method, svc.url(path), auth=("admin", PASSWORD), timeout=10, **kwargs)


def log_lines(svc, text: str) -> list[str]:
    return [line for line in svc.lines if text in line]


def wait_for_log_count(svc, text: str, count: int, timeout: float = 5.0) -> list[str]:
    return eventually(lambda: len(lines := log_lines(svc, text)) >= count and lines, timeout,
                      what=lambda: f"{text!r} logged {count} times:\n{svc.log}")


def set_settings(svc, changes: dict) -> None:
    response = api(svc, "PUT", "/api/settings/ports", json=changes)
    assert response.status_code == 200, response.text


# -- answers ----------------------------------------------------------------------


@pytest.mark.parametrize("ipv6", [False, True], ids=["ipv4", "ipv6"])
def test_snmpget_of_the_system_group(svc, ipv6):
    oids = [f".1.3.6.1.2.1.1.{i}.0" for i in range(1, 8)]
    result = run("snmpget", "-v1", "-c", "public", agent(svc, ipv6), *oids)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(" = ")[0] for line in lines] == oids
    assert lines[0].startswith(f'{SYSDESCR} = STRING: "greenservers ')
    assert lines[1] == ".1.3.6.1.2.1.1.2.0 = OID: .1.3.6.1.4.1.32473.1"
    assert re.fullmatch(r"\.1\.3\.6\.1\.2\.1\.1\.3\.0 = Timeticks: \(\d+\) .*", lines[2])
    assert lines[3] == '.1.3.6.1.2.1.1.4.0 = STRING: "noc@example.org"'
    assert lines[4] == f'.1.3.6.1.2.1.1.5.0 = STRING: "{socket.gethostname()}"'
    assert lines[5] == '.1.3.6.1.2.1.1.6.0 = STRING: "rack 7"'
    assert lines[6] == ".1.3.6.1.2.1.1.7.0 = INTEGER: 72"


@pytest.mark.parametrize("ipv6", [False, True], ids=["ipv4", "ipv6"])
def test_snmpwalk_of_the_whole_tree_ends_cleanly_in_strictly_increasing_order(svc, ipv6):
    result = run("snmpwalk", "-v1", "-c", "public", agent(svc, ipv6), ".1")
    assert result.returncode == 0, result.stderr
    assert "Timeout" not in result.stderr and "Error" not in result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if " = " in line]
    oids = [tuple(int(arc) for arc in line.split(" = ")[0].strip(".").split(".")) for line in lines]
    assert all(a < b for a, b in itertools.pairwise(oids)), "OIDs not strictly increasing"
    assert oids[:7] == [(1, 3, 6, 1, 2, 1, 1, i, 0) for i in range(1, 8)]
    assert oids[7:] == [s.oid for s in sorted(DECLARED, key=lambda s: s.oid)]
    kinds = {line.split(" = ")[0]: line.split(" = ")[1].split(":")[0] for line in lines}
    for sensor in DECLARED:
        assert kinds["." + ".".join(map(str, sensor.oid))] == ("Counter32" if sensor.kind == "counter" else "Gauge32")


def test_snmpget_of_a_missing_object_is_nosuchname(svc):
    result = run("snmpget", "-v1", "-c", "public", agent(svc), ".1.3.6.1.2.1.2.1.0")
    assert result.returncode != 0
    assert "noSuchName" in result.stdout + result.stderr


def test_snmpset_is_answered_readonly(svc):
    result = run("snmpset", "-v1", "-c", "public", agent(svc), ".1.3.6.1.2.1.1.4.0", "s", "intruder")
    assert result.returncode != 0
    assert "(readOnly)" in result.stdout + result.stderr
    assert snmp_value(svc, ".1.3.6.1.2.1.1.4.0") == '"noc@example.org"'


def test_answered_requests_are_counted(svc):
    before = sensor_value(svc, "snmp_requests_answered")
    assert sensor_value(svc, "snmp_requests_answered") == before + 1


# -- what is not answered ------------------------------------------------------------


def test_wrong_community_times_out_is_counted_and_logged_once_per_source(svc):
    before = sensor_value(svc, "snmp_rejected_community")
    for _ in range(3):
        result = run("snmpget", "-v1", "-c", "not-the-community", *QUICK, agent(svc), SYSDESCR)
        assert result.returncode != 0 and "Timeout" in result.stdout + result.stderr
    assert sensor_value(svc, "snmp_rejected_community") == before + 3
    lines = wait_for_log_count(svc, "SNMP request dropped: wrong community", 1)
    assert len(lines) == 1 and "127.0.0.1:" in lines[0]  # rate-limited: one line per source per minute
    assert "not-the-community" not in svc.log  # communities are secrets


def test_untrusted_source_times_out_and_is_logged(svc):
    before = sensor_value(svc, "snmp_rejected_address")
    result = run("snmpget", "-v1", "-c", "public", *QUICK, "--clientaddr=127.0.0.2", agent(svc), SYSDESCR)
    assert result.returncode != 0 and "Timeout" in result.stdout + result.stderr
    wait_for_log_count(svc, "127.0.0.2: SNMP request dropped: address not in snmp_trusted", 1)
    assert sensor_value(svc, "snmp_rejected_address") == before + 1


@pytest.mark.parametrize("version", [["-v2c", "-c", "public"], ["-v3", "-l", "noAuthNoPriv", "-u", "monitor"]], ids=["v2c", "v3"])
def test_v2c_and_v3_time_out_and_are_counted(svc, version):
    before = sensor_value(svc, "snmp_rejected_version")
    result = run("snmpget", *version, *QUICK, agent(svc), SYSDESCR)
    assert result.returncode != 0 and "Timeout" in result.stdout + result.stderr
    assert sensor_value(svc, "snmp_rejected_version") >= before + 1
    wait_for_log_count(svc, "is not answered (this agent speaks v1 only)", 1)


# -- live settings changes through the settings API -------------------------------------


def test_community_changed_through_the_settings_api_applies_without_restart(svc):
    pids = svc.worker_pids
    set_settings(svc, {"snmp_community": "n3w-community"})
    try:
        old = run("snmpget", "-v1", "-c", "public", *QUICK, agent(svc), SYSDESCR)
        assert old.returncode != 0 and "Timeout" in old.stdout + old.stderr
        assert snmp_value(svc, SYSDESCR, community="n3w-community").startswith('"greenservers ')
        assert snmp_value(svc, SYSDESCR.replace("1.0", "3.0"), community="n3w-community")
    finally:
        set_settings(svc, {"snmp_community": "public"})
    assert snmp_value(svc, SYSDESCR).startswith('"greenservers ')
    assert svc.worker_pids == pids  # the same worker: no restart


def test_trusted_addresses_changed_through_the_settings_api_apply_without_restart(svc):
    set_settings(svc, {"snmp_trusted": "127.0.0.1 ::1 127.0.0.2"})
    try:
        result = run("snmpget", "-v1", "-c", "public", "--clientaddr=127.0.0.2", agent(svc), SYSDESCR)
        assert result.returncode == 0, result.stderr
        set_settings(svc, {"snmp_trusted": "::1"})
        ipv4 = run("snmpget", "-v1", "-c", "public", *QUICK, agent(svc), SYSDESCR)
        assert ipv4.returncode != 0 and "Timeout" in ipv4.stdout + ipv4.stderr
        assert run("snmpget", "-v1", "-c", "public", agent(svc, ipv6=True), SYSDESCR).returncode == 0
    finally:
        set_settings(svc, {"snmp_trusted": "127.0.0.1 ::1"})


# -- bad input over the socket ------------------------------------------------------------


def test_bad_datagrams_get_no_answer_or_an_error_and_the_agent_keeps_answering(svc):
    port = svc.port("ip_snmp_port")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        sock.settimeout(2)
        sock.connect(("127.0.0.1", port))
        for name, datagram in bad_inputs().items():
            if len(datagram) > 65507:
                datagram = datagram[:65507]  # the largest UDP/IPv4 datagram
            sock.send(datagram)
            sock.send(bytes.fromhex(REQUESTS["get_sysdescr"]))
            reply = sock.recv(65536)
            while b"greenservers" not in reply:  # an error answer to the bad one came first
                assert b"\xa2" in reply[:20], f"{name}: unexpected reply {reply[:40].hex()}"
                reply = sock.recv(65536)
    assert "Traceback" not in svc.log
    assert snmp_value(svc, SYSDESCR).startswith('"greenservers ')


def test_replies_to_forged_requests_are_withheld_beyond_the_reflection_budget_while_polls_go_on(svc):
    """GetNexts of many short OIDs, each answered with sysDescr, come back about 9 times their size: sent in a
    trusted station's name, what reaches it beyond twice what was sent is at most the budget's burst and its
    refill over the run (loopback cannot forge a source: the station sends them itself here). A poll within twice
    its request (snmpwalk's GetNexts, snmpget) is answered meanwhile."""
    port, sysuptime = svc.port("ip_snmp_port"), build_request([(1, 3, 6, 1, 2, 1, 1, 3, 0)], request_id=1)
    descr = snmp_value(svc, SYSDESCR)
    count = (MAX_RESPONSE - 40) // (len(descr) + 14)  # as many sysDescr bindings as a reply holds
    forged = build_request([(1, 3)] * count, V1.GetNextRequestPDU, request_id=2)
    before = sensor_value(svc, "snmp_replies_withheld")
    sent = received = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.connect(("127.0.0.1", port))
        started = time.monotonic()
        for _ in range(100):  # 2,000 forged requests in batches, each ended by a sysUpTime GET whose reply ends it
            for datagram in [forged] * 20 + [sysuptime]:
                sock.send(datagram)
                sent += len(datagram)
            while True:
                reply = sock.recv(65536)
                received += len(reply)
                if request_id(reply) == 1:  # the sysUpTime reply: every forged one before it was answered or withheld
                    break
                assert len(reply) > 8 * len(forged), len(reply)
        elapsed = time.monotonic() - started
    assert received - 2 * sent <= REFLECTION_BURST + REFLECTION_RATE * elapsed, (received, sent, elapsed)
    assert sensor_value(svc, "snmp_replies_withheld") - before > 1000
    assert len(wait_for_log_count(svc, "SNMP reply withheld", 1)) == 1  # once a minute per source
    walk = run("snmpwalk", "-v1", "-c", "public", agent(svc), ".1.3.6.1.2.1.1")
    assert walk.returncode == 0 and "Timeout" not in walk.stderr and len(walk.stdout.splitlines()) == 7, walk.stderr


# -- the sensors shown three ways --------------------------------------------------------------


def test_api_sensors_lists_every_sensor_with_oid_value_and_description(svc):
    assert requests.get(svc.url("/api/sensors"), timeout=10).status_code == 401
    body = api(svc, "GET", "/api/sensors").json()
    rows = {row["name"]: row for row in body["sensors"]}
    assert list(rows) == [s.name for s in DECLARED]
    for sensor in DECLARED:
        row = rows[sensor.name]
        assert row["oid"] == ".".join(map(str, sensor.oid))
        assert row["description"] == sensor.description
        assert row["mib_name"] == mib_name(sensor.name)
        assert isinstance(row["value"], int)
    answered = rows["snmp_requests_answered"]["value"]
    assert answered >= 1
    assert sensor_value(svc, "snmp_requests_answered") >= answered  # the same counter over SNMP


def metric_samples(text: str) -> dict[str, float]:
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line and not line.startswith("#")}


def test_metrics_pass_promtool_in_base_units_with_the_standard_process_metrics(svc):
    assert requests.get(svc.url("/metrics"), timeout=10).status_code == 401
    response = api(svc, "GET", "/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = response.text
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert check.returncode == 0 and check.stdout + check.stderr == "", check.stdout + check.stderr
    samples = metric_samples(text)
    snmp = {row["name"]: row["value"] for row in api(svc, "GET", "/api/sensors").json()["sensors"]}
    for sensor in DECLARED:  # every sensor, under the name its declaration gives it
        assert sensor.metric_name in samples, sensor.metric_name
        assert f"# TYPE {sensor.metric_name} {sensor.kind}\n" in text
    assert not [name for name in samples if re.search(r"centiseconds|_kib|_x100", name)]
    # base units: the standard process metrics, and our own scaled ones
    assert time.time() - 3600 < samples["process_start_time_seconds"] <= time.time()
    assert samples["process_cpu_seconds_total"] > 0 and samples["process_open_fds"] > 0
    assert 0.5 < samples["process_resident_memory_bytes"] / (snmp["process_resident_kib"] * 1024) < 2
    assert 0.5 < samples["greenservers_machine_mem_available_bytes"] / (snmp["machine_mem_available_kib"] * 1024) < 2
    assert samples["greenservers_snmp_requests_answered_total"] >= 1


def test_metrics_in_openmetrics_when_the_scraper_asks_for_it(svc):
    response = api(svc, "GET", "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0; charset=utf-8"})
    assert response.headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    assert response.text.endswith("# EOF\n")
    assert "# UNIT greenservers_machine_mem_available_bytes bytes\n" in response.text


def test_sensors_page_shows_each_sensor(svc):
    assert requests.get(svc.url("/sensors"), timeout=10, allow_redirects=False).status_code in (302, 303, 401)
    response = api(svc, "GET", "/sensors")
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/html")
    for sensor in DECLARED:
        assert f'<tr id="{sensor.name}">' in response.text
        assert "." + ".".join(map(str, sensor.oid)) in response.text


# -- a flood from untrusted addresses ------------------------------------------------------------


def test_a_flood_from_untrusted_addresses_is_dropped_by_the_kernel_while_snmpget_is_answered(tmp_path):
    """Over a thousand untrusted datagrams in a second: the kernel drops the rest (counted), snmpget from a
    trusted address is answered all along, and an address trusted meanwhile is answered within the filter's next tick."""
    snmp_port, http_port = free_udp_port(), free_port()
    flooded = ServiceProcess(tmp_path, {
        "ip_snmp_port": f"127.0.0.1:{snmp_port}", "ip_http_port": f"127.0.0.1:{http_port}",
        "snmp_trusted": "127.0.0.1", "admin_password_hash": hash_password(PASSWORD),
    })
    flooded.start()
    try:
        get = bytes.fromhex(REQUESTS["get_sysdescr"])
        sent = 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.bind(("127.0.0.2", 0))
            for _ in range(25):  # 200 at a time, then snmpget: the buffer never overflows
                for _ in range(200):
                    sender.sendto(get, ("127.0.0.1", snmp_port))
                sent += 200
                assert "greenservers" in snmp_value(flooded, SYSDESCR)
        wait_for_log_count(flooded, "the kernel drops them for the next 10 s", 1)
        # every datagram counted: read in user space, or dropped by the kernel (counted once a second)
        eventually(lambda: sensor_value(flooded, "snmp_rejected_address") + sensor_value(flooded, "snmp_dropped_in_kernel")
                   == sent, 10, what="every flood datagram counted")
        assert sensor_value(flooded, "snmp_dropped_in_kernel") > 0
        # trusted meanwhile: answered once the filter follows (its next tick, within a second)
        set_settings(flooded, {"snmp_trusted": "127.0.0.1 127.0.0.2"})
        result = run("snmpget", "-v1", "-c", "public", "-t", "1", "-r", "5", "--clientaddr=127.0.0.2",
                     agent(flooded), SYSDESCR)
        assert result.returncode == 0 and "greenservers" in result.stdout, result.stdout + result.stderr
    finally:
        flooded.stop()
