"""Built-in compressors: ``none``, ``zstd`` and ``snappy`` (the block format, as KevoDB uses).

Decoders accept what KevoDB's compressor produces: its zstd frames do not record the content
size, so zstd output is read as a stream, bounded by the caller's limit. The codec libraries
load on a codec's first use: a node that never meets zstd or snappy never imports them.
"""

from __future__ import annotations

import io
from types import ModuleType
from typing import Any

from kevo_repl.plugin.manager import hookimpl
from kevo_repl.plugin.registrars import CompressorRegistrar
from kevo_repl.protocol.compression import CODEC_NONE, CODEC_SNAPPY, CODEC_ZSTD, DecompressionError


class NoCompression:
    codec_id = CODEC_NONE

    def compress(self, data: bytes) -> bytes:
        return data

    def decompress(self, data: bytes, max_size: int) -> bytes:
        if len(data) > max_size:
            raise DecompressionError(f"{len(data)} bytes exceed the limit of {max_size}")
        return data


class ZstdCompressor:
    codec_id = CODEC_ZSTD

    def __init__(self, level: int = 1) -> None:
        self._level = level
        self._codecs: tuple[ModuleType, Any, Any] | None = None

    def _zstd(self) -> tuple[ModuleType, Any, Any]:
        if self._codecs is None:
            import zstandard

            self._codecs = (zstandard, zstandard.ZstdCompressor(level=self._level),
                            zstandard.ZstdDecompressor())
        return self._codecs

    def compress(self, data: bytes) -> bytes:
        return bytes(self._zstd()[1].compress(data))

    def decompress(self, data: bytes, max_size: int) -> bytes:
        zstandard, _, decompressor = self._zstd()
        try:
            with decompressor.stream_reader(io.BytesIO(data)) as reader:
                out = reader.read(max_size + 1)
        except zstandard.ZstdError as exc:
            raise DecompressionError(f"invalid zstd data: {exc}") from exc
        if len(out) > max_size:
            raise DecompressionError(f"zstd data decodes past the limit of {max_size} bytes")
        return bytes(out)


def _snappy_length(data: bytes) -> int:
    """The uncompressed length a snappy block declares (a little-endian base-128 varint)."""
    length = shift = 0
    for i, byte in enumerate(data[:5]):
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return length
        shift += 7
        if i == 4:
            break
    raise DecompressionError("invalid snappy block: bad length header")


class SnappyCompressor:
    codec_id = CODEC_SNAPPY

    def compress(self, data: bytes) -> bytes:
        import cramjam

        return bytes(cramjam.snappy.compress_raw(data))

    def decompress(self, data: bytes, max_size: int) -> bytes:
        declared = _snappy_length(data)
        if declared > max_size:
            raise DecompressionError(
                f"snappy block declares {declared} bytes, past the limit of {max_size}"
            )
        import cramjam

        try:
            out = bytes(cramjam.snappy.decompress_raw(data))
        except Exception as exc:  # cramjam raises its own DecompressionError type
            raise DecompressionError(f"invalid snappy block: {exc}") from exc
        if len(out) != declared:
            raise DecompressionError("invalid snappy block: length mismatch")
        return out


@hookimpl(trylast=True)
def kevo_repl_register_compressors(register: CompressorRegistrar) -> None:
    register("none", NoCompression())
    register("zstd", ZstdCompressor())
    register("snappy", SnappyCompressor())
