"""Per-replica slots on the primary: each replica id's highest acknowledged sequence.

Slots are kept in a small JSON file written atomically (fsynced); writes are coalesced so that
a storm of acks costs one file write per interval, not one per ack. Retention flushes the
table before it deletes WAL, so the file on disk never claims less than what was pruned for.

A slot's acked sequence never moves backwards. A slot is `lost` once retention had to delete
WAL it still needed (a cap was hit); its replica then bootstraps from a snapshot, and its
first ack at a retained position makes the slot hold retention again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kevo_repl.errors import KevoReplError
from kevo_repl.primary.slot_file import read_slot_file
from kevo_repl.storage.store import write_file_atomically

log = logging.getLogger(__name__)


@dataclass
class Slot:
    replica_id: str
    acked: int = 0
    last_ack_at: float = 0.0
    #: retention deleted WAL this slot needed; it holds no retention until it acks again
    lost: bool = False
    lost_at: float = 0.0
    #: wall-clock time the replica was last seen streaming (updated while it streams)
    last_seen_at: float = 0.0
    #: a replica that has never acknowledged (KevoDB's): keyed by its listener address
    never_acks: bool = False
    #: for such a replica: the position its latest stream request implies it holds
    implied: int = 0
    #: for such a replica: the last sequence sent to it (its lag is taken from this)
    sent: int = 0
    #: where the slot's latest stream started; until the first ack the slot holds WAL from
    #: here, not from sequence 1
    start: int = 0

    def holds_from(self) -> int:
        """The first sequence this slot needs retained."""
        held = max(self.acked, self.implied) + 1
        if self.last_ack_at == 0 and not self.never_acks and self.start > held:
            return self.start  # never acked: from where its stream started
        return held


class TooManySlots(KevoReplError):
    """A new slot would exceed [retention] max_slots."""


class SlotTable:
    def __init__(
        self,
        path: Path,
        flush_interval_s: float = 0.2,
        spawn: Callable[[Coroutine[Any, Any, Any], str], asyncio.Task[Any]] | None = None,
        max_slots: int = 64,
    ) -> None:
        self.path = path
        self.max_slots = max_slots
        #: starts the background flush; the owner's supervisor, so a failed write is seen
        self._spawn = spawn
        self.slots: dict[str, Slot] = {}
        self._dirty = False
        self._flush_interval = flush_interval_s
        self._flusher: asyncio.Task[None] | None = None
        # flush() runs on the event loop's worker threads and on retention's; one at a time
        self._write_lock = threading.Lock()
        #: called on the event loop after every ack, with the slot and the acked sequence
        self.on_ack: Callable[[Slot, int], None] | None = None
        if path.exists():
            for item in read_slot_file(path):
                slot = Slot(**item)
                self.slots[slot.replica_id] = slot

    def get(self, replica_id: str, start: int = 0, *, never_acks: bool = False) -> Slot:
        """The slot of `replica_id`, created when new (TooManySlots past max_slots). `start`
        is where its stream starts: a slot that never acked holds WAL from there. Slots of
        replicas that never ack (KevoDB's, capped by kevodb_peers) do not count against
        max_slots, so they cannot keep named replicas out."""
        slot = self.slots.get(replica_id)
        if slot is None:
            named = sum(1 for s in self.slots.values() if not s.never_acks)
            if not never_acks and named >= self.max_slots:
                raise TooManySlots(
                    f"{named} replica slots exist ([retention] max_slots); drop an "
                    "unused one (kevo-repl slots drop) before a new replica can stream"
                )
            slot = self.slots[replica_id] = Slot(
                replica_id, last_seen_at=time.time(), start=start, never_acks=never_acks
            )
            log.info("new slot for replica %r from %d", replica_id, start)
            self._mark_dirty()
        elif start and slot.last_ack_at == 0 and slot.start != start:
            slot.start = start
            self._mark_dirty()
        return slot

    def ack(self, replica_id: str, sequence: int) -> None:
        slot = self.get(replica_id)
        slot.last_ack_at = slot.last_seen_at = time.time()
        slot.never_acks = False
        if sequence > slot.acked:  # a slot never moves backwards
            slot.acked = sequence
            self._mark_dirty()
        if self.on_ack is not None:
            self.on_ack(slot, sequence)

    def drop(self, replica_id: str) -> Slot | None:
        """Forget a slot; return it (None when there was none)."""
        slot = self.slots.pop(replica_id, None)
        if slot is not None:
            self._mark_dirty()
        return slot

    def mark_dirty(self) -> None:
        """Someone changed a slot in place: write the table soon."""
        self._mark_dirty()

    def _mark_dirty(self) -> None:
        self._dirty = True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        if self._flusher is None or self._flusher.done():
            if self._spawn is not None:
                self._flusher = self._spawn(self._flush_later(), "slots-flush")
            else:
                self._flusher = loop.create_task(self._flush_later(), name="slots-flush")

    async def _flush_later(self) -> None:
        await asyncio.sleep(self._flush_interval)
        await asyncio.to_thread(self.flush)

    def flush(self) -> None:
        with self._write_lock:
            if not self._dirty:
                return
            self._dirty = False
            slots = list(self.slots.values())
            data = json.dumps([asdict(s) for s in slots], indent=1).encode()
            write_file_atomically(self.path, data)

    async def close(self) -> None:
        if self._flusher is not None and not self._flusher.done():
            self._flusher.cancel()
            try:
                await self._flusher
            except asyncio.CancelledError:
                pass
        self.flush()
