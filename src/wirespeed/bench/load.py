"""Load generators: wrk for small bodies, the lab's block client for large ones; output parsed.

Theory of operation
-------------------
Both tools run pinned to the load CPU, as a child the lab reaps itself with ``wait4(2)`` so the
load generator's own CPU time comes back with its result: a trial whose client used ~100% of its
CPU measured the client, not the server, and the report says so.

**wrk** (``wrk -t1 -cN -dDs --latency``) drives the small-response scenarios. Its text output is
parsed by :func:`parse_wrk` (tested on recorded outputs): requests, runtime, bytes read, the
latency line and distribution, socket errors and non-2xx responses. wrk counts response bytes
with their heads, so those are *wire* bytes; body bytes are requests times the body size the
peer check verified. wrk's duration is whole seconds (it parses ``-d`` as an integer).

**blockload** (``tools/blockload.c``) drives the large-body scenarios. wrk reads 8 KiB at a time
and runs every byte through its parser: against the same bare sendfile server on the lab box,
wrk moved 64 MiB bodies at 1.1-1.5 GB/s where a client reading large blocks got 2.1-4.4 GB/s.
The block client counts body bytes apart from head bytes and prints JSON
(:func:`parse_blockload`).

C or Python, measured (one connection, bare sendfile server, lab box): with 1 MiB reads a
careful Python client matched C, both in throughput and in CPU per byte (0.12-0.17 CPU-seconds
per GB for 1 MiB and 64 MiB bodies alike): the kernel's copy dominates. With 64 KiB reads C was
faster (3.0-3.3 vs 2.5-2.8 GB/s). The lab still uses C because the measuring instrument must
stay negligible whatever the block size and connection count, one epoll loop serves all
connections and times every request without an interpreter's GC or scheduling jitter in the p99,
and the system compiler builds it in ~0.2 s on first use (cached by source digest). The cost is
a C compiler on the box; without one, large-body scenarios are skipped with that reason.

Block size: 1 MiB reads (:data:`DEFAULT_BLOCK`). At 4 connections they kept the client near 50%
of its CPU at 2.6-2.7 GB/s, while 64 KiB reads saturated it at 2.1-2.3 GB/s; at 1-2 connections
64 KiB reads were faster (up to 4.4 GB/s: the buffer stays in L2 and the receive window reopens
sooner). ``--block-size`` changes it for exploration.

Sink: by default the client reads every body byte with ``recv()``, as a real downloader does,
so at 64 MiB the kernel's copy into the client bounds what any server can show (about 3 GB/s
here, with the client CPU-bound). ``--sink splice`` moves bodies socket -> pipe -> ``/dev/null``
instead: over loopback the pages a sendfile server handed to TCP are never copied at all, so
the number measures the server's own cost per byte, which is where zero-copy and copying
servers differ. Reports say which sink was used.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from wirespeed.bench.process import pinned_argv

TOOLS = Path(__file__).resolve().parent / "tools"
BLOCKLOAD_SOURCE = TOOLS / "blockload.c"

# Read size of the block client; see the module docstring for the measurement behind it.
DEFAULT_BLOCK = 1024 * 1024
# Extra time a load tool may take beyond its duration before the lab kills it: wrk waits up to
# its 2 s socket timeout for the last responses; 30 s more means it is stuck.
LOAD_SLACK = 30.0


class LoadError(Exception):
    """The load tool failed to run or produced no parsable result; message is one line."""


@dataclass(frozen=True)
class LoadResult:
    """One load run, whichever tool produced it."""

    tool: str
    requests: int
    duration: float  # seconds the tool measured
    wire_bytes: int  # response bytes received, heads included
    body_bytes: int | None  # payload bytes, when the tool counts them apart (blockload)
    latency_ms: dict[str, float]  # avg, p50, p75, p90, p99, max
    errors: int = 0
    error_detail: str = ""
    client_cpu: float = 0.0  # CPU seconds used by the load generator
    command: list[str] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return self.requests / self.duration if self.duration > 0 else 0.0


# ------------------------------------------------------------------------------------------------
# wrk

_TIME_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}  # to milliseconds
_BINARY_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4, "P": 1024**5}


def parse_time_ms(text: str) -> float:
    """wrk's time format (``785.38us``, ``1.16ms``, ``2.00s``, ``1.00m``) in milliseconds."""
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if not m:
        raise ValueError(f"not a wrk time: {text!r}")
    return float(m.group(1)) * _TIME_UNITS[m.group(2)]


def parse_bytes(text: str) -> int:
    """wrk's binary size format (``100.20MB``, ``1.57GB``, ``512.00B``) in bytes."""
    m = re.fullmatch(r"([\d.]+)([KMGTP]?)B", text.strip())
    if not m:
        raise ValueError(f"not a wrk size: {text!r}")
    return round(float(m.group(1)) * _BINARY_UNITS[m.group(2)])


@dataclass(frozen=True)
class WrkOutput:
    """Everything wrk's text report says, in base units (ms, bytes, seconds)."""

    threads: int
    connections: int
    requests: int
    runtime_s: float
    bytes_read: int
    requests_per_sec: float
    transfer_per_sec: int
    latency_ms: dict[str, float]
    socket_errors: dict[str, int]
    non_2xx_3xx: int


def parse_wrk(text: str) -> WrkOutput:
    """Parse wrk 4.x output (with or without ``--latency``); raise ValueError if incomplete."""

    def need(pattern: str) -> re.Match[str]:
        m = re.search(pattern, text, re.MULTILINE)
        if not m:
            raise ValueError(f"wrk output lacks {pattern!r}: {text.strip()[-200:]!r}")
        return m

    setup = need(r"^\s*(\d+) threads and (\d+) connections")
    total = need(r"^\s*(\d+) requests in ([\d.]+\w+), ([\d.]+[KMGTP]?B) read")
    rps = need(r"^Requests/sec:\s+([\d.]+)")
    tps = need(r"^Transfer/sec:\s+([\d.]+[KMGTP]?B)")
    lat = need(r"^\s+Latency\s+(\S+)\s+(\S+)\s+(\S+)\s+")
    latency = {"avg": parse_time_ms(lat.group(1)), "max": parse_time_ms(lat.group(3))}
    for pct, value in re.findall(r"^\s+(\d+)%\s+(\S+)\s*$", text, re.MULTILINE):
        latency[f"p{pct}"] = parse_time_ms(value)
    errors = {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        errors = dict(zip(errors, map(int, m.groups()), strict=True))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return WrkOutput(
        threads=int(setup.group(1)),
        connections=int(setup.group(2)),
        requests=int(total.group(1)),
        runtime_s=parse_time_ms(total.group(2)) / 1e3,
        bytes_read=parse_bytes(total.group(3)),
        requests_per_sec=float(rps.group(1)),
        transfer_per_sec=parse_bytes(tps.group(1)),
        latency_ms=latency,
        socket_errors=errors,
        non_2xx_3xx=int(m.group(1)) if m else 0,
    )


def wrk_argv(
    url: str, *, connections: int, duration: float, headers: tuple[str, ...] = ()
) -> list[str]:
    """The wrk command line: one thread (one load CPU), whole seconds, latency distribution."""
    seconds = max(1, math.ceil(duration))
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    for header in headers:
        argv += ["-H", header]
    return [*argv, url]


def run_wrk(
    url: str,
    *,
    connections: int,
    duration: float,
    headers: tuple[str, ...] = (),
    cpu: int | None = None,
) -> LoadResult:
    argv = wrk_argv(url, connections=connections, duration=duration, headers=headers)
    out, err, cpu_s = _run_reaped(pinned_argv(argv, cpu), duration)
    try:
        parsed = parse_wrk(out)
    except ValueError as exc:
        raise LoadError(f"wrk: {(err.strip() or out.strip())[-200:] or exc}") from exc
    socket_errors = sum(parsed.socket_errors.values())
    detail = ", ".join(f"{k} {v}" for k, v in parsed.socket_errors.items() if v)
    if parsed.non_2xx_3xx:
        detail = ", ".join(filter(None, [detail, f"non-2xx/3xx {parsed.non_2xx_3xx}"]))
    return LoadResult(
        tool="wrk",
        requests=parsed.requests,
        duration=parsed.runtime_s,
        wire_bytes=parsed.bytes_read,
        body_bytes=None,
        latency_ms=parsed.latency_ms,
        errors=socket_errors + parsed.non_2xx_3xx,
        error_detail=detail,
        client_cpu=cpu_s,
        command=argv,
    )


def wrk_version() -> str:
    if shutil.which("wrk") is None:
        return "not installed"
    done = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    line = (done.stdout + done.stderr).strip().splitlines()
    return line[0].split(" Copyright")[0] if line else "?"


# ------------------------------------------------------------------------------------------------
# blockload


def compiler() -> str | None:
    """The C compiler to build blockload with: $CC, cc, gcc or clang."""
    for name in filter(None, [os.environ.get("CC"), "cc", "gcc", "clang"]):
        path = shutil.which(name)
        if path:
            return path
    return None


def build_blockload(cache: Path) -> Path:
    """Compile tools/blockload.c into ``cache`` once per source digest; return the binary.

    Raises LoadError with the compiler's last message when it cannot be built.
    """
    cc = compiler()
    if cc is None:
        raise LoadError("no C compiler (cc, gcc or clang) to build the block client")
    source = BLOCKLOAD_SOURCE.read_bytes()
    binary = cache / "tools" / f"blockload-{hashlib.sha256(source).hexdigest()[:12]}"
    if binary.exists():
        return binary
    binary.parent.mkdir(parents=True, exist_ok=True)
    tmp = binary.with_name(f"{binary.name}.tmp{os.getpid()}")
    done = subprocess.run(
        [cc, "-O2", "-o", str(tmp), str(BLOCKLOAD_SOURCE), "-lpthread"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if "error" in line]
        raise LoadError(f"cannot build blockload: {(lines or ['compiler failed'])[-1].strip()}")
    tmp.replace(binary)
    return binary


def parse_blockload(text: str) -> dict[str, object]:
    """The JSON object blockload prints; raise ValueError on anything else."""
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            result: dict[str, object] = json.loads(line)
            return result
    raise ValueError(f"no JSON in blockload output: {text.strip()[-200:]!r}")


def run_blockload(
    binary: Path,
    port: int,
    path: str,
    *,
    connections: int,
    duration: float,
    block: int = DEFAULT_BLOCK,
    expect_status: int = 200,
    range_size: int = 0,
    range_span: int = 0,
    seed: int = 1,
    headers: tuple[str, ...] = (),
    cpu: int | None = None,
    sink: str = "read",
) -> LoadResult:
    """Run the block client (see the module docstring); ``sink="splice"`` discards bodies with
    splice(2) instead of reading them, so the client copies nothing."""
    argv = [
        str(binary), "client", "--sink", sink, "--port", str(port), "--path", path,
        "--connections", str(connections), "--duration", f"{duration:.3f}",
        "--block", str(block), "--expect", str(expect_status), "--seed", str(seed),
    ]  # fmt: skip
    if range_size:
        argv += ["--range-size", str(range_size), "--range-span", str(range_span)]
    for header in headers:
        argv += ["--header", header]
    out, err, cpu_s = _run_reaped(pinned_argv(argv, cpu), duration)
    try:
        data = parse_blockload(out)
    except ValueError as exc:
        raise LoadError(f"blockload: {err.strip()[-200:] or exc}") from exc
    latency = data["latency_ms"]
    assert isinstance(latency, dict)
    body = int(str(data["body_bytes"]))
    head = int(str(data["header_bytes"]))
    return LoadResult(
        tool="blockload",
        requests=int(str(data["requests"])),
        duration=float(str(data["elapsed"])),
        wire_bytes=body + head,
        body_bytes=body,
        latency_ms={k: float(v) for k, v in latency.items()},
        errors=int(str(data["errors"])),
        error_detail=str(data.get("first_error", "")),
        client_cpu=cpu_s,
        command=argv,
    )


# ------------------------------------------------------------------------------------------------


def _run_reaped(argv: list[str], duration: float) -> tuple[str, str, float]:
    """Run ``argv`` to completion; return stdout, stderr and its CPU seconds (from wait4).

    Output goes to temporary files rather than pipes: no reader threads, and the lab reaps the
    child itself with wait4, which communicate() would do first and so lose the rusage.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        except OSError as exc:
            raise LoadError(f"cannot run {argv[0]}: {exc.strerror}") from exc
        watchdog = threading.Timer(duration + LOAD_SLACK, proc.kill)
        watchdog.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            watchdog.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode == -signal.SIGKILL:
            raise LoadError(f"{argv[0]} did not finish within {duration + LOAD_SLACK:.0f} s")
        out.seek(0)
        err.seek(0)
        text_out = out.read().decode(errors="replace")
        text_err = err.read().decode(errors="replace")
    return text_out, text_err, usage.ru_utime + usage.ru_stime
