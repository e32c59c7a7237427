"""Plugin manager and the registry of named backends.

``get_plugin_manager()`` builds a fresh manager each call (no module-level global): it adds
the hookspecs, registers the built-in default plugins, then loads the ``kevo_repl``
entry-point group and any modules named in ``KEVO_REPL_PLUGINS``. A node loads through
``build_node_registry(applier)``: engine plugins that declare (in the ``kevo_repl.appliers``
group) only other appliers are not imported at all, which keeps a node's start short.
``Registry`` collects what the registration hooks register, by kind and name, remembering
which plugin registered what; each registration is checked against its kind's protocol when made.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pluggy

from kevo_repl.errors import ConfigError, PluginError
from kevo_repl.plugin import hookspecs
from kevo_repl.plugin.guards import GuardedCompressor
from kevo_repl.plugin.registration_checks import CHECKS
from kevo_repl.protocol.compression import Compressor

log = logging.getLogger(__name__)

PROJECT = "kevo_repl"
hookimpl = pluggy.HookimplMarker(PROJECT)

#: comma-separated module names loaded as plugins, for plugins with no entry point
ENV_EXTRA_PLUGINS = "KEVO_REPL_PLUGINS"
#: set to 1 to load no entry-point plugins at all
ENV_DISABLE_AUTOLOAD = "KEVO_REPL_DISABLE_PLUGIN_AUTOLOAD"
#: comma-separated plugin names (entry-point or module names) never to load
ENV_BLOCK = "KEVO_REPL_BLOCK_PLUGINS"
#: entry-point group where an engine plugin declares the appliers it registers
#: (``applier-name = plugin.module``, the module of its ``kevo_repl`` entry point)
APPLIERS_GROUP = "kevo_repl.appliers"

KINDS = ("applier", "compressor", "connector")
_HOOK_OF_KIND = {
    "applier": "kevo_repl_register_appliers",
    "compressor": "kevo_repl_register_compressors",
    "connector": "kevo_repl_register_connectors",
}
_DEFAULT_PLUGIN_MODULES = (
    "kevo_repl.plugin.default_plugins.compressors",
    "kevo_repl.plugin.default_plugins.grpc_connector",
)


@dataclass(frozen=True)
class Registration:
    kind: str
    name: str
    obj: Any
    plugin: str
    distribution: str
    version: str

    @property
    def label(self) -> str:
        """How errors name it: the kind, name, plugin and distribution."""
        origin = (
            f"loaded through {self.distribution}" if self.distribution.startswith("$")
            else f"distribution {self.distribution}"
        )
        return f"{self.kind} {self.name!r} of plugin {self.plugin!r} ({origin})"


class KevoPluginManager(pluggy.PluginManager):
    """A pluggy manager that also remembers which distribution each plugin came from."""

    def __init__(self) -> None:
        super().__init__(PROJECT)
        self.distributions: dict[str, tuple[str, str]] = {}


#: plugins of this repository that ship apart from the core, by (kind, name)
_DISTRIBUTIONS = {
    ("applier", "lmdb"): "kevo-repl-lmdb",
    ("applier", "leveldb"): "kevo-repl-leveldb",
    ("applier", "sqlite"): "kevo-repl-sqlite",
}


class Registry:
    """Named backends of each kind, as the plugins registered them."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self._by_kind: dict[str, dict[str, Registration]] = {k: {} for k in KINDS}
        dists = pm.distributions if isinstance(pm, KevoPluginManager) else {}
        for kind, hook_name in _HOOK_OF_KIND.items():
            hook = getattr(pm.hook, hook_name)
            for impl in hook.get_hookimpls():
                dist, version = dists.get(impl.plugin_name, ("kevo-repl", _own_version()))
                register = self._registrar(kind, impl.plugin_name, dist, version)
                try:
                    impl.function(register=register)
                except PluginError:
                    raise
                except Exception as exc:
                    raise PluginError(
                        f"plugin {impl.plugin_name!r} (distribution {dist}) failed in "
                        f"{hook_name}: {exc}"
                    ) from exc

    def _registrar(
        self, kind: str, plugin: str, dist: str, version: str
    ) -> Callable[[str, Any], None]:
        def register(name: str, obj: Any) -> None:
            if not isinstance(name, str) or not name:
                raise PluginError(f"plugin {plugin!r} registered a {kind} with no name")
            problem = CHECKS[kind](obj)
            if problem is not None:
                raise PluginError(
                    f"plugin {plugin!r} (distribution {dist}) registered {kind} {name!r} "
                    f"that does not meet the {kind} protocol: {problem}"
                )
            existing = self._by_kind[kind].get(name)
            if existing is not None and existing.plugin != plugin:
                # Later registrations win: defaults load first, so a user's plugin
                # replaces a built-in of the same name.
                log.info(
                    "%s %r from %s replaces the one from %s", kind, name, plugin, existing.plugin
                )
            self._by_kind[kind][name] = Registration(kind, name, obj, plugin, dist, version)

        return register

    def names(self, kind: str) -> list[str]:
        return sorted(self._by_kind[kind])

    def registration(self, kind: str, name: str) -> Registration:
        reg = self._by_kind[kind].get(name)
        if reg is None:
            available = ", ".join(self.names(kind)) or "none installed"
            hint = ""
            dist = _DISTRIBUTIONS.get((kind, name))
            if dist is not None:
                hint = (f". The {name!r} {kind} comes with the {dist} distribution: install "
                        f"it with `pip install 'kevo-repl[{name}]'` (or `kevo-repl[all]`), or "
                        f"`pip install -e plugins/{name}` in a checkout")
            raise ConfigError(f"unknown {kind} {name!r}; available: {available}{hint}")
        return reg

    def get(self, kind: str, name: str) -> Any:
        return self.registration(kind, name).obj

    def label(self, kind: str, name: str) -> str:
        """How run-time errors name the backend: kind, name, plugin and distribution."""
        return self.registration(kind, name).label

    def compressors_by_id(self) -> dict[int, Compressor]:
        """Every registered compressor by its wire codec id (the first registered wins),
        guarded: a failure other than DecompressionError is a PluginError naming it."""
        out: dict[int, Compressor] = {}
        for name in self.names("compressor"):
            reg = self.registration("compressor", name)
            out.setdefault(int(reg.obj.codec_id), GuardedCompressor(reg.obj, reg.label))
        return out

    def all(self) -> list[Registration]:
        return [r for kind in KINDS for _, r in sorted(self._by_kind[kind].items())]


def _own_version() -> str:
    try:
        return importlib.metadata.version("kevo-repl")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def _env_list(name: str) -> list[str]:
    return [m.strip() for m in os.environ.get(name, "").split(",") if m.strip()]


def get_plugin_manager(
    *, load_entry_points: bool = True, applier: str | None = None
) -> KevoPluginManager:
    """A manager with every plugin loaded; with `applier`, engine plugins that declare only
    other appliers are left out (not imported). Plugins that declare nothing always load."""
    pm = KevoPluginManager()
    pm.add_hookspecs(hookspecs)
    for blocked in _env_list(ENV_BLOCK):
        pm.set_blocked(blocked)
    for modname in _DEFAULT_PLUGIN_MODULES:
        if not pm.is_blocked(modname):
            pm.register(importlib.import_module(modname), name=modname)
    if load_entry_points and os.environ.get(ENV_DISABLE_AUTOLOAD, "") not in ("1", "true", "yes"):
        _load_entry_points(pm, applier)
    for modname in _env_list(ENV_EXTRA_PLUGINS):
        if pm.has_plugin(modname) or pm.is_blocked(modname):
            continue
        try:
            module = importlib.import_module(modname)
        except Exception as exc:
            raise PluginError(
                f"plugin module {modname!r} named in ${ENV_EXTRA_PLUGINS} failed to import: {exc}"
            ) from exc
        _register_checked(pm, module, modname, f"${ENV_EXTRA_PLUGINS}")
        # no entry point names its distribution, and finding it scans every installed one
        # (over 100 ms at each start): say where it came from instead
        pm.distributions[modname] = (f"${ENV_EXTRA_PLUGINS}", "-")
    return pm


def _load_entry_points(pm: KevoPluginManager, applier: str | None) -> None:
    found = importlib.metadata.entry_points()
    other_engines = (
        _other_engines(found.select(group=APPLIERS_GROUP), applier) if applier else set()
    )
    for ep in found.select(group=PROJECT):
        if pm.has_plugin(ep.name) or pm.is_blocked(ep.name) or ep.value in other_engines:
            continue
        # the distribution's metadata is read only for plugins that load (it costs a parse)
        dist = ep.dist.metadata["name"] if ep.dist is not None else "unknown distribution"
        version = ep.dist.version if ep.dist is not None else "unknown"
        try:
            plugin = ep.load()
        except Exception as exc:
            raise PluginError(
                f"plugin {ep.name!r} (distribution {dist}) failed to import: {exc}"
            ) from exc
        _register_checked(pm, plugin, ep.name, f"distribution {dist}")
        pm.distributions[ep.name] = (dist, version)


def _other_engines(declared: importlib.metadata.EntryPoints, applier: str) -> set[str]:
    """Plugin modules that declare appliers, none of them `applier`: a node using `applier`
    has no use for them."""
    wanted = {ep.value for ep in declared if ep.name == applier}
    return {ep.value for ep in declared} - wanted


def _register_checked(pm: pluggy.PluginManager, plugin: object, name: str, origin: str) -> None:
    try:
        pm.register(plugin, name=name)
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin {name!r} ({origin}) is invalid: {exc}") from exc


def build_registry(pm: pluggy.PluginManager | None = None) -> Registry:
    return Registry(pm if pm is not None else get_plugin_manager())


def build_node_registry(
    applier: str, needs: Mapping[str, str] | None = None
) -> tuple[KevoPluginManager, Registry]:
    """What a node loads: its own engine's plugin and every plugin that declares no engine.
    Should `applier`, or a backend in `needs` (kind -> name, such as the configured
    compressor), not be registered that way (a plugin registering it without declaring it),
    everything is loaded, and an unknown name's error lists every one installed."""
    pm = get_plugin_manager(applier=applier)
    registry = Registry(pm)
    wanted = {"applier": applier, **(needs or {})}
    if all(name in registry.names(kind) for kind, name in wanted.items()):
        return pm, registry
    pm = get_plugin_manager()
    return pm, Registry(pm)
