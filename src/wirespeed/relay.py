"""A TCP relay that moves bytes socket -> pipe -> socket with ``splice(2)``: no copy to userspace.

Theory of operation
-------------------
:class:`Relay` accepts connections on one address and connects each to one upstream address.
Every relayed connection has two independent *directions* (client -> upstream "up",
upstream -> client "down"); each is a :class:`_Pump` that repeats two steps:

1. **fill**: ``splice(src socket -> pipe)`` with ``SPLICE_F_MOVE | SPLICE_F_NONBLOCK``: the kernel
   moves references to the socket's pages into the pipe, nothing is copied to Python;
2. **drain**: ``splice(pipe -> dst socket)`` until the pipe is empty.

It fills only when its pipe is *empty*. That one rule settles the classic ambiguity of
``EAGAIN`` from socket -> pipe (is the pipe full, or the socket empty?): with an empty pipe it can
only mean the socket has no data. A pipe fills by *slots* (one per socket buffer fragment), so
"full" can happen below its byte capacity; draining it completely first makes that harmless too.

The pumps run on the event loop as plain callbacks, on the raw non-blocking sockets, with
``loop.add_reader``/``loop.add_writer`` (transports would read into Python buffers, the very
copy this module avoids), so uvloop and asyncio behave the same. A pump waits for exactly one
thing at a time, derived from one number, the bytes it holds (``pending``): none -> it waits for
its source to be readable; some -> it waits for its destination to be writable and reads
nothing meanwhile. That is the whole flow control: the pipe is the bounded buffer, "paused"
means ``pending > 0``, and memory per direction is bounded by the pipe's capacity
(:data:`PIPE_SIZE`) whatever the speeds of the two peers. Readiness is level-triggered in both
loops, so a pump that stops after :data:`MAX_PER_WAKEUP` bytes to let other connections run is
called again on the next loop turn without any extra bookkeeping.

**Half-close.** EOF from a source (``splice`` returns 0) is propagated once the pipe is drained,
as ``shutdown(SHUT_WR)`` on the destination; the other direction carries on, so a client can
send its request, shut its write side, and still receive the whole reply. The connection ends
when both directions have seen EOF, or on the first error.

**Errors.** A reset or broken pipe on either socket ends the connection and closes both
sockets with a reset (``SO_LINGER`` 0), so the *other* peer learns of it too: a peer that got a
plain FIN could take a cut stream for a complete one. Bytes still in a pipe are dropped with the
pipe, never retried, so a destination that resets cannot make the relay spin. Orderly closes
(upstream unreachable, idle timeout) first discard unread input, because Linux answers
``close()`` with a reset when unread data is left. Each ending is one log line on the
``wirespeed.relay`` logger with the byte counts, never a traceback.

**Fallback.** Without ``os.splice`` (not Linux), with ``splice=False`` (``--no-splice``), or
when the kernel refuses to splice a socket (``EINVAL``), a direction copies through one bounded
userspace buffer instead (:data:`COPY_CHUNK`, ``recv_into`` + ``send``), with the same states
and the same rule: no reading while the buffer holds unsent bytes. A direction that finds splice
refused mid-stream moves what its pipe holds into the buffer and carries on.

**Limits.** At most ``max_connections`` relayed connections: past it, new connections are
accepted and closed at once (the client sees EOF immediately instead of waiting in the listen
queue with no answer, and the queue keeps room for when load drops). A connection on which no
byte moves in either direction for ``idle_timeout`` seconds is closed. ``close(grace)`` stops
accepting, lets connections finish for up to ``grace`` seconds, then resets the rest.

**Pre-connected upstreams** (``preconnect=N``, off by default): N upstream connections are kept
open ahead of demand, so a new client skips one connect round trip. Before one is used it is
checked with a non-blocking ``MSG_PEEK``: a socket the upstream has since closed is discarded.
Upstreams that time out silent connections (nginx after ``client_header_timeout``, 60 s) make
the spares churn; protocols where the server speaks first still work (the greeting waits in the
socket until the client is attached).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import errno
import fcntl
import itertools
import logging
import os
import resource
import signal
import socket
import struct
import sys
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from wirespeed.cliargs import OneLineParser, add_loop_arguments
from wirespeed.io import tuning
from wirespeed.io.tuning import SocketOptions

__all__ = [
    "COPY_CHUNK",
    "MAX_PER_WAKEUP",
    "PIPE_SIZE",
    "ConnectionStats",
    "Relay",
    "RelayStats",
    "add_arguments",
    "default_max_connections",
    "main",
    "parse_address",
    "splice_available",
]

log = logging.getLogger("wirespeed.relay")

# Capacity asked for each direction's pipe (F_SETPIPE_SZ), the bound on memory per direction.
# Measured with scripts/bench_relay.py (64 MiB from nginx, one connection, 2-CPU box, six runs
# of 3-5 rounds): against the kernel's 64 KiB default, 1 MiB was up to 1.38x faster (equal
# within noise in two runs) and cost the relay less CPU per GB, most where it shares a core
# with nginx (0.29-0.32 against 0.57-0.62 CPU-s/GB; beside the client 0.23 against 0.27): fewer,
# larger splice calls and wake-ups. It is /proc/sys/fs/pipe-max-size's default, the most an
# unprivileged process may ask for. Pipe pages are used only while bytes are in flight, but the
# kernel *accounts* a user's pipes by capacity (fs.pipe-user-pages-soft, 64 MiB by default, so
# about 32 connections of an unprivileged user): past it, F_SETPIPE_SZ fails and the relay keeps
# the size the kernel gave (logged once), which still works, slower. For many connections, use
# --pipe-size 64k or raise the sysctl.
PIPE_SIZE: Final = 1024 * 1024
# The fallback's buffer per direction. 256 KiB: the same bound as the file fallback
# (wirespeed.io.zerocopy.FALLBACK_CHUNK): per-call overhead is small next to the copy, and two
# of them per connection stay well under the splice path's two pipes.
COPY_CHUNK: Final = 256 * 1024
# Bytes one direction moves per wake-up before it lets the loop run other connections: nginx's
# sendfile_max_chunk default (2 MiB), which is also wirespeed.io.zerocopy.MAX_CHUNK.
MAX_PER_WAKEUP: Final = 2 * 1024 * 1024
# No byte in either direction for this long closes the connection. nginx stream proxy_timeout's
# default (10 min), the same idea: time between two successive reads or writes.
IDLE_TIMEOUT: Final = 600.0
# Giving up on the upstream connect: nginx proxy_connect_timeout's 60 s is for the open
# Internet; a relay usually fronts a nearby service, and a client waiting longer than 10 s for
# its first byte has given up anyway. Arbitrary within that reasoning.
CONNECT_TIMEOUT: Final = 10.0
# Time connections get to finish after SIGTERM: the same as `wirespeed serve` (ServerConfig).
GRACEFUL_TIMEOUT: Final = 30.0
# Connections accepted per listener wake-up: asyncio accepts up to its backlog argument (100)
# per wake-up, so a connect storm cannot starve the transfers in progress.
ACCEPT_BATCH: Final = 100
# Out of descriptors (EMFILE/ENFILE): stop accepting this long, as asyncio does
# (asyncio.constants.ACCEPT_RETRY_DELAY), instead of spinning on a listener that stays readable.
ACCEPT_RETRY_DELAY: Final = 1.0
# Descriptors one relayed connection holds: two sockets and two pipes of two ends each.
FDS_PER_CONNECTION: Final = 6
# Descriptors kept back from the default connection limit: the listener, the event loop's
# epoll and self-pipe, stdio, logging and the pre-connected spares' slack. Arbitrary.
FD_RESERVE: Final = 64
# Pre-connect retry backoff: start at 0.1 s, double up to 5 s, so a down upstream costs a few
# connect attempts per minute, not a busy loop. Arbitrary.
RETRY_MIN: Final = 0.1
RETRY_MAX: Final = 5.0

_SPLICE_FLAGS: Final = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
# Linux fcntl numbers (linux/fcntl.h), for Pythons whose fcntl module lacks the names.
_F_SETPIPE_SZ: Final = getattr(fcntl, "F_SETPIPE_SZ", 1031)
# The peer went away: an ordinary event on the network, logged at info level.
_RESETS: Final = frozenset(
    {errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED, errno.ETIMEDOUT, errno.ENOTCONN}
)
# splice(2) cannot handle this descriptor: switch the direction to the copy fallback.
_SPLICE_REFUSED: Final = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP})
# SO_LINGER {on, 0 s}: close() sends a reset instead of a FIN.
_LINGER_RESET: Final = struct.pack("ii", 1, 0)
# Reads that drop unread input before an orderly close: bounds the work for a peer that sends
# without end (it gets a reset then, the kernel's answer to a close with unread data). Arbitrary.
_DISCARD_CALLS: Final = 16

# getaddrinfo()'s sockaddr: IPv4, IPv6 (with flow info and scope id), or a raw one.
_SockAddr = tuple[str, int] | tuple[str, int, int, int] | tuple[int, bytes]
Direction = Literal["up", "down"]
Mode = Literal["splice", "copy"]


def splice_available() -> bool:
    """True where ``os.splice`` exists (Linux, Python 3.10+): the zero-copy path can be tried."""
    return hasattr(os, "splice")


def parse_address(text: str, *, allow_port_zero: bool = False) -> tuple[str, int]:
    """``"HOST:PORT"`` -> ``(host, port)``; IPv6 hosts in brackets: ``"[::1]:8080"``.

    Raises ``ValueError`` with a one-line reason for anything else. Port 0 (pick a free port) is
    only accepted with ``allow_port_zero`` (a listen address).

    >>> parse_address("127.0.0.1:8080")
    ('127.0.0.1', 8080)
    >>> parse_address("[::1]:0", allow_port_zero=True)
    ('::1', 0)
    """
    host, colon, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"invalid address {text!r}: write an IPv6 host in brackets, [::1]:PORT")
    low = 0 if allow_port_zero else 1
    if not colon or not host or not port_text.isdigit() or not low <= int(port_text) <= 65535:
        raise ValueError(f"invalid address {text!r}: expected HOST:PORT with a port {low}-65535")
    return host, int(port_text)


def _format_address(address: Sequence[object]) -> str:
    host, port = str(address[0]), address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def default_max_connections() -> int:
    """The connection limit that fits the open-file soft limit (6 descriptors per connection).

    Like HAProxy, which derives its default ``maxconn`` from ``ulimit -n``: a higher limit would
    only turn into ``EMFILE`` errors.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20  # Linux's default nr_open: what "unlimited" means in practice
    return max(1, (soft - FD_RESERVE) // FDS_PER_CONNECTION)


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class ConnectionStats:
    """What one relayed connection did; live while it runs, final once ``ended`` is set.

    ``bytes_up`` counts bytes delivered to the upstream (client -> upstream), ``bytes_down``
    bytes delivered to the client; both count what the destination socket accepted, not what was
    read. ``mode`` is ``"copy"`` if either direction used the userspace fallback. ``reason`` says
    how it ended: ``"done"`` (both sides closed their write side), ``"idle timeout"``,
    ``"client reset"``, ``"upstream reset"``, ``"upstream connect failed"``, ``"shutdown"``...
    """

    id: int
    client: str
    upstream: str = ""
    mode: Mode = "splice"
    started: float = 0.0  # loop.time()
    ended: float | None = None
    bytes_up: int = 0
    bytes_down: int = 0
    reason: str = ""
    preconnected: bool = False

    @property
    def duration(self) -> float | None:
        return None if self.ended is None else self.ended - self.started


@dataclass(slots=True)
class RelayStats:
    """Counters over the relay's lifetime (:meth:`Relay.stats`).

    ``rejected``: closed at once because ``max_connections`` were open. ``upstream_failures``:
    clients closed because the upstream could not be reached. ``bytes_up``/``bytes_down``: over
    every connection, ended or live. ``spares_used``/``spares_discarded``: pre-connected
    upstream sockets handed out, or found closed by the upstream and dropped.
    """

    accepted: int = 0
    active: int = 0
    rejected: int = 0
    upstream_failures: int = 0
    closed: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    spares_used: int = 0
    spares_discarded: int = 0


# --------------------------------------------------------------------------------------------
# One direction
# --------------------------------------------------------------------------------------------


class _Pump:
    """Moves one direction of a connection: ``src`` -> pipe (or buffer) -> ``dst``."""

    __slots__ = (
        "_buffer",
        "_capacity",
        "_conn",
        "_dst",
        "_dst_fd",
        "_eof",
        "_interest",
        "_loop",
        "_pipe_r",
        "_pipe_w",
        "_src",
        "_src_fd",
        "_start",
        "done",
        "moved",
        "name",
        "pending",
    )

    def __init__(
        self,
        conn: _Connection,
        name: Direction,
        src: socket.socket,
        dst: socket.socket,
        splice: bool,
        pipe_size: int,
    ) -> None:
        self._loop = conn.loop
        self._conn = conn
        self.name: Direction = name
        self._src = src
        self._dst = dst
        self._src_fd = src.fileno()
        self._dst_fd = dst.fileno()
        self.pending = 0  # bytes read from src and not yet accepted by dst
        self.moved = 0  # bytes accepted by dst
        self.done = False
        self._eof = False
        # What the pump waits for: "r" src readable, "w" dst writable, "" nothing.
        self._interest = ""
        self._pipe_r = self._pipe_w = -1
        self._capacity = 0
        self._buffer: memoryview | None = None
        self._start = 0  # copy mode: offset of the pending bytes in the buffer
        if splice:
            self._pipe_r, self._pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                self._capacity = conn.relay._size_pipe(self._pipe_w, pipe_size)
            except BaseException:
                self._close_pipe()
                raise
        else:
            self._buffer = memoryview(bytearray(COPY_CHUNK))

    @property
    def splicing(self) -> bool:
        return self._buffer is None

    def start(self) -> None:
        self._park()

    # -- the state machine: fill when empty, drain when holding bytes -------------------------

    def _run(self) -> None:
        if self.done:  # an event delivered in the same loop turn as the connection's end
            return
        moved = 0
        try:
            while True:
                if self.pending:
                    try:
                        n = self._drain()
                    except BlockingIOError:
                        break
                    except OSError as exc:
                        if self.splicing and exc.errno in _SPLICE_REFUSED and self._to_copy(exc):
                            continue
                        self._conn.fail(self, "upstream" if self.name == "up" else "client", exc)
                        return
                    self.pending -= n
                    self._start += n
                    self.moved += n
                    moved += n
                    # A short write means the destination's send buffer is full; and past the
                    # budget, other connections get a turn (level-triggered: we are called again).
                    if self.pending or moved >= MAX_PER_WAKEUP:
                        break
                    continue
                if self._eof:
                    self._finish()
                    return
                try:
                    n = self._fill()
                except BlockingIOError:
                    break  # the pipe is empty, so this can only mean: no data in the socket
                except OSError as exc:
                    if self.splicing and exc.errno in _SPLICE_REFUSED and self._to_copy(exc):
                        continue
                    self._conn.fail(self, "client" if self.name == "up" else "upstream", exc)
                    return
                if n == 0:
                    self._eof = True
                self.pending = n
                self._start = 0
        finally:
            if moved:
                self._conn.touch()
        self._park()

    def _fill(self) -> int:
        if self._buffer is None:
            return os.splice(self._src_fd, self._pipe_w, self._capacity, flags=_SPLICE_FLAGS)
        return self._src.recv_into(self._buffer)

    def _drain(self) -> int:
        if self._buffer is None:
            return os.splice(self._pipe_r, self._dst_fd, self.pending, flags=_SPLICE_FLAGS)
        return self._dst.send(self._buffer[self._start : self._start + self.pending])

    def _park(self) -> None:
        """Wait for the one event that lets this direction progress."""
        want = "w" if self.pending else "r"
        if want == self._interest:
            return
        self._unpark()
        if want == "r":
            self._loop.add_reader(self._src_fd, self._run)
        else:
            self._loop.add_writer(self._dst_fd, self._run)
        self._interest = want

    def _unpark(self) -> None:
        if self._interest == "r":
            self._loop.remove_reader(self._src_fd)
        elif self._interest == "w":
            self._loop.remove_writer(self._dst_fd)
        self._interest = ""

    def _finish(self) -> None:
        """EOF from src and nothing left to send: pass the half-close on to dst."""
        self._unpark()
        self.done = True
        self._close_pipe()
        try:
            self._dst.shutdown(socket.SHUT_WR)
        except OSError as exc:
            self._conn.fail(self, "upstream" if self.name == "up" else "client", exc)
            return
        self._conn.direction_done()

    def _to_copy(self, exc: OSError) -> bool:
        """splice refused these descriptors: continue with the userspace copy (False: failed)."""
        held = bytearray()
        try:
            while len(held) < self.pending:  # the pipe holds exactly `pending` bytes
                chunk = os.read(self._pipe_r, self.pending - len(held))
                if not chunk:
                    break
                held += chunk
        except OSError:
            return False
        if len(held) != self.pending:
            return False
        self._close_pipe()
        buffer = bytearray(max(COPY_CHUNK, len(held)))
        buffer[: len(held)] = held
        self._buffer = memoryview(buffer)
        self.pending = len(held)
        self._start = 0
        self._conn.stats.mode = "copy"
        self._conn.relay._note_splice_refused(exc)
        return True

    def _close_pipe(self) -> None:
        for fd in (self._pipe_r, self._pipe_w):
            if fd >= 0:
                os.close(fd)
        self._pipe_r = self._pipe_w = -1

    def stop(self) -> None:
        """The connection is closing: stop waiting and free the pipe (dropping what it holds)."""
        self._unpark()
        self._close_pipe()
        self._buffer = None
        self.done = True


# --------------------------------------------------------------------------------------------
# One relayed connection
# --------------------------------------------------------------------------------------------


class _Connection:
    """A client socket, its upstream socket, the two pumps between them and its deadline."""

    __slots__ = (
        "_idle_handle",
        "client",
        "closed",
        "last_activity",
        "loop",
        "pumps",
        "relay",
        "stats",
        "task",
        "upstream",
    )

    def __init__(self, relay: Relay, client: socket.socket, stats: ConnectionStats) -> None:
        self.relay = relay
        self.loop = relay._loop
        self.client = client
        self.stats = stats
        self.upstream: socket.socket | None = None
        self.pumps: tuple[_Pump, ...] = ()
        self.closed = False
        self.last_activity = self.loop.time()
        self.task: asyncio.Task[None] | None = None
        self._idle_handle: asyncio.TimerHandle | None = None

    async def open(self) -> None:
        """Get an upstream socket, then hand over to the pumps (the task ends there)."""
        relay = self.relay
        try:
            upstream = relay._take_spare()
            if upstream is None:
                upstream = await relay._connect_upstream()
            else:
                self.stats.preconnected = True
        except OSError as exc:
            relay._stats.upstream_failures += 1
            self.close("upstream connect failed", detail=_describe(exc))
            return
        except asyncio.CancelledError:
            self.close("shutdown")
            raise
        if self.closed:  # closed by the relay while connecting
            upstream.close()
            return
        self.upstream = upstream
        try:
            self.stats.upstream = _format_address(upstream.getpeername())
        except OSError as exc:  # reset between the connect and now
            self.close("upstream reset", detail=_describe(exc), abort=True)
            return
        splice = relay.splice
        try:
            up = _Pump(self, "up", self.client, upstream, splice, relay.pipe_size)
            try:
                down = _Pump(self, "down", upstream, self.client, splice, relay.pipe_size)
            except BaseException:
                up.stop()
                raise
        except OSError as exc:  # EMFILE/ENFILE creating the pipes
            self.close("no resources", detail=_describe(exc), abort=True, level=logging.WARNING)
            return
        self.pumps = (up, down)
        self.last_activity = self.loop.time()
        self._arm_idle()
        for pump in self.pumps:
            pump.start()

    def touch(self) -> None:
        self.last_activity = self.loop.time()

    def _arm_idle(self) -> None:
        timeout = self.relay.idle_timeout
        if timeout is not None:
            self._idle_handle = self.loop.call_at(self.last_activity + timeout, self._check_idle)

    def _check_idle(self) -> None:
        # One timer per connection, moved only when it fires: activity costs no timer churn.
        timeout = self.relay.idle_timeout
        assert timeout is not None
        if self.loop.time() - self.last_activity >= timeout:
            self._idle_handle = None
            self.close("idle timeout")
        else:
            self._arm_idle()

    def direction_done(self) -> None:
        if all(pump.done for pump in self.pumps):
            self.close("done")

    def fail(self, pump: _Pump, side: str, exc: OSError) -> None:
        if exc.errno in _RESETS:
            self.close(f"{side} reset", abort=True)
        else:
            self.close(f"{side} error", detail=_describe(exc), abort=True, level=logging.WARNING)

    def close(
        self, reason: str, *, detail: str = "", abort: bool = False, level: int = logging.INFO
    ) -> None:
        """End the connection; ``abort`` resets both peers instead of closing with a FIN."""
        if self.closed:
            return
        self.closed = True
        if self._idle_handle is not None:
            self._idle_handle.cancel()
            self._idle_handle = None
        for pump in self.pumps:
            pump.stop()
        for sock in (self.client, self.upstream):
            if sock is None:
                continue
            if abort:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            elif reason != "done":  # "done": both sides sent EOF, nothing can be left unread
                _discard_unread(sock)
            sock.close()
        stats = self.stats
        if self.pumps:
            stats.bytes_up, stats.bytes_down = self.pumps[0].moved, self.pumps[1].moved
        stats.ended = self.loop.time()
        stats.reason = reason
        self.relay._forget(self)
        if log.isEnabledFor(level):
            log.log(
                level,
                "#%d %s -> %s ended (%s%s) after %.3fs: %d bytes up, %d bytes down, %s",
                stats.id,
                stats.client,
                stats.upstream or self.relay.upstream_text,
                reason,
                f": {detail}" if detail else "",
                stats.ended - stats.started,
                stats.bytes_up,
                stats.bytes_down,
                stats.mode,
            )

    def live_stats(self) -> ConnectionStats:
        stats = self.stats
        if self.pumps and not self.closed:
            stats.bytes_up, stats.bytes_down = self.pumps[0].moved, self.pumps[1].moved
        return stats


def _discard_unread(sock: socket.socket) -> None:
    """Drop bytes received and not relayed, so close() sends a FIN, not a reset.

    Linux answers close() on a socket with unread data with a reset (RFC 2525 2.17), and a
    client whose first bytes were never forwarded (upstream down, idle timeout) should see an
    orderly end. MSG_TRUNC discards inside the kernel without copying (tcp(7)).
    """
    for _ in range(_DISCARD_CALLS):
        try:
            if not sock.recv(COPY_CHUNK, socket.MSG_TRUNC | socket.MSG_DONTWAIT):
                return
        except OSError:
            return


def _describe(exc: OSError) -> str:
    """One line for the log: the OS's words, not a traceback."""
    if isinstance(exc, TimeoutError) and exc.errno is None:
        return "timed out"
    if isinstance(exc, socket.gaierror):
        return str(exc.strerror)
    if exc.errno:  # uvloop words a refused connect "Connect call failed (...)": use the OS's
        return os.strerror(exc.errno)
    return exc.strerror or str(exc) or type(exc).__name__


# --------------------------------------------------------------------------------------------
# The relay
# --------------------------------------------------------------------------------------------


class Relay:
    """Relay TCP connections from ``listen`` to ``upstream``, zero-copy with ``splice(2)``.

    Every accepted connection gets its own upstream connection; bytes flow both ways until each
    side has closed its write side (the half-close of one side is passed on to the other, so
    request-then-shutdown protocols work), an error resets both, or no byte moves for
    ``idle_timeout`` seconds. See the module docstring for how.

    Parameters:

    * ``listen``: ``(host, port)``; port 0 picks a free port, read it from :attr:`address`.
    * ``upstream``: ``(host, port)``, resolved once by :meth:`start` (like nginx resolves its
      upstreams at start-up); every address the name resolves to is tried in order.
    * ``splice``: ``False`` copies through a bounded userspace buffer instead (the fallback,
      also used automatically where splice is unavailable or refused).
    * ``pipe_size``: capacity asked for each direction's pipe (:data:`PIPE_SIZE`).
    * ``idle_timeout``: seconds without a byte in either direction; ``None`` = never.
    * ``connect_timeout``: seconds to reach the upstream; the client is closed after.
    * ``max_connections``: relayed connections at once; more are accepted and closed at once.
      ``None`` derives it from the open-file limit (:func:`default_max_connections`).
    * ``preconnect``: upstream connections kept open ahead of demand (0 = off).
    * ``socket_options``: tuning for the listener (and its accepted sockets).
    * ``on_close``: called with the final :class:`ConnectionStats` of each connection.

    Pitfalls: the relay is TCP only, and it passes bytes through untouched (no PROXY protocol,
    so the upstream sees the relay's address). A cut connection is reset on both sides, never
    closed with a FIN, so a peer reading until EOF cannot mistake it for a complete stream.

    Example::

        relay = Relay(("127.0.0.1", 0), ("127.0.0.1", 8080), idle_timeout=60)
        await relay.start()
        print("relaying on port", relay.address[1])
        ...
        await relay.close(grace=5)          # stop accepting, let transfers finish, reset the rest
        print(relay.stats().bytes_down)

    or ``async with Relay(...) as relay: await relay.serve_forever()``.
    """

    def __init__(
        self,
        listen: tuple[str, int],
        upstream: tuple[str, int],
        *,
        splice: bool = True,
        pipe_size: int = PIPE_SIZE,
        idle_timeout: float | None = IDLE_TIMEOUT,
        connect_timeout: float = CONNECT_TIMEOUT,
        max_connections: int | None = None,
        preconnect: int = 0,
        socket_options: SocketOptions | None = None,
        on_close: Callable[[ConnectionStats], None] | None = None,
    ) -> None:
        if idle_timeout is not None and idle_timeout <= 0:
            raise ValueError("idle_timeout must be positive (None disables it)")
        if connect_timeout <= 0:
            raise ValueError("connect_timeout must be positive")
        if max_connections is not None and max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        if preconnect < 0:
            raise ValueError("preconnect must not be negative")
        if pipe_size < 1:
            raise ValueError("pipe_size must be positive")
        self.listen = listen
        self.upstream = upstream
        self.upstream_text = _format_address(upstream)
        self.splice = splice and splice_available()
        self.pipe_size = pipe_size
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
        self.max_connections = (
            default_max_connections() if max_connections is None else max_connections
        )
        self.preconnect = preconnect
        self.socket_options = socket_options or SocketOptions()
        self.on_close = on_close
        # -- lives with the relay
        self._event_loop: asyncio.AbstractEventLoop | None = None  # the loop start() ran on
        self._listener: socket.socket | None = None
        # (family, type, proto, sockaddr): an IPv6 sockaddr keeps its flow info and scope id.
        self._upstream_addrs: list[tuple[int, int, int, _SockAddr]] = []
        self._connections: dict[int, _Connection] = {}
        self._ids = itertools.count(1)
        self._stats = RelayStats()
        self._ended_up = 0  # bytes of connections that have ended (live ones are summed live)
        self._ended_down = 0
        self._closed = asyncio.Event()
        self._drained: asyncio.Event | None = None
        self._accept_paused: asyncio.TimerHandle | None = None
        self._full_logged = False
        self._warned: set[str] = set()
        # -- pre-connected spares
        self._spares: deque[socket.socket] = deque()
        self._spares_wanted = asyncio.Event()
        self._refill_task: asyncio.Task[None] | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def _loop(self) -> asyncio.AbstractEventLoop:
        if self._event_loop is None:
            raise RuntimeError("the relay has not been started")
        return self._event_loop

    @property
    def address(self) -> tuple[str, int]:
        """The bound ``(host, port)`` (after :meth:`start`)."""
        if self._listener is None:
            raise RuntimeError("the relay is not listening")
        host, port = self._listener.getsockname()[:2]
        return str(host), int(port)

    async def start(self) -> None:
        """Resolve the upstream, listen, and start accepting on the running loop.

        Raises ``OSError`` with the errno intact if the upstream name does not resolve
        (``socket.gaierror``) or the listen address cannot be used (``EADDRINUSE``...).
        """
        self._event_loop = asyncio.get_running_loop()
        host, port = self.upstream
        try:
            infos = await self._loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise socket.gaierror(
                exc.errno, f"cannot resolve upstream {self.upstream_text}: {exc.strerror}"
            ) from None
        self._upstream_addrs = [
            (family, type_, proto, addr) for family, type_, proto, _, addr in infos
        ]
        self._listener = tuning.create_listener(*self.listen, self.socket_options)
        self._loop.add_reader(self._listener.fileno(), self._on_accept)
        if self.preconnect:
            self._spares_wanted.set()
            self._refill_task = self._loop.create_task(self._refill())

    async def serve_forever(self) -> None:
        """Wait until :meth:`close` has finished."""
        await self._closed.wait()

    async def close(self, grace: float = 0.0) -> None:
        """Stop accepting; give live connections ``grace`` seconds to end; reset the rest.

        Idempotent. Returns once every descriptor the relay opened is closed.
        """
        if self._listener is not None:
            self._loop.remove_reader(self._listener.fileno())
            self._listener.close()
            self._listener = None
        if self._accept_paused is not None:
            self._accept_paused.cancel()
            self._accept_paused = None
        if self._refill_task is not None:
            self._refill_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refill_task
            self._refill_task = None
        while self._spares:
            self._spares.popleft().close()
        if grace > 0 and self._connections:
            self._drained = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await self._drained.wait()
        if self._connections:
            log.info("closing %d connections still open", len(self._connections))
        tasks = []
        for conn in list(self._connections.values()):
            if conn.task is not None and not conn.task.done():
                conn.task.cancel()
                tasks.append(conn.task)
            conn.close("shutdown", abort=True)
        await asyncio.gather(*tasks, return_exceptions=True)
        self._closed.set()

    async def __aenter__(self) -> Relay:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- statistics ----------------------------------------------------------------------------

    def stats(self) -> RelayStats:
        """A snapshot of the relay's counters, byte totals including live connections."""
        live = [conn.live_stats() for conn in self._connections.values()]
        snapshot = dataclasses.replace(self._stats)
        snapshot.active = len(live)
        snapshot.bytes_up = self._ended_up + sum(s.bytes_up for s in live)
        snapshot.bytes_down = self._ended_down + sum(s.bytes_down for s in live)
        return snapshot

    def connections(self) -> list[ConnectionStats]:
        """Per-connection statistics of the live connections (copies)."""
        return [dataclasses.replace(conn.live_stats()) for conn in self._connections.values()]

    # -- accepting -----------------------------------------------------------------------------

    def _on_accept(self) -> None:
        listener = self._listener
        if listener is None:
            return
        for _ in range(ACCEPT_BATCH):
            try:
                sock, addr = listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.warning(
                        "cannot accept (%s): pausing for %.0f s", _describe(exc), ACCEPT_RETRY_DELAY
                    )
                    self._loop.remove_reader(listener.fileno())
                    self._accept_paused = self._loop.call_later(
                        ACCEPT_RETRY_DELAY, self._resume_accepting
                    )
                    return
                # ECONNABORTED, EPROTO...: that one connection is gone, the listener is fine.
                log.debug("accept: %s", _describe(exc))
                continue
            self._stats.accepted += 1
            if len(self._connections) >= self.max_connections:
                self._stats.rejected += 1
                if not self._full_logged:
                    self._full_logged = True
                    log.warning(
                        "max connections (%d) reached: closing new connections",
                        self.max_connections,
                    )
                sock.close()
                continue
            self._full_logged = False
            self._start_connection(sock, addr)

    def _resume_accepting(self) -> None:
        self._accept_paused = None
        if self._listener is not None:
            self._loop.add_reader(self._listener.fileno(), self._on_accept)

    def _start_connection(self, sock: socket.socket, addr: Sequence[object]) -> None:
        sock.setblocking(False)
        tuning.apply_connection_options(sock, self.socket_options)
        stats = ConnectionStats(
            id=next(self._ids),
            client=_format_address(addr),
            mode="splice" if self.splice else "copy",
            started=self._loop.time(),
        )
        conn = _Connection(self, sock, stats)
        self._connections[stats.id] = conn
        conn.task = self._loop.create_task(conn.open())

    def _forget(self, conn: _Connection) -> None:
        if self._connections.pop(conn.stats.id, None) is None:
            return
        self._stats.closed += 1
        self._ended_up += conn.stats.bytes_up
        self._ended_down += conn.stats.bytes_down
        if self.on_close is not None:
            try:
                self.on_close(conn.stats)
            except Exception as exc:
                log.error("on_close callback failed: %s: %s", type(exc).__name__, exc)
        if not self._connections and self._drained is not None:
            self._drained.set()

    # -- upstream ------------------------------------------------------------------------------

    async def _connect_upstream(self) -> socket.socket:
        """A connected non-blocking socket to the upstream; ``OSError`` if none answers."""
        error: OSError = OSError(errno.EHOSTUNREACH, "no address")
        for family, type_, proto, addr in self._upstream_addrs:
            sock = socket.socket(family, type_, proto)
            try:
                sock.setblocking(False)
                if self.socket_options.nodelay:
                    # Like the accepted side (inherited from the listener): a relay must not
                    # hold back the tail of a message waiting for an ACK (Nagle, RFC 896).
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                async with asyncio.timeout(self.connect_timeout):
                    await self._loop.sock_connect(sock, addr)
            except OSError as exc:
                sock.close()
                error = exc
                continue
            except BaseException:
                sock.close()
                raise
            return sock
        raise error

    def _take_spare(self) -> socket.socket | None:
        """The oldest pre-connected upstream socket still open, or None."""
        while self._spares:
            sock = self._spares.popleft()
            self._spares_wanted.set()
            if _still_open(sock):
                self._stats.spares_used += 1
                return sock
            self._stats.spares_discarded += 1
            sock.close()
        return None

    async def _refill(self) -> None:
        delay = RETRY_MIN
        while True:
            await self._spares_wanted.wait()
            self._spares_wanted.clear()
            while len(self._spares) < self.preconnect:
                try:
                    sock = await self._connect_upstream()
                except OSError as exc:
                    log.debug("pre-connect to %s: %s", self.upstream_text, _describe(exc))
                    await asyncio.sleep(delay)
                    delay = min(2 * delay, RETRY_MAX)
                    continue
                delay = RETRY_MIN
                self._spares.append(sock)

    # -- pipes ---------------------------------------------------------------------------------

    def _size_pipe(self, fd: int, size: int) -> int:
        """Ask for ``size`` bytes of pipe capacity; return what the kernel gave."""
        try:
            return int(fcntl.fcntl(fd, _F_SETPIPE_SZ, size))
        except OSError as exc:
            got = int(fcntl.fcntl(fd, getattr(fcntl, "F_GETPIPE_SZ", 1032)))
            self._warn_once(
                "pipe",
                f"cannot size relay pipes to {size} bytes ({_describe(exc)}; see "
                f"/proc/sys/fs/pipe-max-size and pipe-user-pages-soft): using {got}",
            )
            return got

    def _note_splice_refused(self, exc: OSError) -> None:
        self._warn_once("splice", f"splice refused ({_describe(exc)}): copying through userspace")

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning("%s", message)


def _still_open(sock: socket.socket) -> bool:
    """False if the peer closed or reset an idle socket (a pending greeting counts as open)."""
    try:
        return bool(sock.recv(1, socket.MSG_PEEK))
    except BlockingIOError:
        return True
    except OSError:
        return False


# --------------------------------------------------------------------------------------------
# Command line: wirespeed relay --listen HOST:PORT --upstream HOST:PORT
# --------------------------------------------------------------------------------------------


def _address_type(*, allow_port_zero: bool) -> Callable[[str], tuple[str, int]]:
    def parse(text: str) -> tuple[str, int]:
        try:
            return parse_address(text, allow_port_zero=allow_port_zero)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def _seconds(*, zero_means: str | None) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = -1.0
        if not (value > 0 or (zero_means is not None and value == 0)):
            what = f"seconds > 0 (0 = {zero_means})" if zero_means else "seconds > 0"
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


def _count(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}")
        return value

    return parse


def _pipe_size(text: str) -> int:
    size = tuning.parse_size(text)
    # One page is the smallest pipe there is (pipe(7)); the kernel rounds up to a power of two.
    if size is None or not 4096 <= size <= 2**31 - 1:
        raise argparse.ArgumentTypeError(
            f"expected a byte count >= 4096 like 65536 or 1M, got {text!r}"
        )
    return size


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``wirespeed relay`` options to ``parser`` (bad values: one-line error, exit 2)."""
    parser.add_argument(
        "--listen",
        required=True,
        type=_address_type(allow_port_zero=True),
        metavar="HOST:PORT",
        help="address to accept connections on (port 0: any free port)",
    )
    parser.add_argument(
        "--upstream",
        required=True,
        type=_address_type(allow_port_zero=False),
        metavar="HOST:PORT",
        help="address every connection is relayed to",
    )
    parser.add_argument(
        "--max-connections",
        type=_count(1),
        metavar="N",
        help="relayed connections at once; more are accepted and closed at once "
        f"(default: open-file limit / {FDS_PER_CONNECTION}, now {default_max_connections()})",
    )
    parser.add_argument(
        "--idle-timeout",
        type=_seconds(zero_means="never"),
        default=IDLE_TIMEOUT,
        metavar="SECONDS",
        help="close a connection after this long without a byte either way (default %(default)s)",
    )
    parser.add_argument(
        "--connect-timeout",
        type=_seconds(zero_means=None),
        default=CONNECT_TIMEOUT,
        metavar="SECONDS",
        help="time to reach the upstream before the client is closed (default %(default)s)",
    )
    parser.add_argument(
        "--graceful-timeout",
        type=_seconds(zero_means="reset at once"),
        default=GRACEFUL_TIMEOUT,
        metavar="SECONDS",
        help="time connections get to finish after SIGTERM (default %(default)s)",
    )
    parser.add_argument(
        "--pipe-size",
        type=_pipe_size,
        default=PIPE_SIZE,
        metavar="BYTES",
        help="pipe capacity per direction, bounds memory per connection (default 1M)",
    )
    parser.add_argument(
        "--no-splice",
        dest="splice",
        action="store_false",
        help="copy through a userspace buffer instead of splice (for comparison)",
    )
    parser.add_argument(
        "--preconnect",
        type=_count(0),
        default=0,
        metavar="N",
        help="upstream connections kept open ahead of demand (default 0: off)",
    )
    add_loop_arguments(parser)
    tuning.add_arguments(parser)


class _UsageError(Exception):
    """Reported in one line, exit status 2 (like wirespeed.cli.UsageError)."""


def main(ns: argparse.Namespace) -> int:
    """Run ``wirespeed relay`` until SIGTERM/SIGINT; return the exit status.

    Prints ``wirespeed: relaying HOST:PORT -> HOST:PORT (pid N)`` once it accepts connections.
    On SIGTERM it stops accepting, lets connections finish for ``--graceful-timeout`` seconds,
    resets the rest and returns 0; a second signal cuts at once. A listen address in use, an
    upstream name that does not resolve or a refused option: one line on stderr, returns 2.
    """
    logging.basicConfig(
        level=ns.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        relay = Relay(
            ns.listen,
            ns.upstream,
            splice=ns.splice,
            pipe_size=ns.pipe_size,
            idle_timeout=ns.idle_timeout or None,
            connect_timeout=ns.connect_timeout,
            max_connections=ns.max_connections,
            preconnect=ns.preconnect,
            socket_options=tuning.from_namespace(ns),
        )
    except ValueError as exc:
        return _usage_error(str(exc))
    factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop
    if ns.loop == "uvloop":
        try:
            import uvloop  # noqa: PLC0415 - only the CLI picks the loop

            factory = uvloop.new_event_loop
        except ImportError:  # pragma: no cover - uvloop is a hard dependency on Linux
            pass
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(_run(relay, ns.graceful_timeout))
    except _UsageError as exc:
        return _usage_error(str(exc))
    except KeyboardInterrupt:
        return 130


def _usage_error(message: str) -> int:
    print(f"wirespeed relay: error: {message}", file=sys.stderr)
    return 2


async def _run(relay: Relay, grace: float) -> int:
    loop = asyncio.get_running_loop()
    try:
        await relay.start()
    except OSError as exc:
        where = _format_address(relay.listen)
        if isinstance(exc, socket.gaierror):  # the message names the address (listen or upstream)
            raise _UsageError(str(exc.strerror or exc)) from None
        if exc.errno == errno.EADDRINUSE:
            raise _UsageError(f"{where} is already in use") from None
        if exc.errno == errno.EACCES:
            raise _UsageError(f"no permission to listen on {where}") from None
        raise _UsageError(f"cannot listen on {where}: {exc.strerror or exc}") from None
    stop = asyncio.Event()
    cut: list[asyncio.Task[None]] = []

    def on_signal() -> None:
        if not stop.is_set():
            stop.set()
        elif not cut:
            log.warning("second signal: closing every connection now")
            cut.append(loop.create_task(relay.close()))

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    loop.set_exception_handler(_log_one_line)
    print(
        f"wirespeed: relaying {_format_address(relay.address)} -> {relay.upstream_text}"
        f" (pid {os.getpid()})",
        flush=True,
    )
    await stop.wait()
    log.info("stopping: %d connections get %.1f s to finish", relay.stats().active, grace)
    await relay.close(grace)
    await asyncio.gather(*cut)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)
    return 0


def _log_one_line(loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
    """The CLI's loop exception handler: operators get one line, not a traceback."""
    exc = context.get("exception")
    detail = f": {type(exc).__name__}: {exc}" if isinstance(exc, BaseException) else ""
    log.error("%s%s", context.get("message", "unexpected error"), detail)


def _command(argv: Sequence[str] | None = None) -> int:
    """``python -m wirespeed.relay ...``: the relay without the rest of the CLI."""
    parser = OneLineParser(prog="wirespeed relay", description="Zero-copy TCP relay.")
    add_arguments(parser)
    return main(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(_command())
