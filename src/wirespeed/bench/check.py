"""The peer check: a peer is measured only after it answers a scenario's request correctly.

Theory of operation
-------------------
Load tools count responses, not correct responses: a server that answers 404, an empty body or
the wrong file would post a splendid number. So before a peer is measured the lab sends the
scenario's own request with a small blocking HTTP/1.1 client and holds the answer to the
scenario's contract:

- the status (200, or 206 with the right ``Content-Range`` for the range scenario);
- the body's length and SHA-256 after undoing any ``Content-Encoding`` the peer chose, so every
  peer serves identical bytes (the coding itself is recorded, not judged: a peer that cannot
  compress is reported as sending ``identity``);
- a ``Content-Length`` on file responses, which the block client needs to frame them;
- connection handling: for keep-alive scenarios a second request on the same connection must be
  answered; for ``Connection: close`` the server must close after the response.

:func:`check` returns a :class:`CheckResult`; its ``reason`` is the one line the run shows when it
skips the peer. The client reads bodies through a digest in 1 MiB pieces, so checking a 64 MiB
file costs one pass over it and no 64 MiB buffer.
"""

from __future__ import annotations

import hashlib
import socket
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from wirespeed.bench.scenarios import HELLO, Dataset, Scenario, sha256_of

# Per-operation socket timeout of the check. A correct peer answers in milliseconds; 10 s keeps
# a 64 MiB body on a busy machine well inside it while a hung peer still fails the run quickly.
TIMEOUT = 10.0
# How long a server may take to close after a response that says "Connection: close": it
# closes right after writing; 2 s only absorbs a busy machine's scheduling delay.
CLOSE_TIMEOUT = 2.0
# A response head larger than this is broken for our purposes (real heads are < 1 KiB).
HEAD_LIMIT = 64 * 1024
# Read size of the check client; large enough that a 256 MiB body is a few hundred reads.
READ_SIZE = 1024 * 1024
# Where the check's range request starts: arbitrary, not aligned to anything, inside 256 MiB.
RANGE_CHECK_OFFSET = 123_456_789


class CheckFailed(Exception):
    """The peer broke the scenario's contract; the message is the reason shown to the user."""


@dataclass(frozen=True)
class Expected:
    """What a correct answer looks like for one scenario."""

    status: int
    length: int
    sha256: str
    content_range: str | None = None
    range_header: str | None = None
    need_content_length: bool = False


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body_length: int  # decoded length
    wire_length: int  # bytes on the wire for the body (before decoding)
    sha256: str
    head_length: int
    closed: bool = False  # the server closed the connection after this response


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    reason: str = ""
    # Observed facts kept for the report: content coding, wire body size, server header.
    facts: dict[str, str | int] = field(default_factory=dict)


def expected_for(scenario: Scenario, data: Dataset) -> Expected:
    """The contract of ``scenario`` given the data directory the peers serve."""
    if scenario.body == "hello":
        return Expected(200, len(HELLO), hashlib.sha256(HELLO).hexdigest())
    if scenario.body == "payload":
        payload = data.payload()
        return Expected(200, len(payload), hashlib.sha256(payload).hexdigest())
    path = data.file(scenario.file)
    size = path.stat().st_size
    if scenario.range_size:
        first = RANGE_CHECK_OFFSET % max(1, size - scenario.range_size)
        last = first + scenario.range_size - 1
        return Expected(
            206,
            scenario.range_size,
            sha256_of(path, first, scenario.range_size),
            content_range=f"bytes {first}-{last}/{size}",
            range_header=f"Range: bytes={first}-{last}",
            need_content_length=True,
        )
    return Expected(200, size, sha256_of(path), need_content_length=True)


def check(
    port: int, scenario: Scenario, expected: Expected, host: str = "127.0.0.1"
) -> CheckResult:
    """Send ``scenario``'s request to ``host:port`` and hold the answer to ``expected``."""
    headers = list(scenario.headers)
    if expected.range_header:
        headers.append(expected.range_header)
    try:
        with socket.create_connection((host, port), timeout=TIMEOUT) as sock:
            first = _exchange(sock, host, port, scenario.path, headers)
            facts = _judge(first, expected)
            if scenario.keep_alive:
                if first.closed:
                    raise CheckFailed("closed the connection after a keep-alive response")
                try:
                    second = _exchange(sock, host, port, scenario.path, headers)
                except (ConnectionError, CheckFailed) as exc:
                    raise CheckFailed(f"keep-alive: second request failed ({exc})") from exc
                _judge(second, expected)
            elif not first.closed and not _closes(sock):
                raise CheckFailed("kept the connection open after 'Connection: close'")
    except CheckFailed as exc:
        return CheckResult(False, str(exc))
    except TimeoutError:
        return CheckResult(False, f"no complete answer within {TIMEOUT:.0f} s")
    except OSError as exc:
        return CheckResult(False, f"connection failed: {exc.strerror or exc}")
    return CheckResult(True, facts=facts)


def _judge(response: Response, expected: Expected) -> dict[str, str | int]:
    if response.status != expected.status:
        raise CheckFailed(f"status {response.status}, expected {expected.status}")
    if expected.content_range is not None:
        got = response.headers.get("content-range")
        if got != expected.content_range:
            raise CheckFailed(f"Content-Range {got!r}, expected {expected.content_range!r}")
    if expected.need_content_length and "content-length" not in response.headers:
        raise CheckFailed("file response without Content-Length (the block client needs it)")
    if response.body_length != expected.length or response.sha256 != expected.sha256:
        raise CheckFailed(
            f"wrong body: {response.body_length} bytes sha256 {response.sha256[:12]}, "
            f"expected {expected.length} bytes sha256 {expected.sha256[:12]}"
        )
    return {
        "content_encoding": response.headers.get("content-encoding", "identity"),
        "wire_body_bytes": response.wire_length,
        "head_bytes": response.head_length,
        "server": response.headers.get("server", ""),
    }


def _closes(sock: socket.socket) -> bool:
    """True if the peer closes the connection (EOF) within :data:`CLOSE_TIMEOUT`."""
    sock.settimeout(CLOSE_TIMEOUT)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    finally:
        sock.settimeout(TIMEOUT)


class _Reader:
    """Buffered reads from a socket: up to a delimiter, or exactly ``size`` bytes in pieces."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()

    def fill(self) -> bool:
        """Read once more; False at end of stream."""
        data = self.sock.recv(READ_SIZE)
        self.buf += data
        return bool(data)

    def until(self, delimiter: bytes, limit: int) -> bytes:
        while True:
            at = self.buf.find(delimiter)
            if at >= 0:
                end = at + len(delimiter)
                out = bytes(self.buf[:end])
                del self.buf[:end]
                return out
            if len(self.buf) > limit:
                raise CheckFailed(f"no {delimiter!r} within {limit} bytes")
            if not self.fill():
                raise CheckFailed("connection closed mid-response")

    def pieces(self, size: int) -> Iterator[bytes]:
        left = size
        while left:
            if not self.buf and not self.fill():
                raise CheckFailed(f"connection closed with {left} body bytes missing")
            n = min(left, len(self.buf))
            yield bytes(self.buf[:n])
            del self.buf[:n]
            left -= n

    def rest(self) -> Iterator[bytes]:
        """Everything until the peer closes (a body delimited by close)."""
        while self.buf or self.fill():
            yield bytes(self.buf)
            self.buf.clear()


class _Decoder:
    """Incremental Content-Encoding decoding: ``feed`` pieces, then ``finish``."""

    def __init__(self, coding: str) -> None:
        self.coding = coding.strip().lower() or "identity"
        self._feed: Callable[[bytes], bytes] = bytes
        self._finish: Callable[[], bytes] = bytes
        if self.coding == "identity":
            return
        if self.coding in ("gzip", "x-gzip", "deflate"):
            # wbits 47 = 32 + 15: accept a gzip or zlib header (RFC 9110 deflate is zlib).
            z = zlib.decompressobj(47)
            self._feed, self._finish = z.decompress, z.flush
        elif self.coding == "br":
            try:
                import brotli  # noqa: PLC0415 (optional codec, needed only if a peer uses it)
            except ImportError as exc:
                raise CheckFailed("answered br but the brotli module is not installed") from exc
            br = brotli.Decompressor()
            self._feed = br.process
        elif self.coding == "zstd":
            try:
                import zstandard  # noqa: PLC0415 (optional codec, as brotli)
            except ImportError as exc:
                raise CheckFailed("answered zstd but zstandard is not installed") from exc
            zd = zstandard.ZstdDecompressor().decompressobj()
            self._feed, self._finish = zd.decompress, zd.flush
        else:
            raise CheckFailed(f"unknown Content-Encoding {coding!r}")

    def feed(self, piece: bytes) -> bytes:
        return self._feed(piece)

    def finish(self) -> bytes:
        return self._finish()


def _exchange(sock: socket.socket, host: str, port: int, path: str, headers: list[str]) -> Response:
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
    request += "".join(f"{h}\r\n" for h in headers) + "\r\n"
    sock.sendall(request.encode("latin-1"))
    reader = _Reader(sock)
    head = reader.until(b"\r\n\r\n", HEAD_LIMIT)
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise CheckFailed(f"malformed status line {lines[0][:60]!r}")
    status = int(parts[1])
    fields: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()

    decoder = _Decoder(fields.get("content-encoding", "identity"))
    digest = hashlib.sha256()
    decoded = wire = 0
    closed = False
    for piece in _body(reader, fields):
        if piece is None:  # the body was delimited by the peer closing the connection
            closed = True
            continue
        wire += len(piece)
        out = decoder.feed(piece)
        decoded += len(out)
        digest.update(out)
    out = decoder.finish()
    decoded += len(out)
    digest.update(out)

    connection = fields.get("connection", "").lower()
    says_close = "close" in connection or (
        parts[0] == "HTTP/1.0" and "keep-alive" not in connection
    )
    if says_close and not closed:
        closed = _closes(sock)
    return Response(status, fields, decoded, wire, digest.hexdigest(), len(head), closed)


def _body(reader: _Reader, fields: dict[str, str]) -> Iterator[bytes | None]:
    """The body's wire pieces, framed as RFC 9112 section 6.3 says; None marks close."""
    if "chunked" in fields.get("transfer-encoding", "").lower():
        while True:
            size_line = reader.until(b"\r\n", 1024).split(b";")[0].strip()
            size = int(size_line, 16)
            if size == 0:
                # Trailer fields, if any, end with an empty line.
                while reader.until(b"\r\n", HEAD_LIMIT) != b"\r\n":
                    pass
                return
            yield from reader.pieces(size)
            reader.until(b"\r\n", 2)
    elif "content-length" in fields:
        yield from reader.pieces(int(fields["content-length"]))
    else:
        yield from reader.rest()
        yield None
