"""Test plugin registering a compressor under a new name."""

from typing import Any

from kevo_repl import hookimpl


class Reverse:
    codec_id = 99

    def compress(self, data: bytes) -> bytes:
        return data[::-1]

    def decompress(self, data: bytes) -> bytes:
        return data[::-1]


@hookimpl
def kevo_repl_register_compressors(register: Any) -> None:
    register("reverse", Reverse())
