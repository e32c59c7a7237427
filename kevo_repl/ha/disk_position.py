"""A stopped node's durable position, read from its data directory without changing it.

An agent whose node is not running (just restarted, or between a rejoin and a start) must
still report where its node stands for an election: reporting 0 would let a less advanced
node win, and this one would then set aside entries a semi-sync write was acknowledged on.
"""

from __future__ import annotations

import copy
import os

from kevo_repl.config import Config
from kevo_repl.errors import KevoReplError
from kevo_repl.ha.node_dir import read_role
from kevo_repl.plugin.manager import Registry
from kevo_repl.storage.store import lock_data_dir, open_store
from kevo_repl.storage.wal_check import check_wal


def durable_position(cfg: Config, registry: Registry) -> int:
    """A primary's last good WAL sequence, a replica's store position; 0 for a directory
    that holds no node yet. Refuses (StoreError) while a node runs on the directory."""
    try:
        marker = read_role(cfg.data_dir)
    except KevoReplError:
        return 0  # a fresh directory
    lock = lock_data_dir(cfg.data_dir)
    try:
        if marker["role"] == "primary":
            return check_wal(cfg.data_dir).last_good_sequence
        cfg = copy.deepcopy(cfg)
        cfg.node.role = "replica"
        cfg.applier.name = marker["applier"] or cfg.applier.name
        store = open_store(cfg, registry, durable=True)
        try:
            return store.position().sequence
        finally:
            store.close()
    finally:
        os.close(lock)
