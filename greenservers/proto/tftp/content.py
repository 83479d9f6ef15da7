"""What a TFTP transfer reads from and writes to, injected: a `Source` for a read, a `Sink` for an upload.

A source has a size and `read(offset, length)` (a rendered template in
memory, `BytesSource`; a file, greenservers.provisioning.files.FileReader); a
sink takes `write`, `commit` and `abort` (an upload, shells.tftp.UploadSink).
Netascii (RFC 764) is converted on the way: `NetasciiSource` for reads with
random access, `NetasciiDecoder` for uploads.
"""

from __future__ import annotations

import bisect
from collections.abc import Generator
from typing import Protocol

MAX_NETASCII_BYTES = 16 * 1024 * 1024  # converting needs one pass over the file: text files only
NETASCII_CHUNK = 64 * 1024  # bytes of the input converted at once (a read converts the chunks it covers)


class Source(Protocol):
    size: int

    def read(self, offset: int, length: int) -> bytes: ...


class Sink(Protocol):
    def write(self, data: bytes) -> None:
        """Keep the next piece; raise TftpError to refuse it (a budget or quota): the transfer is aborted."""

    def commit(self) -> None:
        """Make the upload visible; raise TftpError to refuse it."""

    def abort(self) -> None: ...


class BytesSource:
    """A rendered template or any content held in memory."""

    def __init__(self, data: bytes):
        self.data = data
        self.size = len(data)

    def read(self, offset: int, length: int) -> bytes:
        return self.data[offset:offset + length]

    def close(self) -> None:
        pass


class NetasciiSource:
    """Netascii view of a source (RFC 764): LF -> CR LF, CR -> CR NUL, with random access.

    The conversion is per byte, so the output offset of each input chunk is
    known after one counting pass (`netascii_starts`: in steps, as a 16 MiB
    file takes about 20 ms; given here, or made whole); a read converts only
    the chunks it covers.
    """

    def __init__(self, inner: Source, starts: list[int] | None = None):
        self.inner = inner
        self.starts = starts if starts is not None else finished(netascii_starts(inner))
        self.size = self.starts[-1]
        self._cached: tuple[int, bytes] = (-1, b"")

    def _converted(self, index: int) -> bytes:
        if self._cached[0] != index:
            raw = self.inner.read(index * NETASCII_CHUNK, NETASCII_CHUNK)
            self._cached = (index, raw.replace(b"\r", b"\r\0").replace(b"\n", b"\r\n"))
        return self._cached[1]

    def read(self, offset: int, length: int) -> bytes:
        out = bytearray()
        while length > 0 and offset < self.size:
            index = bisect.bisect_right(self.starts, offset) - 1
            piece = self._converted(index)[offset - self.starts[index]:][:length]
            if not piece:  # the file is shorter than when it was counted (truncated meanwhile): no more to read
                break
            out += piece
            offset += len(piece)
            length -= len(piece)
        return bytes(out)


def netascii_starts(inner: Source) -> Generator[None, None, list[int]]:
    """NetasciiSource's counting pass, a step per NETASCII_CHUNK of the input (about 0.1 ms): returns the
    output offset where each input chunk begins, and last the converted size."""
    starts = [0]
    for offset in range(0, inner.size, NETASCII_CHUNK):
        chunk = inner.read(offset, NETASCII_CHUNK)
        starts.append(starts[-1] + len(chunk) + chunk.count(b"\n") + chunk.count(b"\r"))
        yield
    return starts


def finished(steps: Generator):
    """What a generator of steps returns, its steps run here at once."""
    while True:
        try:
            next(steps)
        except StopIteration as end:
            return end.value


class NetasciiDecoder:
    """Netascii to local text for uploads: CR LF -> LF, CR NUL -> CR; a CR split across blocks is held."""

    def __init__(self, sink: Sink):
        self.sink = sink
        self.held_cr = False

    def write(self, data: bytes) -> None:
        if self.held_cr:
            data = b"\r" + data
            self.held_cr = False
        if data.endswith(b"\r"):
            data, self.held_cr = data[:-1], True
        self.sink.write(data.replace(b"\r\n", b"\n").replace(b"\r\0", b"\r"))

    def commit(self) -> None:
        if self.held_cr:
            self.sink.write(b"\r")
            self.held_cr = False
        self.sink.commit()

    def abort(self) -> None:
        self.sink.abort()
