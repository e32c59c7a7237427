"""The conformance suite's crash child: commits the crash workload until it is killed.

    python -m kevo_repl.testing.crash_writer ENGINE PATH OPTIONS_JSON [core]

prints ``start N`` (the batch the store holds), then each batch number once it committed.
With ``core``, the batches go through the core applier (kevo_repl.storage.applier) instead of
straight to the engine: the position blob, with its applied-entries count, is then what a
crash must keep exact.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from kevo_repl.protocol.codec import Columns
from kevo_repl.storage.applier import open_applier
from kevo_repl.testing.workload import (
    CRASH_BATCH,
    CRASH_HISTORY,
    batch_of,
    crash_batch,
    meta_of,
    resolve_spec,
)


def _report(number: int) -> None:
    sys.stdout.write(f"{number}\n")
    sys.stdout.flush()


def main(argv: list[str]) -> None:
    engine_ref, path, options = argv[0], Path(argv[1]), json.loads(argv[2])
    core = argv[3:] == ["core"]
    spec = resolve_spec(engine_ref)
    if core:
        store = open_applier(engine_ref, spec, path, options, True)
        number = store.position().sequence // CRASH_BATCH
        sys.stdout.write(f"start {number}\n")
        sys.stdout.flush()
        while True:
            number += 1
            ops, keys, values = crash_batch(number)
            first = (number - 1) * CRASH_BATCH + 1
            store.apply_columns(Columns(first, ops, keys, values), CRASH_HISTORY)
            _report(number)
    engine = spec.open(path, options, True)
    number = batch_of(engine.read_meta())
    sys.stdout.write(f"start {number}\n")
    sys.stdout.flush()
    while True:
        number += 1
        ops, keys, values = crash_batch(number)
        engine.commit(ops, keys, values, meta_of(number))
        _report(number)


if __name__ == "__main__":
    main(sys.argv[1:])
