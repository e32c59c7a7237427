"""The fault-injecting TCP proxy, now in the library (`kevo_repl_tools.faultproxy`); re-exported
here for the tests that import it from `proxy`."""

from __future__ import annotations

from kevo_repl_tools.faultproxy import FaultProxy

__all__ = ["FaultProxy"]
