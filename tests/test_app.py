"""The native App: routing, handler results, errors, and what a Request exposes."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest

from conftest import RawClient, StartServer, get
from wirespeed import App, Request, Response, StreamResponse

Connect = Callable[..., Awaitable[RawClient]]


# -- routing (pure) ------------------------------------------------------------------------------


def routes() -> App:
    app = App()
    app.add_route("/", lambda r: b"root")
    app.add_route("/items", lambda r: b"list", methods=["GET", "POST"])
    app.add_route("/items/new", lambda r: b"new")  # static wins over the pattern below
    app.add_route("/items/{item_id}", lambda r: b"item")
    app.add_route("/items/{item_id}/tags/{tag}", lambda r: b"tag", methods=["PUT"])
    app.add_route("/files/{rest:path}", lambda r: b"file")
    return app


@pytest.mark.parametrize(
    ("method", "path", "found", "params"),
    [
        ("GET", "/", True, None),
        ("GET", "/items", True, None),
        ("POST", "/items", True, None),
        ("GET", "/items/new", True, None),
        ("GET", "/items/42", True, {"item_id": "42"}),
        ("GET", "/items/h%C3%A9", True, {"item_id": "h%C3%A9"}),
        ("PUT", "/items/7/tags/red", True, {"item_id": "7", "tag": "red"}),
        ("GET", "/files/a/b/c.txt", True, {"rest": "a/b/c.txt"}),
        ("HEAD", "/items/42", True, {"item_id": "42"}),  # HEAD is derived from GET
        ("GET", "/items/", False, None),  # {name} needs a non-empty segment
        ("GET", "/items/1/2", False, None),  # and only one
        ("GET", "/nowhere", False, None),
        ("GET", "/items/42/", False, None),  # no trailing-slash magic
    ],
)
def test_resolve(method: str, path: str, found: bool, params: dict[str, str] | None) -> None:
    endpoint, got_params, _ = routes().resolve(method, path)
    assert (endpoint is not None) is found
    if found:
        assert (got_params or None) == params


def test_method_not_allowed_reports_allow() -> None:
    app = routes()
    endpoint, _, route = app.resolve("DELETE", "/items")
    assert endpoint is None and route is not None
    assert {m.strip() for m in App.allowed(route).split(",")} == {"GET", "HEAD", "POST"}
    endpoint, _, route = app.resolve("GET", "/items/7/tags/red")
    assert endpoint is None and route is not None
    assert App.allowed(route) == "PUT"  # no GET, so no HEAD either


def test_bad_registrations() -> None:
    app = App()
    app.add_route("/x", lambda r: b"")
    with pytest.raises(ValueError, match="duplicate"):
        app.add_route("/x", lambda r: b"")
    with pytest.raises(ValueError):
        app.add_route("no-slash", lambda r: b"")


@pytest.mark.parametrize(
    ("name", "value"),
    [("X-A", "a\r\nInjected: 1"), ("X-A", "a\nb"), ("X-A\r\n", "v"), ("X:A", "v")],
)
def test_response_refuses_header_injection(name: str, value: str) -> None:
    with pytest.raises(ValueError):
        Response(b"", headers={name: value})


# -- handler results over the wire ---------------------------------------------------------------


def result_app() -> App:
    app = App()
    results: dict[str, Any] = {
        "bytes": b"raw bytes",
        "str": "h\u00e9llo",
        "dict": {"a": 1, "b": ["x", None], "u": "\u00e9"},
        "list": [1, 2, {"three": 3}],
        "response": Response(b"<p>hi</p>", 202, {"X-Extra": "1"}, "text/html"),
        "str-response": Response("plain str"),
    }
    for name, value in results.items():

        def sync_handler(request: Request, value: Any = value) -> Any:
            return value

        async def async_handler(request: Request, value: Any = value) -> Any:
            await asyncio.sleep(0)
            return value

        async def async_no_await(request: Request, value: Any = value) -> Any:
            return value

        app.add_route(f"/sync/{name}", sync_handler)
        app.add_route(f"/async/{name}", async_handler)
        app.add_route(f"/async-direct/{name}", async_no_await)
        app.add_route(f"/blocking/{name}", sync_handler, blocking=True)
    return app


EXPECTED = {
    "bytes": (200, "text/plain", b"raw bytes"),
    "str": (200, "text/plain; charset=utf-8", "h\u00e9llo".encode()),
    "dict": (200, "application/json", orjson.dumps({"a": 1, "b": ["x", None], "u": "\u00e9"})),
    "list": (200, "application/json", b'[1,2,{"three":3}]'),
    "response": (202, "text/html", b"<p>hi</p>"),
    "str-response": (200, "text/plain; charset=utf-8", b"plain str"),
}


@pytest.mark.parametrize("kind", ["sync", "async", "async-direct", "blocking"])
async def test_handler_results(serve: StartServer, connect: Connect, kind: str) -> None:
    server = await serve(result_app())
    client = await connect(server.port)
    for name, (status, content_type, body) in EXPECTED.items():
        await client.send(get(f"/{kind}/{name}"))
        resp = await client.response()
        assert (resp.status, resp.header("content-type"), resp.body) == (status, content_type, body)
        assert resp.header("content-length") == str(len(body))
    assert await client.is_open()


async def test_head_derived_from_get(serve: StartServer, connect: Connect) -> None:
    server = await serve(result_app())
    client = await connect(server.port)
    await client.send(get("/sync/dict").replace(b"GET", b"HEAD", 1) + get("/sync/bytes"))
    head = await client.response("HEAD")
    assert head.status == 200
    assert head.header("content-length") == str(len(EXPECTED["dict"][2]))
    assert (await client.response()).body == b"raw bytes"


async def test_405_with_allow(serve: StartServer, connect: Connect) -> None:
    app = App()
    app.add_route("/thing", lambda r: b"got", methods=["GET", "PATCH"])
    server = await serve(app)
    client = await connect(server.port)
    await client.send(b"POST /thing HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
    resp = await client.response()
    assert resp.status == 405
    assert {m.strip() for m in (resp.header("allow") or "").split(",")} == {"GET", "HEAD", "PATCH"}
    assert resp.body and len(resp.body) < 80


# -- errors --------------------------------------------------------------------------------------

SECRET = "secret-detail-7f3a"


def failing_app() -> App:
    app = App()

    @app.get("/sync")
    def sync_fail(request: Request) -> bytes:
        raise RuntimeError(SECRET)

    @app.get("/async-early")
    async def async_early(request: Request) -> bytes:
        raise KeyError(SECRET)

    @app.get("/async-late")
    async def async_late(request: Request) -> bytes:
        await asyncio.sleep(0.01)
        raise ValueError(SECRET)

    @app.get("/blocking", blocking=True)
    def blocking_fail(request: Request) -> bytes:
        raise OSError(SECRET)

    @app.get("/bad-result")
    def bad_result(request: Request) -> object:
        return object()

    @app.get("/bad-header")
    def bad_header(request: Request) -> Response:
        return Response(b"", headers={"X-Echo": SECRET + "\r\nSet-Cookie: x"})

    @app.get("/stream-early")
    def stream_early(request: Request) -> StreamResponse:
        async def gen() -> AsyncIterator[bytes]:
            raise RuntimeError(SECRET)
            yield b""  # pragma: no cover

        return StreamResponse(gen())

    @app.get("/ok")
    def ok(request: Request) -> bytes:
        return b"ok"

    return app


@pytest.mark.parametrize(
    ("path", "secret_in_log"),
    [
        ("/sync", True),
        ("/async-early", True),
        ("/async-late", True),
        ("/blocking", True),
        ("/bad-result", False),
        ("/bad-header", False),
    ],
)
async def test_exception_becomes_a_bare_500(
    serve: StartServer,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
    path: str,
    secret_in_log: bool,
) -> None:
    server = await serve(failing_app())
    client = await connect(server.port)
    with caplog.at_level(logging.ERROR, logger="wirespeed.error"):
        await client.send(get(path))
        resp = await client.response()
        await asyncio.sleep(0.05)
    assert resp.status == 500
    assert (resp.header("content-type") or "").startswith("text/plain")
    assert SECRET.encode() not in resp.body
    assert b"Error" not in resp.body and b"Traceback" not in resp.body
    assert len(resp.body) < 80
    logged = [r for r in caplog.records if r.name == "wirespeed.error"]
    assert logged, "the failure was not logged"
    assert any(r.exc_info is not None for r in logged), "no traceback in the log"
    assert (SECRET in caplog.text) is secret_in_log
    # After a 500 the server may close, but never leaves the client hanging.
    if not resp.closes:
        await client.send(get("/ok"))
        assert (await client.response()).body == b"ok"


async def test_stream_failing_before_first_piece(serve: StartServer, connect: Connect) -> None:
    # The head of a stream goes out before its first piece: a failure then can only end the
    # connection, and must never leak the exception text.
    server = await serve(failing_app())
    client = await connect(server.port)
    await client.send(get("/stream-early"))
    try:
        resp = await client.response()
    except (asyncio.IncompleteReadError, EOFError, ConnectionError):
        return
    assert resp.status == 500
    assert SECRET.encode() not in resp.body


# -- the Request ---------------------------------------------------------------------------------


def request_app(seen: dict[str, Any]) -> App:
    app = App()

    @app.route("/inspect/{name}", methods=["GET", "POST"])
    async def inspect(request: Request) -> dict[str, Any]:
        seen["request"] = request
        return {
            "method": request.method,
            "path": request.path,
            "raw_path": request.raw_path.decode("latin-1"),
            "query_string": request.query_string.decode("latin-1"),
            "query": request.query,
            "tags": request.query_list("tag"),
            "params": request.path_params,
            "version": request.http_version,
            "ua": request.headers.get("User-Agent"),
            "ua_lower": request.headers.get("user-agent"),
            "ua_get": request.headers.get("USER-AGENT"),
            "accept_all": request.headers.getall("accept"),
            "has_cookie": "cookie" in request.headers,
            "missing": request.headers.get("x-missing"),
            "names": sorted(request.headers),
            "client_host": request.client[0] if request.client else None,
        }

    @app.post("/body")
    async def body(request: Request) -> dict[str, Any]:
        return {"len": len(await request.body())}

    @app.post("/json")
    async def json_body(request: Request) -> Any:
        return await request.json()

    @app.post("/twice")
    async def twice(request: Request) -> bytes:
        await request.body()
        try:
            await request.body()
        except RuntimeError:
            return b"refused second read"
        return b"read twice"

    return app


async def test_request_attributes(serve: StartServer, connect: Connect, bytewise: bool) -> None:
    seen: dict[str, Any] = {}
    server = await serve(request_app(seen))
    client = await connect(server.port)
    await client.send(
        b"GET /inspect/h%C3%A9%20x?tag=a&tag=b&q=%C3%A9+1&empty= HTTP/1.1\r\n"
        b"Host: t\r\nUser-Agent: probe/1\r\nAccept: text/html\r\nACCEPT: */*\r\n"
        b"Cookie: a=b\r\n\r\n",
        bytewise=bytewise,
    )
    info = orjson.loads((await client.response()).body)
    assert info["method"] == "GET"
    assert info["path"] == "/inspect/h\u00e9 x"
    assert info["raw_path"] == "/inspect/h%C3%A9%20x"
    assert info["query_string"] == "tag=a&tag=b&q=%C3%A9+1&empty="
    assert info["query"]["tag"] == "a"  # first value
    assert info["query"]["empty"] == ""
    assert info["query"]["q"] in ("\u00e9 1", "\u00c3\u00a9 1")  # decoded, as UTF-8 or latin-1
    assert info["tags"] == ["a", "b"]
    assert info["params"] == {"name": "h\u00e9 x"}
    assert info["version"] == "1.1"
    assert info["ua"] == info["ua_lower"] == info["ua_get"] == "probe/1"
    assert info["accept_all"] == ["text/html", "*/*"]
    assert info["has_cookie"] is True
    assert info["missing"] is None
    assert info["names"] == ["accept", "cookie", "host", "user-agent"]
    assert info["client_host"] == "127.0.0.1"


async def test_query_is_utf8(serve: StartServer, connect: Connect) -> None:
    # Percent-encoded query text is UTF-8 (RFC 3986 §2.5, WHATWG URL): "%C3%A9" is one "é".
    server = await serve(request_app({}))
    client = await connect(server.port)
    await client.send(get("/inspect/x?q=%C3%A9"))
    assert orjson.loads((await client.response()).body)["query"]["q"] == "\u00e9"


async def test_request_body_and_json(serve: StartServer, connect: Connect) -> None:
    server = await serve(request_app({}))
    client = await connect(server.port)
    doc = {"k": [1, 2, 3], "s": "\u00e9"}
    data = orjson.dumps(doc)
    await client.send(
        b"POST /json HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(data), data)
    )
    assert orjson.loads((await client.response()).body) == doc
    await client.send(b"POST /twice HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nab")
    assert (await client.response()).body == b"refused second read"
    await client.send(b"POST /body HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
    assert orjson.loads((await client.response()).body) == {"len": 0}


async def test_blocking_handler_runs_off_the_loop(serve: StartServer, connect: Connect) -> None:
    app = App()
    loop_thread = threading.get_ident()

    @app.get("/where", blocking=True)
    def where(request: Request) -> dict[str, bool]:
        return {"on_loop": threading.get_ident() == loop_thread}

    @app.get("/plain")
    def plain(request: Request) -> dict[str, bool]:
        return {"on_loop": threading.get_ident() == loop_thread}

    server = await serve(app)
    client = await connect(server.port)
    await client.send(get("/where") + get("/plain"))
    assert orjson.loads((await client.response()).body) == {"on_loop": False}
    assert orjson.loads((await client.response()).body) == {"on_loop": True}


async def test_startup_and_shutdown_hooks(serve: StartServer) -> None:
    app = App()
    calls: list[str] = []
    app.startup.append(lambda: calls.append("sync-start"))

    async def async_start() -> None:
        calls.append("async-start")

    app.startup.append(async_start)
    app.shutdown.append(lambda: calls.append("stop"))
    server = await serve(app)
    assert calls == ["sync-start", "async-start"]
    await server.stop(0)
    assert calls[-1] == "stop"
