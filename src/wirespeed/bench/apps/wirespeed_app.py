"""The wirespeed peer: a native :class:`wirespeed.App`, run with ``wirespeed serve``.

``python -m wirespeed serve wirespeed.bench.apps.wirespeed_app:app --port PORT``; file
scenarios use ``wirespeed serve DATA_DIR`` instead, the way users serve a folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from wirespeed import App, Request, Response

DATA = Path(os.environ.get("WIRESPEED_BENCH_DATA", "."))
HELLO = b"Hello, World!"
PAYLOAD_PATH = DATA / "payload.json"
PAYLOAD = PAYLOAD_PATH.read_bytes() if PAYLOAD_PATH.is_file() else b"[]"

app = App()


@app.get("/")
async def hello(request: Request) -> Response:
    return Response(HELLO, content_type="text/plain")


@app.get("/json")
async def payload(request: Request) -> Response:
    return Response(PAYLOAD, content_type="application/json")
