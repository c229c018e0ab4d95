"""Prefork workers on SO_REUSEPORT: spreading, replacing a killed worker, stopping gracefully."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import ServeProcess, cli_env

ServeCli = Callable[..., ServeProcess]

pytestmark = pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="needs SO_REUSEPORT")


def children(pid: int) -> set[int]:
    """Live child processes of ``pid`` (from /proc, zombies excluded)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(entry.name))
    return found


def worker_pid(proc: ServeProcess) -> int:
    """Ask one worker its pid, on a new connection (so the kernel picks a worker anew)."""
    conn = http.client.HTTPConnection(proc.host, proc.port, timeout=5)
    try:
        conn.request("GET", "/pid", headers={"Connection": "close"})
        resp = conn.getresponse()
        assert resp.status == 200
        return int(resp.read())
    finally:
        conn.close()


def wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_workers_share_the_port_and_a_killed_one_is_replaced(serve_cli: ServeCli) -> None:
    proc = serve_cli("cliapp:app", "--port", "0", "--workers", "2")
    assert "2 workers" in proc.first_line
    supervisor = proc.proc.pid
    workers = children(supervisor)
    assert len(workers) == 2
    # SO_REUSEPORT hashes connections over both workers: 40 connections all landing on one
    # worker would happen with probability 2**-39.
    seen = {worker_pid(proc) for _ in range(40)}
    assert seen == workers

    victim = sorted(workers)[0]
    os.kill(victim, signal.SIGKILL)

    def replaced() -> bool:
        # One snapshot per check: a SIGKILLed process can still be listed (not yet a zombie)
        # in one read of /proc and gone in the next.
        now = children(supervisor)
        return len(now) == 2 and victim not in now

    assert wait_for(replaced, 5)
    replacement = children(supervisor) - workers
    assert len(replacement) == 1
    # Every request is answered by a live worker, the new one among them.
    assert wait_for(lambda: replacement <= {worker_pid(proc) for _ in range(30)}, 5)
    for _ in range(20):
        assert worker_pid(proc) != victim

    current = children(supervisor)
    proc.signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    assert wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in current), 3)


def test_workers_finish_in_flight_responses_on_sigterm(serve_cli: ServeCli) -> None:
    proc = serve_cli("cliapp:app", "--port", "0", "--workers", "2")
    results: list[object] = []

    def slow_request() -> None:
        conn = http.client.HTTPConnection(proc.host, proc.port, timeout=10)
        try:
            conn.request("GET", "/slow?t=1")
            resp = conn.getresponse()
            results.append((resp.status, resp.read()))
        except Exception as exc:
            results.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=slow_request) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.4)
    start = time.monotonic()
    proc.signal(signal.SIGTERM)
    for t in threads:
        t.join(10)
    assert results == [(200, b"slow done")] * 4
    assert proc.wait(10) == 0
    assert time.monotonic() - start < 3.0


def test_second_server_on_a_busy_port_is_refused(serve_cli: ServeCli, app_dir: Path) -> None:
    # SO_REUSEPORT lets any process of the same user bind the port too; a second wirespeed
    # must still report "in use" rather than silently take a share of the connections.
    first = serve_cli("cliapp:app", "--port", "0", "--workers", "2")
    for workers in ("1", "2"):
        second = subprocess.Popen(
            [
                *(sys.executable, "-m", "wirespeed", "serve", "cliapp:app"),
                *("--port", str(first.port), "--workers", workers),
            ],
            cwd=app_dir,
            env=cli_env(app_dir),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            out, err = second.communicate(timeout=4)
        except subprocess.TimeoutExpired:
            os.killpg(second.pid, signal.SIGKILL)
            out, err = second.communicate(timeout=5)
            pytest.fail(f"a second server started on the busy port with --workers {workers}: {out}")
        assert second.returncode == 2, (workers, out, err[-1000:])
        assert "in use" in err
    # The first server still owns every connection.
    pids = {worker_pid(first) for _ in range(20)}
    assert pids <= children(first.proc.pid)
