"""Static files through the server: Range, preconditions, MIME types, folders, precompressed
siblings, and path safety.

Every server test runs over both file-body paths (``zero_copy``: sendfile / pread) and both event
loops (uvloop / asyncio). Requests are written as raw bytes (:func:`static_fixtures.request`), so
nothing normalises a path or a header on the way, and responses are parsed strictly.

The pure Range and precondition functions have their own exhaustive tables
(``tests/test_ranges.py``, ``tests/test_conditional.py``); the tables here are a few rows each,
to show the server wires those functions in the right order and frames the answers correctly.
"""

from __future__ import annotations

import gzip
import os
import posixpath
import socket
import stat
import time
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import HttpResponse, RawClient
from static_fixtures import (
    HELLO,
    INDEX,
    OLD_MTIME,
    SECRET,
    Connect,
    Media,
    StartStatic,
    StaticProcess,
    fetch,
    parse_byteranges,
    parse_content_range,
    pattern,
    request,
    set_mtime,
)
from wirespeed.proto.httpdate import format_http_date
from wirespeed.server.mime import extension
from wirespeed.server.static import _resolve, resolve_path

pytest_plugins = ["static_fixtures"]

both_loops = pytest.mark.asyncio(loop_factories=["uvloop", "asyncio"])

ALPHA = b"abcdefghijklmnopqrstuvwxyz"
LM = format_http_date(OLD_MTIME)
EARLIER = format_http_date(OLD_MTIME - 3600)
LATER = format_http_date(OLD_MTIME + 3600)


def assert_validators(resp: HttpResponse) -> None:
    """ETag (strong) and Last-Modified on a file response (the spec: on every one)."""
    etag = resp.header("etag")
    assert etag is not None and etag.startswith('"') and etag.endswith('"'), etag
    assert resp.header("last-modified") == LM


# -- plain GET and HEAD ----------------------------------------------------------------------------


@both_loops
async def test_get_sends_the_file_with_validators(static_server: StartStatic, media: Media) -> None:
    server = await static_server()
    resp = await fetch(server.port, "/data.bin")
    assert resp.status == 200
    assert resp.body == media.files["data.bin"]
    assert resp.header("content-length") == str(len(media.files["data.bin"]))
    assert resp.header("content-type") == "application/octet-stream"
    assert resp.header("accept-ranges") == "bytes"
    assert_validators(resp)


@both_loops
async def test_head_has_the_get_fields_and_no_body(
    static_server: StartStatic, media: Media, connect: Connect
) -> None:
    server = await static_server()
    get = await fetch(server.port, "/hello.txt")
    client = await connect(server.port)
    # HEAD then GET on one connection: a HEAD that leaked a body would corrupt the second answer.
    await client.send(request("/hello.txt", method="HEAD") + request("/hello.txt"))
    head = await client.response("HEAD")
    after = await client.response()
    assert head.status == 200
    assert head.body == b""
    for name in ("content-length", "content-type", "etag", "last-modified", "accept-ranges"):
        assert head.header(name) == get.header(name), name
    assert after.status == 200 and after.body == HELLO


@both_loops
async def test_pipelined_file_responses_come_back_in_order(
    static_server: StartStatic, media: Media, connect: Connect
) -> None:
    # Small files are answered at once from memory, large ones by sendfile in a task, missing
    # ones with a 404: one write of 60 requests must get 60 answers in request order.
    server = await static_server()
    big = media.files["data.bin"]
    paths = ["/hello.txt", "/data.bin", "/missing.txt", "/empty.txt"] * 15
    client = await connect(server.port)
    await client.send(b"".join(request(p) for p in paths))
    for path in paths:
        resp = await client.response()
        expected = {"/hello.txt": HELLO, "/data.bin": big, "/empty.txt": b""}.get(path)
        if expected is None:
            assert resp.status == 404, path
        else:
            assert (resp.status, resp.body) == (200, expected), path


@both_loops
async def test_empty_file(static_server: StartStatic) -> None:
    server = await static_server()
    resp = await fetch(server.port, "/empty.txt")
    assert (resp.status, resp.body, resp.header("content-length")) == (200, b"", "0")
    assert_validators(resp)


@both_loops
async def test_only_get_and_head_are_allowed(static_server: StartStatic) -> None:
    server = await static_server()
    resp = await fetch(server.port, "/hello.txt", method="DELETE")
    assert resp.status == 405
    assert resp.header("allow") == "GET, HEAD"
    assert HELLO not in resp.body


@both_loops
async def test_missing_file_is_404(static_server: StartStatic) -> None:
    server = await static_server()
    resp = await fetch(server.port, "/nope.txt")
    assert resp.status == 404


@both_loops
async def test_names_are_percent_decoded_and_the_query_ignored(
    static_server: StartStatic, media: Media
) -> None:
    media.add("é café.txt", b"unicode")
    media.add("100%.txt", b"percent")
    media.add("a+b.txt", b"plus")
    os.makedirs(media.root / "raw")
    (media.root / "raw").joinpath(os.fsdecode(b"\xff.bin")).write_bytes(b"not utf-8")
    server = await static_server()
    for target, body in [
        ("/%C3%A9%20caf%C3%A9.txt", b"unicode"),
        ("/100%25.txt", b"percent"),
        ("/a+b.txt", b"plus"),
        ("/raw/%FF.bin", b"not utf-8"),
        ("/hello.txt?v=3&x=%2e%2e", HELLO),
    ]:
        resp = await fetch(server.port, target)
        assert (resp.status, resp.body) == (200, body), target


@both_loops
async def test_http10_client_gets_the_file_then_the_close(static_server: StartStatic) -> None:
    server = await static_server()
    client = await RawClient.connect(server.port)
    try:
        await client.send(b"GET /hello.txt HTTP/1.0\r\n\r\n")
        resp = await client.response()
        assert (resp.status, resp.body) == (200, HELLO)
        assert await client.read_to_eof(timeout=2) == b""
    finally:
        await client.close()


@both_loops
async def test_last_modified_never_later_than_date(
    static_server: StartStatic, media: Media
) -> None:
    # RFC 9110 §8.8.2.1: a file dated in the future is announced as modified "now".
    media.add("future.txt", b"from the future", mtime=time.time() + 86400)
    server = await static_server()
    resp = await fetch(server.port, "/future.txt")
    date, modified = resp.header("date"), resp.header("last-modified")
    assert date is not None and modified is not None
    assert parsedate_to_datetime(modified) <= parsedate_to_datetime(date)


@both_loops
async def test_file_replaced_between_requests_gets_new_validators(
    static_server: StartStatic, media: Media
) -> None:
    # Size and mtime come from the descriptor being sent: a rewrite shows in the next ETag.
    server = await static_server()
    first = await fetch(server.port, "/hello.txt")
    media.add("hello.txt", b"rewritten!\n", mtime=OLD_MTIME + 60)
    second = await fetch(server.port, "/hello.txt")
    assert second.body == b"rewritten!\n"
    assert second.header("etag") != first.header("etag")
    assert second.header("last-modified") == format_http_date(OLD_MTIME + 60)


# -- Range (RFC 9110 §14), table-driven through the server -----------------------------------------

# (id, Range value, status, Content-Range, body or list of (first, last) parts)
RANGE_ROWS = [
    ("single", "bytes=0-4", 206, "bytes 0-4/26", b"abcde"),
    ("open-ended", "bytes=20-", 206, "bytes 20-25/26", b"uvwxyz"),
    ("suffix", "bytes=-3", 206, "bytes 23-25/26", b"xyz"),
    ("suffix-longer-than-file", "bytes=-100", 206, "bytes 0-25/26", ALPHA),
    ("last-past-end-clamped", "bytes=24-99", 206, "bytes 24-25/26", b"yz"),
    ("multipart", "bytes=0-1,-2", 206, None, [(0, 1), (24, 25)]),
    ("multipart-keeps-request-order", "bytes=10-11,0-0,5-6", 206, None, [(10, 11), (0, 0), (5, 6)]),
    # Overlapping or adjacent ranges merge; a single range is never multipart (§15.3.7.2).
    ("overlap-merged-single", "bytes=0-5,3-9", 206, "bytes 0-9/26", ALPHA[:10]),
    ("adjacent-merged-single", "bytes=0-1,2-3", 206, "bytes 0-3/26", b"abcd"),
    ("unsatisfiable-start", "bytes=26-", 416, "bytes */26", b""),
    ("unsatisfiable-zero-suffix", "bytes=-0", 416, "bytes */26", b""),
    ("unsatisfiable-all-parts", "bytes=30-40,50-", 416, "bytes */26", b""),
    ("invalid-ignored", "bytes=5-4", 200, None, ALPHA),
    ("unknown-unit-ignored", "items=0-4", 200, None, ALPHA),
    ("garbage-ignored", "bytes=abc", 200, None, ALPHA),
    # More than 200 specs (Apache's MaxRanges, CVE-2011-3192): the whole file, not 201 parts.
    (
        "too-many-ranges",
        "bytes=" + ",".join(f"{i}-{i}" for i in range(0, 402, 2)),
        200,
        None,
        ALPHA,
    ),
]


@both_loops
@pytest.mark.parametrize(
    ("value", "status", "content_range", "expected"),
    [row[1:] for row in RANGE_ROWS],
    ids=[row[0] for row in RANGE_ROWS],
)
async def test_range(
    static_server: StartStatic,
    media: Media,
    value: str,
    status: int,
    content_range: str | None,
    expected: bytes | list[tuple[int, int]],
) -> None:
    media.add("alpha.txt", ALPHA)
    server = await static_server()
    resp = await fetch(server.port, "/alpha.txt", headers={"Range": value})
    assert resp.status == status
    assert resp.header("accept-ranges") == "bytes"
    assert_validators(resp)
    assert resp.header("content-length") == str(len(resp.body))
    if isinstance(expected, list):
        parts = parse_byteranges(resp)
        assert [(p.start, p.end) for p in parts] == expected
        for p in parts:
            assert p.size == len(ALPHA)
            assert p.data == ALPHA[p.start : p.end + 1]
            assert p.content_type == "text/plain; charset=utf-8"
        assert resp.header("content-range") is None
        return
    assert resp.header("content-range") == content_range
    assert resp.body == expected
    if status == 206:
        assert resp.header("content-type") == "text/plain; charset=utf-8"


@both_loops
async def test_head_ignores_range(static_server: StartStatic, media: Media) -> None:
    # RFC 9110 §14.2: Range is defined for GET only.
    media.add("alpha.txt", ALPHA)
    server = await static_server()
    resp = await fetch(server.port, "/alpha.txt", method="HEAD", headers={"Range": "bytes=0-4"})
    assert resp.status == 200
    assert resp.header("content-length") == "26"
    assert resp.header("content-range") is None


@both_loops
async def test_range_on_empty_file_sends_the_empty_file(static_server: StartStatic) -> None:
    server = await static_server()
    resp = await fetch(server.port, "/empty.txt", headers={"Range": "bytes=0-"})
    assert (resp.status, resp.body, resp.header("content-length")) == (200, b"", "0")


@both_loops
async def test_ranges_on_one_keep_alive_connection(
    static_server: StartStatic, media: Media, connect: Connect
) -> None:
    # Pipelined range requests, answered in order, each framed exactly (both body paths).
    data = media.files["data.bin"]
    server = await static_server()
    client = await connect(server.port)
    values = ["bytes=0-99", "bytes=-1000", "bytes=5-9,100-199,-3", "bytes=199999-", "bytes=0-"]
    await client.send(b"".join(request("/data.bin", headers={"Range": v}) for v in values))
    answers = [await client.response() for _ in values]
    assert [a.status for a in answers] == [206, 206, 206, 206, 206]
    assert answers[0].body == data[:100]
    assert answers[1].body == data[-1000:]
    parts = parse_byteranges(answers[2])
    assert [p.data for p in parts] == [data[5:10], data[100:200], data[-3:]]
    assert answers[3].body == data[-1:]
    assert answers[4].body == data


# A property: any satisfiable set of ranges gives back exactly the file's bytes. Hypothesis runs
# the server once per test (function-scoped fixtures), and a few examples per loop/path pair.
SIZE = 200_000


@st.composite
def range_sets(draw: st.DrawFn) -> list[tuple[int | None, int | None]]:
    """1-6 specs, each (first, last), (first, None) open-ended or (None, n) suffix."""
    specs: list[tuple[int | None, int | None]] = []
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["closed", "open", "suffix"]))
        if kind == "suffix":
            specs.append((None, draw(st.integers(1, SIZE + 10))))
            continue
        first = draw(st.integers(0, SIZE - 1))
        if kind == "open":
            specs.append((first, None))
        else:
            specs.append((first, draw(st.integers(first, SIZE + 10))))
    return specs


def _spec_text(spec: tuple[int | None, int | None]) -> str:
    first, last = spec
    if first is None:
        return f"-{last}"
    return f"{first}-" if last is None else f"{first}-{last}"


def _covered(specs: list[tuple[int | None, int | None]]) -> set[int]:
    out: set[int] = set()
    for first, last in specs:
        if first is None:
            assert last is not None
            start, end = max(0, SIZE - last), SIZE - 1
        else:
            start, end = first, SIZE - 1 if last is None else min(last, SIZE - 1)
        out.update(range(start, end + 1))
    return out


@both_loops
@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(specs=range_sets())
async def test_any_satisfiable_range_set_returns_exactly_the_files_bytes(
    static_server: StartStatic, media: Media, specs: list[tuple[int | None, int | None]]
) -> None:
    data = media.files["data.bin"]
    assert len(data) == SIZE
    server = await static_server()
    header = "bytes=" + ",".join(_spec_text(s) for s in specs)
    resp = await fetch(server.port, "/data.bin", headers={"Range": header})
    assert resp.status == 206
    ctype = resp.header("content-type") or ""
    if ctype.startswith("multipart/byteranges"):
        parts = [(p.start, p.end, p.data) for p in parse_byteranges(resp)]
        assert len(parts) >= 2, "a single range must not be sent as multipart"
    else:
        start, end, size = parse_content_range(resp.header("content-range"))
        assert size == SIZE
        parts = [(start, end, resp.body)]
    got: set[int] = set()
    for start, end, body in parts:
        assert body == data[start : end + 1]
        span = set(range(start, end + 1))
        assert not span & got, "parts overlap"
        got |= span
    assert got == _covered(specs)


# -- preconditions (RFC 9110 §13.2.2 order) --------------------------------------------------------

# {etag} is the file's current ETag. (id, request fields, expected status)
PRECONDITION_ROWS = [
    ("if-match-equal", {"If-Match": "{etag}"}, 200),
    ("if-match-star", {"If-Match": "*"}, 200),
    ("if-match-list", {"If-Match": '"x", {etag}'}, 200),
    ("if-match-other", {"If-Match": '"other"'}, 412),
    ("if-match-weak-is-not-strong", {"If-Match": "W/{etag}"}, 412),
    ("ius-earlier", {"If-Unmodified-Since": EARLIER}, 412),
    ("ius-equal", {"If-Unmodified-Since": LM}, 200),
    ("ius-ignored-under-if-match", {"If-Match": "{etag}", "If-Unmodified-Since": EARLIER}, 200),
    ("ius-invalid-ignored", {"If-Unmodified-Since": "yesterday"}, 200),
    ("inm-equal", {"If-None-Match": "{etag}"}, 304),
    ("inm-weak-compare", {"If-None-Match": "W/{etag}"}, 304),
    ("inm-list", {"If-None-Match": '"x", {etag}'}, 304),
    ("inm-star", {"If-None-Match": "*"}, 304),
    ("inm-other", {"If-None-Match": '"other"'}, 200),
    ("ims-equal", {"If-Modified-Since": LM}, 304),
    ("ims-later", {"If-Modified-Since": LATER}, 304),
    ("ims-earlier", {"If-Modified-Since": EARLIER}, 200),
    ("ims-invalid-ignored", {"If-Modified-Since": "not a date"}, 200),
    ("ims-ignored-under-inm", {"If-None-Match": '"other"', "If-Modified-Since": LM}, 200),
    # Step 1 comes before step 3: a failed If-Match wins over a matching If-None-Match.
    ("if-match-before-inm", {"If-Match": '"other"', "If-None-Match": "{etag}"}, 412),
    ("ius-before-inm", {"If-Unmodified-Since": EARLIER, "If-None-Match": "{etag}"}, 412),
    # Preconditions come before Range.
    ("inm-before-range", {"If-None-Match": "{etag}", "Range": "bytes=0-4"}, 304),
    ("if-match-before-range", {"If-Match": '"other"', "Range": "bytes=0-4"}, 412),
    ("if-match-then-range", {"If-Match": "{etag}", "Range": "bytes=0-4"}, 206),
    # If-Range (step 5): an equal strong ETag or an equal date lets Range through.
    ("if-range-etag", {"If-Range": "{etag}", "Range": "bytes=0-4"}, 206),
    ("if-range-other-etag", {"If-Range": '"other"', "Range": "bytes=0-4"}, 200),
    ("if-range-weak-etag", {"If-Range": "W/{etag}", "Range": "bytes=0-4"}, 200),
    ("if-range-date-equal", {"If-Range": LM, "Range": "bytes=0-4"}, 206),
    ("if-range-date-earlier", {"If-Range": EARLIER, "Range": "bytes=0-4"}, 200),
    ("if-range-garbage", {"If-Range": "garbage", "Range": "bytes=0-4"}, 200),
    ("if-range-without-range", {"If-Range": '"other"'}, 200),
]


@both_loops
@pytest.mark.parametrize(
    ("fields", "status"),
    [row[1:] for row in PRECONDITION_ROWS],
    ids=[row[0] for row in PRECONDITION_ROWS],
)
async def test_preconditions(
    static_server: StartStatic, media: Media, fields: dict[str, str], status: int
) -> None:
    media.add("alpha.txt", ALPHA)
    server = await static_server()
    etag = (await fetch(server.port, "/alpha.txt")).header("etag")
    assert etag is not None
    headers = {k: v.replace("{etag}", etag) for k, v in fields.items()}
    resp = await fetch(server.port, "/alpha.txt", headers=headers)
    assert resp.status == status
    assert resp.header("etag") == etag
    assert resp.header("last-modified") == LM
    if status == 200:
        assert resp.body == ALPHA and resp.header("content-range") is None
    elif status == 206:
        assert resp.body == b"abcde" and resp.header("content-range") == "bytes 0-4/26"
    else:
        assert resp.body == b""


@both_loops
async def test_head_if_none_match_is_304(static_server: StartStatic) -> None:
    server = await static_server()
    etag = (await fetch(server.port, "/hello.txt")).header("etag")
    assert etag is not None
    resp = await fetch(server.port, "/hello.txt", method="HEAD", headers={"If-None-Match": etag})
    assert resp.status == 304
    assert resp.header("etag") == etag


@both_loops
async def test_304_has_no_body_and_no_misleading_content_length(
    static_server: StartStatic, connect: Connect
) -> None:
    # RFC 9110 §8.6: a 304 MUST NOT carry Content-Length unless it equals the length a 200
    # would have sent (a cache would otherwise store a 0-byte length for the full entity).
    # §15.4.5: a 304 has no content, so the next response on the connection must follow it.
    server = await static_server()
    etag = (await fetch(server.port, "/hello.txt")).header("etag")
    assert etag is not None
    client = await connect(server.port)
    await client.send(
        request("/hello.txt", headers={"If-None-Match": etag}) + request("/hello.txt")
    )
    resp = await client.response()
    after = await client.response()
    assert resp.status == 304
    assert resp.header("content-length") in (None, str(len(HELLO)))
    assert resp.header("content-type") is None
    assert (after.status, after.body) == (200, HELLO)


@both_loops
async def test_412_and_416_are_framed_and_the_connection_lives_on(
    static_server: StartStatic, connect: Connect
) -> None:
    server = await static_server()
    client = await connect(server.port)
    await client.send(
        request("/hello.txt", headers={"If-Match": '"nope"'})
        + request("/hello.txt", headers={"Range": "bytes=1000-"})
        + request("/hello.txt")
    )
    r412, r416, r200 = [await client.response() for _ in range(3)]
    assert (r412.status, r412.body) == (412, b"")
    assert (r416.status, r416.body) == (416, b"")
    assert r416.header("content-range") == f"bytes */{len(HELLO)}"
    assert (r200.status, r200.body) == (200, HELLO)


# -- MIME types ------------------------------------------------------------------------------------

MIME_ROWS = [
    # What video players check (MSE, HLS, DASH refuse mislabelled media).
    ("clip.mp4", "video/mp4"),
    ("seg-1.m4s", "video/iso.segment"),
    ("clip.webm", "video/webm"),
    ("clip.mkv", "video/x-matroska"),
    ("clip.mov", "video/quicktime"),
    ("index.m3u8", "application/vnd.apple.mpegurl"),
    ("seg-1.ts", "video/mp2t"),
    ("manifest.mpd", "application/dash+xml"),
    ("subs.vtt", "text/vtt; charset=utf-8"),
    ("CLIP.MP4", "video/mp4"),
    # The usual web types.
    ("page.html", "text/html; charset=utf-8"),
    ("style.css", "text/css; charset=utf-8"),
    ("app.js", "text/javascript; charset=utf-8"),
    ("data.json", "application/json"),
    ("logo.svg", "image/svg+xml"),
    ("photo.png", "image/png"),
    ("photo.jpg", "image/jpeg"),
    ("mod.wasm", "application/wasm"),
    ("notes.txt", "text/plain; charset=utf-8"),
    ("font.woff2", "font/woff2"),
    ("blob.unknownext", "application/octet-stream"),
    ("no-extension", "application/octet-stream"),
]


@both_loops
@pytest.mark.parametrize(("name", "ctype"), MIME_ROWS, ids=[r[0] for r in MIME_ROWS])
async def test_content_type(
    static_server: StartStatic, media: Media, name: str, ctype: str
) -> None:
    media.add(f"types/{name}", b"x")
    server = await static_server()
    resp = await fetch(server.port, f"/types/{name}")
    assert resp.status == 200
    assert resp.header("content-type") == ctype


@both_loops
async def test_content_types_overridable_per_app(static_server: StartStatic, media: Media) -> None:
    media.add("src/app.ts", b"let x = 1;\n")
    media.add("clip.mp4", b"x")
    server = await static_server(content_types={".ts": "text/x-typescript"})
    resp = await fetch(server.port, "/src/app.ts")
    assert resp.header("content-type") == "text/x-typescript"
    # Only the given extension changes; ranges of it carry the override in each part too.
    assert (await fetch(server.port, "/clip.mp4")).header("content-type") == "video/mp4"
    multi = await fetch(server.port, "/src/app.ts", headers={"Range": "bytes=0-0,-1"})
    assert {p.content_type for p in parse_byteranges(multi)} == {"text/x-typescript"}


# -- folders ---------------------------------------------------------------------------------------


@both_loops
async def test_folder_with_slash_serves_its_index(static_server: StartStatic) -> None:
    server = await static_server()
    resp = await fetch(server.port, "/page/")
    assert (resp.status, resp.body) == (200, INDEX)
    assert resp.header("content-type") == "text/html; charset=utf-8"
    assert_validators(resp)


@both_loops
@pytest.mark.parametrize(("prefix", "path"), [("/", "/"), ("/media", "/media/")])
async def test_the_root_folder_serves_its_index(
    static_server: StartStatic, media: Media, prefix: str, path: str
) -> None:
    media.add("index.html", INDEX)
    server = await static_server(prefix=prefix)
    resp = await fetch(server.port, path)
    assert (resp.status, resp.body) == (200, INDEX)


@both_loops
@pytest.mark.parametrize(
    ("prefix", "path", "location"),
    [
        ("/", "/page", "/page/"),
        ("/", "/page?lang=fr&x=1", "/page/?lang=fr&x=1"),
        ("/", "/nolist", "/nolist/"),
        ("/media", "/media/page", "/media/page/"),
    ],
)
async def test_folder_without_slash_redirects(
    static_server: StartStatic, prefix: str, path: str, location: str
) -> None:
    server = await static_server(prefix=prefix)
    resp = await fetch(server.port, path)
    assert resp.status == 301
    assert resp.header("location") == location


@both_loops
async def test_folder_without_index_is_404_never_a_listing(static_server: StartStatic) -> None:
    server = await static_server()
    for path in ("/nolist/", "/"):
        resp = await fetch(server.port, path)
        assert resp.status == 404, path
        assert b"a.txt" not in resp.body and b"hello.txt" not in resp.body


@both_loops
async def test_index_none_disables_index_files(static_server: StartStatic) -> None:
    server = await static_server(index=None)
    resp = await fetch(server.port, "/page/")
    assert resp.status == 404
    assert INDEX not in resp.body


@both_loops
async def test_folder_redirect_is_never_an_open_redirect(
    static_server: StartStatic, media: Media
) -> None:
    # "//example.com" names the folder root/example.com. Redirecting it to "//example.com/" sends
    # the browser to another host (a network-path reference, RFC 3986 §4.2).
    media.add("example.com/index.html", INDEX)
    server = await static_server()
    resp = await fetch(server.port, "//example.com")
    if resp.status == 301:
        location = resp.header("location")
        assert location is not None
        assert location.startswith("/") and not location.startswith("//"), location
    else:
        assert resp.status in (200, 404)


# -- precompressed siblings ------------------------------------------------------------------------


@pytest.fixture
def compressed(media: Media) -> dict[str, bytes]:
    """hello.txt with .gz (real gzip), .br and .zst siblings (stand-in bytes: never decoded)."""
    variants = {
        "gzip": gzip.compress(HELLO * 50, mtime=0),
        "br": b"BR-STAND-IN" * 3,
        "zstd": b"ZSTD-STAND-IN" * 3,
    }
    media.add("big.txt", HELLO * 50)
    media.add("big.txt.gz", variants["gzip"], mtime=OLD_MTIME + 10)
    media.add("big.txt.br", variants["br"], mtime=OLD_MTIME + 10)
    media.add("big.txt.zst", variants["zstd"], mtime=OLD_MTIME)  # same mtime is not older
    media.add("only-gz.txt", HELLO * 50)
    media.add("only-gz.txt.gz", variants["gzip"], mtime=OLD_MTIME + 10)
    return variants


ENCODING_ROWS = [
    ("gzip", "gzip"),
    ("br", "br"),
    ("zstd", "zstd"),
    ("gzip, br", "br"),  # equal weights: our order (zstd, br, gzip) breaks the tie
    ("gzip, deflate, br, zstd", "zstd"),
    ("gzip;q=1, br;q=0.5", "gzip"),
    ("br;q=0, gzip", "gzip"),
    ("*", "zstd"),
    ("*;q=0.1, gzip;q=0.9", "gzip"),
    ("identity", None),
    ("gzip;q=0", None),
    ("deflate", None),
]


@both_loops
@pytest.mark.parametrize(("accept", "coding"), ENCODING_ROWS, ids=[r[0] for r in ENCODING_ROWS])
async def test_precompressed_sibling_served_when_accepted(
    static_server: StartStatic,
    compressed: dict[str, bytes],
    accept: str,
    coding: str | None,
) -> None:
    server = await static_server()
    identity = await fetch(server.port, "/big.txt")
    resp = await fetch(server.port, "/big.txt", headers={"Accept-Encoding": accept})
    assert resp.status == 200
    assert resp.header("vary") == "Accept-Encoding"
    assert resp.header("content-type") == "text/plain; charset=utf-8"
    assert resp.header("content-encoding") == coding
    expected = HELLO * 50 if coding is None else compressed[coding]
    assert resp.body == expected
    assert resp.header("content-length") == str(len(expected))
    if coding is None:
        assert resp.header("etag") == identity.header("etag")
    else:
        assert resp.header("etag") != identity.header("etag")
    if coding == "gzip":
        assert gzip.decompress(resp.body) == HELLO * 50


@both_loops
async def test_identity_response_varies_on_accept_encoding(
    static_server: StartStatic, compressed: dict[str, bytes]
) -> None:
    # A cache that stored the identity answer must not give it to a gzip client, or vice versa.
    server = await static_server()
    resp = await fetch(server.port, "/big.txt")
    assert resp.header("vary") == "Accept-Encoding"
    assert resp.header("content-encoding") is None


@both_loops
async def test_precompressed_etags_validate_their_own_variant(
    static_server: StartStatic, compressed: dict[str, bytes]
) -> None:
    server = await static_server()
    gz = {"Accept-Encoding": "gzip"}
    identity_tag = (await fetch(server.port, "/only-gz.txt")).header("etag")
    gz_tag = (await fetch(server.port, "/only-gz.txt", headers=gz)).header("etag")
    assert identity_tag and gz_tag and identity_tag != gz_tag
    same = await fetch(server.port, "/only-gz.txt", headers={**gz, "If-None-Match": gz_tag})
    assert same.status == 304
    # The identity tag does not validate the gzip variant: the client gets the gzip bytes.
    other = await fetch(server.port, "/only-gz.txt", headers={**gz, "If-None-Match": identity_tag})
    assert (other.status, other.body) == (200, compressed["gzip"])


@both_loops
async def test_range_requests_always_get_identity(
    static_server: StartStatic, compressed: dict[str, bytes]
) -> None:
    server = await static_server()
    headers = {"Accept-Encoding": "gzip, br, zstd", "Range": "bytes=0-9"}
    resp = await fetch(server.port, "/big.txt", headers=headers)
    assert resp.status == 206
    assert resp.header("content-encoding") is None
    assert resp.body == (HELLO * 50)[:10]
    assert resp.header("content-range") == f"bytes 0-9/{len(HELLO) * 50}"


@both_loops
async def test_head_of_precompressed_variant(
    static_server: StartStatic, compressed: dict[str, bytes]
) -> None:
    server = await static_server()
    resp = await fetch(
        server.port, "/only-gz.txt", method="HEAD", headers={"Accept-Encoding": "gzip"}
    )
    assert resp.header("content-encoding") == "gzip"
    assert resp.header("content-length") == str(len(compressed["gzip"]))
    assert resp.body == b""


@both_loops
async def test_stale_sibling_is_never_served(static_server: StartStatic, media: Media) -> None:
    media.add("stale.txt", HELLO, mtime=OLD_MTIME)
    media.add("stale.txt.gz", gzip.compress(b"an older version\n"), mtime=OLD_MTIME - 1)
    server = await static_server()
    resp = await fetch(server.port, "/stale.txt", headers={"Accept-Encoding": "gzip"})
    assert resp.header("content-encoding") is None
    assert resp.body == HELLO


@both_loops
async def test_sibling_that_is_a_folder_is_ignored(
    static_server: StartStatic, media: Media
) -> None:
    media.add("odd.txt", HELLO)
    (media.root / "odd.txt.gz").mkdir()
    server = await static_server()
    resp = await fetch(server.port, "/odd.txt", headers={"Accept-Encoding": "gzip"})
    assert (resp.status, resp.body, resp.header("content-encoding")) == (200, HELLO, None)


@both_loops
async def test_sibling_requested_by_name_is_a_plain_file(
    static_server: StartStatic, compressed: dict[str, bytes]
) -> None:
    server = await static_server()
    resp = await fetch(server.port, "/big.txt.gz", headers={"Accept-Encoding": "gzip"})
    assert resp.status == 200
    assert resp.header("content-type") == "application/gzip"
    assert resp.header("content-encoding") is None
    assert resp.body == compressed["gzip"]


@both_loops
async def test_precompressed_false_ignores_siblings(
    static_server: StartStatic, compressed: dict[str, bytes]
) -> None:
    server = await static_server(precompressed=False)
    resp = await fetch(server.port, "/big.txt", headers={"Accept-Encoding": "gzip, br, zstd"})
    assert resp.header("content-encoding") is None
    assert resp.body == HELLO * 50


@both_loops
async def test_sibling_symlink_leading_outside_the_root_is_not_served(
    static_server: StartStatic, media: Media
) -> None:
    # root/public.txt.gz -> ../secret.txt.gz: the identity file is fine, its sibling escapes.
    secret_gz = media.outside / "secret.txt.gz"
    secret_gz.write_bytes(gzip.compress(SECRET))
    set_mtime(secret_gz, OLD_MTIME + 100)
    media.add("public.txt", HELLO)
    os.symlink("../secret.txt.gz", media.root / "public.txt.gz")
    server = await static_server()
    resp = await fetch(server.port, "/public.txt", headers={"Accept-Encoding": "gzip"})
    body = gzip.decompress(resp.body) if resp.header("content-encoding") == "gzip" else resp.body
    assert SECRET not in body
    assert (resp.status, body) == (200, HELLO)


# -- path safety -----------------------------------------------------------------------------------

# Raw request targets, written to the socket as they are. None of them may reach secret.txt
# (next to the root) or anything else outside the root.
TRAVERSALS = [
    b"/../secret.txt",
    b"/../../../../../../../../etc/passwd",
    b"/./../secret.txt",
    b"/sub/../../secret.txt",
    b"/sub/./../.././secret.txt",
    b"/%2e%2e/secret.txt",
    b"/%2E%2E/secret.txt",
    b"/.%2e/secret.txt",
    b"/%2e./secret.txt",
    b"/..%2fsecret.txt",
    b"/..%2Fsecret.txt",
    b"/%2e%2e%2fsecret.txt",
    b"/sub%2f..%2f..%2fsecret.txt",
    b"/sub/%2e%2e/%2e%2e/secret.txt",
    b"/..\\secret.txt",
    b"/..%5csecret.txt",
    b"/..%5Csecret.txt",
    b"/%5c..%5csecret.txt",
    b"/sub\\..\\..\\secret.txt",
    b"/%2e%2e%5csecret.txt",
    b"/..%00/secret.txt",
    b"/secret.txt%00.html",
    b"/%00../secret.txt",
    b"/..\x00/secret.txt",  # a raw NUL, not percent-encoded
    b"/%c0%ae%c0%ae/secret.txt",  # overlong UTF-8 dots
    b"/\xc0\xae\xc0\xae/secret.txt",  # the same, raw
    b"/hello.txt%00/../../secret.txt",
    b"/%252e%252e/secret.txt",
    b"/%252e%252e%252fsecret.txt",
    b"/..%c0%afsecret.txt",
    b"/..%ef%bc%8fsecret.txt",
    b"/..;/secret.txt",
    b"//../secret.txt",
    b"/.../secret.txt",
    b"/%2f..%2fsecret.txt",
    b"../secret.txt",
    b"http://test/../secret.txt",
    b"/..",
    b"/../",
    b"/sub/..%2f..%2f",
]


def _absolute_forms(media: Media) -> list[bytes]:
    """The secret's absolute path in several spellings (a target that is absolute on its own)."""
    secret = str(media.outside / "secret.txt").encode()
    quoted = secret.replace(b"/", b"%2f")
    return [b"/" + secret, secret, b"/" + quoted, quoted, b"/" + secret.replace(b"/", b"\\")]


async def _raw_get(port: int, target: bytes) -> tuple[int, bytes]:
    """Status and everything the server sent, for ``GET <target>`` (status 0: no status line)."""
    client = await RawClient.connect(port)
    try:
        await client.send(
            b"GET " + target + b" HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
        )
        data = await client.read_to_eof(timeout=5)
    finally:
        await client.close()
    head = data.split(b"\r\n", 1)[0].split(b" ")
    status = int(head[1]) if len(head) > 1 and head[1].isdigit() else 0
    return status, data


@both_loops
async def test_traversal_attempts_never_leave_the_root(
    static_server: StartStatic, media: Media
) -> None:
    server = await static_server()
    targets = TRAVERSALS + _absolute_forms(media)
    assert len(targets) >= 20
    seen = {}
    for target in targets:
        status, data = await _raw_get(server.port, target)
        assert SECRET not in data, target
        assert b"root:" not in data, target  # /etc/passwd
        seen[target] = status
    refused = {t: s for t, s in seen.items() if s not in (400, 404)}
    assert not refused, f"expected 400 or 404: {refused}"
    # And the server is still serving what is inside.
    assert (await fetch(server.port, "/hello.txt")).body == HELLO


@both_loops
async def test_symlinks(static_server: StartStatic, media: Media) -> None:
    os.symlink("../secret.txt", media.root / "link-out.txt")
    os.symlink(str(media.outside / "secret.txt"), media.root / "abs-link-out.txt")
    os.symlink("hello.txt", media.root / "link-in.txt")
    os.symlink("..", media.root / "up")
    os.symlink("sub", media.root / "sub-link")
    server = await static_server()
    for path in ("/link-out.txt", "/abs-link-out.txt", "/up/secret.txt"):
        status, data = await _raw_get(server.port, path.encode())
        assert SECRET not in data, path
        assert status == 404, path
    # Links that stay inside the root are fine (also a detour that comes back in).
    assert (await fetch(server.port, "/link-in.txt")).body == HELLO
    assert (await fetch(server.port, "/up/root/hello.txt")).body == HELLO
    assert (await fetch(server.port, "/sub-link/inner.txt")).body == b"inner\n"


@both_loops
async def test_index_symlink_leading_outside_the_root_is_not_served(
    static_server: StartStatic, media: Media
) -> None:
    # The folder is inside the root, its index.html is a link to the secret.
    (media.root / "trap").mkdir()
    os.symlink("../../secret.txt", media.root / "trap" / "index.html")
    server = await static_server()
    status, data = await _raw_get(server.port, b"/trap/")
    assert SECRET not in data
    assert status == 404


@both_loops
async def test_follow_symlinks_is_an_explicit_option(
    static_server: StartStatic, media: Media
) -> None:
    os.symlink("../secret.txt", media.root / "link-out.txt")
    server = await static_server(follow_symlinks=True)
    resp = await fetch(server.port, "/link-out.txt")
    assert (resp.status, resp.body) == (200, SECRET)
    # ".." is still refused with the option: it allows links, not traversal.
    status, data = await _raw_get(server.port, b"/../secret.txt")
    assert status == 404 and SECRET not in data


@both_loops
async def test_only_regular_files_are_served(static_server: StartStatic, media: Media) -> None:
    # With follow_symlinks the path resolves to a character device: fstat of the open
    # descriptor says it is not a regular file -> 404, not an endless body of zeros.
    os.symlink("/dev/zero", media.root / "zero.bin")
    os.symlink("/dev/null", media.root / "null.bin")
    server = await static_server(follow_symlinks=True)
    for path in ("/zero.bin", "/null.bin"):
        resp = await fetch(server.port, path, timeout=3)
        assert resp.status == 404, path


def test_fifo_is_refused_without_blocking_the_server(serve_static_cli, media: Media) -> None:
    # open(2) of a FIFO for reading blocks until a writer appears. The server must open with
    # O_NONBLOCK (or check before opening) and answer 404, and keep serving everyone else.
    os.mkfifo(media.root / "pipe.mp4")
    p: StaticProcess = serve_static_cli(media.root)
    statuses = []
    for path in ("/pipe.mp4", "/hello.txt"):
        with socket.create_connection(("127.0.0.1", p.port), timeout=2) as sock:
            sock.sendall(request(path, headers={"Connection": "close"}))
            start = time.monotonic()
            try:
                data = b""
                while chunk := sock.recv(65536):
                    data += chunk
            except TimeoutError:
                data = b"<no answer within 2 s>"
            statuses.append((path, data.split(b"\r\n", 1)[0], round(time.monotonic() - start, 1)))
    assert statuses[0][1] == b"HTTP/1.1 404 Not Found", statuses
    assert statuses[1][1] == b"HTTP/1.1 200 OK", statuses


@both_loops
async def test_large_file_both_paths(
    static_server: StartStatic, media: Media, connect: Connect
) -> None:
    # Bigger than the socket buffers and than several sendfile/pread chunks, on a slow-ish
    # reader (64 KiB receive buffer), so both paths go through their wait-for-writable code.
    data = pattern(5 * 1024 * 1024 + 123, seed=5)
    media.add("big.bin", data)
    server = await static_server()
    client = await connect(server.port, rcvbuf=64 * 1024)
    await client.send(request("/big.bin") + request("/hello.txt"))
    resp = await client.response(timeout=20)
    assert resp.body == data
    assert (await client.response()).body == HELLO


def test_suite_layout_has_the_secret_outside_the_root(media: Media) -> None:
    # The traversal tests are only meaningful if the secret really is outside the served root.
    secret = (media.outside / "secret.txt").resolve()
    assert secret.read_bytes() == SECRET
    assert Path(os.path.commonpath([secret, media.root.resolve()])) != media.root.resolve()


def test_resolution_reports_the_stat_of_what_it_resolved(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "f.txt").write_bytes(b"abc")
    os.symlink("sub", root / "via")
    real = os.path.realpath(root)

    def resolved(relative: str) -> tuple[str, int | None]:
        result = _resolve(real, relative, False)
        assert result is not None
        path, st = result
        return path, None if st is None else st.st_size

    assert resolved("sub/f.txt") == (f"{real}/sub/f.txt", 3)
    # Through a symlink that stays inside the root: the real path, and the target's stat.
    assert resolved("via/f.txt") == (f"{real}/sub/f.txt", 3)
    assert resolved("missing/deeper.txt") == (f"{real}/missing/deeper.txt", None)
    root_path, root_stat = _resolve(real, "", False) or ("", None)
    assert root_path == real
    assert root_stat is not None and stat.S_ISDIR(root_stat.st_mode)
    assert resolve_path(real, "via/f.txt") == f"{real}/sub/f.txt"


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab./Ö", max_size=12))
def test_extension_is_splitext_lowercased(path: str) -> None:
    assert extension(path) == posixpath.splitext(path)[1].lower()
