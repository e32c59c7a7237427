"""The library's own exceptions."""

from __future__ import annotations


class KevoReplError(Exception):
    """Base of every error kevo-repl raises on purpose."""


class ConfigError(KevoReplError):
    """Bad configuration: a wrong value, an unknown key, or an unknown plugin name."""


class PluginError(KevoReplError):
    """A plugin that fails to load or registers something invalid."""


class StoreError(KevoReplError):
    """The local store failed or does not match what this node expects."""


class WALError(KevoReplError):
    """The write-ahead log is damaged beyond a torn tail, or misused."""


class ReplicationError(KevoReplError):
    """Replication cannot go on without an operator: divergence, or a position not retained."""


class StoreDamaged(StoreError):
    """The local store's files are damaged (the engine reported corruption, or the replication
    metadata it holds does not decode). `store` names the store's path. Never repaired by
    deleting data: a replica answers it by its `[replica] on_damage` policy."""

    def __init__(self, message: str, store: str = "") -> None:
        super().__init__(message)
        self.store = store
