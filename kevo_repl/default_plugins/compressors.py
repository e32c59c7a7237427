"""Built-in compressors. ``none`` is always here; codecs backed by optional libraries are
registered only when their library imports."""

from __future__ import annotations

from typing import Any

from ..plugins import hookimpl


class NoCompression:
    codec_id = 0

    def compress(self, data: bytes) -> bytes:
        return data

    def decompress(self, data: bytes) -> bytes:
        return data


@hookimpl(trylast=True)
def kevo_repl_register_compressors(register: Any) -> None:
    register("none", NoCompression())
