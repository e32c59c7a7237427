"""KevoDB's entry payload layout and its checksum.

Layout, integers little-endian: op (1 byte), sequence (8), key length K (4), key (K),
then for Put and Merge only: value length V (4), value (V).
"""

from __future__ import annotations

import enum
import struct
import zlib
from collections.abc import Callable, Sequence
from functools import partial
from itertools import repeat
from operator import add, getitem, itemgetter
from typing import NamedTuple, cast

_HEADER = struct.Struct("<BQI")
_VALUE_LEN = struct.Struct("<I")
HEADER_SIZE = _HEADER.size  # 13


class Op(enum.IntEnum):
    PUT = 1
    DELETE = 2
    MERGE = 3


_VALID_OPS = frozenset(int(op) for op in Op)


class CodecError(ValueError):
    """A payload that does not follow the layout; never applied."""


class Entry(NamedTuple):
    seq: int
    op: int
    key: bytes
    value: bytes


class Columns(NamedTuple):
    """A batch as columns: entry i has sequence first_seq + i, op ops[i], key keys[i] and
    value values[i] (b"" for a delete). What a store applies; no per-entry tuple."""

    first_seq: int
    ops: Sequence[int]
    keys: Sequence[bytes]
    values: Sequence[bytes]

    @property
    def size(self) -> int:
        return len(self.ops)

    @property
    def last_seq(self) -> int:
        return self.first_seq + len(self.ops) - 1


def checksum(payload: bytes) -> int:
    """CRC-32/IEEE, as KevoDB computes it."""
    return zlib.crc32(payload)


def encode(seq: int, op: int, key: bytes, value: bytes = b"") -> bytes:
    if op not in _VALID_OPS:
        raise CodecError(f"unknown op {op}")
    head = _HEADER.pack(op, seq, len(key)) + key
    if op == Op.DELETE:
        return head
    return head + _VALUE_LEN.pack(len(value)) + value


def decode(payload: bytes, expected_seq: int | None = None) -> Entry:
    """Decode one payload; raise CodecError for anything that is not exactly one entry."""
    size = len(payload)
    if size < HEADER_SIZE:
        raise CodecError(f"payload of {size} bytes is shorter than the {HEADER_SIZE}-byte header")
    op, seq, klen = _HEADER.unpack_from(payload, 0)
    if op not in _VALID_OPS:
        raise CodecError(f"unknown op {op} in entry {seq}")
    if expected_seq is not None and seq != expected_seq:
        raise CodecError(f"payload sequence {seq} differs from the message's {expected_seq}")
    kend = HEADER_SIZE + klen
    if kend > size:
        raise CodecError(f"key length {klen} runs past the end of entry {seq}")
    key = payload[HEADER_SIZE:kend]
    if op == Op.DELETE:
        if kend != size:
            raise CodecError(f"{size - kend} trailing bytes after delete entry {seq}")
        return Entry(seq, op, key, b"")
    if kend + 4 > size:
        raise CodecError(f"value length missing in entry {seq}")
    (vlen,) = _VALUE_LEN.unpack_from(payload, kend)
    vstart = kend + 4
    if vstart + vlen != size:
        raise CodecError(
            f"value length {vlen} does not match the {size - vstart} bytes of entry {seq}"
        )
    return Entry(seq, op, key, payload[vstart:])


# -- whole batches ------------------------------------------------------------------------------
# decode_batch does per entry only C-level work (map over struct/slice/bytes builtins), so a
# batch of thousands of entries costs a handful of Python operations, not thousands.

_first = itemgetter(0)
_second = itemgetter(1)
_third = itemgetter(2)
#: build an Entry from a 4-tuple without going through its Python-level __new__
_make_entry = partial(tuple.__new__, Entry)
_PUT = int(Op.PUT)
_DELETE = int(Op.DELETE)
_MERGE = int(Op.MERGE)


_fixed_layouts: dict[tuple[int, int], struct.Struct] = {}
#: payload[slice], typed for mypy
_cut = cast(Callable[[bytes, slice], bytes], getitem)
_fourth = itemgetter(4)
_key_field = itemgetter(3)
_value_field = itemgetter(5)

#: ops, keys and values of a batch
_Fields = tuple[list[int], list[bytes], list[bytes]]


def _decode_fixed(
    payloads: Sequence[bytes], seqs: Sequence[int], klen: int, size: int
) -> _Fields | None:
    """Puts and merges that all have one key size and one value size: one struct unpack per
    payload yields every field. None when the batch does not have that shape (or is bad)."""
    vlen = size - HEADER_SIZE - klen - 4
    if vlen < 0:
        return None
    layout = _fixed_layouts.get((klen, vlen))
    if layout is None:
        if len(_fixed_layouts) >= 64:
            _fixed_layouts.clear()
        layout = _fixed_layouts[(klen, vlen)] = struct.Struct(f"<BQI{klen}sI{vlen}s")
    fields = list(map(layout.unpack, payloads))
    n = len(fields)
    ops = list(map(_first, fields))
    if (
        ops.count(_PUT) + ops.count(_MERGE) != n
        or list(map(_third, fields)).count(klen) != n
        or list(map(_fourth, fields)).count(vlen) != n
        or list(map(_second, fields)) != list(seqs)
    ):
        return None
    return ops, list(map(_key_field, fields)), list(map(_value_field, fields))


def _decode_fields(payloads: Sequence[bytes], seqs: Sequence[int]) -> _Fields | None:
    """The ops, keys and values of many payloads, payload i carrying sequence seqs[i]; None
    when any payload is malformed. Never raises for bad input."""
    n = len(payloads)
    if n != len(seqs):
        return None
    if n == 0:
        return [], [], []
    sizes = list(map(len, payloads))
    size = sizes[0]
    if size >= HEADER_SIZE and sizes.count(size) == n:
        fixed = _decode_fixed(payloads, seqs, _HEADER.unpack_from(payloads[0])[2], size)
        if fixed is not None:
            return fixed
    try:
        heads = list(map(_HEADER.unpack_from, payloads))
    except struct.error:
        return None  # a payload shorter than the header
    ops = list(map(_first, heads))
    if list(map(_second, heads)) != list(seqs):
        return None
    kends = list(map(add, map(_third, heads), repeat(HEADER_SIZE)))
    deletes = ops.count(_DELETE)
    if deletes + ops.count(_PUT) + ops.count(_MERGE) != n:
        return None  # an unknown op
    if deletes == 0 and kends.count(kends[0]) == n:
        # one key size throughout (the common case): one slice object serves every entry
        kend = kends[0]
        try:
            vlens = list(map(_first, map(_VALUE_LEN.unpack_from, payloads, repeat(kend))))
        except struct.error:
            return None
        if list(map(add, vlens, repeat(kend + 4))) != sizes:
            return None
        keys = list(map(_cut, payloads, repeat(slice(HEADER_SIZE, kend))))
        values = list(map(_cut, payloads, repeat(slice(kend + 4, None))))
        return ops, keys, values
    keys = list(map(_cut, payloads, map(slice, repeat(HEADER_SIZE), kends)))
    if deletes == 0:
        try:
            vlens = list(map(_first, map(_VALUE_LEN.unpack_from, payloads, kends)))
        except struct.error:
            return None  # key past the end, or no room for the value length
        vstarts = list(map(add, kends, repeat(4)))
        if list(map(add, vstarts, vlens)) != sizes:
            return None
        values = list(map(_cut, payloads, map(slice, vstarts, repeat(None))))
        return ops, keys, values
    if deletes == n:
        if kends != sizes:
            return None
        return ops, keys, [b""] * n
    # a mix: rare enough that a per-entry loop is fine; decode() validates each payload
    try:
        entries = [decode(p, s) for p, s in zip(payloads, seqs, strict=True)]
    except CodecError:
        return None
    return [e.op for e in entries], [e.key for e in entries], [e.value for e in entries]


def decode_columns(payloads: Sequence[bytes], first_seq: int) -> Columns | None:
    """Decode payloads carrying sequences first_seq, first_seq+1, ... into columns, with no
    per-entry object beyond the keys and values themselves. None when any payload is
    malformed (the caller then decodes one by one to find and report the first bad one)."""
    fields = _decode_fields(payloads, range(first_seq, first_seq + len(payloads)))
    if fields is None:
        return None
    return Columns(first_seq, *fields)


def decode_batch(payloads: Sequence[bytes], seqs: Sequence[int]) -> list[Entry] | None:
    """Decode many payloads, payload i carrying sequence seqs[i].

    Returns the entries, exactly as decode() would, when every payload is well formed;
    None when any is not. Never raises for bad input.
    """
    fields = _decode_fields(payloads, seqs)
    if fields is None:
        return None
    return list(map(_make_entry, zip(seqs, *fields, strict=True)))


def columns_of(entries: Sequence[Entry], first_seq: int) -> Columns:
    """Entries known to run first_seq, first_seq+1, ... as columns (a slow path's output)."""
    return Columns(
        first_seq, [e.op for e in entries], [e.key for e in entries], [e.value for e in entries]
    )
