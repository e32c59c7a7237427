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
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import grpc

from kevo_repl.config import Config
from kevo_repl.errors import KevoReplError, StoreError
from kevo_repl.plugin.manager import Registry
from kevo_repl.protocol.methods import SNAPSHOT
from kevo_repl.protocol.proto import replication_pb2 as rpb
from kevo_repl.protocol.snapshot_chunks import ChunkError, decode_records
from kevo_repl.storage.applier import Applier, open_applier
from kevo_repl.storage.position import Position
from kevo_repl.storage.store import STORE_DIR, open_store, write_file_atomically
from kevo_repl.tasks import run_blocking

log = logging.getLogger(__name__)

BOOTSTRAP_DIR = STORE_DIR + ".bootstrap"
OLD_DIR = STORE_DIR + ".old"
MARKER = "bootstrap.json"
#: the same chunk arriving corrupt this often: the snapshot is given up and started over
_MAX_CORRUPT_CHUNKS = 5


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
    position = _read_marker(marker)
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


def _read_marker(marker: Path) -> Position:
    """The installed position the completion marker names; damaged, truncated or wrongly
    typed content is a StoreError naming the file and field (the install is left as it is)."""
    try:
        info = json.loads(marker.read_bytes().decode("utf-8"))
    except (OSError, ValueError) as exc:
        raise StoreError(
            f"{marker} is unreadable or damaged ({exc}); the install cannot be finished"
        ) from exc
    if not isinstance(info, dict):
        raise StoreError(f"{marker} is damaged: a JSON object expected, found a "
                         f"{type(info).__name__}; the install cannot be finished")
    wanted: dict[str, type] = {"sequence": int, "history_id": str, "applied_entries": int}
    for key, kind in wanted.items():
        value = info.get(key)
        in_range = not isinstance(value, int) or 0 <= value < 2**64
        if not isinstance(value, kind) or isinstance(value, bool) or not in_range:
            raise StoreError(f"{marker} is damaged: field {key!r} is {value!r}, not a "
                             f"{'sequence number' if kind is int else 'string'}; the install "
                             "cannot be finished")
    return Position(info["sequence"], info["history_id"], info["applied_entries"])


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


@dataclass(frozen=True)
class Installed:
    """What a completed install hands back: the new live store, open, and its position."""

    store: Applier
    position: Position


class BootstrapError(KevoReplError):
    """An install did not complete. `fatal`: retrying cannot help, the replica stops; else
    the next OUT_OF_RANGE resumes (or starts over)."""

    def __init__(self, message: str, *, fatal: bool) -> None:
        super().__init__(message)
        self.fatal = fatal


class Bootstrap:
    """The replica's snapshot installer: a phase the replica runs between sessions, with its
    own connection. It knows nothing of the replica but its configuration, and hands back
    the new store; the replica adopts it."""

    def __init__(
        self,
        cfg: Config,
        registry: Registry,
        connector: Callable[[str, dict[str, Any]], Any],
        auth: Sequence[tuple[str, str]],
        replica_id: str,
    ) -> None:
        self.cfg = cfg
        self.registry = registry
        self.replica_id = replica_id  # configured, or derived and stored by the replica
        self.connector = connector
        self.auth = tuple(auth)
        self.engine_spec = registry.get("applier", self.cfg.applier.name)
        self.data_dir = self.cfg.data_dir
        self.enabled = self.cfg.replica.bootstrap
        self.target: Applier | None = None
        self.progress = Progress()
        self.installed = 0
        self.last_error = ""
        # a switch that completed and was not yet taken (its caller may have been cancelled)
        self._switched: Installed | None = None

    def take_switched(self) -> Installed | None:
        """The store of a switch that completed since the last call: the live store was
        closed for it, so the caller must adopt it even if its install() was cancelled."""
        switched, self._switched = self._switched, None
        return switched

    def wanted(self, exc: grpc.aio.AioRpcError) -> bool:
        return self.enabled and exc.code() == grpc.StatusCode.OUT_OF_RANGE

    async def install(self, live: Applier) -> Installed:
        """One attempt: receive the snapshot into a fresh store, then switch it in for `live`
        (which is closed by then). Raises BootstrapError when the attempt failed; a cancel
        goes through, except during the switch, which always runs to its end."""
        try:
            return await self.run(live)
        except SwitchFailed as exc:
            self.last_error = str(exc)
            raise BootstrapError(str(exc), fatal=True) from exc
        except grpc.aio.AioRpcError as exc:
            reason = _describe(exc)
            self.last_error = reason
            self.progress.state = "FAILED"
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                # a primary without snapshots (KevoDB's own): retrying cannot help
                raise BootstrapError(
                    f"the primary no longer retains our position and cannot send a snapshot "
                    f"({reason}); rebuild this replica from a copy of the primary's store",
                    fatal=True,
                ) from exc
            raise BootstrapError(f"bootstrap: {reason}", fatal=False) from exc
        except Exception as exc:
            if not isinstance(exc, KevoReplError | OSError):
                log.exception("replica %s: bootstrap failed", self.replica_id)
            reason = _describe(exc)
            self.last_error = reason
            self.progress.state = "FAILED"
            if not isinstance(exc, BootstrapFailed) or exc.restart:
                await self._discard()  # else the next attempt resumes where this one stopped
            raise BootstrapError(f"bootstrap: {reason}", fatal=False) from exc

    # -- one attempt ---------------------------------------------------------------------------

    async def run(self, live: Applier) -> Installed:
        p = self.progress
        if self.target is None:
            self.target = await run_blocking(self._fresh_target)
            self.progress = p = Progress()
        resume = bool(p.snapshot_id)
        p.state = "RECEIVING"
        channel = self.connector(self.cfg.replica.primary, asdict(self.cfg.connector))
        try:
            snapshot = channel.unary_stream(
                SNAPSHOT,
                request_serializer=rpb.SnapshotRequest.SerializeToString,
                response_deserializer=rpb.SnapshotChunk.FromString,
            )
            request = rpb.SnapshotRequest(
                replica_id=self.replica_id,
                snapshot_id=p.snapshot_id,
                next_index=p.next_index,
                after_key=p.last_key,
                max_chunk_bytes=self.cfg.replica.snapshot_chunk_bytes,
            )
            log.info(
                "replica %s: %s snapshot from %s", self.replica_id,
                f"resuming {p.snapshot_id} at chunk {p.next_index} of the" if resume
                else "bootstrapping from a", self.cfg.replica.primary,
            )
            complete = False
            call = snapshot(request, metadata=self.auth)
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
        switch = asyncio.ensure_future(self._switch(live))
        try:
            return await asyncio.shield(switch)
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
                self.replica_id, chunk.snapshot_id, chunk.sequence,
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
            await run_blocking(target.load, pairs)
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
            await run_blocking(target.close)
        path = self.data_dir / BOOTSTRAP_DIR
        if path.exists():
            await run_blocking(shutil.rmtree, path)

    async def _switch(self, live: Applier) -> Installed:
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

        await run_blocking(commit)
        self.target = None

        def switch() -> Applier:
            live.close()
            try:
                recover_install(self.data_dir)
                return open_store(self.cfg, self.registry, durable=True)
            except Exception as exc:
                raise SwitchFailed(
                    f"switching to the installed snapshot failed ({exc}); restart the replica "
                    "to finish the switch"
                ) from exc

        store = await run_blocking(switch)
        p.state = "INSTALLED"
        p.snapshot_id = ""
        self.installed += 1
        self.last_error = ""
        log.info(
            "replica %s: installed snapshot at sequence %d (%d keys, %d chunks); switched in "
            "%.3fs; streaming from %d",
            self.replica_id, position.sequence, p.keys, p.chunks,
            time.monotonic() - started, position.sequence + 1,
        )
        self._switched = Installed(store, store.position())
        return self._switched

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
