"""Socket tuning: ask the kernel for socket options, then read back what it actually gave.

Theory of operation
-------------------
A :class:`SocketOptions` value says what we want from TCP. It is applied in two places:

* the **listening socket** (:func:`create_listener`, :func:`apply_listener_options`) gets almost
  everything, in the order the kernel needs: ``SO_REUSEPORT`` and the buffer sizes before
  ``bind()``/``listen()`` (the receive buffer fixes the window scale offered in the SYN-ACK, see
  tcp(7)), ``TCP_FASTOPEN``/``TCP_DEFER_ACCEPT`` on the listener itself, then ``listen(backlog)``;
* each **accepted socket** (:func:`apply_connection_options`) gets only what Linux does not copy
  from the listener when it clones the accepted socket. That function runs once per connection on
  the hot path, so every syscall it skips matters.

Measured on Linux 6.18 (``tests/test_tuning.py::test_linux_inheritance`` re-checks it on the
kernel the suite runs on): an accepted socket **inherits** ``TCP_NODELAY``, ``SO_SNDBUF``,
``SO_RCVBUF``, ``SO_KEEPALIVE``, ``TCP_KEEPIDLE``, ``TCP_KEEPINTVL``, ``TCP_KEEPCNT``,
``TCP_NOTSENT_LOWAT`` (also ``TCP_CONGESTION``, ``TCP_USER_TIMEOUT`` and ``SO_REUSEPORT``);
it does **not** inherit ``TCP_DEFER_ACCEPT`` and ``TCP_FASTOPEN`` (listener-only, they read 0 on
the accepted socket) nor ``TCP_QUICKACK``, which is not a setting but the state of the delayed-ACK
machine: ``listen()`` resets it, the clone copies whatever state the listener is in, and traffic
moves it (the kernel drops back to delayed ACKs by itself once it sees request/response
exchanges). So it can only be set per connection, and only for a while. With a tuned listener the
per-connection work is therefore empty, or one ``setsockopt(TCP_QUICKACK)`` when
``quickack=True``. ``O_NONBLOCK`` is not inherited either (accept(2)); the event loop sets it.

Every option is guarded: it is applied only where the platform has it (the ``socket`` module's
name, or the Linux number when this Python lacks the name), and an ``OSError`` from
``setsockopt`` becomes a warning in :class:`Applied`, never an exception. Then everything is read
back with ``getsockopt``, because the kernel edits requests: it doubles ``SO_SNDBUF``/``SO_RCVBUF``
(socket(7): the extra half is bookkeeping overhead) after capping them at
``net.core.wmem_max``/``rmem_max``, caps the listen backlog at ``net.core.somaxconn``, and rounds
``TCP_DEFER_ACCEPT`` up to the end of a SYN-ACK retransmission (1, 3, 7, 15, 31, 63 ... s).

:func:`kernel_limits` reads the sysctls and rlimits that bound the options, and
:func:`recommendations` turns every limit that undercuts a request into one line with the command
that fixes it. ``wirespeed tune`` (:func:`tune_main`) prints both next to a live test socket.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import select
import socket
import struct
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal, Protocol, TypedDict

if sys.platform != "win32":
    import resource

__all__ = [
    "Applied",
    "KernelLimits",
    "SocketOptions",
    "SupportsSetsockopt",
    "add_arguments",
    "apply_connection_options",
    "apply_listener_options",
    "connection_option_names",
    "create_listener",
    "from_namespace",
    "kernel_limits",
    "listen_queue",
    "open_listener",
    "parse_size",
    "read_back",
    "recommendations",
    "tune_main",
]

logger = logging.getLogger(__name__)

_LINUX: Final = sys.platform.startswith("linux")
_PROC_SYS: Final = Path("/proc/sys")

# setsockopt(2) takes a C int for every option here.
_INT_MAX: Final = 2**31 - 1
# Kernel bounds (net/ipv4/tcp.c: MAX_TCP_KEEPIDLE, MAX_TCP_KEEPINTVL, MAX_TCP_KEEPCNT); values
# outside them fail with EINVAL, so the CLI rejects them before they reach the kernel.
_MAX_KEEPIDLE: Final = 32767
_MAX_KEEPINTVL: Final = 32767
_MAX_KEEPCNT: Final = 127

# net.ipv4.tcp_fastopen bit that enables the server side (Documentation/networking/ip-sysctl).
_TFO_SERVER_ENABLE: Final = 0x2
# The open-file soft limit below which `recommendations` speaks up. Arbitrary round number: one fd
# per connection plus one per file being sent, 2**16 covers what a small box serves, and it is
# far below the hard limit modern systemd grants (524288).
_NOFILE_TARGET: Final = 65536


# --------------------------------------------------------------------------------------------
# What we ask for
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SocketOptions:
    """TCP options for a listening socket and the connections it accepts.

    Immutable and hashable, so one value can be shared by every worker and connection. ``None``
    means "leave the kernel's default alone". ``0`` for ``fastopen``, ``defer_accept`` and
    ``notsent_lowat`` means off/default too and is normalised to ``None``. Out-of-range values
    raise ``ValueError`` (the same bounds the CLI flags enforce).

    Example::

        opts = SocketOptions(reuseport=True, notsent_lowat=16384)
        sock = create_listener("0.0.0.0", 8080, opts)
    """

    # Nagle's algorithm (RFC 896) holds back a small write until the previous one is ACKed; with
    # the peer's delayed ACK (RFC 1122 4.2.3.2: up to 500 ms, 40 ms minimum on Linux) that stalls
    # write-write-read patterns. A server writes whole responses, so Nagle only adds latency:
    # nginx tcp_nodelay is on by default, and asyncio and uvloop set TCP_NODELAY on every TCP
    # transport anyway (so nodelay=False does not survive under them).
    nodelay: bool = True
    # None = kernel autotuning. Setting SO_SNDBUF/SO_RCVBUF locks the size (SOCK_SNDBUF_LOCK) and
    # turns off the per-connection autotuning between tcp_wmem/tcp_rmem min and max (tcp(7)).
    # Measured here: an untouched accepted socket on loopback grew its send buffer to 3.9 MB, a
    # fixed one stays where it was put. Set them only to cap memory, or to test a fixed window.
    sndbuf: int | None = None
    rcvbuf: int | None = None
    # Off: TCP Fast Open delivers data from the SYN, which the network may duplicate, so the
    # application must tolerate replayed requests (RFC 7413 section 6.3), and ASGI apps mounted
    # on this server may not. nginx, Go net/http and uvicorn leave it off too. It also needs the
    # server bit 0x2 in net.ipv4.tcp_fastopen. When enabling it, the kernel's own choice for the
    # queue (sysctl flag 0x400) is the listen backlog, a good value to pass.
    fastopen: int | None = None
    # On, because the Linux default (probe after 7200 s idle, RFC 1122 4.2.3.6's floor for a
    # stack-wide default, then 9 x 75 s) keeps a vanished client's fd for over two hours. With
    # the values below a dead peer is dropped after 60 + 6 x 10 = 120 s, the same order as Go's
    # net defaults (15 s idle, 15 s x 9 probes = 150 s) with a quarter of Go's probes on idle
    # connections, since the HTTP layer's own idle timeout reaps idle keep-alive connections.
    keepalive: bool = True
    # 60 s idle: below the idle timeouts of common load balancers and NATs (AWS NLB 350 s), so
    # probes also keep their mappings alive during long quiet streams.
    keepidle: int | None = 60
    # 10 s between probes and 6 probes: arbitrary; one minute of unanswered probes is a dead
    # peer, while tolerating a few lost probes.
    keepintvl: int | None = 10
    keepcnt: int | None = 6
    # Off: only the multi-worker server wants several listeners on one port, and with it any
    # other process of the same user can bind the port too and silently take a share of the
    # connections. server/workers.py turns it on. False leaves a socket as it is (off when new).
    reuseport: bool = False
    # 4096 = net.core.somaxconn's default since Linux 5.4, so on a stock kernel we use the whole
    # accept queue the admin allows. nginx defaults to 511 (NGX_LISTEN_BACKLOG: 2**9 - 1, from
    # when the SYN queue was sized to the next power of two above backlog + 1), uvicorn to 2048;
    # we go higher because a Python event loop busy in a handler cannot accept, so the queue must
    # absorb a burst such as a load generator opening all its connections at once. The kernel
    # caps it at somaxconn: read_back() reports the cap and recommendations() the sysctl.
    backlog: int = 4096
    # Off: TCP_DEFER_ACCEPT keeps a connection out of accept() until its first data arrives,
    # which saves a wake-up and an fd for HTTP preconnects (Apache uses 30 s on Linux), but
    # would stall every protocol where the server speaks first (the relay forwards SMTP, MySQL,
    # SSH...). HTTP listeners may pass --defer-accept 30.
    defer_accept: int | None = None
    # None = net.ipv4.tcp_notsent_lowat (unlimited by default): the socket accepts unsent data up
    # to its send buffer, so each wake-up of a Python sender moves as much as possible. 16384
    # (trio's choice, after Cloudflare's HTTP/2 prioritisation work) bounds the unsent queue and
    # keeps latency low for interleaved streams, at the price of more wake-ups per megabyte.
    notsent_lowat: int | None = None
    # Off: quick-ack is transient (see the module docstring), so setting it once per connection
    # only affects the first exchanges, and a server whose responses carry the ACK gains nothing.
    # False leaves the socket alone: TCP_QUICKACK=0 would force delayed ACKs instead.
    quickack: bool = False

    def __post_init__(self) -> None:
        for name in ("fastopen", "defer_accept", "notsent_lowat"):
            if getattr(self, name) == 0:
                # 0 means off/default to the kernel as well; one spelling keeps equality honest.
                object.__setattr__(self, name, None)
        for name, (low, high) in _BOUNDS.items():
            value = getattr(self, name)
            valid = isinstance(value, int) and not isinstance(value, bool)
            if value is not None and not (valid and low <= value <= high):
                raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")


# Valid ranges, shared by SocketOptions and the CLI types; 0 is allowed where it means "off".
_BOUNDS: Final[dict[str, tuple[int, int]]] = {
    "sndbuf": (1, _INT_MAX),
    "rcvbuf": (1, _INT_MAX),
    "fastopen": (0, _INT_MAX),
    "keepidle": (1, _MAX_KEEPIDLE),
    "keepintvl": (1, _MAX_KEEPINTVL),
    "keepcnt": (1, _MAX_KEEPCNT),
    "backlog": (1, _INT_MAX),
    "defer_accept": (0, _INT_MAX),
    "notsent_lowat": (0, _INT_MAX),
}


# --------------------------------------------------------------------------------------------
# The option table: one row per socket option, all platform knowledge in one place
# --------------------------------------------------------------------------------------------

_Where = Literal["both", "listener", "connection", "read-only"]


@dataclass(frozen=True, slots=True)
class _Spec:
    name: str  # SocketOptions field and read_back() key
    level: int
    constants: tuple[str, ...]  # names in the socket module, first one present wins
    # The Linux number when this Python lacks the name. Only TCP-level numbers, which are the
    # same on every Linux architecture (SOL_SOCKET ones differ on MIPS/SPARC/PA-RISC).
    linux_number: int | None
    kind: type[bool] | type[int] | type[str]
    where: _Where  # which sockets it is set on
    inherited: bool  # Linux copies it from the listener to accepted sockets (measured)


_TCP: Final = socket.IPPROTO_TCP
_SOL: Final = socket.SOL_SOCKET

_SPECS: Final[tuple[_Spec, ...]] = (
    _Spec("nodelay", _TCP, ("TCP_NODELAY",), 1, bool, "both", True),
    _Spec("sndbuf", _SOL, ("SO_SNDBUF",), None, int, "both", True),
    _Spec("rcvbuf", _SOL, ("SO_RCVBUF",), None, int, "both", True),
    _Spec("fastopen", _TCP, ("TCP_FASTOPEN",), 23, int, "listener", False),
    _Spec("keepalive", _SOL, ("SO_KEEPALIVE",), None, bool, "both", True),
    # macOS names the idle time TCP_KEEPALIVE.
    _Spec("keepidle", _TCP, ("TCP_KEEPIDLE", "TCP_KEEPALIVE"), 4, int, "both", True),
    _Spec("keepintvl", _TCP, ("TCP_KEEPINTVL",), 5, int, "both", True),
    _Spec("keepcnt", _TCP, ("TCP_KEEPCNT",), 6, int, "both", True),
    _Spec("reuseport", _SOL, ("SO_REUSEPORT",), None, bool, "listener", True),
    _Spec("defer_accept", _TCP, ("TCP_DEFER_ACCEPT",), 9, int, "listener", False),
    _Spec("notsent_lowat", _TCP, ("TCP_NOTSENT_LOWAT",), 25, int, "both", True),
    _Spec("quickack", _TCP, ("TCP_QUICKACK",), 12, bool, "connection", False),
    _Spec("congestion", _TCP, ("TCP_CONGESTION",), 13, str, "read-only", True),
)
_SPEC_BY_NAME: Final = {spec.name: spec for spec in _SPECS}
# struct tcp_info's layout differs between kernels of different systems; we decode Linux's.
_TCP_INFO: Final[int | None] = getattr(socket, "TCP_INFO", 11) if _LINUX else None
# TCP_CONGESTION names are at most TCP_CA_NAME_MAX (16) bytes.
_CA_NAME_MAX: Final = 16


def _number(spec: _Spec) -> int | None:
    for name in spec.constants:
        value = getattr(socket, name, None)
        if isinstance(value, int):
            return value
    return spec.linux_number if _LINUX else None


class SupportsSetsockopt(Protocol):
    """Anything with ``setsockopt``: a ``socket.socket``, or the socket-like object asyncio and
    uvloop transports return from ``transport.get_extra_info("socket")``."""

    def setsockopt(self, level: int, optname: int, value: int, /) -> None: ...


# --------------------------------------------------------------------------------------------
# Applying options
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Applied:
    """The outcome of applying :class:`SocketOptions` to a socket.

    ``requested`` holds every option as asked (by field name), ``effective`` what
    :func:`read_back` found afterwards, and ``warnings`` one line for each option the kernel did
    not take as asked: unsupported here, refused by ``setsockopt``, or capped by a sysctl. The
    kernel's regular doubling of buffer sizes is not a warning.
    """

    requested: dict[str, int | bool | None]
    effective: dict[str, int | bool | str | None]
    warnings: list[str] = field(default_factory=list)


def _settings(opts: SocketOptions, where: frozenset[_Where]) -> list[tuple[_Spec, int]]:
    """The (option, value) pairs opts asks for, on sockets of the given kinds, in apply order."""
    wanted: list[tuple[str, int | None]] = [
        # SO_REUSEPORT first: it must be set before bind(), like the buffers before listen().
        # False leaves it alone (off on a new socket), so platforms without it do not warn.
        ("reuseport", 1 if opts.reuseport else None),
        ("sndbuf", opts.sndbuf),
        ("rcvbuf", opts.rcvbuf),
        ("nodelay", int(opts.nodelay)),
        ("keepalive", int(opts.keepalive)),
        # Keepalive timers mean nothing with keepalive off: skip the syscalls.
        ("keepidle", opts.keepidle if opts.keepalive else None),
        ("keepintvl", opts.keepintvl if opts.keepalive else None),
        ("keepcnt", opts.keepcnt if opts.keepalive else None),
        ("notsent_lowat", opts.notsent_lowat),
        ("fastopen", opts.fastopen),
        ("defer_accept", opts.defer_accept),
        # TCP_QUICKACK=0 would force delayed ACKs, so "off" means "do not touch".
        ("quickack", 1 if opts.quickack else None),
    ]
    return [
        (_SPEC_BY_NAME[name], value)
        for name, value in wanted
        if value is not None and _SPEC_BY_NAME[name].where in where
    ]


def _set(sock: SupportsSetsockopt, spec: _Spec, value: int, warnings: list[str]) -> bool:
    number = _number(spec)
    if number is None:
        warnings.append(f"{spec.name}: {spec.constants[0]} is not available on this platform")
        return False
    try:
        sock.setsockopt(spec.level, number, value)
    except OSError as exc:
        warnings.append(f"{spec.name}={value}: setsockopt {spec.constants[0]} failed: {exc}")
        return False
    return True


def _check(spec: _Spec, asked: int, got: int | bool | str | None) -> str | None:
    """Why the read-back value `got` is not what `asked` should have produced, or None."""
    if got is None:
        return None
    if spec.name in ("sndbuf", "rcvbuf") and isinstance(got, int):
        sysctl = "net.core.wmem_max" if spec.name == "sndbuf" else "net.core.rmem_max"
        if got < 2 * asked:
            return (
                f"{spec.name}: asked {asked}, kernel gave {got}: it caps the request at {sysctl} "
                f"before doubling it (sysctl -w {sysctl}={asked})"
            )
        if got > 2 * asked:
            return f"{spec.name}: asked {asked}, kernel raised it to its minimum {got}"
        return None
    if spec.name == "defer_accept" and isinstance(got, int):
        # The kernel stores a SYN-ACK retransmission count and reports the seconds at which that
        # retransmission ends, so the read-back rounds up (30 -> 31). Only less is a problem.
        return None if got >= asked else f"defer_accept: asked {asked} s, kernel gave {got} s"
    if spec.kind is bool:
        return None if bool(got) == bool(asked) else f"{spec.name}: asked {bool(asked)}, got {got}"
    return None if got == asked else f"{spec.name}: asked {asked}, kernel reports {got}"


def apply_listener_options(sock: socket.socket, opts: SocketOptions) -> Applied:
    """Apply `opts` to an existing listening (or not yet bound) TCP socket and report the result.

    Use this for a socket you did not create with :func:`create_listener`, e.g. one inherited
    from systemd socket activation. Options that must precede ``bind()`` (``reuseport``) or
    ``listen()`` (buffer sizes, which fix the window scale) only fully work if the socket is
    not bound/listening yet. If the socket is already listening, ``listen(opts.backlog)`` is
    called again, which on Linux resizes the accept queue in place; otherwise the backlog is
    left for your own ``listen()`` call. Never raises for an option: failures and kernel caps
    are in the returned :attr:`Applied.warnings`.
    """
    warnings: list[str] = []
    applied = [
        (spec, value)
        for spec, value in _settings(opts, frozenset(("both", "listener")))
        if _set(sock, spec, value, warnings)
    ]
    if _is_listening(sock):
        sock.listen(opts.backlog)
    return _report(sock, opts, applied, warnings)


def _report(
    sock: socket.socket, opts: SocketOptions, applied: list[tuple[_Spec, int]], warnings: list[str]
) -> Applied:
    effective = read_back(sock)
    for spec, value in applied:
        problem = _check(spec, value, effective.get(spec.name))
        if problem:
            warnings.append(problem)
    backlog = effective.get("backlog")
    if isinstance(backlog, int) and backlog < opts.backlog:
        warnings.append(
            f"backlog: asked {opts.backlog}, kernel gave {backlog}: capped by net.core.somaxconn "
            f"(sysctl -w net.core.somaxconn={opts.backlog})"
        )
    requested = {f.name: getattr(opts, f.name) for f in dataclasses.fields(opts)}
    return Applied(requested=requested, effective=effective, warnings=warnings)


def open_listener(host: str, port: int, opts: SocketOptions) -> tuple[socket.socket, Applied]:
    """Like :func:`create_listener`, and also return the :class:`Applied` report."""
    try:
        family, type_, proto, _, sockaddr = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except OSError as exc:
        raise _with_address(exc, host, port) from exc
    sock = socket.socket(family, type_, proto)
    try:
        # Rebind while connections of a previous run sit in TIME_WAIT. Not on Windows, where
        # SO_REUSEADDR lets another socket steal a port that is in use (asyncio skips it too).
        if sys.platform != "win32":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and hasattr(socket, "IPV6_V6ONLY"):
            # "::" accepts IPv4 too (mapped addresses), whatever net.ipv6.bindv6only says.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        warnings: list[str] = []
        applied = [
            (spec, value)
            for spec, value in _settings(opts, frozenset(("both", "listener")))
            if _set(sock, spec, value, warnings)
        ]
        sock.bind(sockaddr)
        sock.listen(opts.backlog)
        sock.setblocking(False)
        report = _report(sock, opts, applied, warnings)
    except OSError as exc:
        sock.close()
        raise _with_address(exc, host, port) from exc
    except BaseException:
        sock.close()
        raise
    return sock, report


def _with_address(exc: OSError, host: str, port: int) -> OSError:
    """The same error class and errno, with a one-line message that names the address."""
    shown = f"[{host}]" if ":" in host else (host or "*")
    reason = exc.strerror or str(exc)
    return type(exc)(exc.errno, f"cannot listen on {shown}:{port}: {reason}")


def create_listener(host: str, port: int, opts: SocketOptions) -> socket.socket:
    """Create a non-blocking TCP listening socket on (host, port), tuned by `opts`.

    The address family follows `host`: an IPv4 or IPv6 literal, a name, ``""`` for every IPv4
    interface, ``"::"`` for every interface in both families (``IPV6_V6ONLY`` is cleared).
    ``SO_REUSEADDR`` is set (POSIX), then the options in the order the kernel needs them (see the
    module docstring), then ``bind()`` and ``listen(opts.backlog)``. Port 0 picks a free port:
    ask ``sock.getsockname()``.

    Options the kernel refuses or caps do not fail the call; each is logged as a warning on the
    ``wirespeed.io.tuning`` logger (use :func:`open_listener` to get them as data). Errors that
    make listening impossible raise ``OSError`` with ``errno`` intact (``EADDRINUSE``,
    ``EACCES`` for a privileged port, ``socket.gaierror`` for a bad address) and a one-line
    message naming the address, ready for the CLI to print.

    Example::

        sock = create_listener("::", 8080, SocketOptions(reuseport=True))
        server = await loop.create_server(factory, sock=sock)
    """
    sock, report = open_listener(host, port, opts)
    for warning in report.warnings:
        logger.warning("%s", warning)
    return sock


def connection_option_names(opts: SocketOptions, *, inherited: bool = True) -> list[str]:
    """The option names :func:`apply_connection_options` sets on each accepted socket.

    With ``inherited=True`` on Linux that is only what accepted sockets do not inherit (see the
    module docstring): ``[]`` for the defaults, ``["quickack"]`` with ``quickack=True``.
    """
    return [name for name, _, _, _ in _connection_plan(opts, inherited)]


@functools.lru_cache(maxsize=16)
def _connection_plan(opts: SocketOptions, inherited: bool) -> tuple[tuple[str, int, int, int], ...]:
    """(name, level, optname, value) for each setsockopt an accepted socket needs."""
    # Cached per (opts, inherited): the hot path then costs one dict lookup plus the syscalls.
    settings = _settings(opts, frozenset(("both", "connection")))
    if inherited and _LINUX:
        settings = [(spec, value) for spec, value in settings if not spec.inherited]
    # Elsewhere inheritance is not measured, so everything is applied again.
    plan = []
    for spec, value in settings:
        number = _number(spec)
        if number is not None:
            plan.append((spec.name, spec.level, number, value))
    return tuple(plan)


def apply_connection_options(
    sock: SupportsSetsockopt, opts: SocketOptions, *, inherited: bool = True
) -> None:
    """Apply the per-connection part of `opts` to a freshly accepted socket.

    Call it from ``connection_made`` with ``transport.get_extra_info("socket")``. With
    ``inherited=True`` (the listener came from :func:`create_listener` or
    :func:`apply_listener_options` with the same `opts`) it skips every option Linux copies from
    the listener, so with the default options it makes no syscall at all. Pass
    ``inherited=False`` for a listener you did not tune; note that a receive buffer set after the
    handshake cannot change the window scale already negotiated.

    ``quickack=True`` sets ``TCP_QUICKACK`` once: the kernel leaves quick-ack mode again by
    itself after a few request/response exchanges, so this only speeds up the first ones.

    Runs on the hot path, so it never raises for an option and returns nothing: a refused option
    (the peer may already have reset the connection) is logged at debug level. Use
    :func:`read_back` to see the result.
    """
    for name, level, number, value in _connection_plan(opts, inherited):
        try:
            sock.setsockopt(level, number, value)
        except OSError as exc:
            logger.debug("setsockopt %s=%s on accepted socket: %s", name, value, exc)


# --------------------------------------------------------------------------------------------
# Reading back
# --------------------------------------------------------------------------------------------


def _is_listening(sock: socket.socket) -> bool:
    number = getattr(socket, "SO_ACCEPTCONN", None)
    if number is None:
        return False
    try:
        return bool(sock.getsockopt(socket.SOL_SOCKET, number))
    except OSError:
        return False


def listen_queue(sock: socket.socket) -> tuple[int, int] | None:
    """``(waiting, capacity)`` of a listening socket's accept queue, or None if unknown.

    ``waiting`` counts connections the kernel completed that nobody has accepted yet; when it
    reaches ``capacity`` (the backlog after the somaxconn cap) new SYNs are dropped or answered
    with SYN cookies. Linux only: it reads ``TCP_INFO``, where tcp_get_info() reports the queue
    length in ``tcpi_unacked`` and its limit in ``tcpi_sacked`` for listeners.
    """
    if _TCP_INFO is None or not _is_listening(sock):
        return None
    try:
        info = sock.getsockopt(_TCP, _TCP_INFO, 32)
    except OSError:
        return None
    if len(info) < 32:
        return None
    # struct tcp_info: eight u8 fields, then u32 rto, ato, snd_mss, rcv_mss, unacked, sacked.
    waiting, capacity = struct.unpack_from("=II", info, 24)
    return waiting, capacity


def read_back(sock: socket.socket) -> dict[str, int | bool | str | None]:
    """The effective value of every option on `sock`, by :class:`SocketOptions` field name.

    Values are what ``getsockopt`` returns, so buffer sizes are the kernel's doubled values and
    ``defer_accept`` the rounded-up seconds. ``backlog`` is the accept queue capacity of a
    listening socket (Linux, after the somaxconn cap), else None. ``notsent_lowat`` is 0 when the
    sysctl default applies. ``quickack`` is the current state of the delayed-ACK machine, not a
    setting. The extra key ``congestion`` names the congestion control algorithm (e.g. "bbr").
    None means the platform lacks the option or the kernel refused the query.
    """
    out: dict[str, int | bool | str | None] = {}
    for spec in _SPECS:
        out[spec.name] = _get(sock, spec)
        if spec.name == "reuseport":
            queue = listen_queue(sock)
            out["backlog"] = queue[1] if queue else None
    return out


def _get(sock: socket.socket, spec: _Spec) -> int | bool | str | None:
    number = _number(spec)
    if number is None:
        return None
    try:
        if spec.kind is str:
            raw = sock.getsockopt(spec.level, number, _CA_NAME_MAX)
            return raw.split(b"\0", 1)[0].decode("ascii", "replace")
        value = sock.getsockopt(spec.level, number)
    except OSError:
        return None
    return bool(value) if spec.kind is bool else value


# --------------------------------------------------------------------------------------------
# Kernel limits and recommendations
# --------------------------------------------------------------------------------------------


class KernelLimits(TypedDict):
    """Kernel settings that bound :class:`SocketOptions`; None where unreadable (non-Linux)."""

    somaxconn: int | None  # net.core.somaxconn: caps the listen backlog
    tcp_fastopen: int | None  # net.ipv4.tcp_fastopen bit mask: 0x1 client, 0x2 server
    rmem_max: int | None  # net.core.rmem_max: caps SO_RCVBUF requests
    wmem_max: int | None  # net.core.wmem_max: caps SO_SNDBUF requests
    tcp_rmem: tuple[int, int, int] | None  # autotuning min/default/max receive buffer
    tcp_wmem: tuple[int, int, int] | None  # autotuning min/default/max send buffer
    tcp_notsent_lowat: int | None  # default TCP_NOTSENT_LOWAT
    tcp_congestion_control: str | None  # default congestion control
    tcp_available_congestion_control: str | None
    ip_local_port_range: tuple[int, int] | None  # ephemeral ports for outgoing connections
    nofile_soft: int | str | None  # RLIMIT_NOFILE, "unlimited" for RLIM_INFINITY
    nofile_hard: int | str | None


def _proc(path: str) -> str | None:
    try:
        return (_PROC_SYS / path).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None


def _proc_ints(path: str) -> tuple[int, ...] | None:
    text = _proc(path)
    try:
        return tuple(int(part) for part in text.split()) if text else None
    except ValueError:
        return None


def _proc_int(path: str) -> int | None:
    values = _proc_ints(path)
    return values[0] if values and len(values) == 1 else None


def _nofile() -> tuple[int | str | None, int | str | None]:
    if sys.platform == "win32":
        return None, None

    def shown(limit: int) -> int | str:
        return "unlimited" if limit == resource.RLIM_INFINITY else limit

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return shown(soft), shown(hard)


def kernel_limits() -> KernelLimits:
    """Read the sysctls and rlimits that bound socket options (see :class:`KernelLimits`).

    Values come from ``/proc/sys`` of the current network namespace and from
    ``getrlimit(RLIMIT_NOFILE)``. Missing or unreadable entries are None, so this works (and
    says little) off Linux.
    """
    rmem = _proc_ints("net/ipv4/tcp_rmem")
    wmem = _proc_ints("net/ipv4/tcp_wmem")
    ports = _proc_ints("net/ipv4/ip_local_port_range")
    soft, hard = _nofile()
    return KernelLimits(
        somaxconn=_proc_int("net/core/somaxconn"),
        tcp_fastopen=_proc_int("net/ipv4/tcp_fastopen"),
        rmem_max=_proc_int("net/core/rmem_max"),
        wmem_max=_proc_int("net/core/wmem_max"),
        tcp_rmem=(rmem[0], rmem[1], rmem[2]) if rmem and len(rmem) == 3 else None,
        tcp_wmem=(wmem[0], wmem[1], wmem[2]) if wmem and len(wmem) == 3 else None,
        tcp_notsent_lowat=_proc_int("net/ipv4/tcp_notsent_lowat"),
        tcp_congestion_control=_proc("net/ipv4/tcp_congestion_control"),
        tcp_available_congestion_control=_proc("net/ipv4/tcp_available_congestion_control"),
        ip_local_port_range=(ports[0], ports[1]) if ports and len(ports) == 2 else None,
        nofile_soft=soft,
        nofile_hard=hard,
    )


def _limit(limits: Mapping[str, object], key: str) -> int | None:
    value = limits.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def recommendations(opts: SocketOptions, limits: Mapping[str, object]) -> list[str]:
    """One line per kernel limit that undercuts `opts`, each with the command that fixes it.

    `limits` is :func:`kernel_limits` or any mapping with (some of) its keys; a missing or None
    limit is assumed not to bind. Checks: backlog above ``somaxconn``; ``sndbuf``/``rcvbuf``
    above ``wmem_max``/``rmem_max`` (the kernel caps the request, then doubles it);
    ``fastopen`` without the server bit 0x2 in ``tcp_fastopen``; an open-file soft limit below
    65536. An empty list means nothing undercuts the request.

    Example::

        >>> recommendations(SocketOptions(backlog=8192), {"somaxconn": 4096})
        ['backlog 8192 > net.core.somaxconn 4096: the kernel silently shortens the accept queue; fix: sysctl -w net.core.somaxconn=8192']
    """  # noqa: E501 - a doctest line cannot be wrapped
    lines: list[str] = []
    somaxconn = _limit(limits, "somaxconn")
    if somaxconn is not None and opts.backlog > somaxconn:
        lines.append(
            f"backlog {opts.backlog} > net.core.somaxconn {somaxconn}: the kernel silently "
            f"shortens the accept queue; fix: sysctl -w net.core.somaxconn={opts.backlog}"
        )
    for name, asked, sysctl in (
        ("sndbuf", opts.sndbuf, "wmem_max"),
        ("rcvbuf", opts.rcvbuf, "rmem_max"),
    ):
        cap = _limit(limits, sysctl)
        if asked is not None and cap is not None and asked > cap:
            lines.append(
                f"{name} {asked} > net.core.{sysctl} {cap}: the kernel caps it (you get "
                f"{2 * cap}); fix: sysctl -w net.core.{sysctl}={asked}"
            )
    tfo = _limit(limits, "tcp_fastopen")
    if opts.fastopen is not None and tfo is not None and not tfo & _TFO_SERVER_ENABLE:
        lines.append(
            f"fastopen {opts.fastopen} requested but net.ipv4.tcp_fastopen={tfo:#x} lacks the "
            f"server bit 0x2, so SYN data is ignored; fix: sysctl -w "
            f"net.ipv4.tcp_fastopen={tfo | _TFO_SERVER_ENABLE}"
        )
    soft = _limit(limits, "nofile_soft")
    if soft is not None and soft < _NOFILE_TARGET:
        hard = limits.get("nofile_hard")
        if hard == "unlimited" or (isinstance(hard, int) and hard >= _NOFILE_TARGET):
            fix = f"ulimit -n {_NOFILE_TARGET} (or LimitNOFILE={_NOFILE_TARGET} in the unit)"
        else:
            fix = (
                f"raise the hard limit {hard} (LimitNOFILE={_NOFILE_TARGET} in the systemd unit, "
                f"or nofile in /etc/security/limits.conf), then ulimit -n {_NOFILE_TARGET}"
            )
        lines.append(
            f"open files soft limit {soft} < {_NOFILE_TARGET}: every connection and every file "
            f"being sent takes a descriptor; fix: {fix}"
        )
    return lines


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------

_SIZE_SUFFIXES: Final = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}


def parse_size(text: str) -> int | None:
    """A byte count like ``65536``, ``256K``, ``1m`` or ``4MiB`` (1024-based), or None."""
    body = text.strip().upper().removesuffix("B").removesuffix("I")
    suffix = body[-1:] if body[-1:] in ("K", "M", "G") else ""
    digits = body.removesuffix(suffix)
    if not digits.isdigit():
        return None
    return int(digits) * _SIZE_SUFFIXES[suffix]


def _bytes(name: str, *, zero: bool) -> Callable[[str], int]:
    low, high = _BOUNDS[name]

    def parse(text: str) -> int:
        size = parse_size(text)
        if size is None or not low <= size <= high:
            what = "0 (kernel default) or " if zero else ""
            raise argparse.ArgumentTypeError(
                f"invalid size {text!r}: expected {what}a byte count from {max(low, 1)} to "
                f"{high}, optionally with a K/M/G suffix (1024-based)"
            )
        return size

    return parse


def _integer(name: str, unit: str) -> Callable[[str], int]:
    low, high = _BOUNDS[name]

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"invalid value {text!r}: expected an integer {unit} from {low} to {high}"
            )
        return value

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per :class:`SocketOptions` field, in a "socket tuning" argument group.

    Defaults are the dataclass defaults, and the ``dest`` of each flag is the field name, so
    :func:`from_namespace` builds the options back. Values are checked by the argparse types:
    a bad one ends the program with a one-line error and exit status 2. Sizes accept K/M/G
    suffixes (1024-based): ``--sndbuf 256K``.
    """
    d = SocketOptions()
    g = parser.add_argument_group("socket tuning")
    onoff = argparse.BooleanOptionalAction
    g.add_argument("--nodelay", action=onoff, default=d.nodelay, help="TCP_NODELAY")
    g.add_argument(
        "--sndbuf",
        type=_bytes("sndbuf", zero=False),
        metavar="BYTES",
        help="SO_SNDBUF request (kernel doubles it); disables send-buffer autotuning "
        "(default: autotuning)",
    )
    g.add_argument(
        "--rcvbuf",
        type=_bytes("rcvbuf", zero=False),
        metavar="BYTES",
        help="SO_RCVBUF request (kernel doubles it); disables receive-buffer autotuning "
        "(default: autotuning)",
    )
    g.add_argument(
        "--fastopen",
        type=_integer("fastopen", "queue length"),
        metavar="N",
        help="TCP Fast Open queue length on the listener, 0 = off (default: off)",
    )
    g.add_argument("--keepalive", action=onoff, default=d.keepalive, help="SO_KEEPALIVE")
    g.add_argument(
        "--keepidle",
        type=_integer("keepidle", "of seconds"),
        default=d.keepidle,
        metavar="SECONDS",
        help="idle time before the first keepalive probe (default: %(default)s)",
    )
    g.add_argument(
        "--keepintvl",
        type=_integer("keepintvl", "of seconds"),
        default=d.keepintvl,
        metavar="SECONDS",
        help="time between keepalive probes (default: %(default)s)",
    )
    g.add_argument(
        "--keepcnt",
        type=_integer("keepcnt", "of probes"),
        default=d.keepcnt,
        metavar="N",
        help="unanswered probes before the connection is dropped (default: %(default)s)",
    )
    g.add_argument(
        "--reuseport",
        action=onoff,
        default=d.reuseport,
        help="SO_REUSEPORT: let several listeners share the port",
    )
    g.add_argument(
        "--backlog",
        type=_integer("backlog", "of connections"),
        default=d.backlog,
        metavar="N",
        help="listen backlog, capped by net.core.somaxconn (default: %(default)s)",
    )
    g.add_argument(
        "--defer-accept",
        type=_integer("defer_accept", "of seconds"),
        metavar="SECONDS",
        help="TCP_DEFER_ACCEPT: accept only once data arrived, 0 = off (default: off)",
    )
    g.add_argument(
        "--notsent-lowat",
        type=_bytes("notsent_lowat", zero=True),
        metavar="BYTES",
        help="TCP_NOTSENT_LOWAT: unsent bytes allowed in the socket, 0 = kernel default "
        "(default: kernel default)",
    )
    g.add_argument(
        "--quickack",
        action=onoff,
        default=d.quickack,
        help="TCP_QUICKACK on accepted sockets (transient)",
    )


def from_namespace(ns: argparse.Namespace) -> SocketOptions:
    """Build :class:`SocketOptions` from parsed :func:`add_arguments` flags.

    Attributes missing from `ns` keep their defaults, so a subcommand without the flags works.
    """
    names = [f.name for f in dataclasses.fields(SocketOptions)]
    return SocketOptions(**{name: getattr(ns, name) for name in names if hasattr(ns, name)})


# --------------------------------------------------------------------------------------------
# wirespeed tune
# --------------------------------------------------------------------------------------------


def _shown(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def _limit_text(name: str, limits: KernelLimits) -> str:
    if name == "backlog":
        return f"somaxconn {_shown(limits['somaxconn'])}"
    if name in ("sndbuf", "rcvbuf"):
        cap = limits["wmem_max"] if name == "sndbuf" else limits["rmem_max"]
        auto = limits["tcp_wmem"] if name == "sndbuf" else limits["tcp_rmem"]
        sysctl = "wmem_max" if name == "sndbuf" else "rmem_max"
        return f"{sysctl} {_shown(cap)}, autotune max {_shown(auto[2] if auto else None)}"
    if name == "fastopen":
        tfo = limits["tcp_fastopen"]
        if tfo is None:
            return "tcp_fastopen -"
        return f"tcp_fastopen {tfo:#x} (server {'on' if tfo & _TFO_SERVER_ENABLE else 'off'})"
    if name == "notsent_lowat":
        return f"tcp_notsent_lowat {_shown(limits['tcp_notsent_lowat'])}"
    if name == "congestion":
        return f"available: {_shown(limits['tcp_available_congestion_control'])}"
    if name == "defer_accept":
        return "listener only; rounds up to 1, 3, 7, 15, 31 ... s"
    if name == "quickack":
        return "transient state, not a setting"
    return ""


def _accept_one(listener: socket.socket, timeout: float) -> socket.socket | None:
    readable, _, _ = select.select([listener], [], [], timeout)
    if not readable:
        return None
    conn, _ = listener.accept()
    return conn


def tune_main(ns: argparse.Namespace, *, use_rich: bool | None = None) -> int:
    """``wirespeed tune``: show what the kernel makes of the socket options in `ns`.

    Creates a listener on 127.0.0.1 (ephemeral port) with the options, connects to it, accepts
    the connection and applies the per-connection options, then prints a table: option,
    requested, effective on the listener, effective on the accepted socket, and the kernel limit
    that bounds it; then the other kernel facts (open-file limits, local port range), the
    warnings from applying the options and :func:`recommendations`. Uses rich when installed
    (``use_rich=None``) else plain text. Returns 0, or 1 with a one-line message on stderr if
    the test listener cannot be created.
    """
    opts = from_namespace(ns)
    limits = kernel_limits()
    try:
        listener, applied = open_listener("127.0.0.1", 0, opts)
    except OSError as exc:
        print(f"wirespeed tune: {exc}", file=sys.stderr)
        return 1
    port = listener.getsockname()[1]
    accepted: dict[str, int | bool | str | None] = {}
    warnings = list(applied.warnings)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2.0) as client:
            # One byte, so a listener with TCP_DEFER_ACCEPT hands the connection over at once.
            client.sendall(b"\0")
            conn = _accept_one(listener, timeout=2.0)
            if conn is None:
                warnings.append("accepted socket: no connection within 2 s")
            else:
                with conn:
                    apply_connection_options(conn, opts)
                    accepted = read_back(conn)
    finally:
        listener.close()

    rows: list[tuple[str, str, str, str, str]] = []
    for name, requested in applied.requested.items():
        rows.append(
            (
                name,
                _shown(requested),
                _shown(applied.effective.get(name)),
                _shown(accepted.get(name)),
                _limit_text(name, limits),
            )
        )
    rows.append(
        (
            "congestion",
            "-",
            _shown(applied.effective.get("congestion")),
            _shown(accepted.get("congestion")),
            _limit_text("congestion", limits),
        )
    )
    soft, hard = limits["nofile_soft"], limits["nofile_hard"]
    ports = limits["ip_local_port_range"]
    facts = [
        ("open files (RLIMIT_NOFILE soft/hard)", f"{_shown(soft)} / {_shown(hard)}"),
        ("local port range (outgoing)", f"{ports[0]}-{ports[1]}" if ports else "-"),
        ("default congestion control", _shown(limits["tcp_congestion_control"])),
        ("per-connection syscalls", ", ".join(connection_option_names(opts)) or "none"),
    ]
    advice = recommendations(opts, limits)
    # A capped option shows up both as a warning and as a recommendation; keep the one that
    # says how to fix it. Both kinds of line start with the option name.
    advised = {line.split()[0] for line in advice}
    warnings = [line for line in warnings if line.split(":")[0].split("=")[0] not in advised]
    title = f"wirespeed tune: test listener 127.0.0.1:{port} and one accepted connection"
    headers = ("option", "requested", "effective (listener)", "effective (accepted)", "limit")

    if use_rich is None:
        try:
            # Imported here, not at the top: rich is an optional extra and costs import time
            # that the server, which imports this module, should not pay.
            import rich  # noqa: F401, PLC0415
        except ImportError:
            use_rich = False
        else:
            use_rich = True
    printer = _print_rich if use_rich else _print_plain
    printer(title=title, headers=headers, rows=rows, facts=facts, warnings=warnings, advice=advice)
    return 0


def _print_rich(
    *,
    title: str,
    headers: tuple[str, ...],
    rows: list[tuple[str, str, str, str, str]],
    facts: list[tuple[str, str]],
    warnings: list[str],
    advice: list[str],
) -> None:
    from rich.console import Console  # noqa: PLC0415 - see tune_main
    from rich.table import Table  # noqa: PLC0415

    console = Console()
    if not console.is_terminal:
        # Piped or captured output: don't wrap cells at rich's 80-column guess.
        console.width = 120
    table = Table(title=title, title_justify="left")
    for header in headers:
        table.add_column(header, overflow="fold")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    kernel = Table(title="kernel", title_justify="left", show_header=False)
    kernel.add_column("fact")
    kernel.add_column("value")
    for fact in facts:
        kernel.add_row(*fact)
    console.print(kernel)
    for heading, lines in (("warnings", warnings), ("recommendations", advice)):
        console.print(f"[bold]{heading}[/bold]")
        for line in lines or ["none"]:
            console.print(f"  - {line}", markup=False, highlight=False, soft_wrap=True)


def _print_plain(
    *,
    title: str,
    headers: tuple[str, ...],
    rows: list[tuple[str, str, str, str, str]],
    facts: list[tuple[str, str]],
    warnings: list[str],
    advice: list[str],
) -> None:
    table = [headers, *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(headers))]
    print(title)
    for row in table:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    print()
    print("kernel")
    width = max(len(name) for name, _ in facts)
    for name, value in facts:
        print(f"  {name.ljust(width)}  {value}")
    for heading, lines in (("warnings", warnings), ("recommendations", advice)):
        print()
        print(heading)
        for line in lines or ["none"]:
            print(f"  - {line}")
