"""Bounded batches: run many awaitables, at most N at a time, results in input order.

Theory of operation
-------------------
:func:`join_all` is ``asyncio.gather`` with a concurrency limit and the failure semantics a
batch needs. It pulls awaitables from the input lazily, so at most ``limit`` tasks exist at any
moment (a generator of a million coroutines costs ``limit`` tasks, not a million). Finished
tasks report through a done-callback into a queue, and the driver wakes on one future per
batch of completions, so the bookkeeping is O(1) per item whatever the limit (``asyncio.wait``
over the running set would be O(limit) per wake-up).

Two modes:

* **fail-fast** (default): the first exception (in completion order) cancels every running
  child, waits until they have all finished, and is re-raised; input not yet started is never
  started (unstarted coroutines in a list are closed, so no "never awaited" warning);
* **collect** (``collect_errors=True``): every item runs; an item that raised is represented in
  the result list by its exception, like ``gather(return_exceptions=True)``.

Cancellation safety: if the caller is cancelled, every child is cancelled and awaited before
the ``CancelledError`` propagates, even if the caller is cancelled again meanwhile; so when
``join_all`` returns or raises, none of its tasks is left running (no task leaks). A child's
``KeyboardInterrupt``/``SystemExit`` is never collected: it cancels the rest and propagates.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
from collections.abc import Awaitable, Collection, Iterable
from typing import Any, Literal, TypeVar, overload

__all__ = ["join_all"]

T = TypeVar("T")


@overload
async def join_all(
    aws: Iterable[Awaitable[T]], *, limit: int, collect_errors: Literal[False] = False
) -> list[T]: ...


@overload
async def join_all(
    aws: Iterable[Awaitable[T]], *, limit: int, collect_errors: Literal[True]
) -> list[T | BaseException]: ...


async def join_all(
    aws: Iterable[Awaitable[T]], *, limit: int, collect_errors: bool = False
) -> list[T] | list[T | BaseException]:
    """Await every item of ``aws`` with at most ``limit`` running at once.

    Returns the results in input order. With ``collect_errors=False`` the first failure cancels
    the rest and is raised once they have stopped; with ``collect_errors=True`` a failed item's
    exception takes its place in the list (a child cancelled by something other than
    ``join_all`` shows as ``CancelledError`` there). Cancelling the caller cancels and awaits
    every child. ``limit`` must be at least 1.

    Example::

        async def size(url: str) -> int:
            return len((await client.get(url)).body)

        sizes = await join_all((size(u) for u in urls), limit=16)
        outcomes = await join_all([size(u) for u in urls], limit=16, collect_errors=True)
        failed = [o for o in outcomes if isinstance(o, BaseException)]

    Pitfall: pass coroutines (or a generator of them), not tasks you already created: a task
    starts running when created, so a list of tasks is not limited by anything.
    """
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    loop = asyncio.get_running_loop()
    items = iter(aws)
    results: list[Any] = []
    running: dict[asyncio.Future[Any], int] = {}
    finished: collections.deque[asyncio.Future[Any]] = collections.deque()
    wake: asyncio.Future[None] | None = None
    exhausted = False

    def on_done(task: asyncio.Future[Any]) -> None:
        finished.append(task)
        if wake is not None and not wake.done():
            wake.set_result(None)

    try:
        while True:
            while not exhausted and len(running) < limit:
                try:
                    aw = next(items)
                except StopIteration:
                    exhausted = True
                    break
                child: asyncio.Future[Any] = asyncio.ensure_future(aw)
                running[child] = len(results)
                results.append(None)
                child.add_done_callback(on_done)
            if not running:
                break
            if not finished:
                wake = loop.create_future()
                await wake
                wake = None
            while finished:
                task = finished.popleft()
                index = running.pop(task)
                if task.cancelled():
                    error: BaseException | None = asyncio.CancelledError()
                else:
                    error = task.exception()
                if error is None:
                    results[index] = task.result()
                elif collect_errors and not isinstance(error, KeyboardInterrupt | SystemExit):
                    results[index] = error
                else:
                    raise error
    except BaseException:
        await _cancel_all(running)
        if isinstance(aws, Collection):
            _discard_unstarted(items)
        raise
    return results


async def _cancel_all(running: dict[asyncio.Future[Any], int]) -> None:
    """Cancel every child and wait until all have finished, whatever happens to us meanwhile."""
    for task in running:
        task.cancel()
    cancelled_again = False
    pending = set(running)
    while pending:
        try:
            _, pending = await asyncio.wait(pending)
        except asyncio.CancelledError:
            # Cancelled during cleanup: the children already were (once is enough, and a second
            # cancel would interrupt their own cleanup); keep waiting, then re-raise.
            cancelled_again = True
    for task in running:
        if not task.cancelled():
            task.exception()  # retrieved: no "exception was never retrieved" at collection
    if cancelled_again:
        raise asyncio.CancelledError


def _discard_unstarted(items: Iterable[Awaitable[Any]]) -> None:
    """Close or cancel awaitables of a collection that will never run."""
    for aw in items:
        if inspect.iscoroutine(aw):
            aw.close()
        elif isinstance(aw, asyncio.Future):
            aw.cancel()
