"""Built-in compressors: round trips, KevoDB's frames, and bounded decoding."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kevo_repl.plugin.manager import build_registry
from kevo_repl.protocol.codec import decode
from kevo_repl.protocol.compression import Compressor, DecompressionError
from kevo_repl.protocol.proto import replication_pb2 as rpb

VECTORS = json.loads(
    (Path(__file__).parent / "vectors" / "kevodb_compression.json").read_text()
)
REGISTRY = build_registry()
NAMES = ["none", "zstd", "snappy"]


def compressor(name: str) -> Compressor:
    c = REGISTRY.get("compressor", name)
    assert isinstance(c, Compressor)
    return c


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=50, deadline=None)
@given(data=st.binary(max_size=4096))
def test_round_trip(name: str, data: bytes) -> None:
    c = compressor(name)
    assert c.decompress(c.compress(data), len(data)) == data


@pytest.mark.parametrize("v", VECTORS["per_entry_compression"], ids=lambda v: v["codec"])
def test_decodes_kevodb_frames(v: dict) -> None:
    c = compressor(v["codec"])
    payload = bytes.fromhex(v["payload_hex"])
    assert c.decompress(bytes.fromhex(v["compressed_hex"]), 1 << 20) == payload
    assert c.decompress(c.compress(payload), len(payload)) == payload


def test_decodes_kevodb_stream_response() -> None:
    sr = VECTORS["stream_response"]
    resp = rpb.WALStreamResponse.FromString(bytes.fromhex(sr["wal_stream_response_hex"]))
    assert resp.compressed and resp.codec == rpb.ZSTD
    c = compressor("zstd")
    got = []
    for e in resp.entries:
        entry = decode(c.decompress(e.payload, 1 << 20), e.sequence_number)
        got.append({"sequence": entry.seq, "op": entry.op, "key_hex": entry.key.hex(),
                    "value_hex": entry.value.hex()})
    assert got == sr["entries"]


@pytest.mark.parametrize("name", ["zstd", "snappy"])
def test_output_past_the_limit_is_refused(name: str) -> None:
    c = compressor(name)
    blob = c.compress(bytes(1 << 20))  # compresses to almost nothing
    with pytest.raises(DecompressionError, match="limit"):
        c.decompress(blob, 1000)


@pytest.mark.parametrize("name", ["zstd", "snappy"])
@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=512))
def test_garbage_is_a_clean_error(name: str, data: bytes) -> None:
    c = compressor(name)
    try:
        out = c.decompress(data, 1 << 16)
    except DecompressionError:
        return
    assert len(out) <= 1 << 16


def test_absurd_snappy_length_does_not_allocate() -> None:
    absurd = bytes([0xFF, 0xFF, 0xFF, 0xFF, 0x0F]) + os.urandom(16)  # declares ~4 GiB
    with pytest.raises(DecompressionError, match="past the limit"):
        compressor("snappy").decompress(absurd, 1 << 20)
