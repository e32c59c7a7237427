"""Read-your-writes: hold a read until the node has applied a given sequence.

A client that wrote at sequence N may read from any replica with `min_sequence=N`; the
replica answers once its store is durable through N, or refuses when it cannot within the
call's deadline. The number of waiting reads is bounded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

#: reads that may wait at once on one node (each holds a small coroutine, nothing more)
MAX_WAITING_READS = 4096
#: a waiting read re-checks the position at least this often, so a position that moves
#: without `advanced()` (a snapshot install, a primary's own writes) is still seen
_POLL_S = 0.05


class TooManyWaitingReads(Exception):
    pass


class ReadGate:
    def __init__(self, applied: Callable[[], int], limit: int = MAX_WAITING_READS) -> None:
        self._applied = applied
        self._limit = limit
        self._waiting = 0
        self._changed = asyncio.Event()

    @property
    def waiting(self) -> int:
        return self._waiting

    def advanced(self) -> None:
        """The applied position moved: wake every waiting read."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait(self, sequence: int, timeout: float) -> bool:
        """True once the node has applied `sequence`; False when `timeout` passed first."""
        if self._applied() >= sequence:
            return True
        if self._waiting >= self._limit:
            raise TooManyWaitingReads(
                f"{self._waiting} reads already wait for a sequence on this node"
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self._waiting += 1
        try:
            while self._applied() < sequence:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return False
                try:
                    await asyncio.wait_for(self._changed.wait(), min(remaining, _POLL_S))
                except TimeoutError:
                    pass
            return True
        finally:
            self._waiting -= 1
