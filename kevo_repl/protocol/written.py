"""What a write returns: its (first, last) sequence, and the epoch it was accepted in."""

from __future__ import annotations


class Written(tuple[int, int]):
    """`(first, last)` of a durable write (it unpacks as the pair it always was), plus
    `epoch`: the primary term that accepted it (`kevo-repl ha`'s fencing token; 1 on a
    primary that never failed over). Two nodes answering writes in one epoch would be two
    primaries at once."""

    epoch: int

    def __new__(cls, first: int, last: int, epoch: int) -> Written:
        self = super().__new__(cls, (first, last))
        self.epoch = epoch
        return self

    def __getnewargs__(self) -> tuple[int, int, int]:  # copy and pickle: all three
        return self[0], self[1], self.epoch

    @property
    def first(self) -> int:
        return self[0]

    @property
    def last(self) -> int:
        return self[1]

    def __repr__(self) -> str:
        return f"Written(first={self[0]}, last={self[1]}, epoch={self.epoch})"
