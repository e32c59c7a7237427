"""The replica's apply side joins queued columnar batches into one commit, and never across a
gap: a batch queued before a reset that does not continue the one before it is held back."""

from __future__ import annotations

import asyncio
from pathlib import Path

from kevo_repl.config import Config
from kevo_repl.plugin.manager import build_registry, get_plugin_manager
from kevo_repl.protocol.codec import Columns
from kevo_repl.replica.replica import Replica


def _part(first: int, n: int) -> Columns:
    return Columns(first, [1] * n, [b"k%d" % s for s in range(first, first + n)], [b"v"] * n)


def test_queued_batches_join_up_to_the_cap_and_stop_at_a_gap(tmp_path: Path) -> None:
    cfg = Config()
    cfg.node.role = "replica"
    cfg.node.data_dir = str(tmp_path / "r")
    pm = get_plugin_manager()
    replica = Replica(cfg, build_registry(pm), pm)

    async def batches(parts: list[Columns], count: int, cap: int) -> list[tuple[int, int]]:
        for part in parts:
            replica._queue.put_nowait(part)
        got = []
        for _ in range(count):
            batch = await asyncio.wait_for(replica._next_batch(cap), timeout=5)
            # the columns stay aligned: key i belongs to sequence first_seq + i
            assert list(batch.keys) == [
                b"k%d" % s for s in range(batch.first_seq, batch.last_seq + 1)
            ]
            got.append((batch.first_seq, batch.size))
        assert replica._queue.empty()
        return got

    try:
        # 1..25 in one commit; 100.. does not continue it: held back, then joined with 103..
        parts = [_part(1, 10), _part(11, 10), _part(21, 5), _part(100, 3), _part(103, 2)]
        assert asyncio.run(batches(parts, 2, cap=1000)) == [(1, 25), (100, 5)]
        # the cap: joining stops once a batch holds `cap` entries or more
        parts = [_part(200, 10), _part(210, 10), _part(220, 10)]
        assert asyncio.run(batches(parts, 2, cap=15)) == [(200, 20), (220, 10)]
    finally:
        replica.close()
