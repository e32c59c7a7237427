"""Owned asyncio tasks: blocking work in a thread that a cancel cannot cut short, and a
supervisor under which no task dies silently."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


async def run_blocking(
    fn: Callable[..., T], *args: Any, finished_under_cancel: Callable[[T], None] | None = None
) -> T:
    """Run blocking `fn` in a worker thread. If the caller is cancelled, still wait for the
    thread before the cancel goes on: no store or WAL is ever closed under a running commit.
    `finished_under_cancel` gets the result of a call that completed that way (a commit that
    happened must not be forgotten)."""
    fut = asyncio.get_running_loop().run_in_executor(None, fn, *args)
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        result = await fut
        if finished_under_cancel is not None:
            finished_under_cancel(result)
        raise


class Supervisor:
    """Owns tasks. A task that ends with an exception (not a cancel) is logged and reported
    to `on_failure(name, exc)` once; the owner decides how to stop (ERROR, last_error)."""

    def __init__(self, owner: str, on_failure: Callable[[str, BaseException], None]) -> None:
        self.owner = owner
        self._on_failure = on_failure
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._ended)
        return task

    def _ended(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            return
        log.error("%s: task %s failed", self.owner, task.get_name(), exc_info=exc)
        self._on_failure(task.get_name(), exc)

    @property
    def running(self) -> int:
        return len(self._tasks)

    async def cancel(self, *tasks: asyncio.Task[Any]) -> None:
        """Cancel `tasks` (all owned tasks when none are named) and wait until they ended."""
        chosen = list(tasks) if tasks else list(self._tasks)
        for task in chosen:
            task.cancel()
        for task in chosen:
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception:  # already reported by _ended
                pass
