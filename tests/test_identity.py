"""Replica ids: the charset and length rule, and the id a replica derives once and keeps."""

from __future__ import annotations

from pathlib import Path

import pytest

from kevo_repl.errors import ConfigError
from kevo_repl.identity import derive_replica_id, replica_id_problem
from kevo_repl.replica.replica_id import REPLICA_ID_FILE, stored_replica_id


@pytest.mark.parametrize("good", ["r1", "a" * 128, "Host-1.example_2", "-", "."])
def test_valid_ids(good: str) -> None:
    assert replica_id_problem(good) is None


@pytest.mark.parametrize("bad", ["", "a" * 129, "r 1", "r/1", "ü", "r1\n", "r1\x00", "a:b"])
def test_invalid_ids(bad: str) -> None:
    problem = replica_id_problem(bad)
    assert problem is not None and "1 to 128" in problem


def test_derived_ids_are_valid_and_distinct() -> None:
    ids = {derive_replica_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(replica_id_problem(i) is None for i in ids)


def test_stored_id_is_derived_once_and_kept(tmp_path: Path) -> None:
    first = stored_replica_id(tmp_path)
    assert (tmp_path / REPLICA_ID_FILE).read_text().strip() == first
    assert stored_replica_id(tmp_path) == first
    assert stored_replica_id(tmp_path / "other") != first


def test_damaged_stored_id_is_refused_not_replaced(tmp_path: Path) -> None:
    path = tmp_path / REPLICA_ID_FILE
    path.write_bytes(b"not a valid id\n")
    with pytest.raises(ConfigError, match="replica_id"):
        stored_replica_id(tmp_path)
    assert path.read_bytes() == b"not a valid id\n"
