"""Columnar blocks (protocol version 2): one write batch as packed columns.

A `ColumnBlock` carries a batch's ops (one byte each), key and value lengths (u32
little-endian arrays), the keys and the values as two blobs, the hash chain before and after
the batch, and one CRC-32 over all of it. The primary keeps WAL records in this form, so
serving a block is a file read; the replica checks and slices a block with C-level
operations only (one `zlib.crc32` per part, `array`, `sum`, `itertools`, `map` over
builtins): no Python code runs per entry on the happy path.

The hash chain stays the one over KevoDB payloads (`protocol/chain.py`), so chain values
are the same whatever form a batch travelled in. A block carries the chain after
`first_sequence - 1` and after its last entry: a replica compares the first with its own
value (the exact fork check at that sequence) and, the block's CRC being good, adopts the
second, which the primary computed over exactly these entries. `payloads` rebuilds the
KevoDB payloads where a chain value inside a block is needed (a trimmed record, a replica
that skips duplicates at a block's start).
"""

from __future__ import annotations

import struct
import sys
import zlib
from array import array
from collections.abc import Callable, Iterable, Sequence
from itertools import accumulate, chain, compress, repeat
from operator import add, getitem, itemgetter, mul
from typing import NamedTuple, cast

from kevo_repl.errors import ReplicationError
from kevo_repl.protocol import chain as chain_mod
from kevo_repl.protocol.codec import Columns, Op
from kevo_repl.protocol.proto import replication_pb2 as rpb

_HEAD = struct.Struct("<QQQ")  # first_sequence, chain_before, chain_after: what the CRC starts with
_PAYLOAD_HEAD = struct.Struct("<BQI")
_VALUE_LEN = struct.Struct("<I")
_U32 = "I"  # the array type code of 4-byte unsigned items on every platform CPython runs on
if array(_U32).itemsize != 4:
    raise ImportError(f"column blocks need 4-byte array items; {_U32!r} has {array(_U32).itemsize}")
_SWAP = sys.byteorder != "little"
_PUT, _DELETE, _MERGE = int(Op.PUT), int(Op.DELETE), int(Op.MERGE)
_first = itemgetter(0)
_is_delete = cast(Callable[[int], bool], _DELETE.__eq__)
_not_delete = cast(Callable[[int], bool], _DELETE.__ne__)
#: blob[slice], typed for mypy
_cut = cast(Callable[[bytes, slice], bytes], getitem)
#: the wire tag that starts a WAL record body in block form (field 23, length-delimited)
BLOCK_BODY_TAG = b"\xba\x01"


class BlockError(ValueError):
    """A block that is damaged or does not add up; never applied."""


def _u32s(data: bytes) -> array[int]:
    out = array(_U32)
    out.frombytes(data)
    if _SWAP:
        out.byteswap()
    return out


def _pack_u32s(values: Iterable[int]) -> bytes:
    out = array(_U32, values)
    if _SWAP:
        out.byteswap()
    return out.tobytes()


def block_crc(block: rpb.ColumnBlock) -> int:
    crc = zlib.crc32(_HEAD.pack(block.first_sequence, block.chain_before, block.chain_after))
    for part in (block.ops, block.key_lengths, block.value_lengths, block.keys, block.values):
        crc = zlib.crc32(part, crc)
    return crc


def payloads(first_seq: int, ops: Sequence[int], keys: Sequence[bytes],
             values: Sequence[bytes]) -> list[bytes]:
    """The KevoDB payloads of columns (what the hash chain runs over), with C-level maps."""
    n = len(ops)
    heads = map(_PAYLOAD_HEAD.pack, ops, range(first_seq, first_seq + n), map(len, keys))
    tails: Iterable[bytes] = map(add, map(_VALUE_LEN.pack, map(len, values)), values)
    if _DELETE in ops:  # a delete's payload ends after its key: its tail times False is b""
        tails = map(mul, tails, map(_not_delete, ops))
    return list(map(add, map(add, heads, keys), tails))


def encode_block(columns: Columns, chain_before: int) -> rpb.ColumnBlock:
    """The block of `columns` (values of deletes are b""), its chain values and CRC."""
    ops, keys, values = columns.ops, columns.keys, columns.values
    after = chain_mod.over(chain_before, payloads(columns.first_seq, ops, keys, values))
    block = rpb.ColumnBlock(
        first_sequence=columns.first_seq,
        ops=bytes(ops),
        key_lengths=_pack_u32s(map(len, keys)),
        value_lengths=_pack_u32s(map(len, values)),
        keys=b"".join(keys),
        values=b"".join(values),
        chain_before=chain_before,
        chain_after=after,
    )
    block.crc = block_crc(block)
    return block


def _split(blob: bytes, lengths: array[int]) -> list[bytes]:
    """blob cut into pieces of the given lengths (which sum to len(blob))."""
    n = len(lengths)
    size = lengths[0]
    if size and lengths.count(size) == n:
        # one size throughout (the common case for keys): one C loop yields every piece
        return list(map(_first, struct.iter_unpack(f"{size}s", blob)))
    ends = list(accumulate(lengths))
    return list(map(_cut, repeat(blob), map(slice, chain((0,), ends), ends)))


def decode_block(block: rpb.ColumnBlock) -> Columns:
    """A block's columns; BlockError when its CRC is wrong, an array is truncated, an op is
    unknown, the lengths do not add up to the blobs, or a delete carries a value."""
    ops = block.ops
    n = len(ops)
    first = block.first_sequence
    if n == 0:
        raise BlockError(f"block at sequence {first} holds no entries")
    if first == 0:
        raise BlockError("block starts at sequence 0; sequences start at 1")
    key_lengths, value_lengths = block.key_lengths, block.value_lengths
    if len(key_lengths) != 4 * n or len(value_lengths) != 4 * n:
        raise BlockError(
            f"block {first}: {n} ops but {len(key_lengths)} bytes of key lengths and "
            f"{len(value_lengths)} of value lengths (truncated arrays)")
    if block_crc(block) != block.crc:
        raise BlockError(f"block {first}..{first + n - 1}: CRC mismatch")
    deletes = ops.count(_DELETE)
    if ops.count(_PUT) + deletes + ops.count(_MERGE) != n:
        raise BlockError(f"block {first}: unknown op")
    klens, vlens = _u32s(key_lengths), _u32s(value_lengths)
    keys_blob, values_blob = block.keys, block.values
    if sum(klens) != len(keys_blob) or sum(vlens) != len(values_blob):
        raise BlockError(
            f"block {first}: lengths add up to {sum(klens)} key and {sum(vlens)} value bytes, "
            f"the blobs hold {len(keys_blob)} and {len(values_blob)}")
    if deletes and any(compress(vlens, map(_is_delete, ops))):
        raise BlockError(f"block {first}: a delete carries a value")
    return Columns(first, ops, _split(keys_blob, klens), _split(values_blob, vlens))


def block_body(block: rpb.ColumnBlock) -> bytes:
    """A WAL record body in block form: the block, then the chain after it. Starts with
    BLOCK_BODY_TAG (written in this order, not left to the serializer), so the form of a
    record shows in its first bytes."""
    head = rpb.WALStreamResponse(blocks=[block]).SerializeToString()
    tail = rpb.WALStreamResponse(chain=block.chain_after).SerializeToString()
    return bytes(head) + bytes(tail)


def is_block_body(body: bytes) -> bool:
    return body[:2] == BLOCK_BODY_TAG


def trim(block: rpb.ColumnBlock, from_seq: int) -> rpb.ColumnBlock:
    """The part of a (checked) block from `from_seq` on, with its chain before recomputed."""
    cols = decode_block(block)
    skip = from_seq - cols.first_seq
    if not 0 <= skip < cols.size:
        raise BlockError(f"block {cols.first_seq}..{cols.last_seq} does not hold {from_seq}")
    before = chain_mod.over(
        block.chain_before,
        payloads(cols.first_seq, cols.ops[:skip], cols.keys[:skip], cols.values[:skip]))
    rest = Columns(from_seq, cols.ops[skip:], cols.keys[skip:], cols.values[skip:])
    out = encode_block(rest, before)
    if out.chain_after != block.chain_after:
        raise BlockError(f"block {cols.first_seq}: its chain values do not match its entries")
    return out


def to_entries(block: rpb.ColumnBlock) -> list[rpb.WALEntry]:
    """A block as per-entry payloads, for peers that did not ask for blocks (KevoDB)."""
    cols = decode_block(block)
    return [
        rpb.WALEntry(sequence_number=seq, payload=p, checksum=zlib.crc32(p))
        for seq, p in zip(range(cols.first_seq, cols.last_seq + 1),
                          payloads(cols.first_seq, cols.ops, cols.keys, cols.values),
                          strict=True)
    ]


class Received(NamedTuple):
    """What a response's blocks add after the received position."""

    #: the entries from the expected sequence on, joined (None: nothing new)
    columns: Columns | None
    #: entries at or below the received position, skipped
    skipped: int
    #: the hash chain after `columns` (0: unknown)
    chain: int
    #: why the rest of the response was not taken (a damaged block, a gap), or None
    problem: str | None
    #: the problem is damage (else a gap)
    corrupt: bool


def receive(blocks: Sequence[rpb.ColumnBlock], expected: int, chain_value: int) -> Received:
    """Check a response's blocks against the received position (`expected` is the next
    sequence wanted, `chain_value` the chain before it, 0 when unknown) and slice them into
    columns. Python work is per block, not per entry. Raises ReplicationError when a block's
    chain before differs from ours: a forked history, nothing of it taken."""
    parts: list[Columns] = []
    skipped = 0
    problem: str | None = None
    corrupt = False
    for block in blocks:
        try:
            cols = decode_block(block)
        except BlockError as exc:
            problem, corrupt = f"corrupt block: {exc}", True
            break
        if cols.last_seq < expected:
            skipped += cols.size
            continue
        if cols.first_seq > expected:
            problem = f"gap: expected sequence {expected}, got {cols.first_seq}"
            break
        before = block.chain_before
        skip = expected - cols.first_seq
        if skip:  # duplicates at the block's start: the chain at `expected - 1` is inside it
            before = chain_mod.over(before, payloads(
                cols.first_seq, cols.ops[:skip], cols.keys[:skip], cols.values[:skip]))
            cols = Columns(expected, cols.ops[skip:], cols.keys[skip:], cols.values[skip:])
            skipped += skip
        if chain_value and before != chain_value:
            raise ReplicationError(
                f"divergence: after sequence {expected - 1} this replica's hash chain is "
                f"{chain_value:016x} but the primary's is {before:016x}; entries "
                f"{expected}..{cols.last_seq} were not applied")
        chain_value = block.chain_after
        parts.append(cols)
        expected = cols.last_seq + 1
    return Received(_join(parts), skipped, chain_value, problem, corrupt)


def _join(parts: Sequence[Columns]) -> Columns | None:
    if len(parts) <= 1:
        return parts[0] if parts else None
    return Columns(
        parts[0].first_seq,
        list(chain.from_iterable(p.ops for p in parts)),
        list(chain.from_iterable(p.keys for p in parts)),
        list(chain.from_iterable(p.values for p in parts)),
    )
