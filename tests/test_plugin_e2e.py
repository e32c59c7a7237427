"""Plugins in real node processes, installed the way a user installs them.

- The examples of docs/plugins.md, copied into a throwaway distribution and installed with pip,
  are found through their entry points and replicate end to end: the primary compresses with
  the documented compressor, the replica reaches it with the documented connector, unpacks
  with the compressor and applies into the documented applier.
- A plugin that raises (or returns the wrong type) inside `decompress` or `apply` leaves the
  replica in ERROR with a message naming the plugin and its distribution, shown by `status`;
  the node stays up and does not retry the failure.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import assert_same_digest, load, wait_caught_up
from kevo_repl_tools.launcher import NodeProcess, wait_until

DOC = Path(__file__).resolve().parent.parent / "docs" / "plugins.md"
_EXAMPLE = re.compile(r"```python\n# docs example module: (\w+)\n(.*?)```", re.DOTALL)

DOCS_DIST = "kevo-repl-docs-examples"

# A PEP 517 backend inside the throwaway project, so that pip builds it offline with no build
# dependency (--no-build-isolation): it writes a wheel holding the project's modules, its
# metadata and its entry points.
_BACKEND = '''
import base64, hashlib, pathlib, zipfile

NAME, VERSION = "kevo_repl_docs_examples", "0.1.0"


def get_requires_for_build_wheel(config_settings=None):
    return []


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    here = pathlib.Path(__file__).parent
    info = f"{NAME}-{VERSION}.dist-info"
    files = {p.name: p.read_bytes() for p in sorted((here / "src").glob("*.py"))}
    files[f"{info}/METADATA"] = (
        f"Metadata-Version: 2.1\\nName: {NAME.replace('_', '-')}\\nVersion: {VERSION}\\n"
    ).encode()
    files[f"{info}/WHEEL"] = (
        b"Wheel-Version: 1.0\\nGenerator: docs-test\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n"
    )
    files[f"{info}/entry_points.txt"] = (here / "entry_points.txt").read_bytes()
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = ("\\n".join(record) + "\\n").encode()
    wheel = f"{NAME}-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(pathlib.Path(wheel_directory) / wheel, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return wheel
'''


def pip_install_docs_examples(tmp_path: Path) -> Path:
    """Copy docs/plugins.md's examples into a project, pip-install it into a target directory
    (offline, no dependencies) and return that directory, for the nodes' PYTHONPATH."""
    examples = _EXAMPLE.findall(DOC.read_text())
    assert [n for n, _ in examples] == [
        "docs_example_applier", "docs_example_compressor", "docs_example_connector"
    ]
    project = tmp_path / "docs-examples"
    (project / "src").mkdir(parents=True)
    for module, code in examples:
        (project / "src" / f"{module}.py").write_text(code)
    (project / "entry_points.txt").write_text(
        "[kevo_repl]\n" + "".join(f"{m} = {m}\n" for m, _ in examples)
    )
    (project / "backend.py").write_text(_BACKEND)
    (project / "pyproject.toml").write_text(textwrap.dedent("""
        [build-system]
        requires = []
        build-backend = "backend"
        backend-path = ["."]

        [project]
        name = "kevo-repl-docs-examples"
        version = "0.1.0"
    """))
    target = tmp_path / "site"
    res = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
         "--no-build-isolation", "--target", str(target), str(project)],
        capture_output=True, text=True, timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert (target / "docs_example_compressor.py").exists()
    return target


def node_env(site: Path) -> dict[str, str]:
    """The environment of a node with `site` importable, minus any plugin switches."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEVO_REPL_")}
    env["PYTHONPATH"] = os.pathsep.join([str(site), *sys.path])
    return env


def write_config(path: Path, **sections: str) -> Path:
    path.write_text("".join(f'[{s}]\nname = "{name}"\n' for s, name in sections.items()))
    return path


@pytest.fixture
def nodes() -> Iterator[list[NodeProcess]]:
    started: list[NodeProcess] = []
    try:
        yield started
    finally:
        for node in started:
            node.kill()


def start(nodes: list[NodeProcess], node: NodeProcess) -> NodeProcess:
    nodes.append(node)
    node.start()
    return node


def test_docs_examples_installed_with_pip_replicate_end_to_end(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    site = pip_install_docs_examples(tmp_path)
    env = node_env(site)

    # found through their entry points, with the throwaway distribution's name
    listed = subprocess.run(
        [sys.executable, "-m", "kevo_repl", "plugins", "--json"],
        capture_output=True, text=True, timeout=60, env=env,
    )
    assert listed.returncode == 0, listed.stderr
    rows = {(r["kind"], r["name"]): r for r in json.loads(listed.stdout)}
    for kind, name, plugin in [("applier", "dict", "docs_example_applier"),
                               ("compressor", "deflate", "docs_example_compressor"),
                               ("connector", "plain", "docs_example_connector")]:
        assert rows[(kind, name)]["distribution"] == DOCS_DIST
        assert rows[(kind, name)]["plugin"] == plugin

    primary = start(nodes, NodeProcess("primary", tmp_path / "primary", applier="lmdb", env=env))
    config = write_config(tmp_path / "replica.toml", applier="dict", compressor="deflate",
                          connector="plain")
    replica = start(nodes, NodeProcess(
        "replica", tmp_path / "replica", primary=primary.address, replica_id="r1",
        config=config, env=env,
    ))
    load(primary.address, 3_000, batch=300)
    wait_caught_up(primary, replica)
    digest = assert_same_digest(primary, replica)
    assert digest["sequence"] == digest["keys"] == 3_000
    st = replica.status()
    assert (st["applier"], st["state"], st["last_error"]) == ("dict", "WAITING_FOR_DATA", "")
    assert st["applied_entries"] == st["last_applied"] == 3_000
    # the primary shipped with the documented compressor
    assert "codec 100, whole-response blocks" in primary.log_file.read_text()


# -- plugins failing at run time ---------------------------------------------------------------

_FAILING_COMPRESSOR = """
import zlib

from kevo_repl import hookimpl


class BadInflate:
    codec_id = 101

    def compress(self, data):
        return zlib.compress(data, 1)

    def decompress(self, data, max_size):
        {body}


@hookimpl
def kevo_repl_register_compressors(register):
    register("bad-inflate", BadInflate())
"""

_FAILING_APPLIER = """
from kevo_repl import hookimpl
from kevo_repl.plugin.engine import EngineSpec
from kevo_repl_example.memory import SPEC as MEMORY


class BadCommit:
    def __init__(self, inner):
        self.inner = inner
        self.max_key_size = inner.max_key_size

    def __getattr__(self, attr):  # everything but commit and sync is the memory engine's
        return getattr(self.inner, attr)

    def commit(self, ops, keys, values, meta):
        {body}

    def sync(self):
        {sync}


@hookimpl
def kevo_repl_register_appliers(register):
    register("bad-commit", EngineSpec(
        open=lambda path, options, durable: BadCommit(MEMORY.open(path, options, durable)),
        owns_file=None,
    ))
"""

# id: (template, method body, replica config, what last_error says after the label)
FAILURES = {
    "decompress-raises": (
        _FAILING_COMPRESSOR, 'raise RuntimeError("inflate table corrupted")',
        {"compressor": "bad-inflate"},
        r"compressor 'bad-inflate' .* failed in decompress: RuntimeError: inflate table "
        r"corrupted",
    ),
    "decompress-returns-text": (
        _FAILING_COMPRESSOR, "return zlib.decompress(data).decode('latin-1')",
        {"compressor": "bad-inflate"},
        r"compressor 'bad-inflate' .* returned a str from decompress, not bytes",
    ),
    "commit-raises": (
        _FAILING_APPLIER, 'raise RuntimeError("commit failed: write lock lost")',
        {"applier": "bad-commit"},
        r"applier 'bad-commit' .* failed in apply: RuntimeError: commit failed: write lock lost",
    ),
    "sync-raises": (
        _FAILING_APPLIER.replace("{sync}", 'raise OSError(5, "fsync: I/O error")'),
        "return self.inner.commit(ops, keys, values, meta)",
        {"applier": "bad-commit"},
        r"applier 'bad-commit' .* failed in sync: OSError: \[Errno 5\] fsync: I/O error",
    ),
}


def install_fake_distribution(site: Path, dist: str, module: str, source: str) -> None:
    """An installed distribution as an installer lays it out: the module and a dist-info
    directory with its entry point."""
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{module}.py").write_text(source)
    info = site / f"{dist.replace('-', '_')}-0.2.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.2\n")
    (info / "entry_points.txt").write_text(f"[kevo_repl]\nfaulty = {module}\n")


@pytest.mark.parametrize("case", FAILURES.values(), ids=FAILURES.keys())
def test_plugin_failing_at_run_time_leaves_the_replica_in_error_naming_it(
    tmp_path: Path, nodes: list[NodeProcess], case: tuple[str, str, dict[str, str], str]
) -> None:
    template, body, sections, message = case
    site = tmp_path / "site"
    source = template.replace("{body}", body).replace("{sync}", "return self.inner.sync()")
    install_fake_distribution(site, "kevo-repl-faulty", "kevo_repl_faulty", source)
    env = node_env(site)
    primary = start(nodes, NodeProcess("primary", tmp_path / "primary", applier="lmdb", env=env))
    config = write_config(tmp_path / "replica.toml", **sections)
    replica = start(nodes, NodeProcess(
        "replica", tmp_path / "replica", primary=primary.address, replica_id="r1",
        applier=None if "applier" in sections else "lmdb", config=config, env=env,
    ))
    load(primary.address, 500, batch=100)

    wait_until(lambda: replica.status()["state"] == "ERROR", 30, "the replica to stop in ERROR")
    st = replica.status()
    label = r"of plugin 'faulty' \(distribution kevo-repl-faulty\)"
    assert re.search(message.replace(" .* ", f" {label} "), st["last_error"]), st["last_error"]
    assert st["last_applied"] == 0 and st["applied_entries"] == 0  # nothing acknowledged

    # it stays there: alive, answering, not reconnecting into the same failure
    reconnects = st["reconnects"]
    time.sleep(2.0)
    again = replica.status()
    assert replica.running
    assert (again["state"], again["last_error"]) == ("ERROR", st["last_error"])
    assert again["reconnects"] == reconnects
    assert primary.status()["head_sequence"] == 500
