"""The plugin manager, the registry of named backends, and the hookspecs' own honesty."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from kevo_repl.errors import ConfigError, PluginError
from kevo_repl.plugin import hookspecs
from kevo_repl.plugin.engine import EngineSpec
from kevo_repl.plugin.manager import build_registry, get_plugin_manager, hookimpl
from kevo_repl.plugin.registrars import (
    ApplierRegistrar,
    CompressorRegistrar,
    ConnectorRegistrar,
)

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


class _Codec:
    """A compressor meeting the protocol (an identity codec)."""

    def __init__(self, codec_id: int) -> None:
        self.codec_id = codec_id

    def compress(self, data: bytes) -> bytes:
        return data

    def decompress(self, data: bytes, max_size: int) -> bytes:
        return data


def _link(address: str, options: Mapping[str, Any]) -> object:
    return object()


class _ThreeKinds:
    """A plugin object (not a module) implementing every registration hook."""

    replacement = _Codec(0)
    codec = _Codec(77)

    spec = EngineSpec(open=lambda path, options, durable: None, owns_file=None)  # type: ignore[arg-type,return-value]  # never opened

    @hookimpl
    def kevo_repl_register_appliers(self, register: ApplierRegistrar) -> None:
        register("test-store", self.spec)

    @hookimpl
    def kevo_repl_register_compressors(self, register: CompressorRegistrar) -> None:
        register("none", self.replacement)  # a replacement for the built-in
        register("test-codec", self.codec)

    @hookimpl
    def kevo_repl_register_connectors(self, register: ConnectorRegistrar) -> None:
        register("test-link", _link)


def test_registration_hooks_register_named_backends_of_each_kind() -> None:
    """kevo_repl_register_appliers, kevo_repl_register_compressors and
    kevo_repl_register_connectors each fill their own kind; later registrations win."""
    pm = get_plugin_manager(load_entry_points=False)
    pm.register(_ThreeKinds(), name="three-kinds")
    reg = build_registry(pm)
    assert reg.get("applier", "test-store") is _ThreeKinds.spec
    assert reg.get("compressor", "test-codec") is _ThreeKinds.codec
    assert reg.get("compressor", "none") is _ThreeKinds.replacement
    assert reg.get("connector", "test-link") is _link
    assert "grpc" in reg.names("connector")
    plugins = {(r.kind, r.name): r.plugin for r in reg.all()}
    assert plugins[("applier", "test-store")] == "three-kinds"
    assert plugins[("compressor", "none")] == "three-kinds"
    assert reg.label("compressor", "test-codec") == (
        "compressor 'test-codec' of plugin 'three-kinds' (distribution kevo-repl)"
    )


def test_registration_hook_that_raises_is_named() -> None:
    class Failing:
        @hookimpl
        def kevo_repl_register_connectors(self, register: ConnectorRegistrar) -> None:
            raise RuntimeError("cannot find libssh")

    pm = get_plugin_manager(load_entry_points=False)
    pm.register(Failing(), name="failing-plugin")
    with pytest.raises(
        PluginError, match=r"'failing-plugin'.*kevo_repl_register_connectors: cannot find libssh"
    ):
        build_registry(pm)


def test_registering_without_a_name_is_refused() -> None:
    class Nameless:
        @hookimpl
        def kevo_repl_register_appliers(self, register: ApplierRegistrar) -> None:
            register("", object())  # type: ignore[arg-type]

    pm = get_plugin_manager(load_entry_points=False)
    pm.register(Nameless(), name="nameless")
    with pytest.raises(PluginError, match=r"'nameless' registered .*with no name"):
        build_registry(pm)


class _OneArgDecompress:
    """The compressor docs/plugins.md once showed: decompress without max_size."""

    codec_id = 100

    def compress(self, data: bytes) -> bytes:
        return data

    def decompress(self, data: bytes) -> bytes:
        return data


class _NoDecompress:
    codec_id = 101

    def compress(self, data: bytes) -> bytes:
        return data


class _TextCodecId(_Codec):
    codec_id = "7"  # type: ignore[assignment]

    def __init__(self) -> None:
        pass


def _two_arg_factory(path: Path, options: object) -> None:
    return None


def _one_arg_connector(address: str) -> object:
    return object()


# (kind, object registered, what the error says)
WRONG_REGISTRATIONS = {
    "decompress-without-max_size": (
        "compressor", _OneArgDecompress(), r"decompress must accept \(data, max_size\)"
    ),
    "no-decompress": ("compressor", _NoDecompress(), r"has no decompress"),
    "codec-id-text": ("compressor", _TextCodecId(), r"codec_id is a str, not an int"),
    "codec-id-negative": ("compressor", _Codec(-1), r"codec_id -1 is outside"),
    "applier-factory-two-args": (
        "applier", EngineSpec(open=_two_arg_factory, owns_file=None),  # type: ignore[arg-type]
        r"must accept \(path, options, durable\)",
    ),
    "applier-not-an-engine-spec": (
        "applier", "lmdb", r"registers a kevo_repl.plugin.engine.EngineSpec, not a str"
    ),
    "applier-other-contract-version": (
        "applier", EngineSpec(open=lambda p, o, d: None, owns_file=None, api_version=2),  # type: ignore[arg-type,return-value]
        r"implements engine contract version 2",
    ),
    "connector-one-arg": ("connector", _one_arg_connector, r"must accept \(address, options\)"),
}


@pytest.mark.parametrize("case", WRONG_REGISTRATIONS.values(), ids=WRONG_REGISTRATIONS.keys())
def test_registration_not_meeting_its_protocol_is_refused_at_load_time(
    case: tuple[str, object, str]
) -> None:
    kind, obj, problem = case

    class Wrong:
        @hookimpl
        def kevo_repl_register_appliers(self, register: Any) -> None:
            if kind == "applier":
                register("wrong", obj)

        @hookimpl
        def kevo_repl_register_compressors(self, register: Any) -> None:
            if kind == "compressor":
                register("wrong", obj)

        @hookimpl
        def kevo_repl_register_connectors(self, register: Any) -> None:
            if kind == "connector":
                register("wrong", obj)

    pm = get_plugin_manager(load_entry_points=False)
    pm.register(Wrong(), name="wrong-plugin")
    with pytest.raises(
        PluginError,
        match=rf"plugin 'wrong-plugin' \(distribution kevo-repl\) registered {kind} 'wrong' "
        rf"that does not meet the {kind} protocol: .*{problem}",
    ):
        build_registry(pm)


def test_shipped_registrations_all_meet_their_protocols() -> None:
    """Every registration the installed distributions make passes its check (or none loads)."""
    reg = build_registry()
    kinds = {r.kind for r in reg.all()}
    assert kinds == {"applier", "compressor", "connector"}
    assert {"lmdb", "leveldb", "memory"} <= set(reg.names("applier"))


def test_env_plugin_is_listed_as_loaded_through_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A module from $KEVO_REPL_PLUGINS is named by where it came from, never as a part of
    kevo-repl's own distribution."""
    monkeypatch.syspath_prepend(PLUGINS)
    monkeypatch.setenv("KEVO_REPL_PLUGINS", "extra_compressor_plugin,kevo_repl_tools.chaos_plugins")
    reg = build_registry()
    dists = {(r.kind, r.name): r.distribution for r in reg.all()}
    assert dists[("compressor", "reverse")] == "$KEVO_REPL_PLUGINS"
    assert dists[("applier", "faulty-lmdb")] == "$KEVO_REPL_PLUGINS"
    assert dists[("applier", "lmdb")] == "kevo-repl-lmdb"
    assert reg.label("compressor", "reverse") == (
        "compressor 'reverse' of plugin 'extra_compressor_plugin' "
        "(loaded through $KEVO_REPL_PLUGINS)"
    )
