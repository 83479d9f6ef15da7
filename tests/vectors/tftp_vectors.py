"""TFTP datagrams captured from the real clients (Debian bookworm: curl 7.88.1, atftp 0.8.0, tftp-hpa 5.2).

Captured by pointing each client at a plain UDP socket on 127.0.0.1 and
recording what it sent; where a list holds two datagrams, the second is the
client's answer to the reply shown in its comment. Kept as hex, verbatim.
"""

# curl tftp://host/y000000000025.cfg (curl always sends tsize, blksize 512 and timeout 6)
CURL_RRQ = [
    bytes.fromhex('0001793030303030303030303032352e636667006f63746574007473697a65003000626c6b73697a65003531320074696d656f7574003600'),
]
# curl --tftp-blksize 1428 tftp://host/0004f2abcdef.cfg; second: its ACK of OACK(blksize 1428)
CURL_RRQ_BLKSIZE = [
    bytes.fromhex('00013030303466326162636465662e636667006f63746574007473697a65003000626c6b73697a6500313432380074696d656f7574003600'),
    bytes.fromhex('00040000'),
]
# atftp -g -r sip.ld --option "blksize 1428" --option "windowsize 8"; second: its ACK of OACK(blksize 1428, windowsize 8)
ATFTP_RRQ_OPTIONS = [
    bytes.fromhex('00017369702e6c64006f6374657400626c6b73697a6500313432380077696e646f7773697a65003800'),
    bytes.fromhex('00040000'),
]
# tftp -m binary host -c get bootrom.ld; second: its ACK of DATA 1 ("hi\n", the whole file)
TFTP_HPA_RRQ_BINARY = [
    bytes.fromhex('0001626f6f74726f6d2e6c64006f6374657400'),
    bytes.fromhex('00040001'),
]
# tftp -m ascii host -c get notes.txt
TFTP_HPA_RRQ_ASCII = [
    bytes.fromhex('00016e6f7465732e747874006e6574617363696900'),
]
# tftp -m binary host -c put up.txt 0004f2abcdef-app.log; second: its DATA 1 after our ACK 0
TFTP_HPA_WRQ = [
    bytes.fromhex('00023030303466326162636465662d6170702e6c6f67006f6374657400'),
    bytes.fromhex('0003000168656c6c6f0a'),
]
