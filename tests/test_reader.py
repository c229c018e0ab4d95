"""The pure request reader (proto/http11.py): RFC 9112 framing, hygiene and limits.

Every input is fed whole, one byte at a time, and (hypothesis) at random split points; the
events the sink sees, and the refusal status, must be the same every way. Body events are
merged before comparing, since how a body is cut into ``on_body`` calls follows the reads.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wirespeed.proto.errors import ProtocolError
from wirespeed.proto.http11 import (
    BODY_CHUNKED,
    BODY_LENGTH,
    BODY_NONE,
    Limits,
    RequestReader,
    split_target,
)


class Head(NamedTuple):
    method: str
    target: bytes
    version: str
    headers: tuple[tuple[bytes, bytes], ...]  # names lowercased here: the reader keeps their case
    keep_alive: bool
    body_kind: int
    content_length: int
    expect_continue: bool


@dataclass(frozen=True)
class Body:
    data: bytes


END = "end"
Event = Head | Body | str


class Recorder:
    """A sink that records what the reader reports, merging adjacent body pieces.

    ``END`` marks the end of each request: the reader calls ``on_request_complete`` for
    requests with a body; one without is complete with its head.
    """

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.body_open = False

    def on_request(
        self,
        method: str,
        target: bytes,
        version: str,
        headers: list[tuple[bytes, bytes]],
        keep_alive: bool,
        body_kind: int,
        content_length: int,
        expect_continue: bool,
    ) -> None:
        fields = tuple((bytes(n).lower(), bytes(v)) for n, v in headers)
        self.events.append(
            Head(
                method,
                bytes(target),
                version,
                fields,
                keep_alive,
                body_kind,
                content_length,
                expect_continue,
            )
        )
        assert not self.body_open, "a new request began before the last body ended"
        self.body_open = body_kind != BODY_NONE
        if not self.body_open:
            self.events.append(END)

    def on_body(self, chunk: bytes) -> None:
        assert chunk, "on_body called with nothing"
        assert self.body_open, "body bytes for a request without a body"
        if self.events and isinstance(self.events[-1], Body):
            self.events[-1] = Body(self.events[-1].data + bytes(chunk))
        else:
            self.events.append(Body(bytes(chunk)))

    def on_request_complete(self) -> None:
        if self.body_open:
            self.body_open = False
            self.events.append(END)


@dataclass
class Outcome:
    events: list[Event]
    status: int | None  # the refusal, if any
    fed: int  # bytes fed before the refusal (all of them if none)

    @property
    def heads(self) -> list[Head]:
        return [e for e in self.events if isinstance(e, Head)]


def pieces(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    points = sorted({c for c in cuts if 0 < c < len(data)})
    out, start = [], 0
    for p in [*points, len(data)]:
        out.append(data[start:p])
        start = p
    return [p for p in out if p]


def read(data: bytes | Sequence[bytes], limits: Limits | None = None) -> Outcome:
    """Feed ``data`` (one bytes, or a list of pieces) and record the outcome."""
    parts = [data] if isinstance(data, bytes) else list(data)
    sink = Recorder()
    reader = RequestReader(sink, limits)
    fed = 0
    for part in parts:
        try:
            reader.feed(part)
        except ProtocolError as exc:
            assert 400 <= exc.status <= 599
            assert exc.reason and "\n" not in exc.reason
            return Outcome(sink.events, exc.status, fed + len(part))
        fed += len(part)
    return Outcome(sink.events, None, fed)


def comparable(out: Outcome) -> tuple[list[Event], int | None]:
    """What must not depend on how the input was cut.

    After a refusal, how much of the refused body reached the sink first depends on the cuts
    (a body limit is checked per piece), so only heads, ends and the status are compared then.
    """
    if out.status is None:
        return out.events, None
    return [e for e in out.events if not isinstance(e, Body)], out.status


def whole_and_bytewise(data: bytes, limits: Limits | None = None) -> Outcome:
    """Feed whole and byte by byte; both must agree. Returns the outcome of the whole feed."""
    whole = read(data, limits)
    bytewise = read([data[i : i + 1] for i in range(len(data))], limits)
    assert comparable(bytewise) == comparable(whole), (
        "byte-at-a-time feeding disagrees with feeding whole"
    )
    return whole


H = b"Host: example.com\r\n"


def req(
    head: str = "GET / HTTP/1.1", fields: bytes = H, body: bytes = b"", *, crlf: bytes = b"\r\n"
) -> bytes:
    return head.encode() + crlf + fields + crlf + body


def field_value(head: Head, name: bytes) -> bytes | None:
    for k, v in head.headers:
        if k == name:
            return v
    return None


# -- accepted requests -------------------------------------------------------------------------


def test_simple_get() -> None:
    out = whole_and_bytewise(req(fields=H + b"Accept: */*\r\nX-Mixed-Case: Value\r\n"))
    assert out.status is None
    [head, end] = out.events
    assert isinstance(head, Head)
    assert (head.method, head.target, head.version) == ("GET", b"/", "1.1")
    assert head.headers == (
        (b"host", b"example.com"),
        (b"accept", b"*/*"),
        (b"x-mixed-case", b"Value"),
    )
    assert head.keep_alive is True
    assert (head.body_kind, head.content_length, head.expect_continue) == (BODY_NONE, 0, False)
    assert end == END


def test_header_values_lose_surrounding_whitespace() -> None:
    # RFC 9112 §5: OWS around a field value is not part of it.
    out = whole_and_bytewise(req(fields=H + b"X-A:   padded value \t \r\nX-B:\r\n"))
    [head, _] = out.events
    assert isinstance(head, Head)
    assert field_value(head, b"x-a") == b"padded value"
    assert field_value(head, b"x-b") == b""


@pytest.mark.parametrize(
    ("version", "connection", "keep_alive"),
    [
        ("1.1", None, True),  # RFC 9112 §9.3: 1.1 persists by default
        ("1.1", b"close", False),
        ("1.1", b"Close", False),  # connection options are case-insensitive
        ("1.1", b"keep-alive", True),
        ("1.1", b"foo, close", False),
        ("1.0", None, False),  # 1.0 only persists with keep-alive
        ("1.0", b"keep-alive", True),
        ("1.0", b"Keep-Alive", True),
        ("1.0", b"close", False),
        ("1.0", b"keep-alive, close", False),  # "close" always wins (§9.3)
        ("1.1", b"keep-alive, close", False),
    ],
)
def test_keep_alive_decision(version: str, connection: bytes | None, keep_alive: bool) -> None:
    fields = H if version == "1.1" else b""
    if connection is not None:
        fields += b"Connection: " + connection + b"\r\n"
    out = whole_and_bytewise(req(f"GET / HTTP/{version}", fields))
    assert out.status is None
    [head] = out.heads
    assert head.version == version
    assert head.keep_alive is keep_alive


def test_http10_needs_no_host() -> None:
    out = whole_and_bytewise(req("GET /x HTTP/1.0", b""))
    assert out.status is None
    assert out.heads[0].version == "1.0"


def test_content_length_body() -> None:
    body = b"hello\r\n\r\nGET / HTTP/1.1\r\n"  # body bytes that look like a request stay body
    out = whole_and_bytewise(
        req("POST /up HTTP/1.1", H + b"Content-Length: %d\r\n" % len(body), body)
    )
    assert out.status is None
    head, data, end = out.events
    assert isinstance(head, Head)
    assert (head.body_kind, head.content_length) == (BODY_LENGTH, len(body))
    assert data == Body(body)
    assert end == END


def test_content_length_zero_is_no_body() -> None:
    out = whole_and_bytewise(req("POST / HTTP/1.1", H + b"Content-Length: 0\r\n") + req())
    assert out.status is None
    assert [type(e) for e in out.events] == [Head, str, Head, str]
    assert out.heads[0].body_kind == BODY_NONE


def test_chunked_body_with_extensions_and_trailers() -> None:
    chunks = b'5;name=value;q="quoted"\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\n'
    out = whole_and_bytewise(
        req("POST / HTTP/1.1", H + b"Transfer-Encoding: chunked\r\n", chunks)
        + req("GET /next HTTP/1.1")
    )
    assert out.status is None
    head, data, end, nxt, end2 = out.events
    assert isinstance(head, Head) and isinstance(nxt, Head)
    assert head.body_kind == BODY_CHUNKED
    assert data == Body(b"hello 0123456789")
    assert nxt.target == b"/next"
    assert end == end2 == END


def test_transfer_coding_name_is_case_insensitive() -> None:
    out = whole_and_bytewise(
        req("POST / HTTP/1.1", H + b"Transfer-Encoding: Chunked\r\n", b"0\r\n\r\n")
    )
    assert out.status is None
    assert out.heads[0].body_kind == BODY_CHUNKED


def test_chunk_size_hex_digits_either_case() -> None:
    body = b"a" * 0xAB
    out = whole_and_bytewise(
        req(
            "POST / HTTP/1.1",
            H + b"Transfer-Encoding: chunked\r\n",
            b"aB\r\n" + body + b"\r\n0\r\n\r\n",
        )
    )
    assert out.status is None
    assert Body(body) in out.events


@pytest.mark.parametrize("value", [b"100-continue", b"100-Continue"])
def test_expect_continue(value: bytes) -> None:
    out = whole_and_bytewise(
        req("POST / HTTP/1.1", H + b"Content-Length: 2\r\nExpect: " + value + b"\r\n", b"ok")
    )
    assert out.status is None
    assert out.heads[0].expect_continue is True


def test_absolute_form_target_is_accepted() -> None:
    # RFC 9112 §3.2.2: a server MUST accept absolute-form.
    out = whole_and_bytewise(req("GET http://example.com/p/q?x=1 HTTP/1.1"))
    assert out.status is None
    assert out.heads[0].target == b"http://example.com/p/q?x=1"
    assert split_target(out.heads[0].target) == (b"/p/q", b"x=1")


def test_asterisk_form() -> None:
    out = whole_and_bytewise(req("OPTIONS * HTTP/1.1"))
    assert out.status is None
    assert out.heads[0].target == b"*"


def test_leading_empty_line_is_ignored() -> None:
    # RFC 9112 §2.2: a server SHOULD ignore at least one empty line before the request-line.
    out = whole_and_bytewise(b"\r\n" + req())
    assert out.status is None
    assert len(out.heads) == 1


@pytest.mark.parametrize(
    "host",
    [
        b"example.com",
        b"example.com:8080",
        b"127.0.0.1:1",
        b"[::1]:80",
        b"xn--bcher-kva.example",
        b"",
    ],
)
def test_valid_host(host: bytes) -> None:
    out = whole_and_bytewise(req(fields=b"Host: " + host + b"\r\n"))
    assert out.status is None


def test_upgrade_is_declined_by_answering_normally() -> None:
    # RFC 9110 §7.8: a server may ignore Upgrade and answer in HTTP/1.1; the connection stays
    # HTTP/1.1, so the next pipelined request must be read normally (curl --http2 sends this).
    upgrade = (
        H
        + b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
        + b"HTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n"
    )
    out = whole_and_bytewise(req("GET /a HTTP/1.1", upgrade) + req("GET /b HTTP/1.1"))
    assert out.status is None
    assert [h.target for h in out.heads] == [b"/a", b"/b"]
    assert out.events.count(END) == 2


def test_connect_is_reported_then_reading_stops() -> None:
    # A CONNECT request is a request the application can answer (404/405); the bytes after
    # it would be a tunnel, which we never open.
    out = whole_and_bytewise(req("CONNECT example.com:443 HTTP/1.1", b"Host: example.com:443\r\n"))
    assert out.status is None
    [head] = out.heads
    assert head.method == "CONNECT"
    assert head.keep_alive is False


def test_pipelined_requests_in_order() -> None:
    stream = b"".join(req(f"GET /{i} HTTP/1.1") for i in range(100))
    out = whole_and_bytewise(stream)
    assert out.status is None
    assert [h.target for h in out.heads] == [f"/{i}".encode() for i in range(100)]
    assert out.events.count(END) == 100


def test_many_small_pipelined_requests_do_not_add_up_to_431() -> None:
    # The head allowance is per request: a long pipeline of small heads is not one big head.
    limits = Limits(max_header_bytes=256)
    stream = b"".join(req(f"GET /{i} HTTP/1.1") for i in range(200))
    assert len(stream) > 20 * limits.max_header_bytes
    out = whole_and_bytewise(stream, limits)
    assert out.status is None
    assert len(out.heads) == 200


# -- limits --------------------------------------------------------------------------------------


def test_default_limits() -> None:
    limits = Limits()
    assert limits.max_target == 8 * 1024
    assert limits.max_header_bytes == 64 * 1024
    assert limits.max_header_count == 100
    assert limits.max_body == 1024 * 1024


def test_target_limit_boundary() -> None:
    limits = Limits(max_target=64)
    at_limit = "/" + "a" * 63
    assert whole_and_bytewise(req(f"GET {at_limit} HTTP/1.1"), limits).status is None
    assert whole_and_bytewise(req(f"GET {at_limit}b HTTP/1.1"), limits).status == 414


def test_default_target_limit_is_8_kib() -> None:
    ok = "/" + "a" * (8 * 1024 - 1)
    assert read(req(f"GET {ok} HTTP/1.1")).status is None
    assert read(req(f"GET {ok}a HTTP/1.1")).status == 414


def test_endless_target_is_refused_early() -> None:
    limits = Limits(max_target=64)
    out = read([b"GET /"] + [b"a"] * 10_000, limits)
    assert out.status == 414
    assert out.fed <= 64 + 16  # refused as soon as the limit is passed, not at the end


def test_header_count_boundary() -> None:
    limits = Limits(max_header_count=10)
    nine = b"".join(b"X-%d: v\r\n" % i for i in range(9))
    assert whole_and_bytewise(req(fields=H + nine), limits).status is None
    assert whole_and_bytewise(req(fields=H + nine + b"X-last: v\r\n"), limits).status == 431


def test_default_header_count_is_100() -> None:
    ninety_nine = b"".join(b"X-%d: v\r\n" % i for i in range(99))
    assert read(req(fields=H + ninety_nine)).status is None
    assert read(req(fields=H + ninety_nine + b"X-last: v\r\n")).status == 431


def test_header_bytes_limit() -> None:
    limits = Limits(max_header_bytes=1024)
    assert (
        whole_and_bytewise(req(fields=H + b"X-A: " + b"v" * 600 + b"\r\n"), limits).status is None
    )
    assert (
        whole_and_bytewise(req(fields=H + b"X-A: " + b"v" * 2000 + b"\r\n"), limits).status == 431
    )
    many = b"".join(b"X-%d: %s\r\n" % (i, b"v" * 100) for i in range(20))  # > 1 KiB in small fields
    assert whole_and_bytewise(req(fields=H + many), limits).status == 431


def test_default_header_block_limit_is_64_kib() -> None:
    fields = b"".join(b"X-%d: %s\r\n" % (i, b"v" * 1000) for i in range(60))  # ~60 KiB
    assert read(req(fields=H + fields)).status is None
    big = b"".join(b"X-%d: %s\r\n" % (i, b"v" * 1000) for i in range(70))  # ~70 KiB, 71 fields
    assert read(req(fields=H + big)).status == 431


@pytest.mark.parametrize("way", ["whole", "bytewise"])
def test_endless_header_line_is_refused_within_the_allowance(way: str) -> None:
    # httptools buffers a header field until it ends: without a bound, memory grows forever.
    limits = Limits(max_header_bytes=1024)
    endless = b"GET / HTTP/1.1\r\nX-Endless: " + b"v" * 20_000
    parts = [endless] if way == "whole" else [endless[i : i + 1] for i in range(len(endless))]
    out = read(parts, limits)
    assert out.status == 431
    if way == "bytewise":
        assert out.fed <= limits.max_header_bytes + 1


def test_body_limit_boundary_content_length() -> None:
    limits = Limits(max_body=100)
    ok = req("POST / HTTP/1.1", H + b"Content-Length: 100\r\n", b"x" * 100)
    assert whole_and_bytewise(ok, limits).status is None
    over = req("POST / HTTP/1.1", H + b"Content-Length: 101\r\n", b"x" * 101)
    out = whole_and_bytewise(over, limits)
    assert out.status == 413
    assert not any(isinstance(e, Body) for e in out.events)  # refused from the head alone


def test_body_limit_boundary_chunked() -> None:
    limits = Limits(max_body=100)
    te = H + b"Transfer-Encoding: chunked\r\n"
    ok = req(
        "POST / HTTP/1.1", te, b"32\r\n" + b"x" * 50 + b"\r\n32\r\n" + b"y" * 50 + b"\r\n0\r\n\r\n"
    )
    assert whole_and_bytewise(ok, limits).status is None
    over = req(
        "POST / HTTP/1.1", te, b"32\r\n" + b"x" * 50 + b"\r\n33\r\n" + b"y" * 51 + b"\r\n0\r\n\r\n"
    )
    out = whole_and_bytewise(over, limits)
    assert out.status == 413
    delivered = sum(len(e.data) for e in out.events if isinstance(e, Body))
    assert delivered <= limits.max_body


def test_default_body_limit_is_1_mib() -> None:
    assert read(req("POST / HTTP/1.1", H + b"Content-Length: 1048576\r\n")).status is None
    assert read(req("POST / HTTP/1.1", H + b"Content-Length: 1048577\r\n")).status == 413


@pytest.mark.parametrize("way", ["whole", "bytewise", "head-then-body"])
def test_chunk_extensions_are_bounded(way: str) -> None:
    # llhttp skips extensions without limit; the reader must refuse an endless one however the
    # bytes arrive (with the head, in one later read, or one byte at a time).
    limits = Limits(max_chunk_overhead=256)
    head = req("POST / HTTP/1.1", H + b"Transfer-Encoding: chunked\r\n")
    body = b"5;ext=" + b"e" * 5000 + b"\r\nhello\r\n0\r\n\r\n"
    if way == "whole":
        parts = [head + body]
    elif way == "bytewise":
        data = head + body
        parts = [data[i : i + 1] for i in range(len(data))]
    else:
        parts = [head, body]
    assert read(parts, limits).status == 400


def test_small_chunk_extensions_pass() -> None:
    limits = Limits(max_chunk_overhead=256)
    body = b"5;ext=" + b"e" * 100 + b"\r\nhello\r\n0\r\n\r\n"
    out = whole_and_bytewise(
        req("POST / HTTP/1.1", H + b"Transfer-Encoding: chunked\r\n", body), limits
    )
    assert out.status is None
    assert Body(b"hello") in out.events


# -- refusals ------------------------------------------------------------------------------------

TE = H + b"Transfer-Encoding: chunked\r\n"

# (id, request bytes, acceptable statuses). Each row names the rule it checks.
REFUSALS: list[tuple[str, bytes, frozenset[int]]] = [
    # Content-Length: digits only, bounded, no duplicates (RFC 9112 §6.3, like nginx).
    (
        "cl-plus-sign",
        req("POST / HTTP/1.1", H + b"Content-Length: +5\r\n", b"hello"),
        frozenset({400}),
    ),
    ("cl-negative", req("POST / HTTP/1.1", H + b"Content-Length: -1\r\n"), frozenset({400})),
    ("cl-hex", req("POST / HTTP/1.1", H + b"Content-Length: 0x5\r\n", b"hello"), frozenset({400})),
    (
        "cl-list",
        req("POST / HTTP/1.1", H + b"Content-Length: 5, 5\r\n", b"hello"),
        frozenset({400}),
    ),
    ("cl-empty", req("POST / HTTP/1.1", H + b"Content-Length: \r\n"), frozenset({400})),
    (
        "cl-inner-space",
        req("POST / HTTP/1.1", H + b"Content-Length: 1 0\r\n", b"x" * 10),
        frozenset({400}),
    ),
    (
        "cl-duplicate-equal",
        req("POST / HTTP/1.1", H + b"Content-Length: 5\r\nContent-Length: 5\r\n", b"hello"),
        frozenset({400}),
    ),
    (
        "cl-duplicate-differ",
        req("POST / HTTP/1.1", H + b"Content-Length: 5\r\nContent-Length: 6\r\n", b"hello!"),
        frozenset({400}),
    ),
    (
        "cl-overflow",
        req("POST / HTTP/1.1", H + b"Content-Length: 99999999999999999999999999\r\n"),
        frozenset({400}),
    ),
    (
        "cl-overlong-digits",  # "bounded in length": 30 digits is no honest length (nginx: off_t)
        req("POST / HTTP/1.1", H + b"Content-Length: 000000000000000000000000000005\r\n", b"hello"),
        frozenset({400}),
    ),
    # Transfer-Encoding: must be exactly chunked (anything else 501); TE with CL, or in 1.0, 400.
    ("te-gzip", req("POST / HTTP/1.1", H + b"Transfer-Encoding: gzip\r\n"), frozenset({501})),
    (
        "te-identity",
        req("POST / HTTP/1.1", H + b"Transfer-Encoding: identity\r\n"),
        frozenset({501}),
    ),
    (
        "te-gzip-chunked",
        req("POST / HTTP/1.1", H + b"Transfer-Encoding: gzip, chunked\r\n", b"0\r\n\r\n"),
        frozenset({501}),
    ),
    (
        "te-chunked-not-last",  # RFC 9112 §6.3 says 400; the spec's "anything else" says 501
        req("POST / HTTP/1.1", H + b"Transfer-Encoding: chunked, gzip\r\n", b"0\r\n\r\n"),
        frozenset({400, 501}),
    ),
    (
        "te-chunked-twice",
        req("POST / HTTP/1.1", TE + b"Transfer-Encoding: chunked\r\n", b"0\r\n\r\n"),
        frozenset({400, 501}),
    ),
    ("te-empty", req("POST / HTTP/1.1", H + b"Transfer-Encoding: \r\n"), frozenset({400, 501})),
    (
        "cl-then-te",
        req(
            "POST / HTTP/1.1",
            H + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
            b"0\r\n\r\n",
        ),
        frozenset({400}),
    ),
    (
        "te-then-cl",
        req("POST / HTTP/1.1", TE + b"Content-Length: 5\r\n", b"0\r\n\r\n"),
        frozenset({400}),
    ),
    (
        "te-in-http10",
        req("POST / HTTP/1.0", b"Transfer-Encoding: chunked\r\n", b"0\r\n\r\n"),
        frozenset({400}),
    ),
    # Chunk framing: hex only, overflow-safe, CRLF after the data (RFC 9112 §7.1).
    ("chunk-size-0x", req("POST / HTTP/1.1", TE, b"0x5\r\nhello\r\n0\r\n\r\n"), frozenset({400})),
    (
        "chunk-size-negative",
        req("POST / HTTP/1.1", TE, b"-5\r\nhello\r\n0\r\n\r\n"),
        frozenset({400}),
    ),
    (
        "chunk-size-leading-space",
        req("POST / HTTP/1.1", TE, b" 5\r\nhello\r\n0\r\n\r\n"),
        frozenset({400}),
    ),
    (
        "chunk-size-not-hex",
        req("POST / HTTP/1.1", TE, b"g\r\nhello\r\n0\r\n\r\n"),
        frozenset({400}),
    ),
    ("chunk-size-empty", req("POST / HTTP/1.1", TE, b"\r\nhello\r\n0\r\n\r\n"), frozenset({400})),
    (
        "chunk-size-overflow",
        req("POST / HTTP/1.1", TE, b"fffffffffffffffffffff\r\nhello\r\n0\r\n\r\n"),
        frozenset({400}),
    ),
    ("chunk-data-no-crlf", req("POST / HTTP/1.1", TE, b"5\r\nhelloXX0\r\n\r\n"), frozenset({400})),
    (
        "chunk-data-too-long",
        req("POST / HTTP/1.1", TE, b"2\r\nhello\r\n0\r\n\r\n"),
        frozenset({400}),
    ),
    ("chunk-size-bare-lf", req("POST / HTTP/1.1", TE, b"5\nhello\r\n0\r\n\r\n"), frozenset({400})),
    # Field syntax (RFC 9112 §5): no space before the colon, every line has one, no bare CR.
    ("space-before-colon", req(fields=H + b"X-A : 1\r\n"), frozenset({400})),
    ("tab-before-colon", req(fields=H + b"X-A\t: 1\r\n"), frozenset({400})),
    ("line-without-colon", req(fields=H + b"X-A 1\r\n"), frozenset({400})),
    ("bare-cr-in-value", req(fields=H + b"X-A: 1\r2\r\n"), frozenset({400})),
    ("bare-cr-ends-field", b"GET / HTTP/1.1\r\nHost: x\rX-A: 1\r\n\r\n", frozenset({400})),
    ("bare-cr-ends-request-line", b"GET / HTTP/1.1\rHost: x\r\n\r\n", frozenset({400})),
    ("obs-fold", req(fields=H + b"X-A: 1\r\n 2\r\n"), frozenset({400})),
    ("nul-in-value", req(fields=H + b"X-A: 1\x002\r\n"), frozenset({400})),
    ("bad-char-in-name", req(fields=H + b"X(A): 1\r\n"), frozenset({400})),
    ("empty-name", req(fields=H + b": 1\r\n"), frozenset({400})),
    # Host: present, single and valid on 1.1 (RFC 9112 §3.2).
    ("host-missing", req(fields=b""), frozenset({400})),
    ("host-missing-absolute-form", req("GET http://example.com/ HTTP/1.1", b""), frozenset({400})),
    ("host-twice", req(fields=H + H), frozenset({400})),
    ("host-twice-differ", req(fields=H + b"Host: other.example\r\n"), frozenset({400})),
    ("host-space", req(fields=b"Host: a b\r\n"), frozenset({400})),
    ("host-slash", req(fields=b"Host: a/b\r\n"), frozenset({400})),
    ("host-userinfo", req(fields=b"Host: user@a\r\n"), frozenset({400})),
    ("host-bad-port", req(fields=b"Host: a:80x\r\n"), frozenset({400})),
    # Request line.
    ("space-in-target", req("GET /a b HTTP/1.1"), frozenset({400})),
    ("bad-method-token", req("G(T / HTTP/1.1"), frozenset({400})),
    ("unknown-method", req("BREW / HTTP/1.1"), frozenset({501})),
    ("lowercase-version", req("GET / http/1.1"), frozenset({400})),
    ("not-http", req("GET / FOO/1.1"), frozenset({400})),
    # Versions other than 1.0 and 1.1: 505.
    ("http-2.0", req("GET / HTTP/2.0"), frozenset({505})),
    ("http-1.2", req("GET / HTTP/1.2"), frozenset({505})),
    ("http-3.0", req("GET / HTTP/3.0"), frozenset({505})),
    ("http-0.9", req("GET / HTTP/0.9", b""), frozenset({505})),
    ("garbage-version", req("GET / HTTP/x.y"), frozenset({400, 505})),
    ("h2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", frozenset({505})),
    # Expectations other than 100-continue (RFC 9110 §10.1.1).
    ("expect-other", req(fields=H + b"Expect: teapot\r\n"), frozenset({417})),
]


@pytest.mark.parametrize(("data", "statuses"), [pytest.param(d, s, id=i) for i, d, s in REFUSALS])
def test_refusal(data: bytes, statuses: frozenset[int]) -> None:
    out = whole_and_bytewise(data)
    assert out.status in statuses, f"got {out.status}, events {out.events}"


def test_bare_lf_line_ends_are_400_or_accepted_never_505() -> None:
    # RFC 9112 §2.2: a recipient MAY accept a bare LF as a line terminator; refusing is fine,
    # but the version is valid, so 505 would be a lie.
    out = whole_and_bytewise(b"GET / HTTP/1.1\nHost: x\n\n")
    assert out.status in (None, 400)


def test_refusal_leaves_no_request_behind() -> None:
    # TE + CL is request smuggling: the bytes after it must never become a request.
    smuggle = req(
        "POST / HTTP/1.1", H + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"
    )
    out = whole_and_bytewise(smuggle + req("GET /smuggled HTTP/1.1"))
    assert out.status == 400
    assert all(h.target != b"/smuggled" for h in out.heads)


def test_good_request_before_a_bad_one_is_delivered() -> None:
    out = whole_and_bytewise(req("GET /good HTTP/1.1") + req("GET / HTTP/1.1", H + b"X-A : 1\r\n"))
    assert out.status == 400
    assert [h.target for h in out.heads] == [b"/good"]
    assert out.events[1] == END


# -- split_target --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "path", "query"),
    [
        (b"/", b"/", b""),
        (b"/a/b?x=1&y=2", b"/a/b", b"x=1&y=2"),
        (b"/a?", b"/a", b""),
        (b"/a?b?c", b"/a", b"b?c"),  # only the first ? separates
        (b"/a#frag", b"/a", b""),  # a fragment never belongs in a target: dropped
        (b"/a?b#frag", b"/a", b"b"),
        (b"http://example.com/p?q=1", b"/p", b"q=1"),
        (b"http://example.com", b"/", b""),  # absolute-form with an empty path
        (b"http://example.com?q=1", b"/", b"q=1"),
        (b"https://user@example.com:8443/p/", b"/p/", b""),
        (b"*", b"*", b""),
    ],
)
def test_split_target(target: bytes, path: bytes, query: bytes) -> None:
    assert split_target(target) == (path, query)


# -- properties ----------------------------------------------------------------------------------


def _chunked(body: bytes, sizes: list[int]) -> bytes:
    out, pos = bytearray(), 0
    for size in sizes:
        piece = body[pos : pos + size]
        if not piece:
            break
        out += b"%x\r\n" % len(piece) + piece + b"\r\n"
        pos += len(piece)
    if pos < len(body):
        out += b"%x\r\n" % (len(body) - pos) + body[pos:] + b"\r\n"
    return bytes(out + b"0\r\n\r\n")


@st.composite
def request_bytes(draw: st.DrawFn) -> tuple[bytes, Head, bytes]:
    """One valid request, with the head and body the reader must report for it."""
    kind = draw(st.sampled_from(["get", "head", "length", "chunked", "http10"]))
    path = "/" + draw(st.text("abcxyz019-._~%2F", max_size=20))
    query = draw(st.sampled_from(["", "?a=1", "?q=x%20y&z"]))
    target = (path + query).encode()
    extra = draw(
        st.lists(st.sampled_from([b"Accept: */*", b"X-Id: 7", b"Cookie: a=b; c=d"]), max_size=3)
    )
    fields = H + b"".join(e + b"\r\n" for e in extra)
    body = draw(st.binary(max_size=300)) if kind in ("length", "chunked") else b""
    if kind in ("get", "head", "http10"):
        method = "HEAD" if kind == "head" else "GET"
        version = "1.0" if kind == "http10" else "1.1"
        if version == "1.0":
            fields = b"Connection: keep-alive\r\n" + fields
        data = f"{method} ".encode() + target + f" HTTP/{version}\r\n".encode() + fields + b"\r\n"
        headers = tuple((n.lower(), v) for n, v in _parse_fields(fields))
        return data, Head(method, target, version, headers, True, BODY_NONE, 0, False), b""
    if kind == "length":
        fields += b"Content-Length: %d\r\n" % len(body)
        framed = body
        body_kind = BODY_LENGTH if body else BODY_NONE
        length = len(body)
    else:
        fields += b"Transfer-Encoding: chunked\r\n"
        sizes = draw(st.lists(st.integers(1, 100), max_size=5))
        framed = _chunked(body, sizes)
        body_kind = BODY_CHUNKED
        length = 0
    data = b"POST " + target + b" HTTP/1.1\r\n" + fields + b"\r\n" + framed
    headers = tuple((n.lower(), v) for n, v in _parse_fields(fields))
    return data, Head("POST", target, "1.1", headers, True, body_kind, length, False), body


def _parse_fields(fields: bytes) -> list[tuple[bytes, bytes]]:
    out = []
    for line in fields.split(b"\r\n"):
        if line:
            name, _, value = line.partition(b":")
            out.append((name, value.strip()))
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(request_bytes(), min_size=1, max_size=8), st.lists(st.integers(0, 5000), max_size=40)
)
def test_pipelined_stream_at_random_split_points(
    requests: list[tuple[bytes, Head, bytes]], cuts: list[int]
) -> None:
    stream = b"".join(data for data, _, _ in requests)
    expected: list[Event] = []
    for _, head, body in requests:
        expected.append(head)
        if body:
            expected.append(Body(body))
        expected.append(END)
    whole = read(stream)
    split = read(pieces(stream, cuts))
    assert whole.status is None
    assert whole.events == expected
    assert split.events == expected
    assert split.status is None


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(REFUSALS), st.randoms(use_true_random=False))
def test_refusals_at_random_split_points(
    case: tuple[str, bytes, frozenset[int]], rnd: random.Random
) -> None:
    _, data, _ = case
    cuts = [rnd.randrange(len(data) + 1) for _ in range(rnd.randrange(1, 12))]
    whole = read(data)
    split = read(pieces(data, cuts))
    assert comparable(split) == comparable(whole)


@pytest.mark.parametrize(
    ("parts", "status"),
    [
        # llhttp refuses "V" at once (no method starts with it); the byte after it decides.
        ([b"V", b"\x00"], 400),
        ([b"V\x00"], 400),
        ([b"V", b" / HTTP/1.1\r\nHost: a\r\n\r\n"], 501),
        ([b"B", b"REW", b" / HTTP/1.1\r\nHost: a\r\n\r\n"], 501),
        ([b"BREW / HTTP/1.1\r\nHost: a\r\n\r\n"], 501),
        ([b"BR", b"E", b"W(", b" / HTTP/1.1\r\n\r\n"], 400),
        ([b"X" * 25 + b" / HTTP/1.1\r\n\r\n"], 400),  # longer than any method we accept
        ([b"X" * 13, b"X" * 12], 400),  # known to be too long before its end arrives
        # After a pipelined request in the same read, only the refused one's bytes count.
        ([b"GET / HTTP/1.1\r\nHost: a\r\n\r\nBREW / HTTP/1.1\r\n\r\n"], 501),
    ],
)
def test_an_unknown_method_is_judged_once_it_ends(parts: list[bytes], status: int) -> None:
    assert read(parts).status == status


def test_an_unfinished_unknown_method_waits_under_the_header_timeout() -> None:
    reader = RequestReader(Recorder())
    reader.feed(b"BREW")  # could still become "BREW / HTTP/1.1": no answer yet
    assert reader.mid_message  # so the connection applies the header timeout, not idle
    with pytest.raises(ProtocolError) as refused:
        reader.feed(b" / HTTP/1.1\r\n\r\n")
    assert refused.value.status == 501


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.lists(st.integers(0, 400), max_size=10))
def test_arbitrary_bytes_end_in_events_or_a_refusal(data: bytes, cuts: list[int]) -> None:
    # "Anything malformed -> 400": no input may escape as anything but a ProtocolError.
    limits = Limits(max_header_bytes=256, max_target=64, max_body=128)
    whole = read(data, limits)
    split = read(pieces(data, cuts), limits)
    assert split.status == whole.status
    if whole.status is None:
        assert split.events == whole.events


@settings(max_examples=200, deadline=None)
@given(request_bytes(), st.binary(min_size=1, max_size=200))
def test_garbage_after_a_valid_request_never_loses_it(
    first: tuple[bytes, Head, bytes], garbage: bytes
) -> None:
    data, head, _ = first
    out = read(data + garbage)
    assert out.heads[0] == head
