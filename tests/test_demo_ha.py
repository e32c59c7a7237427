"""`kevo-repl demo --ha` as a user runs it: exit code, the story it tells, nothing left."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path


def test_ha_demo_fails_over_and_ends_with_equal_digests(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "kevo_repl", "--log-level", "WARNING", "demo", "--ha",
         "--count", "1000", "--dir", str(tmp_path / "demo")],
        capture_output=True, text=True, timeout=300,
    )
    out = res.stdout
    assert res.returncode == 0, out + res.stderr
    assert "SIGKILL" in out and "elected:" in out and "epoch 2" in out
    assert "rejoined as a replica" in out and "RESULT: OK" in out
    digests = set(re.findall(r"digest ([0-9a-f]{64})", out))
    assert len(digests) == 1
    for pid in map(int, re.findall(r"\d+", out.splitlines()[-1])):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        stat = Path(f"/proc/{pid}/stat").read_text().split()[2]
        assert stat == "Z", f"process {pid} was left running"
