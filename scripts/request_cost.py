"""CPU cost of one keep-alive request through the connection, without sockets.

Feeds ``GET /`` (as wrk sends it) into ``HttpProtocol.data_received`` N times with a stub
transport and prints microseconds per request. Timing is noisy on a shared machine; instruction
counts are exact, so compare changes with callgrind over N and 2N requests::

    for n in 20000 40000; do
      N=$n valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        .venv/bin/python scripts/request_cost.py 2>&1 | grep Collected
    done
    # (second - first) / 20000 = instructions per request

``SYNC=1`` uses a plain ``def`` handler returning a prebuilt Response (no coroutine, no
Response construction), to separate the server's cost from the handler's. ``STATIC=DIR`` serves
DIR as ``wirespeed serve DIR`` does and ``TARGET=/name`` picks the file: the file must be small
enough to be answered from the open-file cache's memory (the stub transport has no socket for
sendfile).
"""

from __future__ import annotations

import os
import time
from typing import Any

import uvloop

from wirespeed import App, Request, Response
from wirespeed.server.config import ServerConfig
from wirespeed.server.protocol import HttpProtocol, ServerState
from wirespeed.server.static import static_app

TARGET = os.environ.get("TARGET", "/").encode()
REQUEST = (
    b"GET %s HTTP/1.1\r\nHost: localhost:8081\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n" % TARGET
)

app = App()
if os.environ.get("STATIC"):
    app = static_app(os.environ["STATIC"])
elif os.environ.get("SYNC"):
    _HELLO = Response(b"Hello, World!", content_type="text/plain")

    @app.get("/")
    def hello_sync(request: Request) -> Response:
        return _HELLO

else:

    @app.get("/")
    async def hello(request: Request) -> Response:
        return Response(b"Hello, World!", content_type="text/plain")


class StubTransport:
    """Just enough of a transport for the request path; counts writes."""

    def __init__(self) -> None:
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1

    def writelines(self, data: Any) -> None:
        self.writes += 1

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass


async def main() -> None:
    n = int(os.environ.get("N", "200000"))
    protocol = HttpProtocol(ServerState(app, ServerConfig()))
    transport = StubTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    for _ in range(1000):  # warm caches (Date line, content-type and length lines)
        protocol.data_received(REQUEST)
    start = time.process_time()
    for _ in range(n):
        protocol.data_received(REQUEST)
    elapsed = time.process_time() - start
    assert transport.writes == n + 1000, "every request must be answered"
    print(f"{elapsed / n * 1e6:.2f} us/request of CPU over {n} requests")
    if os.environ.get("PROFILE"):
        import cProfile  # noqa: PLC0415 - only when asked
        import pstats  # noqa: PLC0415

        profile = cProfile.Profile()
        profile.enable()
        for _ in range(n):
            protocol.data_received(REQUEST)
        profile.disable()
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    uvloop.run(main())
