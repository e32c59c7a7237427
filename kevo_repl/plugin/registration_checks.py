"""Load-time checks of what a plugin registers, against the protocol of its kind.

Each check returns the first problem as a sentence, or None. They look at what can be known
without calling the plugin's code: that the object has the documented members and that its
callables accept the documented arguments. A wrong registration is thus refused when the
plugin loads, naming the plugin, instead of failing on the hot path.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from kevo_repl.plugin.engine import ENGINE_API_VERSION, EngineSpec
from kevo_repl.protocol.compression import Compressor

#: the codec ids fit the wire's enum field (a 32-bit signed varint)
_MAX_CODEC_ID = 2**31 - 1


def _accepts(func: Callable[..., Any], *args: object) -> bool:
    """Whether `func` can be called with `args` positionally (unknowable: assume it can)."""
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):  # some C callables have no signature
        return True
    try:
        signature.bind(*args)
    except TypeError:
        return False
    return True


def check_engine_spec(spec: object) -> str | None:
    if not isinstance(spec, EngineSpec):
        return (f"an applier registers a kevo_repl.plugin.engine.EngineSpec, not a "
                f"{type(spec).__name__}")
    if spec.api_version != ENGINE_API_VERSION:
        return (f"it implements engine contract version {spec.api_version}; this kevo-repl "
                f"implements version {ENGINE_API_VERSION}")
    if not callable(spec.open) or not _accepts(spec.open, "path", {}, True):
        return "EngineSpec.open must accept (path, options, durable)"
    if spec.owns_file is not None and not callable(spec.owns_file):
        return "EngineSpec.owns_file must be None or a callable taking a file name"
    return None


def check_compressor(compressor: object) -> str | None:
    if not isinstance(compressor, Compressor):
        missing = [m for m in ("codec_id", "compress", "decompress")
                   if not hasattr(compressor, m)]
        return f"the compressor has no {', '.join(missing)}"
    codec_id = compressor.codec_id
    if isinstance(codec_id, bool) or not isinstance(codec_id, int):
        return f"the compressor's codec_id is a {type(codec_id).__name__}, not an int"
    if not 0 <= codec_id <= _MAX_CODEC_ID:
        return f"the compressor's codec_id {codec_id} is outside 0..{_MAX_CODEC_ID}"
    if not callable(compressor.compress) or not _accepts(compressor.compress, b""):
        return "the compressor's compress must accept (data)"
    if not callable(compressor.decompress) or not _accepts(compressor.decompress, b"", 0):
        return "the compressor's decompress must accept (data, max_size)"
    return None


def check_connector_factory(factory: object) -> str | None:
    if not callable(factory):
        return f"the connector factory is a {type(factory).__name__}, not a callable"
    if not _accepts(factory, "host:port", {}):
        return "the connector factory must accept (address, options)"
    return None


CHECKS: dict[str, Callable[[object], str | None]] = {
    "applier": check_engine_spec,
    "compressor": check_compressor,
    "connector": check_connector_factory,
}
