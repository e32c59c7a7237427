"""Column blocks (protocol 2): encode/decode round trips with edge cases, every kind of damage
refused, the chain values a block carries, and how the primary's shaping and the replica's
unpacking treat blocks (v1 peers get per-entry payloads; compression composes)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest

from kevo_repl.errors import ReplicationError
from kevo_repl.protocol import blocks
from kevo_repl.protocol import chain as chain_mod
from kevo_repl.protocol.codec import Columns, Entry, Op, decode, encode
from kevo_repl.protocol.proto import replication_pb2 as rpb
from kevo_repl.protocol.records import (
    Record,
    chain_of,
    decode_body,
    encode_block_body,
    encode_body,
    entries_body,
    payloads_through,
    trim_body,
)
from kevo_repl.protocol.wire import Negotiated, Unpacker, UnpackError, negotiate, shape
from kevo_repl.storage.wal import WAL

MIB = 1 << 20


def _payload_chain(before: int, cols: Columns) -> int:
    return chain_mod.over(before, [
        encode(cols.first_seq + i, op, k, v)
        for i, (op, k, v) in enumerate(zip(cols.ops, cols.keys, cols.values, strict=True))
    ])


EDGE_CASES = {
    "one put": Columns(1, [Op.PUT], [b"k"], [b"v"]),
    "empty values": Columns(7, [Op.PUT, Op.PUT, Op.MERGE], [b"a", b"b", b"c"], [b"", b"", b""]),
    "511-byte keys": Columns(3, [Op.PUT] * 4, [bytes([i]) * 511 for i in range(4)],
                             [b"v" * i for i in range(4)]),
    "deletes only": Columns(100, [Op.DELETE] * 3, [b"x", b"yy", b"zzz"], [b"", b"", b""]),
    "mixed ops and sizes": Columns(
        2**40, [Op.PUT, Op.DELETE, Op.MERGE, Op.PUT, Op.DELETE],
        [b"k1", b"k22", b"k1", b"\x00" * 511, b"q"], [b"v" * 300, b"", b"m", b"", b""]),
    "fixed-size keys and values": Columns(
        1, [Op.PUT] * 1000, [f"key{i:013d}".encode() for i in range(1000)], [b"v" * 100] * 1000),
}


@pytest.mark.parametrize("case", EDGE_CASES.values(), ids=list(EDGE_CASES))
def test_round_trip_keeps_every_field_and_the_payload_chain(case: Columns) -> None:
    block = blocks.encode_block(case, chain_mod.START)
    wire = rpb.ColumnBlock.FromString(block.SerializeToString())
    got = blocks.decode_block(wire)
    assert got.first_seq == case.first_seq
    assert list(got.ops) == [int(op) for op in case.ops]
    assert list(got.keys) == list(case.keys)
    assert list(got.values) == list(case.values)
    assert all(type(k) is bytes for k in got.keys) and all(type(v) is bytes for v in got.values)
    # the chain is the one over KevoDB payloads, whatever form the batch travels in
    assert wire.chain_before == chain_mod.START
    assert wire.chain_after == _payload_chain(chain_mod.START, case)
    payloads = blocks.payloads(got.first_seq, got.ops, got.keys, got.values)
    assert [decode(p, case.first_seq + i) for i, p in enumerate(payloads)] == [
        Entry(case.first_seq + i, op, k, v)
        for i, (op, k, v) in enumerate(zip(case.ops, case.keys, case.values, strict=True))]


def test_a_64_mib_value_round_trips_and_travels_as_fragments_not_as_one_block() -> None:
    value = bytes(range(256)) * (64 * MIB // 256)
    cols = Columns(5, [Op.PUT, Op.PUT], [b"big", b"small"], [value, b"s"])
    got = blocks.decode_block(blocks.encode_block(cols, 9))
    assert got.values[0] == value and got.values[1] == b"s"
    # a block record bigger than the response cap goes as entries, the big one in fragments
    body, chain_after = encode_block_body([Entry(5, Op.PUT, b"big", value),
                                          Entry(6, Op.PUT, b"small", b"s")], 9)
    msgs = shape([Record(5, 2, body)], Negotiated(columns=True), 4 * MIB)
    assert len(msgs) > 16 and all(len(m) <= 4 * MIB + 64 for m in msgs)
    unpacker = Unpacker({}, 128 * MIB)
    out = [unpacker.unpack(rpb.WALStreamResponse.FromString(m)) for m in msgs]
    assert all(o is None for o in out[:-1])
    whole = out[-1]
    assert whole is not None and not whole.blocks and whole.chain == chain_after
    assert [decode(e.payload, e.sequence_number).value for e in whole.entries] == [value, b"s"]
    # and a replica whose limit is below the block refuses it rather than allocate it
    small = Unpacker({}, 32 * MIB)
    with pytest.raises(UnpackError):
        for m in msgs:
            small.unpack(rpb.WALStreamResponse.FromString(m))


def _good() -> rpb.ColumnBlock:
    return blocks.encode_block(EDGE_CASES["mixed ops and sizes"], 12345)


def _resealed(block: rpb.ColumnBlock) -> rpb.ColumnBlock:
    """A block with a correct CRC over whatever it holds: only the structural checks can
    refuse it."""
    block.crc = blocks.block_crc(block)
    return block


def _damage_crc() -> rpb.ColumnBlock:
    b = _good()
    b.keys = b.keys[:-1] + bytes([b.keys[-1] ^ 1])
    return b


def _damage_truncated_key_lengths() -> rpb.ColumnBlock:
    b = _good()
    b.key_lengths = b.key_lengths[:-2]
    return _resealed(b)


def _damage_truncated_value_lengths() -> rpb.ColumnBlock:
    b = _good()
    b.value_lengths = b.value_lengths[:4]
    return _resealed(b)


def _damage_key_lengths_do_not_add_up() -> rpb.ColumnBlock:
    b = _good()
    lens = list(struct.unpack(f"<{len(b.ops)}I", b.key_lengths))
    lens[0] += 1
    b.key_lengths = struct.pack(f"<{len(lens)}I", *lens)
    return _resealed(b)


def _damage_value_blob_truncated() -> rpb.ColumnBlock:
    b = _good()
    b.values = b.values[:-10]
    return _resealed(b)


def _damage_huge_length() -> rpb.ColumnBlock:
    b = _good()
    lens = list(struct.unpack(f"<{len(b.ops)}I", b.value_lengths))
    lens[0] = 0xFFFFFFFF  # a hostile length: refused before anything is sliced or allocated
    b.value_lengths = struct.pack(f"<{len(lens)}I", *lens)
    return _resealed(b)


def _damage_unknown_op() -> rpb.ColumnBlock:
    b = _good()
    b.ops = b"\x01\x02\x07\x01\x02"
    return _resealed(b)


def _damage_delete_with_value() -> rpb.ColumnBlock:
    cols = Columns(1, [Op.DELETE, Op.PUT], [b"a", b"b"], [b"x", b"y"])
    return blocks.encode_block(cols, 1)


def _damage_empty() -> rpb.ColumnBlock:
    return _resealed(rpb.ColumnBlock(first_sequence=3))


def _damage_sequence_zero() -> rpb.ColumnBlock:
    b = _good()
    b.first_sequence = 0
    return _resealed(b)


def _damage_chain_after() -> rpb.ColumnBlock:
    b = _good()
    b.chain_after ^= 1  # covered by the CRC, so a flipped chain is damage too
    return b


DAMAGE = {f.__name__.removeprefix("_damage_"): f for f in (
    _damage_crc, _damage_truncated_key_lengths, _damage_truncated_value_lengths,
    _damage_key_lengths_do_not_add_up, _damage_value_blob_truncated, _damage_huge_length,
    _damage_unknown_op, _damage_delete_with_value, _damage_empty, _damage_sequence_zero,
    _damage_chain_after)}


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=list(DAMAGE))
def test_damaged_blocks_are_refused(damage) -> None:  # type: ignore[no-untyped-def]
    block = damage()
    with pytest.raises(blocks.BlockError):
        blocks.decode_block(block)
    got = blocks.receive([block], 1, 0)
    assert got.columns is None and got.corrupt and got.problem


def test_receive_takes_good_blocks_before_a_damaged_one_and_stops_there() -> None:
    a = blocks.encode_block(Columns(1, [Op.PUT] * 3, [b"a", b"b", b"c"], [b"1", b"2", b"3"]), 1)
    bad = _damage_crc()
    got = blocks.receive([a, bad, a], 1, chain_mod.START)
    assert got.corrupt and got.problem is not None and "CRC" in got.problem
    assert got.columns is not None and got.columns.last_seq == 3
    assert got.chain == a.chain_after


def _chained(n_blocks: int, per: int) -> list[rpb.ColumnBlock]:
    out, chain_value, seq = [], chain_mod.START, 1
    for _ in range(n_blocks):
        cols = Columns(seq, [Op.PUT] * per, [b"k%d" % s for s in range(seq, seq + per)],
                       [b"v%d" % s for s in range(seq, seq + per)])
        block = blocks.encode_block(cols, chain_value)
        out.append(block)
        chain_value, seq = block.chain_after, seq + per
    return out


def test_receive_joins_blocks_skips_duplicates_exactly_and_stops_at_a_gap() -> None:
    bs = _chained(4, 5)  # sequences 1..20
    everything = blocks.receive(bs, 1, chain_mod.START)
    assert everything.problem is None and everything.columns is not None
    assert everything.columns.first_seq == 1 and everything.columns.size == 20
    assert everything.chain == bs[-1].chain_after
    # received through 7: block 1 is skipped, block 2 is cut at 8, its chain checked at 7
    cols = everything.columns
    first7 = Columns(1, cols.ops[:7], cols.keys[:7], cols.values[:7])
    got = blocks.receive(bs, 8, _payload_chain(chain_mod.START, first7))
    assert got.skipped == 7 and got.columns is not None and got.columns.first_seq == 8
    assert got.columns.keys[0] == b"k8" and got.columns.size == 13 and got.problem is None
    # a wrong chain at 7 is a fork at exactly that sequence
    with pytest.raises(ReplicationError, match="after sequence 7"):
        blocks.receive(bs, 8, _payload_chain(chain_mod.START, first7) ^ 1)
    # unknown chain (0): adopted, not checked
    assert blocks.receive(bs[2:], 11, 0).chain == bs[-1].chain_after
    # a gap: blocks 1 and 3 only
    gap = blocks.receive([bs[0], bs[2]], 1, chain_mod.START)
    assert gap.problem is not None and "gap" in gap.problem and not gap.corrupt
    assert gap.columns is not None and gap.columns.last_seq == 5


def test_block_record_bodies_serve_every_reader_of_the_wal() -> None:
    entries = [Entry(10, Op.PUT, b"a", b"1"), Entry(11, Op.DELETE, b"b", b""),
               Entry(12, Op.MERGE, b"c", b"3")]
    body, after = encode_block_body(entries, 777)
    plain, plain_after = encode_body(entries, 777)
    assert blocks.is_block_body(body) and not blocks.is_block_body(plain)
    assert after == plain_after  # one chain, whatever the form
    record = Record(10, 3, body)
    assert chain_of(record) == after
    assert decode_body(body) == entries == decode_body(plain)
    assert entries_body(body) == plain  # what a v1 peer gets: exactly the old form
    assert payloads_through(body, 11) == [encode(10, Op.PUT, b"a", b"1"),
                                          encode(11, Op.DELETE, b"b")]
    # trimmed to start inside the record: the chain before is the one at 10
    trimmed = trim_body(body, 11)
    assert trimmed is not None
    [blk] = rpb.WALStreamResponse.FromString(trimmed).blocks
    assert blk.chain_before == chain_mod.over(777, [encode(10, Op.PUT, b"a", b"1")])
    assert blk.chain_after == after
    assert trim_body(plain, 11) is None


def _request(**kw: object) -> rpb.WALStreamRequest:
    return rpb.WALStreamRequest(start_sequence=1, **kw)  # type: ignore[arg-type]


def test_only_protocol_2_peers_that_ask_get_blocks() -> None:
    assert negotiate(_request(protocol_version=2, column_blocks=True), {}).columns
    assert not negotiate(_request(protocol_version=2), {}).columns
    assert not negotiate(_request(protocol_version=1, column_blocks=True), {}).columns
    body, _ = encode_block_body([Entry(1, Op.PUT, b"k", b"v")], chain_mod.START)
    v1 = rpb.WALStreamResponse.FromString(shape([Record(1, 1, body)], Negotiated(), MIB)[0])
    assert not v1.blocks and [e.sequence_number for e in v1.entries] == [1]
    assert v1.entries[0].checksum == zlib.crc32(v1.entries[0].payload)
    v2 = rpb.WALStreamResponse.FromString(
        shape([Record(1, 1, body)], Negotiated(columns=True), MIB)[0])
    assert len(v2.blocks) == 1 and not v2.entries


def test_a_wal_of_both_forms_is_sent_in_runs_never_mixed() -> None:
    old, chain1 = encode_body([Entry(1, Op.PUT, b"a", b"1"), Entry(2, Op.PUT, b"b", b"2")], 1)
    new, chain2 = encode_block_body([Entry(3, Op.PUT, b"c", b"3")], chain1)
    new2, _ = encode_block_body([Entry(4, Op.PUT, b"d", b"4")], chain2)
    records = [Record(1, 2, old), Record(3, 1, new), Record(4, 1, new2)]
    msgs = [rpb.WALStreamResponse.FromString(m)
            for m in shape(records, Negotiated(columns=True), MIB)]
    assert [(len(m.entries), len(m.blocks)) for m in msgs] == [(2, 0), (0, 2)]
    unpacker = Unpacker({}, MIB)
    for m in msgs:
        assert unpacker.unpack(m) is m
    (plain,) = shape(records, Negotiated(), MIB)
    assert [e.sequence_number for e in rpb.WALStreamResponse.FromString(plain).entries] == [
        1, 2, 3, 4]


class _Zlib:
    codec_id = 1

    def compress(self, data: bytes) -> bytes:
        return zlib.compress(data)

    def decompress(self, data: bytes, max_size: int) -> bytes:
        from kevo_repl.protocol.compression import DecompressionError
        d = zlib.decompressobj()
        out = d.decompress(data, max_size + 1)
        if len(out) > max_size:
            raise DecompressionError("too big")
        return out


def test_compression_composes_with_blocks() -> None:
    bs = _chained(3, 200)
    records = [Record(b.first_sequence, 200, blocks.block_body(b)) for b in bs]
    neg = Negotiated(_Zlib(), block=True, columns=True)
    (msg,) = shape(records, neg, 4 * MIB)
    resp = rpb.WALStreamResponse.FromString(msg)
    assert resp.compressed_entries and not resp.blocks
    assert len(msg) < sum(len(r.body) for r in records) // 2
    out = Unpacker({1: _Zlib()}, 4 * MIB).unpack(resp)
    assert out is not None and [b.first_sequence for b in out.blocks] == [1, 201, 401]
    assert out.chain == bs[-1].chain_after
    got = blocks.receive(out.blocks, 1, chain_mod.START)
    assert got.columns is not None and got.columns.size == 600 and got.problem is None
    # a compressed block that would decompress past the replica's limit is refused
    with pytest.raises(UnpackError):
        Unpacker({1: _Zlib()}, 1000).unpack(resp)


def test_blocks_mixed_with_entries_or_partial_batches_are_refused() -> None:
    (b,) = _chained(1, 3)
    with pytest.raises(UnpackError):
        Unpacker({}, MIB).unpack(rpb.WALStreamResponse(
            blocks=[b],
            entries=[rpb.WALEntry(sequence_number=4, payload=encode(4, Op.PUT, b"k", b"v"))]))
    with pytest.raises(UnpackError):
        Unpacker({}, MIB).unpack(rpb.WALStreamResponse(blocks=[b], partial_batch=True))


def test_a_wal_of_both_forms_reads_from_inside_a_block_record_with_the_exact_chain(
    tmp_path: Path,
) -> None:
    """A read that starts inside a block record gets the block trimmed there, its chain
    before being the payload chain at the sequence before; older entries records still read."""
    old_entries = [Entry(s, Op.PUT, b"k%d" % s, b"v%d" % s) for s in range(1, 4)]
    old, chain_value = encode_body(old_entries, chain_mod.START)
    records, payloads = [Record(1, 3, old)], [encode(e.seq, e.op, e.key, e.value)
                                               for e in old_entries]
    seq = 4
    for n in (4, 1, 6):
        ents = [Entry(s, Op.DELETE if s % 3 == 0 else Op.PUT, b"k%d" % s,
                      b"" if s % 3 == 0 else b"v" * s) for s in range(seq, seq + n)]
        body, chain_value = encode_block_body(ents, chain_value)
        records.append(Record(seq, n, body))
        payloads += [encode(e.seq, e.op, e.key, e.value) for e in ents]
        seq += n
    with WAL(tmp_path / "wal", segment_bytes=300) as wal:
        wal.append(records)
        for start in range(1, seq):
            got = wal.read(start, MIB)
            assert got[0].first_seq == start and got[-1].last_seq == seq - 1
            first = rpb.WALStreamResponse.FromString(got[0].body)
            if first.blocks:
                assert first.blocks[0].first_sequence == start
                assert first.blocks[0].chain_before == chain_mod.over(
                    chain_mod.START, payloads[:start - 1])
                assert first.blocks[0].chain_after == chain_of(records[[
                    r.first_seq <= start <= r.last_seq for r in records].index(True)])
            joined = [e for r in got for e in decode_body(r.body)]
            assert [e.seq for e in joined] == list(range(start, seq))
            assert [encode(e.seq, e.op, e.key, e.value) for e in joined] == payloads[start - 1:]
