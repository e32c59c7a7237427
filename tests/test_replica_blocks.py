"""A real replica (in-process, real LMDB store) against a scripted primary on 127.0.0.1:0 that
sends column blocks: damaged blocks and gaps are never applied and are asked for again; a
block whose chain before differs from the replica's is a fork that stops the replica."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from test_replica_faults import ScriptedPrimary

from kevo_repl.config import Config
from kevo_repl.plugin.manager import build_registry, get_plugin_manager
from kevo_repl.protocol import blocks
from kevo_repl.protocol import chain as chain_mod
from kevo_repl.protocol.codec import Columns, Op
from kevo_repl.protocol.proto import replication_pb2 as rpb
from kevo_repl.replica.replica import Replica
from kevo_repl.replica.state import State

PER_BLOCK = 5
LAST = 30


def _blocks() -> dict[int, rpb.ColumnBlock]:
    """Blocks of 5 entries for sequences 1..30, chained, by first sequence."""
    out, chain_value = {}, chain_mod.START
    for first in range(1, LAST + 1, PER_BLOCK):
        seqs = range(first, first + PER_BLOCK)
        cols = Columns(first, [Op.PUT] * PER_BLOCK, [b"k%d" % s for s in seqs],
                       [b"v%d" % s for s in seqs])
        block = blocks.encode_block(cols, chain_value)
        out[first] = block
        chain_value = block.chain_after
    return out


BLOCKS = _blocks()


def _from(start: int, *, damage: int = 0, skip: int = 0) -> list[rpb.WALStreamResponse]:
    """Responses of two blocks each from the block holding `start`; the block starting at
    `damage` has a flipped value byte, the one at `skip` is left out."""
    firsts = [f for f in BLOCKS if f + PER_BLOCK > start and f != skip]
    out = []
    for i in range(0, len(firsts), 2):
        group = []
        for f in firsts[i:i + 2]:
            block = rpb.ColumnBlock()
            block.CopyFrom(BLOCKS[f])
            if f == damage:
                block.values = block.values[:-1] + bytes([block.values[-1] ^ 0x40])
            group.append(block)
        out.append(rpb.WALStreamResponse(blocks=group, chain=group[-1].chain_after))
    return out


def _replica(tmp_path: Path, port: int) -> Replica:
    cfg = Config()
    cfg.node.role = "replica"
    cfg.node.data_dir = str(tmp_path / "replica")
    cfg.replica.primary = f"127.0.0.1:{port}"
    cfg.replica.backoff_initial_s = 0.01
    cfg.replica.max_corrupt_retries = 2
    pm = get_plugin_manager()
    return Replica(cfg, build_registry(pm), pm)


async def _run_until(replica: Replica, done: Callable[[], bool], timeout: float = 20) -> None:
    task = asyncio.create_task(replica.run())
    try:
        async with asyncio.timeout(timeout):
            while not done():
                await asyncio.sleep(0.01)
    finally:
        await replica.stop()
        await asyncio.wait_for(task, 10)


class _Recording(ScriptedPrimary):
    def __init__(self, script: Callable[[int, int], list[rpb.WALStreamResponse]]) -> None:
        super().__init__(script)
        self.requests: list[rpb.WALStreamRequest] = []

    async def stream(self, request, context):  # type: ignore[no-untyped-def]
        self.requests.append(request)
        async for resp in super().stream(request, context):
            yield resp


async def _replicate(tmp_path: Path, script: Callable[[int, int], list[rpb.WALStreamResponse]],
                     done: Callable[[Replica], bool]) -> tuple[Replica, _Recording]:
    primary = _Recording(script)
    await primary.server.start()
    replica = _replica(tmp_path, primary.port)
    try:
        await _run_until(replica, lambda: done(replica))
    finally:
        await primary.server.stop(None)
    return replica, primary


async def test_blocks_are_applied_once_with_the_chain_and_asked_for(tmp_path: Path) -> None:
    replica, primary = await _replicate(
        tmp_path, lambda start, _round: _from(start),
        lambda r: r.position.sequence >= LAST)
    try:
        assert primary.requests[0].column_blocks and primary.requests[0].protocol_version == 2
        assert replica.position.sequence == LAST and replica.position.applied_entries == LAST
        assert replica.position.chain == BLOCKS[26].chain_after
        assert replica.store.get(b"k17") == b"v17"
        assert primary.nacks == []
    finally:
        replica.close()


async def test_a_damaged_block_is_never_applied_and_is_asked_for_again(tmp_path: Path) -> None:
    # round 0 damages the block 11..15 (the first of the second response)
    replica, primary = await _replicate(
        tmp_path, lambda start, round_no: _from(start, damage=11 if round_no == 0 else 0),
        lambda r: r.position.sequence >= LAST)
    try:
        assert primary.nacks == [11]
        assert replica.stats.corrupt_entries == 1
        assert replica.position.applied_entries == LAST  # nothing applied twice
        assert replica.store.get(b"k11") == b"v11"
        assert replica.position.chain == BLOCKS[26].chain_after
    finally:
        replica.close()


async def test_repeatedly_damaged_block_ends_in_error_with_nothing_of_it_applied(
    tmp_path: Path,
) -> None:
    replica, _primary = await _replicate(
        tmp_path, lambda start, _round: _from(start, damage=11),
        lambda r: r.fatal is not None)
    try:
        assert replica.sm.state is State.ERROR and "entry 11" in (replica.fatal or "")
        assert replica.position.sequence == 10
        assert replica.store.get(b"k11") is None
    finally:
        replica.close()


async def test_a_gap_between_blocks_is_nacked_and_filled(tmp_path: Path) -> None:
    replica, primary = await _replicate(
        tmp_path, lambda start, round_no: _from(start, skip=16 if round_no == 0 else 0),
        lambda r: r.position.sequence >= LAST)
    try:
        assert primary.nacks == [16]
        assert replica.stats.gaps >= 1
        assert replica.position.applied_entries == LAST
    finally:
        replica.close()


async def test_a_block_from_another_history_stops_the_replica(tmp_path: Path) -> None:
    def script(start: int, round_no: int) -> list[rpb.WALStreamResponse]:
        if start == 1:
            return _from(1)[:1]  # 1..10
        # from 11 on: a history whose chain at 10 is not the replica's
        first = 11
        seqs = range(first, first + PER_BLOCK)
        forked = blocks.encode_block(
            Columns(first, [Op.PUT] * PER_BLOCK, [b"k%d" % s for s in seqs],
                    [b"other" for _ in seqs]), BLOCKS[11].chain_before ^ 0xFFFF)
        return [rpb.WALStreamResponse(blocks=[forked], chain=forked.chain_after)]

    # the replica first takes 1..10, is stopped, and reconnects from 11
    replica, _ = await _replicate(tmp_path, script, lambda r: r.position.sequence >= 10)
    replica.close()
    replica, _ = await _replicate(tmp_path, script, lambda r: r.fatal is not None)
    try:
        fatal = replica.fatal or ""
        assert "divergence" in fatal and "after sequence 10" in fatal
        assert replica.position.sequence == 10
        assert replica.store.get(b"k11") is None
    finally:
        replica.close()
