"""kevo-repl-leveldb: the ``leveldb`` applier, registered through the ``kevo_repl`` entry point."""

from __future__ import annotations

from kevo_repl.plugin.manager import hookimpl
from kevo_repl.plugin.registrars import ApplierRegistrar

from .applier import MAX_KEY_SIZE, LevelDBApplier, LevelDBSnapshot, open_applier
from .options import LevelDBOptions, parse_options

__all__ = [
    "MAX_KEY_SIZE",
    "LevelDBApplier",
    "LevelDBOptions",
    "LevelDBSnapshot",
    "kevo_repl_register_appliers",
    "open_applier",
    "parse_options",
]


@hookimpl
def kevo_repl_register_appliers(register: ApplierRegistrar) -> None:
    register("leveldb", open_applier)
