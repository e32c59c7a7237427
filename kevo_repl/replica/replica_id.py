"""The replica's own id when none is configured: derived once, kept in its data directory."""

from __future__ import annotations

import logging
from pathlib import Path

from kevo_repl.errors import ConfigError
from kevo_repl.identity import derive_replica_id, replica_id_problem
from kevo_repl.storage.store import write_file_atomically

log = logging.getLogger(__name__)

#: the file in a replica's data directory that keeps its derived id
REPLICA_ID_FILE = "replica_id"


def stored_replica_id(data_dir: Path) -> str:
    """The id kept in `data_dir`; derived and stored on first use. A damaged file is an error,
    never silently replaced: the primary's slot is keyed by this id."""
    path = data_dir / REPLICA_ID_FILE
    if path.exists():
        try:
            text = path.read_bytes().decode("utf-8", errors="replace").strip()
        except OSError as exc:
            raise ConfigError(f"{path} is unreadable ({exc}); pass --replica-id") from exc
        problem = replica_id_problem(text)
        if problem is not None:
            raise ConfigError(
                f"{path} is damaged: {problem}; fix or remove the file, or pass --replica-id"
            )
        return text
    replica_id = derive_replica_id()
    data_dir.mkdir(parents=True, exist_ok=True)
    write_file_atomically(path, (replica_id + "\n").encode())
    log.info("no replica id configured: derived %r and stored it in %s", replica_id, path)
    return replica_id
