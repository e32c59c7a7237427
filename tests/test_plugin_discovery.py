"""Third-party plugins found through the `kevo_repl` entry-point group, in fresh processes.

`kevo-repl-example` (plugins/example) is installed into the environment by the README's test
command and .ci/run. Broken plugins are real distributions too: a `.dist-info` directory with
an `entry_points.txt`, placed on the child process's PYTHONPATH, which is exactly how
importlib.metadata finds an installed distribution.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import assert_same_digest, load, wait_caught_up

EXAMPLE_DIST = "kevo-repl-example"
EXAMPLE_MODULE = "kevo_repl_example"
EXAMPLE_PLUGIN = "example"  # the entry point's name


def _example_version() -> str:
    try:
        return importlib.metadata.version(EXAMPLE_DIST)
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(
            f"{EXAMPLE_DIST} is not installed; install it with `pip install -e plugins/example` "
            "(the README's test command does)"
        )


def run_python(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})},
    )


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kevo_repl", "--log-level", "WARNING", *args],
        capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})},
    )


def clean_env(**extra: str) -> dict[str, str]:
    """The environment minus any plugin switches the caller may have set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEVO_REPL_")}
    return {**env, **extra}


# A child that reports what it imported before and after building the registry.
_PROBE = """
    import json, sys
    import kevo_repl
    from kevo_repl.plugin.manager import build_registry, get_plugin_manager

    before = "kevo_repl_example" in sys.modules
    pm = get_plugin_manager()
    reg = build_registry(pm)
    fields = ("kind", "name", "plugin", "distribution", "version")
    rows = [{f: getattr(r, f) for f in fields} for r in reg.all()]
    plugin = pm.get_plugin("example")
    print(json.dumps({
        "imported_before": before,
        "imported_after": "kevo_repl_example" in sys.modules,
        "plugin_is_module": plugin is sys.modules.get("kevo_repl_example"),
        "appliers": reg.names("applier"),
        "rows": rows,
    }))
"""


def probe(env: dict[str, str]) -> dict[str, object]:
    res = run_python(_PROBE, env)
    assert res.returncode == 0, res.stderr
    out: dict[str, object] = json.loads(res.stdout)
    return out


# ---------------------------------------------------------------------------------------------
# the example plugin: found only through its entry point
# ---------------------------------------------------------------------------------------------


def test_example_distribution_declares_a_kevo_repl_entry_point() -> None:
    _example_version()
    dist = importlib.metadata.distribution(EXAMPLE_DIST)
    [ep] = [ep for ep in dist.entry_points if ep.group == "kevo_repl"]
    assert (ep.name, ep.value) == (EXAMPLE_PLUGIN, EXAMPLE_MODULE)


def test_example_plugin_is_discovered_through_its_entry_point() -> None:
    version = _example_version()
    found = probe(clean_env())
    # nothing imported the module by name: the plugin manager loaded it from the entry point
    assert found["imported_before"] is False
    assert found["imported_after"] is True
    assert found["plugin_is_module"] is True
    assert "memory" in found["appliers"]  # type: ignore[operator]
    [row] = [r for r in found["rows"] if r["name"] == "memory"]  # type: ignore[union-attr]
    assert row["kind"] == "applier"
    assert row["plugin"] == EXAMPLE_PLUGIN
    assert (row["distribution"], row["version"]) == (EXAMPLE_DIST, version)


def test_plugins_command_lists_the_example_with_distribution_and_version() -> None:
    version = _example_version()
    res = run_cli("plugins", "--json", env=clean_env())
    assert res.returncode == 0, res.stderr
    rows = {(r["kind"], r["name"]): r for r in json.loads(res.stdout)}
    assert rows[("applier", "memory")] == {
        "kind": "applier", "name": "memory", "plugin": EXAMPLE_PLUGIN,
        "distribution": EXAMPLE_DIST, "version": version,
    }
    table = run_cli("plugins", env=clean_env())
    assert table.returncode == 0, table.stderr
    [line] = [ln for ln in table.stdout.splitlines() if " memory " in ln]
    assert line.split() == ["applier", "memory", EXAMPLE_DIST, version, EXAMPLE_PLUGIN]


def test_autoload_off_loads_no_entry_point_plugin() -> None:
    _example_version()
    found = probe(clean_env(KEVO_REPL_DISABLE_PLUGIN_AUTOLOAD="1"))
    assert found["imported_after"] is False
    assert found["appliers"] == []  # every applier comes from an entry point
    names = {(r["kind"], r["name"]) for r in found["rows"]}  # type: ignore[union-attr]
    assert ("connector", "grpc") in names  # built-in defaults still load

    res = run_cli("plugins", "--json", env=clean_env(KEVO_REPL_DISABLE_PLUGIN_AUTOLOAD="1"))
    assert res.returncode == 0, res.stderr
    assert {r["distribution"] for r in json.loads(res.stdout)} == {"kevo-repl"}


def test_blocked_plugin_is_never_imported() -> None:
    _example_version()
    found = probe(clean_env(KEVO_REPL_BLOCK_PLUGINS=f"nothing-by-this-name, {EXAMPLE_PLUGIN}"))
    assert found["imported_after"] is False
    assert "memory" not in found["appliers"]  # type: ignore[operator]
    # only the named plugin is blocked
    assert {"lmdb", "leveldb"} <= set(found["appliers"])  # type: ignore[arg-type]


def test_example_applier_replicates_in_node_processes(cluster) -> None:
    """A replica whose store is the third-party `memory` applier, chosen by name only."""
    primary = cluster.primary()
    replica = cluster.replica(primary, applier="memory")
    load(primary.address, 2_000, batch=200)
    wait_caught_up(primary, replica)
    digest = assert_same_digest(primary, replica)
    assert digest["sequence"] == digest["keys"] == 2_000
    assert replica.status()["applier"] == "memory"


# ---------------------------------------------------------------------------------------------
# broken third-party distributions: errors name the plugin and its distribution
# ---------------------------------------------------------------------------------------------


def install_fake_distribution(
    site: Path, dist: str, version: str, entry_point: str, module: str, source: str
) -> None:
    """Lay out an installed distribution under `site` as an installer would (dist-info)."""
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[kevo_repl]\n{entry_point} = {module}\n")


BROKEN = {
    "fails-to-import": (
        "kevo-repl-needs-libfoo", "needs_libfoo", "kevo_repl_needs_libfoo",
        'raise ImportError("libfoo.so.3: cannot open shared object file")\n',
        r"plugin 'needs_libfoo' \(distribution kevo-repl-needs-libfoo\) failed to import: "
        r"libfoo\.so\.3",
    ),
    "unknown-hook": (
        "kevo-repl-typo", "typo", "kevo_repl_typo",
        """
        from kevo_repl import hookimpl

        @hookimpl
        def kevo_repl_register_applier(register):  # the real hook ends in "appliers"
            pass
        """,
        r"plugin 'typo' \(distribution kevo-repl-typo\) is invalid: .*"
        r"kevo_repl_register_applier",
    ),
    "wrong-argument": (
        "kevo-repl-wrong-arg", "wrongarg", "kevo_repl_wrong_arg",
        """
        from kevo_repl import hookimpl

        @hookimpl
        def kevo_repl_register_appliers(registry):  # the argument is called "register"
            pass
        """,
        r"plugin 'wrongarg' \(distribution kevo-repl-wrong-arg\) is invalid: .*registry",
    ),
}


@pytest.mark.parametrize("case", BROKEN.values(), ids=BROKEN.keys())
def test_broken_plugin_error_names_plugin_and_distribution(
    tmp_path: Path, case: tuple[str, str, str, str, str]
) -> None:
    dist, entry_point, module, source, message = case
    site = tmp_path / "site"
    install_fake_distribution(site, dist, "0.3", entry_point, module, source)
    env = clean_env(PYTHONPATH=os.pathsep.join([str(site), *sys.path]))

    res = run_python(
        """
        from kevo_repl.errors import PluginError
        from kevo_repl.plugin.manager import get_plugin_manager
        try:
            get_plugin_manager()
        except PluginError as exc:
            print(exc)
        else:
            print("loaded without an error")
        """,
        env,
    )
    assert res.returncode == 0, res.stderr
    assert re.search(message, res.stdout, re.DOTALL), res.stdout

    # the CLI reports it as a clean error, not a traceback
    cli_res = run_cli("plugins", env=env)
    assert cli_res.returncode == 2
    assert "Traceback" not in cli_res.stderr
    assert dist in cli_res.stderr and entry_point in cli_res.stderr

    # blocking the broken plugin by name lets everything else load
    env["KEVO_REPL_BLOCK_PLUGINS"] = entry_point
    cli_res = run_cli("plugins", "--json", env=env)
    assert cli_res.returncode == 0, cli_res.stderr
    names = {r["name"] for r in json.loads(cli_res.stdout)}
    assert {"lmdb", "leveldb", "memory"} <= names

    # and so does turning entry-point loading off
    env = {**env, "KEVO_REPL_DISABLE_PLUGIN_AUTOLOAD": "1"}
    del env["KEVO_REPL_BLOCK_PLUGINS"]
    cli_res = run_cli("plugins", "--json", env=env)
    assert cli_res.returncode == 0, cli_res.stderr
