"""Response types a handler can return, and the conversion of plain return values.

:class:`Response` holds a complete body, :class:`StreamResponse` pulls its body from an
iterator, :class:`FileResponse` names a file the server sends zero-copy. :func:`to_response`
turns ``bytes``/``str``/``dict``/``list``/``None`` results into a :class:`Response`.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterable, Iterable, Mapping, Sequence
from typing import Any, TypeAlias
from urllib.parse import quote

import orjson

from wirespeed.server.mime import content_type_for

__all__ = [
    "FileResponse",
    "HeaderInput",
    "Response",
    "StreamResponse",
    "encode_headers",
    "to_response",
]

HeaderInput: TypeAlias = Mapping[str, str] | Iterable[tuple[str, str]] | None


def encode_headers(headers: HeaderInput) -> Sequence[tuple[bytes, bytes]]:
    """Validate and encode user header fields once, at response construction."""
    if not headers:
        return []
    items = headers.items() if isinstance(headers, Mapping) else headers
    out = []
    for name, value in items:
        # A CR or LF would let a handler (or the data it echoes) split the response.
        if "\r" in name or "\n" in name or ":" in name or "\r" in value or "\n" in value:
            raise ValueError(f"invalid character in header field {name!r}")
        out.append((name.encode("latin-1"), value.encode("latin-1")))
    return out


# Shared by every response without extra header fields (never mutated: it is a tuple).
_NO_HEADERS: tuple[tuple[bytes, bytes], ...] = ()


class Response:
    """A complete response with its body in memory.

    ``Response(b"Hello", content_type="text/plain")`` sends ``Content-Length: 5``. ``body`` may
    be ``bytes`` or ``str`` (encoded as UTF-8; the default content type is then
    ``text/plain; charset=utf-8``, and ``application/octet-stream`` for bytes). ``headers`` is a
    mapping or a list of pairs; ``Content-Length``, ``Date``, ``Server`` and ``Connection`` are set
    by the server and must not be given. Raises :class:`ValueError` for a header value with CR or
    LF.
    """

    __slots__ = ("body", "content_type", "headers", "status")

    def __init__(
        self,
        body: bytes | str = b"",
        status: int = 200,
        headers: HeaderInput = None,
        content_type: str | None = None,
    ) -> None:
        if type(body) is not bytes:
            if isinstance(body, str):
                body = body.encode()
                if content_type is None:
                    content_type = "text/plain; charset=utf-8"
            else:
                body = bytes(body)
        self.body: bytes = body
        self.status = status
        self.content_type = content_type
        self.headers = encode_headers(headers) if headers else _NO_HEADERS

    def __repr__(self) -> str:
        return f"<Response {self.status} {len(self.body)} bytes>"


class StreamResponse:
    """A response whose body comes from an async (or plain) iterator of ``bytes``/``str``.

    Sent with ``Transfer-Encoding: chunked`` to HTTP/1.1 clients (one chunk per item; empty
    items are skipped), and to HTTP/1.0 clients as raw bytes ended by closing the connection. The
    server waits for the client to keep up before pulling the next item, so a slow reader holds at
    most the write buffer's high-water mark. Give ``content_length`` if it is known: the body is
    then sent unchunked and must be exactly that long (a short body aborts the connection).
    """

    __slots__ = ("content_length", "content_type", "headers", "iterator", "status")

    def __init__(
        self,
        iterator: AsyncIterable[bytes | str] | Iterable[bytes | str],
        status: int = 200,
        headers: HeaderInput = None,
        content_type: str | None = "application/octet-stream",
        content_length: int | None = None,
    ) -> None:
        self.iterator = iterator
        self.status = status
        self.content_type = content_type
        self.headers = encode_headers(headers) if headers else _NO_HEADERS
        self.content_length = content_length


class FileResponse:
    """Send a file, zero-copy, with Range, conditional requests and validators.

    Return it from a handler::

        @app.get("/download")
        async def download(request: Request) -> FileResponse:
            return FileResponse("/srv/media/movie.mp4")

    The server opens ``path`` when it sends the response and answers 404 if it is missing or not
    a regular file. ETag and Last-Modified come from the open descriptor; ``If-*`` headers give
    304/412; ``Range`` gives 206 or 416 (GET only). ``content_type`` defaults to the type of the
    extension. ``download_name`` adds ``Content-Disposition: attachment``. ``limit_rate``
    (bytes/s) paces the body after ``limit_rate_after`` bytes, like nginx's ``limit_rate``.
    ``precompressed=True`` lets the server send a ``.zst``/``.br``/``.gz`` sibling the client
    accepts (never for Range requests, so byte offsets always refer to the file itself).
    ``compress=True`` lets the server compress the file itself when no such sibling exists and
    the adaptive choice says it pays (text up to 1 MiB, not for Range or paced responses; the
    compressed variant is cached per file version, see :mod:`wirespeed.server.compression`).
    """

    __slots__ = (
        "compress",
        "content_type",
        "follow_symlinks",
        "headers",
        "limit_rate",
        "limit_rate_after",
        "path",
        "precompressed",
        "stat",
        "status",
    )

    def __init__(
        self,
        path: str | os.PathLike[str],
        status: int = 200,
        headers: HeaderInput = None,
        content_type: str | None = None,
        *,
        download_name: str | None = None,
        limit_rate: int | None = None,
        limit_rate_after: int = 0,
        precompressed: bool = False,
        compress: bool = False,
    ) -> None:
        self.path = os.fspath(path)
        self.status = status
        self.content_type = content_type or content_type_for(self.path)
        encoded = list(encode_headers(headers)) if headers else []
        if download_name is not None:
            value = f"attachment; filename*=UTF-8''{quote(download_name, safe='')}"
            encoded.append((b"Content-Disposition", value.encode("latin-1")))
        self.headers: Sequence[tuple[bytes, bytes]] = encoded
        if limit_rate is not None and limit_rate <= 0:
            raise ValueError("limit_rate must be positive")
        self.limit_rate = limit_rate
        self.limit_rate_after = limit_rate_after
        self.precompressed = precompressed
        self.compress = compress
        #: Whether a precompressed sibling may be a symlink (StaticFiles turns it off).
        self.follow_symlinks = True
        #: A ``stat`` of ``path`` made just before (StaticFiles sets it): lets the open-file
        #: cache skip its own check. Never trusted for the response itself: size and dates
        #: always come from the open descriptor.
        self.stat: os.stat_result | None = None

    def __repr__(self) -> str:
        return f"<FileResponse {self.path!r}>"


def to_response(result: Any) -> Response | StreamResponse | FileResponse:
    """Turn what a handler returned into a response object (see :class:`App`)."""
    if isinstance(result, (Response, StreamResponse, FileResponse)):
        return result
    if isinstance(result, bytes):
        return Response(result, content_type="text/plain")
    if isinstance(result, str):
        return Response(result)
    if isinstance(result, (dict, list)):
        return Response(orjson.dumps(result), content_type="application/json")
    if result is None:
        return Response(b"", status=204)
    if hasattr(result, "__aiter__"):
        return StreamResponse(result)
    raise TypeError(f"handler returned {type(result).__name__}, not a response")
