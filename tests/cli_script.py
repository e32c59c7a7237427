"""Run the installed `kevo-repl` console script, as an operator does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

KEVO_REPL = str(Path(sys.executable).parent / "kevo-repl")


def run(*args: str | bytes, input: bytes | None = None,
        timeout: float = 60.0) -> subprocess.CompletedProcess[bytes]:
    """The script with `args` (bytes pass through undecoded), output as bytes."""
    return subprocess.run([KEVO_REPL, "--log-level", "WARNING", *args], input=input,
                          capture_output=True, timeout=timeout)
