"""`kevo-repl promote`: make a stopped replica the primary of a new epoch.

The replica's store holds every entry up to its durable position P, committed with P, its
history id and the hash chain after P. The promoted node keeps that history and continues it
at P + 1 in epoch E + 1 (E: the newest epoch the replica followed): its WAL starts empty at
P + 1 (`storage.wal.start_wal_at`) and its epoch history records `(E + 1, P + 1, chain)`.
Nothing the replica applied is dropped; what the old primary wrote past P is not in the new
history (the old primary reports it as discarded when it rejoins).

Crash safety: the WAL is built in `wal.promote` and renamed to `wal` before `node.json` names
the primary role; a promotion interrupted after the rename is finished by running it again.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from kevo_repl.config import Config
from kevo_repl.errors import KevoReplError
from kevo_repl.ha.node_dir import read_role, write_role
from kevo_repl.plugin.manager import Registry
from kevo_repl.protocol.records import chain_of
from kevo_repl.storage import epochs as epochs_mod
from kevo_repl.storage.epochs import Epoch
from kevo_repl.storage.store import lock_data_dir, open_store
from kevo_repl.storage.wal import WAL, start_wal_at

log = logging.getLogger(__name__)

WAL_DIR = "wal"
_STAGING = "wal.promote"


@dataclass(frozen=True)
class PromoteResult:
    #: the new epoch; its first sequence is position + 1
    epoch: int
    position: int
    history_id: str
    chain: str


def promote(
    cfg: Config, registry: Registry, *, epoch: int | None = None, lock_held: bool = False
) -> PromoteResult:
    """Promote the stopped replica at `cfg.data_dir` (its `[applier]` opens the store) to
    `epoch` (by default the one after the newest it followed; etcd's election names it).
    `lock_held`: the caller holds the data directory's lock (a running node promoting
    itself, its replica stopped and its store closed)."""
    data_dir = cfg.data_dir
    # refuses a replica that is still running
    lock = None if lock_held else lock_data_dir(data_dir)
    try:
        marker = read_role(data_dir)
        cfg.applier.name = marker["applier"] or cfg.applier.name
        if marker["role"] != "replica":
            raise KevoReplError(f"{data_dir} is a {marker['role']}, not a replica")
        cfg.node.role = "replica"
        store = open_store(cfg, registry, durable=True)
        try:
            pos = store.position()
        finally:
            store.close()
        if pos.sequence == 0 or not pos.history_id:
            raise KevoReplError(f"the replica at {data_dir} holds nothing to continue")
        if pos.chain == 0:
            raise KevoReplError(
                f"the replica at {data_dir} does not know the hash chain at {pos.sequence} "
                "(a KevoDB primary's history); it cannot be promoted"
            )
        known = epochs_mod.load(data_dir)
        # epochs the replica heard of but holds nothing of are not part of its history
        kept = [e for e in known if e.start <= pos.sequence]
        number = known[-1].number + 1 if epoch is None else epoch
        if number <= known[-1].number:
            raise KevoReplError(
                f"epoch {number} is not newer than epoch {known[-1].number} this replica followed"
            )
        new = Epoch(number, pos.sequence + 1, pos.chain)
        history = epochs_mod.check([*kept, new])
        wal_dir = data_dir / WAL_DIR
        if wal_dir.exists() and not _unfinished(wal_dir, history):
            # an earlier promotion that was cut short and then lost its election: set aside
            aside = _free_name(data_dir, "wal.abandoned")
            os.replace(wal_dir, aside)
            log.warning("set aside %s, left by an earlier promotion, in %s", wal_dir, aside)
        if not wal_dir.exists():
            staging = data_dir / _STAGING
            if staging.exists():
                shutil.rmtree(staging)  # our own half-built staging: holds no entry
            start_wal_at(staging, pos.history_id, pos.sequence + 1)
            epochs_mod.save(staging, history)
            os.replace(staging, wal_dir)
            _fsync_dir(data_dir)
        write_role(data_dir, "primary", cfg.applier.name)
    finally:
        if lock is not None:
            os.close(lock)
    log.info("promoted %s: epoch %d from sequence %d", data_dir, new.number, new.start)
    return PromoteResult(new.number, pos.sequence, pos.history_id, f"{pos.chain:016x}")


def _unfinished(wal_dir: Path, history: tuple[Epoch, ...]) -> bool:
    """Whether `wal_dir` is this very promotion, interrupted before node.json changed."""
    found = epochs_mod.load(wal_dir)
    with WAL(wal_dir) as wal:
        empty = wal.last_sequence == history[-1].start - 1
    return found[-1] == history[-1] and empty


def _free_name(data_dir: Path, base: str) -> Path:
    n = 1
    while (data_dir / f"{base}.{n}").exists():
        n += 1
    return data_dir / f"{base}.{n}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def new_term(cfg: Config, registry: Registry, epoch: int) -> int:
    """Record `epoch` in the stopped primary's WAL history, starting after its head: a primary
    elected again after another epoch was taken (and never served) writes in the new epoch.
    Returns the epoch's first sequence."""
    data_dir = cfg.data_dir
    lock = lock_data_dir(data_dir)
    try:
        cfg.node.role = "primary"
        store = open_store(cfg, registry, durable=False)
        try:
            stored = store.position().sequence
        finally:
            store.close()
        wal_dir = data_dir / WAL_DIR
        history = epochs_mod.load(wal_dir)
        if epoch <= history[-1].number:
            raise KevoReplError(f"epoch {epoch} is not newer than this primary's "
                                f"{history[-1].number}")
        with WAL(wal_dir, acknowledged=stored) as wal:
            head = wal.last_sequence
            if head >= wal.first_sequence:
                [record] = wal.read(head, 1)
                chain = chain_of(record)
            else:  # nothing written since the WAL began: the chain its epoch started on
                chain = next((e.chain for e in history if e.start == head + 1), None)
        if chain is None:
            raise KevoReplError(f"no hash chain at sequence {head}; epoch {epoch} not recorded")
        epochs_mod.save(wal_dir, epochs_mod.check([*history, Epoch(epoch, head + 1, chain)]))
    finally:
        os.close(lock)
    log.info("primary %s: epoch %d from sequence %d", data_dir, epoch, head + 1)
    return head + 1
