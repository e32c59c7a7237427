"""The replica's digest barrier: where it cuts a batch, when it holds apply, one at a time."""

from __future__ import annotations

import asyncio

import pytest

from kevo_repl.protocol.codec import Columns, Op
from kevo_repl.replica.digest_barrier import BarrierBusy, DigestBarrier


def _batch(first: int, n: int) -> Columns:
    return Columns(first, [Op.PUT] * n, [b"k%d" % (first + i) for i in range(n)],
                   [b"v%d" % (first + i) for i in range(n)])


def test_split_makes_the_barrier_a_batch_boundary() -> None:
    b = DigestBarrier()
    batch = _batch(10, 10)  # 10..19
    assert b.split(batch) == (batch, None)  # no barrier
    b.arm(14)
    head, rest = b.split(batch)
    assert (head.first_seq, head.last_seq) == (10, 14)
    assert rest is not None and (rest.first_seq, rest.last_seq) == (15, 19)
    assert list(head.keys) + list(rest.keys) == list(batch.keys)
    assert list(head.values) + list(rest.values) == list(batch.values)
    b.release()
    for at in (9, 19, 25):  # before, at the end of, after the batch: nothing to cut
        b.arm(at)
        assert b.split(batch) == (batch, None)
        b.release()


def test_one_barrier_at_a_time() -> None:
    b = DigestBarrier()
    b.arm(5)
    with pytest.raises(BarrierBusy, match="sequence 5"):
        b.arm(6)
    b.release()
    b.arm(6)
    assert b.at == 6


async def test_hold_only_at_the_barrier_and_until_released() -> None:
    b = DigestBarrier()
    b.arm(5)
    await asyncio.wait_for(b.hold(4), 1)  # not there yet: apply goes on
    await asyncio.wait_for(b.hold(6), 1)  # already past (a batch crossed it): never stuck
    held = asyncio.ensure_future(b.hold(5))
    await asyncio.sleep(0.05)
    assert not held.done()
    b.release()
    await asyncio.wait_for(held, 1)
