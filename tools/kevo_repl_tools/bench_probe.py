"""Benchmark probe plugin: one line per applied batch, ``NODE LAST_SEQ TIME_NS``.

`kevo-repl bench lag` loads it into node processes through ``KEVO_REPL_PLUGINS`` and names the
file in ``KEVO_BENCH_PROBE``. On the primary a batch is logged once its WAL fsync returned, on
a replica once the batch is durable in its store, so joining the two files by sequence gives
the lag from primary durability to replica durability. Both nodes run on one machine, so
their ``time.time_ns()`` clocks agree.
"""

from __future__ import annotations

import os
import time

from kevo_repl.plugin.manager import hookimpl

ENV_PROBE_FILE = "KEVO_BENCH_PROBE"

_path = os.environ.get(ENV_PROBE_FILE)
# line-buffered: a line reaches the OS as soon as it is written, so a killed node loses none
_fh = open(_path, "a", buffering=1) if _path else None  # noqa: SIM115  # lives with the node


@hookimpl
def kevo_repl_batch_applied(node: str, first_seq: int, last_seq: int, count: int) -> None:
    if _fh is not None:
        _fh.write(f"{node} {last_seq} {time.time_ns()}\n")
