"""The engine conformance suite: what a third-party engine's own tests run against it.

    # tests/test_conformance.py of your engine's distribution
    from kevo_repl.testing import EngineConformance

    class TestMyEngine(EngineConformance):
        engine = "my-engine"          # its registered name, or "package.module:SPEC"
        options = {"cache_size": 1}   # [applier.options] to open it with
        persistent = True             # requirement flags: see EngineConformance

Run it with pytest. It needs pytest (kevo-repl's ``test`` extra); nothing else in kevo-repl
imports this package.
"""

from __future__ import annotations

from kevo_repl.testing.conformance import EngineConformance
from kevo_repl.testing.workload import crash_batch, expected_after, resolve_spec

__all__ = ["EngineConformance", "crash_batch", "expected_after", "resolve_spec"]
