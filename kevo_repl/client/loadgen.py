"""Deterministic keys and values for loading a node (the CLI's `load`, the demo, benches)."""

from __future__ import annotations

from collections.abc import Iterator

from kevo_repl.protocol.codec import Op


def load_keys(
    count: int, start: int, key_size: int, value_size: int, batch: int
) -> Iterator[list[tuple[Op, bytes, bytes]]]:
    """Write batches of deterministic keys; values carry the key index and fill to size."""
    for first in range(start, start + count, batch):
        n = min(batch, start + count - first)
        muts = []
        for i in range(first, first + n):
            key = f"key{i:0{max(key_size - 3, 1)}d}".encode()[-key_size:]
            value = (f"v{i}:".encode() * (value_size // 4 + 1))[:value_size]
            muts.append((Op.PUT, key, value))
        yield muts
