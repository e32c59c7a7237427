"""kevo-repl-example: a third-party plugin registering the ``memory`` engine.

It exists to show (and to test) how a separately installed distribution plugs into
kevo-repl: its ``pyproject.toml`` declares this module under the ``kevo_repl`` entry-point
group, and ``kevo_repl.get_plugin_manager()`` finds it there; nothing imports it by name.
"""

from __future__ import annotations

from kevo_repl import hookimpl
from kevo_repl.plugin.registrars import ApplierRegistrar

from .memory import SPEC, MemoryEngine, open_engine

__all__ = ["SPEC", "MemoryEngine", "kevo_repl_register_appliers", "open_engine"]


@hookimpl
def kevo_repl_register_appliers(register: ApplierRegistrar) -> None:
    register("memory", SPEC)
