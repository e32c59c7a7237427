from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from kevo_repl_tools.launcher import NodeProcess

HERE = Path(__file__).parent
TEST_PLUGINS = HERE / "plugins"

#: Every replication test that uses the `cluster` fixture runs once per applier.
APPLIERS = ("lmdb", "leveldb")


class Cluster:
    """Node processes started by one test; all are killed at teardown.

    Nodes use `applier` unless a test passes another one (`applier=` to primary/replica).
    """

    def __init__(self, root: Path, applier: str = "lmdb") -> None:
        self.root = root
        self.applier = applier
        self.nodes: list[NodeProcess] = []

    def env(self, apply_log: Path | None = None) -> dict[str, str]:
        env = {"PYTHONPATH": os.pathsep.join([str(TEST_PLUGINS), *sys.path])}
        if apply_log is not None:
            env["KEVO_REPL_PLUGINS"] = "apply_log_plugin"
            env["KEVO_TEST_APPLY_LOG"] = str(apply_log)
        return env

    def primary(self, name: str = "primary", **kw: object) -> NodeProcess:
        kw.setdefault("env", self.env())
        kw.setdefault("applier", self.applier)
        node = NodeProcess("primary", self.root / name, **kw)  # type: ignore[arg-type]
        self.nodes.append(node)
        node.start()
        return node

    def replica(
        self, primary: NodeProcess, name: str = "replica", replica_id: str | None = "r1",
        **kw: object,
    ) -> NodeProcess:
        kw.setdefault("env", self.env())
        kw.setdefault("applier", self.applier)
        node = NodeProcess(
            "replica", self.root / name, primary=primary.address, replica_id=replica_id,
            **kw,  # type: ignore[arg-type]
        )
        self.nodes.append(node)
        node.start()
        return node

    def close(self) -> None:
        for node in self.nodes:
            node.kill()


@pytest.fixture(params=APPLIERS)
def applier(request: pytest.FixtureRequest) -> str:
    """The applier of the test's nodes; a test may override it with its own parametrize."""
    name: str = request.param
    return name


@pytest.fixture
def cluster(tmp_path: Path, applier: str) -> Iterator[Cluster]:
    c = Cluster(tmp_path, applier)
    try:
        yield c
    finally:
        c.close()
