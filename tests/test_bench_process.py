"""Peers are started pinned, waited for by connecting, and stopped with their whole tree."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import psutil
import pytest

from wirespeed.bench.process import ProcessError, ServerProcess, free_port

# A server that forks a child (like granian's worker) and then listens.
FORKING_SERVER = """
import socket, subprocess, sys, threading, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
threading.Thread(target=time.sleep, args=(120,), daemon=True).start()
s = socket.socket()
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen()
print("listening", flush=True)
time.sleep(120)
"""


def test_free_ports_are_distinct_and_outside_the_ephemeral_range() -> None:
    low, _ = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    ports = {free_port() for _ in range(20)}
    assert len(ports) == 20
    if low > 21000:
        assert all(p < low for p in ports)


def test_tree_is_pinned_and_stopped(tmp_path: Path) -> None:
    cpu = min(os.sched_getaffinity(0))
    port = free_port()
    server = ServerProcess(
        "forking",
        [sys.executable, "-c", FORKING_SERVER, str(port)],
        port=port,
        cpu=cpu,
        log_path=tmp_path / "log",
    )
    try:
        server.wait_ready()
        root = psutil.Process(server.pid)
        members = [root, *root.children(recursive=True)]
        assert len(members) == 2
        threads = [t.id for p in members for t in p.threads()]
        assert len(threads) >= 3
        for tid in threads:
            assert os.sched_getaffinity(tid) == {cpu}
    finally:
        server.stop()
    for member in members:
        assert not member.is_running() or member.status() == psutil.STATUS_ZOMBIE
    server.stop()  # idempotent


def test_peer_dying_before_listening_gives_its_last_words(tmp_path: Path) -> None:
    port = free_port()
    code = "import sys; print('starting'); sys.exit('bind: address already in use')"
    with (
        ServerProcess(
            "dies", [sys.executable, "-c", code], port=port, cpu=None, log_path=tmp_path / "log"
        ) as server,
        pytest.raises(ProcessError) as info,
    ):
        server.wait_ready()
    assert str(info.value) == (
        "exited with status 1 before listening: starting | bind: address already in use"
    )


def test_missing_executable(tmp_path: Path) -> None:
    with pytest.raises(ProcessError, match="cannot start /nonexistent/server"):
        ServerProcess("ghost", ["/nonexistent/server"], port=1, cpu=None, log_path=tmp_path / "log")


def test_peer_that_never_listens_times_out(tmp_path: Path) -> None:
    code = "import time; time.sleep(30)"
    with (
        ServerProcess(
            "mute",
            [sys.executable, "-c", code],
            port=free_port(),
            cpu=None,
            log_path=tmp_path / "l",
        ) as server,
        pytest.raises(ProcessError, match=r"did not listen on port \d+ within 1 s"),
    ):
        server.wait_ready(timeout=1.0)
