"""Digest holds: what the primary sends one replica stops at a sequence for a bounded time.

A digest at a common position (`verify`, a replica's background verification) needs the
replica to reach the primary's position P and not pass it while its digest is read. The
primary picks P at its WAL head and, from then on, sends that replica's session nothing past
P until the hold is released or expires. P is a record boundary (the WAL head), so whole
records are either sent or held: no write batch is cut.

Holds live in memory only: a restart of either side ends them and loses nothing (the replica
simply applies on). A held replica acknowledges nothing past P meanwhile, so its slot keeps
WAL and a semi-sync write waiting on it waits too: holds are few and short.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from kevo_repl.errors import KevoReplError
from kevo_repl.protocol.records import Record

log = logging.getLogger(__name__)

#: holds at a time on one primary (one per replica at most)
MAX_HOLDS = 4
#: the longest a hold lasts without a release
MAX_HOLD_S = 60.0


class HoldRefused(KevoReplError):
    """No room for another hold, or this replica already has one."""


@dataclass
class Hold:
    replica_id: str
    sequence: int
    expires_at: float  # time.monotonic()
    timer: asyncio.TimerHandle | None = None


class StreamHolds:
    """The holds of one primary; `released` is called (on the loop) whenever one ends, so
    that held streams wake up and send on."""

    def __init__(self, released: Callable[[], None], limit: int = MAX_HOLDS) -> None:
        self._released = released
        self._limit = limit
        self._holds: dict[str, Hold] = {}

    def __len__(self) -> int:
        return len(self._holds)

    def cap(self, replica_id: str) -> int | None:
        """The last sequence this replica may be sent now, or None (no hold)."""
        hold = self._holds.get(replica_id)
        return None if hold is None else hold.sequence

    def blocks(self, replica_id: str, pos: int) -> bool:
        """Sending from `pos` on to this replica waits for its hold to end."""
        cap = self.cap(replica_id)
        return cap is not None and pos > cap

    def trim(self, replica_id: str, records: list[Record]) -> list[Record]:
        """`records` without those past this replica's hold (read before it was set)."""
        cap = self.cap(replica_id)
        if cap is None or not records or records[-1].last_seq <= cap:
            return records
        return [r for r in records if r.last_seq <= cap]

    def install(self, replica_id: str, sequence: int, hold_s: float) -> None:
        if replica_id in self._holds:
            raise HoldRefused(
                f"replica {replica_id!r} is already held at sequence "
                f"{self._holds[replica_id].sequence} for another digest; try again later"
            )
        if len(self._holds) >= self._limit:
            raise HoldRefused(
                f"{len(self._holds)} digest holds are in place (at most {self._limit}); "
                "try again later"
            )
        hold_s = min(max(hold_s, 0.0), MAX_HOLD_S)
        hold = Hold(replica_id, sequence, time.monotonic() + hold_s)
        hold.timer = asyncio.get_running_loop().call_later(
            hold_s, self._expire, replica_id, sequence
        )
        self._holds[replica_id] = hold

    def release(self, replica_id: str, sequence: int) -> bool:
        """End the hold of `replica_id` at `sequence`; False when there is none (expired)."""
        hold = self._holds.get(replica_id)
        if hold is None or hold.sequence != sequence:
            return False
        del self._holds[replica_id]
        if hold.timer is not None:
            hold.timer.cancel()
        self._released()
        return True

    def _expire(self, replica_id: str, sequence: int) -> None:
        if self.release(replica_id, sequence):
            log.info("digest hold of replica %r at %d expired", replica_id, sequence)

    def clear(self) -> None:
        """End every hold (the primary shuts down)."""
        for hold in list(self._holds.values()):
            self.release(hold.replica_id, hold.sequence)
