"""docs/configuration.md documents every configuration key with its default and meaning."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

from kevo_repl.config import Config

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "configuration.md"


def test_reference_is_fresh(tmp_path: Path) -> None:
    out = tmp_path / "configuration.md"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_config_doc.py"), str(out)],
                   check=True, timeout=60)
    assert DOC.read_text() == out.read_text(), "run: python scripts/gen_config_doc.py"


def test_every_key_is_documented_with_a_meaning() -> None:
    text = DOC.read_text()
    cfg = Config()
    for section in dataclasses.fields(cfg):
        assert f"## [{section.name}]" in text
        for f in dataclasses.fields(getattr(cfg, section.name)):
            rows = [ln for ln in text.splitlines() if ln.startswith(f"| `{f.name}` |")]
            assert rows, f"[{section.name}] {f.name} is not documented"
            assert not any(row.endswith("| — |") for row in rows), (
                f"[{section.name}] {f.name} has no `#:` comment in kevo_repl/config.py"
            )
