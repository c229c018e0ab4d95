"""Write flow control: one notion of "paused" shared by every producer on a connection.

Theory of operation
-------------------
An asyncio transport buffers what it cannot send at once and calls ``pause_writing()`` on its
protocol when that buffer passes the *high-water mark*, then ``resume_writing()`` once it drains
below the *low-water mark*. :class:`WriteFlow` turns those two calls into an awaitable
(:meth:`WriteFlow.drain`) so that fixed responses, chunked streams, sendfile and the relay all wait
on the same state and never hold more than about the high-water mark of generated data per
connection. It also remembers when the pause began, so a send timeout can drop a client that has
stopped reading. A pause alone does not prove that: a steady but slow reader keeps a large kernel
buffer full, and the transport (or a sendfile loop) then stays paused for seconds while bytes
still flow. :func:`bytes_acked` reads the kernel's count of bytes the peer has acknowledged, so
the timeout can measure time without *progress* instead.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import Callable
from typing import Protocol

__all__ = ["HIGH_WATER", "LOW_WATER", "WriteFlow", "bytes_acked"]

# Bytes buffered in user space before producers wait. 256 KiB is four times the 64 KiB uvloop
# and asyncio use by default: enough to keep a 10 Gbit/s loopback socket busy between event-loop
# turns (measured with the small and file scenarios of the lab), small enough that 10,000 slow
# clients cost at most 2.5 GiB in the worst case and usually nothing.
HIGH_WATER = 256 * 1024
# Resume when a quarter is left, so producers wake in large batches instead of once per packet.
LOW_WATER = 64 * 1024


class WriteFlow:
    """Pause state of one transport's writes.

    Wire it to a protocol's ``pause_writing`` / ``resume_writing`` callbacks and call
    :meth:`drain` before producing more data::

        flow = WriteFlow(transport)
        ...
        def pause_writing(self): self.flow.pause()
        def resume_writing(self): self.flow.resume()
        ...
        await flow.drain()          # returns at once unless the peer is behind

    :meth:`drain` raises :class:`ConnectionError` if the connection is lost while waiting.
    """

    __slots__ = ("_mark", "_waiter", "closed", "paused", "paused_since", "progress")

    def __init__(
        self,
        transport: asyncio.WriteTransport | None = None,
        *,
        high: int = HIGH_WATER,
        low: int = LOW_WATER,
        progress: Callable[[], int | None] | None = None,
    ) -> None:
        if transport is not None:
            transport.set_write_buffer_limits(high=high, low=low)
        self.paused = False
        self.closed = False
        #: ``time.monotonic()`` when writing was paused (or last made progress while paused),
        #: 0.0 when not paused.
        self.paused_since = 0.0
        #: Returns a counter that grows while the peer accepts data (e.g. :func:`bytes_acked`);
        #: lets :meth:`stalled` tell a slow reader from one that stopped.
        self.progress = progress
        self._mark: int | None = None
        self._waiter: asyncio.Future[None] | None = None

    def pause(self) -> None:
        """The transport's buffer passed the high-water mark."""
        if not self.paused:
            self.paused = True
            self.paused_since = time.monotonic()
            if self.progress is not None:
                self._mark = self.progress()

    def stalled(self, now: float, timeout: float) -> bool:
        """True if paused for ``timeout`` seconds without the peer accepting a byte.

        ``now`` is ``time.monotonic()``. Progress seen while paused restarts the period.
        """
        if not self.paused or now - self.paused_since <= timeout:
            return False
        mark = self.progress() if self.progress is not None else None
        if mark is not None and mark != self._mark:
            self._mark = mark
            self.paused_since = now
            return False
        return True

    def resume(self) -> None:
        """The transport's buffer drained below the low-water mark."""
        self.paused = False
        self.paused_since = 0.0
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def close(self) -> None:
        """The connection is gone: wake every waiter with :class:`ConnectionError`."""
        self.closed = True
        self.paused = False
        self.paused_since = 0.0
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_exception(ConnectionResetError("connection lost"))

    async def drain(self) -> None:
        """Wait until the transport accepts more data."""
        if self.closed:
            raise ConnectionResetError("connection lost")
        if not self.paused:
            return
        waiter = self._waiter
        if waiter is None:
            waiter = self._waiter = asyncio.get_running_loop().create_future()
        await asyncio.shield(waiter)


class _SockOpt(Protocol):
    def getsockopt(self, level: int, option: int, buflen: int) -> bytes: ...


# struct tcp_info (linux/tcp.h): __u64 tcpi_bytes_acked sits at byte 120 (Linux 4.1+, RFC 4898
# tcpEStatsAppHCThruOctetsAcked). Checked against a known transfer in tests/test_flow.py.
_TCP_INFO_BYTES_ACKED = 120
_TCP_INFO_LEN = 256


def bytes_acked(sock: _SockOpt) -> int | None:
    """Bytes of this connection the peer has acknowledged so far, or None where unknown.

    Linux only (``TCP_INFO``); elsewhere, and on kernels older than 4.1, returns None.
    """
    option = getattr(socket, "TCP_INFO", None)
    if option is None:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, option, _TCP_INFO_LEN)
    except OSError:
        return None
    if len(info) < _TCP_INFO_BYTES_ACKED + 8:
        return None
    return int(struct.unpack_from("=Q", info, _TCP_INFO_BYTES_ACKED)[0])
