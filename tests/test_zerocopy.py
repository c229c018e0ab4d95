"""Zero-copy file bodies and their fallback, proven from the outside.

* ``strace`` of ``wirespeed serve DIR``: a 64 MiB download moves through ``sendfile`` (and the
  head goes out with ``MSG_MORE``), no ``read``/``pread64`` carries payload; ``--no-zero-copy``
  shows the opposite, so the proof can fail.
* Faults, over both body paths and both loops: a client that disconnects mid-transfer releases
  its descriptors at once; a file truncated while being sent ends the response by closing the
  connection, with only true file bytes before; a client that stops reading is dropped by the
  send timeout; sendfile refusing a file falls back to copying.
* Ordering: a file response queued behind a large buffered response, on one connection.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import os
import re
import shutil
import socket
import struct
import time
from pathlib import Path

import pytest

from conftest import RawClient, StartServer
from static_fixtures import (
    HELLO,
    Connect,
    Media,
    StartStatic,
    StaticProcess,
    fetch,
    open_fds,
    pattern,
    request,
    stop_gracefully,
    wait_until,
)
from wirespeed.io import zerocopy
from wirespeed.io.flow import WriteFlow
from wirespeed.server.app import App, Response

pytest_plugins = ["static_fixtures"]

both_loops = pytest.mark.asyncio(loop_factories=["uvloop", "asyncio"])

MiB = 1024 * 1024


def _file_fds(name: str) -> list[int]:
    return [fd for fd, target in open_fds().items() if target.endswith(name)]


async def _read_head(client: RawClient) -> dict[str, str]:
    head = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1.1 200"), lines[0]
    return {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}


def _abort(client: RawClient) -> None:
    """Vanish like a killed client: RST, no FIN handshake."""
    sock = client.writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.writer.transport.abort()


# -- faults ----------------------------------------------------------------------------------------


@both_loops
async def test_descriptors_released_after_normal_responses(
    static_server: StartStatic, media: Media, connect: Connect
) -> None:
    server = await static_server()
    await fetch(server.port, "/hello.txt")  # the first connection creates lazily-made objects
    before = set(open_fds())
    for _ in range(3):
        client = await connect(server.port)
        await client.send(
            request("/data.bin") + request("/hello.txt", headers={"Range": "bytes=0-1"})
        )
        assert (await client.response()).body == media.files["data.bin"]
        assert (await client.response()).body == HELLO[:2]
        await client.close()
    await wait_until(lambda: not server.state.connections, 2)
    server.state.file_cache.clear()  # cached descriptors are not leaks
    await wait_until(lambda: set(open_fds()) <= before, 1)


@both_loops
@pytest.mark.parametrize("limit_rate", [None, 1 * MiB], ids=["full-speed", "paced"])
async def test_client_disconnect_mid_transfer_releases_descriptors_at_once(
    static_server: StartStatic, media: Media, connect: Connect, limit_rate: int | None
) -> None:
    # Paced, the server is mostly asleep between chunks: the disconnect must still be noticed.
    path = media.root / "movie.mp4"
    with path.open("wb") as f:
        f.truncate(64 * MiB)  # sparse: large without costing disk or time
    server = await static_server(limit_rate=limit_rate)
    before = set(open_fds())
    client = await connect(server.port, rcvbuf=64 * 1024)
    await client.send(request("/movie.mp4"))
    head = await _read_head(client)
    assert head["content-length"] == str(64 * MiB)
    await client.reader.readexactly(256 * 1024)
    # Mid-transfer: the server holds the file (and, zero-copy, a duplicate of the socket).
    await wait_until(lambda: bool(_file_fds("movie.mp4")), 2)
    assert server.state.connections
    _abort(client)
    server.state.file_cache.clear()  # cached descriptors are not leaks
    released = await wait_until(lambda: set(open_fds()) <= before, 2)
    assert released < 0.5, f"descriptors released only after {released:.2f}s"
    assert not server.state.connections
    server.state.file_cache.clear()  # cached descriptors are not leaks
    assert not _file_fds("movie.mp4")
    # And the server carries on.
    assert (await fetch(server.port, "/hello.txt")).body == HELLO


@both_loops
async def test_file_truncated_while_sent_closes_the_connection(
    static_server: StartStatic, media: Media, connect: Connect
) -> None:
    size, cut = 16 * MiB, 8 * MiB
    data = pattern(size, seed=7)
    path = media.add("shrinking.bin", data)
    server = await static_server()
    client = await connect(server.port, rcvbuf=64 * 1024)
    await client.send(request("/shrinking.bin") + request("/hello.txt"))
    head = await _read_head(client)
    assert head["content-length"] == str(size)
    first = await client.reader.readexactly(64 * 1024)
    os.truncate(path, cut)  # page-aligned: no partly zeroed page can be in flight
    start = time.monotonic()
    rest = await client.read_to_eof(timeout=10)
    elapsed = time.monotonic() - start
    body = first + rest
    # Fewer bytes than promised, then the end of the connection (no hang, no second response).
    assert len(body) < size
    assert len(body) <= cut
    assert body == data[: len(body)], "bytes that are not the file's were sent"
    assert b"HTTP/1.1" not in rest
    assert elapsed < 5
    await wait_until(lambda: not server.state.connections, 2)
    server.state.file_cache.clear()  # cached descriptors are not leaks
    assert not _file_fds("shrinking.bin")


@both_loops
async def test_file_growing_while_sent_sends_exactly_the_announced_length(
    static_server: StartStatic, media: Media, connect: Connect
) -> None:
    # Content-Length comes from fstat when the response starts; bytes appended later belong to
    # no response and must not leak into the stream (they would be read as the next response).
    data = pattern(16 * MiB, seed=8)
    path = media.add("growing.log", data)
    server = await static_server()
    client = await connect(server.port, rcvbuf=64 * 1024)
    await client.send(request("/growing.log") + request("/hello.txt"))
    head = await _read_head(client)
    assert head["content-length"] == str(16 * MiB)
    first = await client.reader.readexactly(64 * 1024)
    with path.open("ab") as f:
        f.write(b"APPENDED" * 100_000)
    rest = await asyncio.wait_for(client.reader.readexactly(16 * MiB - len(first)), 20)
    assert first + rest == data
    nxt = await client.response()
    assert (nxt.status, nxt.body) == (200, HELLO)


@both_loops
async def test_client_that_stops_reading_is_dropped_by_the_send_timeout(
    static_server: StartStatic, media: Media, connect: Connect
) -> None:
    with (media.root / "huge.bin").open("wb") as f:
        f.truncate(256 * MiB)
    server = await static_server(config={"send_timeout": 0.5})
    before = set(open_fds())
    client = await connect(server.port, rcvbuf=16 * 1024)
    await client.send(request("/huge.bin"))
    await wait_until(lambda: bool(server.state.connections), 2)
    start = time.monotonic()
    await wait_until(lambda: not server.state.connections, 5)
    dropped = time.monotonic() - start
    # The stall starts once the socket buffers are full (well under a second on loopback),
    # then 0.5 s of no progress, checked every tick (0.125 s).
    assert dropped < 2.5, dropped
    received = len(await client.read_to_eof(timeout=5))
    assert received < 256 * MiB
    server.state.file_cache.clear()  # cached descriptors are not leaks
    await wait_until(lambda: set(open_fds()) - {client_fd(client)} <= before, 1)


@pytest.mark.asyncio(loop_factories=["uvloop"])
async def test_slow_but_steady_reader_is_not_dropped_by_the_send_timeout(
    static_server: StartStatic, media: Media
) -> None:
    # The complement of the test above: send_timeout is "accepts no bytes for this long"
    # (ServerConfig), so a client that reads ~640 KiB/s without pause must keep its download.
    # Read with plain recv() calls: a StreamReader would buffer megabytes and then stop reading.
    with (media.root / "huge.bin").open("wb") as f:
        f.truncate(256 * MiB)
    server = await static_server(config={"send_timeout": 1.0})
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, ("127.0.0.1", server.port))
        await loop.sock_sendall(sock, request("/huge.bin"))
        start = time.monotonic()
        received = 0
        while time.monotonic() - start < 2.0:
            data = await asyncio.wait_for(loop.sock_recv(sock, 64 * 1024), 2)
            assert data, f"dropped after {time.monotonic() - start:.2f}s, {received} bytes"
            received += len(data)
            await asyncio.sleep(0.1)
        assert server.state.connections, (
            f"server dropped a client reading {received / 2.0 / 1024:.0f} KiB/s"
        )
    finally:
        sock.close()


def client_fd(client: RawClient) -> int:
    sock = client.writer.get_extra_info("socket")
    return sock.fileno() if sock is not None else -1


@both_loops
async def test_sendfile_refused_falls_back_to_copying(
    serve: StartServer, media: Media, connect: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A filesystem without splice support makes sendfile fail with EINVAL before moving a byte.
    # The module promises to switch to the copying path then; the client must not notice.
    calls = []

    def refuse(out_fd: int, in_fd: int, offset: int, count: int) -> int:
        calls.append(count)
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(zerocopy.os, "sendfile", refuse)
    app = App()
    app.static("/", media.root)
    server = await serve(app, zero_copy=True)
    client = await connect(server.port)
    await client.send(request("/data.bin") + request("/hello.txt"))
    first = await client.response()
    second = await client.response()
    await client.close()
    assert calls, "sendfile was not even tried"
    assert (first.status, first.body) == (200, media.files["data.bin"])
    assert (second.status, second.body) == (200, HELLO)


@both_loops
async def test_file_after_large_buffered_response_keeps_order(
    serve: StartServer, media: Media, connect: Connect, zero_copy: bool
) -> None:
    # The buffered response is still in the transport when the file response starts: sendfile
    # on the socket must wait until it has drained, or the bytes interleave.
    blob = pattern(3 * MiB, seed=9)
    big = pattern(3 * MiB + 5, seed=10)
    media.add("big.bin", big)
    app = App()

    @app.get("/blob")
    def blob_handler(request: object) -> Response:
        return Response(blob, content_type="application/octet-stream")

    app.static("/files", media.root)
    server = await serve(app, zero_copy=zero_copy)
    client = await connect(server.port, rcvbuf=64 * 1024)
    await client.send(
        request("/blob")
        + request("/files/big.bin")
        + request("/blob")
        + request("/files/big.bin", headers={"Range": "bytes=1-2,-3"})
        + request("/files/hello.txt")
    )
    await asyncio.sleep(0.2)  # let the server queue up against the unread socket
    answers = [await client.response(timeout=20) for _ in range(5)]
    await client.close()
    assert answers[0].body == blob
    assert answers[1].body == big
    assert answers[2].body == blob
    assert answers[3].status == 206 and big[1:3] in answers[3].body and big[-3:] in answers[3].body
    assert answers[4].body == HELLO


@both_loops
async def test_concurrent_downloads_all_complete(static_server: StartStatic, media: Media) -> None:
    data = pattern(4 * MiB, seed=11)
    media.add("shared.bin", data)
    server = await static_server()

    async def download(rng: str | None) -> bytes:
        headers = {"Range": rng} if rng else {}
        return (await fetch(server.port, "/shared.bin", headers=headers, timeout=20)).body

    bodies = await asyncio.gather(
        download(None), download(None), download("bytes=1000-"), download("bytes=-5000")
    )
    assert bodies == [data, data, data[1000:], data[-5000:]]


# -- strace: the bytes go through sendfile, or (switched off) through pread ------------------------

STRACE = shutil.which("strace")
needs_strace = pytest.mark.skipif(STRACE is None, reason="strace is not installed")
_CALL = re.compile(r"^(\d+)\s+(\d+\.\d+)\s+(\w+)\((.*)\)\s+=\s+(-?\d+)")
# With -f, a call interrupted by another thread's is split: "<... sendfile resumed>...) = N".
_RESUMED = re.compile(r"^(\d+)\s+(\d+\.\d+)\s+<\.\.\. (\w+) resumed>(.*)\)\s+=\s+(-?\d+)")


def _calls(trace: Path, since: float) -> list[tuple[str, str, int]]:
    """(syscall, arguments, return value) of the calls traced after ``since``."""
    out = []
    for line in trace.read_text(errors="replace").splitlines():
        match = _CALL.match(line) or _RESUMED.match(line)
        if match and float(match.group(2)) >= since:
            out.append((match.group(3), match.group(4), int(match.group(5))))
    return out


def _download(port: int, path: str) -> tuple[int, str]:
    """Bytes of body and their sha256, read with a plain blocking socket."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request(path, headers={"Connection": "close"}))
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            assert chunk, "closed before the head"
            buf += chunk
        head, _, body = buf.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head[:100]
        digest = hashlib.sha256(body)
        n = len(body)
        while chunk := sock.recv(1 << 20):
            digest.update(chunk)
            n += len(chunk)
    return n, digest.hexdigest()


@pytest.fixture(scope="module")
def movie_64mib(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("strace-root")
    block = os.urandom(MiB)
    digest = hashlib.sha256()
    with (root / "movie.mp4").open("wb") as f:
        for i in range(64):
            chunk = block[:-4] + i.to_bytes(4, "big")  # every MiB different
            f.write(chunk)
            digest.update(chunk)
    return root, digest.hexdigest()


def _traced_download(serve_static_cli, root: Path, tmp_path: Path, *args: str) -> list:
    trace = tmp_path / "trace.txt"
    prefix = [STRACE or "strace", "-f", "-ttt", "-e", "trace=sendfile,read,pread64,sendto"]
    p: StaticProcess = serve_static_cli(root, *args, prefix=[*prefix, "-o", str(trace)])
    since = time.time()
    size, digest = _download(p.port, "/movie.mp4")
    stop_gracefully(p)
    return [size, digest, _calls(trace, since)]


@needs_strace
@pytest.mark.slow
def test_strace_zero_copy_moves_the_body_with_sendfile(
    serve_static_cli, movie_64mib: tuple[Path, str], tmp_path: Path
) -> None:
    root, expected = movie_64mib
    size, digest, calls = _traced_download(serve_static_cli, root, tmp_path)
    assert (size, digest) == (64 * MiB, expected)
    sent = sum(ret for name, _, ret in calls if name == "sendfile" and ret > 0)
    assert sent == 64 * MiB, f"sendfile moved {sent} bytes"
    payload_reads = [(n, ret) for n, _, ret in calls if n in ("read", "pread64") and ret >= 4096]
    assert not payload_reads, f"file data went through userspace: {payload_reads[:5]}"
    # Head and body leave together: the head is sent with MSG_MORE, right before the file.
    heads = [args for name, args, _ in calls if name == "sendto" and '"HTTP/1.1 200' in args]
    assert len(heads) == 1, heads
    assert "MSG_MORE" in heads[0], heads[0]


@needs_strace
@pytest.mark.slow
def test_strace_no_zero_copy_reads_with_pread_and_never_sendfile(
    serve_static_cli, movie_64mib: tuple[Path, str], tmp_path: Path
) -> None:
    root, expected = movie_64mib
    size, digest, calls = _traced_download(serve_static_cli, root, tmp_path, "--no-zero-copy")
    assert (size, digest) == (64 * MiB, expected)
    assert not [c for c in calls if c[0] == "sendfile"], "sendfile used despite --no-zero-copy"
    preads = [ret for name, _, ret in calls if name == "pread64" and ret > 0]
    assert sum(preads) == 64 * MiB
    # Bounded chunks: no read is bigger than the fallback's chunk size.
    assert max(preads) <= zerocopy.FALLBACK_CHUNK


# -- FileSender.send_now: what the socket takes at once, no task ---------------------------------


async def _pair(rcvbuf: int | None = None) -> tuple[asyncio.Transport, socket.socket]:
    """A client transport (what the server writes with) and the raw socket reading it."""
    loop = asyncio.get_running_loop()
    listener = socket.create_server(("127.0.0.1", 0))
    if rcvbuf is not None:
        # Before accept: the accepted socket inherits it, and its window stays small.
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    transport, _ = await loop.create_connection(asyncio.Protocol, *listener.getsockname())
    peer, _ = listener.accept()
    listener.close()
    peer.setblocking(False)
    return transport, peer  # type: ignore[return-value]


async def _read_all(sock: socket.socket, size: int) -> bytes:
    loop = asyncio.get_running_loop()
    out = bytearray()
    async with asyncio.timeout(20):
        while len(out) < size:
            out += await loop.sock_recv(sock, 1 << 20)
    return bytes(out)


@both_loops
async def test_send_now_sends_a_small_file_whole_without_waiting(tmp_path: Path) -> None:
    data = pattern(100_000, seed=21)
    (tmp_path / "f").write_bytes(data)
    transport, peer = await _pair()
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    sender = zerocopy.FileSender(asyncio.get_running_loop(), transport, WriteFlow(transport))
    try:
        assert sender.send_now([b"HEAD", (10, len(data) - 10)], fd) == []
        assert await _read_all(peer, 4 + len(data) - 10) == b"HEAD" + data[10:]
        assert sender.file_bytes == len(data) - 10
    finally:
        os.close(fd)
        sender.close()
        transport.close()
        peer.close()


@both_loops
async def test_send_now_returns_the_rest_that_send_then_finishes(tmp_path: Path) -> None:
    data = pattern(8 * MiB, seed=22)
    (tmp_path / "f").write_bytes(data)
    transport, peer = await _pair(rcvbuf=64 * 1024)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    sender = zerocopy.FileSender(asyncio.get_running_loop(), transport, WriteFlow(transport))
    try:
        rest = sender.send_now([b"HEAD", (0, len(data)), b"TAIL"], fd)
        # The socket could not take 8 MiB at once (and one call moves at most MAX_CHUNK).
        assert rest and rest[-1] == b"TAIL"
        ranges = [part for part in rest if isinstance(part, tuple)]
        assert len(ranges) == 1
        offset, count = ranges[0]
        assert offset + count == len(data) and 0 < offset <= zerocopy.MAX_CHUNK
        assert sender.file_bytes == offset
        reader = asyncio.ensure_future(_read_all(peer, len(data) + 8))
        await sender.send(rest, fd)
        assert await reader == b"HEAD" + data + b"TAIL"
    finally:
        os.close(fd)
        sender.close()
        transport.close()
        peer.close()


@both_loops
async def test_send_now_leaves_everything_while_the_transport_holds_bytes(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x" * 1000)
    transport, peer = await _pair(rcvbuf=16 * 1024)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    sender = zerocopy.FileSender(asyncio.get_running_loop(), transport, WriteFlow(transport))
    try:
        transport.write(b"y" * (16 * MiB))  # more than the socket takes: some stays buffered
        assert transport.get_write_buffer_size() > 0
        segments = [b"HEAD", (0, 1000)]
        assert sender.send_now(segments, fd) == segments  # sending now would overtake them
        assert sender.file_bytes == 0
    finally:
        os.close(fd)
        sender.close()
        transport.abort()
        peer.close()


@both_loops
async def test_a_sender_closed_mid_wait_leaves_nothing_for_the_next_connection(
    serve: StartServer, media: Media, connect: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    # A client that vanishes while the server waits for room in its socket closes that
    # connection's duplicate descriptor; the next connection's duplicate usually gets the same
    # number, and must be able to wait for room too (a stale loop registration refused it).
    big = pattern(8 * MiB, seed=23)
    media.add("big.bin", big)
    app = App()
    app.static("/", media.root)
    server = await serve(app, zero_copy=True)
    for _ in range(3):
        stalled = await connect(server.port, rcvbuf=64 * 1024)
        await stalled.send(request("/big.bin"))
        await stalled.reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(0.1)  # the server is now waiting for room in the socket
        _abort(stalled)
        await wait_until(lambda: not server.state.connections, timeout=5)
        reader = await connect(server.port, rcvbuf=64 * 1024)
        await reader.send(request("/big.bin"))
        resp = await reader.response(timeout=20)
        assert (resp.status, resp.body) == (200, big)
        await reader.close()
    failures = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not failures, [r.getMessage() for r in failures]
