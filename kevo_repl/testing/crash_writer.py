"""The conformance suite's crash child: commits the crash workload until it is killed.

    python -m kevo_repl.testing.crash_writer ENGINE PATH OPTIONS_JSON

prints ``start N`` (the batch the store holds), then each batch number once it committed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from kevo_repl.testing.workload import batch_of, crash_batch, meta_of, resolve_spec


def main(argv: list[str]) -> None:
    engine_ref, path, options = argv[0], Path(argv[1]), json.loads(argv[2])
    engine = resolve_spec(engine_ref).open(path, options, True)
    number = batch_of(engine.read_meta())
    sys.stdout.write(f"start {number}\n")
    sys.stdout.flush()
    while True:
        number += 1
        ops, keys, values = crash_batch(number)
        engine.commit(ops, keys, values, meta_of(number))
        sys.stdout.write(f"{number}\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1:])
