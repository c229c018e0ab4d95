"""The peer check holds real servers to a scenario's contract before any number is taken.

The servers are real HTTP servers on real sockets: the lab's own stdlib peer program, and
variants of it that break one rule each (wrong body, no keep-alive, ignoring Connection: close,
ignoring Range, compressing).
"""

from __future__ import annotations

import gzip
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from functools import partial
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from wirespeed.bench.apps.stdlib_app import Handler
from wirespeed.bench.check import RANGE_CHECK_OFFSET, check, expected_for
from wirespeed.bench.load import build_blockload
from wirespeed.bench.process import ServerProcess, free_port
from wirespeed.bench.scenarios import SCENARIOS, Dataset, Scenario, prepare_dataset

Serve = Callable[[type[Handler]], int]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    return prepare_dataset(
        tmp_path_factory.mktemp("data"), [SCENARIOS["small"], SCENARIOS["file-1m"]]
    )


@pytest.fixture
def serve(data: Dataset) -> Iterator[Serve]:
    """Serve a handler class in a thread; yields a function returning the port."""
    servers: list[ThreadingHTTPServer] = []
    threads: list[threading.Thread] = []

    def start(handler: type[Handler]) -> int:
        handler.payload = data.payload()
        server = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(data.root)))
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        servers.append(server)
        threads.append(thread)
        port: int = server.server_address[1]
        return port

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()
    for thread in threads:
        thread.join()


class WrongBody(Handler):
    def do_GET(self) -> None:
        self._send(b"Hello, World?", "text/plain")


class NoKeepAlive(Handler):
    protocol_version = "HTTP/1.0"


class IgnoresClose(Handler):
    """Answers Connection: close with a keep-alive response and keeps the socket open."""

    def do_GET(self) -> None:
        super().do_GET()
        self.close_connection = False


class Gzips(Handler):
    def do_GET(self) -> None:
        if self.path == "/json" and "gzip" in self.headers.get("Accept-Encoding", ""):
            body = gzip.compress(self.payload, 6)
            self.send_response(200)
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            half = len(body) // 2
            for piece in (body[:half], body[half:]):
                self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        else:
            super().do_GET()


def test_correct_peer_passes(serve: Serve, data: Dataset) -> None:
    port = serve(Handler)
    scenario = SCENARIOS["small"]
    result = check(port, scenario, expected_for(scenario, data))
    assert result.ok, result.reason
    assert result.facts["content_encoding"] == "identity"
    assert result.facts["wire_body_bytes"] == 13


def test_wrong_body_is_rejected(serve: Serve, data: Dataset) -> None:
    port = serve(WrongBody)
    scenario = SCENARIOS["small"]
    result = check(port, scenario, expected_for(scenario, data))
    assert not result.ok
    assert result.reason.startswith("wrong body: 13 bytes sha256 ")
    assert "expected 13 bytes" in result.reason


def test_missing_keep_alive_is_rejected(serve: Serve, data: Dataset) -> None:
    port = serve(NoKeepAlive)
    scenario = SCENARIOS["small"]
    result = check(port, scenario, expected_for(scenario, data))
    assert not result.ok
    assert result.reason == "closed the connection after a keep-alive response"


def test_close_is_checked(serve: Serve, data: Dataset) -> None:
    scenario = SCENARIOS["small-close"]
    expected = expected_for(scenario, data)
    assert check(serve(Handler), scenario, expected).ok
    # A server that keeps the connection after "Connection: close" would leave wrk waiting.
    ignoring = check(serve(IgnoresClose), scenario, expected)
    assert not ignoring.ok
    assert ignoring.reason == "kept the connection open after 'Connection: close'"


def test_compressed_body_is_decoded_and_recorded(serve: Serve, data: Dataset) -> None:
    scenario = SCENARIOS["compress"]
    expected = expected_for(scenario, data)
    plain = check(serve(Handler), scenario, expected)
    assert plain.ok, plain.reason
    assert plain.facts["content_encoding"] == "identity"
    assert plain.facts["wire_body_bytes"] == len(data.payload())
    gz = check(serve(Gzips), scenario, expected)
    assert gz.ok, gz.reason
    assert gz.facts["content_encoding"] == "gzip"
    assert 0 < int(gz.facts["wire_body_bytes"]) < len(data.payload()) // 3


def test_file_body_is_digested(serve: Serve, data: Dataset) -> None:
    scenario = SCENARIOS["file-1m"]
    result = check(serve(Handler), scenario, expected_for(scenario, data))
    assert result.ok, result.reason
    assert result.facts["wire_body_bytes"] == 1 << 20


def test_missing_file_is_rejected(serve: Serve, data: Dataset) -> None:
    scenario = replace(SCENARIOS["file-1m"], path="/files/nope.bin")
    result = check(serve(Handler), scenario, expected_for(SCENARIOS["file-1m"], data))
    assert not result.ok
    assert result.reason == "status 404, expected 200"


def _small_range(data: Dataset) -> Scenario:
    # The range scenario's contract on the 1 MiB file: 64 KiB ranges (the real one uses 256 MiB).
    return replace(SCENARIOS["range"], file="1m.bin", path="/files/1m.bin", range_size=64 * 1024)


def test_server_without_ranges_is_rejected(serve: Serve, data: Dataset) -> None:
    scenario = _small_range(data)
    expected = expected_for(scenario, data)
    assert expected.range_header is not None
    first = RANGE_CHECK_OFFSET % ((1 << 20) - 64 * 1024)
    assert expected.range_header == f"Range: bytes={first}-{first + 64 * 1024 - 1}"
    result = check(serve(Handler), scenario, expected)
    assert not result.ok
    assert result.reason == "status 200, expected 206"


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_range_server_passes(data: Dataset, tmp_path: Path) -> None:
    binary = build_blockload(tmp_path / "cache")
    scenario = _small_range(data)
    port = free_port()
    argv = [str(binary), "serve", "--port", str(port), "--file", str(data.file("1m.bin"))]
    with ServerProcess("ceiling", argv, port=port, cpu=None, log_path=tmp_path / "log") as server:
        server.wait_ready()
        result = check(port, scenario, expected_for(scenario, data))
    assert result.ok, result.reason


def test_nothing_listening(data: Dataset) -> None:
    port = free_port()
    result = check(port, SCENARIOS["small"], expected_for(SCENARIOS["small"], data))
    assert not result.ok
    assert result.reason.startswith("connection failed")
