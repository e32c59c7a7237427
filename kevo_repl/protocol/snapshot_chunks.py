"""The record format inside a snapshot chunk.

    data   records back to back: u32 key length, key, u32 value length, value (little-endian),
           keys strictly ascending across the whole snapshot
"""

from __future__ import annotations

import struct

from kevo_repl.errors import KevoReplError

_LEN = struct.Struct("<I")


class ChunkError(KevoReplError):
    """A snapshot chunk that does not decode (bad lengths or an impossible key order)."""


def encode_records(pairs: list[tuple[bytes, bytes]]) -> bytes:
    pack = _LEN.pack
    parts: list[bytes] = []
    for key, value in pairs:
        parts += (pack(len(key)), key, pack(len(value)), value)
    return b"".join(parts)


def decode_records(data: bytes, count: int) -> list[tuple[bytes, bytes]]:
    """The `count` records of a chunk's data; ChunkError when they do not fit exactly."""
    out: list[tuple[bytes, bytes]] = []
    view = memoryview(data)
    unpack = _LEN.unpack_from
    pos = 0
    end = len(data)
    try:
        for _ in range(count):
            (klen,) = unpack(data, pos)
            pos += 4
            key = bytes(view[pos : pos + klen])
            pos += klen
            (vlen,) = unpack(data, pos)
            pos += 4
            value = bytes(view[pos : pos + vlen])
            pos += vlen
            if pos > end:
                raise ChunkError(f"record {len(out)} runs past the end of the chunk")
            out.append((key, value))
    except struct.error as exc:
        raise ChunkError(f"record {len(out)} is truncated") from exc
    if pos != end:
        raise ChunkError(f"{end - pos} bytes follow the chunk's {count} records")
    return out
