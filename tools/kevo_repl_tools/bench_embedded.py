"""`bench write`'s embedded column: the same writers through `kevo_repl.open_primary` in this
process (threads on the synchronous API; no RPC per write), one primary for every cell."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kevo_repl.node.embedded import open_primary
from kevo_repl.protocol.codec import Op


def _cell(p: Any, writers: int, batch: int, seconds: float) -> dict[str, Any]:
    counts = [0] * writers
    start = threading.Event()
    end = [0.0]

    def writer(w: int) -> None:
        muts = [(Op.PUT, f"e{w:07d}-{i:07d}".encode()[-16:], b"v" * 100) for i in range(batch)]
        start.wait()
        n = 0
        while time.perf_counter() < end[0]:
            p.write(muts)
            n += 1
        counts[w] = n

    threads = [threading.Thread(target=writer, args=(w,), daemon=True) for w in range(writers)]
    for t in threads:
        t.start()
    started = time.perf_counter()
    end[0] = started + seconds
    start.set()
    for t in threads:
        t.join(seconds + 120.0)
    spent = time.perf_counter() - started
    writes = sum(counts)
    return {
        "api": "embedded",
        "writers": writers,
        "batch": batch,
        "writes": writes,
        "writes_per_s": round(writes / spent, 1),
        "entries_per_s": round(writes * batch / spent, 1),
        "stalled_replica": False,
    }


def embedded_cells(
    root: Path, applier: str, writers: Sequence[int], batches: Sequence[int], seconds: float
) -> list[dict[str, Any]]:
    with open_primary(root / "embedded", applier=applier) as p:
        p.write([(Op.PUT, b"warm-up", b"")])
        return [_cell(p, w, b, seconds) for w in writers for b in batches]
