"""``wirespeed serve`` as users run it: a subprocess, real clients (curl, http.client), signals."""

from __future__ import annotations

import http.client
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import ServeProcess, run_cli

ServeCli = Callable[..., ServeProcess]

needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")


def curl(*args: str, timeout: float = 10.0) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "8", *args], capture_output=True, timeout=timeout, check=False
    )


def stop(proc: ServeProcess, timeout: float = 10.0) -> int:
    proc.signal(signal.SIGTERM)
    return proc.wait(timeout)


# -- serving -------------------------------------------------------------------------------------


@needs_curl
@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_serve_answers_curl_and_http_client(serve_cli: ServeCli, loop: str) -> None:
    proc = serve_cli("cliapp:app", "--port", "0", "--loop", loop)
    assert proc.first_line.startswith("wirespeed: serving cliapp:app on http://127.0.0.1:")

    # curl: a plain GET, with the head shown.
    out = curl("-i", proc.url + "/")
    assert out.returncode == 0, out.stderr
    head, _, body = out.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\ncontent-length: 18" in head.lower()
    assert body == b"hello from the cli"

    # curl reuses the connection for a second URL (keep-alive works for real clients).
    out = curl("-v", proc.url + "/", proc.url + "/stream")
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"hello from the clipart0;part1;part2;"
    assert b"Re-using existing connection" in out.stderr

    # curl sends "Expect: 100-continue" for bodies over 1 KiB and waits up to 1 s for the 100:
    # a quick answer shows the server sent it.
    payload = bytes(range(256)) * 400
    out = subprocess.run(
        [
            *("curl", "-sS", "--max-time", "8", "--expect100-timeout", "3"),
            *("--data-binary", "@-", "-w", "%{time_total}", proc.url + "/echo"),
        ],
        input=payload,
        capture_output=True,
        timeout=10,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout[: len(payload)] == payload
    assert float(out.stdout[len(payload) :]) < 2.0

    # curl as an HTTP/1.0 client: no chunked encoding, the end of the body is the close.
    out = curl("-0", "-i", proc.url + "/stream")
    assert out.returncode == 0, out.stderr
    head, _, body = out.stdout.partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head.lower()
    assert body == b"part0;part1;part2;"

    # http.client: keep-alive, HEAD, a chunked request body, JSON-free bytes.
    conn = http.client.HTTPConnection(proc.host, proc.port, timeout=5)
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        assert (resp.status, resp.read()) == (200, b"hello from the cli")
        sock = conn.sock
        conn.request("HEAD", "/")
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.getheader("Content-Length") == "18"
        assert resp.read() == b""
        conn.request("POST", "/echo", body=iter([b"abc", b"def"]), encode_chunked=True)
        resp = conn.getresponse()
        assert resp.read() == b"abcdef"
        conn.request("GET", "/stream")
        resp = conn.getresponse()
        assert resp.getheader("Transfer-Encoding") == "chunked"
        assert resp.read() == b"part0;part1;part2;"
        conn.request("GET", "/missing")
        resp = conn.getresponse()
        assert resp.status == 404
        resp.read()
        assert conn.sock is sock, "http.client had to reconnect: keep-alive broke"
    finally:
        conn.close()

    assert stop(proc) == 0
    assert "http://" not in proc.rest_of_stdout()  # the URL is printed once


@needs_curl
def test_curl_http2_upgrade_is_answered_in_http11(serve_cli: ServeCli) -> None:
    # curl --http2 on http:// asks for an h2c upgrade; declining it means answering in 1.1.
    proc = serve_cli("cliapp:app", "--port", "0")
    out = curl("-i", "--http2", proc.url + "/", proc.url + "/pid")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(b"HTTP/1.1 200")
    assert b"hello from the cli" in out.stdout
    assert stop(proc) == 0


@needs_curl
def test_curl_http2_prior_knowledge_is_refused_promptly(serve_cli: ServeCli) -> None:
    # The HTTP/2 preface gets a 505 or a close, never a hang.
    proc = serve_cli("cliapp:app", "--port", "0")
    start = time.monotonic()
    out = curl("--http2-prior-knowledge", proc.url + "/")
    assert out.returncode != 0
    assert time.monotonic() - start < 5.0
    with socket.create_connection((proc.host, proc.port), timeout=5) as sock:
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        answer = sock.recv(4096)
    assert answer == b"" or answer.startswith(b"HTTP/1.1 505 ")
    assert stop(proc) == 0


# -- stopping ------------------------------------------------------------------------------------


def _get_in_thread(proc: ServeProcess, path: str) -> tuple[threading.Thread, dict[str, object]]:
    result: dict[str, object] = {}

    def run() -> None:
        conn = http.client.HTTPConnection(proc.host, proc.port, timeout=10)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            result["status"] = resp.status
            result["body"] = resp.read()
            result["connection"] = resp.getheader("Connection")
        except Exception as exc:
            result["error"] = exc
        finally:
            conn.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


def _refused(proc: ServeProcess) -> bool:
    try:
        with socket.create_connection((proc.host, proc.port), timeout=1) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            return sock.recv(100) == b""
    except OSError:
        return True


def test_sigterm_finishes_the_in_flight_response(serve_cli: ServeCli) -> None:
    proc = serve_cli("cliapp:app", "--port", "0")
    thread, result = _get_in_thread(proc, "/slow?t=1")
    time.sleep(0.4)
    start = time.monotonic()
    proc.signal(signal.SIGTERM)
    time.sleep(0.2)
    assert _refused(proc), "still accepting after SIGTERM"
    thread.join(10)
    assert result.get("status") == 200, result
    assert result["body"] == b"slow done"
    assert proc.wait(10) == 0
    assert time.monotonic() - start < 3.0


def test_graceful_timeout_cuts_a_response_that_outlives_it(serve_cli: ServeCli) -> None:
    proc = serve_cli("cliapp:app", "--port", "0", "--graceful-timeout", "0.5")
    thread, result = _get_in_thread(proc, "/slow?t=30")
    time.sleep(0.4)
    start = time.monotonic()
    proc.signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    assert time.monotonic() - start < 0.5 + 1.5
    thread.join(10)
    assert "error" in result, result  # the connection was cut, no response


def test_second_signal_forces_the_stop(serve_cli: ServeCli) -> None:
    proc = serve_cli("cliapp:app", "--port", "0")  # graceful timeout 30 s by default
    thread, result = _get_in_thread(proc, "/slow?t=30")
    time.sleep(0.4)
    proc.signal(signal.SIGTERM)
    time.sleep(0.3)
    assert proc.proc.poll() is None  # still draining
    start = time.monotonic()
    proc.signal(signal.SIGINT)
    proc.wait(10)
    assert time.monotonic() - start < 1.5
    thread.join(10)
    assert "error" in result, result


def test_sigint_stops_like_sigterm(serve_cli: ServeCli) -> None:
    proc = serve_cli("cliapp:app", "--port", "0")
    proc.signal(signal.SIGINT)
    assert proc.wait(10) == 0


# -- refusing to start ---------------------------------------------------------------------------


def assert_one_line_usage_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "http://" not in result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert lines[0].startswith("wirespeed serve: error: "), lines[0]
    for word in words:
        assert word.lower() in lines[0].lower(), (word, lines[0])


def test_port_in_use(app_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(app_dir, "serve", "cliapp:app", "--port", str(port))
    assert_one_line_usage_error(result, "in use", str(port))


def test_port_in_use_with_workers(app_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(app_dir, "serve", "cliapp:app", "--port", str(port), "--workers", "2")
    assert_one_line_usage_error(result, "in use")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["/no/such/folder"], ["no such directory"]),
        (["cliapp.py"], ["not a directory"]),
        (["missing_module_xyz:app"], ["missing_module_xyz"]),
        (["brokenapp:app"], ["boom at import"]),
        (["cliapp:nope"], ["nope"]),
        (["cliapp:not_an_app"], ["not"]),
        (["cliapp:"], []),
        (["cliapp:app", "--port", "70000"], ["port"]),
        (["cliapp:app", "--port", "eighty"], ["port"]),
        (["cliapp:app", "--workers", "0"], ["workers"]),
        (["cliapp:app", "--header-timeout", "0"], ["header-timeout"]),
        (["cliapp:app", "--keepalive-timeout", "-1"], ["keepalive-timeout"]),
        (["cliapp:app", "--graceful-timeout", "-1"], ["graceful-timeout"]),
        (["cliapp:app", "--max-body", "12Q"], ["max-body"]),
        (["cliapp:app", "--loop", "trio"], ["loop"]),
        (["cliapp:app", "--host", "no.such.host.invalid"], []),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_bad_arguments_exit_2_with_one_line(
    app_dir: Path, args: list[str], words: list[str]
) -> None:
    port = [] if "--port" in args else ["--port", "0"]
    result = run_cli(app_dir, "serve", *args, *port)
    assert_one_line_usage_error(result, *words)


def test_serve_a_folder(serve_cli: ServeCli, tmp_path: Path) -> None:
    folder = tmp_path / "site"
    folder.mkdir()
    (folder / "hello.txt").write_bytes(b"static hello")
    proc = serve_cli(str(folder), "--port", "0")
    conn = http.client.HTTPConnection(proc.host, proc.port, timeout=5)
    try:
        conn.request("GET", "/hello.txt")
        resp = conn.getresponse()
        assert (resp.status, resp.read()) == (200, b"static hello")
    finally:
        conn.close()
    assert stop(proc) == 0


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_vanishing_client_mid_stream_does_not_freeze_the_server(
    serve_cli: ServeCli, loop: str
) -> None:
    # /endless streams from memory without ever awaiting. When its client resets the
    # connection, the server must notice and stop, not spin on writes that go nowhere. Run as a
    # subprocess: a frozen event loop would otherwise freeze the test run too.
    proc = serve_cli("cliapp:app", "--port", "0", "--loop", loop)
    for _ in range(5):
        sock = socket.create_connection((proc.host, proc.port), timeout=5)
        sock.sendall(b"GET /endless HTTP/1.1\r\nHost: t\r\n\r\n")
        got = 0
        while got < 512 * 1024:
            got += len(sock.recv(65536))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # RST
        conn = http.client.HTTPConnection(proc.host, proc.port, timeout=3)
        try:
            conn.request("GET", "/")
            resp = conn.getresponse()
            assert (resp.status, resp.read()) == (200, b"hello from the cli")
        except TimeoutError:
            pytest.fail("the server stopped answering after a client vanished mid-stream")
        finally:
            conn.close()
    assert stop(proc) == 0
