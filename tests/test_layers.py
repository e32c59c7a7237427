"""The core package keeps its layers: import-linter contracts, no reach-ins, no tooling."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "kevo_repl"


def test_import_contracts_hold() -> None:
    """pyproject.toml's [tool.importlinter] contracts: layers, and no tooling in the core."""
    lint = Path(sys.executable).parent / "lint-imports"
    proc = subprocess.run([str(lint), "--config", str(ROOT / "pyproject.toml")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


def _defined_private_names(tree: ast.Module) -> set[str]:
    """Private names a module defines itself: functions, classes, attributes it assigns."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return {n for n in names if n.startswith("_")}


def reach_ins(root: Path) -> list[str]:
    """Uses of another module's private names: `obj._name` where this module does not define
    `_name` itself, and `from kevo_repl.x import _name`."""
    found = []
    for path in sorted(root.rglob("*.py")):
        if "_pb2" in path.name:
            continue
        tree = ast.parse(path.read_text())
        own = _defined_private_names(tree)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                    and not node.attr.startswith("__") and node.attr not in own):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("kevo_repl"):
                found += [f"{path.relative_to(ROOT)}:{node.lineno}: imports {node.module}.{a.name}"
                          for a in node.names if a.name.startswith("_")]
    return found


def test_no_module_touches_another_modules_private_names() -> None:
    assert reach_ins(CORE) == []


def test_reach_in_check_finds_one(tmp_path: Path) -> None:
    """The check above can fail: a module using another's private attribute is reported."""
    (tmp_path / "a.py").write_text("class A:\n    def __init__(self):\n        self._x = 1\n")
    (tmp_path / "b.py").write_text("def f(a):\n    return a._x\n")
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        assert reach_ins(tmp_path) == ["b.py:2: a._x"]
    finally:
        ROOT = saved


def test_cli_start_imports_no_tooling() -> None:
    """`kevo-repl` builds its parser without importing the demo, bench or chaos modules."""
    code = (
        "import sys\n"
        "from kevo_repl.cli.main import build_parser\n"
        "build_parser()\n"
        "print(','.join(sorted(m for m in sys.modules if m.startswith('kevo_repl_tools.')"
        " or m == 'rich'"
        " or m.startswith(('kevo_repl_lmdb', 'kevo_repl_leveldb', 'kevo_repl_sqlite')))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout.strip()
    assert out in ("", "kevo_repl_tools.commands"), out


@pytest.mark.timeout(300)
def test_core_wheel_holds_no_tooling(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path),
                    str(ROOT)], check=True, timeout=280, capture_output=True)
    wheels = list(tmp_path.glob("kevo_repl-*.whl"))
    assert len(wheels) == 1, wheels
    with zipfile.ZipFile(wheels[0]) as zf:
        names = zf.namelist()
        metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
        requires = [line for line in zf.read(metadata).decode().splitlines()
                    if line.startswith("Requires-Dist:") and "extra ==" not in line]
    modules = [n for n in names if n.endswith(".py")]
    assert "kevo_repl/replica/replica.py" in modules
    tooling = ("demo", "bench", "chaos", "faultproxy", "launcher")
    assert [n for n in modules if any(t in n for t in tooling)] == []
    assert not [n for n in names if n.startswith("kevo_repl_tools")]
    assert not [r for r in requires if "rich" in r], requires
