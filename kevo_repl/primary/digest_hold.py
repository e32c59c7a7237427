"""The primary's half of a digest at a common position: Digest(hold_replica=R).

Under the commit lock the WAL head P and the store's position are the same sequence; there
the primary holds R's stream at P (`stream_holds`) and opens the store snapshot its digest
reads. Commits wait only until the snapshot is open; the digest is read after that, while
writes go on. R is then certain to reach P and not pass it, so its Digest(at_sequence=P)
is served (no "already past" retries).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from kevo_repl.errors import KevoReplError
from kevo_repl.storage import store as store_mod
from kevo_repl.tasks import run_blocking

if TYPE_CHECKING:
    from kevo_repl.primary.primary import Primary


class HoldUnavailable(KevoReplError):
    """The primary's store lags its WAL (it cannot apply): no digest at the WAL head."""


async def digest_and_hold(
    primary: Primary, replica_id: str, prefix: bytes, split: bool, hold_s: float
) -> store_mod.Digest:
    """The primary's digest at its WAL head P, with `replica_id`'s stream held at P until
    `primary.holds.release(replica_id, P)` or `hold_s`. Raises HoldRefused (no room) or
    HoldUnavailable; on any failure no hold is left behind."""
    loop = asyncio.get_running_loop()
    opened: asyncio.Future[None] = loop.create_future()

    def mark_open() -> None:
        if not opened.done():
            opened.set_result(None)

    def snapshot_open() -> None:  # in the worker thread
        loop.call_soon_threadsafe(mark_open)

    async with primary.quiesced() as head:
        if primary.store_failure is not None or primary.store.position().sequence != head:
            raise HoldUnavailable(
                f"the primary's store has not applied its WAL through {head} "
                f"({primary.store_failure or 'catching up'}); try again later"
            )
        primary.holds.install(replica_id, head, hold_s)
        reading: asyncio.Future[store_mod.Digest] = asyncio.ensure_future(
            run_blocking(store_mod.digest, primary.store, prefix, split, snapshot_open)
        )
        try:
            # commits wait until the snapshot is open at `head`, not for the whole digest
            waits: list[asyncio.Future[object]] = [opened, reading]  # type: ignore[list-item]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            primary.holds.release(replica_id, head)
            reading.cancel()
            raise
    try:
        d = await reading
    except BaseException:
        primary.holds.release(replica_id, head)
        raise
    if d.sequence != head:  # cannot happen while commits wait: never a wrong answer
        primary.holds.release(replica_id, head)
        raise HoldUnavailable(f"the store's snapshot was at {d.sequence}, not {head}")
    return d
