"""The shipped engines pass the exported conformance suite (kevo_repl.testing), exactly as a
third-party engine's own tests would run it."""

from __future__ import annotations

from typing import Any, ClassVar

from kevo_repl.testing import EngineConformance


class TestLMDB(EngineConformance):
    engine = "lmdb"
    options: ClassVar[dict[str, Any]] = {"map_size": 1 << 30}


class TestLevelDB(EngineConformance):
    engine = "leveldb"


class TestMemory(EngineConformance):
    engine = "kevo_repl_example:SPEC"  # by module path: no registry needed
    persistent = False  # it lives in the process: no reopen, no crash survival


class TestSQLite(EngineConformance):
    engine = "sqlite"
