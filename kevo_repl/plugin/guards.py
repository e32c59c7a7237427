"""Run-time guards around plugin code on the hot path.

A plugin speaks through its contract's own errors (DecompressionError for damaged input,
StoreError for a store failure); those pass through unchanged for the caller to handle. Any
other exception, or a result of the wrong type, is a plugin bug: it becomes a PluginError
naming the plugin and its distribution, which a node reports (state ERROR, last_error)
instead of retrying it or losing it in a dying task.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from kevo_repl.errors import PluginError, StoreError
from kevo_repl.plugin.registrars import ConnectorFactory
from kevo_repl.protocol.compression import Compressor, DecompressionError

T = TypeVar("T")


def _failed(label: str, call: str, exc: BaseException) -> PluginError:
    return PluginError(f"{label} failed in {call}: {type(exc).__name__}: {exc}")


def _wrong_type(label: str, call: str, result: object, wanted: str) -> PluginError:
    return PluginError(f"{label} returned a {type(result).__name__} from {call}, not {wanted}")


class GuardedCompressor:
    """A registered compressor whose failures name it (see the module doc)."""

    def __init__(self, inner: Compressor, label: str) -> None:
        self.inner = inner
        self.label = label
        self.codec_id = int(inner.codec_id)

    def compress(self, data: bytes) -> bytes:
        try:
            out = self.inner.compress(data)
        except Exception as exc:
            raise _failed(self.label, "compress", exc) from exc
        if not isinstance(out, bytes):
            raise _wrong_type(self.label, "compress", out, "bytes")
        return out

    def decompress(self, data: bytes, max_size: int) -> bytes:
        try:
            out = self.inner.decompress(data, max_size)
        except DecompressionError:
            raise
        except Exception as exc:
            raise _failed(self.label, "decompress", exc) from exc
        if not isinstance(out, bytes):
            raise _wrong_type(self.label, "decompress", out, "bytes")
        return out


def call_guarded(
    label: str, call: str, fn: Callable[..., T], *args: Any, returns: type | None = None
) -> T:
    """`fn(*args)` on behalf of the plugin `label` (an engine's commit or sync, reached
    through the core applier): StoreError passes, anything else, or a result that is not a
    `returns`, is a PluginError naming the plugin."""
    try:
        out = fn(*args)
    except StoreError:
        raise
    except Exception as exc:
        raise _failed(label, call, exc) from exc
    if returns is not None and not isinstance(out, returns):
        raise _wrong_type(label, call, out, f"a {returns.__name__}")
    return out


def open_channel_guarded(
    factory: ConnectorFactory, label: str, address: str, options: Mapping[str, Any]
) -> Any:
    """`factory(address, options)`; any failure (a refused option too) is a PluginError."""
    try:
        return factory(address, options)
    except Exception as exc:
        raise _failed(label, "opening a channel", exc) from exc
