"""Start, pin, wait for and stop the processes the lab measures.

Theory of operation
-------------------
Every server under test runs in its own session (``start_new_session``), so one ``killpg``
reaches the whole tree a peer may fork (granian's worker, node's helpers) and a Ctrl-C typed in
the terminal reaches only the lab, which then stops its peers in ``finally`` blocks. A peer is
pinned before its first instruction runs by exec'ing it through ``taskset -c CPU``: threads the
Go runtime or libuv create at start-up inherit the mask, which pinning the pid afterwards would
miss. When taskset is absent the lab pins every thread of the tree once the peer is ready, and
:func:`pin_tree` re-applies the mask after start-up either way, so the measurement never depends
on how a runtime spawns threads.

Readiness is polled by connecting to the port, never by sleeping or by scraping a log line: a
server is ready when it completes a TCP handshake. The process output goes to a log file whose
last lines become the skip reason when a peer dies before it listens.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import psutil

# How long a peer may take to listen. Python peers import their framework in about a second on
# the lab box; 30 s leaves room for a machine busy with other work without hanging a run forever.
READY_TIMEOUT = 30.0
# Poll period while waiting for the port: short against the ~1 s start-up, long enough not to
# burn the CPU the peer is starting on.
READY_POLL = 0.02
# Grace between SIGTERM and SIGKILL. Servers drain in-flight requests on SIGTERM; the lab has
# none in flight when it stops a peer, so 3 s is only for slow interpreters to exit cleanly.
STOP_GRACE = 3.0


class ProcessError(Exception):
    """A process failed to start or to listen; the message is a one-line reason."""


# Ports handed out by this process, so peers started together never get the same one.
_handed_out: set[int] = set()
# Lowest port the lab picks from (below it live well-known and registered services).
PORT_FLOOR = 20000


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free now and outside the ephemeral range.

    Ports from ``bind(("", 0))`` come from the ephemeral range, the same range the kernel uses
    for the source ports of outgoing connections; while a Python peer spends a second importing
    before it binds, the lab's own check and load connections could take that port (seen on the
    lab box: uvicorn failing with "address already in use"). Picking below the range avoids
    that; another program could still take the port, and then the peer is skipped with its own
    error line.
    """
    low, _ = _ephemeral_range()
    candidates = list(range(PORT_FLOOR, low)) if low - PORT_FLOOR > 1000 else []
    random.shuffle(candidates)
    for port in candidates[:200]:
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            # SO_REUSEADDR as servers set it: a port with only TIME_WAIT leftovers is usable.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        chosen: int = s.getsockname()[1]
    _handed_out.add(chosen)
    return chosen


def pinned_argv(argv: Sequence[str], cpu: int | None) -> list[str]:
    """Prefix ``argv`` with ``taskset -c CPU`` when pinning is asked for and possible."""
    if cpu is None:
        return list(argv)
    taskset = shutil.which("taskset")
    if taskset is None:
        return list(argv)
    return [taskset, "-c", str(cpu), *argv]


def tree(pid: int) -> list[psutil.Process]:
    """The process and its live descendants (an empty list once it has exited)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def pin_tree(pid: int, cpu: int) -> None:
    """Pin every thread of the process tree rooted at ``pid`` to ``cpu``."""
    for proc in tree(pid):
        with contextlib.suppress(psutil.Error, OSError):
            for thread in proc.threads():
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(thread.id, {cpu})


def tail(path: Path, lines: int = 3) -> str:
    """The last non-empty lines of a log file, joined on one line, for a skip reason."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    kept = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(kept[-lines:])


def _alive(process: psutil.Process) -> bool:
    """Running and not a zombie (a zombie holds no CPU; its reaper may be slow here)."""
    try:
        return bool(process.is_running() and process.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


class ServerProcess:
    """One server under test: spawned pinned in its own session, stopped with its whole tree.

    Use as a context manager, or call :meth:`stop` in a ``finally`` block; :meth:`stop` is
    idempotent and never raises.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        port: int,
        cpu: int | None,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.port = port
        self.cpu = cpu
        self.log_path = log_path
        self.argv = pinned_argv(argv, cpu)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("wb") as log:
            try:
                self.proc = subprocess.Popen(
                    self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=dict(env) if env is not None else None,
                    cwd=cwd,
                    start_new_session=True,
                )
            except OSError as exc:
                raise ProcessError(f"cannot start {argv[0]}: {exc.strerror}") from exc

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Block until the port accepts a connection; raise :class:`ProcessError` if it dies."""
        deadline = time.monotonic() + timeout
        while True:
            code = self.proc.poll()
            if code is not None:
                detail = tail(self.log_path) or "no output"
                raise ProcessError(f"exited with status {code} before listening: {detail}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise ProcessError(f"did not listen on port {self.port} within {timeout:.0f} s")
            time.sleep(READY_POLL)
        if self.cpu is not None:
            pin_tree(self.pid, self.cpu)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM the session, then SIGKILL whatever is left after the grace period."""
        if self.proc.returncode is not None:
            return
        members = tree(self.pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(STOP_GRACE)
        # Kill the group, and any member that left it (a runtime may setsid its workers).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        for member in members:
            with contextlib.suppress(psutil.Error):
                member.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(STOP_GRACE)
        # SIGKILL is not instant: return only once the members are gone, so the next trial
        # never shares the CPU with a dying peer.
        deadline = time.monotonic() + STOP_GRACE
        for member in members:
            while time.monotonic() < deadline and _alive(member):
                time.sleep(0.01)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
