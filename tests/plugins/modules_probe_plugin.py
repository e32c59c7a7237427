"""Test plugin: at a node's first applied batch, writes the names of every module the process
has imported (JSON list) to the file named by $KEVO_TEST_MODULES_FILE. Loaded into node
processes through $KEVO_REPL_PLUGINS."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from kevo_repl import hookimpl

_path = os.environ.get("KEVO_TEST_MODULES_FILE")


@hookimpl
def kevo_repl_batch_applied(node: str, first_seq: int, last_seq: int, count: int) -> None:
    if _path is None or Path(_path).exists():
        return
    tmp = Path(_path + ".tmp")
    tmp.write_text(json.dumps(sorted(sys.modules)))
    tmp.rename(_path)  # whole or absent: the test never reads half a list
