"""Response shaping and unpacking: compression modes, fragments, partial batches."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kevo_repl.plugin.manager import build_registry
from kevo_repl.protocol import chain
from kevo_repl.protocol.codec import Entry, Op, checksum, encode
from kevo_repl.protocol.proto import replication_pb2 as rpb
from kevo_repl.protocol.records import encode_body
from kevo_repl.protocol.wire import (
    Negotiated,
    Unpacker,
    UnpackError,
    negotiate,
    shape,
)
from kevo_repl.storage.wal import Record

REGISTRY = build_registry()
COMPRESSORS = REGISTRY.compressors_by_id()


def realistic_value(i: int) -> bytes:
    """A small JSON document of the kind applications store."""
    rnd = random.Random(i)
    doc = {"id": i, "user": f"user-{rnd.randrange(10_000)}", "active": rnd.random() < 0.8,
           "score": round(rnd.random() * 100, 2), "tags": rnd.sample(
               ["red", "green", "blue", "new", "vip", "beta"], 2)}
    return json.dumps(doc).encode()


def record(first: int, n: int, value: callable = realistic_value, chain_before: int = 1) -> Record:
    entries = [Entry(s, Op.PUT, f"key{s:012d}".encode(), value(s)) for s in range(first, first + n)]
    body, _ = encode_body(entries, chain_before)
    return Record(first, n, body)


def unpack_all(msgs: list[bytes], unpacker: Unpacker) -> list[rpb.WALEntry]:
    out = []
    for m in msgs:
        resp = unpacker.unpack(rpb.WALStreamResponse.FromString(m))
        if resp is not None:
            out += list(resp.entries)
    return out


def negotiated(codec: str, version: int, block: bool = True) -> Negotiated:
    req = rpb.WALStreamRequest(start_sequence=1, protocol_version=version,
                               compression_supported=codec != "none",
                               preferred_codec=COMPRESSORS_BY_NAME[codec],
                               block_compression=block)
    return negotiate(req, COMPRESSORS)


COMPRESSORS_BY_NAME = {
    n: REGISTRY.get("compressor", n).codec_id for n in ("none", "zstd", "snappy")
}


@pytest.mark.parametrize("codec", ["none", "zstd", "snappy"])
@pytest.mark.parametrize("version", [1, 2])
def test_every_mode_round_trips(codec: str, version: int) -> None:
    recs = [record(1, 300), record(301, 200)]
    neg = negotiated(codec, version)
    msgs = shape(recs, neg, 1 << 20)
    assert len(msgs) == 1
    resp = rpb.WALStreamResponse.FromString(msgs[0])
    if codec != "none" and version == 2:
        assert resp.compressed_entries and not resp.entries
    if codec != "none" and version == 1:
        assert resp.compressed and resp.codec == COMPRESSORS_BY_NAME[codec]
    got = unpack_all(msgs, Unpacker(COMPRESSORS, 1 << 26))
    want = list(rpb.WALStreamResponse.FromString(b"".join(r.body for r in recs)).entries)
    assert got == want
    for e in got:  # checksums are of the uncompressed payloads, as KevoDB sets them
        assert checksum(e.payload) == e.checksum


def test_block_compression_beats_per_entry_on_small_entries() -> None:
    recs = [record(1, 1000)]
    raw = len(recs[0].body)
    block = len(shape(recs, negotiated("zstd", 2), 1 << 20)[0])
    per_entry = len(shape(recs, negotiated("zstd", 1), 1 << 20)[0])
    assert block < per_entry <= raw
    assert block < raw / 2


def test_compression_never_makes_a_response_bigger() -> None:
    rnd = random.Random(7)
    noisy = [record(1, 200, value=lambda s: rnd.randbytes(100))]
    incompressible = [record(1, 1, value=lambda s: rnd.randbytes(20_000))]
    for version in (1, 2):
        for codec in ("zstd", "snappy"):
            [msg] = shape(noisy, negotiated(codec, version), 1 << 20)
            assert len(msg) <= len(noisy[0].body)
            [msg] = shape(incompressible, negotiated(codec, version), 1 << 20)
            assert msg == incompressible[0].body  # would grow: sent plain


def test_unknown_codec_falls_back_to_none() -> None:
    req = rpb.WALStreamRequest(start_sequence=1, protocol_version=2,
                               compression_supported=True, block_compression=True)
    req.preferred_codec = 77  # type: ignore[assignment]
    assert negotiate(req, COMPRESSORS).compressor is None


@pytest.mark.parametrize("cap", [1000, 4096, 50_000])
def test_big_batches_split_and_big_entries_fragment(cap: int) -> None:
    big = bytes(range(256)) * 400  # ~100 KB value
    values = {5: big, 6: big[:3000]}
    rec = record(1, 10, value=lambda s: values.get(s, realistic_value(s)))
    msgs = shape([rec], Negotiated(), cap)
    resps = [rpb.WALStreamResponse.FromString(m) for m in msgs]
    assert len(resps) > 1
    assert all(r.partial_batch for r in resps[:-1]) and not resps[-1].partial_batch
    assert resps[-1].HasField("chain")
    kinds = [e.fragment_type for r in resps for e in r.entries]
    assert rpb.FIRST in kinds and rpb.LAST in kinds
    assert all(len(m) <= cap + 200 for m in msgs)
    unpacker = Unpacker(COMPRESSORS, 1 << 26)
    got = unpack_all(msgs, unpacker)
    assert got == list(rpb.WALStreamResponse.FromString(rec.body).entries)
    assert not unpacker.holding


def test_missing_or_out_of_order_fragment_is_an_error() -> None:
    rec = record(1, 1, value=lambda s: b"x" * 10_000)
    msgs = shape([rec], Negotiated(), 1000)
    resps = [rpb.WALStreamResponse.FromString(m) for m in msgs]
    u = Unpacker(COMPRESSORS, 1 << 26)
    u.unpack(resps[0])
    with pytest.raises(UnpackError):  # FIRST followed by a LAST-less jump to a new FIRST
        u.unpack(resps[0])
    u.reset()
    with pytest.raises(UnpackError, match="without its FIRST"):
        u.unpack(resps[1])


def test_corrupt_block_is_an_error() -> None:
    [msg] = shape([record(1, 100)], negotiated("zstd", 2), 1 << 20)
    resp = rpb.WALStreamResponse.FromString(msg)
    resp.compressed_entries = resp.compressed_entries[:-5] + b"\x00" * 5
    with pytest.raises(UnpackError):
        Unpacker(COMPRESSORS, 1 << 26).unpack(resp)


def test_chain_does_not_depend_on_batching() -> None:
    payloads = [encode(s, Op.PUT, b"k", realistic_value(s)) for s in range(1, 101)]
    whole = chain.over(chain.START, payloads)
    c = chain.START
    for i in range(0, 100, 7):
        c = chain.over(c, payloads[i:i + 7])
    assert c == whole
    assert chain.over(chain.START, [*payloads[:-1], payloads[-1][:-1] + b"?"]) != whole


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(0, 5000), min_size=1, max_size=8),
       cap=st.integers(300, 6000))
def test_split_round_trips_any_sizes(sizes: list[int], cap: int) -> None:
    rec = record(1, len(sizes), value=lambda s: b"v" * sizes[s - 1])
    got = unpack_all(shape([rec], Negotiated(), cap), Unpacker(COMPRESSORS, 1 << 26))
    assert got == list(rpb.WALStreamResponse.FromString(rec.body).entries)
