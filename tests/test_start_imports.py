"""A node imports only what it uses: its own engine's plugin, not every one installed
(start-up time, docs/DESIGN.md "Start-up"). Checked in real replica processes, at their
first applied batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import Cluster
from helpers import load, wait_until

#: each engine plugin's modules and the store library it brings
ENGINE_MODULES = {
    "lmdb": ("kevo_repl_lmdb", "lmdb"),
    "leveldb": ("kevo_repl_leveldb", "plyvel"),
    "sqlite": ("kevo_repl_sqlite",),
    "memory": ("kevo_repl_example",),
}


def _imported_at_first_apply(tmp_path: Path, applier: str) -> set[str]:
    probe = tmp_path / "modules.json"
    cluster = Cluster(tmp_path, "lmdb")
    try:
        primary = cluster.primary()
        load(primary.address, 100, batch=100)
        env = {**cluster.env(), "KEVO_REPL_PLUGINS": "modules_probe_plugin",
               "KEVO_TEST_MODULES_FILE": str(probe)}
        cluster.replica(primary, applier=applier, env=env)
        wait_until(probe.exists, 60.0, "the replica's first applied batch")
    finally:
        cluster.close()
    return set(json.loads(probe.read_text()))


@pytest.mark.parametrize("applier", ["lmdb", "leveldb"])
def test_replica_start_imports_no_other_engines_plugin(tmp_path: Path, applier: str) -> None:
    modules = _imported_at_first_apply(tmp_path, applier)
    own = ENGINE_MODULES[applier][0]
    assert own in modules  # the probe sees the process's imports
    others = {
        m for name, mods in ENGINE_MODULES.items() if name != applier for m in mods
        for imported in modules if imported == m or imported.startswith(m + ".")
    }
    assert not others, f"a {applier} replica imported {sorted(others)}"
    # nor a codec library no stream of it uses (these nodes compress nothing)
    assert not {"zstandard", "cramjam"} & modules
    # nor the primary's modules (a replica has no use for them)
    assert not {m for m in modules if m.startswith("kevo_repl.primary")}
    # nor the tooling, beyond the small module adding its CLI commands (test_layers.py)
    tooling = {m for m in modules if m.startswith("kevo_repl_tools")}
    assert tooling <= {"kevo_repl_tools", "kevo_repl_tools.commands"}, tooling


def _fake_distribution(site: Path, name: str, module: str, source: str, declares: str) -> None:
    """An installed distribution (dist-info) with a `kevo_repl` entry point `name` = `module`,
    declaring the appliers in `declares` (comma-separated; empty: declares none)."""
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{module}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    groups = f"[kevo_repl]\n{name} = {module}\n"
    if declares:
        groups += "[kevo_repl.appliers]\n" + "".join(
            f"{a} = {module}\n" for a in declares.split(","))
    (info / "entry_points.txt").write_text(groups)


_GHOST = """
    from kevo_repl import hookimpl
    from kevo_repl_example.memory import SPEC

    @hookimpl
    def kevo_repl_register_appliers(register):
        register("ghost", SPEC)
"""

_ENGINE_WITH_CODEC = """
    from kevo_repl import hookimpl
    from kevo_repl.plugin.default_plugins.compressors import NoCompression
    from kevo_repl_example.memory import SPEC

    class Codec(NoCompression):
        codec_id = 99

    @hookimpl
    def kevo_repl_register_appliers(register):
        register("other", SPEC)

    @hookimpl
    def kevo_repl_register_compressors(register):
        register("zz", Codec())
"""

_NODE_PROBE = """
    import sys
    from kevo_repl.plugin.manager import build_node_registry
    needs = {"compressor": sys.argv[2]} if len(sys.argv) > 2 else None
    pm, registry = build_node_registry(sys.argv[1], needs)
    print(",".join(registry.names("applier")))
    print(",".join(sorted(m for m in sys.modules if m.startswith("fake_"))))
"""


def _node_probe(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEVO_REPL_")}
    env["PYTHONPATH"] = os.pathsep.join([str(site), *sys.path])
    return subprocess.run([sys.executable, "-c", textwrap.dedent(_NODE_PROBE), *args],
                          capture_output=True, text=True, timeout=60, env=env)


def test_node_skips_engines_declaring_other_appliers(tmp_path: Path) -> None:
    # an engine plugin declaring another applier is never imported: its import would fail
    _fake_distribution(tmp_path, "broken", "fake_broken", "raise ImportError('libfoo')\n",
                       declares="broken")
    res = _node_probe(tmp_path, "lmdb")
    assert res.returncode == 0, res.stderr
    appliers, imported = res.stdout.splitlines()
    assert appliers == "lmdb" and imported == ""
    # a node using that applier does import it, and reports its failure
    res = _node_probe(tmp_path, "broken")
    assert res.returncode != 0
    assert "plugin 'broken' (distribution fake_broken) failed to import: libfoo" in res.stderr


def test_node_loads_undeclared_plugins_and_finds_undeclared_appliers(tmp_path: Path) -> None:
    _fake_distribution(tmp_path, "ghostplug", "fake_ghost", _GHOST, declares="")
    # a plugin declaring nothing may implement any hook: every node loads it
    res = _node_probe(tmp_path, "lmdb")
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["ghost,lmdb", "fake_ghost"]
    # an applier registered under a name nothing declares is found all the same
    res = _node_probe(tmp_path, "ghost")
    assert res.returncode == 0, res.stderr
    assert "ghost" in res.stdout.splitlines()[0].split(",")


def test_a_configured_backend_of_a_skipped_engine_plugin_loads_everything(
    tmp_path: Path,
) -> None:
    _fake_distribution(tmp_path, "other", "fake_other", _ENGINE_WITH_CODEC, declares="other")
    res = _node_probe(tmp_path, "lmdb")
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["lmdb", ""]  # skipped: nothing of it is needed
    # a node configured with its compressor gets it (and so every plugin is loaded)
    res = _node_probe(tmp_path, "lmdb", "zz")
    assert res.returncode == 0, res.stderr
    appliers, imported = res.stdout.splitlines()
    assert "other" in appliers.split(",") and imported == "fake_other"


def test_unknown_applier_still_lists_every_one_and_names_its_distribution() -> None:
    from kevo_repl.errors import ConfigError
    from kevo_repl.plugin.manager import build_node_registry

    _pm, registry = build_node_registry("nosuch")
    with pytest.raises(ConfigError, match=r"unknown applier 'nosuch'; available: .*leveldb.*lmdb"):
        registry.get("applier", "nosuch")
