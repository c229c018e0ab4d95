"""Limits and refusals over real sockets: status, a short plain-text reason, and a lingering close.

What the pure reader decides (test_reader.py) must reach the client as a real ``HTTP/1.1`` answer
that tells nothing internal, followed by a close the client can see as the end of the answer
rather than as a reset, even when it had already sent more bytes.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import re
import time
from collections.abc import Awaitable, Callable

import pytest

from conftest import RawClient, StartServer, get, make_app
from wirespeed.proto.http11 import Limits

Connect = Callable[..., Awaitable[RawClient]]

SMALL = Limits(
    max_target=128, max_header_bytes=1024, max_header_count=10, max_body=100, max_chunk_overhead=256
)
H = "Host: test\r\n"
TE = H + "Transfer-Encoding: chunked\r\n"


def raw(head: str, fields: str = H, body: bytes = b"") -> bytes:
    return f"{head}\r\n{fields}\r\n".encode() + body


# (id, request, status). Each limit and hygiene rule of the spec that the client can trigger.
REFUSALS = [
    ("target-too-long", raw("GET /" + "a" * 128 + " HTTP/1.1"), 414),
    (
        "too-many-fields",
        raw("GET / HTTP/1.1", H + "".join(f"X-{i}: v\r\n" for i in range(10))),
        431,
    ),
    ("header-block-too-large", raw("GET / HTTP/1.1", H + "X-Big: " + "v" * 1200 + "\r\n"), 431),
    ("body-too-large", raw("POST /echo HTTP/1.1", H + "Content-Length: 101\r\n", b"x" * 101), 413),
    (
        "chunked-body-too-large",
        raw("POST /echo HTTP/1.1", TE, b"65\r\n" + b"x" * 101 + b"\r\n0\r\n\r\n"),
        413,
    ),
    ("unknown-transfer-coding", raw("POST /echo HTTP/1.1", H + "Transfer-Encoding: gzip\r\n"), 501),
    (
        "te-with-cl",
        raw("POST /echo HTTP/1.1", H + "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n"),
        400,
    ),
    ("te-in-http10", raw("POST /echo HTTP/1.0", "Transfer-Encoding: chunked\r\n"), 400),
    ("cl-not-digits", raw("POST /echo HTTP/1.1", H + "Content-Length: 1e3\r\n"), 400),
    (
        "cl-duplicate",
        raw("POST /echo HTTP/1.1", H + "Content-Length: 2\r\nContent-Length: 2\r\n", b"ab"),
        400,
    ),
    ("chunk-size-not-hex", raw("POST /echo HTTP/1.1", TE, b"xyz\r\n"), 400),
    ("chunk-data-without-crlf", raw("POST /echo HTTP/1.1", TE, b"3\r\nabcdef"), 400),
    (
        "chunk-extension-too-long",
        raw("POST /echo HTTP/1.1", TE, b"3;" + b"e" * 600 + b"\r\nabc\r\n0\r\n\r\n"),
        400,
    ),
    ("space-before-colon", raw("GET / HTTP/1.1", H + "X-A : 1\r\n"), 400),
    ("line-without-colon", raw("GET / HTTP/1.1", H + "no colon here\r\n"), 400),
    ("bare-cr", raw("GET / HTTP/1.1", H + "X-A: 1\r2\r\n"), 400),
    ("host-missing", raw("GET / HTTP/1.1", ""), 400),
    ("host-twice", raw("GET / HTTP/1.1", H + H), 400),
    ("host-invalid", raw("GET / HTTP/1.1", "Host: a b\r\n"), 400),
    ("http-2.0", raw("GET / HTTP/2.0"), 505),
    ("http-1.2", raw("GET / HTTP/1.2"), 505),
    ("h2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
    ("garbage-request-line", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40, 400),
]

# Parser internals that must never reach a client.
INTERNAL = re.compile(r"llhttp|httptools|HPE_|Traceback|Error|Invalid |Expected |Missing |\.py")


async def assert_refused(client: RawClient, status: int) -> None:
    resp = await client.response()
    assert resp.version == "HTTP/1.1"
    assert resp.status == status, (resp.status, resp.body)
    assert (resp.header("content-type") or "").startswith("text/plain")
    text = resp.body.decode()
    assert text.endswith("\n") and text.count("\n") == 1, text
    assert 0 < len(text) < 80
    assert not INTERNAL.search(text), text
    assert resp.header("date") is not None
    assert resp.header("server") == "wirespeed"
    assert resp.closes
    # The server half-closed after the answer: the client sees a clean end, not a reset.
    assert await client.read_to_eof(2.0) == b""


@pytest.mark.parametrize(("data", "status"), [pytest.param(d, s, id=i) for i, d, s in REFUSALS])
async def test_refusal_over_the_wire(
    serve: StartServer, connect: Connect, bytewise: bool, data: bytes, status: int
) -> None:
    server = await serve(make_app(), limits=SMALL)
    client = await connect(server.port)
    await client.send(data, bytewise=bytewise)
    await assert_refused(client, status)


async def test_garbage_version_gets_a_real_status_line(
    serve: StartServer, connect: Connect
) -> None:
    server = await serve(make_app())
    for line in (b"GET / HTTP/9.9", b"GET / HTTP/x.y", b"GET / FOO/1.1", b"GET / HTTP/1"):
        client = await connect(server.port)
        await client.send(line + b"\r\nHost: t\r\n\r\n")
        first = await client.reader.readline()
        assert re.fullmatch(rb"HTTP/1\.1 (400|505) [A-Za-z ]+\r\n", first), (line, first)


@pytest.mark.parametrize(
    ("data", "status"),
    [
        pytest.param(raw("GET /" + "a" * 8192 + " HTTP/1.1"), 414, id="target-over-8KiB"),
        pytest.param(
            raw("GET / HTTP/1.1", H + "".join(f"X-{i}: v\r\n" for i in range(100))),
            431,
            id="101-fields",
        ),
        pytest.param(
            raw("GET / HTTP/1.1", H + "".join(f"X-{i}: {'v' * 1000}\r\n" for i in range(66))),
            431,
            id="header-block-over-64KiB",
        ),
        pytest.param(
            raw("POST /echo HTTP/1.1", H + "Content-Length: 1048577\r\n"), 413, id="body-over-1MiB"
        ),
    ],
)
async def test_default_limits_over_the_wire(
    serve: StartServer, connect: Connect, data: bytes, status: int
) -> None:
    server = await serve(make_app())
    client = await connect(server.port)
    await client.send(data)
    await assert_refused(client, status)


async def test_default_limits_admit_requests_just_under_them(
    serve: StartServer, connect: Connect
) -> None:
    server = await serve(make_app())
    client = await connect(server.port)
    await client.send(get("/target?" + "q" * (8192 - len("/target?"))))
    assert (await client.response()).status == 200
    await client.send(get("/", extra="".join(f"X-{i}: v\r\n" for i in range(99))))
    assert (await client.response()).status == 200
    body = b"b" * (1024 * 1024)
    await client.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1048576\r\n\r\n" + body)
    resp = await client.response()
    assert resp.status == 200
    assert resp.body == body


async def test_answer_to_earlier_requests_comes_before_the_refusal(
    serve: StartServer, connect: Connect, bytewise: bool
) -> None:
    server = await serve(make_app(), limits=SMALL)
    client = await connect(server.port)
    bad = raw("GET / HTTP/1.1", H + "X-A : 1\r\n")
    await client.send(get("/sleep?t=0.05") + get("/n/1") + bad + get("/n/2"), bytewise=bytewise)
    assert (await client.response()).body == b"slept"
    assert (await client.response()).body == b"1"
    await assert_refused(client, 400)


async def test_smuggled_request_after_te_cl_is_never_answered(
    serve: StartServer, connect: Connect
) -> None:
    app = make_app()
    reached: list[str] = []

    @app.get("/smuggled")
    def smuggled(request: object) -> bytes:
        reached.append("smuggled")
        return b"smuggled"

    server = await serve(app)
    client = await connect(server.port)
    attack = (
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\n" + get("/smuggled")
    )
    await client.send(attack)
    await assert_refused(client, 400)
    assert reached == []


# -- lingering close -----------------------------------------------------------------------------


@pytest.mark.parametrize("status_and_request", ["400", "413"])
async def test_lingering_close_delivers_the_error_despite_unread_input(
    serve: StartServer, connect: Connect, status_and_request: str
) -> None:
    # The client has already sent far more than the server will read. Closing with unread input
    # makes the kernel send RST, which destroys the answer in flight (RFC 9112 §9.6); a
    # lingering close reads and drops the input so the client gets the whole answer.
    server = await serve(make_app(), linger_timeout=1.0)
    client = await connect(server.port)
    junk = b"J" * (400 * 1024)
    if status_and_request == "400":
        head = b"GET / HTTP/1.1\r\nHost: t\r\nX-A : broken\r\n\r\n"
    else:
        head = b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2000000\r\n\r\n"
    writer = asyncio.create_task(client.send(head + junk))
    try:
        resp = await client.response()
    finally:
        writer.cancel()
    assert resp.status == int(status_and_request)
    assert resp.closes
    assert resp.body.endswith(b"\n")


async def test_linger_ends_with_a_close_even_if_the_client_keeps_sending(
    serve: StartServer, connect: Connect
) -> None:
    server = await serve(make_app(), linger_timeout=0.4)
    client = await connect(server.port)
    await client.send(b"GET / HTTP/1.1\r\nHost: t\r\nX-A : broken\r\n\r\n")
    resp = await client.response()
    assert resp.status == 400
    start = time.monotonic()
    while time.monotonic() - start < 3.0 and server.state.connections:
        try:
            await client.send(b"more junk\r\n")
        except ConnectionError:
            break
        await asyncio.sleep(0.05)
    assert not server.state.connections
    assert time.monotonic() - start < 0.4 + 0.6


@pytest.mark.parametrize(
    "body",
    [b"65\r\n" + b"x" * 101 + b"\r\n0\r\n\r\n", b"xyz\r\n", b"3\r\nabcdef"],
    ids=["too-large", "bad-size", "no-crlf"],
)
async def test_refused_body_logs_nothing_at_error_level(
    serve: StartServer, connect: Connect, caplog: pytest.LogCaptureFixture, body: bytes
) -> None:
    # A client's malformed body is the client's problem: the handler waiting for it is
    # cancelled quietly, with no "Future exception was never retrieved" (or any other ERROR) in
    # the operator's log for each bad request.
    server = await serve(make_app(), limits=SMALL)
    client = await connect(server.port)
    with caplog.at_level(logging.ERROR):
        await client.send(raw("POST /echo HTTP/1.1", TE, body))
        await assert_refused(client, 413 if len(body) > 100 else 400)
        await asyncio.sleep(0.05)
        gc.collect()
        await asyncio.sleep(0)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []
