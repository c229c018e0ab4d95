"""Relay throughput: a 64 MiB file from nginx, direct and through relays, interleaved rounds.

Starts nginx (the lab's config, ``sendfile on``) serving ``/files/64m.bin`` and, in front of
it, each relay under test, all as their own processes:

* ``direct``: no relay, the ceiling;
* ``splice``: ``python -m wirespeed.relay`` (uvloop, 1 MiB pipes, the default);
* ``splice-64k``: the same with ``--pipe-size 64k`` (the kernel's default pipe size), the
  measurement behind ``relay.PIPE_SIZE``;
* ``copy``: ``--no-splice``, the relay's own userspace fallback (256 KiB buffers);
* ``streams``: the baseline, an asyncio-streams copy loop (``reader.read(65536)``,
  ``writer.write`` + ``drain``) on uvloop, defined in this script (:func:`streams_relay`).

nginx runs pinned to CPU 0; the client (the lab's C block client, ``wirespeed.bench.load``:
one keep-alive connection, 1 MiB reads) and the relays on CPU 1 (see :data:`RELAY_CPU`;
``--relay-cpu 0`` puts them beside nginx instead). Each round runs every target once for
``--seconds``, in a shuffled order; the report gives medians over the rounds of body GB/s and
of each process's CPU-seconds per GB moved, and the medians of each round's ratios, the ones
the issue asks for (splice >= 2x streams, >= 0.6x direct)::

    .venv/bin/python scripts/bench_relay.py --rounds 5 --seconds 3
    .venv/bin/python scripts/bench_relay.py --strace     # syscalls of one download via curl

``--strace`` runs ``strace -f -e trace=splice,read,recvfrom,write,sendto`` on the relay while
curl downloads the file through it once, with and without ``--no-splice``, and prints the
count and bytes of each syscall.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import shutil
import signal
import socket
import statistics
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

from wirespeed.bench.load import build_blockload, run_blockload
from wirespeed.bench.peers import APPS
from wirespeed.bench.process import free_port, pinned_argv

MiB = 1024 * 1024
FILE_SIZE = 64 * MiB
PATH = "/files/64m.bin"
SERVER_CPU = 0
CLIENT_CPU = 1
# The relays run beside the client by default: measured (this script, --relay-cpu 0), nginx
# alone saturates its CPU serving directly (0.29 CPU-s/GB at 3.3 GB/s), so a relay sharing that
# CPU measures two processes splitting one core, not the relay. The C client costs ~0.1-0.2
# CPU-s/GB, which leaves the relay most of CPU 1.
RELAY_CPU = CLIENT_CPU
# The baseline's read size: the plain asyncio-streams loop people write (StreamReader's default
# limit is 64 KiB too).
STREAMS_READ = 65536
RELAYS = {
    "splice": [],
    "splice-64k": ["--pipe-size", "64k"],
    "copy": ["--no-splice"],
}


# -- the baseline: an asyncio-streams copy relay ----------------------------------------------


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(STREAMS_READ):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except ConnectionError:
        writer.close()


async def _streams_relay(listen_port: int, upstream_port: int) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        writer.close()
        up_writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", listen_port)
    port = server.sockets[0].getsockname()[1]
    print(f"relaying 127.0.0.1:{port} -> 127.0.0.1:{upstream_port} (pid {os.getpid()})", flush=True)
    async with server:
        await server.serve_forever()


def streams_relay(listen_port: int, upstream_port: int) -> None:
    """The baseline relay (runs until killed)."""
    import uvloop  # noqa: PLC0415

    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(_streams_relay(listen_port, upstream_port))


# -- processes ---------------------------------------------------------------------------------


@dataclass
class Proc:
    proc: subprocess.Popen[bytes]
    port: int
    pid: int


def _wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def start_nginx(work: Path) -> Proc:
    data = work / "data"
    (data / "files").mkdir(parents=True)
    with (data / "files" / "64m.bin").open("wb") as f:
        f.write(random.Random(1).randbytes(FILE_SIZE))
    prefix = work / "nginx"
    prefix.mkdir()
    port = free_port()
    conf = prefix / "nginx.conf"
    template = string.Template((APPS / "nginx.conf").read_text())
    conf.write_text(template.substitute(prefix=prefix, port=port, data=data))
    argv = ["nginx", "-p", str(prefix), "-c", str(conf), "-e", "stderr"]
    proc = subprocess.Popen(pinned_argv(argv, SERVER_CPU))
    _wait_port(port)
    return Proc(proc, port, proc.pid)


def start_relay(
    kind: str, upstream: int, prefix: list[str] | None = None, cpu: int = SERVER_CPU
) -> Proc:
    if kind == "streams":
        argv = [sys.executable, __file__, "--streams-relay", str(upstream)]
    else:
        argv = [
            sys.executable, "-m", "wirespeed.relay", "--listen", "127.0.0.1:0",
            "--upstream", f"127.0.0.1:{upstream}", "--log-level", "warning", *RELAYS[kind],
        ]  # fmt: skip
    proc = subprocess.Popen(
        [*(prefix or []), *pinned_argv(argv, cpu)],
        stdout=subprocess.PIPE,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    match = re.search(r"relaying 127\.0\.0\.1:(\d+) .*\(pid (\d+)\)", line)
    if match is None:
        proc.kill()
        raise RuntimeError(f"{kind} relay did not start: {line!r}")
    return Proc(proc, int(match.group(1)), int(match.group(2)))


def stop(p: Proc) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(p.pid, signal.SIGTERM)
    try:
        p.proc.wait(15)
    except subprocess.TimeoutExpired:
        p.proc.kill()
        p.proc.wait()
    if p.proc.stdout is not None:
        p.proc.stdout.close()


@contextlib.contextmanager
def lab() -> Iterator[tuple[Path, Proc]]:
    with tempfile.TemporaryDirectory(prefix="bench-relay-") as tmp:
        work = Path(tmp)
        nginx = start_nginx(work)
        try:
            yield work, nginx
        finally:
            stop(nginx)


# -- throughput --------------------------------------------------------------------------------


def throughput(ns: argparse.Namespace) -> int:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "wirespeed-bench"
    blockload = build_blockload(cache)
    targets = ["direct", "splice", "splice-64k", "copy", "streams"]
    rates: dict[str, list[float]] = {t: [] for t in targets}
    cpu_per_gb: dict[str, list[float]] = {t: [] for t in targets}
    nginx_per_gb: dict[str, list[float]] = {t: [] for t in targets}
    client_per_gb: dict[str, list[float]] = {t: [] for t in targets}
    with lab() as (_, nginx):
        relays = {
            kind: start_relay(kind, nginx.port, cpu=ns.relay_cpu)
            for kind in targets
            if kind != "direct"
        }
        try:
            order = list(targets)
            rng = random.Random(ns.seed)
            for round_ in range(ns.rounds):
                rng.shuffle(order)
                for target in order:
                    port = nginx.port if target == "direct" else relays[target].port
                    measured = psutil.Process(relays[target].pid) if target != "direct" else None
                    before = sum(measured.cpu_times()[:2]) if measured else 0.0
                    nginx_before = sum(psutil.Process(nginx.pid).cpu_times()[:2])
                    result = run_blockload(
                        blockload, port, PATH, connections=ns.connections,
                        duration=ns.seconds, cpu=CLIENT_CPU,
                    )  # fmt: skip
                    cpu = sum(measured.cpu_times()[:2]) - before if measured else 0.0
                    nginx_cpu = sum(psutil.Process(nginx.pid).cpu_times()[:2]) - nginx_before
                    if result.errors:
                        print(f"{target}: {result.errors} errors: {result.error_detail}")
                    body = result.body_bytes or 0
                    rate = body / result.duration / 1e9
                    rates[target].append(rate)
                    cpu_per_gb[target].append(cpu / (body / 1e9) if body else 0.0)
                    nginx_per_gb[target].append(nginx_cpu / (body / 1e9) if body else 0.0)
                    client_per_gb[target].append(result.client_cpu / (body / 1e9) if body else 0.0)
                    print(
                        f"round {round_ + 1} {target:>10}: {rate:5.2f} GB/s"
                        + f", CPU-s/GB: client {client_per_gb[target][-1]:.2f}"
                        + f", nginx {nginx_per_gb[target][-1]:.2f}"
                        + (f", relay {cpu_per_gb[target][-1]:.2f}" if measured else ""),
                        flush=True,
                    )
        finally:
            for p in relays.values():
                stop(p)
    print()
    print(f"medians over {ns.rounds} rounds of {ns.seconds:g} s, {ns.connections} connection(s);")
    print("ratios are the median of each round's ratio (the targets of a round ran back to back)")
    print("CPU-s/GB: CPU seconds (user + system) per GB of body, by process")
    print(
        f"{'target':>10}  {'GB/s':>6}  {'client':>6}  {'nginx':>6}  {'relay':>6}"
        f"  {'x direct':>8}  {'x streams':>9}"
    )
    for t in targets:
        cpu_text = f"{statistics.median(cpu_per_gb[t]):6.2f}" if t != "direct" else " " * 6
        x_direct = statistics.median(a / b for a, b in zip(rates[t], rates["direct"], strict=True))
        x_streams = statistics.median(
            a / b for a, b in zip(rates[t], rates["streams"], strict=True)
        )
        print(
            f"{t:>10}  {statistics.median(rates[t]):6.2f}"
            f"  {statistics.median(client_per_gb[t]):6.2f}"
            f"  {statistics.median(nginx_per_gb[t]):6.2f}  {cpu_text}  {x_direct:8.2f}"
            f"  {x_streams:9.2f}"
        )
    return 0


# -- strace ------------------------------------------------------------------------------------

_CALL = re.compile(r"^(\d+)\s+(\d+\.\d+)\s+(\w+)\((.*)\)\s+=\s+(-?\d+)")
_RESUMED = re.compile(r"^(\d+)\s+(\d+\.\d+)\s+<\.\.\. (\w+) resumed>(.*)\)\s+=\s+(-?\d+)")


def traced(ns: argparse.Namespace) -> int:
    if shutil.which("strace") is None or shutil.which("curl") is None:
        print("needs strace and curl", file=sys.stderr)
        return 1
    with lab() as (work, nginx):
        for kind in ("splice", "copy"):
            trace = work / f"trace-{kind}.txt"
            prefix = ["strace", "-f", "-ttt", "-o", str(trace)]
            prefix += ["-e", "trace=splice,read,recvfrom,write,sendto"]
            p = start_relay(kind, nginx.port, prefix)
            since = time.time()
            subprocess.run(
                ["curl", "-sS", "-o", "/dev/null", f"http://127.0.0.1:{p.port}{PATH}"], check=True
            )
            stop(p)
            counts: dict[str, list[int]] = {}
            for line in trace.read_text(errors="replace").splitlines():
                match = _CALL.match(line) or _RESUMED.match(line)
                if match and float(match.group(2)) >= since:
                    entry = counts.setdefault(match.group(3), [0, 0, 0])
                    ret = int(match.group(5))
                    entry[0] += 1
                    entry[1] += max(ret, 0)
                    entry[2] += ret < 0
            print(f"{kind} relay, one {FILE_SIZE // MiB} MiB download with curl:")
            for name, (calls, moved, failed) in sorted(counts.items()):
                print(f"  {name:>9}: {calls:6d} calls ({failed} EAGAIN/errors), {moved:>10d} bytes")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0, help="per target and round")
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1, help="shuffles the order in each round")
    parser.add_argument(
        "--relay-cpu", type=int, default=RELAY_CPU, help="CPU of the relays (default: %(default)s)"
    )
    parser.add_argument("--strace", action="store_true", help="count syscalls instead")
    parser.add_argument(
        "--streams-relay", type=int, metavar="UPSTREAM_PORT", help=argparse.SUPPRESS
    )
    ns = parser.parse_args()
    if ns.streams_relay:
        streams_relay(0, ns.streams_relay)
        return 0
    return traced(ns) if ns.strace else throughput(ns)


if __name__ == "__main__":
    sys.exit(main())
