"""Re-captures tests/vectors/tftp_vectors.py: runs each real TFTP client against a bare UDP socket and prints what it sent.

Run: python tests/vectors/tftp_capture.py (needs curl, atftp, tftp-hpa). Not a test.
"""

import socket
import subprocess
import tempfile

WORKDIR = tempfile.mkdtemp()
with open(f"{WORKDIR}/up.txt", "w") as upload:
    upload.write("hello\n")


def capture(cmd_fn, replies=()):
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.settimeout(3)
    client = subprocess.Popen(cmd_fn(server.getsockname()[1]), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=WORKDIR)
    data, peer = server.recvfrom(70000)
    got = [data]
    transfer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    transfer.bind(("127.0.0.1", 0))
    transfer.settimeout(3)
    for reply in replies:
        transfer.sendto(reply, peer)
        try:
            got.append(transfer.recvfrom(70000)[0])
        except TimeoutError:
            break
    transfer.sendto(b"\x00\x05\x00\x01stop\x00", peer)
    client.kill()
    client.wait()
    return got


cases = {
    "curl_rrq": (lambda port: ["curl", "-s", "-o", "/dev/null", f"tftp://127.0.0.1:{port}/y000000000025.cfg"], []),
    "curl_rrq_blksize": (lambda port: ["curl", "-s", "-o", "/dev/null", "--tftp-blksize", "1428", f"tftp://127.0.0.1:{port}/0004f2abcdef.cfg"],
                         [b"\x00\x06blksize\x001428\x00"]),
    "atftp_rrq_options": (lambda port: ["atftp", "-g", "-r", "sip.ld", "-l", "/dev/null", "--option", "blksize 1428", "--option",
                                        "windowsize 8", "127.0.0.1", str(port)],
                          [b"\x00\x06blksize\x001428\x00windowsize\x008\x00"]),
    "tftp_hpa_rrq_binary": (lambda port: ["tftp", "-m", "binary", "127.0.0.1", str(port), "-c", "get", "bootrom.ld", "/dev/null"],
                            [b"\x00\x03\x00\x01hi\n"]),
    "tftp_hpa_rrq_ascii": (lambda port: ["tftp", "-m", "ascii", "127.0.0.1", str(port), "-c", "get", "notes.txt", "/dev/null"], []),
    "tftp_hpa_wrq": (lambda port: ["tftp", "-m", "binary", "127.0.0.1", str(port), "-c", "put", "up.txt", "0004f2abcdef-app.log"],
                     [b"\x00\x04\x00\x00"]),
}
for name, (fn, replies) in cases.items():
    got = capture(fn, replies)
    print(f"{name.upper()} = [")
    for datagram in got:
        print(f"    bytes.fromhex({datagram.hex()!r}),")
    print("]")
