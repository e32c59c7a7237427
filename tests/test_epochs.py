"""Epoch histories: the file, the header, the exact fork point, and the primary's checks."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from kevo_repl.errors import StoreError
from kevo_repl.primary.epochs import check_replica, replica_epochs
from kevo_repl.protocol import chain as chain_mod
from kevo_repl.storage import epochs
from kevo_repl.storage.epochs import FIRST, Epoch

E1 = Epoch(1, 1, chain_mod.START)
E2 = Epoch(2, 501, 0xDEADBEEF00000001)
E3 = Epoch(3, 900, 0x1234)


def test_missing_file_is_epoch_one(tmp_path: Path) -> None:
    assert epochs.load(tmp_path) == FIRST == (E1,)


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    epochs.save(tmp_path, (E1, E2, E3))
    assert epochs.load(tmp_path) == (E1, E2, E3)
    assert (tmp_path / "EPOCHS").read_text() == "1 1 1\n2 501 deadbeef00000001\n3 900 1234\n"
    text = epochs.render((E1, E2, E3), header=True)
    assert text == "1:1:1,2:501:deadbeef00000001,3:900:1234"
    assert epochs.parse(text, header=True) == (E1, E2, E3)


@pytest.mark.parametrize("text", [
    "",                       # no epoch at all
    "1 2 1\n",                # the first epoch does not start at 1
    "1 1 1\n1 5 1\n",         # numbers must grow
    "1 1 1\n2 9 1\n3 5 1\n",  # starts never go back
    "1 1 1\n2 x 1\n",         # not a number
    "1 1 1\n2 5 1 extra\n",
])
def test_damaged_file_is_refused_and_left_alone(tmp_path: Path, text: str) -> None:
    (tmp_path / "EPOCHS").write_text(text)
    with pytest.raises(StoreError, match="EPOCHS"):
        epochs.load(tmp_path)
    assert (tmp_path / "EPOCHS").read_text() == text


def test_history_length_is_bounded() -> None:
    many = ",".join(f"{n}:{n}:1" for n in range(1, epochs.MAX_EPOCHS + 2))
    with pytest.raises(StoreError, match="over"):
        epochs.parse(many, header=True)


def test_fork_point_is_where_the_first_unshared_epoch_starts() -> None:
    assert epochs.fork_point((E1,), (E1,)) is None
    assert epochs.fork_point((E1, E2), (E1, E2)) is None
    # the old primary stayed on epoch 1; the new one started epoch 2 at 501
    assert epochs.fork_point((E1,), (E1, E2)) == 500
    assert epochs.fork_point((E1, E2), (E1,)) == 500
    # two different epochs 2 (a split brain): the earlier start bounds what is shared
    other = Epoch(2, 450, 7)
    assert epochs.fork_point((E1, E2), (E1, other)) == 449
    assert epochs.fork_point((E1, E2, E3), (E1, E2)) == 899


def test_end_of_an_epoch() -> None:
    assert epochs.end_of((E1, E2, E3), 1) == 500
    assert epochs.end_of((E1, E2, E3), 2) == 899
    assert epochs.end_of((E1, E2, E3), 3) is None
    # an epoch this history never had ends, for it, where the next one it had begins
    assert epochs.end_of((E1, E3), 2) == 899


def test_replica_header_is_parsed_and_a_bad_one_refused() -> None:
    assert replica_epochs([("x", "y")]) is None
    assert replica_epochs([("kevo-epochs", "1:1:1,2:501:deadbeef00000001")]) == (E1, E2)
    with pytest.raises(StoreError):
        replica_epochs([("kevo-epochs", "1:1:1,1:2:3")])


def test_primary_checks() -> None:
    mine = (E1, E2)
    assert check_replica(mine, None, 10_000) is None  # an older peer sends no history
    assert check_replica(mine, (E1, E2), 600) is None
    # behind the fork on the old epoch: it shares everything it has
    assert check_replica(mine, (E1,), 501) is None
    assert check_replica(mine, (E1,), 100) is None
    # past the fork on the old epoch: refused, naming the exact fork point
    refusal = check_replica(mine, (E1,), 700)
    assert refusal is not None
    code, message, fenced = refusal
    assert code == grpc.StatusCode.FAILED_PRECONDITION and not fenced
    assert "fork point 500" in message and "501..699" in message
    # a replica on a newer epoch: this primary is fenced
    refusal = check_replica(mine, (E1, E2, E3), 950)
    assert refusal is not None and refusal[2] is True
    assert "fenced" in refusal[1]
