"""docs/configuration.md documents every configuration key, from the schema."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from kevo_repl_leveldb.options import LevelDBOptions
from kevo_repl_lmdb.options import LMDBOptions
from kevo_repl_sqlite.options import SQLiteOptions

from kevo_repl import schema
from kevo_repl.config import Config

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "configuration.md"
SECTIONS: list[tuple[str, type[Any]]] = [
    *((f"[{f.name}]", type(getattr(Config(), f.name))) for f in dataclasses.fields(Config)),
    ("[applier.options] of the lmdb applier", LMDBOptions),
    ("[applier.options] of the leveldb applier", LevelDBOptions),
    ("[applier.options] of the sqlite applier", SQLiteOptions),
]


def test_reference_is_fresh(tmp_path: Path) -> None:
    out = tmp_path / "configuration.md"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_config_doc.py"), str(out)],
                   check=True, timeout=60)
    assert DOC.read_text() == out.read_text(), "run: python scripts/gen_config_doc.py"


@pytest.mark.parametrize(("title", "cls"), SECTIONS, ids=[t for t, _ in SECTIONS])
def test_every_key_is_documented_with_what_it_accepts_and_a_meaning(
    title: str, cls: type[Any]
) -> None:
    text = DOC.read_text()
    assert f"## {title}\n" in text
    part = text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    declared = schema.fields(cls)
    assert declared, f"{title} declares no keys"
    for f in declared.values():
        assert f.description, f"{title} {f.name} has no Meta(description=...) in its schema"
        rows = [ln for ln in part.splitlines() if ln.startswith(f"| `{f.name}` |")]
        assert len(rows) == 1, f"{title} {f.name} is not documented"
        accepts = schema.describe(f.type).replace("|", "\\|")
        assert f"| {accepts} | `{schema.show_default(f.default)}` |" in rows[0]
    documented = [ln.split("`")[1] for ln in part.splitlines() if ln.startswith("| `")]
    assert documented == list(declared), f"{title} documents keys it does not declare"
