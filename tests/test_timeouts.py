"""Timeouts, write backpressure and graceful stop of the in-process server.

Timeouts are set to fractions of a second; every bound below allows for the ticker that enforces
deadlines (a quarter of the shortest timeout) and for a busy 2-core machine.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from conftest import RawClient, StartServer, get, make_app
from wirespeed.io.flow import HIGH_WATER, LOW_WATER
from wirespeed.io.tuning import SocketOptions, listen_queue
from wirespeed.server.app import App, Request, StreamResponse
from wirespeed.server.config import ServerConfig

Connect = Callable[..., Awaitable[RawClient]]
SLACK = 0.6  # ticker granularity plus scheduling noise


def test_defaults() -> None:
    config = ServerConfig()
    assert config.header_timeout == 10.0
    assert config.keepalive_timeout == 5.0
    assert config.graceful_timeout == 30.0
    assert config.workers == 1
    assert config.body_timeout > 0 and config.send_timeout > 0
    assert config.write_high_water == HIGH_WATER > LOW_WATER == config.write_low_water


async def test_listen_backlog_is_at_least_511(serve: StartServer) -> None:
    server = await serve(make_app())
    assert server.sock is not None
    queue = listen_queue(server.sock)
    assert queue is not None
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    assert queue[1] >= min(511, somaxconn)
    assert SocketOptions().backlog >= 511


# -- header timeout (slowloris) ------------------------------------------------------------------


async def test_incomplete_head_gets_408(serve: StartServer, connect: Connect) -> None:
    server = await serve(make_app(), header_timeout=0.5)
    client = await connect(server.port)
    start = time.monotonic()
    await client.send(b"GET / HTTP/1.1\r\nHo")
    resp = await client.response(timeout=3.0)
    elapsed = time.monotonic() - start
    assert resp.status == 408
    assert resp.closes
    assert 0.4 <= elapsed <= 0.5 + SLACK
    assert await client.read_to_eof(2.0) == b""


async def test_slowloris_dribble_does_not_extend_the_deadline(
    serve: StartServer, connect: Connect
) -> None:
    # The head deadline runs from its first byte; a byte every 100 ms must not reset it.
    server = await serve(make_app(), header_timeout=0.5)
    client = await connect(server.port)
    start = time.monotonic()
    await client.send(b"GET / HTTP/1.1\r\n")

    async def dribble() -> None:
        for _ in range(40):
            await asyncio.sleep(0.1)
            await client.send(b"X")

    task = asyncio.create_task(dribble())
    try:
        resp = await client.response(timeout=3.0)
    finally:
        task.cancel()
    assert resp.status == 408
    assert time.monotonic() - start <= 0.5 + SLACK


async def test_silent_new_connection_is_closed(serve: StartServer, connect: Connect) -> None:
    server = await serve(make_app(), header_timeout=0.4)
    client = await connect(server.port)
    elapsed, data = await client.wait_closed_by_server(3.0)
    assert elapsed <= 0.4 + SLACK
    assert data == b"" or data.startswith(b"HTTP/1.1 408 ")


async def test_slow_handler_is_not_a_header_timeout(serve: StartServer, connect: Connect) -> None:
    server = await serve(make_app(), header_timeout=0.3, keepalive_timeout=0.3)
    client = await connect(server.port)
    await client.send(get("/sleep?t=0.8"))
    resp = await client.response()
    assert resp.status == 200
    assert resp.body == b"slept"


# -- keep-alive idle timeout ---------------------------------------------------------------------


async def test_idle_keepalive_connection_closes(serve: StartServer, connect: Connect) -> None:
    server = await serve(make_app(), keepalive_timeout=0.5)
    client = await connect(server.port)
    await client.send(get("/"))
    await client.response()
    await asyncio.sleep(0.25)
    await client.send(get("/n/2"))  # still open before the timeout: the clock restarts
    assert (await client.response()).body == b"2"
    elapsed, data = await client.wait_closed_by_server(3.0)
    assert data == b""  # closed quietly: no 408 for an idle connection
    assert 0.35 <= elapsed <= 0.5 + SLACK


async def test_slow_stream_is_not_an_idle_connection(serve: StartServer, connect: Connect) -> None:
    app = App()

    @app.get("/")
    def slow_stream(request: Request) -> StreamResponse:
        async def gen() -> AsyncIterator[bytes]:
            for i in range(5):
                await asyncio.sleep(0.15)
                yield b"%d" % i

        return StreamResponse(gen())

    server = await serve(app, keepalive_timeout=0.3, header_timeout=0.3)
    client = await connect(server.port)
    await client.send(get("/"))
    resp = await client.response()
    assert resp.body == b"01234"


# -- body timeout --------------------------------------------------------------------------------


async def test_stalled_body_gets_408(serve: StartServer, connect: Connect) -> None:
    server = await serve(make_app(), body_timeout=0.5)
    client = await connect(server.port)
    await client.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc")
    start = time.monotonic()
    resp = await client.response("POST", timeout=3.0)
    assert resp.status == 408
    assert resp.closes
    assert 0.4 <= time.monotonic() - start <= 0.5 + SLACK


async def test_slow_but_steady_body_is_accepted(serve: StartServer, connect: Connect) -> None:
    # The body timeout bounds each pause, not the whole body.
    server = await serve(make_app(), body_timeout=0.4)
    client = await connect(server.port)
    await client.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\n")
    for byte in b"abcde":  # 0.75 s in all, each pause half the timeout
        await asyncio.sleep(0.15)
        await client.send(bytes([byte]))
    resp = await client.response("POST")
    assert resp.status == 200
    assert resp.body == b"abcde"


# -- send timeout and backpressure ---------------------------------------------------------------

CHUNK = 16 * 1024


class Endless:
    """An endless stream of CHUNK-sized pieces that counts what it produced."""

    def __init__(self) -> None:
        self.produced = 0
        self.closed = False
        self.max_buffered = 0
        self.conn: object = None

    def response(self, request: Request) -> StreamResponse:
        return StreamResponse(self.gen(request))

    async def gen(self, request: Request) -> AsyncIterator[bytes]:
        try:
            while True:
                self.produced += 1
                yield b"z" * CHUNK
                # Yield to the loop: a stream that never awaits freezes an asyncio-loop server
                # when its client vanishes (see test_cli's test_vanishing_client_mid_stream...).
                await asyncio.sleep(0)
        finally:
            self.closed = True


def write_buffer_size(server_connections: set[object]) -> int:
    sizes = [c.transport.get_write_buffer_size() for c in server_connections]  # type: ignore[attr-defined]
    return max(sizes, default=0)


async def test_client_that_stops_reading_is_dropped(serve: StartServer, connect: Connect) -> None:
    endless = Endless()
    app = App()
    app.add_route("/", endless.response)
    server = await serve(
        app,
        socket_options=SocketOptions(sndbuf=64 * 1024),
        send_timeout=0.5,
        write_high_water=64 * 1024,
        write_low_water=16 * 1024,
    )
    client = await connect(server.port, rcvbuf=64 * 1024)
    start = time.monotonic()
    await client.send(get("/"))
    client.writer.transport.pause_reading()  # really read nothing (a StreamReader reads ahead)
    while server.state.connections and time.monotonic() - start < 5.0:
        await asyncio.sleep(0.05)
    assert not server.state.connections, "a client that reads nothing was never dropped"
    assert time.monotonic() - start <= 0.5 + SLACK + 0.3
    await asyncio.sleep(0.05)
    assert endless.closed, "the response stream was not closed: its buffers stay alive"
    produced = endless.produced
    client.writer.transport.resume_reading()
    received = await client.read_to_eof(3.0)  # what the kernel had buffered, then the end
    assert len(received) < (produced + 1) * CHUNK + 4096
    assert endless.produced == produced


async def test_slow_reader_bounds_what_the_server_generates(
    serve: StartServer, connect: Connect
) -> None:
    endless = Endless()
    app = App()
    app.add_route("/", endless.response)
    high = 64 * 1024
    server = await serve(
        app,
        socket_options=SocketOptions(sndbuf=64 * 1024),
        send_timeout=5.0,
        write_high_water=high,
        write_low_water=16 * 1024,
    )
    client = await connect(server.port, rcvbuf=64 * 1024)
    await client.send(get("/"))
    client.writer.transport.pause_reading()  # really read nothing (a StreamReader reads ahead)
    max_buffered = 0
    for _ in range(16):  # 0.8 s of not reading
        await asyncio.sleep(0.05)
        max_buffered = max(max_buffered, write_buffer_size(server.state.connections))
    stalled = endless.produced
    sock = client.writer.transport.get_extra_info("socket")
    rcvbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    [conn] = server.state.connections
    sndbuf = conn.transport.get_extra_info("socket").getsockopt(  # type: ignore[attr-defined]
        socket.SOL_SOCKET, socket.SO_SNDBUF
    )
    # The write buffer never holds more than the high-water mark plus the piece that crossed it.
    assert max_buffered <= high + CHUNK + 64
    # Generated = high-water mark + what the kernel buffers on both sides + one piece in hand.
    bound = (high + sndbuf + rcvbuf) // CHUNK + 3
    assert stalled <= bound, f"{stalled} pieces produced for a client that reads nothing"
    await asyncio.sleep(0.2)
    assert endless.produced == stalled  # and it really stopped
    # Reading again resumes the stream.
    client.writer.transport.resume_reading()
    got = 0
    async with asyncio.timeout(5.0):
        while got < 2 * 1024 * 1024:
            data = await client.reader.read(256 * 1024)
            assert data, "the server ended the stream"
            got += len(data)
    assert endless.produced > stalled + 64


# -- graceful stop -------------------------------------------------------------------------------


async def test_stop_lets_in_flight_responses_finish(serve: StartServer, connect: Connect) -> None:
    server = await serve(make_app())
    port = server.port
    busy = await connect(port)
    idle = await connect(port)
    await idle.send(get("/"))
    await idle.response()
    await busy.send(get("/sleep?t=0.5"))
    await asyncio.sleep(0.1)
    stop = asyncio.create_task(server.stop(3.0))
    # The idle keep-alive connection closes at once.
    elapsed, data = await idle.wait_closed_by_server(1.0)
    assert data == b""
    assert elapsed < 0.3
    # No new connections.
    with pytest.raises(ConnectionRefusedError):
        await RawClient.connect(port)
    # The slow response completes, announcing the close.
    resp = await busy.response()
    assert resp.body == b"slept"
    assert resp.closes
    assert await busy.read_to_eof(1.0) == b""
    await asyncio.wait_for(stop, 2.0)


async def test_stop_lets_a_stream_finish(serve: StartServer, connect: Connect) -> None:
    app = App()

    @app.get("/")
    def slow_stream(request: Request) -> StreamResponse:
        async def gen() -> AsyncIterator[bytes]:
            for i in range(5):
                await asyncio.sleep(0.08)
                yield b"%d" % i

        return StreamResponse(gen())

    server = await serve(app)
    client = await connect(server.port)
    await client.send(get("/"))
    await asyncio.sleep(0.1)
    stop = asyncio.create_task(server.stop(3.0))
    resp = await client.response()
    assert resp.body == b"01234"
    await asyncio.wait_for(stop, 2.0)


async def test_stop_cuts_what_outlives_the_grace_period(
    serve: StartServer, connect: Connect
) -> None:
    server = await serve(make_app())
    client = await connect(server.port)
    await client.send(get("/sleep?t=30"))
    await asyncio.sleep(0.1)
    start = time.monotonic()
    await server.stop(0.3)
    assert time.monotonic() - start < 0.3 + SLACK
    assert await client.read_to_eof(2.0) == b""
