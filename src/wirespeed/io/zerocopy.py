"""Zero-copy file bodies: ``sendfile(2)`` on a transport's socket, with an explicit fallback.

Theory of operation
-------------------
uvloop has no native ``loop.sendfile`` (uvloop issue 228), and asyncio's own falls back to a
userspace copy on it, so :class:`FileSender` calls ``os.sendfile`` itself. To do that next to a
transport without breaking the transport's bookkeeping it:

1. waits until the transport's own buffer is empty (it lowers the high-water mark to zero for a
   moment, so ``resume_writing`` tells when the buffer has drained);
2. writes through a *duplicate* of the socket's descriptor, so it can wait for writability with
   ``loop.add_writer`` (both uvloop and asyncio refuse ``add_writer`` on a transport's own fd);
3. sends the response head with ``MSG_MORE`` and then the file with ``sendfile``: the kernel holds
   the head until file data follows, so head and body leave in the same segments, as nginx's
   ``tcp_nopush`` does with TCP_CORK, without two extra setsockopt calls per response;
4. caps one ``sendfile`` call at ``max_chunk`` bytes and yields to the event loop between calls,
   like nginx's ``sendfile_max_chunk``, so one fast client cannot starve the others.

While it waits for the socket, the shared :class:`~wirespeed.io.flow.WriteFlow` shows "paused",
so the server's send timeout drops a client that stopped reading, exactly as for buffered writes.

The fallback (``zero_copy=False``, or a file or socket that ``sendfile`` refuses) reads bounded
chunks with ``os.pread`` and writes them through the transport, waiting on the same flow control.
Either way, a file that turns out shorter than promised raises :class:`FileTruncated` (the caller
must close the connection: the promised Content-Length can no longer be honoured), and a client
that goes away raises :class:`ConnectionResetError`.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from collections.abc import Sequence
from typing import Protocol

from wirespeed.io.flow import WriteFlow

__all__ = [
    "FALLBACK_CHUNK",
    "MAX_CHUNK",
    "FileSender",
    "FileTruncated",
    "Pacer",
    "Segment",
    "sendfile_available",
]

# One sendfile call moves at most this much before yielding to the loop. nginx's
# sendfile_max_chunk default is 2 MiB (since 1.21.4); on loopback that is ~0.3 ms of work, short
# enough that other connections on the loop are not starved.
MAX_CHUNK = 2 * 1024 * 1024
# The fallback reads this much per pread: large enough that per-call overhead is small, small
# enough to stay well under the flow-control high-water mark's order of magnitude.
FALLBACK_CHUNK = 256 * 1024

#: A piece of a response: literal bytes, or ``(offset, count)`` of the file.
Segment = bytes | tuple[int, int]


class FileTruncated(OSError):
    """The file ended before the promised number of bytes could be sent."""


class Pacer(Protocol):
    """Rate limiting hook (see :mod:`wirespeed.io.pacing`)."""

    def chunk_size(self, default: int) -> int:
        """How many bytes to send in the next step."""
        ...

    async def pace(self, sent: int) -> None:
        """Account for ``sent`` bytes, sleeping if the budget is spent."""
        ...


def sendfile_available() -> bool:
    """True where ``os.sendfile`` can send a regular file to a TCP socket (Linux, BSDs, macOS)."""
    return hasattr(os, "sendfile")


class FileSender:
    """Sends response heads and file ranges on one connection, zero-copy when possible.

    One per connection, created on its first file response and closed with the connection::

        sender = FileSender(loop, transport, flow)
        await sender.send([head, (0, size)], fd)      # head + whole file
        ...
        sender.close()                                # in connection_lost

    ``send`` must not run concurrently with other writes on the transport; the server
    guarantees that by answering requests one at a time.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        transport: asyncio.WriteTransport,
        flow: WriteFlow,
        *,
        zero_copy: bool = True,
        max_chunk: int = MAX_CHUNK,
        high_water: int = 0,
        low_water: int = 0,
    ) -> None:
        self._loop = loop
        self._transport = transport
        self._flow = flow
        self._max_chunk = max_chunk
        self._high = high_water
        self._low = low_water
        self._sock: socket.socket | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.zero_copy = zero_copy and sendfile_available()
        if self.zero_copy:
            raw = transport.get_extra_info("socket")
            if raw is None:
                self.zero_copy = False
            else:
                # A duplicate descriptor of the same socket: see the module docstring.
                self._sock = socket.socket(fileno=os.dup(raw.fileno()))
                self._sock.setblocking(False)
        #: Bytes of file data sent so far (both paths), for logs and the lab.
        self.file_bytes = 0

    def close(self) -> None:
        """Release the duplicate descriptor and wake a pending wait. Idempotent."""
        sock = self._sock
        if sock is not None:
            # Unregister from the loop *before* the descriptor closes: the number is reused by
            # the next dup, and a loop still watching the old one refuses it (uvloop raises
            # "the handler is closed" on add_writer).
            self._stop_waiting(ConnectionResetError("connection closed"))
            self._sock = None
            sock.close()

    async def send(self, segments: Sequence[Segment], fd: int, pacer: Pacer | None = None) -> None:
        """Send ``segments`` in order: bytes as they are, ``(offset, count)`` from ``fd``."""
        if self.zero_copy and self._sock is not None:
            try:
                await self._send_zero_copy(segments, fd, pacer)
                return
            except _Unsupported as unsupported:
                # sendfile refused this file or socket (EINVAL/ENOSYS: e.g. a special
                # filesystem) before moving any of its bytes. Everything before that point went
                # out completely, so the copying path carries on from exactly there.
                self.zero_copy = False
                segments = unsupported.rest
        await self._send_copy(segments, fd, pacer)

    def send_now(self, segments: Sequence[Segment], fd: int) -> Sequence[Segment]:
        """Send what the socket takes at once, without waiting; return what is left.

        An empty result means everything went out, so the caller needs no task at all (most
        ranges of a seeking player, and small files, fit the socket buffer). At most
        ``max_chunk`` bytes of file data leave in one call, as in :meth:`send`. Nothing happens
        unless the zero-copy path is on and the transport's own buffer is empty. Any error
        stops it where it occurred, so that :meth:`send`, given the rest, meets the error again
        and handles it (fallback, truncation or a client that left).
        """
        sock = self._sock
        if not self.zero_copy or sock is None or self._transport.get_write_buffer_size():
            return segments
        budget = self._max_chunk
        last = len(segments) - 1
        for index, segment in enumerate(segments):
            if isinstance(segment, bytes):
                try:
                    n = sock.send(segment, socket.MSG_MORE if index < last else 0)
                except OSError:
                    n = 0
                if n < len(segment):
                    return [segment[n:], *segments[index + 1 :]]
                continue
            offset, count = segment
            while count > 0:
                size = count if count < budget else budget
                n = 0
                if size > 0:
                    try:
                        n = os.sendfile(sock.fileno(), fd, offset, size)
                    except OSError:
                        n = 0
                if n <= 0:
                    return [(offset, count), *segments[index + 1 :]]
                self.file_bytes += n
                offset += n
                count -= n
                budget -= n
                if n < size and count > 0:
                    return [(offset, count), *segments[index + 1 :]]  # the socket is full
        return []

    # -- zero-copy path --------------------------------------------------------------------

    async def _send_zero_copy(
        self, segments: Sequence[Segment], fd: int, pacer: Pacer | None
    ) -> None:
        await self._empty_transport_buffer()
        sock = self._sock
        if sock is None:
            raise ConnectionResetError("connection closed")
        last = len(segments) - 1
        for index, segment in enumerate(segments):
            if isinstance(segment, bytes):
                # MSG_MORE: more is coming (file data or the next part), let it share segments.
                flags = socket.MSG_MORE if index < last else 0
                view = memoryview(segment)
                while view:
                    try:
                        n = sock.send(view, flags)
                    except BlockingIOError:
                        await self._writable()
                        continue
                    except OSError as exc:
                        raise _connection_error(exc) from None
                    view = view[n:]
                continue
            offset, count = segment
            moved = False  # has sendfile moved any bytes of this file yet?
            while count > 0:
                size = count if count < self._max_chunk else self._max_chunk
                if pacer is not None:
                    size = min(size, pacer.chunk_size(size))
                try:
                    n = os.sendfile(sock.fileno(), fd, offset, size)
                except BlockingIOError:
                    await self._writable()
                    continue
                except OSError as exc:
                    if not moved and exc.errno in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                        raise _Unsupported([(offset, count), *segments[index + 1 :]]) from None
                    raise _connection_error(exc) from None
                if n == 0:
                    raise FileTruncated(errno.EIO, "file shorter than its announced length")
                moved = True
                offset += n
                count -= n
                self.file_bytes += n
                if pacer is not None:
                    await pacer.pace(n)
                elif n == size and count > 0:
                    await asyncio.sleep(0)  # a full chunk went out: let other connections run
                # A short send means the socket buffer is full: the next call gets EAGAIN and
                # waits for writability, which is the efficient way to wait.

    async def _empty_transport_buffer(self) -> None:
        transport = self._transport
        if transport.get_write_buffer_size() == 0:
            return
        # Lower the marks to zero: the transport pauses the protocol at once and resumes it
        # only when everything it buffered has been sent.
        high, low = self._high, self._low
        if not high:
            limits = transport.get_write_buffer_limits()
            low, high = limits[0], limits[1]
        transport.set_write_buffer_limits(high=0, low=0)
        try:
            while transport.get_write_buffer_size() > 0:
                self._flow.pause()
                await self._flow.drain()
        finally:
            if not transport.is_closing():
                transport.set_write_buffer_limits(high=high, low=low)

    async def _writable(self) -> None:
        sock = self._sock
        if sock is None:
            raise ConnectionResetError("connection closed")
        fd = sock.fileno()
        waiter = self._loop.create_future()
        self._loop.add_writer(fd, self._stop_waiting, None)
        self._waiter = waiter  # only once registered: a failed add_writer leaves no orphan
        flow = self._flow
        flow.pause()  # the send timeout watches this, as for buffered writes
        try:
            await waiter
        finally:
            flow.resume()
            if self._sock is not None:
                self._loop.remove_writer(fd)

    def _stop_waiting(self, exc: BaseException | None) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            if exc is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(exc)
        if self._sock is not None and exc is not None:
            self._loop.remove_writer(self._sock.fileno())

    # -- copying fallback ------------------------------------------------------------------

    async def _send_copy(self, segments: Sequence[Segment], fd: int, pacer: Pacer | None) -> None:
        transport = self._transport
        flow = self._flow
        for segment in segments:
            if isinstance(segment, bytes):
                transport.write(segment)
                continue
            offset, count = segment
            while count > 0:
                if flow.paused or flow.closed:
                    await flow.drain()
                size = count if count < FALLBACK_CHUNK else FALLBACK_CHUNK
                if pacer is not None:
                    size = min(size, pacer.chunk_size(size))
                data = os.pread(fd, size, offset)
                if not data:
                    raise FileTruncated(errno.EIO, "file shorter than its announced length")
                transport.write(data)
                offset += len(data)
                count -= len(data)
                self.file_bytes += len(data)
                if pacer is not None:
                    await pacer.pace(len(data))
        if flow.closed:
            raise ConnectionResetError("connection closed")


class _Unsupported(Exception):
    """sendfile cannot be used for this file or socket; ``rest`` is what remains to send."""

    def __init__(self, rest: Sequence[Segment]) -> None:
        super().__init__("sendfile not supported here")
        self.rest = rest


def _connection_error(exc: OSError) -> OSError:
    if isinstance(exc, ConnectionError):
        return exc
    if exc.errno in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.EBADF):
        return ConnectionResetError(exc.errno, "client disconnected")
    return exc
