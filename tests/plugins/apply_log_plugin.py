"""Test plugin: records every batch a node applies, one line per batch, to the file named by
$KEVO_TEST_APPLY_LOG. Loaded into node processes through $KEVO_REPL_PLUGINS."""

from __future__ import annotations

import os

from kevo_repl import hookimpl

_path = os.environ.get("KEVO_TEST_APPLY_LOG")
# line-buffered append: each line reaches the OS at once, so SIGKILL loses no completed line
_fh = open(_path, "a", buffering=1) if _path else None  # noqa: SIM115  # lives as long as the node


@hookimpl
def kevo_repl_batch_applied(node: str, first_seq: int, last_seq: int, count: int) -> None:
    if _fh is not None:
        _fh.write(f"{node} {first_seq} {last_seq} {count}\n")


@hookimpl
def kevo_repl_state_changed(node: str, old: str, new: str, reason: str) -> None:
    if _fh is not None:
        _fh.write(f"# state {node} {old} {new}\n")
