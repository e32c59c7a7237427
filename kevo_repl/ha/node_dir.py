"""What a data directory was made for (its `node.json`), read and rewritten on a role change."""

from __future__ import annotations

import json
from pathlib import Path

from kevo_repl.errors import KevoReplError
from kevo_repl.storage.store import NODE_FILE, read_node_file, write_file_atomically


def read_role(data_dir: Path) -> dict[str, str]:
    path = data_dir / NODE_FILE
    if not path.exists():
        raise KevoReplError(f"{data_dir} holds no node (no {NODE_FILE})")
    return read_node_file(path)


def write_role(data_dir: Path, role: str, applier: str) -> None:
    write_file_atomically(
        data_dir / NODE_FILE, json.dumps({"role": role, "applier": applier}).encode()
    )
