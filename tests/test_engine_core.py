"""The core's side of the engine contract: the position blob, the version check, what the
core refuses before an engine sees it. Engines here are the example's `memory` engine and a
real LMDB store."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest
from kevo_repl_example import SPEC as MEMORY
from kevo_repl_example.memory import MemoryEngine
from kevo_repl_lmdb import SPEC as LMDB

from kevo_repl.errors import PluginError, StoreError
from kevo_repl.plugin.engine import ENGINE_API_VERSION, OP_PUT, EngineSpec
from kevo_repl.protocol.codec import Columns, Entry, Op
from kevo_repl.storage.applier import open_applier
from kevo_repl.storage.position import Position, decode_position, encode_position


def test_position_blob_round_trips() -> None:
    for pos in (Position(), Position(1, "h", 1, 0), Position(2**64 - 1, "é" * 40, 7, 2**63)):
        assert decode_position(encode_position(pos), "x") == pos
    assert decode_position(None, "x") == Position()


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda b: b[:10], "damaged"),
        (lambda b: b"XXXX" + b[4:], "not kevo-repl's"),
        (lambda b: b[:4] + b"\x02" + b[5:], "format 2"),
        (lambda b: b + b"\xff\xfe", "not UTF-8"),
    ],
)
def test_a_damaged_blob_is_refused(damage: object, match: str) -> None:
    blob = encode_position(Position(5, "h", 5, 9))
    with pytest.raises(StoreError, match=match):
        decode_position(damage(blob), "lmdb")  # type: ignore[operator]


def test_a_store_with_a_damaged_blob_is_refused_and_kept(tmp_path: Path) -> None:
    engine = LMDB.open(tmp_path / "store", {}, True)
    engine.commit([OP_PUT], [b"k"], [b"v"], b"written by something else entirely")
    engine.close()
    with pytest.raises(StoreError, match="not kevo-repl's"):
        open_applier("lmdb", LMDB, tmp_path / "store", {}, True)
    engine = LMDB.open(tmp_path / "store", {}, True)  # refused, never "repaired"
    try:
        assert engine.get(b"k") == b"v"
        assert engine.read_meta() == b"written by something else entirely"
    finally:
        engine.close()


def test_another_contract_version_or_a_bare_factory_is_refused(tmp_path: Path) -> None:
    newer = replace(MEMORY, api_version=ENGINE_API_VERSION + 1)
    with pytest.raises(PluginError, match=f"version {ENGINE_API_VERSION + 1}"):
        open_applier("memory", newer, tmp_path, {}, True)
    with pytest.raises(PluginError, match="EngineSpec"):
        open_applier("old", MEMORY.open, tmp_path, {}, True)


class _CountingEngine(MemoryEngine):
    """The memory engine, remembering the ops of every commit it was handed."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[list[int]] = []

    def commit(
        self, ops: Sequence[int], keys: Sequence[bytes], values: Sequence[bytes], meta: bytes
    ) -> None:
        self.seen.append(list(ops))
        super().commit(ops, keys, values, meta)


def test_the_core_checks_before_the_engine_sees_a_batch(tmp_path: Path) -> None:
    engine = _CountingEngine()
    counting = EngineSpec(open=lambda path, options, durable: engine, owns_file=None)
    store = open_applier("counting", counting, tmp_path, {}, True)
    seen = engine.seen
    try:
        bad = [
            Columns(1, [OP_PUT, 9], [b"a", b"b"], [b"", b""]),  # unknown op
            Columns(1, [OP_PUT], [b"x" * 512], [b""]),  # key too long
            Columns(2, [OP_PUT], [b"a"], [b""]),  # a gap
            Columns(1, [OP_PUT, OP_PUT], [b"a"], [b"", b""]),  # ragged columns
        ]
        for batch in bad:
            with pytest.raises(StoreError):
                store.apply_columns(batch, "h")
        with pytest.raises(StoreError, match="non-contiguous"):
            store.apply([Entry(1, Op.PUT, b"a", b""), Entry(3, Op.PUT, b"b", b"")], "h")
        assert seen == [] and store.position() == Position()
        # Merge reaches the engine as a put
        assert store.apply_columns(Columns(1, [int(Op.MERGE)], [b"m"], [b"1"]), "h", 5) == (
            Position(1, "h", 1, 5)
        )
        assert seen == [[OP_PUT]] and store.get(b"m") == b"1"
    finally:
        store.close()
