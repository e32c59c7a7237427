"""Meta-tests: docs/plugins.md documents every hookspec exactly, every hookspec has a test,
and the plugin examples in the documentation really work."""

from __future__ import annotations

import ast
import asyncio
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kevo_repl.errors import ConfigError, PluginError, StoreError
from kevo_repl.plugin import hookspecs
from kevo_repl.plugin.guards import call_guarded
from kevo_repl.plugin.manager import build_registry
from kevo_repl.protocol.codec import Entry, Op, decode
from kevo_repl.protocol.compression import DecompressionError
from kevo_repl.protocol.proto import replication_pb2 as rpb
from kevo_repl.protocol.records import Record, encode_body
from kevo_repl.protocol.wire import Unpacker, UnpackError, negotiate, shape
from kevo_repl.storage.applier import open_registered
from kevo_repl.storage.position import Position

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "plugins.md"
TESTS = Path(__file__).resolve().parent

HOOKSPECS = {
    name: list(inspect.signature(func).parameters)
    for name, func in vars(hookspecs).items()
    if name.startswith("kevo_repl_") and callable(func)
}
#: a hook reference heading: ### `kevo_repl_name(arg, arg)`
_HEADING = re.compile(r"^### `(kevo_repl_\w+)\(([^)]*)\)`\s*$", re.MULTILINE)
#: a documentation example: a python block whose first line names the module to save it as
_EXAMPLE = re.compile(r"```python\n# docs example module: (\w+)\n(.*?)```", re.DOTALL)


def test_hookspecs_are_found() -> None:
    assert set(HOOKSPECS) >= {
        "kevo_repl_register_appliers",
        "kevo_repl_register_compressors",
        "kevo_repl_register_connectors",
        "kevo_repl_state_changed",
        "kevo_repl_batch_applied",
    }


def test_every_hookspec_is_documented_with_its_exact_arguments() -> None:
    text = DOC.read_text()
    reference = text[text.index("## Hook reference"):]
    documented = {
        name: [a.strip() for a in args.split(",") if a.strip()]
        for name, args in _HEADING.findall(reference)
    }
    for name, params in HOOKSPECS.items():
        assert name in documented, f"docs/plugins.md has no '### `{name}(...)`' heading"
        assert documented[name] == params, (
            f"docs/plugins.md documents {name}({', '.join(documented[name])}) but the "
            f"hookspec is {name}({', '.join(params)})"
        )
    stale = set(documented) - set(HOOKSPECS)
    assert not stale, f"docs/plugins.md documents hooks that do not exist: {sorted(stale)}"


def _test_function_sources() -> dict[str, str]:
    """Source of every test function in the test modules other than this one."""
    sources = {}
    for path in sorted(TESTS.glob("test_*.py")):
        if path.resolve() == Path(__file__).resolve():
            continue
        text = path.read_text()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith(
                "test_"
            ):
                sources[f"{path.name}::{node.name}"] = ast.get_source_segment(text, node) or ""
    return sources


def test_every_hookspec_has_a_test() -> None:
    sources = _test_function_sources()
    assert sources
    for name in HOOKSPECS:
        testing = [test for test, src in sources.items() if name in src]
        assert testing, f"no test function outside {Path(__file__).name} mentions {name}"


# ---------------------------------------------------------------------------------------------
# the documentation's examples, loaded as plugins the way a user would load them
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def doc_examples(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    found = _EXAMPLE.findall(DOC.read_text())
    names = [name for name, _ in found]
    assert names == ["docs_example_applier", "docs_example_compressor", "docs_example_connector"]
    for name, code in found:
        (tmp_path / f"{name}.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("KEVO_REPL_PLUGINS", ",".join(names))
    return names


def _apply(store: Any, label: str, entries: Any, history_id: str, chain: int) -> Position:
    """The replica's guarded call into the core applier (and through it, the engine)."""
    return call_guarded(label, "apply", store.apply, entries, history_id, chain,
                        returns=Position)


def test_documented_engine_example_replicates_under_the_core(
    doc_examples: list[str], tmp_path: Path
) -> None:
    registry = build_registry()
    label = registry.label("applier", "dict")
    with pytest.raises(ConfigError, match="nope"):
        open_registered(registry, "dict", tmp_path / "store", {"nope": 1}, True)
    store = open_registered(registry, "dict", tmp_path / "store", {}, True)
    assert store.position() == Position()
    # through the replica's apply path: apply(entries, history_id, chain), guarded
    batch = [Entry(1, Op.PUT, b"b", b"1"), Entry(2, Op.MERGE, b"a", b"2"),
             Entry(3, Op.PUT, b"c", b"")]
    pos = _apply(store, label, batch, "h", 0xC0FFEE)
    assert pos == Position(3, "h", 3, 0xC0FFEE)
    with store.snapshot() as snap:
        _apply(store, label, [Entry(4, Op.DELETE, b"a", b"")], "h", 7)
        assert snap.position == pos
        assert list(snap.items()) == [(b"a", b"2"), (b"b", b"1"), (b"c", b"")]
    with pytest.raises(StoreError):
        snap.items()
    with pytest.raises(StoreError):  # a gap: a StoreError passes the guard unchanged
        _apply(store, label, [Entry(6, Op.PUT, b"x", b"")], "h", 0)
    with pytest.raises(StoreError):  # a bad key mid-batch: nothing applied
        _apply(store, label, [Entry(5, Op.PUT, b"x", b""), Entry(6, Op.PUT, b"", b"")],
                      "h", 0)
    assert store.get(b"x") is None and store.get(b"a") is None
    assert store.position() == Position(4, "h", 4, 7)
    # anything but a StoreError (here: a batch that is not entries) is a bug, named as such
    with pytest.raises(PluginError, match=r"applier 'dict' of plugin 'docs_example_applier'"):
        _apply(store, label, [None], "h", 0)  # type: ignore[list-item]
    assert store.position() == Position(4, "h", 4, 7)
    store.sync()
    store.close()
    with pytest.raises(StoreError):
        store.get(b"b")


def _records(n: int = 400) -> list[Record]:
    """Two write batches of compressible entries, as the primary's WAL holds them."""
    entries = [Entry(s, Op.PUT, f"key{s:08d}".encode(), b"value %d " % s * 8)
               for s in range(1, n + 1)]
    first, chain = encode_body(entries[: n // 2], 1)
    second, _ = encode_body(entries[n // 2:], chain)
    return [Record(1, n // 2, first), Record(n // 2 + 1, n - n // 2, second)]


@pytest.mark.parametrize("version", [1, 2], ids=["per-entry", "whole-response"])
def test_documented_compressor_example_runs_through_the_replicas_unpacker(
    doc_examples: list[str], version: int
) -> None:
    """The example compressor, as the registry hands it to the primary and the replica:
    shaped by the primary's wire code, unpacked by the replica's Unpacker."""
    registry = build_registry()
    codec = registry.get("compressor", "deflate")
    compressors = registry.compressors_by_id()
    assert compressors[codec.codec_id].codec_id == codec.codec_id
    request = rpb.WALStreamRequest(
        start_sequence=1, protocol_version=version, compression_supported=True,
        preferred_codec=codec.codec_id, block_compression=True,  # type: ignore[arg-type]
    )
    negotiated = negotiate(request, compressors)
    assert negotiated.codec_id == codec.codec_id
    records = _records()
    [msg] = shape(records, negotiated, 1 << 20)
    raw = b"".join(r.body for r in records)
    assert len(msg) < len(raw) // 2  # it really compressed
    resp = rpb.WALStreamResponse.FromString(msg)
    assert (bool(resp.compressed_entries), resp.compressed) == (version == 2, version == 1)

    plain = Unpacker(compressors, 1 << 20).unpack(resp)
    assert plain is not None
    got = [decode(e.payload, e.sequence_number) for e in plain.entries]
    assert [e.seq for e in got] == list(range(1, 401))
    assert got[399] == Entry(400, Op.PUT, b"key00000400", b"value 400 " * 8)

    # the size bound: an output past max_size is refused, never allocated
    with pytest.raises(UnpackError, match=r"does not decode|does not decompress"):
        Unpacker(compressors, 50).unpack(resp)  # each payload is longer than 50 bytes
    # damaged input is a DecompressionError, which the unpacker reports as corrupt
    with pytest.raises(DecompressionError):
        codec.decompress(b"not deflate", 1 << 20)
    damaged = rpb.WALStreamResponse.FromString(msg)
    if version == 2:
        damaged.compressed_entries = damaged.compressed_entries[:-4]
    else:
        damaged.entries[0].payload = damaged.entries[0].payload[:-4]
    with pytest.raises(UnpackError):
        Unpacker(compressors, 1 << 20).unpack(damaged)


_CONFORMANCE_MODULE = """
from kevo_repl.testing import EngineConformance


class TestDocsEngine(EngineConformance):
    engine = "docs_example_applier:SPEC"
    persistent = False
"""


@pytest.mark.timeout(300)
def test_documented_engine_example_passes_the_conformance_suite(
    doc_examples: list[str], tmp_path: Path
) -> None:
    """What a third-party engine's own tests do: subclass the suite, run pytest."""
    (tmp_path / "test_docs_engine.py").write_text(_CONFORMANCE_MODULE)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=280,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = proc.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary, summary
    # the persistence tests are skipped by the flag, and nothing else is
    skips = [line for line in proc.stdout.splitlines() if line.startswith("SKIPPED")]
    assert skips and all("TestDocsEngine.persistent is False" in line for line in skips), skips


def test_documented_compressor_example_round_trips(doc_examples: list[str]) -> None:
    codec = build_registry().get("compressor", "deflate")
    data = b"kevo-repl " * 1000
    packed = codec.compress(data)
    assert len(packed) < len(data)
    assert codec.decompress(packed, 1 << 20) == data
    assert isinstance(codec.codec_id, int)


def test_documented_connector_example_opens_a_channel(doc_examples: list[str]) -> None:
    connect = build_registry().get("connector", "plain")
    with pytest.raises(ConfigError, match="token"):
        connect("127.0.0.1:1", {"name": "plain", "token": "secret"})

    async def open_and_close() -> None:
        channel = connect("127.0.0.1:1", {"name": "plain", "tls_ca": "", "token": ""})
        assert callable(channel.unary_stream) and callable(channel.unary_unary)
        await channel.close()

    asyncio.run(asyncio.wait_for(open_and_close(), timeout=30))
