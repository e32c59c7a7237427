"""kevo-repl: replicate a primary's write-ahead log to replicas over gRPC."""

from kevo_repl.plugin.manager import get_plugin_manager, hookimpl

__all__ = ["get_plugin_manager", "hookimpl"]
