"""The HA chaos kinds against a real etcd (short runs), and the checker catching violations."""

from __future__ import annotations

from pathlib import Path

import pytest
from kevo_repl_tools.chaos_ha import (
    HA_KINDS,
    discarded_violation,
    run_ha_chaos,
    single_writer_violations,
)

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


def test_the_checker_sees_a_discarded_range_that_does_not_add_up() -> None:
    good = {"fork_point": 10, "discarded_entries": 5, "discarded_first": 11,
            "discarded_last": 15}
    assert discarded_violation(good) is None
    assert discarded_violation({**good, "discarded_entries": 4}) is not None
    assert discarded_violation({**good, "discarded_first": 12}) is not None
    assert discarded_violation({"fork_point": 10, "discarded_entries": 0,
                                "discarded_first": 0, "discarded_last": 0}) is None
