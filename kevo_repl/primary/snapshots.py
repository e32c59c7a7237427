"""Snapshots of the primary's store, streamed to replicas that have to bootstrap.

A snapshot is the applier's consistent view (an LMDB read transaction, a LevelDB snapshot)
taken at one position, held open by the primary under a snapshot id, and streamed in chunks:

    data   records back to back: u32 key length, key, u32 value length, value (little-endian),
           keys strictly ascending across the whole snapshot
    CRC-32 of data, index (0, 1, ...), count of records, the snapshot's sequence and history

A replica that loses the stream asks again with the snapshot id, the index of the next chunk
and the last key it received; the primary iterates on from that key. A held snapshot nobody
streams is released after `[snapshot] hold_s`, and once its replica acknowledges a position
at or past it. A stream that hands on no chunk for `hold_s` (its reader stopped reading) is
cancelled and its snapshot released, so a stalled reader cannot keep a read transaction open.
While held, a snapshot pins WAL retention at its sequence + 1 (below the caps), so that the
replica can stream on from there once it has installed it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import grpc

from kevo_repl.config import MAX_CHUNK_BYTES, MIN_CHUNK_BYTES, SnapshotConfig
from kevo_repl.errors import StoreError
from kevo_repl.identity import bound_replica_id, check_replica_id
from kevo_repl.protocol.proto import replication_pb2 as rpb
from kevo_repl.protocol.rpc_abort import abort
from kevo_repl.protocol.snapshot_chunks import encode_records
from kevo_repl.storage.applier import Applier, SnapshotView
from kevo_repl.storage.position import Position

log = logging.getLogger(__name__)

@dataclass
class HeldSnapshot:
    """One open snapshot of the store, kept for a replica to stream and resume."""

    snapshot_id: str
    replica_id: str
    position: Position
    view: SnapshotView
    stack: ExitStack
    total_keys: int
    total_bytes: int
    #: the view (one read transaction) is read by one thread at a time
    lock: threading.Lock = field(default_factory=threading.Lock)
    streams: int = 0
    #: bumped by each new stream; an older stream of the same snapshot stops
    generation: int = 0
    closed: bool = False
    expiry: asyncio.TimerHandle | None = None
    created_at: float = field(default_factory=time.monotonic)
    #: iterators of running streams, closed before the view is
    iterators: list[Iterator[tuple[bytes, bytes]]] = field(default_factory=list)
    #: the task of the stream now sending it, and when that stream last handed a chunk on
    stream_task: asyncio.Task[Any] | None = None
    progress_at: float = field(default_factory=time.monotonic)

    def open_items(self, after: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        with self.lock:
            if self.closed:
                raise StoreError(f"snapshot {self.snapshot_id} was released")
            it = self.view.items(after)
            self.iterators.append(it)
            return it

    def read_chunk(
        self, it: Iterator[tuple[bytes, bytes]], limit: int
    ) -> tuple[list[tuple[bytes, bytes]], bool]:
        """The next records, up to about `limit` bytes (at least one if any is left), and
        whether the snapshot ends with them."""
        with self.lock:
            if self.closed:
                raise StoreError(f"snapshot {self.snapshot_id} was released")
            pairs: list[tuple[bytes, bytes]] = []
            size = 0
            for key, value in it:
                pairs.append((key, value))
                size += 8 + len(key) + len(value)
                if size >= limit:
                    return pairs, False
            return pairs, True

    def close_iterator(self, it: Iterator[tuple[bytes, bytes]]) -> None:
        with self.lock:
            if it in self.iterators:
                self.iterators.remove(it)
                _close(it)

    def release(self) -> None:
        """Close the view (in a worker thread: waits for a chunk being read)."""
        with self.lock:
            if self.closed:
                return
            self.closed = True
            for it in self.iterators:
                _close(it)
            self.iterators.clear()
            self.stack.close()


def _close(it: Iterator[tuple[bytes, bytes]]) -> None:
    close = getattr(it, "close", None)  # a generator's: ends its cursor or iterator
    if close is not None:
        close()


class SnapshotService:
    """The primary's side of the Snapshot RPC."""

    def __init__(
        self,
        store: Applier,
        cfg: SnapshotConfig,
        on_release: Callable[[], None],
        replica_id_from_cert: bool = False,
    ) -> None:
        self.store = store
        self.cfg = cfg
        self._from_cert = replica_id_from_cert
        self.held: dict[str, HeldSnapshot] = {}
        self.served = 0  # snapshots streamed to the end
        self._on_release = on_release
        self._releasing: set[asyncio.Task[None]] = set()
        self._closed = False
        self._watchdog: asyncio.Task[None] | None = None
        self.stalled = 0  # streams cancelled for making no progress

    # -- what retention and status look at ------------------------------------------------

    def pins(self) -> list[tuple[str, int]]:
        """(snapshot id, sequence) of every held snapshot; safe from any thread."""
        return [(h.snapshot_id, h.position.sequence) for h in list(self.held.values())]

    # -- the RPC ------------------------------------------------------------------------------

    async def serve(
        self, request: rpb.SnapshotRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[rpb.SnapshotChunk]:
        problem = check_replica_id(request.replica_id, context, self._from_cert)
        if problem is not None:
            log.warning("refused snapshot for %s: %s", context.peer(), problem[1])
            await context.abort(problem[0], problem[1])
        replica_id = bound_replica_id(request.replica_id, context, self._from_cert)
        limit = self.cfg.max_chunk_bytes
        if request.max_chunk_bytes:
            limit = min(limit, max(MIN_CHUNK_BYTES, request.max_chunk_bytes))
        limit = min(limit, MAX_CHUNK_BYTES)
        after: bytes | None = None
        index = 0
        if request.snapshot_id:
            found = self.held.get(request.snapshot_id)
            if found is None or found.closed:
                await abort(
                    context,
                    grpc.StatusCode.NOT_FOUND,
                    f"snapshot {request.snapshot_id} is no longer held (released or expired); "
                    "ask for a new one"
                )
            held = found
            index = request.next_index
            if index:
                after = bytes(request.after_key)
            log.info(
                "replica %r resumes snapshot %s at chunk %d", replica_id, held.snapshot_id, index
            )
        else:
            held = await self._take(replica_id, context)
        held.generation += 1
        generation = held.generation
        held.streams += 1
        held.stream_task = asyncio.current_task()
        held.progress_at = time.monotonic()
        self._watch()
        if held.expiry is not None:
            held.expiry.cancel()
            held.expiry = None
        try:
            it = await asyncio.to_thread(held.open_items, after)
        except StoreError as exc:
            held.streams -= 1
            await abort(context, grpc.StatusCode.ABORTED, str(exc))
        done = False
        try:
            while not done:
                if held.generation != generation:
                    await context.abort(
                        grpc.StatusCode.ABORTED,
                        f"snapshot {held.snapshot_id} is streamed by a newer request",
                    )
                try:
                    pairs, done = await asyncio.to_thread(held.read_chunk, it, limit)
                except StoreError as exc:
                    await abort(context, grpc.StatusCode.ABORTED, str(exc))
                data = encode_records(pairs)
                yield rpb.SnapshotChunk(
                    snapshot_id=held.snapshot_id,
                    sequence=held.position.sequence,
                    history_id=held.position.history_id,
                    index=index,
                    data=data,
                    checksum=zlib.crc32(data),
                    count=len(pairs),
                    last=done,
                    total_keys=held.total_keys,
                    total_bytes=held.total_bytes,
                )
                held.progress_at = time.monotonic()
                index += 1
            self.served += 1
            log.info(
                "snapshot %s (sequence %d, %d keys) sent to replica %r in %d chunks",
                held.snapshot_id, held.position.sequence, held.total_keys, replica_id, index,
            )
        finally:
            await asyncio.to_thread(held.close_iterator, it)
            held.streams -= 1
            if held.streams == 0 and not held.closed and not self._closed:
                held.expiry = asyncio.get_running_loop().call_later(
                    self.cfg.hold_s, self._expire, held.snapshot_id
                )

    async def _take(self, replica_id: str, context: grpc.aio.ServicerContext) -> HeldSnapshot:
        # a replica that asks anew has given up on its earlier snapshot
        for old in list(self.held.values()):
            if old.replica_id == replica_id:
                self._release(old, "replaced by a new snapshot for the same replica")
        if len(self.held) >= self.cfg.max_held:
            idle = [h for h in self.held.values() if h.streams == 0]
            if not idle:
                await context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"{len(self.held)} snapshots are being streamed ([snapshot] max_held); "
                    "try again later",
                )
            self._release(min(idle, key=lambda h: h.created_at), "evicted: max_held reached")
        held = await asyncio.to_thread(self._open, replica_id)
        if self._closed:
            await asyncio.to_thread(held.release)
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the primary is shutting down")
        self.held[held.snapshot_id] = held
        return held

    def _open(self, replica_id: str) -> HeldSnapshot:
        """In a worker thread: open a view of the store and count what it holds."""
        started = time.monotonic()
        stack = ExitStack()
        try:
            view = stack.enter_context(self.store.snapshot())
            keys = 0
            size = 0
            for key, value in view.items():
                keys += 1
                size += 8 + len(key) + len(value)
        except BaseException:
            stack.close()
            raise
        held = HeldSnapshot(
            uuid.uuid4().hex, replica_id, view.position, view, stack, keys, size
        )
        log.info(
            "snapshot %s for replica %r at sequence %d: %d keys, %d bytes (counted in %.3fs)",
            held.snapshot_id, replica_id, held.position.sequence, keys, size,
            time.monotonic() - started,
        )
        return held

    # -- stalled streams ----------------------------------------------------------------------

    def _watch(self) -> None:
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = asyncio.get_running_loop().create_task(
                self._watch_loop(), name="snapshot-watchdog"
            )

    async def _watch_loop(self) -> None:
        while self.held and not self._closed:
            await asyncio.sleep(min(1.0, self.cfg.hold_s / 4))
            self.cancel_stalled()

    def cancel_stalled(self, now: float | None = None) -> int:
        """Cancel every stream that handed on no chunk for hold_s and release its snapshot;
        return how many."""
        now = time.monotonic() if now is None else now
        cancelled = 0
        for held in list(self.held.values()):
            if held.streams == 0 or now - held.progress_at <= self.cfg.hold_s:
                continue
            log.warning(
                "snapshot %s of replica %r: its stream made no progress for %.0fs "
                "([snapshot] hold_s=%g); cancelled",
                held.snapshot_id, held.replica_id, now - held.progress_at, self.cfg.hold_s,
            )
            if held.stream_task is not None and not held.stream_task.done():
                held.stream_task.cancel()
            self._release(held, "its stream stalled")
            self.stalled += 1
            cancelled += 1
        return cancelled

    # -- releasing ----------------------------------------------------------------------------

    def release_for(self, replica_id: str, acked: int) -> None:
        """`replica_id` acknowledged `acked`: it no longer needs a snapshot at or below it."""
        for held in list(self.held.values()):
            if held.replica_id == replica_id and held.position.sequence <= acked:
                self._release(held, f"replica acknowledged {acked}")

    def _expire(self, snapshot_id: str) -> None:
        held = self.held.get(snapshot_id)
        if held is not None and held.streams == 0:
            self._release(held, f"unused for {self.cfg.hold_s:g}s")

    def _release(self, held: HeldSnapshot, why: str) -> None:
        if self.held.pop(held.snapshot_id, None) is None:
            return
        if held.expiry is not None:
            held.expiry.cancel()
        held.generation += 1  # a stream still running on it stops at its next chunk
        log.info("snapshot %s of replica %r released: %s", held.snapshot_id, held.replica_id, why)
        task = asyncio.get_running_loop().create_task(asyncio.to_thread(held.release))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)
        self._on_release()

    async def close(self) -> None:
        self._closed = True
        if self._watchdog is not None and not self._watchdog.done():
            self._watchdog.cancel()
        for held in list(self.held.values()):
            self._release(held, "the primary is shutting down")
        if self._releasing:
            await asyncio.gather(*self._releasing, return_exceptions=True)
