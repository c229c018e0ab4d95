"""wirespeed: network IO at wire speed, from Python.

A zero-copy HTTP/1.1 server for files and video with native handlers, the IO building blocks it
is made of, and a benchmark lab. The public API::

    from wirespeed import App, Request, Response, StreamResponse

    app = App()

    @app.get("/")
    async def hello(request: Request) -> Response:
        return Response(b"Hello, World!", content_type="text/plain")

Run it with ``wirespeed serve module:app``.
"""

from wirespeed.server.app import App, Headers, Request
from wirespeed.server.responses import FileResponse, Response, StreamResponse

__all__ = ["App", "FileResponse", "Headers", "Request", "Response", "StreamResponse"]
__version__ = "0.1.0"
