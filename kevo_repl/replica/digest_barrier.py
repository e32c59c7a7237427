"""A digest at an exact sequence: hold the replica's apply at that sequence while it is taken.

`kevo-repl verify` reads the primary's digest at its store position P and then asks the
replica for its digest at exactly P. Under continuous writes the replica never rests at P on
its own, so the apply loop makes P a batch boundary (it splits a batch that crosses P), and
does not apply past P while the barrier is set. The caller waits for the durable position to
reach P, takes the digest and releases the barrier: apply pauses only while the digest runs.

At most one barrier exists at a time; the caller's deadline bounds how long it is set.
"""

from __future__ import annotations

import asyncio

from kevo_repl.protocol.codec import Columns


class BarrierBusy(Exception):
    """Another digest at a sequence is pending on this replica."""


class DigestBarrier:
    def __init__(self) -> None:
        self._at: int | None = None
        self._released = asyncio.Event()
        self._released.set()

    @property
    def at(self) -> int | None:
        """The sequence apply must not pass, or None."""
        return self._at

    def arm(self, sequence: int) -> None:
        if self._at is not None:
            raise BarrierBusy(
                f"a digest at sequence {self._at} is already pending on this replica"
            )
        self._at = sequence
        self._released.clear()

    def release(self) -> None:
        self._at = None
        self._released.set()

    async def hold(self, done: int) -> None:
        """In the apply loop, before applying past `done`: wait while a barrier sits there."""
        while self._at is not None and done == self._at:
            await self._released.wait()

    def split(self, batch: Columns) -> tuple[Columns, Columns | None]:
        """`batch` cut after the barrier's sequence when it crosses it: (up to it, the rest)."""
        at = self._at
        if at is None or not batch.first_seq <= at < batch.last_seq:
            return batch, None
        n = at - batch.first_seq + 1
        head = Columns(batch.first_seq, batch.ops[:n], batch.keys[:n], batch.values[:n])
        rest = Columns(at + 1, batch.ops[n:], batch.keys[n:], batch.values[n:])
        return head, rest
