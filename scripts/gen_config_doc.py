"""Write docs/configuration.md from the configuration schema: every TOML section and key with
what it accepts, its default and its meaning, as declared in kevo_repl/config.py, and the
`[applier.options]` the built-in appliers declare (plugins/*/kevo_repl_*/options.py).

Usage: python scripts/gen_config_doc.py [OUT]   (default docs/configuration.md)
A test fails when the checked-in file is stale.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# after the path is set
from kevo_repl_leveldb.options import LevelDBOptions  # noqa: E402
from kevo_repl_lmdb.options import LMDBOptions  # noqa: E402
from kevo_repl_sqlite.options import SQLiteOptions  # noqa: E402

from kevo_repl import config, schema  # noqa: E402

#: the built-in appliers' declared options, documented under [applier.options]
APPLIER_OPTIONS: dict[str, type[Any]] = {
    "lmdb": LMDBOptions,
    "leveldb": LevelDBOptions,
    "sqlite": SQLiteOptions,
}


def _class_doc(cls: type) -> str:
    doc = cls.__doc__ or ""
    return "" if doc.startswith(cls.__name__ + "(") else " ".join(doc.split())


def _table(cls: type[Any]) -> list[str]:
    out = ["| key | accepts | default | meaning |", "|---|---|---|---|"]
    for f in schema.fields(cls).values():
        accepts = schema.describe(f.type).replace("|", "\\|")
        meaning = (f.description or "—").replace("|", "\\|")
        out.append(f"| `{f.name}` | {accepts} | `{schema.show_default(f.default)}` | {meaning} |")
    return out


def _section(title: str, cls: type[Any]) -> list[str]:
    out = [f"## {title}", ""]
    doc = _class_doc(cls)
    if doc:
        out += [doc, ""]
    return [*out, *_table(cls), ""]


def render() -> str:
    out = [
        "# Configuration reference",
        "",
        "Generated from the schema in `kevo_repl/config.py` (and the appliers' declared "
        "options) by `python scripts/gen_config_doc.py`; a test fails when it is stale. Every "
        "key is optional: the default is used when a key or a whole section is left out, so "
        "`kevo-repl demo` and a bare `kevo-repl primary` need no file. Command-line flags "
        "(`--data-dir`, `--listen`, `--applier`, `--primary`, `--replica-id`, `--metrics`) "
        "override the file. An unknown section or key, a value of the wrong type or out of "
        "range is an error that names the section, the key and what it accepts.",
        "",
    ]
    for section in dataclasses.fields(config.Config):
        out += _section(f"[{section.name}]", type(getattr(config.Config(), section.name)))
    for name, cls in APPLIER_OPTIONS.items():
        out += _section(f"[applier.options] of the {name} applier", cls)
    return "\n".join(out)


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "configuration.md"
    target.write_text(render())
