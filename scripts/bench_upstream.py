"""Upstream benchmarks: ``wirespeed fetch`` against ``curl -o``, and the pool's socket counts.

1. **fetch**: a file (1 GiB by default) served by nginx on loopback (sendfile on, pinned to
   CPU 0), downloaded by ``curl -o`` (one connection), ``wirespeed fetch --connections 8`` and
   ``wirespeed fetch --connections 1``, each pinned to CPU 1, interleaved, ``--repeat`` times.
   Reports the median wall time of each, its ratio to curl's, and the peak RSS of each process
   (``/usr/bin/time``). The first output of each fetch is checked by SHA-256 outside the timing.
2. **pool**: in this process (pinned to CPU 1) against the same nginx (``keepalive_requests``
   raised so nginx never closes a connection first): 10,000 sequential GETs through one
   :class:`~wirespeed.upstream.client.Client`, and 64 concurrent callers on a pool of max size
   16, sampling the number of open descriptors of this process every millisecond.

::

    .venv/bin/python scripts/bench_upstream.py                 # 1 GiB, 3 runs each
    .venv/bin/python scripts/bench_upstream.py --size 256M --repeat 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from wirespeed.bench.process import free_port
from wirespeed.io.tuning import parse_size
from wirespeed.upstream import Client, Pool, join_all

# The nginx peer as in the lab (src/wirespeed/bench/apps/nginx.conf: sendfile, tcp_nopush, one
# worker, no daemon), plus keepalive_requests/timeout raised so the pool benchmark measures our
# reuse, not nginx's default cap of 1000 requests per connection.
NGINX_CONF = """
daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location = / {{ default_type text/plain; return 200 "Hello, World!"; }}
    }}
}}
"""
SERVER_CPU = "0"
CLIENT_CPU = "1"
# Written in 8 MiB blocks of random bytes (one block repeated): incompressible enough, and
# generating 1 GiB of urandom would take longer than the benchmark.
BLOCK = 8 * 1024 * 1024


def _wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def _make_file(path: Path, size: int) -> str:
    block = os.urandom(BLOCK)
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            piece = block[: min(left, BLOCK)]
            f.write(piece)
            digest.update(piece)
            left -= len(piece)
    return digest.hexdigest()


def _timed(argv: list[str]) -> tuple[float, int]:
    """(wall seconds, peak RSS in bytes) of one command, which must exit 0.

    The RSS comes from ``/usr/bin/time -f %M`` wrapped around the command: the ``wait4`` rusage
    of a child of this process would include this (large) Python process's RSS, which Linux
    carries across fork and exec into the child's ``ru_maxrss``.
    """
    start = time.perf_counter()
    proc = subprocess.run(
        ["/usr/bin/time", "-f", "maxrss_kib=%M", *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{argv} exited {proc.returncode}: {proc.stderr.strip()}")
    kib = int(proc.stderr.rsplit("maxrss_kib=", 1)[1].split()[0])
    return elapsed, kib * 1024


def bench_fetch(url: str, out_dir: Path, expected: str, repeat: int, connections: int) -> None:
    out = out_dir / "out.bin"
    pin = ["taskset", "-c", CLIENT_CPU]

    def fetch_argv(n: int) -> list[str]:
        return [
            *pin,
            sys.executable,
            "-m",
            "wirespeed.upstream.fetch",
            url,
            "-o",
            str(out),
            "--connections",
            str(n),
            "-q",
        ]

    clients = {
        "curl": [*pin, "curl", "-sS", "-f", "-o", str(out), url],
        f"fetch-{connections}": fetch_argv(connections),
        "fetch-1": fetch_argv(1),  # the like-for-like single-connection comparison
    }
    times: dict[str, list[float]] = {name: [] for name in clients}
    rss: dict[str, list[int]] = {name: [] for name in clients}
    for run in range(repeat):
        for name, argv in clients.items():
            out.unlink(missing_ok=True)
            elapsed, peak = _timed(argv)
            times[name].append(elapsed)
            rss[name].append(peak)
            if run == 0 and name != "curl":
                with open(out, "rb") as f:
                    got = hashlib.file_digest(f, "sha256").hexdigest()
                if got != expected:
                    raise RuntimeError(f"{name} output sha256 {got} != {expected}")
            print(f"  run {run + 1} {name:8s} {elapsed:6.3f} s  RSS {peak / 2**20:5.1f} MiB")
    out.unlink(missing_ok=True)
    curl_s = statistics.median(times["curl"])
    for name in clients:
        median = statistics.median(times[name])
        print(
            f"{name:8s} median {median:.3f} s ({median / curl_s:.2f}x curl's time), "
            f"peak RSS median {statistics.median(rss[name]) / 2**20:.1f} MiB"
        )


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


async def bench_pool(url: str, sequential: int, callers: int, max_size: int) -> None:
    base = _fd_count()
    peak = base

    async def sample(stop: asyncio.Event) -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, _fd_count())
            await asyncio.sleep(0.001)

    async with Pool(max_size=max_size) as pool, Client(pool) as client:
        stop = asyncio.Event()
        sampler = asyncio.create_task(sample(stop))
        start = time.perf_counter()
        for _ in range(sequential):
            response = await client.get(url)
            assert response.status == 200
        elapsed = time.perf_counter() - start
        stop.set()
        await sampler
        s = client.pool.stats
        print(
            f"pool sequential: {sequential} GETs in {elapsed:.2f} s "
            f"({sequential / elapsed:.0f} req/s): opened={s.opened} reused={s.reused} "
            f"discarded={s.discarded} peak_open={s.peak_open}; "
            f"extra descriptors at peak {peak - base}"
        )
    base = _fd_count()
    peak = base
    async with Pool(max_size=max_size) as pool, Client(pool) as client:
        stop = asyncio.Event()
        sampler = asyncio.create_task(sample(stop))
        most_waiting = 0
        per_caller = 100

        async def caller() -> None:
            nonlocal most_waiting
            for _ in range(per_caller):
                response = await client.get(url)
                assert response.status == 200
                most_waiting = max(most_waiting, client.pool.stats.waiting)

        start = time.perf_counter()
        await join_all((caller() for _ in range(callers)), limit=callers)
        elapsed = time.perf_counter() - start
        stop.set()
        await sampler
        s = client.pool.stats
        total = callers * per_caller
        print(
            f"pool concurrent: {callers} callers x {per_caller} GETs, max_size {max_size}: "
            f"{total / elapsed:.0f} req/s, opened={s.opened} reused={s.reused} "
            f"discarded={s.discarded} peak_open={s.peak_open} most waiting={most_waiting}; "
            f"extra descriptors at peak {peak - base}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1G", help="file size (default 1G)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each client (default 3)")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--sequential", type=int, default=10_000)
    parser.add_argument("--skip-fetch", action="store_true")
    ns = parser.parse_args()
    size = parse_size(ns.size)
    if size is None:
        parser.error(f"bad size {ns.size!r}")
    for tool in ("nginx", "curl", "taskset"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is not installed")
    with tempfile.TemporaryDirectory(prefix="wirespeed-bench-", dir="/tmp") as tmp:
        work = Path(tmp)
        root = work / "root"
        root.mkdir()
        port = free_port()
        conf = work / "nginx.conf"
        conf.write_text(NGINX_CONF.format(prefix=work, port=port, root=root))
        nginx = subprocess.Popen(
            ["taskset", "-c", SERVER_CPU, "nginx", "-p", str(work), "-c", str(conf), "-e",
             "stderr"]
        )  # fmt: skip
        try:
            _wait_port(port)
            base = f"http://127.0.0.1:{port}"
            if not ns.skip_fetch:
                print(f"writing a {size} byte file ...", flush=True)
                expected = _make_file(root / "big.bin", size)
                subprocess.run(
                    ["cat", str(root / "big.bin")], stdout=subprocess.DEVNULL, check=True
                )
                bench_fetch(f"{base}/big.bin", work, expected, ns.repeat, ns.connections)
                (root / "big.bin").unlink()
            os.sched_setaffinity(0, {int(CLIENT_CPU)})
            asyncio.run(bench_pool(f"{base}/", ns.sequential, callers=64, max_size=16))
        finally:
            nginx.terminate()
            nginx.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
