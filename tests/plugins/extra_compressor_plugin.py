"""Test plugin registering a compressor under a new name."""

from kevo_repl import hookimpl
from kevo_repl.plugin.registrars import CompressorRegistrar
from kevo_repl.protocol.compression import DecompressionError


class Reverse:
    codec_id = 99

    def compress(self, data: bytes) -> bytes:
        return data[::-1]

    def decompress(self, data: bytes, max_size: int) -> bytes:
        if len(data) > max_size:
            raise DecompressionError(f"{len(data)} bytes exceed the limit of {max_size}")
        return data[::-1]


@hookimpl
def kevo_repl_register_compressors(register: CompressorRegistrar) -> None:
    register("reverse", Reverse())
