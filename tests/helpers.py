"""Shared checks for the end-to-end tests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from kevo_repl_tools.launcher import NodeProcess, caught_up, wait_until


def cli(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kevo_repl", "--log-level", "WARNING", *args],
        capture_output=True, text=True, timeout=timeout,
    )


def load(target: str, count: int, *, start: int = 0, batch: int = 1000) -> dict[str, object]:
    res = cli("load", "--target", target, "--count", str(count), "--start", str(start),
              "--batch", str(batch))
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["entries"] == count
    return summary


def wait_caught_up(primary: NodeProcess, *replicas: NodeProcess, timeout: float = 60.0) -> None:
    wait_until(lambda: caught_up(primary, replicas), timeout, "replicas to catch up")


def assert_same_digest(primary: NodeProcess, *replicas: NodeProcess) -> dict[str, object]:
    want = primary.digest()
    for r in replicas:
        got = r.digest()
        assert got == want, f"{r.data_dir}: {got} != primary {want}"
    return want


def read_apply_log(path: Path, node: str) -> list[tuple[int, int]]:
    """(first, last) of every batch `node` logged as applied, in log order."""
    out = []
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        parts = line.split()
        if len(parts) != 4 or parts[0] != node:
            continue
        first, last, count = int(parts[1]), int(parts[2]), int(parts[3])
        assert last - first + 1 == count, line
        out.append((first, last))
    return out


def assert_applied_at_most_once(ranges: list[tuple[int, int]]) -> None:
    seen_upto = 0
    for first, last in ranges:
        assert first == seen_upto + 1 or first > seen_upto, (
            f"batch {first}-{last} re-applies sequences at or below {seen_upto}"
        )
        seen_upto = last


def tamper_with_engine(store_dir: Path, applier: str, key: bytes, value: bytes) -> None:
    """Change one key in a stopped node's store through the engine's own API, leaving its
    position as it was: damage that replication did not cause and cannot see."""
    from kevo_repl.plugin.engine import OP_PUT
    from kevo_repl.plugin.manager import build_registry, get_plugin_manager

    spec = build_registry(get_plugin_manager()).get("applier", applier)
    engine = spec.open(store_dir, {}, True)
    try:
        meta = engine.read_meta()
        assert meta is not None
        engine.commit([OP_PUT], [key], [value], meta)
    finally:
        engine.close()
