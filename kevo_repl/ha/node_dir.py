"""What a data directory was made for (its `node.json`), read and rewritten on a role change."""

from __future__ import annotations

import json
from pathlib import Path

from kevo_repl.errors import KevoReplError
from kevo_repl.storage.store import NODE_FILE, write_file_atomically


def read_role(data_dir: Path) -> dict[str, str]:
    path = data_dir / NODE_FILE
    try:
        found = json.loads(path.read_text())
    except FileNotFoundError:
        raise KevoReplError(f"{data_dir} holds no node (no {NODE_FILE})") from None
    except (OSError, ValueError) as exc:
        raise KevoReplError(f"{path} is unreadable: {exc}") from exc
    if not isinstance(found, dict) or found.get("role") not in ("primary", "replica"):
        raise KevoReplError(f"{path} names no role")
    return {"role": str(found["role"]), "applier": str(found.get("applier", ""))}


def write_role(data_dir: Path, role: str, applier: str) -> None:
    write_file_atomically(
        data_dir / NODE_FILE, json.dumps({"role": role, "applier": applier}).encode()
    )
