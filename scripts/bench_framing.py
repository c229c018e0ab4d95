"""Batched framing vs one write per message: 1 M small messages over loopback TCP (issue #4).

Usage::

    .venv/bin/python scripts/bench_framing.py                 # 1,000,000 x 100 B, 3 runs, uvloop
    .venv/bin/python scripts/bench_framing.py --loop asyncio --runs 5 --messages 200000

Each run starts a receiver process pinned to CPU 1 (the sender stays on CPU 0: two cores, one
each, as DESIGN.md asks), then sends the same messages twice, interleaved so both modes see the
same machine state:

* ``per-write``: each message framed as its own frame (the same 6-byte header and one-element
  msgpack array the batched path uses) and handed to ``transport.write`` at once. This is the
  leanest loop we could write: header and payload built inline, no :class:`FrameEncoder` call.
* ``batched``: ``await channel.send(message)`` on a :class:`~wirespeed.codec.framing.Channel`
  with the default 1 ms latency bound and 64 KiB byte budget.

Both honour backpressure the same way (wait on a :class:`WriteFlow` while the transport is
paused). The receiver decodes every frame with :class:`FrameDecoder` and stops the clock when it
holds all messages, so messages/s is end to end: first send to last message decoded.

Added latency (batched only) is the time from ``send()`` to the ``transport.write`` of the batch
carrying the message, measured for every 16th message (a clock read per message would itself
cost a few percent): the transport is wrapped to note the time and
:attr:`Channel.messages_written` of each write. It is compared with the configured bound.

Messages are opaque 100-byte ``bytes`` values (a pre-serialised trade record), sent as msgpack bin.
Output: a table of medians over the runs, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import os
import platform
import resource
import socket
import statistics
import struct
import subprocess
import sys
import time
from typing import Any

import msgpack
import uvloop

from wirespeed.codec.framing import (
    BYTE_BUDGET,
    CODEC_MSGPACK,
    MAX_DELAY,
    Channel,
    FrameDecoder,
    FrameEncoder,
)
from wirespeed.io.flow import WriteFlow

SENDER_CPU = 0
RECEIVER_CPU = 1
SAMPLE_EVERY = 16  # latency sample rate (see the module notes)
RECV_SIZE = 256 * 1024  # receiver read size: several 64 KiB batches per wake-up


def _preemptions() -> int:
    """Involuntary context switches of this process so far: time other tasks took the CPU."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw


def _pin(cpu: int) -> None:
    if hasattr(os, "sched_setaffinity") and cpu < (os.cpu_count() or 1):
        os.sched_setaffinity(0, {cpu})


# -- receiver (child process) --------------------------------------------------------------------


def receive(port_file: str, expected: int) -> None:
    """Accept one connection, decode until ``expected`` messages, print the finish time."""
    _pin(RECEIVER_CPU)
    with socket.create_server(("127.0.0.1", 0)) as server:
        with open(port_file, "w") as f:
            f.write(str(server.getsockname()[1]))
        while True:
            conn, _ = server.accept()
            with conn:
                decoder = FrameDecoder()
                got = 0
                first = 0.0
                while got < expected:
                    data = conn.recv(RECV_SIZE)
                    if not data:
                        break
                    if not first:
                        first = time.monotonic()
                    got += len(decoder.feed(data))
                done = time.monotonic()
                conn.sendall(json.dumps({"got": got, "first": first, "done": done}).encode())
            if got == 0:  # the parent's "stop" connection
                return


# -- sender --------------------------------------------------------------------------------------


class _Sender(asyncio.Protocol):
    def __init__(self) -> None:
        self.flow = WriteFlow()
        self.reply = bytearray()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def pause_writing(self) -> None:
        self.flow.pause()

    def resume_writing(self) -> None:
        self.flow.resume()

    def data_received(self, data: bytes) -> None:
        self.reply += data

    def connection_lost(self, exc: Exception | None) -> None:
        self.flow.close()
        if not self.closed.done():
            self.closed.set_result(None)


class _TimedTransport(asyncio.WriteTransport):
    """Delegates to a transport and records (time, messages written) at every write."""

    def __init__(self, inner: asyncio.WriteTransport) -> None:
        super().__init__()
        self.inner = inner
        self.channel: Channel | None = None
        self.writes: list[tuple[float, int]] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert self.channel is not None
        self.writes.append((time.monotonic(), self.channel.messages_written))
        self.inner.write(data)

    def is_closing(self) -> bool:
        return self.inner.is_closing()

    def close(self) -> None:
        self.inner.close()

    def get_write_buffer_size(self) -> int:
        return self.inner.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self.inner.get_write_buffer_limits()


async def _connect(port: int) -> tuple[asyncio.Transport, _Sender]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_connection(_Sender, "127.0.0.1", port)
    sock = transport.get_extra_info("socket")
    # Nagle off: the per-write mode is about what each write costs, not about the kernel
    # coalescing small writes for us (uvloop and asyncio set it by default; made explicit).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return transport, protocol


async def _finish(transport: asyncio.Transport, protocol: _Sender, count: int) -> dict[str, Any]:
    while protocol.flow.paused:
        await protocol.flow.drain()
    async with asyncio.timeout(120):
        while not protocol.reply:
            await asyncio.sleep(0.001)
        transport.close()
        await protocol.closed
    result: dict[str, Any] = json.loads(protocol.reply)
    if result["got"] != count:
        raise SystemExit(f"receiver decoded {result['got']} of {count} messages")
    return result


async def per_write(port: int, messages: list[bytes]) -> dict[str, Any]:
    transport, protocol = await _connect(port)
    flow = protocol.flow
    header = struct.Struct(">IBB").pack
    pack = msgpack.Packer(use_bin_type=True).pack
    write = transport.write
    cpu = time.process_time()
    preempted = _preemptions()
    start = time.monotonic()
    for message in messages:
        payload = b"\x91" + pack(message)  # a one-element msgpack array
        write(header(len(payload), CODEC_MSGPACK, 0) + payload)
        if flow.paused:
            await flow.drain()
    sent = time.monotonic()
    cpu = time.process_time() - cpu
    preempted = _preemptions() - preempted
    result = await _finish(transport, protocol, len(messages))
    return {"start": start, "sent": sent, "cpu": cpu, "preempted": preempted, **result}


async def batched(
    port: int, messages: list[bytes], max_delay: float, budget: int, *, split: bool
) -> dict[str, Any]:
    """``await channel.send(m)`` per message, or (``split``) ``channel.write(m)`` and a drain
    when it returns False: the StreamWriter idiom, one coroutine fewer per message."""
    transport, protocol = await _connect(port)
    timed = _TimedTransport(transport)
    encoder = FrameEncoder("msgpack", byte_budget=budget)
    channel = Channel(timed, encoder, flow=protocol.flow, max_delay=max_delay)
    timed.channel = channel
    samples: list[float] = []
    note = samples.append
    clock = time.monotonic
    send = channel.send
    write = channel.write
    drain = channel.drain
    blocks = [messages[k : k + SAMPLE_EVERY] for k in range(0, len(messages), SAMPLE_EVERY)]
    cpu = time.process_time()
    preempted = _preemptions()
    start = time.monotonic()
    if split:
        for block in blocks:
            note(clock())  # the send time of the block's first message
            for message in block:
                if not write(message):
                    await drain()
    else:
        for block in blocks:
            note(clock())
            for message in block:
                await send(message)
    await channel.flush()
    sent = time.monotonic()
    cpu = time.process_time() - cpu
    preempted = _preemptions() - preempted
    result = await _finish(transport, protocol, len(messages))
    # Message i is in the first write after which more than i messages were written.
    times = [t for t, _ in timed.writes]
    counts = [n for _, n in timed.writes]
    delays = sorted(
        times[bisect.bisect_right(counts, k * SAMPLE_EVERY)] - sent_at
        for k, sent_at in enumerate(samples)
    )
    return {
        "start": start,
        "sent": sent,
        "cpu": cpu,
        "preempted": preempted,
        **result,
        "batches": channel.batches_written,
        "p50_delay": delays[len(delays) // 2],
        "p99_delay": delays[int(len(delays) * 0.99)],
        "max_delay_seen": delays[-1],
    }


# -- driver --------------------------------------------------------------------------------------


def _start_receiver(count: int, tmpdir: str) -> tuple[subprocess.Popen[bytes], int]:
    port_file = os.path.join(tmpdir, "port")
    proc = subprocess.Popen(
        [sys.executable, __file__, "--receive", port_file, str(count)],
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with open(port_file) as f:
                text = f.read()
            if text:
                return proc, int(text)
        except FileNotFoundError:
            pass
        time.sleep(0.02)
    proc.kill()
    raise SystemExit("receiver did not start")


def _stop_receiver(proc: subprocess.Popen[bytes], port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.shutdown(socket.SHUT_WR)
        s.recv(1024)
    proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--size", type=int, default=100, help="message size in bytes")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument("--max-delay", type=float, default=MAX_DELAY, help="seconds")
    parser.add_argument("--budget", type=int, default=BYTE_BUDGET, help="batch byte budget")
    parser.add_argument(
        "--receive", nargs=2, metavar=("PORT_FILE", "COUNT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.receive:
        receive(args.receive[0], int(args.receive[1]))
        return

    import tempfile  # noqa: PLC0415

    _pin(SENDER_CPU)
    # Distinct messages (a counter in the first 8 bytes), built before the clock starts.
    filler = bytes(range(256)) * (args.size // 256 + 1)
    messages = [i.to_bytes(8, "big") + filler[: args.size - 8] for i in range(args.messages)]
    runner = asyncio.Runner(loop_factory=uvloop.new_event_loop if args.loop == "uvloop" else None)
    rows: dict[str, list[dict[str, Any]]] = {"per-write": [], "send": [], "write+drain": []}
    with tempfile.TemporaryDirectory() as tmpdir:
        proc, port = _start_receiver(args.messages, tmpdir)
        try:
            for _ in range(args.runs):  # interleaved: each run sees the same machine state
                rows["per-write"].append(runner.run(per_write(port, messages)))
                for mode in ("send", "write+drain"):
                    split = mode == "write+drain"
                    run = batched(port, messages, args.max_delay, args.budget, split=split)
                    rows[mode].append(runner.run(run))
        finally:
            runner.close()
            _stop_receiver(proc, port)

    def rate(r: dict[str, Any]) -> float:
        return float(args.messages / (r["done"] - r["start"]))

    def median(mode: str, key: str) -> float:
        return float(statistics.median(r[key] for r in rows[mode]))

    def cpu_rate(r: dict[str, Any]) -> float:
        return float(args.messages / r["cpu"])

    rates = {mode: statistics.median(rate(r) for r in runs) for mode, runs in rows.items()}
    cpu_rates = {mode: statistics.median(cpu_rate(r) for r in runs) for mode, runs in rows.items()}
    ratios = {
        mode: [rate(b) / rate(a) for a, b in zip(rows["per-write"], rows[mode], strict=True)]
        for mode in ("send", "write+drain")
    }
    cpu_ratios = {
        mode: [
            cpu_rate(b) / cpu_rate(a) for a, b in zip(rows["per-write"], rows[mode], strict=True)
        ]
        for mode in ("send", "write+drain")
    }
    print(f"{args.messages:,} x {args.size} B over loopback, {args.loop}, {args.runs} runs")
    print(
        f"{'mode':<12} {'msg/s':>11} {'ratio':>6} {'msg/cpu-s':>11} {'ratio':>6}"
        f" {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7}   msg/s per run (preemptions)"
    )
    for mode, runs in rows.items():
        each = ", ".join(f"{rate(r) / 1e6:.2f}M ({r['preempted']})" for r in runs)
        if mode == "per-write":
            print(
                f"{mode:<12} {rates[mode]:>11,.0f} {'1.0x':>6} {cpu_rates[mode]:>11,.0f}"
                f" {'1.0x':>6} {'':>7} {'':>7} {'':>7}   {each}"
            )
            continue
        print(
            f"{mode:<12} {rates[mode]:>11,.0f} {statistics.median(ratios[mode]):>5.1f}x"
            f" {cpu_rates[mode]:>11,.0f} {statistics.median(cpu_ratios[mode]):>5.1f}x"
            f" {median(mode, 'p50_delay') * 1e3:>7.3f} {median(mode, 'p99_delay') * 1e3:>7.3f}"
            f" {max(r['max_delay_seen'] for r in runs) * 1e3:>7.3f}   {each}"
        )
    batches = median("send", "batches")
    print(
        "msg/s: first send to last message decoded by the receiver; msg/cpu-s: per second of"
        " the sender's CPU time (robust to other load); ratios: against per-write in the same"
        f" run, median of runs; latency: send() to the batch's write, bound"
        f" {args.max_delay * 1e3:g} ms; ~{args.messages / batches:,.0f} messages per batch;"
        " preemptions: involuntary context switches of the sender during the run"
    )
    summary: dict[str, Any] = {
        "bench": "framing",
        "messages": args.messages,
        "size": args.size,
        "loop": args.loop,
        "runs": args.runs,
        "latency_bound_ms": args.max_delay * 1e3,
        "byte_budget": args.budget,
        "per_write_msgs_per_s": round(rates["per-write"]),
        "per_write_msgs_per_cpu_s": round(cpu_rates["per-write"]),
    }
    for mode, key in (("send", "send"), ("write+drain", "write_drain")):
        summary[f"{key}_msgs_per_s"] = round(rates[mode])
        summary[f"{key}_msgs_per_cpu_s"] = round(cpu_rates[mode])
        summary[f"{key}_ratio"] = round(statistics.median(ratios[mode]), 2)
        summary[f"{key}_cpu_ratio"] = round(statistics.median(cpu_ratios[mode]), 2)
        summary[f"{key}_p50_ms"] = round(median(mode, "p50_delay") * 1e3, 4)
        summary[f"{key}_p99_ms"] = round(median(mode, "p99_delay") * 1e3, 4)
        summary[f"{key}_preemptions"] = [r["preempted"] for r in rows[mode]]
    summary.update(
        batches=batches, python=platform.python_version(), cpus=os.cpu_count(), load=os.getloadavg()
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
