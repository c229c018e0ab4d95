"""The lab's load tools: wrk output parsing on recorded outputs, and the block client for real.

The wrk outputs below were recorded from wrk 4.1.0 (Debian) on the lab box against the lab's own
peers, except the first, which is the sample run in wrk's README; each exercises one part of the
format (units, socket errors, non-2xx, no responses at all, no --latency).
"""

from __future__ import annotations

import json
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from wirespeed.bench.load import (
    LoadError,
    build_blockload,
    parse_blockload,
    parse_bytes,
    parse_time_ms,
    parse_wrk,
    run_blockload,
    run_wrk,
    wrk_argv,
)
from wirespeed.bench.process import ServerProcess, free_port

WRK_README = """\
Running 30s test @ http://127.0.0.1:8080/index.html
  12 threads and 400 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   635.91us    0.89ms  12.92ms   93.69%
    Req/Sec    56.20k     8.07k   62.00k    86.54%
  22464657 requests in 30.00s, 17.76GB read
Requests/sec: 748868.53
Transfer/sec:    606.33MB
"""

# python http.server, keep-alive: Nagle + delayed ACK put every response at ~44 ms.
WRK_STDLIB_KEEPALIVE = """\
Running 1s test @ http://127.0.0.1:23001/
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    45.03ms    9.48ms 133.43ms   95.04%
    Req/Sec     1.41k   184.37     1.50k    90.00%
  Latency Distribution
     50%   43.88ms
     75%   43.98ms
     90%   44.04ms
     99%   94.75ms
  1398 requests in 1.00s, 217.63KB read
Requests/sec:   1395.71
Transfer/sec:    217.27KB
"""

# Connection: close to a server that closes without saying so: wrk counts read errors.
WRK_READ_ERRORS = """\
Running 1s test @ http://127.0.0.1:23001/
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    30.71ms   21.71ms 111.65ms   82.40%
    Req/Sec     2.28k     1.17k    4.62k    70.00%
  Latency Distribution
     50%   23.18ms
     75%   34.56ms
     90%   66.37ms
     99%   98.22ms
  2276 requests in 1.01s, 340.20KB read
  Socket errors: connect 0, read 2257, write 0, timeout 0
Requests/sec:   2263.39
Transfer/sec:    338.32KB
"""

WRK_NOT_FOUND = """\
Running 1s test @ http://127.0.0.1:23001/nope
  1 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     4.83ms    4.28ms  39.74ms   88.57%
    Req/Sec     1.84k   349.82     2.57k    81.82%
  Latency Distribution
     50%    2.98ms
     75%    6.07ms
     90%    9.33ms
     99%   26.04ms
  2009 requests in 1.10s, 1.00MB read
  Non-2xx or 3xx responses: 2009
Requests/sec:   1828.52
Transfer/sec:      0.91MB
"""

# A server that accepts and never answers.
WRK_SILENT = """\
Running 2s test @ http://127.0.0.1:23004/
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     0.00us    0.00us   0.00us    -nan%
    Req/Sec     0.00      0.00     0.00      -nan%
  Latency Distribution
     50%    0.00us
     75%    0.00us
     90%    0.00us
     99%    0.00us
  0 requests in 2.00s, 0.00B read
Requests/sec:      0.00
Transfer/sec:       0.00B
"""

# 64 MiB bodies through wrk's 8 KiB reads (why large bodies use the block client).
WRK_LARGE = """\
Running 1s test @ http://127.0.0.1:23002/x
  1 threads and 2 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   119.41ms  103.58ms 372.94ms   84.21%
    Req/Sec    16.38      9.09    30.00     62.50%
  Latency Distribution
     50%   61.91ms
     75%  146.89ms
     90%  351.95ms
     99%  372.94ms
  17 requests in 1.03s, 1.11GB read
Requests/sec:     16.46
Transfer/sec:      1.08GB
"""


@pytest.mark.parametrize(
    ("text", "ms"),
    [("635.91us", 0.63591), ("0.89ms", 0.89), ("2.00s", 2000.0), ("1.50m", 90000.0),
     ("0.00us", 0.0), ("1h", 3_600_000.0)],
)  # fmt: skip
def test_parse_time(text: str, ms: float) -> None:
    assert parse_time_ms(text) == pytest.approx(ms)


@pytest.mark.parametrize(
    ("text", "size"),
    [("0.00B", 0), ("512.00B", 512), ("217.63KB", round(217.63 * 1024)),
     ("1.00MB", 1 << 20), ("17.76GB", round(17.76 * (1 << 30)))],
)  # fmt: skip
def test_parse_bytes(text: str, size: int) -> None:
    assert parse_bytes(text) == size


@pytest.mark.parametrize("bad", ["", "12", "1.2 ms", "ms", "-1ms", "1.2x"])
def test_parse_time_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_time_ms(bad)


def test_parse_readme_without_latency_distribution() -> None:
    out = parse_wrk(WRK_README)
    assert (out.threads, out.connections) == (12, 400)
    assert out.requests == 22464657
    assert out.runtime_s == pytest.approx(30.0)
    assert out.requests_per_sec == pytest.approx(748868.53)
    assert out.bytes_read == round(17.76 * (1 << 30))
    assert out.transfer_per_sec == round(606.33 * (1 << 20))
    assert out.latency_ms == pytest.approx({"avg": 0.63591, "max": 12.92})
    assert out.socket_errors == {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    assert out.non_2xx_3xx == 0


def test_parse_latency_distribution() -> None:
    out = parse_wrk(WRK_STDLIB_KEEPALIVE)
    assert out.requests == 1398
    assert out.runtime_s == pytest.approx(1.0)
    assert out.latency_ms == pytest.approx(
        {"avg": 45.03, "max": 133.43, "p50": 43.88, "p75": 43.98, "p90": 44.04, "p99": 94.75}
    )
    assert out.bytes_read == round(217.63 * 1024)


def test_parse_socket_errors() -> None:
    out = parse_wrk(WRK_READ_ERRORS)
    assert out.requests == 2276
    assert out.socket_errors == {"connect": 0, "read": 2257, "write": 0, "timeout": 0}
    assert out.non_2xx_3xx == 0


def test_parse_non_2xx() -> None:
    out = parse_wrk(WRK_NOT_FOUND)
    assert out.non_2xx_3xx == 2009
    assert out.runtime_s == pytest.approx(1.10)
    assert out.transfer_per_sec == round(0.91 * (1 << 20))


def test_parse_no_responses() -> None:
    out = parse_wrk(WRK_SILENT)
    assert out.requests == 0
    assert out.bytes_read == 0
    assert out.latency_ms["p99"] == 0.0  # "-nan%" in the stdev column does not break parsing


def test_parse_large_bodies() -> None:
    out = parse_wrk(WRK_LARGE)
    assert out.requests == 17
    assert out.bytes_read == round(1.11 * (1 << 30))
    assert out.latency_ms["p90"] == pytest.approx(351.95)


@pytest.mark.parametrize(
    "broken",
    [
        "",
        "unable to connect to 127.0.0.1:1 Connection refused\n",
        WRK_STDLIB_KEEPALIVE.partition("Requests/sec")[0],  # cut before the summary
    ],
)
def test_parse_rejects_incomplete_output(broken: str) -> None:
    with pytest.raises(ValueError):
        parse_wrk(broken)


def test_wrk_argv_whole_seconds_one_thread() -> None:
    argv = wrk_argv("http://h/", connections=64, duration=0.4, headers=("Connection: close",))
    assert argv == [
        "wrk",
        "-t1",
        "-c64",
        "-d1s",
        "--latency",
        "-H",
        "Connection: close",
        "http://h/",
    ]
    assert wrk_argv("http://h/", connections=8, duration=2.5)[3] == "-d3s"


def test_parse_blockload_takes_the_json_line() -> None:
    assert parse_blockload('noise\n{"requests": 3}\n') == {"requests": 3}
    with pytest.raises(ValueError):
        parse_blockload("blockload: cannot connect\n")


# ------------------------------------------------------------------------------------------------
# the block client against the lab's bare sendfile server, for real

needs_cc = pytest.mark.skipif(
    shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler"
)


@pytest.fixture(scope="module")
def blockload(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_blockload(tmp_path_factory.mktemp("cache"))


@pytest.fixture
def sendfile_server(blockload: Path, tmp_path: Path) -> Iterator[tuple[int, int]]:
    size = 1 << 20
    path = tmp_path / "1m.bin"
    path.write_bytes(bytes(range(256)) * (size // 256))
    port = free_port()
    server = ServerProcess(
        "ceiling",
        [str(blockload), "serve", "--port", str(port), "--file", str(path)],
        port=port,
        cpu=None,
        log_path=tmp_path / "serve.log",
    )
    try:
        server.wait_ready()
        yield port, size
    finally:
        server.stop()


@needs_cc
@pytest.mark.parametrize("sink", ["read", "splice"])
def test_blockload_counts_body_apart_from_heads(
    blockload: Path, sendfile_server: tuple[int, int], sink: str
) -> None:
    port, size = sendfile_server
    result = run_blockload(blockload, port, "/f", connections=2, duration=0.5, sink=sink)
    assert result.tool == "blockload"
    assert result.errors == 0
    assert result.requests > 0
    # Every completed response carried exactly one file; in-flight ones at the deadline add a
    # partial body and a head, never more than one per connection.
    assert result.requests * size <= result.body_bytes < (result.requests + 2) * size
    head = len(f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n")
    assert (
        result.requests * head
        <= result.wire_bytes - result.body_bytes
        <= (result.requests + 2) * head
    )
    assert 0 < result.latency_ms["p50"] <= result.latency_ms["p99"] <= result.latency_ms["max"]
    assert result.client_cpu > 0  # rusage of the reaped client came back


@needs_cc
def test_blockload_random_ranges(blockload: Path, sendfile_server: tuple[int, int]) -> None:
    port, size = sendfile_server
    result = run_blockload(
        blockload,
        port,
        "/f",
        connections=2,
        duration=0.3,
        expect_status=206,
        range_size=4096,
        range_span=size,
    )
    assert result.errors == 0
    assert result.requests > 0
    assert result.body_bytes >= result.requests * 4096


@needs_cc
def test_blockload_counts_unexpected_status_as_errors(
    blockload: Path, sendfile_server: tuple[int, int]
) -> None:
    port, _ = sendfile_server
    result = run_blockload(blockload, port, "/f", connections=1, duration=0.2, expect_status=206)
    assert result.requests == 0
    assert result.errors > 0
    assert result.error_detail == "unexpected status"


@needs_cc
def test_blockload_reports_refused_connection(blockload: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        with pytest.raises(LoadError, match="cannot connect"):
            run_blockload(blockload, port, "/", connections=1, duration=0.2)


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk not installed")
def test_run_wrk_against_the_sendfile_server(sendfile_server: tuple[int, int]) -> None:
    port, size = sendfile_server
    result = run_wrk(f"http://127.0.0.1:{port}/", connections=2, duration=1)
    assert result.tool == "wrk"
    assert result.requests > 0
    assert result.errors == 0
    # wrk counts wire bytes (2 decimals of its unit): within 1% of requests x (head + body).
    assert result.wire_bytes == pytest.approx(result.requests * (size + 40), rel=0.01)
    assert result.client_cpu > 0
    assert json.dumps(result.latency_ms)  # plain floats, ready for the JSON lines
