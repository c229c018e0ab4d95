"""The connection pool against real servers: reuse, staleness, limits, FIFO waiters, cleanup.

Every test runs on uvloop and on the plain asyncio loop. The peer is the in-process wirespeed
server (``serve``), whose keep-alive timeout closes idle connections for real, or a raw asyncio
server for behaviour wirespeed would never show (bytes sent out of turn).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import sys
from collections.abc import AsyncIterator

import pytest

from conftest import StartServer, make_app
from wirespeed.io.tuning import SocketOptions
from wirespeed.server.runner import Server
from wirespeed.upstream import (
    Client,
    ConnectError,
    Connection,
    Origin,
    Pool,
    PoolClosed,
    UpstreamTimeout,
    join_all,
)

pytestmark = pytest.mark.asyncio(loop_factories=["uvloop", "asyncio"])


def origin_of(server: Server) -> Origin:
    return Origin("http", "127.0.0.1", server.port)


async def exchange(conn: Connection) -> bytes:
    """One GET on a raw pooled connection, blocking-style (the tests' own tiny client)."""
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(conn.sock, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    data = b""
    while not data.endswith(b"hello"):
        piece = await loop.sock_recv(conn.sock, 4096)
        assert piece, "server closed"
        data += piece
    conn.reusable = True
    return data


@pytest.fixture
async def pool() -> AsyncIterator[Pool]:
    p = Pool(max_size=4)
    yield p
    await p.aclose()


async def test_sequential_requests_open_one_connection(serve: StartServer) -> None:
    server = await serve(make_app())
    async with Pool(max_size=16) as pool, Client(pool) as client:
        for _ in range(500):
            response = await client.get(f"{server.url}/")
            assert response.body == b"hello"
        stats = client.pool.stats
    assert stats.opened == 1
    assert stats.reused == 499
    assert stats.discarded == 0
    assert stats.peak_open == 1


async def test_stale_connection_closed_by_server_is_not_reused(serve: StartServer) -> None:
    # The server closes idle keep-alive connections after 0.2 s: the pooled one goes stale.
    server = await serve(make_app(), keepalive_timeout=0.2)
    async with Pool() as pool:
        async with pool.connection(origin_of(server)) as first:
            await exchange(first)
        assert pool.stats.idle == 1
        for _ in range(100):  # until the server's close has reached us
            await asyncio.sleep(0.05)
            if not first.is_alive():
                break
        assert not first.is_alive()
        async with pool.connection(origin_of(server)) as second:
            assert second is not first
            assert await exchange(second)
        stats = pool.stats
    assert first.closed
    assert (stats.opened, stats.reused, stats.discarded) == (2, 0, 1)


async def test_connection_with_unsolicited_bytes_is_discarded() -> None:
    # A server that answers, then sends more bytes than it was asked for (an unsolicited 408).
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
            await asyncio.sleep(0.05)
            writer.write(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n")
            await reader.read()  # hold the connection open
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with Pool() as pool:
            origin = Origin("http", "127.0.0.1", port)
            async with pool.connection(origin) as first:
                await exchange(first)
            await asyncio.sleep(0.2)
            async with pool.connection(origin) as second:
                assert second is not first
                second.reusable = True
            assert first.closed
            assert pool.stats.discarded == 1
    finally:
        server.close()
        await server.wait_closed()


async def test_connection_reset_while_idle_is_discarded() -> None:
    async def reset_after_answer(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
            await writer.drain()
            sock = writer.get_extra_info("socket")
            # SO_LINGER with a zero timeout: close() sends RST instead of FIN.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()

    server = await asyncio.start_server(reset_after_answer, "127.0.0.1", 0)
    origin = Origin("http", "127.0.0.1", server.sockets[0].getsockname()[1])
    try:
        async with Pool() as pool:
            async with pool.connection(origin) as first:
                await exchange(first)
            await asyncio.sleep(0.1)
            assert not first.is_alive()  # recv(MSG_PEEK) raises ECONNRESET
            async with pool.connection(origin) as second:
                assert second is not first
            assert first.closed
    finally:
        server.close()
        await server.wait_closed()


async def test_release_checks_ownership(serve: StartServer, pool: Pool) -> None:
    origin = origin_of(await serve(make_app()))
    conn = await pool.acquire(origin)
    pool.release(conn)
    with pytest.raises(ValueError, match="not lent out"):
        pool.release(conn)  # twice: the second would corrupt the slot count


async def test_lifo_reuse(serve: StartServer, pool: Pool) -> None:
    origin = origin_of(await serve(make_app()))
    a = await pool.acquire(origin)
    b = await pool.acquire(origin)
    for conn in (a, b):
        await exchange(conn)
    pool.release(a)
    pool.release(b)  # released last: the warmest
    assert await pool.acquire(origin) is b
    assert await pool.acquire(origin) is a


async def test_waiters_are_served_in_fifo_order(serve: StartServer) -> None:
    origin = origin_of(await serve(make_app()))
    async with Pool(max_size=1) as pool:
        holder = await pool.acquire(origin)
        order: list[int] = []

        async def waiter(i: int) -> None:
            async with pool.connection(origin) as conn:
                order.append(i)
                await asyncio.sleep(0)
                conn.reusable = True

        tasks = []
        for i in range(6):
            tasks.append(asyncio.create_task(waiter(i)))
            await asyncio.sleep(0)  # queued in this order
        assert pool.stats.waiting == 6
        await exchange(holder)
        pool.release(holder)
        await asyncio.gather(*tasks)
        assert order == list(range(6))
        stats = pool.stats
    assert (stats.opened, stats.reused, stats.waiting, stats.peak_open) == (1, 6, 0, 1)


async def test_waiter_times_out_cleanly(serve: StartServer) -> None:
    origin = origin_of(await serve(make_app()))
    async with Pool(max_size=1) as pool:
        holder = await pool.acquire(origin)
        with pytest.raises(UpstreamTimeout) as info:
            await pool.acquire(origin, timeout=0.05)
        assert info.value.phase == "pool"
        assert isinstance(info.value, TimeoutError)
        assert pool.stats.waiting == 0
        await exchange(holder)
        pool.release(holder)
        # The timed-out waiter left no trace: the slot and the connection are reusable.
        again = await pool.acquire(origin, timeout=1)
        assert again is holder
        pool.release(again, reuse=False)


async def test_cancelled_waiter_does_not_leak_a_slot(serve: StartServer) -> None:
    origin = origin_of(await serve(make_app()))
    async with Pool(max_size=1) as pool:
        holder = await pool.acquire(origin)
        await exchange(holder)
        waiter = asyncio.create_task(pool.acquire(origin))
        await asyncio.sleep(0)
        assert pool.stats.waiting == 1
        # Granted and cancelled in the same loop turn: the grant must pass on, not vanish.
        pool.release(holder)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        stats = pool.stats
        assert (stats.waiting, stats.in_use, stats.idle) == (0, 0, 1)
        assert await pool.acquire(origin, timeout=1) is holder


async def test_cancelled_waiter_with_a_slot_grant(serve: StartServer) -> None:
    origin = origin_of(await serve(make_app()))
    async with Pool(max_size=1) as pool:
        holder = await pool.acquire(origin)
        waiter = asyncio.create_task(pool.acquire(origin))
        await asyncio.sleep(0)
        pool.release(holder, reuse=False)  # closed: the waiter is granted a slot to connect
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert (pool.stats.in_use, pool.stats.idle) == (0, 0)
        conn = await pool.acquire(origin, timeout=1)
        assert conn is not holder
        pool.release(conn)


async def test_64_callers_never_exceed_16_sockets(serve: StartServer) -> None:
    server = await serve(make_app())
    connections = server.state.connections
    most = 0

    async def watch(stop: asyncio.Event) -> None:
        nonlocal most
        while not stop.is_set():
            most = max(most, len(connections))
            await asyncio.sleep(0)

    stop = asyncio.Event()
    watcher = asyncio.create_task(watch(stop))
    async with Pool(max_size=16) as pool, Client(pool) as client:

        async def caller() -> None:
            for _ in range(10):
                assert (await client.get(f"{server.url}/")).status == 200

        await join_all((caller() for _ in range(64)), limit=64)
        stats = client.pool.stats
    stop.set()
    await watcher
    assert most <= 16  # counted by the server, independently of the pool
    assert stats.opened <= 16
    assert stats.peak_open <= 16
    assert stats.opened + stats.reused == 640


async def test_connection_released_on_error_is_closed(serve: StartServer, pool: Pool) -> None:
    origin = origin_of(await serve(make_app()))
    with pytest.raises(RuntimeError):
        async with pool.connection(origin) as conn:
            await exchange(conn)  # marked reusable, but the block fails
            raise RuntimeError("boom")
    assert conn.closed
    assert (pool.stats.discarded, pool.stats.idle, pool.stats.in_use) == (1, 0, 0)


async def test_unmarked_connection_is_not_reused(serve: StartServer, pool: Pool) -> None:
    origin = origin_of(await serve(make_app()))
    async with pool.connection(origin) as conn:
        pass  # nothing marked it reusable: the stream state is unknown
    assert conn.closed
    async with pool.connection(origin) as conn2:
        assert conn2 is not conn


async def test_idle_timeout_and_max_lifetime(serve: StartServer) -> None:
    origin = origin_of(await serve(make_app()))
    async with Pool(idle_timeout=0.1) as pool:
        async with pool.connection(origin) as conn:
            await exchange(conn)
        await asyncio.sleep(0.2)  # the reaper closes it
        assert conn.closed
        assert (pool.stats.idle, pool.stats.discarded) == (0, 1)
    async with Pool(max_lifetime=0.1) as pool:
        async with pool.connection(origin) as conn:
            await exchange(conn)
        await asyncio.sleep(0.15)
        async with pool.connection(origin) as conn2:
            assert conn2 is not conn
        assert conn.closed


async def test_connect_error_frees_the_slot() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound but not listening: refused
        async with Pool(max_size=1) as pool:
            for _ in range(2):
                with pytest.raises(ConnectError, match="cannot connect"):
                    await pool.acquire(Origin("http", "127.0.0.1", port))
            assert (pool.stats.in_use, pool.stats.opened) == (0, 0)
            # Nothing is kept for an origin with no sockets, slots or waiters left (a client of
            # many hosts must not grow one empty pool per host); private, but not observable
            # otherwise.
            assert not pool._origins


async def test_aclose_fails_waiters(serve: StartServer) -> None:
    origin = origin_of(await serve(make_app()))
    pool = Pool(max_size=1)
    holder = await pool.acquire(origin)
    waiter = asyncio.create_task(pool.acquire(origin))
    await asyncio.sleep(0)
    await pool.aclose()
    with pytest.raises(PoolClosed):
        await waiter
    pool.release(holder)
    assert holder.closed
    with pytest.raises(PoolClosed):
        await pool.acquire(origin)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="TCP_FASTOPEN_CONNECT is Linux")
async def test_socket_options_and_fast_open(serve: StartServer) -> None:
    origin = origin_of(await serve(make_app()))
    options = SocketOptions(fastopen=16, rcvbuf=65536, keepidle=30)
    async with Pool(socket_options=options) as pool, pool.connection(origin) as conn:
        sock = conn.sock
        assert sock.getsockopt(socket.IPPROTO_TCP, 30) == 1  # TCP_FASTOPEN_CONNECT
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= 65536
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 30
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        assert await exchange(conn)  # the request travels (in the SYN when a cookie exists)


async def test_pool_rejects_bad_settings() -> None:
    for kwargs in ({"max_size": 0}, {"idle_timeout": 0}, {"max_lifetime": -1}):
        with pytest.raises(ValueError):
            Pool(**kwargs)  # type: ignore[arg-type]
