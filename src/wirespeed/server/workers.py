"""Prefork workers on SO_REUSEPORT, with a supervisor that replaces the ones that die.

Theory of operation
-------------------
The supervisor (the process the user started) binds the address once without listening. That
turns "port in use" and bad addresses into an error before anything forks, resolves ``--port 0``
to a real port, and keeps the port reserved for the workers. Each worker is then forked and opens
its *own* listening socket on that address with ``SO_REUSEPORT``, so the kernel spreads new
connections across workers by hash instead of waking them all on one shared queue (the
thundering-herd and imbalance problems of a shared accept queue). The supervisor's socket never
listens, so it never receives connections.

The application is imported before forking (preload), so an import error is reported once, and
workers share its memory pages copy-on-write.

Signals: the supervisor blocks SIGTERM, SIGINT and SIGCHLD and waits for them with
``sigtimedwait``, so there is no handler re-entrancy to reason about. A worker that exits while the
supervisor is running is replaced (with a pause if workers keep dying young, so a broken app does
not fork in a tight loop). On SIGTERM/SIGINT the supervisor forwards SIGTERM to every worker, which
drain gracefully (see :mod:`wirespeed.server.runner`); a second signal is forwarded too, and makes
the workers cut their connections at once.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import replace

from wirespeed.io.tuning import SocketOptions, create_listener
from wirespeed.server.app import App
from wirespeed.server.config import ServerConfig
from wirespeed.server.runner import format_url, run

__all__ = ["reserve_port", "supervise"]

log = logging.getLogger("wirespeed")

# A worker that dies within this many seconds of starting counts as a crash loop; after
# _MAX_QUICK_DEATHS in a row the supervisor gives up rather than fork forever.
_QUICK_DEATH_SECONDS = 2.0
_MAX_QUICK_DEATHS = 5
_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind ``host:port`` with SO_REUSEPORT but do not listen. Raises OSError (EADDRINUSE ...)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, addr = infos[0]
    # First without SO_REUSEPORT: with it, the bind would succeed next to any other server of
    # the same user that also set it, and we would silently share its port.
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(addr)
        addr = probe.getsockname()  # resolves port 0
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(addr)
    except BaseException:
        sock.close()
        raise
    return sock


def supervise(
    app: App,
    config: ServerConfig,
    socket_options: SocketOptions,
    *,
    on_ready: Callable[[str], None],
) -> int:
    """Run ``config.workers`` worker processes until SIGTERM/SIGINT. Returns the exit status.

    Raises OSError before forking if the address cannot be bound.
    """
    reserved = reserve_port(config.host, config.port)
    port = int(reserved.getsockname()[1])
    url = format_url(config.host, port)
    worker_config = replace(config, port=port)
    worker_options = replace(socket_options, reuseport=True)
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    ready_r, ready_w = os.pipe()
    os.set_blocking(ready_r, False)
    workers: dict[int, float] = {}  # pid -> start time

    def spawn() -> None:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child, measured by the worker tests
            code = 1
            try:
                os.close(ready_r)
                reserved.close()
                signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
                for sig in _SIGNALS:
                    signal.signal(sig, signal.SIG_DFL)
                code = _worker_main(app, worker_config, worker_options, ready_w)
            except BaseException:
                log.exception("worker failed")
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        workers[pid] = time.monotonic()

    for _ in range(config.workers):
        spawn()
    announced = False
    ready = 0
    stopping = 0
    quick_deaths = 0
    status = 0
    try:
        while workers:
            info = signal.sigtimedwait(_SIGNALS, 0.5)
            if not announced:
                with contextlib.suppress(BlockingIOError):
                    ready += len(os.read(ready_r, 64))
                if ready >= config.workers:
                    announced = True
                    on_ready(url)
            if info is None:
                continue
            if info.si_signo in (signal.SIGTERM, signal.SIGINT):
                stopping += 1
                for pid in workers:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)
                continue
            # SIGCHLD: reap every worker that exited (signals coalesce).
            while workers:
                try:
                    pid, wstatus = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    workers.clear()
                    break
                if pid == 0:
                    break
                started = workers.pop(pid, None)
                if started is None or stopping:
                    continue
                code = os.waitstatus_to_exitcode(wstatus)
                log.warning("worker %d exited with status %d; starting a new one", pid, code)
                if time.monotonic() - started < _QUICK_DEATH_SECONDS:
                    quick_deaths += 1
                    if quick_deaths >= _MAX_QUICK_DEATHS:
                        log.error("workers keep dying at start; giving up")
                        status = 1
                        stopping = 1
                        for other in workers:
                            with contextlib.suppress(ProcessLookupError):
                                os.kill(other, signal.SIGTERM)
                        break
                    time.sleep(0.2 * quick_deaths)
                else:
                    quick_deaths = 0
                spawn()
    finally:
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        os.close(ready_r)
        os.close(ready_w)
        reserved.close()
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    return status


def _worker_main(
    app: App, config: ServerConfig, socket_options: SocketOptions, ready_w: int
) -> int:
    sock = create_listener(config.host, config.port, socket_options)

    def notify(_url: str) -> None:
        try:
            os.write(ready_w, b"1")
        except OSError as exc:  # the supervisor is gone: nothing to tell
            if exc.errno != errno.EPIPE:
                raise
        finally:
            os.close(ready_w)

    return run(app, config, socket_options, sock=sock, on_ready=notify)
