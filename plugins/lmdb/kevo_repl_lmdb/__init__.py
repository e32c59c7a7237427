"""kevo-repl-lmdb: the ``lmdb`` applier, registered through the ``kevo_repl`` entry point."""

from __future__ import annotations

from kevo_repl.plugin.manager import hookimpl
from kevo_repl.plugin.registrars import ApplierRegistrar

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
def kevo_repl_register_appliers(register: ApplierRegistrar) -> None:
    register("lmdb", open_applier)
