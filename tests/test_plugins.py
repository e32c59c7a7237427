"""The plugin manager, the registry of named backends, and the hookspecs' own honesty."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

from kevo_repl import hookspecs
from kevo_repl.errors import ConfigError, PluginError
from kevo_repl.plugins import build_registry, get_plugin_manager

PLUGINS = str(Path(__file__).parent / "plugins")


def test_builtin_and_entry_point_plugins_are_registered() -> None:
    reg = build_registry()
    assert "none" in reg.names("compressor")
    assert "grpc" in reg.names("connector")
    assert "lmdb" in reg.names("applier")  # found through the kevo_repl entry-point group
    lmdb = next(r for r in reg.all() if r.kind == "applier" and r.name == "lmdb")
    assert lmdb.distribution == "kevo-repl-lmdb"


def test_unknown_name_lists_what_exists() -> None:
    reg = build_registry()
    with pytest.raises(ConfigError, match=r"unknown applier 'nope'; available: .*lmdb"):
        reg.get("applier", "nope")


def test_each_call_builds_a_fresh_manager() -> None:
    assert get_plugin_manager() is not get_plugin_manager()


def test_autoload_can_be_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEVO_REPL_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert "lmdb" not in build_registry().names("applier")


def test_plugins_can_be_blocked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEVO_REPL_BLOCK_PLUGINS", "lmdb")
    assert "lmdb" not in build_registry().names("applier")


def test_extra_plugin_modules_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(PLUGINS)
    monkeypatch.setenv("KEVO_REPL_PLUGINS", "extra_compressor_plugin")
    reg = build_registry()
    assert reg.get("compressor", "reverse").compress(b"ab") == b"ba"


def test_plugin_with_unknown_hook_is_named_in_the_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(PLUGINS)
    monkeypatch.setenv("KEVO_REPL_PLUGINS", "broken_hook_plugin")
    with pytest.raises(PluginError, match=r"broken_hook_plugin.*kevo_repl_no_such_hook"):
        get_plugin_manager()


def test_plugin_that_fails_to_import_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEVO_REPL_PLUGINS", "no_such_module_xyz")
    with pytest.raises(PluginError, match=r"no_such_module_xyz.*failed to import"):
        get_plugin_manager()


def test_plugins_command_lists_kind_name_distribution() -> None:
    res = subprocess.run([sys.executable, "-m", "kevo_repl", "plugins", "--json"],
                         capture_output=True, text=True, timeout=60, check=True)
    rows = {(r["kind"], r["name"]): r for r in json.loads(res.stdout)}
    assert rows[("applier", "lmdb")]["distribution"] == "kevo-repl-lmdb"
    assert rows[("connector", "grpc")]["distribution"] == "kevo-repl"


def test_every_hookspec_is_documented_with_its_parameters() -> None:
    specs = [f for n, f in vars(hookspecs).items() if n.startswith("kevo_repl_")]
    assert len(specs) >= 5
    for spec in specs:
        doc = inspect.getdoc(spec) or ""
        for param in inspect.signature(spec).parameters:
            assert f":param {param}:" in doc, f"{spec.__name__} does not document {param}"
