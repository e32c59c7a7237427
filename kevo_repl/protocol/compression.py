"""The compressor contract, and the helpers the wire code uses around it."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from kevo_repl.errors import KevoReplError

#: wire codec ids (kevo.replication.CompressionCodec)
CODEC_NONE, CODEC_ZSTD, CODEC_SNAPPY = 0, 1, 2


class DecompressionError(KevoReplError):
    """Compressed bytes that do not decode, or would decode past the allowed size."""


@runtime_checkable
class Compressor(Protocol):
    #: the CompressionCodec value this compressor speaks on the wire
    codec_id: int

    def compress(self, data: bytes) -> bytes: ...

    def decompress(self, data: bytes, max_size: int) -> bytes:
        """Decode `data`; raise DecompressionError when it is invalid or its output would
        exceed `max_size` bytes (a corrupt or hostile length must not allocate it)."""
        ...
