"""The connection over real sockets: persistence, pipelining, bodies, HEAD, framing of answers.

Every test runs on uvloop and asyncio (see conftest), and most write their requests both whole
and one byte at a time (the ``bytewise`` fixture).
"""

from __future__ import annotations

import asyncio
import email.utils
import itertools
import random
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from conftest import HttpResponse, RawClient, StartServer, get, make_app
from wirespeed.io.tuning import SocketOptions
from wirespeed.server.app import App, Request, Response, StreamResponse

Connect = Callable[..., Awaitable[RawClient]]

# RFC 9110 §5.6.7 IMF-fixdate, the only format a server may generate.
IMF_FIXDATE = re.compile(
    r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
    r"\d{4} \d\d:\d\d:\d\d GMT"
)


def post(path: str, body: bytes, *, extra: str = "", version: str = "1.1") -> bytes:
    host = "Host: test\r\n" if version == "1.1" else ""
    return (
        f"POST {path} HTTP/{version}\r\n{host}Content-Length: {len(body)}\r\n{extra}\r\n".encode()
        + body
    )


def chunked_post(path: str, pieces: list[bytes]) -> bytes:
    body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    return (
        f"POST {path} HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n".encode() + body
    )


# -- the basics ----------------------------------------------------------------------------------


async def test_get_fixed_body(serve: StartServer, connect: Connect, bytewise: bool) -> None:
    server = await serve(make_app())
    client = await connect(server.port)
    await client.send(get("/"), bytewise=bytewise)
    resp = await client.response()
    assert (resp.version, resp.status, resp.reason) == ("HTTP/1.1", 200, "OK")
    assert resp.body == b"hello"
    assert resp.header("content-length") == "5"
    assert resp.header("content-type") == "text/plain"
    assert resp.header("transfer-encoding") is None
    assert resp.header("server") == "wirespeed"
    date = resp.header("date")
    assert date is not None and IMF_FIXDATE.fullmatch(date), date
    assert abs(email.utils.parsedate_to_datetime(date).timestamp() - time.time()) < 2.5
    assert not resp.closes
    assert await client.is_open()


async def test_date_refreshes_about_once_a_second(serve: StartServer, connect: Connect) -> None:
    server = await serve(make_app())
    client = await connect(server.port)
    samples: list[tuple[float, float]] = []
    start = time.monotonic()
    while time.monotonic() - start < 1.15:  # crosses at least one second boundary
        await client.send(get("/"))
        resp = await client.response()
        date = resp.header("date")
        assert date is not None
        samples.append((time.time(), email.utils.parsedate_to_datetime(date).timestamp()))
        await asyncio.sleep(0.03)
    stamps = [d for _, d in samples]
    assert stamps == sorted(stamps)
    # Whole seconds, each within the second (plus one tick) of when it was sent.
    assert all(d == int(d) for d in stamps)
    assert all(now - 1.6 <= d <= now + 0.01 for now, d in samples)
    distinct = sorted(set(stamps))
    assert 2 <= len(distinct) <= 3
    assert all(b - a == 1 for a, b in itertools.pairwise(distinct))


@pytest.mark.parametrize(
    ("version", "connection", "persists"),
    [
        ("1.1", None, True),
        ("1.1", "close", False),
        ("1.1", "keep-alive", True),
        ("1.0", None, False),
        ("1.0", "keep-alive", True),
        ("1.0", "close", False),
        ("1.0", "keep-alive, close", False),
    ],
)
async def test_persistence(
    serve: StartServer,
    connect: Connect,
    bytewise: bool,
    version: str,
    connection: str | None,
    persists: bool,
) -> None:
    # RFC 9112 §9.3: 1.1 persists unless "close"; 1.0 only with "keep-alive" (and no "close").
    server = await serve(make_app())
    client = await connect(server.port)
    extra = f"Connection: {connection}\r\n" if connection else ""
    await client.send(get("/", version=version, extra=extra), bytewise=bytewise)
    resp = await client.response()
    assert resp.status == 200
    assert resp.version == "HTTP/1.1"  # RFC 9110 §6.2: our version, whatever the client's
    if persists:
        assert not resp.closes
        if version == "1.0":
            assert "keep-alive" in (resp.header("connection") or "").lower()
        await client.send(get("/n/2", version=version, extra=extra))
        again = await client.response()
        assert again.body == b"2"
    else:
        assert resp.closes or version == "1.0"
        elapsed, rest = await client.wait_closed_by_server(1.5)
        assert rest == b""
        assert elapsed < 1.0


async def test_many_requests_on_one_connection(serve: StartServer, connect: Connect) -> None:
    server = await serve(make_app())
    client = await connect(server.port)
    for i in range(50):
        await client.send(get(f"/n/{i}"))
        assert (await client.response()).body == str(i).encode()
    assert server.state.requests >= 50


# -- pipelining ----------------------------------------------------------------------------------


async def test_100_pipelined_requests_answered_in_order(
    serve: StartServer, connect: Connect, bytewise: bool
) -> None:
    server = await serve(make_app())
    client = await connect(server.port)
    await client.send(b"".join(get(f"/n/{i}") for i in range(100)), bytewise=bytewise)
    bodies = [(await client.response()).body for _ in range(100)]
    assert bodies == [str(i).encode() for i in range(100)]
    assert await client.is_open()


async def test_pipelined_mixed_requests_in_order(
    serve: StartServer, connect: Connect, bytewise: bool
) -> None:
    server = await serve(make_app())
    client = await connect(server.port)
    stream = b"".join(
        [
            get("/n/1"),
            post("/echo", b"first body"),
            get("/n/2").replace(b"GET", b"HEAD", 1),
            chunked_post("/echo", [b"chunk", b"ed"]),
            get("/empty"),
            get("/stream?n=3&size=4"),
            post("/stream-echo", b"streamed"),
            get("/sleep?t=0.05"),
            get("/stream-known"),
            post("/ignore-body", b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"),
            get("/n/3"),
        ]
    )
    await client.send(stream, bytewise=bytewise)
    methods = ["GET", "POST", "HEAD", "POST", "GET", "GET", "POST", "GET", "GET", "POST", "GET"]
    got = [await client.response(m) for m in methods]
    assert [r.status for r in got] == [200, 200, 200, 200, 204, 200, 200, 200, 200, 200, 200]
    assert [r.body for r in got] == [
        b"1",
        b"first body",
        b"",
        b"chunked",
        b"",
        b"aaaabbbbcccc",
        b"streamed",
        b"slept",
        b"abcdef",
        b"ignored",
        b"3",
    ]
    assert await client.is_open()


async def test_pipelining_is_bounded(serve: StartServer, connect: Connect) -> None:
    # While the first request is held, the server must stop reading once max_pipelined
    # requests wait: the client's writes then back up into the kernel buffers and stall, and
    # the server holds at most max_pipelined parsed requests plus what one read delivered.
    release = asyncio.Event()
    app = make_app()

    @app.get("/hold")
    async def hold(request: Request) -> bytes:
        await release.wait()
        return b"held"

    server = await serve(app, socket_options=SocketOptions(rcvbuf=64 * 1024), max_pipelined=4)
    client = await connect(server.port)
    client.writer.transport.get_extra_info("socket").setsockopt(
        socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024
    )
    pad = "X-Pad: " + "p" * 16_000 + "\r\n"  # 16 KiB per request
    count = 150  # 2.4 MB: far more than the socket buffers on both sides hold
    stream = get("/hold") + b"".join(get(f"/n/{i}", extra=pad) for i in range(count))
    writer = asyncio.create_task(client.send(stream))
    await asyncio.sleep(0.5)
    assert not writer.done(), "the server kept reading while requests piled up"
    [conn] = server.state.connections
    per_read = 256 * 1024 // 16_000 + 1  # asyncio and uvloop read at most 256 KiB at a time
    assert conn.read_paused
    assert len(conn.queue) <= 4 + per_read
    release.set()
    assert (await client.response()).body == b"held"
    bodies = [(await client.response()).body for _ in range(count)]
    assert bodies == [str(i).encode() for i in range(count)]
    await writer


async def test_pipelined_after_slow_async_handlers_in_order(
    serve: StartServer, connect: Connect
) -> None:
    app = App()

    @app.get("/d/{i}")
    async def delayed(request: Request) -> bytes:
        i = int(request.path_params["i"])
        await asyncio.sleep(0.001 * (i % 5))
        return str(i).encode()

    server = await serve(app, max_pipelined=3)
    client = await connect(server.port)
    await client.send(b"".join(get(f"/d/{i}") for i in range(40)))
    assert [(await client.response()).body for _ in range(40)] == [
        str(i).encode() for i in range(40)
    ]


# -- HEAD ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/stream?n=2", "/stream-known", "/missing", "/n/7"])
async def test_head_has_get_headers_and_no_body(
    serve: StartServer, connect: Connect, bytewise: bool, path: str
) -> None:
    server = await serve(make_app())
    client = await connect(server.port)
    await client.send(get(path))
    full = await client.response()
    head_req = get(path).replace(b"GET", b"HEAD", 1)
    # A pipelined GET after the HEAD proves no body bytes followed the HEAD's head.
    await client.send(head_req + get("/n/9"), bytewise=bytewise)
    head = await client.response("HEAD")
    after = await client.response()
    assert head.status == full.status
    skip = {"date"}
    assert [h for h in head.headers if h[0] not in skip] == [
        h for h in full.headers if h[0] not in skip
    ]
    assert after.body == b"9"


# -- request bodies ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/echo", "/stream-echo"])
async def test_content_length_body(
    serve: StartServer, connect: Connect, bytewise: bool, path: str
) -> None:
    server = await serve(make_app())
    client = await connect(server.port)
    body = bytes(range(256)) + b"\r\n\r\nGET / HTTP/1.1\r\n\r\n"
    await client.send(post(path, body), bytewise=bytewise)
    resp = await client.response()
    assert resp.status == 200
    assert resp.body == body


@pytest.mark.parametrize("path", ["/echo", "/stream-echo"])
async def test_chunked_body(
    serve: StartServer, connect: Connect, bytewise: bool, path: str
) -> None:
    server = await serve(make_app())
    client = await connect(server.port)
    pieces = [b"a", b"bc" * 20, bytes(range(256)), b"\r\n0\r\n"]
    await client.send(chunked_post(path, pieces), bytewise=bytewise)
    resp = await client.response()
    assert resp.status == 200
    assert resp.body == b"".join(pieces)


async def test_large_body(serve: StartServer, connect: Connect) -> None:
    server = await serve(make_app())
    client = await connect(server.port)
    body = bytes(range(256)) * 3000  # 750 KiB: many reads, under the 1 MiB default
    await client.send(post("/stream-echo", body))
    resp = await client.response()
    assert resp.body == body
    assert int(resp.header("x-pieces") or 0) > 1


async def test_unread_body_is_skipped_not_parsed(
    serve: StartServer, connect: Connect, bytewise: bool
) -> None:
    # A handler that ignores the body: the body must be discarded, never read as a request.
    server = await serve(make_app())
    client = await connect(server.port)
    smuggled = get("/n/666")
    await client.send(post("/ignore-body", smuggled) + get("/n/1"), bytewise=bytewise)
    first = await client.response()
    assert first.body == b"ignored"
    if not first.closes:
        assert (await client.response()).body == b"1"
    # Either way, /n/666 was never answered.
    rest = await client.read_to_eof(0.3) if first.closes else b""
    assert b"666" not in rest


# -- Expect: 100-continue ------------------------------------------------------------------------


async def test_expect_100_continue(serve: StartServer, connect: Connect, bytewise: bool) -> None:
    server = await serve(make_app())
    client = await connect(server.port)
    body = b"x" * 1000
    head = (
        b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 1000\r\nExpect: 100-continue\r\n\r\n"
    )
    await client.send(head, bytewise=bytewise)
    interim = await client.response("POST")
    assert interim.status == 100
    assert interim.version == "HTTP/1.1"
    await client.send(body)
    final = await client.response("POST")
    assert final.status == 200
    assert final.body == body


async def test_expect_100_continue_not_sent_when_handler_skips_body(
    serve: StartServer, connect: Connect
) -> None:
    server = await serve(make_app())
    client = await connect(server.port)
    await client.send(
        b"POST /ignore-body HTTP/1.1\r\nHost: test\r\nContent-Length: 1000000\r\n"
        b"Expect: 100-continue\r\n\r\n"
    )
    final = await client.response("POST")
    assert final.status == 200  # answered at once: no 100 Continue first
    assert final.body == b"ignored"


async def test_expect_100_continue_ignored_for_http10(serve: StartServer, connect: Connect) -> None:
    # RFC 9110 §10.1.1: a server MUST ignore a 100-continue expectation in an HTTP/1.0 request
    # (a 1.0 client cannot parse a 1xx).
    server = await serve(make_app())
    client = await connect(server.port)
    await client.send(post("/echo", b"body", extra="Expect: 100-continue\r\n", version="1.0"))
    resp = await client.response("POST")
    assert resp.status == 200
    assert resp.body == b"body"


# -- response framing ----------------------------------------------------------------------------


async def test_stream_response_is_chunked(serve: StartServer, connect: Connect) -> None:
    server = await serve(make_app())
    client = await connect(server.port)
    await client.send(get("/stream?n=4&size=3"))
    resp = await client.response()
    assert resp.is_chunked
    assert resp.header("content-length") is None
    assert resp.chunks == [b"aaa", b"bbb", b"ccc", b"ddd"]
    assert resp.trailers == []
    assert await client.is_open()


async def test_stream_with_known_length_is_not_chunked(
    serve: StartServer, connect: Connect
) -> None:
    server = await serve(make_app())
    client = await connect(server.port)
    await client.send(get("/stream-known"))
    resp = await client.response()
    assert resp.header("content-length") == "6"
    assert resp.header("transfer-encoding") is None
    assert resp.body == b"abcdef"
    assert await client.is_open()


@pytest.mark.parametrize("connection", ["", "Connection: keep-alive\r\n"])
async def test_no_chunked_to_http10(serve: StartServer, connect: Connect, connection: str) -> None:
    # RFC 9112 §7: chunked is not sent to a 1.0 client; the body ends with the connection.
    server = await serve(make_app())
    client = await connect(server.port)
    await client.send(get("/stream?n=3&size=2", version="1.0", extra=connection))
    resp = await client.response()
    assert resp.status == 200
    assert resp.header("transfer-encoding") is None
    assert resp.header("content-length") is None
    assert resp.body == b"aabbcc"  # read to the end of the connection


async def test_204_has_no_body_and_no_length(serve: StartServer, connect: Connect) -> None:
    server = await serve(make_app())
    client = await connect(server.port)
    await client.send(get("/empty") + get("/n/5"))
    resp = await client.response()
    assert resp.status == 204
    assert resp.header("content-length") is None  # RFC 9110 §8.6
    assert resp.header("transfer-encoding") is None
    assert (await client.response()).body == b"5"


async def test_handler_headers_are_sent(serve: StartServer, connect: Connect) -> None:
    app = App()

    @app.get("/")
    def handler(request: Request) -> Response:
        return Response(b"{}", 201, {"X-One": "1", "Cache-Control": "no-store"}, "application/json")

    server = await serve(app)
    client = await connect(server.port)
    await client.send(get("/"))
    resp = await client.response()
    assert (resp.status, resp.reason) == (201, "Created")
    assert resp.header("x-one") == "1"
    assert resp.header("cache-control") == "no-store"
    assert resp.header("content-type") == "application/json"


# -- half-close, upgrade, CONNECT ----------------------------------------------------------------


async def test_client_half_close_still_gets_its_answer(
    serve: StartServer, connect: Connect
) -> None:
    server = await serve(make_app())
    client = await connect(server.port)
    await client.send(get("/sleep?t=0.1") + get("/n/2"))
    client.writer.write_eof()
    assert (await client.response()).body == b"slept"
    assert (await client.response()).body == b"2"
    assert (await client.read_to_eof(2.0)) == b""


async def test_upgrade_request_is_answered_in_http11(serve: StartServer, connect: Connect) -> None:
    # RFC 9110 §7.8: the server may ignore Upgrade. curl --http2 on http:// sends exactly this.
    server = await serve(make_app())
    client = await connect(server.port)
    await client.send(
        get(
            "/",
            extra="Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
            "HTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n",
        )
        + get("/n/2")
    )
    first = await client.response()
    assert first.status == 200
    assert first.body == b"hello"
    assert (await client.response()).body == b"2"


async def test_connect_gets_one_answer_then_close(serve: StartServer, connect: Connect) -> None:
    server = await serve(make_app())
    client = await connect(server.port)
    await client.send(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
    resp = await client.response("CONNECT")
    assert 400 <= resp.status < 600
    rest = await client.read_to_eof(2.0)
    assert rest == b"", f"more than one answer to one CONNECT: {rest!r}"


# -- errors from the app keep the connection usable or close it honestly -------------------------


async def test_404_and_405_keep_the_connection(serve: StartServer, connect: Connect) -> None:
    server = await serve(make_app())
    client = await connect(server.port)
    await client.send(get("/nowhere") + b"DELETE /echo HTTP/1.1\r\nHost: t\r\n\r\n" + get("/n/1"))
    missing = await client.response()
    assert missing.status == 404
    assert (missing.header("content-type") or "").startswith("text/plain")
    not_allowed = await client.response()
    assert not_allowed.status == 405
    assert sorted(m.strip() for m in (not_allowed.header("allow") or "").split(",")) == [
        "POST",
        "PUT",
    ]
    assert (await client.response()).body == b"1"


async def test_stream_failure_after_head_aborts_the_body(
    serve: StartServer, connect: Connect
) -> None:
    # Once the head is out, the only honest signal of a broken body is an incomplete message.
    app = App()

    @app.get("/")
    def broken(request: Request) -> StreamResponse:
        async def gen() -> AsyncIterator[bytes]:
            yield b"partial"
            raise RuntimeError("boom")

        return StreamResponse(gen())

    server = await serve(app)
    client = await connect(server.port)
    await client.send(get("/"))
    with pytest.raises((asyncio.IncompleteReadError, EOFError, ConnectionError)):
        await client.response()


async def test_http10_request_gets_http11_status_line(serve: StartServer, connect: Connect) -> None:
    server = await serve(make_app())
    client = await connect(server.port)
    await client.send(get("/", version="1.0"))
    resp: HttpResponse = await client.response()
    assert resp.version == "HTTP/1.1"
    assert resp.body == b"hello"
    assert resp.header("content-length") == "5"


async def test_absolute_form_target(serve: StartServer, connect: Connect, bytewise: bool) -> None:
    # RFC 9112 §3.2.2: servers MUST accept absolute-form; the handler sees the path and query.
    server = await serve(make_app())
    client = await connect(server.port)
    await client.send(
        b"GET http://test/target?x=1 HTTP/1.1\r\nHost: test\r\n\r\n", bytewise=bytewise
    )
    resp = await client.response()
    assert resp.status == 200
    assert resp.body == b'{"path":"/target","query":"x=1"}'


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
async def test_pipeline_at_seeded_random_split_points(
    serve: StartServer, connect: Connect, seed: int
) -> None:
    # The same conversation cut into random pieces (loop turns between them) gets the same
    # answers as when it is written whole.
    rnd = random.Random(seed)
    server = await serve(make_app())
    client = await connect(server.port)
    stream = b"".join(
        [
            get("/n/1"),
            post("/echo", bytes(range(200))),
            chunked_post("/stream-echo", [b"x" * rnd.randrange(1, 300) for _ in range(5)]),
            get("/stream?n=5&size=7").replace(b"GET", b"HEAD", 1),
            get("/stream?n=5&size=7"),
            get("/n/2"),
        ]
    )
    pos = 0
    while pos < len(stream):
        size = rnd.choice([1, 2, 3, 7, 64, 500])
        await client.send(stream[pos : pos + size])
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        pos += size
    methods = ["GET", "POST", "POST", "HEAD", "GET", "GET"]
    got = [await client.response(m) for m in methods]
    assert got[0].body == b"1"
    assert got[1].body == bytes(range(200))
    assert len(got[2].body) > 0 and set(got[2].body) == {ord("x")}
    assert got[3].body == b"" and got[3].is_chunked
    assert got[4].body == b"a" * 7 + b"b" * 7 + b"c" * 7 + b"d" * 7 + b"e" * 7
    assert got[5].body == b"2"
