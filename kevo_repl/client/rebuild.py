"""`kevo-repl rebuild-primary`: fill a new, empty primary with a stopped replica's store.

The way back from a primary whose WAL is damaged (it refuses to start): the replica's store
holds every entry up to its position, committed with that position, so its keys and values
written through a new primary give that primary the same data under a new history. Replicas
of the old history are refused by the new primary (FAILED_PRECONDITION) and are re-created
empty, which bootstraps them from its snapshot.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from kevo_repl.client.client import Client
from kevo_repl.config import Config
from kevo_repl.errors import KevoReplError
from kevo_repl.plugin.manager import Registry
from kevo_repl.protocol.codec import Op
from kevo_repl.storage.applier import Applier
from kevo_repl.storage.store import lock_data_dir, open_store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RebuildResult:
    #: the replica's position: its store holds every entry up to here
    replica_sequence: int
    keys: int
    #: the new primary's sequences the copy took
    first_sequence: int
    last_sequence: int


def rebuild_primary(
    replica_cfg: Config, registry: Registry, target: str, *, batch_bytes: int, timeout: float
) -> RebuildResult:
    """Write every key of the stopped replica at `replica_cfg.data_dir` to the empty primary
    at `target`, in write batches of about `batch_bytes`."""
    if batch_bytes < 1:
        raise KevoReplError(f"batch bytes must be positive, not {batch_bytes}")
    lock = lock_data_dir(replica_cfg.data_dir)  # refuses a replica that is still running
    try:
        store = open_store(replica_cfg, registry, durable=False)
        try:
            # the replica's [connector] table says how to reach a primary (TLS, token)
            with Client(target, timeout=timeout, connector=replica_cfg.connector) as client:
                head = int(client.status().get("head_sequence", 0))
                if head:
                    # Mixing the copy into a primary with writes of its own would hide them.
                    raise KevoReplError(
                        f"{target} is not empty (head sequence {head}); start the new "
                        "primary on an empty data directory"
                    )
                return _copy(store, client, batch_bytes)
        finally:
            store.close()
    finally:
        os.close(lock)


def _copy(store: Applier, client: Client, batch_bytes: int) -> RebuildResult:
    keys = first = last = 0
    batch: list[tuple[int, bytes, bytes]] = []
    size = 0
    with store.snapshot() as snap:
        sequence = snap.position.sequence
        for key, value in snap.items():
            batch.append((Op.PUT, key, value))
            size += len(key) + len(value)
            if size >= batch_bytes:
                f, last = client.write(batch)
                first = first or f
                keys += len(batch)
                batch, size = [], 0
        if batch:
            f, last = client.write(batch)
            first = first or f
            keys += len(batch)
    log.info("copied %d keys of a replica at sequence %d into sequences %d..%d",
             keys, sequence, first, last)
    return RebuildResult(sequence, keys, first, last)
