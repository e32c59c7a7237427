"""The hash chain over the log: divergence shows as a differing chain value.

The value after sequence n covers the payloads of sequences 1..n, concatenated. It is two
running checksums packed into 64 bits: CRC-32 (high half) and Adler-32 (low half). Both can
be extended from a previous value, so the chain does not depend on how entries were grouped
into batches or responses, and extending it over a batch is one C call per checksum.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

#: the chain before any entry (CRC-32 starts at 0, Adler-32 at 1)
START = 1


def extend(chain: int, data: bytes) -> int:
    crc = zlib.crc32(data, chain >> 32)
    adler = zlib.adler32(data, chain & 0xFFFFFFFF)
    return (crc << 32) | adler


def over(chain: int, payloads: Iterable[bytes]) -> int:
    return extend(chain, b"".join(payloads))
