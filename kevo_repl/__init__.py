"""kevo-repl: replicate a primary's write-ahead log to replicas over gRPC."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kevo_repl.plugin.manager import get_plugin_manager, hookimpl
from kevo_repl.protocol.codec import Op

if TYPE_CHECKING:
    from kevo_repl.node.embedded import EmbeddedPrimary, open_primary

__all__ = ["EmbeddedPrimary", "Op", "get_plugin_manager", "hookimpl", "open_primary"]


def __getattr__(name: str) -> Any:
    # imported on first use: a process that only replicates never loads the embedded API
    if name in ("open_primary", "EmbeddedPrimary"):
        from kevo_repl.node import embedded

        return getattr(embedded, name)
    raise AttributeError(f"module 'kevo_repl' has no attribute {name!r}")
