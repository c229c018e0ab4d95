"""Fixtures and helpers for the static-file, zero-copy and pacing suites.

Loaded by ``tests/test_static*.py``, ``tests/test_zerocopy.py`` and ``tests/test_pacing.py`` with
``pytest_plugins = ["static_fixtures"]``; it builds on the in-process server and the raw client
of ``conftest.py``.

* :func:`zero_copy` parametrizes a test over both body paths: ``sendfile`` (zero-copy) and
  ``pread`` (the bounded-chunk fallback, ``ServerConfig(zero_copy=False)``). STYLE.md item 4: the
  suite runs both.
* :func:`media` lays out a served folder next to a *secret* file that must never be served, with
  every mtime set to :data:`OLD_MTIME`, so validators and dates are deterministic.
* :func:`static_server` starts an in-process server for a folder with ``StaticFiles`` options.
* :func:`parse_byteranges` reads a ``multipart/byteranges`` body strictly (RFC 9110 §14.6,
  RFC 2046 §5.1.1): a framing mistake is a test failure, not something tolerated.
* :func:`serve_static_cli` runs ``wirespeed serve DIR`` in a subprocess, optionally under a
  prefix command (``strace``), and parses the URL it prints for ``--port 0``.

The test modules import helpers from here before ``pytest_plugins`` registers it, too late for
pytest's assertion rewriting, hence PYTEST_DONT_REWRITE; the asserts here carry their own messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from conftest import HttpResponse, RawClient, StartServer
from wirespeed.server.app import App
from wirespeed.server.runner import Server

# Every file of the served folder is dated 2020-09-13T12:26:40Z: a whole second (so a date in
# If-Range / If-Modified-Since can equal Last-Modified exactly) and long before "now" (so the
# server's clamp of Last-Modified to Date never applies).
OLD_MTIME = 1_600_000_000
SECRET = b"TOP-SECRET-7f3c9a: this file lives next to the root and must never be served\n"
HELLO = b"hello, static world\n"
INDEX = b"<!doctype html><title>page</title>\n"


def pattern(size: int, seed: int = 0) -> bytes:
    """``size`` reproducible pseudo-random bytes: any misplaced byte shows in a comparison."""
    return random.Random(seed).randbytes(size)


def set_mtime(path: Path, mtime: float = OLD_MTIME) -> None:
    os.utime(path, (mtime, mtime), follow_symlinks=False)


@dataclass
class Media:
    """The served folder (``root``), the folder around it (``outside``) and their contents."""

    root: Path
    outside: Path
    files: dict[str, bytes] = field(default_factory=dict)

    def add(self, relative: str, data: bytes, mtime: float = OLD_MTIME) -> Path:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        set_mtime(path, mtime)
        self.files[relative] = data
        return path


@pytest.fixture
def media(tmp_path: Path) -> Media:
    """``tmp/root`` (served) and ``tmp/secret.txt`` (not), with a few files and folders.

    root/hello.txt            HELLO
    root/data.bin             200,000 pseudo-random bytes
    root/empty.txt            zero bytes
    root/page/index.html      INDEX          (a folder with an index)
    root/nolist/a.txt         b"a"           (a folder without one: never listed)
    root/sub/inner.txt        b"inner\\n"
    """
    outside = tmp_path
    (outside / "secret.txt").write_bytes(SECRET)
    root = outside / "root"
    root.mkdir()
    m = Media(root=root, outside=outside)
    m.add("hello.txt", HELLO)
    m.add("data.bin", pattern(200_000, seed=1))
    m.add("empty.txt", b"")
    m.add("page/index.html", INDEX)
    m.add("nolist/a.txt", b"a")
    m.add("sub/inner.txt", b"inner\n")
    return m


@pytest.fixture(params=[True, False], ids=["sendfile", "pread"])
def zero_copy(request: pytest.FixtureRequest) -> bool:
    """Both file-body paths: zero-copy ``sendfile`` and the ``pread`` fallback."""
    return bool(request.param)


StartStatic = Callable[..., Awaitable[Server]]
Connect = Callable[..., Awaitable[RawClient]]  # conftest's `connect` fixture


@pytest.fixture
def static_server(serve: StartServer, media: Media, zero_copy: bool) -> StartStatic:
    """``server = await static_server(**static_options)``: serve ``media.root`` at ``/``.

    ``root=`` serves another folder, ``prefix=`` mounts elsewhere than ``/``, ``config={...}``
    overrides :class:`ServerConfig` fields; every other keyword goes to ``StaticFiles``.
    """

    async def start(
        *,
        root: Path | None = None,
        prefix: str = "/",
        config: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Server:
        app = App()
        app.static(prefix, root or media.root, **options)
        return await serve(app, **{"zero_copy": zero_copy, **(config or {})})

    return start


# -- requests --------------------------------------------------------------------------------------


def request(
    path: str = "/",
    *,
    method: str = "GET",
    headers: Mapping[str, str] | Sequence[tuple[str, str]] = (),
) -> bytes:
    """An HTTP/1.1 request head for ``path`` (sent as given: no normalisation, no quoting)."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    lines = [f"{method} {path} HTTP/1.1", "Host: test", *(f"{k}: {v}" for k, v in items)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def fetch(
    port: int,
    path: str = "/",
    *,
    method: str = "GET",
    headers: Mapping[str, str] | Sequence[tuple[str, str]] = (),
    raw: bytes | None = None,
    timeout: float = 5.0,
) -> HttpResponse:
    """One request on a fresh connection; the parsed response (strict, see conftest)."""
    client = await RawClient.connect(port)
    try:
        await client.send(raw if raw is not None else request(path, method=method, headers=headers))
        return await client.response(method, timeout=timeout)
    finally:
        await client.close()


# -- multipart/byteranges --------------------------------------------------------------------------


@dataclass
class Part:
    start: int
    end: int  # inclusive, as in Content-Range
    size: int
    content_type: str | None
    data: bytes


_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")


def parse_content_range(value: str | None) -> tuple[int, int, int]:
    assert value is not None, "no Content-Range"
    match = _CONTENT_RANGE.fullmatch(value)
    assert match is not None, f"bad Content-Range {value!r}"
    start, end, size = (int(g) for g in match.groups())
    assert start <= end < size, f"Content-Range out of order: {value!r}"
    return start, end, size


def parse_byteranges(resp: HttpResponse) -> list[Part]:
    """The parts of a 206 ``multipart/byteranges`` response, each checked for framing."""
    ctype = resp.header("content-type")
    assert ctype is not None and ctype.startswith("multipart/byteranges"), ctype
    match = re.search(r"boundary=\"?([^\";]+)\"?", ctype)
    assert match is not None, f"no boundary in {ctype!r}"
    delimiter = b"\r\n--" + match.group(1).encode("latin-1")
    # RFC 2046: the CRLF before "--boundary" belongs to the delimiter, the first may be omitted.
    pieces = (b"\r\n" + resp.body).split(delimiter)
    assert pieces[0] == b"", f"unexpected preamble {pieces[0][:80]!r}"
    assert pieces[-1] in (b"--", b"--\r\n"), f"bad close delimiter {pieces[-1][:80]!r}"
    parts = []
    for piece in pieces[1:-1]:
        assert piece.startswith(b"\r\n"), f"delimiter not followed by CRLF: {piece[:80]!r}"
        head, sep, data = piece[2:].partition(b"\r\n\r\n")
        assert sep, "part without a blank line after its fields"
        fields = {}
        for line in head.split(b"\r\n"):
            name, colon, value = line.partition(b":")
            assert colon, f"bad part field {line!r}"
            fields[name.strip().lower().decode()] = value.strip().decode("latin-1")
        start, end, size = parse_content_range(fields.get("content-range"))
        assert len(data) == end - start + 1, f"part length {len(data)} != {start}-{end}"
        parts.append(Part(start, end, size, fields.get("content-type"), data))
    return parts


# -- descriptors -----------------------------------------------------------------------------------


def open_fds(pid: int | str = "self") -> dict[int, str]:
    """This process's (or ``pid``'s) open descriptors and what each points to."""
    out = {}
    base = f"/proc/{pid}/fd"
    for name in os.listdir(base):
        with contextlib.suppress(OSError):  # closed between listdir and readlink
            out[int(name)] = os.readlink(f"{base}/{name}")
    return out


async def wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.01) -> float:
    """Seconds until ``predicate()`` held; raises AssertionError after ``timeout``."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not predicate():
        if loop.time() - start > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(step)
    return loop.time() - start


# -- wirespeed serve DIR in a subprocess -----------------------------------------------------------


@dataclass
class StaticProcess:
    proc: subprocess.Popen[bytes]
    url: str
    pid: int  # the server's own pid (from its banner), not a wrapper's such as strace

    @property
    def port(self) -> int:
        return urllib.parse.urlsplit(self.url).port or 80


def _banner_pid(line: str) -> int | None:
    match = re.search(r"\(pid (\d+)\)", line)
    return int(match.group(1)) if match else None


def start_static_process(
    root: Path, *args: str, prefix: Sequence[str] = (), ready_timeout: float = 20.0
) -> StaticProcess:
    """Start ``python -m wirespeed serve ROOT --port 0 ARGS`` and wait for its banner.

    The caller must :func:`kill_static_process` it (the fixtures below do).
    """
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [*prefix, sys.executable, "-m", "wirespeed", "serve", str(root), "--port", "0"]
    proc = subprocess.Popen(
        [*cmd, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,  # its own process group: cleanup reaches a wrapper's child too
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], ready_timeout)
    line = proc.stdout.readline().decode() if ready else ""
    match = re.search(r"http://[^\s]+:\d+", line)
    pid = _banner_pid(line)
    if match is None or pid is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=10)
        raise AssertionError(f"no banner within {ready_timeout}s: {line!r}; {err.decode()[-2000:]}")
    return StaticProcess(proc, match.group(0), pid)


def kill_static_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


@pytest.fixture
def serve_static_cli() -> Iterator[Callable[..., StaticProcess]]:
    """``p = serve_static_cli(root, "--no-zero-copy", prefix=["strace", ...])``.

    :func:`start_static_process` for one test; every process started is killed at the end.
    """
    started: list[subprocess.Popen[bytes]] = []

    def start(root: Path, *args: str, prefix: Sequence[str] = ()) -> StaticProcess:
        p = start_static_process(root, *args, prefix=prefix)
        started.append(p.proc)
        return p

    yield start
    for proc in started:
        kill_static_process(proc)


def stop_gracefully(p: StaticProcess, timeout: float = 10.0) -> None:
    """SIGTERM the server (not a wrapper) and wait for the whole command to end."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(p.pid, signal.SIGTERM)
    p.proc.wait(timeout)


# -- real-client helpers ---------------------------------------------------------------------------

FFMPEG = shutil.which("ffmpeg")
FFPROBE = shutil.which("ffprobe")
CURL = shutil.which("curl")


def make_mp4(path: Path, seconds: int = 5) -> None:
    """A small H.264 (or MPEG-4 part 2) mp4 with its index first and a keyframe every second.

    The noise filter keeps it from compressing to a few KB (testsrc is very regular), so that a
    seek lands far enough into the file that ffprobe must issue a new Range request rather than
    read ahead.
    """
    assert FFMPEG is not None
    encoders = subprocess.run(
        [FFMPEG, "-hide_banner", "-encoders"], capture_output=True, text=True, check=True
    ).stdout
    codec = (
        ["-c:v", "libx264", "-preset", "ultrafast"]
        if " libx264 " in encoders
        else ["-c:v", "mpeg4", "-q:v", "2"]
    )
    subprocess.run(
        [
            FFMPEG, "-v", "error", "-y",
            "-f", "lavfi", "-i", f"testsrc=duration={seconds}:size=320x240:rate=25",
            "-vf", "noise=alls=30:allf=t",
            *codec, "-pix_fmt", "yuv420p", "-g", "25", "-movflags", "+faststart",
            str(path),
        ],
        check=True,
        timeout=60,
    )  # fmt: skip


class RecordingProxy:
    """A TCP relay in front of a server that records what clients ask for.

    ``proxy.port`` accepts connections and relays them to ``upstream``; ``proxy.sent`` holds the
    bytes each client connection sent (request heads), ``proxy.received`` the count of bytes
    the server sent back. Used to prove that a client (ffprobe) seeks with Range requests.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sent: list[bytearray] = []
        self.received = 0
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # closed
            up = socket.create_connection(self.upstream)
            record = bytearray()
            with self._lock:
                self.sent.append(record)
                self._sockets += (conn, up)
            threading.Thread(target=self._pump, args=(conn, up, record), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, conn, None), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, record: bytearray | None) -> None:
        try:
            while data := src.recv(65536):
                if record is not None:
                    record += data
                else:
                    with self._lock:
                        self.received += len(data)
                dst.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def range_requests(self) -> list[str]:
        """Every Range header value clients sent, in order of connection."""
        with self._lock:
            heads = [bytes(r) for r in self.sent]
        return [m.decode() for h in heads for m in re.findall(rb"(?im)^range:\s*([^\r\n]*)", h)]

    def close(self) -> None:
        self.listener.close()
        with self._lock:
            for sock in self._sockets:
                sock.close()
