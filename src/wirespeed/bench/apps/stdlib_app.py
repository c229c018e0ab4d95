"""The floor: Python's ``http.server`` (``ThreadingHTTPServer``, one thread per connection).

``/`` and ``/json`` are answered by hand; everything else is ``SimpleHTTPRequestHandler`` serving
the data directory, as ``python -m http.server`` does (no Range support, no compression: the
stdlib has neither, and the lab reports that). Three settings differ from the module's command
line, each for a reason:

- ``protocol_version = "HTTP/1.1"`` (``python -m http.server --protocol HTTP/1.1``), so keep-alive
  is possible at all;
- a listen backlog of 1024 instead of socketserver's 5, which drops SYNs when wrk opens 64
  connections at once and would measure a 1-second SYN retransmit instead of the server;
- request logging off, like every other peer.

Left as users get it: Nagle's algorithm stays on (``disable_nagle_algorithm = False``), and the
handler writes the head and the body in two sends, so on a keep-alive connection the body waits
for the delayed ACK of the head: about 40 ms per response on Linux. Measured on the lab box:
~1,400 req/s as shipped, ~5,600 req/s with ``disable_nagle_algorithm = True``. That is the
floor people actually stand on.
"""

from __future__ import annotations

import argparse
import os
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

HELLO = b"Hello, World!"


class Handler(SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    payload = b""

    def do_GET(self) -> None:
        if self.path == "/":
            self._send(HELLO, "text/plain")
        elif self.path == "/json":
            self._send(self.payload, "application/json")
        else:
            super().do_GET()

    def _send(self, body: bytes, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class Server(ThreadingHTTPServer):
    request_queue_size = 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data", default=os.environ.get("WIRESPEED_BENCH_DATA", "."))
    ns = parser.parse_args()
    data = Path(ns.data)
    Handler.payload = (data / "payload.json").read_bytes()
    with Server((ns.host, ns.port), partial(Handler, directory=str(data))) as server:
        print(f"listening on http://{ns.host}:{ns.port}", flush=True)
        server.serve_forever()


if __name__ == "__main__":
    main()
