"""kevo-repl-lmdb: the ``lmdb`` applier, registered through the ``kevo_repl`` entry point."""

from __future__ import annotations

from typing import Any

from kevo_repl.plugin.manager import hookimpl

from .applier import LMDBApplier, LMDBSnapshot, open_applier
from .options import LMDBOptions, parse_options

__all__ = [
    "LMDBApplier",
    "LMDBOptions",
    "LMDBSnapshot",
    "kevo_repl_register_appliers",
    "open_applier",
    "parse_options",
]


@hookimpl
def kevo_repl_register_appliers(register: Any) -> None:
    register("lmdb", open_applier)
