"""Snapshot bootstrap on the replica: when the primary no longer retains its position.

A replica that gets OUT_OF_RANGE (its position was pruned, or it starts empty against a WAL
that no longer begins at 1) installs a snapshot of the primary's store and streams on from the
snapshot's position + 1. The install never touches the live store:

1. a fresh store is created at ``DATA_DIR/store.bootstrap`` (same applier, no per-commit sync)
   and the snapshot's chunks are loaded into it (``Applier.load``), each checked (CRC-32, index,
   snapshot id, position, key order) before it is written. The replica keeps serving reads
   from its old store meanwhile. A lost connection resumes from the last chunk loaded while
   the primary still holds the snapshot, else starts over.
2. complete: the position is set (``Applier.set_position``: sequence, history, and
   ``applied_entries = sequence``), the store synced and closed, and the completion marker
   ``DATA_DIR/bootstrap.json`` written (atomically, fsynced) — the commit point.
3. the switch: the live store closes, ``store`` becomes ``store.old``, ``store.bootstrap``
   becomes ``store``, the directory is fsynced, ``store.old`` deleted, the marker removed, and
   the store reopened.

At start-up :func:`recover_install` runs before the store is opened: with the marker present it
finishes step 3 (from wherever a crash stopped it); without it, a ``store.bootstrap`` is an
install that did not complete and is deleted (the replica then starts over from its old store).
Step 3 in normal operation is the same function, so the recovery path is the one always taken.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from kevo_repl.errors import KevoReplError, StoreError
from kevo_repl.plugin.manager import Registry
from kevo_repl.protocol.proto import replication_pb2 as rpb
from kevo_repl.protocol.snapshot_chunks import ChunkError, decode_records
from kevo_repl.replica.state import State
from kevo_repl.storage.applier import Applier, open_applier
from kevo_repl.storage.position import Position
from kevo_repl.storage.store import STORE_DIR, open_store, write_file_atomically

if TYPE_CHECKING:
    from kevo_repl.replica.replica import Replica

log = logging.getLogger(__name__)

BOOTSTRAP_DIR = STORE_DIR + ".bootstrap"
OLD_DIR = STORE_DIR + ".old"
MARKER = "bootstrap.json"
_SNAPSHOT = "/kevo.replication.WALReplicationService/Snapshot"
#: the same chunk arriving corrupt this often: the snapshot is given up and started over
_MAX_CORRUPT_CHUNKS = 5

T = TypeVar("T")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def recover_install(data_dir: Path) -> Position | None:
    """Finish a switch whose completion marker is on disk, or delete an install that never
    completed. Call it before the store is opened. Returns the installed position when it
    finished a switch."""
    data_dir = Path(data_dir)
    store = data_dir / STORE_DIR
    new = data_dir / BOOTSTRAP_DIR
    old = data_dir / OLD_DIR
    marker = data_dir / MARKER
    if not marker.exists():
        if new.exists():
            log.warning("deleting %s: a snapshot install that did not complete", new)
            shutil.rmtree(new)
            _fsync_dir(data_dir)
        if old.exists():  # only ever left by a crash after the marker was removed
            shutil.rmtree(old)
        return None
    try:
        info = json.loads(marker.read_text())
        position = Position(int(info["sequence"]), str(info["history_id"]),
                            int(info["applied_entries"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StoreError(f"{marker} is unreadable ({exc}); the install cannot be finished") from exc
    if new.exists():
        if store.exists():
            if old.exists():
                shutil.rmtree(old)
            os.rename(store, old)
        os.rename(new, store)
        _fsync_dir(data_dir)
    if old.exists():
        shutil.rmtree(old)
    marker.unlink()
    _fsync_dir(data_dir)
    log.info(
        "switched to the snapshot store at sequence %d (history %s)",
        position.sequence, position.history_id,
    )
    return position


@dataclass
class Progress:
    state: str = ""  # "", RECEIVING, INSTALLED, FAILED
    snapshot_id: str = ""
    sequence: int = 0
    history_id: str = ""
    chunks: int = 0
    keys: int = 0
    data_bytes: int = 0
    total_keys: int = 0
    total_bytes: int = 0
    next_index: int = 0
    last_key: bytes = b""
    corrupt: int = 0  # chunks with a bad checksum in a row


class BootstrapFailed(KevoReplError):
    """This attempt failed; the next one resumes (or starts over, when `restart`)."""

    def __init__(self, message: str, *, restart: bool) -> None:
        super().__init__(message)
        self.restart = restart


class SwitchFailed(KevoReplError):
    """The live store was closed but the new one could not be switched in: the replica stops;
    its next start-up finishes the switch (the completion marker is on disk)."""


class Bootstrap:
    """The replica's snapshot installer (one per replica)."""

    def __init__(self, replica: Replica, registry: Registry) -> None:
        self.replica = replica
        self.cfg = replica.cfg
        self.registry = registry
        self.engine_spec = registry.get("applier", self.cfg.applier.name)
        self.data_dir = self.cfg.data_dir
        self.enabled = self.cfg.replica.bootstrap
        self.target: Applier | None = None
        self.progress = Progress()
        self.installed = 0
        self.last_error = ""
        self._ack_pending = False

    def wanted(self, exc: grpc.aio.AioRpcError) -> bool:
        return self.enabled and exc.code() == grpc.StatusCode.OUT_OF_RANGE

    def stream_started(self) -> None:
        """A stream started. Right after an install, acknowledge the new position at once:
        the primary's slot (lost until then) holds WAL again from there, even if the primary
        is idle and no batch would prompt an ack."""
        if self._ack_pending:
            self._ack_pending = False
            self.replica._durable_changed.set()

    # -- the replica's run loop calls this between sessions ------------------------------------

    async def install(
        self, apply_task: asyncio.Task[None], ack_task: asyncio.Task[None]
    ) -> tuple[asyncio.Task[None], asyncio.Task[None]]:
        """Stop the apply pipeline, bootstrap, restart the pipeline; return its new tasks.
        A failed attempt is reported (ERROR) and left for the next OUT_OF_RANGE to resume."""
        replica = self.replica
        replica._move(State.BOOTSTRAPPING, "the primary no longer retains our position")
        for task in (apply_task, ack_task):
            task.cancel()
        for task in (apply_task, ack_task):
            try:
                await task  # the apply loop finishes a running commit before it ends
            except asyncio.CancelledError:
                pass
            except Exception:
                log.exception("replica %s: the apply pipeline failed", replica.replica_id)
        replica._drain_queue()
        replica._session_task = asyncio.create_task(self.run(), name="replica-bootstrap")
        try:
            await replica._session_task
        except SwitchFailed as exc:
            self.last_error = str(exc)
            replica._fatal(str(exc))
        except grpc.aio.AioRpcError as exc:
            reason = _describe(exc)
            self.last_error = reason
            self.progress.state = "FAILED"
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                # a primary without snapshots (KevoDB's own): retrying cannot help
                replica._fatal(
                    f"the primary no longer retains our position and cannot send a snapshot "
                    f"({reason}); rebuild this replica from a copy of the primary's store"
                )
            else:
                replica._error(f"bootstrap: {reason}")  # the next attempt resumes
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if me is not None and me.cancelling():
                raise  # run() itself is being cancelled
        except Exception as exc:
            if not isinstance(exc, KevoReplError | OSError):
                log.exception("replica %s: bootstrap failed", replica.replica_id)
            reason = _describe(exc)
            self.last_error = reason
            self.progress.state = "FAILED"
            if not isinstance(exc, BootstrapFailed) or exc.restart:
                await self._discard()  # else the next attempt resumes where this one stopped
            replica._error(f"bootstrap: {reason}")
        else:
            replica._move(State.CONNECTING, "snapshot installed")
        return (
            asyncio.create_task(replica._apply_loop(), name="replica-apply"),
            asyncio.create_task(replica._ack_loop(), name="replica-ack"),
        )

    # -- one attempt ---------------------------------------------------------------------------

    async def run(self) -> None:
        replica = self.replica
        p = self.progress
        if self.target is None:
            self.target = await _in_thread(self._fresh_target)
            self.progress = p = Progress()
        resume = bool(p.snapshot_id)
        p.state = "RECEIVING"
        channel = replica.connector(self.cfg.replica.primary, asdict(self.cfg.connector))
        try:
            snapshot = channel.unary_stream(
                _SNAPSHOT,
                request_serializer=rpb.SnapshotRequest.SerializeToString,
                response_deserializer=rpb.SnapshotChunk.FromString,
            )
            request = rpb.SnapshotRequest(
                replica_id=replica.replica_id,
                snapshot_id=p.snapshot_id,
                next_index=p.next_index,
                after_key=p.last_key,
                max_chunk_bytes=self.cfg.replica.snapshot_chunk_bytes,
            )
            log.info(
                "replica %s: %s snapshot from %s", replica.replica_id,
                f"resuming {p.snapshot_id} at chunk {p.next_index} of the" if resume
                else "bootstrapping from a", self.cfg.replica.primary,
            )
            complete = False
            call = snapshot(request, metadata=replica._auth)
            try:
                async for chunk in call:
                    await self._take(chunk)
                    if chunk.last:
                        complete = True
                        break
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    raise BootstrapFailed(
                        f"the primary no longer holds snapshot {p.snapshot_id}; starting over",
                        restart=True,
                    ) from exc
                raise
            finally:
                call.cancel()
            if not complete:
                raise BootstrapFailed("the snapshot stream ended early", restart=False)
        finally:
            await channel.close()
        # the switch runs to its end even if the replica is stopped meanwhile
        switch = asyncio.ensure_future(self._switch())
        try:
            await asyncio.shield(switch)
        except asyncio.CancelledError:
            await switch
            raise

    async def _take(self, chunk: rpb.SnapshotChunk) -> None:
        p = self.progress
        target = self.target
        assert target is not None
        if not p.snapshot_id:
            if chunk.index != 0 or not chunk.snapshot_id or chunk.sequence < 1:
                raise BootstrapFailed(
                    f"a snapshot must start with chunk 0 at a position, not chunk "
                    f"{chunk.index} at {chunk.sequence}", restart=True,
                )
            p.snapshot_id = chunk.snapshot_id
            p.sequence = chunk.sequence
            p.history_id = chunk.history_id
            log.info(
                "replica %s: snapshot %s at sequence %d: %d keys, %d bytes",
                self.replica.replica_id, chunk.snapshot_id, chunk.sequence,
                chunk.total_keys, chunk.total_bytes,
            )
        if (chunk.snapshot_id, chunk.sequence, chunk.history_id) != (
            p.snapshot_id, p.sequence, p.history_id
        ):
            raise BootstrapFailed(
                f"chunk {chunk.index} belongs to snapshot {chunk.snapshot_id} at "
                f"{chunk.sequence}, not to {p.snapshot_id} at {p.sequence}", restart=True,
            )
        if chunk.index != p.next_index:
            raise BootstrapFailed(
                f"expected snapshot chunk {p.next_index}, got {chunk.index}", restart=False
            )
        data = chunk.data
        if zlib.crc32(data) != chunk.checksum:
            p.corrupt += 1
            raise BootstrapFailed(
                f"snapshot chunk {chunk.index} failed its checksum ({p.corrupt} times)",
                restart=p.corrupt >= _MAX_CORRUPT_CHUNKS,
            )
        try:
            pairs = decode_records(data, chunk.count)
        except ChunkError as exc:
            raise BootstrapFailed(f"snapshot chunk {chunk.index}: {exc}", restart=True) from exc
        if pairs:
            keys = [k for k, _ in pairs]
            if (p.last_key and keys[0] <= p.last_key) or any(a >= b for a, b in pairwise(keys)):
                raise BootstrapFailed(
                    f"snapshot chunk {chunk.index}: keys out of order", restart=True
                )
            await _in_thread(target.load, pairs)
            p.last_key = keys[-1]
        p.corrupt = 0
        p.next_index += 1
        p.chunks += 1
        p.keys += len(pairs)
        p.data_bytes += len(data)
        p.total_keys = chunk.total_keys
        p.total_bytes = chunk.total_bytes

    # -- the store being built, and the switch -------------------------------------------------

    def _fresh_target(self) -> Applier:
        path = self.data_dir / BOOTSTRAP_DIR
        if path.exists():
            shutil.rmtree(path)
        # no sync per commit: the install is synced once, before it is committed to
        name = self.cfg.applier.name
        return open_applier(name, self.engine_spec, path, self.cfg.applier.options, False)

    async def _discard(self) -> None:
        """Throw the store being built away: the next attempt starts over."""
        target, self.target = self.target, None
        self.progress.snapshot_id = ""
        if target is not None:
            await _in_thread(target.close)
        path = self.data_dir / BOOTSTRAP_DIR
        if path.exists():
            await _in_thread(shutil.rmtree, path)

    async def _switch(self) -> None:
        replica = self.replica
        p = self.progress
        target = self.target
        assert target is not None
        position = Position(p.sequence, p.history_id, p.sequence)
        started = time.monotonic()

        def commit() -> None:
            target.set_position(position)
            target.sync()
            target.close()
            write_file_atomically(
                self.data_dir / MARKER, json.dumps(asdict(position)).encode()
            )

        await _in_thread(commit)
        self.target = None

        def switch() -> Applier:
            replica.store.close()
            try:
                recover_install(self.data_dir)
                return open_store(self.cfg, self.registry, durable=True)
            except Exception as exc:
                raise SwitchFailed(
                    f"switching to the installed snapshot failed ({exc}); restart the replica "
                    "to finish the switch"
                ) from exc

        store = await _in_thread(switch)
        replica.store = store
        replica.position = store.position()
        replica._received = replica.position.sequence
        # a snapshot carries no hash chain: the next response's chain value is adopted
        replica._recv_chain = replica.position.chain
        replica._chain_after.clear()
        replica._primary_history = replica.position.history_id
        replica.stats.head_sequence = max(replica.stats.head_sequence, position.sequence)
        replica._last_progress_at = time.monotonic()
        p.state = "INSTALLED"
        p.snapshot_id = ""
        self.installed += 1
        self._ack_pending = True
        self.last_error = ""
        log.info(
            "replica %s: installed snapshot at sequence %d (%d keys, %d chunks); switched in "
            "%.3fs; streaming from %d",
            replica.replica_id, position.sequence, p.keys, p.chunks,
            time.monotonic() - started, position.sequence + 1,
        )

    # -- visibility and shutdown -----------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        p = self.progress
        if p.total_keys:
            percent = min(100.0, 100.0 * p.keys / p.total_keys)
        else:
            percent = 100.0 if p.state == "INSTALLED" else 0.0
        return {
            "bootstrap_state": p.state,
            "bootstrap_snapshot_id": p.snapshot_id,
            "bootstrap_sequence": p.sequence,
            "bootstrap_chunks": p.chunks,
            "bootstrap_keys": p.keys,
            "bootstrap_bytes": p.data_bytes,
            "bootstrap_total_keys": p.total_keys,
            "bootstrap_total_bytes": p.total_bytes,
            "bootstrap_percent": round(percent, 2),
            "bootstraps": self.installed,
        }

    def close(self) -> None:
        """At shutdown: close the store being built (left on disk; the next start deletes
        it, since it never completed)."""
        target, self.target = self.target, None
        if target is not None:
            target.close()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"snapshot stream failed: {exc.code().name}: {exc.details()}"
    return str(exc)


async def _in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run blocking `fn` in a thread; if the caller is cancelled, still wait for it, so that
    no store is closed under a running load."""
    fut = asyncio.get_running_loop().run_in_executor(None, fn, *args)
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        await fut
        raise
