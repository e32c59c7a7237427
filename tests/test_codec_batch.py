"""decode_batch: the same entries as decode() one by one, or None for anything malformed."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from kevo_repl.protocol.codec import (
    CodecError,
    Entry,
    Op,
    decode,
    decode_batch,
    decode_columns,
    encode,
)

VECTORS = json.loads((Path(__file__).parent / "vectors" / "kevodb_payloads.json").read_text())

ops = st.sampled_from([int(Op.PUT), int(Op.DELETE), int(Op.MERGE)])
entry = st.tuples(ops, st.binary(min_size=1, max_size=20), st.binary(max_size=30))


def test_vectors_decode_as_one_batch() -> None:
    payloads = [bytes.fromhex(v["payload_hex"]) for v in VECTORS]
    seqs = [v["sequence"] for v in VECTORS]
    want = [decode(p, s) for p, s in zip(payloads, seqs, strict=True)]
    assert decode_batch(payloads, seqs) == want


@given(st.lists(entry, max_size=40), st.integers(1, 2**40))
def test_same_as_decode(items: list[tuple[int, bytes, bytes]], first: int) -> None:
    seqs = list(range(first, first + len(items)))
    payloads = [encode(s, op, k, v) for s, (op, k, v) in zip(seqs, items, strict=True)]
    got = decode_batch(payloads, seqs)
    assert got == [decode(p, s) for p, s in zip(payloads, seqs, strict=True)]
    assert got is not None and all(type(e) is Entry for e in got)


@given(st.lists(entry, min_size=1, max_size=10), st.data())
def test_damage_gives_none_exactly_when_decode_fails(
    items: list[tuple[int, bytes, bytes]], data: st.DataObject
) -> None:
    seqs = list(range(1, len(items) + 1))
    payloads = [encode(s, op, k, v) for s, (op, k, v) in zip(seqs, items, strict=True)]
    i = data.draw(st.integers(0, len(payloads) - 1))
    p = bytearray(payloads[i])
    cut = data.draw(st.booleans())
    if cut:
        p = p[: data.draw(st.integers(0, len(p) - 1))]
    else:
        pos = data.draw(st.integers(0, len(p) - 1))
        p[pos] ^= data.draw(st.integers(1, 255))
    payloads[i] = bytes(p)
    try:
        want: list[Entry] | None = [decode(q, s) for q, s in zip(payloads, seqs, strict=True)]
    except CodecError:
        want = None
    assert decode_batch(payloads, seqs) == want


def test_mismatched_lengths_and_sequences() -> None:
    p = encode(5, Op.PUT, b"k", b"v")
    assert decode_batch([p], [5, 6]) is None
    assert decode_batch([p], [6]) is None
    assert decode_batch([], []) == []


def test_decode_columns_matches_decode_one_by_one() -> None:
    """decode_columns: the same ops, keys and values as decode(), as columns, on every path
    (fixed layout, one key size, mixed sizes, all deletes, a mix)."""
    shapes = [
        [(Op.PUT, b"k%03d" % i, b"v" * 10) for i in range(50)],
        [(Op.MERGE, b"key", b"v" * i) for i in range(50)],
        [(Op.PUT, b"k" * (1 + i % 7), b"v" * (i % 5)) for i in range(50)],
        [(Op.DELETE, b"k" * (1 + i % 3), b"") for i in range(50)],
        [((Op.PUT, Op.DELETE, Op.MERGE)[i % 3], b"k%d" % i, b"" if i % 3 == 1 else b"x")
         for i in range(50)],
    ]
    for shape in shapes:
        payloads = [encode(100 + i, op, k, v) for i, (op, k, v) in enumerate(shape)]
        got = decode_columns(payloads, 100)
        assert got is not None
        want = [decode(p, 100 + i) for i, p in enumerate(payloads)]
        assert (got.first_seq, got.size, got.last_seq) == (100, 50, 149)
        assert list(got.ops) == [e.op for e in want]
        assert list(got.keys) == [e.key for e in want]
        assert list(got.values) == [e.value for e in want]
        # the wrong first sequence, or one damaged payload, is refused as a whole
        assert decode_columns(payloads, 101) is None
        assert decode_columns([*payloads[:10], payloads[10][:-1], *payloads[11:]], 100) is None
