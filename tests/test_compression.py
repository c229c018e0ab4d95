"""Response compression in the server: bodies, streams and static files, read by real decoders.

The codec's decisions are tested in test_compress.py; here the server must apply them:
Content-Encoding, Content-Length, Vary, variant ETags, 406, HEAD, Range staying identity, streams
that stay live, cached static variants, and the switches that turn it off. Servers run with a
100 Mbit/s link rate, so compressing text pays whatever the machine's load during calibration.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import brotli
import pytest
import zstandard

from conftest import HttpResponse, RawClient, StartServer, run_cli
from static_fixtures import StaticProcess
from wirespeed import App, FileResponse, Request, Response, StreamResponse

pytest_plugins = ["static_fixtures"]
both_loops = pytest.mark.asyncio(loop_factories=["uvloop", "asyncio"])

SLOW_LINK = 100e6  # bits/s

TEXT = b"".join(
    b'{"id": %d, "name": "item %d", "tags": ["alpha", "bravo"]},\n' % (i, i) for i in range(3000)
)
SMALL = b"x" * 1000  # below MIN_SIZE: never compressed


def decode(coding: str | None, data: bytes) -> bytes:
    if coding is None:
        return data
    if coding == "zstd":
        return bytes(zstandard.ZstdDecompressor().decompressobj().decompress(data))
    if coding == "br":
        return bytes(brotli.decompress(data))
    if coding == "gzip":
        return gzip.decompress(data)
    raise AssertionError(f"unexpected coding {coding}")


def make_app(gate: asyncio.Event | None = None, media: Path | None = None) -> App:
    app = App()

    @app.get("/json")
    def json_body(request: Request) -> Response:
        return Response(TEXT, content_type="application/json")

    @app.get("/small")
    def small(request: Request) -> Response:
        return Response(SMALL, content_type="text/plain")

    @app.get("/png")
    def png(request: Request) -> Response:
        return Response(TEXT, content_type="image/png")

    @app.get("/encoded")
    def encoded(request: Request) -> Response:
        return Response(gzip.compress(TEXT), headers={"Content-Encoding": "gzip"})

    @app.get("/tagged")
    def tagged(request: Request) -> Response:
        return Response(TEXT, headers={"ETag": '"v1"'}, content_type="text/plain")

    @app.get("/stream")
    def stream(request: Request) -> StreamResponse:
        async def parts() -> AsyncIterator[bytes]:
            yield TEXT[:5000]
            if gate is not None:
                await gate.wait()  # the client decodes the first part before this returns
            yield TEXT[5000:]

        return StreamResponse(parts(), content_type="text/plain", content_length=len(TEXT))

    if media is not None:
        app.static("/files", media)
    return app


@pytest.fixture
def media(tmp_path: Path) -> Path:
    root = tmp_path / "media"
    root.mkdir()
    (root / "data.json").write_bytes(TEXT)
    (root / "clip.mp4").write_bytes(os.urandom(64 * 1024))
    (root / "paced.txt").write_bytes(TEXT)
    return root


async def get(port: int, path: str, *headers: str, method: str = "GET") -> HttpResponse:
    client = await RawClient.connect(port)
    try:
        extra = "".join(f"{h}\r\n" for h in headers)
        await client.send(f"{method} {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\n".encode())
        return await client.response(method)
    finally:
        await client.close()


# -- bodies ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("coding", ["zstd", "br", "gzip"])
@both_loops
async def test_body_is_compressed_with_the_coding_the_client_accepts(
    serve: StartServer, coding: str
) -> None:
    server = await serve(make_app(), link_rate=SLOW_LINK)
    resp = await get(server.port, "/json", f"Accept-Encoding: {coding}")
    assert resp.status == 200
    assert resp.header("content-encoding") == coding
    assert resp.header("vary") == "Accept-Encoding"
    assert int(resp.header("content-length") or -1) == len(resp.body) < len(TEXT) // 3
    assert decode(coding, resp.body) == TEXT


@both_loops
async def test_identity_responses_that_could_vary_say_so(serve: StartServer) -> None:
    server = await serve(make_app(), link_rate=SLOW_LINK)
    for headers in ((), ("Accept-Encoding: identity",), ("Accept-Encoding: gzip;q=0",)):
        resp = await get(server.port, "/json", *headers)
        assert resp.header("content-encoding") is None, headers
        assert resp.header("vary") == "Accept-Encoding", headers
        assert resp.body == TEXT


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/small", SMALL),  # too small to save a packet: never compressed, so it never varies
        ("/png", TEXT),  # an already-compressed media type
    ],
)
@both_loops
async def test_bodies_that_never_pay_are_sent_as_they_are(
    serve: StartServer, path: str, expected: bytes
) -> None:
    server = await serve(make_app(), link_rate=SLOW_LINK)
    resp = await get(server.port, path, "Accept-Encoding: gzip, br, zstd")
    assert resp.header("content-encoding") is None
    assert resp.header("vary") is None
    assert resp.body == expected


@both_loops
async def test_a_body_with_its_own_content_encoding_is_left_alone(serve: StartServer) -> None:
    server = await serve(make_app(), link_rate=SLOW_LINK)
    resp = await get(server.port, "/encoded", "Accept-Encoding: zstd, gzip")
    assert resp.all("content-encoding") == ["gzip"]
    assert gzip.decompress(resp.body) == TEXT


@both_loops
async def test_a_compressed_body_gets_its_own_etag(serve: StartServer) -> None:
    server = await serve(make_app(), link_rate=SLOW_LINK)
    identity = await get(server.port, "/tagged")
    compressed = await get(server.port, "/tagged", "Accept-Encoding: zstd")
    assert identity.header("etag") == '"v1"'
    etag = compressed.header("etag")
    assert etag is not None and etag != '"v1"' and "zstd" in etag


@both_loops
async def test_refused_identity_with_nothing_acceptable_is_406(serve: StartServer) -> None:
    server = await serve(make_app(), link_rate=SLOW_LINK)
    resp = await get(server.port, "/json", "Accept-Encoding: identity;q=0, compress")
    assert (resp.status, resp.body) == (406, b"no acceptable content coding\n")
    # Identity refused but a coding fits: it is used whatever it costs.
    forced = await get(server.port, "/json", "Accept-Encoding: identity;q=0, gzip;q=0.5")
    assert forced.status == 200
    assert decode(forced.header("content-encoding"), forced.body) == TEXT


@both_loops
async def test_head_announces_what_get_would_send(serve: StartServer) -> None:
    server = await serve(make_app(), link_rate=SLOW_LINK)
    full = await get(server.port, "/json", "Accept-Encoding: zstd")
    head = await get(server.port, "/json", "Accept-Encoding: zstd", method="HEAD")
    for name in ("content-encoding", "content-length", "vary"):
        assert head.header(name) == full.header(name), name
    assert head.body == b""


@both_loops
async def test_turned_off_or_on_a_fast_link_nothing_is_compressed(serve: StartServer) -> None:
    off = await serve(make_app(), compress=False)
    resp = await get(off.port, "/json", "Accept-Encoding: zstd, gzip")
    assert (resp.header("content-encoding"), resp.header("vary"), resp.body) == (None, None, TEXT)
    # 1 Tbit/s: no codec on any CPU compresses faster than that link sends.
    fast = await serve(make_app(), link_rate=1e12)
    resp = await get(fast.port, "/json", "Accept-Encoding: zstd, gzip")
    assert resp.header("content-encoding") is None
    assert resp.body == TEXT


# -- streams ---------------------------------------------------------------------------------------


@both_loops
async def test_a_compressed_stream_stays_live(serve: StartServer) -> None:
    gate = asyncio.Event()
    server = await serve(make_app(gate), link_rate=SLOW_LINK)
    client = await RawClient.connect(server.port)
    try:
        await client.send(b"GET /stream HTTP/1.1\r\nHost: t\r\nAccept-Encoding: zstd\r\n\r\n")
        head = await client.reader.readuntil(b"\r\n\r\n")
        assert b"Content-Encoding: zstd\r\n" in head
        # The declared identity length no longer holds: chunked instead.
        assert b"Transfer-Encoding: chunked\r\n" in head
        assert b"Content-Length" not in head
        # The first chunk arrives while the handler still waits, and decodes on its own.
        decoder = zstandard.ZstdDecompressor().decompressobj()
        size = int(await client.reader.readuntil(b"\r\n"), 16)
        first = await client.reader.readexactly(size + 2)
        assert decoder.decompress(first[:-2]) == TEXT[:5000]
        gate.set()
        rest = b""
        while True:
            size = int(await client.reader.readuntil(b"\r\n"), 16)
            chunk = await client.reader.readexactly(size + 2)
            if size == 0:
                break
            rest += chunk[:-2]
        assert decoder.decompress(rest) == TEXT[5000:]
        assert decoder.eof  # finish() ended the frame
    finally:
        await client.close()


@both_loops
async def test_an_identity_stream_keeps_its_length(serve: StartServer) -> None:
    server = await serve(make_app(), link_rate=SLOW_LINK)
    resp = await get(server.port, "/stream")
    assert resp.header("content-length") == str(len(TEXT))
    assert resp.header("vary") == "Accept-Encoding"
    assert resp.body == TEXT


# -- static files ----------------------------------------------------------------------------------


@both_loops
async def test_static_text_gets_a_cached_variant_with_its_own_validators(
    serve: StartServer, media: Path
) -> None:
    server = await serve(make_app(media=media), link_rate=SLOW_LINK)
    identity = await get(server.port, "/files/data.json")
    first = await get(server.port, "/files/data.json", "Accept-Encoding: zstd")
    second = await get(server.port, "/files/data.json", "Accept-Encoding: zstd")
    assert identity.header("content-encoding") is None
    assert identity.header("vary") == "Accept-Encoding"
    assert first.header("content-encoding") == "zstd"
    assert decode("zstd", first.body) == TEXT
    assert second.body == first.body  # the same cached variant
    assert first.header("etag") not in (None, identity.header("etag"))
    assert first.header("last-modified") == identity.header("last-modified")
    # Conditionals see the variant's own ETag.
    etag = first.header("etag")
    cached = await get(
        server.port, "/files/data.json", "Accept-Encoding: zstd", f"If-None-Match: {etag}"
    )
    assert cached.status == 304
    # A new version of the file gets a new variant.
    (media / "data.json").write_bytes(TEXT[::-1])
    os.utime(media / "data.json", (1, 1))
    fresh = await get(server.port, "/files/data.json", "Accept-Encoding: zstd")
    assert decode("zstd", fresh.body) == TEXT[::-1]


@both_loops
async def test_static_ranges_always_address_the_identity_bytes(
    serve: StartServer, media: Path
) -> None:
    server = await serve(make_app(media=media), link_rate=SLOW_LINK)
    resp = await get(
        server.port, "/files/data.json", "Accept-Encoding: zstd", "Range: bytes=100-199"
    )
    assert resp.status == 206
    assert resp.header("content-encoding") is None
    assert resp.body == TEXT[100:200]


@both_loops
async def test_static_media_and_paced_files_are_not_compressed(
    serve: StartServer, media: Path
) -> None:
    app = make_app(media=media)
    app.static("/paced", media, limit_rate=10_000_000)
    server = await serve(app, link_rate=SLOW_LINK)
    video = await get(server.port, "/files/clip.mp4", "Accept-Encoding: zstd")
    assert video.header("content-encoding") is None
    assert video.body == (media / "clip.mp4").read_bytes()
    paced = await get(server.port, "/paced/paced.txt", "Accept-Encoding: zstd")
    assert paced.header("content-encoding") is None
    assert paced.body == TEXT


# -- real clients and the CLI ----------------------------------------------------------------------

CURL = shutil.which("curl")


@pytest.mark.skipif(CURL is None, reason="make test installs curl")
def test_curl_compressed_decodes_what_the_cli_sends(
    media: Path, serve_static_cli: Callable[..., StaticProcess]
) -> None:
    assert CURL is not None
    server = serve_static_cli(media, "--link-rate", "100m")
    result = subprocess.run(
        [CURL, "-sS", "--compressed", "-D", "-", f"{server.url}/data.json"],
        capture_output=True,
        timeout=30,
        check=True,
    )
    head, _, body = result.stdout.partition(b"\r\n\r\n")
    assert b"content-encoding:" in head.lower()
    assert body == TEXT  # curl decoded it


@pytest.mark.parametrize("value", ["fast", "-1m", "0", "1x"])
def test_bad_link_rate_is_one_line_and_exit_2(tmp_path: Path, value: str) -> None:
    result = run_cli(tmp_path, "serve", str(tmp_path), "--link-rate", value)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "link-rate" in lines[0], result.stderr


@both_loops
async def test_a_failed_file_plan_releases_whichever_file_it_held(
    serve: StartServer, tmp_path: Path
) -> None:
    # The content type is refused while the head is built, after the .gz sibling replaced the
    # original: both descriptors must end up released exactly once (no leak, no early close).
    path = tmp_path / "page.txt"
    path.write_bytes(TEXT)
    (tmp_path / "page.txt.gz").write_bytes(gzip.compress(TEXT))
    app = App()

    @app.get("/bad")
    def bad(request: Request) -> FileResponse:
        return FileResponse(path, content_type="text/plain\r\nX-Injected: 1", precompressed=True)

    server = await serve(app)
    for _ in range(2):
        resp = await get(server.port, "/bad", "Accept-Encoding: gzip")
        assert resp.status == 500
        assert b"X-Injected" not in resp.body
    cache = server.state.file_cache
    assert len(cache) == 2  # the original and its sibling, both still cached ...
    assert all(entry.users == 0 for entry in cache._entries.values())  # ... and unused
