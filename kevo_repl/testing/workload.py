"""The pieces of the conformance suite a child process also needs (no pytest here)."""

from __future__ import annotations

import importlib

from kevo_repl.plugin.engine import OP_DELETE, OP_PUT, EngineSpec

#: entries per batch of the crash workload, and the keys it cycles through
CRASH_BATCH = 100
CRASH_KEYS = 300
#: the history id the crash writer applies under when it goes through the core
CRASH_HISTORY = "crash"


def resolve_spec(engine: str) -> EngineSpec:
    """The EngineSpec `engine` names: "package.module:ATTRIBUTE", or a name registered
    through the plugin registry (entry points and $KEVO_REPL_PLUGINS)."""
    if ":" in engine:
        module, _, attribute = engine.partition(":")
        spec = getattr(importlib.import_module(module), attribute)
    else:
        from kevo_repl.plugin.manager import build_registry

        spec = build_registry().get("applier", engine)
    if not isinstance(spec, EngineSpec):
        raise TypeError(f"{engine!r} is a {type(spec).__name__}, not an EngineSpec")
    return spec


def crash_batch(number: int) -> tuple[list[int], list[bytes], list[bytes]]:
    """Batch `number` (from 1) of the crash workload: puts and deletes over CRASH_KEYS keys,
    with values that name the batch, so any mix of two batches is detectable."""
    ops: list[int] = []
    keys: list[bytes] = []
    values: list[bytes] = []
    for i in range(CRASH_BATCH):
        seq = (number - 1) * CRASH_BATCH + i + 1
        keys.append(b"k%d" % ((seq * 7) % CRASH_KEYS))
        if seq % 9 == 0:
            ops.append(OP_DELETE)
            values.append(b"")
        else:
            ops.append(OP_PUT)
            values.append(b"batch %d entry %d;" % (number, i) * (1 + seq % 16))
    return ops, keys, values


def meta_of(number: int) -> bytes:
    return b"conformance batch %d" % number


def batch_of(meta: bytes | None) -> int:
    """Which batch a crash workload blob names (0: none yet)."""
    if meta is None:
        return 0
    prefix = b"conformance batch "
    if not meta.startswith(prefix):
        raise ValueError(f"not a crash workload blob: {meta[:40]!r}")
    return int(meta[len(prefix) :])


def expected_after(number: int) -> dict[bytes, bytes]:
    """The data after batches 1..number of the crash workload."""
    data: dict[bytes, bytes] = {}
    for n in range(1, number + 1):
        ops, keys, values = crash_batch(n)
        for op, key, value in zip(ops, keys, values, strict=True):
            if op == OP_DELETE:
                data.pop(key, None)
            else:
                data[key] = value
    return data
