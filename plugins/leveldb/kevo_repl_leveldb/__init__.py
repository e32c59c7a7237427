"""kevo-repl-leveldb: the ``leveldb`` engine, registered through the ``kevo_repl`` entry point."""

from __future__ import annotations

from kevo_repl.plugin.manager import hookimpl
from kevo_repl.plugin.registrars import ApplierRegistrar

from .applier import MAX_KEY_SIZE, SPEC, LevelDBEngine, LevelDBSnapshot, open_engine
from .options import LevelDBOptions, parse_options

__all__ = [
    "MAX_KEY_SIZE",
    "SPEC",
    "LevelDBEngine",
    "LevelDBOptions",
    "LevelDBSnapshot",
    "kevo_repl_register_appliers",
    "open_engine",
    "parse_options",
]


@hookimpl
def kevo_repl_register_appliers(register: ApplierRegistrar) -> None:
    register("leveldb", SPEC)
