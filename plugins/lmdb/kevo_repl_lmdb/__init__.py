"""kevo-repl-lmdb: the ``lmdb`` engine, registered through the ``kevo_repl`` entry point."""

from __future__ import annotations

from kevo_repl.plugin.manager import hookimpl
from kevo_repl.plugin.registrars import ApplierRegistrar

from .applier import SPEC, LMDBEngine, LMDBSnapshot, open_engine
from .options import LMDBOptions, parse_options

__all__ = [
    "SPEC",
    "LMDBEngine",
    "LMDBOptions",
    "LMDBSnapshot",
    "kevo_repl_register_appliers",
    "open_engine",
    "parse_options",
]


@hookimpl
def kevo_repl_register_appliers(register: ApplierRegistrar) -> None:
    register("lmdb", SPEC)
