"""The connection: asyncio Protocol <-> RequestReader <-> handlers.

Theory of operation
-------------------
One :class:`HttpProtocol` per TCP connection. Bytes go to a pure
:class:`~wirespeed.proto.http11.RequestReader`, which calls back ``on_request`` /
``on_body`` / ``on_request_complete``. Requests are answered strictly one at a time, in order:
the first is started at once, later (pipelined) ones wait in a queue, and reading pauses while
that queue is long, so a client cannot make us buffer more than a bounded number of requests.

A request is *done* when its response has been written and its body fully received; only then
does the next one start. A handler's coroutine is first stepped directly: most handlers finish
without suspending, and then no task is created at all (a task costs several microseconds, a
large share of a small request). Only a handler that really awaits gets a task.

Timeouts do not use a timer per connection: each connection keeps one deadline (kind + time),
and the server's ticker (see :class:`ServerState`) sweeps all connections a few times per
timeout period. The same ticker refreshes the cached ``Date`` header once a second.

Writes go through the transport; :class:`~wirespeed.io.flow.WriteFlow` tracks its pause state so
that streams wait for the client, and the next pipelined request waits too. Errors are translated
at this edge: a :class:`~wirespeed.proto.errors.ProtocolError` becomes a short plain-text answer
followed by a lingering close; a handler exception becomes a 500 with nothing internal in it, and
its traceback goes to the ``wirespeed.error`` log.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Coroutine, Generator, Iterator, Sequence
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, cast

from wirespeed.codec.compress import MIN_SIZE as COMPRESS_MIN_SIZE
from wirespeed.codec.negotiate import parse_accept_encoding
from wirespeed.io.filecache import FileCache, OpenFile
from wirespeed.io.flow import WriteFlow, bytes_acked
from wirespeed.io.pacing import RateLimiter
from wirespeed.io.tuning import SocketOptions, apply_connection_options
from wirespeed.io.zerocopy import FileSender, FileTruncated, Segment
from wirespeed.proto.errors import ProtocolError
from wirespeed.proto.http11 import BODY_LENGTH, RequestReader, split_target
from wirespeed.proto.httpdate import format_http_date
from wirespeed.server.app import App, Endpoint, Request, RequestBody
from wirespeed.server.compression import Compression, FileReader
from wirespeed.server.config import ServerConfig
from wirespeed.server.responses import FileResponse, Response, StreamResponse, to_response
from wirespeed.server.static import PRECOMPRESSED, plan_file

if TYPE_CHECKING:
    from wirespeed.proto.http11 import Limits

__all__ = ["HttpProtocol", "ServerState"]

error_log = logging.getLogger("wirespeed.error")
access_log = logging.getLogger("wirespeed.access")

# Status lines are looked up, never formatted, on the hot path.
_STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus}


_OK = _STATUS_LINES[200]


def status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        if not 100 <= status <= 999:
            raise ValueError(f"invalid status code {status}")
        line = _STATUS_LINES[status] = b"HTTP/1.1 %d \r\n" % status
    return line


_CONTENT_TYPES: dict[str, bytes] = {}
# Formatting an int costs more than a dict hit; small bodies repeat their sizes.
_LENGTH_LINES: dict[int, bytes] = {}


def _content_type_line(content_type: str) -> bytes:
    line = _CONTENT_TYPES.get(content_type)
    if line is None:
        if "\r" in content_type or "\n" in content_type:
            raise ValueError("invalid character in content type")
        line = b"Content-Type: " + content_type.encode("latin-1") + b"\r\n"
        if len(_CONTENT_TYPES) < 256:  # bounded: content types come from code, rarely from data
            _CONTENT_TYPES[content_type] = line
    return line


def _length_line(size: int) -> bytes:
    line = _LENGTH_LINES.get(size)
    if line is None:
        line = b"Content-Length: %d\r\n" % size
        # Small bodies repeat their sizes; the fast path in _start hits this. Only sizes below
        # compression's threshold, so a body that may need compressing never takes that path.
        if size < COMPRESS_MIN_SIZE:
            _LENGTH_LINES[size] = line
    return line


def _no_body_status(status: int) -> bool:
    # RFC 9110 §6.4.1: 1xx, 204 and 304 never carry content.
    return status < 200 or status in {204, 304}


# Unread request body we are willing to read and discard to keep a connection alive after the
# response; beyond that closing is cheaper. Go's net/http uses the same 256 KiB.
_DRAIN_LIMIT = 256 * 1024

# Deadline kinds.
_NONE, _IDLE, _HEADER, _BODY, _LINGER = range(5)
# Bytes read and dropped during a lingering close before giving up on the client.
_LINGER_MAX_BYTES = 1024 * 1024
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_NO_ROUTES: dict[str, Endpoint] = {}
# A stream yields to the event loop at least this often (bytes), even if its client keeps up:
# the write buffer's high-water mark, so fairness matches what backpressure would give.
_STREAM_YIELD_BYTES = 256 * 1024
_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK
# Request fields that make a file answer more than "200, the whole file" (plan_file).
_FILE_CONDITIONALS = frozenset(
    (b"range", b"if-match", b"if-none-match", b"if-modified-since", b"if-unmodified-since")
)
_NOT_ACCEPTABLE = Response(
    b"no acceptable content coding\n", 406, content_type="text/plain; charset=utf-8"
)


class ServerState:
    """What every connection of one server shares: the app, settings, clock and live connections.

    :meth:`tick` must be called every ``config.tick_interval`` seconds (the runner does); it
    refreshes the ``Date`` header and enforces every connection's deadline.
    """

    def __init__(self, app: App, config: ServerConfig) -> None:
        self.app = app
        self.config = config
        self.limits: Limits = config.limits
        self.connections: set[HttpProtocol] = set()
        self.shutting_down = False
        self.now = time.monotonic()
        self._date_second = -1
        self._server_line = b"Server: " + config.server_header.encode("latin-1") + b"\r\n"
        self.head_prefix = b""
        self._refresh_date()
        #: Requests answered so far (for tests and the lab).
        self.requests = 0
        #: Open descriptors of recently served files, shared by every connection.
        self.file_cache = FileCache()
        #: Response compression (None when turned off).
        self.compression = Compression(config.link_rate) if config.compress else None
        #: Options to set on each accepted socket, or None when the listener's are inherited.
        self.per_connection_options: SocketOptions | None = None

    def _refresh_date(self) -> None:
        second = int(time.time())
        if second != self._date_second:
            self._date_second = second
            date = format_http_date(second).encode("ascii")
            self.head_prefix = self._server_line + b"Date: " + date + b"\r\n"

    def tick(self) -> None:
        self.now = now = time.monotonic()
        self._refresh_date()
        for conn in list(self.connections):
            conn.check_deadline(now)

    def shutdown(self) -> None:
        """Begin a graceful stop: idle connections close, busy ones close after their response."""
        self.shutting_down = True
        for conn in list(self.connections):
            conn.shutdown()


class _Continue:
    """Drive a coroutine that was already stepped once (see the module docstring).

    Equivalent to ``await coro`` had the first ``send(None)`` not happened yet: it hands the
    future the coroutine yielded to the task, and passes results and exceptions back in.
    """

    __slots__ = ("_coro", "_first")

    def __init__(self, coro: Coroutine[Any, Any, Any], first: Any) -> None:
        self._coro = coro
        self._first = first

    def __await__(self) -> Generator[Any, Any, Any]:
        coro = self._coro
        value = self._first
        while True:
            try:
                sent = yield value
            except BaseException as exc:  # includes CancelledError: deliver it to the handler
                try:
                    value = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    value = coro.send(sent)
                except StopIteration as stop:
                    return stop.value


class HttpProtocol(asyncio.Protocol):
    """One HTTP/1.1 connection. Created by the event loop for each accepted socket."""

    def __init__(self, state: ServerState) -> None:
        # -- lives with the connection --
        self.state = state
        self.config = state.config
        self.app = state.app
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.reader = RequestReader(self, state.limits)
        self.flow = WriteFlow(progress=self._bytes_acked)
        self.sender: FileSender | None = None  # created by the first file response
        self.peer: tuple[str, int] | None = None
        self.closed = False
        self.closing = False  # answer what is in flight, then close
        self.read_paused = False
        self.lingering = False
        self.linger_bytes = 0
        self.deadline = 0.0
        self.deadline_kind = _NONE
        self.queue: deque[Request] = deque()
        self.advancing = False
        self.pending_error: ProtocolError | None = None
        self.refused = False  # a protocol error was answered: the stream is no longer trusted
        self.peer_eof = False  # the client half-closed: answer the queue, then close
        # -- lives with the request being answered (reset by _request_done) --
        self.current: Request | None = None
        self.task: asyncio.Task[None] | None = None
        self.responded = False  # the response head went out
        self.response_done = False  # the whole response went out
        self.keep_alive = True
        self.continue_sent = False
        # -- lives with the request whose bytes are arriving --
        self.parsing: Request | None = None

    # -- asyncio callbacks ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        transport.set_write_buffer_limits(
            high=self.config.write_high_water, low=self.config.write_low_water
        )
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.peer = (str(peer[0]), int(peer[1]))
        opts = self.state.per_connection_options
        if opts is not None:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                apply_connection_options(sock, opts)
        self.state.connections.add(self)
        # A new connection gets the head timeout for its first request; silence closes quietly.
        self.deadline_kind = _IDLE
        self.deadline = self.state.now + self.config.header_timeout
        if self.state.shutting_down:
            self.closing = True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.state.connections.discard(self)
        self.flow.close()
        if self.sender is not None:
            self.sender.close()
        task = self.task
        if task is not None and not task.done():
            task.cancel()
        lost = ConnectionResetError("client disconnected")
        for req in (self.current, self.parsing, *self.queue):
            if req is not None and req._body is not None:
                req._body.fail(lost)
        self.queue.clear()
        self.current = self.parsing = None

    def pause_writing(self) -> None:
        self.flow.pause()

    def resume_writing(self) -> None:
        self.flow.resume()
        if self.current is None and self.queue:
            self._advance()

    def data_received(self, data: bytes) -> None:
        if self.lingering:
            self.linger_bytes += len(data)
            if self.linger_bytes > _LINGER_MAX_BYTES:
                self._abort()
            return
        # No deadline change before parsing: a request that arrives whole needs none, and an
        # incomplete head gets its header deadline below, counted from this first read.
        try:
            self.reader.feed(data)
        except ProtocolError as exc:
            self._protocol_error(exc)
            return
        if self.closed or self.lingering:
            return
        parsing = self.parsing
        if parsing is not None:
            body = parsing._body
            assert body is not None
            if body.buffered > self.config.body_high_water and not body.wants_all:
                self._pause_reading()
            self.deadline_kind = _BODY
            self.deadline = self.state.now + self.config.body_timeout
        elif self.current is None:
            self._go_idle()
        else:
            self.deadline_kind = _NONE
        if self.reader.upgraded:
            # CONNECT: what follows is not HTTP. Stop reading; close after the answer.
            self.keep_alive = False
            self._pause_reading()

    def eof_received(self) -> bool:
        # The client half-closed. Answer what we have (it may still read), then close.
        if self.lingering or (self.current is None and not self.queue):
            return False
        self.peer_eof = True
        if self.parsing is not None and self.parsing._body is not None:
            self.parsing._body.fail(ConnectionResetError("client closed before sending the body"))
        return True

    # -- RequestReader sink --------------------------------------------------------------------

    def on_request(
        self,
        method: str,
        target: bytes,
        version: str,
        headers: list[tuple[bytes, bytes]],
        keep_alive: bool,
        body_kind: int,
        content_length: int,
        expect_continue: bool,
    ) -> None:
        # Int needles: `b"?" in target` first tries the needle as an int, raising and clearing a
        # TypeError inside CPython, and .find() is a full method call; `63 in` is a memchr.
        if target[0] == 47 and 63 not in target and 35 not in target:  # "/", "?", "#"
            path, query = target, b""
        else:
            path, query = split_target(target)
        if body_kind:
            body = RequestBody(body_kind, content_length, expect_continue)
            req = Request(self, method, path, query, version, headers, keep_alive, body)
            self.parsing = req
        else:
            req = Request(self, method, path, query, version, headers, keep_alive, None)
        if self.current is None and not self.advancing:
            self.current = req
            self._start(req)
        else:
            self.queue.append(req)
            if len(self.queue) >= self.config.max_pipelined:
                self._pause_reading()

    def on_body(self, chunk: bytes) -> None:
        req = self.parsing
        if req is not None:
            body = req._body
            if body is not None and not body.discard:
                body.feed(chunk)

    def on_request_complete(self) -> None:
        req = self.parsing
        if req is None:
            return  # a request without body: complete from the start
        self.parsing = None
        if req._body is not None:
            req._body.finish()
        if req is self.current and self.response_done:
            self._request_done()

    # -- dispatch ------------------------------------------------------------------------------

    def _start(self, req: Request) -> None:
        self.responded = False
        self.response_done = False
        self.continue_sent = False
        self.keep_alive = req.keep_alive and not self.closing
        path = req.path
        endpoint = self.app.fast_routes.get(req.method, _NO_ROUTES).get(path)
        if endpoint is None:
            endpoint, params, route = self.app.resolve(req.method, path)
            if endpoint is None:
                if route is not None:
                    allow = App.allowed(route)
                    self._send_error(req, 405, "method not allowed", [(b"Allow", allow.encode())])
                else:
                    self._send_error(req, 404, "not found")
                return
            if params:
                req.path_params = params
        func = endpoint.func
        if endpoint.is_async:
            try:
                coro = func(req)
                first = coro.send(None)
            except StopIteration as stop:
                result = stop.value
            except Exception as exc:
                self._handler_failed(req, exc)
                return
            else:
                self.task = self.loop.create_task(self._finish_handler(req, _Continue(coro, first)))
                return
        elif endpoint.blocking:
            future = self.loop.run_in_executor(None, func, req)
            self.task = self.loop.create_task(self._finish_handler(req, future))
            return
        else:
            try:
                result = func(req)
            except Exception as exc:
                self._handler_failed(req, exc)
                return
            if hasattr(result, "__await__") and not isinstance(result, (Response, StreamResponse)):
                # A plain function that returned an awaitable (e.g. a partial of an async def).
                self.task = self.loop.create_task(self._finish_handler(req, result))
                return
        if type(result) is not Response:
            self._respond(req, result)
            return
        # The fast path: a complete response from a handler that never suspended. The most
        # common answer, with every head line cached, is one join and one write, inline.
        type_line = _CONTENT_TYPES.get(result.content_type or "")
        length_line = _LENGTH_LINES.get(len(result.body))
        if (
            type_line is not None
            and length_line is not None
            and result.status == 200
            and not result.headers
            and self.keep_alive
            and req.http_version == "1.1"
            and req.method != "HEAD"
            and not self.config.access_log
            and self.transport is not None
        ):
            self.responded = True
            self.transport.write(
                b"".join(
                    (_OK, self.state.head_prefix, type_line, length_line, b"\r\n", result.body)
                )
            )
        else:
            try:
                self._write_response(req, result)
            except Exception as exc:
                self._handler_failed(req, exc)
                return
        if (
            req._body is None
            and self.keep_alive
            and not self.queue
            and not self.closing
            and not self.peer_eof
            and self.pending_error is None
        ):
            # Done, and nothing waits: the connection is idle (data_received arms the deadline).
            self.response_done = True
            self.state.requests += 1
            self.current = None
            if self.read_paused:
                self._resume_reading()
        else:
            self._response_finished(req)

    async def _finish_handler(self, req: Request, awaitable: Any) -> None:
        try:
            result = await awaitable
        except asyncio.CancelledError:
            return
        except Exception as exc:
            self._handler_failed(req, exc)
            return
        finally:
            self.task = None
        if req is self.current and not self.closed:
            self._respond(req, result)
            self._idle_after_task()

    def _handler_failed(self, req: Request, exc: BaseException) -> None:
        if isinstance(exc, ConnectionError) and self.closed:
            return  # the handler noticed the client left: nothing to answer
        error_log.error(
            "handler failed: %s %s", req.method, req.raw_path.decode("latin-1"), exc_info=exc
        )
        if self.closed or req is not self.current:
            return
        if self.responded:
            self._abort()  # the head is out; closing is the only honest signal left
        else:
            self.keep_alive = False
            self._send_error(req, 500, "internal server error")

    def _respond(self, req: Request, result: Any) -> None:
        if self.closed:
            return
        try:
            response = to_response(result)
            if isinstance(response, Response):
                self._write_response(req, response)
                self._response_finished(req)
            elif isinstance(response, FileResponse):
                self._write_file(req, response)
            else:
                self.task = self.loop.create_task(self._write_stream(req, response))
        except Exception as exc:
            self._handler_failed(req, exc)

    # -- writing -------------------------------------------------------------------------------

    def _head(
        self,
        req: Request,
        status: int,
        content_type: str | None,
        headers: Sequence[tuple[bytes, bytes]],
        length_line: bytes,
    ) -> bytes:
        parts = [status_line(status), self.state.head_prefix]
        if content_type is not None:
            parts.append(_content_type_line(content_type))
        if length_line:
            parts.append(length_line)
        for name, value in headers:
            parts += (name, b": ", value, b"\r\n")
        if not self.keep_alive or self.closing:
            self.keep_alive = False
            parts.append(b"Connection: close\r\n\r\n")
        elif req.http_version == "1.0":
            parts.append(b"Connection: keep-alive\r\n\r\n")
        else:
            parts.append(b"\r\n")
        return b"".join(parts)

    def _write_response(self, req: Request, response: Response) -> None:
        status = response.status
        body = response.body
        headers = response.headers
        if _no_body_status(status):
            head = self._head(req, status, None, headers, b"")
            body = b""
        else:
            content_type = response.content_type or "application/octet-stream"
            compression = self.state.compression
            if compression is not None and status == 200 and len(body) >= COMPRESS_MIN_SIZE:
                accept = req.headers.get_bytes(b"accept-encoding")
                body, headers, acceptable = compression.body(accept, content_type, body, headers)
                if not acceptable:
                    self._write_response(req, _NOT_ACCEPTABLE)
                    return
            head = self._head(req, status, content_type, headers, _length_line(len(body)))
            if req.method == "HEAD":
                body = b""
        transport = self.transport
        assert transport is not None
        self.responded = True
        # One write for head and small bodies (one syscall, one segment); large bodies are not
        # copied into a new buffer just to prepend the head.
        if len(body) <= 64 * 1024:
            transport.write(head + body)
        else:
            transport.writelines((head, body))
        if self.config.access_log:
            path = req.raw_path.decode("latin-1")
            access_log.info("%s %s %s %d %d", self.peer, req.method, path, status, len(body))

    async def _write_stream(self, req: Request, response: StreamResponse) -> None:
        transport = self.transport
        assert transport is not None
        iterator = response.iterator
        try:
            await self._send_stream(req, response, transport)
        except asyncio.CancelledError:
            return
        except ConnectionError:
            return
        except Exception as exc:
            self._handler_failed(req, exc)
            return
        finally:
            self.task = None
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except Exception:
                    error_log.exception("closing a response stream failed")
        if not self.closed:
            self._response_finished(req)
            self._idle_after_task()

    async def _send_stream(
        self, req: Request, response: StreamResponse, transport: asyncio.Transport
    ) -> None:
        length = response.content_length
        headers = response.headers
        items = _aiter(response.iterator)
        compressor = None
        compression = self.state.compression
        if compression is not None and response.status == 200:
            # Decided on the first chunk; HEAD has none, so the type and calibration decide.
            first = b""
            if req.method != "HEAD":
                async for item in items:
                    first = item.encode() if isinstance(item, str) else item
                    if first:
                        break
            accept = req.headers.get_bytes(b"accept-encoding")
            compressor, headers, acceptable = compression.stream(
                accept, response.content_type, first or None, headers
            )
            if not acceptable:
                self._write_response(req, _NOT_ACCEPTABLE)
                return
            if compressor is not None:
                length = None  # the declared length was the identity's
            if first:
                items = _prepend(first, items)
        chunked = length is None and req.http_version == "1.1"
        if length is None and not chunked:
            self.keep_alive = False  # HTTP/1.0: the end of the body is the end of the connection
        if chunked:
            framing = [(b"Transfer-Encoding", b"chunked")]
            length_line = b""
        else:
            framing = []
            length_line = _length_line(length) if length is not None else b""
        head = self._head(
            req, response.status, response.content_type, [*headers, *framing], length_line
        )
        transport.write(head)
        self.responded = True
        if req.method == "HEAD" or _no_body_status(response.status):
            return
        flow = self.flow
        since_yield = 0
        sent = 0
        async for item in items:
            data = item.encode() if isinstance(item, str) else item
            if compressor is not None and data:
                # Flushed per chunk, so what the client holds decodes to all that was produced.
                data = compressor.compress(data)
            if not data:
                continue
            if flow.paused:
                await flow.drain()
            elif since_yield >= _STREAM_YIELD_BYTES:
                # An iterator that never awaits must not monopolise the loop (nor keep running
                # unnoticed after its client reset: connection_lost needs a turn).
                since_yield = 0
                await asyncio.sleep(0)
            if self.closed or transport.is_closing():
                return
            since_yield += len(data)
            sent += len(data)
            if length is not None and sent > length:
                raise ValueError("stream longer than its content_length")
            _write_body(transport, data, chunked)
        if compressor is not None and (tail := compressor.finish()):
            _write_body(transport, tail, chunked)
        if length is not None and sent != length:
            raise ValueError(f"stream sent {sent} bytes, content_length said {length}")
        if chunked:
            transport.write(b"0\r\n\r\n")

    def _write_file(self, req: Request, response: FileResponse) -> None:
        """Answer with a file: at once when nothing has to wait (an error, a head-only answer, a
        small body from the open-file cache), otherwise in a task that sends by ``sendfile``."""
        cache = self.state.file_cache
        try:
            # O_NONBLOCK: opening a FIFO would otherwise block the whole event loop until a
            # writer appears; for regular files the flag changes nothing.
            opened = cache.acquire(response.path, _OPEN_FLAGS, response.stat)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            self._write_simple(req, 404, "not found")  # also for anything not a regular file
            self._response_finished(req)
            return
        except PermissionError:
            self._write_simple(req, 403, "forbidden")
            self._response_finished(req)
            return
        head, segments, opened, data = self._plan_file(req, response, opened)
        try:
            transport = self.transport
            assert transport is not None
            self.responded = True
            if req.method == "HEAD" or not segments:
                transport.write(head)
            elif (
                len(segments) == 1
                and isinstance(part := segments[0], tuple)
                and response.limit_rate is None
                and (data is not None or (data := cache.contents(opened)) is not None)
            ):
                offset, count = part
                transport.write(head + data[offset : offset + count])
            else:
                parts: Sequence[Segment] = [head, *segments]
                pacer = None
                if response.limit_rate is not None:
                    pacer = RateLimiter(response.limit_rate, response.limit_rate_after)
                else:
                    # What the socket takes at once needs no task (a 1 MiB range usually fits).
                    parts = self._file_sender().send_now(parts, opened.fd)
                if parts:
                    self.task = self.loop.create_task(
                        self._send_file(req, response, parts, opened, pacer)
                    )
                    return  # the task releases the file
        except BaseException:
            cache.release(opened)
            raise
        cache.release(opened)
        self._response_finished(req)

    def _plan_file(
        self, req: Request, response: FileResponse, opened: OpenFile
    ) -> tuple[bytes, list[Segment], OpenFile, bytes | None]:
        """The head and body segments answering ``req``, the file they come from (a
        precompressed sibling may replace ``opened``, which is then released), and the body
        itself when it is a compressed variant held in memory (segments then index it).
        If it raises, the file it held is released."""
        try:
            headers = req.headers
            get = headers.get_bytes
            conditional = headers.has_any(_FILE_CONDITIONALS)
            coding = None
            variant = None
            vary = response.precompressed
            if response.status == 200 and (not conditional or get(b"range") is None):
                # Ranges always address the identity bytes (as nginx does), so only whole files
                # may be sent compressed.
                accept = get(b"accept-encoding")
                if response.precompressed and accept is not None:
                    opened, coding = self._precompressed(
                        response.path, accept, opened, response.follow_symlinks
                    )
                compression = self.state.compression
                if (
                    coding is None
                    and response.compress
                    and compression is not None
                    and response.limit_rate is None  # paced bodies are sent from the file
                ):
                    st = opened.stat
                    coding, variant, varies = compression.file_variant(
                        accept,
                        response.content_type,
                        st,
                        FileReader(opened.fd, st.st_size),
                    )
                    vary = vary or varies
            # Everything below describes the open descriptor, never an earlier stat of the path
            # (a variant keeps the file's mtime, and its own size and coding make its ETag).
            st = opened.stat
            plan = plan_file(
                req.method,
                get,
                conditional=conditional,
                status=response.status,
                size=st.st_size if variant is None else len(variant),
                mtime=st.st_mtime,
                mtime_ns=st.st_mtime_ns,
                now=time.time(),
                content_type=response.content_type,
                coding=coding,
                vary=vary,
            )
            fields = [*plan.fields, *response.headers]
            head = self._head(
                req,
                plan.status,
                plan.content_type,
                fields,
                # RFC 9110 §8.6: a 304 must not carry a Content-Length other than the full size.
                b"" if plan.status == 304 else _length_line(plan.content_length),
            )
            return head, plan.segments, opened, variant
        except BaseException:
            self.state.file_cache.release(opened)  # whichever file it holds by now
            raise

    def _file_sender(self) -> FileSender:
        sender = self.sender
        if sender is None:
            assert self.transport is not None
            sender = self.sender = FileSender(
                self.loop,
                self.transport,
                self.flow,
                zero_copy=self.config.zero_copy,
                high_water=self.config.write_high_water,
                low_water=self.config.write_low_water,
            )
        return sender

    async def _send_file(
        self,
        req: Request,
        response: FileResponse,
        segments: Sequence[Segment],
        opened: OpenFile,
        pacer: RateLimiter | None,
    ) -> None:
        try:
            await self._file_sender().send(segments, opened.fd, pacer)
        except asyncio.CancelledError:
            return
        except ConnectionError:
            self._abort()
            return
        except FileTruncated:
            # Content-Length is out; fewer bytes exist. Closing is the only honest signal.
            error_log.warning("file shrank while being sent: %s", response.path)
            self._abort()
            return
        except Exception as exc:
            self._handler_failed(req, exc)
            return
        finally:
            self.state.file_cache.release(opened)
            self.task = None
        if not self.closed:
            self._response_finished(req)
            self._idle_after_task()

    def _precompressed(
        self,
        path: str,
        accept: bytes,
        original: OpenFile,
        follow_symlinks: bool,
    ) -> tuple[OpenFile, str | None]:
        """Swap ``original`` for a precompressed sibling the client accepts (``accept``: its
        Accept-Encoding), if a fresh one exists (releasing whichever is not used)."""
        weights = parse_accept_encoding(accept.decode("latin-1"))
        star = weights.get("*", 0.0)
        candidates = sorted(
            (c for c in PRECOMPRESSED if weights.get(c[0], star) > 0),
            key=lambda c: -weights.get(c[0], star),  # stable: our order breaks ties
        )
        flags = _OPEN_FLAGS if follow_symlinks else _OPEN_FLAGS | os.O_NOFOLLOW
        cache = self.state.file_cache
        for coding, suffix in candidates:
            try:
                sibling = cache.acquire(path + suffix, flags)
            except OSError:
                continue  # missing, a symlink we may not follow, or not a regular file
            # A sibling older than the original is stale: never serve it.
            if sibling.stat.st_mtime_ns >= original.stat.st_mtime_ns:
                cache.release(original)
                return sibling, coding
            cache.release(sibling)
        return original, None

    def _write_simple(self, req: Request, status: int, reason: str) -> None:
        """A short plain-text answer from inside a response task."""
        self._write_response(
            req, Response(reason.encode() + b"\n", status, content_type="text/plain; charset=utf-8")
        )

    def _send_error(
        self,
        req: Request | None,
        status: int,
        reason: str,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        """Answer with a short plain-text reason (and nothing internal)."""
        body = reason.encode() + b"\n"
        if req is None:
            # No request to speak of (the head itself was bad): always close afterwards.
            self.keep_alive = False
            req = Request(None, "GET", b"/", b"", "1.1", [], False, None)
        response = Response(body, status, content_type="text/plain; charset=utf-8")
        if headers:
            response.headers = headers
        self._write_response(req, response)
        self._response_finished(req)

    def send_continue(self) -> None:
        """Send ``100 Continue`` once, if the response has not begun (called by Request)."""
        if not self.continue_sent and not self.responded and self.transport is not None:
            self.continue_sent = True
            self.transport.write(_CONTINUE)

    def want_body(self, req: Request) -> None:
        """A handler waits for body bytes: make sure we are reading (called by Request)."""
        if self.read_paused and len(self.queue) < self.config.max_pipelined:
            self._resume_reading()

    # -- request lifecycle ---------------------------------------------------------------------

    def _response_finished(self, req: Request) -> None:
        self.response_done = True
        self.state.requests += 1
        if not self.keep_alive:
            self._close()
            return
        body = req._body
        if body is None or body.complete:
            if self.queue or self.closing or self.pending_error is not None:
                self._request_done()
            else:
                # Idle. The keep-alive deadline is armed by data_received() after this feed,
                # or by the task that finished this response.
                self.current = None
                if self.read_paused:
                    self._resume_reading()
            return
        # The handler answered without reading the whole body.
        # Chunked: the rest is of unknown length, so only closing bounds the work.
        unread = body.content_length - body.received if body.kind == BODY_LENGTH else _DRAIN_LIMIT
        if body.expect and not self.continue_sent:
            # The client is still waiting for permission to send it: it may not come. Close.
            self._close()
        elif unread >= _DRAIN_LIMIT:
            self._close()
        else:
            # Read and drop the rest, then continue with the next request.
            body.discard = True
            body.take()
            if self.read_paused:
                self._resume_reading()

    def _request_done(self) -> None:
        self.current = None
        self._advance()

    def _advance(self) -> None:
        if self.advancing:
            return  # the loop below is already running further up the stack
        self.advancing = True
        try:
            while self.current is None and self.queue and not self.closed:
                if self.flow.paused:
                    return  # resume_writing() calls us again once the client caught up
                req = self.queue.popleft()
                self.current = req
                self._start(req)
        finally:
            self.advancing = False
        if self.closed:
            return
        if self.read_paused and len(self.queue) < self.config.max_pipelined // 2 + 1:
            self._resume_reading()
        if self.current is None:
            if self.pending_error is not None:
                exc, self.pending_error = self.pending_error, None
                self._protocol_error(exc)
            elif self.closing or self.peer_eof:
                self._close()
            else:
                self._go_idle()

    def _idle_after_task(self) -> None:
        # data_received() arms the idle deadline after each feed; a response finished by a
        # task has no feed after it, so it arms the deadline itself.
        if self.current is None and not self.closed:
            self._go_idle()

    def _go_idle(self) -> None:
        if self.reader.mid_message:
            # Part of the next head is here: the slowloris clock runs from its first byte.
            if self.deadline_kind != _HEADER:
                self.deadline_kind = _HEADER
                self.deadline = self.state.now + self.config.header_timeout
        else:
            self.deadline_kind = _IDLE
            self.deadline = self.state.now + self.config.keepalive_timeout

    # -- errors, timeouts, closing -------------------------------------------------------------

    def _protocol_error(self, exc: ProtocolError) -> None:
        if exc.detail:
            error_log.debug("refused request from %s: %s (%s)", self.peer, exc.reason, exc.detail)
        if self.closed:
            return
        current = self.current
        parsing = self.parsing
        if self.reader.failed_in_body and self.queue:
            # The body of the latest (queued) request broke: it gets no answer of its own.
            self.queue.pop()
        about_current = current is not None and (
            current is parsing or (self.reader.failed_in_body and not self.queue)
        )
        if current is not None and (self.responded or not about_current):
            # Earlier requests are being answered: answer them all in order, then the error.
            self.pending_error = exc
            self.parsing = None
            self._pause_reading()
            return
        if self.task is not None:
            self.task.cancel()
            self.task = None
        if current is not None and current._body is not None:
            current._body.fail(ConnectionResetError("request refused"))
        self.queue.clear()
        self.parsing = None
        self.keep_alive = False
        self.responded = False
        self.refused = True
        self._send_error(None, exc.status, exc.reason)

    def check_deadline(self, now: float) -> None:
        """Enforce this connection's deadlines (called by the server's ticker)."""
        if self.flow.stalled(now, self.config.send_timeout):
            error_log.debug("send timeout: dropping %s", self.peer)
            self._abort()
            return
        kind = self.deadline_kind
        if kind == _NONE or now < self.deadline:
            return
        if kind in (_IDLE, _LINGER):
            self._abort() if kind == _LINGER else self._close()
        elif kind == _HEADER:
            self.deadline_kind = _NONE
            self._timeout_answer("request header timeout")
        elif kind == _BODY:
            self.deadline_kind = _NONE
            if self.responded:
                self._abort()
            else:
                self._timeout_answer("request body timeout")

    def _bytes_acked(self) -> int | None:
        transport = self.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        return None if sock is None else bytes_acked(sock)

    def _timeout_answer(self, reason: str) -> None:
        self._protocol_error(ProtocolError(408, reason))

    def shutdown(self) -> None:
        """Graceful stop: close now if idle, else after the response in flight."""
        self.closing = True
        if self.current is None and self.parsing is None and not self.reader.mid_message:
            self._close()

    def _pause_reading(self) -> None:
        if not self.read_paused and self.transport is not None and not self.closed:
            self.read_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self.read_paused and self.transport is not None and not self.closed:
            self.read_paused = False
            self.transport.resume_reading()

    def _close(self) -> None:
        """Close after what is written has been sent. After an error, linger first."""
        transport = self.transport
        if transport is None or self.closed:
            return
        if self.refused or self.reader.mid_message or self.parsing is not None:
            self._linger()
            return
        self.closed = True
        transport.close()

    def _linger(self) -> None:
        # RFC 9112 §9.6: closing with unread input makes the kernel send RST, which can destroy
        # the answer before the client reads it. Send FIN after the answer, then read and drop
        # input until the client closes or linger_timeout passes.
        transport = self.transport
        assert transport is not None
        self.lingering = True
        self.queue.clear()
        self.deadline_kind = _LINGER
        self.deadline = time.monotonic() + self.config.linger_timeout
        self._resume_reading()
        if transport.can_write_eof():
            transport.write_eof()

    def _abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.abort()


def _write_body(transport: asyncio.Transport, data: bytes, chunked: bool) -> None:
    if chunked:
        transport.writelines((b"%x\r\n" % len(data), data, b"\r\n"))
    else:
        transport.write(data)


async def _prepend(first: bytes, rest: AsyncIterator[Any]) -> AsyncIterator[Any]:
    yield first
    async for item in rest:
        yield item


async def _aiter(iterable: Any) -> AsyncIterator[Any]:
    """Iterate an async or a plain iterable uniformly."""
    if hasattr(iterable, "__aiter__"):
        async for item in iterable:
            yield item
    else:
        iterator: Iterator[Any] = iter(iterable)
        for item in iterator:
            yield item
