"""ns per entry of a replica's apply path: decode one response's payloads, apply them into a
store (no fsync: durable=False, so the CPU path is measured, not the disk).

Runs against whichever kevo-repl is importable: before the engine contract (decode_batch ->
Entry tuples -> the applier's apply) or after it (decode_columns -> columns ->
Applier.apply_columns -> the engine's bulk API). After it, the tuple path through the same
core is measured too. Usage: python bench/apply_ns.py [ROUNDS]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kevo_repl.plugin.manager import build_registry
from kevo_repl.protocol.codec import Op, decode_batch, encode

RESPONSE = 1000  # entries per response (the primary's default batch)
RESPONSES = 100  # 100,000 entries per round
ENGINES = ("lmdb", "leveldb")

try:
    from kevo_repl.protocol.codec import decode_columns
    from kevo_repl.storage.applier import open_registered
except ImportError:  # before the engine contract
    decode_columns = None  # type: ignore[assignment]
    open_registered = None  # type: ignore[assignment]


def responses() -> list[list[bytes]]:
    out = []
    for r in range(RESPONSES):
        first = r * RESPONSE + 1
        out.append([
            encode(s, Op.PUT, b"key-%012d" % s, b"v" * 100)
            for s in range(first, first + RESPONSE)
        ])
    return out


def open_store(name: str, path: Path) -> Any:
    registry = build_registry()
    if open_registered is not None:
        return open_registered(registry, name, path, {}, False)
    return registry.get("applier", name)(path, {}, False)


def run(name: str, payloads: list[list[bytes]], columns: bool) -> float:
    """ns per entry of decode + apply over every response, into a fresh store."""
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(name, Path(tmp) / "store")
        apply: Callable[[list[bytes], int], Any]
        if columns:
            def apply(batch: list[bytes], first: int) -> Any:
                return store.apply_columns(decode_columns(batch, first), "bench")
        else:
            def apply(batch: list[bytes], first: int) -> Any:
                seqs = range(first, first + len(batch))
                return store.apply(decode_batch(batch, seqs), "bench")
        try:
            started = time.perf_counter_ns()
            for r, batch in enumerate(payloads):
                apply(batch, r * RESPONSE + 1)
            spent = time.perf_counter_ns() - started
        finally:
            store.close()
    return spent / (RESPONSE * RESPONSES)


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    payloads = responses()
    paths = [("entries", False)] + ([("columns", True)] if decode_columns is not None else [])
    for name in ENGINES:
        for label, columns in paths:
            samples = [run(name, payloads, columns) for _ in range(rounds)]
            print(f"{name:8} {label:8} median {statistics.median(samples):7.0f} ns/entry  "
                  f"min {min(samples):7.0f}  ({', '.join(f'{s:.0f}' for s in samples)})")


if __name__ == "__main__":
    main()
