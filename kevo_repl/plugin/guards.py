"""Run-time guards around plugin code on the hot path.

A plugin speaks through its contract's own errors (DecompressionError for damaged input,
StoreError for a store failure); those pass through unchanged for the caller to handle. Any
other exception, or a result of the wrong type, is a plugin bug: it becomes a PluginError
naming the plugin and its distribution, which a node reports (state ERROR, last_error)
instead of retrying it or losing it in a dying task.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kevo_repl.errors import PluginError, StoreError
from kevo_repl.plugin.engine import Applier, Position
from kevo_repl.plugin.registrars import ConnectorFactory
from kevo_repl.protocol.codec import Entry
from kevo_repl.protocol.compression import Compressor, DecompressionError


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


def apply_guarded(
    store: Applier, label: str, entries: Sequence[Entry], history_id: str, chain: int
) -> Position:
    """`store.apply(entries, history_id, chain)`; StoreError passes, a bug is a PluginError."""
    try:
        pos = store.apply(entries, history_id, chain)
    except StoreError:
        raise
    except Exception as exc:
        raise _failed(label, "apply", exc) from exc
    if not isinstance(pos, Position):
        raise _wrong_type(label, "apply", pos, "a Position")
    return pos


def sync_guarded(store: Applier, label: str) -> None:
    """`store.sync()`; StoreError passes, a bug is a PluginError."""
    try:
        store.sync()
    except StoreError:
        raise
    except Exception as exc:
        raise _failed(label, "sync", exc) from exc


def open_channel_guarded(
    factory: ConnectorFactory, label: str, address: str, options: Mapping[str, Any]
) -> Any:
    """`factory(address, options)`; any failure (a refused option too) is a PluginError."""
    try:
        return factory(address, options)
    except Exception as exc:
        raise _failed(label, "opening a channel", exc) from exc
