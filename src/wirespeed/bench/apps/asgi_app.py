"""The ASGI peer app, run by uvicorn, granian and wirespeed's ASGI mode.

``/`` and ``/json`` are raw ASGI, the fastest an ASGI server can be asked to go; ``/json`` is
wrapped in Starlette's ``GZipMiddleware`` with its defaults, which is how a Starlette or FastAPI
user turns compression on. Files go through Starlette's ``FileResponse`` (single ranges; on
granian it uses the ``http.response.pathsend`` extension, so granian sends the file itself).
Starlette is imported on first use, so the idle RSS of the small-response peers is that of
a raw ASGI app.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DATA = Path(os.environ.get("WIRESPEED_BENCH_DATA", "."))
HELLO = b"Hello, World!"
PAYLOAD_PATH = DATA / "payload.json"
PAYLOAD = PAYLOAD_PATH.read_bytes() if PAYLOAD_PATH.is_file() else b"[]"

_HELLO_START: Message = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"text/plain"), (b"content-length", b"13")],
}
_HELLO_BODY: Message = {"type": "http.response.body", "body": HELLO}
_NOT_FOUND: Message = {
    "type": "http.response.start",
    "status": 404,
    "headers": [(b"content-length", b"0")],
}


async def _json(scope: Scope, receive: Receive, send: Send) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(PAYLOAD)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": PAYLOAD})


_gzip_json: ASGIApp | None = None


def _compressed_json() -> ASGIApp:
    global _gzip_json
    if _gzip_json is None:
        from starlette.middleware.gzip import GZipMiddleware  # noqa: PLC0415 (see docstring)

        _gzip_json = GZipMiddleware(_json)
    return _gzip_json


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    path = scope["path"]
    if path == "/":
        await send(_HELLO_START)
        await send(_HELLO_BODY)
    elif path == "/json":
        await _compressed_json()(scope, receive, send)
    elif path.startswith("/files/") and "/" not in path[7:] and path[7:] not in ("", ".", ".."):
        from starlette.responses import FileResponse  # noqa: PLC0415 (see docstring)

        await FileResponse(DATA / "files" / path[7:])(scope, receive, send)
    else:
        await send(_NOT_FOUND)
        await send({"type": "http.response.body", "body": b""})
