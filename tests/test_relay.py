"""The zero-copy TCP relay, against real upstreams, over both loops and both copy paths.

* Conformance: several MiB each way under seeded random write and read sizes, sha256-exact,
  through splice (default and one-page pipes, where the pipe fills by slots long before bytes),
  the userspace copy, and splice refused by the kernel mid-way (EINVAL on either splice).
* Half-close both ways: the client shuts its write side and still gets the reply; the upstream
  shuts its write side first and still gets the client's bytes. IPv6 on both sides.
* Faults: upstream refused (client closed with a FIN, not left hanging), client reset while the
  pipe holds data (no spin, upstream reset too), idle timeout, max connections, shutdown grace,
  descriptor leaks counted in /proc/self/fd, pre-connected upstreams.
* The CLI in a subprocess: one-line errors, SIGTERM with a transfer in flight (it completes,
  exit 0), and ``strace`` showing the bytes move by splice, and by recvfrom/sendto with
  ``--no-splice``, so the proof can fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import random
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from wirespeed.relay import ConnectionStats, Relay, parse_address

both_loops = pytest.mark.asyncio(loop_factories=["uvloop", "asyncio"])

MiB = 1024 * 1024
# The relay as a command. `python -m wirespeed.relay` works whether or not cli.py has wired the
# `relay` subcommand yet; test_cli_subcommand checks the wiring itself.
RELAY_CMD = [sys.executable, "-m", "wirespeed.relay"]

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def pattern(size: int, seed: int) -> bytes:
    """Reproducible pseudo-random bytes: a misplaced byte shows in the digest."""
    return random.Random(seed).randbytes(size)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def chunk_size(rng: random.Random) -> int:
    """Seeded random sizes from 1 byte to 256 KiB: tiny, packet-sized and multi-segment."""
    return rng.choice((rng.randint(1, 16), rng.randint(1, 1500), rng.randint(1, 256 * 1024)))


def open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


async def wait_until(predicate: Callable[[], bool], timeout: float) -> float:
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not predicate():
        if loop.time() - start > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.01)
    return loop.time() - start


# -- upstreams ---------------------------------------------------------------------------------


@dataclass
class Upstream:
    """An in-process TCP server on 127.0.0.1 running ``handler`` per connection."""

    server: asyncio.Server
    port: int
    accepted: int = 0
    results: list[Any] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)


@pytest.fixture
async def upstream() -> AsyncIterator[Callable[[Handler], Awaitable[Upstream]]]:
    started: list[Upstream] = []

    async def start(handler: Handler) -> Upstream:
        holder: list[Upstream] = []

        async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            up = holder[0]
            up.accepted += 1
            try:
                await handler(reader, writer)
            except (ConnectionError, OSError) as exc:
                up.errors.append(exc)
            finally:
                writer.close()
                with contextlib.suppress(ConnectionError, OSError):
                    await writer.wait_closed()

        server = await asyncio.start_server(run, "127.0.0.1", 0)
        up = Upstream(server, server.sockets[0].getsockname()[1])
        holder.append(up)
        started.append(up)
        return up

    yield start
    for up in started:
        up.server.close()
        await up.server.wait_closed()


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Echo with seeded random read sizes; pass the client's half-close back."""
    rng = random.Random(7)
    while data := await reader.read(chunk_size(rng)):
        writer.write(data)
        await writer.drain()
    writer.write_eof()
    await reader.read()  # until the relay closes


@pytest.fixture
async def relays() -> AsyncIterator[Callable[..., Awaitable[Relay]]]:
    """``relay = await relays(upstream_port, **options)``; all are closed at the end."""
    started: list[Relay] = []

    async def start(port: int, **options: Any) -> Relay:
        r = Relay(("127.0.0.1", 0), ("127.0.0.1", port), **options)
        await r.start()
        started.append(r)
        return r

    yield start
    for r in started:
        await r.close()


async def connect(relay: Relay) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", relay.address[1], limit=1 << 20)


async def send_randomly(writer: asyncio.StreamWriter, payload: bytes, seed: int) -> None:
    rng = random.Random(seed)
    i = 0
    while i < len(payload):
        n = chunk_size(rng)
        writer.write(payload[i : i + n])
        await writer.drain()
        if rng.random() < 0.2:
            await asyncio.sleep(0)  # let the relay see this piece on its own
        i += n


async def read_randomly(reader: asyncio.StreamReader, seed: int) -> bytes:
    rng = random.Random(seed)
    out = bytearray()
    while data := await reader.read(chunk_size(rng)):
        out += data
    return bytes(out)


def closed_log(relay: Relay) -> list[ConnectionStats]:
    """Collect every connection's final statistics."""
    ended: list[ConnectionStats] = []
    relay.on_close = ended.append
    return ended


MODES: dict[str, dict[str, Any]] = {
    "splice": {"splice": True},
    # One page per direction: the pipe is "full" (by slots) after a few fragments.
    "splice-one-page-pipe": {"splice": True, "pipe_size": 4096},
    "copy": {"splice": False},
}


# -- conformance -------------------------------------------------------------------------------


@both_loops
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("seed", [1, 2])
async def test_byte_exact_both_ways_under_random_chunking(
    upstream: Any, relays: Any, mode: str, seed: int
) -> None:
    up = await upstream(echo)
    relay = await relays(up.port, **MODES[mode])
    ended = closed_log(relay)
    payload = pattern(3 * MiB + seed, seed)
    reader, writer = await connect(relay)

    async def send() -> None:
        await send_randomly(writer, payload, seed)
        writer.write_eof()

    _, echoed = await asyncio.wait_for(
        asyncio.gather(send(), read_randomly(reader, seed + 100)), 20
    )
    writer.close()
    assert sha(echoed) == sha(payload)
    await wait_until(lambda: bool(ended), 2)
    (stats,) = ended
    assert (stats.bytes_up, stats.bytes_down) == (len(payload), len(payload))
    assert stats.reason == "done"
    assert stats.mode == ("copy" if mode == "copy" else "splice")
    totals = relay.stats()
    assert (totals.bytes_up, totals.bytes_down, totals.active) == (len(payload), len(payload), 0)


@both_loops
@pytest.mark.parametrize("refused", ["socket-to-pipe", "pipe-to-socket"])
async def test_splice_refused_mid_stream_falls_back_to_copy(
    upstream: Any, relays: Any, monkeypatch: pytest.MonkeyPatch, refused: str
) -> None:
    # The kernel answers EINVAL for a socket it cannot splice. Refusing the drain leaves bytes
    # in the pipe: they must reach the destination through the copy path, in order.
    real_splice = os.splice
    calls = {"n": 0}

    def splice(src: int, dst: int, count: int, *args: Any, **kwargs: Any) -> int:
        calls["n"] += 1
        into_pipe = os.fstat(dst).st_mode & 0o170000 == 0o010000  # S_IFIFO
        if calls["n"] > 3 and into_pipe == (refused == "socket-to-pipe"):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_splice(src, dst, count, *args, **kwargs)

    monkeypatch.setattr(os, "splice", splice)  # the relay looks it up on each call
    up = await upstream(echo)
    relay = await relays(up.port)
    ended = closed_log(relay)
    payload = pattern(2 * MiB, 5)
    reader, writer = await connect(relay)

    async def send() -> None:
        await send_randomly(writer, payload, 5)
        writer.write_eof()

    _, echoed = await asyncio.wait_for(asyncio.gather(send(), read_randomly(reader, 6)), 20)
    writer.close()
    assert sha(echoed) == sha(payload)
    await wait_until(lambda: bool(ended), 2)
    assert ended[0].mode == "copy"
    assert (ended[0].bytes_up, ended[0].bytes_down) == (len(payload), len(payload))


# -- half-close --------------------------------------------------------------------------------


@both_loops
@pytest.mark.parametrize("mode", ["splice", "copy"])
async def test_client_half_close_upstream_still_replies(
    upstream: Any, relays: Any, mode: str
) -> None:
    reply = pattern(2 * MiB, 9)

    async def digest_then_reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.read()  # until the client's EOF, passed on by the relay
        writer.write(sha(request).encode() + b"\n")
        await send_randomly(writer, reply, 10)

    up = await upstream(digest_then_reply)
    relay = await relays(up.port, **MODES[mode])
    ended = closed_log(relay)
    request = pattern(MiB, 11)
    reader, writer = await connect(relay)
    await send_randomly(writer, request, 12)
    writer.write_eof()
    got = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert got == sha(request).encode() + b"\n" + reply
    await wait_until(lambda: bool(ended), 2)
    assert ended[0].reason == "done"


@both_loops
@pytest.mark.parametrize("mode", ["splice", "copy"])
async def test_upstream_half_close_client_still_sends(
    upstream: Any, relays: Any, mode: str
) -> None:
    greeting = pattern(MiB, 13)

    async def speak_first(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await send_randomly(writer, greeting, 14)
        writer.write_eof()  # done talking, still listening
        up.results.append(sha(await reader.read()))

    up = await upstream(speak_first)
    relay = await relays(up.port, **MODES[mode])
    ended = closed_log(relay)
    reader, writer = await connect(relay)
    got = await asyncio.wait_for(reader.read(), 10)  # the upstream's EOF reaches the client
    assert got == greeting
    answer = pattern(MiB + 3, 15)
    await send_randomly(writer, answer, 16)  # the client can still send
    writer.write_eof()
    await wait_until(lambda: bool(ended), 5)
    writer.close()
    assert up.results == [sha(answer)]
    assert ended[0].reason == "done"
    assert (ended[0].bytes_up, ended[0].bytes_down) == (len(answer), len(greeting))


@both_loops
async def test_ipv6_listen_and_upstream() -> None:
    async def hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"v6:" + await reader.read())
        writer.close()

    try:
        server = await asyncio.start_server(hello, "::1", 0)
    except OSError:
        pytest.skip("no IPv6 loopback")
    async with server:
        relay = Relay(("::1", 0), ("::1", server.sockets[0].getsockname()[1]))
        await relay.start()
        ended = closed_log(relay)
        reader, writer = await asyncio.open_connection("::1", relay.address[1])
        writer.write(b"ping")
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 5) == b"v6:ping"
        writer.close()
        await wait_until(lambda: bool(ended), 2)
        assert ended[0].client.startswith("[::1]:")
        assert ended[0].upstream.startswith("[::1]:")
        await relay.close()


# -- faults ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@both_loops
async def test_upstream_refused_closes_the_client(relays: Any) -> None:
    relay = await relays(free_port())
    ended = closed_log(relay)
    reader, writer = await connect(relay)
    writer.write(b"hello")
    # A clean close (EOF, no reset) and promptly: not left waiting for the idle timeout.
    assert await asyncio.wait_for(reader.read(), 2) == b""
    writer.close()
    await wait_until(lambda: bool(ended), 1)
    assert ended[0].reason == "upstream connect failed"
    assert relay.stats().upstream_failures == 1


@both_loops
@pytest.mark.parametrize("mode", ["splice", "copy"])
async def test_client_reset_with_data_in_flight_ends_quickly_and_resets_upstream(
    upstream: Any, relays: Any, mode: str
) -> None:
    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        block = pattern(256 * 1024, 17)
        while True:
            writer.write(block)
            await writer.drain()

    up = await upstream(endless)
    relay = await relays(up.port, **MODES[mode])
    ended = closed_log(relay)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)  # fills fast: pipe stays full
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", relay.address[1]))
    await wait_until(lambda: relay.stats().bytes_down > 0, 2)
    await asyncio.sleep(0.1)  # the client's buffer and the relay's pipe are full now
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # reset, with data still in the relay's pipe
    await wait_until(lambda: bool(ended), 1)  # the failed splice ended it: no retry loop
    await wait_until(lambda: bool(up.errors), 2)
    assert ended[0].reason == "client reset"
    assert isinstance(up.errors[0], ConnectionResetError), up.errors  # not a FIN
    cpu = time.process_time()
    await asyncio.sleep(0.3)
    assert time.process_time() - cpu < 0.05, "something kept spinning after the reset"
    assert relay.stats().active == 0


@both_loops
async def test_idle_timeout_closes_only_silent_connections(upstream: Any, relays: Any) -> None:
    up = await upstream(echo)
    relay = await relays(up.port, idle_timeout=0.3)
    ended = closed_log(relay)
    busy_reader, busy = await connect(relay)
    silent_reader, silent = await connect(relay)
    silent.write(b"x")
    assert await silent_reader.readexactly(1) == b"x"
    start = time.monotonic()
    for _ in range(8):  # a byte every 0.1 s keeps a connection alive past the timeout
        busy.write(b"y")
        assert await busy_reader.readexactly(1) == b"y"
        await asyncio.sleep(0.1)
    assert await asyncio.wait_for(silent_reader.read(), 1) == b""
    assert [s.reason for s in ended] == ["idle timeout"]
    assert 0.3 <= ended[0].duration <= 1.0  # type: ignore[operator]
    assert time.monotonic() - start >= 0.8
    assert relay.stats().active == 1
    busy.close()
    silent.close()


@both_loops
async def test_max_connections_closes_the_excess_at_once(upstream: Any, relays: Any) -> None:
    up = await upstream(echo)
    relay = await relays(up.port, max_connections=2)
    ended = closed_log(relay)
    clients = [await connect(relay) for _ in range(2)]
    for reader, writer in clients:
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
    reader, writer = await connect(relay)
    assert await asyncio.wait_for(reader.read(), 1) == b""  # accepted and closed at once
    writer.close()
    stats = relay.stats()
    assert (stats.active, stats.rejected, stats.accepted) == (2, 1, 3)
    clients[0][1].write_eof()
    await wait_until(lambda: bool(ended), 2)
    reader, writer = await connect(relay)  # room again
    writer.write(b"pong")
    assert await reader.readexactly(4) == b"pong"
    for _, w in [*clients, (reader, writer)]:
        w.close()


@both_loops
async def test_close_lets_transfers_finish_within_grace_then_resets(
    upstream: Any, relays: Any
) -> None:
    body = pattern(4 * MiB, 19)

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(1)
        if up.accepted == 1:  # the first client gets a body over ~0.3 s
            for i in range(0, len(body), 512 * 1024):
                writer.write(body[i : i + 512 * 1024])
                await writer.drain()
                await asyncio.sleep(0.04)
            return
        await reader.read()  # the second stays open until cut

    up = await upstream(slow)
    relay = await relays(up.port)
    ended = closed_log(relay)
    r1, w1 = await connect(relay)
    w1.write(b"1")
    await wait_until(lambda: up.accepted == 1, 2)
    r2, w2 = await connect(relay)
    w2.write(b"2")
    await wait_until(lambda: relay.stats().bytes_down > 0 and up.accepted == 2, 2)
    port = relay.address[1]
    closing = asyncio.ensure_future(relay.close(grace=1.0))
    await asyncio.sleep(0.05)
    with pytest.raises(ConnectionRefusedError):  # no longer accepting
        await asyncio.open_connection("127.0.0.1", port)
    assert await asyncio.wait_for(r1.read(), 3) == body  # the transfer in flight completes
    w1.write_eof()  # and the client ends it: both directions done before the grace is over
    start = time.monotonic()
    with pytest.raises(ConnectionResetError):  # the idle one is reset when the grace is over
        await asyncio.wait_for(r2.read(), 3)
    await closing
    assert time.monotonic() - start < 1.5
    assert sorted(s.reason for s in ended) == ["done", "shutdown"]
    w1.close()
    w2.close()


@both_loops
async def test_no_descriptor_leaks(upstream: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    up = await upstream(echo)
    before = open_fds()
    for options in ({}, {"splice": False}, {"preconnect": 2}):
        relay = Relay(("127.0.0.1", 0), ("127.0.0.1", up.port), idle_timeout=0.2, **options)
        await relay.start()
        await every_ending(relay)
    # Refused upstream, too.
    relay = Relay(("127.0.0.1", 0), ("127.0.0.1", free_port()))
    await relay.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.address[1])
    assert await reader.read() == b""
    writer.close()
    await writer.wait_closed()
    await relay.close()
    await asyncio.sleep(0.05)
    leaked = open_fds() - before
    assert not leaked, {fd: os.readlink(f"/proc/self/fd/{fd}") for fd in leaked if _exists(fd)}


async def every_ending(relay: Relay) -> None:
    """Connections that end in each way: done, reset mid-stream, idle, cut by close()."""
    ended = closed_log(relay)
    port = relay.address[1]
    for _ in range(3):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"abc" * 1000)
        writer.write_eof()
        assert await reader.read() == b"abc" * 1000
        writer.close()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"x" * 100_000)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    _, idle = await asyncio.open_connection("127.0.0.1", port)
    await wait_until(lambda: len(ended) >= 5, 2)
    assert {s.reason for s in ended} == {"done", "client reset", "idle timeout"}
    _, cut = await asyncio.open_connection("127.0.0.1", port)
    await wait_until(lambda: relay.stats().active >= 1, 2)
    await relay.close()
    assert ended[-1].reason == "shutdown"
    for w in (idle, cut):
        w.close()
        with contextlib.suppress(ConnectionError):
            await w.wait_closed()


def _exists(fd: int) -> bool:
    return os.path.exists(f"/proc/self/fd/{fd}")


@both_loops
async def test_preconnected_upstreams_are_used_and_stale_ones_dropped(
    upstream: Any, relays: Any
) -> None:
    async def close_when_silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # An upstream that hangs up on silent connections, like nginx after its header timeout.
        try:
            data = await asyncio.wait_for(reader.read(65536), 0.3)
        except TimeoutError:
            return
        writer.write(data)
        await writer.drain()
        await reader.read()

    up = await upstream(close_when_silent)
    relay = await relays(up.port, preconnect=2)
    await wait_until(lambda: up.accepted == 2, 2)  # spares opened before any client
    reader, writer = await connect(relay)
    writer.write(b"hi")
    assert await reader.readexactly(2) == b"hi"
    assert relay.connections()[0].preconnected
    writer.close()
    await asyncio.sleep(0.5)  # the upstream has closed both spares (the refilled one too)
    reader, writer = await connect(relay)
    writer.write(b"yo")
    assert await asyncio.wait_for(reader.readexactly(2), 2) == b"yo"
    assert not relay.connections()[0].preconnected  # stale spares dropped, a fresh connect
    writer.close()
    stats = relay.stats()
    assert (stats.spares_used, stats.spares_discarded) == (1, 2)
    await wait_until(lambda: up.accepted == 6, 2)  # 2 + 1 refill + 1 fresh + 2 refills


# -- pure pieces -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "zero", "expected"),
    [
        ("127.0.0.1:80", False, ("127.0.0.1", 80)),
        ("localhost:65535", False, ("localhost", 65535)),
        ("[::1]:8080", False, ("::1", 8080)),
        ("0.0.0.0:0", True, ("0.0.0.0", 0)),
        ("0.0.0.0:0", False, None),  # an upstream needs a port
        ("127.0.0.1:65536", True, None),
        ("127.0.0.1", True, None),
        (":80", True, None),
        ("::1:80", True, None),  # ambiguous without brackets
        ("host:http", True, None),
    ],
)
def test_parse_address(text: str, zero: bool, expected: tuple[str, int] | None) -> None:
    if expected is None:
        with pytest.raises(ValueError, match="invalid address"):
            parse_address(text, allow_port_zero=zero)
    else:
        assert parse_address(text, allow_port_zero=zero) == expected


# -- the CLI -----------------------------------------------------------------------------------


@dataclass
class RelayProcess:
    proc: subprocess.Popen[bytes]
    port: int
    pid: int  # the relay's own pid (from its banner), not a wrapper's such as strace


def start_relay(*args: str, prefix: tuple[str, ...] = ()) -> RelayProcess:
    proc = subprocess.Popen(
        [*prefix, *RELAY_CMD, "--listen", "127.0.0.1:0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
        start_new_session=True,
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 20)
    line = proc.stdout.readline().decode() if ready else ""
    match = re.search(r"relaying 127\.0\.0\.1:(\d+) -> \S+ \(pid (\d+)\)", line)
    if match is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=10)
        raise AssertionError(f"no banner: {line!r}; {err.decode()[-2000:]}")
    return RelayProcess(proc, int(match.group(1)), int(match.group(2)))


@pytest.fixture
def relay_cli() -> Iterator[Callable[..., RelayProcess]]:
    started: list[RelayProcess] = []

    def start(*args: str, prefix: tuple[str, ...] = ()) -> RelayProcess:
        p = start_relay(*args, prefix=prefix)
        started.append(p)
        return p

    yield start
    for p in started:
        if p.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.proc.pid, signal.SIGKILL)
        p.proc.wait(10)
        for stream in (p.proc.stdout, p.proc.stderr):
            if stream is not None:
                stream.close()


def run_relay(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*RELAY_CMD, *args], capture_output=True, text=True, timeout=20, check=False
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--listen", "127.0.0.1", "--upstream", "127.0.0.1:1"], "invalid address '127.0.0.1'"),
        (["--listen", "127.0.0.1:0", "--upstream", "x:0"], "invalid address 'x:0'"),
        (["--listen", "127.0.0.1:0"], "the following arguments are required: --upstream"),
        (["--listen", "127.0.0.1:0", "--upstream", "h:1", "--pipe-size", "1k"], "4096"),
        (["--listen", "127.0.0.1:0", "--upstream", "h:1", "--idle-timeout", "-1"], "seconds"),
        (["--listen", "127.0.0.1:0", "--upstream", "no-such-host.invalid:80"], "resolve"),
    ],
)
def test_cli_bad_arguments_one_line_exit_2(args: list[str], message: str) -> None:
    done = run_relay(*args)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("wirespeed relay: error: ")
    assert message in lines[0]


def test_cli_port_in_use_one_line_exit_2() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = run_relay("--listen", f"127.0.0.1:{port}", "--upstream", "127.0.0.1:1")
    assert done.returncode == 2
    assert done.stderr.strip() == f"wirespeed relay: error: 127.0.0.1:{port} is already in use"


def _cli_has_relay() -> bool:
    done = subprocess.run(
        [sys.executable, "-m", "wirespeed", "relay", "--help"],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    return done.returncode == 0


def test_cli_subcommand() -> None:
    if not _cli_has_relay():
        pytest.skip("cli.py does not wire the relay subcommand yet")
    done = subprocess.run(
        [sys.executable, "-m", "wirespeed", "relay", "--listen", "1.2.3.4", "--upstream", "x:1"],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("wirespeed relay: error: argument --listen: invalid address")


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])  # the relay's loop (--loop)
async def test_cli_sigterm_lets_the_transfer_finish_then_exits_0(
    upstream: Any, relay_cli: Any, loop: str
) -> None:
    body = pattern(8 * MiB, 21)

    async def paced(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(1)
        for i in range(0, len(body), MiB):  # ~0.4 s in all
            writer.write(body[i : i + MiB])
            await writer.drain()
            await asyncio.sleep(0.05)

    up = await upstream(paced)
    p = relay_cli("--upstream", f"127.0.0.1:{up.port}", "--loop", loop, "--graceful-timeout", "5")
    reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
    writer.write(b"go")
    first = await asyncio.wait_for(reader.readexactly(MiB), 5)
    os.kill(p.pid, signal.SIGTERM)
    rest = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert sha(first + rest) == sha(body)
    loop_ = asyncio.get_running_loop()
    assert await loop_.run_in_executor(None, p.proc.wait, 10) == 0
    assert p.proc.stderr is not None
    err = p.proc.stderr.read().decode()
    assert "Traceback" not in err
    assert f"{8 * MiB} bytes down" in err  # the connection's closing log line


# -- strace: the bytes move by splice ---------------------------------------------------------

STRACE = shutil.which("strace")
needs_strace = pytest.mark.skipif(STRACE is None, reason="strace is not installed")
_CALL = re.compile(r"^(\d+)\s+(\d+\.\d+)\s+(\w+)\((.*)\)\s+=\s+(-?\d+)")
_RESUMED = re.compile(r"^(\d+)\s+(\d+\.\d+)\s+<\.\.\. (\w+) resumed>(.*)\)\s+=\s+(-?\d+)")


def traced_calls(trace: Path, since: float) -> list[tuple[str, int]]:
    out = []
    for line in trace.read_text(errors="replace").splitlines():
        match = _CALL.match(line) or _RESUMED.match(line)
        if match and float(match.group(2)) >= since:
            out.append((match.group(3), int(match.group(5))))
    return out


@needs_strace
@pytest.mark.parametrize("splice", [True, False], ids=["splice", "no-splice"])
async def test_strace_shows_the_bytes_moving_by_splice(
    upstream: Any, relay_cli: Any, tmp_path: Path, splice: bool
) -> None:
    body = pattern(16 * MiB, 23)

    async def send_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(2)
        writer.write(body)
        await writer.drain()

    up = await upstream(send_body)
    trace = tmp_path / "trace.txt"
    prefix: tuple[str, ...] = (STRACE or "strace", "-f", "-ttt", "-o", str(trace))
    prefix += ("-e", "trace=splice,read,recvfrom,write,sendto")
    args = ["--upstream", f"127.0.0.1:{up.port}"] + ([] if splice else ["--no-splice"])
    p = relay_cli(*args, prefix=prefix)
    since = time.time()
    reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
    writer.write(b"go")
    got = await asyncio.wait_for(reader.read(), 20)
    writer.close()
    assert sha(got) == sha(body)
    os.kill(p.pid, signal.SIGTERM)
    assert await asyncio.get_running_loop().run_in_executor(None, p.proc.wait, 10) == 0
    calls = traced_calls(trace, since)
    spliced = sum(ret for name, ret in calls if name == "splice" and ret > 0)
    copied = sum(ret for name, ret in calls if name != "splice" and ret > 0)
    if splice:
        # In to the pipe and out again: every byte twice, never through read/write (what is
        # left is the closing log line and the event loop's wake-up bytes).
        assert spliced == 2 * (len(body) + 2), spliced
        assert copied < 4096, [c for c in calls if c[0] != "splice" and c[1] > 0][:5]
    else:
        assert spliced == 0
        assert copied >= 2 * (len(body) + 2)
