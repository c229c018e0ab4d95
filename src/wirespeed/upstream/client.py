"""An HTTP/1.1 client on the connection pool: keep-alive, streaming bodies, strict framing.

Theory of operation
-------------------
A request borrows a :class:`~wirespeed.upstream.pool.Connection` (a raw non-blocking socket),
writes the request head (and body), then reads the response on that socket directly: a
non-blocking ``recv`` first, and only when it would block, a one-shot ``loop.add_reader`` wait
with a timer for the deadline. No transport, no protocol object and no stream buffer sit in
between, so a body can go from the socket to a file through one reusable buffer
(``recv_into`` + ``os.pwrite``) and never exists in memory as a whole.

Parsing is httptools, like the server's: the head (found by its blank line, at most
:data:`MAX_HEAD` bytes) is fed to an ``HttpResponseParser``, which validates the status line,
fields and ``Content-Length``. The body framing follows RFC 9112 section 6.3, in this order:
responses to HEAD and 1xx/204/304 have none; ``Transfer-Encoding: chunked`` is decoded by the
same parser; a ``Content-Length`` body is counted by us (the bulk path, no per-chunk Python
object); anything else is read until the server closes, which also ends the connection. Interim
1xx responses are skipped.

The connection goes back to the pool only if the whole response was read, the server allowed
keep-alive and no stray byte followed the response. A body left unread when the caller is done
(or an error, or a cancellation) closes the connection: the next request must start at a
message boundary.

A stale pooled connection that fails before any byte of the response arrived is retried once
on a fresh connection for idempotent methods (GET, HEAD, PUT, DELETE, OPTIONS, TRACE: RFC 9110
section 9.2.2), like Go's transport and urllib3 do, because the server may have closed it while
the request was on its way.

Timeouts (:class:`Timeouts`): ``connect`` bounds the TCP handshake, ``read`` each wait for the
next bytes, ``total`` the whole exchange including the body, ``pool`` the wait for a free slot.
Redirects are not followed unless ``follow_redirects=True``.

The error vocabulary is small (STYLE.md item 8): :class:`UpstreamError` and its subclasses
:class:`ConnectError`, :class:`UpstreamTimeout` (with ``phase``), :class:`ConnectionLost` (with
the body bytes ``received``), :class:`ProtocolError`, :class:`StatusError`,
:class:`InvalidURL`, :class:`BodyTooLarge`, :class:`PoolClosed`. ``OSError`` never escapes
from the socket: it is translated at the edge.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Final, TypeVar

import httptools

from wirespeed.upstream.pool import (
    ConnectError,
    Connection,
    Origin,
    Pool,
    PoolClosed,
    UpstreamError,
    UpstreamTimeout,
)

__all__ = [
    "BodyTooLarge",
    "Client",
    "ConnectError",
    "ConnectionLost",
    "InvalidURL",
    "PoolClosed",
    "ProtocolError",
    "Response",
    "StatusError",
    "StreamingResponse",
    "Timeouts",
    "UpstreamError",
    "UpstreamTimeout",
    "parse_url",
]

# Largest response head accepted: 64 KiB, like the server's request-head limit and above
# nginx's large_client_header_buffers (4 x 8 KiB); real response heads are under 2 KiB.
MAX_HEAD: Final = 64 * 1024
# Bytes asked of the kernel per recv on the bulk path. 256 KiB: asyncio and uvloop read 256 KiB
# per call too; measured with scripts/bench_upstream.py, 1 MiB saves nothing on loopback and
# costs 4x the memory per connection.
READ_SIZE: Final = 256 * 1024
# Bytes asked per recv while looking for the end of a head: 16 KiB, arbitrary; covers any
# common head (under 2 KiB) plus the start of its body, without allocating READ_SIZE per request.
HEAD_READ_SIZE: Final = 16 * 1024
# Unread body bytes a client drains to keep a connection after a redirect: small bodies only.
DRAIN_LIMIT: Final = 64 * 1024
# Default cap of Client.request bodies held in memory: 16 MiB, arbitrary. Stream larger ones.
DEFAULT_MAX_BODY: Final = 16 * 1024 * 1024
# RFC 9110 section 15.4: the redirects a client may follow automatically.
_REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})
# RFC 9110 section 9.2.2: safe to send twice.
_IDEMPOTENT: Final = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})
_USER_AGENT: Final = "wirespeed/0.1"

_T = TypeVar("_T")


class ConnectionLost(UpstreamError):
    """The connection closed or reset before the response was complete.

    ``received`` counts the body bytes that arrived (0 if the head was incomplete) and
    ``expected`` the declared length if there was one: a short body shows as
    ``received < expected``.
    """

    def __init__(self, message: str, *, received: int = 0, expected: int | None = None) -> None:
        super().__init__(message)
        self.received = received
        self.expected = expected


class ProtocolError(UpstreamError):
    """The peer broke HTTP/1.1: an unparsable head, bad chunking, a head over MAX_HEAD."""


class StatusError(UpstreamError):
    """A 4xx/5xx status, raised by :meth:`Response.raise_for_status` (``status`` attribute)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class InvalidURL(UpstreamError, ValueError):
    """The URL is not ``http://host[:port][/path]``."""


class BodyTooLarge(UpstreamError):
    """A buffered response body exceeded ``max_body``; use :meth:`Client.stream`."""


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Deadlines in seconds; None disables one.

    ``connect``: the TCP handshake (None: the pool's ``connect_timeout``, 10 s by default);
    ``read``: each wait for the socket to become readable or writable, so a slow but steady
    body never trips it (30 s: half of nginx's proxy_read_timeout of 60 s; an upstream silent
    that long in the middle of a response is stuck); ``total``: the whole exchange, body
    included (off by default: a large download takes as long as it takes); ``pool``: waiting for
    a free connection slot (off by default; bounded by ``total`` when that is set).

    Example: ``Timeouts(read=5, total=30)``.
    """

    connect: float | None = None
    read: float | None = 30.0
    total: float | None = None
    pool: float | None = None


def parse_url(url: str) -> tuple[Origin, str]:
    """Split ``http://host[:port]/path?query`` into an :class:`Origin` and a request target.

    >>> parse_url("http://127.0.0.1:8080/a b?x=1")
    (Origin(scheme='http', host='127.0.0.1', port=8080), '/a%20b?x=1')

    Raises :class:`InvalidURL` for other schemes, a missing host or a bad port.
    """
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidURL(f"invalid URL {url!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme == "https":
        raise InvalidURL(f"https is not supported (no TLS yet): {url!r}")
    if scheme != "http":
        raise InvalidURL(f"expected an http:// URL, got {url!r}")
    if not parts.hostname:
        raise InvalidURL(f"no host in URL {url!r}")
    path = urllib.parse.quote(parts.path or "/", safe="/%:@!$&'()*+,;=-._~")
    target = f"{path}?{parts.query}" if parts.query else path
    return Origin("http", parts.hostname, port or 80), target


def _host_header(origin: Origin) -> str:
    host = f"[{origin.host}]" if ":" in origin.host else origin.host
    return host if origin.port == 80 else f"{host}:{origin.port}"


@dataclass(slots=True)
class Response:
    """A complete response. Field names are lowercased; values are latin-1 ``str``.

    Example::

        response = await client.request("GET", "http://127.0.0.1:8080/")
        response.raise_for_status()
        print(response.status, response.header("content-type"), len(response.body))
    """

    status: int
    reason: str
    version: str
    headers: list[tuple[str, str]]
    url: str
    body: bytes = b""

    def header(self, name: str) -> str | None:
        """The field's value (several fields joined with ", "), or None."""
        return _header(self.headers, name)

    def raise_for_status(self) -> None:
        """Raise :class:`StatusError` for a 4xx or 5xx status."""
        _raise_for_status(self.status, self.reason, self.url)


def _header(headers: list[tuple[str, str]], name: str) -> str | None:
    name = name.lower()
    values = [v for k, v in headers if k == name]
    return ", ".join(values) if values else None


def _raise_for_status(status: int, reason: str, url: str) -> None:
    if status >= 400:
        raise StatusError(f"{status} {reason} from {url}".replace("  ", " "), status)


class _Sink:
    """httptools callbacks: the head's fields, then decoded chunked-body pieces."""

    __slots__ = ("body", "complete", "headers", "messages", "reason")

    def __init__(self) -> None:
        self.headers: list[tuple[str, str]] = []
        self.reason = ""
        self.body: list[bytes] = []
        self.complete = False
        self.messages = 0

    def on_message_begin(self) -> None:
        self.messages += 1

    def on_status(self, status: bytes) -> None:
        self.reason += status.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1").lower(), value.decode("latin-1").strip()))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True


# Body framing kinds (RFC 9112 section 6.3).
_NONE: Final = 0
_LENGTH: Final = 1
_CHUNKED: Final = 2
_UNTIL_CLOSE: Final = 3


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _expire(waiter: asyncio.Future[None], error: UpstreamTimeout | None) -> None:
    if not waiter.done() and error is not None:
        waiter.set_exception(error)


class _Wire:
    """Deadline-bound reads and writes on a pooled connection's raw socket."""

    __slots__ = ("conn", "deadline", "loop", "read_timeout")

    def __init__(
        self, conn: Connection, read_timeout: float | None, deadline: float | None
    ) -> None:
        self.conn = conn
        self.loop = asyncio.get_running_loop()
        self.read_timeout = read_timeout
        self.deadline = deadline  # loop.time() based, for the total timeout

    async def _wait(self, writable: bool) -> None:
        loop = self.loop
        fd = self.conn.sock.fileno()
        waiter: asyncio.Future[None] = loop.create_future()
        when, error = None, None
        if self.read_timeout is not None:
            when = loop.time() + self.read_timeout
            phase = "write" if writable else "read"
            error = UpstreamTimeout(phase, f"no progress for {self.read_timeout} s ({phase})")
        if self.deadline is not None and (when is None or self.deadline < when):
            when = self.deadline
            error = UpstreamTimeout("total", "the request took longer than its total timeout")
        timer = loop.call_at(when, _expire, waiter, error) if when is not None else None
        if writable:
            loop.add_writer(fd, _wake, waiter)
        else:
            loop.add_reader(fd, _wake, waiter)
        try:
            await waiter
        finally:
            if timer is not None:
                timer.cancel()
            if writable:
                loop.remove_writer(fd)
            else:
                loop.remove_reader(fd)

    async def recv_into(self, view: memoryview) -> int:
        """Bytes read into ``view`` (0 at EOF); the pooled leftover first."""
        conn = self.conn
        if conn.buffer:
            n = min(len(view), len(conn.buffer))
            view[:n] = conn.buffer[:n]
            conn.buffer = conn.buffer[n:]
            return n
        return await self._read(lambda: conn.sock.recv_into(view))

    async def recv(self, size: int) -> bytes:
        conn = self.conn
        if conn.buffer:
            data, conn.buffer = conn.buffer[:size], conn.buffer[size:]
            return data
        return await self._read(lambda: conn.sock.recv(size))

    async def _read(self, attempt: Callable[[], _T]) -> _T:
        """Retry a non-blocking read until it returns, waiting for readability in between."""
        while True:
            try:
                return attempt()
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as exc:
                raise ConnectionLost(f"connection to {self.conn.origin} lost: {exc}") from None
            await self._wait(writable=False)

    async def send_all(self, data: bytes) -> None:
        view = memoryview(data)
        sock = self.conn.sock
        while view:
            try:
                sent = sock.send(view)
            except (BlockingIOError, InterruptedError):
                await self._wait(writable=True)
                continue
            except OSError as exc:
                raise ConnectionLost(
                    f"connection to {self.conn.origin} lost while sending: {exc}"
                ) from None
            view = view[sent:]


def _pwrite_all(fd: int, data: memoryview | bytes, offset: int | None) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view) if offset is None else os.pwrite(fd, view, offset)
        view = view[written:]
        if offset is not None:
            offset += written


class StreamingResponse:
    """A response whose body is still on the socket; read it once, in one of three ways.

    * ``await response.read()`` -> bytes (bounded by ``max_body``);
    * ``async for piece in response.iter_bytes()``;
    * ``await response.write_to(fd, offset)``: straight into a file with ``os.pwrite`` at
      ``offset`` (or ``os.write`` at the current position when ``offset`` is None), through one
      :data:`READ_SIZE` buffer: the body is never in memory as a whole.

    ``received`` counts the body bytes read so far and ``length`` is the declared
    ``Content-Length`` (None for chunked or close-delimited bodies). A connection that ends
    early raises :class:`ConnectionLost` carrying ``received``, so a caller can resume with a
    Range request from that byte.

    Example::

        async with client.stream("GET", url) as response:
            response.raise_for_status()
            with open("out.bin", "wb") as f:
                await response.write_to(f.fileno(), 0)
    """

    def __init__(
        self,
        wire: _Wire,
        parser: httptools.HttpResponseParser,
        sink: _Sink,
        *,
        status: int,
        version: str,
        url: str,
        framing: int,
        length: int | None,
        keep_alive: bool,
    ) -> None:
        self.status = status
        self.reason = sink.reason
        self.version = version
        self.headers = sink.headers
        self.url = url
        self.length = length
        self.received = 0
        self._wire = wire
        self._parser = parser
        self._sink = sink
        self._framing = framing
        self._keep_alive = keep_alive
        self._done = framing == _NONE or (framing == _LENGTH and length == 0)
        self._consumed = False

    @property
    def complete(self) -> bool:
        """True once the whole body was read."""
        return self._done

    def header(self, name: str) -> str | None:
        """The field's value (several fields joined with ", "), or None."""
        return _header(self.headers, name)

    def raise_for_status(self) -> None:
        """Raise :class:`StatusError` for a 4xx or 5xx status."""
        _raise_for_status(self.status, self.reason, self.url)

    def _reusable(self) -> bool:
        return (
            self._done
            and self._keep_alive
            and self._framing != _UNTIL_CLOSE
            and self._sink.messages <= 1
            and not self._wire.conn.buffer
        )

    def _claim(self) -> None:
        if self._consumed:
            raise RuntimeError("the response body was already read")
        self._consumed = True

    def _lost(self, during: str) -> ConnectionLost:
        origin = self._wire.conn.origin
        if self.length is not None:
            what = f"after {self.received} of {self.length} body bytes"
        else:
            what = f"after {self.received} body bytes"
        return ConnectionLost(
            f"{origin} closed the connection {what} ({during})",
            received=self.received,
            expected=self.length,
        )

    async def _next(self, size: int) -> bytes:
        """The next piece of body (b"" at the end)."""
        if self._done:
            return b""
        wire = self._wire
        if self._framing == _CHUNKED:
            sink = self._sink
            while not sink.body and not sink.complete:
                data = await wire.recv(size)
                if not data:
                    raise self._lost("chunked body")
                try:
                    self._parser.feed_data(data)
                except httptools.HttpParserError as exc:
                    raise ProtocolError(
                        f"bad chunked body from {wire.conn.origin}: {exc}"
                    ) from None
            piece = b"".join(sink.body)
            sink.body.clear()
            self._done = sink.complete
            self.received += len(piece)
            return piece
        if self._framing == _LENGTH:
            assert self.length is not None
            size = min(size, self.length - self.received)
        data = await wire.recv(size)
        if not data:
            if self._framing == _UNTIL_CLOSE:
                self._done = True
                return b""
            raise self._lost("Content-Length body")
        self.received += len(data)
        if self._framing == _LENGTH and self.received == self.length:
            self._done = True
        return data

    async def iter_bytes(self, size: int = READ_SIZE) -> AsyncIterator[bytes]:
        """Yield the body in pieces of at most ``size`` bytes (chunked: as decoded)."""
        self._claim()
        while True:
            piece = await self._next(size)
            if not piece:
                if self._done:
                    return
                continue
            yield piece

    async def read(self, max_body: int = DEFAULT_MAX_BODY) -> bytes:
        """The whole body; :class:`BodyTooLarge` beyond ``max_body`` bytes."""
        if self.length is not None and self.length > max_body:
            raise BodyTooLarge(f"body of {self.length} bytes exceeds max_body={max_body}")
        pieces: list[bytes] = []
        total = 0
        async for piece in self.iter_bytes():
            total += len(piece)
            if total > max_body:
                raise BodyTooLarge(f"body exceeds max_body={max_body} bytes")
            pieces.append(piece)
        return b"".join(pieces)

    async def write_to(
        self,
        fd: int,
        offset: int | None = None,
        *,
        on_progress: Callable[[int], None] | None = None,
    ) -> int:
        """Write the rest of the body to ``fd`` at ``offset``; return the bytes written.

        ``on_progress(n)`` is called after each write of ``n`` bytes (keep it cheap: it runs
        once per :data:`READ_SIZE` at most). ``self.received`` advances as bytes are written,
        so after a :class:`ConnectionLost` ``offset + received`` is where to resume.
        """
        self._claim()
        written = 0
        if self._framing == _CHUNKED:
            while not self._done:
                piece = await self._next(READ_SIZE)
                if piece:
                    _pwrite_all(fd, piece, None if offset is None else offset + written)
                    written += len(piece)
                    if on_progress is not None:
                        on_progress(len(piece))
            return written
        wire = self._wire
        buffer = bytearray(READ_SIZE)
        view = memoryview(buffer)
        length = self.length
        while not self._done:
            want = READ_SIZE if length is None else min(READ_SIZE, length - self.received)
            n = await wire.recv_into(view[:want])
            if n == 0:
                if self._framing == _UNTIL_CLOSE:
                    self._done = True
                    break
                raise self._lost("Content-Length body")
            _pwrite_all(fd, view[:n], None if offset is None else offset + written)
            written += n
            self.received += n
            if length is not None and self.received == length:
                self._done = True
            if on_progress is not None:
                on_progress(n)
        return written

    async def _drain(self, limit: int) -> bool:
        """Read and drop a small rest of body, so the connection can be reused."""
        if self._done:
            return True
        if self.length is not None and self.length - self.received > limit:
            return False
        with contextlib.suppress(UpstreamError):
            while not self._done and self.received <= limit:
                await self._next(READ_SIZE)
        return self._done


HeadersArg = Mapping[str, str] | Iterable[tuple[str, str]] | None


class Client:
    """An HTTP/1.1 client on a :class:`~wirespeed.upstream.pool.Pool`.

    Example::

        async with Client() as client:
            response = await client.request("GET", "http://127.0.0.1:8080/")
            print(response.status, response.body)
            async with client.stream("GET", "http://127.0.0.1:8080/big") as streaming:
                await streaming.write_to(fd, 0)

    Without ``pool`` the client creates one and closes it in :meth:`aclose`; a pool passed in is
    shared and left open. ``headers`` are sent with every request. Status codes never raise by
    themselves: call ``raise_for_status()``. With ``follow_redirects=True`` up to
    ``max_redirects`` redirects (RFC 9110 section 15.4) are followed; 303, and 301/302 after
    POST, become GET.
    """

    def __init__(
        self,
        pool: Pool | None = None,
        *,
        timeouts: Timeouts | None = None,
        follow_redirects: bool = False,
        # 10: Firefox and Chrome stop at 20, curl -L at 50; an API chain deeper than a few hops
        # is a loop or a mistake.
        max_redirects: int = 10,
        headers: HeadersArg = None,
    ) -> None:
        self._owns_pool = pool is None
        self.pool = pool if pool is not None else Pool()
        self.timeouts = timeouts if timeouts is not None else Timeouts()
        self.follow_redirects = follow_redirects
        self.max_redirects = max_redirects
        self.headers: list[tuple[str, str]] = []
        if headers is not None:
            self.headers.extend(headers.items() if isinstance(headers, Mapping) else headers)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_pool:
            await self.pool.aclose()

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: HeadersArg = None,
        body: bytes | None = None,
        timeouts: Timeouts | None = None,
        max_body: int = DEFAULT_MAX_BODY,
    ) -> Response:
        """Send a request and read the whole response into memory.

        Raises :class:`BodyTooLarge` beyond ``max_body`` bytes; use :meth:`stream` for files.
        """
        async with self.stream(method, url, headers=headers, body=body, timeouts=timeouts) as r:
            data = await r.read(max_body)
            return Response(r.status, r.reason, r.version, r.headers, r.url, data)

    async def get(self, url: str, *, headers: HeadersArg = None) -> Response:
        """``request("GET", url)``."""
        return await self.request("GET", url, headers=headers)

    async def head(self, url: str, *, headers: HeadersArg = None) -> Response:
        """``request("HEAD", url)``."""
        return await self.request("HEAD", url, headers=headers)

    @contextlib.asynccontextmanager
    async def stream(
        self,
        method: str,
        url: str,
        *,
        headers: HeadersArg = None,
        body: bytes | None = None,
        timeouts: Timeouts | None = None,
    ) -> AsyncIterator[StreamingResponse]:
        """Send a request; yield the response with its body still to read.

        When the block ends, the connection returns to the pool if the body was read to the
        end and the server allows keep-alive, else it is closed. The total timeout, if any,
        covers the block too.
        """
        t = timeouts or self.timeouts
        loop = asyncio.get_running_loop()
        deadline = None if t.total is None else loop.time() + t.total
        method = method.upper()
        conn, response = await self._start(method, url, headers, body, t, deadline)
        try:
            yield response
        except BaseException:
            self.pool.release(conn, reuse=False)
            raise
        conn.reusable = response._reusable()
        self.pool.release(conn)

    # -- one exchange --------------------------------------------------------------------------

    async def _start(
        self,
        method: str,
        url: str,
        headers: HeadersArg,
        body: bytes | None,
        t: Timeouts,
        deadline: float | None,
    ) -> tuple[Connection, StreamingResponse]:
        for _ in range(self.max_redirects + 1):
            conn, response = await self._exchange(method, url, headers, body, t, deadline)
            location = response.header("location")
            if not (self.follow_redirects and response.status in _REDIRECTS and location):
                return conn, response
            reuse = await response._drain(DRAIN_LIMIT)
            conn.reusable = reuse and response._reusable()
            self.pool.release(conn)
            url = urllib.parse.urljoin(url, location)
            if response.status == 303 or (response.status in (301, 302) and method == "POST"):
                method, body = "GET", None
        raise ProtocolError(f"more than {self.max_redirects} redirects, last to {url}")

    async def _exchange(
        self,
        method: str,
        url: str,
        headers: HeadersArg,
        body: bytes | None,
        t: Timeouts,
        deadline: float | None,
    ) -> tuple[Connection, StreamingResponse]:
        origin, target = parse_url(url)
        request = self._request_head(method, origin, target, headers, body)
        loop = asyncio.get_running_loop()
        for attempt in (1, 2):
            wait, connect = t.pool, t.connect
            if deadline is not None:
                # The total deadline bounds the wait for a slot and the handshake too.
                left = max(0.001, deadline - loop.time())
                wait = left if wait is None else min(wait, left)
                connect = min(connect or self.pool.connect_timeout, left)
            conn = await self.pool.acquire(origin, timeout=wait, connect_timeout=connect)
            reused = conn.requests > 1
            try:
                wire = _Wire(conn, t.read, deadline)
                await wire.send_all(request)
                if body:
                    await wire.send_all(body)
                response = await self._read_head(wire, method, url)
            except ConnectionLost:
                self.pool.release(conn, reuse=False)
                if attempt == 1 and reused and method in _IDEMPOTENT:
                    continue  # the server closed it while the request was on its way
                raise
            except BaseException:
                self.pool.release(conn, reuse=False)
                raise
            return conn, response
        raise AssertionError("unreachable")  # pragma: no cover

    def _request_head(
        self,
        method: str,
        origin: Origin,
        target: str,
        headers: HeadersArg,
        body: bytes | None,
    ) -> bytes:
        fields: list[tuple[str, str]] = list(self.headers)
        if headers is not None:
            fields.extend(headers.items() if isinstance(headers, Mapping) else headers)
        names = {name.lower() for name, _ in fields}
        lines = [f"{method} {target} HTTP/1.1", f"Host: {_host_header(origin)}"]
        if "user-agent" not in names:
            lines.append(f"User-Agent: {_USER_AGENT}")
        if body is not None and "content-length" not in names:
            lines.append(f"Content-Length: {len(body)}")
        for name, value in fields:
            if name.lower() == "host":
                continue
            if any(c in name or c in value for c in "\r\n\0") or ":" in name or not name:
                raise ValueError(f"invalid header field {name!r}: {value!r}")
            lines.append(f"{name}: {value}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def _read_head(self, wire: _Wire, method: str, url: str) -> StreamingResponse:
        conn = wire.conn
        while True:  # loops over interim 1xx responses
            buffer = bytearray(conn.buffer)
            conn.buffer = b""
            start = 0
            while True:
                end = buffer.find(b"\r\n\r\n", max(0, start - 3))
                if end >= 0:
                    break
                if len(buffer) > MAX_HEAD:
                    raise ProtocolError(f"response head from {conn.origin} over {MAX_HEAD} bytes")
                start = len(buffer)
                data = await wire.recv(HEAD_READ_SIZE)
                if not data:
                    where = "before responding" if not buffer else "in the middle of the head"
                    raise ConnectionLost(f"{conn.origin} closed the connection {where}")
                buffer += data
            end += 4
            conn.buffer = bytes(buffer[end:])
            sink = _Sink()
            parser = httptools.HttpResponseParser(sink)
            try:
                parser.feed_data(bytes(buffer[:end]))
            except httptools.HttpParserError as exc:
                raise ProtocolError(f"bad response head from {conn.origin}: {exc}") from None
            status = parser.get_status_code()
            if 100 <= status < 200:
                if status == 101:
                    raise ProtocolError(f"{conn.origin} switched protocols (101) unasked")
                continue
            break
        framing, length = _framing(sink.headers, status, method)
        # Asked now: once the parser has seen the end of the message it forgets the answer.
        keep_alive = parser.should_keep_alive()
        if framing == _CHUNKED:
            # The parser is in body state: feed it what came after the head.
            pending, conn.buffer = conn.buffer, b""
            if pending:
                try:
                    parser.feed_data(pending)
                except httptools.HttpParserError as exc:
                    raise ProtocolError(f"bad chunked body from {conn.origin}: {exc}") from None
        return StreamingResponse(
            wire,
            parser,
            sink,
            status=status,
            version=parser.get_http_version(),
            url=url,
            framing=framing,
            length=length,
            keep_alive=keep_alive,
        )


def _framing(headers: list[tuple[str, str]], status: int, method: str) -> tuple[int, int | None]:
    """(framing kind, Content-Length) by RFC 9112 section 6.3."""
    if method == "HEAD" or status in (204, 304):
        return _NONE, None
    codings = [
        c.strip().lower() for k, v in headers if k == "transfer-encoding" for c in v.split(",")
    ]
    if codings:
        # Chunked must be the final coding; otherwise the body runs to the close.
        return (_CHUNKED, None) if codings[-1] == "chunked" else (_UNTIL_CLOSE, None)
    lengths = {v for k, v in headers if k == "content-length"}
    if lengths:
        # httptools already rejected malformed and conflicting values.
        return _LENGTH, int(next(iter(lengths)))
    return _UNTIL_CLOSE, None
