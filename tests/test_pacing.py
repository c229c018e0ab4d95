"""Pacing (nginx ``limit_rate`` / ``limit_rate_after``): the token bucket on a fake clock, then
the real thing through the server and through ``wirespeed serve --limit-rate``.

The fake-clock tests check the 5%-over-10-s accuracy the spec asks for exactly (simulated time
is free); the wall-clock tests use 1-2 s windows with a looser upper bound, since a busy machine
can only make a transfer slower, never faster than the limit.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from conftest import RawClient
from static_fixtures import Media, StartStatic, StaticProcess, pattern, request
from wirespeed.io.pacing import MIN_CHUNK, PACE_INTERVAL, RateLimiter

pytest_plugins = ["static_fixtures"]

both_loops = pytest.mark.asyncio(loop_factories=["uvloop", "asyncio"])

KiB = 1024
MiB = 1024 * 1024


class FakeTime:
    """A clock that only moves when the limiter sleeps (or the test says time passed)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        assert delay > 0, f"sleep({delay}): a non-positive sleep is a busy loop"
        self.sleeps.append(delay)
        self.now += delay


def limiter(rate: float, after: int = 0) -> tuple[RateLimiter, FakeTime]:
    t = FakeTime()
    return RateLimiter(rate, after, clock=t.clock, sleep=t.sleep), t


async def transfer(
    lim: RateLimiter,
    t: FakeTime,
    total: int,
    *,
    send: Callable[[int], int] = lambda n: n,
    on_progress: Callable[[int], Awaitable[None]] | None = None,
) -> list[tuple[float, int]]:
    """Drive ``lim`` like FileSender does; returns (time, bytes sent so far) after each chunk."""
    sent = 0
    log = []
    while sent < total:
        n = send(lim.chunk_size(min(2 * MiB, total - sent)))
        assert n > 0
        sent += n
        await lim.pace(n)
        log.append((t.now, sent))
        if on_progress is not None:
            await on_progress(sent)
    return log


# -- RateLimiter on a fake clock -------------------------------------------------------------------


@pytest.mark.parametrize("rate", [0, -1, -0.5])
def test_rate_must_be_positive(rate: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        RateLimiter(rate)


@pytest.mark.parametrize(
    ("rate", "chunk"),
    [
        (1_000_000, int(1_000_000 * PACE_INTERVAL)),  # a pacing interval's worth
        (50_000_000, int(50_000_000 * PACE_INTERVAL)),
        (10_000, MIN_CHUNK),  # never below the smallest worthwhile chunk
        (1, MIN_CHUNK),
    ],
)
def test_chunk_size_is_one_interval_of_the_rate(rate: int, chunk: int) -> None:
    lim, _ = limiter(rate)
    assert lim.chunk_size(1 << 40) == chunk
    assert lim.chunk_size(100) == 100  # never more than the caller has


async def test_free_allowance_goes_at_full_speed_then_pacing_starts() -> None:
    lim, t = limiter(1_000_000, after=300_000)
    assert lim.chunk_size(2 * MiB) == 300_000  # the free part in one step, not paced chunks
    await lim.pace(200_000)
    assert lim.chunk_size(2 * MiB) == 100_000  # the rest of the allowance
    await lim.pace(100_000)
    assert t.sleeps == [], "the free allowance must not sleep"
    assert lim.chunk_size(2 * MiB) == 100_000  # now paced chunks
    await lim.pace(100_000)
    assert t.sleeps == [pytest.approx(0.1)]


@pytest.mark.parametrize(
    ("rate", "after", "total"),
    [
        (1_000_000, 0, 10_000_000),  # the spec's case: 10 s
        (1_000_000, 4_000_000, 14_000_000),  # nginx-style: 4 MB fast, then 10 s paced
        (250_000, 0, 2_500_000),
        (5_000_000, 1_000_000, 51_000_000),
        (30_000, 0, 300_000),  # slow rate: MIN_CHUNK steps
    ],
)
async def test_rate_within_5_percent_over_10_seconds(rate: int, after: int, total: int) -> None:
    lim, t = limiter(rate, after)
    start = t.now
    log = await transfer(lim, t, total)
    elapsed = t.now - start
    expected = (total - after) / rate
    assert expected == pytest.approx(10.0)
    assert elapsed == pytest.approx(expected, rel=0.05)
    # Never ahead of the schedule by more than one chunk (the bucket's depth).
    chunk = lim.chunk_size(1 << 40)
    for now, sent in log:
        paced = max(0, sent - after)
        assert paced <= (now - start) * rate + chunk + 1, (now - start, sent)


async def test_short_sends_keep_the_average_rate() -> None:
    # sendfile may move less than asked (a full socket buffer): the schedule counts real bytes.
    rng = random.Random(3)
    lim, t = limiter(2_000_000)
    start = t.now
    await transfer(lim, t, 20_000_000, send=lambda n: max(1, rng.randint(n // 10, n)))
    assert t.now - start == pytest.approx(10.0, rel=0.05)


async def test_no_busy_loop_about_ten_wakeups_per_second() -> None:
    lim, t = limiter(1_000_000)
    await transfer(lim, t, 10_000_000)
    # Chunks of PACE_INTERVAL: ~10 sleeps per second, each a real wait, none of them tiny.
    assert 90 <= len(t.sleeps) <= 110
    assert min(t.sleeps) > PACE_INTERVAL / 2


async def test_stalled_client_gets_no_catch_up_burst() -> None:
    rate = 1_000_000
    lim, t = limiter(rate)
    chunk = lim.chunk_size(1 << 40)
    sent_at: list[tuple[float, int]] = []
    stall_end = 0.0

    async def stall_once(sent: int) -> None:
        nonlocal stall_end
        sent_at.append((t.now, sent))
        if sent == 2_000_000:
            t.now += 5.0  # the client stopped reading for 5 s (time passed outside the limiter)
            stall_end = t.now

    await transfer(lim, t, 6_000_000, on_progress=stall_once)
    # In the half second after the stall: half a second's worth (plus the bucket's one chunk),
    # not the 5 s of unused budget at once.
    early = [sent for now, sent in sent_at if now <= stall_end + 0.5]
    assert max(early) - 2_000_000 <= rate * 0.5 + chunk
    # And pacing carries on at the rate: 4 MB in ~4 s after the stall.
    t_end, s_end = sent_at[-1]
    assert (s_end - 2_000_000) / (t_end - stall_end) == pytest.approx(rate, rel=0.05)


# -- through the server ----------------------------------------------------------------------------


async def _timed_download(
    port: int, path: str, *, marks: tuple[int, ...] = ()
) -> tuple[bytes, float, dict[int, float]]:
    """Body, seconds from request to last byte, and when each byte count in ``marks`` arrived."""
    client = await RawClient.connect(port)
    try:
        start = time.monotonic()
        await client.send(request(path))
        head = await client.reader.readuntil(b"\r\n\r\n")
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        body = bytearray()
        reached: dict[int, float] = {}
        while len(body) < length:
            chunk = await asyncio.wait_for(client.reader.read(1 << 20), 10)
            assert chunk, "closed early"
            body += chunk
            for mark in marks:
                if mark not in reached and len(body) >= mark:
                    reached[mark] = time.monotonic() - start
        return bytes(body), time.monotonic() - start, reached
    finally:
        await client.close()


def _fastest(limited: int, rate: int) -> float:
    """The earliest the last paced byte may arrive: the bucket holds one chunk, sent at once."""
    chunk = RateLimiter(rate).chunk_size(1 << 40)
    return (limited - chunk) / rate


@both_loops
async def test_limit_rate_through_the_server(static_server: StartStatic, media: Media) -> None:
    rate, after, limited = 1 * MiB, 512 * KiB, 640 * KiB
    data = pattern(after + limited, seed=21)
    media.add("clip.mp4", data)
    server = await static_server(limit_rate=rate, limit_rate_after=after)
    body, elapsed, reached = await _timed_download(server.port, "/clip.mp4", marks=(after,))
    assert body == data
    assert reached[after] < 0.3, "the limit_rate_after part must go at full speed"
    # Never faster than the limit (one chunk of burst); slower only by scheduling noise.
    assert elapsed >= _fastest(limited, rate), elapsed
    assert elapsed <= (limited / rate) * 1.3 + 0.1, elapsed


@pytest.mark.asyncio(loop_factories=["uvloop"])
async def test_limit_is_per_connection(static_server: StartStatic, media: Media) -> None:
    # Two connections each get the full rate (nginx: the limit is per connection), so two
    # paced downloads take as long as one, not twice as long.
    rate, size = 1 * MiB, 640 * KiB
    data = pattern(size, seed=22)
    media.add("seg.m4s", data)
    server = await static_server(limit_rate=rate)
    start = time.monotonic()
    results = await asyncio.gather(
        _timed_download(server.port, "/seg.m4s"), _timed_download(server.port, "/seg.m4s")
    )
    elapsed = time.monotonic() - start
    assert [r[0] for r in results] == [data, data]
    assert _fastest(size, rate) <= elapsed <= (size / rate) * 1.3 + 0.15, elapsed


@pytest.mark.asyncio(loop_factories=["uvloop"])
async def test_ranges_are_paced_too(static_server: StartStatic, media: Media) -> None:
    rate, limited = 2 * MiB, MiB + 1000
    data = pattern(2 * MiB, seed=23)
    media.add("movie.mp4", data)
    server = await static_server(limit_rate=rate)
    client = await RawClient.connect(server.port)
    try:
        start = time.monotonic()
        await client.send(request("/movie.mp4", headers={"Range": f"bytes=-{limited}"}))
        resp = await client.response(timeout=10)
        elapsed = time.monotonic() - start
    finally:
        await client.close()
    assert resp.status == 206 and resp.body == data[-limited:]
    assert _fastest(limited, rate) <= elapsed <= (limited / rate) * 1.3 + 0.1, elapsed


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of proc(5); after the ")" they are at 11 and 12.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.slow
def test_cli_limit_rate_with_curl_and_no_busy_loop(serve_static_cli, media: Media) -> None:
    rate, after, limited = 1 * MiB, 256 * KiB, 2 * MiB
    media.add("video.mp4", pattern(after + limited, seed=24))
    p: StaticProcess = serve_static_cli(
        media.root, "--limit-rate", "1m", "--limit-rate-after", "256k"
    )
    cpu_before = _cpu_seconds(p.pid)
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "-o",
            os.devnull,
            "-w",
            "%{size_download} %{time_total}",
            f"{p.url}/video.mp4",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.split()
    cpu = _cpu_seconds(p.pid) - cpu_before
    size, elapsed = int(out[0]), float(out[1])
    assert size == after + limited
    assert elapsed >= _fastest(limited, rate), elapsed
    assert elapsed <= (limited / rate) * 1.2 + 0.2, elapsed
    # Sleeping between chunks, not spinning: the server used a small part of one CPU.
    assert cpu < 0.25 * elapsed, f"{cpu:.2f}s of CPU for a {elapsed:.2f}s paced transfer"
