"""join_all: order, the concurrency bound, fail-fast and collect modes, cancellation, no leaks.

Each test compares ``asyncio.all_tasks()`` before and after: when join_all returns or raises,
none of the tasks it created may still exist.
"""

from __future__ import annotations

import asyncio
import inspect
import random
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any

import pytest

from wirespeed.upstream import join_all

pytestmark = pytest.mark.asyncio(loop_factories=["uvloop", "asyncio"])


@pytest.fixture(autouse=True)
async def no_task_leaks() -> AsyncIterator[None]:
    before = asyncio.all_tasks()
    yield
    leaked = asyncio.all_tasks() - before - {asyncio.current_task()}
    assert not leaked, f"tasks left behind: {leaked}"


class Tracker:
    """Counts how many items run at once and what happened to each."""

    def __init__(self) -> None:
        self.running = 0
        self.most = 0
        self.started: list[int] = []
        self.cancelled: list[int] = []
        self.finished: list[int] = []

    async def item(self, i: int, delay: float, fail: bool = False) -> int:
        self.started.append(i)
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await asyncio.sleep(delay)
            if fail:
                raise ValueError(f"item {i} failed")
            self.finished.append(i)
            return i * 10
        except asyncio.CancelledError:
            self.cancelled.append(i)
            raise
        finally:
            self.running -= 1


async def test_results_in_input_order_with_bounded_concurrency() -> None:
    rng = random.Random(5)  # seeded: completion order differs from input order
    t = Tracker()
    delays = [rng.uniform(0, 0.01) for _ in range(200)]
    results = await join_all((t.item(i, d) for i, d in enumerate(delays)), limit=7)
    assert results == [i * 10 for i in range(200)]
    assert t.most == 7
    assert t.finished != sorted(t.finished)  # they really did finish out of order


async def test_input_is_consumed_lazily() -> None:
    t = Tracker()
    pulled = 0

    def items() -> Iterator[Coroutine[Any, Any, int]]:
        nonlocal pulled
        for i in range(50):
            pulled += 1
            # Never more items pulled than finished + limit: the input is not drained up front.
            assert pulled <= len(t.finished) + 3
            yield t.item(i, 0.001)

    assert len(await join_all(items(), limit=3)) == 50


async def test_fail_fast_cancels_the_rest_and_raises_the_first_error() -> None:
    t = Tracker()
    coros = [t.item(i, 0.01 if i != 2 else 0.001, fail=i == 2) for i in range(20)]
    with pytest.raises(ValueError, match="item 2 failed"):
        await join_all(coros, limit=4)
    assert t.running == 0
    assert sorted(t.cancelled) == [0, 1, 3]  # running when item 2 failed
    assert t.started == [0, 1, 2, 3]  # nothing started after the failure
    # The unstarted coroutines of the list were closed: no "never awaited" warning.
    assert all(inspect.getcoroutinestate(c) == inspect.CORO_CLOSED for c in coros[4:])


async def test_collect_errors_keeps_every_outcome_in_place() -> None:
    t = Tracker()
    results = await join_all(
        (t.item(i, 0.001, fail=i % 3 == 0) for i in range(10)), limit=4, collect_errors=True
    )
    for i, outcome in enumerate(results):
        if i % 3 == 0:
            assert isinstance(outcome, ValueError)
            assert str(outcome) == f"item {i} failed"
        else:
            assert outcome == i * 10
    assert t.cancelled == []


async def test_caller_cancellation_cancels_and_awaits_every_child() -> None:
    t = Tracker()
    batch = asyncio.create_task(join_all((t.item(i, 10) for i in range(10)), limit=5))
    await asyncio.sleep(0.01)
    assert t.running == 5
    batch.cancel()
    with pytest.raises(asyncio.CancelledError):
        await batch
    assert t.running == 0  # all finished before the CancelledError reached us
    assert sorted(t.cancelled) == [0, 1, 2, 3, 4]


async def test_cancelled_again_during_cleanup_still_waits_for_children() -> None:
    cleaned: list[int] = []

    async def slow_to_cancel(i: int) -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            # A child with async cleanup that must be allowed to finish.
            await asyncio.shield(asyncio.sleep(0.05))
            cleaned.append(i)
            raise

    batch = asyncio.create_task(join_all((slow_to_cancel(i) for i in range(3)), limit=3))
    await asyncio.sleep(0.01)
    batch.cancel()
    await asyncio.sleep(0.01)
    batch.cancel()  # again, while join_all waits for the children
    with pytest.raises(asyncio.CancelledError):
        await batch
    assert sorted(cleaned) == [0, 1, 2]


async def test_edge_cases() -> None:
    assert await join_all([], limit=1) == []
    with pytest.raises(ValueError, match="limit"):
        await join_all([], limit=0)
    # Plain awaitables other than coroutines work too: futures already resolved.
    loop = asyncio.get_running_loop()
    futures = [loop.create_future() for _ in range(3)]
    for i, f in enumerate(futures):
        f.set_result(i)
    assert await join_all(futures, limit=2) == [0, 1, 2]
