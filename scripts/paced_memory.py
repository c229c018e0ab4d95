"""Memory under paced video delivery: N clients each download a 1 GiB file at --limit-rate.

Starts ``wirespeed serve DIR --limit-rate RATE`` (one worker, pinned to CPU 0), opens N
connections that each GET the file and read as fast as the server sends, samples the server's
RSS every second, and prints the peak RSS and the per-connection rates. Used for the
"memory stays flat" row of BENCHMARKS.md::

    .venv/bin/python scripts/paced_memory.py --clients 200 --rate 1m --seconds 15
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

import psutil

GIB = 1024**3


def _size(text: str) -> int:
    units = {"k": 1024, "m": 1024**2, "g": 1024**3}
    text = text.strip().lower()
    return int(float(text[:-1]) * units[text[-1]]) if text[-1] in units else int(text)


async def _client(port: int, counts: list[int], index: int, stop: asyncio.Event) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /big.bin HTTP/1.1\r\nHost: bench\r\n\r\n")
    await writer.drain()
    try:
        while not stop.is_set():
            data = await reader.read(256 * 1024)
            if not data:
                break
            counts[index] += len(data)
    finally:
        writer.close()


async def _run(
    port: int, clients: int, seconds: float, proc: psutil.Process
) -> tuple[int, list[int]]:
    counts = [0] * clients
    stop = asyncio.Event()
    tasks = [asyncio.create_task(_client(port, counts, i, stop)) for i in range(clients)]
    peak = 0
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        await asyncio.sleep(1)
        peak = max(peak, proc.memory_info().rss)
    stop.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return peak, counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--rate", default="1m", help="--limit-rate for the server (bytes/s)")
    parser.add_argument("--seconds", type=float, default=15.0)
    ns = parser.parse_args()
    rate = _size(ns.rate)
    with tempfile.TemporaryDirectory() as folder:
        with open(os.path.join(folder, "big.bin"), "wb") as f:
            f.truncate(GIB)  # sparse: sendfile reads zeros from the page cache, no disk needed
        server = subprocess.Popen(
            [
                "taskset",
                "-c",
                "0",
                sys.executable,
                "-m",
                "wirespeed",
                "serve",
                folder,
                "--port",
                "0",
                "--limit-rate",
                ns.rate,
                "--log-level",
                "warning",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None
            line = server.stdout.readline()
            match = re.search(r"http://[^:]+:(\d+)", line)
            if match is None:
                print(f"server did not start: {line!r}", file=sys.stderr)
                return 1
            proc = psutil.Process(server.pid)
            idle = proc.memory_info().rss
            os.sched_setaffinity(0, {1})
            peak, counts = asyncio.run(_run(int(match.group(1)), ns.clients, ns.seconds, proc))
        finally:
            server.terminate()
            server.wait(10)
    per_conn = [c / ns.seconds for c in counts]
    median = statistics.median(per_conn)
    print(f"clients {ns.clients}, limit-rate {rate} B/s, {ns.seconds:.0f} s")
    print(f"server RSS idle {idle / 2**20:.1f} MiB, peak {peak / 2**20:.1f} MiB")
    print(
        f"per-connection rate median {median / 1e6:.3f} MB/s "
        f"(min {min(per_conn) / 1e6:.3f}, max {max(per_conn) / 1e6:.3f}); "
        f"median / limit = {median / rate:.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
