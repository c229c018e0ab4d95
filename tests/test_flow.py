"""WriteFlow pause state, drain, and the progress-aware stall check."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from wirespeed.io.flow import WriteFlow, bytes_acked


def test_bytes_acked_counts_what_the_peer_read() -> None:
    with socket.create_server(("127.0.0.1", 0)) as srv:
        client = socket.create_connection(srv.getsockname())
        server, _ = srv.accept()
        with client, server:
            assert bytes_acked(server) == 0
            server.sendall(b"x" * 100_000)
            got = 0
            while got < 100_000:
                got += len(client.recv(65536))
            deadline = time.monotonic() + 2
            while bytes_acked(server) != 100_000 and time.monotonic() < deadline:
                time.sleep(0.01)  # the final ACK may still be in flight on loopback
            assert bytes_acked(server) == 100_000


def test_stalled_only_without_progress() -> None:
    counter = [0]
    flow = WriteFlow(progress=lambda: counter[0])
    assert not flow.stalled(time.monotonic() + 100, 1.0)  # not paused at all
    flow.pause()
    start = flow.paused_since
    assert not flow.stalled(start + 0.5, 1.0)
    counter[0] += 10  # the peer accepted bytes: the period restarts
    assert not flow.stalled(start + 1.5, 1.0)
    assert flow.paused_since == start + 1.5
    assert not flow.stalled(start + 2.4, 1.0)
    assert flow.stalled(start + 2.6, 1.0)  # a full period with no progress


def test_stalled_without_progress_source_is_pure_time() -> None:
    flow = WriteFlow()
    flow.pause()
    assert flow.stalled(flow.paused_since + 1.01, 1.0)


async def test_drain_waits_for_resume_and_fails_on_close() -> None:
    flow = WriteFlow()
    await flow.drain()  # not paused: returns at once
    flow.pause()
    waiter = asyncio.ensure_future(flow.drain())
    await asyncio.sleep(0)
    assert not waiter.done()
    flow.resume()
    await asyncio.wait_for(waiter, 1)
    flow.pause()
    waiter = asyncio.ensure_future(flow.drain())
    await asyncio.sleep(0)
    flow.close()
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(waiter, 1)
    with pytest.raises(ConnectionResetError):
        await flow.drain()
