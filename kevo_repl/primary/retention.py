"""WAL retention on the primary: keep what the replicas' slots need, within the caps.

What holds WAL (each "needs" every sequence from some point on):

- every slot that is not lost needs `acked + 1` onwards;
- every snapshot the primary holds for a bootstrapping replica needs `sequence + 1` onwards;
- the idempotency window (kevo_repl.primary.idempotency) needs its oldest keyed write onwards,
  so that a restarted primary reads every remembered key back from the WAL.

A segment (never the one being written) is deleted when

- everything that holds WAL is past it — or no slot exists at all that holds WAL, in which case
  the WAL is kept for replicas yet to come, up to the caps; or
- a cap forces it: the WAL would exceed `max_retained_bytes`, or the segment's last write is
  older than `max_retained_age_s`. A slot that needed it is marked lost (logged, in `status`);
  its replica gets OUT_OF_RANGE and bootstraps from a snapshot.

Whatever the rule says, nothing is deleted above what the primary's own store has durably
synced: the store is applied without sync and replayed from the WAL at start-up, so the store
is synced first and the WAL pruned only below the synced position. Slots are flushed to disk
before WAL is deleted for them.

When it runs: the byte cap is enforced in the writer's thread just before a group commit is
appended, so the WAL never exceeds it (for commits smaller than the cap minus a segment);
pruning for slots runs after acks that move the slowest holder past the oldest segment, after
a slot is dropped and after a snapshot is released; a timer runs when an age cap,
`drop_inactive_after_s` or `unacked_slot_expiry_s` is configured.

Slots are bounded: at most `max_slots`; a new slot holds WAL from where its stream started
(not from sequence 1) until it acks; one that never acked is dropped once its replica has been
gone for `unacked_slot_expiry_s`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from kevo_repl.config import RetentionConfig, SnapshotConfig
from kevo_repl.errors import KevoReplError
from kevo_repl.primary.slots import Slot, SlotTable
from kevo_repl.primary.snapshots import SnapshotService
from kevo_repl.storage.applier import Applier
from kevo_repl.storage.wal import SegmentInfo

log = logging.getLogger(__name__)

#: bytes a WAL record adds to its body, and a new segment's header
_RECORD_OVERHEAD = 20
_SEGMENT_HEADER = 16
#: the WAL directory's HISTORY file (33 bytes), so that the whole directory stays under the cap
_HISTORY_FILE = 64


class SlotBusy(KevoReplError):
    """A slot cannot be dropped while its replica streams."""


@dataclass(frozen=True)
class Plan:
    cut: int  # delete the segments whose entries are all below this sequence
    capped: bool  # a cap forced some of it


class RetainedLog(Protocol):
    """What retention needs of the WAL: its segments, its size, and a way to prune."""

    @property
    def first_sequence(self) -> int: ...
    @property
    def size_bytes(self) -> int: ...
    def segments(self) -> list[SegmentInfo]: ...
    def oldest_segment_end(self) -> int | None: ...
    def prune_before(self, seq: int) -> int: ...
    def bytes_from(self, seq: int) -> int: ...


class Retention:
    """Decides and performs WAL pruning for one primary; owns its snapshot service.

    It sees only what it needs: the WAL, the store (synced before a prune; snapshots), the
    slot table, and which replicas stream now (`connected`)."""

    def __init__(
        self,
        cfg: RetentionConfig,
        snapshot_cfg: SnapshotConfig,
        wal: RetainedLog,
        store: Applier,
        slots: SlotTable,
        connected: Callable[[], set[str]],
        replica_id_from_cert: bool = False,
        window_start: Callable[[], int | None] | None = None,
    ) -> None:
        self.cfg = cfg
        #: the first sequence the idempotency window needs, None when it holds no key
        self.window_start = window_start
        self.wal = wal
        self.store = store
        self.slots = slots
        self.connected = connected
        self.snapshots = SnapshotService(
            store, snapshot_cfg, self.request_check, replica_id_from_cert
        )
        self.started_at = time.time()
        self.pruned_bytes = 0
        self.prunes = 0
        #: one prune at a time (the writer's thread and the check's worker thread)
        self._lock = threading.Lock()
        self._check_task: asyncio.Task[None] | None = None
        self._check_again = False
        self._timer: asyncio.Task[None] | None = None
        self._closed = False
        self._oldest_end: int | None = None  # as the writer last saw it
        slots.on_ack = self._acked
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        if self._loop is not None:
            if (self.cfg.max_retained_age_s > 0 or self.cfg.drop_inactive_after_s > 0
                    or self.cfg.unacked_slot_expiry_s > 0):
                self._timer = self._loop.create_task(self._tick_loop(), name="retention-timer")
            self.request_check()  # the caps may be lower than at the last run

    # -- what holds WAL -----------------------------------------------------------------------

    def _slots(self) -> list[Slot]:
        return list(self.slots.slots.values())

    def needs(self) -> list[tuple[str, int]]:
        """(holder, first sequence it needs) of everything that holds WAL; empty when no
        slot holds any (then the WAL is kept, up to the caps)."""
        slots = [(f"slot {s.replica_id}", s.holds_from()) for s in self._slots() if not s.lost]
        if not slots:
            return []
        pins = [(f"snapshot {sid}", seq + 1) for sid, seq in self.snapshots.pins()]
        window = self.window_start() if self.window_start is not None else None
        if window is not None:
            pins.append(("idempotency window", window))
        return slots + pins

    def plan(self, incoming: int = 0, now: float | None = None) -> Plan:
        """What to delete now, with `incoming` bytes about to be appended."""
        segs = self.wal.segments()
        sealed = segs[:-1]
        if not sealed:
            return Plan(0, False)
        needs = self.needs()
        floor = min(n for _, n in needs) if needs else None
        total = sum(s.size for s in segs) + incoming
        max_age = self.cfg.max_retained_age_s
        wall = time.time() if now is None else now
        cut = 0
        capped = False
        for seg in sealed:
            needed = floor is None or seg.last_seq >= floor
            over = total > self.cfg.max_retained_bytes or (
                max_age > 0 and wall - _mtime(seg) > max_age
            )
            if needed and not over:
                break
            cut = seg.last_seq + 1
            total -= seg.size
            capped = capped or needed
        return Plan(cut, capped)

    # -- pruning ------------------------------------------------------------------------------

    def before_append(self, body_bytes: int, records: int) -> None:
        """In the writer's thread, before a group commit is appended: make room for it under
        the byte cap. Cheap unless the cap is reached."""
        incoming = body_bytes + records * _RECORD_OVERHEAD + _SEGMENT_HEADER + _HISTORY_FILE
        oldest_end = self.wal.oldest_segment_end()
        if oldest_end != self._oldest_end:
            # the first segment was sealed (the last append rolled over), or pruning moved
            # it: it may be one every slot is already past
            self._oldest_end = oldest_end
            if oldest_end is not None and self._loop is not None and self._prunable(oldest_end):
                self._loop.call_soon_threadsafe(self.request_check)
        if self.wal.size_bytes + incoming <= self.cfg.max_retained_bytes:
            return
        try:
            with self._lock:
                self._prune(self.plan(incoming))
        except Exception:
            # never fail a write for retention's sake; the next commit tries again
            log.exception("retention failed before an append")
        if self.wal.size_bytes + incoming > self.cfg.max_retained_bytes:
            log.warning(
                "the WAL (%d bytes) will exceed max_retained_bytes (%d) by this commit of %d "
                "bytes: only the segment being written is left",
                self.wal.size_bytes, self.cfg.max_retained_bytes, incoming,
            )

    def enforce(self) -> int:
        """Prune what the rules allow now (blocking); return the bytes freed."""
        with self._lock:
            return self._prune(self.plan())

    def _prune(self, plan: Plan) -> int:
        """Needs _lock; runs in a worker thread (it syncs the store and deletes files)."""
        wal = self.wal
        if plan.cut <= wal.first_sequence:
            return 0
        store = self.store
        synced = store.position().sequence  # applied before the sync below: durable after it
        store.sync()
        cut = min(plan.cut, synced + 1)
        if cut <= wal.first_sequence:
            return 0
        if plan.capped:
            self._mark_lost_soon(cut)
        self.slots.flush()  # the slots this is decided on are on disk first
        freed = wal.prune_before(cut)
        if freed:
            self.pruned_bytes += freed
            self.prunes += 1
            log.info(
                "retention: pruned %d bytes below sequence %d%s; WAL now %d bytes from %d",
                freed, cut, " (cap)" if plan.capped else "", wal.size_bytes, wal.first_sequence,
            )
        return freed

    def _mark_lost_soon(self, cut: int) -> None:
        """Slots are changed on the event loop only: from a worker thread (a prune), the
        marking is handed to the loop. It re-checks there, so a slot that acked meanwhile
        is not marked."""
        now = time.time()
        try:
            on_loop = asyncio.get_running_loop() is self._loop
        except RuntimeError:
            on_loop = False
        if on_loop or self._loop is None:
            self._mark_lost(cut, now)
        else:
            self._loop.call_soon_threadsafe(self._mark_lost, cut, now)

    def _mark_lost(self, cut: int, now: float) -> None:
        changed = False
        for slot in self._slots():
            if not slot.lost and slot.holds_from() < cut:
                slot.lost = True
                slot.lost_at = now
                changed = True
                log.warning(
                    "slot %r is lost: it acknowledged %d, but a retention cap "
                    "(max_retained_bytes=%d, max_retained_age_s=%g) deletes WAL up to %d; "
                    "its replica will bootstrap from a snapshot",
                    slot.replica_id, slot.acked, self.cfg.max_retained_bytes,
                    self.cfg.max_retained_age_s, cut - 1,
                )
        for sid, seq in self.snapshots.pins():
            if seq + 1 < cut:
                log.warning(
                    "a retention cap deletes WAL past snapshot %s (sequence %d): its replica "
                    "will need another snapshot once it has installed this one",
                    sid, seq,
                )
        if changed:
            self.slots.mark_dirty()

    # -- events -------------------------------------------------------------------------------

    def _acked(self, slot: Slot, sequence: int) -> None:
        """On the event loop, after every ack."""
        wal = self.wal
        if slot.lost and sequence + 1 >= wal.first_sequence:
            slot.lost = False
            slot.lost_at = 0.0
            self.slots.mark_dirty()
            log.info(
                "slot %r holds retention again from %d", slot.replica_id, sequence + 1
            )
        self.snapshots.release_for(slot.replica_id, sequence)
        oldest_end = wal.oldest_segment_end()
        if oldest_end is not None and self._prunable(oldest_end):
            self.request_check()

    def _prunable(self, oldest_end: int) -> bool:
        """Whether everything holding WAL is past a segment ending at `oldest_end`."""
        needs = self.needs()
        return bool(needs) and min(n for _, n in needs) > oldest_end

    def request_check(self) -> None:
        """Prune soon, off the event loop; calls while a check runs fold into one more."""
        if self._loop is None or self._closed:
            return
        if self._check_task is None or self._check_task.done():
            self._check_task = self._loop.create_task(self._check(), name="retention-check")
        else:
            self._check_again = True

    async def _check(self) -> None:
        while True:
            self._check_again = False
            try:
                if self.plan().cut > self.wal.first_sequence:
                    await asyncio.to_thread(self.enforce)
            except Exception:
                log.exception("retention check failed")
            if not self._check_again or self._closed:
                return

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.check_interval_s)
            try:
                self.tick()
            except Exception:
                log.exception("retention timer failed")

    def tick(self, now: float | None = None) -> None:
        """The timer: note which replicas stream, drop long-inactive slots and slots that
        never acked, apply the age cap."""
        wall = time.time() if now is None else now
        connected = self.connected()
        after = self.cfg.drop_inactive_after_s
        unacked_after = self.cfg.unacked_slot_expiry_s
        for slot in self._slots():
            if slot.replica_id in connected:
                slot.last_seen_at = wall
            elif (unacked_after > 0 and slot.last_ack_at == 0
                  and wall - max(slot.last_seen_at, self.started_at) > unacked_after):
                self.slots.drop(slot.replica_id)
                log.warning(
                    "dropped slot %r: it never acknowledged anything and its replica has been "
                    "gone for %.0fs (unacked_slot_expiry_s=%g)",
                    slot.replica_id, wall - max(slot.last_seen_at, self.started_at),
                    unacked_after,
                )
            elif after > 0 and wall - self.idle_since(slot) > after:
                self.slots.drop(slot.replica_id)
                log.warning(
                    "dropped slot %r: its replica has not streamed for %.0fs "
                    "(drop_inactive_after_s=%g); it acknowledged %d",
                    slot.replica_id, wall - self.idle_since(slot), after, slot.acked,
                )
        self.request_check()

    def idle_since(self, slot: Slot) -> float:
        # a restarted primary gives every replica the full time to come back
        return max(slot.last_seen_at, slot.last_ack_at, self.started_at)

    # -- operator actions ---------------------------------------------------------------------

    def drop(self, replica_id: str) -> Slot | None:
        """Drop a slot by hand; SlotBusy while its replica streams, None when unknown."""
        if replica_id in self.connected():
            raise SlotBusy(
                f"replica {replica_id!r} is streaming; stop it before dropping its slot"
            )
        slot = self.slots.drop(replica_id)
        if slot is not None:
            log.warning(
                "dropped slot %r by request; it acknowledged %d", replica_id, slot.acked
            )
            self.request_check()
        return slot

    # -- status -------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        wal = self.wal
        segs = wal.segments()
        held_by = ""
        needs = self.needs()
        if len(segs) > 1:
            oldest = segs[0]
            if not needs:
                held_by = "no slots"
            else:
                holder, need = min(needs, key=lambda n: n[1])
                if need <= oldest.last_seq:
                    held_by = holder
        lost = sum(1 for s in self._slots() if s.lost)
        return {
            "wal_bytes": wal.size_bytes,
            "wal_segments": len(segs),
            "max_retained_bytes": self.cfg.max_retained_bytes,
            "oldest_segment_held_by": held_by,
            "oldest_segment_age_s": max(0.0, time.time() - _mtime(segs[0])),
            "snapshots_held": len(self.snapshots.held),
            "lost_slots": lost,
        }

    def slot_status(self, slot: Slot, connected: bool, held_by: str) -> dict[str, Any]:
        now = time.time()
        wal = self.wal
        return {
            "slot_state": "lost" if slot.lost else "active" if connected else "inactive",
            "lag_bytes": 0 if slot.lost else wal.bytes_from(slot.holds_from()),
            "holds_oldest_segment": held_by == f"slot {slot.replica_id}",
            "inactive_s": 0.0 if connected else max(0.0, now - self.idle_since(slot)),
            "lost_age_s": now - slot.lost_at if slot.lost else -1.0,
        }

    # -- shutdown -----------------------------------------------------------------------------

    async def close(self) -> None:
        self._closed = True
        if self._timer is not None and not self._timer.done():
            self._timer.cancel()
            try:
                await self._timer
            except asyncio.CancelledError:
                pass
        if self._check_task is not None:
            # not cancelled: a prune in a worker thread must finish before the WAL closes
            await self._check_task
        await self.snapshots.close()


def _mtime(seg: SegmentInfo) -> float:
    try:
        return os.stat(seg.path).st_mtime
    except FileNotFoundError:  # pruned meanwhile
        return time.time()
