"""The pooled HTTP/1.1 client against the wirespeed server and against misbehaving raw peers.

Runs on uvloop and asyncio. The raw peers (:func:`raw_server`) write exact bytes, including
responses dribbled one byte at a time, short bodies, garbage, and a server that silently drops
a kept-alive connection, which the client must survive or report with the right error.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from conftest import StartServer, make_app
from wirespeed.server.app import App, Request, Response
from wirespeed.upstream import (
    BodyTooLarge,
    Client,
    ConnectionLost,
    InvalidURL,
    Pool,
    ProtocolError,
    StatusError,
    Timeouts,
    UpstreamTimeout,
    parse_url,
)

pytestmark = pytest.mark.asyncio(loop_factories=["uvloop", "asyncio"])

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[str]:
    """A TCP server running ``handler`` per connection; yields its base URL.

    On exit every connection is closed and every handler has finished.
    """
    handlers: set[asyncio.Task[None]] = set()
    writers: set[asyncio.StreamWriter] = set()

    async def guarded(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        writers.add(writer)
        try:
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
                await handler(reader, writer)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    server = await asyncio.start_server(guarded, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        for writer in writers:
            writer.close()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    async with Client() as c:
        yield c


async def test_content_length_chunked_and_head(serve: StartServer, client: Client) -> None:
    server = await serve(make_app())
    response = await client.get(f"{server.url}/")
    assert (response.status, response.body, response.header("content-length")) == (
        200,
        b"hello",
        "5",
    )
    chunked = await client.get(f"{server.url}/stream?n=5&size=3")
    assert chunked.header("transfer-encoding") == "chunked"
    assert chunked.body == b"aaabbbcccdddeee"
    head = await client.head(f"{server.url}/")
    assert (head.status, head.body) == (200, b"")
    posted = await client.request("POST", f"{server.url}/echo", body=b"x" * 100_000)
    assert posted.body == b"x" * 100_000
    # Every exchange above, chunked and HEAD included, left the connection reusable.
    assert (client.pool.stats.opened, client.pool.stats.reused) == (1, 3)


async def test_status_errors_do_not_raise_until_asked(serve: StartServer, client: Client) -> None:
    server = await serve(make_app())
    response = await client.get(f"{server.url}/missing")
    assert response.status == 404
    with pytest.raises(StatusError, match="404 Not Found from http://") as info:
        response.raise_for_status()
    assert info.value.status == 404


async def test_stream_to_file_without_holding_the_body(tmp_path: Path, serve: StartServer) -> None:
    size = 8 * 1024 * 1024
    data = os.urandom(size)
    (tmp_path / "big.bin").write_bytes(data)
    app = App()
    app.static("/files", tmp_path)
    server = await serve(app)
    out = tmp_path / "out.bin"
    async with Client() as client:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            tracemalloc.start()
            async with client.stream("GET", f"{server.url}/files/big.bin") as response:
                assert response.length == size
                written = await response.write_to(fd, 0)
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        finally:
            os.close(fd)
    assert written == size
    assert out.read_bytes() == data
    # One 256 KiB buffer, not the 8 MiB body (tracemalloc sees every Python allocation,
    # including the in-process server's).
    assert peak < 2 * 1024 * 1024


async def test_iter_bytes_and_unread_body_closes(serve: StartServer, client: Client) -> None:
    server = await serve(make_app())
    async with client.stream("GET", f"{server.url}/stream?n=4&size=2") as response:
        pieces = [piece async for piece in response.iter_bytes()]
    assert b"".join(pieces) == b"aabbccdd"
    async with client.stream("GET", f"{server.url}/stream?n=4&size=2") as response:
        pass  # body left on the wire: the connection must not be reused
    await client.get(f"{server.url}/")
    assert client.pool.stats.opened == 2


async def test_read_and_total_timeouts(serve: StartServer, client: Client) -> None:
    server = await serve(make_app())
    with pytest.raises(UpstreamTimeout) as info:
        await client.request(
            "GET", f"{server.url}/sleep?t=0.5", timeouts=Timeouts(read=0.05, total=5)
        )
    assert info.value.phase == "read"
    with pytest.raises(UpstreamTimeout) as info:
        await client.request(
            "GET", f"{server.url}/sleep?t=0.5", timeouts=Timeouts(read=5, total=0.05)
        )
    assert info.value.phase == "total"
    # The timed-out connections were closed, not pooled with a response still coming.
    assert client.pool.stats.idle == 0


async def test_redirects_off_by_default(serve: StartServer) -> None:
    app = make_app()

    @app.get("/old")
    def old(request: Request) -> Response:
        return Response(b"moved", status=302, headers={"Location": "/n/7"})

    server = await serve(app)
    async with Client() as client:
        response = await client.get(f"{server.url}/old")
        assert (response.status, response.header("location")) == (302, "/n/7")
    async with Client(follow_redirects=True) as client:
        response = await client.get(f"{server.url}/old")
        assert (response.status, response.body) == (200, b"7")
        assert client.pool.stats.opened == 1  # the redirect's small body was drained


async def test_short_body_reports_what_arrived() -> None:
    async def short(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 40)
        await writer.drain()

    async with raw_server(short) as url, Client() as client:
        with pytest.raises(ConnectionLost, match="after 40 of 100 body bytes") as info:
            await client.get(url + "/")
    assert (info.value.received, info.value.expected) == (40, 100)


async def test_bytewise_response_and_chunk_extensions() -> None:
    wire = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n"
        b"4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nTrailer: t\r\n\r\n"
    )

    async def dribble(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await reader.readuntil(b"\r\n\r\n")
            for i in range(len(wire)):
                writer.write(wire[i : i + 1])
                await writer.drain()
                await asyncio.sleep(0)

    async with raw_server(dribble) as url, Client() as client:
        for _ in range(2):
            response = await client.get(url + "/")
            assert (response.status, response.body, response.header("x-a")) == (
                200,
                b"Wikipedia",
                "1",
            )
        assert client.pool.stats.opened == 1


async def test_protocol_errors() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"SMTP ready\r\n\r\n")
        await writer.drain()

    async with raw_server(garbage) as url, Client() as client:
        with pytest.raises(ProtocolError, match="bad response head"):
            await client.get(url + "/")

    async def bad_chunk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
        await writer.drain()
        await reader.read()

    async with raw_server(bad_chunk) as url, Client() as client:
        with pytest.raises(ProtocolError, match="chunked"):
            await client.get(url + "/")


async def test_stale_kept_alive_connection_is_retried_once() -> None:
    requests = 0

    async def drop_second(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal requests
        # Answers one request per connection with keep-alive, then closes on the next one
        # without answering: the race a pooled client meets when a server times a socket out.
        await reader.readuntil(b"\r\n\r\n")
        requests += 1
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")

    async with raw_server(drop_second) as url, Client() as client:
        for _ in range(3):
            assert (await client.get(url + "/")).body == b"ok"
        stats = client.pool.stats
        # POST is not idempotent: no silent retry.
        with pytest.raises(ConnectionLost, match="before responding"):
            await client.request("POST", url + "/", body=b"x")
    assert requests == 3
    assert stats.opened == 3


async def test_connection_close_and_http10_are_not_reused() -> None:
    async def closing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.0 200 OK\r\n\r\nuntil close")
        await writer.drain()

    async with raw_server(closing) as url, Client() as client:
        assert (await client.get(url + "/")).body == b"until close"
        assert (await client.get(url + "/")).body == b"until close"
        assert (client.pool.stats.opened, client.pool.stats.idle) == (2, 0)


async def test_body_too_large_and_bad_urls(serve: StartServer, client: Client) -> None:
    server = await serve(make_app())
    with pytest.raises(BodyTooLarge):
        await client.request("GET", f"{server.url}/", max_body=2)
    for bad in ("ftp://x/y", "https://example.com/", "http:///path", "http://h:99999/"):
        with pytest.raises(InvalidURL):
            parse_url(bad)
    with pytest.raises(ValueError, match="invalid header"):
        await client.request("GET", f"{server.url}/", headers={"X-Evil": "a\r\nInjected: 1"})
    assert parse_url("http://[::1]/a b?q=1")[1] == "/a%20b?q=1"


async def test_shared_pool_stays_open(serve: StartServer) -> None:
    server = await serve(make_app())
    async with Pool() as pool:
        async with Client(pool) as client:
            await client.get(f"{server.url}/")
        assert not pool.closed
        assert pool.stats.idle == 1


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_random_write_sizes_chunked_and_length(seed: int) -> None:
    """The same bodies, cut by the server at seeded random points, arrive exactly."""
    rng = random.Random(seed)
    body = bytes(rng.randrange(256) for _ in range(200_000))
    pieces = []
    at = 0
    while at < len(body):
        step = rng.randrange(1, 9000)
        pieces.append(body[at : at + step])
        at += step
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces)
        + b"0\r\n\r\n"
    )
    length = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body

    async def cutter(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for wire in (chunked, length, chunked):
            await reader.readuntil(b"\r\n\r\n")
            at = 0
            while at < len(wire):
                step = rng.choice((1, 2, 7, 100, 1500, 65536))
                writer.write(wire[at : at + step])
                at += step
                await writer.drain()
                if rng.random() < 0.3:
                    await asyncio.sleep(0)

    async with raw_server(cutter) as url, Client() as client:
        for _ in range(3):
            assert (await client.get(url + "/")).body == body
        assert client.pool.stats.opened == 1
