"""The ``memory`` engine: a store that lives in the process's memory.

It meets the engine contract except for durability: nothing survives the process, so a
restarted node starts from an empty store at position 0 (a replica then streams everything
again from its primary). That makes it handy for tests and demos, and a compact reference
for engine authors; use ``lmdb`` or ``leveldb`` for anything that must outlive the process.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kevo_repl.plugin.engine import OP_DELETE, EngineSpec

from .options import DEFAULT_MAX_KEY_SIZE, parse_options

log = logging.getLogger(__name__)


class MemorySnapshot:
    """A frozen copy of the data and the blob, taken under the store's lock."""

    def __init__(self, data: dict[bytes, bytes], meta: bytes | None) -> None:
        self._data = data
        self.meta = meta

    def items(self, after: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        keys = sorted(self._data)  # bytes sort bytewise
        if after is not None:
            keys = [k for k in keys if k > after]
        return ((k, self._data[k]) for k in keys)


class MemoryEngine:
    """A dict and a blob behind one lock: each commit changes both in one step."""

    def __init__(self, max_key_size: int = DEFAULT_MAX_KEY_SIZE) -> None:
        self.max_key_size = max_key_size
        self._lock = threading.Lock()
        self._data: dict[bytes, bytes] = {}
        self._meta: bytes | None = None

    def read_meta(self) -> bytes | None:
        with self._lock:
            return self._meta

    def commit(
        self, ops: Sequence[int], keys: Sequence[bytes], values: Sequence[bytes], meta: bytes
    ) -> None:
        with self._lock:
            data = self._data
            for op, key, value in zip(ops, keys, values, strict=True):
                if op == OP_DELETE:
                    data.pop(key, None)
                else:
                    data[key] = value
            self._meta = meta

    def sync(self) -> None:
        pass  # nothing to flush

    def get(self, key: bytes) -> bytes | None:
        with self._lock:
            return self._data.get(key)

    @contextmanager
    def snapshot(self) -> Iterator[MemorySnapshot]:
        with self._lock:
            snap = MemorySnapshot(dict(self._data), self._meta)
        yield snap

    def load(self, keys: Sequence[bytes], values: Sequence[bytes]) -> None:
        with self._lock:
            self._data.update(zip(keys, values, strict=True))

    def close(self) -> None:
        with self._lock:
            self._data = {}


def open_engine(path: Path, options: Mapping[str, Any], durable: bool) -> MemoryEngine:
    """`path` and `durable` are unused: nothing is stored on disk."""
    max_key_size = parse_options(options).max_key_size
    log.info("opened an in-memory store (nothing is written under %s)", path)
    return MemoryEngine(max_key_size)


#: what this plugin registers as ``memory``: it keeps no files
SPEC = EngineSpec(open=open_engine, owns_file=None)
