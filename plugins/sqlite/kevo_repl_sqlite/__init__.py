"""kevo-repl-sqlite: the ``sqlite`` engine (stdlib sqlite3), found through the ``kevo_repl``
entry point and built only on kevo-repl's public engine SDK."""

from __future__ import annotations

from kevo_repl.plugin.manager import hookimpl
from kevo_repl.plugin.registrars import ApplierRegistrar

from .engine import DB_FILE, SPEC, SQLiteEngine, SQLiteSnapshot, open_engine
from .options import SQLiteOptions

__all__ = ["DB_FILE", "SPEC", "SQLiteEngine", "SQLiteOptions", "SQLiteSnapshot", "open_engine"]
__all__ += ["kevo_repl_register_appliers"]


@hookimpl
def kevo_repl_register_appliers(register: ApplierRegistrar) -> None:
    """Register the engine as ``sqlite``."""
    register("sqlite", SPEC)
