"""``wirespeed fetch``: segmented downloads, retries from the byte reached, resume, errors.

The well-behaved peer is the in-process wirespeed server serving a folder (ranges, ETags).
The misbehaving one is :class:`RangeServer`, a few lines of asyncio that serves one byte
string with single ranges and ``If-Range`` and can drop a connection mid-segment, ignore ranges,
change its ETag, cut a body short, or start failing with 503. Every download is compared
byte-for-byte (by SHA-256) with the source. The command line runs as a real subprocess.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import StartServer
from wirespeed.server.app import App
from wirespeed.upstream import ConnectionLost, StatusError
from wirespeed.upstream.fetch import ChecksumMismatch, ResourceChanged, fetch

pytestmark = pytest.mark.asyncio(loop_factories=["uvloop", "asyncio"])

# 4 MiB and a bit: four segments of at least fetch.MIN_SEGMENT, and an uneven last byte.
SIZE = 4 * 1024 * 1024 + 123


@pytest.fixture(scope="module")
def payload() -> bytes:
    return os.urandom(SIZE)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class RangeServer:
    """Serves ``data`` at any path, with single byte ranges, ETag and If-Range."""

    data: bytes
    etag: str = '"v1"'
    ranges: bool = True
    honor_if_range: bool = True
    drop_after: int | None = None  # close one segment after this many body bytes, once
    change_etag_after: int | None = None  # requests answered before the ETag changes
    fail_after_bytes: int | None = None  # body bytes served before every answer is 503
    short: bool = False  # 200 answers stop half way and close
    status: int = 200
    seen: list[str | None] = field(default_factory=list)
    dropped: int = 0
    sent: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = dict(
                (k.strip().lower(), v.strip())
                for k, _, v in (line.partition(":") for line in lines[1:] if line)
            )
            self.seen.append(headers.get("range"))
            etag = self.etag
            if self.change_etag_after is not None and len(self.seen) > self.change_etag_after:
                etag = '"v2"'
            if self.status != 200 or (
                self.fail_after_bytes is not None and self.sent >= self.fail_after_bytes
            ):
                status = self.status if self.status != 200 else 503
                writer.write(b"HTTP/1.1 %d Nope\r\nContent-Length: 0\r\n\r\n" % status)
                continue
            wanted = headers.get("range") if self.ranges else None
            if wanted and self.honor_if_range and headers.get("if-range", etag) != etag:
                wanted = None
            extra = f"ETag: {etag}\r\n"
            if wanted:
                first_text, _, last_text = wanted.removeprefix("bytes=").partition("-")
                first = int(first_text)
                last = min(int(last_text or len(self.data) - 1), len(self.data) - 1)
                body = self.data[first : last + 1]
                status = 206
                extra += f"Content-Range: bytes {first}-{last}/{len(self.data)}\r\n"
            else:
                first, body, status = 0, self.data, 200
            writer.write(
                f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode()
            )
            if self.drop_after is not None and not self.dropped and wanted and first > 0:
                self.dropped += 1  # a segment (not the probe) dies half way, once
                writer.write(body[: self.drop_after])
                await writer.drain()
                return
            if self.short and status == 200:
                writer.write(body[: len(body) // 2])
                await writer.drain()
                return
            for i in range(0, len(body), 65536):
                writer.write(body[i : i + 65536])
                self.sent += min(65536, len(body) - i)
                await writer.drain()


@contextlib.asynccontextmanager
async def running(peer: RangeServer) -> AsyncIterator[str]:
    handlers: set[asyncio.Task[None]] = set()
    writers: set[asyncio.StreamWriter] = set()

    async def guarded(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        writers.add(writer)
        try:
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
                await peer.handle(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(guarded, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/file.bin"
    finally:
        server.close()
        for writer in writers:
            writer.close()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()


@pytest.fixture
async def static(tmp_path: Path, payload: bytes, serve: StartServer) -> str:
    """The wirespeed server with ``big.bin`` (the payload) and ``empty.bin``; its base URL."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "big.bin").write_bytes(payload)
    (root / "empty.bin").write_bytes(b"")
    app = App()
    app.static("/files", root)
    server = await serve(app)
    return f"{server.url}/files"


async def test_segmented_download_is_exact(static: str, tmp_path: Path, payload: bytes) -> None:
    out = tmp_path / "out.bin"
    out.write_bytes(b"old contents, longer than nothing")
    seen: list[tuple[int, int | None]] = []
    result = await fetch(
        f"{static}/big.bin",
        out,
        connections=4,
        sha256=sha(payload),
        progress=lambda done, total: seen.append((done, total)),
    )
    assert out.read_bytes() == payload
    assert (result.size, result.fetched, result.segments, result.retries) == (SIZE, SIZE, 4, 0)
    assert result.sha256 == sha(payload)
    assert seen[-1] == (SIZE, SIZE)
    assert not (tmp_path / "out.bin.wirespeed-state").exists()


async def test_empty_file(static: str, tmp_path: Path) -> None:
    out = tmp_path / "empty.out"
    result = await fetch(f"{static}/empty.bin", out, sha256=sha(b""))
    assert out.read_bytes() == b""
    assert result.size == 0


async def test_dropped_connection_resumes_from_the_byte_reached(
    tmp_path: Path, payload: bytes
) -> None:
    peer = RangeServer(payload, drop_after=300_000)
    out = tmp_path / "out.bin"
    async with running(peer) as url:
        result = await fetch(url, out, connections=4, sha256=sha(payload))
    assert out.read_bytes() == payload
    assert (peer.dropped, result.retries) == (1, 1)
    # The retry asked for the rest of the dropped segment only, from the byte it reached.
    starts = [int(r.removeprefix("bytes=").split("-")[0]) for r in peer.seen if r]
    segment_starts = {SIZE * i // 4 for i in range(4)}
    resumed = [s for s in starts if s not in segment_starts]
    assert len(resumed) == 1
    assert resumed[0] - 300_000 in segment_starts


async def test_no_range_support_falls_back_to_one_stream(tmp_path: Path, payload: bytes) -> None:
    peer = RangeServer(payload, ranges=False)
    out = tmp_path / "out.bin"
    async with running(peer) as url:
        result = await fetch(url, out, connections=8)
    assert out.read_bytes() == payload
    assert (result.segments, len(peer.seen)) == (0, 1)  # the probe was the download


async def test_short_body_without_ranges_is_an_error(tmp_path: Path, payload: bytes) -> None:
    async with running(RangeServer(payload, ranges=False, short=True)) as url:
        with pytest.raises(ConnectionLost, match="short body") as info:
            await fetch(url, tmp_path / "out.bin")
    assert info.value.received == SIZE // 2


@pytest.mark.parametrize("honor_if_range", [True, False], ids=["if-range", "etag-compare"])
async def test_changed_etag_between_segments(
    tmp_path: Path, payload: bytes, honor_if_range: bool
) -> None:
    # The probe sees "v1"; every later answer carries "v2". A server honouring If-Range answers
    # 200 (the whole new version); one ignoring it answers 206 with the new ETag.
    peer = RangeServer(payload, change_etag_after=1, honor_if_range=honor_if_range)
    async with running(peer) as url:
        with pytest.raises(ResourceChanged, match="changed during the download"):
            await fetch(url, tmp_path / "out.bin", connections=4)


async def test_interrupted_download_resumes_with_continue(tmp_path: Path, payload: bytes) -> None:
    out = tmp_path / "out.bin"
    state = tmp_path / "out.bin.wirespeed-state"
    # The server starts answering 503 after 1.5 MiB: the fetch fails and keeps its state.
    async with running(RangeServer(payload, fail_after_bytes=1_500_000)) as url:
        with pytest.raises(StatusError, match="503"):
            await fetch(url, out, connections=4)
        saved = json.loads(state.read_text())
        assert saved["size"] == SIZE
        done = sum(next_ - start for start, _, next_ in saved["segments"])
        assert 0 < done < SIZE

    peer = RangeServer(payload)
    async with running(peer) as healthy:
        # The state applies to its URL only; the healthy server listens on another port.
        saved["url"] = healthy
        state.write_text(json.dumps(saved))
        result = await fetch(healthy, out, connections=4, resume=True, sha256=sha(payload))
    assert out.read_bytes() == payload
    assert result.fetched == SIZE - done
    assert not state.exists()


async def test_continue_a_plain_prefix_without_state(tmp_path: Path, payload: bytes) -> None:
    out = tmp_path / "out.bin"
    out.write_bytes(payload[:1_000_000])  # e.g. what an interrupted curl left
    async with running(RangeServer(payload)) as url:
        result = await fetch(url, out, connections=2, resume=True, sha256=sha(payload))
    assert out.read_bytes() == payload
    assert result.fetched == SIZE - 1_000_000


async def test_checksum_mismatch(static: str, tmp_path: Path) -> None:
    with pytest.raises(ChecksumMismatch, match="sha256 is"):
        await fetch(f"{static}/big.bin", tmp_path / "out.bin", sha256="0" * 64)


async def test_http_error_status(static: str, tmp_path: Path) -> None:
    with pytest.raises(StatusError, match="404"):
        await fetch(f"{static}/missing.bin", tmp_path / "out.bin")
    assert not (tmp_path / "out.bin").exists()  # nothing created for a failed probe


# -- the command line, as a subprocess ----------------------------------------------------------


@functools.cache
def fetch_command() -> tuple[str, ...]:
    """``python -m wirespeed fetch`` once cli.py routes it, else this module's own entry."""
    wired = subprocess.run(
        [sys.executable, "-m", "wirespeed", "fetch", "--help"], capture_output=True, check=False
    )
    if wired.returncode == 0:
        return (sys.executable, "-m", "wirespeed", "fetch")
    return (sys.executable, "-m", "wirespeed.upstream.fetch")


async def run_fetch(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *fetch_command(), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.asyncio(loop_factories=["asyncio"])  # the loop only serves; the child has its own
async def test_cli_success_and_errors(static: str, tmp_path: Path, payload: bytes) -> None:
    out = tmp_path / "cli.bin"
    code, _, stderr = await run_fetch(
        f"{static}/big.bin", "-o", str(out), "--connections", "3", "--sha256", sha(payload)
    )
    assert code == 0, stderr
    assert out.read_bytes() == payload
    assert re.fullmatch(r"wirespeed fetch: .*3 ranges.*sha256 ok\n", stderr), stderr

    code, _, stderr = await run_fetch(f"{static}/nope.bin", "-o", str(tmp_path / "x"))
    assert code == 1
    assert re.fullmatch(r"wirespeed fetch: error: 404 Not Found from http://\S+\n", stderr)

    code, _, stderr = await run_fetch(f"{static}/big.bin", "-o", str(out), "--sha256", "f" * 64)
    assert code == 1
    assert stderr.startswith("wirespeed fetch: error: ") and "sha256 is" in stderr
    assert stderr.count("\n") == 1


@pytest.mark.asyncio(loop_factories=["asyncio"])
async def test_cli_bad_arguments_exit_2(tmp_path: Path) -> None:
    for args in (
        ["not a url"],
        ["ftp://example.com/x"],
        ["http://127.0.0.1:1/x", "--connections", "0"],
        ["http://127.0.0.1:1/x", "--sha256", "abc"],
    ):
        code, _, stderr = await run_fetch(*args)
        assert code == 2, args
        assert stderr.startswith("wirespeed fetch: error: ") and stderr.count("\n") == 1, stderr


@pytest.mark.asyncio(loop_factories=["asyncio"])
async def test_cli_changed_etag_and_refused(tmp_path: Path, payload: bytes) -> None:
    async with running(RangeServer(payload, change_etag_after=1)) as url:
        code, _, stderr = await run_fetch(url, "-o", str(tmp_path / "x"), "--connections", "4")
    assert code == 1
    assert re.fullmatch(r"wirespeed fetch: error: \S+ changed during the download .*\n", stderr)
    with contextlib.closing(__import__("socket").socket()) as s:
        s.bind(("127.0.0.1", 0))  # bound, not listening: connection refused
        port = s.getsockname()[1]
        code, _, stderr = await run_fetch(f"http://127.0.0.1:{port}/x", "-o", str(tmp_path / "y"))
    assert code == 1
    assert re.fullmatch(r"wirespeed fetch: error: cannot connect to \S+: .*\n", stderr), stderr


async def test_state_without_its_file_starts_over(tmp_path: Path, payload: bytes) -> None:
    out = tmp_path / "out.bin"
    async with running(RangeServer(payload)) as url:
        # A state claiming everything is done, but the file it describes was deleted.
        state = {"url": url, "size": SIZE, "etag": '"v1"', "last_modified": None}
        state["segments"] = [[0, SIZE, SIZE]]
        (tmp_path / "out.bin.wirespeed-state").write_text(json.dumps(state))
        result = await fetch(url, out, resume=True, sha256=sha(payload))
    assert result.fetched == SIZE
    assert out.read_bytes() == payload
