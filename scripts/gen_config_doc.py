"""Write docs/configuration.md: every TOML section and key with its default and meaning,
read from kevo_repl/config.py (the dataclasses and their `#:` comments).

Usage: python scripts/gen_config_doc.py [OUT]   (default docs/configuration.md)
A test fails when the checked-in file is stale.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kevo_repl import config  # noqa: E402  # after the path is set


def _comments() -> dict[tuple[str, str], str]:
    """(class name, field) -> the `#:` comment lines right above the field."""
    source = (ROOT / "kevo_repl" / "config.py").read_text()
    lines = source.splitlines()
    out: dict[tuple[str, str], str] = {}
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ClassDef):
            continue
        for stmt in node.body:
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                doc: list[str] = []
                i = stmt.lineno - 2
                while i >= 0 and lines[i].strip().startswith("#:"):
                    doc.insert(0, lines[i].strip()[2:].strip())
                    i -= 1
                out[(node.name, stmt.target.id)] = " ".join(doc)
    return out


def _class_doc(cls: type) -> str:
    doc = cls.__doc__ or ""
    return "" if doc.startswith(cls.__name__ + "(") else " ".join(doc.split())


def render() -> str:
    comments = _comments()
    cfg = config.Config()
    out = [
        "# Configuration reference",
        "",
        "Generated from `kevo_repl/config.py` by `python scripts/gen_config_doc.py`; a test "
        "fails when it is stale. Every key is optional: the default is used when a key or a "
        "whole section is left out, so `kevo-repl demo` and a bare `kevo-repl primary` need no "
        "file. Command-line flags (`--data-dir`, `--listen`, `--applier`, `--primary`, "
        "`--replica-id`, `--metrics`) override the file. An unknown section or key, or a value "
        "of the wrong type, is an error that names it.",
        "",
    ]
    for section in dataclasses.fields(cfg):
        value = getattr(cfg, section.name)
        cls = type(value)
        out.append(f"## [{section.name}]")
        out.append("")
        doc = _class_doc(cls)
        if doc:
            out += [doc, ""]
        out.append("| key | default | meaning |")
        out.append("|---|---|---|")
        for f in dataclasses.fields(value):
            default = getattr(value, f.name)
            shown = "{}" if default == {} else json.dumps(default)
            meaning = comments.get((cls.__name__, f.name), "") or "—"
            out.append(f"| `{f.name}` | `{shown}` | {meaning} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "configuration.md"
    target.write_text(render())
