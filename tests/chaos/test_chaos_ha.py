"""The HA chaos kinds against a real etcd (short runs), and the checker catching violations."""

from __future__ import annotations

from pathlib import Path

import pytest
from kevo_repl_tools.chaos_ha import (
    HA_KINDS,
    discarded_violation,
    epoch_violations,
    run_ha_chaos,
    single_writer_violations,
)
from kevo_repl_tools.ha_writer import Ack

pytestmark = pytest.mark.chaos


@pytest.mark.parametrize("kind", HA_KINDS)
def test_each_ha_fault_kind_passes_the_checker(tmp_path: Path, kind: str) -> None:
    result = run_ha_chaos(tmp_path, seed=11, duration_s=4.0, kinds=(kind,))
    assert result.violations == []
    assert result.faults[kind] >= 1
    assert result.acknowledged > 0
    if kind != "etcd_restart":
        assert result.failovers == result.faults[kind]


def test_the_checker_sees_two_writers_in_one_epoch() -> None:
    assert single_writer_violations({1: {"a"}, 2: {"b"}}, []) == []
    found = single_writer_violations({1: {"a"}, 2: {"b", "c"}}, [17])
    assert len(found) == 2 and "epoch 2" in found[0] and "17" in found[1]


def _ack(seq: int, address: str, epoch: int, sent_at: float) -> Ack:
    return Ack(b"k%d" % seq, seq, address, epoch, sent_at, sent_at + 0.01)


def test_the_checker_reads_the_epochs_write_responses_name() -> None:
    seen_at = {1: 0.0, 2: 10.0, 3: 20.0}
    named = {1: {"a"}, 2: {"b"}, 3: {"a"}}
    good = [_ack(1, "a", 1, 1.0), _ack(2, "a", 1, 9.9), _ack(3, "b", 2, 10.5),
            _ack(4, "a", 3, 25.0)]
    assert epoch_violations(good, seen_at, named) == []
    # two nodes acknowledging writes in one epoch
    two = epoch_violations([*good, _ack(5, "c", 3, 26.0)], seen_at, named)
    assert len(two) == 1 and "epoch 3" in two[0] and "'c'" in two[0]
    # a node etcd never named for that epoch
    unnamed = epoch_violations([_ack(1, "b", 1, 1.0)], seen_at, named)
    assert len(unnamed) == 1 and "etcd named ['a']" in unnamed[0]
    # the old primary of epoch 1 acknowledging a write sent after epoch 2 was named
    late = epoch_violations([*good, _ack(5, "a", 1, 10.2)], seen_at, named)
    assert len(late) == 1 and "after a newer one" in late[0] and "epoch 1" in late[0]
    # sent before epoch 2 was named, answered after: fine
    assert epoch_violations([_ack(5, "a", 1, 9.99)], seen_at, named) == []
    # an answer without an epoch (a primary that does not name it)
    assert "without an epoch" in epoch_violations([_ack(6, "a", 0, 1.0)], seen_at)[0]


def test_the_checker_sees_a_discarded_range_that_does_not_add_up() -> None:
    good = {"fork_point": 10, "discarded_entries": 5, "discarded_first": 11,
            "discarded_last": 15}
    assert discarded_violation(good) is None
    assert discarded_violation({**good, "discarded_entries": 4}) is not None
    assert discarded_violation({**good, "discarded_first": 12}) is not None
    assert discarded_violation({"fork_point": 10, "discarded_entries": 0,
                                "discarded_first": 0, "discarded_last": 0}) is None
