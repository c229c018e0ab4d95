"""A connection pool for upstream TCP connections, one small pool per origin.

Theory of operation
-------------------
A :class:`Pool` owns non-blocking ``socket.socket`` objects, wrapped in :class:`Connection`, and
lends them out. Everything is per *origin* (scheme, host, port): each origin has its own stack of
idle connections, its own count of connections that exist, and its own queue of waiters, and
``max_size`` bounds each origin separately.

*Slots.* An origin has ``max_size`` slots. A slot is held by an idle connection, a lent-out
connection, or an acquirer that is still connecting. :meth:`Pool.acquire` takes a slot or waits
for one; releasing a connection never frees its slot while someone waits: the slot, with the
connection if it can be reused, is handed straight to the oldest waiter. That hand-over is what
makes waiters FIFO: a caller arriving later cannot overtake the queue, because a newcomer queues
whenever there are waiters. At no moment do more than ``max_size`` sockets exist per origin.

*LIFO reuse.* Idle connections form a stack: the most recently used one is handed out first, so
under a light load a few connections stay warm (congestion window open, in the peer's caches)
and the rest age out by the idle timeout instead of all being kept barely alive.

*Liveness.* A pooled connection may have been closed by the peer while it sat idle (a server's
keep-alive timeout). Before a connection is lent again it gets a non-blocking
``recv(1, MSG_PEEK)``: ``BlockingIOError`` means alive and quiet; ``b""`` means the peer sent
FIN; bytes mean the peer spoke out of turn (an unsolicited ``408`` or garbage) and the stream is
no longer in a known state; an ``OSError`` means a reset. All but the first are discarded and
counted. The check costs one syscall and catches every close that has reached us; a close still
in flight can only be caught by the request failing, which the client reports as
:class:`ConnectionLost`.

*Ageing.* A connection idle for longer than ``idle_timeout`` or older than ``max_lifetime`` is
closed when it is next looked at (acquire) and by a reaper that runs while idle connections
exist. Both checks use ``time.monotonic``.

*Errors.* ``async with pool.connection(origin)`` releases the connection for reuse only if the
body exits normally and the user marked the connection reusable (:attr:`Connection.reusable`,
which the HTTP client sets after a complete response that allows keep-alive). Any exception,
including cancellation, closes it: a half-read response must never reach the next request.

*Cancellation.* A waiter that is cancelled or times out removes itself from the queue; if a slot
or connection had already been handed to it in the same loop turn, it passes that on to the next
waiter (or back to the pool) before re-raising, so no slot leaks.

*Socket options* come from :class:`~wirespeed.io.tuning.SocketOptions`, applied before
``connect()`` (so a receive buffer fixes the window scale in the SYN). When ``fastopen`` is set,
``TCP_FASTOPEN_CONNECT`` (Linux 4.11+) is set too: with a cookie from an earlier connection the
first request rides in the SYN. It is guarded: refused or absent, the connection is a normal one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import logging
import os
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Final, NamedTuple

from wirespeed.io.tuning import SocketOptions, apply_connection_options

__all__ = [
    "ConnectError",
    "Connection",
    "Origin",
    "Pool",
    "PoolClosed",
    "PoolStats",
    "UpstreamError",
    "UpstreamTimeout",
]

logger = logging.getLogger(__name__)

# TCP_FASTOPEN_CONNECT from include/uapi/linux/tcp.h; Python's socket module does not name it.
_TCP_FASTOPEN_CONNECT: Final = 30
_LINUX: Final = sys.platform.startswith("linux")

# Default per-origin cap. 16: browsers use 6 per origin, curl's and aiohttp's pools default to
# 100 in total; 16 is enough to saturate one upstream over loopback or a LAN in the fetch
# benchmark (8 parallel ranges) with room for other requests, and small enough that a bug does
# not open hundreds of sockets.
DEFAULT_MAX_SIZE: Final = 16
# Seconds an idle connection is kept. Below common server keep-alive timeouts (wirespeed 5 s,
# uvicorn 5 s, nginx 75 s) would be ideal, but the liveness check makes a stale one harmless;
# 30 s bounds idle sockets while keeping reuse across bursts (aiohttp's keepalive_timeout is 15 s,
# Go's IdleConnTimeout 90 s).
DEFAULT_IDLE_TIMEOUT: Final = 30.0
# Seconds after which a connection is retired even when busy-then-idle: lets DNS changes and
# load-balancer rebalancing take effect. 10 minutes: arbitrary, the order of common DNS TTLs.
DEFAULT_MAX_LIFETIME: Final = 600.0
# Seconds to establish TCP. 10 s covers SYN retransmissions at 1 s and 3 s (RFC 6298 initial
# RTO 1 s, doubled) with margin; curl's default connect timeout is 300 s, far too long for a pool.
DEFAULT_CONNECT_TIMEOUT: Final = 10.0


# -- errors: the small vocabulary shared with the client ----------------------------------------


class UpstreamError(Exception):
    """Base of every error the pool, the client and ``fetch`` raise on purpose."""


class ConnectError(UpstreamError):
    """No TCP connection to the origin: name resolution failed, refused, unreachable."""


class UpstreamTimeout(UpstreamError, TimeoutError):
    """A deadline passed. ``phase`` says which: "pool", "connect", "read", "write" or "total"."""

    def __init__(self, phase: str, message: str) -> None:
        super().__init__(message)
        self.phase = phase


class PoolClosed(UpstreamError):
    """The pool was closed while the caller was using or waiting for it."""


# -- origins and connections --------------------------------------------------------------------


class Origin(NamedTuple):
    """Where connections go: ``Origin("http", "127.0.0.1", 8080)``."""

    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


class Connection:
    """One pooled TCP connection: a non-blocking socket plus what the pool knows of it.

    ``sock`` is the raw socket; the user reads and writes it (the HTTP client does, with
    ``loop.add_reader`` waits). ``buffer`` holds bytes read past the end of what the user
    consumed. Set ``reusable = True`` once the stream is back at a message boundary; the pool only
    reuses connections marked so, and clears the mark each time it lends the connection out.
    """

    __slots__ = ("buffer", "created", "idle_since", "origin", "requests", "reusable", "sock")

    def __init__(self, sock: socket.socket, origin: Origin) -> None:
        self.sock = sock
        self.origin = origin
        self.created = time.monotonic()
        self.idle_since = self.created
        self.reusable = False
        self.requests = 0  # times lent out: 1 for a fresh connection
        self.buffer = b""

    def fileno(self) -> int:
        return self.sock.fileno()

    @property
    def closed(self) -> bool:
        return self.sock.fileno() < 0

    def close(self) -> None:
        self.sock.close()

    def is_alive(self) -> bool:
        """True if the peer neither closed, reset, nor sent anything since the last response.

        One non-blocking ``recv(1, MSG_PEEK)``; see the module docstring.
        """
        if self.closed or self.buffer:
            return False
        try:
            self.sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return True
        except OSError:
            return False
        return False  # b"": FIN received; a byte: the peer spoke out of turn

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self.sock.fileno()}"
        return f"<Connection {self.origin} {state} requests={self.requests}>"


@dataclass(slots=True)
class PoolStats:
    """Counters for logs and the benchmark lab (totals since the pool was created).

    ``opened``: TCP connections established; ``reused``: acquisitions served by an existing
    connection; ``discarded``: connections closed by the pool other than at :meth:`Pool.aclose`
    (stale, expired, or released after an error); ``waiting``: acquirers queued right now;
    ``idle`` and ``in_use``: connections right now (``in_use`` counts connects in progress);
    ``peak_open``: the most connections that ever existed at once for one origin.
    """

    opened: int = 0
    reused: int = 0
    discarded: int = 0
    waiting: int = 0
    idle: int = 0
    in_use: int = 0
    peak_open: int = 0


# A waiter is granted either a connection (reuse) or None (a slot: connect a new one).
_Grant = Connection | None


@dataclass(slots=True)
class _OriginPool:
    idle: list[Connection] = field(default_factory=list)  # a stack: the end is the warmest
    lent: set[Connection] = field(default_factory=set)  # closed by aclose() too
    busy: int = 0  # slots held by lent-out connections and connects in progress
    waiters: collections.deque[asyncio.Future[_Grant]] = field(default_factory=collections.deque)

    @property
    def size(self) -> int:
        return len(self.idle) + self.busy


class Pool:
    """Per-origin pools of TCP connections with a size cap, LIFO reuse and FIFO waiters.

    Example::

        pool = Pool(max_size=8)
        origin = Origin("http", "127.0.0.1", 8080)
        async with pool.connection(origin) as conn:
            conn.sock.send(b"...")        # or hand it to the HTTP client
            conn.reusable = True          # only after a complete exchange
        print(pool.stats)                 # opened=1 reused=0 ...
        await pool.aclose()

    Behaviour a caller can observe:

    * at most ``max_size`` sockets exist per origin, counting those being connected;
    * :meth:`acquire` returns the most recently released live connection, else connects, else
      waits; waiters are served in arrival order and raise :class:`UpstreamTimeout` (phase
      "pool") after ``timeout`` seconds, leaving the queue intact;
    * idle connections that are stale (peer closed, reset, sent unsolicited bytes), idle longer
      than ``idle_timeout`` or older than ``max_lifetime`` are closed, never lent;
    * :class:`ConnectError` / :class:`UpstreamTimeout` (phase "connect") when connecting fails;
    * after :meth:`aclose`, acquire raises :class:`PoolClosed`, waiters too.

    Only ``"http"`` origins are connected (plain TCP); TLS is not implemented.
    """

    def __init__(
        self,
        *,
        max_size: int = DEFAULT_MAX_SIZE,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        max_lifetime: float = DEFAULT_MAX_LIFETIME,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        socket_options: SocketOptions | None = None,
    ) -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be at least 1, got {max_size}")
        for name, value in (
            ("idle_timeout", idle_timeout),
            ("max_lifetime", max_lifetime),
            ("connect_timeout", connect_timeout),
        ):
            if not value > 0:
                raise ValueError(f"{name} must be positive, got {value}")
        self.max_size = max_size
        self.idle_timeout = idle_timeout
        self.max_lifetime = max_lifetime
        self.connect_timeout = connect_timeout
        self.socket_options = socket_options if socket_options is not None else SocketOptions()
        self._origins: dict[Origin, _OriginPool] = {}
        self._stats = PoolStats()
        self._closed = False
        self._reaper: asyncio.TimerHandle | None = None

    # -- public API ----------------------------------------------------------------------------

    @property
    def stats(self) -> PoolStats:
        """A snapshot of the counters (see :class:`PoolStats`)."""
        s = self._stats
        idle = sum(len(p.idle) for p in self._origins.values())
        busy = sum(p.busy for p in self._origins.values())
        return PoolStats(s.opened, s.reused, s.discarded, s.waiting, idle, busy, s.peak_open)

    @property
    def closed(self) -> bool:
        return self._closed

    @contextlib.asynccontextmanager
    async def connection(
        self, origin: Origin, *, timeout: float | None = None
    ) -> AsyncIterator[Connection]:
        """Borrow a connection for the ``async with`` block.

        On a normal exit the connection goes back to the pool if ``conn.reusable`` was set,
        else it is closed; on any exception (cancellation included) it is closed. ``timeout``
        bounds the wait for a slot, not the connect (see ``connect_timeout``).
        """
        conn = await self.acquire(origin, timeout=timeout)
        try:
            yield conn
        except BaseException:
            self.release(conn, reuse=False)
            raise
        self.release(conn)

    async def acquire(
        self,
        origin: Origin,
        *,
        timeout: float | None = None,
        connect_timeout: float | None = None,
    ) -> Connection:
        """Take a live connection to ``origin``, waiting at most ``timeout`` s for a slot.

        ``connect_timeout`` overrides the pool's for a new connection. Give it back with
        :meth:`release`. Prefer :meth:`connection`, which cannot forget to.
        """
        self._check_open()
        pool = self._origins.get(origin)
        if pool is None:
            pool = self._origins[origin] = _OriginPool()
        grant: _Grant
        if not pool.waiters and (pool.idle or pool.size < self.max_size):
            pool.busy += 1  # take a slot: from an idle connection (moved below) or a free one
            grant = self._pop_idle(pool)
        else:
            grant = await self._wait(pool, origin, timeout)
        while grant is not None:
            if self._usable(grant, time.monotonic()):
                self._stats.reused += 1
                return self._lend(grant)
            self._discard(grant)
            grant = self._pop_idle(pool)  # the slot stays ours: try the next idle one
        try:
            conn = await self._connect(origin, connect_timeout or self.connect_timeout)
        except BaseException:
            self._free_slot(pool)
            self._prune(origin)
            raise
        self._stats.opened += 1
        try:
            self._check_open()
        except PoolClosed:
            conn.close()
            self._free_slot(pool)
            raise
        return self._lend(conn)

    def release(self, conn: Connection, *, reuse: bool = True) -> None:
        """Give back a connection from :meth:`acquire`.

        It is kept for reuse only if ``reuse`` is true, ``conn.reusable`` is set, the pool is
        open and the connection is not past its lifetime; otherwise it is closed. Either way its
        slot goes to the oldest waiter first.
        """
        pool = self._origins.get(conn.origin)
        if pool is None or conn not in pool.lent:
            raise ValueError(f"{conn!r} is not lent out by this pool")
        pool.lent.discard(conn)
        now = time.monotonic()
        keep = (
            reuse
            and conn.reusable
            and not self._closed
            and not conn.closed
            and not conn.buffer
            and now - conn.created < self.max_lifetime
        )
        if not keep:
            if not conn.closed:
                conn.close()
                if not self._closed:
                    self._stats.discarded += 1
            self._free_slot(pool)
            self._prune(conn.origin)
            return
        conn.idle_since = now
        while pool.waiters:
            waiter = pool.waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)  # the slot moves with the connection
                return
        pool.busy -= 1
        pool.idle.append(conn)
        self._schedule_reaper()

    async def aclose(self) -> None:
        """Close every connection, idle or lent out; fail every waiter with :class:`PoolClosed`.

        A lent-out connection's user sees its next socket operation fail; releasing it later is
        harmless. Safe to call twice.
        """
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        for pool in self._origins.values():
            for conn in pool.idle:
                conn.close()
            pool.idle.clear()
            for conn in pool.lent:
                conn.close()
            while pool.waiters:
                waiter = pool.waiters.popleft()
                if not waiter.done():
                    waiter.set_exception(PoolClosed("the pool was closed"))

    async def __aenter__(self) -> Pool:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- slots and waiters ---------------------------------------------------------------------

    def _prune(self, origin: Origin) -> None:
        """Forget an origin with nothing left (no sockets, slots or waiters): a client that
        talks to many hosts must not accumulate one empty pool per host."""
        pool = self._origins.get(origin)
        if pool is not None and not (pool.idle or pool.busy or pool.waiters or pool.lent):
            del self._origins[origin]

    def _check_open(self) -> None:
        if self._closed:
            raise PoolClosed("the pool is closed")

    def _lend(self, conn: Connection) -> Connection:
        self._origins[conn.origin].lent.add(conn)
        conn.reusable = False
        conn.requests += 1
        return conn

    def _pop_idle(self, pool: _OriginPool) -> Connection | None:
        return pool.idle.pop() if pool.idle else None

    def _usable(self, conn: Connection, now: float) -> bool:
        return (
            now - conn.idle_since < self.idle_timeout
            and now - conn.created < self.max_lifetime
            and conn.is_alive()
        )

    def _discard(self, conn: Connection) -> None:
        conn.close()
        self._stats.discarded += 1

    def _free_slot(self, pool: _OriginPool) -> None:
        """A slot was given up: pass it to the oldest waiter (who connects), else free it."""
        while pool.waiters:
            waiter = pool.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        pool.busy -= 1

    async def _wait(self, pool: _OriginPool, origin: Origin, timeout: float | None) -> _Grant:
        waiter: asyncio.Future[_Grant] = asyncio.get_running_loop().create_future()
        pool.waiters.append(waiter)
        self._stats.waiting += 1
        try:
            async with asyncio.timeout(timeout):
                return await waiter
        except TimeoutError:
            self._abandon(pool, waiter)
            raise UpstreamTimeout(
                "pool", f"no connection to {origin} free within {timeout} s"
            ) from None
        except BaseException:
            self._abandon(pool, waiter)
            raise
        finally:
            self._stats.waiting -= 1

    def _abandon(self, pool: _OriginPool, waiter: asyncio.Future[_Grant]) -> None:
        """A waiter gives up (timeout, cancellation): leave the queue without leaking a slot."""
        if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
            # Granted in the same loop turn as the timeout or cancel: pass the grant on.
            grant = waiter.result()
            if grant is None:
                self._free_slot(pool)
            else:
                pool.lent.add(grant)
                self.release(grant)  # still marked reusable by whoever released it
            return
        waiter.cancel()
        with contextlib.suppress(ValueError):
            pool.waiters.remove(waiter)

    # -- connecting ----------------------------------------------------------------------------

    async def _connect(self, origin: Origin, connect_timeout: float) -> Connection:
        if origin.scheme != "http":
            raise ConnectError(f"unsupported scheme {origin.scheme!r}: only http is implemented")
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(connect_timeout):
                infos = await loop.getaddrinfo(
                    origin.host, origin.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
                )
                last: OSError | None = None
                for family, type_, proto, _, address in infos:
                    sock = socket.socket(family, type_, proto)
                    try:
                        sock.setblocking(False)
                        self._apply_options(sock)
                        await loop.sock_connect(sock, address)
                    except OSError as exc:
                        sock.close()
                        last = exc
                        continue
                    except BaseException:
                        sock.close()
                        raise
                    self._note_open(origin)
                    return Connection(sock, origin)
        except TimeoutError:
            raise UpstreamTimeout(
                "connect", f"connecting to {origin} took longer than {connect_timeout} s"
            ) from None
        except socket.gaierror as exc:
            raise ConnectError(f"cannot resolve {origin.host}: {exc.strerror or exc}") from None
        reason = "no address"
        if last is not None:
            # asyncio words it "Connect call failed (addr)"; the errno's own text is clearer.
            reason = os.strerror(last.errno) if last.errno else str(last)
        raise ConnectError(f"cannot connect to {origin}: {reason}")

    def _note_open(self, origin: Origin) -> None:
        # The socket exists and its slot was already counted in busy.
        size = self._origins[origin].size
        self._stats.peak_open = max(self._stats.peak_open, size)

    def _apply_options(self, sock: socket.socket) -> None:
        opts = self.socket_options
        # inherited=False: nothing is inherited on a socket we create; before connect(), so
        # SO_RCVBUF shapes the window scale offered in the SYN.
        apply_connection_options(sock, opts, inherited=False)
        if opts.fastopen and _LINUX:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, _TCP_FASTOPEN_CONNECT, 1)
            except OSError as exc:
                if exc.errno not in (errno.ENOPROTOOPT, errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                logger.debug("TCP_FASTOPEN_CONNECT refused: %s", exc)

    # -- reaping -------------------------------------------------------------------------------

    def _schedule_reaper(self) -> None:
        if self._reaper is not None or self._closed:
            return
        loop = asyncio.get_running_loop()
        # Wake at a quarter of the idle timeout: an idle socket lives at most 1.25x the timeout.
        self._reaper = loop.call_later(self.idle_timeout / 4, self._reap)

    def _reap(self) -> None:
        self._reaper = None
        now = time.monotonic()
        for pool in self._origins.values():
            keep: list[Connection] = []
            for conn in pool.idle:
                if (
                    now - conn.idle_since < self.idle_timeout
                    and now - conn.created < self.max_lifetime
                ):
                    keep.append(conn)
                else:
                    self._discard(conn)
            pool.idle = keep
        for origin in list(self._origins):
            self._prune(origin)
        if any(pool.idle for pool in self._origins.values()):
            self._schedule_reaper()
