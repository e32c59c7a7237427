"""`kevo-repl demo` as a user runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_demo_replicates_and_digests_match(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "kevo_repl", "--log-level", "WARNING", "demo",
         "--dir", str(tmp_path / "demo")],
        capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "OK: digests match" in res.stdout
    lines = [ln for ln in res.stdout.splitlines() if "digest:" in ln]
    assert len(lines) == 2
    assert lines[0].split("digest:")[1] == lines[1].split("digest:")[1]
