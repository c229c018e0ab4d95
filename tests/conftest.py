"""Shared fixtures for the server-core suite: event loops, an in-process server, a raw client.

Every async test in the server-core modules runs on both uvloop and the plain asyncio loop
(STYLE.md item 12), through pytest-asyncio's ``pytest_asyncio_loop_factories`` hook. Test modules
owned by others keep the default loop unless they ask for both with
``@pytest.mark.asyncio(loop_factories=["uvloop", "asyncio"])``.

The raw client speaks bytes, never a library's idea of HTTP: tests write exact requests, whole or
one byte at a time (:func:`send`), and :class:`RawClient.response` parses what comes back with a
deliberately small HTTP/1.1 response reader (status line, fields, Content-Length / chunked /
read-until-close body), so a framing mistake by the server shows up as a parse failure or a wrong
body, not as a silently tolerant client.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pytest
import uvloop

from wirespeed.io.tuning import SocketOptions
from wirespeed.server.app import App
from wirespeed.server.config import ServerConfig
from wirespeed.server.runner import Server

LOOP_FACTORIES: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "uvloop": uvloop.new_event_loop,
    "asyncio": asyncio.new_event_loop,
}

# Modules of this suite: every async test in them runs on both loops.
_BOTH_LOOPS = frozenset(
    {
        "test_reader",
        "test_protocol",
        "test_limits",
        "test_timeouts",
        "test_app",
        "test_cli",
        "test_workers",
    }
)


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> Mapping[str, Any]:
    module = getattr(item, "module", None)
    name = module.__name__.rpartition(".")[2] if module is not None else ""
    marker = item.get_closest_marker("asyncio")
    if name in _BOTH_LOOPS or (marker is not None and "loop_factories" in marker.kwargs):
        return LOOP_FACTORIES
    return {"asyncio": asyncio.new_event_loop}


# -- in-process server ---------------------------------------------------------------------------

# Timeouts short enough to keep the suite fast, long enough never to fire by accident on a busy
# 2-core machine in a test that is not about them.
FAST = {
    "header_timeout": 3.0,
    "keepalive_timeout": 3.0,
    "body_timeout": 3.0,
    "send_timeout": 3.0,
    "linger_timeout": 0.5,
    "graceful_timeout": 1.0,
}


class StartServer(Protocol):
    def __call__(
        self, app: App, socket_options: SocketOptions | None = None, **config: Any
    ) -> Awaitable[Server]: ...


@pytest.fixture
async def serve() -> AsyncIterator[StartServer]:
    """Start a :class:`Server` on 127.0.0.1:<free port>; every one started is stopped at the end.

    ``await serve(app, header_timeout=0.5, limits=Limits(max_body=10))``: keyword arguments
    override :data:`FAST` and go to :class:`ServerConfig`.
    """
    servers: list[Server] = []

    async def start(app: App, socket_options: SocketOptions | None = None, **config: Any) -> Server:
        settings: dict[str, Any] = {"host": "127.0.0.1", "port": 0, **FAST, **config}
        server = Server(app, ServerConfig(**settings), socket_options)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop(0)


# -- raw client ----------------------------------------------------------------------------------


@dataclass
class HttpResponse:
    """One parsed response. Header names are lowercased; values are ``str`` (latin-1)."""

    version: str
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    chunks: list[bytes] = field(default_factory=list)  # chunk payloads when chunked
    trailers: list[tuple[str, str]] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        values = self.all(name)
        assert len(values) <= 1, f"{name} sent {len(values)} times: {values}"
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k == name]

    @property
    def closes(self) -> bool:
        """The response announces ``Connection: close``."""
        return any("close" in v.lower() for v in self.all("connection"))

    @property
    def is_chunked(self) -> bool:
        te = self.header("transfer-encoding")
        return te is not None and te.strip().lower() == "chunked"


class ResponseParseError(AssertionError):
    """The server sent something that is not a valid HTTP/1.1 response."""


def _no_body(status: int, method: str) -> bool:
    return method == "HEAD" or status < 200 or status in (204, 304)


async def send(writer: asyncio.StreamWriter, data: bytes, *, bytewise: bool = False) -> None:
    """Write ``data`` at once, or one byte per write with the event loop turning in between.

    Two loop turns per byte let an in-process server read each byte before the next is written
    (one turn runs this coroutine again before the server's read callback).
    """
    if not bytewise:
        writer.write(data)
        await writer.drain()
        return
    for i in range(len(data)):
        writer.write(data[i : i + 1])
        await writer.drain()
        await asyncio.sleep(0)
        await asyncio.sleep(0)


class RawClient:
    """A TCP client writing exact bytes and parsing responses strictly."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(
        cls, port: int, *, rcvbuf: int | None = None, host: str = "127.0.0.1"
    ) -> RawClient:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # Nagle would hold back the second of two small writes: byte-at-a-time would crawl.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if rcvbuf is not None:
            # Before connect(), so the advertised window (and its scale) follows it.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, (host, port))
        except BaseException:
            sock.close()
            raise
        reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
        return cls(reader, writer)

    async def send(self, data: bytes, *, bytewise: bool = False) -> None:
        await send(self.writer, data, bytewise=bytewise)

    async def _line(self) -> bytes:
        line = await self.reader.readline()
        if not line:
            raise EOFError("connection closed")
        if not line.endswith(b"\r\n"):
            raise ResponseParseError(f"line not ended by CRLF: {line!r}")
        return line[:-2]

    async def response(self, method: str = "GET", *, timeout: float = 5.0) -> HttpResponse:
        """Read one response (a 1xx is returned on its own, like any other)."""
        async with asyncio.timeout(timeout):
            return await self._response(method)

    async def _response(self, method: str) -> HttpResponse:
        line = await self._line()
        parts = line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
            raise ResponseParseError(f"bad status line: {line!r}")
        version = parts[0].decode()
        status = int(parts[1])
        reason = parts[2].decode("latin-1") if len(parts) > 2 else ""
        headers = await self._fields()
        resp = HttpResponse(version, status, reason, headers)
        if _no_body(status, method):
            return resp
        te = resp.all("transfer-encoding")
        lengths = resp.all("content-length")
        if te:
            if lengths:
                raise ResponseParseError("both Transfer-Encoding and Content-Length")
            if [t.strip().lower() for t in te] != ["chunked"]:
                raise ResponseParseError(f"unexpected Transfer-Encoding {te}")
            await self._chunked(resp)
        elif lengths:
            if len(lengths) != 1 or not lengths[0].isdigit():
                raise ResponseParseError(f"bad Content-Length {lengths}")
            resp.body = await self.reader.readexactly(int(lengths[0]))
        else:
            resp.body = await self.reader.read(-1)  # delimited by the end of the connection
        return resp

    async def _fields(self) -> list[tuple[str, str]]:
        fields: list[tuple[str, str]] = []
        while True:
            line = await self._line()
            if not line:
                return fields
            name, colon, value = line.partition(b":")
            if not colon or not name or name != name.strip():
                raise ResponseParseError(f"bad header line {line!r}")
            fields.append((name.decode("latin-1").lower(), value.strip().decode("latin-1")))

    async def _chunked(self, resp: HttpResponse) -> None:
        body = bytearray()
        while True:
            size_line = await self._line()
            size_text = size_line.split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise ResponseParseError(f"bad chunk size line {size_line!r}") from None
            if size == 0:
                resp.trailers = await self._fields()
                break
            data = await self.reader.readexactly(size)
            if await self.reader.readexactly(2) != b"\r\n":
                raise ResponseParseError("chunk data not followed by CRLF")
            resp.chunks.append(data)
            body += data
        resp.body = bytes(body)

    async def read_to_eof(self, timeout: float = 5.0) -> bytes:
        """Everything until the server closes (a reset counts as the end too)."""
        out = bytearray()
        async with asyncio.timeout(timeout):
            while True:
                try:
                    data = await self.reader.read(65536)
                except ConnectionError:
                    break
                if not data:
                    break
                out += data
        return bytes(out)

    async def wait_closed_by_server(self, timeout: float) -> tuple[float, bytes]:
        """Seconds until the server closed the connection, and any bytes it sent before."""
        start = time.monotonic()
        data = await self.read_to_eof(timeout)
        return time.monotonic() - start, data

    async def is_open(self, wait: float = 0.05) -> bool:
        """True if, within ``wait`` seconds, the server neither closed nor sent anything."""
        try:
            async with asyncio.timeout(wait):
                data = await self.reader.read(1)
        except TimeoutError:
            return True
        except ConnectionError:
            return False
        if data:
            raise AssertionError(f"unexpected bytes from the server: {data!r}")
        return False

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


@pytest.fixture
async def connect() -> AsyncIterator[Callable[..., Awaitable[RawClient]]]:
    """``client = await connect(port)``; every client is closed at the end of the test."""
    clients: list[RawClient] = []

    async def open_client(port: int, **kwargs: Any) -> RawClient:
        client = await RawClient.connect(port, **kwargs)
        clients.append(client)
        return client

    yield open_client
    for client in clients:
        await client.close()


@pytest.fixture(params=["whole", "bytewise"])
def bytewise(request: pytest.FixtureRequest) -> bool:
    """Parametrize a wire test over writing its input whole and one byte at a time."""
    return bool(request.param == "bytewise")


def get(path: str = "/", *, version: str = "1.1", extra: str = "") -> bytes:
    """A minimal GET request with Host (``extra`` is more header lines, each ending in CRLF)."""
    return f"GET {path} HTTP/{version}\r\nHost: test\r\n{extra}\r\n".encode()


# -- a standard application ----------------------------------------------------------------------


def make_app() -> App:
    """Routes most wire tests use. Each handler's answer shows what the server passed it."""
    from wirespeed.server.app import Request, Response, StreamResponse  # noqa: PLC0415

    app = App()

    @app.get("/")
    async def hello(request: Request) -> Response:
        return Response(b"hello", content_type="text/plain")

    @app.get("/n/{i}")
    def number(request: Request) -> bytes:
        return request.path_params["i"].encode()

    @app.get("/target")
    def target(request: Request) -> dict[str, str]:
        return {"path": request.path, "query": request.query_string.decode("latin-1")}

    @app.route("/echo", methods=["POST", "PUT"])
    async def echo(request: Request) -> Response:
        return Response(await request.body(), content_type="application/octet-stream")

    @app.post("/stream-echo")
    async def stream_echo(request: Request) -> Response:
        parts = [chunk async for chunk in request.stream()]
        return Response(b"".join(parts), headers={"X-Pieces": str(len(parts))})

    @app.post("/ignore-body")
    def ignore_body(request: Request) -> bytes:
        return b"ignored"

    @app.get("/stream")
    def stream(request: Request) -> StreamResponse:
        n = int(request.query.get("n", "3"))
        size = int(request.query.get("size", "5"))

        async def gen() -> AsyncIterator[bytes]:
            for i in range(n):
                yield bytes([97 + i % 26]) * size

        return StreamResponse(gen(), content_type="text/plain")

    @app.get("/stream-known")
    def stream_known(request: Request) -> StreamResponse:
        return StreamResponse([b"abc", b"", "def"], content_length=6)

    @app.get("/empty")
    def empty(request: Request) -> None:
        return None

    @app.get("/sleep")
    async def sleep(request: Request) -> bytes:
        await asyncio.sleep(float(request.query.get("t", "0.2")))
        return b"slept"

    return app


# -- the CLI as a subprocess ---------------------------------------------------------------------

CLI_APP = """
import asyncio
import os

from wirespeed import App, Request, Response, StreamResponse

app = App()


@app.get("/")
def index(request: Request) -> bytes:
    return b"hello from the cli"


@app.get("/pid")
def pid(request: Request) -> str:
    return str(os.getpid())


@app.get("/slow")
async def slow(request: Request) -> bytes:
    await asyncio.sleep(float(request.query.get("t", "1")))
    return b"slow done"


@app.route("/echo", methods=["POST", "PUT"])
async def echo(request: Request) -> Response:
    return Response(await request.body(), content_type="application/octet-stream")


@app.get("/stream")
def stream(request: Request) -> StreamResponse:
    async def gen():
        for i in range(3):
            yield b"part%d;" % i

    return StreamResponse(gen(), content_type="text/plain")


@app.get("/endless")
def endless(request: Request) -> StreamResponse:
    async def gen():
        piece = b"z" * 16384
        while True:
            yield piece  # from memory: never awaits

    return StreamResponse(gen())


not_an_app = 42
"""


class ServeProcess:
    """``python -m wirespeed serve ...`` running in a subprocess, with its announced URL."""

    def __init__(self, proc: subprocess.Popen[bytes], url: str, first_line: str) -> None:
        self.proc = proc
        self.url = url
        self.first_line = first_line
        parsed = urllib.parse.urlsplit(url)
        self.host = parsed.hostname or "127.0.0.1"
        self.port = parsed.port or 80

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def rest_of_stdout(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.read().decode()


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    """A folder holding ``cliapp.py`` (see :data:`CLI_APP`) and a couple of broken modules."""
    (tmp_path / "cliapp.py").write_text(CLI_APP)
    (tmp_path / "brokenapp.py").write_text("raise RuntimeError('boom at import')\n")
    return tmp_path


def cli_env(app_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(app_dir), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_cli(app_dir: Path, *args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    """Run ``wirespeed`` to completion (for the commands that must fail at once)."""
    return subprocess.run(
        [sys.executable, "-m", "wirespeed", *args],
        cwd=app_dir,
        env=cli_env(app_dir),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def serve_cli(app_dir: Path) -> Iterator[Callable[..., ServeProcess]]:
    """``proc = serve_cli("cliapp:app", "--workers", "2")``: start and wait for the URL line.

    Every process started is killed at the end if it is still running (its workers too).
    """
    started: list[subprocess.Popen[bytes]] = []

    def start(*args: str, ready_timeout: float = 15.0) -> ServeProcess:
        proc = subprocess.Popen(
            [sys.executable, "-m", "wirespeed", "serve", *args],
            cwd=app_dir,
            env=cli_env(app_dir),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group: cleanup reaches the workers
        )
        started.append(proc)
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], ready_timeout)
        if not ready:
            raise AssertionError(f"no URL within {ready_timeout}s")
        line = proc.stdout.readline().decode()
        match = re.search(r"http://[^\s]+:\d+", line)
        if match is None:
            proc.kill()
            _, err = proc.communicate(timeout=5)
            raise AssertionError(f"expected the URL, got {line!r}; stderr: {err.decode()[-2000:]}")
        return ServeProcess(proc, match.group(0), line)

    yield start
    for proc in started:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
