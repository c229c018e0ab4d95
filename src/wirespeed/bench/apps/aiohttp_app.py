"""The aiohttp peer: ``web.Response`` and ``web.FileResponse`` under ``web.run_app``.

It runs on the default asyncio loop, as ``run_app`` does unless told otherwise: that is how most
aiohttp users run it, and it is the loop whose ``loop.sendfile`` is zero-copy (uvloop's is not,
uvloop issue 228), so ``FileResponse`` gets sendfile(2). ``/json`` calls
``enable_compression()``, aiohttp's switch for negotiated compression.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from aiohttp import web

HELLO = b"Hello, World!"


def build(data: Path) -> web.Application:
    payload = (data / "payload.json").read_bytes()
    files = data / "files"

    async def hello(request: web.Request) -> web.Response:
        return web.Response(body=HELLO, content_type="text/plain")

    async def json_payload(request: web.Request) -> web.Response:
        response = web.Response(body=payload, content_type="application/json")
        response.enable_compression()
        return response

    async def file(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name in (".", ".."):
            raise web.HTTPNotFound()
        return web.FileResponse(files / name)

    app = web.Application()
    app.router.add_get("/", hello)
    app.router.add_get("/json", json_payload)
    app.router.add_get("/files/{name}", file)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data", default=os.environ.get("WIRESPEED_BENCH_DATA", "."))
    ns = parser.parse_args()
    web.run_app(build(Path(ns.data)), host=ns.host, port=ns.port, access_log=None)


if __name__ == "__main__":
    main()
