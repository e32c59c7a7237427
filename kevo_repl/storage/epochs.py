"""Epochs: the terms of the primaries a history has had, kept with the WAL.

A primary term is an epoch. The history of epochs is a short list of
`(number, start, chain)`: epoch `number` wrote sequences from `start` on, and the hash chain
before `start` was `chain` (PostgreSQL's timeline history, with the chain to prove it). A
promoted replica continues the history from its durable position P with a new epoch starting
at P + 1, so two nodes' histories part exactly where the first epoch they do not share begins.

On disk it is `EPOCHS` in the WAL directory (primary) or the data directory (replica), one
epoch per line: `number start chain-hex`. A WAL without it is epoch 1 from sequence 1. The
same list travels in the `kevo-epochs` gRPC header as `number:start:chain-hex,...`.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kevo_repl.errors import StoreError
from kevo_repl.protocol import chain as chain_mod
from kevo_repl.storage.store import write_file_atomically

EPOCHS_FILE = "EPOCHS"
#: the gRPC header naming the sender's epoch history
EPOCHS_HEADER = "kevo-epochs"
#: a history longer than this is refused: every epoch is a failover
MAX_EPOCHS = 4096
_LINE = re.compile(r"([1-9][0-9]{0,18}) ([1-9][0-9]{0,19}) ([0-9a-f]{1,16})")
_ITEM = re.compile(r"([1-9][0-9]{0,18}):([1-9][0-9]{0,19}):([0-9a-f]{1,16})")


@dataclass(frozen=True)
class Epoch:
    number: int
    #: the first sequence this epoch wrote (or will write)
    start: int
    #: the hash chain after sequence start - 1
    chain: int


#: the history of a WAL that never changed primary
FIRST = (Epoch(1, 1, chain_mod.START),)


def check(epochs: Sequence[Epoch]) -> tuple[Epoch, ...]:
    """The history, refused unless numbers grow and starts never go back."""
    if not epochs:
        raise StoreError("an epoch history holds at least one epoch")
    if len(epochs) > MAX_EPOCHS:
        raise StoreError(f"an epoch history of {len(epochs)} epochs is over {MAX_EPOCHS}")
    if epochs[0].start != 1:
        raise StoreError(f"the first epoch starts at {epochs[0].start}, not at sequence 1")
    for before, after in itertools.pairwise(epochs):
        if after.number <= before.number or after.start < before.start:
            raise StoreError(f"epoch {after} cannot follow {before}")
    return tuple(epochs)


def parse(text: str, *, header: bool = False) -> tuple[Epoch, ...]:
    items = text.split(",") if header else text.splitlines()
    pattern = _ITEM if header else _LINE
    if len(items) > MAX_EPOCHS:
        raise StoreError(f"an epoch history of {len(items)} epochs is over {MAX_EPOCHS}")
    epochs = []
    for number, item in enumerate(items, 1):
        m = pattern.fullmatch(item.strip())
        if m is None:
            where = f"item {number}" if header else f"line {number}"
            raise StoreError(
                f"{where} is not an epoch (number, start, chain in hex): {item[:80]!r}"
            )
        epochs.append(Epoch(int(m[1]), int(m[2]), int(m[3], 16)))
    return check(epochs)


def render(epochs: Sequence[Epoch], *, header: bool = False) -> str:
    if header:
        return ",".join(f"{e.number}:{e.start}:{e.chain:x}" for e in epochs)
    return "".join(f"{e.number} {e.start} {e.chain:x}\n" for e in epochs)


def load(directory: Path) -> tuple[Epoch, ...]:
    """The history kept in `directory`; epoch 1 alone when there is none. A damaged file is
    refused, never replaced."""
    path = directory / EPOCHS_FILE
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        return FIRST
    except (OSError, UnicodeDecodeError) as exc:
        raise StoreError(f"{path} is unreadable: {exc}") from exc
    try:
        return parse(text)
    except StoreError as exc:
        raise StoreError(f"{path}: {exc}") from exc


def save(directory: Path, epochs: Sequence[Epoch]) -> None:
    """Durably replace the history in `directory` (a crash leaves the old or the new one)."""
    write_file_atomically(directory / EPOCHS_FILE, render(check(epochs)).encode("ascii"))


def end_of(epochs: Sequence[Epoch], number: int) -> int | None:
    """The last sequence epoch `number` holds in this history: the next epoch's start - 1;
    None while it is the current epoch (open-ended) or when the history skipped it and those
    after it began at the same place. Epochs before the first are refused."""
    for i, epoch in enumerate(epochs):
        if epoch.number > number:
            # a node on an epoch this history never had: it shares what came before
            return epoch.start - 1 if i else 0
        if epoch.number == number and i + 1 < len(epochs):
            return epochs[i + 1].start - 1
    return None


def fork_point(mine: Sequence[Epoch], theirs: Sequence[Epoch]) -> int | None:
    """The last sequence two histories share: the first epoch they do not share starts one
    after it. None when one history is the other's prefix at the same epoch (no fork yet)."""
    for a, b in zip(mine, theirs, strict=False):
        if a != b:
            return min(a.start, b.start) - 1
    if len(mine) == len(theirs):
        return None
    longer = mine if len(mine) > len(theirs) else theirs
    return longer[min(len(mine), len(theirs))].start - 1
