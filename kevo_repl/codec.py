"""KevoDB's entry payload layout and its checksum.

Layout, integers little-endian: op (1 byte), sequence (8), key length K (4), key (K),
then for Put and Merge only: value length V (4), value (V).
"""

from __future__ import annotations

import enum
import struct
import zlib
from typing import NamedTuple

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
